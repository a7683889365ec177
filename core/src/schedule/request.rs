//! What goes into the scheduler and what comes out of it: a [`Request`] (with its [`Images`]), and the
//! [`Event`]s its [`Sink`] receives: each [`Token`], then how it ended ([`Finish`]).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use crate::backend::Backend;
use crate::constrain::Constraint;
use crate::sampling::SamplingParams;

/// One generation to run: the prompt's ids and what to do after them.
#[derive(Debug, Clone)]
pub struct Request {
    pub prompt: Vec<u32>,
    pub params: GenerateParams,
    /// OpenAI's penalties on generated ids (the prompt's are not counted): each logit of an id generated
    /// `c` times so far is lowered by `presence · [c > 0] + frequency · c` before sampling. 0: off.
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
    /// Report each generated id's log-probability and this many of the most likely alternatives (under the
    /// model's distribution, before any sampling transform). None: no log-probabilities.
    pub logprobs: Option<usize>,
    /// The grammar the output must follow (a JSON schema, a Lark grammar), in its start state: each token is
    /// sampled among those it allows ([`crate::constrain`]). None: unconstrained.
    pub constraint: Option<Constraint>,
}

impl Request {
    /// A request with no penalties, no log-probabilities and no constraint.
    pub fn new(prompt: Vec<u32>, params: GenerateParams) -> Self {
        Request { prompt, params, presence_penalty: 0.0, frequency_penalty: 0.0, logprobs: None, constraint: None }
    }
}

/// The most log-probabilities a request may ask for per token.
pub const MAX_TOP_LOGPROBS: usize = 20;

/// A generated id, with its log-probability and the top alternatives when asked for.
#[derive(Debug, Clone, PartialEq)]
pub struct Token {
    pub id: u32,
    pub logprob: Option<f32>,
    /// (id, log-probability), most likely first.
    pub top: Vec<(u32, f32)>,
}

/// A request's handle, to cancel it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(pub u64);

/// How a request ended, with its counts and timings.
#[derive(Debug, Clone)]
pub struct Finish {
    /// `Err` when the model failed during one of its steps (the message); the request is over either way.
    pub reason: std::result::Result<StopReason, String>,
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
    /// Prompt tokens whose keys and values were reused from the cache rather than computed.
    pub cached_tokens: usize,
    /// From submission to the first generated token (None when none was).
    pub time_to_first_token: Option<Duration>,
    /// From the first generated token to the end (zero when none was generated).
    pub decode_time: Duration,
    /// Steps the request waited in the queue before it joined the batch.
    pub queued_steps: u64,
}

impl Finish {
    /// Prompt tokens per second computed up to the first token (the reused ones not counted).
    pub fn prefill_tps(&self) -> f64 {
        let t = self.time_to_first_token.unwrap_or_default().as_secs_f64();
        (self.prompt_tokens - self.cached_tokens) as f64 / t.max(1e-9)
    }
    /// Tokens per second after the first (the first comes out of the prefill).
    pub fn decode_tps(&self) -> f64 {
        self.generated_tokens.saturating_sub(1) as f64 / self.decode_time.as_secs_f64().max(1e-9)
    }
}

/// What a request's sink receives: each generated id that is not a stop id, then exactly one `Done`.
#[derive(Debug, Clone)]
pub enum Event {
    Token(Token),
    Done(Finish),
}

/// A request's images, encoded by the vision tower: the rows that replace its prompt's `patch` tokens, in
/// order (each buffer's first `n` rows; see [`ImageRows`](crate::model::ImageRows)). The prompt must hold exactly as many `patch`
/// tokens as there are rows.
pub struct Images<B: Backend> {
    pub patch: u32,
    pub rows: Vec<(Arc<B::Buffer>, usize)>,
    /// One key per image telling its pixels from other images' (e.g. [`crate::vision::input::pixel_key`]):
    /// a prefix is reused across requests only where the images are the same.
    pub keys: Vec<u64>,
}

impl<B: Backend> Images<B> {
    pub(super) fn len(&self) -> usize {
        self.rows.iter().map(|r| r.1).sum()
    }
}

/// Receives a request's events, from inside [`Scheduler::step`](super::Scheduler::step). Returning false after a `Token` cancels
/// the request (it ends with [`StopReason::Cancelled`](StopReason::Cancelled) before the next step).
pub type Sink = Box<dyn FnMut(Event) -> bool + Send>;

/// A sink that queues its request's events for the caller to take after each step ([`Queue::pop`]), for
/// callers that step the scheduler themselves and act on tokens between steps (the CLI prints them, the
/// browser hands them to JavaScript); they cancel with [`Scheduler::cancel`](super::Scheduler::cancel).
pub fn queue() -> (Sink, Queue) {
    let q = Queue(std::sync::Arc::new(std::sync::Mutex::new(VecDeque::new())));
    let inner = q.0.clone();
    (
        Box::new(move |e| {
            inner.lock().unwrap_or_else(|p| p.into_inner()).push_back(e);
            true
        }),
        q,
    )
}

/// The events a [`queue`] sink has received and not yet been taken.
pub struct Queue(std::sync::Arc<std::sync::Mutex<VecDeque<Event>>>);

impl Queue {
    /// The oldest event not yet taken.
    pub fn pop(&self) -> Option<Event> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).pop_front()
    }
}

/// What a generation should do.
#[derive(Debug, Clone)]
pub struct GenerateParams {
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    /// Generation stops after any of these ids (it is not passed to the callback).
    pub stop_ids: Vec<u32>,
}

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// A stop id was produced.
    Stop(u32),
    /// `max_tokens` were produced.
    Length,
    /// The callback asked to stop.
    Cancelled,
}
