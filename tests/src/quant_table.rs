//! The op table's rows for the quantized formats of `herd_core::quant` (int8 and int4, group-wise,
//! symmetric, f16 or bf16 scales): matmul (nn.Linear weights, groups along K), embed, and the MoE (the
//! input-major expert tensors, groups along the second-last axis), against the f64 references run on the
//! dequantized values. Every backend runs them: the dequantization in each backend's kernels is its own,
//! so these rows check it against herd_core::quant's (on the CPU they share it, and check the plumbing).

use herd_core::backend::Backend;
use herd_core::quant::{DType, GroupAxis, Grouping, ScaleType};
use herd_core::Result;

use crate::reference as r;
use crate::table::{push_row, timed, weight, Out, Rng, RowResult};

fn q(bits: u32, group: u32, scale: ScaleType, axis: GroupAxis) -> DType {
    let g = Grouping { group, scale, axis };
    if bits == 8 {
        DType::Q8(g)
    } else {
        DType::Q4(g)
    }
}

fn label(dt: DType) -> String {
    let g = dt.grouping().expect("quantized");
    let s = match g.scale {
        ScaleType::F16 => "f16",
        ScaleType::BF16 => "bf16",
    };
    format!("{}g{}-{s}", dt.name(), g.group)
}

/// Runs the quantized rows on `be`. `filter` keeps rows whose op name contains it.
pub fn run_quant_table<B: Backend>(be: &B, perf: bool, filter: Option<&str>) -> Vec<RowResult> {
    let mut rows = Vec::new();
    let mut add =
        |op: &'static str, case: String, tol: f64, res: Result<Out>| push_row(&mut rows, filter, op, case, tol, res);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let (f16s, bf16s) = (ScaleType::F16, ScaleType::BF16);
    let linear = [
        q(8, 32, f16s, GroupAxis::Last),
        q(4, 32, f16s, GroupAxis::Last),
        q(4, 128, bf16s, GroupAxis::Last),
        q(8, 128, bf16s, GroupAxis::Last),
    ];

    // matmul: x [m, k] · w [n, k]ᵀ, decode and prefill sizes, an odd n.
    for &(m, k, n) in &[(1, 128, 33), (3, 256, 67), (9, 128, 40), (37, 256, 70), (1, 5120, 8192)] {
        for dt in linear {
            if m * k * n > 1 << 24 && !matches!(dt, DType::Q4(g) if g.group == 128) {
                continue;
            }
            let (xv, wv) = (rng.vec(m * k), rng.vec(n * k));
            let res = (|| {
                let (w, seen) = weight(be, dt, &[n, k], &wv)?;
                let x = be.upload(&xv)?;
                let o = be.alloc(m * n)?;
                let secs = timed(be, perf, &o, || be.matmul(&x, m, &w, &o))?;
                let bytes = dt.bytes(&[n, k]).unwrap_or(0) + 4 * (m * k + m * n);
                Ok(Out {
                    got: be.read(&o)?,
                    want: r::matmul(&xv, m, k, &seen, n),
                    secs,
                    bytes: bytes as f64,
                    flops: (2 * m * k * n) as f64,
                })
            })();
            add("matmul", format!("m={m} k={k} n={n} {}", label(dt)), 1e-9, res);
        }
    }

    // embed: rows of a quantized table (a tied lm_head's embedding).
    for dt in [q(4, 32, f16s, GroupAxis::Last), q(8, 64, bf16s, GroupAxis::Last)] {
        let (v, dim, n) = (50, 64, 7);
        let tab = rng.vec(v * dim);
        let ids: Vec<u32> = (0..n).map(|_| rng.below(v as u32)).collect();
        let res = (|| {
            let (w, seen) = weight(be, dt, &[v, dim], &tab)?;
            let ib = be.upload_u32(&ids)?;
            let o = be.alloc(n * dim)?;
            let secs = timed(be, perf, &o, || be.embed(&w, &ib, n, dim, &o))?;
            let want: Vec<f32> =
                ids.iter().flat_map(|&i| seen[i as usize * dim..(i as usize + 1) * dim].to_vec()).collect();
            Ok(Out { got: be.read(&o)?, want, secs, bytes: (n * dim * 5) as f64, flops: 0.0 })
        })();
        add("embed", format!("vocab={v} dim={dim} n={n} {}", label(dt)), 0.0, res);
    }

    // moe: gate_up [E, D, 2F] and down [E, F, D], groups along D and F; the last two as the expert cache runs
    // it: weights written row by row, every third pick naming an expert past the end (it must add nothing).
    for &(rows_, d, f, e, k, bits, group, skip) in &[
        (1, 64, 32, 4, 1, 4, 32, false),
        (9, 64, 32, 4, 2, 8, 32, false),
        (20, 128, 64, 4, 1, 4, 64, false),
        (2, 256, 128, 8, 2, 4, 128, false),
        (9, 64, 32, 4, 2, 4, 32, true),
        (20, 128, 64, 4, 1, 8, 64, true),
    ] {
        let dt = q(bits, group, f16s, GroupAxis::SecondLast);
        let xv = rng.vec(rows_ * d);
        let (gu, dn) = (rng.vec(e * d * 2 * f), rng.vec(e * f * d));
        let mut idxv: Vec<u32> = (0..rows_ * k).map(|i| ((i / k) as u32 * 7 + (i % k) as u32 * 3) % e as u32).collect();
        if skip {
            for (i, v) in idxv.iter_mut().enumerate().filter(|(i, _)| i % 3 == 0) {
                *v = (e + i % 2) as u32;
            }
        }
        let scv: Vec<f32> = rng.vec(rows_ * k).iter().map(|v| 0.5 + 0.5 * v).collect();
        let base = rng.vec(rows_ * d);
        let res = (|| {
            let make = if skip { crate::table::written_weight::<B> } else { weight::<B> };
            let (guw, gus) = make(be, dt, &[e, d, 2 * f], &gu)?;
            let (dnw, dns) = make(be, dt, &[e, f, d], &dn)?;
            let x = be.upload(&xv)?;
            let idx = be.upload_u32(&idxv)?;
            let sc = be.upload(&scv)?;
            let o = be.upload(&base)?;
            be.moe(&x, rows_, &idx, &sc, k, &guw, &dnw, &o)?;
            let mut want = base.clone();
            r::moe(&xv, rows_, d, f, &idxv, &scv, k, &gus, &dns, &mut want);
            Ok(Out { got: be.read(&o)?, want, secs: None, bytes: 0.0, flops: (rows_ * k * 6 * d * f) as f64 })
        })();
        let sk = if skip { " skipped-picks written-rows" } else { "" };
        add("moe", format!("rows={rows_} d={d} f={f} experts={e} k={k} {}{sk}", label(dt)), 1e-9, res);
    }
    rows
}
