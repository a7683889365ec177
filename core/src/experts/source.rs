//! Where streamed experts come from ([`ExpertSource`]), and the checkpoint's own: rows read with positioned
//! reads and checked.

use crate::checkpoint::{Checkpoint, TensorRef};
use crate::error::{HerdError, Result};
use crate::quant::DType;

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
