//! Weights and values for the op tables: deterministic values, weights loaded as a checkpoint's would be,
//! and weights written row by row as the expert cache writes its slots.

use half::{bf16, f16};
use herd_core::backend::Backend;
use herd_core::checkpoint::{Checkpoint, FileBytes, TensorRef};
use herd_core::quant::{quantize, DType};
use herd_core::Result;

/// Deterministic values in [-1, 1).
pub(crate) struct Rng(pub u64);
impl Rng {
    pub(crate) fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n)
            .map(|_| {
                self.0 ^= self.0 << 13;
                self.0 ^= self.0 >> 7;
                self.0 ^= self.0 << 17;
                ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }
    pub(crate) fn below(&mut self, n: u32) -> u32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as u32
    }
}

/// A weight of `shape` [R, ...] made with `alloc_weight` and filled one outer row at a time with
/// `write_weight_row` (last row first), as the expert cache fills its slots; and its values as stored.
pub(crate) fn written_weight<B: Backend>(
    be: &B,
    dtype: DType,
    shape: &[usize],
    vals: &[f32],
) -> Result<(B::Weight, Vec<f32>)> {
    let bytes = if dtype.is_quantized() {
        quantize(vals, shape, dtype).map_err(herd_core::HerdError::Input)?
    } else {
        match dtype {
            DType::BF16 => vals.iter().flat_map(|&v| bf16::from_f32(v).to_bits().to_le_bytes()).collect(),
            DType::F16 => vals.iter().flat_map(|&v| f16::from_f32(v).to_bits().to_le_bytes()).collect(),
            _ => vals.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    };
    let mut seen = vec![0f32; vals.len()];
    herd_core::quant::bytes_to_f32(dtype, shape, &bytes, &mut seen);
    let w = be.alloc_weight("slots", shape, dtype)?;
    let mut one = shape.to_vec();
    one[0] = 1;
    for r in (0..shape[0]).rev() {
        let rr = herd_core::quant::row_ranges(dtype, shape, r).map_err(herd_core::HerdError::Input)?;
        let row = herd_core::quant::row_tensor(dtype, &bytes[rr.values], &bytes[rr.scales]);
        be.write_weight_row(&w, r, &TensorRef::owned("slot row", dtype, one.clone(), row))?;
    }
    Ok((w, seen))
}

/// A weight in `dtype` on the backend, and its values as the backend sees them (rounded to the format, or
/// quantized and dequantized). Float formats go through a safetensors file, as a checkpoint's would.
pub(crate) fn weight<B: Backend>(be: &B, dtype: DType, shape: &[usize], vals: &[f32]) -> Result<(B::Weight, Vec<f32>)> {
    if dtype.is_quantized() {
        let bytes = quantize(vals, shape, dtype).map_err(herd_core::HerdError::Input)?;
        let mut seen = vec![0f32; vals.len()];
        herd_core::quant::bytes_to_f32(dtype, shape, &bytes, &mut seen);
        return Ok((be.load_weight(&TensorRef::owned("w", dtype, shape.to_vec(), bytes))?, seen));
    }
    let (bytes, seen): (Vec<u8>, Vec<f32>) = match dtype {
        DType::BF16 => {
            let h: Vec<bf16> = vals.iter().map(|&v| bf16::from_f32(v)).collect();
            (h.iter().flat_map(|v| v.to_bits().to_le_bytes()).collect(), h.iter().map(|v| v.to_f32()).collect())
        }
        DType::F16 => {
            let h: Vec<f16> = vals.iter().map(|&v| f16::from_f32(v)).collect();
            (h.iter().flat_map(|v| v.to_bits().to_le_bytes()).collect(), h.iter().map(|v| v.to_f32()).collect())
        }
        _ => (vals.iter().flat_map(|v| v.to_le_bytes()).collect(), vals.to_vec()),
    };
    let st_dtype = match dtype {
        DType::BF16 => safetensors::Dtype::BF16,
        DType::F16 => safetensors::Dtype::F16,
        _ => safetensors::Dtype::F32,
    };
    let view = safetensors::tensor::TensorView::new(st_dtype, shape.to_vec(), &bytes).expect("weight view");
    let file = safetensors::serialize([("w", view)], None).expect("serialize");
    let ck = Checkpoint::from_bytes(vec![("op-table".into(), FileBytes::Owned(file))])?;
    Ok((be.load_weight(ck.get("w")?)?, seen))
}
