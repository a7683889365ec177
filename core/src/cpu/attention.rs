//! Attention on the CPU for a batch of sequences: causal, chunked (fixed blocks from token 0) or no masks,
//! GQA, NoPE temperature tuning on the query, f32 softmax (the KV-cache store is kv_store.rs).

use super::pool;

use super::gemv::dot;
use super::need;

use crate::backend::{AttnParams, AttnSeq, KvPages};
use crate::error::{HerdError, Result};
use crate::kv_format::{decode_head, KvDtype};
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

    /// Positions `j..j + count` of this head's keys or values (`c` and `x` as in [`Head::at`]) where they lie at one stride, with
    /// `count` at most `max`: `(data, stride, count)`, position j + t's `d` values at `data[t · stride..]`.
    /// The cached positions of an f32 cache lie so within a page (up to the page's end or the ring's wrap),
    /// the step's own rows all together. None where the values are decoded one position at a time ([`Head::at`]).
    #[inline(always)]
    fn run<'b>(&self, c: &'b CacheView<'_>, x: &'b [f32], j: usize, max: usize) -> Option<(&'b [f32], usize, usize)> {
        let s = self.s;
        let pos0 = s.pos0 as usize;
        if j >= pos0 {
            let row = s.q_start as usize + (j - pos0);
            return Some((&x[row * self.kvrow + self.off..], self.kvrow, max));
        }
        let CacheView::F32(c) = c else { return None };
        let cap = (s.slot_cap as usize).max(1);
        let r = j % cap;
        let size = self.pages.size;
        let within = r % size;
        let slot = self.pages.table[s.page_base as usize + r / size] as usize * size + within;
        let count = max.min(size - within).min(pos0 - j);
        let stride = self.kvh * self.d;
        Some((&c[slot * stride + self.off..], stride, count))
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
    // serves them all. The row's sequence is found by a scan (batches are small). The call's own lists live
    // in this thread's buffers, so a decode step allocates nothing here once warm.
    pool::with_scratch(&CALL, |call| {
        let Call { row_seq, splits, first, parts } = call;
        row_seq.clear();
        row_seq.resize(rows, usize::MAX);
        for (si, s) in seqs.iter().enumerate() {
            for r in s.q_start..s.q_start + s.q_len {
                row_seq[r as usize] = si;
            }
        }
        let ctx = Ctx { q, k_new, v_new, k_cache: &k_cache, v_cache: &v_cache, pages, seqs, p, row_seq, dtype, sw };
        run(&ctx, simd, &mut out[..rows * qrow], splits, first, parts);
    });
    Ok(())
}

/// The attention call's lists: each row's sequence and splits, the split tasks' first index per (row, kv
/// head), and their partials.
#[derive(Default)]
struct Call {
    row_seq: Vec<usize>,
    splits: Vec<usize>,
    first: Vec<usize>,
    parts: Vec<f32>,
}

thread_local! {
    static CALL: std::cell::RefCell<Call> = std::cell::RefCell::new(Call::default());
}

/// Every (row, kv head) of the call into `out`.
fn run(
    ctx: &Ctx<'_, '_>,
    simd: super::Simd,
    out: &mut [f32],
    splits: &mut Vec<usize>,
    first: &mut Vec<usize>,
    parts: &mut Vec<f32>,
) {
    let p = ctx.p;
    let (h, kvh, d) = (p.n_heads, p.n_kv_heads, p.head_dim);
    let rows = ctx.row_seq.len();
    let group = (h / kvh.max(1)).max(1);
    // Each row's keys come in splits of SPLIT, merged in order (see `merge`). With few (row, kv head) tasks
    // and long caches, the splits run as tasks of their own and a second pass merges them; the arithmetic,
    // so the result, is the same either way.
    splits.clear();
    splits.extend((0..rows).map(|r| ctx.keys(r).map_or(0, |(lo, last)| (last + 1 - lo).div_ceil(SPLIT))));
    let splits = &splits[..];
    let total: usize = splits.iter().sum::<usize>() * kvh;
    let wide = rows * kvh < 2 * pool::threads() && total > rows * kvh;
    #[cfg(test)]
    let wide = tests::FORCE_WIDE.get().unwrap_or(wide);
    if !wide {
        pool::chunks_mut(out, group * d, |task, o| {
            with_level(
                simd,
                #[inline(always)]
                |sc: &mut Scratch| {
                    let (r, kvh_i) = (task / kvh, task % kvh);
                    sc.start(group, d);
                    for s in 0..splits[r] {
                        ctx.split(r, kvh_i, s, sc);
                        sc.merge(group, d);
                    }
                    sc.finish(o, group, d);
                },
            )
        });
        return;
    }
    // Split-KV: partials (per head: max, sum, then d weighted values) of every (row, kv head, split).
    let part = group * (d + 2);
    first.clear();
    first.push(0);
    for t in 0..rows * kvh {
        first.push(first[t] + splits[t / kvh]);
    }
    let first = &first[..];
    parts.resize(total * part, 0.0);
    let shared = pool::Shared::new(&mut parts[..]);
    pool::for_each(total, |i| {
        let t = first.partition_point(|&f| f <= i) - 1;
        let (r, kvh_i, s) = (t / kvh, t % kvh, i - first[t]);
        // SAFETY: partial i alone is written by this task.
        let dst = unsafe { shared.slice(i * part, part) };
        with_level(
            simd,
            #[inline(always)]
            |sc: &mut Scratch| {
                ctx.split(r, kvh_i, s, sc);
                sc.save(dst, group, d);
            },
        )
    });
    pool::chunks_mut(out, group * d, |t, o| {
        with_level(
            simd,
            #[inline(always)]
            |sc: &mut Scratch| {
                sc.start(group, d);
                for i in first[t]..first[t + 1] {
                    sc.load(&parts[i * part..(i + 1) * part], group, d);
                    sc.merge(group, d);
                }
                sc.finish(o, group, d);
            },
        )
    });
}

/// Runs `f` on this thread's scratch, compiled for the level: `f` must be `#[inline(always)]`, or the compiler
/// may keep it a function of its own, compiled for the baseline (as it did with the tasks' closures here).
#[inline(always)]
fn with_level<F: FnMut(&mut Scratch)>(simd: super::Simd, mut f: F) {
    pool::with_scratch(&SCRATCH, |sc| {
        #[cfg(target_arch = "x86_64")]
        if simd >= super::Simd::Avx2 {
            #[target_feature(enable = "avx2,fma")]
            unsafe fn avx2<F: FnMut(&mut Scratch)>(f: &mut F, sc: &mut Scratch) {
                f(sc)
            }
            // SAFETY: Avx2 is only chosen where the processor has AVX2 and FMA (Simd::detect).
            return unsafe { avx2(&mut f, sc) };
        }
        let _ = simd;
        f(sc)
    })
}

/// Keys a split covers: each row's visible keys, in runs of this many from the first.
const SPLIT: usize = 512;

thread_local! {
    /// A task's buffers, kept per thread so a step allocates nothing once warm.
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::new(Scratch::default());
}

/// One (row, kv head)'s work in progress: its query heads (scaled), a split's scores and partial result, and
/// the merge of the splits so far.
#[derive(Default)]
struct Scratch {
    q: Vec<f32>,
    buf: Vec<f32>,
    /// `scores[g · SPLIT + jj]`: head g's score of the split's key jj, then its exponential.
    scores: Vec<f32>,
    /// The split's partial per head: the maximum score, the sum of exponentials, Σ exp(score - max) · value.
    m: Vec<f32>,
    l: Vec<f32>,
    a: Vec<f32>,
    /// The merge so far, in the same form.
    big_m: Vec<f32>,
    big_l: Vec<f32>,
    big_o: Vec<f32>,
    merged: usize,
}

impl Scratch {
    fn start(&mut self, group: usize, d: usize) {
        self.big_m.resize(group, 0.0);
        self.big_l.resize(group, 0.0);
        self.big_o.resize(group * d, 0.0);
        self.merged = 0;
    }

    /// Adds the split's partial to the merge: `M = max(M, m)`, and L and O rescaled to it,
    /// `L = L · e^(M_old - M) + l · e^(m - M)`, `O` likewise with `a`; the first split is taken as it is.
    #[inline(always)]
    fn merge(&mut self, group: usize, d: usize) {
        for g in 0..group {
            let (o, a) = (&mut self.big_o[g * d..(g + 1) * d], &self.a[g * d..(g + 1) * d]);
            if self.merged == 0 {
                (self.big_m[g], self.big_l[g]) = (self.m[g], self.l[g]);
                o.copy_from_slice(a);
                continue;
            }
            let m = self.big_m[g].max(self.m[g]);
            let (x, y) = ((self.big_m[g] - m).exp(), (self.m[g] - m).exp());
            self.big_m[g] = m;
            self.big_l[g] = self.big_l[g] * x + self.l[g] * y;
            for (ov, av) in o.iter_mut().zip(a) {
                *ov = *ov * x + av * y;
            }
        }
        self.merged += 1;
    }

    /// The merged result, `O / L` per head, into `o` (group · d); nothing for a row that saw no split.
    #[inline(always)]
    fn finish(&self, o: &mut [f32], group: usize, d: usize) {
        if self.merged == 0 {
            return;
        }
        for g in 0..group {
            let l = self.big_l[g];
            for (ov, v) in o[g * d..(g + 1) * d].iter_mut().zip(&self.big_o[g * d..(g + 1) * d]) {
                *ov = v / l;
            }
        }
    }

    /// The split's partial into `dst` (per head: m, l, then the d values), and back.
    fn save(&self, dst: &mut [f32], group: usize, d: usize) {
        for g in 0..group {
            let at = g * (d + 2);
            (dst[at], dst[at + 1]) = (self.m[g], self.l[g]);
            dst[at + 2..at + 2 + d].copy_from_slice(&self.a[g * d..(g + 1) * d]);
        }
    }

    fn load(&mut self, src: &[f32], group: usize, d: usize) {
        self.m.resize(group, 0.0);
        self.l.resize(group, 0.0);
        self.a.resize(group * d, 0.0);
        for g in 0..group {
            let at = g * (d + 2);
            (self.m[g], self.l[g]) = (src[at], src[at + 1]);
            self.a[g * d..(g + 1) * d].copy_from_slice(&src[at + 2..at + 2 + d]);
        }
    }
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

impl Ctx<'_, '_> {
    /// The first and last key query row `r` sees (None: a row of no sequence).
    fn keys(&self, r: usize) -> Option<(usize, usize)> {
        let p = self.p;
        let s = self.seqs.get(self.row_seq[r])?;
        let i = (s.pos0 + (r as u32 - s.q_start)) as usize; // absolute position of this query
        let last = if p.bidirectional { (s.pos0 + s.q_len - 1) as usize } else { i };
        let lo = match p.chunk {
            Some(ch) if !p.bidirectional => (i / ch) * ch,
            _ => 0,
        };
        Some((lo, last))
    }

    /// Split `split` of query row r's heads that share kv head `kvh_i`, into the scratch's partial: each
    /// head's scores in key order, their maximum, exponentials and sum, then the values weighted by the
    /// exponentials in key order.
    #[inline(always)]
    fn split(&self, r: usize, kvh_i: usize, split: usize, sc: &mut Scratch) {
        let p = self.p;
        let (h, kvh, d) = (p.n_heads, p.n_kv_heads, p.head_dim);
        let (qrow, kvrow, group) = (h * d, kvh * d, h / kvh);
        let (Some(s), Some((lo, last))) = (self.seqs.get(self.row_seq[r]), self.keys(r)) else { return };
        let i = (s.pos0 + (r as u32 - s.q_start)) as usize;
        let (from, to) = (lo + split * SPLIT, (lo + (split + 1) * SPLIT - 1).min(last));
        let n = to + 1 - from;
        sc.q.clear();
        sc.q.extend_from_slice(&self.q[r * qrow + kvh_i * group * d..][..group * d]);
        if let Some(temp) = p.temperature {
            let t = temp.scale_at(i as u32);
            sc.q.iter_mut().for_each(|x| *x *= t);
        }
        sc.buf.resize(d, 0.0);
        sc.scores.resize(group * SPLIT, 0.0);
        sc.m.resize(group, 0.0);
        sc.l.resize(group, 0.0);
        sc.a.resize(group * d, 0.0);
        let head_of = Head { s, pages: self.pages, dtype: self.dtype, sw: self.sw, kvh, d, off: kvh_i * d, kvrow };
        // Keys and values are read in runs (a page's slots, the step's rows) at one stride; a format decoded
        // per position goes one at a time. The arithmetic is the same either way.
        let (mut j, mut jj) = (from, 0);
        while j <= to {
            if let Some((data, stride, count)) = head_of.run(self.k_cache, self.k_new, j, to + 1 - j) {
                for t in 0..count {
                    let key = &data[t * stride..][..d];
                    for g in 0..group {
                        sc.scores[g * SPLIT + jj + t] = dot(&sc.q[g * d..(g + 1) * d], key) * p.scale;
                    }
                }
                (j, jj) = (j + count, jj + count);
                continue;
            }
            let key = head_of.at(self.k_cache, self.k_new, &mut sc.buf, j, true);
            for g in 0..group {
                sc.scores[g * SPLIT + jj] = dot(&sc.q[g * d..(g + 1) * d], key) * p.scale;
            }
            (j, jj) = (j + 1, jj + 1);
        }
        for g in 0..group {
            let scores = &mut sc.scores[g * SPLIT..g * SPLIT + n];
            let m = scores.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0f32;
            for v in scores.iter_mut() {
                *v = (*v - m).exp();
                sum += *v;
            }
            (sc.m[g], sc.l[g]) = (m, sum);
        }
        sc.a.iter_mut().for_each(|x| *x = 0.0);
        let (mut j, mut jj) = (from, 0);
        while j <= to {
            if let Some((data, stride, count)) = head_of.run(self.v_cache, self.v_new, j, to + 1 - j) {
                for t in 0..count {
                    add_weighted(&mut sc.a, &sc.scores[jj + t..], &data[t * stride..][..d], d);
                }
                (j, jj) = (j + count, jj + count);
                continue;
            }
            let v = head_of.at(self.v_cache, self.v_new, &mut sc.buf, j, false);
            add_weighted(&mut sc.a, &sc.scores[jj..], v, d);
            (j, jj) = (j + 1, jj + 1);
        }
    }
}

/// `a[g] += scores[g · SPLIT] · v` for each head g of the group (`a`: group · d).
#[inline(always)]
fn add_weighted(a: &mut [f32], scores: &[f32], v: &[f32], d: usize) {
    for (g, ag) in a.chunks_exact_mut(d).enumerate() {
        let w = scores[g * SPLIT];
        for (x, y) in ag.iter_mut().zip(v) {
            *x += w * y;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    thread_local! {
        /// Set by a test: whether the splits run as tasks of their own.
        pub(super) static FORCE_WIDE: std::cell::Cell<Option<bool>> = const { std::cell::Cell::new(None) };
    }

    /// Decode rows over long caches (several splits, one row whose later splits are empty of keys for the
    /// other): the splits as tasks of their own and merged after give the same bits as one task merging them
    /// as it goes, and both match softmax attention in f64.
    #[test]
    fn split_kv_gives_the_same_bits_as_one_task_and_matches_f64() {
        let (h, kvh, d, page) = (4, 2, 16, 64);
        let mut x = 0x9E37_79B9u32;
        let mut rnd = |n: usize| -> Vec<f32> {
            (0..n)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    (x % 2000) as f32 / 1000.0 - 1.0
                })
                .collect()
        };
        // Two sequences: 1300 cached + 1 new, and 700 cached + 2 new; slots of whole pages.
        let lens = [(1300u32, 1u32), (700, 2)];
        let mut seqs = Vec::new();
        let (mut table, mut q_start) = (Vec::new(), 0);
        for &(pos0, q_len) in &lens {
            let pages = (pos0 + q_len).div_ceil(page as u32);
            seqs.push(AttnSeq { q_start, q_len, pos0, page_base: table.len() as u32, slot_cap: pages * page as u32 });
            let base = table.len() as u32;
            table.extend((0..pages).map(|i| base + i));
            q_start += q_len;
        }
        let rows = q_start as usize;
        let (q, k_new, v_new) = (rnd(rows * h * d), rnd(rows * kvh * d), rnd(rows * kvh * d));
        let (kc, vc) = (rnd(table.len() * page * kvh * d), rnd(table.len() * page * kvh * d));
        let pages = KvPages { table: &table, size: page, dtype: KvDtype::F32 };
        let p = AttnParams {
            n_heads: h,
            n_kv_heads: kvh,
            head_dim: d,
            scale: 0.25,
            chunk: None,
            bidirectional: false,
            temperature: None,
        };
        let mut outs = Vec::new();
        for wide in [false, true] {
            FORCE_WIDE.set(Some(wide));
            let mut out = vec![0f32; rows * h * d];
            let (k, v) = (CacheView::F32(&kc), CacheView::F32(&vc));
            attention(&q, &k_new, &v_new, k, v, pages, &seqs, &p, &mut out, super::super::Simd::detect()).unwrap();
            outs.push(out);
        }
        FORCE_WIDE.set(None);
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&outs[0]), bits(&outs[1]));
        // f64: each row's head against its kv head's keys and values 0..=position.
        for (s, &(pos0, q_len)) in seqs.iter().zip(&lens) {
            for t in 0..q_len as usize {
                let (r, last) = (s.q_start as usize + t, pos0 as usize + t);
                let kv = |c: &[f32], new: &[f32], j: usize, g: usize| -> Vec<f64> {
                    let src = if j < pos0 as usize {
                        &c[pages.slot(s, j) * kvh * d + g * d..][..d]
                    } else {
                        &new[(s.q_start as usize + j - pos0 as usize) * kvh * d + g * d..][..d]
                    };
                    src.iter().map(|&v| v as f64).collect()
                };
                for head in 0..h {
                    let g = head / (h / kvh);
                    let qh = &q[(r * h + head) * d..][..d];
                    let sc: Vec<f64> = (0..=last)
                        .map(|j| kv(&kc, &k_new, j, g).iter().zip(qh).map(|(a, &b)| a * b as f64).sum::<f64>() * 0.25)
                        .collect();
                    let m = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let w: Vec<f64> = sc.iter().map(|v| (v - m).exp()).collect();
                    let sum: f64 = w.iter().sum();
                    for e in 0..d {
                        let want: f64 = (0..=last).map(|j| w[j] / sum * kv(&vc, &v_new, j, g)[e]).sum();
                        let got = outs[0][(r * h + head) * d + e] as f64;
                        assert!((got - want).abs() < 1e-5, "row {r} head {head} [{e}]: {got} vs {want}");
                    }
                }
            }
        }
    }
}
