//! RMS norm on the CPU: `y = x · rsqrt(mean(x²) + eps) · w` per row, f32 throughout; no weight gives
//! Llama 4's weightless QK norm; and the residual add fused with the norm that follows it.

use super::pool;

use super::{need, WView};
use crate::error::Result;

thread_local! {
    /// A weight converted to f32 (f32 weights are read in place), kept per thread so a step allocates nothing.
    static WEIGHT: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs `f` with the weight as f32 (None: no weight).
fn with_weight<R>(w: Option<WView>, dim: usize, f: impl FnOnce(Option<&[f32]>) -> R) -> Result<R> {
    match w {
        None => Ok(f(None)),
        Some(w) => {
            need("rms_norm weight", w.len(), dim)?;
            if let WView::F32(v) = w {
                return Ok(f(Some(&v[..dim])));
            }
            pool::with_scratch(&WEIGHT, |v| {
                v.resize(dim, 0.0);
                w.to_f32(0, v);
                Ok(f(Some(&v[..])))
            })
        }
    }
}

/// `1 / sqrt(mean(x²) + eps)`.
#[inline]
fn inv_rms(x: &[f32], eps: f32) -> f32 {
    let ss: f32 = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    1.0 / (ss + eps).sqrt()
}

#[inline]
fn norm_row(x: &[f32], w: Option<&[f32]>, eps: f32, y: &mut [f32]) {
    let r = inv_rms(x, eps);
    match w {
        Some(w) => {
            for ((o, &v), &g) in y.iter_mut().zip(x).zip(w) {
                *o = v * r * g;
            }
        }
        None => {
            for (o, &v) in y.iter_mut().zip(x) {
                *o = v * r;
            }
        }
    }
}

pub fn rms_norm(x: &[f32], w: Option<WView>, rows: usize, dim: usize, eps: f32, out: &mut [f32]) -> Result<()> {
    need("rms_norm x", x.len(), rows * dim)?;
    need("rms_norm out", out.len(), rows * dim)?;
    with_weight(w, dim, |w| {
        pool::chunks_mut(&mut out[..rows * dim], dim, |r, y| norm_row(&x[r * dim..(r + 1) * dim], w, eps, y))
    })
}

pub fn rms_norm_inplace(x: &mut [f32], w: Option<WView>, rows: usize, dim: usize, eps: f32) -> Result<()> {
    need("rms_norm x", x.len(), rows * dim)?;
    with_weight(w, dim, |w| {
        pool::chunks_mut(&mut x[..rows * dim], dim, |_, row| {
            let r = inv_rms(row, eps);
            match w {
                Some(w) => row.iter_mut().zip(w).for_each(|(v, &g)| *v = *v * r * g),
                None => row.iter_mut().for_each(|v| *v *= r),
            }
        })
    })
}

/// `acc[r] += x[r]`, then `out[r] = rms_norm(acc[r]) · w`, one pass over each row.
pub fn add_rms_norm(
    acc: &mut [f32],
    x: &[f32],
    w: WView,
    rows: usize,
    dim: usize,
    eps: f32,
    out: &mut [f32],
) -> Result<()> {
    need("add_rms_norm acc", acc.len(), rows * dim)?;
    need("add_rms_norm x", x.len(), rows * dim)?;
    need("add_rms_norm out", out.len(), rows * dim)?;
    let y = pool::Shared::new(&mut out[..rows * dim]);
    with_weight(Some(w), dim, |w| {
        pool::chunks_mut(&mut acc[..rows * dim], dim, |r, a| {
            for (a, &x) in a.iter_mut().zip(&x[r * dim..(r + 1) * dim]) {
                *a += x;
            }
            // SAFETY: row r of `out` is this task's alone.
            norm_row(a, w, eps, unsafe { y.slice(r * dim, dim) })
        })
    })
}
