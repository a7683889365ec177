//! `x · wᵀ` on CUDA (matmul.cu, and cuBLAS through blas.rs for prefill): the decode GEMV for up to 8 rows,
//! GEMMs above, and SwiGLU's two matmuls fused into one pass for decode.

use herd_core::backend::Backend;
use herd_core::error::Result;
use herd_core::quant::DType;

use crate::device::{err, ptr, u, Cmd, Gemm};
use crate::{blocks, dts, need, CudaBackend, CudaBuffer, CudaWeight, DECODE_MAX_Q};

impl CudaBackend {
    pub(crate) fn matmul_impl(&self, x: &CudaBuffer, m: usize, w: &CudaWeight, out: &CudaBuffer) -> Result<()> {
        let _op = self.dev.op();
        Self::weight_shape(w, 2, "matmul")?;
        let (n, k) = (w.shape[0], w.shape[1]);
        need("matmul x", x, m * k)?;
        need("matmul out", out, m * n)?;
        if m == 0 || n == 0 {
            return Ok(());
        }
        let blas = self.dev.has_blas() && m > DECODE_MAX_Q && k > 0;
        if let Some(bits) = w.bits() {
            if m > DECODE_MAX_Q {
                // Prefill: the tiled GEMM, each weight dequantized once per 32 rows.
                let mut args = vec![ptr(x.ptr), ptr(w.ptr)];
                args.extend(w.qargs());
                args.extend([ptr(out.ptr), u(m), u(n), u(k)]);
                return self.launch(
                    "matmul",
                    &format!("matmul_tiled_q{bits}"),
                    (blocks(n, 64), blocks(m, 32), 1),
                    256,
                    0,
                    args,
                );
            }
            // Decode: the GEMV on the packed values.
            let rows = m.next_power_of_two();
            let vec = k.is_multiple_of(if bits == 4 { 32 } else { 16 }) && w.group.is_multiple_of(8);
            let name = format!("matmul_gemv_q{bits}_{rows}{}", if vec { "" } else { "_scalar" });
            let mut args = vec![ptr(x.ptr), ptr(w.ptr)];
            args.extend(w.qargs());
            args.extend([ptr(out.ptr), u(m), u(n), u(k)]);
            return self.launch("matmul", &name, (blocks(n, 8), blocks(m, rows), 1), 256, 0, args);
        }
        match w.dtype {
            DType::BF16 if blas => {
                // x = hi + lo in bf16, then two tensor-core GEMMs accumulating in f32.
                let hi = self.dev.scratch("matmul hi", m * k * 2)?;
                let lo = self.dev.scratch("matmul lo", m * k * 2)?;
                let args = vec![ptr(x.ptr), ptr(hi), ptr(lo), u(m * k)];
                self.launch("matmul", "split_bf16", (blocks(m * k, 256), 1, 1), 256, 0, args)?;
                let g = Gemm { a: w.ptr, b: hi, c: out.ptr, m, n, k, bf16: true, accumulate: false };
                self.dev.record(Cmd::Gemm(g))?;
                if self.bf16_activations {
                    return Ok(());
                }
                self.dev.record(Cmd::Gemm(Gemm { b: lo, accumulate: true, ..g }))
            }
            DType::F32 if blas => self.dev.record(Cmd::Gemm(Gemm {
                a: w.ptr,
                b: x.ptr,
                c: out.ptr,
                m,
                n,
                k,
                bf16: false,
                accumulate: false,
            })),
            _ => {
                let rows = if m <= DECODE_MAX_Q { m.next_power_of_two() } else { 8 };
                let vec = k % 8 == 0;
                let name = format!("matmul_gemv_{}_{rows}{}", dts(w.dtype), if vec { "" } else { "_scalar" });
                let grid = (blocks(n, 8), blocks(m, rows), 1);
                self.launch("matmul", &name, grid, 256, 0, vec![ptr(x.ptr), ptr(w.ptr), ptr(out.ptr), u(m), u(n), u(k)])
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn swiglu_impl(
        &self,
        x: &CudaBuffer,
        m: usize,
        gate_w: &CudaWeight,
        up_w: &CudaWeight,
        width: usize,
        out: &CudaBuffer,
        scratch: &CudaBuffer,
    ) -> Result<()> {
        let _op = self.dev.op();
        Self::weight_shape(gate_w, 2, "swiglu gate")?;
        let (n, k) = (gate_w.shape[0], gate_w.shape[1]);
        if up_w.shape != gate_w.shape || n != width {
            return Err(err(format!("swiglu: gate {:?}, up {:?}, width {width}", gate_w.shape, up_w.shape)));
        }
        if m > DECODE_MAX_Q || gate_w.dtype != up_w.dtype || gate_w.dtype.is_quantized() {
            // Prefill: two GEMMs and the activation.
            self.matmul(x, m, gate_w, out)?;
            self.matmul(x, m, up_w, scratch)?;
            return self.silu_mul(out, scratch, m * width);
        }
        need("swiglu x", x, m * k)?;
        need("swiglu out", out, m * n)?;
        if m == 0 || n == 0 {
            return Ok(());
        }
        let rows = m.next_power_of_two();
        let vec = k % 8 == 0;
        let name = format!("matmul_swiglu_{}_{rows}{}", dts(gate_w.dtype), if vec { "" } else { "_scalar" });
        let args = vec![ptr(x.ptr), ptr(gate_w.ptr), ptr(up_w.ptr), ptr(out.ptr), u(m), u(n), u(k)];
        self.launch("matmul", &name, (blocks(n, 8), 1, 1), 256, 0, args)
    }
}
