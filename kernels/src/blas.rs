//! cuBLAS: the prefill GEMMs, row-major `c[m, n] (+)= b[m, k] · a[n, k]ᵀ` on bf16 or f32 inputs with f32
//! accumulation.

use std::ffi::c_void;

use cudarc::cublas::{result as blas, sys as bsys};
use herd_core::error::Result;

use crate::device::{cu, err, Gemm};

pub(crate) fn gemm(handle: Option<bsys::cublasHandle_t>, g: &Gemm) -> Result<()> {
    let h = handle.ok_or_else(|| err("cuBLAS is not available"))?;
    let (alpha, beta) = (1.0f32, if g.accumulate { 1.0f32 } else { 0.0 });
    let ty = if g.bf16 { bsys::cudaDataType::CUDA_R_16BF } else { bsys::cudaDataType::CUDA_R_32F };
    // SAFETY: a (n×k), b (m×k) and c (m×n) row-major in live allocations; in cuBLAS's column-major terms
    // cᵀ (n×m) = op_T(a viewed as k×n) · (b viewed as k×m).
    cu("cublasGemmEx", unsafe {
        blas::gemm_ex(
            h,
            bsys::cublasOperation_t::CUBLAS_OP_T,
            bsys::cublasOperation_t::CUBLAS_OP_N,
            g.n as i32,
            g.m as i32,
            g.k as i32,
            &alpha as *const f32 as *const c_void,
            g.a as *const c_void,
            ty,
            g.k as i32,
            g.b as *const c_void,
            ty,
            g.k as i32,
            &beta as *const f32 as *const c_void,
            g.c as *mut c_void,
            bsys::cudaDataType::CUDA_R_32F,
            g.n as i32,
            bsys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            bsys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
        )
    })
}
