//! Device buffers and weights, and the code that tells a shader the format of the weight it reads.

use herd_core::quant::{DType, ScaleType};

/// The shader constant `WDT` for weights of `dtype` (the prelude in shader.rs decodes it): the low 3 bits
/// are the kind (0 f32, 1 bf16, 2 f16, 3 q8, 4 q4); for q8/q4, bit 3 is the scale type (0 f16, 1 bf16) and
/// bits 8.. the group size.
pub(crate) fn weight_code(dtype: DType) -> u32 {
    match dtype {
        DType::F32 => 0,
        DType::BF16 => 1,
        DType::F16 => 2,
        DType::Q8(g) | DType::Q4(g) => {
            let kind = if matches!(dtype, DType::Q8(_)) { 3 } else { 4 };
            kind | (u32::from(g.scale == ScaleType::BF16) << 3) | (g.group << 8)
        }
    }
}

/// An f32 or u32 buffer on the device.
pub struct GpuBuffer {
    pub(crate) buf: wgpu::Buffer,
    pub(crate) len: usize,
    pub(crate) is_u32: bool,
}

/// One part of a weight: outer rows `first..first + count` (rows of a matrix, experts of an expert tensor).
/// A quantized weight's part holds its values in `buf` and its scales in `scales`.
pub struct WeightPart {
    pub(crate) buf: wgpu::Buffer,
    pub(crate) scales: Option<wgpu::Buffer>,
    pub first: usize,
    pub count: usize,
}

impl WeightPart {
    /// The buffer bound as the scales (binding 12): a float weight's kernels take their own buffer there.
    pub(crate) fn scale_buf(&self) -> &wgpu::Buffer {
        self.scales.as_ref().unwrap_or(&self.buf)
    }
}

/// A weight on the device, in its checkpoint format, as u32 words. A tensor larger than one storage binding
/// is split along its first dimension into parts that each fit.
pub struct GpuWeight {
    pub(crate) parts: Vec<WeightPart>,
    pub dtype: DType,
    pub shape: Vec<usize>,
}

impl GpuWeight {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    /// The shader constant `WDT` of this weight's format ([`weight_code`]).
    pub(crate) fn wdt(&self) -> u32 {
        weight_code(self.dtype)
    }
}
