//! The q4 KV format's bit layouts, in KIVI's scheme: keys quantized per channel over the slots of a page,
//! values per token over groups of channels; 4-bit codes, asymmetric (a minimum and a step per group, both f16).
//!
//! A key page is quantized when its last slot is written; until then its keys wait in f32 in the sequence's
//! stage, after the pages in the layer's key buffer ([`crate::backend::KvPages::stage`]). The rules every
//! backend follows, for a sequence whose step writes positions `pos0 .. end` into pages of `P` slots:
//! - attention reads a cached position `j < pos0` from the stage when `j ≥ ⌊pos0 / P⌋ · P` (the page the step
//!   started in was not complete), else from its q4 page;
//! - kv_store first completes every page whose last slot `p` (`p % P = P - 1`) is new, unless a later position
//!   of the step takes the same ring slot: its `P` keys are those before `pos0` from the stage and the rest
//!   from the step's rows, quantized per channel into the page of position `p`; then it writes the new
//!   positions of a page the step does not complete (those `≥ ⌊end / P⌋ · P`) into the stage, at their offset
//!   in the page. Two passes: the second overwrites what the first reads.
//!
//! Codes: element `e` of a slot (of `kv_heads · head_dim`) in bits `4 (e % 8)` of the slot's word `e / 8`.
//! A group's parameters: one word, the f16 step in the low half and the f16 minimum in the high half. The minimum
//! is the group's least value rounded down to an f16, the step `(max - min) / 15` rounded up, so that every
//! value's code `round((x - min) / step)` lies in 0..=15 without clamping; a value decodes to `min + code · step`
//! (in f32), within half a step of what was stored.
//! - Values: a slot is `kv_dim / 8` code words, then one parameter word per [`VALUE_GROUP`] channels.
//! - Keys: a page of `P` slots is `P · kv_dim / 8` code words, slot after slot, then one parameter word per
//!   channel (over the page's `P` slots).

use half::f16;

/// Channels that share a value group's parameters (KIVI's group size); a head_dim below it is one group.
pub const VALUE_GROUP: usize = 32;

/// Channels per value group for heads of `head_dim`.
pub fn value_group(head_dim: usize) -> usize {
    VALUE_GROUP.min(head_dim)
}

/// Whether q4 holds heads of `head_dim` (codes pack 8 to a word, groups divide the head).
pub fn supports(head_dim: usize) -> Result<(), String> {
    if head_dim.is_multiple_of(8) && head_dim.is_multiple_of(value_group(head_dim)) {
        Ok(())
    } else {
        Err(format!("a q4 KV cache needs a head_dim that is a multiple of 8, not {head_dim}"))
    }
}

/// Words of one value slot.
pub fn value_slot_words(kv_heads: usize, head_dim: usize) -> usize {
    let n = kv_heads * head_dim;
    n / 8 + n / value_group(head_dim)
}

/// Words of one key page of `page` slots.
pub fn key_page_words(kv_heads: usize, head_dim: usize, page: usize) -> usize {
    let n = kv_heads * head_dim;
    page * n / 8 + n
}

/// The largest f16 at or below `x`.
fn f16_down(x: f32) -> f16 {
    let h = f16::from_f32(x);
    if h.to_f32() <= x {
        return h;
    }
    // One step toward -∞ in f16's ordering (x is finite and not the smallest f16 here).
    let b = h.to_bits();
    f16::from_bits(if b & 0x8000 == 0 {
        if b == 0 {
            0x8001
        } else {
            b - 1
        }
    } else {
        b + 1
    })
}

/// The smallest f16 at or above `x` (x ≥ 0).
fn f16_up(x: f32) -> f16 {
    let h = f16::from_f32(x);
    if h.to_f32() >= x {
        return h;
    }
    f16::from_bits(h.to_bits() + 1)
}

/// A group's parameter word and its (step, minimum) as f32, for values in [lo, hi].
fn params(lo: f32, hi: f32) -> (u32, f32, f32) {
    let m = f16_down(lo);
    let s = f16_up((hi - m.to_f32()) / 15.0);
    ((s.to_bits() as u32) | ((m.to_bits() as u32) << 16), s.to_f32(), m.to_f32())
}

/// The code of `x` in a group of step `s` and minimum `m`.
fn code(x: f32, s: f32, m: f32) -> u32 {
    if s > 0.0 {
        (((x - m) / s).round_ties_even() as i32).clamp(0, 15) as u32
    } else {
        0
    }
}

/// A group's (step, minimum) from its parameter word.
fn unpack(w: u32) -> (f32, f32) {
    (f16::from_bits(w as u16).to_f32(), f16::from_bits((w >> 16) as u16).to_f32())
}

fn nibble(words: &[u32], e: usize) -> u32 {
    (words[e / 8] >> (4 * (e % 8))) & 15
}

/// Writes one value slot: `x` is `[kv_heads, head_dim]`.
pub fn encode_values(x: &[f32], kv_heads: usize, head_dim: usize, out: &mut [u32]) {
    let n = kv_heads * head_dim;
    let g = value_group(head_dim);
    let (codes, ps) = out.split_at_mut(n / 8);
    codes.iter_mut().for_each(|w| *w = 0);
    for (gi, xs) in x[..n].chunks_exact(g).enumerate() {
        let (lo, hi) = xs.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
        let (w, s, m) = params(lo, hi);
        ps[gi] = w;
        for (i, &v) in xs.iter().enumerate() {
            let e = gi * g + i;
            codes[e / 8] |= code(v, s, m) << (4 * (e % 8));
        }
    }
}

/// Element `e` of a value slot.
pub fn decode_value(slot: &[u32], kv_heads: usize, head_dim: usize, e: usize) -> f32 {
    let n = kv_heads * head_dim;
    let (s, m) = unpack(slot[n / 8 + e / value_group(head_dim)]);
    m + nibble(slot, e) as f32 * s
}

/// Kv head `head`'s `head_dim` values of a value slot into `out`.
pub fn decode_value_head(slot: &[u32], kv_heads: usize, head_dim: usize, head: usize, out: &mut [f32]) {
    let n = kv_heads * head_dim;
    let g = value_group(head_dim);
    let off = head * head_dim;
    for (gi, o) in out[..head_dim].chunks_exact_mut(g).enumerate() {
        let (s, m) = unpack(slot[n / 8 + (off + gi * g) / g]);
        let base = off + gi * g;
        for (i, o) in o.iter_mut().enumerate() {
            *o = m + nibble(slot, base + i) as f32 * s;
        }
    }
}

/// Kv head `head`'s `head_dim` keys of slot `slot` of a key page into `out`.
pub fn decode_key_head(
    page_words: &[u32],
    kv_heads: usize,
    head_dim: usize,
    page: usize,
    slot: usize,
    head: usize,
    out: &mut [f32],
) {
    let n = kv_heads * head_dim;
    let (codes, ps) = page_words.split_at(page * n / 8);
    let off = head * head_dim;
    for (i, o) in out[..head_dim].iter_mut().enumerate() {
        let (s, m) = unpack(ps[off + i]);
        *o = m + nibble(codes, slot * n + off + i) as f32 * s;
    }
}

/// Writes one key page from its `page` slots of keys, `rows` being `[page, kv_heads · head_dim]`: each channel
/// quantized over the page's slots.
pub fn encode_key_page(rows: &[f32], kv_heads: usize, head_dim: usize, page: usize, out: &mut [u32]) {
    let n = kv_heads * head_dim;
    let (codes, ps) = out.split_at_mut(page * n / 8);
    codes.iter_mut().for_each(|w| *w = 0);
    for c in 0..n {
        let col = (0..page).map(|i| rows[i * n + c]);
        let (lo, hi) = col.clone().fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), v| (a.min(v), b.max(v)));
        let (w, s, m) = params(lo, hi);
        ps[c] = w;
        for (i, v) in col.enumerate() {
            let e = i * n + c;
            codes[e / 8] |= code(v, s, m) << (4 * (e % 8));
        }
    }
}

/// Element `e` of slot `slot` of a key page.
pub fn decode_key(page_words: &[u32], kv_heads: usize, head_dim: usize, page: usize, slot: usize, e: usize) -> f32 {
    let n = kv_heads * head_dim;
    let (s, m) = unpack(page_words[page * n / 8 + e]);
    m + nibble(page_words, slot * n + e) as f32 * s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize, seed: usize) -> Vec<f32> {
        // Channels of different ranges and offsets, as keys have (KIVI's outlier channels).
        (0..n).map(|i| ((i * 37 + seed * 11) % 41) as f32 * 0.21 - 3.0 + (i % 5) as f32 * 7.5).collect()
    }

    /// Every value comes back within half its group's step, and the step is the group's range over 15 (f16,
    /// rounded up).
    #[test]
    fn values_round_trip_within_half_a_step() {
        for (kvh, hd) in [(2, 8), (3, 32), (2, 64)] {
            let n = kvh * hd;
            let x = data(n, 1);
            let mut w = vec![0u32; value_slot_words(kvh, hd)];
            encode_values(&x, kvh, hd, &mut w);
            let g = value_group(hd);
            for (e, &v) in x.iter().enumerate() {
                let grp = &x[e / g * g..(e / g + 1) * g];
                let range = grp.iter().cloned().fold(f32::NEG_INFINITY, f32::max)
                    - grp.iter().cloned().fold(f32::INFINITY, f32::min);
                let step = range / 15.0;
                let got = decode_value(&w, kvh, hd, e);
                assert!(
                    (got - v).abs() <= step * 0.5 * 1.01 + 1e-3 * v.abs().max(1.0),
                    "({kvh}, {hd}) {e}: {v} -> {got}"
                );
            }
        }
    }

    /// Keys: each channel over the page's slots, within half that channel's step.
    #[test]
    fn key_pages_round_trip_per_channel() {
        for (kvh, hd, page) in [(2, 8, 16), (1, 16, 3), (2, 8, 1)] {
            let n = kvh * hd;
            let rows = data(page * n, 2);
            let mut w = vec![0u32; key_page_words(kvh, hd, page)];
            encode_key_page(&rows, kvh, hd, page, &mut w);
            for c in 0..n {
                let col: Vec<f32> = (0..page).map(|i| rows[i * n + c]).collect();
                let range = col.iter().cloned().fold(f32::NEG_INFINITY, f32::max)
                    - col.iter().cloned().fold(f32::INFINITY, f32::min);
                for (i, &v) in col.iter().enumerate() {
                    let got = decode_key(&w, kvh, hd, page, i, c);
                    let tol = range / 15.0 * 0.5 * 1.01 + 1e-3 * v.abs().max(1.0);
                    assert!((got - v).abs() <= tol, "({kvh}, {hd}, {page}) slot {i} channel {c}: {v} -> {got}");
                }
            }
        }
    }

    /// A constant group is exact when its value is an f16; the f16 rounding helpers bracket their input.
    #[test]
    fn constants_and_rounding() {
        let x = vec![1.5f32; 16];
        let mut w = vec![0u32; value_slot_words(2, 8)];
        encode_values(&x, 2, 8, &mut w);
        assert!((0..16).all(|e| decode_value(&w, 2, 8, e) == 1.5));
        for v in [0.1f32, -0.1, 3.3, -2.6, 1e-3, 65000.0] {
            assert!(f16_down(v).to_f32() <= v && f16_up(v.abs()).to_f32() >= v.abs(), "{v}");
        }
        assert!(supports(128).is_ok() && supports(12).is_err());
    }
}
