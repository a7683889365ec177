//! The AVX-512 VNNI kernels for the fused expert tensors (input-major `[k, n]` blocks of q8 or q4 grouped
//! along k): `out[m, n] += x[m, k] · W`, the activations rounded to int8 per group
//! ([`super::gemv::quantize_rows`]). Four rows of W are transposed in registers so each lane holds one
//! column's four bytes, and one `vpdpbusd` multiplies them by four broadcast activations; a group's exact
//! integer sums are then scaled once (`dw · dx`) and added up in f32.
//!
//! Two ways through W, with the same sums in the same order, so that they agree bit for bit:
//! - [`xw_tiles`] (and the packed-panel prefill, [`super::qpanel::xw`]): tasks over 64-column tiles, each
//!   reading all of W's k rows for its columns: a short run a row apart.
//! - [`xw_split`] (decode, a few rows): tasks over blocks of W's rows ([`split_rows`]), each reading its
//!   block front to back (four rows at a time, all the columns), into partial sums added in task order.
//!   An expert's rows are one contiguous block of memory, which this reads as the hardware prefetcher
//!   expects; the column tiles read it a cache line per row, a row apart, and were 2.3x slower per weight
//!   than the nn.Linear kernel in decode.
//!
//! Both add each block of rows' sums to the output as the block ends (the tiles flush at the blocks' ends),
//! which is what makes their order the same: per column, per block, the groups in order from zero, then
//! the blocks in order into the output.

use super::pool;
use crate::quant::{GroupAxis, QuantLayout};

/// Whether the expert kernels take a q8/q4 tensor grouped along k (the fused expert tensors' natural
/// grouping) in groups of `g`: groups of a multiple of 4 rows.
pub(crate) fn takes_xw(l: &QuantLayout) -> bool {
    (l.bits == 4 || l.bits == 8) && l.axis == GroupAxis::SecondLast && l.group.is_multiple_of(4)
}

/// Rows of W per block (see the module doc): the float kernels' block ([`super::xw::split_rows`]) rounded up
/// to whole groups. It depends on k and the group alone, so no result depends on the thread count.
pub(crate) fn split_rows(k: usize, g: usize) -> usize {
    super::xw::split_rows(k).next_multiple_of(g)
}

/// The per-group biases the kernels take: `-off · Σ` of each group of g of `xq`'s integers, off = 8 for q4
/// and 128 for q8 (each lane's sums hold off · Σ x too, since the weights are made unsigned).
pub(crate) fn xw_bias(xq: &[i8], g: usize, bits: u32) -> Vec<i32> {
    let mut b = Vec::new();
    xw_bias_into(xq, g, bits, &mut b);
    b
}

/// [`xw_bias`] into the caller's buffer.
pub(crate) fn xw_bias_into(xq: &[i8], g: usize, bits: u32, out: &mut Vec<i32>) {
    let off: i32 = if bits == 4 { 8 } else { 128 };
    out.clear();
    out.extend(xq.chunks_exact(g).map(|c| -off * c.iter().map(|&v| v as i32).sum::<i32>()));
}

/// The column-tile kernel: `out[r · ld_out + j] += Σ_kk x[r, kk] · W[kk, j]` for j < 64 · tiles, W's element
/// (kk, j) at `e0 + kk · ld` of a tensor [`takes_xw`] accepts, whose groups start at kk = 0 (`e0` even for
/// q4). `xq`, `xd`: the activations rounded per group (m rows of k, natural order), `bias` their
/// [`xw_bias`]. Safety: the processor runs [`super::Simd::Avx512`]; the slices hold what the shapes say, and
/// `out` m rows of 64 · tiles floats at stride `ld_out` that no one else touches meanwhile.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn xw_tiles(
    l: &QuantLayout,
    bytes: &[u8],
    e0: usize,
    ld: usize,
    k: usize,
    tiles: usize,
    (xq, xd, bias): (&[i8], &[f32], &[i32]),
    m: usize,
    out: *mut f32,
    ld_out: usize,
) {
    debug_assert!(xq.len() >= m * k && xd.len() >= m * (k / l.group) && bias.len() >= m * (k / l.group));
    let groups = k / l.group;
    let flush = split_rows(k, l.group) / l.group;
    for t in 0..tiles {
        // Rows four at a time; the tile's weights (64 columns of k rows) stay in cache between them.
        for r0 in (0..m).step_by(4) {
            let (e, o) = (e0 + 64 * t, out.wrapping_add(r0 * ld_out + 64 * t));
            let (xq, xd, bias) = (&xq[r0 * k..], &xd[r0 * groups..], &bias[r0 * groups..]);
            // SAFETY: the caller's.
            unsafe {
                match 4.min(m - r0) {
                    1 => x86::xw64::<1>(l, bytes, e, ld, k, flush, xq, xd, bias, o, ld_out),
                    2 => x86::xw64::<2>(l, bytes, e, ld, k, flush, xq, xd, bias, o, ld_out),
                    3 => x86::xw64::<3>(l, bytes, e, ld, k, flush, xq, xd, bias, o, ld_out),
                    _ => x86::xw64::<4>(l, bytes, e, ld, k, flush, xq, xd, bias, o, ld_out),
                }
            }
        }
    }
}

thread_local! {
    /// A task's running sums in [`xw_split`] (integer and f32), kept per thread so a decode step allocates
    /// nothing.
    static RUNNING: std::cell::RefCell<x86::Running> = std::cell::RefCell::new(x86::Running::default());
}

/// The row-block path (see the module doc): `out[r · n + j] += Σ_kk x[r, kk] · W[kk, j]` for r < m and
/// j < 64 · (n / 64) (the caller takes the other columns), with the activations already rounded (`a`: as
/// [`xw_tiles`] takes them); the tasks' partial sums added in task order ([`super::xw::sum_in_order`]).
/// Safety: as [`xw_tiles`], with `out` m rows of n floats.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn xw_split(
    l: &QuantLayout,
    bytes: &[u8],
    e0: usize,
    ld: usize,
    k: usize,
    n: usize,
    a: (&[i8], &[f32], &[i32]),
    m: usize,
    out: &mut [f32],
) {
    let (g, tiles) = (l.group, n / 64);
    let block = split_rows(k, g);
    // Every partial sum is written (not added to), so they need no zeroing.
    super::xw::sum_in_order(k.div_ceil(block), m, 64 * tiles, false, out, n, |t, p| {
        let groups = t * block / g..((t + 1) * block).min(k) / g;
        pool::with_scratch(&RUNNING, |run| {
            for r0 in (0..m).step_by(4) {
                let a = (&a.0[r0 * k..], &a.1[r0 * (k / g)..], &a.2[r0 * (k / g)..]);
                let o = p[r0 * 64 * tiles..].as_mut_ptr();
                // SAFETY: the caller's bounds; `o` is this task's own rows r0.. of its partial sums.
                unsafe {
                    match 4.min(m - r0) {
                        1 => x86::xw_rows::<1>(l, bytes, e0, ld, k, groups.clone(), tiles, a, run, o),
                        2 => x86::xw_rows::<2>(l, bytes, e0, ld, k, groups.clone(), tiles, a, run, o),
                        3 => x86::xw_rows::<3>(l, bytes, e0, ld, k, groups.clone(), tiles, a, run, o),
                        _ => x86::xw_rows::<4>(l, bytes, e0, ld, k, groups.clone(), tiles, a, run, o),
                    }
                }
            }
        })
    });
}

#[allow(clippy::needless_range_loop)] // rows r < M index several arrays in step
mod x86 {
    use crate::quant::QuantLayout;
    use std::arch::x86_64::*;

    /// 64 scales from `sp` (f16 or bf16) as four f32 vectors in the order of a transposed quad's sums ([`quad`]
    /// and [`sums`]): columns in order for q8; for q4 the even columns, then the odd ones.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn scales64(bf16: bool, q4: bool, sp: *const u8) -> [__m512; 4] {
        let mut s = [_mm512_setzero_ps(); 4];
        for (i, s) in s.iter_mut().enumerate() {
            // SAFETY: 64 scales from sp are in the tensor (the caller's).
            let h = unsafe { _mm256_loadu_si256(sp.add(32 * i) as *const __m256i) };
            *s = if bf16 {
                _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16))
            } else {
                _mm512_cvtph_ps(h)
            };
        }
        if !q4 {
            return s;
        }
        let ev = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
        let od = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
        [
            _mm512_permutex2var_ps(s[0], ev, s[1]),
            _mm512_permutex2var_ps(s[2], ev, s[3]),
            _mm512_permutex2var_ps(s[0], od, s[1]),
            _mm512_permutex2var_ps(s[2], od, s[3]),
        ]
    }

    /// Four rows of W (from element `e`, a row `ld` apart), 64 columns, as unsigned bytes transposed so each
    /// lane holds one column position's four bytes. Positions: q8's 64 bytes are the columns in order; q4's
    /// 32 bytes unpack to the even columns (low nibbles), then the odd ones. Vector q's lane d holds position
    /// 16 · (d / 4) + 4q + d % 4.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn quad(q4: bool, bp: *const u8, e: usize, ld: usize) -> [__m512i; 4] {
        let mut w = [_mm512_setzero_si512(); 4];
        for (i, w) in w.iter_mut().enumerate() {
            let e = e + i * ld;
            // SAFETY: row i's 64 columns from e are in the tensor (q4: 32 bytes from e / 2; the caller's).
            *w = unsafe {
                if q4 {
                    let v = _mm256_loadu_si256(bp.add(e / 2) as *const __m256i);
                    let both = _mm512_inserti64x4(_mm512_castsi256_si512(v), _mm256_srli_epi16(v, 4), 1);
                    _mm512_and_si512(both, _mm512_set1_epi8(15))
                } else {
                    _mm512_xor_si512(_mm512_loadu_si512(bp.add(e) as *const __m512i), _mm512_set1_epi8(-128))
                }
            };
        }
        let (t0, t1) = (_mm512_unpacklo_epi8(w[0], w[1]), _mm512_unpackhi_epi8(w[0], w[1]));
        let (t2, t3) = (_mm512_unpacklo_epi8(w[2], w[3]), _mm512_unpackhi_epi8(w[2], w[3]));
        [
            _mm512_unpacklo_epi16(t0, t2),
            _mm512_unpackhi_epi16(t0, t2),
            _mm512_unpacklo_epi16(t1, t3),
            _mm512_unpackhi_epi16(t1, t3),
        ]
    }

    /// A group's integer sums (one row's four vectors, lanes as [`quad`] leaves them) put in position order
    /// (a 4 × 4 transpose of 128-bit blocks), converted, and added to `acc` times the scales `s` · `dx`.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    fn sums(t: [__m512i; 4], s: &[__m512; 4], dx: f32, acc: &mut [__m512; 4]) {
        let [u0, u1, u2, u3] = t;
        let (a, b) = (_mm512_shuffle_i32x4(u0, u1, 0x44), _mm512_shuffle_i32x4(u2, u3, 0x44));
        let (c, d) = (_mm512_shuffle_i32x4(u0, u1, 0xEE), _mm512_shuffle_i32x4(u2, u3, 0xEE));
        let p = [
            _mm512_shuffle_i32x4(a, b, 0x88),
            _mm512_shuffle_i32x4(a, b, 0xDD),
            _mm512_shuffle_i32x4(c, d, 0x88),
            _mm512_shuffle_i32x4(c, d, 0xDD),
        ];
        let dx = _mm512_set1_ps(dx);
        for j in 0..4 {
            acc[j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p[j]), _mm512_mul_ps(s[j], dx), acc[j]);
        }
    }

    /// Positions back to column order (q4: the even and odd columns interleaved).
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    fn columns(q4: bool, a: &[__m512; 4]) -> [__m512; 4] {
        if !q4 {
            return *a;
        }
        let lo = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
        let hi = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
        [
            _mm512_permutex2var_ps(a[0], lo, a[2]),
            _mm512_permutex2var_ps(a[0], hi, a[2]),
            _mm512_permutex2var_ps(a[1], lo, a[3]),
            _mm512_permutex2var_ps(a[1], hi, a[3]),
        ]
    }

    /// One 64-column tile of [`super::xw_tiles`]: its groups in order, added to the output every `flush`
    /// groups (a block of [`super::split_rows`]) and at the end.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    pub(super) unsafe fn xw64<const M: usize>(
        l: &QuantLayout,
        bytes: &[u8],
        e0: usize,
        ld: usize,
        k: usize,
        flush: usize,
        xq: &[i8],
        xd: &[f32],
        bias: &[i32],
        out: *mut f32,
        ld_out: usize,
    ) {
        let (g, q4, bf16) = (l.group, l.bits == 4, l.scale == crate::quant::ScaleType::BF16);
        let groups = k / g;
        let (bp, xp) = (bytes.as_ptr(), xq.as_ptr());
        let mut acc = [[_mm512_setzero_ps(); 4]; M];
        for gi in 0..groups {
            let mut t = [[_mm512_setzero_si512(); 4]; M];
            for (r, t) in t.iter_mut().enumerate() {
                *t = [_mm512_set1_epi32(bias[r * groups + gi]); 4];
            }
            for kk in (gi * g..(gi + 1) * g).step_by(4) {
                let e = e0 + kk * ld;
                for i in 0..4 {
                    // The rows stream from memory at a stride the hardware prefetcher follows late: ask for
                    // the row 16 ahead (a hint; past the tensor's end it is dropped, never faulted).
                    let ahead = bp.wrapping_add((e + (i + 16) * ld) * l.bits as usize / 8);
                    _mm_prefetch::<_MM_HINT_T0>(ahead as *const i8);
                }
                // SAFETY: rows kk..kk + 4's 64 columns from e are in the tensor (the caller's).
                let u = unsafe { quad(q4, bp, e, ld) };
                for (r, t) in t.iter_mut().enumerate() {
                    // SAFETY: activations kk..kk + 4 of row r.
                    let x4 = unsafe { std::ptr::read_unaligned(xp.add(r * k + kk) as *const i32) };
                    let xb = _mm512_set1_epi32(x4);
                    for q in 0..4 {
                        t[q] = _mm512_dpbusd_epi32(t[q], u[q], xb);
                    }
                }
            }
            // SAFETY: the scales of group gi, columns e0.. e0 + 64, are 64 consecutive ones in the tensor.
            let s = unsafe { scales64(bf16, q4, bp.add(l.scale_offset + 2 * l.scale_index(e0 + gi * g * ld))) };
            for r in 0..M {
                sums(t[r], &s, xd[r * groups + gi], &mut acc[r]);
            }
            if (gi + 1) % flush == 0 || gi + 1 == groups {
                for (r, a) in acc.iter_mut().enumerate() {
                    for (j, v) in columns(q4, a).into_iter().enumerate() {
                        // SAFETY: 16 floats of row r of the caller's output tile.
                        unsafe {
                            let o = out.add(r * ld_out + 16 * j);
                            _mm512_storeu_ps(o, _mm512_add_ps(_mm512_loadu_ps(o), v));
                        }
                    }
                    *a = [_mm512_setzero_ps(); 4];
                }
            }
        }
    }

    /// A task's running sums in [`xw_rows`]: per activation row and tile, the group's four integer vectors
    /// and the block's four f32 ones.
    #[derive(Default)]
    pub(super) struct Running {
        ints: Vec<[__m512i; 4]>,
        sums: Vec<[__m512; 4]>,
    }

    /// One task of [`super::xw_split`]: the groups `groups` of W (all 64 · tiles columns from element `e0`,
    /// a row `ld` apart) times M activation rows (`xq` rows of stride k), written to `out` (M rows of
    /// 64 · tiles floats): four rows of W at a time across all the tiles, the integer sums of the group kept in
    /// `run` between them.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    pub(super) unsafe fn xw_rows<const M: usize>(
        l: &QuantLayout,
        bytes: &[u8],
        e0: usize,
        ld: usize,
        k: usize,
        groups: std::ops::Range<usize>,
        tiles: usize,
        (xq, xd, bias): (&[i8], &[f32], &[i32]),
        run: &mut Running,
        out: *mut f32,
    ) {
        let (g, q4, bf16) = (l.group, l.bits == 4, l.scale == crate::quant::ScaleType::BF16);
        let all = k / g;
        let (bp, xp) = (bytes.as_ptr(), xq.as_ptr());
        let zero = [_mm512_setzero_si512(); 4];
        run.ints.resize(M * tiles, zero);
        run.sums.clear();
        run.sums.resize(M * tiles, [_mm512_setzero_ps(); 4]);
        // A line of q4 holds two tiles' rows, of q8 one.
        let per_line = if q4 { 2 } else { 1 };
        for gi in groups {
            for r in 0..M {
                let b = _mm512_set1_epi32(bias[r * all + gi]);
                run.ints[r * tiles..(r + 1) * tiles].fill([b; 4]);
            }
            for kk in (gi * g..(gi + 1) * g).step_by(4) {
                // SAFETY: activations kk..kk + 4 of each row.
                let xb: [__m512i; M] = std::array::from_fn(|r| {
                    _mm512_set1_epi32(unsafe { std::ptr::read_unaligned(xp.add(r * k + kk) as *const i32) })
                });
                for tile in 0..tiles {
                    let e = e0 + kk * ld + 64 * tile;
                    if tile % per_line == 0 {
                        for i in 0..4 {
                            // The next four rows' line (a hint; past the tensor's end it is dropped).
                            let ahead = bp.wrapping_add((e + (i + 4) * ld) * l.bits as usize / 8);
                            _mm_prefetch::<_MM_HINT_T0>(ahead as *const i8);
                        }
                    }
                    // SAFETY: rows kk..kk + 4's 64 columns from e are in the tensor (the caller's).
                    let u = unsafe { quad(q4, bp, e, ld) };
                    for r in 0..M {
                        let t = &mut run.ints[r * tiles + tile];
                        for q in 0..4 {
                            t[q] = _mm512_dpbusd_epi32(t[q], u[q], xb[r]);
                        }
                    }
                }
            }
            for tile in 0..tiles {
                // SAFETY: group gi's scales of the tile's 64 columns are consecutive in the tensor.
                let at = l.scale_index(e0 + gi * g * ld + 64 * tile);
                let s = unsafe { scales64(bf16, q4, bp.add(l.scale_offset + 2 * at)) };
                for r in 0..M {
                    sums(run.ints[r * tiles + tile], &s, xd[r * all + gi], &mut run.sums[r * tiles + tile]);
                }
            }
        }
        for r in 0..M {
            for tile in 0..tiles {
                for (j, v) in columns(q4, &run.sums[r * tiles + tile]).into_iter().enumerate() {
                    // SAFETY: row r's 16 floats of the tile in the caller's output.
                    unsafe { _mm512_storeu_ps(out.add(r * 64 * tiles + 64 * tile + 16 * j), v) };
                }
            }
        }
    }
}
