//! The op table's attention and kv_store cases: batches of sequences, each with a cached prefix in its ring of
//! KV slots and new rows, causal (with and without chunks) or bidirectional (the vision encoder). The slots are
//! paged: each sequence's pages are drawn in a shuffled order from one pool, pages of 1 to 16 slots, rings whose
//! page size does not divide the chunk among them.

use herd_core::backend::{AttnParams, AttnSeq, Backend, KvPages, Temperature};
use herd_core::kv_format::KvDtype;
use herd_core::Result;

use crate::reference as r;
use crate::table::{timed, Out, Rng};
use crate::table_ops::out;
use crate::table_q4::Q4Keys;

/// One attention batch: heads, kv heads, head dim, chunk, attention temperature, per sequence (cached
/// positions, new rows, its capacity in slots, rounded up to whole pages), and the slots per page.
#[derive(Clone, Debug)]
pub struct AttnCase {
    pub heads: usize,
    pub kv_heads: usize,
    pub d: usize,
    pub chunk: Option<usize>,
    pub temp: bool,
    pub seqs: Vec<(usize, usize, usize)>,
    pub bidirectional: bool,
    pub page: usize,
    /// The cache's format.
    pub dtype: KvDtype,
}

impl AttnCase {
    pub fn describe(&self) -> String {
        let (h, kvh, d, temp) = (self.heads, self.kv_heads, self.d, self.temp);
        let mask = if self.bidirectional { "bidirectional".to_string() } else { format!("chunk={:?}", self.chunk) };
        let kv = if self.dtype == KvDtype::F32 { String::new() } else { format!(" kv={}", self.dtype.name()) };
        format!("h={h} kvh={kvh} d={d} {mask} temp={temp} seqs={:?} page={}{kv}", self.seqs, self.page)
    }

    /// New rows in the batch.
    pub fn rows(&self) -> usize {
        self.seqs.iter().map(|s| s.1).sum()
    }

    /// Queries and outputs once, and every key and value a sequence has.
    pub fn bytes(&self) -> usize {
        let keys: usize = self.seqs.iter().map(|s| s.0 + s.1).sum();
        4 * (2 * self.rows() * self.heads * self.d + 2 * keys * self.kv_heads * self.d)
    }

    /// 4·d flops per (query head, key it sees): causal, and inside its chunk.
    pub fn flops(&self) -> usize {
        let visible: usize = self
            .seqs
            .iter()
            .flat_map(|&(cached, new, _)| (0..new).map(move |t| (cached, new, cached + t)))
            .map(|(cached, new, i)| match self.bidirectional {
                true => cached + new,
                false => i - self.chunk.map_or(0, |c| i / c * c) + 1,
            })
            .sum();
        4 * visible * self.heads * self.d
    }

    fn params(&self) -> AttnParams {
        AttnParams {
            n_heads: self.heads,
            n_kv_heads: self.kv_heads,
            head_dim: self.d,
            scale: (self.d as f32).powf(-0.5),
            chunk: self.chunk,
            bidirectional: self.bidirectional,
            temperature: self.temp.then_some(Temperature { floor_scale: 4.0, attn_scale: 0.1 }),
        }
    }
}

/// The attention batches (each also a kv_store case).
pub(crate) fn attention_cases() -> Vec<AttnCase> {
    let c = |heads, kv_heads, d, chunk, temp, seqs: &[(usize, usize, usize)], page| AttnCase {
        heads,
        kv_heads,
        d,
        chunk,
        temp,
        seqs: seqs.to_vec(),
        bidirectional: false,
        page,
        dtype: KvDtype::F32,
    };
    let mut v = vec![
        c(4, 2, 8, None, false, &[(0, 13, 13)], 1),
        c(4, 2, 8, Some(4), false, &[(5, 3, 8), (11, 1, 12)], 4),
        c(6, 2, 16, None, true, &[(20, 2, 24), (0, 5, 5), (7, 1, 8)], 2),
        // Rings of 3 pages of 3 slots for a chunk of 8.
        c(4, 1, 8, Some(8), false, &[(23, 4, 8), (40, 1, 8)], 3),
        c(4, 4, 8, Some(5), true, &[(3, 12, 5)], 1),
        c(40, 8, 128, Some(8192), false, &[(511, 1, 512)], 16),
        c(40, 8, 128, None, true, &[(0, 64, 64)], 16),
        // More query heads per kv head than the grouped decode kernel takes.
        c(18, 1, 8, None, false, &[(30, 2, 32)], 1),
        // head_dim above the tiled kernel's 128, many new rows.
        c(4, 2, 160, Some(16), true, &[(10, 20, 32)], 8),
        // Long decode: several splits, and a shorter sequence whose later splits are empty.
        c(8, 2, 64, None, true, &[(1500, 1, 1501), (300, 3, 303)], 16),
        // Prefill tiles that cross a chunk boundary after a cached prefix, beside a decode row; rings of 4 pages
        // of 5 slots for a chunk of 16.
        c(4, 2, 32, Some(16), false, &[(10, 40, 16), (5, 1, 16)], 5),
        // Decode splits of hundreds of keys (CUDA: several 32-key tiles per warp, whose running maxima and
        // sums are rescaled from tile to tile), 8 query rows at once.
        c(16, 8, 32, None, true, &[(3000, 8, 3008)], 16),
        // More query heads per kv head (12) and wider heads (160) than Llama 4's in decode rows (CUDA: the
        // decode kernel's larger register tile), over a chunk boundary.
        c(12, 1, 160, Some(64), false, &[(200, 2, 202), (40, 1, 41)], 16),
    ];
    // The other KV formats: a prefill over a cached prefix beside a decode row (rings of 5-slot pages, chunk
    // 16), and decode rows over a longer history with several query heads per kv head.
    for dtype in [KvDtype::Bf16, KvDtype::F16, KvDtype::Q8, KvDtype::Fp8, KvDtype::Q4] {
        v.push(AttnCase { dtype, ..c(4, 2, 32, Some(16), false, &[(10, 40, 16), (5, 1, 16)], 5) });
        v.push(AttnCase { dtype, ..c(8, 2, 64, None, true, &[(300, 1, 303), (40, 3, 48)], 16) });
    }
    for dtype in [KvDtype::Q8, KvDtype::Fp8, KvDtype::Q4] {
        v.push(AttnCase { dtype, ..c(16, 8, 32, None, true, &[(3000, 8, 3008)], 16) });
    }
    // q4 keys wait in a stage until their page completes: decode rows that complete a page and that start
    // one, and a prefill that completes two pages, the first begun in the stage.
    v.push(AttnCase { dtype: KvDtype::Q4, ..c(4, 2, 16, None, false, &[(15, 1, 16), (30, 3, 40), (7, 9, 16)], 8) });
    // Bidirectional (the vision encoder: tiles of patches, no cache): a batch of tiles, a short one
    // (decode-sized, which must not take the causal decode kernels), one over a cached prefix, and one tile of
    // the real tower (577 tokens, 88-dim heads, 4 of its 16 heads).
    for (heads, kv_heads, d, seqs) in [
        (4, 4, 16, &[(0, 37, 1), (0, 37, 1), (0, 37, 1)][..]),
        (2, 2, 8, &[(0, 2, 1), (0, 1, 1)]),
        (4, 2, 16, &[(5, 20, 8)]),
        (4, 4, 88, &[(0, 577, 1)]),
    ] {
        let page = if seqs[0].0 > 0 { 4 } else { 1 };
        v.push(AttnCase { bidirectional: true, ..c(heads, kv_heads, d, None, false, seqs, page) });
    }
    v
}

/// A batch's inputs: the sequences and their page table, queries, the new keys and values, the caches (stale
/// slots hold noise), and each sequence's whole history of keys and values.
struct Inputs {
    seqs: Vec<AttnSeq>,
    table: Vec<u32>,
    q: Vec<f32>,
    k_new: Vec<f32>,
    v_new: Vec<f32>,
    /// The caches' words, slot after slot, in the case's format (f32: the values' bits).
    k_cache: Vec<u32>,
    v_cache: Vec<u32>,
    /// Each sequence's keys and values: cached positions as the format stores them, new ones exact.
    hist_k: Vec<Vec<f32>>,
    hist_v: Vec<Vec<f32>>,
    /// q4: the key buffer's layout.
    q4: Option<Q4Keys>,
}

/// The cache slot of position `p` of `s`: its page from the table, the offset in the page.
fn slot(table: &[u32], page: usize, s: &AttnSeq, p: usize) -> usize {
    let r = p % s.slot_cap as usize;
    table[s.page_base as usize + r / page] as usize * page + r % page
}

fn inputs(a: &AttnCase, rng: &mut Rng) -> Inputs {
    let (kvh, d) = (a.kv_heads, a.d);
    let kvrow = kvh * d;
    let sw = a.dtype.slot_words(kvh, d).expect("the case's head_dim suits its format");
    let page = a.page;
    let (mut seqs, mut hist_k, mut hist_v) = (Vec::new(), Vec::new(), Vec::new());
    let mut row = 0usize;
    let mut table = Vec::new();
    // Where the table holds q4 stages (not pages).
    let mut stage_at = Vec::new();
    for &(cached, new, cap) in &a.seqs {
        let pages = cap.div_ceil(page);
        seqs.push(AttnSeq {
            q_start: row as u32,
            q_len: new as u32,
            pos0: cached as u32,
            page_base: table.len() as u32,
            slot_cap: (pages * page) as u32,
        });
        table.extend((0..pages).map(|_| 0u32));
        if a.dtype == KvDtype::Q4 {
            stage_at.push(table.len());
            table.push(0);
        }
        hist_k.push(rng.vec((cached + new) * kvrow));
        hist_v.push(rng.vec((cached + new) * kvrow));
        row += new;
    }
    // The pool's pages (one spare, never listed) in a shuffled order.
    let pool = table.len() - stage_at.len() + 1;
    let mut order: Vec<u32> = (0..pool as u32).collect();
    for i in (1..pool).rev() {
        order.swap(i, rng.below(i as u32 + 1) as usize);
    }
    let q4 = (a.dtype == KvDtype::Q4).then(|| Q4Keys::new(kvh, d, page, pool));
    let mut next = order.into_iter();
    for (i, t) in table.iter_mut().enumerate() {
        *t = match stage_at.iter().position(|&e| e == i) {
            Some(si) => q4.as_ref().map_or(0, |q| q.stage_entry(si)),
            None => next.next().unwrap_or(0),
        };
    }
    let q = rng.vec(row * a.heads * a.d);
    let (mut k_new, mut v_new) = (vec![0f32; row * kvrow], vec![0f32; row * kvrow]);
    // Stale slots hold noise, stored in the format like any slot.
    let noise = |rng: &mut Rng| -> Vec<u32> {
        rng.vec(pool * page * kvrow).chunks_exact(kvrow).flat_map(|x| r::kv::encode(a.dtype, x, kvh, d)).collect()
    };
    let (mut k_cache, mut v_cache) = (noise(rng), noise(rng));
    if let Some(q) = &q4 {
        k_cache = q.noise(rng, seqs.len());
    }
    for (si, (s, (hk, hv))) in seqs.iter().zip(hist_k.iter_mut().zip(hist_v.iter_mut())).enumerate() {
        let (p0, n, cap) = (s.pos0 as usize, s.q_len as usize, s.slot_cap as usize);
        if let Some(q) = &q4 {
            q.fill(&mut k_cache, &table, s, si, hk);
        }
        for p in p0.saturating_sub(cap)..p0 {
            let sl = slot(&table, page, s, p);
            let caches = [(&mut *hk, &mut k_cache), (&mut *hv, &mut v_cache)];
            for (h, c) in caches.into_iter().skip(usize::from(q4.is_some())) {
                let words = r::kv::encode(a.dtype, &h[p * kvrow..(p + 1) * kvrow], kvh, d);
                h[p * kvrow..(p + 1) * kvrow].copy_from_slice(&r::kv::decode(a.dtype, &words, kvh, d));
                c[sl * sw..(sl + 1) * sw].copy_from_slice(&words);
            }
        }
        let q0 = s.q_start as usize;
        k_new[q0 * kvrow..(q0 + n) * kvrow].copy_from_slice(&hk[p0 * kvrow..(p0 + n) * kvrow]);
        v_new[q0 * kvrow..(q0 + n) * kvrow].copy_from_slice(&hv[p0 * kvrow..(p0 + n) * kvrow]);
    }
    Inputs { seqs, table, q, k_new, v_new, k_cache, v_cache, hist_k, hist_v, q4 }
}

/// A cache buffer holding `words` in the case's format: f32 values for f32, else the words.
fn upload_cache<B: Backend>(be: &B, dtype: KvDtype, words: &[u32]) -> Result<B::Buffer> {
    match dtype {
        KvDtype::F32 => be.upload(&words.iter().map(|&w| f32::from_bits(w)).collect::<Vec<_>>()),
        _ => be.upload_u32(words),
    }
}

/// A cache buffer's values, slot after slot (q4 keys: page after page, then the stages), decoded by the
/// reference.
fn read_cache<B: Backend>(be: &B, a: &AttnCase, buf: &B::Buffer, q4: Option<&Q4Keys>) -> Result<Vec<f32>> {
    let words = match a.dtype {
        KvDtype::F32 => be.read(buf)?.iter().map(|v| v.to_bits()).collect(),
        _ => be.read_u32(buf)?,
    };
    if let Some(q) = q4 {
        return Ok(q.decode(&words));
    }
    let sw = a.dtype.slot_words(a.kv_heads, a.d).expect("checked by inputs");
    Ok(words.chunks_exact(sw).flat_map(|w| r::kv::decode(a.dtype, w, a.kv_heads, a.d)).collect())
}

pub(crate) fn attention<B: Backend>(be: &B, a: &AttnCase, rng: &mut Rng, perf: bool) -> Result<Out> {
    let i = inputs(a, rng);
    let p = a.params();
    let (q, k, v) = (be.upload(&i.q)?, be.upload(&i.k_new)?, be.upload(&i.v_new)?);
    let (kc, vc) = (upload_cache(be, a.dtype, &i.k_cache)?, upload_cache(be, a.dtype, &i.v_cache)?);
    let o = be.alloc(a.rows() * a.heads * a.d)?;
    let pages = KvPages { table: &i.table, size: a.page, dtype: a.dtype };
    let secs = timed(be, perf, &o, || be.attention(&q, &k, &v, &kc, &vc, pages, &i.seqs, &p, &o))?;
    Ok(out(be.read(&o)?, r::attention(&i.q, &i.hist_k, &i.hist_v, &i.seqs, &p), secs))
}

/// The new rows land in their slots in the case's format (a step longer than a ring leaves its last ring's
/// worth), the rest of the cache is untouched; keys and values both, decoded by the reference (compared as one
/// vector, keys first).
pub(crate) fn kv_store<B: Backend>(be: &B, a: &AttnCase, rng: &mut Rng, perf: bool) -> Result<Out> {
    let i = inputs(a, rng);
    let (kvh, d) = (a.kv_heads, a.d);
    let kvrow = kvh * d;
    let sw = a.dtype.slot_words(kvh, d).expect("checked by inputs");
    let (mut want, mut want_v) = (i.k_cache.clone(), i.v_cache.clone());
    for (si, s) in i.seqs.iter().enumerate() {
        if let Some(q) = &i.q4 {
            q.store(&mut want, &i.table, s, si, &i.hist_k[si]);
        }
        for t in 0..s.q_len as usize {
            let sl = slot(&i.table, a.page, s, s.pos0 as usize + t);
            let rr = s.q_start as usize + t;
            let caches = [(&mut want, &i.k_new), (&mut want_v, &i.v_new)];
            for (w, new) in caches.into_iter().skip(usize::from(i.q4.is_some())) {
                w[sl * sw..(sl + 1) * sw].copy_from_slice(&r::kv::encode(
                    a.dtype,
                    &new[rr * kvrow..(rr + 1) * kvrow],
                    kvh,
                    d,
                ));
            }
        }
    }
    let decode =
        |w: &[u32]| -> Vec<f32> { w.chunks_exact(sw).flat_map(|w| r::kv::decode(a.dtype, w, kvh, d)).collect() };
    let mut want = match &i.q4 {
        Some(q) => q.decode(&want),
        None => decode(&want),
    };
    want.extend(decode(&want_v));
    let (k, v) = (be.upload(&i.k_new)?, be.upload(&i.v_new)?);
    let (kc, vc) = (upload_cache(be, a.dtype, &i.k_cache)?, upload_cache(be, a.dtype, &i.v_cache)?);
    let pages = KvPages { table: &i.table, size: a.page, dtype: a.dtype };
    // What one call leaves is compared: a store is not idempotent (with q4 keys a call that completes a page
    // quantizes it and starts the next one's stage, so the same call again reads another history), so --perf
    // times the further calls only after reading the first one's result.
    timed(be, false, &kc, || be.kv_store(&k, &v, &kc, &vc, pages, &i.seqs, kvh, d))?;
    let mut got = read_cache(be, a, &kc, i.q4.as_ref())?;
    got.extend(read_cache(be, a, &vc, None)?);
    let secs = match perf {
        true => timed(be, true, &kc, || be.kv_store(&k, &v, &kc, &vc, pages, &i.seqs, kvh, d))?,
        false => None,
    };
    Ok(out(got, want, secs))
}
