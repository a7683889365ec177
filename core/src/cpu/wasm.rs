//! The WebAssembly SIMD kernels ([`super::Simd::Simd128`]; wasm32 built with the `simd128` target feature, as
//! the browser build is: every browser with WebGPU runs it): the decode GEMV rows of the float formats and of
//! q8/q4 weights, the activations' rounding to int8 and the expert tensors' integer group sums, in 128-bit
//! registers. WebAssembly has no 8-bit dot product: byte products are widened to 16 bits (`extmul`) and
//! added in pairs to 32. The other kernels are plain Rust, which the compiler vectorizes for SIMD128 when
//! the build enables it.
//!
//! Each computes what the scalar kernel does: the same integer sums and scales, the same rounding of the
//! activations bit for bit; only the order of the f32 additions differs. The functions are those of neon.rs,
//! with its contract (`unsafe`: the caller's bounds, as the scalar loops check them; the build runs SIMD128),
//! so that one dispatch serves both (`cpu::lanes128`).

use core::arch::wasm32::*;

/// The shared loop of the float formats: `load(i)` gives 4 weight elements from element i as f32.
#[inline(always)]
fn rows_with(
    x: &[f32],
    m: usize,
    k: usize,
    acc: &mut [f32; 4],
    load: impl Fn(usize) -> v128,
    tail: impl Fn(usize) -> f32,
) {
    let mut a = [[f32x4_splat(0.0); 4]; 4];
    let k16 = k / 16 * 16;
    let mut i = 0;
    while i < k16 {
        let w = [load(i), load(i + 4), load(i + 8), load(i + 12)];
        for (r, ar) in a[..m].iter_mut().enumerate() {
            let xr = &x[r * k + i..r * k + i + 16];
            for (j, &wj) in w.iter().enumerate() {
                // SAFETY: xr holds 16 elements (bounds-checked above).
                let xv = unsafe { v128_load(xr.as_ptr().add(4 * j) as *const v128) };
                ar[j] = f32x4_add(ar[j], f32x4_mul(wj, xv));
            }
        }
        i += 16;
    }
    for r in 0..m {
        let v = f32x4_add(f32x4_add(a[r][0], a[r][1]), f32x4_add(a[r][2], a[r][3]));
        let mut s = (f32x4_extract_lane::<0>(v) + f32x4_extract_lane::<1>(v))
            + (f32x4_extract_lane::<2>(v) + f32x4_extract_lane::<3>(v));
        for t in k16..k {
            s += x[r * k + t] * tail(t);
        }
        acc[r] = s;
    }
}

/// `acc[r] = x[r] · w` for r < m (x: m rows of k = w.len()).
pub unsafe fn rows_f32(w: &[f32], x: &[f32], m: usize, k: usize, acc: &mut [f32; 4]) {
    let w = &w[..k];
    // SAFETY: rows_with asks for 4 elements from i only while i + 4 ≤ k = w.len().
    rows_with(x, m, k, acc, |i| unsafe { v128_load(w.as_ptr().add(i) as *const v128) }, |t| w[t])
}

/// [`rows_f32`] for a bf16 row (each element's bits are the top half of its f32's).
pub unsafe fn rows_bf16(w: &[u16], x: &[f32], m: usize, k: usize, acc: &mut [f32; 4]) {
    let w = &w[..k];
    let load = |i: usize| {
        // SAFETY: 4 u16 from i, i + 4 ≤ k = w.len().
        let h = unsafe { v128_load64_zero(w.as_ptr().add(i) as *const u64) };
        i32x4_shl(u32x4_extend_low_u16x8(h), 16)
    };
    rows_with(x, m, k, acc, load, |t| f32::from_bits((w[t] as u32) << 16))
}

/// The byte products of `a` and `b` summed into i32 lanes: (bytes 0-7, bytes 8-15), each as four pair sums.
#[inline(always)]
fn dot16(a: v128, b: v128) -> (v128, v128) {
    let lo = i32x4_extadd_pairwise_i16x8(i16x8_extmul_low_i8x16(a, b));
    let hi = i32x4_extadd_pairwise_i16x8(i16x8_extmul_high_i8x16(a, b));
    (lo, hi)
}

/// Run `c` of a q8 or q4 row (32 weights) as two vectors of signed bytes, in the order their activations are
/// stored: q8 elements 0-15 and 16-31; q4 the low nibbles (even elements) and the high ones (odd elements).
#[inline(always)]
fn weights(bits: u32, row: &[u8], c: usize) -> (v128, v128) {
    if bits == 8 {
        let r = &row[32 * c..32 * c + 32];
        // SAFETY: r holds 32 bytes.
        unsafe { (v128_load(r.as_ptr() as *const v128), v128_load(r.as_ptr().add(16) as *const v128)) }
    } else {
        let r = &row[16 * c..16 * c + 16];
        // SAFETY: r holds 16 bytes.
        let b = unsafe { v128_load(r.as_ptr() as *const v128) };
        let eight = i8x16_splat(8);
        (i8x16_sub(v128_and(b, u8x16_splat(15)), eight), i8x16_sub(u8x16_shr(b, 4), eight))
    }
}

/// `acc[r] = Σ_groups xd[r, g] · scales[g] · Σ_{i in g} xq[r, i] · wq[i]` for one q8 or q4 row (groups of 16 or
/// a multiple of 32; k a multiple of 32), as `gemv::quant_row` computes it.
#[allow(clippy::too_many_arguments)]
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
    let mut a = [f32x4_splat(0.0); 4];
    let acts = |r: usize, c: usize| {
        let s = &xq[r * k + 32 * c..r * k + 32 * c + 32];
        // SAFETY: s holds 32 bytes.
        unsafe { (v128_load(s.as_ptr() as *const v128), v128_load(s.as_ptr().add(16) as *const v128)) }
    };
    if g == 16 {
        // Each run of 32 holds two groups: q8's first vector is the first group, its second the second; in q4's
        // two vectors (low nibbles, high ones) bytes 0-7 are the first group and 8-15 the second.
        for c in 0..k / 32 {
            let (w0, w1) = weights(bits, row, c);
            let (s0, s1) = (scales[2 * c], scales[2 * c + 1]);
            for r in 0..m {
                let (x0, x1) = acts(r, c);
                let (d0, d1) = (xd[r * groups + 2 * c] * s0, xd[r * groups + 2 * c + 1] * s1);
                let ((a0, b0), (a1, b1)) = (dot16(w0, x0), dot16(w1, x1));
                let (first, second) = if bits == 8 {
                    (i32x4_add(a0, b0), i32x4_add(a1, b1))
                } else {
                    (i32x4_add(a0, a1), i32x4_add(b0, b1))
                };
                a[r] = f32x4_add(a[r], f32x4_mul(f32x4_convert_i32x4(first), f32x4_splat(d0)));
                a[r] = f32x4_add(a[r], f32x4_mul(f32x4_convert_i32x4(second), f32x4_splat(d1)));
            }
        }
    } else {
        let runs = g / 32;
        for gi in 0..groups {
            let mut isum = [i32x4_splat(0); 4];
            for c in gi * runs..(gi + 1) * runs {
                let (w0, w1) = weights(bits, row, c);
                for (r, s) in isum[..m].iter_mut().enumerate() {
                    let (x0, x1) = acts(r, c);
                    let ((a0, b0), (a1, b1)) = (dot16(w0, x0), dot16(w1, x1));
                    *s = i32x4_add(i32x4_add(*s, i32x4_add(a0, b0)), i32x4_add(a1, b1));
                }
            }
            for r in 0..m {
                let d = f32x4_splat(xd[r * groups + gi] * scales[gi]);
                a[r] = f32x4_add(a[r], f32x4_mul(f32x4_convert_i32x4(isum[r]), d));
            }
        }
    }
    for r in 0..m {
        let v = a[r];
        acc[r] = (f32x4_extract_lane::<0>(v) + f32x4_extract_lane::<1>(v))
            + (f32x4_extract_lane::<2>(v) + f32x4_extract_lane::<3>(v));
    }
}

/// One block (a multiple of 16 elements) rounded into `q` as `quantize::quantize_rows` does; returns its
/// scale. The maximum ignores NaN as `f32::max` does (`pmax` keeps the running maximum when the new value is
/// NaN), and a NaN rounds to 0 as the scalar cast does (`min`/`max` carry it, the saturating conversion
/// makes it 0).
pub unsafe fn round_block(x: &[f32], q: &mut [i8]) -> f32 {
    debug_assert!(x.len().is_multiple_of(16) && q.len() >= x.len());
    let load = |c: &[f32]| unsafe { v128_load(c.as_ptr() as *const v128) };
    let mut mx = f32x4_splat(0.0);
    for c in x.chunks_exact(4) {
        // pmax(a, b) = if a < b { b } else { a }: a NaN b leaves a.
        mx = f32x4_pmax(mx, f32x4_abs(load(c)));
    }
    let amax = f32x4_extract_lane::<0>(mx)
        .max(f32x4_extract_lane::<1>(mx))
        .max(f32x4_extract_lane::<2>(mx))
        .max(f32x4_extract_lane::<3>(mx));
    let scale = amax / 127.0;
    let inv = if scale != 0.0 { 1.0 / scale } else { 0.0 };
    let (lo, hi, iv) = (f32x4_splat(-127.0), f32x4_splat(127.0), f32x4_splat(inv));
    for (xs, qs) in x.chunks_exact(16).zip(q.chunks_exact_mut(16)) {
        let int = |j: usize| {
            let v = f32x4_nearest(f32x4_mul(load(&xs[4 * j..4 * j + 4]), iv));
            i32x4_trunc_sat_f32x4(f32x4_min(f32x4_max(v, lo), hi))
        };
        let h0 = i16x8_narrow_i32x4(int(0), int(1));
        let h1 = i16x8_narrow_i32x4(int(2), int(3));
        // SAFETY: qs holds 16 bytes.
        unsafe { v128_store(qs.as_mut_ptr() as *mut v128, i8x16_narrow_i16x8(h0, h1)) };
    }
    scale
}

/// The integer sums of `xw::group_ints` (`isum[r, j] = Σ_{p < g} xq[r · k + p] · q(start + p · ld + j)`) for
/// the first multiple of 16 columns; returns how many. q4 elements start on whole bytes (the caller's
/// `integer_path` guard).
#[allow(clippy::too_many_arguments)]
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
    for cb in (0..nb16).step_by(16) {
        let mut acc = [[i32x4_splat(0); 4]; 4];
        for p in 0..g {
            let e = start + p * ld + cb;
            let w = if bits == 8 {
                let s = &bytes[e..e + 16];
                // SAFETY: s holds 16 bytes.
                unsafe { v128_load(s.as_ptr() as *const v128) }
            } else {
                let s = &bytes[e / 2..e / 2 + 8];
                // SAFETY: s holds 8 bytes.
                let b = unsafe { v128_load64_zero(s.as_ptr() as *const u64) };
                let (lo, hi) = (v128_and(b, u8x16_splat(15)), u8x16_shr(b, 4));
                let w = i8x16_shuffle::<0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23>(lo, hi);
                i8x16_sub(w, i8x16_splat(8))
            };
            let (wl, wh) = (i16x8_extend_low_i8x16(w), i16x8_extend_high_i8x16(w));
            for (r, a) in acc[..m].iter_mut().enumerate() {
                let xv = i16x8_splat(xq[r * k + p] as i16);
                a[0] = i32x4_add(a[0], i32x4_extmul_low_i16x8(wl, xv));
                a[1] = i32x4_add(a[1], i32x4_extmul_high_i16x8(wl, xv));
                a[2] = i32x4_add(a[2], i32x4_extmul_low_i16x8(wh, xv));
                a[3] = i32x4_add(a[3], i32x4_extmul_high_i16x8(wh, xv));
            }
        }
        for (r, a) in acc[..m].iter().enumerate() {
            let o = &mut isum[r * nb + cb..r * nb + cb + 16];
            for (j, &v) in a.iter().enumerate() {
                // SAFETY: o holds 16 values.
                unsafe { v128_store(o.as_mut_ptr().add(4 * j) as *mut v128, v) };
            }
        }
    }
    nb16
}
