//! Ops the CPU backend runs as one parallel op where the trait's default makes several. A decode step is a
//! hundred or so ops of a few microseconds each, and every op ends with the threads waiting for each other
//! ([`super::pool`]); an op that is folded into its neighbour saves that wait, and the serial work between.
//!
//! - SwiGLU for a few rows (decode): each task takes a block of the gate's rows and the same rows of up, and
//!   writes silu(gate) · up for them; the activations are rounded once for both weights.
//! - Several matmuls of one input for a few rows (attention's q, k and v in decode): the tasks take blocks of
//!   rows of all the weights, the activations rounded once.

use super::gemv::{float_rows, quant_rows, quant_takes, with_rounded, ROWS_PER_TASK};
use super::matmul::{WView, SMALL_M};
use super::pool;
use super::simd::Simd;

/// Writes a weight's rows (a range) into memory at a pointer with a row stride: [`quant_rows`] or [`float_rows`].
type RowsOf<'a> = dyn Fn(&WView, std::ops::Range<usize>, *mut f32, usize) + 'a;

/// The integer layout a weight's rows take in the row kernels (`linear`'s few-rows path), or None for f32.
fn integer(w: &WView, k: usize) -> Option<(u32, usize)> {
    match w {
        WView::Quant(_, l) if quant_takes(l, k) => Some((l.bits, l.group)),
        _ => None,
    }
}

/// Runs `tasks` tasks on the pool, each given the row kernel of the weights `ws` (the activations rounded once
/// for all of them where they take the integer kernels). Returns false (and runs nothing) if the weights take
/// different paths, whose activations would be rounded differently.
#[allow(clippy::too_many_arguments)]
fn on_rows(
    simd: Simd,
    x: &[f32],
    m: usize,
    k: usize,
    ws: &[&WView],
    tasks: usize,
    task: impl Fn(usize, &RowsOf) + Sync,
) -> bool {
    let path = integer(ws[0], k);
    if ws.iter().any(|w| integer(w, k) != path) {
        return false;
    }
    match ws[0] {
        WView::Quant(_, l) if path.is_some() => with_rounded(simd, x, m, k, l, |acts| {
            pool::for_each(tasks, |t| {
                // SAFETY: each call writes the rows it is given, into memory its caller holds for them.
                task(t, &|w, rows, o, stride| unsafe { quant_rows(simd, acts, w, m, k, rows, o, stride) })
            })
        }),
        _ => pool::for_each(tasks, |t| {
            // SAFETY: as above.
            task(t, &|w, rows, o, stride| unsafe { float_rows(simd, w, x, m, k, rows, o, stride) })
        }),
    }
    true
}

/// `out[m, f] = silu(x · gateᵀ) ⊙ (x · upᵀ)` for 1..=[`SMALL_M`] rows, both weights [f, k], in one parallel op
/// with the same per-row kernels (and so the same results) as two matmuls and `silu_mul`. Returns false (and
/// does nothing) for other row counts, or weights the row kernels would take on different paths.
#[allow(clippy::too_many_arguments)]
pub fn swiglu_small(
    simd: Simd,
    x: &[f32],
    m: usize,
    k: usize,
    f: usize,
    gate: &WView,
    up: &WView,
    out: &mut [f32],
) -> bool {
    if !(1..=SMALL_M).contains(&m) {
        return false;
    }
    debug_assert!(x.len() >= m * k && out.len() >= m * f && gate.len() >= f * k && up.len() >= f * k);
    let out = pool::Shared::new(&mut out[..m * f]);
    // One task's rows: the gate's go straight to `out`, up's to the task's own buffer, then the product.
    let block = |t: usize, rows_of: &RowsOf| {
        let rows = t * ROWS_PER_TASK..((t + 1) * ROWS_PER_TASK).min(f);
        let mut u = [0f32; SMALL_M * ROWS_PER_TASK];
        // SAFETY: task t alone writes columns `rows` of out's m rows (stride f).
        let o = unsafe { out.ptr().add(rows.start) };
        rows_of(gate, rows.clone(), o, f);
        rows_of(up, rows.clone(), u.as_mut_ptr(), ROWS_PER_TASK);
        for r in 0..m {
            // SAFETY: as above; the slice is row r's columns `rows`.
            let g = unsafe { std::slice::from_raw_parts_mut(o.add(r * f), rows.len()) };
            super::elementwise::silu_mul_slice(g, &u[r * ROWS_PER_TASK..]);
        }
    };
    on_rows(simd, x, m, k, &[gate, up], f.div_ceil(ROWS_PER_TASK), block)
}

/// `outs[i] = x · wᵢᵀ` for 1..=[`SMALL_M`] rows and N nn.Linear weights `(wᵢ, nᵢ, outᵢ)` [nᵢ, k], in one
/// parallel op with the per-row kernels of `linear` (the same results). Returns false (and does nothing) for
/// other row counts, or weights the row kernels would take on different paths.
pub fn linears_small<const N: usize>(
    simd: Simd,
    x: &[f32],
    m: usize,
    k: usize,
    jobs: [(WView, usize, &mut [f32]); N],
) -> bool {
    if !(1..=SMALL_M).contains(&m) || N == 0 {
        return false;
    }
    // Task t: weight i's block of rows, the blocks of all the weights in order.
    let blocks: [usize; N] = std::array::from_fn(|i| jobs[i].1.div_ceil(ROWS_PER_TASK));
    let jobs: [(WView, usize, pool::Shared<f32>); N] = jobs.map(|(w, n, out)| {
        debug_assert!(w.len() >= n * k && out.len() >= m * n);
        (w, n, pool::Shared::new(&mut out[..m * n]))
    });
    let task = |t: usize, rows_of: &RowsOf| {
        let (mut i, mut b) = (0, t);
        while b >= blocks[i] {
            b -= blocks[i];
            i += 1;
        }
        let (w, n, out) = &jobs[i];
        let rows = b * ROWS_PER_TASK..((b + 1) * ROWS_PER_TASK).min(*n);
        // SAFETY: the task alone writes columns `rows` of output i's m rows (stride n).
        rows_of(w, rows.clone(), unsafe { out.ptr().add(rows.start) }, *n);
    };
    let ws: [&WView; N] = std::array::from_fn(|i| &jobs[i].0);
    on_rows(simd, x, m, k, &ws, blocks.iter().sum(), task)
}
