//! Element-wise and row ops on CUDA (elementwise.cu): the embedding lookup, the residual add, SwiGLU's
//! silu·up and the row gather.

use herd_core::error::Result;
use herd_core::quant::{DType, GroupAxis, QuantLayout};
use herd_core::synthetic::Fill;

use crate::device::{err, f, ptr, u, Arg};
use crate::{blocks, dts, need, CudaBackend, CudaBuffer, CudaWeight};

impl CudaBackend {
    pub(crate) fn embed_impl(
        &self,
        table: &CudaWeight,
        ids: &CudaBuffer,
        n: usize,
        dim: usize,
        out: &CudaBuffer,
    ) -> Result<()> {
        let _op = self.dev.op();
        Self::weight_shape(table, 2, "embed")?;
        if table.shape[1] != dim || !ids.is_u32 {
            return Err(err(format!("embed: table {:?} for dim {dim}, ids must be u32", table.shape)));
        }
        need("embed ids", ids, n)?;
        need("embed out", out, n * dim)?;
        if n == 0 {
            return Ok(());
        }
        if table.bits().is_some() {
            let mut args = vec![ptr(table.ptr)];
            args.extend(table.qargs());
            args.extend([ptr(ids.ptr), ptr(out.ptr), u(n), u(dim)]);
            return self.launch(
                "elementwise",
                &format!("embed_{}", dts(table.dtype)),
                (blocks(n * dim, 256), 1, 1),
                256,
                0,
                args,
            );
        }
        let args = vec![ptr(table.ptr), ptr(ids.ptr), ptr(out.ptr), u(n), u(dim)];
        self.launch("elementwise", &format!("embed_{}", dts(table.dtype)), (blocks(n * dim, 256), 1, 1), 256, 0, args)
    }

    pub(crate) fn add_impl(&self, acc: &CudaBuffer, x: &CudaBuffer, n: usize) -> Result<()> {
        let _op = self.dev.op();
        need("add acc", acc, n)?;
        need("add x", x, n)?;
        if n == 0 {
            return Ok(());
        }
        self.launch("elementwise", "add", (blocks(n, 256), 1, 1), 256, 0, vec![ptr(acc.ptr), ptr(x.ptr), u(n)])
    }

    pub(crate) fn silu_mul_impl(&self, gate: &CudaBuffer, up: &CudaBuffer, n: usize) -> Result<()> {
        let _op = self.dev.op();
        need("silu_mul gate", gate, n)?;
        need("silu_mul up", up, n)?;
        if n == 0 {
            return Ok(());
        }
        self.launch("elementwise", "silu_mul", (blocks(n, 256), 1, 1), 256, 0, vec![ptr(gate.ptr), ptr(up.ptr), u(n)])
    }

    pub(crate) fn gather_rows_impl(
        &self,
        x: &CudaBuffer,
        rows: &CudaBuffer,
        n: usize,
        dim: usize,
        out: &CudaBuffer,
    ) -> Result<()> {
        let _op = self.dev.op();
        if !rows.is_u32 {
            return Err(err("gather_rows: rows must be u32"));
        }
        need("gather_rows rows", rows, n)?;
        need("gather_rows out", out, n * dim)?;
        if n * dim == 0 {
            return Ok(());
        }
        let args = vec![ptr(x.ptr), ptr(rows.ptr), ptr(out.ptr), u(n), u(dim)];
        self.launch("elementwise", "gather_rows", (blocks(n * dim, 256), 1, 1), 256, 0, args)
    }

    /// A synthetic weight made on the device by the synth kernels (the same values as the host generator).
    pub(crate) fn synthetic_weight_impl(
        &self,
        name: &str,
        shape: &[usize],
        dtype: DType,
        fill: Fill,
    ) -> Result<CudaWeight> {
        let _op = self.dev.op();
        let n: usize = shape.iter().product();
        let bytes = dtype.bytes(shape).map_err(|e| err(format!("{}: {e}", name.escape_debug())))?;
        let p = self.dev.alloc_raw(bytes)?;
        let w = CudaWeight::new(&self.dev, p, dtype, shape)?;
        let (seed, scale, ones) = match fill {
            Fill::Ones => (0, 0.0, 1),
            Fill::Uniform { seed, scale } => (seed, scale, 0),
        };
        if let (Some(g), Some(bits)) = (dtype.grouping(), w.bits()) {
            if ones == 1 {
                return Err(err(format!("{}: a quantized tensor of ones", name.escape_debug())));
            }
            let l = QuantLayout::new(dtype, shape).map_err(err)?;
            let axis = usize::from(g.axis == GroupAxis::SecondLast);
            let outer = n / (l.second * l.last);
            let grid = blocks(l.scales.div_ceil(2), 256).min(self.dev.sms * 64);
            let args = vec![
                ptr(p),
                ptr(w.scales),
                u(w.st as usize),
                u(g.group as usize),
                u(axis),
                Arg::V(outer as u64),
                u(l.second),
                u(l.last),
                Arg::V(seed),
                f(scale),
                Arg::V(l.scales as u64),
            ];
            self.launch("elementwise", &format!("synth_q{bits}"), (grid, 1, 1), 256, 0, args)?;
            self.dev.sync()?;
            return Ok(w);
        }
        let grid = blocks(n, 256).min(self.dev.sms * 64);
        let args = vec![ptr(p), Arg::V(n as u64), Arg::V(seed), f(scale), u(ones)];
        self.launch("elementwise", &format!("synth_{}", dts(dtype)), (grid, 1, 1), 256, 0, args)?;
        // Made now, so that loading is timed as loading and not as the first step.
        self.dev.sync()?;
        Ok(w)
    }
}
