//! Plain f64 reference implementations of every Backend op, written straight from the spec with no
//! attention to speed: the independent side of the op table.

use herd_core::backend::{AttnParams, AttnSeq};

pub fn matmul(x: &[f32], m: usize, k: usize, w: &[f32], n: usize) -> Vec<f32> {
    let mut o = vec![0f32; m * n];
    for r in 0..m {
        for j in 0..n {
            o[r * n + j] = (0..k).map(|i| x[r * k + i] as f64 * w[j * k + i] as f64).sum::<f64>() as f32;
        }
    }
    o
}

/// `x` (rows of k) as a backend that rounds a matmul's activations to 8-bit integers per `block` sees it:
/// per block, d = max|x| / 127 and x → round(x · (1/d)) · d (ties to even, computed in f32; 0 for a block of
/// zeros).
pub fn round_activations(x: &[f32], block: usize) -> Vec<f32> {
    let mut o = Vec::with_capacity(x.len());
    for b in x.chunks(block) {
        let d = b.iter().map(|v| v.abs()).fold(0f32, f32::max) / 127.0;
        let inv = if d == 0.0 { 0.0 } else { 1.0 / d };
        o.extend(b.iter().map(|&v| (v * inv).round_ties_even().clamp(-127.0, 127.0) * d));
    }
    o
}

pub fn rms_norm(x: &[f32], w: Option<&[f32]>, rows: usize, dim: usize, eps: f32) -> Vec<f32> {
    let mut o = vec![0f32; rows * dim];
    for r in 0..rows {
        let row = &x[r * dim..(r + 1) * dim];
        let ms = row.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / dim as f64;
        let s = 1.0 / (ms + eps as f64).sqrt();
        for i in 0..dim {
            o[r * dim + i] = (row[i] as f64 * s * w.map_or(1.0, |w| w[i] as f64)) as f32;
        }
    }
    o
}

#[allow(clippy::needless_range_loop)]
pub fn rope(x: &[f32], rows: usize, heads: usize, d: usize, pos: &[u32], inv_freq: &[f32]) -> Vec<f32> {
    let mut o = x.to_vec();
    for r in 0..rows {
        for h in 0..heads {
            for j in 0..d / 2 {
                let a = (pos[r] as f32 * inv_freq[j]) as f64; // the angle is formed in f32, as transformers does
                let i = (r * heads + h) * d + 2 * j;
                let (x0, x1) = (x[i] as f64, x[i + 1] as f64);
                o[i] = (x0 * a.cos() - x1 * a.sin()) as f32;
                o[i + 1] = (x0 * a.sin() + x1 * a.cos()) as f32;
            }
        }
    }
    o
}

/// Attention with the sequence's full history given explicitly: `hist_k[s]`/`hist_v[s]` hold rows
/// [pos0 + q_len, kvh·d] for positions 0..pos0+q_len of sequence s (cached ones, then the new ones).
pub fn attention(q: &[f32], hist_k: &[Vec<f32>], hist_v: &[Vec<f32>], seqs: &[AttnSeq], p: &AttnParams) -> Vec<f32> {
    let (h, kvh, d) = (p.n_heads, p.n_kv_heads, p.head_dim);
    let rows = seqs.iter().map(|s| (s.q_start + s.q_len) as usize).max().unwrap_or(0);
    let mut o = vec![0f32; rows * h * d];
    for (si, s) in seqs.iter().enumerate() {
        for t in 0..s.q_len as usize {
            let r = s.q_start as usize + t;
            let i = s.pos0 as usize + t;
            let (lo, last) = if p.bidirectional {
                (0, s.pos0 as usize + s.q_len as usize - 1)
            } else {
                (p.chunk.map_or(0, |c| i / c * c), i)
            };
            let temp = p.temperature.map_or(1.0, |tt| {
                1.0 + tt.attn_scale as f64 * (1.0 + ((i as f64 + 1.0) / tt.floor_scale as f64).floor()).ln()
            });
            for head in 0..h {
                let g = head / (h / kvh);
                let qv = &q[(r * h + head) * d..(r * h + head + 1) * d];
                let scores: Vec<f64> = (lo..=last)
                    .map(|j| {
                        let kv = &hist_k[si][(j * kvh + g) * d..(j * kvh + g + 1) * d];
                        qv.iter().zip(kv).map(|(a, b)| *a as f64 * temp * *b as f64).sum::<f64>() * p.scale as f64
                    })
                    .collect();
                let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
                let z: f64 = e.iter().sum();
                for c in 0..d {
                    let v: f64 =
                        (lo..=last).zip(&e).map(|(j, w)| w / z * hist_v[si][(j * kvh + g) * d + c] as f64).sum();
                    o[(r * h + head) * d + c] = v as f32;
                }
            }
        }
    }
    o
}

fn silu(x: f64) -> f64 {
    x / (1.0 + (-x).exp())
}

pub fn silu_mul(g: &[f32], u: &[f32]) -> Vec<f32> {
    g.iter().zip(u).map(|(&a, &b)| (silu(a as f64) * b as f64) as f32).collect()
}

/// Top-k by logit (ties: lower index first) and sigmoid scores.
pub fn router_topk(l: &[f32], rows: usize, e: usize, k: usize) -> (Vec<u32>, Vec<f32>) {
    let mut idx = Vec::new();
    let mut sc = Vec::new();
    for r in 0..rows {
        let row = &l[r * e..(r + 1) * e];
        let mut used = vec![false; e];
        for _ in 0..k {
            let mut best = usize::MAX;
            for j in 0..e {
                if !used[j] && (best == usize::MAX || row[j] > row[best]) {
                    best = j;
                }
            }
            used[best] = true;
            idx.push(best as u32);
            sc.push((1.0 / (1.0 + (-(row[best] as f64)).exp())) as f32);
        }
    }
    (idx, sc)
}

/// Routed experts accumulated onto `out`: gate_up [E, D, 2F], down [E, F, D], x·W orientation; a pick of an
/// expert ≥ E adds nothing.
#[allow(clippy::too_many_arguments)]
pub fn moe(
    x: &[f32],
    rows: usize,
    d: usize,
    f: usize,
    idx: &[u32],
    score: &[f32],
    k: usize,
    gate_up: &[f32],
    down: &[f32],
    out: &mut [f32],
    round: Option<usize>,
) {
    let experts = gate_up.len() / (d * 2 * f).max(1);
    // A backend that rounds the experts' activations to 8 bits per block (`round`) rounds the expert input
    // score · x (computed in f32) and the gate·up product (rounded to f32 first).
    let rounded = |v: Vec<f64>| -> Vec<f64> {
        match round {
            Some(b) => round_activations(&v.iter().map(|&x| x as f32).collect::<Vec<_>>(), b)
                .into_iter()
                .map(f64::from)
                .collect(),
            None => v,
        }
    };
    for r in 0..rows {
        for c in 0..k {
            let e = idx[r * k + c] as usize;
            if e >= experts {
                continue; // a skipped pick
            }
            let s = score[r * k + c] as f64;
            let u: Vec<f64> = match round {
                Some(_) => rounded(x[r * d..(r + 1) * d].iter().map(|&v| (v * score[r * k + c]) as f64).collect()),
                None => x[r * d..(r + 1) * d].iter().map(|&v| v as f64 * s).collect(),
            };
            let gu = &gate_up[e * d * 2 * f..(e + 1) * d * 2 * f];
            let hmid: Vec<f64> = (0..f)
                .map(|j| {
                    let g: f64 = (0..d).map(|i| u[i] * gu[i * 2 * f + j] as f64).sum();
                    let up: f64 = (0..d).map(|i| u[i] * gu[i * 2 * f + f + j] as f64).sum();
                    silu(g) * up
                })
                .collect();
            let hmid = rounded(hmid);
            let dn = &down[e * f * d..(e + 1) * f * d];
            for o in 0..d {
                let y: f64 = (0..f).map(|j| hmid[j] * dn[j * d + o] as f64).sum();
                out[r * d + o] = (out[r * d + o] as f64 + y) as f32;
            }
        }
    }
}

/// Token sampling written from its definition (herd_core::sampling::pick) with a full sort and f64 masses.
/// Returns the id and the margin: the smallest distance, relative to the mass involved, between a
/// cumulative mass and the top-p target or the draw's goal. A row whose margin is below the f32 rounding
/// of a backend's sums could legitimately pick differently, so the table only uses rows with a clear margin.
pub fn sample(row: &[f32], history: &[u32], p: &herd_core::sampling::SamplingParams, u: f32) -> (u32, f64) {
    let mut l: Vec<f32> = row.iter().map(|&x| if x.is_nan() { f32::NEG_INFINITY } else { x.min(f32::MAX) }).collect();
    if p.repetition_penalty != 1.0 {
        let mut ids: Vec<u32> = history.iter().copied().filter(|&i| (i as usize) < l.len()).collect();
        ids.sort_unstable();
        ids.dedup();
        for i in ids {
            let x = l[i as usize];
            l[i as usize] = if x < 0.0 { x * p.repetition_penalty } else { x / p.repetition_penalty };
        }
    }
    // Argmax, lowest index on ties.
    let best = (0..l.len()).fold(0, |b, i| if l[i] > l[b] { i } else { b });
    if p.is_greedy() || l[best] == f32::NEG_INFINITY {
        return (best as u32, f64::INFINITY);
    }
    let mx = l[best];
    let lp: Vec<f32> = l.iter().map(|&x| (x - mx) / p.temperature).collect();
    let mut order: Vec<usize> = (0..l.len()).filter(|&i| lp[i] > f32::NEG_INFINITY).collect();
    order.sort_by(|&a, &b| lp[b].total_cmp(&lp[a]).then(a.cmp(&b)));
    let mut keep = vec![false; l.len()];
    let mut set: Vec<usize> = order.clone();
    if p.top_k > 0 && p.top_k < set.len() {
        let th = lp[set[p.top_k - 1]];
        set.retain(|&i| lp[i] >= th);
    }
    let mut margin = f64::INFINITY;
    if p.top_p < 1.0 && set.len() > 1 {
        let total: f64 = set.iter().map(|&i| (lp[i] as f64).exp()).sum();
        let target = p.top_p as f64 * total;
        let mut cum = 0.0;
        let mut cut = set.len();
        for (j, &i) in set.iter().enumerate() {
            cum += (lp[i] as f64).exp();
            margin = margin.min((cum - target).abs() / total);
            if cum >= target && cut == set.len() {
                cut = j + 1;
            }
        }
        set.truncate(cut);
    }
    if p.min_p > 0.0 && set.len() > 1 {
        let th = (p.min_p as f64).ln() as f32;
        set.retain(|&i| lp[i] >= th);
    }
    for &i in &set {
        keep[i] = true;
    }
    let total: f64 = (0..l.len()).filter(|&i| keep[i]).map(|i| (lp[i] as f64).exp()).sum();
    let goal = u as f64 * total;
    let mut cum = 0.0;
    let mut pick = None;
    for i in (0..l.len()).filter(|&i| keep[i]) {
        cum += (lp[i] as f64).exp();
        margin = margin.min((cum - goal).abs() / total);
        if cum > goal && pick.is_none() {
            pick = Some(i);
        }
    }
    (pick.unwrap_or(best) as u32, margin)
}

/// nn.LayerNorm per row (biased variance), then `· w + b`.
pub fn layer_norm(x: &[f32], w: &[f32], b: &[f32], rows: usize, dim: usize, eps: f32) -> Vec<f32> {
    let mut o = vec![0f32; rows * dim];
    for r in 0..rows {
        let row = &x[r * dim..(r + 1) * dim];
        let mean = row.iter().map(|&v| v as f64).sum::<f64>() / dim as f64;
        let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / dim as f64;
        let s = 1.0 / (var + eps as f64).sqrt();
        for i in 0..dim {
            o[r * dim + i] = ((row[i] as f64 - mean) * s * w[i] as f64 + b[i] as f64) as f32;
        }
    }
    o
}

/// The exact (erf) GELU of nn.GELU().
pub fn gelu(x: f64) -> f64 {
    0.5 * x * (1.0 + libm::erf(x / std::f64::consts::SQRT_2))
}

/// The KV formats of `herd_core::kv_format`, written again from their documented layouts: one slot of
/// `[kv_heads, head_dim]` values to its words, and back. The E4M3 rounding is an exhaustive nearest search
/// here (ties to the even code), not the bit arithmetic of the code under test.
pub mod kv {
    use half::{bf16, f16};
    use herd_core::kv_format::KvDtype;

    fn e4m3(b: u8) -> f64 {
        let s = if b & 0x80 != 0 { -1.0 } else { 1.0 };
        let (e, m) = (((b >> 3) & 0xf) as i32, (b & 7) as f64);
        s * if e == 0 { m / 8.0 / 64.0 } else { (1.0 + m / 8.0) * 2f64.powi(e - 7) }
    }

    fn to_e4m3(x: f64) -> u8 {
        let sign = if x < 0.0 { 0x80 } else { 0 };
        let mut best = (0u8, f64::INFINITY);
        for code in 0u8..=0x7e {
            let err = (e4m3(code) - x.abs()).abs();
            if err < best.1 || (err == best.1 && code % 2 == 0) {
                best = (code, err);
            }
        }
        sign | best.0
    }

    pub fn encode(dtype: KvDtype, x: &[f32], kvh: usize, hd: usize) -> Vec<u32> {
        let n = kvh * hd;
        match dtype {
            KvDtype::F32 => x.iter().map(|v| v.to_bits()).collect(),
            KvDtype::Bf16 => (0..n / 2)
                .map(|i| {
                    bf16::from_f32(x[2 * i]).to_bits() as u32 | (bf16::from_f32(x[2 * i + 1]).to_bits() as u32) << 16
                })
                .collect(),
            KvDtype::F16 => (0..n / 2)
                .map(|i| {
                    f16::from_f32(x[2 * i]).to_bits() as u32 | (f16::from_f32(x[2 * i + 1]).to_bits() as u32) << 16
                })
                .collect(),
            KvDtype::Q8 | KvDtype::Fp8 => {
                let top = if dtype == KvDtype::Q8 { 127.0 } else { 448.0 };
                let mut bytes = vec![0u8; n];
                let mut scales = Vec::with_capacity(kvh);
                for h in 0..kvh {
                    let xs = &x[h * hd..(h + 1) * hd];
                    let s = xs.iter().fold(0f32, |m, v| m.max(v.abs())) / top as f32;
                    scales.push(s.to_bits());
                    for (i, &v) in xs.iter().enumerate() {
                        let q = if s > 0.0 { v / s } else { 0.0 } as f64;
                        bytes[h * hd + i] = match dtype {
                            KvDtype::Q8 => (q.round_ties_even().clamp(-127.0, 127.0) as i8) as u8,
                            _ => to_e4m3(q.clamp(-448.0, 448.0)),
                        };
                    }
                }
                bytes.chunks_exact(4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])).chain(scales).collect()
            }
            KvDtype::Q4 => {
                // Values: groups of min(32, hd) channels of the slot.
                let g = 32.min(hd);
                let groups: Vec<Vec<f32>> = x[..n].chunks(g).map(|c| c.to_vec()).collect();
                let (codes, params) = q4_groups(&groups);
                pack_nibbles(&codes).into_iter().chain(params).collect()
            }
        }
    }

    /// Every finite f16 value, ascending.
    fn f16_values() -> &'static [f32] {
        static V: std::sync::OnceLock<Vec<f32>> = std::sync::OnceLock::new();
        V.get_or_init(|| {
            let mut v: Vec<f32> =
                (0..=u16::MAX).map(|b| f16::from_bits(b).to_f32()).filter(|x| x.is_finite()).collect();
            v.sort_by(f32::total_cmp);
            v.dedup();
            v
        })
    }

    /// q4's parameters and codes of groups of values: minimum the largest f16 at or below the least value, step
    /// the smallest f16 at or above the range over 15 (both found in the sorted table of f16s); codes
    /// round((x - min) / step) to even, in f32. Codes group after group; one (step | min << 16) word per group.
    fn q4_groups(groups: &[Vec<f32>]) -> (Vec<u8>, Vec<u32>) {
        let t = f16_values();
        let (mut codes, mut params) = (Vec::new(), Vec::new());
        for xs in groups {
            let lo = xs.iter().cloned().fold(f32::INFINITY, f32::min);
            let hi = xs.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            let m = t[t.partition_point(|&v| v <= lo) - 1];
            let s = t[t.partition_point(|&v| v < (hi - m) / 15.0)];
            params.push(f16::from_f32(s).to_bits() as u32 | (f16::from_f32(m).to_bits() as u32) << 16);
            codes.extend(xs.iter().map(|&x| {
                if s > 0.0 {
                    ((x - m) / s).round_ties_even().clamp(0.0, 15.0) as u8
                } else {
                    0
                }
            }));
        }
        (codes, params)
    }

    /// 4-bit codes, element e in bits 4·(e % 8) of word e / 8.
    fn pack_nibbles(codes: &[u8]) -> Vec<u32> {
        codes.chunks(8).map(|c| c.iter().enumerate().fold(0u32, |w, (i, &b)| w | (b as u32) << (4 * i))).collect()
    }

    fn q4_value(codes: &[u32], param: u32, e: usize) -> f32 {
        let (s, m) = (f16::from_bits(param as u16).to_f32(), f16::from_bits((param >> 16) as u16).to_f32());
        m + ((codes[e / 8] >> (4 * (e % 8))) & 15) as f32 * s
    }

    /// A q4 key page from its `page` slots of keys (`rows`, slot after slot): each channel quantized over the
    /// page's slots; the codes slot after slot, then one parameter word per channel.
    pub fn encode_q4_keys(rows: &[f32], kvh: usize, hd: usize, page: usize) -> Vec<u32> {
        let n = kvh * hd;
        let cols: Vec<Vec<f32>> = (0..n).map(|c| (0..page).map(|i| rows[i * n + c]).collect()).collect();
        let (codes, params) = q4_groups(&cols);
        // codes are channel after channel: transpose to slot after slot.
        let by_slot: Vec<u8> = (0..page * n).map(|e| codes[(e % n) * page + e / n]).collect();
        pack_nibbles(&by_slot).into_iter().chain(params).collect()
    }

    /// The `page` slots of keys of a q4 key page, slot after slot.
    pub fn decode_q4_keys(w: &[u32], kvh: usize, hd: usize, page: usize) -> Vec<f32> {
        let n = kvh * hd;
        (0..page * n).map(|e| q4_value(w, w[page * n / 8 + e % n], e)).collect()
    }

    pub fn decode(dtype: KvDtype, w: &[u32], kvh: usize, hd: usize) -> Vec<f32> {
        let n = kvh * hd;
        (0..n)
            .map(|e| match dtype {
                KvDtype::F32 => f32::from_bits(w[e]),
                KvDtype::Bf16 => bf16::from_bits((w[e / 2] >> (16 * (e % 2))) as u16).to_f32(),
                KvDtype::F16 => f16::from_bits((w[e / 2] >> (16 * (e % 2))) as u16).to_f32(),
                KvDtype::Q8 | KvDtype::Fp8 => {
                    let b = (w[e / 4] >> (8 * (e % 4))) as u8;
                    let s = f32::from_bits(w[n / 4 + e / hd]) as f64;
                    (if dtype == KvDtype::Q8 { b as i8 as f64 } else { e4m3(b) } * s) as f32
                }
                KvDtype::Q4 => q4_value(w, w[n / 8 + e / 32.min(hd)], e),
            })
            .collect()
    }
}
