//! Prefill GEMM for quantized nn.Linear weights (q8, q4; groups along k) on AVX-512 VNNI
//! ([`super::Simd::Avx512`]; x86-64 only, as the module is).
//!
//! [`super::vnni::row`] multiplies one weight row by a few activation rows with 16 lanes along k, so every
//! 64 products end in a conversion, a scale and a horizontal sum. Here each task first packs a panel of 32
//! weight rows so that a vector holds 4 consecutive weights of 16 rows (one row a lane): one `vpdpbusd` with
//! 4 broadcast activations then adds 64 products to 16 rows' sums at once, a group's sums are exact integers
//! in their lanes, and each (row, group) takes one conversion and one fused multiply-add in f32. The panel
//! (k · 32 bytes) is packed once and used for every activation row, six rows at a time.
//!
//! The activations are rounded as on every level ([`super::gemv::quantize_rows`], natural order); each
//! output is `Σ_groups (dw · dx) · Σ xq · wq` with the groups added in order, in f32. The weights are made
//! unsigned for `vpdpbusd` (q4: the nibble as stored, the value + 8; q8: the top bit flipped, the value
//! + 128); a group's sums start at `-off · Σ xq` ([`super::vnni_xw::xw_bias`]) so they end exact.
//!
//! Used for prefills ([`MIN_ROWS`] rows or more); decode keeps the streaming kernels, which read each
//! weight byte once for a few rows. The two differ in the order of their f32 additions only.

use super::pool;
use crate::quant::{GroupAxis, QuantLayout, ScaleType};
use std::arch::x86_64::*;
use std::cell::RefCell;

/// Rows from which an nn.Linear matmul takes the panel kernel: at 9 rows it already took 5 µs where the
/// streaming kernel took 8 (the op table's m=9 q8/q4 rows, 2026-12-05, 2-core Xeon).
pub(crate) const MIN_ROWS: usize = 8;

/// Rows of one expert from which its q8 (q4) expert tensors take the panel kernel ([`xw`]) over
/// [`super::vnni_xw::xw_tiles`], which unpacks the weights again for every 4 rows but has no packing to pay for:
/// on the bench model's experts (k 512-1024), q8 gained 2-6% at 8 rows, q4 lost 3% at 8 rows and gained 4% at
/// 32 (2026-12-05, 2-core Xeon).
pub(crate) fn xw_takes(bits: u32, m: usize) -> bool {
    m >= if bits == 4 { 16 } else { MIN_ROWS }
}

/// Weight rows of a panel (two vectors of 16 lanes).
const PANEL: usize = 32;

/// Whether the panel kernel takes an `[n, k]` weight with this layout: q8 or q4 grouped along k in groups of
/// a multiple of 4 (of 8 for q4), k a multiple of the group.
pub(crate) fn takes(l: &QuantLayout, k: usize) -> bool {
    let step = if l.bits == 4 { 8 } else { 4 };
    (l.bits == 4 || l.bits == 8)
        && l.axis == GroupAxis::Last
        && l.last == k
        && l.group.is_multiple_of(step)
        && k.is_multiple_of(l.group)
}

thread_local! {
    /// A task's packed panel: k / 4 quads of two 64-byte vectors, then its scales (groups of two 16-lane
    /// vectors). Kept per thread so a prefill allocates it once.
    static SCRATCH: RefCell<(Vec<u8>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// `out[m, n] = x[m, k] · w[n, k]ᵀ` for a weight [`takes`] accepts (`bytes`, `l`). Safety: the processor
/// runs [`super::Simd::Avx512`]; x holds m·k elements, out m·n, and the weight n·k.
pub(crate) unsafe fn linear(x: &[f32], m: usize, k: usize, n: usize, bytes: &[u8], l: &QuantLayout, out: &mut [f32]) {
    assert!(takes(l, k) && x.len() >= m * k && out.len() >= m * n && l.numel >= n * k);
    let g = l.group;
    let groups = k / g;
    let (xq, xd) = super::gemv::quantize_rows_for(super::Simd::Avx512, x, m, k, g, false);
    let bias = super::vnni_xw::xw_bias(&xq, g, l.bits);
    let outs = pool::Shared::new(out);
    pool::for_each(n.div_ceil(PANEL), |t| {
        let j0 = t * PANEL;
        let rows = PANEL.min(n - j0);
        pool::with_scratch(&SCRATCH, |(w, s)| {
            w.resize(k * PANEL, 0);
            s.resize(groups * PANEL, 0.0);
            // SAFETY: the caller's; rows j0..j0 + rows are in the weight.
            unsafe { pack(bytes, l, k, j0, rows, w, s) };
            for r0 in (0..m).step_by(6) {
                let mm = 6.min(m - r0);
                let a = (&xq[r0 * k..], &xd[r0 * groups..], &bias[r0 * groups..]);
                // Task t alone writes columns j0..j0 + rows of the output (rows r0..r0 + mm < m).
                let o = outs.ptr().wrapping_add(r0 * n + j0);
                // SAFETY: the caller's; w and s hold the panel packed for k and g.
                unsafe {
                    match mm {
                        1 => tile::<1, false, false>(w, s, a, k, g, o, n, rows),
                        2 => tile::<2, false, false>(w, s, a, k, g, o, n, rows),
                        3 => tile::<3, false, false>(w, s, a, k, g, o, n, rows),
                        4 => tile::<4, false, false>(w, s, a, k, g, o, n, rows),
                        5 => tile::<5, false, false>(w, s, a, k, g, o, n, rows),
                        _ => tile::<6, false, false>(w, s, a, k, g, o, n, rows),
                    }
                }
            }
        });
    });
}

/// Packs weight rows j0..j0 + rows (≤ [`PANEL`]; the others' lanes are zero) into `w` (quad q's two vectors
/// at 128·q: lane i of vector b holds row j0 + 16b + i's weights 4q..4q + 4, unsigned) and their scales as f32
/// into `s` (group gi's two vectors at 32·gi).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn pack(bytes: &[u8], l: &QuantLayout, k: usize, j0: usize, rows: usize, w: &mut [u8], s: &mut [f32]) {
    let row_bytes = k * l.bits as usize / 8;
    let groups = k / l.group;
    for b in 0..2 {
        let first = j0 + 16 * b;
        let live = rows.saturating_sub(16 * b).min(16);
        let mask: __mmask16 = ((1u32 << live) - 1) as __mmask16;
        let idx = _mm512_mullo_epi32(
            _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
            _mm512_set1_epi32(row_bytes as i32),
        );
        // Rows past the weight's end are never read (masked lanes); their base may point anywhere.
        let base = bytes.as_ptr().wrapping_add(first * row_bytes);
        let wp = w.as_mut_ptr();
        if l.bits == 8 {
            for q in 0..k / 4 {
                // SAFETY: live lanes read 4 bytes of their row, inside the weight (the caller's).
                let v = unsafe {
                    _mm512_mask_i32gather_epi32::<1>(_mm512_setzero_si512(), mask, idx, base.add(4 * q) as *const i32)
                };
                let v = _mm512_maskz_mov_epi32(mask, _mm512_xor_si512(v, _mm512_set1_epi8(-128)));
                // SAFETY: w holds k / 4 quads of 128 bytes.
                unsafe { _mm512_storeu_si512(wp.add(128 * q + 64 * b) as *mut __m512i, v) };
            }
        } else {
            let nib = _mm512_set1_epi8(15);
            for p in 0..k / 8 {
                // Weights 8p..8p + 8 of each row: 4 bytes, even weights in the low nibbles.
                // SAFETY: as above.
                let v = unsafe {
                    _mm512_mask_i32gather_epi32::<1>(_mm512_setzero_si512(), mask, idx, base.add(4 * p) as *const i32)
                };
                let (lo, hi) = (_mm512_and_si512(v, nib), _mm512_and_si512(_mm512_srli_epi16(v, 4), nib));
                // Per 128-bit block of 4 rows: row 0's weights 0-7, row 1's (unpacklo), rows 2 and 3's (unpackhi).
                let (a, c) = (_mm512_unpacklo_epi8(lo, hi), _mm512_unpackhi_epi8(lo, hi));
                let q0 = _mm512_castps_si512(_mm512_shuffle_ps::<0b10_00_10_00>(
                    _mm512_castsi512_ps(a),
                    _mm512_castsi512_ps(c),
                ));
                let q1 = _mm512_castps_si512(_mm512_shuffle_ps::<0b11_01_11_01>(
                    _mm512_castsi512_ps(a),
                    _mm512_castsi512_ps(c),
                ));
                // Masked lanes hold 0 (gathered as 0): weights of 0, never stored to the output.
                // SAFETY: w holds k / 4 quads of 128 bytes.
                unsafe {
                    _mm512_storeu_si512(wp.add(256 * p + 64 * b) as *mut __m512i, q0);
                    _mm512_storeu_si512(wp.add(256 * p + 128 + 64 * b) as *mut __m512i, q1);
                }
            }
        }
        for gi in 0..groups {
            for i in 0..16 {
                s[32 * gi + 16 * b + i] = if i < live { scale_f32(l, bytes, (first + i) * groups + gi) } else { 0.0 };
            }
        }
    }
}

/// M activation rows (from `a`: their integers, scales and group biases) times the packed panel: writes (ACC:
/// adds to) `o[r · ld + j]` for r < M, j < rows, which no one else touches meanwhile. With PAIRS (32 rows
/// only), the panel's vector 0 holds the even columns and vector 1 the odd ones.
#[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn tile<const M: usize, const ACC: bool, const PAIRS: bool>(
    w: &[u8],
    s: &[f32],
    (xq, xd, bias): (&[i8], &[f32], &[i32]),
    k: usize,
    g: usize,
    o: *mut f32,
    ld: usize,
    rows: usize,
) {
    let groups = k / g;
    debug_assert!(w.len() >= 32 * k && s.len() >= 32 * groups && xq.len() >= M * k && xd.len() >= M * groups);
    debug_assert!(bias.len() >= M * groups && (1..=PANEL).contains(&rows));
    let (wp, xp) = (w.as_ptr(), xq.as_ptr());
    // The expert product adds each block of rows' sums to the output as the block ends, as the decode
    // kernels do (super::vnni_xw); nn.Linear's sums go out once.
    let flush = if ACC { super::vnni_xw::split_rows(k, g) / g } else { groups };
    let (m0, m1) = (((1u32 << rows.min(16)) - 1) as __mmask16, ((1u32 << rows.saturating_sub(16)) - 1) as __mmask16);
    let mut acc = [[_mm512_setzero_ps(); 2]; M];
    for gi in 0..groups {
        let mut t = [[_mm512_setzero_si512(); 2]; M];
        for r in 0..M {
            t[r] = [_mm512_set1_epi32(bias[r * groups + gi]); 2];
        }
        for q in gi * g / 4..(gi + 1) * g / 4 {
            // SAFETY: quad q < k / 4 of the panel, and activations 4q..4q + 4 of each row.
            let (w0, w1) = unsafe {
                (
                    _mm512_loadu_si512(wp.add(128 * q) as *const __m512i),
                    _mm512_loadu_si512(wp.add(128 * q + 64) as *const __m512i),
                )
            };
            for r in 0..M {
                let x4 = unsafe { std::ptr::read_unaligned(xp.add(r * k + 4 * q) as *const i32) };
                let xb = _mm512_set1_epi32(x4);
                t[r][0] = _mm512_dpbusd_epi32(t[r][0], w0, xb);
                t[r][1] = _mm512_dpbusd_epi32(t[r][1], w1, xb);
            }
        }
        // SAFETY: group gi's 32 scales.
        let (s0, s1) =
            unsafe { (_mm512_loadu_ps(s.as_ptr().add(32 * gi)), _mm512_loadu_ps(s.as_ptr().add(32 * gi + 16))) };
        for r in 0..M {
            let dx = _mm512_set1_ps(xd[r * groups + gi]);
            acc[r][0] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(t[r][0]), _mm512_mul_ps(s0, dx), acc[r][0]);
            acc[r][1] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(t[r][1]), _mm512_mul_ps(s1, dx), acc[r][1]);
        }
        if (gi + 1) % flush != 0 && gi + 1 != groups {
            continue;
        }
        for (r, a) in acc.iter_mut().enumerate() {
            let v = if PAIRS {
                // Vector 0 holds the even columns, vector 1 the odd ones: interleaved back into column order.
                let lo = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
                let hi = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
                [_mm512_permutex2var_ps(a[0], lo, a[1]), _mm512_permutex2var_ps(a[0], hi, a[1])]
            } else {
                *a
            };
            for (h, mask) in [m0, m1].into_iter().enumerate() {
                let p = o.wrapping_add(r * ld + 16 * h);
                // SAFETY: row r's outputs j < rows (the caller's); masked lanes are not touched.
                unsafe {
                    let sum = if ACC { _mm512_add_ps(_mm512_maskz_loadu_ps(mask, p), v[h]) } else { v[h] };
                    _mm512_mask_storeu_ps(p, mask, sum);
                }
            }
            *a = [_mm512_setzero_ps(); 2];
        }
    }
}

/// The fused expert tensors' prefill product: `out[r · ld_out + j] += Σ_kk x[r, kk] · W[kk, j]` for r < m and
/// j < 32 · panels, W's element (kk, j) at `e0 + kk · ld` of a tensor [`super::vnni_xw::takes_xw`] accepts (groups
/// along k of a multiple of 4, starting at kk = 0; `e0` even for q4). `xq`, `xd`, `bias`: as
/// [`super::vnni_xw::xw_tiles`] takes them. Each panel of 32 columns is packed once (four rows of k transposed in
/// registers), then multiplied by the rows six at a time. Each output is the same sum of the same terms in
/// the same order as [`super::vnni_xw::xw_tiles`] computes (a group's exact integer sum, converted, times
/// `dw · dx`, added over the groups in order, then to `out`), so the two agree bit for bit and a row's result
/// does not depend on how many rows its expert has. Safety: the processor runs [`super::Simd::Avx512`]; the
/// slices hold what the shapes say, and `out` m rows of 32 · panels floats at stride `ld_out` that no one else
/// touches meanwhile.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn xw(
    l: &QuantLayout,
    bytes: &[u8],
    e0: usize,
    ld: usize,
    k: usize,
    panels: usize,
    (xq, xd, bias): (&[i8], &[f32], &[i32]),
    m: usize,
    out: *mut f32,
    ld_out: usize,
) {
    let (g, groups) = (l.group, k / l.group);
    debug_assert!(xq.len() >= m * k && xd.len() >= m * groups && bias.len() >= m * groups && g.is_multiple_of(4));
    pool::with_scratch(&SCRATCH, |(w, s)| {
        // q4: two panels at a time (64 columns, 32 bytes a row), each with its even and odd columns apart.
        let step = if l.bits == 4 { 2 } else { 1 };
        w.resize(step * k * PANEL, 0);
        s.resize(step * groups * PANEL, 0.0);
        for p0 in (0..panels).step_by(step) {
            // SAFETY: the caller's bounds: columns e0 + 32p0.. of every row kk < k are in the tensor.
            unsafe {
                if step == 2 {
                    pack_xw4(bytes, l, e0 + PANEL * p0, ld, k, w, s)
                } else {
                    pack_xw(bytes, l, e0 + PANEL * p0, ld, k, w, s)
                }
            };
            for h in 0..step {
                let (w, s) = (&w[h * k * PANEL..], &s[h * groups * PANEL..]);
                for r0 in (0..m).step_by(6) {
                    let a = (&xq[r0 * k..], &xd[r0 * groups..], &bias[r0 * groups..]);
                    let o = out.wrapping_add(r0 * ld_out + PANEL * (p0 + h));
                    macro_rules! go {
                        ($p:literal) => {{
                            const P: bool = $p;
                            // SAFETY: the caller's; w and s hold the panel packed for k and g.
                            unsafe {
                                match 6.min(m - r0) {
                                    1 => tile::<1, true, P>(w, s, a, k, g, o, ld_out, PANEL),
                                    2 => tile::<2, true, P>(w, s, a, k, g, o, ld_out, PANEL),
                                    3 => tile::<3, true, P>(w, s, a, k, g, o, ld_out, PANEL),
                                    4 => tile::<4, true, P>(w, s, a, k, g, o, ld_out, PANEL),
                                    5 => tile::<5, true, P>(w, s, a, k, g, o, ld_out, PANEL),
                                    _ => tile::<6, true, P>(w, s, a, k, g, o, ld_out, PANEL),
                                }
                            }
                        }};
                    }
                    if step == 2 {
                        go!(true)
                    } else {
                        go!(false)
                    }
                }
            }
        }
    });
}

/// Packs 32 columns from element `e0` of an input-major tensor (column c of row kk at `e0 + kk · ld + c`)
/// into `w` and `s` as [`pack`] lays them out: per quad of rows, each column's four bytes in its lane.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn pack_xw(bytes: &[u8], l: &QuantLayout, e0: usize, ld: usize, k: usize, w: &mut [u8], s: &mut [f32]) {
    let (g, bp, wp) = (l.group, bytes.as_ptr(), w.as_mut_ptr());
    debug_assert!(w.len() >= 32 * k && s.len() >= 32 * (k / g));
    // Row kk's 32 weights in column order, unsigned (q4: nibbles as stored; q8: top bit flipped).
    let row = |kk: usize| -> __m256i {
        let e = e0 + kk * ld;
        // SAFETY: the caller's bounds (e even for q4: e0 is, and a q4 tensor's rows are of even length).
        unsafe {
            if l.bits == 4 {
                let b = _mm_loadu_si128(bp.add(e / 2) as *const __m128i);
                let nib = _mm_set1_epi8(15);
                let (lo, hi) = (_mm_and_si128(b, nib), _mm_and_si128(_mm_srli_epi16(b, 4), nib));
                _mm256_set_m128i(_mm_unpackhi_epi8(lo, hi), _mm_unpacklo_epi8(lo, hi))
            } else {
                _mm256_xor_si256(_mm256_loadu_si256(bp.add(e) as *const __m256i), _mm256_set1_epi8(-128))
            }
        }
    };
    for q in 0..k / 4 {
        // The rows stream from memory at a stride the hardware prefetcher follows late: ask for those 16
        // ahead (a hint; past the tensor's end it is dropped, never faulted).
        for i in 0..4 {
            let ahead = bp.wrapping_add((e0 + (4 * q + 16 + i) * ld) * l.bits as usize / 8);
            _mm_prefetch::<_MM_HINT_T0>(ahead as *const i8);
        }
        let r: [__m256i; 4] = std::array::from_fn(|i| row(4 * q + i));
        let (lo, hi) = transpose4(r);
        // SAFETY: w holds k / 4 quads of 128 bytes.
        unsafe {
            _mm512_storeu_si512(wp.add(128 * q) as *mut __m512i, lo);
            _mm512_storeu_si512(wp.add(128 * q + 64) as *mut __m512i, hi);
        }
    }
    for gi in 0..k / g {
        // The group's 32 scales are consecutive in the tensor.
        let at = l.scale_index(e0 + gi * g * ld);
        for (i, o) in s[32 * gi..32 * gi + 32].iter_mut().enumerate() {
            *o = scale_f32(l, bytes, at + i);
        }
    }
}

/// [`pack_xw`] for q4, 64 columns from element `e0` (even) at once: panel 0 (columns 0-31) into the first
/// `32 · k` bytes of `w` and `32 · k / g` floats of `s`, panel 1 (32-63) after them; in each, vector 0's lane i
/// is column 2i and vector 1's column 2i + 1 (the nibbles of a byte, split after the bytes are transposed).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn pack_xw4(bytes: &[u8], l: &QuantLayout, e0: usize, ld: usize, k: usize, w: &mut [u8], s: &mut [f32]) {
    let (g, bp, wp) = (l.group, bytes.as_ptr(), w.as_mut_ptr());
    let groups = k / g;
    debug_assert!(l.bits == 4 && e0.is_multiple_of(2) && w.len() >= 64 * k && s.len() >= 64 * groups);
    let nib = _mm512_set1_epi8(15);
    for q in 0..k / 4 {
        // SAFETY: the caller's bounds: row kk's 64 columns from e0 are 32 bytes of the tensor.
        let r: [__m256i; 4] = std::array::from_fn(|i| unsafe {
            _mm256_loadu_si256(bp.add((e0 + (4 * q + i) * ld) / 2) as *const __m256i)
        });
        // Each byte's four rows in a lane.
        let (bytes_lo, bytes_hi) = transpose4(r);
        for (h, x) in [bytes_lo, bytes_hi].into_iter().enumerate() {
            let (even, odd) = (_mm512_and_si512(x, nib), _mm512_and_si512(_mm512_srli_epi16(x, 4), nib));
            // SAFETY: panel h's quad q: 128 bytes at 32 · k · h + 128 · q, inside w.
            unsafe {
                _mm512_storeu_si512(wp.add(32 * k * h + 128 * q) as *mut __m512i, even);
                _mm512_storeu_si512(wp.add(32 * k * h + 128 * q + 64) as *mut __m512i, odd);
            }
        }
    }
    for gi in 0..groups {
        // The group's 64 scales are consecutive in the tensor.
        let at = l.scale_index(e0 + gi * g * ld);
        for c in 0..64 {
            let (panel, within) = (c / 32, c % 32);
            s[32 * groups * panel + 32 * gi + 16 * (within % 2) + within / 2] = scale_f32(l, bytes, at + c);
        }
    }
}

/// Four rows of 32 bytes transposed: lane c of the first vector holds byte c of each of the rows (in row
/// order), bytes 0-15; of the second, bytes 16-31.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn transpose4(r: [__m256i; 4]) -> (__m512i, __m512i) {
    // Per 128-bit half (bytes 0-15, then 16-31): bytes of rows 0, 1 (a: bytes 0-7, b: 8-15) and 2, 3, then
    // each byte's four rows: v0 bytes 0-3 | 16-19, v1 4-7 | 20-23, v2 8-11 | 24-27, v3 12-15 | 28-31.
    let (a, b) = (_mm256_unpacklo_epi8(r[0], r[1]), _mm256_unpackhi_epi8(r[0], r[1]));
    let (c, d) = (_mm256_unpacklo_epi8(r[2], r[3]), _mm256_unpackhi_epi8(r[2], r[3]));
    let v = [
        _mm256_unpacklo_epi16(a, c),
        _mm256_unpackhi_epi16(a, c),
        _mm256_unpacklo_epi16(b, d),
        _mm256_unpackhi_epi16(b, d),
    ];
    let join = |x: __m256i, y: __m256i| _mm512_inserti64x4(_mm512_castsi256_si512(x), y, 1);
    let lo = join(_mm256_permute2x128_si256::<0x20>(v[0], v[1]), _mm256_permute2x128_si256::<0x20>(v[2], v[3]));
    let hi = join(_mm256_permute2x128_si256::<0x31>(v[0], v[1]), _mm256_permute2x128_si256::<0x31>(v[2], v[3]));
    (lo, hi)
}

/// Scale `i` of a quantized tensor (f16 or bf16 bytes after `l.scale_offset`) as f32.
fn scale_f32(l: &QuantLayout, bytes: &[u8], i: usize) -> f32 {
    let o = l.scale_offset + 2 * i;
    let h = u16::from_le_bytes([bytes[o], bytes[o + 1]]);
    match l.scale {
        ScaleType::F16 => half::f16::from_bits(h).to_f32(),
        ScaleType::BF16 => f32::from_bits((h as u32) << 16),
    }
}
