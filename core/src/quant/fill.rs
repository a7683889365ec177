//! The synthetic weights' generator (see `crate::synthetic` for the model-sized source built on it): seeded,
//! counter based, so element `i` of a tensor depends only on (seed, i) and a device can make the same values
//! in parallel where they will live ([`crate::backend::Backend::synthetic_weight`]).
//!
//! Element `i` takes 16 bits of `splitmix64(seed, ⌊i/4⌋)` (bits `16·(i mod 4)..`), maps them to
//! `(r / 32768 − 1) · scale` in f32 and rounds that to the tensor's format (nearest, ties to even); a
//! quantized format quantizes the f32 values of the same fill.

use half::{bf16, f16};

use super::DType;

/// What a synthetic tensor holds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fill {
    /// Every element 1 (norm weights).
    Ones,
    /// Uniform in ±scale.
    Uniform { seed: u64, scale: f32 },
}

/// splitmix64 at counter `i` of the stream `seed`.
#[inline]
pub fn splitmix64(seed: u64, i: u64) -> u64 {
    let mut z = seed.wrapping_add(i.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Element `i` of a uniform tensor, in f32 before rounding to the tensor's format.
#[inline]
pub fn uniform_at(seed: u64, scale: f32, i: u64) -> f32 {
    let r = (splitmix64(seed, i / 4) >> (16 * (i % 4))) as u16;
    (r as f32 * (1.0 / 32768.0) - 1.0) * scale
}

/// The little-endian bytes of a synthetic tensor of `numel` elements in `dtype`.
pub fn bytes(numel: usize, dtype: DType, fill: Fill) -> Vec<u8> {
    bytes_at(0, numel, dtype, fill)
}

/// Elements `first..first + numel` of a synthetic tensor, as [`bytes`] makes them.
pub fn bytes_at(first: usize, numel: usize, dtype: DType, fill: Fill) -> Vec<u8> {
    let mut out = vec![0u8; numel * dtype.size()];
    let value = |i: usize| match fill {
        Fill::Ones => 1.0,
        Fill::Uniform { seed, scale } => uniform_at(seed, scale, (first + i) as u64),
    };
    fill_chunks(&mut out, dtype, &value);
    out
}

#[cfg(not(target_arch = "wasm32"))]
fn fill_chunks(out: &mut [u8], dtype: DType, value: &(dyn Fn(usize) -> f32 + Sync)) {
    use rayon::prelude::*;
    const CHUNK: usize = 1 << 16;
    let es = dtype.size();
    out.par_chunks_mut(CHUNK * es).enumerate().for_each(|(c, bytes)| write(bytes, dtype, c * CHUNK, value));
}

#[cfg(target_arch = "wasm32")]
fn fill_chunks(out: &mut [u8], dtype: DType, value: &(dyn Fn(usize) -> f32 + Sync)) {
    write(out, dtype, 0, value)
}

fn write(bytes: &mut [u8], dtype: DType, first: usize, value: &dyn Fn(usize) -> f32) {
    let es = dtype.size();
    for (j, b) in bytes.chunks_exact_mut(es).enumerate() {
        let x = value(first + j);
        match dtype {
            DType::F32 => b.copy_from_slice(&x.to_le_bytes()),
            DType::BF16 => b.copy_from_slice(&bf16::from_f32(x).to_bits().to_le_bytes()),
            DType::F16 => b.copy_from_slice(&f16::from_f32(x).to_bits().to_le_bytes()),
            // `tensor` quantizes float values instead (see there).
            DType::Q8(_) | DType::Q4(_) => {}
        }
    }
}

/// The bytes of the synthetic tensor of `shape` in `dtype` whose elements start at element `first` of the
/// fill (one expert of an expert tensor: `first` = e · the elements of one expert).
pub fn tensor_bytes(first: usize, shape: &[usize], dtype: DType, fill: Fill) -> Result<Vec<u8>, String> {
    let numel = super::checked_numel(shape)?;
    if dtype.is_quantized() {
        let v = bytes_at(first, numel, DType::F32, fill);
        let f: Vec<f32> = v.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        super::quantize(&f, shape, dtype)
    } else {
        Ok(bytes_at(first, numel, dtype, fill))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_is_seeded_bounded_and_spread() {
        let a = bytes(1000, DType::F32, Fill::Uniform { seed: 7, scale: 0.5 });
        let b = bytes(1000, DType::F32, Fill::Uniform { seed: 7, scale: 0.5 });
        let c = bytes(1000, DType::F32, Fill::Uniform { seed: 8, scale: 0.5 });
        assert_eq!(a, b);
        assert_ne!(a, c);
        let v: Vec<f32> = a.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        assert!(v.iter().all(|x| x.abs() <= 0.5));
        let mean = v.iter().sum::<f32>() / v.len() as f32;
        let var = v.iter().map(|x| (x - mean) * (x - mean)).sum::<f32>() / v.len() as f32;
        // Uniform on ±0.5: mean 0, variance 1/12.
        assert!(mean.abs() < 0.03 && (var - 1.0 / 12.0).abs() < 0.01, "mean {mean} var {var}");
    }

    #[test]
    fn formats_round_the_same_values() {
        let f = Fill::Uniform { seed: 3, scale: 0.02 };
        let x = bytes(64, DType::F32, f);
        let h = bytes(64, DType::BF16, f);
        for i in 0..64 {
            let v = f32::from_le_bytes([x[4 * i], x[4 * i + 1], x[4 * i + 2], x[4 * i + 3]]);
            let b = bf16::from_bits(u16::from_le_bytes([h[2 * i], h[2 * i + 1]]));
            assert_eq!(b, bf16::from_f32(v));
        }
        assert_eq!(bytes(3, DType::BF16, Fill::Ones), [0x80, 0x3f, 0x80, 0x3f, 0x80, 0x3f]);
    }
}
