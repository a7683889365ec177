//! The float expert GEMM at the AVX-512 level ([`super::Simd::Avx512`]; x86-64 only, as the module is): the
//! prefill product `out[m, n] += x[m, k] · W` through a fused expert tensor's float weights (f32, bf16, f16;
//! input-major, W's element (kk, j) at `w_off + kk · ld + j`), for the few to few dozen rows a prefill gives
//! each expert. A register tile of up to 6 rows × 64 columns (24 accumulators) streams the tile's 64 weights of
//! each of the k rows straight from the tensor (converted in registers, no packed copy), so each weight is read
//! once per 6 rows; `matrixmultiply`'s sgemm, which packs the weight block first, reached a quarter of the
//! speed at 8 rows. Every output element is one FMA chain over k in order, so a row's result does not depend
//! on how many rows share its expert.

use std::arch::x86_64::*;

use super::matmul::WView;

/// Rows of a register tile.
const TR: usize = 6;

/// See the module doc. Safety: the processor runs [`super::Simd::Avx512`].
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn xw(x: &[f32], m: usize, k: usize, n: usize, w: &WView, w_off: usize, ld: usize, out: &mut [f32]) {
    if m == 0 || n == 0 || k == 0 {
        return;
    }
    assert!(x.len() >= m * k && out.len() >= m * n && w.len() >= w_off + (k - 1) * ld + n);
    let o = super::pool::Shared::new(&mut out[..m * n]);
    super::pool::for_each(n.div_ceil(64), |t| {
        let (c0, op) = (t * 64, o.ptr());
        let cols = 64.min(n - c0);
        for r0 in (0..m).step_by(TR) {
            let rows = TR.min(m - r0);
            // SAFETY: the bounds asserted above; this task alone writes columns c0..c0 + cols of `out`.
            unsafe {
                let (xp, dst) = (x.as_ptr().add(r0 * k), op.add(r0 * n + c0));
                macro_rules! go {
                    ($r:literal) => {
                        match w {
                            WView::F32(s) => {
                                tile::<$r, 0>(xp, k, s.as_ptr() as *const u8, w_off + c0, ld, cols, dst, n)
                            }
                            WView::BF16(s) => {
                                tile::<$r, 1>(xp, k, s.as_ptr() as *const u8, w_off + c0, ld, cols, dst, n)
                            }
                            WView::F16(s) => {
                                tile::<$r, 2>(xp, k, s.as_ptr() as *const u8, w_off + c0, ld, cols, dst, n)
                            }
                            WView::Quant(..) => unreachable!("xw512 takes float weights"),
                        }
                    };
                }
                match rows {
                    1 => go!(1),
                    2 => go!(2),
                    3 => go!(3),
                    4 => go!(4),
                    5 => go!(5),
                    _ => go!(6),
                }
            }
        }
    });
}

/// 16 weights from element `e` (kind 0: f32, 1: bf16, 2: f16) as f32, the lanes outside `mask` zero (and not
/// read).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,fma,f16c")]
unsafe fn load<const KIND: u8>(w: *const u8, e: usize, mask: __mmask16) -> __m512 {
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

/// `dst[r, c] += Σ_kk x[r, kk] · W[kk, col0 + c]` for r < R, c < cols (≤ 64); `dst` has row stride n.
#[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,fma,f16c")]
unsafe fn tile<const R: usize, const KIND: u8>(
    x: *const f32,
    k: usize,
    w: *const u8,
    col0: usize,
    ld: usize,
    cols: usize,
    dst: *mut f32,
    n: usize,
) {
    let masks: [__mmask16; 4] = std::array::from_fn(|v| {
        let c = cols.saturating_sub(16 * v).min(16);
        ((1u32 << c) - 1) as __mmask16
    });
    let esize = if KIND == 0 { 4 } else { 2 };
    let mut acc = [[_mm512_setzero_ps(); 4]; R];
    for kk in 0..k {
        let e = col0 + kk * ld;
        // The tile's weights 8 rows ahead (64 columns: 4 cache lines of f32, 2 of 16-bit).
        if kk + 8 < k {
            let ahead = unsafe { w.add((e + 8 * ld) * esize) } as *const i8;
            for l in 0..esize {
                _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(64 * l));
            }
        }
        // SAFETY: the caller's bounds (row kk, columns col0..col0 + cols; x holds R rows of k).
        let wv: [__m512; 4] = std::array::from_fn(|v| unsafe { load::<KIND>(w, e + 16 * v, masks[v]) });
        for r in 0..R {
            let xb = _mm512_set1_ps(unsafe { *x.add(r * k + kk) });
            for v in 0..4 {
                acc[r][v] = _mm512_fmadd_ps(wv[v], xb, acc[r][v]);
            }
        }
    }
    for r in 0..R {
        for v in 0..4 {
            if masks[v] != 0 {
                // SAFETY: row r, the mask's columns: in `dst`'s m × n matrix (the caller's bounds).
                unsafe {
                    let p = dst.add(r * n + 16 * v);
                    let cur = _mm512_maskz_loadu_ps(masks[v], p);
                    _mm512_mask_storeu_ps(p, masks[v], _mm512_add_ps(cur, acc[r][v]));
                }
            }
        }
    }
}
