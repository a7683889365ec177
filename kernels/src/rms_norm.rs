//! RMS norm and the residual add fused with it on CUDA (rms_norm.cu).

use herd_core::error::Result;

use crate::device::{err, f, ptr, u};
use crate::{dts, float_weight, need, CudaBackend, CudaBuffer, CudaWeight};

impl CudaBackend {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn rms_norm_impl(
        &self,
        x: &CudaBuffer,
        weight: Option<&CudaWeight>,
        rows: usize,
        dim: usize,
        eps: f32,
        out: &CudaBuffer,
    ) -> Result<()> {
        let _op = self.dev.op();
        need("rms_norm x", x, rows * dim)?;
        need("rms_norm out", out, rows * dim)?;
        if let Some(w) = weight {
            float_weight("rms_norm", w)?;
            if w.shape.iter().product::<usize>() != dim {
                return Err(err(format!("rms_norm: weight {:?} for dim {dim}", w.shape)));
            }
        }
        if rows == 0 {
            return Ok(());
        }
        let threads = (dim / 4).next_power_of_two().clamp(32, 1024) as u32;
        let (name, wp) = match weight {
            Some(w) => (format!("rms_norm_{}", dts(w.dtype)), w.ptr),
            None => ("rms_norm_none".to_owned(), 0),
        };
        let args = vec![ptr(x.ptr), ptr(wp), ptr(out.ptr), u(dim), f(eps)];
        self.launch("rms_norm", &name, (rows as u32, 1, 1), threads, 0, args)
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn add_rms_norm_impl(
        &self,
        acc: &CudaBuffer,
        x: &CudaBuffer,
        weight: &CudaWeight,
        rows: usize,
        dim: usize,
        eps: f32,
        out: &CudaBuffer,
    ) -> Result<()> {
        let _op = self.dev.op();
        need("add_rms_norm acc", acc, rows * dim)?;
        need("add_rms_norm x", x, rows * dim)?;
        need("add_rms_norm out", out, rows * dim)?;
        float_weight("add_rms_norm", weight)?;
        if weight.shape.iter().product::<usize>() != dim {
            return Err(err(format!("add_rms_norm: weight {:?} for dim {dim}", weight.shape)));
        }
        if rows == 0 {
            return Ok(());
        }
        let threads = (dim / 4).next_power_of_two().clamp(32, 1024) as u32;
        let args = vec![ptr(acc.ptr), ptr(x.ptr), ptr(weight.ptr), ptr(out.ptr), u(dim), f(eps)];
        self.launch("rms_norm", &format!("add_rms_norm_{}", dts(weight.dtype)), (rows as u32, 1, 1), threads, 0, args)
    }
}
