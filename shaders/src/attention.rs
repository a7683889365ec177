//! Attention over the KV cache, and the cache store (attention.wgsl, kv_store.wgsl, attention_blocks.wgsl).

use herd_core::backend::{ops, AttnSeq, KvPages};
use herd_core::error::Result;
use herd_core::kv_format::KvDtype;

use crate::gpu::{err, Gpu};
use crate::kernel::{groups, kernels, params};
use crate::WgpuBackend;

params! {
    /// `temperature`: whether NoPE temperature tuning is on (then `floor_scale`, `attn_scale`); `splits` and
    /// `group` (query heads per kv head): attention_split's.
    pub struct AttentionParams {
        pub heads: u32,
        pub kv_heads: u32,
        pub head_dim: u32,
        pub scale: f32,
        pub chunk: u32,
        pub temperature: u32,
        pub floor_scale: f32,
        pub attn_scale: f32,
        pub rows: u32,
        pub splits: u32,
        pub group: u32,
        pub bidirectional: u32,
        pub page_size: u32,
        pub kv_dtype: u32,
        pub slot_words: u32,
        pub key_words: u32,
    }
    /// `kv_dim`: kv heads · head_dim; `page_size`: slots per cache page; the cache's format; `units`: what one
    /// invocation writes of a row; `key_words`: q4's words per key page.
    pub struct KvStoreParams {
        pub rows: u32, pub kv_dim: u32, pub page_size: u32, pub kv_dtype: u32, pub slot_words: u32,
        pub head_dim: u32, pub units: u32, pub key_words: u32,
    }
}

kernels! {
    pub enum Attention: Attention, AttentionParams {
        /// Any shape: one workgroup per (query row, head).
        Rows => "attention",
        /// Decode: keys split across workgroups.
        Split => "attention_split",
        /// Merges attention_split's splits.
        Combine => "attention_combine",
        /// Prefill: query and key tiles in shared memory.
        Tiled => "attention_tiled",
    }
}
kernels! {
    pub enum KvStore: Attention, KvStoreParams {
        Rows => "kv_store",
        /// q4: the key pages a step completes (before kv_store writes the stages they read).
        Q4Keys => "kv_store_q4_keys",
    }
}

/// Keys per workgroup of the split decode attention kernel (SPLIT in attention_blocks.wgsl).
const ATTN_SPLIT: usize = 256;
/// Sequences with at most this many new tokens take the decode kernel; longer ones the tiled prefill kernel.
const ATTN_DECODE_MAX_Q: usize = 8;

/// The sequences' metadata (5 words each, then the page table) and the row → sequence table, and the rows
/// they cover.
fn seq_buffers(gpu: &Gpu, pages: &KvPages<'_>, seqs: &[AttnSeq]) -> Result<(wgpu::Buffer, wgpu::Buffer, usize)> {
    let rows = seqs.iter().map(|s| (s.q_start + s.q_len) as usize).max().unwrap_or(0);
    let mut row_seq = vec![u32::MAX; rows.max(1)];
    let mut words = Vec::with_capacity(seqs.len() * 5 + pages.table.len());
    let table_at = (seqs.len() * 5) as u32;
    for (i, s) in seqs.iter().enumerate() {
        for r in s.q_start..s.q_start + s.q_len {
            row_seq[r as usize] = i as u32;
        }
        words.extend([s.q_start, s.q_len, s.pos0, table_at + s.page_base, s.slot_cap.max(1)]);
    }
    words.extend_from_slice(pages.table);
    Ok((gpu.meta(&words)?, gpu.meta(&row_seq)?, rows))
}

/// The format's number in the kernels, its words per slot (q4: per value slot) and per key page.
fn format(pages: &KvPages<'_>, kv_heads: usize, head_dim: usize, op: &str) -> Result<(u32, u32, u32)> {
    let d = pages.dtype;
    let words = d.slot_words(kv_heads, head_dim).map_err(|m| err(format!("{op}: {m}")))?;
    let key = d.key_page_words(kv_heads, head_dim, pages.size).map_err(|m| err(format!("{op}: {m}")))?;
    Ok((d.code(), words as u32, key as u32))
}

pub(crate) fn attention(gpu: &Gpu, call: &ops::Attention<'_, WgpuBackend>) -> Result<()> {
    let &ops::Attention { q, k_new, v_new, k_cache, v_cache, pages, seqs, p, out } = call;
    let _op = gpu.op();

    let (h, kvh, d) = (p.n_heads, p.n_kv_heads, p.head_dim);
    if d > 256 || h % kvh != 0 {
        return Err(err(format!("attention: head_dim {d} (at most 256) / heads {h} over {kvh} kv heads")));
    }
    let (kv_dtype, slot_words, key_words) = format(&pages, kvh, d, "attention")?;
    let (seq_buf, row_seq, rows) = seq_buffers(gpu, &pages, seqs)?;
    let t = p.temperature;
    let group = h / kvh;
    // Keys the busiest query sees: how many splits the decode kernel needs.
    let chunk = if p.bidirectional { None } else { p.chunk };
    let visible = seqs
        .iter()
        .flat_map(|s| (0..s.q_len).map(move |t| (s, s.pos0 + t)))
        .map(
            |(s, i)| {
                if p.bidirectional {
                    s.pos0 + s.q_len
                } else {
                    i - chunk.map_or(0, |c| i / c as u32 * c as u32) + 1
                }
            },
        )
        .max()
        .unwrap_or(1) as usize;
    let splits = visible.div_ceil(ATTN_SPLIT);
    let params = AttentionParams {
        heads: h as u32,
        kv_heads: kvh as u32,
        head_dim: d as u32,
        scale: p.scale,
        chunk: chunk.unwrap_or(0) as u32,
        temperature: u32::from(t.is_some()),
        floor_scale: t.map_or(0.0, |t| t.floor_scale),
        attn_scale: t.map_or(0.0, |t| t.attn_scale),
        rows: rows as u32,
        splits: splits as u32,
        group: group as u32,
        bidirectional: u32::from(p.bidirectional),
        page_size: pages.size as u32,
        kv_dtype,
        slot_words,
        key_words,
    };
    let b = [
        (1, &q.buf),
        (2, &k_new.buf),
        (3, &v_new.buf),
        (4, &k_cache.buf),
        (5, &v_cache.buf),
        (6, &seq_buf),
        (7, &row_seq),
        (8, &out.buf),
    ];
    let max_q = seqs.iter().map(|s| s.q_len).max().unwrap_or(0);
    // The decode kernels are causal only: a bidirectional call takes the tiled kernel or the fallback.
    if (max_q as usize > ATTN_DECODE_MAX_Q || p.bidirectional) && d <= 128 {
        // Prefill: blocks of up to 16 rows of one sequence.
        let blocks: Vec<u32> = seqs
            .iter()
            .enumerate()
            .flat_map(|(si, s)| (s.q_start..s.q_start + s.q_len).step_by(16).flat_map(move |r| [si as u32, r]))
            .collect();
        let bb = gpu.meta(&blocks)?;
        let mut bt: Vec<_> = b.iter().copied().filter(|(i, _)| *i != 7).collect();
        bt.push((10, &bb));
        let groups = (blocks.len() / 2 * h) as u32;
        return gpu.dispatch(Attention::Tiled, 0, &bt, &params, groups);
    }
    if group <= 8 && !p.bidirectional {
        // Decode: (row, kv head, split) workgroups, merged when there is more than one split.
        let part =
            gpu.scratch("attention partials", if splits > 1 { rows * h * splits * (d + 2) } else { 1 }, false)?;
        let mut bs = b.to_vec();
        bs.push((9, &part));
        gpu.dispatch(Attention::Split, 0, &bs, &params, (rows * kvh * splits) as u32)?;
        if splits > 1 {
            let bc = [(7, &row_seq), (8, &out.buf), (9, &part)];
            gpu.dispatch(Attention::Combine, 0, &bc, &params, (rows * h) as u32)?;
        }
        return Ok(());
    }
    gpu.dispatch(Attention::Rows, 0, &b, &params, (rows * h) as u32)
}

pub(crate) fn kv_store(gpu: &Gpu, call: &ops::KvStore<'_, WgpuBackend>) -> Result<()> {
    let &ops::KvStore { k_new, v_new, k_cache, v_cache, pages, seqs, kv_heads, head_dim } = call;
    let _op = gpu.op();
    let kv_dim = kv_heads * head_dim;
    let (kv_dtype, slot_words, key_words) = format(&pages, kv_heads, head_dim, "kv_store")?;
    let units = pages.dtype.store_units(kv_heads, head_dim);
    let (seq_buf, row_seq, rows) = seq_buffers(gpu, &pages, seqs)?;
    let p = KvStoreParams {
        rows: rows as u32,
        kv_dim: kv_dim as u32,
        page_size: pages.size as u32,
        kv_dtype,
        slot_words,
        head_dim: head_dim as u32,
        units: units as u32,
        key_words,
    };
    let b = [(2, &k_new.buf), (3, &v_new.buf), (4, &k_cache.buf), (5, &v_cache.buf), (6, &seq_buf), (7, &row_seq)];
    if pages.dtype == KvDtype::Q4 {
        // The pages first: they read the stages that kv_store then overwrites.
        let kb = [(2, &k_new.buf), (4, &k_cache.buf), (6, &seq_buf), (7, &row_seq)];
        gpu.dispatch(KvStore::Q4Keys, 0, &kb, &p, groups(rows * kv_dim / 8, 256))?;
    }
    gpu.dispatch(KvStore::Rows, 0, &b, &p, groups(rows * units, 256))
}
