//! Interleaved-pair RoPE on CUDA, alone or with Llama 4's weightless QK norm (rope.cu).

use herd_core::error::Result;

use crate::device::{err, f, ptr, u};
use crate::{blocks, need, CudaBackend, CudaBuffer};

impl CudaBackend {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn rope_impl(
        &self,
        x: &CudaBuffer,
        rows: usize,
        heads: usize,
        head_dim: usize,
        positions: &CudaBuffer,
        inv_freq: &CudaBuffer,
        norm_eps: Option<f32>,
    ) -> Result<()> {
        let _op = self.dev.op();
        need("rope x", x, rows * heads * head_dim)?;
        need("rope positions", positions, rows)?;
        need("rope inv_freq", inv_freq, head_dim / 2)?;
        if !positions.is_u32 {
            return Err(err("rope: positions must be u32"));
        }
        if rows * heads == 0 {
            return Ok(());
        }
        let args = vec![
            ptr(x.ptr),
            ptr(positions.ptr),
            ptr(inv_freq.ptr),
            u(rows),
            u(heads),
            u(head_dim),
            u(usize::from(norm_eps.is_some())),
            f(norm_eps.unwrap_or(0.0)),
        ];
        self.launch("rope", "rope", (blocks(rows * heads, 8), 1, 1), 256, 0, args)
    }
}
