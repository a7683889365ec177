//! The KV-cache store on the CPU: a step's new keys and values written into their slots, in f32, in another
//! KV format ([`crate::kv_format`]), or as q4 key pages ([`crate::kv_q4`]).

use super::need;
use crate::backend::{AttnSeq, KvPages};
use crate::error::{HerdError, Result};
use crate::kv_format::{encode, KvDtype};
use crate::kv_q4;

/// Writes new rows into the f32 cache.
pub fn kv_store(new: &[f32], cache: &mut [f32], pages: KvPages<'_>, seqs: &[AttnSeq], kv_dim: usize) -> Result<()> {
    for s in seqs {
        need("kv_store new", new.len(), (s.q_start + s.q_len) as usize * kv_dim)?;
        for t in 0..s.q_len {
            let slot = pages.slot(s, (s.pos0 + t) as usize);
            need("kv_store cache", cache.len(), (slot + 1) * kv_dim)?;
            let row = (s.q_start + t) as usize;
            cache[slot * kv_dim..(slot + 1) * kv_dim].copy_from_slice(&new[row * kv_dim..(row + 1) * kv_dim]);
        }
    }
    Ok(())
}

/// Writes new rows into a cache of another format ([`crate::kv_format`]), a slot at a time.
pub fn kv_store_words(
    new: &[f32],
    cache: &mut [u32],
    pages: KvPages<'_>,
    seqs: &[AttnSeq],
    kv_heads: usize,
    head_dim: usize,
) -> Result<()> {
    let dtype: KvDtype = pages.dtype;
    let kv_dim = kv_heads * head_dim;
    let sw = dtype
        .slot_words(kv_heads, head_dim)
        .map_err(|m| HerdError::Backend { backend: "cpu".into(), msg: format!("kv_store: {m}") })?;
    for s in seqs {
        need("kv_store new", new.len(), (s.q_start + s.q_len) as usize * kv_dim)?;
        for t in 0..s.q_len {
            let slot = pages.slot(s, (s.pos0 + t) as usize);
            need("kv_store cache", cache.len(), (slot + 1) * sw)?;
            let row = (s.q_start + t) as usize;
            encode(
                dtype,
                &new[row * kv_dim..(row + 1) * kv_dim],
                kv_heads,
                head_dim,
                &mut cache[slot * sw..(slot + 1) * sw],
            );
        }
    }
    Ok(())
}

/// Writes new keys into a q4 key cache ([`crate::kv_q4`]'s rules): first every page the step completes,
/// quantized per channel from the stage and the new rows, then the new keys of a page it leaves incomplete
/// into the stage.
pub fn kv_store_q4_keys(
    new: &[f32],
    cache: &mut [u32],
    pages: KvPages<'_>,
    seqs: &[AttnSeq],
    kv_heads: usize,
    head_dim: usize,
) -> Result<()> {
    let (n, size) = (kv_heads * head_dim, pages.size);
    let kpw = kv_q4::key_page_words(kv_heads, head_dim, size);
    let mut rows = vec![0f32; size * n];
    for s in seqs {
        let (p0, q, cap, q0) = (s.pos0 as usize, s.q_len as usize, s.slot_cap as usize, s.q_start as usize);
        need("kv_store new", new.len(), (q0 + q) * n)?;
        let stage = pages.stage(s) * n;
        need("kv_store stage", cache.len(), stage + size * n)?;
        let new_row = |x: usize| &new[(q0 + x - p0) * n..][..n];
        for t in (0..q).filter(|&t| (p0 + t) % size == size - 1 && t + cap >= q) {
            let b = p0 + t + 1 - size;
            for (i, r) in rows.chunks_exact_mut(n).enumerate() {
                let x = b + i;
                if x < p0 {
                    let st = &cache[stage + i * n..][..n];
                    r.iter_mut().zip(st).for_each(|(o, &w)| *o = f32::from_bits(w));
                } else {
                    r.copy_from_slice(new_row(x));
                }
            }
            let page = pages.page(s, p0 + t);
            need("kv_store cache", cache.len(), (page + 1) * kpw)?;
            kv_q4::encode_key_page(&rows, kv_heads, head_dim, size, &mut cache[page * kpw..(page + 1) * kpw]);
        }
        let end = p0 + q;
        for x in (end / size * size).max(p0)..end {
            let st = &mut cache[stage + x % size * n..][..n];
            st.iter_mut().zip(new_row(x)).for_each(|(o, v)| *o = v.to_bits());
        }
    }
    Ok(())
}
