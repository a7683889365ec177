//! Checkpoints quantized by compressed-tensors in its `pack-quantized` format (the w4a16 / w8a16
//! conversions of Llama 4 that users already have), read into herd's own int4/int8 formats without
//! re-quantizing: the same integers and scales, repacked.
//!
//! compressed-tensors stores a quantized nn.Linear `M` [out, in] as `M.weight_packed` (int32 [out, in·bits/32],
//! the integers `q + 2^(bits-1)` packed along `in`, the first in the lowest bits), `M.weight_scale`
//! ([out, in / group], bf16 or f16) and `M.weight_shape` ([out, in]); symmetric group quantization has no
//! zero point. The routed experts are separate per-expert Linears `experts.{e}.{gate,up,down}_proj`.
//!
//! - A Linear maps onto herd's layout (groups along the last axis) as it is: herd packs int4 the same way,
//!   and int8 differs only by the offset (a flip of each byte's top bit).
//! - The experts become herd's fused input-major tensors (`experts.gate_up_proj` [E, D, 2F] and
//!   `experts.down_proj` [E, F, D], groups along the input axis): the integers and scales transposed.
//!
//! Each tensor is assembled when the model asks for it, so memory stays near one tensor at a time.

use crate::backend::Backend;
use crate::checkpoint::{Checkpoint, RawTensor, TensorRef};
use crate::error::{HerdError, Result};
use crate::quant::{DType, GroupAxis, Grouping, QuantLayout, ScaleType};
use crate::source::WeightSource;

/// A compressed-tensors checkpoint as a [`WeightSource`].
pub struct CompressedTensors<'a> {
    pub ck: &'a Checkpoint,
}

/// The `quantization_config` of config.json, if it is one this reader takes: Ok(false) when it is absent or
/// not compressed-tensors, an error for a compressed-tensors variant herd cannot read.
pub fn is_pack_quantized(config: &serde_json::Value) -> std::result::Result<bool, String> {
    let Some(q) = config.get("quantization_config").or_else(|| config.get("compression_config")) else {
        return Ok(false);
    };
    if q.get("quant_method").and_then(|m| m.as_str()) != Some("compressed-tensors") {
        return Ok(false);
    }
    let format = q.get("format").and_then(|f| f.as_str()).unwrap_or("");
    if format != "pack-quantized" {
        return Err(format!("compressed-tensors format {format:?}: herd reads pack-quantized (int4/int8 weights)"));
    }
    if let Some(groups) = q.get("config_groups").and_then(|g| g.as_object()) {
        for (name, g) in groups {
            let w = &g["weights"];
            let bits = w.get("num_bits").and_then(|b| b.as_u64()).unwrap_or(0);
            let symmetric = w.get("symmetric").and_then(|s| s.as_bool()).unwrap_or(true);
            let kind = w.get("type").and_then(|t| t.as_str()).unwrap_or("int");
            if !(bits == 4 || bits == 8) || !symmetric || kind != "int" {
                return Err(format!(
                    "compressed-tensors group {name:?}: {bits}-bit {kind:?} weights, symmetric={symmetric}: herd reads symmetric int4 and int8"
                ));
            }
            if g.get("input_activations").is_some_and(|a| !a.is_null()) {
                return Err(format!("compressed-tensors group {name:?}: quantized activations are not supported"));
            }
        }
    }
    Ok(true)
}

struct Linear<'a> {
    packed: &'a RawTensor,
    scale: &'a TensorRef,
    out: usize,
    inp: usize,
    bits: u32,
    group: usize,
}

impl<'a> Linear<'a> {
    /// The quantized Linear `stem` (e.g. `model.layers.0.self_attn.q_proj`), if the checkpoint has it.
    fn find(ck: &'a Checkpoint, stem: &str) -> Result<Option<Linear<'a>>> {
        let Some(packed) = ck.raw(&format!("{stem}.weight_packed")) else { return Ok(None) };
        let bad = |msg: String| HerdError::tensor(&packed.name, msg);
        if ck.contains(&format!("{stem}.weight_zero_point")) {
            return Err(bad("asymmetric quantization (a zero point) is not supported".into()));
        }
        let scale = ck.get(&format!("{stem}.weight_scale"))?;
        if packed.dtype != safetensors::Dtype::I32 || packed.shape.len() != 2 || scale.shape.len() != 2 {
            return Err(bad(format!(
                "expected int32 [out, in/8] packed values, got {:?} {:?}",
                packed.dtype, packed.shape
            )));
        }
        let (out, cols) = (packed.shape[0], packed.shape[1]);
        let inp = match ck.raw(&format!("{stem}.weight_shape")) {
            Some(s) if s.bytes().len() == 16 => {
                let v: Vec<i64> =
                    s.bytes().chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap_or([0; 8]))).collect();
                if v[0] as usize != out {
                    return Err(bad(format!("weight_shape {v:?} does not match {} rows", out)));
                }
                v[1] as usize
            }
            _ => return Err(bad("weight_shape missing or not int64 [2]".into())),
        };
        let bits = (32 * cols / inp.max(1)) as u32;
        if !(bits == 4 || bits == 8) || inp * bits as usize != cols * 32 {
            return Err(bad(format!("{cols} int32 columns for {inp} inputs is neither 4 nor 8 bits")));
        }
        if scale.shape[0] != out || scale.shape[1] == 0 || inp % scale.shape[1] != 0 {
            return Err(HerdError::tensor(
                &scale.name,
                format!("scales {:?} for a [{out}, {inp}] weight", scale.shape),
            ));
        }
        if !matches!(scale.dtype, DType::BF16 | DType::F16) {
            return Err(HerdError::tensor(
                &scale.name,
                format!("{} scales (herd keeps bf16 or f16 scales)", scale.dtype.name()),
            ));
        }
        Ok(Some(Linear { packed, scale, out, inp, bits, group: inp / scale.shape[1] }))
    }

    fn scale_type(&self) -> ScaleType {
        if self.scale.dtype == DType::F16 {
            ScaleType::F16
        } else {
            ScaleType::BF16
        }
    }

    /// The integer at (row, col) as herd stores it: the nibble q + 8 (int4) or the byte q (int8).
    #[inline]
    fn stored(&self, row: usize, col: usize) -> u8 {
        let b = self.packed.bytes();
        if self.bits == 4 {
            let i = row * self.inp + col;
            let byte = b[i / 2];
            if i.is_multiple_of(2) {
                byte & 15
            } else {
                byte >> 4
            }
        } else {
            b[row * self.inp + col] ^ 0x80
        }
    }

    fn scale_bits(&self, row: usize, g: usize) -> [u8; 2] {
        let b = self.scale.bytes();
        let o = 2 * (row * (self.inp / self.group) + g);
        [b[o], b[o + 1]]
    }
}

fn dtype(bits: u32, g: Grouping) -> DType {
    if bits == 4 {
        DType::Q4(g)
    } else {
        DType::Q8(g)
    }
}

/// A Linear in herd's layout: values as they are (int8: offset flipped), then the scales.
fn linear_bytes(l: &Linear, dt: DType) -> Result<Vec<u8>> {
    let layout = QuantLayout::new(dt, &[l.out, l.inp]).map_err(|e| HerdError::tensor(&l.packed.name, e))?;
    let mut out = vec![0u8; layout.scale_offset + 2 * layout.scales];
    let vals = l.packed.bytes();
    if l.bits == 4 {
        out[..vals.len()].copy_from_slice(vals);
    } else {
        for (o, v) in out.iter_mut().zip(vals) {
            *o = v ^ 0x80;
        }
    }
    out[layout.scale_offset..].copy_from_slice(l.scale.bytes());
    Ok(out)
}

/// Experts `parts[e] = [M_0 (rows 0..), M_1 (rows ..)]` (each [rows_j, in]) stacked along their rows and
/// transposed into herd's input-major [E, in, Σ rows] with groups along `in`.
fn experts_bytes(parts: &[Vec<Linear>], dt: DType, shape: &[usize]) -> Result<Vec<u8>> {
    let layout = QuantLayout::new(dt, shape).map_err(|e| HerdError::tensor(&parts[0][0].packed.name, e))?;
    let (inp, n) = (shape[1], shape[2]);
    let mut out = vec![0u8; layout.scale_offset + 2 * layout.scales];
    let groups = inp / layout.group;
    for (e, mats) in parts.iter().enumerate() {
        let mut col0 = 0;
        for m in mats {
            for r in 0..m.out {
                let col = col0 + r;
                for k in 0..inp {
                    let i = (e * inp + k) * n + col;
                    let v = m.stored(r, k);
                    if layout.bits == 4 {
                        out[i / 2] |= if i.is_multiple_of(2) { v } else { v << 4 };
                    } else {
                        out[i] = v;
                    }
                }
                for g in 0..groups {
                    let si = (e * groups + g) * n + col;
                    let o = layout.scale_offset + 2 * si;
                    out[o..o + 2].copy_from_slice(&m.scale_bits(r, g));
                }
            }
            col0 += m.out;
        }
    }
    Ok(out)
}

/// A quantized Linear of a compressed-tensors checkpoint, for `herd inspect`.
pub struct QuantizedLinear {
    /// The Linear's name (`model.layers.0.self_attn.q_proj`).
    pub stem: String,
    pub bits: u32,
    /// Its elements ([out, in]), and the bytes of its packed values and scales.
    pub numel: usize,
    pub bytes: usize,
}

/// The quantized Linears of a compressed-tensors checkpoint (none in other checkpoints).
pub fn quantized_linears(ck: &Checkpoint) -> Result<Vec<QuantizedLinear>> {
    let mut out = Vec::new();
    for (name, _) in ck.raw_tensors() {
        let Some(stem) = name.strip_suffix(".weight_packed") else { continue };
        if let Some(l) = Linear::find(ck, stem)? {
            let bytes = l.packed.bytes().len() + l.scale.bytes().len();
            out.push(QuantizedLinear { stem: stem.to_owned(), bits: l.bits, numel: l.out * l.inp, bytes });
        }
    }
    out.sort_by(|a, b| a.stem.cmp(&b.stem));
    Ok(out)
}

impl<B: Backend> WeightSource<B> for CompressedTensors<'_> {
    fn contains(&self, name: &str) -> bool {
        self.ck.contains(name)
            || name.strip_suffix(".weight").is_some_and(|s| self.ck.raw(&format!("{s}.weight_packed")).is_some())
    }

    fn weight(&self, be: &B, name: &str, shape: &[usize]) -> Result<B::Weight> {
        if let Some(stem) = name.strip_suffix(".weight") {
            if let Some(l) = Linear::find(self.ck, stem)? {
                if [l.out, l.inp] != shape {
                    return Err(HerdError::tensor(
                        &l.packed.name,
                        format!("shape [{}, {}], expected {shape:?}", l.out, l.inp),
                    ));
                }
                let g = Grouping { group: l.group as u32, scale: l.scale_type(), axis: GroupAxis::Last };
                let dt = dtype(l.bits, g);
                let bytes = linear_bytes(&l, dt)?;
                return be.load_weight(&TensorRef::owned(&format!("{stem}.weight"), dt, shape.to_vec(), bytes));
            }
        }
        // The fused expert tensors, from per-expert Linears.
        if let Some((dt, bytes)) = fused_experts(self.ck, name, shape, 0..shape.first().copied().unwrap_or(0))? {
            return be.load_weight(&TensorRef::owned(name, dt, shape.to_vec(), bytes));
        }
        be.load_weight(self.ck.get_shaped(name, shape)?)
    }

    fn experts(&self) -> Option<std::sync::Arc<dyn crate::source::ExpertSource>> {
        Some(std::sync::Arc::new(CompressedExperts(self.ck.clone())))
    }
}

/// A compressed-tensors checkpoint's experts, one at a time (for `--expert-cache`).
struct CompressedExperts(Checkpoint);

impl crate::source::ExpertSource for CompressedExperts {
    fn format(&self, name: &str, shape: &[usize]) -> Result<DType> {
        match fused_experts(&self.0, name, shape, 0..0)? {
            Some((dt, _)) => Ok(dt),
            None => crate::source::ExpertSource::format(&self.0, name, shape),
        }
    }
    fn fetch(&self, name: &str, shape: &[usize], e: usize) -> Result<TensorRef> {
        let mut one = shape.to_vec();
        one[0] = 1;
        match fused_experts(&self.0, name, shape, e..e + 1)? {
            Some((dt, bytes)) => {
                crate::quant::check_finite(dt, &one, &bytes)
                    .map_err(|m| HerdError::tensor(name, format!("expert {e}: {m}: the file is corrupt")))?;
                Ok(TensorRef::owned(name, dt, one, bytes))
            }
            None => crate::source::ExpertSource::fetch(&self.0, name, shape, e),
        }
    }
}

/// The fused expert tensor `name` of `shape` [E, in, n] made from the per-expert Linears of the experts in
/// `range` (its format, and the bytes of those experts as a [range.len(), in, n] tensor); None when `name`
/// is not a fused expert tensor this checkpoint stores as Linears. The format comes from expert 0, and every
/// expert asked for must match it.
fn fused_experts(
    ck: &Checkpoint,
    name: &str,
    shape: &[usize],
    range: std::ops::Range<usize>,
) -> Result<Option<(DType, Vec<u8>)>> {
    let fused = [("experts.gate_up_proj", &["gate_proj", "up_proj"][..]), ("experts.down_proj", &["down_proj"][..])];
    for (suffix, mats) in fused {
        let Some(prefix) = name.strip_suffix(suffix) else { continue };
        if ck.contains(name) || shape.len() != 3 || range.end > shape[0] {
            break;
        }
        let expert = |e: usize| -> Result<Vec<Linear<'_>>> {
            let mut ms = Vec::new();
            for m in mats {
                let stem = format!("{prefix}experts.{e}.{m}");
                let l = Linear::find(ck, &stem)?
                    .ok_or_else(|| HerdError::tensor(&stem, format!("missing from the checkpoint in {}", ck.source)))?;
                if l.inp != shape[1] {
                    return Err(HerdError::tensor(&l.packed.name, format!("{} inputs, expected {}", l.inp, shape[1])));
                }
                ms.push(l);
            }
            Ok(ms)
        };
        let first_parts = expert(0)?;
        let first = &first_parts[0];
        let rows: usize = first_parts.iter().map(|l| l.out).sum();
        if rows != shape[2] {
            return Err(HerdError::tensor(name, format!("experts of {rows} outputs, expected {}", shape[2])));
        }
        let g = Grouping { group: first.group as u32, scale: first.scale_type(), axis: GroupAxis::SecondLast };
        let dt = dtype(first.bits, g);
        let mut parts = Vec::with_capacity(range.len());
        for e in range.clone() {
            let ms = if e == 0 { expert(0)? } else { expert(e)? };
            let r: usize = ms.iter().map(|l| l.out).sum();
            if r != rows || ms.iter().any(|l| l.bits != first.bits || l.group != first.group) {
                return Err(HerdError::tensor(name, "experts of different shapes or formats"));
            }
            parts.push(ms);
        }
        if parts.is_empty() {
            return Ok(Some((dt, Vec::new())));
        }
        let sub = [parts.len(), shape[1], shape[2]];
        return Ok(Some((dt, experts_bytes(&parts, dt, &sub)?)));
    }
    Ok(None)
}
