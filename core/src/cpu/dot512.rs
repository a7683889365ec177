//! nn.Linear products of a batch of a few rows (5 to [`MAX_ROWS`]: several sequences' decode tokens in one
//! step, a short prompt) with float weights (f32, bf16, f16) at the AVX-512 level.
//!
//! A register tile of up to 4 activation rows × 4 weight rows (16 accumulators of 16 lanes) walks k: each step
//! loads four weight vectors (bf16/f16 widened in registers) and up to four activation vectors and does 16
//! FMAs, so every weight element loaded serves four rows and every activation element four weight rows. A task
//! owns a block of weight rows; its four rows at a time stay in L1 while every group of activation rows passes
//! over them. Nothing is converted or packed ahead (the sgemm path converts and packs the weights on every
//! call, which for a few rows costs more than the arithmetic), and the GEMV kernels, four rows at a time, load
//! each activation vector once per weight row. A full tile adds up its 16 accumulators side by side ([`reduce16`]),
//! bit for bit as one reduction at a time.

use std::arch::x86_64::*;

use super::matmul::WView;
use super::pool;
use super::xw512::load;

/// Weight rows of a task.
const TASK_ROWS: usize = 32;
/// The most rows this kernel takes; more take the packed sgemm, faster there (at 128 × 1024 × 1024 f32: 220
/// GFLOP/s against this kernel's 184). Prefill on the demo model (bf16, k 256), 2 threads, against the
/// GEMV kernels (8 rows) or the sgemm (16, 32, 64): 8 rows +17-33%, 16 rows +35-40%, 32 rows +12-17%, 64 rows
/// +1%; on the bench model (f32, k 512) +2%, +7%, +2%, -1%; the op table's 12 × 2048 × 16400 f32 11.9 → 9.0 ms.
pub(crate) const MAX_ROWS: usize = 32;

/// `out[m, n] = x[m, k] · w[n, k]ᵀ` for float `w`. Returns false (doing nothing) for quantized weights. Safety:
/// the processor runs [`super::Simd::Avx512`].
pub(crate) unsafe fn linear(x: &[f32], m: usize, k: usize, n: usize, w: &WView, out: &mut [f32]) -> bool {
    let (wp, kind) = match w {
        WView::F32(s) => (s.as_ptr() as usize, 0u8),
        WView::BF16(s) => (s.as_ptr() as usize, 1),
        WView::F16(s) => (s.as_ptr() as usize, 2),
        WView::Quant(..) => return false,
    };
    assert!(x.len() >= m * k && out.len() >= m * n && w.len() >= n * k);
    if m == 0 || n == 0 {
        return true;
    }
    let shared = pool::Shared::new(&mut out[..m * n]);
    let xp = x.as_ptr() as usize;
    pool::for_each(n.div_ceil(TASK_ROWS), |t| {
        let j1 = ((t + 1) * TASK_ROWS).min(n);
        let mut j = t * TASK_ROWS;
        while j < j1 {
            let jn = 4.min(j1 - j);
            for r0 in (0..m).step_by(4) {
                let rn = 4.min(m - r0);
                // SAFETY: rows r0..r0 + rn of x, weight rows j..j + jn (in bounds by the assertion); the outputs
                // (rows r0.., columns j..j + jn) are this task's alone.
                unsafe {
                    let a = Tile {
                        x: (xp as *const f32).add(r0 * k),
                        w: wp as *const u8,
                        j,
                        k,
                        out: shared.ptr().add(r0 * n + j),
                        n,
                    };
                    macro_rules! go {
                        ($r:literal, $j:literal) => {
                            match kind {
                                0 => tile::<$r, $j, 0>(a),
                                1 => tile::<$r, $j, 1>(a),
                                _ => tile::<$r, $j, 2>(a),
                            }
                        };
                    }
                    match (rn, jn) {
                        (4, 4) => go!(4, 4),
                        (3, 4) => go!(3, 4),
                        (2, 4) => go!(2, 4),
                        (1, 4) => go!(1, 4),
                        (4, 3) => go!(4, 3),
                        (3, 3) => go!(3, 3),
                        (2, 3) => go!(2, 3),
                        (1, 3) => go!(1, 3),
                        (4, 2) => go!(4, 2),
                        (3, 2) => go!(3, 2),
                        (2, 2) => go!(2, 2),
                        (1, 2) => go!(1, 2),
                        (4, _) => go!(4, 1),
                        (3, _) => go!(3, 1),
                        (2, _) => go!(2, 1),
                        _ => go!(1, 1),
                    }
                }
            }
            j += jn;
        }
    });
    true
}

/// One tile's operands: activation rows from `x` (a row stride of k), weight rows from row `j` of the tensor
/// at `w` (its element type by the kernel's KIND), the outputs from `out` (a row stride of n).
#[derive(Clone, Copy)]
struct Tile {
    x: *const f32,
    w: *const u8,
    j: usize,
    k: usize,
    out: *mut f32,
    n: usize,
}

/// `out[r, jj] = x[r] · w[j + jj]` for r < R, jj < J.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,fma,f16c")]
unsafe fn tile<const R: usize, const J: usize, const KIND: u8>(a: Tile) {
    let mut acc = [[_mm512_setzero_ps(); J]; R];
    let mut i = 0;
    while i < a.k {
        let mask: __mmask16 = if a.k - i >= 16 { 0xFFFF } else { (1u16 << (a.k - i)) - 1 };
        let mut wv = [_mm512_setzero_ps(); J];
        for (jj, v) in wv.iter_mut().enumerate() {
            // SAFETY: the lanes of mask are columns i.. < k of weight row j + jj (the caller's bounds).
            *v = unsafe { load::<KIND>(a.w, (a.j + jj) * a.k + i, mask) };
        }
        for (r, row) in acc.iter_mut().enumerate() {
            // SAFETY: row r of x holds k elements; the lanes of mask are in it.
            let xv = unsafe { _mm512_maskz_loadu_ps(mask, a.x.add(r * a.k + i)) };
            for (c, v) in row.iter_mut().zip(&wv) {
                *c = _mm512_fmadd_ps(*v, xv, *c);
            }
        }
        i += 16;
    }
    if R == 4 && J == 4 {
        let mut v = [_mm512_setzero_ps(); 16];
        for (r, row) in acc.iter().enumerate() {
            v[4 * r..4 * r + 4].copy_from_slice(&row[..4]);
        }
        let sums = reduce16(v);
        let rows = [
            _mm512_extractf32x4_ps::<0>(sums),
            _mm512_extractf32x4_ps::<1>(sums),
            _mm512_extractf32x4_ps::<2>(sums),
            _mm512_extractf32x4_ps::<3>(sums),
        ];
        for (r, row) in rows.into_iter().enumerate() {
            // SAFETY: outputs (r, j..j + 4) are the caller's.
            unsafe { _mm_storeu_ps(a.out.add(r * a.n), row) };
        }
        return;
    }
    for (r, row) in acc.iter().enumerate() {
        for (jj, c) in row.iter().enumerate() {
            // SAFETY: output (r, j + jj) is the caller's.
            unsafe { *a.out.add(r * a.n + jj) = _mm512_reduce_add_ps(*c) };
        }
    }
}

/// The lane sums of 16 vectors, in one vector: lane i is `v[i]`'s sum. Each is added as
/// `_mm512_reduce_add_ps` adds (lane l + lane l + 8, then l + 4, l + 2, l + 1), so the sums are its bits,
/// those of the GEMV kernels that a row gets in a smaller batch; the 16 trees are walked side by side, two
/// vectors' levels per add, in 30 shuffles and 15 adds instead of 16 reductions of 8 instructions each.
#[target_feature(enable = "avx512f")]
fn reduce16(v: [__m512; 16]) -> __m512 {
    // Lanes l + 8: s[k] holds v[2k]'s 8 partial sums in its low half, v[2k + 1]'s in its high half.
    let s: [__m512; 8] = std::array::from_fn(|k| {
        let (a, b) = (v[2 * k], v[2 * k + 1]);
        _mm512_add_ps(_mm512_shuffle_f32x4::<0x44>(a, b), _mm512_shuffle_f32x4::<0xEE>(a, b))
    });
    // Lanes l + 4: quarter i of u[m] holds v[4m + i]'s 4.
    let u: [__m512; 4] = std::array::from_fn(|m| {
        let (a, b) = (s[2 * m], s[2 * m + 1]);
        _mm512_add_ps(_mm512_shuffle_f32x4::<0x88>(a, b), _mm512_shuffle_f32x4::<0xDD>(a, b))
    });
    // Lanes l + 2: quarter i of x[p] holds v[8p + i]'s 2, then v[8p + 4 + i]'s.
    let x: [__m512; 2] = std::array::from_fn(|p| {
        let (a, b) = (u[2 * p], u[2 * p + 1]);
        _mm512_add_ps(_mm512_shuffle_ps::<0x44>(a, b), _mm512_shuffle_ps::<0xEE>(a, b))
    });
    // Lanes l + 1: lane 4i + c holds v[4c + i]'s sum; then back to lane i for v[i].
    let z = _mm512_add_ps(_mm512_shuffle_ps::<0x88>(x[0], x[1]), _mm512_shuffle_ps::<0xDD>(x[0], x[1]));
    let back = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    _mm512_permutexvar_ps(back, z)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `reduce16` gives `_mm512_reduce_add_ps`'s bits for each of its 16 vectors, on values of mixed signs and
    /// magnitudes where any other order of the additions rounds differently.
    #[test]
    fn reduce16_adds_as_reduce_add_ps() {
        if !std::arch::is_x86_feature_detected!("avx512f") {
            return crate::not_run::not_run("reduce16", None, &"this processor has no AVX-512");
        }
        let mut seed = 0x9E3779B97F4A7C15u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let m = (seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
            m * 2f32.powi(((seed >> 8) % 40) as i32 - 20)
        };
        let mut differ = 0;
        for _ in 0..2000 {
            let vals: Vec<f32> = (0..256).map(|_| next()).collect();
            // SAFETY: AVX-512 is present (checked above); each load reads 16 of the 256 values.
            unsafe {
                let v: [__m512; 16] = std::array::from_fn(|i| _mm512_loadu_ps(vals[16 * i..].as_ptr()));
                let mut got = [0f32; 16];
                _mm512_storeu_ps(got.as_mut_ptr(), reduce16(v));
                for i in 0..16 {
                    let want = _mm512_reduce_add_ps(v[i]);
                    assert_eq!(got[i].to_bits(), want.to_bits(), "vector {i}: {} against {want}", got[i]);
                    let plain: f32 = vals[16 * i..16 * i + 16].iter().sum();
                    differ += usize::from(plain.to_bits() != want.to_bits());
                }
            }
        }
        // The check can fail: in-order sums of these values round differently from the tree's most times.
        assert!(differ > 10_000, "only {differ} of 32000 sums depend on the order");
    }
}
