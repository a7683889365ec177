//! The float expert GEMM at the AVX-512 level ([`super::Simd::Avx512`]; x86-64 only, as the module is): the
//! prefill product `out[m, n] += x[m, k] · W` through a fused expert tensor's float weights (f32, bf16, f16;
//! input-major, W's element (kk, j) at `w_off + kk · ld + j`), for the few to few dozen rows a prefill gives
//! each expert.
//!
//! The weights are split along k into the blocks of the decode path ([`super::xw::float_split_k`],
//! [`super::xw::split_rows`] rows a task), each task streaming its block whole: [`KC`] rows at a time, all of
//! their columns, so that the processor's prefetchers see a few ascending runs. Tasks that owned column strips
//! instead read 256 bytes of every row, a row (2-8 KB) apart, a new page at every step: the 252M test model's
//! f32 prefill was 20% slower that way. Within a pass, a register tile of up to 6 rows × 64 columns (24
//! accumulators) takes the weights as stored (converted in registers, no packed copy), and a task's partial
//! sums stay in its own buffer, which the task adds to `out` in task order itself ([`super::xw::sum_in_order`]:
//! a pass over all of them afterwards, as before, was one more op per product, and prefill on the bench model
//! was 5-8% slower). Every partial sum is one FMA chain over its block's rows in order and the blocks depend on
//! k alone, so a row's result depends neither on the thread count nor on how many rows share its expert, and
//! equals the decode path's bit for bit (tested for f32).

use std::arch::x86_64::*;

use super::matmul::WView;
use super::xw::{split_rows, sum_in_order};

/// Rows of a register tile.
const TR: usize = 6;
/// Weight rows of one pass over a task's columns.
const KC: usize = 8;
/// Rows of x per op at most.
const MAX_ROWS: usize = 48;
/// The partial sums' bytes per op at most (they take tasks × rows × n floats): fewer rows an op where n and k
/// are large (Scout's fused gate_up, 5,120 × 16,384: 16 rows).
const MAX_PART_BYTES: usize = 32 << 20;

/// See the module doc. Safety: the processor runs [`super::Simd::Avx512`].
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn xw(x: &[f32], m: usize, k: usize, n: usize, w: &WView, w_off: usize, ld: usize, out: &mut [f32]) {
    if m == 0 || n == 0 || k == 0 {
        return;
    }
    assert!(x.len() >= m * k && out.len() >= m * n && w.len() >= w_off + (k - 1) * ld + n);
    assert!(!matches!(w, WView::Quant(..)), "xw512 takes float weights");
    let per_row = k.div_ceil(split_rows(k)) * n * std::mem::size_of::<f32>();
    let max_rows = (MAX_PART_BYTES / per_row).clamp(1, MAX_ROWS);
    for r0 in (0..m).step_by(max_rows) {
        let mm = max_rows.min(m - r0);
        // SAFETY: the caller's (Avx512); rows r0.. of x and out, in bounds by the assertion above.
        unsafe { rows(&x[r0 * k..], mm, k, n, w, w_off, ld, &mut out[r0 * n..(r0 + mm) * n]) }
    }
}

/// [`xw`] for at most [`MAX_ROWS`] rows.
#[allow(clippy::too_many_arguments)]
unsafe fn rows(x: &[f32], m: usize, k: usize, n: usize, w: &WView, w_off: usize, ld: usize, out: &mut [f32]) {
    let block = split_rows(k);
    let tasks = k.div_ceil(block);
    // The weights' first byte's address (a pointer is not Sync) and kind (0: f32, 1: bf16, 2: f16).
    let (wp, kind) = match w {
        WView::F32(s) => (s.as_ptr() as usize, 0),
        WView::BF16(s) => (s.as_ptr() as usize, 1),
        WView::F16(s) => (s.as_ptr() as usize, 2),
        WView::Quant(..) => unreachable!("xw512 takes float weights"),
    };
    // Each task's partial sums are added to out in task order by the task itself; every element of them is
    // written by the task's first pass before it is read (not zeroed first).
    sum_in_order(tasks, m, n, false, out, n, |t, p| {
        let end = ((t + 1) * block).min(k);
        let pp = p.as_mut_ptr();
        for kc in (t * block..end).step_by(KC) {
            let kn = KC.min(end - kc);
            for c0 in (0..n).step_by(64) {
                let cols = 64.min(n - c0);
                let e = w_off + kc * ld + c0;
                // Prefetch this pass's columns of the task's next pass (or nothing past the block).
                let ahead = if kc + KC < end { KC.min(end - kc - KC) } else { 0 };
                for r0 in (0..m).step_by(TR) {
                    // SAFETY: x holds m rows of k; W's rows kc..kc + kn, columns c0..c0 + cols are in the
                    // tensor (asserted in xw); p is this task's m × n partial sums.
                    unsafe {
                        let (xp, dst) = (x.as_ptr().add(r0 * k + kc), pp.add(r0 * n + c0));
                        let pf = if r0 == 0 { ahead } else { 0 };
                        let a = Tile {
                            x: xp,
                            xs: k,
                            kn,
                            first: kc == t * block,
                            w: wp as *const u8,
                            e,
                            ld,
                            cols,
                            pf,
                            dst,
                            n,
                        };
                        macro_rules! go {
                            ($r:literal) => {
                                match kind {
                                    0 => tile::<$r, 0>(a),
                                    1 => tile::<$r, 1>(a),
                                    _ => tile::<$r, 2>(a),
                                }
                            };
                        }
                        match TR.min(m - r0) {
                            1 => go!(1),
                            2 => go!(2),
                            3 => go!(3),
                            4 => go!(4),
                            5 => go!(5),
                            _ => go!(6),
                        }
                    }
                }
            }
        }
    });
}

/// 16 weights from element `e` (kind 0: f32, 1: bf16, 2: f16) as f32, the lanes outside `mask` zero (and not
/// read).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,fma,f16c")]
pub(crate) unsafe fn load<const KIND: u8>(w: *const u8, e: usize, mask: __mmask16) -> __m512 {
    // SAFETY: the caller's: the lanes in `mask` are elements of the tensor (masked-off lanes do not fault).
    unsafe {
        match KIND {
            0 => _mm512_maskz_loadu_ps(mask, (w as *const f32).add(e)),
            1 => {
                let h = _mm256_maskz_loadu_epi16(mask, (w as *const u16).add(e) as *const i16);
                _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16))
            }
            _ => _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask, (w as *const u16).add(e) as *const i16)),
        }
    }
}

/// One register tile's pass: its rows of x (row stride `xs`, `kn` elements from `x`), `kn` rows of W from
/// element `e` (row stride `ld`, `cols` ≤ 64 columns), how many weight rows after these to prefetch (`pf`),
/// and its partial sums (`dst`, row stride n), which it starts from 0 when `first`.
#[derive(Clone, Copy)]
struct Tile {
    x: *const f32,
    xs: usize,
    kn: usize,
    first: bool,
    w: *const u8,
    e: usize,
    ld: usize,
    cols: usize,
    pf: usize,
    dst: *mut f32,
    n: usize,
}

/// `dst[r, c] = fma chain of dst[r, c] (0 if `first`) with x[r, kk] · W[e + kk · ld + c] over kk < kn in
/// order`, for r < R, c < cols, the weights of kind KIND (0: f32, 1: bf16, 2: f16). Safety: the pointers
/// hold what [`Tile`] says.
#[allow(clippy::needless_range_loop)]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,fma,f16c")]
unsafe fn tile<const R: usize, const KIND: u8>(a: Tile) {
    let Tile { x, xs, kn, first, w, e, ld, cols, pf, dst, n } = a;
    let masks: [__mmask16; 4] = std::array::from_fn(|v| {
        let c = cols.saturating_sub(16 * v).min(16);
        ((1u32 << c) - 1) as __mmask16
    });
    let esize = if KIND == 0 { 4 } else { 2 };
    // SAFETY (every access below): the caller's bounds: R rows of x (stride xs) with kn elements from x, W's
    // kn rows from element e (cols of each), R rows of dst (stride n) with cols elements.
    let mut acc: [[__m512; 4]; R] = std::array::from_fn(|r| {
        std::array::from_fn(|v| match first {
            true => _mm512_setzero_ps(),
            false => unsafe { _mm512_maskz_loadu_ps(masks[v], dst.add(r * n + 16 * v)) },
        })
    });
    for kk in 0..pf {
        let ahead = unsafe { w.add((e + (kn + kk) * ld) * esize) } as *const i8;
        for l in 0..esize {
            _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(64 * l));
        }
    }
    for kk in 0..kn {
        let wv: [__m512; 4] = std::array::from_fn(|v| unsafe { load::<KIND>(w, e + kk * ld + 16 * v, masks[v]) });
        for r in 0..R {
            let xb = _mm512_set1_ps(unsafe { *x.add(r * xs + kk) });
            for v in 0..4 {
                acc[r][v] = _mm512_fmadd_ps(wv[v], xb, acc[r][v]);
            }
        }
    }
    for r in 0..R {
        for v in 0..4 {
            if masks[v] != 0 {
                unsafe { _mm512_mask_storeu_ps(dst.add(r * n + 16 * v), masks[v], acc[r][v]) };
            }
        }
    }
}
