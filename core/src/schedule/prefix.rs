//! Prefix reuse: each cache position's content key, and finding, forking, keeping and evicting the cache
//! sequences whose contents a new request's prompt begins with.

use crate::backend::Backend;
use crate::error::Result;
use crate::kv::SeqId;

use super::{Images, Scheduler, Seq};

impl<B: Backend> Scheduler<B> {
    /// A cache sequence for a request joining the batch, holding as much of its prompt as some running or
    /// kept sequence already has (at least one prompt token is left to feed, for the first logits).
    pub(super) fn join_cache(&mut self, keys: &[u64]) -> Result<(SeqId, usize)> {
        if self.cfg.prefix_cache_tokens == 0 {
            return Ok((self.cache.add_sequence(), 0));
        }
        let want = keys.len().saturating_sub(1);
        let mut best: Option<(SeqId, usize, Option<usize>)> = None; // (source, tokens shared, kept index)
        let cache = &self.cache;
        let mut consider = |id: SeqId, held: &mut dyn Iterator<Item = u64>, kept: Option<usize>| {
            let shared = held.zip(&keys[..want]).take_while(|(a, b)| a == *b).count();
            let n = cache.reusable(id, shared).unwrap_or(0);
            if n > 0 && best.is_none_or(|b| n > b.1) {
                best = Some((id, n, kept));
            }
        };
        for s in &self.running {
            if let Some(c) = s.cache {
                consider(c, &mut cache_content(s), None);
            }
        }
        for (i, (c, held)) in self.kept.iter().enumerate() {
            consider(*c, &mut held.iter().copied(), Some(i));
        }
        let Some((src, n, kept)) = best else {
            return Ok((self.cache.add_sequence(), 0));
        };
        if let Some(i) = kept {
            if n == self.cache.seq_len(src)? {
                // The new prompt begins with all that an ended request's sequence holds (a chat's next turn):
                // the sequence is taken over, nothing copied, and kept again, longer, when this one ends.
                self.kept.remove(i);
                return Ok((src, n));
            }
            // Most recently used now.
            if let Some(k) = self.kept.remove(i) {
                self.kept.push_back(k);
            }
        }
        let be = self.model.backend().clone();
        self.cache.fork(&be, src, n)
    }

    /// Keeps an ended request's cache sequence for reuse (or frees it), then evicts the least recently used
    /// ones past the budget.
    pub(super) fn keep_or_free(&mut self, c: SeqId, held: Vec<u64>) {
        let len = self.cache.seq_len(c).unwrap_or(0);
        if self.cfg.prefix_cache_tokens == 0 || len == 0 {
            self.cache.remove_sequence(c);
            return;
        }
        let mut held = held;
        held.truncate(len);
        self.kept.push_back((c, held));
        while self.kept_slots() > self.cfg.prefix_cache_tokens {
            let Some((old, _)) = self.kept.pop_front() else { break };
            self.cache.remove_sequence(old);
        }
    }

    /// Drops every kept sequence (prefix reuse starts afresh).
    pub fn clear_prefix_cache(&mut self) {
        for (c, _) in std::mem::take(&mut self.kept) {
            self.cache.remove_sequence(c);
        }
    }
}

/// Tags the keys of image patch positions (token ids are below 2^32).
const IMAGE_KEY: u64 = 1 << 63;

/// What each prompt position holds (see `Seq::keys`).
pub(super) fn content_keys<B: Backend>(prompt: &[u32], images: Option<&Images<B>>) -> Vec<u64> {
    let Some(im) = images else { return prompt.iter().map(|&t| t as u64).collect() };
    // The image and row of each patch token, in order.
    let mut rows = im.rows.iter().zip(&im.keys).flat_map(|((_, n), &k)| (0..*n as u64).map(move |r| (k, r)));
    prompt
        .iter()
        .map(|&t| {
            if t != im.patch {
                return t as u64;
            }
            let (k, r) = rows.next().unwrap_or((0, 0));
            let mut h = k ^ r.wrapping_mul(0x9E37_79B9_7F4A_7C15);
            h ^= h >> 31;
            IMAGE_KEY | (h.wrapping_mul(0xBF58_476D_1CE4_E5B9) >> 1)
        })
        .collect()
}

/// What a sequence's cache holds, position by position: the prompt read so far, then (once decoding) each
/// generated token but the last, which has not been fed yet.
pub(super) fn cache_content<B: Backend>(s: &Seq<B>) -> impl Iterator<Item = u64> + '_ {
    let fed = s.keys[..s.fed.min(s.keys.len())].iter().copied();
    let gen = if s.fed == s.prompt.len() { &s.out[..s.out.len().saturating_sub(1)] } else { &[][..] };
    fed.chain(gen.iter().map(|&t| t as u64))
}
