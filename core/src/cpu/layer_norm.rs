//! The vision tower's row ops on the CPU: nn.LayerNorm (two passes, accumulated in f64, so the
//! reference is as exact as f32 output allows) and the bias add fused with an activation.

use super::pool;

use super::{need, WView};
use crate::backend::{gelu, Act};
use crate::error::Result;

fn to_f32(w: WView, what: &str, n: usize) -> Result<Vec<f32>> {
    need(what, w.len(), n)?;
    let mut v = vec![0f32; n];
    w.to_f32(0, &mut v);
    Ok(v)
}

fn norm_row(x: &[f32], w: &[f32], b: &[f32], eps: f32, y: &mut [f32]) {
    let n = x.len() as f64;
    let mean = x.iter().map(|&v| v as f64).sum::<f64>() / n;
    let var = x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
    let r = 1.0 / (var + eps as f64).sqrt();
    for (((o, &v), &g), &c) in y.iter_mut().zip(x).zip(w).zip(b) {
        *o = (((v as f64 - mean) * r) as f32) * g + c;
    }
}

/// `out = layer_norm(x)`, or in place on `x` when `out` is None.
pub fn layer_norm(x: &[f32], out: &mut [f32], w: WView, b: WView, rows: usize, dim: usize, eps: f32) -> Result<()> {
    need("layer_norm x", x.len(), rows * dim)?;
    need("layer_norm out", out.len(), rows * dim)?;
    let (w, b) = (to_f32(w, "layer_norm weight", dim)?, to_f32(b, "layer_norm bias", dim)?);
    let dm = dim.max(1);
    pool::chunks_mut(&mut out[..rows * dim], dm, |r, y| norm_row(&x[r * dm..(r + 1) * dm], &w, &b, eps, y));
    Ok(())
}

pub fn layer_norm_inplace(x: &mut [f32], w: WView, b: WView, rows: usize, dim: usize, eps: f32) -> Result<()> {
    need("layer_norm x", x.len(), rows * dim)?;
    let (w, b) = (to_f32(w, "layer_norm weight", dim)?, to_f32(b, "layer_norm bias", dim)?);
    pool::chunks_mut(&mut x[..rows * dim], dim, |_, row| {
        let src = row.to_vec();
        norm_row(&src, &w, &b, eps, row)
    });
    Ok(())
}

pub fn bias_act(x: &mut [f32], bias: Option<WView>, rows: usize, dim: usize, act: Act) -> Result<()> {
    need("bias_act x", x.len(), rows * dim)?;
    let b = bias.map(|b| to_f32(b, "bias_act bias", dim)).transpose()?;
    pool::chunks_mut(&mut x[..rows * dim], dim, |_, row| {
        if let Some(b) = &b {
            row.iter_mut().zip(b).for_each(|(v, &c)| *v += c);
        }
        if act == Act::Gelu {
            row.iter_mut().for_each(|v| *v = gelu(*v));
        }
    });
    Ok(())
}
