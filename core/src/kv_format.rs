//! The formats the KV cache stores keys and values in (`--kv-dtype`), and their exact bit layouts. Every
//! backend writes and reads them the same way: the CPU with the functions here, WGSL and CUDA with their own
//! copies of these rules (the op table checks all three against a reference that quantizes independently).
//!
//! A slot (one position's `[kv_heads, head_dim]` keys, or values) is a run of u32 words:
//! - `F32`: one word per value, its bits.
//! - `Bf16`, `F16`: two values per word, value `i` in the low half of word `i / 2` when `i` is even, the high
//!   half when odd; rounded to nearest, ties to even.
//! - `Q8`: a byte per value (value `i` in byte `i % 4` of word `i / 4`), the signed integer `round(x / s)`
//!   clamped to ±127, then one word per kv head holding `s` as f32 bits: `s = max |x| / 127` over the head's
//!   values in that slot (0 for a head of zeros).
//! - `Fp8`: as `Q8`, but each byte is `x / s` in OCP FP8 E4M3 (round to nearest even, saturating at ±448) and
//!   `s = max |x| / 448`.
//!
//! - `Q4`: KIVI's 4-bit scheme ([`crate::kv_q4`]): values a slot at a time as above (codes, then a minimum and
//!   step per group of channels); keys a page at a time, each channel over the page's slots, with the page
//!   still being filled kept in f32 in a stage after the pages (see [`crate::backend::KvPages`]). [`encode`],
//!   [`decode`] and [`decode_head`] are the value slot's; keys have their own functions in `kv_q4`.
//!
//! Head dims must be a multiple of 4 for the byte formats, of 2 for the 16-bit ones and of 8 for q4 (Llama 4's
//! is 128).

use half::{bf16, f16};

/// How the KV cache stores a layer's keys and values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum KvDtype {
    #[default]
    F32,
    Bf16,
    F16,
    Q8,
    Fp8,
    Q4,
}

impl KvDtype {
    pub const ALL: [KvDtype; 6] = [KvDtype::F32, KvDtype::Bf16, KvDtype::F16, KvDtype::Q8, KvDtype::Fp8, KvDtype::Q4];

    pub fn name(self) -> &'static str {
        match self {
            KvDtype::F32 => "f32",
            KvDtype::Bf16 => "bf16",
            KvDtype::F16 => "f16",
            KvDtype::Q8 => "q8",
            KvDtype::Fp8 => "fp8",
            KvDtype::Q4 => "q4",
        }
    }

    pub fn parse(s: &str) -> Option<KvDtype> {
        KvDtype::ALL.into_iter().find(|d| d.name() == s)
    }

    /// Whether values are one byte, with a scale per kv head.
    pub fn is_byte(self) -> bool {
        matches!(self, KvDtype::Q8 | KvDtype::Fp8)
    }

    /// Words one slot of `kv_heads` heads of `head_dim` takes (for q4: a slot of values), or why this format
    /// cannot hold that shape.
    pub fn slot_words(self, kv_heads: usize, head_dim: usize) -> Result<usize, String> {
        let n = kv_heads * head_dim;
        match self {
            KvDtype::F32 => Ok(n),
            KvDtype::Bf16 | KvDtype::F16 if head_dim.is_multiple_of(2) => Ok(n / 2),
            KvDtype::Q8 | KvDtype::Fp8 if head_dim.is_multiple_of(4) => Ok(n / 4 + kv_heads),
            KvDtype::Q4 => crate::kv_q4::supports(head_dim).map(|_| crate::kv_q4::value_slot_words(kv_heads, head_dim)),
            d => Err(format!(
                "a {} KV cache needs a head_dim that is a multiple of {}, not {head_dim}",
                d.name(),
                if d.is_byte() { 4 } else { 2 }
            )),
        }
    }

    /// Words one page of `page` slots of keys takes in a layer's key buffer.
    pub fn key_page_words(self, kv_heads: usize, head_dim: usize, page: usize) -> Result<usize, String> {
        let w = self.slot_words(kv_heads, head_dim)?;
        Ok(match self {
            KvDtype::Q4 => crate::kv_q4::key_page_words(kv_heads, head_dim, page),
            _ => page * w,
        })
    }

    /// Words one page of `page` slots of values takes in a layer's value buffer.
    pub fn value_page_words(self, kv_heads: usize, head_dim: usize, page: usize) -> Result<usize, String> {
        Ok(page * self.slot_words(kv_heads, head_dim)?)
    }

    /// Words of a sequence's stage (its keys' partial page in f32) in a layer's key buffer: q4 only.
    pub fn stage_words(self, kv_heads: usize, head_dim: usize, page: usize) -> usize {
        match self {
            KvDtype::Q4 => page * kv_heads * head_dim,
            _ => 0,
        }
    }

    /// The format's number in the device kernels (attention.wgsl, attention.cu).
    pub fn code(self) -> u32 {
        match self {
            KvDtype::F32 => 0,
            KvDtype::Bf16 => 1,
            KvDtype::F16 => 2,
            KvDtype::Q8 => 3,
            KvDtype::Fp8 => 4,
            KvDtype::Q4 => 5,
        }
    }

    /// What one invocation of a device kv_store writes of a slot: a value (f32), a word of two values (the
    /// 16-bit formats), a kv head (the byte formats, whose scale covers the head) or a group of values (q4);
    /// how many there are.
    pub fn store_units(self, kv_heads: usize, head_dim: usize) -> usize {
        match self {
            KvDtype::F32 => kv_heads * head_dim,
            KvDtype::Bf16 | KvDtype::F16 => kv_heads * head_dim / 2,
            KvDtype::Q8 | KvDtype::Fp8 => kv_heads,
            KvDtype::Q4 => kv_heads * head_dim / crate::kv_q4::value_group(head_dim),
        }
    }

    /// Bytes one page of `page` slots takes in a layer, keys and values.
    pub fn page_bytes(self, kv_heads: usize, head_dim: usize, page: usize) -> Result<usize, String> {
        Ok(4 * (self.key_page_words(kv_heads, head_dim, page)? + self.value_page_words(kv_heads, head_dim, page)?))
    }
}

/// The KV formats of full-attention (global) and chunked layers from `--kv-dtype`: one name for both
/// (`q8`), or `global=NAME,chunked=NAME` (either part may be left out; it is then `default`).
pub fn parse_kv_dtypes(s: &str, default: KvDtype) -> Result<[KvDtype; 2], String> {
    let names = || KvDtype::ALL.map(|d| d.name()).join(", ");
    let one = |n: &str| KvDtype::parse(n.trim()).ok_or_else(|| format!("unknown KV format {n:?} (known: {})", names()));
    if !s.contains('=') {
        let d = one(s)?;
        return Ok([d, d]);
    }
    let mut out = [default; 2];
    for part in s.split(',') {
        let (k, v) = part.split_once('=').ok_or_else(|| format!("{part:?}: write global=FORMAT or chunked=FORMAT"))?;
        match k.trim() {
            "global" => out[0] = one(v)?,
            "chunked" => out[1] = one(v)?,
            other => return Err(format!("{other:?}: the layer kinds are global and chunked")),
        }
    }
    Ok(out)
}

/// Writes one slot: `x` is `[kv_heads, head_dim]`, `out` the slot's words.
pub fn encode(dtype: KvDtype, x: &[f32], kv_heads: usize, head_dim: usize, out: &mut [u32]) {
    match dtype {
        KvDtype::F32 => out.iter_mut().zip(x).for_each(|(o, v)| *o = v.to_bits()),
        KvDtype::Bf16 | KvDtype::F16 => {
            let half = |v: f32| -> u32 {
                match dtype {
                    KvDtype::Bf16 => bf16::from_f32(v).to_bits() as u32,
                    _ => f16::from_f32(v).to_bits() as u32,
                }
            };
            for (o, p) in out.iter_mut().zip(x.chunks_exact(2)) {
                *o = half(p[0]) | (half(p[1]) << 16);
            }
        }
        KvDtype::Q4 => crate::kv_q4::encode_values(x, kv_heads, head_dim, out),
        KvDtype::Q8 | KvDtype::Fp8 => {
            let n = kv_heads * head_dim;
            let (vals, scales) = out.split_at_mut(n / 4);
            vals.iter_mut().for_each(|w| *w = 0);
            for h in 0..kv_heads {
                let xs = &x[h * head_dim..(h + 1) * head_dim];
                let amax = xs.iter().fold(0f32, |m, v| m.max(v.abs()));
                let s = amax / if dtype == KvDtype::Q8 { 127.0 } else { 448.0 };
                scales[h] = s.to_bits();
                for (i, &v) in xs.iter().enumerate() {
                    let q = if s > 0.0 { v / s } else { 0.0 };
                    let byte = match dtype {
                        KvDtype::Q8 => (q.round_ties_even().clamp(-127.0, 127.0) as i32 as u32) & 0xff,
                        _ => e4m3_from_f32(q) as u32,
                    };
                    let e = h * head_dim + i;
                    vals[e / 4] |= byte << (8 * (e % 4));
                }
            }
        }
    }
}

/// Value `e` (of `kv_heads · head_dim`) of a slot.
pub fn decode(dtype: KvDtype, slot: &[u32], kv_heads: usize, head_dim: usize, e: usize) -> f32 {
    match dtype {
        KvDtype::F32 => f32::from_bits(slot[e]),
        KvDtype::Bf16 => bf16::from_bits((slot[e / 2] >> (16 * (e % 2))) as u16).to_f32(),
        KvDtype::F16 => f16::from_bits((slot[e / 2] >> (16 * (e % 2))) as u16).to_f32(),
        KvDtype::Q4 => crate::kv_q4::decode_value(slot, kv_heads, head_dim, e),
        KvDtype::Q8 | KvDtype::Fp8 => {
            let byte = (slot[e / 4] >> (8 * (e % 4))) & 0xff;
            let s = f32::from_bits(slot[kv_heads * head_dim / 4 + e / head_dim]);
            let q = match dtype {
                KvDtype::Q8 => byte as u8 as i8 as f32,
                _ => e4m3_to_f32(byte as u8),
            };
            q * s
        }
    }
}

/// Kv head `head`'s `head_dim` values of a slot into `out`: [`decode`] for a whole head at once, with the
/// head's scale read once and FP8 bytes looked up in a table (the CPU's attention reads every cached key and
/// value through this).
pub fn decode_head(dtype: KvDtype, slot: &[u32], kv_heads: usize, head_dim: usize, head: usize, out: &mut [f32]) {
    let off = head * head_dim;
    let out = &mut out[..head_dim];
    match dtype {
        KvDtype::F32 => out.iter_mut().zip(&slot[off..]).for_each(|(o, w)| *o = f32::from_bits(*w)),
        KvDtype::Q4 => crate::kv_q4::decode_value_head(slot, kv_heads, head_dim, head, out),
        KvDtype::Bf16 | KvDtype::F16 => {
            let words = &slot[off / 2..(off + head_dim) / 2];
            for (pair, &w) in out.chunks_exact_mut(2).zip(words) {
                let (lo, hi) = ((w & 0xffff) as u16, (w >> 16) as u16);
                if dtype == KvDtype::Bf16 {
                    pair[0] = f32::from_bits((lo as u32) << 16);
                    pair[1] = f32::from_bits((hi as u32) << 16);
                } else {
                    pair[0] = f16::from_bits(lo).to_f32();
                    pair[1] = f16::from_bits(hi).to_f32();
                }
            }
        }
        KvDtype::Q8 | KvDtype::Fp8 => {
            let s = f32::from_bits(slot[kv_heads * head_dim / 4 + head]);
            let words = &slot[off / 4..(off + head_dim) / 4];
            let table = e4m3_table();
            for (four, &w) in out.chunks_exact_mut(4).zip(words) {
                for (i, o) in four.iter_mut().enumerate() {
                    let b = (w >> (8 * i)) as u8;
                    *o = s * if dtype == KvDtype::Q8 { b as i8 as f32 } else { table[b as usize] };
                }
            }
        }
    }
}

/// The value of every E4M3 byte.
fn e4m3_table() -> &'static [f32; 256] {
    static TABLE: std::sync::OnceLock<[f32; 256]> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| std::array::from_fn(|b| e4m3_to_f32(b as u8)))
}

/// OCP FP8 E4M3 (bias 7, no infinities, 0x7f/0xff NaN, largest finite 448) of `x`, rounded to nearest even,
/// saturating to ±448.
pub fn e4m3_from_f32(x: f32) -> u8 {
    let sign = if x.is_sign_negative() { 0x80u8 } else { 0 };
    let a = x.abs();
    if a.is_nan() {
        return 0x7f;
    }
    if a >= 448.0 {
        return sign | 0x7e;
    }
    // The binade of `a` (as f32 knows it), then the mantissa rounded to 3 bits; below 2^-6 the subnormal
    // step 2^-9. Dividing by a power of two is exact, so only the one rounding happens.
    let e = ((a.to_bits() >> 23) & 0xff) as i32 - 127;
    if e < -6 {
        return sign | (a * 512.0).round_ties_even() as u8; // 8 rounds up into the smallest normal, 0x08
    }
    let m = (a * 2f32.powi(3 - e)).round_ties_even() as i32; // 8..=16
    let (e, m) = if m == 16 { (e + 1, 8) } else { (e, m) };
    sign | (((e + 7) as u8) << 3) | (m - 8) as u8
}

/// The value of an E4M3 byte.
pub fn e4m3_to_f32(b: u8) -> f32 {
    let sign = if b & 0x80 != 0 { -1.0 } else { 1.0 };
    let exp = ((b >> 3) & 0xf) as i32;
    let man = (b & 7) as f32;
    if exp == 0xf && b & 7 == 7 {
        return f32::NAN;
    }
    let v = if exp == 0 { man / 8.0 * 2f32.powi(-6) } else { (1.0 + man / 8.0) * 2f32.powi(exp - 7) };
    sign * v
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every E4M3 code round-trips, and every f32 between two codes goes to the nearer (ties to the even
    /// code), checked against an exhaustive search.
    #[test]
    fn e4m3_rounds_to_nearest_even() {
        for b in 0u8..=0xfe {
            if b & 0x7f == 0x7f {
                continue;
            }
            let v = e4m3_to_f32(b);
            let back = e4m3_from_f32(v);
            assert!(back == b || (v == 0.0 && back & 0x7f == 0), "{b:#x} -> {v} -> {back:#x}");
        }
        let nearest = |a: f32| -> u8 {
            let mut best = (0u8, f32::INFINITY);
            for code in 0u8..=0x7e {
                let err = (e4m3_to_f32(code) - a).abs();
                if err < best.1 || (err == best.1 && code % 2 == 0) {
                    best = (code, err);
                }
            }
            best.0
        };
        let mut x = 1e-4f32;
        while x < 448.0 {
            assert_eq!(e4m3_from_f32(x), nearest(x), "{x}");
            assert_eq!(e4m3_from_f32(-x), 0x80 | nearest(x), "-{x}");
            x *= 1.0137;
        }
        assert_eq!(e4m3_from_f32(1e9), 0x7e);
    }

    /// A head decoded at once is the head decoded value by value, in every format.
    #[test]
    fn decode_head_is_decode() {
        let (kvh, hd) = (3, 8);
        let x: Vec<f32> = (0..kvh * hd).map(|i| ((i * 53 % 29) as f32 - 14.0) * 0.37).collect();
        for d in KvDtype::ALL {
            let mut w = vec![0u32; d.slot_words(kvh, hd).unwrap()];
            encode(d, &x, kvh, hd, &mut w);
            for h in 0..kvh {
                let mut out = vec![0f32; hd];
                decode_head(d, &w, kvh, hd, h, &mut out);
                let want: Vec<f32> = (0..hd).map(|e| decode(d, &w, kvh, hd, h * hd + e)).collect();
                assert_eq!(out, want, "{}: head {h}", d.name());
            }
        }
    }

    /// Each format holds its values to its precision: exact for f32, one rounding for the 16-bit ones, and
    /// half a step of the head's scale for the byte formats.
    #[test]
    fn formats_round_trip() {
        let (kvh, hd) = (3, 8);
        let x: Vec<f32> = (0..kvh * hd).map(|i| ((i * 37 % 23) as f32 - 11.0) * 0.173).collect();
        for d in KvDtype::ALL {
            let mut w = vec![0u32; d.slot_words(kvh, hd).unwrap()];
            encode(d, &x, kvh, hd, &mut w);
            for (e, &v) in x.iter().enumerate() {
                let got = decode(d, &w, kvh, hd, e);
                let amax = x[e / hd * hd..(e / hd + 1) * hd].iter().fold(0f32, |m, v| m.max(v.abs()));
                let tol = match d {
                    KvDtype::F32 => 0.0,
                    KvDtype::Bf16 => v.abs() / 256.0,
                    KvDtype::F16 => v.abs() / 2048.0,
                    KvDtype::Q8 => amax / 127.0 / 2.0 * 1.0001,
                    KvDtype::Fp8 => v.abs() / 16.0 + amax / 448.0 * 2f32.powi(-9),
                    // Half a step of the value's group (here the head): its range over 15, and the f16 rounding.
                    KvDtype::Q4 => 2.0 * amax / 15.0 / 2.0 * 1.01 + 1e-3,
                };
                assert!((got - v).abs() <= tol, "{}: value {e}: {v} -> {got}", d.name());
            }
        }
        assert!(KvDtype::Q8.slot_words(8, 6).is_err());
    }
}
