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
            let lo = p.chunk.map_or(0, |c| i / c * c);
            let temp = p.temperature.map_or(1.0, |tt| {
                1.0 + tt.attn_scale as f64 * (1.0 + ((i as f64 + 1.0) / tt.floor_scale as f64).floor()).ln()
            });
            for head in 0..h {
                let g = head / (h / kvh);
                let qv = &q[(r * h + head) * d..(r * h + head + 1) * d];
                let scores: Vec<f64> = (lo..=i)
                    .map(|j| {
                        let kv = &hist_k[si][(j * kvh + g) * d..(j * kvh + g + 1) * d];
                        qv.iter().zip(kv).map(|(a, b)| *a as f64 * temp * *b as f64).sum::<f64>() * p.scale as f64
                    })
                    .collect();
                let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
                let z: f64 = e.iter().sum();
                for c in 0..d {
                    let v: f64 = (lo..=i).zip(&e).map(|(j, w)| w / z * hist_v[si][(j * kvh + g) * d + c] as f64).sum();
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

/// Routed experts accumulated onto `out`: gate_up [E, D, 2F], down [E, F, D], x·W orientation.
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
) {
    for r in 0..rows {
        for c in 0..k {
            let e = idx[r * k + c] as usize;
            let s = score[r * k + c] as f64;
            let u: Vec<f64> = x[r * d..(r + 1) * d].iter().map(|&v| v as f64 * s).collect();
            let gu = &gate_up[e * d * 2 * f..(e + 1) * d * 2 * f];
            let hmid: Vec<f64> = (0..f)
                .map(|j| {
                    let g: f64 = (0..d).map(|i| u[i] * gu[i * 2 * f + j] as f64).sum();
                    let up: f64 = (0..d).map(|i| u[i] * gu[i * 2 * f + f + j] as f64).sum();
                    silu(g) * up
                })
                .collect();
            let dn = &down[e * f * d..(e + 1) * f * d];
            for o in 0..d {
                let y: f64 = (0..f).map(|j| hmid[j] * dn[j * d + o] as f64).sum();
                out[r * d + o] = (out[r * d + o] as f64 + y) as f32;
            }
        }
    }
}
