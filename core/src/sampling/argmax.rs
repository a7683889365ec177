//! Greedy sampling's argmax, the scan every decode step runs over the whole vocabulary.

/// Index of the largest logit, lowest index on ties; NaN never wins; 0 when nothing is > -inf.
///
/// Two branch-free passes that the compiler vectorizes (a decode step runs this over the whole vocabulary):
/// the largest value, in `LANES` running maxima; then the first block of `LANES` that holds it, searched
/// in order.
pub fn argmax(logits: &[f32]) -> u32 {
    const LANES: usize = 16;
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let blocks = logits.chunks_exact(LANES);
    let tail = blocks.remainder();
    for block in blocks.clone() {
        for j in 0..LANES {
            lanes[j] = if block[j] > lanes[j] { block[j] } else { lanes[j] };
        }
    }
    let max = lanes.iter().chain(tail).fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m });
    if max == f32::NEG_INFINITY {
        return 0;
    }
    let first = |s: &[f32]| s.iter().position(|&v| v == max);
    for (b, block) in blocks.enumerate() {
        if block.iter().fold(false, |hit, &v| hit | (v == max)) {
            return (b * LANES + first(block).unwrap_or(0)) as u32;
        }
    }
    (logits.len() - tail.len() + first(tail).unwrap_or(0)) as u32
}

#[cfg(test)]
mod tests {
    use super::argmax;

    #[test]
    fn argmax_matches_a_scan_in_order() {
        let naive = |l: &[f32]| {
            let (mut b, mut bv) = (0u32, f32::NEG_INFINITY);
            for (i, &v) in l.iter().enumerate() {
                if v > bv {
                    (b, bv) = (i as u32, v);
                }
            }
            b
        };
        let mut rng = 12345u64;
        let mut next = move || {
            rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (rng >> 33) as u32
        };
        let specials = [f32::NAN, f32::NEG_INFINITY, f32::INFINITY, f32::MAX, 0.0, -0.0, 1.0];
        for len in [0, 1, 5, 15, 16, 17, 33, 100, 1000, 32000] {
            for trial in 0..20 {
                // Few distinct values, so ties (across lanes and within one) are common.
                let l: Vec<f32> = (0..len)
                    .map(|_| match next() % 10 {
                        0 if trial % 2 == 0 => specials[next() as usize % specials.len()],
                        _ => (next() % 7) as f32 - 3.0,
                    })
                    .collect();
                assert_eq!(argmax(&l), naive(&l), "len {len} trial {trial}: {l:?}");
                let all_low: Vec<f32> =
                    (0..len).map(|i| if i % 3 == 0 { f32::NAN } else { f32::NEG_INFINITY }).collect();
                assert_eq!(argmax(&all_low), 0);
            }
        }
    }
}
