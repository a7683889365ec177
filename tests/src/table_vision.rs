//! The op table's rows for the vision tower's ops: `layer_norm` and `bias_act` (bias add, GELU, both).
//! The bidirectional attention rows are with the other attention rows in [`crate::table`].

use herd_core::backend::{Act, Backend};
use herd_core::quant::DType;

use crate::reference as r;
use crate::table::{push_row, timed, weight, Out, Rng, RowResult};

pub(crate) fn rows<B: Backend>(be: &B, perf: bool, filter: Option<&str>, rows: &mut Vec<RowResult>, rng: &mut Rng) {
    let want = |op: &str| filter.is_none_or(|f| op.contains(f));
    if want("layer_norm") {
        // (rows, dim, weight format, in place, offset): rows with a large mean test the variance's
        // cancellation; 1408 is the real tower's width, 577 rows one tile.
        for &(rows_, dim, wdt, inplace, offset) in &[
            (1, 64, DType::F32, false, 0.0),
            (7, 130, DType::BF16, false, 3.0),
            (12, 16, DType::F32, true, 0.0),
            (5, 257, DType::F16, false, -20.0),
            (577, 1408, DType::BF16, false, 0.5),
        ] {
            let xv: Vec<f32> = rng.vec(rows_ * dim).into_iter().map(|v| v * 2.0 + offset).collect();
            let (wv, bv) = (rng.vec(dim), rng.vec(dim));
            let res = (|| {
                let (w, ws) = weight(be, wdt, &[dim], &wv)?;
                let (b, bs) = weight(be, wdt, &[dim], &bv)?;
                let want = r::layer_norm(&xv, &ws, &bs, rows_, dim, 1e-5);
                let x = be.upload(&xv)?;
                let (got, secs) = if inplace {
                    be.layer_norm(&x, &w, &b, rows_, dim, 1e-5, &x)?;
                    (be.read(&x)?, None)
                } else {
                    let o = be.alloc(rows_ * dim)?;
                    let secs = timed(be, perf, &o, || be.layer_norm(&x, &w, &b, rows_, dim, 1e-5, &o))?;
                    (be.read(&o)?, secs)
                };
                Ok(Out { got, want, secs, bytes: (8 * rows_ * dim) as f64, flops: (7 * rows_ * dim) as f64 })
            })();
            let what = if inplace { " in place" } else { "" };
            push_row(
                rows,
                filter,
                "layer_norm",
                format!("rows={rows_} dim={dim} mean={offset} {}{what}", wdt.name()),
                1e-10,
                res,
            );
        }
    }
    if want("bias_act") {
        // (rows, dim, bias format, activation): a bias broadcast over rows, GELU alone (the adapter), the
        // fused bias + GELU of fc1, a bias as long as the whole buffer (the positional embedding over tiles),
        // and the real tower's fc1 for one tile.
        for &(rows_, dim, bdt, act) in &[
            (3, 40, Some(DType::F32), Act::Identity),
            (9, 130, None, Act::Gelu),
            (5, 257, Some(DType::BF16), Act::Gelu),
            (2, 577 * 16, Some(DType::F32), Act::Identity),
            (577, 5632, Some(DType::BF16), Act::Gelu),
        ] {
            // Inputs over ±6: both tails of erf.
            let xv: Vec<f32> = rng.vec(rows_ * dim).into_iter().map(|v| v * 6.0).collect();
            let bv = rng.vec(dim);
            let res = (|| {
                let b = bdt.map(|dt| weight(be, dt, &[dim], &bv)).transpose()?;
                let want: Vec<f32> = xv
                    .iter()
                    .enumerate()
                    .map(|(i, &v)| {
                        let y = v as f64 + b.as_ref().map_or(0.0, |b| b.1[i % dim] as f64);
                        (if act == Act::Gelu { r::gelu(y) } else { y }) as f32
                    })
                    .collect();
                let x = be.upload(&xv)?;
                be.bias_act(&x, b.as_ref().map(|b| &b.0), rows_, dim, act)?;
                let got = be.read(&x)?;
                let secs = if perf {
                    let y = be.upload(&xv)?;
                    timed(be, true, &y, || be.bias_act(&y, b.as_ref().map(|b| &b.0), rows_, dim, act))?
                } else {
                    None
                };
                Ok(Out { got, want, secs, bytes: (8 * rows_ * dim) as f64, flops: (20 * rows_ * dim) as f64 })
            })();
            let bias = bdt.map_or("none", |d| d.name());
            push_row(rows, filter, "bias_act", format!("rows={rows_} dim={dim} bias={bias} {act:?}"), 1e-10, res);
        }
    }
}
