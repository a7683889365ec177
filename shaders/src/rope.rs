//! Interleaved-pair RoPE, alone or with Llama 4's weightless QK norm (rope.wgsl).

use herd_core::backend::ops;
use herd_core::error::Result;

use crate::gpu::Gpu;
use crate::kernel::{groups, kernels, params};
use crate::WgpuBackend;

params! {
    /// `eps`: the QK norm's (rope_norm only).
    pub struct RopeParams { pub rows: u32, pub heads: u32, pub head_dim: u32, pub eps: f32 }
}

kernels! {
    pub enum Rope: Rope, RopeParams { Rotate => "rope", RotateNorm => "rope_norm" }
}

pub(crate) fn rope(gpu: &Gpu, call: &ops::Rope<'_, WgpuBackend>) -> Result<()> {
    let &ops::Rope { x, rows, heads, head_dim, positions, inv_freq, norm_eps } = call;
    let _op = gpu.op();
    let b = [(1, &x.buf), (2, &positions.buf), (3, &inv_freq.buf)];
    let p =
        RopeParams { rows: rows as u32, heads: heads as u32, head_dim: head_dim as u32, eps: norm_eps.unwrap_or(0.0) };
    match norm_eps {
        // One workgroup per head vector: rotate, then normalise it.
        Some(_) => gpu.dispatch(Rope::RotateNorm, 0, &b, &p, (rows * heads) as u32),
        None => gpu.dispatch(Rope::Rotate, 0, &b, &p, groups(rows * heads * head_dim / 2, 256)),
    }
}
