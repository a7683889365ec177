//! Continuous batching: one [`Scheduler`] owns a model's KV cache and runs every live generation together.
//! Each [`Scheduler::step`] is one forward pass holding the next token of every sequence that is decoding
//! and, in the room left under `max_batch_tokens`, pieces of the prompts still being read (chunked prefill),
//! oldest first, so that a long prompt delays the others' next token by at most one piece. Requests join
//! between steps (up to `max_seqs` at once; the rest wait in a queue of at most `max_queue`) and leave as
//! soon as they end: a stop id, their token budget, or their sink saying stop (a client gone); their cache
//! slots are then free for the others.
//!
//! Each sequence samples with its own parameters and its own random stream (one draw per generated token),
//! so a seeded request gives the same tokens whatever else runs beside it. Where the sequence sampling is
//! done is fixed by the request alone: on the device ([`Pick::Sample`]: one id comes back) unless it asks for
//! log-probabilities or OpenAI's presence/frequency penalties, which need its logits on the host ([`pick`]
//! there, the definition the device's sample op follows).
//!
//! This is the one way into the model for generation: `herd run`, `herd chat`, `herd greedy`, the browser
//! and `herd serve` all submit requests here. It is async (the browser cannot block); native callers block
//! on [`Scheduler::step`] at their edge.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use web_time::Instant;

use crate::backend::Backend;
use crate::constrain::{apply_mask, Constraint, MaskRef, Masks};
use crate::error::{HerdError, Result};
use crate::kv::{KvCache, SeqId};
use crate::model::{ImagePart, ImageRows, Llama4, Pick, Picked};
use crate::sampling::{pick, Sampler};

mod logprobs;
mod prefix;
use prefix::{cache_content, content_keys};
mod request;
mod scratch;
mod spec;
use crate::recycle;
use scratch::StepScratch;

use logprobs::{log_softmax, top_n};

pub use request::{
    queue, Event, Finish, GenerateParams, Images, Queue, Request, RequestId, Sink, StopReason, Token, MAX_TOP_LOGPROBS,
};

/// Limits of a [`Scheduler`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchedulerConfig {
    /// Sequences in the running batch at once.
    pub max_seqs: usize,
    /// Tokens one step feeds the model at most (decode tokens first, then prompt pieces); at least
    /// `max_seqs`, so that every running sequence decodes every step.
    pub max_batch_tokens: usize,
    /// Requests waiting for a place in the batch; a submission past it is refused ([`HerdError::Busy`]).
    pub max_queue: usize,
    /// Tokens of ended requests kept in the KV cache for prefix reuse (least recently used first out), each
    /// sequence counted in whole pages (so the memory they take is bounded: [`crate::plan::KvLayout::kept_bytes`]);
    /// prompts also reuse what running requests hold. 0 turns prefix reuse off.
    pub prefix_cache_tokens: usize,
    /// The most tokens (prompt and generated) one request may hold; None: the model's context. `herd serve`
    /// sets it to what its memory plan fits.
    pub max_context: Option<usize>,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            max_seqs: 16,
            max_batch_tokens: 512,
            max_queue: 256,
            prefix_cache_tokens: 8192,
            max_context: None,
        }
    }
}

impl<B: Backend> Seq<B> {
    /// Whether its tokens are picked on the host from its logits (log-probabilities and OpenAI's penalties
    /// need them), rather than on the device.
    fn host_logits(&self) -> bool {
        self.logprobs.is_some() || self.presence != 0.0 || self.frequency != 0.0
    }
}

impl<B: Backend> Seq<B> {
    /// Adds a generated id to the output and hands it to the sink; sets `stop` when it ends the request (a
    /// stop id, the sink saying stop, the budget reached).
    fn emit(&mut self, id: u32, lp: Option<Vec<f32>>, stats: &mut SchedulerStats) {
        let s = self;
        s.out.push(id);
        if s.presence != 0.0 || s.frequency != 0.0 {
            *s.counts.entry(id).or_insert(0) += 1;
        }
        let token = match (&lp, s.logprobs) {
            (Some(lp), Some(n)) => Token { id, logprob: lp.get(id as usize).copied(), top: top_n(lp, n) },
            _ => Token { id, logprob: None, top: Vec::new() },
        };
        stats.generated_tokens += 1;
        if s.first_token.is_none() {
            s.first_token = Some(s.submitted.elapsed());
        }
        if !s.history.is_empty() {
            s.history.push(id);
        }
        if s.params.stop_ids.contains(&id) {
            s.stop = Some(Ok(StopReason::Stop(id)));
        } else if !(s.sink)(Event::Token(token)) {
            s.stop = Some(Ok(StopReason::Cancelled));
        } else if s.out.len() >= s.max_tokens {
            s.stop = Some(Ok(StopReason::Length));
        }
    }
}

struct Seq<B: Backend> {
    id: RequestId,
    images: Option<Images<B>>,
    /// What each prompt position holds, for prefix matching: the token id, or for an image patch token a
    /// tagged hash of its image's key and its row.
    keys: Vec<u64>,
    /// Prompt tokens reused from the cache.
    cached: usize,
    /// The cache sequence, once it has joined the batch.
    cache: Option<SeqId>,
    prompt: Vec<u32>,
    /// Prompt tokens fed to the model so far.
    fed: usize,
    out: Vec<u32>,
    params: GenerateParams,
    max_tokens: usize,
    sampler: Sampler,
    /// Prompt and generated ids, for the repetition penalty (empty without it).
    history: Vec<u32>,
    presence: f32,
    frequency: f32,
    /// How often each generated id came (with the penalties only).
    counts: std::collections::HashMap<u32, u32>,
    logprobs: Option<usize>,
    /// The output's grammar state (taken out while a step computes its mask).
    constraint: Option<Constraint>,
    sink: Sink,
    submitted: Instant,
    first_token: Option<Duration>,
    submitted_step: u64,
    joined_step: u64,
    stop: Option<std::result::Result<StopReason, String>>,
    /// Tokens drafted for this step (speculative decoding; empty: it decodes one token).
    draft: Vec<u32>,
    /// How many to draft next, from how its drafts have fared.
    adapt: crate::speculate::Adapt,
}

/// Counters of a scheduler's work so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SchedulerStats {
    pub steps: u64,
    /// Prompt tokens computed by the model.
    pub prompt_tokens: u64,
    /// Prompt tokens reused from the cache (prefix reuse).
    pub cached_prompt_tokens: u64,
    pub generated_tokens: u64,
    pub finished: u64,
    pub cancelled: u64,
    pub failed: u64,
    /// Speculative decoding: drafts verified, tokens drafted, drafted tokens the target kept, and steps whose
    /// drafter failed (they decoded without drafts).
    pub verifications: u64,
    pub drafted_tokens: u64,
    pub accepted_tokens: u64,
    pub draft_failures: u64,
}

/// The continuous-batching scheduler of one model (see the module docs).
pub struct Scheduler<B: Backend> {
    model: Arc<Llama4<B>>,
    cache: KvCache<B>,
    cfg: SchedulerConfig,
    waiting: VecDeque<Seq<B>>,
    running: Vec<Seq<B>>,
    /// Ended requests' cache sequences kept for prefix reuse, least recently used first, with what they hold.
    kept: VecDeque<(SeqId, Vec<u64>)>,
    next_id: u64,
    stats: SchedulerStats,
    scratch: StepScratch,
    /// The drafter, when the scheduler speculates ([`Scheduler::set_drafter`]).
    spec: Option<spec::Speculation>,
}

impl<B: Backend> Scheduler<B> {
    pub fn new(model: Arc<Llama4<B>>, cfg: SchedulerConfig) -> Result<Self> {
        if cfg.max_seqs == 0 || cfg.max_batch_tokens < cfg.max_seqs {
            return Err(HerdError::Input(format!(
                "scheduler: max_seqs {} must be at least 1 and max_batch_tokens {} at least max_seqs",
                cfg.max_seqs, cfg.max_batch_tokens
            )));
        }
        let cache = model.new_cache()?;
        Ok(Scheduler {
            model,
            cache,
            cfg,
            waiting: VecDeque::new(),
            running: Vec::new(),
            kept: VecDeque::new(),
            next_id: 0,
            stats: SchedulerStats::default(),
            scratch: StepScratch::default(),
            spec: None,
        })
    }

    /// Sizes the KV cache up front for `seqs` sequences of `tokens` tokens each and the prefix cache's
    /// `prefix_cache_tokens` (what a memory plan counted): it then never grows, and never copies an arena.
    pub fn reserve(&mut self, seqs: usize, tokens: usize) -> Result<()> {
        let be = self.model.backend().clone();
        self.cache.reserve_for(&be, seqs, tokens, self.cfg.prefix_cache_tokens)
    }

    pub fn model(&self) -> &Arc<Llama4<B>> {
        &self.model
    }

    pub fn config(&self) -> SchedulerConfig {
        self.cfg
    }

    /// Queues a request. Refused at once (nothing queued) when its prompt is empty or does not fit the
    /// model's context, its parameters are out of range, or the queue is full.
    pub fn submit(&mut self, req: Request, sink: Sink) -> Result<RequestId> {
        self.submit_with_images(req, None, sink)
    }

    /// [`Scheduler::submit`] for a prompt holding images: `images` gives the rows of its `patch` tokens
    /// (refused unless their count matches).
    pub fn submit_with_images(&mut self, req: Request, images: Option<Images<B>>, sink: Sink) -> Result<RequestId> {
        if let Some(im) = &images {
            let n = req.prompt.iter().filter(|&&t| t == im.patch).count();
            if n != im.len() || im.keys.len() != im.rows.len() {
                return Err(HerdError::Input(format!(
                    "the prompt has {n} image patch tokens but its images give {} rows ({} keys for {} images)",
                    im.len(),
                    im.keys.len(),
                    im.rows.len()
                )));
            }
        }
        let keys = content_keys(&req.prompt, images.as_ref());
        let model_ctx = self.model.cfg.max_position_embeddings;
        let ctx = self.cfg.max_context.map_or(model_ctx, |c| c.min(model_ctx));
        if req.prompt.is_empty() {
            return Err(HerdError::Input("empty prompt".into()));
        }
        if req.prompt.len() > ctx {
            let whose = if ctx < model_ctx { "this server's limit" } else { "the model's context" };
            return Err(HerdError::Input(format!(
                "prompt of {} tokens is longer than {whose} of {ctx} tokens",
                req.prompt.len()
            )));
        }
        let vocab = self.model.cfg.vocab_size;
        if let Some(&bad) = req.prompt.iter().find(|&&t| t as usize >= vocab) {
            return Err(HerdError::Input(format!("token id {bad} is outside the vocabulary of {vocab}")));
        }
        for (name, v) in [("presence_penalty", req.presence_penalty), ("frequency_penalty", req.frequency_penalty)] {
            if !(-2.0..=2.0).contains(&v) {
                return Err(HerdError::Input(format!("{name} = {v} is out of range ([-2, 2])")));
            }
        }
        if req.logprobs.is_some_and(|n| n > MAX_TOP_LOGPROBS) {
            return Err(HerdError::Input(format!("at most {MAX_TOP_LOGPROBS} top log-probabilities per token")));
        }
        if self.waiting.len() >= self.cfg.max_queue {
            return Err(HerdError::Busy(format!("{} requests are already waiting", self.waiting.len())));
        }
        let sampler = Sampler::new(req.params.sampling)?;
        let max_tokens = req.params.max_tokens.min(ctx - req.prompt.len());
        let history = if req.params.sampling.repetition_penalty != 1.0 { req.prompt.clone() } else { Vec::new() };
        let id = RequestId(self.next_id);
        self.next_id += 1;
        self.waiting.push_back(Seq {
            id,
            images,
            keys,
            cached: 0,
            cache: None,
            prompt: req.prompt,
            fed: 0,
            out: Vec::new(),
            params: req.params,
            max_tokens,
            sampler,
            history,
            presence: req.presence_penalty,
            frequency: req.frequency_penalty,
            counts: std::collections::HashMap::new(),
            logprobs: req.logprobs,
            constraint: req.constraint,
            sink,
            submitted: Instant::now(),
            first_token: None,
            submitted_step: self.stats.steps,
            joined_step: 0,
            stop: None,
            draft: Vec::new(),
            adapt: spec::adapt_start(self.spec.as_ref().map(|s| s.max_draft)),
        });
        Ok(id)
    }

    /// Ends a request (waiting or running) before the next step; its sink gets `Done` with
    /// [`StopReason::Cancelled`]. False if there is no such request (it has already ended).
    pub fn cancel(&mut self, id: RequestId) -> bool {
        if let Some(i) = self.waiting.iter().position(|s| s.id == id) {
            if let Some(s) = self.waiting.remove(i) {
                self.finish(s, Ok(StopReason::Cancelled));
            }
            return true;
        }
        if let Some(i) = self.running.iter().position(|s| s.id == id) {
            let s = self.running.remove(i);
            self.finish(s, Ok(StopReason::Cancelled));
            return true;
        }
        false
    }

    /// Requests running, and waiting.
    pub fn load(&self) -> (usize, usize) {
        (self.running.len(), self.waiting.len())
    }

    /// No request is running or waiting.
    pub fn is_idle(&self) -> bool {
        self.running.is_empty() && self.waiting.is_empty()
    }

    pub fn stats(&self) -> SchedulerStats {
        self.stats
    }

    /// Bytes of the KV-cache pages the running and kept sequences hold (shared pages count once).
    pub fn cache_bytes(&self) -> usize {
        self.cache.bytes()
    }

    /// Tokens held in the KV cache for the running sequences.
    pub fn cached_tokens(&self) -> usize {
        self.running.iter().filter_map(|s| s.cache.and_then(|c| self.cache.seq_len(c).ok())).sum()
    }

    /// Tokens of ended requests kept in the KV cache for prefix reuse.
    pub fn kept_tokens(&self) -> usize {
        self.kept.iter().map(|k| k.1.len()).sum()
    }

    /// [`Scheduler::kept_tokens`] with each sequence rounded up to whole pages: what `prefix_cache_tokens`
    /// bounds.
    pub fn kept_slots(&self) -> usize {
        let page = self.cache.page_size();
        self.kept.iter().map(|k| k.1.len().div_ceil(page) * page).sum()
    }

    fn finish(&mut self, mut s: Seq<B>, reason: std::result::Result<StopReason, String>) {
        if let Some(sp) = self.spec.as_mut() {
            sp.drafter.forget(s.id);
        }
        if let Some(c) = s.cache.take() {
            if reason.is_ok() {
                let held: Vec<u64> = cache_content(&s).collect();
                self.keep_or_free(c, held);
            } else {
                // What a failed step left in the cache is unknown.
                self.cache.remove_sequence(c);
            }
        }
        match &reason {
            Ok(StopReason::Cancelled) => self.stats.cancelled += 1,
            Ok(_) => self.stats.finished += 1,
            Err(_) => self.stats.failed += 1,
        }
        let done = Finish {
            reason,
            prompt_tokens: s.prompt.len(),
            generated_tokens: s.out.len(),
            cached_tokens: s.cached,
            time_to_first_token: s.first_token,
            decode_time: s.first_token.map(|t| s.submitted.elapsed().saturating_sub(t)).unwrap_or_default(),
            queued_steps: s.joined_step.saturating_sub(s.submitted_step),
        };
        (s.sink)(Event::Done(done));
    }

    /// Runs one step (see the module docs). Does nothing when idle. An error of the model fails the
    /// requests of that step (their sinks get `Done` with the message) and is returned; the scheduler
    /// stays usable for the others and for new requests.
    pub async fn step(&mut self) -> Result<()> {
        // Requests that asked for no tokens end without running.
        while self.running.len() < self.cfg.max_seqs {
            let Some(mut s) = self.waiting.pop_front() else { break };
            if s.max_tokens == 0 {
                self.finish(s, Ok(StopReason::Length));
                continue;
            }
            match self.join_cache(&s.keys) {
                Ok((c, n)) => {
                    s.cache = Some(c);
                    s.fed = n;
                    s.cached = n;
                    self.stats.cached_prompt_tokens += n as u64;
                }
                Err(e) => {
                    self.finish(s, Err(e.to_string()));
                    continue;
                }
            }
            s.joined_step = self.stats.steps;
            self.running.push(s);
        }
        if self.running.is_empty() {
            return Ok(());
        }
        self.stats.steps += 1;
        self.draft().await;
        // The step's working vectors come from the last step's (a warm decode step allocates none here).
        let mut sc = std::mem::take(&mut self.scratch);
        let jobs = sc.plan(&mut self.running, self.cfg.max_batch_tokens);
        let masks = (!jobs.is_empty()).then(|| Masks::start(jobs));
        let (pieces, order, producing, draws, job_of) = (&sc.pieces, &sc.order, &sc.producing, &sc.draws, &sc.job_of);
        let (feeds, spans) = (&sc.feeds, &sc.spans);
        let feed = |k: usize| &feeds[spans[k].0..spans[k].0 + spans[k].1];
        let mut batch: Vec<(SeqId, &[u32])> = recycle(std::mem::take(&mut sc.batch));
        batch.extend(
            order
                .iter()
                .enumerate()
                .map(|(k, &i)| (self.running[i].cache.expect("a running sequence has a cache sequence"), feed(k))),
        );
        // Image rows for the prompt pieces that hold `patch` tokens: those after the ones earlier pieces took.
        let mut any_images = false;
        let image_rows: Vec<Option<ImageRows<'_, B>>> = if pieces.iter().any(|p| self.running[p.0].images.is_some()) {
            order
                .iter()
                .enumerate()
                .map(|(k, &i)| {
                    let s = &self.running[i];
                    let im = s.images.as_ref()?;
                    let &(_, start, _) = pieces.iter().find(|p| p.0 == i)?;
                    let here = feed(k).iter().filter(|&&t| t == im.patch).count();
                    if here == 0 {
                        return None;
                    }
                    any_images = true;
                    let used = s.prompt[..start].iter().filter(|&&t| t == im.patch).count();
                    let all = ImageRows {
                        token: im.patch,
                        parts: im.rows.iter().map(|(b, n)| ImagePart { buf: &**b, first: 0, len: *n }).collect(),
                    };
                    Some(all.skip(used).take(here))
                })
                .collect()
        } else {
            Vec::new()
        };
        let image_refs: Vec<Option<&ImageRows<'_, B>>> =
            if any_images { image_rows.iter().map(Option::as_ref).collect() } else { Vec::new() };
        // Its next token is sampled on the device unless the request needs its logits on the host.
        let mut picks: Vec<Pick<'_>> = recycle(std::mem::take(&mut sc.picks));
        picks.extend(order.iter().zip(producing.iter().zip(draws)).zip(job_of).map(
            |((&i, (&producing, &draw)), job)| {
                let s = &self.running[i];
                if !producing {
                    Pick::Nothing
                } else if !s.draft.is_empty() {
                    s.verify_pick()
                } else if s.host_logits() {
                    Pick::Logits
                } else {
                    let mask = masks.as_ref().zip(*job).map(|(masks, row)| MaskRef { masks, row });
                    Pick::Sample { params: s.sampler.params(), draw, history: &s.history, mask }
                }
            },
        ));
        let into = std::mem::take(&mut sc.picked);
        let result = self.model.forward_pick_into(&mut self.cache, &batch, &image_refs, &picks, into).await;
        sc.picks = recycle(picks);
        sc.batch = recycle(batch);
        // The constraints go back to their sequences; each row's mask (or why it failed) is kept for the
        // rows picked on the host and to end the sequences whose grammar failed.
        let grammar = &mut sc.grammar;
        grammar.clear();
        grammar.resize(order.len(), None);
        if let Some(m) = masks {
            match m.finish() {
                Ok(done) => {
                    let mut done = done.into_iter();
                    for (k, job) in job_of.iter().enumerate() {
                        if let (Some(_), Some((c, mask))) = (job, job.and_then(|_| done.next())) {
                            self.running[order[k]].constraint = Some(c);
                            grammar[k] = Some(mask.map_err(|e| e.to_string()));
                        }
                    }
                }
                Err(e) => {
                    for (k, job) in job_of.iter().enumerate() {
                        if job.is_some() {
                            grammar[k] = Some(Err(e.to_string()));
                        }
                    }
                }
            }
        }
        let mut picked = match result {
            Ok(p) => p,
            Err(e) => {
                // What the step left in the cache is unknown: every sequence of it ends.
                let msg = e.to_string();
                let mut failed: Vec<usize> = order.clone();
                failed.sort_unstable_by(|a, b| b.cmp(a));
                for i in failed {
                    let s = self.running.remove(i);
                    self.finish(s, Err(msg.clone()));
                }
                return Err(e);
            }
        };
        for (((&i, got), &u), grammar) in order.iter().zip(picked.drain(..)).zip(draws).zip(grammar.drain(..)) {
            let s = &mut self.running[i];
            if !s.draft.is_empty() {
                let max_draft = self.spec.as_ref().map_or(1, |sp| sp.max_draft);
                spec::verify(s, got, self.model.cfg.vocab_size, max_draft, &mut self.cache, &mut self.stats);
                continue;
            }
            if let Some(&(_, _, n)) = pieces.iter().find(|p| p.0 == i) {
                s.fed += n;
                self.stats.prompt_tokens += n as u64;
                if s.fed < s.prompt.len() {
                    continue; // more of the prompt to read: no token yet
                }
            }
            let mask = match grammar {
                Some(Err(e)) => {
                    s.stop = Some(Err(e));
                    continue;
                }
                Some(Ok(m)) => Some(m),
                None => None,
            };
            let (id, lp) = match got {
                Picked::Id(id) => (id, None),
                Picked::Logits(mut row) => {
                    let lp = s.logprobs.map(|_| log_softmax(&row));
                    if let Some(m) = &mask {
                        apply_mask(&mut row, m);
                    }
                    if s.presence != 0.0 || s.frequency != 0.0 {
                        for (&t, &c) in &s.counts {
                            if let Some(l) = row.get_mut(t as usize) {
                                *l -= s.presence + s.frequency * c as f32;
                            }
                        }
                    }
                    (pick(&mut row, &s.history, s.sampler.params(), u), lp)
                }
                Picked::Nothing | Picked::Ids(_) => {
                    let e = HerdError::internal("the model gave no token for a sequence that asked for one");
                    s.stop = Some(Err(e.to_string()));
                    continue;
                }
            };
            if let (Some(c), false) = (&mut s.constraint, s.params.stop_ids.contains(&id)) {
                if let Err(e) = c.commit(id) {
                    s.stop = Some(Err(e.to_string()));
                    continue;
                }
            }
            s.emit(id, lp, &mut self.stats);
        }
        sc.picked = picked;
        self.scratch = sc;
        let mut i = 0;
        while i < self.running.len() {
            if let Some(reason) = self.running[i].stop.take() {
                let s = self.running.remove(i);
                self.finish(s, reason);
            } else {
                i += 1;
            }
        }
        Ok(())
    }

    /// Steps until every request has ended.
    pub async fn run_to_idle(&mut self) -> Result<()> {
        while !self.is_idle() {
            self.step().await?;
        }
        Ok(())
    }
}
