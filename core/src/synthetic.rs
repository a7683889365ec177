//! Synthetic weights: seeded random tensors of any shape, for measuring full-scale speed without a
//! checkpoint (`herd bench --synthetic`). The generator ([`crate::quant::fill`]) is counter based, so element
//! `i` of a tensor depends only on (seed, i): a device can make the same values in parallel where they will
//! live ([`crate::backend::Backend::synthetic_weight`]), and the host needs no copy of a 200 GB model.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::backend::Backend;
use crate::checkpoint::TensorRef;
use crate::error::{HerdError, Result};
use crate::quant::fill::tensor_bytes;
use crate::quant::{DType, Fill, QuantPlan};
use crate::source::WeightSource;

/// A synthetic tensor as a [`TensorRef`] owning its bytes (the default of `Backend::synthetic_weight`). A
/// quantized format quantizes the f32 values of the same fill.
pub fn tensor(name: &str, shape: &[usize], dtype: DType, fill: Fill) -> Result<TensorRef> {
    tensor_at(name, 0, shape, dtype, fill)
}

/// The synthetic tensor of `shape` whose elements start at element `first` of the fill (one expert of an
/// expert tensor: `first` = e · the elements of one expert).
pub fn tensor_at(name: &str, first: usize, shape: &[usize], dtype: DType, fill: Fill) -> Result<TensorRef> {
    let b = tensor_bytes(first, shape, dtype, fill).map_err(|e| HerdError::tensor(name, e))?;
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
    fn experts(&self) -> Option<Arc<dyn crate::source::ExpertSource>> {
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

impl crate::source::ExpertSource for SyntheticExperts {
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
