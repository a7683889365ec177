//! Routed experts streamed on demand: the expert cache behind `--expert-cache SIZE`.
//!
//! With a cache, a model loads everything but its routed experts (embeddings, attention, norms, routers,
//! shared experts and lm_head stay resident). Each MoE layer gets a few device *slots*, weights of the
//! experts' own format and shape with a leading slot axis ([S, D, 2F] and [S, F, D]); the byte budget is
//! split evenly across the MoE layers (every slot is allocated at load, so the device memory the cache
//! takes is known then and never grows). When a layer's router has picked its experts, the host reads the
//! picks (the one wait per MoE layer; with prefetch a second read, of the next layer's predicted picks,
//! follows it with nothing new to wait for), fetches the experts that are not in a slot from the
//! [`ExpertSource`] (the checkpoint, read with positioned reads and checked; a synthetic generator), writes
//! them into slots chosen by the eviction policy, and runs the layer's experts on the slots with the picks
//! renumbered to slot numbers. A step that needs more experts than the layer has slots runs in rounds of
//! whole rows, the other rows' picks set to a slot number past the end, which [`Backend::moe`] skips: every
//! row gets exactly the sum the resident model gives it, so the logits are identical at any budget.
//!
//! A layer whose slots hold all of its experts keeps expert `e` in slot `e`; once all have been fetched it
//! runs exactly like the resident model (no read, no renumbering).
//!
//! Eviction: [`Policy::Lrfu`] (the default) ranks experts by a recency-weighted use count (LRFU: each use
//! adds 1, and the count halves every [`LRFU_HALF_LIFE`] calls of the layer), which keeps an expert that is
//! used often but not on every token; [`Policy::Lru`] is plain least-recently-used. Every cache also
//! replays its accesses through a shadow LRU of the same size, so the statistics show both hit rates for the
//! same run.
//!
//! Prefetch: when the next layer streams too, its router is applied to the current layer's input (the
//! hidden state changes little from one layer to the next) and its likely experts are fetched on a
//! background thread while this layer's experts and the next layer's attention run; the next layer takes
//! them from there (waiting for one still in flight) instead of reading them itself. Host memory for
//! prefetched experts is bounded by the next layer's slots.

mod prefetch;
mod slots;
mod stats;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::backend::Backend;
use crate::checkpoint::TensorRef;
use crate::config::TextConfig;
use crate::error::{HerdError, Result};
use crate::quant::DType;
use crate::source::ExpertSource;

use prefetch::Prefetcher;
use slots::Slots;
pub use slots::{Policy, LRFU_HALF_LIFE};
pub use stats::ExpertStats;

/// Time spent, for the statistics (web-time's clock works in a browser too, where std's panics).
struct Stopwatch(web_time::Instant);

impl Stopwatch {
    fn start() -> Stopwatch {
        Stopwatch(web_time::Instant::now())
    }
    fn secs(&self) -> f64 {
        self.0.elapsed().as_secs_f64()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ExpertCacheOptions {
    /// Device bytes for all routed experts together.
    pub budget: u64,
    pub policy: Policy,
    /// Fetch the next layer's likely experts ahead, on a background thread.
    pub prefetch: bool,
    /// Read every layer's picks on every step, even once a layer holds all its experts (which then runs
    /// without reading them): for a live picture of the routing.
    pub trace_picks: bool,
}

impl ExpertCacheOptions {
    pub fn new(budget: u64) -> Self {
        ExpertCacheOptions { budget, policy: Policy::Lrfu, prefetch: true, trace_picks: false }
    }
}

/// A byte count such as `96KiB`, `512MiB`, `24GiB`, `1.5GB` or `1000000` (binary and decimal units).
pub fn parse_size(s: &str) -> std::result::Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    if num.is_empty() {
        return Err(format!("{s:?} is not a size (e.g. 96KiB, 512MiB, 24GiB)"));
    }
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        u => return Err(format!("{s:?}: unknown unit {u:?} (B, KiB, MiB, GiB, TiB, KB, MB, GB, TB)")),
    };
    let v: f64 = num.parse().map_err(|_| format!("{s:?} is not a size (e.g. 96KiB, 512MiB, 24GiB)"))?;
    if !v.is_finite() || v < 0.0 {
        return Err(format!("{s:?} is not a size"));
    }
    let bytes = v * mult as f64;
    if bytes >= u64::MAX as f64 {
        return Err(format!("{s:?} is more bytes than any machine has"));
    }
    Ok(bytes as u64)
}

struct LayerSlots<B: Backend> {
    names: [String; 2],
    shapes: [Vec<usize>; 2],
    gate_up: B::Weight,
    down: B::Weight,
    slots: Slots,
}

struct State<B: Backend> {
    layers: Vec<Option<LayerSlots<B>>>,
    stats: ExpertStats,
    resident: u64,
    /// Per layer, the experts its router picked in the last step that read them ([rows × k]).
    picks: Vec<Vec<u32>>,
}

/// The expert cache of one model (see the module docs).
pub(crate) struct ExpertCache<B: Backend> {
    source: Arc<dyn ExpertSource>,
    opts: ExpertCacheOptions,
    experts: usize,
    k: usize,
    per_expert: [u64; 2],
    state: Mutex<State<B>>,
    prefetcher: Option<Prefetcher>,
}

/// The buffers a streamed MoE layer needs besides the step's own.
pub(crate) struct StreamScratch<'a, B: Backend> {
    pub a: &'a B::Buffer,
    pub o: &'a B::Buffer,
    pub idx: &'a B::Buffer,
    pub score: &'a B::Buffer,
    pub slot_idx: &'a B::Buffer,
    pub pred_logits: &'a B::Buffer,
    pub pred_idx: &'a B::Buffer,
    pub pred_score: &'a B::Buffer,
}

/// What one fetch cost, for the statistics.
struct FetchTiming {
    read: f64,
    wait: f64,
    prefetched: bool,
}

impl FetchTiming {
    fn add_to(&self, stats: &mut ExpertStats) {
        stats.read_secs += self.read;
        stats.wait_secs += self.wait;
        stats.prefetch_used += u64::from(self.prefetched);
    }
}

fn layer_mut<B: Backend>(layers: &mut [Option<LayerSlots<B>>], layer: usize) -> Result<&mut LayerSlots<B>> {
    layers
        .get_mut(layer)
        .and_then(Option::as_mut)
        .ok_or_else(|| HerdError::internal(format!("layer {layer} has no expert slots")))
}

fn lock<T>(m: &Mutex<T>) -> Result<std::sync::MutexGuard<'_, T>> {
    m.lock().map_err(|_| HerdError::internal("expert cache poisoned by an earlier panic"))
}

impl<B: Backend> ExpertCache<B> {
    /// Slots for every MoE layer of `cfg` within `opts.budget`, allocated now on `be`.
    pub fn new(be: &B, source: Arc<dyn ExpertSource>, cfg: &TextConfig, opts: ExpertCacheOptions) -> Result<Self> {
        let (e, d, f, k) = (cfg.num_local_experts, cfg.hidden_size, cfg.intermediate_size, cfg.num_experts_per_tok);
        let moe: Vec<usize> = (0..cfg.num_hidden_layers).filter(|&i| cfg.moe_layers[i]).collect();
        let shapes = [vec![e, d, 2 * f], vec![e, f, d]];
        let names = |i: usize| {
            let p = format!("model.layers.{i}.feed_forward.experts.");
            [format!("{p}gate_up_proj"), format!("{p}down_proj")]
        };
        let mut formats = Vec::with_capacity(moe.len());
        for &i in &moe {
            let n = names(i);
            formats.push([source.format(&n[0], &shapes[0])?, source.format(&n[1], &shapes[1])?]);
        }
        // Device bytes of `s` slots of a layer.
        let cost = |fm: &[DType; 2], s: usize| -> Result<u64> {
            let mut b = 0;
            for (dt, sh) in fm.iter().zip(&shapes) {
                let mut sh = sh.clone();
                sh[0] = s;
                b += dt.bytes(&sh).map_err(|m| HerdError::Input(format!("expert slots: {m}")))? as u64;
            }
            Ok(b)
        };
        let mut per_expert = [0u64; 2];
        if let Some(fm) = formats.first() {
            for (j, (dt, sh)) in fm.iter().zip(&shapes).enumerate() {
                let mut one = sh.clone();
                one[0] = 1;
                per_expert[j] = dt.bytes(&one).map_err(HerdError::Input)? as u64;
            }
        }
        let one: u64 = per_expert.iter().sum();
        let nl = moe.len();
        let total = opts.budget.checked_div(one).map_or(0, |n| n.min((nl * e) as u64) as usize);
        let need = nl * k;
        if nl > 0 && total < need {
            return Err(HerdError::Input(format!(
                "--expert-cache {} B holds {total} experts of {one} B; the model needs at least {need} ({k} per MoE layer × {nl} layers, {} B)",
                opts.budget,
                need as u64 * one
            )));
        }
        // Even split, the remainder to the first layers; then trimmed until the allocations fit.
        let mut slots: Vec<usize> =
            (0..nl).map(|j| (total / nl.max(1) + usize::from(j < total % nl.max(1))).min(e)).collect();
        loop {
            let mut sum = 0;
            for (fm, &s) in formats.iter().zip(&slots) {
                sum += cost(fm, s)?;
            }
            if sum <= opts.budget {
                break;
            }
            let Some(j) = (0..nl).filter(|&j| slots[j] > k).max_by_key(|&j| slots[j]) else {
                return Err(HerdError::Input(format!(
                    "--expert-cache {} B cannot hold {k} experts per MoE layer",
                    opts.budget
                )));
            };
            slots[j] -= 1;
        }
        let mut layers: Vec<Option<LayerSlots<B>>> = (0..cfg.num_hidden_layers).map(|_| None).collect();
        let mut capacity = 0;
        for ((&i, fm), &s) in moe.iter().zip(&formats).zip(&slots) {
            let n = names(i);
            let mut sh = shapes.clone();
            sh[0][0] = s;
            sh[1][0] = s;
            capacity += cost(fm, s)?;
            layers[i] = Some(LayerSlots {
                gate_up: be.alloc_weight(&format!("{} (slots)", n[0]), &sh[0], fm[0])?,
                down: be.alloc_weight(&format!("{} (slots)", n[1]), &sh[1], fm[1])?,
                names: n,
                shapes: shapes.clone(),
                slots: Slots::new(e, s),
            });
        }
        let stats = ExpertStats {
            policy: opts.policy.name().into(),
            budget: opts.budget,
            capacity,
            slots: slots.iter().sum(),
            experts: nl * e,
            expert_bytes: one,
            ..Default::default()
        };
        let prefetcher = if opts.prefetch { Prefetcher::start(source.clone()) } else { None };
        Ok(ExpertCache {
            source,
            opts,
            experts: e,
            k,
            per_expert,
            state: Mutex::new(State { layers, stats, resident: 0, picks: vec![Vec::new(); cfg.num_hidden_layers] }),
            prefetcher,
        })
    }

    pub fn stats(&self) -> ExpertStats {
        self.state.lock().map(|s| s.stats.clone()).unwrap_or_default()
    }

    /// The experts each streamed layer's router picked in the last step that read them: (layer, [rows × k]),
    /// rows in step order. A layer whose slots hold all its experts stops reading its picks once they are
    /// all fetched, and keeps the picks it read last.
    pub fn picks(&self) -> Vec<(usize, Vec<u32>)> {
        let Ok(st) = self.state.lock() else { return Vec::new() };
        st.picks.iter().enumerate().filter(|(i, _)| st.layers[*i].is_some()).map(|(i, p)| (i, p.clone())).collect()
    }

    /// Whether the layer runs like the resident model now (every expert in its own slot).
    fn complete(&self, layer: usize) -> bool {
        self.state
            .lock()
            .is_ok_and(|s| s.layers.get(layer).and_then(Option::as_ref).is_some_and(|l| l.slots.complete()))
    }

    /// Layer `layer`'s routed experts for `t` rows whose picks are in `s.idx`/`s.score`, accumulated into
    /// `s.o`; `next` is the next MoE layer and its router, for the prefetch. The state's lock is not held
    /// while an expert is fetched (a browser's fetch yields to the page, which may ask for the statistics).
    pub async fn moe(
        &self,
        be: &B,
        s: &StreamScratch<'_, B>,
        t: usize,
        layer: usize,
        next: Option<(usize, &B::Weight)>,
    ) -> Result<()> {
        let (e, k) = (self.experts, self.k);
        if !self.opts.trace_picks && self.complete(layer) {
            let st = lock(&self.state)?;
            let l = st.layers[layer].as_ref().ok_or_else(|| HerdError::internal("expert cache layer missing"))?;
            return be.moe(s.a, t, s.idx, s.score, k, &l.gate_up, &l.down, s.o);
        }
        let predict = match (&self.prefetcher, next) {
            (Some(_), Some((nl, router))) if !self.complete(nl) => {
                be.matmul(s.a, t, router, s.pred_logits)?;
                be.router_topk(s.pred_logits, t, e, k, s.pred_idx, s.pred_score)?;
                Some(nl)
            }
            _ => None,
        };
        let mut picks = be.read_u32_async(s.idx).await?;
        picks.truncate(t * k);
        if let (Some(nl), Some(pf)) = (predict, &self.prefetcher) {
            let mut pred = be.read_u32_async(s.pred_idx).await?;
            pred.truncate(t * k);
            self.prefetch(pf, nl, &pred)?;
        }
        if let Some(&bad) = picks.iter().find(|&&x| x as usize >= e) {
            return Err(HerdError::Input(format!("layer {layer}: the router picked expert {bad} of {e}")));
        }
        let (cap, names, shapes) = {
            let mut st = lock(&self.state)?;
            if let Some(p) = st.picks.get_mut(layer) {
                p.clone_from(&picks);
            }
            let l = st.layers.get_mut(layer).and_then(Option::as_mut);
            let l = l.ok_or_else(|| HerdError::internal(format!("layer {layer} has no expert slots")))?;
            l.slots.clock += 1;
            (l.slots.holder.len(), l.names.clone(), l.shapes.clone())
        };
        let identity = cap == e;
        // Rounds: a set of at most `cap` experts (taken greedily in row order) and every row whose picks
        // all lie in it. With top-1 routing each expert's rows are then all in one round, in order, as the
        // resident model groups them, so even the CPU's per-expert matrix products see the same rows.
        let rows_of: Vec<Vec<usize>> = (0..t)
            .map(|r| {
                let mut v: Vec<usize> = picks[r * k..(r + 1) * k].iter().map(|&x| x as usize).collect();
                v.sort_unstable();
                v.dedup();
                v
            })
            .collect();
        let mut done = vec![false; t];
        let mut rounds: Vec<(Vec<bool>, Vec<usize>)> = Vec::new();
        while let Some(first) = (0..t).find(|&r| !done[r]) {
            let mut set: Vec<usize> = Vec::new();
            for r in first..t {
                if done[r] {
                    continue;
                }
                let add: Vec<usize> = rows_of[r].iter().copied().filter(|x| !set.contains(x)).collect();
                if set.len() + add.len() <= cap {
                    set.extend(add);
                }
            }
            let mut member = vec![false; t];
            for r in first..t {
                if !done[r] && rows_of[r].iter().all(|x| set.contains(x)) {
                    member[r] = true;
                    done[r] = true;
                }
            }
            rounds.push((member, set));
        }
        let one: u64 = self.per_expert.iter().sum();
        for (n, (member, need)) in rounds.iter().enumerate() {
            // Slots for this round's missing experts are chosen (and claimed) first; then each is fetched
            // with the lock released and written into its slot.
            let misses: Vec<(usize, usize)> = {
                let mut st = lock(&self.state)?;
                let State { layers, stats, resident, .. } = &mut *st;
                let l = layer_mut(layers, layer)?;
                stats.extra_rounds += u64::from(n > 0);
                let mut misses = Vec::new();
                for &x in need {
                    stats.lookups += 1;
                    stats.lru_hits += u64::from(l.slots.shadow_hit(x));
                    if l.slots.slot_of[x].is_some() {
                        stats.hits += 1;
                    } else {
                        let slot = l.slots.victim(self.opts.policy, x, need).ok_or_else(|| {
                            HerdError::internal(format!("layer {layer}: no slot free for expert {x} ({cap} slots)"))
                        })?;
                        if let Some(old) = l.slots.holder[slot].take() {
                            l.slots.slot_of[old] = None;
                            *resident -= one;
                        }
                        l.slots.holder[slot] = Some(x);
                        l.slots.slot_of[x] = Some(slot);
                        *resident += one;
                        stats.peak_resident = stats.peak_resident.max(*resident);
                        misses.push((x, slot));
                    }
                    l.slots.touch(x);
                }
                misses
            };
            for (j, &(x, slot)) in misses.iter().enumerate() {
                let fetched = self.fetch(layer, x, &names, &shapes).await;
                let mut st = lock(&self.state)?;
                let State { layers, stats, resident, .. } = &mut *st;
                let l = layer_mut(layers, layer)?;
                let written = fetched.and_then(|(rows, timing)| {
                    timing.add_to(stats);
                    let t0 = Stopwatch::start();
                    be.write_weight_row(&l.gate_up, slot, &rows[0])?;
                    be.write_weight_row(&l.down, slot, &rows[1])?;
                    stats.upload_secs += t0.secs();
                    stats.fetched += 1;
                    stats.bytes_moved += (rows[0].bytes().len() + rows[1].bytes().len()) as u64;
                    Ok(())
                });
                if let Err(err) = written {
                    // The claimed slots that were not written hold nothing usable.
                    for &(x, slot) in &misses[j..] {
                        l.slots.holder[slot] = None;
                        l.slots.slot_of[x] = None;
                        *resident -= one;
                    }
                    return Err(err);
                }
            }
            let st = lock(&self.state)?;
            let l = st.layers[layer].as_ref().ok_or_else(|| HerdError::internal("expert cache layer missing"))?;
            let idx = if identity && rounds.len() == 1 {
                s.idx
            } else {
                // Picks as slot numbers; rows outside this round get `cap`, which the op skips.
                let remap: Vec<u32> = picks
                    .iter()
                    .enumerate()
                    .map(|(j, &x)| {
                        let r = j / k;
                        match l.slots.slot_of[x as usize] {
                            Some(sl) if member[r] => sl as u32,
                            _ => cap as u32,
                        }
                    })
                    .collect();
                be.write_u32(s.slot_idx, &remap)?;
                s.slot_idx
            };
            be.moe(s.a, t, idx, s.score, k, &l.gate_up, &l.down, s.o)?;
        }
        if let Some(pf) = &self.prefetcher {
            pf.discard(layer);
        }
        Ok(())
    }

    /// Expert `x` of a layer: from the prefetcher if it fetched it, else fetched now.
    async fn fetch(
        &self,
        layer: usize,
        x: usize,
        names: &[String; 2],
        shapes: &[Vec<usize>; 2],
    ) -> Result<([TensorRef; 2], FetchTiming)> {
        let t0 = Stopwatch::start();
        if let Some(r) = self.prefetcher.as_ref().and_then(|p| p.take(layer, x)) {
            return Ok((r?, FetchTiming { read: 0.0, wait: t0.secs(), prefetched: true }));
        }
        let r = [
            self.source.fetch_async(&names[0], &shapes[0], x).await?,
            self.source.fetch_async(&names[1], &shapes[1], x).await?,
        ];
        let dt = t0.secs();
        Ok((r, FetchTiming { read: dt, wait: dt, prefetched: false }))
    }

    /// Requests the predicted experts of layer `nl` that are not resident, most picked first, at most as
    /// many as the layer has slots.
    fn prefetch(&self, pf: &Prefetcher, nl: usize, pred: &[u32]) -> Result<()> {
        let mut count: HashMap<usize, usize> = HashMap::new();
        for &x in pred {
            if (x as usize) < self.experts {
                *count.entry(x as usize).or_default() += 1;
            }
        }
        let mut order: Vec<(usize, usize)> = count.into_iter().collect();
        order.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let mut st = lock(&self.state)?;
        let State { layers, stats, .. } = &mut *st;
        let Some(l) = layers.get(nl).and_then(Option::as_ref) else { return Ok(()) };
        for &(x, _) in order.iter().take(l.slots.holder.len()) {
            if l.slots.slot_of[x].is_none() && pf.request(nl, x, &l.names, &l.shapes) {
                stats.prefetched += 1;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_in_binary_and_decimal_units() {
        assert_eq!(parse_size("96KiB"), Ok(96 << 10));
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("24GiB"), Ok(24 << 30));
        assert_eq!(parse_size("1.5GB"), Ok(1_500_000_000));
        assert_eq!(parse_size("1000"), Ok(1000));
        assert_eq!(parse_size(" 2 g "), Ok(2 << 30));
        for bad in ["", "lots", "12XB", "-1KiB", "1.2.3MiB"] {
            assert!(parse_size(bad).is_err(), "{bad:?} parsed");
        }
    }
}
