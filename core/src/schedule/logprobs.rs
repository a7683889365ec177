//! Log-probabilities of a row of logits and the most likely ids, for requests that ask for them.

/// log(softmax(row)), in f64 for the sum.
pub(super) fn log_softmax(row: &[f32]) -> Vec<f32> {
    let max = row.iter().copied().filter(|x| !x.is_nan()).fold(f32::NEG_INFINITY, f32::max);
    if !max.is_finite() {
        return vec![f32::NEG_INFINITY; row.len()];
    }
    let sum: f64 = row.iter().filter(|x| !x.is_nan()).map(|&x| ((x - max) as f64).exp()).sum();
    let log_sum = sum.ln() as f32;
    row.iter().map(|&x| if x.is_nan() { f32::NEG_INFINITY } else { x - max - log_sum }).collect()
}

/// The `n` most likely ids of a row of log-probabilities, most likely first (lower id first on ties).
pub(super) fn top_n(lp: &[f32], n: usize) -> Vec<(u32, f32)> {
    let mut best: Vec<(u32, f32)> = Vec::with_capacity(n + 1);
    for (i, &l) in lp.iter().enumerate() {
        if best.len() == n && best.last().is_none_or(|b| l <= b.1) {
            continue;
        }
        let at = best.partition_point(|b| b.1 >= l);
        best.insert(at, (i as u32, l));
        best.truncate(n);
    }
    best
}

#[cfg(test)]
mod tests {
    #[test]
    fn log_softmax_and_top_n() {
        let lp = super::log_softmax(&[1.0, 3.0, 2.0, f32::NAN, 3.0]);
        let total: f64 = lp.iter().map(|&l| (l as f64).exp()).sum();
        assert!((total - 1.0).abs() < 1e-6, "{total}");
        assert_eq!(lp[3], f32::NEG_INFINITY);
        let top = super::top_n(&lp, 3);
        assert_eq!(top.iter().map(|t| t.0).collect::<Vec<_>>(), [1, 4, 2]);
        assert!(super::top_n(&lp, 0).is_empty());
        assert_eq!(super::top_n(&lp, 9).len(), 5);
    }
}
