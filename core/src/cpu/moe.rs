//! Mixture-of-experts on the CPU: the top-k sigmoid router and the routed experts, run only for the
//! experts some row picked (rows grouped by expert), with the router score scaling the expert *input*.

use super::matmul::xw_acc;
use super::pool;
use super::{need, CpuWeight};
use crate::error::{HerdError, Result};

pub fn router_topk(logits: &[f32], rows: usize, e: usize, k: usize, idx: &mut [u32], score: &mut [f32]) -> Result<()> {
    need("router logits", logits.len(), rows * e)?;
    need("router idx", idx.len(), rows * k)?;
    need("router score", score.len(), rows * k)?;
    if k == 0 || k > e {
        return Err(HerdError::Backend { backend: "cpu".into(), msg: format!("router: top-{k} of {e} experts") });
    }
    pool::with_scratch(&ORDER, |order| {
        for r in 0..rows {
            let l = &logits[r * e..(r + 1) * e];
            order.clear();
            order.extend(0..e);
            // Highest logit first; NaN sorts last; ties keep the lower index first (stable sort).
            order.sort_by(|&a, &b| l[b].partial_cmp(&l[a]).unwrap_or_else(|| l[a].is_nan().cmp(&l[b].is_nan())));
            for c in 0..k {
                let ex = order[c];
                idx[r * k + c] = ex as u32;
                score[r * k + c] = 1.0 / (1.0 + (-l[ex]).exp());
            }
        }
    });
    Ok(())
}

thread_local! {
    /// The router's ordering of the experts, and the MoE op's buffers: kept per thread so a decode step
    /// allocates nothing once warm.
    static ORDER: std::cell::RefCell<Vec<usize>> = const { std::cell::RefCell::new(Vec::new()) };
    static BUFFERS: std::cell::RefCell<Buffers> = std::cell::RefCell::new(Buffers::default());
}

/// The MoE op's working memory (see [`moe`]).
#[derive(Default)]
struct Buffers {
    /// The entries (row · k + choice) grouped by expert, and where each expert's run starts (e + 1).
    entries: Vec<usize>,
    starts: Vec<usize>,
    /// The next free place of each expert's run while they are filled.
    next: Vec<usize>,
    /// Each entry's output; an expert's scaled inputs, gate·up product, silu(gate)·up and output.
    ys: Vec<f32>,
    u: Vec<f32>,
    both: Vec<f32>,
    gate: Vec<f32>,
    y: Vec<f32>,
}

/// `v` resized to `n` elements, all zero.
fn zeroed(v: &mut Vec<f32>, n: usize) -> &mut [f32] {
    v.clear();
    v.resize(n, 0.0);
    v
}

#[allow(clippy::too_many_arguments)]
pub fn moe(
    simd: super::Simd,
    x: &[f32],
    rows: usize,
    idx: &[u32],
    score: &[f32],
    k: usize,
    gate_up: &CpuWeight,
    down: &CpuWeight,
    out: &mut [f32],
) -> Result<()> {
    let bad = |m: String| HerdError::Backend { backend: "cpu".into(), msg: format!("moe: {m}") };
    let [e, d, f2] = gate_up.shape[..] else { return Err(bad(format!("gate_up has shape {:?}", gate_up.shape))) };
    let f = f2 / 2;
    if down.shape != [e, f, d] {
        return Err(bad(format!("down has shape {:?}, expected {:?}", down.shape, [e, f, d])));
    }
    need("moe x", x.len(), rows * d)?;
    need("moe idx", idx.len(), rows * k)?;
    need("moe score", score.len(), rows * k)?;
    need("moe out", out.len(), rows * d)?;
    let (gu_held, dn_held) = (gate_up.read()?, down.read()?);
    let (gu, dn) = (gu_held.view(), dn_held.view());
    pool::with_scratch(&BUFFERS, |bf| {
        // Group the entries (row · k + choice) by expert, in entry order within each (a counting sort).
        bf.starts.clear();
        bf.starts.resize(e + 1, 0);
        for &ex in &idx[..rows * k] {
            if (ex as usize) < e {
                bf.starts[ex as usize + 1] += 1;
            }
        }
        for i in 0..e {
            bf.starts[i + 1] += bf.starts[i];
        }
        bf.entries.clear();
        bf.entries.resize(bf.starts[e], 0);
        bf.next.clear();
        bf.next.extend_from_slice(&bf.starts[..e]);
        for (ent, &ex) in idx[..rows * k].iter().enumerate() {
            if (ex as usize) < e {
                let at = &mut bf.next[ex as usize];
                bf.entries[*at] = ent;
                *at += 1;
            }
        }
        // Each entry's output, added to its row in choice order at the end.
        let Buffers { entries, starts, ys, u, both, gate, y, .. } = bf;
        let ys = zeroed(ys, rows * k * d);
        // One path for every expert of the op (chosen by its entries, skipped ones included): an expert's
        // result for a row then does not depend on how its rows are split across calls.
        let small = rows * k <= super::matmul::SMALL_M;
        for ex in 0..e {
            let sel = &entries[starts[ex]..starts[ex + 1]];
            if sel.is_empty() {
                continue;
            }
            let n = sel.len();
            // u = score · x for the selected rows.
            let u = zeroed(u, n * d);
            for (i, &ent) in sel.iter().enumerate() {
                let (r, s) = (ent / k, score[ent]);
                for (a, &b) in u[i * d..(i + 1) * d].iter_mut().zip(&x[r * d..(r + 1) * d]) {
                    *a = s * b;
                }
            }
            // gate and up in one product (the fused tensor's 2f columns), then silu(gate) · up.
            let both = zeroed(both, n * f2);
            xw_acc(simd, u, n, d, f2, &gu, ex * d * f2, f2, both, small);
            let gate = zeroed(gate, n * f);
            for (g, gu_row) in gate.chunks_exact_mut(f).zip(both.chunks_exact(f2)) {
                for ((o, &gv), &uv) in g.iter_mut().zip(&gu_row[..f]).zip(&gu_row[f..]) {
                    *o = super::elementwise::silu(gv) * uv;
                }
            }
            let y = zeroed(y, n * d);
            xw_acc(simd, gate, n, f, d, &dn, ex * f * d, d, y, small);
            for (i, &ent) in sel.iter().enumerate() {
                ys[ent * d..(ent + 1) * d].copy_from_slice(&y[i * d..(i + 1) * d]);
            }
        }
        for (ent, &ex) in idx[..rows * k].iter().enumerate() {
            if (ex as usize) < e {
                let r = ent / k;
                for (o, &v) in out[r * d..(r + 1) * d].iter_mut().zip(&ys[ent * d..(ent + 1) * d]) {
                    *o += v;
                }
            }
        }
    });
    Ok(())
}
