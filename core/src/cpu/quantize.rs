//! Activations rounded to 8-bit integers per block, for the integer kernels of quantized weights (as
//! llama.cpp's q8_0 activations): the scalar rule ([`quantize_rows`]) and, for blocks of a multiple of 16, the
//! same rule in AVX2, AVX-512, NEON (neon.rs) and SIMD128 (wasm.rs) registers, which give the same integers and
//! scales (the maximum ignores NaN as `f32::max` does, and a NaN rounds to 0 as the scalar cast does).

use super::pool;
use super::simd::Simd;

/// Rounds `x` (m rows of k) to 8-bit integers, per block of `block` elements of a row: the block's scale is
/// `d = max|x| / 127` and each element becomes `round(x · (1 / d))` (ties to even; 0 for an all-zero block),
/// computed in f32. With `q4_order`, each run of 32 integers is stored with its even elements first, then
/// its odd ones (how a q4 weight's 16 bytes hold them: low nibbles, then high ones); the scales stay in
/// block order. Returns the integers (m·k) and the scales (m·k / block).
pub fn quantize_rows(x: &[f32], m: usize, k: usize, block: usize, q4_order: bool) -> (Vec<i8>, Vec<f32>) {
    let (mut q, mut d) = (vec![0i8; m * k], vec![0f32; m * k / block]);
    quantize_rows_inline(&x[..m * k], block, q4_order, &mut q, &mut d);
    (q, d)
}

/// [`quantize_rows`] compiled for `simd` (with AVX2 the rounding is one instruction, not a libm call).
pub(crate) fn quantize_rows_for(
    simd: Simd,
    x: &[f32],
    m: usize,
    k: usize,
    block: usize,
    q4: bool,
) -> (Vec<i8>, Vec<f32>) {
    let (mut q, mut d) = (Vec::new(), Vec::new());
    quantize_rows_into(simd, x, m, k, block, q4, &mut q, &mut d);
    (q, d)
}

/// [`quantize_rows_for`] into the caller's buffers (resized to m·k and m·k / block), which a decode step
/// keeps from one call to the next instead of allocating.
#[allow(clippy::too_many_arguments)]
pub(crate) fn quantize_rows_into(
    simd: Simd,
    x: &[f32],
    m: usize,
    k: usize,
    block: usize,
    q4: bool,
    q: &mut Vec<i8>,
    d: &mut Vec<f32>,
) {
    q.resize(m * k, 0);
    d.resize(m * k / block, 0.0);
    let (q, d) = (&mut q[..m * k], &mut d[..m * k / block]);
    // Rows in parallel for a prefill's many rows (the kernels wait for them), four to a task.
    const ROWS: usize = 4;
    let (qs, ds) = (pool::Shared::new(q), pool::Shared::new(d));
    pool::for_each(if m >= 2 * ROWS { m.div_ceil(ROWS) } else { 1 }, |t| {
        let rows = if m >= 2 * ROWS { t * ROWS..((t + 1) * ROWS).min(m) } else { 0..m };
        let (xr, n) = (&x[rows.start * k..rows.end * k], rows.len() * k);
        // SAFETY: task t alone writes its rows' elements of q and d.
        let (q, d) = unsafe { (qs.slice(rows.start * k, n), ds.slice(rows.start * k / block, n / block)) };
        if simd.vector() && block.is_multiple_of(16) {
            for (xs, (qs, ds)) in xr.chunks_exact(block).zip(q.chunks_exact_mut(block).zip(d.iter_mut())) {
                *ds = round_block(simd, xs, qs);
            }
            if q4 {
                to_q4_order(q);
            }
            return;
        }
        quantize_rows_inline(xr, block, q4, q, d)
    });
}

/// One block (a multiple of 16 elements) rounded into `q` by a vector level's kernel; returns its scale.
#[inline]
fn round_block(simd: Simd, x: &[f32], q: &mut [i8]) -> f32 {
    // SAFETY (each arm): the level is only chosen where the processor runs it (Simd::detect).
    match simd {
        #[cfg(target_arch = "x86_64")]
        Simd::Avx512 => unsafe { x86::block512(x, q) },
        #[cfg(target_arch = "x86_64")]
        Simd::Avx2 => unsafe { x86::block256(x, q) },
        #[cfg(any(target_arch = "aarch64", all(target_arch = "wasm32", target_feature = "simd128")))]
        Simd::Neon | Simd::Simd128 => unsafe { super::lanes128::round_block(x, q) },
        // A level of another processor (never chosen here): the scalar rule.
        _ => {
            let mut d = 0f32;
            quantize_rows_inline(x, x.len(), false, q, std::slice::from_mut(&mut d));
            d
        }
    }
}

/// `x`'s rows rounded to int8 per group of `block` into `q`, with the groups' scales in `d`.
#[inline(always)]
fn quantize_rows_inline(x: &[f32], block: usize, q4_order: bool, q: &mut [i8], d: &mut [f32]) {
    for (b, (xs, ds)) in x.chunks_exact(block).zip(d.iter_mut()).enumerate() {
        let amax = xs.iter().fold(0f32, |a, v| a.max(v.abs()));
        let scale = amax / 127.0;
        let inv = if scale != 0.0 { 1.0 / scale } else { 0.0 };
        *ds = scale;
        let qs = &mut q[b * block..(b + 1) * block];
        for (o, &v) in qs.iter_mut().zip(xs) {
            *o = (v * inv).round_ties_even().clamp(-127.0, 127.0) as i8;
        }
    }
    if q4_order {
        to_q4_order(q);
    }
}

/// Each run of 32 integers reordered: its even elements first, then its odd ones.
fn to_q4_order(q: &mut [i8]) {
    for run in q.chunks_exact_mut(32) {
        let mut t = [0i8; 32];
        for i in 0..16 {
            t[i] = run[2 * i];
            t[16 + i] = run[2 * i + 1];
        }
        run.copy_from_slice(&t);
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// One block (a multiple of 16 elements) rounded into `q`; returns its scale.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
    pub unsafe fn block512(x: &[f32], q: &mut [i8]) -> f32 {
        debug_assert!(x.len().is_multiple_of(16) && q.len() >= x.len());
        let (xp, qp) = (x.as_ptr(), q.as_mut_ptr());
        let mut amax = _mm512_setzero_ps();
        for i in (0..x.len()).step_by(16) {
            // SAFETY: i + 16 ≤ x.len(). A NaN lane leaves the maximum as it was (the second operand).
            amax = _mm512_max_ps(_mm512_abs_ps(unsafe { _mm512_loadu_ps(xp.add(i)) }), amax);
        }
        let scale = _mm512_reduce_max_ps(amax) / 127.0;
        let inv = _mm512_set1_ps(if scale != 0.0 { 1.0 / scale } else { 0.0 });
        let (lo, hi) = (_mm512_set1_ps(-127.0), _mm512_set1_ps(127.0));
        for i in (0..x.len()).step_by(16) {
            let v = _mm512_mul_ps(unsafe { _mm512_loadu_ps(xp.add(i)) }, inv);
            let r = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(v);
            let r = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask::<_CMP_ORD_Q>(r, r), r);
            let r = _mm512_cvtps_epi32(_mm512_min_ps(_mm512_max_ps(r, lo), hi));
            // SAFETY: i + 16 ≤ q.len().
            unsafe { _mm_storeu_si128(qp.add(i) as *mut __m128i, _mm512_cvtepi32_epi8(r)) };
        }
        scale
    }

    /// [`block512`] in 8-lane registers.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn block256(x: &[f32], q: &mut [i8]) -> f32 {
        debug_assert!(x.len().is_multiple_of(16) && q.len() >= x.len());
        let (xp, qp) = (x.as_ptr(), q.as_mut_ptr());
        let sign = _mm256_set1_ps(-0.0);
        let mut amax = _mm256_setzero_ps();
        for i in (0..x.len()).step_by(8) {
            // SAFETY: i + 8 ≤ x.len(). A NaN lane leaves the maximum as it was (the second operand).
            amax = _mm256_max_ps(_mm256_andnot_ps(sign, unsafe { _mm256_loadu_ps(xp.add(i)) }), amax);
        }
        let m4 = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps(amax, 1));
        let m2 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        let scale = _mm_cvtss_f32(_mm_max_ss(m2, _mm_shuffle_ps(m2, m2, 1))) / 127.0;
        let inv = _mm256_set1_ps(if scale != 0.0 { 1.0 / scale } else { 0.0 });
        let (lo, hi) = (_mm256_set1_ps(-127.0), _mm256_set1_ps(127.0));
        let round = |i: usize| {
            let v = _mm256_mul_ps(unsafe { _mm256_loadu_ps(xp.add(i)) }, inv);
            let r = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(v);
            let r = _mm256_and_ps(r, _mm256_cmp_ps::<_CMP_ORD_Q>(r, r));
            _mm256_cvtps_epi32(_mm256_min_ps(_mm256_max_ps(r, lo), hi))
        };
        for i in (0..x.len()).step_by(16) {
            // SAFETY: i + 16 ≤ x.len() = q.len()'s bound. Per 128-bit half, the packs give a's four then
            // b's four (elements 0-3, 8-11; then 4-7, 12-15): interleaving the halves' dwords puts them in order.
            let p = _mm256_packs_epi16(_mm256_packs_epi32(round(i), round(i + 8)), _mm256_setzero_si256());
            let v = _mm_unpacklo_epi32(_mm256_castsi256_si128(p), _mm256_extracti128_si256(p, 1));
            unsafe { _mm_storeu_si128(qp.add(i) as *mut __m128i, v) };
        }
        scale
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every level this processor runs gives the scalar rule's integers and scales, bit for bit: random rows,
    /// an all-zero block, NaN, infinities, ties, values at the clamp, each block size and both orders.
    #[test]
    fn vector_levels_round_as_the_scalar_rule() {
        let mut s = 0x2545_F491_4F6C_DD1Du64;
        let mut next = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 24) as f32 * 8.0 - 4.0
        };
        let (m, k) = (9, 256);
        let mut x: Vec<f32> = (0..m * k).map(|_| next()).collect();
        x[..64].fill(0.0);
        x[70] = f32::NAN;
        x[200] = f32::INFINITY;
        x[300] = f32::NEG_INFINITY;
        x[301] = f32::NAN;
        // Ties: 127 · v / max of a block whose maximum is 127 land on halves.
        for (i, v) in x[512..640].iter_mut().enumerate() {
            *v = if i == 0 { 127.0 } else { (i as f32) - 63.5 };
        }
        let levels: Vec<Simd> = Simd::available().into_iter().filter(|&l| l.vector()).collect();
        eprintln!("rounding checked at {levels:?} (the levels this processor runs)");
        for level in levels {
            for block in [16, 32, 64, 128] {
                for q4 in [false, true] {
                    let (q0, d0) = quantize_rows(&x, m, k, block, q4);
                    let (q1, d1) = quantize_rows_for(level, &x, m, k, block, q4);
                    assert_eq!(q0, q1, "{level:?} block {block} q4 {q4}");
                    let bits = |d: &[f32]| d.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                    assert_eq!(bits(&d0), bits(&d1), "{level:?} block {block} q4 {q4}");
                }
            }
        }
    }
}
