//! A cache ahead of use: its pools sized up front for what a memory plan counts ([`KvCache::reserve_for`]), and
//! a sequence's keys and values written by the backend's kv_store without a prefill ([`KvCache::fill_random`]),
//! for decoding, and measuring the memory a context takes, at depths a prefill would take long to reach.

use super::{KvCache, SeqId, CHUNKED, FULL};
use crate::backend::Backend;
use crate::error::Result;

impl<B: Backend> KvCache<B> {
    /// Grows the pools so that `pages` more pages of each layer kind can be taken without growing again (a
    /// cache sized up front never copies an arena).
    pub fn reserve_pages(&mut self, backend: &B, pages: usize) -> Result<()> {
        self.reserve_kind_pages(backend, [pages; 2], 0)
    }

    /// Grows the pools so that `seqs` more sequences of `tokens` tokens each fit without growing again: a page
    /// per `page` tokens in full-attention layers, and up to a ring's worth in chunked ones. A cache sized so,
    /// up front, holds what a memory plan counts ([`crate::plan::KvLayout::bytes`] per sequence) and never
    /// copies an arena; an arena's doubling would otherwise leave up to twice that reserved.
    /// `kept_slots` adds room for that many more slots in every layer (ended sequences kept for prefix reuse,
    /// counted in whole pages). With q4 keys, each arena it sizes also gets a stage for each of the `seqs`.
    pub fn reserve_for(&mut self, backend: &B, seqs: usize, tokens: usize, kept_slots: usize) -> Result<()> {
        let kept = kept_slots.div_ceil(self.page);
        let need = [FULL, CHUNKED].map(|k| self.pages_for(k, tokens).saturating_mul(seqs).saturating_add(kept));
        self.reserve_kind_pages(backend, need, seqs)
    }

    fn reserve_kind_pages(&mut self, backend: &B, pages: [usize; 2], stages: usize) -> Result<()> {
        let has = self.has_kind;
        for kind in (0..2).filter(|&k| has[k]) {
            let mut left = pages[kind];
            let mut a = 0;
            while left > 0 {
                if a == self.arenas[kind].len() {
                    self.new_arena(backend, kind)?;
                }
                let ar = &self.arenas[kind][a];
                let room = ar.free.len() + (self.max_pages[kind] - ar.refs.len());
                let take = left.min(room);
                let want = ar.refs.len() + take.saturating_sub(ar.free.len());
                self.resize(backend, kind, a, want, stages)?;
                left -= take;
                a += 1;
            }
        }
        Ok(())
    }

    /// Appends `n` positions to sequence `id` in every layer, written by the backend's `kv_store` as a prefill
    /// writes them (so in the cache's formats, and resident): keys and values drawn uniformly from [-1, 1) by a
    /// generator seeded with `seed`, one block of rows reused along the positions. For decoding, and the memory
    /// a context takes, at depths a prefill would take long to reach; what attention costs does not depend on
    /// the values.
    pub fn fill_random(&mut self, backend: &B, id: SeqId, n: usize, seed: u64) -> Result<()> {
        self.check_fits(id, n)?;
        let width = self.kv_heads * self.head_dim;
        // A block never longer than a chunked layer's ring, so no step writes a ring slot twice.
        let rows = self.ring(CHUNKED).map_or(1024, |r| (r * self.page).min(1024)).min(n.max(1));
        let mut x = seed | 1;
        let data: Vec<f32> = (0..2 * rows * width)
            .map(|_| {
                // xorshift64*: 24 random bits to [-1, 1).
                x ^= x >> 12;
                x ^= x << 25;
                x ^= x >> 27;
                ((x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40) as f32 / (1u32 << 23) as f32) - 1.0
            })
            .collect();
        let (k, v) = (backend.upload(&data[..rows * width])?, backend.upload(&data[rows * width..])?);
        let mut done = 0;
        while done < n {
            let m = (n - done).min(rows);
            self.reserve(backend, &[(id, m)])?;
            self.plan(&[(id, 0, m)])?;
            for layer in 0..self.layers.len() {
                for g in self.groups(layer) {
                    backend.kv_store(&k, &v, g.k, g.v, g.pages(), g.seqs, self.kv_heads, self.head_dim)?;
                }
            }
            self.advance(&[(id, m)])?;
            done += m;
        }
        Ok(())
    }
}
