//! The op table's `sample` rows.

use herd_core::backend::Backend;
use herd_core::Result;

use crate::reference as r;
use crate::table::{timed, Out, Rng};

/// `sample` rows: every filter alone and together, ties, NaN/inf logits, the penalty, batches, and Scout's
/// vocabulary; ids must equal the reference's exactly. Draws and logits are re-rolled until every decision
/// has a clear margin (see [`r::sample`]).
pub(crate) fn sample_rows<B: Backend>(
    be: &B,
    perf: bool,
    rng: &mut Rng,
    add: &mut impl FnMut(&'static str, String, f64, Result<Out>),
) {
    use herd_core::sampling::SamplingParams;
    let sp = |temperature: f32, top_k: usize, top_p: f32, min_p: f32, repetition_penalty: f32| SamplingParams {
        temperature,
        top_k,
        top_p,
        min_p,
        repetition_penalty,
        seed: None,
    };
    // (vocab, rows, params, logit spread, ties: logits rounded to quarters, specials: NaN and ±inf planted).
    // A large vocabulary gets peaked logits (a flat one over 2·10⁵ tokens leaves no clear margin).
    let cases = [
        (1000, 3, sp(0.0, 0, 1.0, 0.0, 1.0), 6.0, true, true),
        (1000, 2, sp(0.8, 0, 1.0, 0.0, 1.0), 6.0, false, false),
        (50, 4, sp(1.0, 5, 1.0, 0.0, 1.0), 6.0, false, false),
        (64, 8, sp(1.0, 7, 1.0, 0.0, 1.0), 2.0, true, false),
        (5000, 2, sp(0.6, 0, 0.9, 0.0, 1.0), 6.0, false, false),
        (777, 16, sp(1.0, 0, 0.5, 0.0, 1.0), 2.0, true, true),
        (300, 2, sp(1.0, 0, 1.0, 0.05, 1.0), 6.0, false, false),
        (400, 2, sp(0.7, 40, 0.8, 0.02, 1.3), 6.0, false, true),
        (1000, 1, sp(0.0, 0, 1.0, 0.0, 1.5), 6.0, false, false),
        (202048, 1, sp(0.6, 0, 0.9, 0.0, 1.0), 30.0, false, false),
        (202048, 2, sp(1.0, 50, 0.95, 0.0, 1.1), 30.0, false, false),
    ];
    for (v, rows_, p, spread, ties, specials) in cases {
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
                (0..rows_).map(|r| r::sample(&logits[r * v..(r + 1) * v], &hist[r], &p, draws[r])).collect();
            want = picks.iter().map(|x| x.0 as f32).collect();
            clear = picks.iter().all(|x| x.1 > 1e-4);
            if clear {
                break;
            }
        }
        let res = (|| {
            if !clear {
                return Err(herd_core::HerdError::Input("no draw with a clear margin was found for this row".into()));
            }
            let hv: Vec<&[u32]> = hist.iter().map(|h: &Vec<u32>| h.as_slice()).collect();
            let lb = be.upload(&logits)?;
            let ob = be.upload_u32(&vec![0; rows_])?;
            be.sample(&lb, rows_, v, &p, &draws, &hv, &ob)?;
            let got = be.read_u32(&ob)?.iter().map(|&i| i as f32).collect();
            // Each timed call starts from the original logits again (sample overwrites them); the time
            // includes that device copy.
            let pristine = be.upload(&logits)?;
            let secs = timed(be, perf, &lb, || {
                be.copy(&pristine, 0, &lb, 0, rows_ * v)?;
                be.sample(&lb, rows_, v, &p, &draws, &hv, &ob)
            })?;
            Ok(Out { got, want: want.clone(), secs, bytes: (4 * rows_ * v) as f64, flops: 0.0 })
        })();
        let desc = format!(
            "vocab={v} rows={rows_} T={} k={} p={} min_p={} pen={}{}{}",
            p.temperature,
            p.top_k,
            p.top_p,
            p.min_p,
            p.repetition_penalty,
            if ties { " ties" } else { "" },
            if specials { " nan/inf" } else { "" }
        );
        add("sample", desc, 0.0, res);
    }
}
