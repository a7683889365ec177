//! The NEON kernels ([`super::Simd::Neon`]; aarch64 only, as the module is): the decode GEMV rows of the float
//! formats and of q8/q4 weights, the activations' rounding to int8 and the expert tensors' integer group sums,
//! in 128-bit registers. The integer dot products take the dot-product extension's `sdot` (Armv8.2 and later:
//! Apple M-series, AWS Graviton 2 and later, Cortex-A76 and later), 16 byte products an instruction; it is
//! written as inline assembly because its intrinsic is not yet stable Rust. The other kernels (attention, the
//! norms, the f32 expert GEMM) are plain Rust at every level, which the compiler vectorizes for NEON, part of
//! every aarch64 processor.
//!
//! Each computes what the scalar kernel does: the same integer sums and scales, the same rounding of the
//! activations bit for bit; only the order of the f32 additions differs.

use std::arch::aarch64::*;

/// `acc + Σ` of each lane's four neighbouring byte products.
#[inline]
#[target_feature(enable = "neon,dotprod")]
fn sdot(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    let mut acc = acc;
    // SAFETY: sdot reads and writes registers only; the caller's target features include dotprod.
    unsafe {
        core::arch::asm!(
            "sdot {0:v}.4s, {1:v}.16b, {2:v}.16b",
            inout(vreg) acc,
            in(vreg) a,
            in(vreg) b,
            options(pure, nomem, nostack, preserves_flags)
        )
    };
    acc
}

/// The shared loop of the float formats: `load(i)` gives 4 weight elements from element i as f32.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn rows_with(
    x: &[f32],
    m: usize,
    k: usize,
    acc: &mut [f32; 4],
    load: impl Fn(usize) -> float32x4_t,
    tail: impl Fn(usize) -> f32,
) {
    let mut a = [[vdupq_n_f32(0.0); 4]; 4];
    let k16 = k / 16 * 16;
    let xp = x.as_ptr();
    let mut i = 0;
    while i < k16 {
        let w = [load(i), load(i + 4), load(i + 8), load(i + 12)];
        for (r, ar) in a[..m].iter_mut().enumerate() {
            // SAFETY: i + 16 ≤ k, and row r of x holds k elements.
            let p = unsafe { xp.add(r * k + i) };
            for (j, &wj) in w.iter().enumerate() {
                ar[j] = vfmaq_f32(ar[j], wj, unsafe { vld1q_f32(p.add(4 * j)) });
            }
        }
        i += 16;
    }
    for r in 0..m {
        let mut s = vaddvq_f32(vaddq_f32(vaddq_f32(a[r][0], a[r][1]), vaddq_f32(a[r][2], a[r][3])));
        for t in k16..k {
            s += x[r * k + t] * tail(t);
        }
        acc[r] = s;
    }
}

/// `acc[r] = x[r] · w` for r < m (x: m rows of k = w.len()).
#[target_feature(enable = "neon")]
pub unsafe fn rows_f32(w: &[f32], x: &[f32], m: usize, k: usize, acc: &mut [f32; 4]) {
    let p = w.as_ptr();
    // SAFETY: rows_with asks for 4 elements from i only while i + 4 ≤ k = w.len().
    unsafe { rows_with(x, m, k, acc, |i| vld1q_f32(p.add(i)), |t| w[t]) }
}

/// [`rows_f32`] for a bf16 row (each element's bits are the top half of its f32's).
#[target_feature(enable = "neon")]
pub unsafe fn rows_bf16(w: &[u16], x: &[f32], m: usize, k: usize, acc: &mut [f32; 4]) {
    let p = w.as_ptr();
    // SAFETY: 4 u16 from i, i + 4 ≤ k = w.len().
    let load = |i: usize| vreinterpretq_f32_u32(vshll_n_u16::<16>(unsafe { vld1_u16(p.add(i)) }));
    unsafe { rows_with(x, m, k, acc, load, |t| f32::from_bits((w[t] as u32) << 16)) }
}

/// Run `c` of a q8 or q4 row (32 weights) as two vectors of signed bytes, in the order their activations are
/// stored: q8 elements 0-15 and 16-31; q4 the low nibbles (even elements) and the high ones (odd elements).
#[inline]
#[target_feature(enable = "neon")]
unsafe fn weights(bits: u32, row: *const u8, c: usize) -> (int8x16_t, int8x16_t) {
    if bits == 8 {
        // SAFETY: run c's 32 bytes are in the row (the caller's bound: 32 · runs ≤ k).
        unsafe { (vld1q_s8(row.add(32 * c) as *const i8), vld1q_s8(row.add(32 * c + 16) as *const i8)) }
    } else {
        // SAFETY: run c's 16 bytes are in the row.
        let b = unsafe { vld1q_u8(row.add(16 * c)) };
        let eight = vdupq_n_s8(8);
        let lo = vreinterpretq_s8_u8(vandq_u8(b, vdupq_n_u8(15)));
        let hi = vreinterpretq_s8_u8(vshrq_n_u8::<4>(b));
        (vsubq_s8(lo, eight), vsubq_s8(hi, eight))
    }
}

/// `acc[r] = Σ_groups xd[r, g] · scales[g] · Σ_{i in g} xq[r, i] · wq[i]` for one q8 or q4 row (groups of 16 or
/// a multiple of 32; k a multiple of 32), as `gemv::quant_row` computes it.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "neon,dotprod")]
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
    let zero = vdupq_n_s32(0);
    let mut a = [vdupq_n_f32(0.0); 4];
    // SAFETY (loads below): run c's 32 activations are within row r of xq (m rows of k; 32 · (c + 1) ≤ k).
    let acts = |r: usize, c: usize| unsafe {
        let p = xp.add(r * k + 32 * c);
        (vld1q_s8(p), vld1q_s8(p.add(16)))
    };
    if g == 16 {
        // Each run of 32 holds two groups: q8's first vector is the first group, its second the second; in q4's
        // two vectors (low nibbles, high ones) bytes 0-7 are the first group and 8-15 the second, so lanes 0-1
        // of the sums are the first group and lanes 2-3 the second.
        for c in 0..k / 32 {
            // SAFETY: run c is within the row (k is a multiple of 32).
            let (w0, w1) = unsafe { weights(bits, rp, c) };
            let (s0, s1) = (scales[2 * c], scales[2 * c + 1]);
            for r in 0..m {
                let (x0, x1) = acts(r, c);
                let (d0, d1) = (xd[r * groups + 2 * c] * s0, xd[r * groups + 2 * c + 1] * s1);
                if bits == 8 {
                    a[r] = vfmaq_n_f32(a[r], vcvtq_f32_s32(sdot(zero, w0, x0)), d0);
                    a[r] = vfmaq_n_f32(a[r], vcvtq_f32_s32(sdot(zero, w1, x1)), d1);
                } else {
                    let d = vcombine_f32(vdup_n_f32(d0), vdup_n_f32(d1));
                    a[r] = vfmaq_f32(a[r], vcvtq_f32_s32(sdot(sdot(zero, w0, x0), w1, x1)), d);
                }
            }
        }
    } else {
        let runs = g / 32;
        for gi in 0..groups {
            let mut isum = [zero; 4];
            for c in gi * runs..(gi + 1) * runs {
                // SAFETY: as above.
                let (w0, w1) = unsafe { weights(bits, rp, c) };
                for (r, s) in isum[..m].iter_mut().enumerate() {
                    let (x0, x1) = acts(r, c);
                    *s = sdot(sdot(*s, w0, x0), w1, x1);
                }
            }
            for r in 0..m {
                a[r] = vfmaq_n_f32(a[r], vcvtq_f32_s32(isum[r]), xd[r * groups + gi] * scales[gi]);
            }
        }
    }
    for r in 0..m {
        acc[r] = vaddvq_f32(a[r]);
    }
}

/// One block (a multiple of 16 elements) rounded into `q` as `quantize::quantize_rows` does; returns its
/// scale. The maximum ignores NaN as `f32::max` does (`fmaxnm`), and a NaN rounds to 0 as the scalar cast does
/// (`fcvtzs`).
#[target_feature(enable = "neon")]
pub unsafe fn round_block(x: &[f32], q: &mut [i8]) -> f32 {
    debug_assert!(x.len().is_multiple_of(16) && q.len() >= x.len());
    let mut mx = vdupq_n_f32(0.0);
    for c in x.chunks_exact(4) {
        // SAFETY: c holds 4 elements.
        mx = vmaxnmq_f32(mx, vabsq_f32(unsafe { vld1q_f32(c.as_ptr()) }));
    }
    let scale = vmaxnmvq_f32(mx) / 127.0;
    let inv = if scale != 0.0 { 1.0 / scale } else { 0.0 };
    let (lo, hi) = (vdupq_n_f32(-127.0), vdupq_n_f32(127.0));
    for (xs, qs) in x.chunks_exact(16).zip(q.chunks_exact_mut(16)) {
        // SAFETY: xs holds 16 elements.
        let int = |j: usize| {
            let v = vrndnq_f32(vmulq_n_f32(unsafe { vld1q_f32(xs.as_ptr().add(4 * j)) }, inv));
            vcvtq_s32_f32(vminq_f32(vmaxq_f32(v, lo), hi))
        };
        let h0 = vcombine_s16(vmovn_s32(int(0)), vmovn_s32(int(1)));
        let h1 = vcombine_s16(vmovn_s32(int(2)), vmovn_s32(int(3)));
        // SAFETY: qs holds 16 elements.
        unsafe { vst1q_s8(qs.as_mut_ptr(), vcombine_s8(vmovn_s16(h0), vmovn_s16(h1))) };
    }
    scale
}

/// The integer sums of `xw::group_ints` (`isum[r, j] = Σ_{p < g} xq[r · k + p] · q(start + p · ld + j)`) for
/// the first multiple of 16 columns; returns how many. Safety: the bounds of the scalar loop (the caller's
/// `integer_path` guard: q4 elements start on whole bytes).
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "neon")]
pub unsafe fn group_ints(
    bits: u32,
    bytes: &[u8],
    start: usize,
    ld: usize,
    g: usize,
    xq: &[i8],
    k: usize,
    m: usize,
    nb: usize,
    isum: &mut [i32],
) -> usize {
    let nb16 = nb / 16 * 16;
    let bp = bytes.as_ptr();
    for cb in (0..nb16).step_by(16) {
        let mut acc = [[vdupq_n_s32(0); 4]; 4];
        for p in 0..g {
            let e = start + p * ld + cb;
            let w = if bits == 8 {
                // SAFETY: row p's columns cb..cb + 16 are in the tensor.
                unsafe { vld1q_s8(bp.add(e) as *const i8) }
            } else {
                // SAFETY: as above; e is even, so the 16 elements are 8 whole bytes.
                let b = unsafe { vld1_u8(bp.add(e / 2)) };
                let (lo, hi) = (vand_u8(b, vdup_n_u8(15)), vshr_n_u8::<4>(b));
                vsubq_s8(vreinterpretq_s8_u8(vcombine_u8(vzip1_u8(lo, hi), vzip2_u8(lo, hi))), vdupq_n_s8(8))
            };
            let (wl, wh) = (vmovl_s8(vget_low_s8(w)), vmovl_high_s8(w));
            for (r, a) in acc[..m].iter_mut().enumerate() {
                let xv = xq[r * k + p] as i16;
                a[0] = vmlal_n_s16(a[0], vget_low_s16(wl), xv);
                a[1] = vmlal_high_n_s16(a[1], wl, xv);
                a[2] = vmlal_n_s16(a[2], vget_low_s16(wh), xv);
                a[3] = vmlal_high_n_s16(a[3], wh, xv);
            }
        }
        for (r, a) in acc[..m].iter().enumerate() {
            // SAFETY: row r's columns cb..cb + 16 of isum (m · nb values).
            let o = unsafe { isum.as_mut_ptr().add(r * nb + cb) };
            for (j, &v) in a.iter().enumerate() {
                unsafe { vst1q_s32(o.add(4 * j), v) };
            }
        }
    }
    nb16
}
