//! RMS norm and the residual add fused with it on CUDA (rms_norm.cu).

use herd_core::backend::ops;
use herd_core::error::Result;

use herd_core::quant::DType;

use crate::kernel::{dts, kernel, params, DevPtr, FLOATS};
use crate::CudaBackend;

params! {
    pub struct RmsNormParams { pub x: DevPtr, pub w: DevPtr, pub out: DevPtr, pub dim: u32, pub eps: f32 }
    pub struct AddRmsNormParams { pub acc: DevPtr, pub x: DevPtr, pub w: DevPtr, pub out: DevPtr, pub dim: u32, pub eps: f32 }
}

kernel!(RmsNorm { dt: Option<DType> }: "rms_norm", RmsNormParams =>
    |k| format!("rms_norm_{}", k.dt.map_or("none", dts)),
    all [None].into_iter().chain(FLOATS.map(Some)).map(|dt| RmsNorm { dt }).collect());
kernel!(AddRmsNorm { dt: DType }: "rms_norm", AddRmsNormParams => |k| format!("add_rms_norm_{}", dts(k.dt)),
    all FLOATS.map(|dt| AddRmsNorm { dt }).to_vec());

impl CudaBackend {
    pub(crate) fn rms_norm_impl(&self, call: &ops::RmsNorm<'_, CudaBackend>) -> Result<()> {
        let &ops::RmsNorm { x, weight, rows, dim, eps, out } = call;
        let _op = self.dev.op();
        if rows == 0 {
            return Ok(());
        }
        let threads = (dim / 4).next_power_of_two().clamp(32, 1024) as u32;
        let p = RmsNormParams {
            x: x.at(),
            w: weight.map_or(DevPtr::NULL, |w| w.at()),
            out: out.at(),
            dim: dim as u32,
            eps,
        };
        self.launch(RmsNorm { dt: weight.map(|w| w.dtype) }, (rows as u32, 1, 1), threads, 0, &p)
    }

    pub(crate) fn add_rms_norm_impl(&self, call: &ops::AddRmsNorm<'_, CudaBackend>) -> Result<()> {
        let &ops::AddRmsNorm { acc, x, weight, rows, dim, eps, out } = call;
        let _op = self.dev.op();
        if rows == 0 {
            return Ok(());
        }
        let threads = (dim / 4).next_power_of_two().clamp(32, 1024) as u32;
        let p = AddRmsNormParams { acc: acc.at(), x: x.at(), w: weight.at(), out: out.at(), dim: dim as u32, eps };
        self.launch(AddRmsNorm { dt: weight.dtype }, (rows as u32, 1, 1), threads, 0, &p)
    }
}
