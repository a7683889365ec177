//! The AVX2 + FMA kernels of the decode GEMVs (see the parent module): float rows converted in registers, and
//! the integer sums of q8 and q4 rows against int8 activations.

use std::arch::x86_64::*;

#[inline]
#[target_feature(enable = "avx2,fma")]
fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    _mm_cvtss_f32(s)
}

/// The shared loop of the float formats: `load(i)` gives 8 weight elements from element i as f32.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn rows_with(
    x: &[f32],
    m: usize,
    k: usize,
    acc: &mut [f32; 4],
    load: impl Fn(usize) -> __m256,
    tail: impl Fn(usize) -> f32,
) {
    let mut a = [[_mm256_setzero_ps(); 2]; 4];
    let k16 = k / 16 * 16;
    let xp = x.as_ptr();
    let mut i = 0;
    while i < k16 {
        let (w0, w1) = (load(i), load(i + 8));
        for r in 0..m {
            // SAFETY: i + 16 ≤ k, and row r of x holds k elements.
            let p = unsafe { xp.add(r * k + i) };
            a[r][0] = _mm256_fmadd_ps(w0, unsafe { _mm256_loadu_ps(p) }, a[r][0]);
            a[r][1] = _mm256_fmadd_ps(w1, unsafe { _mm256_loadu_ps(p.add(8)) }, a[r][1]);
        }
        i += 16;
    }
    for r in 0..m {
        let mut s = hsum(_mm256_add_ps(a[r][0], a[r][1]));
        for t in k16..k {
            s += x[r * k + t] * tail(t);
        }
        acc[r] = s;
    }
}

#[target_feature(enable = "avx2,fma")]
pub unsafe fn rows_f32(w: &[f32], x: &[f32], m: usize, k: usize, acc: &mut [f32; 4]) {
    let p = w.as_ptr();
    // SAFETY: rows_with asks for 8 elements from i only while i + 8 ≤ k = w.len().
    unsafe { rows_with(x, m, k, acc, |i| _mm256_loadu_ps(p.add(i)), |t| w[t]) }
}

#[target_feature(enable = "avx2,fma")]
pub unsafe fn rows_bf16(w: &[u16], x: &[f32], m: usize, k: usize, acc: &mut [f32; 4]) {
    let p = w.as_ptr();
    let load = |i: usize| {
        // SAFETY: 8 u16 from i, i + 8 ≤ k = w.len().
        let h = unsafe { _mm_loadu_si128(p.add(i) as *const __m128i) };
        _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16))
    };
    unsafe { rows_with(x, m, k, acc, load, |t| f32::from_bits((w[t] as u32) << 16)) }
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn rows_f16(w: &[u16], x: &[f32], m: usize, k: usize, acc: &mut [f32; 4]) {
    let p = w.as_ptr();
    let load = |i: usize| {
        // SAFETY: 8 u16 from i, i + 8 ≤ k = w.len().
        _mm256_cvtph_ps(unsafe { _mm_loadu_si128(p.add(i) as *const __m128i) })
    };
    unsafe { rows_with(x, m, k, acc, load, |t| half::f16::from_bits(w[t]).to_f32()) }
}

/// 32 weights from `row` at run `c` as signed bytes, in the order their activations are stored.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn weights(bits: u32, row: *const u8, c: usize) -> __m256i {
    if bits == 8 {
        // SAFETY: run c's 32 bytes are in the row (the caller's bound: 32 · runs ≤ k).
        unsafe { _mm256_loadu_si256(row.add(32 * c) as *const __m256i) }
    } else {
        // SAFETY: run c's 16 bytes are in the row.
        let b = unsafe { _mm_loadu_si128(row.add(16 * c) as *const __m128i) };
        let mask = _mm_set1_epi8(15);
        let lo = _mm_and_si128(b, mask);
        let hi = _mm_and_si128(_mm_srli_epi16(b, 4), mask);
        _mm256_sub_epi8(_mm256_set_m128i(hi, lo), _mm256_set1_epi8(8))
    }
}

/// The 8 i32 partial sums of 32 products of signed bytes (each lane: 4 neighbouring bytes).
#[inline]
#[target_feature(enable = "avx2,fma")]
fn dot32(w: __m256i, w_abs: __m256i, x: __m256i) -> __m256i {
    // |w| · (x with w's sign) = w · x; pairs of u8 · i8 products fit i16 (2 · 128 · 127 < 32768).
    let p16 = _mm256_maddubs_epi16(w_abs, _mm256_sign_epi8(x, w));
    _mm256_madd_epi16(p16, _mm256_set1_epi16(1))
}

#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma")]
pub unsafe fn rows_quant(
    bits: u32,
    g: usize,
    row: &[u8],
    scales: &[f32],
    xq: &[i8],
    xd: &[f32],
    m: usize,
    k: usize,
    acc: &mut [f32; 4],
) {
    let groups = k / g;
    let (rp, xp) = (row.as_ptr(), xq.as_ptr());
    let mut a = [_mm256_setzero_ps(); 4];
    if g == 16 {
        // Each run of 32 holds two groups. q8: lanes 0-3 are the first, 4-7 the second. q4 (evens, then
        // odds): lanes 0-1 and 4-5 are the first group, 2-3 and 6-7 the second.
        for c in 0..k / 32 {
            // SAFETY: run c is within the row and within each activation row (k is a multiple of 32).
            let w = unsafe { weights(bits, rp, c) };
            let wa = _mm256_abs_epi8(w);
            let s0 = scales[2 * c];
            let s1 = scales[2 * c + 1];
            for r in 0..m {
                let xv = unsafe { _mm256_loadu_si256(xp.add(r * k + 32 * c) as *const __m256i) };
                let p = _mm256_cvtepi32_ps(dot32(w, wa, xv));
                let (d0, d1) = (xd[r * groups + 2 * c] * s0, xd[r * groups + 2 * c + 1] * s1);
                let sv = if bits == 8 {
                    _mm256_setr_ps(d0, d0, d0, d0, d1, d1, d1, d1)
                } else {
                    _mm256_setr_ps(d0, d0, d1, d1, d0, d0, d1, d1)
                };
                a[r] = _mm256_fmadd_ps(p, sv, a[r]);
            }
        }
    } else {
        let runs = g / 32;
        for gi in 0..groups {
            let mut isum = [_mm256_setzero_si256(); 4];
            for c in gi * runs..(gi + 1) * runs {
                // SAFETY: as above.
                let w = unsafe { weights(bits, rp, c) };
                let wa = _mm256_abs_epi8(w);
                for r in 0..m {
                    let xv = unsafe { _mm256_loadu_si256(xp.add(r * k + 32 * c) as *const __m256i) };
                    isum[r] = _mm256_add_epi32(isum[r], dot32(w, wa, xv));
                }
            }
            for r in 0..m {
                let d = _mm256_set1_ps(xd[r * groups + gi] * scales[gi]);
                a[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[r]), d, a[r]);
            }
        }
    }
    for r in 0..m {
        acc[r] = hsum(a[r]);
    }
}
