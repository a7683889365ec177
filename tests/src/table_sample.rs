//! The op table's `sample` cases.

use herd_core::backend::Backend;
use herd_core::sampling::SamplingParams;
use herd_core::Result;

use crate::reference as r;
use crate::table::{sampling, Out, Rng};
use crate::table_ops::{out, perf_only};

/// A sample case: vocabulary, rows, the sampling parameters, the logits' spread, ties (logits rounded to
/// quarters), specials (NaN and ±inf planted).
#[derive(Clone, Debug)]
pub struct SampleCase {
    pub vocab: usize,
    pub rows: usize,
    pub params: SamplingParams,
    pub spread: f32,
    pub ties: bool,
    pub specials: bool,
}

impl SampleCase {
    pub fn describe(&self) -> String {
        let p = &self.params;
        format!(
            "vocab={} rows={} T={} k={} p={} min_p={} pen={}{}{}",
            self.vocab,
            self.rows,
            p.temperature,
            p.top_k,
            p.top_p,
            p.min_p,
            p.repetition_penalty,
            if self.ties { " ties" } else { "" },
            if self.specials { " nan/inf" } else { "" }
        )
    }
}

/// `sample` rows: every filter alone and together, ties, NaN/inf logits, the penalty, batches, and Scout's
/// vocabulary. A large vocabulary gets peaked logits (a flat one over 2·10⁵ tokens leaves no clear margin).
pub(crate) fn sample_cases() -> Vec<SampleCase> {
    let c = |vocab, rows, params, spread, ties, specials| SampleCase { vocab, rows, params, spread, ties, specials };
    vec![
        c(1000, 3, sampling(0.0, 0, 1.0, 0.0, 1.0), 6.0, true, true),
        c(1000, 2, sampling(0.8, 0, 1.0, 0.0, 1.0), 6.0, false, false),
        c(50, 4, sampling(1.0, 5, 1.0, 0.0, 1.0), 6.0, false, false),
        c(64, 8, sampling(1.0, 7, 1.0, 0.0, 1.0), 2.0, true, false),
        c(5000, 2, sampling(0.6, 0, 0.9, 0.0, 1.0), 6.0, false, false),
        c(777, 16, sampling(1.0, 0, 0.5, 0.0, 1.0), 2.0, true, true),
        c(300, 2, sampling(1.0, 0, 1.0, 0.05, 1.0), 6.0, false, false),
        c(400, 2, sampling(0.7, 40, 0.8, 0.02, 1.3), 6.0, false, true),
        c(1000, 1, sampling(0.0, 0, 1.0, 0.0, 1.5), 6.0, false, false),
        c(202048, 1, sampling(0.6, 0, 0.9, 0.0, 1.0), 30.0, false, false),
        c(202048, 2, sampling(1.0, 50, 0.95, 0.0, 1.1), 30.0, false, false),
    ]
}

/// Runs a sample case; ids must equal the reference's exactly. Draws and logits are re-rolled until every
/// decision has a clear margin (see [`r::sample`]).
pub(crate) fn run<B: Backend>(be: &B, c: &SampleCase, rng: &mut Rng, perf: bool) -> Result<Out> {
    let SampleCase { vocab: v, rows: rows_, params: ref p, spread, ties, specials } = *c;
    let (mut logits, mut draws, mut want) = (Vec::new(), Vec::new(), Vec::new());
    let mut hist: Vec<Vec<u32>> = Vec::new();
    let mut clear = false;
    for _attempt in 0..50 {
        // A spread over 10 asks for a peaked row (spread·x⁵: a few tokens stand out, as in a language model's).
        let shape = |x: f32| if spread > 10.0 { spread * x.powi(5) } else { spread * x };
        logits = rng.vec(rows_ * v).iter().map(|&x| shape(x)).collect::<Vec<f32>>();
        if ties {
            logits.iter_mut().for_each(|x| *x = (*x * 4.0).round() / 4.0);
        }
        if specials {
            for r in 0..rows_ {
                logits[r * v + 3] = f32::NAN;
                logits[r * v + 5] = f32::NEG_INFINITY;
                // +inf in one row only: it takes all the mass of its row.
                if r == 1 {
                    logits[r * v + 11] = f32::INFINITY;
                }
            }
        }
        draws = rng.vec(rows_).iter().map(|x| (x + 1.0) / 2.0).collect();
        // History: repeats, and an id outside the vocabulary.
        hist = (0..rows_)
            .map(|_| (0..12).map(|_| rng.below(v as u32 / 2)).chain([v as u32 + 3]).collect::<Vec<u32>>())
            .collect();
        let picks: Vec<(u32, f64)> =
            (0..rows_).map(|r| r::sample(&logits[r * v..(r + 1) * v], &hist[r], p, draws[r])).collect();
        want = picks.iter().map(|x| x.0 as f32).collect();
        clear = picks.iter().all(|x| x.1 > 1e-4);
        if clear {
            break;
        }
    }
    if !clear {
        return Err(herd_core::HerdError::Input("no draw with a clear margin was found for this row".into()));
    }
    let hv: Vec<&[u32]> = hist.iter().map(|h: &Vec<u32>| h.as_slice()).collect();
    let lb = be.upload(&logits)?;
    let ob = be.upload_u32(&vec![0; rows_])?;
    be.sample(&lb, rows_, v, p, &draws, &hv, &ob)?;
    let got = be.read_u32(&ob)?.iter().map(|&i| i as f32).collect();
    // Each timed call starts from the original logits again (sample overwrites them); the time includes that
    // device copy.
    let pristine = be.upload(&logits)?;
    let secs = perf_only(be, perf, &lb, || {
        be.copy(&pristine, 0, &lb, 0, rows_ * v)?;
        be.sample(&lb, rows_, v, p, &draws, &hv, &ob)
    })?;
    Ok(out(got, want, secs))
}

/// mask_logits: the masked logits (-inf compared as a marker no input takes, so a backend that writes any
/// other value for a masked token fails), or with `then_sample` the ids sample picks from the masked rows,
/// against the reference's picks from the reference's masking.
pub(crate) fn run_mask<B: Backend>(
    be: &B,
    rows: usize,
    vocab: usize,
    allowed: u32,
    then_sample: bool,
    rng: &mut Rng,
    perf: bool,
) -> Result<Out> {
    let words = vocab.div_ceil(32);
    // Bits past the vocabulary are set: they must be ignored.
    let mut mask = vec![0u32; rows * words];
    for r in 0..rows {
        for t in 0..words * 32 {
            if t >= vocab || rng.below(1000) < allowed {
                mask[r * words + t / 32] |= 1 << (t % 32);
            }
        }
    }
    let mut masked = rng.vec(rows * vocab);
    if then_sample {
        masked.iter_mut().for_each(|x| *x *= 6.0);
    }
    let logits = masked.clone();
    for r in 0..rows {
        for t in 0..vocab {
            if mask[r * words + t / 32] >> (t % 32) & 1 == 0 {
                masked[r * vocab + t] = f32::NEG_INFINITY;
            }
        }
    }
    let (lb, mb) = (be.upload(&logits)?, be.upload_u32(&mask)?);
    be.mask_logits(&lb, rows, vocab, &mb)?;
    let secs = perf_only(be, perf, &lb, || be.mask_logits(&lb, rows, vocab, &mb))?;
    if !then_sample {
        let marker = |v: Vec<f32>| v.into_iter().map(|x| if x == f32::NEG_INFINITY { -1000.0 } else { x }).collect();
        return Ok(out(marker(be.read(&lb)?), marker(masked), secs));
    }
    // Draws with a clear margin for every row (see r::sample), so f32 summation order cannot flip a pick.
    let p = sampling(1.0, 0, 0.9, 0.0, 1.0);
    let mut draws = Vec::new();
    let mut want = Vec::new();
    for r in 0..rows {
        let row = &masked[r * vocab..(r + 1) * vocab];
        let clear = (0..50).map(|_| (rng.vec(1)[0] + 1.0) / 2.0).find(|&u| r::sample(row, &[], &p, u).1 > 1e-4);
        let u = clear.ok_or_else(|| herd_core::HerdError::Input("no draw with a clear margin for this row".into()))?;
        draws.push(u);
        want.push(r::sample(row, &[], &p, u).0 as f32);
    }
    let ob = be.upload_u32(&vec![0; rows])?;
    let empty: Vec<&[u32]> = vec![&[]; rows];
    be.sample(&lb, rows, vocab, &p, &draws, &empty, &ob)?;
    let got: Vec<f32> = be.read_u32(&ob)?.iter().map(|&i| i as f32).collect();
    Ok(out(got, want, secs))
}
