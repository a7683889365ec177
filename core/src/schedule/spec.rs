//! Speculative decoding in the scheduler ([`crate::speculate`]): before a step, the drafter proposes tokens
//! for the decoding sequences that may take them; the step feeds each such sequence its last token and its
//! draft, and asks for the logits of all of them (argmax on the device for greedy requests, rows read back
//! for sampled ones); after it, the verdict keeps a prefix of the draft and one token of the target's, and
//! the cache forgets the rest.

use super::{Scheduler, SchedulerStats, Seq};
use crate::backend::Backend;
use crate::error::{HerdError, Result};
use crate::kv::KvCache;
use crate::kv_format::KvDtype;
use crate::model::{Pick, Picked};
use crate::sampling::Distribution;
use crate::speculate::{accept, argmax_verifiable, row_distribution, Adapt, DraftAsk, Drafter, Verdict};

/// A scheduler's drafter and the most tokens it drafts per sequence and step.
pub(super) struct Speculation {
    pub(super) drafter: Box<dyn Drafter>,
    pub(super) max_draft: usize,
    /// Draft only for greedy requests (whose tokens it cannot change at all).
    pub(super) greedy_only: bool,
}

impl<B: Backend> Seq<B> {
    /// Whether this sequence may have a draft this step: decoding, with no grammar (its mask is computed for
    /// one position), no log-probabilities and no OpenAI penalties (both taken on the host per token).
    fn may_draft(&self) -> bool {
        self.fed == self.prompt.len() && !self.out.is_empty() && self.constraint.is_none() && !self.host_logits()
    }

    /// What a sequence with a draft asks of the step: the argmax of every row for greedy requests, else the
    /// rows' logits (the rejection rule runs on the host).
    pub(super) fn verify_pick(&self) -> Pick<'static> {
        let n = self.draft.len() + 1;
        if argmax_verifiable(self.sampler.params()) {
            Pick::Argmax(n)
        } else {
            Pick::LogitRows(n)
        }
    }
}

impl<B: Backend> Scheduler<B> {
    /// Drafts with `drafter` from now on, at most `max_draft` tokens per sequence and step (the number
    /// adapts to each sequence's acceptance); with `greedy_only`, for greedy requests only. Refused for a q4
    /// KV cache (its pages cannot roll back).
    pub fn set_drafter(&mut self, drafter: Box<dyn Drafter>, max_draft: usize, greedy_only: bool) -> Result<()> {
        if self.model.kv_dtypes().contains(&KvDtype::Q4) {
            return Err(HerdError::Input(
                "speculative decoding cannot run with a q4 KV cache (its pages cannot roll back)".into(),
            ));
        }
        if max_draft == 0 {
            return Err(HerdError::Input("--draft-tokens must be at least 1".into()));
        }
        self.spec = Some(Speculation { drafter, max_draft, greedy_only });
        Ok(())
    }

    /// The drafter's name, when there is one.
    pub fn drafter(&self) -> Option<String> {
        self.spec.as_ref().map(|s| s.drafter.name())
    }

    /// Asks the drafter for the sequences that may draft this step, within `room` tokens of the step's
    /// budget, and puts the drafts in their sequences. A drafter that fails costs its drafts, nothing else.
    pub(super) async fn draft(&mut self) {
        let Some(spec) = self.spec.as_mut() else { return };
        let (max_rows, max_outs) = self.model.step_limits(crate::model::Rows::Last);
        let decoding = self.running.iter().filter(|s| s.fed == s.prompt.len()).count();
        let mut room = self.cfg.max_batch_tokens.min(max_rows).saturating_sub(decoding);
        let mut outs = self.running.len();
        let chunk = self.cache.chunk();
        let mut asks: Vec<DraftAsk<'_>> = Vec::new();
        let mut whose: Vec<usize> = Vec::new();
        for (i, s) in self.running.iter_mut().enumerate() {
            s.draft.clear();
            if !s.may_draft() || (spec.greedy_only && !argmax_verifiable(s.sampler.params())) {
                continue;
            }
            if s.adapt.pause > 0 {
                s.adapt.pause -= 1;
                continue;
            }
            // Fed this step: the last token at `len`, the draft after it; a verification gives up to k + 1
            // tokens, within the budget; a chunked ring can roll back only writes inside the chunk of `len`.
            let len = s.prompt.len() + s.out.len() - 1;
            let mut k = s.adapt.k.min(spec.max_draft).min((s.max_tokens - s.out.len()).saturating_sub(1));
            if let Some(c) = chunk {
                k = k.min((len / c + 1) * c - len - 1);
            }
            k = k.min(room).min(max_outs.saturating_sub(outs));
            if k == 0 {
                continue;
            }
            room -= k;
            outs += k;
            asks.push(DraftAsk { id: s.id, prompt: &s.prompt, out: &s.out, k });
            whose.push(i);
        }
        if asks.is_empty() {
            return;
        }
        let got = spec.drafter.draft(&asks).await;
        let ks: Vec<usize> = asks.iter().map(|a| a.k).collect();
        drop(asks);
        let Ok(drafts) = got else {
            self.stats.draft_failures += 1;
            return;
        };
        for ((i, mut d), k) in whose.into_iter().zip(drafts).zip(ks) {
            d.truncate(k);
            self.running[i].draft = d;
        }
    }
}

/// After a step: the verdict on sequence `s`'s draft from what the step gave (`got`), its tokens emitted
/// (until one ends it) and the cache rolled back to what it now holds: the prompt and every emitted token
/// but the last.
pub(super) fn verify<B: Backend>(
    s: &mut Seq<B>,
    got: Picked,
    vocab: usize,
    max_draft: usize,
    cache: &mut KvCache<B>,
    stats: &mut SchedulerStats,
) {
    let draft = std::mem::take(&mut s.draft);
    let verdict = match got {
        Picked::Ids(ids) if ids.len() == draft.len() + 1 => {
            let accepted = draft.iter().zip(&ids).take_while(|(d, t)| d == t).count();
            Verdict { accepted, next: ids[accepted] }
        }
        Picked::Logits(rows) if rows.len() == (draft.len() + 1) * vocab => {
            let params = *s.sampler.params();
            let penalty = params.repetition_penalty != 1.0;
            let history = &s.history;
            let target = |j: usize| -> Distribution {
                if penalty {
                    let h: Vec<u32> = history.iter().chain(&draft[..j]).copied().collect();
                    row_distribution(&rows, j, vocab, &h, &params)
                } else {
                    row_distribution(&rows, j, vocab, &[], &params)
                }
            };
            let sampler = &mut s.sampler;
            accept(&draft, target, None, || sampler.draw())
        }
        _ => {
            s.stop = Some(Err("the model gave no verification for a drafted sequence".into()));
            return;
        }
    };
    stats.verifications += 1;
    stats.drafted_tokens += draft.len() as u64;
    stats.accepted_tokens += verdict.accepted as u64;
    s.adapt.update(draft.len(), verdict.accepted, max_draft);
    for &id in draft[..verdict.accepted].iter().chain([&verdict.next]) {
        s.emit(id, None, stats);
        if s.stop.is_some() {
            break;
        }
    }
    if let Some(c) = s.cache {
        if let Err(e) = cache.truncate(c, s.prompt.len() + s.out.len() - 1) {
            s.stop = Some(Err(e.to_string()));
        }
    }
}

/// A sequence's acceptance state, when the scheduler speculates.
pub(super) fn adapt_start(max_draft: Option<usize>) -> Adapt {
    Adapt::new(max_draft.map_or(1, |m| m.min(4)))
}
