//! Mixture of experts (moe.wgsl): the top-k sigmoid router, and the routed experts run for the experts the
//! rows picked: grouped by expert (moe_route, moe_gemv, moe_act, moe_sum) for float experts, per choice
//! (moe_up, moe_down) otherwise.

use herd_core::backend::ops;
use herd_core::error::Result;
use herd_core::quant::DType;

use crate::gpu::{err, Gpu};
use crate::kernel::{groups, kernels, params};
use crate::{GpuBuffer, GpuWeight, WgpuBackend};

params! {
    pub struct RouterParams { pub rows: u32, pub experts: u32, pub k: u32 }
    /// `d`, `f`: the model and expert widths; the bound part holds experts `first..first + count`.
    pub struct MoeParams { pub rows: u32, pub k: u32, pub d: u32, pub f: u32, pub first: u32, pub count: u32 }
    /// `tmax`: the most tiles of (row, choice) entries the route table has room for.
    pub struct MoeRouteParams { pub rows: u32, pub k: u32, pub experts: u32, pub tmax: u32 }
    /// `kd`: the input dimension, `nc`: columns, split into `splits` chunks of `chunk`; `mode` 0: the
    /// gate/up pass (input score · x), 1: the down pass (input h); the bound part holds experts
    /// `first..first + count`.
    pub struct MoeGemvParams {
        pub rows: u32,
        pub k: u32,
        pub experts: u32,
        pub kd: u32,
        pub nc: u32,
        pub chunk: u32,
        pub splits: u32,
        pub first: u32,
        pub count: u32,
        pub mode: u32,
        pub tmax: u32,
    }
    pub struct MoeActParams { pub rows: u32, pub k: u32, pub f: u32, pub splits: u32 }
    pub struct MoeSumParams { pub rows: u32, pub k: u32, pub d: u32, pub splits: u32, pub experts: u32 }
}

kernels! {
    pub enum Router: Moe, RouterParams { TopK => "router_topk" }
}
kernels! {
    pub enum Moe: Moe, MoeParams { Up => "moe_up", Down => "moe_down" }
}
kernels! {
    pub enum MoeRoute: Moe, MoeRouteParams { Route => "moe_route" }
}
kernels! {
    pub enum MoeGemv: Moe, MoeGemvParams { Gemv => "moe_gemv" }
}
kernels! {
    pub enum MoeAct: Moe, MoeActParams { SwiGlu => "moe_act" }
}
kernels! {
    pub enum MoeSum: Moe, MoeSumParams { Sum => "moe_sum" }
}

pub(crate) fn router_topk(gpu: &Gpu, call: &ops::RouterTopk<'_, WgpuBackend>) -> Result<()> {
    let &ops::RouterTopk { logits, rows, n_experts, k, idx, score } = call;
    let _op = gpu.op();
    let b = [(1, &logits.buf), (5, &score.buf), (6, &idx.buf)];
    let p = RouterParams { rows: rows as u32, experts: n_experts as u32, k: k as u32 };
    gpu.dispatch(Router::TopK, 0, &b, &p, groups(rows, 64))
}

pub(crate) fn moe(gpu: &Gpu, call: &ops::Moe<'_, WgpuBackend>) -> Result<()> {
    let &ops::Moe { x, rows, idx, score, k, gate_up, down, out } = call;
    let _op = gpu.op();
    // Shapes and grouping are checked in core (check::moe); one format for both tensors is this backend's own
    // limit (the shaders take one weight format).
    let (e, d, f) = (gate_up.shape[0], gate_up.shape[1], gate_up.shape[2] / 2);
    if down.dtype != gate_up.dtype {
        return Err(err(format!(
            "moe: gate_up ({}) and down ({}) in different formats are not supported on wgpu",
            gate_up.dtype.name(),
            down.dtype.name()
        )));
    }
    let per = if gate_up.dtype == DType::F32 { 4 } else { 8 };
    let grouped = !gate_up.dtype.is_quantized();
    if grouped && (2 * f).is_multiple_of(per) && d.is_multiple_of(per) && e <= 256 {
        return moe_grouped(gpu, x, rows, idx, score, k, gate_up, down, out, [e, d, f]);
    }
    let h = gpu.scratch("moe activations", rows * k * f, false)?;
    let params = |part: &crate::gpu::WeightPart| MoeParams {
        rows: rows as u32,
        k: k as u32,
        d: d as u32,
        f: f as u32,
        first: part.first as u32,
        count: part.count as u32,
    };
    for part in &gate_up.parts {
        let b = [(1, &x.buf), (2, &idx.buf), (3, &score.buf), (4, &part.buf), (5, &h), (12, part.scale_buf())];
        gpu.dispatch(Moe::Up, gate_up.wdt(), &b, &params(part), groups(rows * k * f, 64))?;
    }
    for part in &down.parts {
        let b = [(1, &h), (2, &idx.buf), (4, &part.buf), (5, &out.buf), (12, part.scale_buf())];
        gpu.dispatch(Moe::Down, down.wdt(), &b, &params(part), groups(rows * d, 64))?;
    }
    Ok(())
}

/// The grouped-expert MoE (see moe.wgsl): route the (row, choice) pairs into per-expert tiles, the
/// gate/up pass split along D, SwiGLU, the down pass split along F, and the sum into `out`.
#[allow(clippy::too_many_arguments)]
fn moe_grouped(
    gpu: &Gpu,
    x: &GpuBuffer,
    rows: usize,
    idx: &GpuBuffer,
    score: &GpuBuffer,
    k: usize,
    gate_up: &GpuWeight,
    down: &GpuWeight,
    out: &GpuBuffer,
    [e, d, f]: [usize; 3],
) -> Result<()> {
    let nrc = rows * k;
    // Tiles of up to 8 entries per expert: at most one partly filled tile per expert that is used.
    let tmax = nrc.div_ceil(8) + e.min(nrc);
    let route = gpu.scratch("moe route", 1 + 3 * tmax + nrc, true)?;
    let (rows32, k32, e32) = (rows as u32, k as u32, e as u32);
    let p = MoeRouteParams { rows: rows32, k: k32, experts: e32, tmax: tmax as u32 };
    gpu.dispatch(MoeRoute::Route, 0, &[(2, &idx.buf), (7, &route)], &p, 1)?;
    // Split the input dimension across workgroups while the partial sums stay small (32 MiB).
    let budget = (32 << 20).min(gpu.max_binding() as usize);
    let splits = |kd: usize, nc: usize| kd.div_ceil(128).min(budget / (4 * nrc * nc)).max(1);
    let per = if gate_up.dtype == DType::F32 { 4 } else { 8 };
    let gemv = |w: &GpuWeight,
                input: &wgpu::Buffer,
                kd: usize,
                nc: usize,
                mode: u32,
                role: &'static str|
     -> Result<(wgpu::Buffer, usize)> {
        let s = splits(kd, nc);
        let chunk = kd.div_ceil(s);
        let partial = gpu.scratch(role, s * nrc * nc, false)?;
        let pblocks = (nc / per).div_ceil(64);
        for part in &w.parts {
            let p = MoeGemvParams {
                rows: rows32,
                k: k32,
                experts: e32,
                kd: kd as u32,
                nc: nc as u32,
                chunk: chunk as u32,
                splits: s as u32,
                first: part.first as u32,
                count: part.count as u32,
                mode,
                tmax: tmax as u32,
            };
            let b = [(1, input), (3, &score.buf), (5, &partial), (8, &route), (9, &part.buf)];
            gpu.dispatch(MoeGemv::Gemv, w.wdt(), &b, &p, (pblocks * s * tmax) as u32)?;
        }
        Ok((partial, s))
    };
    let (pu, su) = gemv(gate_up, &x.buf, d, 2 * f, 0, "moe gate/up partials")?;
    let h = gpu.scratch("moe activations", nrc * f, false)?;
    let p = MoeActParams { rows: rows32, k: k32, f: f as u32, splits: su as u32 };
    gpu.dispatch(MoeAct::SwiGlu, 0, &[(1, &pu), (5, &h)], &p, groups(nrc * f, 256))?;
    let (pd, sd) = gemv(down, &h, f, d, 1, "moe down partials")?;
    let p = MoeSumParams { rows: rows32, k: k32, d: d as u32, splits: sd as u32, experts: e32 };
    let b = [(1, &pd), (2, &idx.buf), (5, &out.buf)];
    gpu.dispatch(MoeSum::Sum, 0, &b, &p, groups(rows * d, 256))
}
