//! The op table: every Backend op is a set of rows (shapes with odd sizes, weight formats, masks), each run
//! on a backend and compared with the plain f64 reference in [`crate::reference`] as normalised mean squared
//! error; NaN or Inf is always a failure. With `perf`, each row is also timed and reported as GB/s and
//! GFLOP/s, so speed and correctness share their cases. A new backend runs the same rows.

use herd_core::backend::{AttnParams, AttnSeq, Backend, Temperature};
use herd_core::quant::DType;
use herd_core::Result;

use crate::reference as r;
pub use crate::table_report::{dispatch_cost, format_table, nmse, RowResult};
pub(crate) use crate::table_report::{push_row, timed, Out};
use crate::table_sample::sample_rows;
pub(crate) use crate::weights::{weight, written_weight, Rng};

const DTYPES: [DType; 3] = [DType::F32, DType::BF16, DType::F16];

/// Runs every row of the table on `be`. `filter` keeps rows whose op name contains it.
pub fn run_table<B: Backend>(be: &B, perf: bool, filter: Option<&str>) -> Vec<RowResult> {
    let mut rows = Vec::new();
    let mut add =
        |op: &'static str, case: String, tol: f64, res: Result<Out>| push_row(&mut rows, filter, op, case, tol, res);
    let mut rng = Rng(0x9E3779B97F4A7C15);
    let want = |op: &str| filter.is_none_or(|f| op.contains(f));

    // matmul: x [m, k] · w [n, k]ᵀ
    if want("matmul") {
        let shapes = [
            (1, 64, 33),
            (3, 129, 67),
            (5, 128, 256),
            (8, 40, 72),
            (9, 17, 65),
            (37, 96, 130),
            (1, 5120, 8192),
            (128, 1024, 1024),
            (12, 2048, 16400),
        ];
        for &(m, k, n) in &shapes {
            for dt in DTYPES {
                // Large cases: f16 adds nothing over bf16; the largest (a prefill whose f32 weight is split
                // across bindings) runs in f32 only.
                let big = m * k * n > 1 << 24;
                if (big && dt == DType::F16) || (m * k * n > 1 << 28 && dt != DType::F32) {
                    continue;
                }
                let xv = rng.vec(m * k);
                let wv = rng.vec(n * k);
                let res = (|| {
                    let (w, seen) = weight(be, dt, &[n, k], &wv)?;
                    let x = be.upload(&xv)?;
                    let o = be.alloc(m * n)?;
                    let secs = timed(be, perf, &o, || be.matmul(&x, m, &w, &o))?;
                    Ok(Out {
                        got: be.read(&o)?,
                        want: r::matmul(&xv, m, k, &seen, n),
                        secs,
                        bytes: (n * k * dt.size() + 4 * (m * k + m * n)) as f64,
                        flops: (2 * m * k * n) as f64,
                    })
                })();
                add("matmul", format!("m={m} k={k} n={n} {}", dt.name()), 1e-9, res);
            }
        }
    }

    // swiglu: silu(x · gateᵀ) ⊙ (x · upᵀ)
    if want("swiglu") {
        for &(m, k, f) in &[(1, 64, 48), (3, 130, 40), (8, 256, 96), (5, 40, 17), (12, 128, 64), (1, 5120, 8192)] {
            for dt in DTYPES {
                if m * k * f > 1 << 24 && dt != DType::BF16 {
                    continue;
                }
                let xv = rng.vec(m * k);
                let (gv, uv) = (rng.vec(f * k), rng.vec(f * k));
                let res = (|| {
                    let (g, gs) = weight(be, dt, &[f, k], &gv)?;
                    let (u, us) = weight(be, dt, &[f, k], &uv)?;
                    let x = be.upload(&xv)?;
                    let (o, sc) = (be.alloc(m * f)?, be.alloc(m * f)?);
                    let secs = timed(be, perf, &o, || be.swiglu(&x, m, &g, &u, f, &o, &sc))?;
                    let want = r::silu_mul(&r::matmul(&xv, m, k, &gs, f), &r::matmul(&xv, m, k, &us, f));
                    Ok(Out {
                        got: be.read(&o)?,
                        want,
                        secs,
                        bytes: (2 * f * k * dt.size() + 4 * (m * k + m * f)) as f64,
                        flops: (4 * m * k * f) as f64,
                    })
                })();
                add("swiglu", format!("m={m} k={k} f={f} {}", dt.name()), 1e-9, res);
            }
        }
    }

    if want("rms_norm") {
        for &(rows_, dim, wdt, inplace) in &[
            (1, 64, Some(DType::F32), false),
            (7, 130, Some(DType::BF16), false),
            (33, 5120, Some(DType::BF16), false),
            (12, 16, None, true),
            (5, 128, None, false),
        ] {
            let xv = rng.vec(rows_ * dim);
            let wv = rng.vec(dim);
            let res = (|| {
                let w = match wdt {
                    Some(dt) => Some(weight(be, dt, &[dim], &wv)?),
                    None => None,
                };
                let wref = w.as_ref().map(|w| &w.0);
                let want = r::rms_norm(&xv, w.as_ref().map(|w| w.1.as_slice()), rows_, dim, 1e-5);
                let (got, secs) = if inplace {
                    let o = be.upload(&xv)?;
                    be.rms_norm(&o, wref, rows_, dim, 1e-5, &o)?;
                    let got = be.read(&o)?;
                    // Timing repeats on a separate buffer (re-normalising in place changes nothing of cost).
                    let t = be.upload(&xv)?;
                    (
                        got,
                        timed(be, perf, &t, || be.rms_norm(&t, wref, rows_, dim, 1e-5, &t))
                            .map(|s| s.filter(|_| perf))?,
                    )
                } else {
                    let x = be.upload(&xv)?;
                    let o = be.alloc(rows_ * dim)?;
                    let secs = timed(be, perf, &o, || be.rms_norm(&x, wref, rows_, dim, 1e-5, &o))?;
                    (be.read(&o)?, secs)
                };
                Ok(Out { got, want, secs, bytes: (8 * rows_ * dim) as f64, flops: (4 * rows_ * dim) as f64 })
            })();
            add(
                "rms_norm",
                format!(
                    "rows={rows_} dim={dim} weight={} {}",
                    wdt.map_or("none", |d| d.name()),
                    if inplace { "in place" } else { "" }
                ),
                1e-10,
                res,
            );
        }
    }

    if want("add_rms_norm") {
        for &(rows_, dim, wdt) in
            &[(1, 64, DType::F32), (7, 130, DType::BF16), (33, 5120, DType::BF16), (3, 257, DType::F16)]
        {
            let av = rng.vec(rows_ * dim);
            let xv = rng.vec(rows_ * dim);
            let wv = rng.vec(dim);
            let res = (|| {
                let (w, seen) = weight(be, wdt, &[dim], &wv)?;
                let sum: Vec<f32> = av.iter().zip(&xv).map(|(a, x)| a + x).collect();
                // Both outputs are checked: the normed rows, then the accumulator holding the sum.
                let mut want = r::rms_norm(&sum, Some(&seen), rows_, dim, 1e-5);
                want.extend(&sum);
                let (acc, x, o) = (be.upload(&av)?, be.upload(&xv)?, be.alloc(rows_ * dim)?);
                be.add_rms_norm(&acc, &x, &w, rows_, dim, 1e-5, &o)?;
                let mut got = be.read(&o)?;
                got.extend(be.read(&acc)?);
                let secs = timed(be, perf, &o, || be.add_rms_norm(&acc, &x, &w, rows_, dim, 1e-5, &o))?;
                Ok(Out { got, want, secs, bytes: (16 * rows_ * dim) as f64, flops: (5 * rows_ * dim) as f64 })
            })();
            add("add_rms_norm", format!("rows={rows_} dim={dim} {}", wdt.name()), 1e-10, res);
        }
    }

    if want("rope") {
        for &(rows_, heads, d, norm) in
            &[(5, 3, 16, None), (9, 8, 128, None), (1, 40, 128, None), (7, 5, 16, Some(1e-5)), (3, 40, 128, Some(1e-6))]
        {
            let xv = rng.vec(rows_ * heads * d);
            let pos: Vec<u32> = (0..rows_).map(|_| rng.below(20000)).collect();
            let inv: Vec<f32> = (0..d / 2).map(|j| 1.0 / 500000f32.powf(2.0 * j as f32 / d as f32)).collect();
            let res = (|| {
                let x = be.upload(&xv)?;
                let p = be.upload_u32(&pos)?;
                let f = be.upload(&inv)?;
                be.rope(&x, rows_, heads, d, &p, &f, norm)?;
                let got = be.read(&x)?;
                let secs = if perf {
                    let y = be.upload(&xv)?;
                    timed(be, true, &y, || be.rope(&y, rows_, heads, d, &p, &f, norm))?
                } else {
                    None
                };
                let rotated = r::rope(&xv, rows_, heads, d, &pos, &inv);
                let want = match norm {
                    Some(eps) => r::rms_norm(&rotated, None, rows_ * heads, d, eps),
                    None => rotated,
                };
                Ok(Out {
                    got,
                    want,
                    secs,
                    bytes: (8 * rows_ * heads * d) as f64,
                    flops: (6 * rows_ * heads * d) as f64,
                })
            })();
            // Angles up to 2·10⁴ rad: f32 sin/cos implementations differ by a few ulps of the angle.
            let what = if norm.is_some() { " + qk norm" } else { "" };
            add("rope", format!("rows={rows_} heads={heads} d={d}{what}"), 1e-9, res);
        }
    }

    if want("attention") || want("kv_store") {
        // (heads, kv heads, d, chunk, temperature, [(cached, new, region cap)]); then bidirectional ones.
        type Case = (usize, usize, usize, Option<usize>, bool, Vec<(usize, usize, usize)>);
        let causal: Vec<Case> = vec![
            (4, 2, 8, None, false, vec![(0, 13, 13)]),
            (4, 2, 8, Some(4), false, vec![(5, 3, 8), (11, 1, 12)]),
            (6, 2, 16, None, true, vec![(20, 2, 24), (0, 5, 5), (7, 1, 8)]),
            (4, 1, 8, Some(8), false, vec![(23, 4, 8), (40, 1, 8)]),
            (4, 4, 8, Some(5), true, vec![(3, 12, 5)]),
            (40, 8, 128, Some(8192), false, vec![(511, 1, 512)]),
            (40, 8, 128, None, true, vec![(0, 64, 64)]),
            // More query heads per kv head than the grouped decode kernel takes.
            (18, 1, 8, None, false, vec![(30, 2, 32)]),
            // head_dim above the tiled kernel's 128, many new rows.
            (4, 2, 160, Some(16), true, vec![(10, 20, 32)]),
            // Long decode: several splits, and a shorter sequence whose later splits are empty.
            (8, 2, 64, None, true, vec![(1500, 1, 1501), (300, 3, 303)]),
            // Prefill tiles that cross a chunk boundary after a cached prefix, beside a decode row.
            (4, 2, 32, Some(16), false, vec![(10, 40, 16), (5, 1, 16)]),
        ];
        // Bidirectional (the vision encoder: tiles of patches, no cache): a batch of tiles, a short one
        // (decode-sized, which must not take the causal decode kernels), one over a cached prefix, and one
        // tile of the real tower (577 tokens, 88-dim heads, 4 of its 16 heads).
        let bidir: Vec<Case> = vec![
            (4, 4, 16, None, false, vec![(0, 37, 1), (0, 37, 1), (0, 37, 1)]),
            (2, 2, 8, None, false, vec![(0, 2, 1), (0, 1, 1)]),
            (4, 2, 16, None, false, vec![(5, 20, 8)]),
            (4, 4, 88, None, false, vec![(0, 577, 1)]),
        ];
        let cases = causal.into_iter().map(|c| (c, false)).chain(bidir.into_iter().map(|c| (c, true)));
        for ((h, kvh, d, chunk, temp, seqs_spec), bidirectional) in cases {
            let kvrow = kvh * d;
            let mut seqs = Vec::new();
            let (mut row, mut base) = (0usize, 0usize);
            let mut hist_k = Vec::new();
            let mut hist_v = Vec::new();
            for &(cached, new, cap) in &seqs_spec {
                seqs.push(AttnSeq {
                    q_start: row as u32,
                    q_len: new as u32,
                    pos0: cached as u32,
                    slot_base: base as u32,
                    slot_cap: cap as u32,
                });
                hist_k.push(rng.vec((cached + new) * kvrow));
                hist_v.push(rng.vec((cached + new) * kvrow));
                row += new;
                base += cap;
            }
            let (rows_, slots) = (row, base);
            let qv = rng.vec(rows_ * h * d);
            let (mut kn, mut vn) = (vec![0f32; rows_ * kvrow], vec![0f32; rows_ * kvrow]);
            let (mut kc, mut vc) = (rng.vec(slots * kvrow), rng.vec(slots * kvrow)); // stale slots hold noise
            for (s, (hk, hv)) in seqs.iter().zip(hist_k.iter().zip(&hist_v)) {
                let (p0, n, b, cap) = (s.pos0 as usize, s.q_len as usize, s.slot_base as usize, s.slot_cap as usize);
                for p in p0.saturating_sub(cap)..p0 {
                    let sl = b + p % cap;
                    kc[sl * kvrow..(sl + 1) * kvrow].copy_from_slice(&hk[p * kvrow..(p + 1) * kvrow]);
                    vc[sl * kvrow..(sl + 1) * kvrow].copy_from_slice(&hv[p * kvrow..(p + 1) * kvrow]);
                }
                let q0 = s.q_start as usize;
                kn[q0 * kvrow..(q0 + n) * kvrow].copy_from_slice(&hk[p0 * kvrow..(p0 + n) * kvrow]);
                vn[q0 * kvrow..(q0 + n) * kvrow].copy_from_slice(&hv[p0 * kvrow..(p0 + n) * kvrow]);
            }
            let p = AttnParams {
                n_heads: h,
                n_kv_heads: kvh,
                head_dim: d,
                scale: (d as f32).powf(-0.5),
                chunk,
                bidirectional,
                temperature: temp.then_some(Temperature { floor_scale: 4.0, attn_scale: 0.1 }),
            };
            let mask = if bidirectional { "bidirectional".to_string() } else { format!("chunk={chunk:?}") };
            let desc = format!("h={h} kvh={kvh} d={d} {mask} temp={temp} seqs={seqs_spec:?}");
            let res = (|| {
                let (q, k, v, kcb, vcb) =
                    (be.upload(&qv)?, be.upload(&kn)?, be.upload(&vn)?, be.upload(&kc)?, be.upload(&vc)?);
                let o = be.alloc(rows_ * h * d)?;
                let secs = timed(be, perf, &o, || be.attention(&q, &k, &v, &kcb, &vcb, &seqs, &p, &o))?;
                let keys: usize = seqs.iter().map(|s| (s.pos0 + s.q_len) as usize).sum();
                // Keys each query sees (causal, and inside its chunk): the work is 4·d flops per (query head, key).
                let visible: usize = seqs
                    .iter()
                    .flat_map(|s| (0..s.q_len as usize).map(move |t| (s, s.pos0 as usize + t)))
                    .map(|(s, i)| match bidirectional {
                        true => (s.pos0 + s.q_len) as usize,
                        false => i - chunk.map_or(0, |c| i / c * c) + 1,
                    })
                    .sum();
                Ok(Out {
                    got: be.read(&o)?,
                    want: r::attention(&qv, &hist_k, &hist_v, &seqs, &p),
                    secs,
                    bytes: (4 * (2 * rows_ * h * d + 2 * keys * kvrow)) as f64,
                    flops: (4 * visible * h * d) as f64,
                })
            })();
            if want("attention") {
                add("attention", desc.clone(), 1e-10, res);
            }
            // kv_store: the new rows land in their ring slots, the rest of the cache is untouched; keys and
            // values both (compared as one vector, keys first).
            let (mut expect_k, mut expect_v) = (kc.clone(), vc.clone());
            for s in &seqs {
                for t in 0..s.q_len as usize {
                    let sl = s.slot_base as usize + (s.pos0 as usize + t) % s.slot_cap as usize;
                    let rr = s.q_start as usize + t;
                    expect_k[sl * kvrow..(sl + 1) * kvrow].copy_from_slice(&kn[rr * kvrow..(rr + 1) * kvrow]);
                    expect_v[sl * kvrow..(sl + 1) * kvrow].copy_from_slice(&vn[rr * kvrow..(rr + 1) * kvrow]);
                }
            }
            expect_k.extend(expect_v);
            let res = (|| {
                let (k, v, kcb, vcb) = (be.upload(&kn)?, be.upload(&vn)?, be.upload(&kc)?, be.upload(&vc)?);
                let secs = timed(be, perf, &kcb, || be.kv_store(&k, &v, &kcb, &vcb, &seqs, kvrow))?;
                let mut got = be.read(&kcb)?;
                got.extend(be.read(&vcb)?);
                Ok(Out { got, want: expect_k, secs, bytes: (16 * rows_ * kvrow) as f64, flops: 0.0 })
            })();
            if want("kv_store") {
                add("kv_store", desc, 0.0, res);
            }
        }
    }

    for n in [1usize, 1000, 4099, 1 << 20] {
        let a = rng.vec(n);
        let b = rng.vec(n);
        if want("add") {
            let res = (|| {
                let (x, y) = (be.upload(&a)?, be.upload(&b)?);
                be.add(&x, &y, n)?;
                let got = be.read(&x)?;
                let secs = timed(be, perf, &x, || be.add(&x, &y, n))?;
                Ok(Out {
                    got,
                    want: a.iter().zip(&b).map(|(p, q)| p + q).collect(),
                    secs,
                    bytes: (12 * n) as f64,
                    flops: n as f64,
                })
            })();
            add("add", format!("n={n}"), 1e-12, res);
        }
        if want("silu_mul") {
            let res = (|| {
                let (g, u) = (be.upload(&a)?, be.upload(&b)?);
                be.silu_mul(&g, &u, n)?;
                let got = be.read(&g)?;
                let secs = if perf {
                    let g2 = be.upload(&a)?;
                    timed(be, true, &g2, || be.silu_mul(&g2, &u, n))?
                } else {
                    None
                };
                Ok(Out { got, want: r::silu_mul(&a, &b), secs, bytes: (12 * n) as f64, flops: (5 * n) as f64 })
            })();
            add("silu_mul", format!("n={n}"), 1e-10, res);
        }
    }

    if want("router_topk") {
        for &(rows_, e, k) in &[(7, 5, 1), (9, 16, 1), (6, 8, 2), (3, 128, 1), (64, 16, 1)] {
            let l = rng.vec(rows_ * e);
            let res = (|| {
                let lb = be.upload(&l)?;
                let idx = be.upload_u32(&vec![0; rows_ * k])?;
                let sc = be.alloc(rows_ * k)?;
                let secs = timed(be, perf, &sc, || be.router_topk(&lb, rows_, e, k, &idx, &sc))?;
                let (wi, ws) = r::router_topk(&l, rows_, e, k);
                // Indices must match exactly: compare them as numbers alongside the scores.
                let mut got: Vec<f32> = be.read_u32(&idx)?.iter().map(|&i| i as f32).collect();
                got.extend(be.read(&sc)?);
                let mut want: Vec<f32> = wi.iter().map(|&i| i as f32).collect();
                want.extend(ws);
                Ok(Out { got, want, secs, bytes: (4 * rows_ * (e + 2 * k)) as f64, flops: (rows_ * e) as f64 })
            })();
            add("router_topk", format!("rows={rows_} experts={e} k={k}"), 1e-12, res);
        }
    }

    if want("moe") {
        for &(rows_, d, f, e, k, dt, skip) in &[
            (1, 24, 10, 4, 1, DType::F32, false),
            (6, 24, 10, 4, 2, DType::BF16, false),
            (9, 33, 17, 5, 1, DType::F32, false),
            (9, 32, 16, 4, 2, DType::F16, false),
            (1, 1024, 1024, 16, 1, DType::BF16, false),
            (64, 512, 512, 16, 1, DType::F32, false),
            // Several tiles of 8 per expert.
            (40, 64, 32, 4, 2, DType::BF16, false),
            // Batches with dimensions that are not multiples of the tile sizes (CUDA's tensor-core and
            // CUDA-core expert tiles: partial column tiles, partial K steps, many tiles per expert).
            (50, 72, 40, 8, 2, DType::BF16, false),
            (37, 40, 24, 3, 1, DType::F16, false),
            // An expert tensor over 128 MiB: split across bindings by whole experts.
            (2, 1024, 2080, 16, 2, DType::BF16, false),
            // The expert cache's case: weights written row by row (alloc_weight, write_weight_row), and
            // picks of an expert >= E, which add nothing: decode, the per-entry path, the grouped/tiled paths.
            (1, 24, 10, 4, 1, DType::F32, true),
            (9, 32, 16, 4, 2, DType::F16, true),
            (40, 64, 32, 4, 2, DType::BF16, true),
            (50, 72, 40, 8, 2, DType::BF16, true),
            (2, 1024, 2080, 16, 2, DType::BF16, true),
        ] {
            let xv = rng.vec(rows_ * d);
            let gu = rng.vec(e * d * 2 * f);
            let dn = rng.vec(e * f * d);
            let mut idxv: Vec<u32> =
                (0..rows_ * k).map(|i| ((i / k) as u32 * 7 + (i % k) as u32 * 3) % e as u32).collect();
            if skip {
                // Every third pick (the first one too) names an expert past the end.
                for (i, v) in idxv.iter_mut().enumerate().filter(|(i, _)| i % 3 == 0) {
                    *v = (e + i % 2) as u32;
                }
            }
            let scv: Vec<f32> = rng.vec(rows_ * k).iter().map(|v| 0.5 + 0.5 * v).collect();
            let base = rng.vec(rows_ * d);
            let res = (|| {
                let make = if skip { written_weight::<B> } else { weight::<B> };
                let (guw, gus) = make(be, dt, &[e, d, 2 * f], &gu)?;
                let (dnw, dns) = make(be, dt, &[e, f, d], &dn)?;
                let x = be.upload(&xv)?;
                let idx = be.upload_u32(&idxv)?;
                let sc = be.upload(&scv)?;
                let o = be.upload(&base)?;
                be.moe(&x, rows_, &idx, &sc, k, &guw, &dnw, &o)?;
                let got = be.read(&o)?;
                let secs = if perf {
                    let o2 = be.upload(&base)?;
                    timed(be, true, &o2, || be.moe(&x, rows_, &idx, &sc, k, &guw, &dnw, &o2))?
                } else {
                    None
                };
                let mut want = base.clone();
                r::moe(&xv, rows_, d, f, &idxv, &scv, k, &gus, &dns, &mut want);
                let used = idxv.iter().filter(|&&x| (x as usize) < e).collect::<std::collections::BTreeSet<_>>().len();
                Ok(Out {
                    got,
                    want,
                    secs,
                    bytes: (used * 3 * d * f * dt.size()) as f64,
                    flops: (rows_ * k * 6 * d * f) as f64,
                })
            })();
            let sk = if skip { " skipped-picks written-rows" } else { "" };
            add("moe", format!("rows={rows_} d={d} f={f} experts={e} k={k} {}{sk}", dt.name()), 1e-9, res);
        }
    }

    if want("sample") {
        sample_rows(be, perf, &mut rng, &mut add);
    }

    if want("embed") || want("gather_rows") {
        for dt in [DType::F32, DType::BF16] {
            let (v, dim, n) = (50, 24, 7);
            let tab = rng.vec(v * dim);
            let ids: Vec<u32> = (0..n).map(|_| rng.below(v as u32)).collect();
            let res = (|| {
                let (w, seen) = weight(be, dt, &[v, dim], &tab)?;
                let ib = be.upload_u32(&ids)?;
                let o = be.alloc(n * dim)?;
                let secs = timed(be, perf, &o, || be.embed(&w, &ib, n, dim, &o))?;
                let want: Vec<f32> =
                    ids.iter().flat_map(|&i| seen[i as usize * dim..(i as usize + 1) * dim].to_vec()).collect();
                Ok(Out { got: be.read(&o)?, want, secs, bytes: (n * dim * (4 + dt.size())) as f64, flops: 0.0 })
            })();
            if want("embed") {
                add("embed", format!("vocab={v} dim={dim} n={n} {}", dt.name()), 0.0, res);
            }
        }
        let (rows_, dim) = (11, 37);
        let xv = rng.vec(rows_ * dim);
        let sel = [10u32, 0, 4, 4];
        let res = (|| {
            let x = be.upload(&xv)?;
            let sb = be.upload_u32(&sel)?;
            let o = be.alloc(sel.len() * dim)?;
            let secs = timed(be, perf, &o, || be.gather_rows(&x, &sb, sel.len(), dim, &o))?;
            let want: Vec<f32> =
                sel.iter().flat_map(|&i| xv[i as usize * dim..(i as usize + 1) * dim].to_vec()).collect();
            Ok(Out { got: be.read(&o)?, want, secs, bytes: (8 * sel.len() * dim) as f64, flops: 0.0 })
        })();
        if want("gather_rows") {
            add("gather_rows", format!("rows={rows_} dim={dim} picks={sel:?}"), 0.0, res);
        }
    }
    crate::table_vision::rows(be, perf, filter, &mut rows, &mut rng);
    rows
}
