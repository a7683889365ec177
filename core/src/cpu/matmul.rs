//! Matrix products on the CPU for every weight format: `linear` (x·Wᵀ, nn.Linear weights [n, k]) and
//! `xw` (x·W, the fused expert tensors' input-major orientation). Few rows (decode) stream the weight once
//! with dot products / row updates; so do quantized weights in the integer kernels' layouts at any row count
//! (four rows at a time; with AVX-512, a prefill's rows take packed panels, qpanel.rs); other weights
//! with many rows (prefill) have a block converted to f32 once and handed to `matrixmultiply`'s sgemm. Work is
//! split over output columns on the pool ([`super::pool`]); accumulation is f32.

use super::pool;
use half::f16;
use half::slice::HalfFloatSliceExt;

use super::simd::Simd;

/// A weight's elements as stored.
#[derive(Clone, Copy)]
pub enum WView<'a> {
    F32(&'a [f32]),
    BF16(&'a [u16]),
    F16(&'a [u16]),
    /// A quantized tensor's bytes and layout (converted a row or block at a time, never whole).
    Quant(&'a [u8], crate::quant::QuantLayout),
}

#[inline]
fn bf16_to_f32(b: u16) -> f32 {
    f32::from_bits((b as u32) << 16)
}

impl WView<'_> {
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn len(&self) -> usize {
        match self {
            WView::F32(s) => s.len(),
            WView::BF16(s) | WView::F16(s) => s.len(),
            WView::Quant(_, l) => l.numel,
        }
    }
    /// Converts `out.len()` contiguous elements starting at `start` to f32, compiled for `simd`.
    pub fn to_f32_simd(&self, simd: Simd, start: usize, out: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if simd >= Simd::Avx2 {
            #[target_feature(enable = "avx2,fma,f16c")]
            unsafe fn quant(l: &crate::quant::QuantLayout, b: &[u8], start: usize, out: &mut [f32]) {
                l.to_f32_inline(b, start, out)
            }
            if let WView::Quant(b, l) = self {
                // SAFETY: Avx2 is only chosen where the processor has AVX2, FMA and F16C (Simd::detect).
                return unsafe { quant(l, b, start, out) };
            }
        }
        let _ = simd;
        self.to_f32(start, out)
    }

    /// Converts `out.len()` contiguous elements starting at `start` to f32.
    pub fn to_f32(&self, start: usize, out: &mut [f32]) {
        let n = out.len();
        match self {
            WView::F32(s) => out.copy_from_slice(&s[start..start + n]),
            WView::BF16(s) => {
                for (o, &b) in out.iter_mut().zip(&s[start..start + n]) {
                    *o = bf16_to_f32(b);
                }
            }
            WView::F16(s) => {
                let h: &[f16] = bytemuck::cast_slice(&s[start..start + n]);
                h.convert_to_f32_slice(out);
            }
            WView::Quant(b, l) => l.to_f32(b, start, out),
        }
    }
}

/// The columns of one prefill GEMM task: each task packs the whole activation matrix again, so blocks are as
/// wide as keeps a few tasks per thread (a quarter of the columns, 64 to 256; it depends on n alone, so a
/// result does not depend on the thread count).
fn gemm_block(n: usize) -> usize {
    (n / 4).next_multiple_of(64).clamp(64, 256)
}

/// Rows at or below this count take the streaming (GEMV-like) path; above it the packed sgemm kernel wins
/// (measured on the expert and dense matmuls of a hidden-1024 model, 2-core EPYC).
pub(crate) const SMALL_M: usize = 4;
/// Float weights (f32, bf16, f16) take the GEMV kernels, four rows at a time, up to this many rows at the
/// vector levels below AVX-512 (which has its own kernel for a few rows, [`super::dot512`]): below it the sgemm's per-call conversion and packing of the weights cost more than reading
/// them from cache again. Prefill on the demo model (bf16, k 256), 2 threads: 8 rows 4,100-4,300 → 6,100-6,300
/// tok/s, 12 rows 5,350 → 6,300-7,000, 16 rows even; the bench model (f32, k 512): +11% at 8 rows, +4% at 12.
pub(crate) const FEW_M: usize = 12;

thread_local! {
    /// The rounded activations of an expert product (integers, scales, group biases), kept per thread so a
    /// decode step allocates nothing once warm.
    static ROUNDED: std::cell::RefCell<(Vec<i8>, Vec<f32>, Vec<i32>)> =
        const { std::cell::RefCell::new((Vec::new(), Vec::new(), Vec::new())) };
}

/// `out[m, n] = x[m, k] · w[n, k]ᵀ` (w row-major, an nn.Linear weight). A few rows take the GEMV kernels
/// ([`super::gemv`]; float weights up to [`FEW_M`] rows, at AVX-512 up to 32 through [`super::dot512`]), more
/// the packed sgemm on blocks of the weight converted to f32.
pub fn linear(simd: Simd, x: &[f32], m: usize, k: usize, n: usize, w: &WView, out: &mut [f32]) {
    debug_assert!(x.len() >= m * k && out.len() >= m * n && w.len() >= n * k);
    let float = !matches!(w, WView::Quant(..));
    // SAFETY: Avx512 is only chosen where the processor runs it (Simd::detect/parse).
    #[cfg(target_arch = "x86_64")]
    if (SMALL_M + 1..=super::dot512::MAX_ROWS).contains(&m)
        && simd == Simd::Avx512
        && unsafe { super::dot512::linear(x, m, k, n, w, out) }
    {
        return;
    }
    if m <= SMALL_M || (float && simd.vector() && m <= FEW_M) {
        return super::gemv::linear_small(simd, x, m, k, n, w, out);
    }
    // At every vector level (AVX2 up, NEON, SIMD128), quantized weights in the integer kernels' layouts take them at every row count (the
    // activations rounded to int8 per group, as llama.cpp's prefill does); with AVX-512, a prefill's many
    // rows take the packed-panel kernel, whose f32 additions come in another order than the streaming one's
    // (as the float formats' sgemm and GEMV do). The scalar kernels (no vector instructions to multiply
    // bytes with) would be slower than converting to f32 for the sgemm, which keeps those rows.
    if simd.vector() && super::gemv::linear_quant(simd, x, m, k, n, w, out) {
        return;
    }
    let wide = gemm_block(n);
    let ptr = pool::Shared::new(&mut out[..m * n]);
    pool::for_each(n.div_ceil(wide), |b| {
        let n0 = b * wide;
        let nb = wide.min(n - n0);
        let conv;
        let wb: &[f32] = match w {
            WView::F32(s) => &s[n0 * k..(n0 + nb) * k],
            _ => {
                let mut v = vec![0f32; nb * k];
                w.to_f32_simd(simd, n0 * k, &mut v);
                conv = v;
                &conv
            }
        };
        let p = &ptr;
        // SAFETY: x is m×k (row stride k), wb is nb×k read as its transpose (k×nb: row stride 1, column
        // stride k), and the output block is columns n0..n0+nb of the m×n matrix `out` (row stride n), which
        // no other task writes. All extents are within the slices checked above.
        unsafe {
            matrixmultiply::sgemm(
                m,
                k,
                nb,
                1.0,
                x.as_ptr(),
                k as isize,
                1,
                wb.as_ptr(),
                1,
                k as isize,
                0.0,
                p.ptr().add(n0),
                n as isize,
                1,
            );
        }
    });
}

/// The AVX-512 integer expert paths' columns past the last whole 64-column tile (`rest` of them from `c0`),
/// through the AVX2 kernel, added to `out` (m rows at stride `ld_out`). Safety: those elements of `out` are
/// valid and the caller's alone meanwhile.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
unsafe fn add_rest(
    x: &[f32],
    m: usize,
    k: usize,
    w: &WView,
    w_off: usize,
    ld: usize,
    c0: usize,
    rest: usize,
    out: *mut f32,
    ld_out: usize,
) {
    if rest == 0 {
        return;
    }
    let mut acc = vec![0f32; m * rest];
    super::xw::block(Simd::Avx2, x, m, k, w, w_off, ld, c0, &mut acc);
    for r in 0..m {
        // SAFETY: the caller's.
        let o = unsafe { std::slice::from_raw_parts_mut(out.add(r * ld_out + c0), rest) };
        for (o, a) in o.iter_mut().zip(&acc[r * rest..(r + 1) * rest]) {
            *o += a;
        }
    }
}

/// `out[m, n] += x[m, k] · W` where `W[kk, j] = w[w_off + kk · ld + j]` (input-major; the fused expert
/// tensors). `out` is m×n with row stride n. `small` picks the row-by-row path (for a few rows) over the
/// GEMM: the caller decides it for a whole op, so a row's result does not depend on how many other rows
/// share its expert (the expert cache may run an expert's rows in several rounds of the same op).
#[allow(clippy::too_many_arguments)]
pub fn xw_acc(
    simd: Simd,
    x: &[f32],
    m: usize,
    k: usize,
    n: usize,
    w: &WView,
    w_off: usize,
    ld: usize,
    out: &mut [f32],
    small: bool,
) {
    debug_assert!(x.len() >= m * k && out.len() >= m * n && w.len() >= w_off + (k - 1) * ld + n);
    const NB: usize = 128;
    // At every vector level, quantized expert tensors in the integer kernels' layout take them at every row count (the
    // activations rounded to int8 per group, as llama.cpp's prefill does): the row-by-row path, whatever
    // `small` says (see `linear` for the scalar level).
    let integer = simd.vector() && matches!(w, WView::Quant(_, l) if super::xw::integer_path(l, k, ld, w_off, 0, n));
    let small = small || integer;
    #[cfg(target_arch = "x86_64")]
    if let WView::Quant(bytes, l) = w {
        if integer && simd >= Simd::Avx512 && super::vnni_xw::takes_xw(l) {
            // The activations are rounded once for every task. A few rows take blocks of W's rows, more take
            // column blocks (the same sums in the same order, super::vnni_xw); 64-column tiles take the VNNI
            // kernels, the other columns (n not a multiple of 64) the AVX2 one.
            return pool::with_scratch(&ROUNDED, |(xq, xd, bias)| {
                super::quantize::quantize_rows_into(simd, x, m, k, l.group, false, xq, xd);
                super::vnni_xw::xw_bias_into(xq, l.group, l.bits, bias);
                let a = (&xq[..], &xd[..], &bias[..]);
                if m <= SMALL_M && n >= 64 {
                    // SAFETY: Avx512 runs here (Simd::detect); integer_path and takes_xw hold for the op.
                    unsafe { super::vnni_xw::xw_split(l, bytes, w_off, ld, k, n, a, m, out) };
                    // SAFETY: the whole of `out` is this thread's.
                    unsafe { add_rest(x, m, k, w, w_off, ld, n / 64 * 64, n % 64, out.as_mut_ptr(), n) };
                    return;
                }
                let ptr = pool::Shared::new(&mut out[..m * n]);
                pool::for_each(n.div_ceil(NB), |b| {
                    let (n0, p) = (b * NB, &ptr);
                    let nb = NB.min(n - n0);
                    let tiles = nb / 64;
                    // SAFETY: Avx512 runs here (Simd::detect); integer_path and takes_xw hold for the whole op, so
                    // for every tile; columns n0..n0 + nb of `out` (m rows, stride n) belong to this task alone.
                    unsafe {
                        if super::qpanel::xw_takes(l.bits, m) {
                            // The same sums in the same order, the weights unpacked once for all the rows.
                            super::qpanel::xw(l, bytes, w_off + n0, ld, k, 2 * tiles, a, m, p.ptr().add(n0), n)
                        } else {
                            super::vnni_xw::xw_tiles(l, bytes, w_off + n0, ld, k, tiles, a, m, p.ptr().add(n0), n)
                        }
                    };
                    // SAFETY: columns c0..c0 + rest of `out` are this task's.
                    unsafe { add_rest(x, m, k, w, w_off, ld, n0 + 64 * tiles, nb - 64 * tiles, p.ptr(), n) };
                });
            });
        }
    }
    // Float weights, a few rows: whole rows of W streamed, k split over the tasks.
    if small && !integer && super::xw::float_split_k(simd, x, m, k, n, w, w_off, ld, out) {
        return;
    }
    // Float weights, more rows, AVX-512: register tiles over blocks of W's rows as stored (xw512.rs; the same
    // sums in the same order as the few-rows path).
    #[cfg(target_arch = "x86_64")]
    if !small && simd >= Simd::Avx512 && !matches!(w, WView::Quant(..)) {
        // SAFETY: Avx512 is only chosen where the processor runs it (Simd::detect).
        return unsafe { super::xw512::xw(x, m, k, n, w, w_off, ld, out) };
    }
    // The few-rows path's blocks are NB wide; the GEMM's as gemm_block says.
    let wide = if small { NB } else { gemm_block(n) };
    let ptr = pool::Shared::new(&mut out[..m * n]);
    pool::for_each(n.div_ceil(wide), |b| {
        let n0 = b * wide;
        let nb = wide.min(n - n0);
        let p = &ptr;
        if small {
            let mut acc = vec![0f32; m * nb];
            super::xw::block(simd, x, m, k, w, w_off, ld, n0, &mut acc);
            for r in 0..m {
                // SAFETY: row r, columns n0..n0+nb of `out` belong to this task alone.
                let o = unsafe { std::slice::from_raw_parts_mut(p.ptr().add(r * n + n0), nb) };
                for (ov, a) in o.iter_mut().zip(&acc[r * nb..(r + 1) * nb]) {
                    *ov += a;
                }
            }
        } else {
            // f32 weights are used in place (row stride ld); other formats are converted to a k×nb block.
            let conv;
            let (wp, rs) = match w {
                WView::F32(s) => (s[w_off + n0..].as_ptr(), ld),
                _ => {
                    let mut wb = vec![0f32; k * nb];
                    for kk in 0..k {
                        w.to_f32_simd(simd, w_off + kk * ld + n0, &mut wb[kk * nb..(kk + 1) * nb]);
                    }
                    conv = wb;
                    (conv.as_ptr(), nb)
                }
            };
            // SAFETY: x is m×k; the weight block is k×nb with row stride `rs` inside its slice (checked by the
            // debug assertion on w.len() above and by the callers' shape checks); the output block is columns
            // n0..n0+nb of the m×n matrix `out`, written (accumulated, beta = 1) by this task alone.
            unsafe {
                matrixmultiply::sgemm(
                    m,
                    k,
                    nb,
                    1.0,
                    x.as_ptr(),
                    k as isize,
                    1,
                    wp,
                    rs as isize,
                    1,
                    1.0,
                    p.ptr().add(n0),
                    n as isize,
                    1,
                );
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(x: &[f32], m: usize, k: usize, n: usize, w: &[f32]) -> Vec<f32> {
        let mut o = vec![0f32; m * n];
        for r in 0..m {
            for j in 0..n {
                o[r * n + j] = (0..k).map(|kk| x[r * k + kk] as f64 * w[j * k + kk] as f64).sum::<f64>() as f32;
            }
        }
        o
    }

    fn rnd(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2654435761).wrapping_add(12345);
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s % 2000) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn linear_matches_naive_for_all_formats_and_paths() {
        for &(m, k, n) in &[(1, 7, 5), (3, 33, 70), (5, 19, 129), (17, 64, 65)] {
            let x = rnd(m * k, 1);
            let w = rnd(n * k, 2);
            let want = naive(&x, m, k, n, &w);
            let bf: Vec<u16> = w.iter().map(|&v| half::bf16::from_f32(v).to_bits()).collect();
            let wbf: Vec<f32> = bf.iter().map(|&b| bf16_to_f32(b)).collect();
            let want_bf = naive(&x, m, k, n, &wbf);
            let hf: Vec<u16> = w.iter().map(|&v| f16::from_f32(v).to_bits()).collect();
            let whf: Vec<f32> = hf.iter().map(|&b| f16::from_bits(b).to_f32()).collect();
            let want_hf = naive(&x, m, k, n, &whf);
            for (view, want) in [(WView::F32(&w), &want), (WView::BF16(&bf), &want_bf), (WView::F16(&hf), &want_hf)] {
                for simd in Simd::available() {
                    let mut out = vec![0f32; m * n];
                    linear(simd, &x, m, k, n, &view, &mut out);
                    for (a, b) in out.iter().zip(want.iter()) {
                        assert!((a - b).abs() < 1e-4, "{m}x{k}x{n} {simd:?}: {a} vs {b}");
                    }
                }
            }
        }
    }

    /// The row-by-row path of quantized expert tensors (grouped along k) at every level, against the f64 sum of
    /// the activations rounded per group times the stored weights: 64-column tiles and a remainder, the
    /// second expert of two, q8 and q4, f16 and bf16 scales, a few rows and more (prefill takes them too), k of
    /// one block of rows, of several, and of blocks with a short last one (AVX-512's decode splits k).
    #[test]
    fn xw_acc_quantized_matches_the_rounded_activations_in_f64() {
        use crate::quant::{quantize, DType, GroupAxis, Grouping, QuantLayout, ScaleType};
        let (e, n2) = (2, 400);
        let n = n2 / 2;
        for (bits, scale, m, k) in [
            (8, ScaleType::F16, 1, 64),
            (4, ScaleType::BF16, 3, 64),
            (4, ScaleType::F16, 9, 64),
            (8, ScaleType::BF16, 13, 64),
            (4, ScaleType::BF16, 17, 64),
            (4, ScaleType::F16, 4, 256),
            (4, ScaleType::F16, 12, 256),
            (8, ScaleType::F16, 6, 256),
            (4, ScaleType::BF16, 18, 2176),
            (8, ScaleType::BF16, 9, 2176),
        ] {
            let g = Grouping { group: 32, scale, axis: GroupAxis::SecondLast };
            let dt = if bits == 8 { DType::Q8(g) } else { DType::Q4(g) };
            let wf = rnd(e * k * n2, 5);
            let bytes = quantize(&wf, &[e, k, n2], dt).unwrap();
            let l = QuantLayout::new(dt, &[e, k, n2]).unwrap();
            let mut w = vec![0f32; e * k * n2];
            l.to_f32(&bytes, 0, &mut w);
            let x = rnd(m * k, 6);
            let (q, d) = crate::cpu::gemv::quantize_rows(&x, m, k, 32, false);
            // Columns n..2n of expert 1 (the "up" half of a fused gate_up tensor).
            let base = k * n2 + n;
            let expect = |xs: &dyn Fn(usize) -> f64| -> Vec<f64> {
                let one =
                    |r: usize, j: usize| (0..k).map(|kk| xs(r * k + kk) * w[base + kk * n2 + j] as f64).sum::<f64>();
                (0..m * n).map(|o| one(o / n, o % n) + 0.25).collect()
            };
            let rounded = expect(&|i| q[i] as f64 * d[i / 32] as f64);
            let plain = expect(&|i| x[i] as f64);
            for simd in Simd::available() {
                // Rounded where the kernels round: a few rows at every level, more from AVX2 up.
                let want = if m <= SMALL_M || simd.vector() { &rounded } else { &plain };
                let mut out = vec![0.25f32; m * n];
                xw_acc(simd, &x, m, k, n, &WView::Quant(&bytes, l), base, n2, &mut out, m <= SMALL_M);
                let err: f64 = out.iter().zip(want).map(|(&a, b)| (a as f64 - b).powi(2)).sum::<f64>()
                    / want.iter().map(|b| b * b).sum::<f64>();
                assert!(err < 1e-12, "q{bits} {scale:?} m={m} k={k} {simd:?}: nmse {err:.3e}");
                // Each row alone (the few-rows kernels) gives the same bits as in the batch (the panel kernel
                // from 8 rows on AVX-512).
                for r in 0..m {
                    let mut one = vec![0.25f32; n];
                    let w = WView::Quant(&bytes, l);
                    xw_acc(simd, &x[r * k..(r + 1) * k], 1, k, n, &w, base, n2, &mut one, m <= SMALL_M);
                    if simd.vector() {
                        let raw = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                        assert_eq!(raw(&one), raw(&out[r * n..(r + 1) * n]), "q{bits} m={m} k={k} {simd:?} row {r}");
                    }
                }
            }
        }
    }

    /// Float expert tensors at every level, a few rows and many (more than one task of 64 weight rows, a last
    /// short one, more rows than one AVX-512 op takes, k past 32 tasks of 64); at AVX-512 each row alone (the few-rows path) gives the
    /// same bits as in the batch (the register tiles).
    #[test]
    fn xw_acc_matches_naive_with_stride_and_offset() {
        for &(m, k, n) in
            &[(1, 9, 5), (2, 16, 130), (9, 31, 200), (20, 31, 200), (3, 150, 70), (50, 150, 70), (5, 2100, 70)]
        {
            let ld = n + 7;
            let off = 3;
            let x = rnd(m * k, 3);
            let w = rnd(off + k * ld, 4);
            // transpose the strided block into [n, k] for the naive reference
            let mut wt = vec![0f32; n * k];
            for kk in 0..k {
                for j in 0..n {
                    wt[j * k + kk] = w[off + kk * ld + j];
                }
            }
            let mut want = naive(&x, m, k, n, &wt);
            for v in want.iter_mut() {
                *v += 0.5;
            }
            for (simd, small) in Simd::available().into_iter().flat_map(|s| [(s, false), (s, true)]) {
                let mut out = vec![0.5f32; m * n];
                xw_acc(simd, &x, m, k, n, &WView::F32(&w), off, ld, &mut out, small);
                for (a, b) in out.iter().zip(want.iter()) {
                    assert!((a - b).abs() < 1e-4, "{m}x{k}x{n} {simd:?} small={small}: {a} vs {b}");
                }
                #[cfg(target_arch = "x86_64")]
                if simd == Simd::Avx512 {
                    for r in [0, m / 2, m - 1] {
                        let mut one = vec![0.5f32; n];
                        xw_acc(simd, &x[r * k..(r + 1) * k], 1, k, n, &WView::F32(&w), off, ld, &mut one, true);
                        let raw = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                        assert_eq!(raw(&one), raw(&out[r * n..(r + 1) * n]), "{m}x{k}x{n} row {r}");
                    }
                }
            }
        }
    }
}
