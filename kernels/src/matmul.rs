//! `x · wᵀ` on CUDA (matmul.cu, and cuBLAS through blas.rs for prefill): the decode GEMV for up to 8 rows,
//! GEMMs above, and SwiGLU's two matmuls fused into one pass for decode.

use herd_core::backend::ops;
use herd_core::backend::Backend;
use herd_core::error::Result;
use herd_core::quant::DType;

use crate::device::{Cmd, Gemm};
use crate::kernel::{dts, kernel, params, scalar, DevPtr, FLOATS};
use crate::{blocks, CudaBackend, DECODE_MAX_Q};

params! {
    pub struct MatmulParams { pub x: DevPtr, pub w: DevPtr, pub out: DevPtr, pub m: u32, pub n: u32, pub k: u32, pub pad: u32 }
    pub struct SwigluParams {
        pub x: DevPtr, pub wg: DevPtr, pub wu: DevPtr, pub out: DevPtr, pub m: u32, pub n: u32, pub k: u32, pub pad: u32,
    }
    pub struct MatmulQParams {
        pub x: DevPtr, pub w: DevPtr, pub sc: DevPtr, pub out: DevPtr, pub st: u32, pub group: u32, pub m: u32,
        pub n: u32, pub k: u32, pub pad: u32,
    }
    pub struct SplitBf16Params { pub x: DevPtr, pub hi: DevPtr, pub lo: DevPtr, pub n: u32, pub pad: u32 }
}

/// The decode GEMVs' row counts (a launch takes the next power of two of its rows).
const ROWS: [u32; 4] = [1, 2, 4, 8];

kernel!(Gemv { dt: DType, rows: u32, vec: bool }: "matmul", MatmulParams =>
    |k| format!("matmul_gemv_{}_{}{}", dts(k.dt), k.rows, scalar(k.vec)),
    all FLOATS.iter().flat_map(|&dt| ROWS.iter().flat_map(move |&rows| [true, false].map(|vec| Gemv { dt, rows, vec }))).collect());
kernel!(Swiglu { dt: DType, rows: u32, vec: bool }: "matmul", SwigluParams =>
    |k| format!("matmul_swiglu_{}_{}{}", dts(k.dt), k.rows, scalar(k.vec)),
    all FLOATS.iter().flat_map(|&dt| ROWS.iter().flat_map(move |&rows| [true, false].map(|vec| Swiglu { dt, rows, vec }))).collect());
kernel!(GemvQ { bits: u32, rows: u32, vec: bool }: "matmul", MatmulQParams =>
    |k| format!("matmul_gemv_q{}_{}{}", k.bits, k.rows, scalar(k.vec)),
    all [4, 8].iter().flat_map(|&bits| ROWS.iter().flat_map(move |&rows| [true, false].map(|vec| GemvQ { bits, rows, vec }))).collect());
kernel!(TiledQ { bits: u32 }: "matmul", MatmulQParams => |k| format!("matmul_tiled_q{}", k.bits),
    all vec![TiledQ { bits: 4 }, TiledQ { bits: 8 }]);
kernel!(SplitBf16: "matmul", SplitBf16Params => "split_bf16");

impl CudaBackend {
    pub(crate) fn matmul_impl(&self, call: &ops::Matmul<'_, CudaBackend>) -> Result<()> {
        let &ops::Matmul { x, m, w, out } = call;
        let _op = self.dev.op();
        let (n, k) = (w.shape[0], w.shape[1]);
        if m == 0 || n == 0 {
            return Ok(());
        }
        let blas = self.dev.has_blas() && m > DECODE_MAX_Q && k > 0;
        if let Some(bits) = w.bits() {
            let p = MatmulQParams {
                x: x.at(),
                w: w.at(),
                sc: DevPtr::new(w.scales),
                out: out.at(),
                st: w.st,
                group: w.group,
                m: m as u32,
                n: n as u32,
                k: k as u32,
                pad: 0,
            };
            if m > DECODE_MAX_Q {
                // Prefill: the tiled GEMM, each weight dequantized once per 32 rows.
                return self.launch(TiledQ { bits }, (blocks(n, 64), blocks(m, 32), 1), 256, 0, &p);
            }
            // Decode: the GEMV on the packed values.
            let rows = m.next_power_of_two();
            let vec = k.is_multiple_of(if bits == 4 { 32 } else { 16 }) && w.group.is_multiple_of(8);
            let kernel = GemvQ { bits, rows: rows as u32, vec };
            return self.launch(kernel, (blocks(n, 8), blocks(m, rows), 1), 256, 0, &p);
        }
        match w.dtype {
            DType::BF16 if blas => {
                // x = hi + lo in bf16, then two tensor-core GEMMs accumulating in f32.
                let hi = self.dev.scratch("matmul hi", m * k * 2)?;
                let lo = self.dev.scratch("matmul lo", m * k * 2)?;
                let p =
                    SplitBf16Params { x: x.at(), hi: DevPtr::new(hi), lo: DevPtr::new(lo), n: (m * k) as u32, pad: 0 };
                self.launch(SplitBf16, (blocks(m * k, 256), 1, 1), 256, 0, &p)?;
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
                let kernel = Gemv { dt: w.dtype, rows: rows as u32, vec: k % 8 == 0 };
                let p =
                    MatmulParams { x: x.at(), w: w.at(), out: out.at(), m: m as u32, n: n as u32, k: k as u32, pad: 0 };
                self.launch(kernel, (blocks(n, 8), blocks(m, rows), 1), 256, 0, &p)
            }
        }
    }

    pub(crate) fn swiglu_impl(&self, call: &ops::Swiglu<'_, CudaBackend>) -> Result<()> {
        let &ops::Swiglu { x, m, gate_w, up_w, width, out, scratch } = call;
        let _op = self.dev.op();
        let (n, k) = (gate_w.shape[0], gate_w.shape[1]);
        if m > DECODE_MAX_Q || gate_w.dtype != up_w.dtype || gate_w.dtype.is_quantized() {
            // Prefill: two GEMMs and the activation.
            self.matmul(x, m, gate_w, out)?;
            self.matmul(x, m, up_w, scratch)?;
            return self.silu_mul(out, scratch, m * width);
        }
        if m == 0 || n == 0 {
            return Ok(());
        }
        let rows = m.next_power_of_two();
        let kernel = Swiglu { dt: gate_w.dtype, rows: rows as u32, vec: k % 8 == 0 };
        let p = SwigluParams {
            x: x.at(),
            wg: gate_w.at(),
            wu: up_w.at(),
            out: out.at(),
            m: m as u32,
            n: n as u32,
            k: k as u32,
            pad: 0,
        };
        self.launch(kernel, (blocks(n, 8), 1, 1), 256, 0, &p)
    }
}
