//! The routed experts on CUDA: per-entry split-K GEMVs for decode (no routing pass), and for batches the
//! entries grouped by expert on the device into tiles, multiplied on tensor cores (bf16) or CUDA cores (the
//! other formats, quantized ones included); then SwiGLU and the sum into the output.

use herd_core::backend::ops;
use herd_core::error::Result;
use herd_core::quant::DType;

use crate::device::err;
use crate::kernel::{dts, kernel, params, scalar, DevPtr, FLOATS};
use crate::{blocks, CudaBackend, CudaBuffer, CudaWeight, MAX_TOPK, MOE_GEMV_MAX};

params! {
    pub struct RouterTopkParams {
        pub logits: DevPtr, pub idx: DevPtr, pub score: DevPtr, pub rows: u32, pub e: u32, pub k: u32, pub pad: u32,
    }
    pub struct MoeGemvParams {
        pub input: DevPtr, pub idx: DevPtr, pub w: DevPtr, pub part: DevPtr, pub in_div: u32, pub kin: u32,
        pub n: u32, pub chunk: u32, pub splits: u32, pub ne: u32,
    }
    pub struct MoeGemvQParams {
        pub input: DevPtr, pub idx: DevPtr, pub w: DevPtr, pub sc: DevPtr, pub part: DevPtr, pub in_div: u32,
        pub st: u32, pub group: u32, pub kin: u32, pub n: u32, pub chunk: u32, pub splits: u32, pub ne: u32,
    }
    pub struct MoeActParams {
        pub gu: DevPtr, pub score: DevPtr, pub h: DevPtr, pub nent: u32, pub f: u32, pub splits: u32, pub pad: u32,
    }
    pub struct MoeSumParams {
        pub y: DevPtr, pub out: DevPtr, pub idx: DevPtr, pub rows: u32, pub k: u32, pub d: u32, pub splits: u32,
        pub ne: u32, pub pad: u32,
    }
    pub struct MoeRouteParams { pub idx: DevPtr, pub route: DevPtr, pub nent: u32, pub e: u32, pub tmax: u32, pub pad: u32 }
    pub struct MoeTileParams {
        pub input: DevPtr, pub route: DevPtr, pub w: DevPtr, pub y: DevPtr, pub sc: DevPtr, pub in_div: u32,
        pub tmax: u32, pub kin: u32, pub n: u32, pub st: u32, pub group: u32,
    }
    pub struct MoeMmaParams {
        pub input: DevPtr, pub route: DevPtr, pub w: DevPtr, pub y: DevPtr, pub in_div: u32, pub tmax: u32,
        pub kin: u32, pub n: u32, pub exact: u32, pub pad: u32,
    }
}

kernel!(RouterTopk: "moe", RouterTopkParams => "router_topk");
kernel!(MoeGemv { dt: DType, vec: bool }: "moe", MoeGemvParams =>
    |k| format!("moe_gemv_{}{}", dts(k.dt), scalar(k.vec)),
    all FLOATS.iter().flat_map(|&dt| [true, false].map(|vec| MoeGemv { dt, vec })).collect());
kernel!(MoeGemvQ { bits: u32, vec: bool }: "moe", MoeGemvQParams =>
    |k| format!("moe_gemv_q{}{}", k.bits, scalar(k.vec)),
    all [4, 8].iter().flat_map(|&bits| [true, false].map(|vec| MoeGemvQ { bits, vec })).collect());
kernel!(MoeAct: "moe", MoeActParams => "moe_act");
kernel!(MoeSum: "moe", MoeSumParams => "moe_sum");
kernel!(MoeRoute: "moe", MoeRouteParams => "moe_route");
kernel!(MoeTile { dt: &'static str }: "moe", MoeTileParams => |k| format!("moe_tile_{}", k.dt),
    all ["f32", "bf16", "f16", "q4", "q8"].map(|dt| MoeTile { dt }).to_vec());
kernel!(MoeMma: "moe", MoeMmaParams => "moe_mma_bf16");

/// One expert-grouped tile pass: `y[ent] = in[ent / in_div] · w[expert of ent]` for the routed entries.
struct TilePass<'a> {
    input: u64,
    in_div: usize,
    route: u64,
    tmax: usize,
    w: &'a CudaWeight,
    y: u64,
    kin: usize,
    n: usize,
}

impl CudaBackend {
    /// One expert-grouped tile pass: tensor cores for bf16 weights (on sm_80 and newer), CUDA cores otherwise.
    fn moe_tiles(&self, t: TilePass, grid: (u32, u32, u32)) -> Result<()> {
        let (input, route, y) = (DevPtr::new(t.input), DevPtr::new(t.route), DevPtr::new(t.y));
        let (in_div, tmax, kin, n) = (t.in_div as u32, t.tmax as u32, t.kin as u32, t.n as u32);
        if t.w.dtype == DType::BF16 && self.dev.arch.0 >= 8 {
            let exact = u32::from(!self.bf16_activations);
            let p = MoeMmaParams { input, route, w: t.w.at(), y, in_div, tmax, kin, n, exact, pad: 0 };
            self.launch(MoeMma, grid, 128, 0, &p)
        } else {
            let (sc, st, group) = (DevPtr::new(t.w.scales), t.w.st, t.w.group);
            let p = MoeTileParams { input, route, w: t.w.at(), y, sc, in_div, tmax, kin, n, st, group };
            self.launch(MoeTile { dt: dts(t.w.dtype) }, grid, 256, 0, &p)
        }
    }

    /// One of the per-entry MoE GEMV passes: returns the partial-sum buffer and its number of splits.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn moe_gemv(
        &self,
        input: u64,
        in_div: usize,
        idx: &CudaBuffer,
        w: &CudaWeight,
        nent: usize,
        kin: usize,
        n: usize,
        role: &'static str,
    ) -> Result<(u64, usize)> {
        let vec = n.is_multiple_of(8);
        let per = if vec { 8 } else { 1 };
        let gx = (n / per).div_ceil(256).max(1);
        // Split the input dimension until the grid holds about two blocks per SM, keeping splits >= 64 long.
        let want = (2 * self.dev.sms as usize).div_ceil(gx * nent).max(1);
        let splits = want.min(kin.div_ceil(64)).max(1);
        let chunk = kin.div_ceil(splits);
        let splits = kin.div_ceil(chunk).max(1);
        let part = self.dev.scratch(role, nent * splits * n * 4)?;
        let grid = (gx as u32, splits as u32, nent as u32);
        let (input, idx, part_p) = (DevPtr::new(input), idx.at(), DevPtr::new(part));
        let (in_div, kin, n, chunk, ne) = (in_div as u32, kin as u32, n as u32, chunk as u32, w.shape[0] as u32);
        if let Some(bits) = w.bits() {
            let p = MoeGemvQParams {
                input,
                idx,
                w: w.at(),
                sc: DevPtr::new(w.scales),
                part: part_p,
                in_div,
                st: w.st,
                group: w.group,
                kin,
                n,
                chunk,
                splits: splits as u32,
                ne,
            };
            self.launch(MoeGemvQ { bits, vec }, grid, 256, 0, &p)?;
        } else {
            let p =
                MoeGemvParams { input, idx, w: w.at(), part: part_p, in_div, kin, n, chunk, splits: splits as u32, ne };
            self.launch(MoeGemv { dt: w.dtype, vec }, grid, 256, 0, &p)?;
        }
        Ok((part, splits))
    }

    pub(crate) fn moe_impl(&self, call: &ops::Moe<'_, CudaBackend>) -> Result<()> {
        let &ops::Moe { x, rows, idx, score, k, gate_up, down, out } = call;
        let _op = self.dev.op();
        let (e, d, f2) = (gate_up.shape[0], gate_up.shape[1], gate_up.shape[2]);
        let fw = f2 / 2;
        let nent = rows * k;
        if nent == 0 || d == 0 || fw == 0 {
            return Ok(());
        }
        let h = self.dev.scratch("moe h", nent * fw * 4)?;
        if nent <= MOE_GEMV_MAX {
            let (gu, s1) = self.moe_gemv(x.ptr, k, idx, gate_up, nent, d, f2, "moe up")?;
            self.moe_act(gu, score, h, nent, fw, s1)?;
            let (y, s2) = self.moe_gemv(h, 1, idx, down, nent, fw, d, "moe down")?;
            return self.moe_sum(y, out, idx, rows, k, d, s2, e);
        }
        // Entries grouped by expert on the device into tiles of up to 32: at most one partial tile per expert.
        let tmax = nent.div_ceil(32) + e.min(nent);
        let route = self.dev.scratch("moe route", (1 + 3 * tmax + nent) * 4)?;
        let rp = MoeRouteParams {
            idx: idx.at(),
            route: DevPtr::new(route),
            nent: nent as u32,
            e: e as u32,
            tmax: tmax as u32,
            pad: 0,
        };
        self.launch(MoeRoute, (1, 1, 1), 1024, 2 * e * 4, &rp)?;
        let gu = self.dev.scratch("moe up", nent * f2 * 4)?;
        let up = TilePass { input: x.ptr, in_div: k, route, tmax, w: gate_up, y: gu, kin: d, n: f2 };
        self.moe_tiles(up, (blocks(f2, 64), tmax as u32, 1))?;
        self.moe_act(gu, score, h, nent, fw, 1)?;
        let y = self.dev.scratch("moe down", nent * d * 4)?;
        let down_pass = TilePass { input: h, in_div: 1, route, tmax, w: down, y, kin: fw, n: d };
        self.moe_tiles(down_pass, (blocks(d, 64), tmax as u32, 1))?;
        self.moe_sum(y, out, idx, rows, k, d, 1, e)
    }

    /// `h[ent, j] = silu(s·g)·(s·u)` from the `splits` partial sums of the gate/up products `gu`.
    fn moe_act(&self, gu: u64, score: &CudaBuffer, h: u64, nent: usize, fw: usize, splits: usize) -> Result<()> {
        let p = MoeActParams {
            gu: DevPtr::new(gu),
            score: score.at(),
            h: DevPtr::new(h),
            nent: nent as u32,
            f: fw as u32,
            splits: splits as u32,
            pad: 0,
        };
        self.launch(MoeAct, (blocks(nent * fw, 256), 1, 1), 256, 0, &p)
    }

    /// `out[row] = Σ` over the row's `k` entries of the `splits` partial sums of the down products `y`.
    #[allow(clippy::too_many_arguments)]
    fn moe_sum(
        &self,
        y: u64,
        out: &CudaBuffer,
        idx: &CudaBuffer,
        rows: usize,
        k: usize,
        d: usize,
        splits: usize,
        e: usize,
    ) -> Result<()> {
        let p = MoeSumParams {
            y: DevPtr::new(y),
            out: out.at(),
            idx: idx.at(),
            rows: rows as u32,
            k: k as u32,
            d: d as u32,
            splits: splits as u32,
            ne: e as u32,
            pad: 0,
        };
        self.launch(MoeSum, (blocks(rows * d, 256), 1, 1), 256, 0, &p)
    }

    pub(crate) fn router_topk_impl(&self, call: &ops::RouterTopk<'_, CudaBackend>) -> Result<()> {
        let &ops::RouterTopk { logits, rows, n_experts, k, idx, score } = call;
        let _op = self.dev.op();
        if k > MAX_TOPK {
            return Err(err(format!("router: top-{k} (at most top-{MAX_TOPK} here)")));
        }
        if rows == 0 {
            return Ok(());
        }
        let p = RouterTopkParams {
            logits: logits.at(),
            idx: idx.at(),
            score: score.at(),
            rows: rows as u32,
            e: n_experts as u32,
            k: k as u32,
            pad: 0,
        };
        self.launch(RouterTopk, (blocks(rows, 128), 1, 1), 128, 0, &p)
    }
}
