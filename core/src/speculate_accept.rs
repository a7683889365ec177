//! The acceptance rule of speculative sampling (Leviathan et al. 2023, Chen et al. 2023): drafted token `x`
//! is kept with probability min(1, p(x) / q(x)), where p is the target's distribution at its position and q
//! the drafter's; at the first rejection the token is drawn from the residual max(p − q, 0), normalised; if
//! every drafted token is kept, one more is drawn from the target's distribution after them. The tokens
//! that come out are distributed exactly as the target's own sampling would give them.

use crate::sampling::Distribution;

/// What a verification gives: how many drafted tokens were kept, and the token after them (drawn from the
/// residual at the first rejection, or from the target's distribution after the last drafted token).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    pub accepted: usize,
    pub next: u32,
}

/// Runs the rule over `drafts`. `target(j)` is the target's distribution at drafted position `j` (0 ..=
/// drafts.len()), given the drafted tokens before it; it is asked only for the positions reached. `draft_q`
/// gives the drafter's distribution at position `j`; None: point drafts (all of q's mass on the drafted
/// token, so p(x) is the chance to keep it and the residual is p without x). `draw()` gives uniform draws in
/// [0, 1) (one per drafted token looked at, one for the token after).
pub fn accept(
    drafts: &[u32],
    mut target: impl FnMut(usize) -> Distribution,
    draft_q: Option<&dyn Fn(usize) -> Distribution>,
    mut draw: impl FnMut() -> f32,
) -> Verdict {
    for (j, &x) in drafts.iter().enumerate() {
        let p = target(j);
        let q = draft_q.map(|f| f(j));
        let px = p.prob(x);
        let qx = q.as_ref().map_or(1.0, |q| q.prob(x));
        let u = f64::from(draw());
        if qx > 0.0 && u < (px / qx).min(1.0) {
            continue;
        }
        // Rejected: draw from max(p − q, 0).
        let next = residual(
            &p,
            |id| match &q {
                Some(q) => q.prob(id),
                None => f64::from(u8::from(id == x)),
            },
            draw(),
        );
        return Verdict { accepted: j, next };
    }
    let p = target(drafts.len());
    Verdict { accepted: drafts.len(), next: sample(&p, draw()) }
}

/// A token drawn from `p` with the draw `u`, in id order (as [`crate::sampling::pick`] draws).
fn sample(p: &Distribution, u: f32) -> u32 {
    residual(p, |_| 0.0, u)
}

/// A token drawn from max(p − q, 0), normalised, with the draw `u`, in id order. Where nothing is left
/// (rounding), p's most likely token.
fn residual(p: &Distribution, q: impl Fn(u32) -> f64, u: f32) -> u32 {
    match p {
        Distribution::Point(id) => *id,
        Distribution::Weights { cand, total, best } => {
            let w = |c: &(u32, f32)| (f64::from(c.1.exp()) / total - q(c.0)).max(0.0);
            let sum: f64 = cand.iter().map(w).sum();
            if sum <= 0.0 {
                return *best;
            }
            let mut rest = f64::from(u) * sum;
            for c in cand {
                let wc = w(c);
                rest -= wc;
                if rest < 0.0 && wc > 0.0 {
                    return c.0;
                }
            }
            cand.iter().rev().find(|c| w(c) > 0.0).map_or(*best, |c| c.0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampling::{distribution, SamplingParams};
    use rand::{Rng, SeedableRng};

    fn dist(logits: &[f32]) -> Distribution {
        let p = SamplingParams { temperature: 1.0, ..Default::default() };
        distribution(&mut logits.to_vec(), &[], &p)
    }

    /// Pearson's statistic of `counts` against probabilities `p` over `n` draws.
    fn chi2(counts: &[usize], p: &[f64], n: usize) -> f64 {
        counts
            .iter()
            .zip(p)
            .filter(|(_, &p)| p > 0.0)
            .map(|(&c, &p)| (c as f64 - n as f64 * p).powi(2) / (n as f64 * p))
            .sum()
    }

    /// The first token out of one verification, drafted `x` (point or from `q`), against the target's p:
    /// its law must be p, whatever the draft.
    #[test]
    fn the_first_token_is_distributed_as_the_target() {
        let p = dist(&[0.0, 1.0, 2.0, -1.0]);
        let probs: Vec<f64> = (0..4).map(|i| p.prob(i)).collect();
        let q = dist(&[2.0, 0.0, -1.0, 1.0]);
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let n = 40_000;
        for (name, with_q) in [("point draft", false), ("draft distribution", true)] {
            let mut counts = [0usize; 4];
            for _ in 0..n {
                let x = if with_q { sample(&q, rng.random()) } else { 0 };
                let qf = |_: usize| q.clone();
                let v = accept(
                    &[x],
                    |_| p.clone(),
                    with_q.then_some(&qf as &dyn Fn(usize) -> Distribution),
                    || rng.random(),
                );
                counts[if v.accepted == 1 { x } else { v.next } as usize] += 1;
            }
            // 3 degrees of freedom: P(chi2 > 16.3) = 0.001.
            let c = chi2(&counts, &probs, n);
            assert!(c < 16.3, "{name}: chi2 {c} ({counts:?} for {probs:?})");
        }
        // A wrong rule (keep the draft with p(x), else draw from p itself) fails the same check.
        let mut counts = [0usize; 4];
        for _ in 0..n {
            let u: f32 = rng.random();
            let t = if f64::from(u) < p.prob(0) { 0 } else { sample(&p, rng.random()) };
            counts[t as usize] += 1;
        }
        assert!(chi2(&counts, &probs, n) > 16.3, "the wrong rule passed: {counts:?}");
    }

    #[test]
    fn greedy_targets_keep_exactly_the_matching_prefix() {
        let drafts = [5, 6, 7];
        let argmax = [5u32, 6, 9, 1];
        let v = accept(&drafts, |j| Distribution::Point(argmax[j]), None, || 0.5);
        assert_eq!(v, Verdict { accepted: 2, next: 9 });
        let all = accept(&[5, 6], |j| Distribution::Point(argmax[j]), None, || 0.99);
        assert_eq!(all, Verdict { accepted: 2, next: 9 });
    }
}
