//! RMS norm and the residual add fused with it (rms_norm.wgsl).

use herd_core::backend::ops;
use herd_core::error::Result;

use crate::gpu::{err, Gpu};
use crate::kernel::{kernels, params};
use crate::WgpuBackend;

params! {
    pub struct RmsNormParams { pub rows: u32, pub dim: u32, pub eps: f32, pub has_weight: u32 }
}

kernels! {
    pub enum RmsNorm: RmsNorm, RmsNormParams {
        Separate => "rms_norm",
        InPlace => "rms_norm_inplace",
        AddNorm => "add_rms_norm",
    }
}

pub(crate) fn rms_norm(gpu: &Gpu, call: &ops::RmsNorm<'_, WgpuBackend>) -> Result<()> {
    let &ops::RmsNorm { x, weight, rows, dim, eps, out } = call;
    let _op = gpu.op();
    let (wbuf, wdt) = match weight {
        Some(w) if w.parts.len() == 1 => (&w.parts[0].buf, w.wdt()),
        Some(_) => return Err(err("rms_norm: weight split across bindings")),
        None => (&gpu.dummy, 0),
    };
    let p = RmsNormParams { rows: rows as u32, dim: dim as u32, eps, has_weight: u32::from(weight.is_some()) };
    if std::ptr::eq(x, out) {
        gpu.dispatch(RmsNorm::InPlace, wdt, &[(2, &out.buf), (3, wbuf)], &p, rows as u32)
    } else {
        gpu.dispatch(RmsNorm::Separate, wdt, &[(1, &x.buf), (2, &out.buf), (3, wbuf)], &p, rows as u32)
    }
}

pub(crate) fn add_rms_norm(gpu: &Gpu, call: &ops::AddRmsNorm<'_, WgpuBackend>) -> Result<()> {
    let &ops::AddRmsNorm { acc, x, weight, rows, dim, eps, out } = call;
    let _op = gpu.op();
    let [part] = &weight.parts[..] else {
        return Err(err("add_rms_norm: weight split across bindings"));
    };
    let p = RmsNormParams { rows: rows as u32, dim: dim as u32, eps, has_weight: 1 };
    let b = [(1, &x.buf), (2, &out.buf), (3, &part.buf), (4, &acc.buf)];
    gpu.dispatch(RmsNorm::AddNorm, weight.wdt(), &b, &p, rows as u32)
}
