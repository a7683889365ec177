//! The op table's cases for the vision tower's row ops: `layer_norm` and `bias_act` (bias add, GELU, both).
//! The bidirectional attention cases are with the other attention cases in [`crate::table_attention`].

use herd_core::backend::{Act, Backend};
use herd_core::Result;

use crate::reference as r;
use crate::table::{timed, weight, Out, Rng, Spec};
use crate::table_ops::{out, perf_only};

pub(crate) fn run<B: Backend>(be: &B, spec: &Spec, rng: &mut Rng, perf: bool) -> Result<Out> {
    match *spec {
        Spec::LayerNorm { rows, dim, dt, in_place, mean } => {
            let xv: Vec<f32> = rng.vec(rows * dim).into_iter().map(|v| v * 2.0 + mean).collect();
            let (wv, bv) = (rng.vec(dim), rng.vec(dim));
            let (w, ws) = weight(be, dt, &[dim], &wv)?;
            let (b, bs) = weight(be, dt, &[dim], &bv)?;
            let want = r::layer_norm(&xv, &ws, &bs, rows, dim, 1e-5);
            let x = be.upload(&xv)?;
            if in_place {
                be.layer_norm(&x, &w, &b, rows, dim, 1e-5, &x)?;
                let got = be.read(&x)?;
                let secs = perf_only(be, perf, &x, || be.layer_norm(&x, &w, &b, rows, dim, 1e-5, &x))?;
                return Ok(out(got, want, secs));
            }
            let o = be.alloc(rows * dim)?;
            let secs = timed(be, perf, &o, || be.layer_norm(&x, &w, &b, rows, dim, 1e-5, &o))?;
            Ok(out(be.read(&o)?, want, secs))
        }
        Spec::BiasAct { rows, dim, bias, act } => {
            // Inputs over ±6: both tails of erf.
            let xv: Vec<f32> = rng.vec(rows * dim).into_iter().map(|v| v * 6.0).collect();
            let bv = rng.vec(dim);
            let b = bias.map(|dt| weight(be, dt, &[dim], &bv)).transpose()?;
            let want: Vec<f32> = xv
                .iter()
                .enumerate()
                .map(|(i, &v)| {
                    let y = v as f64 + b.as_ref().map_or(0.0, |b| b.1[i % dim] as f64);
                    (if act == Act::Gelu { r::gelu(y) } else { y }) as f32
                })
                .collect();
            let x = be.upload(&xv)?;
            let bw = b.as_ref().map(|b| &b.0);
            be.bias_act(&x, bw, rows, dim, act)?;
            let got = be.read(&x)?;
            let secs = perf_only(be, perf, &x, || be.bias_act(&x, bw, rows, dim, act))?;
            Ok(out(got, want, secs))
        }
        _ => unreachable!("not a vision op: {}", spec.op()),
    }
}
