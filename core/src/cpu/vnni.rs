//! The AVX-512 VNNI kernels for q8 and q4 weights ([`super::Simd::Avx512`]; x86-64 only, as the module is):
//! nn.Linear rows ([`row`]) and the fused expert tensors ([`xw_tiles`]), a few activation rows a call, used
//! by decode and, four rows at a time, by prefill. 64 weights an instruction (`vpdpbusd`: 16 lanes, each the
//! sum of 4 products of an unsigned byte and a signed one).
//!
//! The activations are rounded exactly as on the other levels ([`super::gemv::quantize_rows`], int8 per
//! group), then stored in the order the weight bytes unpack to, so the integer sums are the same ones the
//! scalar and AVX2 kernels compute; only the order of the f32 additions differs.
//!
//! `vpdpbusd` multiplies unsigned bytes by signed ones, so the weights are made unsigned: q4's nibbles as
//! stored (the value + 8), q8's bytes with their top bit flipped (the value + 128). Each lane's sum then holds
//! `off · Σ x` too (off = 8 or 128), which the lane's accumulator starts without: a per-lane bias
//! `-off · Σ x` computed once per activation row. Taken for groups of 32 or a multiple of 64 along k, with
//! k a multiple of 64; other layouts stay on the AVX2 kernels.

use crate::quant::{DType, GroupAxis, ScaleType};

/// The activations of a few rows in the kernel's order, with their scales and lane biases.
#[derive(Default)]
pub(crate) struct Acts {
    /// m·k int8, per chunk of 64 in the order the chunk's weights unpack to (q8: natural; q4: the even
    /// elements of the first 32, of the second 32, then the odd ones of each).
    q: Vec<i8>,
    /// m·k/g scales, in group order.
    d: Vec<f32>,
    /// -off · Σ of each lane's 4 integers, summed over the lanes' chunks of a block (a block: 64 elements, or
    /// the group when it is larger): m · (k / block) · 16 i32.
    bias: Vec<i32>,
    /// The rounded integers in natural order, before they are reordered into `q`.
    natural: Vec<i8>,
}

thread_local! {
    /// The activations of the calls on this thread, kept so a decode step allocates nothing.
    pub(crate) static ACTS: std::cell::RefCell<Acts> = std::cell::RefCell::new(Acts::default());
}

/// Whether the VNNI kernel takes an `[n, k]` weight of `dtype`.
pub(crate) fn takes(dtype: DType, k: usize) -> bool {
    match dtype {
        DType::Q8(g) | DType::Q4(g) if g.axis == GroupAxis::Last => {
            let g = g.group as usize;
            k.is_multiple_of(64) && (g == 32 || g.is_multiple_of(64))
        }
        _ => false,
    }
}

impl Acts {
    /// Rounds `x` (m rows of k) for a weight of `bits` in groups of `g` (a layout [`takes`] accepts).
    pub(crate) fn fill(&mut self, x: &[f32], m: usize, k: usize, g: usize, bits: u32) {
        let mut q = std::mem::take(&mut self.natural);
        super::quantize::quantize_rows_into(super::Simd::Avx512, x, m, k, g, false, &mut q, &mut self.d);
        let off: i32 = if bits == 4 { 8 } else { 128 };
        let block = g.max(64);
        self.q.resize(m * k, 0);
        self.bias.clear();
        self.bias.resize(m * (k / block) * 16, 0);
        for (c, (src, dst)) in q.chunks_exact(64).zip(self.q.chunks_exact_mut(64)).enumerate() {
            // Chunk c is chunk c % (k / 64) of its row; its block is that times 64 / block.
            let (r, cr) = (c / (k / 64), c % (k / 64));
            let b = r * (k / block) + cr * 64 / block;
            // SAFETY: Acts are only filled where the processor runs Avx512 (the callers' level); the chunks
            // are 64 bytes and the block's 16 biases are in `bias`.
            unsafe { x86::chunk(src, dst, bits == 4, off, &mut self.bias[b * 16..b * 16 + 16]) };
        }
        self.natural = q;
    }
}

/// `acc[r] = x[r0 + r] · w_row` for r < m (1..=4): one quantized weight row (`row`: k elements' bytes) with its
/// k / g scales as stored (`scales`: 2 bytes each, little-endian, of type `st`). Safety: the processor runs
/// [`super::Simd::Avx512`]; `acts` was filled for this layout, k and at least r0 + m rows.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn row(
    bits: u32,
    g: usize,
    st: ScaleType,
    row: &[u8],
    scales: &[u8],
    acts: &Acts,
    r0: usize,
    m: usize,
    k: usize,
    acc: &mut [f32; 4],
) {
    debug_assert!(row.len() * 8 >= k * bits as usize && scales.len() >= 2 * (k / g) && acts.q.len() >= (r0 + m) * k);
    let bf16 = st == ScaleType::BF16;
    // SAFETY: the caller's.
    unsafe {
        match m {
            1 => x86::row::<1>(bits, g, bf16, row, scales, acts, r0, k, acc),
            2 => x86::row::<2>(bits, g, bf16, row, scales, acts, r0, k, acc),
            3 => x86::row::<3>(bits, g, bf16, row, scales, acts, r0, k, acc),
            _ => x86::row::<4>(bits, g, bf16, row, scales, acts, r0, k, acc),
        }
    }
}

/// `acc[r] = x[r] · w` for r < m (1..=4): an f32 weight row (k elements), 16 lanes an instruction. Safety: the
/// processor runs [`super::Simd::Avx512`]; `w` holds k elements and `x` m rows of k.
pub(crate) unsafe fn row_f32(w: &[f32], x: &[f32], m: usize, k: usize, acc: &mut [f32; 4]) {
    assert!(w.len() >= k && x.len() >= m * k);
    // SAFETY: the caller's, and the bounds just checked.
    unsafe {
        match m {
            1 => x86::row_f32::<1>(w, x, k, acc),
            2 => x86::row_f32::<2>(w, x, k, acc),
            3 => x86::row_f32::<3>(w, x, k, acc),
            _ => x86::row_f32::<4>(w, x, k, acc),
        }
    }
}

/// [`row_f32`] for a bf16 (`bf16`) or f16 weight row, its elements widened to f32 in registers.
pub(crate) unsafe fn row_half(bf16: bool, w: &[u16], x: &[f32], m: usize, k: usize, acc: &mut [f32; 4]) {
    assert!(w.len() >= k && x.len() >= m * k);
    // SAFETY: the caller's, and the bounds just checked.
    unsafe {
        match (m, bf16) {
            (1, true) => x86::row_half::<1, true>(w, x, k, acc),
            (2, true) => x86::row_half::<2, true>(w, x, k, acc),
            (3, true) => x86::row_half::<3, true>(w, x, k, acc),
            (_, true) => x86::row_half::<4, true>(w, x, k, acc),
            (1, false) => x86::row_half::<1, false>(w, x, k, acc),
            (2, false) => x86::row_half::<2, false>(w, x, k, acc),
            (3, false) => x86::row_half::<3, false>(w, x, k, acc),
            (_, false) => x86::row_half::<4, false>(w, x, k, acc),
        }
    }
}

/// `out[j] = x · w[j·k..(j + 1)·k]` for j < n: one activation row against n f32 weight rows, four rows read
/// at a time (four streams in flight, one call and one load of x per four rows). Each row's sum is
/// [`row_f32`]'s with m = 1, bit for bit. Safety: the processor runs [`super::Simd::Avx512`]; `w` holds n rows
/// of k, `x` k elements, `out` n.
pub(crate) unsafe fn rows_f32_one(w: &[f32], x: &[f32], k: usize, out: &mut [f32]) {
    assert!(w.len() >= out.len() * k && x.len() >= k);
    // SAFETY: the caller's, and the bounds just checked.
    unsafe { x86::rows_f32_one(w, x, k, out) }
}

#[allow(clippy::needless_range_loop)] // rows r < M index several arrays in step
mod x86 {
    use super::Acts;
    use std::arch::x86_64::*;

    /// One chunk of 64 rounded activations into the kernel's order (q8: as they are; q4: the even elements of
    /// the first 32, of the second 32, then the odd ones of each), its lanes' sums of four times -off added
    /// to `bias`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    pub unsafe fn chunk(src: &[i8], dst: &mut [i8], q4: bool, off: i32, bias: &mut [i32]) {
        assert!(src.len() == 64 && dst.len() == 64 && bias.len() == 16);
        // SAFETY: 64 bytes each (just checked).
        let v = unsafe { _mm512_loadu_si512(src.as_ptr() as *const __m512i) };
        let v = if q4 {
            // Per 128-bit lane its even bytes, then its odd ones; then the lanes' evens first, odds last.
            let evens_odds = _mm512_set4_epi32(0x0F0D_0B09, 0x0705_0301, 0x0E0C_0A08, 0x0604_0200);
            let lanes = _mm512_setr_epi64(0, 2, 4, 6, 1, 3, 5, 7);
            _mm512_permutexvar_epi64(lanes, _mm512_shuffle_epi8(v, evens_odds))
        } else {
            v
        };
        // SAFETY: as above.
        unsafe { _mm512_storeu_si512(dst.as_mut_ptr() as *mut __m512i, v) };
        // Each lane's four integers summed (times one, as unsigned bytes).
        let sums = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_set1_epi8(1), v);
        let bp = bias.as_mut_ptr() as *mut __m512i;
        // SAFETY: 16 i32 (checked).
        unsafe {
            _mm512_storeu_si512(
                bp,
                _mm512_sub_epi32(_mm512_loadu_si512(bp), _mm512_mullo_epi32(sums, _mm512_set1_epi32(off))),
            )
        };
    }

    /// See [`super::row_f32`]: two accumulators of 16 lanes per activation row.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    pub unsafe fn row_f32<const M: usize>(w: &[f32], x: &[f32], k: usize, acc: &mut [f32; 4]) {
        // SAFETY: the caller's.
        unsafe { row_float::<M, 0>(w.as_ptr() as *const u8, x, k, acc) }
    }

    /// See [`super::row_half`]: [`row_f32`] with the weights widened in registers.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    pub unsafe fn row_half<const M: usize, const BF16: bool>(w: &[u16], x: &[f32], k: usize, acc: &mut [f32; 4]) {
        let wp = w.as_ptr() as *const u8;
        // SAFETY: the caller's.
        unsafe {
            if BF16 {
                row_float::<M, 1>(wp, x, k, acc)
            } else {
                row_float::<M, 2>(wp, x, k, acc)
            }
        }
    }

    /// `acc[r] = x[r] · w` for r < M: k weights at `w` (KIND as [`super::super::xw512::load`]'s), 32 at a
    /// time into two accumulators per row, the rest in order after their sum.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn row_float<const M: usize, const KIND: u8>(w: *const u8, x: &[f32], k: usize, acc: &mut [f32; 4]) {
        use super::super::xw512::load;
        let xp = x.as_ptr();
        let k32 = k / 32 * 32;
        let mut a = [[_mm512_setzero_ps(); 2]; M];
        let mut i = 0;
        while i < k32 {
            // SAFETY: i + 32 ≤ k, the weights' length, and row r of x holds k elements (the caller's bounds).
            let (w0, w1) = unsafe { (load::<KIND>(w, i, 0xFFFF), load::<KIND>(w, i + 16, 0xFFFF)) };
            for r in 0..M {
                let p = unsafe { xp.add(r * k + i) };
                a[r][0] = _mm512_fmadd_ps(w0, unsafe { _mm512_loadu_ps(p) }, a[r][0]);
                a[r][1] = _mm512_fmadd_ps(w1, unsafe { _mm512_loadu_ps(p.add(16)) }, a[r][1]);
            }
            i += 32;
        }
        for r in 0..M {
            let mut s = _mm512_reduce_add_ps(_mm512_add_ps(a[r][0], a[r][1]));
            for t in k32..k {
                // SAFETY: t < k.
                let v = unsafe {
                    match KIND {
                        0 => *(w as *const f32).add(t),
                        1 => f32::from_bits((*(w as *const u16).add(t) as u32) << 16),
                        _ => half::f16::from_bits(*(w as *const u16).add(t)).to_f32(),
                    }
                };
                s += x[r * k + t] * v;
            }
            acc[r] = s;
        }
    }

    /// See [`super::rows_f32_one`].
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    pub unsafe fn rows_f32_one(w: &[f32], x: &[f32], k: usize, out: &mut [f32]) {
        let n = out.len();
        let n4 = n / 4 * 4;
        let k32 = k / 32 * 32;
        let xp = x.as_ptr();
        let mut j = 0;
        while j < n4 {
            // SAFETY: rows j..j + 4 are in w (n·k ≤ w.len(), checked by the caller).
            let wp = unsafe { w.as_ptr().add(j * k) };
            let mut a = [[_mm512_setzero_ps(); 2]; 4];
            let mut i = 0;
            while i < k32 {
                // SAFETY: i + 32 ≤ k: in x and in each of the four rows.
                let (x0, x1) = unsafe { (_mm512_loadu_ps(xp.add(i)), _mm512_loadu_ps(xp.add(i + 16))) };
                for r in 0..4 {
                    let p = unsafe { wp.add(r * k + i) };
                    a[r][0] = _mm512_fmadd_ps(unsafe { _mm512_loadu_ps(p) }, x0, a[r][0]);
                    a[r][1] = _mm512_fmadd_ps(unsafe { _mm512_loadu_ps(p.add(16)) }, x1, a[r][1]);
                }
                i += 32;
            }
            for r in 0..4 {
                let mut s = _mm512_reduce_add_ps(_mm512_add_ps(a[r][0], a[r][1]));
                for t in k32..k {
                    s += x[t] * w[(j + r) * k + t];
                }
                out[j + r] = s;
            }
            j += 4;
        }
        for j in n4..n {
            let mut acc = [0f32; 4];
            // SAFETY: row j is in w.
            unsafe { row_f32::<1>(&w[j * k..(j + 1) * k], x, k, &mut acc) };
            out[j] = acc[0];
        }
    }

    /// Chunk c (64 weights) of a row as unsigned bytes, in the order [`Acts`] stores the activations.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn weights(bits: u32, row: *const u8, c: usize) -> __m512i {
        if bits == 4 {
            // SAFETY: chunk c's 32 bytes are in the row (64 · chunks ≤ k).
            let v = unsafe { _mm256_loadu_si256(row.add(32 * c) as *const __m256i) };
            let both = _mm512_inserti64x4(_mm512_castsi256_si512(v), _mm256_srli_epi16(v, 4), 1);
            _mm512_and_si512(both, _mm512_set1_epi8(15))
        } else {
            // SAFETY: chunk c's 64 bytes are in the row.
            let v = unsafe { _mm512_loadu_si512(row.add(64 * c) as *const __m512i) };
            _mm512_xor_si512(v, _mm512_set1_epi8(-128))
        }
    }

    /// Four scales from scale `i` (f16 or bf16 bytes) as f32.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn four_scales(bf16: bool, sp: *const u8, i: usize) -> __m128 {
        // SAFETY: scales i..i + 4 are in the caller's slice.
        let h = unsafe { _mm_loadl_epi64(sp.add(2 * i) as *const __m128i) };
        if bf16 {
            _mm_castsi128_ps(_mm_slli_epi32(_mm_cvtepu16_epi32(h), 16))
        } else {
            _mm_cvtph_ps(h)
        }
    }

    /// Scale `i` (f16 or bf16 bytes) as f32.
    #[inline]
    fn one_scale(bf16: bool, scales: &[u8], i: usize) -> f32 {
        let b = u16::from_le_bytes([scales[2 * i], scales[2 * i + 1]]);
        if bf16 {
            f32::from_bits((b as u32) << 16)
        } else {
            half::f16::from_bits(b).to_f32()
        }
    }

    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    pub(super) unsafe fn row<const M: usize>(
        bits: u32,
        g: usize,
        bf16: bool,
        row: &[u8],
        scales: &[u8],
        acts: &Acts,
        r0: usize,
        k: usize,
        acc: &mut [f32; 4],
    ) {
        let groups = k / g;
        let chunks = k / 64;
        // Rows r0.. of the activations: integers, biases (k / max(g, 64) blocks of 16 a row) and scales.
        let blocks = k / g.max(64);
        let d = &acts.d[r0 * groups..];
        let (rp, sp, dp) = (row.as_ptr(), scales.as_ptr(), d.as_ptr());
        let (xp, bp) = (acts.q[r0 * k..].as_ptr(), acts.bias[r0 * blocks * 16..].as_ptr());
        let mut a = [[_mm512_setzero_ps(); 2]; M];
        // Chunk c's products for row r (biased), as f32.
        let prod = |w: __m512i, r: usize, c: usize, blk: usize| {
            // SAFETY: chunk c < k / 64 of row r < M of the activations and block blk's 16 biases.
            let x = unsafe { _mm512_loadu_si512(xp.add(r * k + 64 * c) as *const __m512i) };
            let b = unsafe { _mm512_loadu_si512(bp.add(blk * 16) as *const __m512i) };
            _mm512_dpbusd_epi32(b, w, x)
        };
        if g == 32 {
            // Each chunk holds two groups; the lanes of the first: q8 0-7, q4 0-3 and 8-11. A pair of chunks
            // takes four scales: the first chunk's lanes pick among elements 0-1, the second's among 2-3.
            let (p0, p1) = if bits == 4 {
                (
                    _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1),
                    _mm512_setr_epi32(2, 2, 2, 2, 3, 3, 3, 3, 2, 2, 2, 2, 3, 3, 3, 3),
                )
            } else {
                (
                    _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1),
                    _mm512_setr_epi32(2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3),
                )
            };
            let mut c = 0;
            while c + 2 <= chunks {
                // SAFETY: chunks c, c + 1 are in the row, groups 2c..2c + 4 have scales.
                let (w0, w1) = unsafe { (weights(bits, rp, c), weights(bits, rp, c + 1)) };
                let dw = unsafe { four_scales(bf16, sp, 2 * c) };
                for r in 0..M {
                    // SAFETY: groups 2c..2c + 4 of row r's activation scales.
                    let s = _mm_mul_ps(dw, unsafe { _mm_loadu_ps(dp.add(r * groups + 2 * c)) });
                    let s = _mm512_castps128_ps512(s);
                    let t0 = _mm512_cvtepi32_ps(prod(w0, r, c, r * chunks + c));
                    let t1 = _mm512_cvtepi32_ps(prod(w1, r, c + 1, r * chunks + c + 1));
                    a[r][0] = _mm512_fmadd_ps(t0, _mm512_permutexvar_ps(p0, s), a[r][0]);
                    a[r][1] = _mm512_fmadd_ps(t1, _mm512_permutexvar_ps(p1, s), a[r][1]);
                }
                c += 2;
            }
            if c < chunks {
                // SAFETY: chunk c is in the row.
                let w0 = unsafe { weights(bits, rp, c) };
                let (s0, s1) = (one_scale(bf16, scales, 2 * c), one_scale(bf16, scales, 2 * c + 1));
                for r in 0..M {
                    let d = &d[r * groups + 2 * c..];
                    let s = _mm512_castps128_ps512(_mm_setr_ps(s0 * d[0], s1 * d[1], 0.0, 0.0));
                    let t0 = _mm512_cvtepi32_ps(prod(w0, r, c, r * chunks + c));
                    a[r][0] = _mm512_fmadd_ps(t0, _mm512_permutexvar_ps(p0, s), a[r][0]);
                }
            }
        } else {
            let per = g / 64;
            for gi in 0..groups {
                let mut t = [_mm512_setzero_si512(); M];
                for (c, first) in (gi * per..(gi + 1) * per).zip([true].into_iter().chain(std::iter::repeat(false))) {
                    // SAFETY: chunk c is in the row.
                    let w = unsafe { weights(bits, rp, c) };
                    for (r, t) in t.iter_mut().enumerate() {
                        // The group's biases go in with its first chunk.
                        let x = unsafe { _mm512_loadu_si512(xp.add(r * k + 64 * c) as *const __m512i) };
                        if first {
                            *t = prod(w, r, c, r * groups + gi);
                        } else {
                            *t = _mm512_dpbusd_epi32(*t, w, x);
                        }
                    }
                }
                let dw = one_scale(bf16, scales, gi);
                for r in 0..M {
                    let s = _mm512_set1_ps(dw * d[r * groups + gi]);
                    a[r][0] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(t[r]), s, a[r][0]);
                }
            }
        }
        for r in 0..M {
            acc[r] = _mm512_reduce_add_ps(_mm512_add_ps(a[r][0], a[r][1]));
        }
    }
}
