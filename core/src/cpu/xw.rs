//! The few-rows path of `xw_acc` (decode through the fused expert tensors, input-major `[K, N]` blocks):
//! `out[m, cols] += x[m, k] · W[k, cols]`, streaming W's rows once. A quantized tensor grouped along k
//! (its natural grouping, [`GroupAxis::SecondLast`]) is read a group of k rows at a time: the activations
//! rounded to int8 per group, each group's products summed as integers (by the level's vector kernel: AVX2
//! here, neon.rs, wasm.rs), then scaled by the group's row of scales (converted once). The float loops are
//! plain Rust, compiled twice on x86-64, plainly and with AVX2 + FMA enabled ([`Simd`]), so the compiler
//! vectorizes them for the level the backend runs (NEON and SIMD128 builds vectorize them at every level).

use half::f16;
use half::slice::HalfFloatSliceExt;

use super::matmul::WView;
use super::simd::Simd;
use crate::quant::GroupAxis;

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
    if m > 4 {
        // Four rows at a time (the kernels hold four rows' sums); acc is m rows of nb.
        let nb = acc.len() / m;
        for r0 in (0..m).step_by(4) {
            let mm = 4.min(m - r0);
            block(simd, &x[r0 * k..], mm, k, w, w_off, ld, n0, &mut acc[r0 * nb..(r0 + mm) * nb]);
        }
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if simd >= Simd::Avx2 {
        // SAFETY: Avx2 is only chosen when the processor has AVX2, FMA and F16C (Simd::detect).
        return unsafe { block_avx2(simd, x, m, k, w, w_off, ld, n0, acc) };
    }
    block_body(simd, x, m, k, w, w_off, ld, n0, acc)
}

#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn block_avx2(
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
    block_body(simd, x, m, k, w, w_off, ld, n0, acc)
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    /// 16 consecutive elements from element e of a q8 or q4 tensor, as i16.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn sixteen(bits: u32, bytes: *const u8, e: usize) -> __m256i {
        if bits == 8 {
            // SAFETY: the caller's bound: 16 elements from e are in the tensor.
            _mm256_cvtepi8_epi16(unsafe { _mm_loadu_si128(bytes.add(e) as *const __m128i) })
        } else {
            // SAFETY: as above; e is even, so the 16 elements are 8 whole bytes.
            let b = unsafe { _mm_loadl_epi64(bytes.add(e / 2) as *const __m128i) };
            let mask = _mm_set1_epi8(15);
            let lo = _mm_and_si128(b, mask);
            let hi = _mm_and_si128(_mm_srli_epi16(b, 4), mask);
            _mm256_cvtepi8_epi16(_mm_sub_epi8(_mm_unpacklo_epi8(lo, hi), _mm_set1_epi8(8)))
        }
    }

    /// The integer sums of [`super::group_ints`] for the first multiple of 16 columns; returns how many.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2,fma")]
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
            let mut acc = [[_mm256_setzero_si256(); 2]; 4];
            for p in (0..g).step_by(2) {
                let e0 = start + p * ld + cb;
                // SAFETY: rows p and p + 1 of the group, columns cb..cb + 16, are in the tensor.
                let (a0, a1) = unsafe { (sixteen(bits, bp, e0), sixteen(bits, bp, e0 + ld)) };
                // Rows p and p + 1 interleaved per column: lanes of `lo` are columns 0-3 and 8-11, of `hi` 4-7
                // and 12-15; madd multiplies each column's pair by the pair of activations and adds them.
                let (lo, hi) = (_mm256_unpacklo_epi16(a0, a1), _mm256_unpackhi_epi16(a0, a1));
                for r in 0..m {
                    let x0 = xq[r * k + p] as i16 as u16 as i32;
                    let x1 = xq[r * k + p + 1] as i16 as u16 as i32;
                    let xp = _mm256_set1_epi32(x0 | (x1 << 16));
                    acc[r][0] = _mm256_add_epi32(acc[r][0], _mm256_madd_epi16(lo, xp));
                    acc[r][1] = _mm256_add_epi32(acc[r][1], _mm256_madd_epi16(hi, xp));
                }
            }
            for r in 0..m {
                let first = _mm256_permute2x128_si256(acc[r][0], acc[r][1], 0x20);
                let second = _mm256_permute2x128_si256(acc[r][0], acc[r][1], 0x31);
                // SAFETY: row r's columns cb..cb + 16 of isum (m · nb values).
                unsafe {
                    let o = isum.as_mut_ptr().add(r * nb + cb);
                    _mm256_storeu_si256(o as *mut __m256i, first);
                    _mm256_storeu_si256(o.add(8) as *mut __m256i, second);
                }
            }
        }
        nb16
    }
}

/// Whether a quantized block takes the integer path: grouped along k in groups of an even size that start at
/// the block's row 0, and (q4) whole bytes.
pub(crate) fn integer_path(
    l: &crate::quant::QuantLayout,
    k: usize,
    ld: usize,
    w_off: usize,
    n0: usize,
    nb: usize,
) -> bool {
    l.axis == GroupAxis::SecondLast
        && l.group.is_multiple_of(2)
        && ld == l.last
        && k == l.second
        && w_off % (l.last * l.second) + n0 + nb <= l.last
        && (l.bits == 8 || (w_off + n0).is_multiple_of(2) && nb.is_multiple_of(2))
}

/// `isum[r, j] = Σ_{p < g} xq[r · k + p] · q(start + p · ld + j)` for j < nb: one group's integer sums.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn group_ints(
    simd: Simd,
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
) {
    // SAFETY (each arm): the level is only chosen where the processor runs it (Simd::detect), and an x86
    // level's call is compiled with its features (block_avx2); the bounds are those of the scalar loop below
    // (the caller's integer_path guard).
    let done = match simd {
        #[cfg(target_arch = "x86_64")]
        Simd::Avx2 | Simd::Avx512 => unsafe { avx2::group_ints(bits, bytes, start, ld, g, xq, k, m, nb, isum) },
        #[cfg(any(target_arch = "aarch64", all(target_arch = "wasm32", target_feature = "simd128")))]
        Simd::Neon | Simd::Simd128 => unsafe {
            super::lanes128::group_ints(bits, bytes, start, ld, g, xq, k, m, nb, isum)
        },
        _ => 0,
    };
    for r in 0..m {
        isum[r * nb + done..(r + 1) * nb].fill(0);
    }
    for p in 0..g {
        for j in done..nb {
            let e = start + p * ld + j;
            let q = if bits == 8 {
                bytes[e] as i8 as i32
            } else {
                let b = bytes[e / 2];
                (if e.is_multiple_of(2) { b & 15 } else { b >> 4 }) as i32 - 8
            };
            for r in 0..m {
                isum[r * nb + j] += xq[r * k + p] as i32 * q;
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
fn block_body(
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
        // an expert's first row): the activations are rounded to int8 per group (as the nn.Linear GEMVs do,
        // [`super::gemv::quantize_rows`]), each group's products are summed as integers, then scaled once.
        WView::Quant(bytes, l) if integer_path(l, k, ld, w_off, n0, nb) => {
            let g = l.group;
            let (xq, xd) = super::gemv::quantize_rows_for(simd, x, m, k, g, false);
            let mut isum = vec![0i32; m * nb];
            let mut scales = vec![0f32; nb];
            let mut raw = vec![f16::ZERO; nb];
            for (gi, g0) in (0..k).step_by(g).enumerate() {
                group_ints(simd, l.bits, bytes, w_off + g0 * ld + n0, ld, g, &xq[g0..], k, m, nb, &mut isum);
                // The group's scales: nb consecutive ones (the file's bytes need not be 2-aligned).
                let s0 = l.scale_offset + 2 * l.scale_index(w_off + g0 * ld + n0);
                super::gemv::scales_f32(l.scale, &bytes[s0..s0 + 2 * nb], &mut raw, &mut scales);
                for r in 0..m {
                    let dx = xd[r * (k / g) + gi];
                    for ((a, &s), &sc) in acc[r * nb..(r + 1) * nb].iter_mut().zip(&isum[r * nb..]).zip(&scales) {
                        *a += s as f32 * (dx * sc);
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

/// Tasks of [`float_split_k`] (and of the AVX-512 expert GEMM) at most: each keeps m × n partial sums.
const MAX_SPLITS: usize = 32;

/// Rows of W per task of [`float_split_k`] and of the AVX-512 expert GEMM: 64, or for k over 2,048 enough whole
/// 8s for [`MAX_SPLITS`] tasks (Scout's 5,120: 160), which bounds their partial sums. It depends on k alone,
/// so the two agree and neither depends on the thread count.
pub(crate) fn split_rows(k: usize) -> usize {
    k.div_ceil(MAX_SPLITS).next_multiple_of(8).max(64)
}

/// `out[m, n] += x[m, k] · W` (W's element (kk, j) at `w_off + kk · ld + j`) for float W (f32, bf16, f16)
/// and a few rows: decode through the fused expert tensors. W's rows are split into tasks of [`split_rows`],
/// each streaming its rows whole (n contiguous elements each: one contiguous block of an expert, where
/// column blocks would read short runs a row apart) into its own partial sums, which are then added to `out`
/// in task order: a fixed order, so the result does not depend on the thread count. Returns false (and does
/// nothing) for quantized W.
#[allow(clippy::too_many_arguments)]
pub(crate) fn float_split_k(
    simd: Simd,
    x: &[f32],
    m: usize,
    k: usize,
    n: usize,
    w: &WView,
    w_off: usize,
    ld: usize,
    out: &mut [f32],
) -> bool {
    if matches!(w, WView::Quant(..)) {
        return false;
    }
    if m == 0 || n == 0 {
        return true;
    }
    let block = split_rows(k);
    sum_in_order(k.div_ceil(block), m, n, true, out, n, |t, p| {
        let rows = t * block..((t + 1) * block).min(k);
        #[cfg(target_arch = "x86_64")]
        if simd >= Simd::Avx2 {
            // SAFETY: Avx2 (and Avx512, which includes it) is only chosen where the processor has AVX2,
            // FMA and F16C (Simd::detect).
            return unsafe { split_k_avx2(x, m, k, n, w, w_off, ld, rows, p) };
        }
        let _ = simd;
        split_k_task::<false>(x, m, k, n, w, w_off, ld, rows, p)
    });
    true
}

/// Runs `tasks` tasks on the pool, task t making partial sums for m rows of `cols` columns (`make(t, p)`; `p`
/// zeroed first when `zero`), and adds each task's to `out` (m rows a stride `ld_out` apart, their first `cols`
/// columns) in task order: a task adds its own once the task before it has, on the thread that made them
/// (where they are in cache), so there is no pass over them all afterwards. A fixed order, so the result does
/// not depend on the thread count. Task t - 1 is always taken before task t, so a task waits only for one
/// that is running; if a task panics, the others stop waiting and the pool raises the panic.
pub(crate) fn sum_in_order(
    tasks: usize,
    m: usize,
    cols: usize,
    zero: bool,
    out: &mut [f32],
    ld_out: usize,
    make: impl Fn(usize, &mut [f32]) + Sync,
) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    /// Marks the tasks stopped if the task holding it unwinds.
    struct Stop<'a>(&'a AtomicUsize);
    impl Drop for Stop<'_> {
        fn drop(&mut self) {
            self.0.store(usize::MAX, Ordering::Release);
        }
    }
    assert!(m == 0 || out.len() >= (m - 1) * ld_out + cols, "sum_in_order: out is too short");
    let out = super::pool::Shared::new(out);
    // The tasks that have added their sums; usize::MAX once one has panicked.
    let added = AtomicUsize::new(0);
    super::pool::for_each(tasks, |t| {
        super::pool::with_scratch(&OWN, |p| {
            if p.len() < m * cols {
                p.resize(m * cols, 0.0);
            }
            let p = &mut p[..m * cols];
            if zero {
                p.fill(0.0);
            }
            let stop = Stop(&added);
            make(t, p);
            loop {
                match added.load(Ordering::Acquire) {
                    done if done == t => break,
                    usize::MAX => return,
                    _ => std::hint::spin_loop(),
                }
            }
            for r in 0..m {
                // SAFETY: no other task touches `out` until this one bumps `added`.
                let o = unsafe { out.slice(r * ld_out, cols) };
                for (o, &v) in o.iter_mut().zip(&p[r * cols..(r + 1) * cols]) {
                    *o += v;
                }
            }
            std::mem::forget(stop);
            added.store(t + 1, Ordering::Release);
        })
    });
}

thread_local! {
    /// A task's partial sums in [`sum_in_order`].
    static OWN: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn split_k_avx2(
    x: &[f32],
    m: usize,
    k: usize,
    n: usize,
    w: &WView,
    w_off: usize,
    ld: usize,
    rows: std::ops::Range<usize>,
    p: &mut [f32],
) {
    split_k_task::<true>(x, m, k, n, w, w_off, ld, rows, p)
}

/// A weight element as f32: f32 itself, or a bf16's bits.
trait Elem: Copy {
    fn f(self) -> f32;
}
impl Elem for f32 {
    #[inline(always)]
    fn f(self) -> f32 {
        self
    }
}
impl Elem for u16 {
    #[inline(always)]
    fn f(self) -> f32 {
        f32::from_bits((self as u32) << 16)
    }
}

/// `acc[j] += Σ_i xs[i] · w[i][j]` over four rows (FMA: fused, in order i = 0..4; vectorized by the compiler).
#[inline(always)]
fn axpy4<const FMA: bool, E: Elem>(acc: &mut [f32], w: [&[E]; 4], xs: [f32; 4]) {
    let n = acc.len();
    let (w0, w1, w2, w3) = (&w[0][..n], &w[1][..n], &w[2][..n], &w[3][..n]);
    for j in 0..n {
        let a = acc[j];
        acc[j] = if FMA {
            xs[3].mul_add(w3[j].f(), xs[2].mul_add(w2[j].f(), xs[1].mul_add(w1[j].f(), xs[0].mul_add(w0[j].f(), a))))
        } else {
            a + xs[0] * w0[j].f() + xs[1] * w1[j].f() + xs[2] * w2[j].f() + xs[3] * w3[j].f()
        };
    }
}

/// One task of [`float_split_k`]: rows `rows` of W into `p` (m rows of n partial sums), four rows at a time.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn split_k_task<const FMA: bool>(
    x: &[f32],
    m: usize,
    k: usize,
    n: usize,
    w: &WView,
    w_off: usize,
    ld: usize,
    rows: std::ops::Range<usize>,
    p: &mut [f32],
) {
    /// Rows `rows` of W, `row(kk)` giving rows kk.. (the ones past the end repeat the last).
    #[inline(always)]
    fn run<'w, const FMA: bool, E: Elem + 'w>(
        x: &[f32],
        m: usize,
        k: usize,
        n: usize,
        row: impl Fn(usize) -> [&'w [E]; 4],
        rows: std::ops::Range<usize>,
        p: &mut [f32],
    ) {
        let mut kk = rows.start;
        while kk < rows.end {
            let four = rows.end - kk >= 4;
            let w = row(kk);
            for r in 0..m {
                let xr = &x[r * k + kk..];
                let acc = &mut p[r * n..(r + 1) * n];
                if four {
                    axpy4::<FMA, E>(acc, w, [xr[0], xr[1], xr[2], xr[3]]);
                } else {
                    axpy4::<FMA, E>(acc, [w[0]; 4], [xr[0], 0.0, 0.0, 0.0]);
                }
            }
            kk += if four { 4 } else { 1 };
        }
    }
    let last = rows.end - 1;
    let at = |kk: usize| w_off + kk.min(last) * ld;
    match w {
        WView::F32(s) => run::<FMA, f32>(x, m, k, n, |kk| std::array::from_fn(|i| &s[at(kk + i)..][..n]), rows, p),
        WView::BF16(s) => run::<FMA, u16>(x, m, k, n, |kk| std::array::from_fn(|i| &s[at(kk + i)..][..n]), rows, p),
        WView::F16(s) => {
            // Converted four rows at a time (the conversion runs the processor's F16C where it has it).
            let mut conv = vec![0f32; 4 * n];
            for k0 in rows.step_by(4) {
                let kn = 4.min(last + 1 - k0);
                for i in 0..kn {
                    let h: &[f16] = bytemuck::cast_slice(&s[at(k0 + i)..][..n]);
                    h.convert_to_f32_slice(&mut conv[i * n..(i + 1) * n]);
                }
                let c = &conv;
                let row = |kk: usize| std::array::from_fn(|i| &c[(kk - k0 + i).min(kn - 1) * n..][..n]);
                run::<FMA, f32>(x, m, k, n, row, k0..k0 + kn, p);
            }
        }
        WView::Quant(..) => unreachable!("float_split_k takes float weights"),
    }
}
