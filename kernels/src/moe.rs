//! The routed experts on CUDA: per-entry split-K GEMVs for decode (no routing pass), and for batches the
//! entries grouped by expert on the device into tiles, multiplied on tensor cores (bf16) or CUDA cores (the
//! other formats, quantized ones included); then SwiGLU and the sum into the output.

use herd_core::error::Result;
use herd_core::quant::{DType, GroupAxis};

use crate::device::{err, ptr, u, Arg};
use crate::{blocks, dts, need, CudaBackend, CudaBuffer, CudaWeight, MAX_TOPK, MOE_GEMV_MAX};

impl CudaBackend {
    /// One expert-grouped tile pass: tensor cores for bf16 weights (on sm_80 and newer), CUDA cores otherwise.
    pub(crate) fn moe_tiles(&self, w: &CudaWeight, grid: (u32, u32, u32), mut args: Vec<Arg>) -> Result<()> {
        if w.dtype == DType::BF16 && self.dev.arch.0 >= 8 {
            args.push(u(usize::from(!self.bf16_activations)));
            self.launch("moe", "moe_mma_bf16", grid, 128, 0, args)
        } else {
            args.extend(w.qargs());
            self.launch("moe", &format!("moe_tile_{}", dts(w.dtype)), grid, 256, 0, args)
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
        let name = format!("moe_gemv_{}{}", dts(w.dtype), if vec { "" } else { "_scalar" });
        let mut args = vec![ptr(input), u(in_div), ptr(idx.ptr), ptr(w.ptr)];
        if w.bits().is_some() {
            args.extend(w.qargs());
        }
        args.extend([ptr(part), u(kin), u(n), u(chunk), u(splits), u(w.shape[0])]);
        self.launch("moe", &name, (gx as u32, splits as u32, nent as u32), 256, 0, args)?;
        Ok((part, splits))
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn moe_impl(
        &self,
        x: &CudaBuffer,
        rows: usize,
        idx: &CudaBuffer,
        score: &CudaBuffer,
        k: usize,
        gate_up: &CudaWeight,
        down: &CudaWeight,
        out: &CudaBuffer,
    ) -> Result<()> {
        let _op = self.dev.op();
        Self::weight_shape(gate_up, 3, "moe gate_up")?;
        Self::weight_shape(down, 3, "moe down")?;
        let (e, d, f2) = (gate_up.shape[0], gate_up.shape[1], gate_up.shape[2]);
        let fw = f2 / 2;
        for w in [gate_up, down] {
            if w.dtype.grouping().is_some_and(|g| g.axis != GroupAxis::SecondLast) {
                return Err(err("moe: quantized expert tensors must be grouped along their input axis"));
            }
        }
        if f2 % 2 != 0 || down.shape != [e, fw, d] {
            return Err(err(format!("moe: gate_up {:?} and down {:?} do not match", gate_up.shape, down.shape)));
        }
        need("moe x", x, rows * d)?;
        need("moe idx", idx, rows * k)?;
        need("moe score", score, rows * k)?;
        need("moe out", out, rows * d)?;
        let nent = rows * k;
        if nent == 0 || d == 0 || fw == 0 {
            return Ok(());
        }
        let h = self.dev.scratch("moe h", nent * fw * 4)?;
        if nent <= MOE_GEMV_MAX {
            let (gu, s1) = self.moe_gemv(x.ptr, k, idx, gate_up, nent, d, f2, "moe up")?;
            let args = vec![ptr(gu), ptr(score.ptr), ptr(h), u(nent), u(fw), u(s1)];
            self.launch("moe", "moe_act", (blocks(nent * fw, 256), 1, 1), 256, 0, args)?;
            let (y, s2) = self.moe_gemv(h, 1, idx, down, nent, fw, d, "moe down")?;
            let args = vec![ptr(y), ptr(out.ptr), u(rows), u(k), u(d), u(s2), ptr(idx.ptr), u(e)];
            return self.launch("moe", "moe_sum", (blocks(rows * d, 256), 1, 1), 256, 0, args);
        }
        // Entries grouped by expert on the device into tiles of up to 32: at most one partial tile per expert.
        let tmax = nent.div_ceil(32) + e.min(nent);
        let route = self.dev.scratch("moe route", (1 + 3 * tmax + nent) * 4)?;
        let args = vec![ptr(idx.ptr), u(nent), u(e), u(tmax), ptr(route)];
        self.launch("moe", "moe_route", (1, 1, 1), 1024, 2 * e * 4, args)?;
        let gu = self.dev.scratch("moe up", nent * f2 * 4)?;
        let args = vec![ptr(x.ptr), u(k), ptr(route), u(tmax), ptr(gate_up.ptr), ptr(gu), u(d), u(f2)];
        self.moe_tiles(gate_up, (blocks(f2, 64), tmax as u32, 1), args)?;
        let args = vec![ptr(gu), ptr(score.ptr), ptr(h), u(nent), u(fw), u(1)];
        self.launch("moe", "moe_act", (blocks(nent * fw, 256), 1, 1), 256, 0, args)?;
        let y = self.dev.scratch("moe down", nent * d * 4)?;
        let args = vec![ptr(h), u(1), ptr(route), u(tmax), ptr(down.ptr), ptr(y), u(fw), u(d)];
        self.moe_tiles(down, (blocks(d, 64), tmax as u32, 1), args)?;
        let args = vec![ptr(y), ptr(out.ptr), u(rows), u(k), u(d), u(1), ptr(idx.ptr), u(e)];
        self.launch("moe", "moe_sum", (blocks(rows * d, 256), 1, 1), 256, 0, args)
    }

    pub(crate) fn router_topk_impl(
        &self,
        logits: &CudaBuffer,
        rows: usize,
        n_experts: usize,
        k: usize,
        idx: &CudaBuffer,
        score: &CudaBuffer,
    ) -> Result<()> {
        let _op = self.dev.op();
        if k == 0 || k > n_experts || k > MAX_TOPK {
            return Err(err(format!("router: top-{k} of {n_experts} experts (at most top-{MAX_TOPK})")));
        }
        need("router logits", logits, rows * n_experts)?;
        need("router idx", idx, rows * k)?;
        need("router score", score, rows * k)?;
        if !idx.is_u32 {
            return Err(err("router: idx must be u32"));
        }
        if rows == 0 {
            return Ok(());
        }
        let args = vec![ptr(logits.ptr), u(rows), u(n_experts), u(k), ptr(idx.ptr), ptr(score.ptr)];
        self.launch("moe", "router_topk", (blocks(rows, 128), 1, 1), 128, 0, args)
    }
}
