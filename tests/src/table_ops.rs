//! How each op-table case runs: draw its inputs, call the op on a backend (timed in perf mode), and compute
//! what it must give from the f64 references in [`crate::reference`]. The case list is in [`crate::table`].

use herd_core::backend::Backend;
use herd_core::Result;

use crate::reference as r;
use crate::table::{timed, weight, written_weight, Out, Rng, Spec};

/// The outcome of a run; bytes and flops come from the case.
pub(crate) fn out(got: Vec<f32>, want: Vec<f32>, secs: Option<f64>) -> Out {
    Out { got, want, secs, bytes: 0.0, flops: 0.0 }
}

/// A matmul's activations as `be` multiplies them: rounded to 8-bit integers per block where it does so.
fn rounded<B: Backend>(be: &B, dt: herd_core::quant::DType, x: &[f32], k: usize, m: usize) -> Vec<f32> {
    match be.matmul_activation_block(dt, k, m) {
        Some(block) => r::round_activations(x, block),
        None => x.to_vec(),
    }
}

/// Runs `spec` on `be` with inputs from `rng`.
pub(crate) fn run<B: Backend>(be: &B, spec: &Spec, rng: &mut Rng, perf: bool) -> Result<Out> {
    match *spec {
        Spec::Matmul { m, k, n, dt } => {
            let (xv, wv) = (rng.vec(m * k), rng.vec(n * k));
            let (w, seen) = weight(be, dt, &[n, k], &wv)?;
            let x = be.upload(&xv)?;
            let o = be.alloc(m * n)?;
            let secs = timed(be, perf, &o, || be.matmul(&x, m, &w, &o))?;
            let xr = rounded(be, dt, &xv, k, m);
            Ok(out(be.read(&o)?, r::matmul(&xr, m, k, &seen, n), secs))
        }
        Spec::Matmuls { m, k, ns, dt } => {
            let xv = rng.vec(m * k);
            let mut ws = Vec::new();
            for n in ns {
                ws.push(weight(be, dt, &[n, k], &rng.vec(n * k))?);
            }
            let x = be.upload(&xv)?;
            let outs = ns.iter().map(|&n| be.alloc(m * n)).collect::<Result<Vec<_>>>()?;
            let (wr, or): (Vec<_>, Vec<_>) = (ws.iter().map(|w| &w.0).collect(), outs.iter().collect());
            let secs = timed(be, perf, &outs[2], || be.matmuls(&x, m, &wr, &or))?;
            let xr = rounded(be, dt, &xv, k, m);
            let (mut got, mut want) = (Vec::new(), Vec::new());
            for ((o, w), n) in outs.iter().zip(&ws).zip(ns) {
                got.extend(be.read(o)?);
                want.extend(r::matmul(&xr, m, k, &w.1, n));
            }
            Ok(out(got, want, secs))
        }
        Spec::Swiglu { m, k, f, dt } => {
            let xv = rng.vec(m * k);
            let (gv, uv) = (rng.vec(f * k), rng.vec(f * k));
            let (g, gs) = weight(be, dt, &[f, k], &gv)?;
            let (u, us) = weight(be, dt, &[f, k], &uv)?;
            let x = be.upload(&xv)?;
            let (o, sc) = (be.alloc(m * f)?, be.alloc(m * f)?);
            let secs = timed(be, perf, &o, || be.swiglu(&x, m, &g, &u, f, &o, &sc))?;
            let xr = rounded(be, dt, &xv, k, m);
            let want = r::silu_mul(&r::matmul(&xr, m, k, &gs, f), &r::matmul(&xr, m, k, &us, f));
            Ok(out(be.read(&o)?, want, secs))
        }
        Spec::RmsNorm { rows, dim, weight: wdt, in_place } => {
            let (xv, wv) = (rng.vec(rows * dim), rng.vec(dim));
            let w = wdt.map(|dt| weight(be, dt, &[dim], &wv)).transpose()?;
            let wref = w.as_ref().map(|w| &w.0);
            let want = r::rms_norm(&xv, w.as_ref().map(|w| w.1.as_slice()), rows, dim, 1e-5);
            let x = be.upload(&xv)?;
            let o = if in_place { be.upload(&xv)? } else { be.alloc(rows * dim)? };
            let src = if in_place { &o } else { &x };
            be.rms_norm(src, wref, rows, dim, 1e-5, &o)?;
            let got = be.read(&o)?;
            // In place, the repeats re-normalise their own output: the same cost.
            let secs = perf_only(be, perf, &o, || be.rms_norm(src, wref, rows, dim, 1e-5, &o))?;
            Ok(out(got, want, secs))
        }
        Spec::AddRmsNorm { rows, dim, dt } => {
            let (av, xv, wv) = (rng.vec(rows * dim), rng.vec(rows * dim), rng.vec(dim));
            let (w, seen) = weight(be, dt, &[dim], &wv)?;
            let sum: Vec<f32> = av.iter().zip(&xv).map(|(a, x)| a + x).collect();
            // Both outputs are checked: the normed rows, then the accumulator holding the sum.
            let mut want = r::rms_norm(&sum, Some(&seen), rows, dim, 1e-5);
            want.extend(&sum);
            let (acc, x, o) = (be.upload(&av)?, be.upload(&xv)?, be.alloc(rows * dim)?);
            be.add_rms_norm(&acc, &x, &w, rows, dim, 1e-5, &o)?;
            let mut got = be.read(&o)?;
            got.extend(be.read(&acc)?);
            let secs = perf_only(be, perf, &o, || be.add_rms_norm(&acc, &x, &w, rows, dim, 1e-5, &o))?;
            Ok(out(got, want, secs))
        }
        Spec::Rope { rows, heads, d, norm } => {
            let xv = rng.vec(rows * heads * d);
            let pos: Vec<u32> = (0..rows).map(|_| rng.below(20000)).collect();
            let inv: Vec<f32> = (0..d / 2).map(|j| 1.0 / 500000f32.powf(2.0 * j as f32 / d as f32)).collect();
            let (x, p, f) = (be.upload(&xv)?, be.upload_u32(&pos)?, be.upload(&inv)?);
            be.rope(&x, rows, heads, d, &p, &f, norm)?;
            let got = be.read(&x)?;
            let secs = perf_only(be, perf, &x, || be.rope(&x, rows, heads, d, &p, &f, norm))?;
            // Angles up to 2·10⁴ rad: f32 sin/cos implementations differ by a few ulps of the angle.
            let rotated = r::rope(&xv, rows, heads, d, &pos, &inv);
            let want = match norm {
                Some(eps) => r::rms_norm(&rotated, None, rows * heads, d, eps),
                None => rotated,
            };
            Ok(out(got, want, secs))
        }
        Spec::Attention(ref a) => crate::table_attention::attention(be, a, rng, perf),
        Spec::KvStore(ref a) => crate::table_attention::kv_store(be, a, rng, perf),
        Spec::Add { n } | Spec::SiluMul { n } => {
            // In place on the first buffer: acc += x, or gate = silu(gate) · up.
            let add = matches!(spec, Spec::Add { .. });
            let (a, b) = (rng.vec(n), rng.vec(n));
            let (x, y) = (be.upload(&a)?, be.upload(&b)?);
            let op = || if add { be.add(&x, &y, n) } else { be.silu_mul(&x, &y, n) };
            op()?;
            let got = be.read(&x)?;
            let secs = perf_only(be, perf, &x, op)?;
            let want = if add { a.iter().zip(&b).map(|(p, q)| p + q).collect() } else { r::silu_mul(&a, &b) };
            Ok(out(got, want, secs))
        }
        Spec::RouterTopk { rows, experts: e, k } => {
            let l = rng.vec(rows * e);
            let lb = be.upload(&l)?;
            let idx = be.upload_u32(&vec![0; rows * k])?;
            let sc = be.alloc(rows * k)?;
            let secs = timed(be, perf, &sc, || be.router_topk(&lb, rows, e, k, &idx, &sc))?;
            let (wi, ws) = r::router_topk(&l, rows, e, k);
            // Indices must match exactly: compare them as numbers alongside the scores.
            let mut got: Vec<f32> = be.read_u32(&idx)?.iter().map(|&i| i as f32).collect();
            got.extend(be.read(&sc)?);
            let mut want: Vec<f32> = wi.iter().map(|&i| i as f32).collect();
            want.extend(ws);
            Ok(out(got, want, secs))
        }
        Spec::Moe { rows, d, f, experts: e, k, dt, written } => {
            let xv = rng.vec(rows * d);
            let (gu, dn) = (rng.vec(e * d * 2 * f), rng.vec(e * f * d));
            let idxv = moe_picks(rows, k, e, written);
            let scv: Vec<f32> = rng.vec(rows * k).iter().map(|v| 0.5 + 0.5 * v).collect();
            let base = rng.vec(rows * d);
            let make = if written { written_weight::<B> } else { weight::<B> };
            let (guw, gus) = make(be, dt, &[e, d, 2 * f], &gu)?;
            let (dnw, dns) = make(be, dt, &[e, f, d], &dn)?;
            let (x, idx, sc, o) = (be.upload(&xv)?, be.upload_u32(&idxv)?, be.upload(&scv)?, be.upload(&base)?);
            be.moe(&x, rows, &idx, &sc, k, &guw, &dnw, &o)?;
            let got = be.read(&o)?;
            let secs = perf_only(be, perf, &o, || be.moe(&x, rows, &idx, &sc, k, &guw, &dnw, &o))?;
            let mut want = base;
            let round = be.matmul_activation_block(dt, d, rows * k);
            r::moe(&xv, rows, d, f, &idxv, &scv, k, &gus, &dns, &mut want, round);
            Ok(out(got, want, secs))
        }
        Spec::Sample(ref s) => crate::table_sample::run(be, s, rng, perf),
        Spec::MaskLogits { rows, vocab, allowed, then_sample } => {
            crate::table_sample::run_mask(be, rows, vocab, allowed, then_sample, rng, perf)
        }
        Spec::Embed { vocab, dim, n, dt } => {
            let tab = rng.vec(vocab * dim);
            let ids: Vec<u32> = (0..n).map(|_| rng.below(vocab as u32)).collect();
            let (w, seen) = weight(be, dt, &[vocab, dim], &tab)?;
            let ib = be.upload_u32(&ids)?;
            let o = be.alloc(n * dim)?;
            let secs = timed(be, perf, &o, || be.embed(&w, &ib, n, dim, &o))?;
            Ok(out(be.read(&o)?, rows_of(&seen, &ids, dim), secs))
        }
        Spec::GatherRows { rows, dim, ref picks } => {
            let xv = rng.vec(rows * dim);
            let (x, sb, o) = (be.upload(&xv)?, be.upload_u32(picks)?, be.alloc(picks.len() * dim)?);
            let secs = timed(be, perf, &o, || be.gather_rows(&x, &sb, picks.len(), dim, &o))?;
            Ok(out(be.read(&o)?, rows_of(&xv, picks, dim), secs))
        }
        Spec::LayerNorm { .. } | Spec::BiasAct { .. } => crate::table_vision::run(be, spec, rng, perf),
        Spec::Copy { src_len, src_off, dst_len, dst_off, len } => {
            let (sv, dv) = (rng.vec(src_len), rng.vec(dst_len));
            let (s, d) = (be.upload(&sv)?, be.upload(&dv)?);
            let secs = timed(be, perf, &d, || be.copy(&s, src_off, &d, dst_off, len))?;
            // The range lands; the rest of the destination is untouched.
            let mut want = dv;
            want[dst_off..dst_off + len].copy_from_slice(&sv[src_off..src_off + len]);
            Ok(out(be.read(&d)?, want, secs))
        }
        Spec::WriteU32 { n } => {
            // Ids below 2²⁴, exact as the f32 the comparison reads them as.
            let ids: Vec<u32> = (0..n).map(|_| rng.below(1 << 24)).collect();
            let b = be.upload_u32(&vec![7; n])?;
            be.write_u32(&b, &ids)?;
            let got = be.read_u32(&b)?.iter().map(|&i| i as f32).collect();
            // Timed reads wait on an f32 buffer (a read waits for all enqueued work).
            let sync = be.alloc(1)?;
            let secs = perf_only(be, perf, &sync, || be.write_u32(&b, &ids))?;
            Ok(out(got, ids.iter().map(|&i| i as f32).collect(), secs))
        }
    }
}

/// For ops that change their own inputs (in place, or accumulating): the result is read after one call, and
/// the timing repeats the call afterwards (the same cost on changed values).
pub(crate) fn perf_only<B: Backend>(
    be: &B,
    perf: bool,
    sync: &B::Buffer,
    f: impl FnMut() -> Result<()>,
) -> Result<Option<f64>> {
    if perf {
        timed(be, true, sync, f)
    } else {
        Ok(None)
    }
}

/// The rows `ids` of a [rows, dim] table.
fn rows_of(table: &[f32], ids: &[u32], dim: usize) -> Vec<f32> {
    ids.iter().flat_map(|&i| table[i as usize * dim..(i as usize + 1) * dim].to_vec()).collect()
}

/// A moe case's picks (entry row·k + choice): a spread over the experts; in the expert cache's case every third
/// pick (the first one too) names an expert past the end, which must add nothing.
pub(crate) fn moe_picks(rows: usize, k: usize, e: usize, written: bool) -> Vec<u32> {
    let mut idx: Vec<u32> = (0..rows * k).map(|i| ((i / k) as u32 * 7 + (i % k) as u32 * 3) % e as u32).collect();
    if written {
        for (i, v) in idx.iter_mut().enumerate().filter(|(i, _)| i % 3 == 0) {
            *v = (e + i % 2) as u32;
        }
    }
    idx
}

/// How many experts a moe case's picks name.
pub(crate) fn moe_used(rows: usize, k: usize, e: usize, written: bool) -> usize {
    let picks = moe_picks(rows, k, e, written);
    picks.iter().filter(|&&x| (x as usize) < e).collect::<std::collections::BTreeSet<_>>().len()
}
