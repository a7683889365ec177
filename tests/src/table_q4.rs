//! q4 keys in the op table's attention and kv_store cases, laid out from `herd_core::kv_q4`'s documented rules
//! with the reference's own quantizer: a key buffer of pages (each channel quantized over the page's slots),
//! then one stage per sequence (the f32 keys of the page it is filling); the table gives each sequence's stage
//! after its pages.

use herd_core::backend::AttnSeq;

use crate::reference as r;
use crate::table::Rng;

/// The key buffer of a case: pages of `kpw` words, and from slot `stage0` (in `kv_dim` words) a stage of `page`
/// slots per sequence.
pub(crate) struct Q4Keys {
    pub kvh: usize,
    pub d: usize,
    pub page: usize,
    pub pool: usize,
    pub kpw: usize,
    pub stage0: usize,
}

impl Q4Keys {
    pub fn new(kvh: usize, d: usize, page: usize, pool: usize) -> Self {
        let n = kvh * d;
        let kpw = page * n / 8 + n;
        Q4Keys { kvh, d, page, pool, kpw, stage0: (pool * kpw).div_ceil(n) }
    }

    fn n(&self) -> usize {
        self.kvh * self.d
    }

    /// Sequence `i`'s stage entry in the table.
    pub fn stage_entry(&self, i: usize) -> u32 {
        (self.stage0 + i * self.page) as u32
    }

    /// A key buffer of noise for `seqs` sequences: noise pages, quantized; noise stages.
    pub fn noise(&self, rng: &mut Rng, seqs: usize) -> Vec<u32> {
        let n = self.n();
        let mut w: Vec<u32> = (0..self.pool)
            .flat_map(|_| r::kv::encode_q4_keys(&rng.vec(self.page * n), self.kvh, self.d, self.page))
            .collect();
        w.resize(self.stage0 * n, 0);
        w.extend(rng.vec(seqs * self.page * n).iter().map(|v| v.to_bits()));
        w
    }

    /// Writes sequence `si`'s cached keys (`hist`, its positions from 0) as the cache holds them after `s.pos0`
    /// positions: every complete page quantized into its (ring) page, in order, the incomplete one in the stage;
    /// `hist` then holds what the pages give back.
    pub fn fill(&self, w: &mut [u32], table: &[u32], s: &AttnSeq, si: usize, hist: &mut [f32]) {
        let (n, p) = (self.n(), self.page);
        let p0 = s.pos0 as usize;
        for b in (0..p0 / p).map(|i| i * p) {
            let page = self.page_of(table, s, b);
            let words = r::kv::encode_q4_keys(&hist[b * n..(b + p) * n], self.kvh, self.d, p);
            hist[b * n..(b + p) * n].copy_from_slice(&r::kv::decode_q4_keys(&words, self.kvh, self.d, p));
            w[page * self.kpw..(page + 1) * self.kpw].copy_from_slice(&words);
        }
        let st = self.stage_entry(si) as usize;
        for x in p0 / p * p..p0 {
            for (o, v) in w[(st + x % p) * n..][..n].iter_mut().zip(&hist[x * n..(x + 1) * n]) {
                *o = v.to_bits();
            }
        }
    }

    fn page_of(&self, table: &[u32], s: &AttnSeq, x: usize) -> usize {
        let r = x % s.slot_cap as usize;
        table[s.page_base as usize + r / self.page] as usize
    }

    /// What kv_store leaves in the key buffer `w` for sequence `si`, whose exact keys (cached and new) are
    /// `keys`: the pages the step completes (the last occurrence of each ring page) quantized, and the new keys
    /// of an incomplete page in the stage.
    pub fn store(&self, w: &mut [u32], table: &[u32], s: &AttnSeq, si: usize, keys: &[f32]) {
        let (n, p) = (self.n(), self.page);
        let (p0, end, cap) = (s.pos0 as usize, (s.pos0 + s.q_len) as usize, s.slot_cap as usize);
        for b in (0..end / p).map(|i| i * p).filter(|&b| b + p > p0 && b + cap + p > end) {
            let page = self.page_of(table, s, b);
            let words = r::kv::encode_q4_keys(&keys[b * n..(b + p) * n], self.kvh, self.d, p);
            w[page * self.kpw..(page + 1) * self.kpw].copy_from_slice(&words);
        }
        let st = self.stage_entry(si) as usize;
        for x in (end / p * p).max(p0)..end {
            for (o, v) in w[(st + x % p) * n..][..n].iter_mut().zip(&keys[x * n..(x + 1) * n]) {
                *o = v.to_bits();
            }
        }
    }

    /// The key buffer's values: every page decoded, then the stages.
    pub fn decode(&self, w: &[u32]) -> Vec<f32> {
        let mut out: Vec<f32> = w[..self.pool * self.kpw]
            .chunks_exact(self.kpw)
            .flat_map(|pw| r::kv::decode_q4_keys(pw, self.kvh, self.d, self.page))
            .collect();
        out.extend(w[self.stage0 * self.n()..].iter().map(|&b| f32::from_bits(b)));
        out
    }
}
