//! Mixture-of-experts on the CPU: the top-k sigmoid router and the routed experts, run only for the
//! experts some row picked (rows grouped by expert), with the router score scaling the expert *input*.

use super::matmul::xw_acc;
use super::{need, CpuWeight};
use crate::error::{HerdError, Result};

pub fn router_topk(logits: &[f32], rows: usize, e: usize, k: usize, idx: &mut [u32], score: &mut [f32]) -> Result<()> {
    need("router logits", logits.len(), rows * e)?;
    need("router idx", idx.len(), rows * k)?;
    need("router score", score.len(), rows * k)?;
    if k == 0 || k > e {
        return Err(HerdError::Backend { backend: "cpu".into(), msg: format!("router: top-{k} of {e} experts") });
    }
    for r in 0..rows {
        let l = &logits[r * e..(r + 1) * e];
        let mut order: Vec<usize> = (0..e).collect();
        // Highest logit first; NaN sorts last; ties keep the lower index first (stable sort).
        order.sort_by(|&a, &b| l[b].partial_cmp(&l[a]).unwrap_or_else(|| l[a].is_nan().cmp(&l[b].is_nan())));
        for c in 0..k {
            let ex = order[c];
            idx[r * k + c] = ex as u32;
            score[r * k + c] = 1.0 / (1.0 + (-l[ex]).exp());
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
pub fn moe(
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
    // Group (row, score) by expert.
    let mut by_expert: Vec<Vec<(usize, f32)>> = vec![Vec::new(); e];
    for r in 0..rows {
        for c in 0..k {
            let ex = idx[r * k + c] as usize;
            if ex >= e {
                return Err(bad(format!("expert index {ex} out of range ({e})")));
            }
            by_expert[ex].push((r, score[r * k + c]));
        }
    }
    let gu = gate_up.view();
    let dn = down.view();
    for (ex, sel) in by_expert.iter().enumerate() {
        if sel.is_empty() {
            continue;
        }
        let n = sel.len();
        // u = score · x for the selected rows.
        let mut u = vec![0f32; n * d];
        for (i, &(r, s)) in sel.iter().enumerate() {
            for (a, &b) in u[i * d..(i + 1) * d].iter_mut().zip(&x[r * d..(r + 1) * d]) {
                *a = s * b;
            }
        }
        let base = ex * d * f2;
        let mut gate = vec![0f32; n * f];
        let mut up = vec![0f32; n * f];
        xw_acc(&u, n, d, f, &gu, base, f2, &mut gate);
        xw_acc(&u, n, d, f, &gu, base + f, f2, &mut up);
        for (g, &uv) in gate.iter_mut().zip(&up) {
            *g = super::elementwise::silu(*g) * uv;
        }
        let mut y = vec![0f32; n * d];
        xw_acc(&gate, n, f, d, &dn, ex * f * d, d, &mut y);
        for (i, &(r, _)) in sel.iter().enumerate() {
            for (o, &v) in out[r * d..(r + 1) * d].iter_mut().zip(&y[i * d..(i + 1) * d]) {
                *o += v;
            }
        }
    }
    Ok(())
}
