//! The vision tower's row ops (layer_norm.wgsl): nn.LayerNorm, and a bias add with an activation.

use herd_core::backend::ops;
use herd_core::backend::Act;
use herd_core::error::Result;

use crate::gpu::{err, Gpu};
use crate::kernel::{groups, kernels, params};
use crate::WgpuBackend;

params! {
    pub struct LayerNormParams { pub rows: u32, pub dim: u32, pub eps: f32 }
    /// `n`: elements; `act`: 0 none, 1 the exact GELU.
    pub struct BiasActParams { pub n: u32, pub dim: u32, pub has_bias: u32, pub act: u32 }
}

kernels! {
    pub enum LayerNorm: LayerNorm, LayerNormParams { Separate => "layer_norm", InPlace => "layer_norm_inplace" }
}
kernels! {
    pub enum BiasAct: LayerNorm, BiasActParams { Rows => "bias_act" }
}

pub(crate) fn layer_norm(gpu: &Gpu, call: &ops::LayerNorm<'_, WgpuBackend>) -> Result<()> {
    let &ops::LayerNorm { x, weight, bias, rows, dim, eps, out } = call;
    let _op = gpu.op();
    let ([wp], [bp]) = (&weight.parts[..], &bias.parts[..]) else {
        return Err(err("layer_norm: weight split across bindings"));
    };
    let p = LayerNormParams { rows: rows as u32, dim: dim as u32, eps };
    if std::ptr::eq(x, out) {
        let b = [(2, &out.buf), (3, &wp.buf), (4, &bp.buf)];
        gpu.dispatch(LayerNorm::InPlace, weight.wdt(), &b, &p, rows as u32)
    } else {
        let b = [(1, &x.buf), (2, &out.buf), (3, &wp.buf), (4, &bp.buf)];
        gpu.dispatch(LayerNorm::Separate, weight.wdt(), &b, &p, rows as u32)
    }
}

pub(crate) fn bias_act(gpu: &Gpu, call: &ops::BiasAct<'_, WgpuBackend>) -> Result<()> {
    let &ops::BiasAct { x, bias, rows, dim, act } = call;
    let _op = gpu.op();
    let n = rows * dim;
    let (bbuf, wdt) = match bias {
        Some(b) => match &b.parts[..] {
            [part] => (&part.buf, b.wdt()),
            _ => return Err(err("bias_act: bias split across bindings")),
        },
        None => (&gpu.dummy, 0),
    };
    let p = BiasActParams {
        n: n as u32,
        dim: dim as u32,
        has_bias: u32::from(bias.is_some()),
        act: u32::from(act == Act::Gelu),
    };
    gpu.dispatch(BiasAct::Rows, wdt, &[(2, &x.buf), (4, bbuf)], &p, groups(n, 256))
}
