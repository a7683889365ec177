//! The cuts [`super::distribution`] makes on the candidate list: top-k's threshold and top-p's smallest set of
//! most likely tokens, both in (logit descending, id ascending) order.

/// Keep the smallest prefix (in descending-logit order) of `cand` whose softmax mass is
/// ≥ `top_p` of the total. Linear time: one pass bins the mass into logit buckets to find the
/// bucket where the cumulative mass crosses `top_p`; only that bucket is sorted.
pub(super) fn top_p_filter(cand: &mut Vec<(u32, f32)>, top_p: f32) {
    const NB: usize = 1024;
    let max = max_logit(cand);
    let min = cand.iter().fold(f32::INFINITY, |m, c| m.min(c.1));
    let width = (max - min) / NB as f32;
    // Bucket 0 holds the largest logits. NaN (from inf/inf) casts to 0: never out of range.
    let bucket = |l: f32| {
        if width > 0.0 {
            (((max - l) / width) as usize).min(NB - 1)
        } else {
            0
        }
    };
    let mut mass = vec![0.0f64; NB];
    let mut total = 0.0f64;
    for c in cand.iter() {
        let w = f64::from((c.1 - max).exp());
        mass[bucket(c.1)] += w;
        total += w;
    }
    let target = f64::from(top_p) * total;
    let (mut cum, mut cross) = (0.0f64, NB - 1);
    for (b, &m) in mass.iter().enumerate() {
        if cum + m >= target {
            cross = b;
            break;
        }
        cum += m;
    }
    let mut border: Vec<(u32, f32)> = cand.iter().filter(|c| bucket(c.1) == cross).copied().collect();
    cand.retain(|c| bucket(c.1) < cross);
    border.sort_unstable_by(desc);
    for c in border {
        cum += f64::from((c.1 - max).exp());
        cand.push(c);
        if cum >= target {
            break;
        }
    }
}

fn max_logit(cand: &[(u32, f32)]) -> f32 {
    cand.iter().fold(f32::NEG_INFINITY, |m, c| m.max(c.1))
}

/// The k-th largest of `logits` (0 < k < its length; no NaN) in f32's total order, as
/// `select_nth_unstable_by(k - 1, desc)` finds it among the candidates. It is read from the logits
/// themselves, so top-k collects only the candidates that pass it. For a small k, one pass keeps the k largest
/// so far in a min-heap: most logits fall below its least and cost one comparison (a vocabulary of 202,048
/// and HF's default top-k of 50), where the selection moves every candidate several times.
pub(super) fn kth_largest(logits: &[f32], k: usize) -> f32 {
    if k > 1024 {
        let mut all = logits.to_vec();
        return *all.select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a)).1;
    }
    // f32's total order as i32's: negative values get their magnitude bits flipped (an involution).
    let key = |x: f32| {
        let b = x.to_bits() as i32;
        b ^ (((b >> 31) as u32) >> 1) as i32
    };
    let mut heap = std::collections::BinaryHeap::with_capacity(k);
    // Blocks of 16: once the heap is full, a block whose largest key is not above the heap's least is skipped
    // after one vectorized pass (most of a vocabulary is).
    for block in logits.chunks(16) {
        if heap.len() == k {
            let least = heap.peek().map_or(i32::MIN, |r: &std::cmp::Reverse<i32>| r.0);
            if block.iter().fold(i32::MIN, |m, &l| m.max(key(l))) <= least {
                continue;
            }
        }
        for &l in block {
            let v = std::cmp::Reverse(key(l));
            if heap.len() < k {
                heap.push(v);
            } else if let Some(mut least) = heap.peek_mut() {
                if v < *least {
                    *least = v;
                }
            }
        }
    }
    let kth = heap.peek().map_or(i32::MIN, |r| r.0);
    f32::from_bits(key(f32::from_bits(kth as u32)) as u32)
}

/// Descending by logit, then ascending by id (a total order, so selection is deterministic).
fn desc(a: &(u32, f32), b: &(u32, f32)) -> std::cmp::Ordering {
    b.1.total_cmp(&a.1).then(a.0.cmp(&b.0))
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    /// The heap's k-th largest logit is the selection's over the candidates (the finite logits), on logits with
    /// ties, both zeros, masked ids (-inf, not candidates) and spreads from tiny to wide, for k from 1 to past
    /// the heap's limit.
    #[test]
    fn kth_largest_matches_the_selection() {
        let mut seed = 7u64;
        let mut next = || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (seed >> 33) as u32
        };
        for n in [2usize, 3, 50, 4096, 5000] {
            for spread in [0.0f32, 1e-3, 1.0, 30.0] {
                let cand: Vec<(u32, f32)> = (0..n as u32)
                    .map(|i| {
                        let r = next();
                        let l = match r % 11 {
                            0 => 0.0,
                            1 => -0.0,
                            2 => f32::NEG_INFINITY,
                            _ => -(((r >> 3) % 64) as f32) * spread,
                        };
                        (i, l)
                    })
                    .collect();
                let logits: Vec<f32> = cand.iter().map(|c| c.1).collect();
                let finite: Vec<(u32, f32)> = cand.into_iter().filter(|c| c.1 > f32::NEG_INFINITY).collect();
                for k in [1, 2, 7, 50, 1024, 1025, 3000].into_iter().filter(|&k| k < finite.len()) {
                    let mut all = finite.clone();
                    let want = all.select_nth_unstable_by(k - 1, desc).1 .1;
                    let got = kth_largest(&logits, k);
                    assert_eq!(got.to_bits(), want.to_bits(), "n={n} spread={spread} k={k}: {got} vs {want}");
                }
            }
        }
    }

    #[test]
    fn top_p_filter_matches_full_sort_reference() {
        let mut rng = StdRng::seed_from_u64(99);
        for round in 0..40 {
            let n = [2, 10, 1000, 5000][round % 4];
            let spread = [0.1f32, 1.0, 5.0, 30.0][(round / 4) % 4];
            let logits: Vec<f32> = (0..n).map(|_| rng.random::<f32>() * spread).collect();
            for top_p in [0.01f32, 0.3, 0.5, 0.9, 0.99] {
                let mut cand: Vec<(u32, f32)> = logits.iter().enumerate().map(|(i, &l)| (i as u32, l)).collect();
                top_p_filter(&mut cand, top_p);
                let mut got: Vec<u32> = cand.iter().map(|c| c.0).collect();
                got.sort_unstable();
                // Reference: full sort, cumulative sum.
                let mut all: Vec<(u32, f32)> = logits.iter().enumerate().map(|(i, &l)| (i as u32, l)).collect();
                all.sort_unstable_by(desc);
                let max = all[0].1;
                let total: f64 = all.iter().map(|c| f64::from((c.1 - max).exp())).sum();
                let mut cum = 0.0;
                let mut want = Vec::new();
                for c in &all {
                    cum += f64::from((c.1 - max).exp());
                    want.push(c.0);
                    if cum >= f64::from(top_p) * total {
                        break;
                    }
                }
                want.sort_unstable();
                // Summation order differs: allow a one-token difference at the boundary only.
                let diff = got.len().abs_diff(want.len());
                assert!(diff <= 1, "n={n} spread={spread} p={top_p}: {} vs {}", got.len(), want.len());
                let short = if got.len() < want.len() { &got } else { &want };
                let long = if got.len() < want.len() { &want } else { &got };
                assert!(short.iter().all(|i| long.contains(i)), "n={n} spread={spread} p={top_p}");
            }
        }
    }
}
