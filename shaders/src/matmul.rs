//! `x · wᵀ` for nn.Linear weights in every format (matmul.wgsl): the tiled GEMM for prefill, the
//! weight-streaming kernels for decode.

use herd_core::backend::ops;
use herd_core::error::Result;
use herd_core::quant::DType;

use crate::gpu::{err, Gpu};
use crate::kernel::{kernels, params};
use crate::WgpuBackend;

params! {
    /// A dispatch covers output columns `col0..col0 + ncols`, the bound part of the weight.
    pub struct MatmulParams { pub m: u32, pub k: u32, pub n: u32, pub col0: u32, pub ncols: u32 }
}

kernels! {
    pub enum Matmul: Matmul, MatmulParams {
        /// Any format, element by element; 8 rows per workgroup.
        Rows => "matmul",
        /// Without shared memory or barriers, for CPU adapters.
        Col => "matmul_col",
        /// Float rows of whole 16-byte pieces.
        Vec16 => "matmul_vec",
        /// Quantized rows of whole 16-byte pieces.
        Quant16 => "matmul_q",
        /// The tiled GEMM (32 rows × 64 columns per workgroup), for prefill.
        Tiled => "matmul_tiled",
    }
}

pub(crate) fn matmul(gpu: &Gpu, call: &ops::Matmul<'_, WgpuBackend>) -> Result<()> {
    let &ops::Matmul { x, m, w, out } = call;
    let _op = gpu.op();
    let [n, k] = w.shape[..] else {
        return Err(err(format!("matmul: weight has shape {:?}, expected 2 dims", w.shape)));
    };
    let params = |part: &crate::gpu::WeightPart| MatmulParams {
        m: m as u32,
        k: k as u32,
        n: n as u32,
        col0: part.first as u32,
        ncols: part.count as u32,
    };
    if m > 8 && !gpu.cpu_kernels {
        // Prefill: the tiled GEMM (32 rows × 64 columns per workgroup).
        for part in &w.parts {
            let groups = (part.count.div_ceil(64) * m.div_ceil(32)) as u32;
            let b = [(1, &x.buf), (2, &part.buf), (3, &out.buf), (12, part.scale_buf())];
            gpu.dispatch(Matmul::Tiled, w.wdt(), &b, &params(part), groups)?;
        }
        return Ok(());
    }
    let mblocks = m.div_ceil(8);
    // Rows whose byte length is a multiple of 16 are read 16 bytes at a time (float formats; quantized
    // weights are read element by element, with their scales).
    let vec = !w.dtype.is_quantized() && (k * w.dtype.size()).is_multiple_of(16);
    // Quantized rows of whole 16-byte pieces (and groups of whole 8s): 16 bytes at a time too.
    let qvec = match w.dtype {
        DType::Q4(g) => k.is_multiple_of(32) && g.group.is_multiple_of(8),
        DType::Q8(g) => k.is_multiple_of(16) && g.group.is_multiple_of(8),
        _ => false,
    };
    for part in &w.parts {
        let p = params(part);
        if gpu.cpu_kernels {
            let groups = (part.count.div_ceil(64) * mblocks) as u32;
            let b = [(1, &x.buf), (2, &part.buf), (3, &out.buf), (12, part.scale_buf())];
            gpu.dispatch(Matmul::Col, w.wdt(), &b, &p, groups)?;
            continue;
        }
        let groups = (part.count.div_ceil(8) * mblocks) as u32;
        if qvec {
            let b = [(1, &x.buf), (4, &part.buf), (3, &out.buf), (12, part.scale_buf())];
            gpu.dispatch(Matmul::Quant16, w.wdt(), &b, &p, groups)?;
        } else if vec {
            let b = [(1, &x.buf), (4, &part.buf), (3, &out.buf)];
            gpu.dispatch(Matmul::Vec16, w.wdt(), &b, &p, groups)?;
        } else {
            let b = [(1, &x.buf), (2, &part.buf), (3, &out.buf), (12, part.scale_buf())];
            gpu.dispatch(Matmul::Rows, w.wdt(), &b, &p, groups)?;
        }
    }
    Ok(())
}
