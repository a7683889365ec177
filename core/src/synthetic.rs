//! Synthetic weights: seeded random tensors of any shape, for measuring full-scale speed without a
//! checkpoint (`herd bench --synthetic`). The generator is counter based, so element `i` of a tensor depends
//! only on (seed, i): a device can make the same values in parallel where they will live
//! ([`crate::backend::Backend::synthetic_weight`]), and the host needs no copy of a 200 GB model.
//!
//! Element `i` takes 16 bits of `splitmix64(seed, ⌊i/4⌋)` (bits `16·(i mod 4)..`), maps them to
//! `(r / 32768 − 1) · scale` in f32 and rounds that to the tensor's format (nearest, ties to even).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use half::{bf16, f16};

use crate::backend::Backend;
use crate::checkpoint::TensorRef;
use crate::error::{HerdError, Result};
use crate::model::WeightSource;
use crate::quant::{DType, QuantPlan};

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

/// A synthetic tensor as a [`TensorRef`] owning its bytes (the default of `Backend::synthetic_weight`). A
/// quantized format quantizes the f32 values of the same fill.
pub fn tensor(name: &str, shape: &[usize], dtype: DType, fill: Fill) -> Result<TensorRef> {
    tensor_at(name, 0, shape, dtype, fill)
}

/// The synthetic tensor of `shape` whose elements start at element `first` of the fill (one expert of an
/// expert tensor: `first` = e · the elements of one expert).
pub fn tensor_at(name: &str, first: usize, shape: &[usize], dtype: DType, fill: Fill) -> Result<TensorRef> {
    let numel = shape.iter().product();
    let b = if dtype.is_quantized() {
        let v = bytes_at(first, numel, DType::F32, fill);
        let f: Vec<f32> = v.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        crate::quant::quantize(&f, shape, dtype).map_err(|e| HerdError::tensor(name, e))?
    } else {
        bytes_at(first, numel, dtype, fill)
    };
    Ok(TensorRef::owned(name, dtype, shape.to_vec(), b))
}

/// The name a tensor's seed comes from: a routed expert tensor's without its layer
/// (`feed_forward.experts.gate_up_proj`), every other tensor's own.
fn shared_name(name: &str) -> &str {
    match name.strip_prefix("model.layers.").and_then(|r| r.split_once('.')) {
        Some((_, rest)) if rest.starts_with("feed_forward.experts.") => rest,
        _ => name,
    }
}

/// FNV-1a of a tensor name: each tensor's seed.
fn name_seed(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3))
}

/// A model's weights made up on the spot: norms are 1, everything else uniform in ±scale, each tensor
/// seeded by its name. Backends make them where they live ([`Backend::synthetic_weight`]).
pub struct SyntheticWeights {
    /// The float format of every tensor the plan does not quantize.
    pub dtype: DType,
    /// Quantized formats per tensor (see [`QuantPlan::format_of`]).
    pub plan: Option<QuantPlan>,
    pub scale: f32,
    pub seed: u64,
    bytes: AtomicUsize,
    /// Experts made for an expert cache, shared by every model loaded from these weights.
    made: Arc<Mutex<HashMap<(String, usize), TensorRef>>>,
}

impl SyntheticWeights {
    pub fn new(dtype: DType, scale: f32, seed: u64) -> Self {
        SyntheticWeights { dtype, plan: None, scale, seed, bytes: AtomicUsize::new(0), made: Arc::default() }
    }
    /// Quantizes the matrices as `plan` says (on the host, from the same f32 values, then uploaded).
    pub fn quantized(mut self, plan: QuantPlan) -> Self {
        self.plan = Some(plan);
        self
    }
    /// The format of tensor `name`.
    pub fn format_of(&self, name: &str, shape: &[usize]) -> DType {
        self.plan.as_ref().and_then(|p| p.format_of(name, shape)).unwrap_or(self.dtype)
    }
    /// Bytes of every tensor made so far.
    pub fn bytes_made(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }
    /// The fill of tensor `name`. The routed experts are the same in every layer (seeded without the
    /// layer number): their values do not matter to speed, and a streamed benchmark's host then makes
    /// each expert once, not once per layer.
    pub fn fill_of(&self, name: &str) -> Fill {
        if name.ends_with("norm.weight") {
            Fill::Ones
        } else {
            Fill::Uniform { seed: self.seed ^ name_seed(shared_name(name)), scale: self.scale }
        }
    }
}

impl<B: Backend> WeightSource<B> for SyntheticWeights {
    fn contains(&self, name: &str) -> bool {
        // The published models carry an lm_head; a synthetic one does too.
        !name.is_empty()
    }
    fn weight(&self, be: &B, name: &str, shape: &[usize]) -> Result<B::Weight> {
        if shape.contains(&0) {
            return Err(HerdError::tensor(name, format!("synthetic tensor of empty shape {shape:?}")));
        }
        let dtype = self.format_of(name, shape);
        let n = dtype.bytes(shape).map_err(|e| HerdError::tensor(name, e))?;
        self.bytes.fetch_add(n, Ordering::Relaxed);
        be.synthetic_weight(name, shape, dtype, self.fill_of(name))
    }
    fn experts(&self) -> Option<Arc<dyn crate::experts::ExpertSource>> {
        let w =
            SyntheticWeights { bytes: AtomicUsize::new(0), plan: self.plan.clone(), made: self.made.clone(), ..*self };
        Some(Arc::new(SyntheticExperts { w }))
    }
}

/// Synthetic experts for the expert cache: each made on the host the first time it is fetched (the same
/// values as the resident tensor's rows, and the same in every layer) and kept in host memory (for every
/// model loaded from the same weights), as a checkpoint's file would sit in the page cache, so a benchmark measures the transfers
/// rather than the generator.
struct SyntheticExperts {
    w: SyntheticWeights,
}

impl crate::experts::ExpertSource for SyntheticExperts {
    fn format(&self, name: &str, shape: &[usize]) -> Result<DType> {
        Ok(self.w.format_of(name, shape))
    }
    fn fetch(&self, name: &str, shape: &[usize], e: usize) -> Result<TensorRef> {
        let key = (shared_name(name).to_owned(), e);
        if let Some(t) = self.w.made.lock().ok().and_then(|m| m.get(&key).cloned()) {
            return Ok(t);
        }
        let inner: usize = shape[1..].iter().product();
        let mut one = shape.to_vec();
        one[0] = 1;
        let t = tensor_at(name, e * inner, &one, self.w.format_of(name, shape), self.w.fill_of(name))?;
        if let Ok(mut m) = self.w.made.lock() {
            m.insert(key, t.clone());
        }
        Ok(t)
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
