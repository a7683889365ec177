//! The attention ops on CUDA: flash-decoding for short query runs (the split count fixed by the region
//! sizes, so decode steps repeat and replay as graphs), the tiled prefill kernel, and the KV-cache write.
//! The tables of rows, tiles and slots go into the step's metadata (see attention.cu for their layout).

use herd_core::backend::{ops, KvPages};
use herd_core::error::Result;
use herd_core::kv_format::KvDtype;

use crate::device::err;
use crate::kernel::{kernel, params, DevPtr};
use crate::{blocks, CudaBackend, DECODE_MAX_Q, MAX_GROUP, MAX_HEAD_DIM};

params! {
    pub struct AttnDecodeParams {
        pub q: DevPtr, pub kn: DevPtr, pub vn: DevPtr, pub kc: DevPtr, pub vc: DevPtr, pub rows: DevPtr,
        pub part: DevPtr, pub n_heads: u32, pub n_kv: u32, pub hd: u32, pub scale: f32, pub chunk: u32,
        pub temp_on: u32, pub floor_scale: f32, pub attn_scale: f32, pub nsplit: u32, pub page_size: u32,
        pub kv_dtype: u32, pub slot_words: u32, pub key_words: u32, pub pad: u32,
    }
    pub struct AttnCombineParams {
        pub part: DevPtr, pub rows: DevPtr, pub out: DevPtr, pub n_heads: u32, pub n_kv: u32, pub hd: u32,
        pub nsplit: u32,
    }
    pub struct AttnPrefillParams {
        pub q: DevPtr, pub kn: DevPtr, pub vn: DevPtr, pub kc: DevPtr, pub vc: DevPtr, pub tiles: DevPtr,
        pub out: DevPtr, pub n_heads: u32, pub n_kv: u32, pub hd: u32, pub scale: f32, pub chunk: u32,
        pub temp_on: u32, pub floor_scale: f32, pub attn_scale: f32, pub page_size: u32, pub kv_dtype: u32,
        pub slot_words: u32, pub key_words: u32,
    }
    pub struct KvStoreParams {
        pub kn: DevPtr, pub vn: DevPtr, pub kc: DevPtr, pub vc: DevPtr, pub pairs: DevPtr, pub npairs: u32,
        pub kv_dim: u32, pub kv_dtype: u32, pub slot_words: u32, pub head_dim: u32, pub units: u32, pub keys: u32,
        pub pad: u32,
    }
    pub struct KvQ4Params {
        pub kn: DevPtr, pub kc: DevPtr, pub jobs: DevPtr, pub njobs: u32, pub kv_dim: u32, pub page_size: u32,
        pub key_words: u32,
    }
}

/// The prefill kernel's head-dimension slices per thread (its instantiations).
const PREFILL_DPT: [u32; 5] = [4, 8, 16, 32, 64];

kernel!(AttnDecode: "attention", AttnDecodeParams => "attn_decode");
kernel!(AttnCombine: "attention", AttnCombineParams => "attn_combine");
kernel!(AttnPrefill { dpt: u32 }: "attention", AttnPrefillParams => |k| format!("attn_prefill_{}", k.dpt),
    all PREFILL_DPT.map(|dpt| AttnPrefill { dpt }).to_vec());
kernel!(KvStore: "attention", KvStoreParams => "kv_store");
kernel!(KvQ4Pages: "attention", KvQ4Params => "kv_q4_pages");
kernel!(KvQ4Stage: "attention", KvQ4Params => "kv_q4_stage");

/// The format's number in the kernels, its words per slot (q4: per value slot), and the words of a q4 key page
/// (0 for the other formats: the kernels read keys as values).
fn format(pages: &KvPages<'_>, kv_heads: usize, head_dim: usize, op: &str) -> Result<(u32, u32, u32)> {
    let d = pages.dtype;
    let words = d.slot_words(kv_heads, head_dim).map_err(|m| err(format!("{op}: {m}")))?;
    let key = match d {
        KvDtype::Q4 => d.key_page_words(kv_heads, head_dim, pages.size).map_err(|m| err(format!("{op}: {m}")))?,
        _ => 0,
    };
    Ok((d.code(), words as u32, key as u32))
}

impl CudaBackend {
    pub(crate) fn attention_impl(&self, call: &ops::Attention<'_, CudaBackend>) -> Result<()> {
        let &ops::Attention { q, k_new, v_new, k_cache, v_cache, pages, seqs, p, out } = call;
        let _op = self.dev.op();

        let (h, kvh, hd) = (p.n_heads, p.n_kv_heads, p.head_dim);
        if kvh == 0 || h % kvh != 0 || hd == 0 || hd > MAX_HEAD_DIM {
            return Err(err(format!("attention: {h} heads over {kvh} kv heads of dim {hd} (at most {MAX_HEAD_DIM})")));
        }
        let g = h / kvh;
        let (kv_dtype, slot_words, key_words) = format(&pages, kvh, hd, "attention")?;
        let mut rows_meta = Vec::new();
        let mut tiles = Vec::new();
        let mut bound = 1usize;
        for s in seqs {
            let ql = s.q_len as usize;
            if ql == 0 {
                continue;
            }
            // page_base counts from the start of the metadata here (the page table follows the entries).
            let fields = [s.pos0, s.q_start, s.page_base, s.slot_cap.max(1)];
            if ql <= DECODE_MAX_Q && g <= MAX_GROUP && !p.bidirectional {
                for t in 0..ql as u32 {
                    rows_meta.extend_from_slice(&[s.q_start + t, s.pos0 + t]);
                    rows_meta.extend_from_slice(&fields);
                    rows_meta.extend_from_slice(&[0, 0]);
                }
                let visible = s.slot_cap as usize + ql;
                bound = bound.max(p.chunk.map_or(visible, |c| c.min(visible)));
            } else {
                for t0 in (0..ql).step_by(32) {
                    let nq = (ql - t0).min(32) as u32;
                    tiles.extend_from_slice(&[s.q_start + t0 as u32, nq, s.pos0 + t0 as u32]);
                    tiles.extend_from_slice(&fields);
                    // Bidirectional: one past the last key every query sees (0: causal).
                    tiles.push(if p.bidirectional { s.pos0 + ql as u32 } else { 0 });
                }
            }
        }
        let (temp_on, fs, asc) = match p.temperature {
            Some(t) => (1, t.floor_scale, t.attn_scale),
            None => (0, 1.0, 0.0),
        };
        let chunk = if p.bidirectional { 0 } else { p.chunk.unwrap_or(0) };
        // The page table after the entries; each entry's page_base (word 4 of a row, 5 of a tile) made absolute.
        let with_table = |mut meta: Vec<u32>, word: usize| -> Result<Vec<u32>> {
            let at = u32::try_from(meta.len()).map_err(|_| err("attention: metadata too large"))?;
            for e in meta.chunks_exact_mut(8) {
                e[word] += at;
            }
            meta.extend_from_slice(pages.table);
            Ok(meta)
        };
        if !rows_meta.is_empty() {
            let nrows = rows_meta.len() / 8;
            let rows_meta = with_table(rows_meta, 4)?;
            // Splits of at least 64 keys, up to about four blocks per SM. The bound comes from the region
            // sizes, not the current length, so the grid stays the same from token to token.
            let target = (4 * self.dev.sms as usize).div_ceil(kvh * nrows).max(1);
            let nsplit = bound.div_ceil(64).min(target).clamp(1, 64);
            let part = self.dev.scratch("attention splits", nrows * kvh * nsplit * g * (hd + 2) * 4)?;
            let rows = self.dev.meta(&rows_meta)?;
            let dp = AttnDecodeParams {
                q: q.at(),
                kn: k_new.at(),
                vn: v_new.at(),
                kc: k_cache.at(),
                vc: v_cache.at(),
                rows,
                part: DevPtr::new(part),
                n_heads: h as u32,
                n_kv: kvh as u32,
                hd: hd as u32,
                scale: p.scale,
                chunk: chunk as u32,
                temp_on,
                floor_scale: fs,
                attn_scale: asc,
                nsplit: nsplit as u32,
                page_size: pages.size as u32,
                kv_dtype,
                slot_words,
                key_words,
                pad: 0,
            };
            // q, four warps' sums, maxima and totals, then each warp's tile of probabilities and value slots.
            let smem = (5 * g * hd + 8 * g + 4 * 32 * g + 4 * 32) * 4;
            self.launch(AttnDecode, (kvh as u32, nrows as u32, nsplit as u32), 128, smem, &dp)?;
            let cp = AttnCombineParams {
                part: DevPtr::new(part),
                rows,
                out: out.at(),
                n_heads: h as u32,
                n_kv: kvh as u32,
                hd: hd as u32,
                nsplit: nsplit as u32,
            };
            self.launch(AttnCombine, (nrows as u32, h as u32, 1), 128, 0, &cp)?;
        }
        if !tiles.is_empty() {
            let ntiles = tiles.len() / 8;
            let tiles = with_table(tiles, 5)?;
            let dpt = PREFILL_DPT.into_iter().find(|&d| 4 * d as usize >= hd).unwrap_or(64);
            let bk = if dpt == 64 { 16 } else { 32 };
            let pp = AttnPrefillParams {
                q: q.at(),
                kn: k_new.at(),
                vn: v_new.at(),
                kc: k_cache.at(),
                vc: v_cache.at(),
                tiles: self.dev.meta(&tiles)?,
                out: out.at(),
                n_heads: h as u32,
                n_kv: kvh as u32,
                hd: hd as u32,
                scale: p.scale,
                chunk: chunk as u32,
                temp_on,
                floor_scale: fs,
                attn_scale: asc,
                page_size: pages.size as u32,
                kv_dtype,
                slot_words,
                key_words,
            };
            let smem = 2 * bk * hd * 4;
            self.launch(AttnPrefill { dpt }, (h as u32, ntiles as u32, 1), 128, smem, &pp)?;
        }
        Ok(())
    }

    pub(crate) fn kv_store_impl(&self, call: &ops::KvStore<'_, CudaBackend>) -> Result<()> {
        let &ops::KvStore { k_new, v_new, k_cache, v_cache, pages, seqs, kv_heads, head_dim } = call;
        let _op = self.dev.op();
        let kv_dim = kv_heads * head_dim;
        let (kv_dtype, slot_words, key_words) = format(&pages, kv_heads, head_dim, "kv_store")?;
        let q4 = pages.dtype == KvDtype::Q4;
        if q4 && kv_dim > 0 {
            self.kv_store_q4_keys(k_new, k_cache, &pages, seqs, kv_dim, key_words)?;
        }
        let units = pages.dtype.store_units(kv_heads, head_dim);
        let mut pairs = Vec::new();
        for s in seqs {
            let (ql, cap) = (s.q_len as usize, s.slot_cap.max(1) as usize);
            // A step longer than the ring keeps its last `cap` tokens.
            for t in ql.saturating_sub(cap)..ql {
                let slot = pages.slot(s, s.pos0 as usize + t);
                pairs.extend_from_slice(&[s.q_start + t as u32, slot as u32]);
            }
        }
        if pairs.is_empty() || kv_dim == 0 {
            return Ok(());
        }
        let np = pairs.len() / 2;
        let p = KvStoreParams {
            kn: k_new.at(),
            vn: v_new.at(),
            kc: k_cache.at(),
            vc: v_cache.at(),
            pairs: self.dev.meta(&pairs)?,
            npairs: np as u32,
            kv_dim: kv_dim as u32,
            kv_dtype,
            slot_words,
            head_dim: head_dim as u32,
            units: units as u32,
            keys: u32::from(!q4),
            pad: 0,
        };
        self.launch(KvStore, (blocks(np * units, 256), 1, 1), 256, 0, &p)
    }

    /// q4 keys (herd_core::kv_q4's rules): the pages the step completes, quantized from the stages and the new
    /// rows, then the new keys of pages it leaves incomplete into the stages.
    fn kv_store_q4_keys(
        &self,
        k_new: &crate::CudaBuffer,
        k_cache: &crate::CudaBuffer,
        pages: &KvPages<'_>,
        seqs: &[herd_core::backend::AttnSeq],
        kv_dim: usize,
        key_words: u32,
    ) -> Result<()> {
        let size = pages.size;
        // Job lists whose lengths depend only on the rows (unused entries u32::MAX), so a decode step's commands
        // are the same whether or not it completes a page, and replay as one graph.
        let (mut jobs, mut stage) = (Vec::new(), Vec::new());
        for s in seqs {
            let (p0, q, cap) = (s.pos0 as usize, s.q_len as usize, s.slot_cap.max(1) as usize);
            let st = pages.stage(s) as u32;
            let at = jobs.len();
            for t in (0..q).filter(|&t| (p0 + t) % size == size - 1 && t + cap >= q) {
                let page = pages.page(s, p0 + t) as u32;
                jobs.extend_from_slice(&[page, (p0 + t + 1 - size) as u32, s.pos0, s.q_start, st]);
            }
            jobs.resize(at + 5 * (q / size + 1), u32::MAX);
            let (at, end) = (stage.len(), p0 + q);
            for x in (end / size * size).max(p0)..end {
                stage.extend_from_slice(&[s.q_start + (x - p0) as u32, st + (x % size) as u32]);
            }
            stage.resize(at + 2 * q, u32::MAX);
        }
        let prm = |jobs: &[u32], n: usize| -> Result<KvQ4Params> {
            Ok(KvQ4Params {
                kn: k_new.at(),
                kc: k_cache.at(),
                jobs: self.dev.meta(jobs)?,
                njobs: n as u32,
                kv_dim: kv_dim as u32,
                page_size: size as u32,
                key_words,
            })
        };
        if !jobs.is_empty() {
            let n = jobs.len() / 5;
            self.launch(KvQ4Pages, (blocks(n * kv_dim / 8, 256), 1, 1), 256, 0, &prm(&jobs, n)?)?;
        }
        if !stage.is_empty() {
            let n = stage.len() / 2;
            self.launch(KvQ4Stage, (blocks(n * kv_dim, 256), 1, 1), 256, 0, &prm(&stage, n)?)?;
        }
        Ok(())
    }
}
