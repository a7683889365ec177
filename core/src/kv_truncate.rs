//! Rolling a sequence back: [`KvCache::truncate`] forgets a verification's rejected tokens.

use super::{KvCache, SeqId};
use crate::backend::Backend;
use crate::error::{HerdError, Result};

impl<B: Backend> KvCache<B> {
    /// Forgets the tokens of sequence `id` past its first `len` (rolling back a verification's rejected
    /// tokens): full-attention pages wholly past `len` go back to the pool. Chunked rings are not restored:
    /// the caller must only roll back tokens written inside the chunk of position `len` (the positions a
    /// write past that chunk's end overwrites are that chunk's own). Refused for q4 keys, whose pages are
    /// quantized whole and cannot take back part of a page.
    pub fn truncate(&mut self, id: SeqId, len: usize) -> Result<()> {
        let s = self.index(id)?;
        let have = self.seqs[s].len;
        if len >= have {
            return Ok(());
        }
        if (0..2).any(|k| self.has_kind[k] && self.stage_w[k] > 0) {
            return Err(HerdError::Input("a q4 KV cache cannot roll back tokens (speculative decoding)".into()));
        }
        let keep = len.div_ceil(self.page);
        let growing: Vec<usize> = (0..2).filter(|&k| self.ring(k).is_none()).collect();
        for kind in growing {
            let t = &mut self.seqs[s].tables[kind];
            let dropped: Vec<u32> = t.pages.drain(keep.min(t.pages.len())..).flatten().collect();
            if let Some(a) = t.arena {
                for p in dropped {
                    self.release(kind, a, p);
                }
            }
        }
        self.seqs[s].len = len;
        Ok(())
    }
}
