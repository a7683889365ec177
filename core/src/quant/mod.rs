//! Weight formats: the element types a weight may have, their packing, and their conversion to f32.
//! Every backend multiplies by each format; the packing lives here so it is shared.
//!
//! # Float formats
//! `F32`, `BF16`, `F16`: little-endian elements in row-major order, as safetensors stores them.
//!
//! # Quantized formats (group-wise, symmetric)
//! `Q8(g)` and `Q4(g)` hold a tensor of some logical shape `S` (the shape of the float tensor it stands for)
//! as integers `q` and scales: element value = `q · scale`, with `q ∈ [-128, 127]` (Q8) or `[-8, 7]` (Q4), one
//! scale per `g.group` consecutive elements along the tensor's *reduction* axis ([`GroupAxis`]): the last axis
//! for nn.Linear weights `[N, K]` (x·Wᵀ), the second-last for the input-major expert tensors `[E, K, N]`
//! (x·W). One contiguous buffer, laid out for GPU decode:
//!
//! 1. **Values**, in `S`'s row-major element order. Q8: one two's-complement byte per element. Q4: two
//!    elements per byte, element `2j` in the low nibble and `2j + 1` in the high one, each stored as
//!    `q + 8` (0..15; the offset convention of compressed-tensors' `pack-quantized`), so 8 consecutive
//!    elements of the contiguous axis are one little-endian u32. The last axis must be even for Q4.
//! 2. Zero padding to a multiple of 16 bytes.
//! 3. **Scales**, f16 or bf16 ([`ScaleType`]), row-major in the shape `S` with the grouped axis divided by
//!    the group size (which must divide it).
//!
//! A backend multiplies by these without dequantizing the whole tensor: a GEMV reads 16 bytes of values
//! (16 or 32 elements) and one scale per group.

pub mod fill;
mod metadata;
mod plan;

pub use fill::Fill;
pub use metadata::{metadata_key, metadata_value, parse_metadata};
pub use plan::QuantPlan;

use half::{bf16, f16};

/// The storage format of a weight tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    BF16,
    F16,
    /// 8-bit integers, group-wise scales (see the module docs).
    Q8(Grouping),
    /// 4-bit integers, group-wise scales (see the module docs).
    Q4(Grouping),
}

/// How a quantized tensor's scales are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ScaleType {
    F16,
    BF16,
}

/// The axis whose consecutive elements share a scale: the one a matmul reduces over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GroupAxis {
    /// nn.Linear weights [N, K] (and the embedding [V, D]).
    Last,
    /// Input-major expert tensors [E, K, N].
    SecondLast,
}

/// The grouping of a quantized format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Grouping {
    pub group: u32,
    pub scale: ScaleType,
    pub axis: GroupAxis,
}

impl DType {
    /// Bytes per element of a float format; 0 for the quantized formats, whose size is
    /// [`DType::bytes`] of a shape.
    pub fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::BF16 | DType::F16 => 2,
            DType::Q8(_) | DType::Q4(_) => 0,
        }
    }

    pub fn is_quantized(self) -> bool {
        matches!(self, DType::Q8(_) | DType::Q4(_))
    }

    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::BF16 => "bf16",
            DType::F16 => "f16",
            DType::Q8(_) => "q8",
            DType::Q4(_) => "q4",
        }
    }

    /// The grouping of a quantized format.
    pub fn grouping(self) -> Option<Grouping> {
        match self {
            DType::Q8(g) | DType::Q4(g) => Some(g),
            _ => None,
        }
    }

    /// The bytes a tensor of `shape` takes in this format, or why the shape does not fit it.
    pub fn bytes(self, shape: &[usize]) -> std::result::Result<usize, String> {
        let numel = checked_numel(shape)?;
        let Some(g) = self.grouping() else {
            return numel.checked_mul(self.size()).ok_or_else(|| format!("shape {shape:?} is too large"));
        };
        let layout = QuantLayout::new(self, shape)?;
        let _ = g;
        Ok(layout.scale_offset + 2 * layout.scales)
    }

    /// The safetensors dtype, if herd can compute with it.
    pub fn from_safetensors(d: safetensors::Dtype) -> Option<DType> {
        match d {
            safetensors::Dtype::F32 => Some(DType::F32),
            safetensors::Dtype::BF16 => Some(DType::BF16),
            safetensors::Dtype::F16 => Some(DType::F16),
            _ => None,
        }
    }
}

/// Where outer row `row` (index `row` along the first axis: one expert of an expert tensor) of a tensor of
/// `shape` in `dtype` lies: its values, and for the quantized formats its scales (empty for the float
/// formats). Both are contiguous, since groups never cross an outer row of a tensor of 3 or more axes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowRanges {
    pub values: std::ops::Range<usize>,
    pub scales: std::ops::Range<usize>,
}

pub fn row_ranges(dtype: DType, shape: &[usize], row: usize) -> std::result::Result<RowRanges, String> {
    if shape.len() < 3 || row >= shape[0] {
        return Err(format!("row {row} of a tensor of shape {shape:?}: needs 3 or more axes and a row inside"));
    }
    let inner: usize = shape[1..].iter().product();
    let Some(g) = dtype.grouping() else {
        let n = inner * dtype.size();
        return Ok(RowRanges { values: row * n..(row + 1) * n, scales: 0..0 });
    };
    let l = QuantLayout::new(dtype, shape)?;
    let nv = inner * l.bits as usize / 8;
    let ns = 2 * inner / g.group as usize;
    let s0 = l.scale_offset + row * ns;
    Ok(RowRanges { values: row * nv..(row + 1) * nv, scales: s0..s0 + ns })
}

/// The bytes of a one-row tensor (shape `[1, ...]`) from a row's values and scales (see [`row_ranges`]).
pub fn row_tensor(dtype: DType, values: &[u8], scales: &[u8]) -> Vec<u8> {
    if !dtype.is_quantized() {
        return values.to_vec();
    }
    let mut out = Vec::with_capacity(values.len().div_ceil(16) * 16 + scales.len());
    out.extend_from_slice(values);
    out.resize(values.len().div_ceil(16) * 16, 0);
    out.extend_from_slice(scales);
    out
}

/// Why a tensor's bytes cannot be weights, if they cannot: a non-finite float value or scale (what a
/// corrupted or partly written file usually shows). The quantized values themselves are all valid.
pub fn check_finite(dtype: DType, shape: &[usize], bytes: &[u8]) -> std::result::Result<(), String> {
    let (words, kind): (&[u8], DType) = match dtype.grouping() {
        Some(g) => {
            let l = QuantLayout::new(dtype, shape)?;
            let st = if g.scale == ScaleType::BF16 { DType::BF16 } else { DType::F16 };
            (bytes.get(l.scale_offset..).unwrap_or(&[]), st)
        }
        None => (bytes, dtype),
    };
    let bad = match kind {
        DType::F32 => words.chunks_exact(4).position(|c| !f32::from_le_bytes([c[0], c[1], c[2], c[3]]).is_finite()),
        DType::BF16 => words.chunks_exact(2).position(|c| (u16::from_le_bytes([c[0], c[1]]) & 0x7f80) == 0x7f80),
        _ => words.chunks_exact(2).position(|c| (u16::from_le_bytes([c[0], c[1]]) & 0x7c00) == 0x7c00),
    };
    match bad {
        Some(i) if dtype.is_quantized() => Err(format!("scale {i} is not a finite number")),
        Some(i) => Err(format!("element {i} is not a finite number")),
        None => Ok(()),
    }
}

/// Converts a whole tensor of `shape` in `dtype` (little-endian bytes, as laid out in the module docs) into
/// f32 values in `out` (of the tensor's element count).
pub fn bytes_to_f32(dtype: DType, shape: &[usize], bytes: &[u8], out: &mut [f32]) {
    match dtype {
        DType::F32 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        DType::BF16 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16);
            }
        }
        DType::F16 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32();
            }
        }
        DType::Q8(_) | DType::Q4(_) => match QuantLayout::new(dtype, shape) {
            Ok(l) if bytes.len() >= l.scale_offset + 2 * l.scales => l.to_f32(bytes, 0, out),
            _ => out.fill(f32::NAN),
        },
    }
}

/// Rounds an f32 to the nearest bf16 (ties to even) and back, as torch does on a bf16 cast.
pub fn round_bf16(x: f32) -> f32 {
    bf16::from_f32(x).to_f32()
}

/// Where the parts of a quantized tensor lie, and how its elements map to scales.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuantLayout {
    pub bits: u32,
    pub group: usize,
    pub scale: ScaleType,
    pub axis: GroupAxis,
    pub numel: usize,
    /// Length of the last axis.
    pub last: usize,
    /// Length of the second-last axis (1 for a vector).
    pub second: usize,
    /// Byte offset of the scales (the values come first).
    pub scale_offset: usize,
    /// Number of scales.
    pub scales: usize,
}

/// The element count of `shape`, or an error when it overflows (shapes come from file headers).
pub fn checked_numel(shape: &[usize]) -> std::result::Result<usize, String> {
    shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).ok_or_else(|| format!("shape {shape:?} is too large"))
}

impl QuantLayout {
    pub fn new(dtype: DType, shape: &[usize]) -> std::result::Result<QuantLayout, String> {
        let (bits, g) = match dtype {
            DType::Q8(g) => (8, g),
            DType::Q4(g) => (4, g),
            other => return Err(format!("{} is not a quantized format", other.name())),
        };
        let group = g.group as usize;
        let numel = checked_numel(shape)?;
        // Two bytes of scale per group and the values' bytes must fit too.
        numel.checked_mul(2).ok_or_else(|| format!("shape {shape:?} is too large"))?;
        let last = *shape.last().ok_or("a quantized tensor needs at least one dimension")?;
        let second = if shape.len() >= 2 { shape[shape.len() - 2] } else { 1 };
        if group == 0 {
            return Err("group size 0".into());
        }
        if bits == 4 && last % 2 != 0 {
            return Err(format!("q4 needs an even last dimension, shape {shape:?}"));
        }
        let grouped = match g.axis {
            GroupAxis::Last => last,
            GroupAxis::SecondLast if shape.len() >= 2 => second,
            GroupAxis::SecondLast => return Err(format!("shape {shape:?} has no second-last axis to group")),
        };
        if grouped % group != 0 {
            return Err(format!("group size {group} does not divide the grouped axis of shape {shape:?}"));
        }
        let value_bytes = numel * bits as usize / 8;
        Ok(QuantLayout {
            bits,
            group,
            scale: g.scale,
            axis: g.axis,
            numel,
            last,
            second,
            scale_offset: value_bytes.div_ceil(16) * 16,
            scales: numel / group,
        })
    }

    /// The format this layout is of.
    pub fn dtype(&self) -> DType {
        let g = Grouping { group: self.group as u32, scale: self.scale, axis: self.axis };
        if self.bits == 8 {
            DType::Q8(g)
        } else {
            DType::Q4(g)
        }
    }

    /// The scale index of flat element `i`.
    #[inline]
    pub fn scale_index(&self, i: usize) -> usize {
        match self.axis {
            GroupAxis::Last => i / self.group,
            GroupAxis::SecondLast => {
                let (outer, rem) = (i / (self.second * self.last), i % (self.second * self.last));
                let (r, l) = (rem / self.last, rem % self.last);
                (outer * (self.second / self.group) + r / self.group) * self.last + l
            }
        }
    }

    #[inline]
    fn scale_at(&self, bytes: &[u8], si: usize) -> f32 {
        let o = self.scale_offset + 2 * si;
        let b = u16::from_le_bytes([bytes[o], bytes[o + 1]]);
        match self.scale {
            ScaleType::F16 => f16::from_bits(b).to_f32(),
            ScaleType::BF16 => f32::from_bits((b as u32) << 16),
        }
    }

    /// The integer of flat element `i`.
    #[inline]
    pub fn q_at(&self, bytes: &[u8], i: usize) -> i32 {
        if self.bits == 8 {
            bytes[i] as i8 as i32
        } else {
            let b = bytes[i / 2];
            (if i.is_multiple_of(2) { b & 15 } else { b >> 4 }) as i32 - 8
        }
    }

    /// Converts `out.len()` consecutive elements from flat index `start` to f32 (q · scale, in f32).
    pub fn to_f32(&self, bytes: &[u8], start: usize, out: &mut [f32]) {
        self.to_f32_inline(bytes, start, out)
    }

    /// [`QuantLayout::to_f32`] for callers that compile it into a function with more vector instructions
    /// enabled (the CPU backend's AVX2 kernels): the loops are written for the compiler to vectorize.
    #[inline(always)]
    pub fn to_f32_inline(&self, bytes: &[u8], start: usize, out: &mut [f32]) {
        // In runs that share a scale (Last: a group) or take consecutive scales (SecondLast: a run of the
        // last axis): the integers first, then the scales.
        let mut j = 0;
        while j < out.len() {
            let i = start + j;
            let run = match self.axis {
                GroupAxis::Last => (self.group - i % self.group).min(out.len() - j),
                GroupAxis::SecondLast => (self.last - i % self.last).min(out.len() - j),
            };
            let o = &mut out[j..j + run];
            self.ints(bytes, i, o);
            match self.axis {
                GroupAxis::Last => {
                    let sc = self.scale_at(bytes, i / self.group);
                    for v in o.iter_mut() {
                        *v *= sc;
                    }
                }
                GroupAxis::SecondLast => {
                    let s0 = self.scale_offset + 2 * self.scale_index(i);
                    let sb = &bytes[s0..s0 + 2 * run];
                    match self.scale {
                        ScaleType::BF16 => {
                            for (v, b) in o.iter_mut().zip(sb.chunks_exact(2)) {
                                *v *= f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16);
                            }
                        }
                        ScaleType::F16 => {
                            for (v, b) in o.iter_mut().zip(sb.chunks_exact(2)) {
                                *v *= f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32();
                            }
                        }
                    }
                }
            }
            j += run;
        }
    }

    /// The integers of `out.len()` consecutive elements from flat index `i`, as f32.
    #[inline(always)]
    fn ints(&self, bytes: &[u8], i: usize, out: &mut [f32]) {
        if self.bits == 8 {
            let n = out.len();
            for (o, &b) in out.iter_mut().zip(&bytes[i..i + n]) {
                *o = b as i8 as f32;
            }
            return;
        }
        let (mut i, mut o) = (i, &mut out[..]);
        if i % 2 == 1 && !o.is_empty() {
            o[0] = self.q_at(bytes, i) as f32;
            (i, o) = (i + 1, &mut o[1..]);
        }
        let pairs = o.len() / 2;
        for (p, &b) in o.chunks_exact_mut(2).zip(&bytes[i / 2..i / 2 + pairs]) {
            p[0] = ((b & 15) as i32 - 8) as f32;
            p[1] = ((b >> 4) as i32 - 8) as f32;
        }
        if o.len() % 2 == 1 {
            let last = o.len() - 1;
            o[last] = self.q_at(bytes, i + last) as f32;
        }
    }
}

/// Quantizes `values` (a tensor of `shape`, row-major) into `dtype` (symmetric, per group: the scale is
/// max|x| / 127 for Q8 and max|x| / 7 for Q4, rounded to the scale type, and q = round(x / scale), clamped).
pub fn quantize(values: &[f32], shape: &[usize], dtype: DType) -> std::result::Result<Vec<u8>, String> {
    let l = QuantLayout::new(dtype, shape)?;
    if values.len() != l.numel {
        return Err(format!("{} values for shape {shape:?}", values.len()));
    }
    // Bands of elements that own their scales: `group` rows for groups along the second-last axis, one
    // row along the last. Each band's values, and its scales, are contiguous, so bands quantize apart.
    let band = match l.axis {
        GroupAxis::SecondLast => l.group * l.last,
        GroupAxis::Last => l.last,
    };
    let (vb, sb) = (band * l.bits as usize / 8, 2 * band / l.group);
    let mut out = vec![0u8; l.scale_offset + 2 * l.scales];
    let (vals, rest) = out.split_at_mut(l.scale_offset);
    let vals = &mut vals[..l.numel * l.bits as usize / 8];
    let scales = &mut rest[..2 * l.scales];
    #[cfg(not(target_arch = "wasm32"))]
    {
        use rayon::prelude::*;
        values
            .par_chunks(band)
            .zip(vals.par_chunks_mut(vb).zip(scales.par_chunks_mut(sb)))
            .for_each(|(x, (v, s))| quantize_band(x, v, s, &l));
    }
    #[cfg(target_arch = "wasm32")]
    for (x, (v, s)) in values.chunks(band).zip(vals.chunks_mut(vb).zip(scales.chunks_mut(sb))) {
        quantize_band(x, v, s, &l);
    }
    Ok(out)
}

/// One band of [`quantize`]: its values `x`, into its value bytes `v` and scale bytes `s`.
fn quantize_band(x: &[f32], v: &mut [u8], s: &mut [u8], l: &QuantLayout) {
    let qmax = if l.bits == 8 { 127.0 } else { 7.0 };
    let (qlo, qhi) = if l.bits == 8 { (-128, 127) } else { (-8, 7) };
    let scale_of = |i: usize| match l.axis {
        GroupAxis::SecondLast => i % l.last,
        GroupAxis::Last => i / l.group,
    };
    // Scales: the largest magnitude of each group.
    let mut absmax = vec![0f32; s.len() / 2];
    for (i, &xv) in x.iter().enumerate() {
        let j = scale_of(i);
        absmax[j] = absmax[j].max(xv.abs());
    }
    let mut scales = vec![0f32; absmax.len()];
    for (j, &m) in absmax.iter().enumerate() {
        let raw = m / qmax;
        let (bits, rounded) = match l.scale {
            ScaleType::F16 => {
                let h = f16::from_f32(raw);
                (h.to_bits(), h.to_f32())
            }
            ScaleType::BF16 => {
                let h = bf16::from_f32(raw);
                (h.to_bits(), h.to_f32())
            }
        };
        scales[j] = rounded;
        s[2 * j..2 * j + 2].copy_from_slice(&bits.to_le_bytes());
    }
    for (i, &xv) in x.iter().enumerate() {
        let sc = scales[scale_of(i)];
        let q = if sc > 0.0 && sc.is_finite() { ((xv / sc).round() as i32).clamp(qlo, qhi) } else { 0 };
        if l.bits == 8 {
            v[i] = q as i8 as u8;
        } else {
            let nib = (q + 8) as u8;
            v[i / 2] |= if i % 2 == 0 { nib } else { nib << 4 };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q4(group: u32, axis: GroupAxis) -> DType {
        DType::Q4(Grouping { group, scale: ScaleType::F16, axis })
    }

    #[test]
    fn q4_packing_is_the_documented_one() {
        // One group of 8 along the last axis: max |x| = 7 gives scale 1, so q = x.
        let x = [0.0, 1.0, -1.0, 7.0, -7.0, 2.0, -8.0 / 8.0 * 3.0, 5.0];
        let b = quantize(&x, &[8], q4(8, GroupAxis::Last)).unwrap();
        // Nibbles q + 8, element 2j low: (0+8) | (1+8)<<4, (-1+8) | (7+8)<<4, ...
        assert_eq!(&b[..4], &[0x98, 0xf7, 0xa1, 0xd5]);
        assert_eq!(&b[4..16], &[0u8; 12]);
        assert_eq!(u16::from_le_bytes([b[16], b[17]]), f16::from_f32(1.0).to_bits());
        assert_eq!(b.len(), 18);
        assert_eq!(q4(8, GroupAxis::Last).bytes(&[8]).unwrap(), 18);
        let l = QuantLayout::new(q4(8, GroupAxis::Last), &[8]).unwrap();
        let mut back = [0f32; 8];
        l.to_f32(&b, 0, &mut back);
        assert_eq!(back, [0.0, 1.0, -1.0, 7.0, -7.0, 2.0, -3.0, 5.0]);
    }

    #[test]
    fn round_trip_error_is_within_half_a_step() {
        let mut r = 1u64;
        let mut rnd = || {
            r ^= r << 13;
            r ^= r >> 7;
            r ^= r << 17;
            (r % 2001) as f32 / 1000.0 - 1.0
        };
        for (shape, axis) in [(vec![6, 64], GroupAxis::Last), (vec![3, 64, 10], GroupAxis::SecondLast)] {
            let x: Vec<f32> = (0..shape.iter().product::<usize>()).map(|_| rnd()).collect();
            for (dt, steps) in [
                (DType::Q8(Grouping { group: 32, scale: ScaleType::BF16, axis }), 127.0),
                (q4(32, axis), 7.0),
                (DType::Q4(Grouping { group: 16, scale: ScaleType::BF16, axis }), 7.0),
            ] {
                let b = quantize(&x, &shape, dt).unwrap();
                assert_eq!(b.len(), dt.bytes(&shape).unwrap());
                let l = QuantLayout::new(dt, &shape).unwrap();
                let mut back = vec![0f32; x.len()];
                l.to_f32(&b, 0, &mut back);
                // Per group: |x - q·s| <= s/2 (plus the scale's own rounding, under 1%).
                let mut absmax = vec![0f32; l.scales];
                for (i, v) in x.iter().enumerate() {
                    absmax[l.scale_index(i)] = absmax[l.scale_index(i)].max(v.abs());
                }
                for (i, (a, b)) in x.iter().zip(&back).enumerate() {
                    let step = absmax[l.scale_index(i)] / steps;
                    assert!((a - b).abs() <= 0.51 * step * 1.01 + 1e-7, "{dt:?} {i}: {a} vs {b}");
                }
                // A range in the middle converts like the whole.
                let mut part = vec![0f32; 37];
                l.to_f32(&b, 11, &mut part);
                assert_eq!(part, back[11..48]);
            }
        }
    }

    #[test]
    fn bad_shapes_are_refused() {
        assert!(QuantLayout::new(q4(32, GroupAxis::Last), &[4, 48]).is_err()); // 32 does not divide 48
        assert!(QuantLayout::new(q4(2, GroupAxis::Last), &[3, 5]).is_err()); // odd last axis
        assert!(QuantLayout::new(q4(2, GroupAxis::SecondLast), &[8]).is_err()); // no second-last axis
        assert!(QuantLayout::new(DType::BF16, &[8]).is_err());
        // Second-last grouping: scales are [E, K/G, N].
        let l = QuantLayout::new(q4(4, GroupAxis::SecondLast), &[2, 8, 6]).unwrap();
        assert_eq!(l.scales, 2 * 2 * 6);
        assert_eq!(l.scale_index(0), 0);
        assert_eq!(l.scale_index(5), 5);
        assert_eq!(l.scale_index(4 * 6 + 1), 6 + 1); // row 4 starts the second group
        assert_eq!(l.scale_index(8 * 6), 12); // second expert
    }
}
