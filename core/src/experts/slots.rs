//! Which expert is in which slot of a layer, and the eviction policies that choose a slot to free.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Least recently used.
    Lru,
    /// Least recently/frequently used: a use count that halves every [`LRFU_HALF_LIFE`] calls.
    Lrfu,
}

/// Calls of a layer after which an LRFU use count has halved.
pub const LRFU_HALF_LIFE: f64 = 32.0;

impl Policy {
    pub fn parse(s: &str) -> std::result::Result<Policy, String> {
        match s {
            "lru" => Ok(Policy::Lru),
            "lrfu" => Ok(Policy::Lrfu),
            _ => Err(format!("unknown eviction policy {s:?} (lru or lrfu)")),
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Policy::Lru => "lru",
            Policy::Lrfu => "lrfu",
        }
    }
}

/// Which expert is in which slot of a layer, and what the eviction policy knows.
pub(super) struct Slots {
    /// Expert → slot, slot → expert.
    pub(super) slot_of: Vec<Option<usize>>,
    pub(super) holder: Vec<Option<usize>>,
    /// LRFU counts and the call of each expert's last use (per expert, resident or not).
    crf: Vec<f64>,
    last: Vec<u64>,
    pub(super) clock: u64,
    /// The shadow LRU: experts, least recent first.
    shadow: Vec<usize>,
}

impl Slots {
    pub(super) fn new(experts: usize, slots: usize) -> Slots {
        Slots {
            slot_of: vec![None; experts],
            holder: vec![None; slots],
            crf: vec![0.0; experts],
            last: vec![0; experts],
            clock: 0,
            shadow: Vec::with_capacity(slots),
        }
    }
    pub(super) fn identity(&self) -> bool {
        self.holder.len() == self.slot_of.len()
    }
    pub(super) fn complete(&self) -> bool {
        self.identity() && self.slot_of.iter().all(Option::is_some)
    }
    fn priority(&self, policy: Policy, e: usize) -> f64 {
        match policy {
            Policy::Lru => self.last[e] as f64,
            Policy::Lrfu => {
                let age = (self.clock - self.last[e]) as f64;
                self.crf[e] * (-age / LRFU_HALF_LIFE).exp2()
            }
        }
    }
    pub(super) fn touch(&mut self, e: usize) {
        let age = (self.clock - self.last[e]) as f64;
        self.crf[e] = 1.0 + self.crf[e] * (-age / LRFU_HALF_LIFE).exp2();
        self.last[e] = self.clock;
    }
    /// The shadow LRU's answer for a lookup of `e` (and its update).
    pub(super) fn shadow_hit(&mut self, e: usize) -> bool {
        let cap = self.holder.len();
        if let Some(p) = self.shadow.iter().position(|&x| x == e) {
            self.shadow.remove(p);
            self.shadow.push(e);
            return true;
        }
        if self.shadow.len() == cap {
            self.shadow.remove(0);
        }
        self.shadow.push(e);
        false
    }
    /// The slot for `e`, which is not resident, among the slots not holding one of `keep`.
    pub(super) fn victim(&self, policy: Policy, e: usize, keep: &[usize]) -> Option<usize> {
        if self.identity() {
            return Some(e);
        }
        if let Some(s) = self.holder.iter().position(Option::is_none) {
            return Some(s);
        }
        let mut best: Option<(f64, usize)> = None;
        for (s, h) in self.holder.iter().enumerate() {
            let Some(x) = *h else { continue };
            if keep.contains(&x) {
                continue;
            }
            let p = self.priority(policy, x);
            if best.is_none_or(|(bp, _)| p < bp) {
                best = Some((p, s));
            }
        }
        best.map(|(_, s)| s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hit rates (policy, the shadow LRU) of one layer's slots on a trace of single-expert lookups, run
    /// through the same bookkeeping the cache uses.
    fn replay(policy: Policy, experts: usize, slots: usize, trace: &[usize]) -> (f64, f64) {
        let mut s = Slots::new(experts, slots);
        let (mut hits, mut lru) = (0, 0);
        for &x in trace {
            s.clock += 1;
            lru += usize::from(s.shadow_hit(x));
            if s.slot_of[x].is_some() {
                hits += 1;
            } else {
                let v = s.victim(policy, x, &[x]).unwrap();
                if let Some(old) = s.holder[v].take() {
                    s.slot_of[old] = None;
                }
                s.holder[v] = Some(x);
                s.slot_of[x] = Some(v);
            }
            s.touch(x);
        }
        (hits as f64 / trace.len() as f64, lru as f64 / trace.len() as f64)
    }

    /// Lookups drawn independently with Zipf(`skew`) popularity over a random order of the experts.
    fn zipf_trace(experts: usize, skew: f64, n: usize, seed: u64) -> Vec<usize> {
        let w: Vec<f64> = (1..=experts).map(|r| 1.0 / (r as f64).powf(skew)).collect();
        let total: f64 = w.iter().sum();
        let mut perm: Vec<usize> = (0..experts).collect();
        for i in (1..experts).rev() {
            perm.swap(i, (crate::quant::fill::splitmix64(seed, i as u64) % (i as u64 + 1)) as usize);
        }
        (0..n)
            .map(|i| {
                let u = (crate::quant::fill::splitmix64(seed ^ 0xabc, i as u64) >> 11) as f64 / (1u64 << 53) as f64;
                let mut acc = 0.0;
                let r = w.iter().position(|&p| {
                    acc += p / total;
                    u < acc
                });
                perm[r.unwrap_or(experts - 1)]
            })
            .collect()
    }

    #[test]
    fn lrfu_beats_lru_when_some_experts_are_popular() {
        // Scout's 16 experts with a quarter of them in slots. Skewed popularity (as routers of trained MoE
        // models show): LRFU keeps the popular experts, LRU lets one-off picks push them out. Uniform
        // popularity (random weights): no policy can do better than slots/experts, and both get about that.
        for (skew, min_gain) in [(0.8, 0.03), (1.2, 0.03)] {
            let t = zipf_trace(16, skew, 20_000, 5);
            let (lrfu, lru) = replay(Policy::Lrfu, 16, 4, &t);
            let (lru_real, lru_shadow) = replay(Policy::Lru, 16, 4, &t);
            eprintln!("zipf {skew}: lrfu {lrfu:.3}, lru {lru:.3}");
            assert!((lru_real - lru_shadow).abs() < 1e-12, "the LRU policy and the shadow LRU disagree");
            assert!((lru - lru_shadow).abs() < 1e-12);
            assert!(lrfu > lru + min_gain, "zipf {skew}: lrfu {lrfu:.3} vs lru {lru:.3}");
        }
        let t = zipf_trace(16, 0.0, 20_000, 6);
        let (lrfu, lru) = replay(Policy::Lrfu, 16, 4, &t);
        eprintln!("uniform: lrfu {lrfu:.3}, lru {lru:.3}");
        assert!((lrfu - 0.25).abs() < 0.02 && (lru - 0.25).abs() < 0.02, "uniform: lrfu {lrfu:.3}, lru {lru:.3}");
    }
}
