//! cuBLAS: the prefill GEMMs, row-major `c[m, n] (+)= b[m, k] · a[n, k]ᵀ` on bf16 or f32 inputs with f32
//! accumulation. The library is found and loaded by `libs`; without it prefill runs on the GEMV kernels.

use std::ffi::{c_int, c_void};
use std::sync::Once;

use cudarc::driver::sys::CUstream;
use herd_core::error::Result;

use crate::device::{err, Gemm};
use crate::libs::{cublas, cublas_status, CublasHandle};

/// cudaDataType: CUDA_R_32F, CUDA_R_16BF.
const CUDA_R_32F: c_int = 0;
const CUDA_R_16BF: c_int = 14;
/// cublasOperation_t: CUBLAS_OP_N, CUBLAS_OP_T.
const CUBLAS_OP_N: c_int = 0;
const CUBLAS_OP_T: c_int = 1;
/// cublasComputeType_t: CUBLAS_COMPUTE_32F.
const CUBLAS_COMPUTE_32F: c_int = 68;
/// cublasGemmAlgo_t: CUBLAS_GEMM_DEFAULT.
const CUBLAS_GEMM_DEFAULT: c_int = -1;

/// A live cuBLAS handle, bound to the device's stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Handle(CublasHandle);

fn status(what: &str, code: c_int) -> Result<()> {
    if code == 0 {
        Ok(())
    } else {
        Err(err(format!("{what}: {}", cublas_status(code))))
    }
}

/// A cuBLAS handle on `stream`; `None` when cuBLAS cannot be loaded, which is said once on stderr (prefill
/// then runs on the GEMV kernels).
pub(crate) fn open(stream: CUstream) -> Result<Option<Handle>> {
    let lib = match cublas() {
        Ok(lib) => lib,
        Err(e) => {
            static SAID: Once = Once::new();
            SAID.call_once(|| {
                eprintln!(
                    "warning: {} was not found, so CUDA prefill falls back to the slower GEMV kernels (tried {})",
                    e.what, e.tried
                )
            });
            return Ok(None);
        }
    };
    let mut h: CublasHandle = std::ptr::null_mut();
    // SAFETY: a valid out-parameter; the context is bound to this thread.
    status("cublasCreate", unsafe { (lib.create)(&mut h) })?;
    // SAFETY: a live handle and the caller's live stream.
    if let Err(e) = status("cublasSetStream", unsafe { (lib.set_stream)(h, stream as *mut c_void) }) {
        destroy(Handle(h));
        return Err(e);
    }
    Ok(Some(Handle(h)))
}

/// Releases a handle from [`open`].
pub(crate) fn destroy(h: Handle) {
    if let Ok(lib) = cublas() {
        // SAFETY: a live handle, destroyed once.
        let _ = unsafe { (lib.destroy)(h.0) };
    }
}

pub(crate) fn gemm(handle: Option<Handle>, g: &Gemm) -> Result<()> {
    let h = handle.ok_or_else(|| err("cuBLAS is not available"))?;
    let lib = cublas().map_err(|e| err(e.to_string()))?;
    let (alpha, beta) = (1.0f32, if g.accumulate { 1.0f32 } else { 0.0 });
    let ty = if g.bf16 { CUDA_R_16BF } else { CUDA_R_32F };
    // SAFETY: a (n×k), b (m×k) and c (m×n) row-major in live allocations; in cuBLAS's column-major terms
    // cᵀ (n×m) = op_T(a viewed as k×n) · (b viewed as k×m).
    status("cublasGemmEx", unsafe {
        (lib.gemm_ex)(
            h.0,
            CUBLAS_OP_T,
            CUBLAS_OP_N,
            g.n as c_int,
            g.m as c_int,
            g.k as c_int,
            &alpha as *const f32 as *const c_void,
            g.a as *const c_void,
            ty,
            g.k as c_int,
            g.b as *const c_void,
            ty,
            g.k as c_int,
            &beta as *const f32 as *const c_void,
            g.c as *mut c_void,
            CUDA_R_32F,
            g.n as c_int,
            CUBLAS_COMPUTE_32F,
            CUBLAS_GEMM_DEFAULT,
        )
    })
}
