//! Speculative decoding: a [`Drafter`] proposes the next few tokens of a sequence, the target model reads
//! them all in one forward pass (its logits at every drafted position, [`crate::model::Pick::Argmax`] or
//! [`crate::model::Pick::LogitRows`]), and the scheduler keeps the drafted tokens the target would have
//! produced itself ([`accept`]), then one more of the target's own. The KV of the rejected tokens is rolled
//! back ([`crate::kv::KvCache::truncate`]). Greedy output is token for token what plain decoding gives;
//! sampled output has exactly the target's distribution (the rejection rule of Leviathan et al. and Chen et
//! al., 2023).
//!
//! Drafters: [`PromptLookup`] (n-gram matching against the prompt and the text so far, no model) and
//! [`DraftModel`] (a smaller model that shares the tokenizer, with its own KV cache, on the same backend). A
//! drafter that reads the target's hidden states (EAGLE-style heads) fits the same trait: it would be given
//! the verification's last hidden rows along with the context (not built).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::backend::Backend;
use crate::error::{HerdError, Result};
use crate::kv::{KvCache, SeqId};
use crate::model::{Llama4, Pick, Picked};
use crate::sampling::{Distribution, SamplingParams};
use crate::schedule::RequestId;

#[path = "speculate_accept.rs"]
mod accept_rule;
pub use accept_rule::{accept, Verdict};

/// What the scheduler asks a drafter for one sequence: up to `k` tokens to follow its context, which is
/// `prompt` then `out` (the tokens generated so far; the last one is not yet in the target's cache).
pub struct DraftAsk<'a> {
    pub id: RequestId,
    pub prompt: &'a [u32],
    pub out: &'a [u32],
    pub k: usize,
}

impl DraftAsk<'_> {
    /// Tokens in the context.
    pub fn len(&self) -> usize {
        self.prompt.len() + self.out.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The context's token at `i`.
    pub fn at(&self, i: usize) -> u32 {
        if i < self.prompt.len() {
            self.prompt[i]
        } else {
            self.out[i - self.prompt.len()]
        }
    }
}

/// The future a [`Drafter`] answers with: per ask, the drafted tokens (at most its `k`; none is a valid
/// answer, and that sequence then decodes as usual this step).
pub type Drafts<'a> = Pin<Box<dyn Future<Output = Result<Vec<Vec<u32>>>> + 'a>>;

/// Proposes tokens for the target to verify. Its guesses change only the speed: every drafted token is
/// checked against the target's own distribution. Drafts are point guesses (the rejection rule treats each
/// as a draft distribution with all its mass on that token).
pub trait Drafter: Send {
    /// How it is named in reports (`ngram`, `draft:DIR`).
    fn name(&self) -> String;
    /// Drafts for each ask (see [`Drafts`]).
    fn draft<'a>(&'a mut self, asks: &'a [DraftAsk<'a>]) -> Drafts<'a>;
    /// A request has ended: drop what is kept for it.
    fn forget(&mut self, id: RequestId);
}

/// Prompt lookup: the longest n-gram (`max_n` down to `min_n` tokens) that ends the context and also occurs
/// earlier in it; its most recent earlier occurrence's continuation is the draft (continued periodically
/// where it reaches the context's end). Text that quotes the
/// prompt or repeats itself (code edits, summaries, structured output) drafts well; free text rarely matches.
pub struct PromptLookup {
    pub min_n: usize,
    pub max_n: usize,
}

impl Default for PromptLookup {
    fn default() -> Self {
        PromptLookup { min_n: 2, max_n: 4 }
    }
}

impl PromptLookup {
    /// The draft for one ask.
    pub fn lookup(&self, a: &DraftAsk<'_>) -> Vec<u32> {
        let len = a.len();
        if a.k == 0 {
            return Vec::new();
        }
        for n in (self.min_n.max(1)..=self.max_n).rev() {
            if len <= n {
                continue;
            }
            // The most recent earlier start of the last n tokens.
            let tail = len - n;
            for start in (0..tail).rev() {
                if (0..n).all(|j| a.at(start + j) == a.at(tail + j)) {
                    // What followed it, and past the context's end the same again: a repeat whose period is
                    // shorter than k drafts k tokens.
                    let from = start + n;
                    let period = tail - start;
                    let mut d: Vec<u32> = Vec::with_capacity(a.k);
                    for j in 0..a.k {
                        let i = from + j;
                        d.push(if i < len { a.at(i) } else { d[j - period] });
                    }
                    return d;
                }
            }
        }
        Vec::new()
    }
}

impl Drafter for PromptLookup {
    fn name(&self) -> String {
        "ngram".into()
    }

    fn draft<'a>(&'a mut self, asks: &'a [DraftAsk<'a>]) -> Drafts<'a> {
        let out = asks.iter().map(|a| self.lookup(a)).collect();
        Box::pin(async move { Ok(out) })
    }

    fn forget(&mut self, _: RequestId) {}
}

/// A draft model: any model herd runs that shares the target's tokenizer, on the same backend, with its own
/// KV cache (one sequence per request, kept in step with the context: what a verification rejected is rolled
/// back, what it accepted is fed on the next draft). It drafts greedily.
pub struct DraftModel<B: Backend> {
    model: Arc<Llama4<B>>,
    cache: KvCache<B>,
    label: String,
    /// Per request: its sequence in `cache` and the tokens fed to it.
    seqs: HashMap<RequestId, (SeqId, Vec<u32>)>,
}

impl<B: Backend> DraftModel<B> {
    /// A drafter for a target of `target_vocab` ids; refused if the draft model's vocabulary differs.
    pub fn new(model: Arc<Llama4<B>>, target_vocab: usize, label: String) -> Result<Self> {
        if model.cfg.vocab_size != target_vocab {
            return Err(HerdError::Input(format!(
                "the draft model's vocabulary ({}) is not the target's ({target_vocab}): it must share the tokenizer",
                model.cfg.vocab_size
            )));
        }
        let cache = model.new_cache()?;
        Ok(DraftModel { model, cache, label, seqs: HashMap::new() })
    }

    /// How many of `k` tokens it may draft after `len` tokens of context: the drafted tokens it feeds itself
    /// (all but the last) must stay inside the chunk of position `len` (so that rolling them back leaves its
    /// chunked layers' rings whole) and inside its context.
    fn room(&self, len: usize, k: usize) -> usize {
        let mut k = k.min((self.model.cfg.max_position_embeddings + 1).saturating_sub(len));
        if let Some(c) = self.cache.chunk() {
            k = k.min((len / c + 1) * c - len + 1);
        }
        k
    }

    async fn draft_all(&mut self, asks: &[DraftAsk<'_>]) -> Result<Vec<Vec<u32>>> {
        let mut out = vec![Vec::new(); asks.len()];
        // Bring each sequence's cache to its context: keep the common prefix, feed the rest (at least the last
        // token, whose logits give the first draft).
        let mut feeds: Vec<(usize, SeqId, usize)> = Vec::new(); // (ask, sequence, first position to feed)
        for (i, a) in asks.iter().enumerate() {
            let k = self.room(a.len(), a.k);
            if k == 0 || a.is_empty() {
                continue;
            }
            let (seq, fed) = match self.seqs.remove(&a.id) {
                Some(s) => s,
                None => (self.cache.add_sequence(), Vec::new()),
            };
            let mut common = fed.iter().enumerate().take_while(|&(j, &t)| j < a.len() && a.at(j) == t).count();
            common = common.min(a.len() - 1);
            let seq = match self.cache.truncate(seq, common) {
                Ok(()) => seq,
                Err(_) => {
                    self.cache.remove_sequence(seq);
                    common = 0;
                    self.cache.add_sequence()
                }
            };
            let ctx: Vec<u32> = (0..a.len()).map(|j| a.at(j)).collect();
            self.seqs.insert(a.id, (seq, ctx));
            feeds.push((i, seq, common));
            out[i].reserve(k);
        }
        if feeds.is_empty() {
            return Ok(out);
        }
        let want: Vec<usize> = feeds.iter().map(|&(i, ..)| self.room(asks[i].len(), asks[i].k)).collect();
        let mut last: Vec<u32> = Vec::new();
        for round in 0.. {
            let live: Vec<usize> = (0..feeds.len()).filter(|&f| out[feeds[f].0].len() < want[f]).collect();
            if live.is_empty() {
                break;
            }
            let toks: Vec<Vec<u32>> = live
                .iter()
                .map(|&f| {
                    let (i, _, from) = feeds[f];
                    if round == 0 {
                        (from..asks[i].len()).map(|j| asks[i].at(j)).collect()
                    } else {
                        vec![last[f]]
                    }
                })
                .collect();
            let batch: Vec<(SeqId, &[u32])> = live.iter().zip(&toks).map(|(&f, t)| (feeds[f].1, &t[..])).collect();
            let picks: Vec<Pick<'_>> = live
                .iter()
                .map(|_| Pick::Sample { params: &SamplingParams::GREEDY, draw: 0.0, history: &[], mask: None })
                .collect();
            let got = self.model.forward_pick(&mut self.cache, &batch, &[], &picks).await?;
            last.resize(feeds.len(), 0);
            for (&f, g) in live.iter().zip(got) {
                let Picked::Id(id) = g else { return Err(HerdError::internal("the draft model gave no token")) };
                last[f] = id;
                out[feeds[f].0].push(id);
                if out[feeds[f].0].len() < want[f] {
                    // It will be fed next round.
                    if let Some(s) = self.seqs.get_mut(&asks[feeds[f].0].id) {
                        s.1.push(id);
                    }
                }
            }
        }
        Ok(out)
    }
}

impl<B: Backend> Drafter for DraftModel<B> {
    fn name(&self) -> String {
        format!("draft:{}", self.label)
    }

    fn draft<'a>(&'a mut self, asks: &'a [DraftAsk<'a>]) -> Drafts<'a> {
        Box::pin(async move {
            let r = self.draft_all(asks).await;
            if r.is_err() {
                // What the failed step left in its cache is unknown: start every sequence afresh.
                for (_, (seq, _)) in self.seqs.drain() {
                    self.cache.remove_sequence(seq);
                }
            }
            r
        })
    }

    fn forget(&mut self, id: RequestId) {
        if let Some((seq, _)) = self.seqs.remove(&id) {
            self.cache.remove_sequence(seq);
        }
    }
}

/// The drafted tokens' acceptance, for the scheduler: per sequence, how many tokens to draft next.
#[derive(Debug, Clone, Copy)]
pub struct Adapt {
    /// Tokens to ask for next time.
    pub k: usize,
    /// Steps to skip drafting (after drafts the target rejected at once).
    pub pause: u32,
    /// The next pause after a rejection (doubling while drafts keep failing).
    backoff: u32,
}

impl Adapt {
    pub fn new(k: usize) -> Self {
        Adapt { k: k.max(1), pause: 0, backoff: 1 }
    }

    /// After a verification of `drafted` tokens of which `accepted` were kept: all kept, ask for twice as
    /// many (up to `max`); some kept, ask for one more than were kept; none kept, ask for one, and pause drafting
    /// for a number of steps that doubles (to 16) while drafts keep failing, so a sequence whose drafts never
    /// land decodes almost as if there were no drafter.
    pub fn update(&mut self, drafted: usize, accepted: usize, max: usize) {
        if drafted == 0 {
            return;
        }
        if accepted == drafted {
            self.k = (self.k * 2).min(max);
            self.backoff = 1;
        } else if accepted > 0 {
            self.k = (accepted + 1).min(max);
            self.backoff = 1;
        } else {
            self.k = 1;
            self.pause = self.backoff;
            self.backoff = (self.backoff * 2).min(16);
        }
    }
}

/// Whether a token-for-token check of drafts holds for these sampling parameters: greedy, no repetition
/// penalty (the one case verified on the device by argmax; the others read their rows back).
pub fn argmax_verifiable(p: &SamplingParams) -> bool {
    p.is_greedy() && p.repetition_penalty == 1.0
}

/// The distribution the target samples row `row` of `logits` from (the rows of `vocab` each), with `history`.
pub fn row_distribution(logits: &[f32], row: usize, vocab: usize, history: &[u32], p: &SamplingParams) -> Distribution {
    let mut l = logits[row * vocab..(row + 1) * vocab].to_vec();
    crate::sampling::distribution(&mut l, history, p)
}
