//! Where weights come from, for the model and for the expert cache, and the checkpoint's own adapters:
//! [`WeightSource`] hands the model each tensor on the backend as it loads (a checkpoint, one quantized as it
//! loads, a compressed-tensors checkpoint in `compressed`, a generator in `synthetic`, a browser's HTTP
//! reader); [`ExpertSource`] hands the expert cache one routed expert at a time while the model runs (rows
//! read with positioned reads and checked). A leaf of the crate: it depends on the backend contract, the
//! checkpoint and the formats, never on the model.

use std::sync::Arc;

use crate::backend::Backend;
use crate::checkpoint::{Checkpoint, TensorRef};
use crate::error::{HerdError, Result};
use crate::quant::{DType, QuantPlan};

/// Where a model's weights come from: a checkpoint (memory-mapped safetensors) or a generator
/// ([`crate::synthetic::SyntheticWeights`]). Names are logical (`model.layers.0.…`).
pub trait WeightSource<B: Backend> {
    /// Whether the source has tensor `name` (only asked of optional tensors, such as `lm_head.weight`).
    fn contains(&self, name: &str) -> bool;
    /// Tensor `name` on `be`, checked to have `shape`.
    fn weight(&self, be: &B, name: &str, shape: &[usize]) -> Result<B::Weight>;
    /// Tensor `name` as a table read a row at a time ([`Backend::load_table`]); the default is
    /// [`WeightSource::weight`].
    fn table(&self, be: &B, name: &str, shape: &[usize]) -> Result<B::Weight> {
        self.weight(be, name, shape)
    }
    /// Where the routed experts can be fetched from one at a time while the model runs (for
    /// `--expert-cache`), if this source can do that.
    fn experts(&self) -> Option<Arc<dyn ExpertSource>> {
        None
    }
    /// Readies the tensors of one part of the model before [`WeightSource::weight`] asks for them: `None`
    /// the embeddings, final norm and lm_head, `Some(i)` layer `i` (parts come in that order). A source
    /// that must fetch without blocking (a browser's) fetches them here, so that it holds one part at a time
    /// and `weight` stays synchronous. The default has nothing to do.
    fn stage(&self, _part: Option<usize>) -> StageFuture<'_> {
        Box::pin(std::future::ready(Ok(())))
    }
}

/// What [`WeightSource::stage`] returns.
pub type StageFuture<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = Result<()>> + 'a>>;

impl<B: Backend> WeightSource<B> for Checkpoint {
    fn contains(&self, name: &str) -> bool {
        Checkpoint::contains(self, name)
    }
    fn weight(&self, be: &B, name: &str, shape: &[usize]) -> Result<B::Weight> {
        be.load_weight(self.get_shaped(name, shape)?)
    }
    fn table(&self, be: &B, name: &str, shape: &[usize]) -> Result<B::Weight> {
        be.load_table(self.get_shaped(name, shape)?)
    }
    fn experts(&self) -> Option<Arc<dyn ExpertSource>> {
        Some(Arc::new(self.clone()))
    }
}

/// A checkpoint whose matrices are quantized as they load (`plan` picks each tensor's format; the rest load
/// as stored): what `herd quantize` writes, without the file, and how the quality of a format is measured.
pub struct QuantizeOnLoad<'a> {
    pub ck: &'a Checkpoint,
    pub plan: QuantPlan,
}

impl<B: Backend> WeightSource<B> for QuantizeOnLoad<'_> {
    fn contains(&self, name: &str) -> bool {
        self.ck.contains(name)
    }
    fn weight(&self, be: &B, name: &str, shape: &[usize]) -> Result<B::Weight> {
        let t = self.ck.get_shaped(name, shape)?;
        match self.plan.format_of(name, shape) {
            Some(dt) if !t.dtype.is_quantized() => {
                let bytes =
                    crate::quant::quantize(&t.to_f32(), shape, dt).map_err(|e| HerdError::tensor(&t.name, e))?;
                be.load_weight(&TensorRef::owned(&t.name, dt, shape.to_vec(), bytes))
            }
            _ => be.load_weight(t),
        }
    }
    fn table(&self, be: &B, name: &str, shape: &[usize]) -> Result<B::Weight> {
        let t = self.ck.get_shaped(name, shape)?;
        match self.plan.format_of(name, shape) {
            Some(_) if !t.dtype.is_quantized() => self.weight(be, name, shape),
            _ => be.load_table(t),
        }
    }
    fn experts(&self) -> Option<Arc<dyn ExpertSource>> {
        Some(Arc::new(QuantizingExperts { ck: self.ck.clone(), plan: self.plan.clone() }))
    }
}

/// [`QuantizeOnLoad`]'s experts: each quantized as it is fetched.
struct QuantizingExperts {
    ck: Checkpoint,
    plan: QuantPlan,
}

impl ExpertSource for QuantizingExperts {
    fn format(&self, name: &str, shape: &[usize]) -> Result<DType> {
        let t = self.ck.get_shaped(name, shape)?;
        Ok(match self.plan.format_of(name, shape) {
            Some(dt) if !t.dtype.is_quantized() => dt,
            _ => t.dtype,
        })
    }
    fn fetch(&self, name: &str, shape: &[usize], e: usize) -> Result<TensorRef> {
        let t = self.ck.get_shaped(name, shape)?;
        let row = fetch_row(t, e)?;
        match self.plan.format_of(name, shape) {
            Some(dt) if !t.dtype.is_quantized() => {
                let bytes =
                    crate::quant::quantize(&row.to_f32(), &row.shape, dt).map_err(|m| HerdError::tensor(name, m))?;
                Ok(TensorRef::owned(name, dt, row.shape.clone(), bytes))
            }
            _ => Ok(row),
        }
    }
}

/// Where streamed experts come from. Names are the logical expert tensor names
/// (`model.layers.3.feed_forward.experts.gate_up_proj`), shapes their whole shape [E, ...].
pub trait ExpertSource: Send + Sync {
    /// The format expert tensor `name` has (checked to exist with `shape`).
    fn format(&self, name: &str, shape: &[usize]) -> Result<DType>;
    /// Expert `e` of tensor `name`: a tensor of shape [1, ...] in that format, read now. A truncated or
    /// corrupt expert is an error.
    fn fetch(&self, name: &str, shape: &[usize], e: usize) -> Result<TensorRef>;
    /// [`ExpertSource::fetch`] for a source that must not block (HTTP range requests in a browser). The
    /// default fetches at once, so the future is ready when first polled.
    fn fetch_async<'a>(&'a self, name: &'a str, shape: &'a [usize], e: usize) -> ExpertFuture<'a> {
        Box::pin(std::future::ready(self.fetch(name, shape, e)))
    }
}

/// What [`ExpertSource::fetch_async`] returns.
pub type ExpertFuture<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = Result<TensorRef>> + 'a>>;

/// Fetches expert `e` of a stored tensor: its rows read from the file (positioned reads, so a file cut short
/// after it was opened is an error, not a fault) and checked for non-finite values and scales.
pub(crate) fn fetch_row(t: &TensorRef, e: usize) -> Result<TensorRef> {
    let ctx = |m: String| HerdError::tensor(&t.name, format!("expert {e}: {m}"));
    let rr = crate::quant::row_ranges(t.dtype, &t.shape, e).map_err(ctx)?;
    let (base, _) = t.range();
    let values = t.file().read_range(base + rr.values.start, base + rr.values.end).map_err(ctx)?;
    let scales = if rr.scales.is_empty() {
        Vec::new()
    } else {
        t.file().read_range(base + rr.scales.start, base + rr.scales.end).map_err(ctx)?
    };
    let mut one = t.shape.clone();
    one[0] = 1;
    let bytes = crate::quant::row_tensor(t.dtype, &values, &scales);
    crate::quant::check_finite(t.dtype, &one, &bytes).map_err(|m| ctx(format!("{m}: the file is corrupt")))?;
    Ok(TensorRef::owned(&t.name, t.dtype, one, bytes))
}

impl ExpertSource for Checkpoint {
    fn format(&self, name: &str, shape: &[usize]) -> Result<DType> {
        Ok(self.get_shaped(name, shape)?.dtype)
    }
    fn fetch(&self, name: &str, shape: &[usize], e: usize) -> Result<TensorRef> {
        fetch_row(self.get_shaped(name, shape)?, e)
    }
}
