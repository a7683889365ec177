//! The few-rows path of `xw_acc` (decode through the fused expert tensors, input-major `[K, N]` blocks):
//! `out[m, cols] += x[m, k] · W[k, cols]`, streaming W's rows once. A quantized tensor grouped along k
//! (its natural grouping, [`GroupAxis::SecondLast`]) is read a group of k rows at a time: each row's
//! integers are converted to f32 and multiplied into a per-group sum, which the group's row of scales
//! (converted once) multiplies into the result. The same code is compiled twice, plainly and with AVX2 + FMA
//! enabled ([`Simd`]), so the compiler vectorizes it for the level the backend runs.

use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};

use super::matmul::WView;
use super::simd::Simd;
use crate::quant::{GroupAxis, ScaleType};

/// One task's columns `n0..n0 + nb` of `x · W` (W's element (kk, j) at `w_off + kk · ld + j`), added to
/// `acc` (m rows of nb).
#[allow(clippy::too_many_arguments)]
pub(crate) fn block(
    simd: Simd,
    x: &[f32],
    m: usize,
    k: usize,
    w: &WView,
    w_off: usize,
    ld: usize,
    n0: usize,
    acc: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if simd == Simd::Avx2 {
        // SAFETY: Avx2 is only chosen when the processor has AVX2, FMA and F16C (Simd::detect).
        return unsafe { block_avx2(x, m, k, w, w_off, ld, n0, acc) };
    }
    let _ = simd;
    block_body::<false>(x, m, k, w, w_off, ld, n0, acc)
}

#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn block_avx2(x: &[f32], m: usize, k: usize, w: &WView, w_off: usize, ld: usize, n0: usize, acc: &mut [f32]) {
    block_body::<true>(x, m, k, w, w_off, ld, n0, acc)
}

/// Signed integers of a quantized row as f32: q8 bytes, or q4 bytes (two elements each, low nibble first,
/// stored + 8) into twice as many values.
#[inline(always)]
fn decode<const AVX: bool>(bits: u32, bytes: &[u8], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if AVX {
        // SAFETY: AVX is only true inside block_avx2, which runs where AVX2 is present.
        return unsafe { avx2::decode(bits, bytes, out) };
    }
    if bits == 8 {
        for (c, &b) in out.iter_mut().zip(bytes) {
            *c = b as i8 as f32;
        }
    } else {
        for (c, &b) in out.chunks_exact_mut(2).zip(bytes) {
            c[0] = ((b & 15) as i32 - 8) as f32;
            c[1] = ((b >> 4) as i32 - 8) as f32;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn decode(bits: u32, bytes: &[u8], out: &mut [f32]) {
        let n = out.len();
        let (bp, op) = (bytes.as_ptr(), out.as_mut_ptr());
        let mut i = 0;
        if bits == 8 {
            while i + 16 <= n {
                // SAFETY: 16 bytes from i (bytes holds n), 16 floats to i.
                unsafe {
                    let b = _mm_loadu_si128(bp.add(i) as *const __m128i);
                    _mm256_storeu_ps(op.add(i), _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b)));
                    _mm256_storeu_ps(op.add(i + 8), _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(b, 8))));
                }
                i += 16;
            }
            for t in i..n {
                out[t] = bytes[t] as i8 as f32;
            }
        } else {
            let (mask, eight) = (_mm_set1_epi8(15), _mm_set1_epi8(8));
            while i + 16 <= n {
                // SAFETY: 8 bytes from i / 2 (bytes holds n / 2), 16 floats to i.
                unsafe {
                    let b = _mm_loadl_epi64(bp.add(i / 2) as *const __m128i);
                    let lo = _mm_and_si128(b, mask);
                    let hi = _mm_and_si128(_mm_srli_epi16(b, 4), mask);
                    let v = _mm_sub_epi8(_mm_unpacklo_epi8(lo, hi), eight);
                    _mm256_storeu_ps(op.add(i), _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(v)));
                    _mm256_storeu_ps(op.add(i + 8), _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(v, 8))));
                }
                i += 16;
            }
            for t in (i..n).step_by(2) {
                let b = bytes[t / 2];
                out[t] = ((b & 15) as i32 - 8) as f32;
                out[t + 1] = ((b >> 4) as i32 - 8) as f32;
            }
        }
    }
}

/// `acc[r, ..] += xv[r] · row` for every row r (the inner loop; vectorized by the compiler).
#[inline(always)]
fn axpy_rows(x: &[f32], m: usize, k: usize, kk: usize, row: &[f32], acc: &mut [f32]) {
    let nb = row.len();
    for r in 0..m {
        let xv = x[r * k + kk];
        if xv != 0.0 {
            for (a, &wv) in acc[r * nb..(r + 1) * nb].iter_mut().zip(row) {
                *a += xv * wv;
            }
        }
    }
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn block_body<const AVX: bool>(
    x: &[f32],
    m: usize,
    k: usize,
    w: &WView,
    w_off: usize,
    ld: usize,
    n0: usize,
    acc: &mut [f32],
) {
    let nb = acc.len() / m;
    let mut conv = vec![0f32; nb];
    match w {
        WView::F32(s) => {
            for kk in 0..k {
                let start = w_off + kk * ld + n0;
                axpy_rows(x, m, k, kk, &s[start..start + nb], acc);
            }
        }
        WView::BF16(s) => {
            for kk in 0..k {
                let start = w_off + kk * ld + n0;
                for (c, &b) in conv.iter_mut().zip(&s[start..start + nb]) {
                    *c = f32::from_bits((b as u32) << 16);
                }
                axpy_rows(x, m, k, kk, &conv, acc);
            }
        }
        WView::F16(s) => {
            for kk in 0..k {
                let start = w_off + kk * ld + n0;
                let h: &[f16] = bytemuck::cast_slice(&s[start..start + nb]);
                h.convert_to_f32_slice(&mut conv);
                axpy_rows(x, m, k, kk, &conv, acc);
            }
        }
        // Grouped along k, with groups that start at row 0 of this block (the expert tensors' blocks start at
        // an expert's first row): the integers of a group's rows are summed, then scaled once.
        WView::Quant(bytes, l)
            if l.axis == GroupAxis::SecondLast
                && ld == l.last
                && k == l.second
                && w_off % (l.last * l.second) + n0 + nb <= l.last
                && (l.bits == 8 || (w_off + n0).is_multiple_of(2) && nb.is_multiple_of(2)) =>
        {
            let mut sum = vec![0f32; m * nb];
            let mut scales = vec![0f32; nb];
            let mut raw = vec![f16::ZERO; nb];
            for g0 in (0..k).step_by(l.group) {
                sum.fill(0.0);
                for kk in g0..g0 + l.group {
                    let start = w_off + kk * ld + n0;
                    let b0 = start * l.bits as usize / 8;
                    decode::<AVX>(l.bits, &bytes[b0..b0 + nb * l.bits as usize / 8], &mut conv);
                    axpy_rows(x, m, k, kk, &conv, &mut sum);
                }
                // The group's scales: nb consecutive ones (the file's bytes need not be 2-aligned).
                let s0 = l.scale_offset + 2 * l.scale_index(w_off + g0 * ld + n0);
                for (r, b) in raw.iter_mut().zip(bytes[s0..s0 + 2 * nb].chunks_exact(2)) {
                    *r = f16::from_bits(u16::from_le_bytes([b[0], b[1]]));
                }
                match l.scale {
                    ScaleType::F16 => raw.convert_to_f32_slice(&mut scales),
                    ScaleType::BF16 => {
                        for (s, r) in scales.iter_mut().zip(&raw) {
                            *s = bf16::from_bits(r.to_bits()).to_f32();
                        }
                    }
                }
                for r in 0..m {
                    for ((a, &s), &sc) in acc[r * nb..(r + 1) * nb].iter_mut().zip(&sum[r * nb..]).zip(&scales) {
                        *a += s * sc;
                    }
                }
            }
        }
        WView::Quant(..) => {
            for kk in 0..k {
                w.to_f32(w_off + kk * ld + n0, &mut conv);
                axpy_rows(x, m, k, kk, &conv, acc);
            }
        }
    }
}
