//! RMS norm on the CPU: `y = x · rsqrt(mean(x²) + eps) · w` per row, f32 throughout; no weight gives
//! Llama 4's weightless QK norm; and the residual add fused with the norm that follows it.

use super::pool;

use super::{need, WView};
use crate::error::Result;

fn weight_f32(w: Option<WView>, dim: usize) -> Result<Option<Vec<f32>>> {
    match w {
        None => Ok(None),
        Some(w) => {
            need("rms_norm weight", w.len(), dim)?;
            let mut v = vec![0f32; dim];
            w.to_f32(0, &mut v);
            Ok(Some(v))
        }
    }
}

#[inline]
fn norm_row(x: &[f32], w: Option<&[f32]>, eps: f32, y: &mut [f32]) {
    let ss: f32 = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    let r = 1.0 / (ss + eps).sqrt();
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
    let w = weight_f32(w, dim)?;
    pool::chunks_mut(&mut out[..rows * dim], dim, |r, y| norm_row(&x[r * dim..(r + 1) * dim], w.as_deref(), eps, y));
    Ok(())
}

pub fn rms_norm_inplace(x: &mut [f32], w: Option<WView>, rows: usize, dim: usize, eps: f32) -> Result<()> {
    need("rms_norm x", x.len(), rows * dim)?;
    let w = weight_f32(w, dim)?;
    pool::chunks_mut(&mut x[..rows * dim], dim, |_, row| {
        let src = row.to_vec();
        norm_row(&src, w.as_deref(), eps, row)
    });
    Ok(())
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
    let w = weight_f32(Some(w), dim)?;
    let y = pool::Shared::new(&mut out[..rows * dim]);
    pool::chunks_mut(&mut acc[..rows * dim], dim, |r, a| {
        for (a, &x) in a.iter_mut().zip(&x[r * dim..(r + 1) * dim]) {
            *a += x;
        }
        // SAFETY: row r of `out` is this task's alone.
        norm_row(a, w.as_deref(), eps, unsafe { y.slice(r * dim, dim) })
    });
    Ok(())
}
