//! The vision tower's row ops on CUDA: layer norm and the bias add fused with GELU (layer_norm.cu).

use herd_core::backend::Act;
use herd_core::error::Result;

use crate::device::{err, f, ptr, u};
use crate::{blocks, dts, float_weight, need, CudaBackend, CudaBuffer, CudaWeight};

impl CudaBackend {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn layer_norm_impl(
        &self,
        x: &CudaBuffer,
        weight: &CudaWeight,
        bias: &CudaWeight,
        rows: usize,
        dim: usize,
        eps: f32,
        out: &CudaBuffer,
    ) -> Result<()> {
        let _op = self.dev.op();
        need("layer_norm x", x, rows * dim)?;
        need("layer_norm out", out, rows * dim)?;
        float_weight("layer_norm", weight)?;
        if weight.dtype != bias.dtype {
            return Err(err(format!(
                "layer_norm: weight ({}) and bias ({}) must be one format",
                weight.dtype.name(),
                bias.dtype.name()
            )));
        }
        if weight.shape.iter().product::<usize>() != dim || bias.shape.iter().product::<usize>() != dim {
            return Err(err(format!("layer_norm: weight {:?} / bias {:?} for dim {dim}", weight.shape, bias.shape)));
        }
        if rows == 0 {
            return Ok(());
        }
        let threads = (dim / 4).next_power_of_two().clamp(32, 1024) as u32;
        let args = vec![ptr(x.ptr), ptr(weight.ptr), ptr(bias.ptr), ptr(out.ptr), u(dim), f(eps)];
        self.launch("layer_norm", &format!("layer_norm_{}", dts(weight.dtype)), (rows as u32, 1, 1), threads, 0, args)
    }

    pub(crate) fn bias_act_impl(
        &self,
        x: &CudaBuffer,
        bias: Option<&CudaWeight>,
        rows: usize,
        dim: usize,
        act: Act,
    ) -> Result<()> {
        let _op = self.dev.op();
        let n = rows * dim;
        need("bias_act x", x, n)?;
        if let Some(b) = bias {
            float_weight("bias_act", b)?;
            if b.shape.iter().product::<usize>() != dim {
                return Err(err(format!("bias_act: bias {:?} for rows of {dim}", b.shape)));
            }
        }
        if n == 0 {
            return Ok(());
        }
        let (name, bp) = match bias {
            Some(b) => (format!("bias_act_{}", dts(b.dtype)), b.ptr),
            None => ("bias_act_f32".to_owned(), 0),
        };
        let args =
            vec![ptr(x.ptr), ptr(bp), u(n), u(dim), u(usize::from(bias.is_some())), u(usize::from(act == Act::Gelu))];
        self.launch("layer_norm", &name, (blocks(n, 256), 1, 1), 256, 0, args)
    }
}
