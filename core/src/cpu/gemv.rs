//! Decode GEMVs on the CPU: a few activation rows (`m` ≤ [`super::matmul::SMALL_M`]) against an nn.Linear
//! weight `[n, k]`, every weight byte read once and used for all the rows (float weights take up to
//! [`super::matmul::FEW_M`] rows, four at a time against a task's weight rows held in cache).
//!
//! - f32, bf16, f16: the weight's elements converted in registers and multiplied in f32.
//! - q8 and q4 (groups along k of 16 or a multiple of 32): the activations are first rounded to 8-bit
//!   integers per block of the weight's group ([`quantize_rows`], as llama.cpp's q8_0 activations), and each
//!   group's dot product is an exact integer sum, scaled by the activation's and the weight's scales:
//!   `Σ_groups (dx · dw) · Σ xq · wq`, accumulated in f32. Other groupings take the f32 path.
//!
//! Each has a scalar version and vector ones ([`Simd`]: AVX2 here, AVX-512 in vnni.rs and qpanel.rs, NEON in
//! neon.rs, SIMD128 in wasm.rs), which compute the same integer sums and differ only in the order of their f32
//! additions.

use super::pool;
use half::f16;

use super::matmul::WView;
use super::simd::Simd;
use crate::quant::{DType, GroupAxis, QuantLayout, ScaleType};

/// The block an `[n, k]` weight's matmul rounds its activations in, when it does: the group, for a
/// quantized weight grouped along k in groups of 16 or a multiple of 32, with k a multiple of 32. (The
/// expert tensors' decode path, [`super::xw`], has its own rule: [`expert_activation_block`].)
pub fn activation_block(dtype: DType, k: usize) -> Option<usize> {
    let g = match dtype {
        DType::Q8(g) | DType::Q4(g) if g.axis == GroupAxis::Last && k.is_multiple_of(32) => g.group as usize,
        _ => return None,
    };
    (g == 16 || g.is_multiple_of(32)).then_some(g)
}

/// The block the MoE op's few-rows path rounds its activations in (each expert's input and its gate·up
/// product, along k): the group of a quantized expert tensor grouped along k in groups of an even size.
pub fn expert_activation_block(dtype: DType) -> Option<usize> {
    match dtype {
        DType::Q8(g) | DType::Q4(g) if g.axis == GroupAxis::SecondLast && g.group.is_multiple_of(2) => {
            Some(g.group as usize)
        }
        _ => None,
    }
}

pub use super::quantize::quantize_rows;
pub(crate) use super::quantize::quantize_rows_for;

#[inline]
fn bf16_to_f32(b: u16) -> f32 {
    f32::from_bits((b as u32) << 16)
}

/// A run of scales (little-endian f16 or bf16 bytes, not necessarily 2-aligned) as f32, through `raw`.
#[inline]
pub(crate) fn scales_f32(scale: ScaleType, bytes: &[u8], raw: &mut [f16], out: &mut [f32]) {
    for (r, b) in raw.iter_mut().zip(bytes.chunks_exact(2)) {
        *r = f16::from_bits(u16::from_le_bytes([b[0], b[1]]));
    }
    match scale {
        // One conversion of the whole run (F16C where the processor has it).
        ScaleType::F16 => half::slice::HalfFloatSliceExt::convert_to_f32_slice(&raw[..out.len()], out),
        ScaleType::BF16 => {
            for (o, r) in out.iter_mut().zip(raw.iter()) {
                *o = bf16_to_f32(r.to_bits());
            }
        }
    }
}

/// Weight rows per task. Each task writes its rows' outputs, a run of this many f32 per activation row: at 8
/// or 16 rows, neighbouring tasks (running on different threads at once) wrote the same cache lines, and 8 rows
/// cost 15-20% of a q8/q4 decode step against 16; 32 gained 4-9% in prefill and up to 10% in decode over 16.
pub(crate) const ROWS_PER_TASK: usize = 32;

/// `out[m, n] = x[m, k] · w[n, k]ᵀ` for a quantized weight whose layout takes the integer kernels
/// ([`activation_block`]), for any number of rows: the activations are rounded once, then each weight row is
/// read once per task and multiplied into the rows four at a time. Returns false (and does nothing) for
/// other weights.
pub fn linear_quant(simd: Simd, x: &[f32], m: usize, k: usize, n: usize, w: &WView, out: &mut [f32]) -> bool {
    let WView::Quant(bytes, l) = w else { return false };
    if !quant_takes(l, k) {
        return false;
    }
    debug_assert!(m > 0 && x.len() >= m * k && out.len() >= m * n && l.numel >= n * k);
    #[cfg(target_arch = "x86_64")]
    if simd >= Simd::Avx512 && m >= super::qpanel::MIN_ROWS && super::qpanel::takes(l, k) {
        // SAFETY: Avx512 is only chosen where the processor runs it (Simd::detect); the sizes were checked.
        unsafe { super::qpanel::linear(x, m, k, n, bytes, l, out) };
        return true;
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = bytes; // the packed panels are x86-64's alone
    let shared = pool::Shared::new(&mut out[..m * n]);
    with_rounded(simd, x, m, k, l, |acts| {
        pool::for_each(n.div_ceil(ROWS_PER_TASK), |t| {
            let rows = t * ROWS_PER_TASK..((t + 1) * ROWS_PER_TASK).min(n);
            // SAFETY: task t writes its own rows' outputs only.
            unsafe { quant_rows(simd, acts, w, m, k, rows.clone(), shared.ptr().add(rows.start), n) }
        })
    });
    true
}

/// Whether [`linear_quant`] takes a weight of layout `l` for inputs of `k`.
pub(crate) fn quant_takes(l: &QuantLayout, k: usize) -> bool {
    l.last == k && activation_block(l.dtype(), k).is_some()
}

/// A call's activations rounded for the integer kernels: in the AVX-512 kernel's layout, or plain (int8
/// per group and each group's scale).
pub(crate) enum Rounded<'a> {
    #[cfg(target_arch = "x86_64")]
    Vnni(&'a super::vnni::Acts),
    Plain(&'a [i8], &'a [f32]),
}

/// Runs `f` on `x`'s m rows of k rounded for weights of layout `l` (one that [`quant_takes`]), in this
/// thread's kept buffers.
pub(crate) fn with_rounded<R>(
    simd: Simd,
    x: &[f32],
    m: usize,
    k: usize,
    l: &QuantLayout,
    f: impl FnOnce(&Rounded) -> R,
) -> R {
    #[cfg(target_arch = "x86_64")]
    if simd >= Simd::Avx512 && super::vnni::takes(l.dtype(), k) {
        return pool::with_scratch(&super::vnni::ACTS, |acts| {
            acts.fill(x, m, k, l.group, l.bits);
            f(&Rounded::Vnni(acts))
        });
    }
    pool::with_scratch(&ROUNDED, |(xq, xd)| {
        super::quantize::quantize_rows_into(simd, x, m, k, l.group, l.bits == 4, xq, xd);
        f(&Rounded::Plain(xq, xd))
    })
}

/// `out[r · stride + j − rows.start] = x[r] · w[j]` for the weight rows `j` in `rows` and every activation row
/// r < m, from activations rounded for `w`'s layout ([`with_rounded`]).
///
/// # Safety
/// Those elements of `out` are valid for writes, and no other task writes them meanwhile.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn quant_rows(
    simd: Simd,
    acts: &Rounded,
    w: &WView,
    m: usize,
    k: usize,
    rows: std::ops::Range<usize>,
    out: *mut f32,
    stride: usize,
) {
    let WView::Quant(bytes, l) = w else { unreachable!("quant_rows of a float weight") };
    let row_bytes = k * l.bits as usize / 8;
    let groups = k / l.group;
    let j0 = rows.start;
    // SAFETY: the caller's promise.
    let put = |r: usize, j: usize, v: f32| unsafe { *out.add(r * stride + j - j0) = v };
    let mut acc = [0f32; 4];
    match acts {
        #[cfg(target_arch = "x86_64")]
        Rounded::Vnni(acts) => {
            for j in rows {
                let s0 = l.scale_offset + 2 * j * groups;
                let row = &bytes[j * row_bytes..(j + 1) * row_bytes];
                let scales = &bytes[s0..s0 + 2 * groups];
                for r0 in (0..m).step_by(4) {
                    let mm = 4.min(m - r0);
                    // SAFETY: Vnni is only made at Avx512 (which the processor runs) for a layout vnni::takes;
                    // acts holds m rows of k; the row holds k elements' bytes, `scales` its k / g.
                    unsafe { super::vnni::row(l.bits, l.group, l.scale, row, scales, acts, r0, mm, k, &mut acc) };
                    for (r, &v) in acc[..mm].iter().enumerate() {
                        put(r0 + r, j, v);
                    }
                }
            }
        }
        Rounded::Plain(xq, xd) => pool::with_scratch(&ROW_SCALES, |(scales, raw)| {
            scales.resize(groups, 0.0);
            raw.resize(groups, f16::ZERO);
            for j in rows {
                let s0 = l.scale_offset + 2 * j * groups;
                scales_f32(l.scale, &bytes[s0..s0 + 2 * groups], raw, scales);
                let row = &bytes[j * row_bytes..(j + 1) * row_bytes];
                for r0 in (0..m).step_by(4) {
                    let mm = 4.min(m - r0);
                    quant_row(simd, l, row, scales, &xq[r0 * k..], &xd[r0 * groups..], mm, k, &mut acc);
                    for (r, &v) in acc[..mm].iter().enumerate() {
                        put(r0 + r, j, v);
                    }
                }
            }
        }),
    }
}

thread_local! {
    /// The rounded activations of a call ([`linear_quant`]'s AVX2 and scalar path), and a task's weight scales
    /// as f32: kept per thread so a decode step allocates nothing.
    static ROUNDED: std::cell::RefCell<(Vec<i8>, Vec<f32>)> = const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
    static ROW_SCALES: std::cell::RefCell<(Vec<f32>, Vec<f16>)> = const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
}

/// `out[m, n] = x[m, k] · w[n, k]ᵀ` for a few rows `m` (decode's 1..=4; float weights up to
/// [`super::matmul::FEW_M`]), each task's weight rows against four activation rows at a time.
pub fn linear_small(simd: Simd, x: &[f32], m: usize, k: usize, n: usize, w: &WView, out: &mut [f32]) {
    debug_assert!(m >= 1 && x.len() >= m * k && out.len() >= m * n && w.len() >= n * k);
    if linear_quant(simd, x, m, k, n, w, out) {
        return;
    }
    let shared = pool::Shared::new(&mut out[..m * n]);
    pool::for_each(n.div_ceil(ROWS_PER_TASK), |t| {
        let rows = t * ROWS_PER_TASK..((t + 1) * ROWS_PER_TASK).min(n);
        // The task's weight rows against four activation rows at a time (the weight rows stay in cache
        // between the passes).
        for r0 in (0..m).step_by(4) {
            // SAFETY: task t writes its own rows' outputs only (columns `rows` of every row).
            unsafe {
                let o = shared.ptr().add(r0 * n + rows.start);
                float_rows(simd, w, &x[r0 * k..], 4.min(m - r0), k, rows.clone(), o, n)
            }
        }
    })
}

/// [`quant_rows`] for the weights the integer kernels do not take, through [`float_row`].
///
/// # Safety
/// As [`quant_rows`].
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn float_rows(
    simd: Simd,
    w: &WView,
    x: &[f32],
    m: usize,
    k: usize,
    rows: std::ops::Range<usize>,
    out: *mut f32,
    stride: usize,
) {
    #[cfg(target_arch = "x86_64")]
    if let (Simd::Avx512, WView::F32(s), 1) = (simd, w, m) {
        // Decode's one row: the weight rows four at a time.
        // SAFETY: Avx512 is only chosen where the processor runs it; the caller's promise for out.
        unsafe {
            let out = std::slice::from_raw_parts_mut(out, rows.len());
            return super::vnni::rows_f32_one(&s[rows.start * k..rows.end * k], x, k, out);
        }
    }
    let mut acc = [0f32; 4];
    let mut conv = Vec::new();
    let j0 = rows.start;
    for j in rows {
        float_row(simd, w, j * k, x, m, k, &mut acc, &mut conv);
        for (r, &v) in acc[..m].iter().enumerate() {
            // SAFETY: the caller's promise.
            unsafe { *out.add(r * stride + j - j0) = v };
        }
    }
}

/// `acc[r] = x[r] · w[off..off + k]` for r < m, for the float formats (and quantized ones whose grouping
/// the integer path does not take, converted to f32 first).
#[allow(clippy::too_many_arguments)]
fn float_row(
    simd: Simd,
    w: &WView,
    off: usize,
    x: &[f32],
    m: usize,
    k: usize,
    acc: &mut [f32; 4],
    conv: &mut Vec<f32>,
) {
    #[cfg(target_arch = "x86_64")]
    if simd == Simd::Avx512 {
        // SAFETY: Avx512 is only chosen where the processor runs it (Simd::detect/parse).
        match w {
            WView::F32(s) => return unsafe { super::vnni::row_f32(&s[off..off + k], x, m, k, acc) },
            WView::BF16(s) => return unsafe { super::vnni::row_half(true, &s[off..off + k], x, m, k, acc) },
            WView::F16(s) => return unsafe { super::vnni::row_half(false, &s[off..off + k], x, m, k, acc) },
            WView::Quant(..) => {}
        }
    }
    #[cfg(target_arch = "x86_64")]
    if simd >= Simd::Avx2 {
        // SAFETY: Avx2 is only chosen when the processor has AVX2, FMA and F16C (Simd::detect/parse); the
        // slices are in bounds (the caller's shape checks: w holds n·k elements, x holds m·k).
        unsafe {
            match w {
                WView::F32(s) => return avx2::rows_f32(&s[off..off + k], x, m, k, acc),
                WView::BF16(s) => return avx2::rows_bf16(&s[off..off + k], x, m, k, acc),
                WView::F16(s) => return avx2::rows_f16(&s[off..off + k], x, m, k, acc),
                WView::Quant(..) => {
                    conv.resize(k, 0.0);
                    w.to_f32(off, conv);
                    return avx2::rows_f32(conv, x, m, k, acc);
                }
            }
        }
    }
    #[cfg(any(target_arch = "aarch64", all(target_arch = "wasm32", target_feature = "simd128")))]
    if matches!(simd, Simd::Neon | Simd::Simd128) {
        use super::lanes128 as v;
        // SAFETY: the level is only chosen where the processor runs it (Simd::detect/parse); the slices are in
        // bounds as above.
        unsafe {
            return match w {
                WView::F32(s) => v::rows_f32(&s[off..off + k], x, m, k, acc),
                WView::BF16(s) => v::rows_bf16(&s[off..off + k], x, m, k, acc),
                WView::F16(_) | WView::Quant(..) => {
                    conv.resize(k, 0.0);
                    w.to_f32(off, conv);
                    v::rows_f32(conv, x, m, k, acc)
                }
            };
        }
    }
    let _ = simd;
    let row: &[f32] = match w {
        WView::F32(s) => &s[off..off + k],
        WView::BF16(s) => {
            conv.clear();
            conv.extend(s[off..off + k].iter().map(|&b| bf16_to_f32(b)));
            conv
        }
        WView::F16(_) | WView::Quant(..) => {
            conv.resize(k, 0.0);
            w.to_f32(off, conv);
            conv
        }
    };
    for r in 0..m {
        acc[r] = dot(&x[r * k..(r + 1) * k], row);
    }
}

/// `Σ a·b` in 8 interleaved partial sums (which the compiler keeps in one vector register).
#[inline(always)]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let n8 = a.len().min(b.len()) / 8 * 8;
    for (x, y) in a[..n8].chunks_exact(8).zip(b[..n8].chunks_exact(8)) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s = acc.iter().sum::<f32>();
    for (x, y) in a[n8..].iter().zip(&b[n8..]) {
        s += x * y;
    }
    s
}

/// `acc[r] = Σ_groups xd[r, g] · scales[g] · Σ_{i in g} xq[r, i] · wq[i]` for one quantized weight row.
#[allow(clippy::too_many_arguments)]
fn quant_row(
    simd: Simd,
    l: &QuantLayout,
    row: &[u8],
    scales: &[f32],
    xq: &[i8],
    xd: &[f32],
    m: usize,
    k: usize,
    acc: &mut [f32; 4],
) {
    #[cfg(target_arch = "x86_64")]
    if simd >= Simd::Avx2 {
        // SAFETY: see float_row; `row` holds k elements' bytes, `scales` k / group, xq m·k, xd m·k / group.
        unsafe { return avx2::rows_quant(l.bits, l.group, row, scales, xq, xd, m, k, acc) }
    }
    #[cfg(any(target_arch = "aarch64", all(target_arch = "wasm32", target_feature = "simd128")))]
    if matches!(simd, Simd::Neon | Simd::Simd128) {
        // SAFETY: as above.
        unsafe { return super::lanes128::rows_quant(l.bits, l.group, row, scales, xq, xd, m, k, acc) }
    }
    let _ = simd;
    let g = l.group;
    let groups = k / g;
    for r in 0..m {
        let (xr, dr) = (&xq[r * k..(r + 1) * k], &xd[r * groups..(r + 1) * groups]);
        let mut total = 0f32;
        if l.bits == 8 {
            for gi in 0..groups {
                let (w, x) = (&row[gi * g..(gi + 1) * g], &xr[gi * g..(gi + 1) * g]);
                let sum: i32 = w.iter().zip(x).map(|(&w, &x)| w as i8 as i32 * x as i32).sum();
                total += sum as f32 * (dr[gi] * scales[gi]);
            }
        } else {
            // A run of 32 elements is 16 bytes: its even elements in the low nibbles, its odd ones in the high
            // ones, and its activations stored evens first (the q4 order). Bytes 0-7 hold elements 0-15 (the
            // first group of 16), bytes 8-15 elements 16-31. Fixed-length loops, which the compiler vectorizes.
            let mut g_sum = 0i32;
            for (c, (b, x)) in row[..k / 2].chunks_exact(16).zip(xr.chunks_exact(32)).enumerate() {
                let half = |h: usize| -> i32 {
                    let mut s = 0i32;
                    for i in 8 * h..8 * h + 8 {
                        s += ((b[i] & 15) as i32 - 8) * x[i] as i32 + ((b[i] >> 4) as i32 - 8) * x[16 + i] as i32;
                    }
                    s
                };
                let (sa, sb) = (half(0), half(1));
                if g == 16 {
                    total += sa as f32 * (dr[2 * c] * scales[2 * c]) + sb as f32 * (dr[2 * c + 1] * scales[2 * c + 1]);
                } else {
                    g_sum += sa + sb;
                    if (32 * (c + 1)).is_multiple_of(g) {
                        let gi = 32 * c / g;
                        total += g_sum as f32 * (dr[gi] * scales[gi]);
                        g_sum = 0;
                    }
                }
            }
        }
        acc[r] = total;
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::{quantize, Grouping};

    fn rnd(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s % 20001) as f32 / 10000.0 - 1.0
            })
            .collect()
    }

    /// Each level against the f64 sum of the rounded activations times the stored weights, for a few rows
    /// (decode) and more (prefill, four at a time from AVX2 up; the scalar level converts to f32 there).
    #[test]
    fn quantized_rows_match_the_rounded_activations_in_f64() {
        for (bits, group, scale) in [
            (8u32, 32u32, ScaleType::F16),
            (4, 32, ScaleType::BF16),
            (8, 16, ScaleType::BF16),
            (4, 16, ScaleType::F16),
            (4, 64, ScaleType::F16),
            (8, 128, ScaleType::BF16),
        ] {
            for m in [3, 9] {
                let (k, n) = (256, 37);
                let g = Grouping { group, scale, axis: GroupAxis::Last };
                let dt = if bits == 8 { DType::Q8(g) } else { DType::Q4(g) };
                let x = rnd(m * k, 1);
                let wf = rnd(n * k, 2);
                let bytes = quantize(&wf, &[n, k], dt).unwrap();
                let l = QuantLayout::new(dt, &[n, k]).unwrap();
                let mut w = vec![0f32; n * k];
                l.to_f32(&bytes, 0, &mut w);
                // The activations rounded as the rule says, in natural order.
                let group = group as usize;
                let (q, d) = quantize_rows(&x, m, k, group, false);
                let rounded: Vec<f64> = (0..m * k).map(|i| q[i] as f64 * d[i / group] as f64).collect();
                let dot = |xs: &dyn Fn(usize) -> f64| -> Vec<f64> {
                    let row = |r: usize, j: usize| (0..k).map(|i| xs(r * k + i) * w[j * k + i] as f64).sum();
                    (0..m * n).map(|o| row(o / n, o % n)).collect()
                };
                let (want_rounded, want_f32) = (dot(&|i| rounded[i]), dot(&|i| x[i] as f64));
                for simd in Simd::available() {
                    // Rounded where the kernels round: a few rows at every level, more from AVX2 up.
                    let want = if m <= 4 || simd.vector() { &want_rounded } else { &want_f32 };
                    let mut out = vec![0f32; m * n];
                    super::super::matmul::linear(simd, &x, m, k, n, &WView::Quant(&bytes, l), &mut out);
                    let err: f64 = out.iter().zip(want).map(|(&a, b)| (a as f64 - b).powi(2)).sum::<f64>()
                        / want.iter().map(|b| b * b).sum::<f64>();
                    assert!(err < 1e-12, "q{bits}g{group} m={m} {simd:?}: nmse {err:.3e}");
                }
            }
        }
    }
}
