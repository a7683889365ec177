//! Cutting a batch into steps that fit the backend's largest buffer: a long prompt (or a large batch) runs as
//! consecutive pieces of each sequence's tokens through the KV cache, which gives the same result as one
//! step. On a browser's WebGPU (128 MiB per binding by default) this is what lets a long prompt through.

use super::{Llama4, Rows};
use crate::backend::Backend;
use crate::error::{HerdError, Result};
use crate::kv::{KvCache, SeqId};

/// Batch entries (index into the batch, tokens) of one step.
pub(super) type Piece<'a> = Vec<(usize, &'a [u32])>;

/// The most new tokens one step runs: a longer prompt is read in pieces of this many (the same result; a
/// Scout step of 4096 tokens keeps a quarter GiB of f32 activations in a buffer of the widest row, 16,384).
pub const MAX_STEP_ROWS: usize = 4096;

impl<B: Backend> Llama4<B> {
    /// The most new tokens and the most sequences one step may hold on this backend: the widest per-token
    /// buffer of a step (activations, the MoE's per-choice partial sums, logits when every row comes back)
    /// and the per-sequence ones (logits, the last hidden rows) must fit its largest buffer, and a step
    /// holds at most [`MAX_STEP_ROWS`] tokens, so that a long prompt's activations stay bounded (its KV cache
    /// is what grows with it).
    pub(crate) fn step_limits(&self, rows: Rows) -> (usize, usize) {
        let c = &self.cfg;
        let ffn = c.intermediate_size.max(if c.moe_layers.iter().any(|&m| !m) { c.intermediate_size_mlp } else { 0 });
        let moe = if c.moe_layers.iter().any(|&m| m) { c.num_experts_per_tok * 2 * c.intermediate_size } else { 0 };
        let logits = if rows == Rows::All { c.vocab_size } else { 0 };
        let per_row = [c.hidden_size, c.num_attention_heads * c.head_dim, ffn, c.num_local_experts, moe, logits]
            .into_iter()
            .max()
            .unwrap_or(1)
            .max(1);
        let per_seq = c.vocab_size.max(c.hidden_size).max(1);
        let max = self.backend.max_buffer_len();
        ((max / per_row).clamp(1, MAX_STEP_ROWS), (max / per_seq).max(1))
    }

    /// Checks the whole batch (so that no step runs for a batch that is refused), then cuts it into steps.
    pub(super) fn steps<'a>(
        &self,
        cache: &KvCache<B>,
        batch: &[(SeqId, &'a [u32])],
        rows: Rows,
    ) -> Result<Vec<Piece<'a>>> {
        self.check_batch(cache, batch)?;
        Ok(self.cut(batch, rows))
    }

    /// Whether [`Llama4::forward_pick`] runs the batch as one step, asking for `outs` rows of logits in all.
    pub(super) fn one_step(&self, batch: &[(SeqId, &[u32])], outs: usize) -> bool {
        self.fits_one_step(batch.iter().map(|b| b.1.len()).sum(), batch.len().max(outs))
    }

    /// Whether a batch of `tokens` new tokens with `outs` rows of logits to give back (one per sequence, or
    /// more for picks of several rows) runs as one step; a batch with a pick of several rows must.
    pub fn fits_one_step(&self, tokens: usize, outs: usize) -> bool {
        let (max_rows, max_seqs) = self.step_limits(Rows::Last);
        outs <= max_seqs && tokens <= max_rows
    }

    /// Refuses a batch that no step may run (before any work is enqueued).
    pub(super) fn check_batch(&self, cache: &KvCache<B>, batch: &[(SeqId, &[u32])]) -> Result<()> {
        let cfg = &self.cfg;
        if batch.is_empty() {
            return Err(HerdError::Input("empty batch".into()));
        }
        for (bi, &(id, toks)) in batch.iter().enumerate() {
            if toks.is_empty() {
                return Err(HerdError::Input("a sequence in the batch has no new tokens".into()));
            }
            if batch[..bi].iter().any(|(o, _)| *o == id) {
                return Err(HerdError::Input(format!("sequence {} appears twice in one batch", id.0)));
            }
            if let Some(&bad) = toks.iter().find(|&&t| t as usize >= cfg.vocab_size) {
                return Err(HerdError::Input(format!("token id {bad} is outside the vocabulary ({})", cfg.vocab_size)));
            }
            cache.check_fits(id, toks.len())?;
            let total = cache.seq_len(id)? + toks.len();
            if total > cfg.max_position_embeddings {
                return Err(HerdError::Input(format!(
                    "{total} tokens exceed the model's context of {} (max_position_embeddings)",
                    cfg.max_position_embeddings
                )));
            }
        }
        Ok(())
    }

    /// Cuts a checked batch into steps.
    pub(super) fn cut<'a>(&self, batch: &[(SeqId, &'a [u32])], rows: Rows) -> Vec<Piece<'a>> {
        let (max_rows, max_seqs) = self.step_limits(rows);
        let mut pieces: Vec<Piece<'a>> = vec![Vec::new()];
        let mut rows_in = 0;
        for (bi, &(_, toks)) in batch.iter().enumerate() {
            let mut rest = toks;
            while !rest.is_empty() {
                let cur = pieces.len() - 1;
                if rows_in == max_rows || pieces[cur].len() == max_seqs {
                    pieces.push(Vec::new());
                    rows_in = 0;
                    continue;
                }
                let n = rest.len().min(max_rows - rows_in);
                pieces[cur].push((bi, &rest[..n]));
                rows_in += n;
                rest = &rest[n..];
            }
        }
        pieces
    }
}
