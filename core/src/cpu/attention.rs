//! Attention on the CPU for a batch of sequences: causal, chunked (fixed blocks from token 0) or no masks,
//! GQA, NoPE temperature tuning on the query, f32 softmax; and the KV-cache store.

use super::pool;

use super::gemv::dot;
use super::need;

use crate::backend::{AttnParams, AttnSeq, KvPages};
use crate::error::{HerdError, Result};
use crate::kv_format::{decode_head, encode, KvDtype};
use crate::kv_q4;

/// Checks what the op checks cannot know: that a sequence's slots hold every cached key a query sees.
fn check_seq(s: &AttnSeq, chunk: Option<usize>) -> Result<()> {
    let bad = |m: String| Err(HerdError::Backend { backend: "cpu".into(), msg: format!("attention: {m}") });
    // Every cached key a query can see must still be in the region.
    let oldest_needed = match chunk {
        Some(c) => (s.pos0 as usize / c) * c,
        None => 0,
    };
    if (s.pos0 as usize).saturating_sub(oldest_needed) > s.slot_cap as usize {
        return bad(format!(
            "cache region of {} slots cannot hold the {} visible cached keys",
            s.slot_cap,
            s.pos0 as usize - oldest_needed
        ));
    }
    Ok(())
}

/// A layer's cache buffer as the CPU reads it: f32 values, or the words of another KV format.
pub enum CacheView<'a> {
    F32(&'a [f32]),
    Words(&'a [u32]),
}

/// One head's `d` keys or values of a cache slot (`off` = the head's first element): the f32 cache's own
/// values, or those of another format decoded into `buf`.
#[allow(clippy::too_many_arguments)]
fn cached<'b>(
    c: &'b CacheView<'_>,
    buf: &'b mut [f32],
    dtype: KvDtype,
    sw: usize,
    slot: usize,
    kvh: usize,
    d: usize,
    off: usize,
) -> &'b [f32] {
    match c {
        CacheView::F32(c) => &c[slot * kvh * d + off..][..d],
        CacheView::Words(w) => {
            decode_head(dtype, &w[slot * sw..(slot + 1) * sw], kvh, d, off / d, buf);
            &buf[..d]
        }
    }
}

/// Where one (sequence, kv head) of an attention call reads its keys and values.
struct Head<'p> {
    s: &'p AttnSeq,
    pages: KvPages<'p>,
    dtype: KvDtype,
    sw: usize,
    kvh: usize,
    d: usize,
    off: usize,
    kvrow: usize,
}

impl Head<'_> {
    /// Position j's keys (`key`) or values of this head: from the cache `c`, or (new this step) from the step's
    /// rows `x`.
    fn at<'b>(&self, c: &'b CacheView<'_>, x: &'b [f32], buf: &'b mut [f32], j: usize, key: bool) -> &'b [f32] {
        let s = self.s;
        if j < s.pos0 as usize {
            if key && self.dtype == KvDtype::Q4 {
                return self.q4_key(c, buf, j);
            }
            cached(c, buf, self.dtype, self.sw, self.pages.slot(s, j), self.kvh, self.d, self.off)
        } else {
            let row = s.q_start as usize + (j - s.pos0 as usize);
            &x[row * self.kvrow + self.off..][..self.d]
        }
    }

    /// Cached position j's q4 keys of this head: from the sequence's stage while its page is incomplete, else
    /// from the page.
    fn q4_key<'b>(&self, c: &'b CacheView<'_>, buf: &'b mut [f32], j: usize) -> &'b [f32] {
        let (pages, size, n) = (self.pages, self.pages.size, self.kvrow);
        let CacheView::Words(w) = c else { return &buf[..self.d] };
        if pages.staged(self.s, j) {
            let at = (pages.stage(self.s) + j % size) * n + self.off;
            buf[..self.d].iter_mut().zip(&w[at..at + self.d]).for_each(|(o, &b)| *o = f32::from_bits(b));
        } else {
            let kpw = kv_q4::key_page_words(self.kvh, self.d, size);
            let page = &w[pages.page(self.s, j) * kpw..][..kpw];
            kv_q4::decode_key_head(page, self.kvh, self.d, size, j % size, self.off / self.d, buf);
        }
        &buf[..self.d]
    }
}

#[allow(clippy::too_many_arguments)]
pub fn attention<'a>(
    q: &[f32],
    k_new: &'a [f32],
    v_new: &'a [f32],
    k_cache: CacheView<'a>,
    v_cache: CacheView<'a>,
    pages: KvPages<'_>,
    seqs: &[AttnSeq],
    p: &AttnParams,
    out: &mut [f32],
    simd: super::Simd,
) -> Result<()> {
    let (h, kvh, d) = (p.n_heads, p.n_kv_heads, p.head_dim);
    let qrow = h * d;
    let kvrow = kvh * d;
    let rows = seqs.iter().map(|s| (s.q_start + s.q_len) as usize).max().unwrap_or(0);
    need("attention q", q.len(), rows * qrow)?;
    need("attention k_new", k_new.len(), rows * kvrow)?;
    need("attention v_new", v_new.len(), rows * kvrow)?;
    need("attention out", out.len(), rows * qrow)?;
    for s in seqs {
        check_seq(s, if p.bidirectional { None } else { p.chunk })?;
    }
    let dtype = pages.dtype;
    let sw = dtype
        .slot_words(kvh, d)
        .map_err(|m| HerdError::Backend { backend: "cpu".into(), msg: format!("attention: {m}") })?;
    // One task per (row, kv head), for all the query heads that share it (GQA): each key and value it reads
    // serves them all. The row's sequence is found by a scan (batches are small).
    let mut row_seq = vec![usize::MAX; rows];
    for (si, s) in seqs.iter().enumerate() {
        for r in s.q_start..s.q_start + s.q_len {
            row_seq[r as usize] = si;
        }
    }
    let ctx =
        Ctx { q, k_new, v_new, k_cache: &k_cache, v_cache: &v_cache, pages, seqs, p, row_seq: &row_seq, dtype, sw };
    pool::chunks_mut(&mut out[..rows * qrow], (h / kvh.max(1)).max(1) * d, |task, o| {
        #[cfg(target_arch = "x86_64")]
        if simd >= super::Simd::Avx2 {
            #[target_feature(enable = "avx2,fma")]
            unsafe fn avx2(c: &Ctx<'_, '_>, task: usize, o: &mut [f32]) {
                one_query_group(c, task, o)
            }
            // SAFETY: Avx2 is only chosen where the processor has AVX2 and FMA (Simd::detect).
            return unsafe { avx2(&ctx, task, o) };
        }
        let _ = simd;
        one_query_group(&ctx, task, o)
    });
    Ok(())
}

/// What every (row, kv head) task of one attention call reads.
struct Ctx<'a, 'c> {
    q: &'a [f32],
    k_new: &'a [f32],
    v_new: &'a [f32],
    k_cache: &'c CacheView<'a>,
    v_cache: &'c CacheView<'a>,
    pages: KvPages<'c>,
    seqs: &'c [AttnSeq],
    p: &'c AttnParams,
    row_seq: &'c [usize],
    dtype: KvDtype,
    sw: usize,
}

/// One query row's heads that share kv head `task % kv_heads` (row `task / kv_heads`), into `o` (their
/// `group · d` outputs, in head order). Each head's arithmetic is that of a task of its own: its scores in
/// key order, their maximum, exponentials and sum, then the weighted values in key order.
#[inline(always)]
fn one_query_group(c: &Ctx<'_, '_>, task: usize, o: &mut [f32]) {
    let p = c.p;
    let (h, kvh, d) = (p.n_heads, p.n_kv_heads, p.head_dim);
    let (qrow, kvrow, group) = (h * d, kvh * d, h / kvh);
    let (pages, dtype, sw) = (c.pages, c.dtype, c.sw);
    let (r, kvh_i) = (task / kvh, task % kvh);
    let Some(s) = c.seqs.get(c.row_seq[r]) else { return };
    let t = r as u32 - s.q_start;
    let i = (s.pos0 + t) as usize; // absolute position of this query
                                   // The last key it sees, and the first.
    let last = if p.bidirectional { (s.pos0 + s.q_len - 1) as usize } else { i };
    let lo = match p.chunk {
        Some(ch) if !p.bidirectional => (i / ch) * ch,
        _ => 0,
    };
    let n = last + 1 - lo;
    let mut qv: Vec<f32> = c.q[r * qrow + kvh_i * group * d..][..group * d].to_vec();
    if let Some(temp) = p.temperature {
        let sc = temp.scale_at(i as u32);
        qv.iter_mut().for_each(|x| *x *= sc);
    }
    let off = kvh_i * d;
    let mut buf = vec![0f32; d];
    let head_of = Head { s, pages, dtype, sw, kvh, d, off, kvrow };
    // scores[g · n + jj]: query head g's score of key lo + jj.
    let mut scores = vec![0f32; group * n];
    for (jj, j) in (lo..=last).enumerate() {
        let key = head_of.at(c.k_cache, c.k_new, &mut buf, j, true);
        for g in 0..group {
            scores[g * n + jj] = dot(&qv[g * d..(g + 1) * d], key) * p.scale;
        }
    }
    let mut sums = vec![0f32; group];
    for (g, sum) in sums.iter_mut().enumerate() {
        let sc = &mut scores[g * n..(g + 1) * n];
        let m = sc.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        for v in sc.iter_mut() {
            *v = (*v - m).exp();
            *sum += *v;
        }
    }
    o.iter_mut().for_each(|x| *x = 0.0);
    for (jj, j) in (lo..=last).enumerate() {
        let v = head_of.at(c.v_cache, c.v_new, &mut buf, j, false);
        for (g, og) in o.chunks_exact_mut(d).enumerate() {
            let w = scores[g * n + jj] / sums[g];
            for (a, b) in og.iter_mut().zip(v.iter()) {
                *a += w * b;
            }
        }
    }
}

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
