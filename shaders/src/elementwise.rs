//! Element-wise and row ops (elementwise.wgsl): the residual add, SwiGLU's silu·up, row gather, embedding.

use herd_core::backend::ops;
use herd_core::error::Result;

use crate::gpu::Gpu;
use crate::kernel::{groups, kernels, params};
use crate::{GpuBuffer, WgpuBackend};

params! {
    pub struct EltwiseParams { pub n: u32 }
    pub struct GatherParams { pub n: u32, pub dim: u32, pub src_rows: u32 }
    pub struct EmbedParams { pub n: u32, pub dim: u32, pub first: u32, pub count: u32 }
}

kernels! {
    pub enum Eltwise: Elementwise, EltwiseParams { Add => "add", SiluMul => "silu_mul" }
}
kernels! {
    pub enum Gather: Elementwise, GatherParams { Rows => "gather_rows" }
}
kernels! {
    pub enum Embed: Elementwise, EmbedParams { Table => "embed" }
}

pub(crate) fn embed(gpu: &Gpu, call: &ops::Embed<'_, WgpuBackend>) -> Result<()> {
    let &ops::Embed { table, ids, n, dim, out } = call;
    let _op = gpu.op();
    for part in &table.parts {
        let b = [(1, &out.buf), (3, &ids.buf), (4, &part.buf), (12, part.scale_buf())];
        let p = EmbedParams { n: n as u32, dim: dim as u32, first: part.first as u32, count: part.count as u32 };
        gpu.dispatch(Embed::Table, table.wdt(), &b, &p, groups(n * dim, 256))?;
    }
    Ok(())
}

/// `add` (acc += x) or `silu_mul` (gate = silu(gate) · up): in place on `a` (checked distinct from `b`).
pub(crate) fn eltwise(gpu: &Gpu, k: Eltwise, a: &GpuBuffer, b: &GpuBuffer, n: usize) -> Result<()> {
    let _op = gpu.op();
    gpu.dispatch(k, 0, &[(1, &a.buf), (2, &b.buf)], &EltwiseParams { n: n as u32 }, groups(n, 256))
}

pub(crate) fn gather_rows(gpu: &Gpu, call: &ops::GatherRows<'_, WgpuBackend>) -> Result<()> {
    let &ops::GatherRows { x, rows, n, dim, out } = call;
    let _op = gpu.op();
    let b = [(1, &out.buf), (2, &x.buf), (3, &rows.buf)];
    let p = GatherParams { n: n as u32, dim: dim as u32, src_rows: (x.len / dim.max(1)) as u32 };
    gpu.dispatch(Gather::Rows, 0, &b, &p, groups(n * dim, 256))
}
