//! `herd serve`: an OpenAI-compatible HTTP server on axum + tokio.
//!
//! One engine thread owns the model through a [`Scheduler`] (continuous batching: every running request
//! advances each step, prompts are read in pieces); the HTTP handlers only turn requests into token ids,
//! submit them, and turn the token events they get back into OpenAI's JSON or Server-Sent Events. A client
//! that goes away (its response stream dropped) has its request cancelled before the next step, and its
//! cache freed.
//!
//! Endpoints: `POST /v1/chat/completions`, `POST /v1/completions`, `GET /v1/models`, `GET /health`,
//! `GET /metrics` (Prometheus text). Errors are OpenAI's shape, `{"error": {"message", "type", "param",
//! "code"}}`, with the status that fits. With an API key every `/v1` route and `/metrics` needs
//! `Authorization: Bearer KEY` (compared in constant time); `/health` stays open. Nothing in a request names
//! a file on the server.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use herd_core::backend::Backend;
use herd_core::chat::{ChatTemplate, Content, Message, Part};
use herd_core::experts::ExpertCacheOptions;
use herd_core::generate::{GenerateParams, StopReason};
use herd_core::sampling::SamplingParams;
use herd_core::schedule::{Event, Finish, Request, RequestId, Scheduler, SchedulerConfig, Token, MAX_TOP_LOGPROBS};
use herd_core::tokenizer::Tokenizer;
use herd_core::HerdError;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use serde_json::{json, Map, Value};
use tokio::sync::{mpsc as tmpsc, oneshot};

use crate::files::ModelFiles;

/// What `herd serve` was asked for.
pub struct Options {
    pub host: String,
    pub port: u16,
    pub sched: SchedulerConfig,
    pub api_key: Option<String>,
    pub body_limit: usize,
}

/// The server's metrics (Prometheus text at `/metrics`).
struct Metrics {
    registry: Registry,
    running: Gauge,
    waiting: Gauge,
    requests: Counter,
    prompt_tokens: Counter,
    generated_tokens: Counter,
    finished: Counter,
    cancelled: Counter,
    failed: Counter,
    kv_tokens: Gauge,
    kv_bytes: Gauge,
    expert_hits: Gauge,
    expert_misses: Gauge,
    ttft: Histogram,
    itl: Histogram,
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::with_prefix("herd");
        let m = Metrics {
            running: Gauge::default(),
            waiting: Gauge::default(),
            requests: Counter::default(),
            prompt_tokens: Counter::default(),
            generated_tokens: Counter::default(),
            finished: Counter::default(),
            cancelled: Counter::default(),
            failed: Counter::default(),
            kv_tokens: Gauge::default(),
            kv_bytes: Gauge::default(),
            expert_hits: Gauge::default(),
            expert_misses: Gauge::default(),
            ttft: Histogram::new(exponential_buckets(0.001, 2.0, 18)),
            itl: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            registry: Registry::default(),
        };
        registry.register("requests_running", "Requests in the running batch", m.running.clone());
        registry.register("requests_waiting", "Requests waiting for a place in the batch", m.waiting.clone());
        registry.register("requests", "Requests accepted", m.requests.clone());
        registry.register(
            "requests_finished",
            "Requests ended by a stop token, a stop string or their budget",
            m.finished.clone(),
        );
        registry.register("requests_cancelled", "Requests cancelled (client gone, or shutdown)", m.cancelled.clone());
        registry.register("requests_failed", "Requests ended by an error of the model", m.failed.clone());
        registry.register("prompt_tokens", "Prompt tokens read", m.prompt_tokens.clone());
        registry.register("generation_tokens", "Tokens generated", m.generated_tokens.clone());
        registry.register("kv_cache_tokens", "Tokens held in the KV cache by running requests", m.kv_tokens.clone());
        registry.register("kv_cache_bytes", "Bytes the KV cache buffers take", m.kv_bytes.clone());
        registry.register("expert_cache_hits", "Routed experts found in the expert cache", m.expert_hits.clone());
        registry.register(
            "expert_cache_misses",
            "Routed expert lookups the expert cache missed",
            m.expert_misses.clone(),
        );
        registry.register("time_to_first_token_seconds", "From submission to the first token", m.ttft.clone());
        registry.register("inter_token_latency_seconds", "Between two tokens of one request", m.itl.clone());
        Metrics { registry, ..m }
    }

    fn text(&self) -> String {
        let mut s = String::new();
        let _ = encode(&mut s, &self.registry);
        s
    }
}

/// A request for the engine thread: what to run, where its events go, and where the answer to the
/// submission itself goes (refused at once, or queued).
struct Job {
    req: Request,
    events: tmpsc::UnboundedSender<Event>,
    accepted: oneshot::Sender<std::result::Result<(), HerdError>>,
}

/// What the handlers share.
struct Shared {
    tok: Tokenizer,
    tmpl: Option<ChatTemplate>,
    model_id: String,
    created: u64,
    ctx: usize,
    defaults: SamplingParams,
    stop_ids: Vec<u32>,
    jobs: Mutex<mpsc::Sender<Job>>,
    metrics: Arc<Metrics>,
    api_key: Option<String>,
    ready: AtomicBool,
    shutting_down: Arc<AtomicBool>,
    next_id: AtomicU64,
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn json_response(status: StatusCode, v: &Value) -> Response {
    let mut r = Response::new(Body::from(v.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

// ---- errors --------------------------------------------------------------------------------------

/// An error answered in OpenAI's shape.
struct ApiError {
    status: StatusCode,
    kind: &'static str,
    message: String,
    param: Option<&'static str>,
    code: Option<&'static str>,
}

impl ApiError {
    fn bad(message: impl Into<String>, param: Option<&'static str>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            kind: "invalid_request_error",
            message: message.into(),
            param,
            code: None,
        }
    }
    fn new(status: StatusCode, kind: &'static str, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, kind, message: message.into(), param: None, code: Some(code) }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"message": self.message.replace('\n', " "), "type": self.kind, "param": self.param, "code": self.code}});
        let mut r = json_response(self.status, &body);
        if self.status == StatusCode::TOO_MANY_REQUESTS || self.status == StatusCode::SERVICE_UNAVAILABLE {
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        r
    }
}

fn from_herd(e: HerdError) -> ApiError {
    match e {
        HerdError::Busy(m) => ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limit_error", "queue_full", m),
        HerdError::Input(m) => ApiError::bad(m, None),
        other => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", "internal_error", other.to_string()),
    }
}

/// `Authorization: Bearer KEY`, compared in constant time.
fn authorize(sh: &Shared, headers: &HeaderMap) -> std::result::Result<(), ApiError> {
    let Some(key) = &sh.api_key else { return Ok(()) };
    let given =
        headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    let ok = given.is_some_and(|g| {
        let (a, b) = (g.as_bytes(), key.as_bytes());
        let mut diff = a.len() ^ b.len();
        for i in 0..a.len().max(b.len()) {
            diff |= usize::from(a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0));
        }
        diff == 0
    });
    if ok {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            "invalid_api_key",
            "missing or wrong API key (Authorization: Bearer KEY)",
        ))
    }
}

/// The body as a JSON object, or the error for it.
fn json_body(body: std::result::Result<Bytes, BytesRejection>) -> std::result::Result<Map<String, Value>, ApiError> {
    let body = body.map_err(|r| {
        let status = r.status();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError {
                status,
                kind: "invalid_request_error",
                message: "request body too large".into(),
                param: None,
                code: Some("body_too_large"),
            }
        } else {
            ApiError::bad(format!("could not read the body: {r}"), None)
        }
    })?;
    match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(ApiError::bad("the body must be a JSON object", None)),
        Err(e) => Err(ApiError::bad(format!("malformed JSON: {e}"), None)),
    }
}

// ---- request fields ------------------------------------------------------------------------------

fn num(m: &Map<String, Value>, key: &'static str) -> std::result::Result<Option<f64>, ApiError> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => {
            n.as_f64().map(Some).ok_or_else(|| ApiError::bad(format!("{key} must be a number"), Some(key)))
        }
        Some(_) => Err(ApiError::bad(format!("{key} must be a number"), Some(key))),
    }
}

fn uint(m: &Map<String, Value>, key: &'static str) -> std::result::Result<Option<u64>, ApiError> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_u64()
            .map(Some)
            .ok_or_else(|| ApiError::bad(format!("{key} must be a non-negative integer"), Some(key))),
        Some(_) => Err(ApiError::bad(format!("{key} must be a non-negative integer"), Some(key))),
    }
}

fn boolean(m: &Map<String, Value>, key: &'static str) -> std::result::Result<bool, ApiError> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(ApiError::bad(format!("{key} must be a boolean"), Some(key))),
    }
}

/// What the sampling fields and the other generation options of a request say.
struct Gen {
    req: Request,
    stop: Vec<String>,
    stream: bool,
    include_usage: bool,
    logprobs: bool,
}

fn generation(sh: &Shared, m: &Map<String, Value>, prompt: Vec<u32>, chat: bool) -> std::result::Result<Gen, ApiError> {
    if let Some(model) = m.get("model") {
        match model.as_str() {
            Some(s) if s == sh.model_id => {}
            Some(s) => {
                return Err(ApiError::new(
                    StatusCode::NOT_FOUND,
                    "invalid_request_error",
                    "model_not_found",
                    format!("model {s:?} is not served here (this server serves {:?})", sh.model_id),
                ))
            }
            None => return Err(ApiError::bad("model must be a string", Some("model"))),
        }
    }
    if let Some(n) = uint(m, "n")? {
        if n != 1 {
            return Err(ApiError::bad("n must be 1", Some("n")));
        }
    }
    let mut p = sh.defaults;
    if let Some(t) = num(m, "temperature")? {
        p.temperature = t as f32;
    }
    if let Some(t) = num(m, "top_p")? {
        p.top_p = t as f32;
    }
    if let Some(k) = uint(m, "top_k")? {
        p.top_k = k.min(u32::MAX as u64) as usize;
    }
    if let Some(v) = num(m, "min_p")? {
        p.min_p = v as f32;
    }
    if let Some(v) = num(m, "repetition_penalty")? {
        p.repetition_penalty = v as f32;
    }
    p.seed = uint(m, "seed")?;
    p.validate().map_err(|e| ApiError::bad(e.to_string(), None))?;
    let max = match (uint(m, "max_completion_tokens")?, uint(m, "max_tokens")?) {
        (Some(a), _) | (None, Some(a)) => a.min(usize::MAX as u64) as usize,
        (None, None) => sh.ctx,
    };
    let stop = match m.get("stop") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) if a.len() <= 4 && a.iter().all(Value::is_string) => {
            a.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect()
        }
        Some(_) => return Err(ApiError::bad("stop must be a string or up to 4 strings", Some("stop"))),
    };
    if stop.iter().any(String::is_empty) {
        return Err(ApiError::bad("stop strings must not be empty", Some("stop")));
    }
    let (logprobs, top) = if chat {
        let on = boolean(m, "logprobs")?;
        let top = uint(m, "top_logprobs")?;
        if top.is_some() && !on {
            return Err(ApiError::bad("top_logprobs needs logprobs: true", Some("top_logprobs")));
        }
        (on, top.unwrap_or(0))
    } else {
        match uint(m, "logprobs")? {
            Some(n) => (true, n),
            None => (false, 0),
        }
    };
    if top > MAX_TOP_LOGPROBS as u64 {
        return Err(ApiError::bad(
            format!("at most {MAX_TOP_LOGPROBS} top log-probabilities"),
            Some(if chat { "top_logprobs" } else { "logprobs" }),
        ));
    }
    let include_usage = match m.get("stream_options") {
        Some(Value::Object(o)) => boolean(o, "include_usage")?,
        None | Some(Value::Null) => false,
        Some(_) => return Err(ApiError::bad("stream_options must be an object", Some("stream_options"))),
    };
    if prompt.len() > sh.ctx {
        return Err(ApiError::bad(
            format!("the prompt is {} tokens, more than the model's context of {} tokens", prompt.len(), sh.ctx),
            Some(if chat { "messages" } else { "prompt" }),
        ));
    }
    let req = Request {
        prompt,
        params: GenerateParams { max_tokens: max, sampling: p, stop_ids: sh.stop_ids.clone() },
        presence_penalty: num(m, "presence_penalty")?.unwrap_or(0.0) as f32,
        frequency_penalty: num(m, "frequency_penalty")?.unwrap_or(0.0) as f32,
        logprobs: logprobs.then_some(top as usize),
    };
    Ok(Gen { req, stop, stream: boolean(m, "stream")?, include_usage, logprobs })
}

/// A chat request's messages as the template takes them. Content: a string, or parts of `text` (image
/// parts are refused: this server does not take images yet).
fn messages(m: &Map<String, Value>) -> std::result::Result<Vec<Message>, ApiError> {
    let Some(Value::Array(list)) = m.get("messages") else {
        return Err(ApiError::bad("messages must be a list of messages", Some("messages")));
    };
    if list.is_empty() {
        return Err(ApiError::bad("messages must not be empty", Some("messages")));
    }
    let mut out = Vec::with_capacity(list.len());
    for msg in list {
        let Some(o) = msg.as_object() else {
            return Err(ApiError::bad("each message must be an object", Some("messages")));
        };
        let role = match o.get("role").and_then(Value::as_str) {
            Some(r @ ("system" | "developer" | "user" | "assistant" | "tool")) => {
                if r == "developer" {
                    "system"
                } else {
                    r
                }
            }
            Some(r) => return Err(ApiError::bad(format!("unknown role {r:?}"), Some("messages"))),
            None => return Err(ApiError::bad("each message needs a role", Some("messages"))),
        };
        let content = match o.get("content") {
            None | Some(Value::Null) => Content::Text(String::new()),
            Some(Value::String(s)) => Content::Text(s.clone()),
            Some(Value::Array(parts)) => {
                let mut ps = Vec::new();
                for part in parts {
                    match part.get("type").and_then(Value::as_str) {
                        Some("text") => match part.get("text").and_then(Value::as_str) {
                            Some(t) => ps.push(Part::Text { text: t.to_owned() }),
                            None => return Err(ApiError::bad("a text part needs a text string", Some("messages"))),
                        },
                        Some("image_url") => {
                            return Err(ApiError::bad(
                                "image parts are not supported by herd serve yet (herd run --image takes images)",
                                Some("messages"),
                            ))
                        }
                        other => {
                            return Err(ApiError::bad(format!("unknown content part type {other:?}"), Some("messages")))
                        }
                    }
                }
                Content::Parts(ps)
            }
            Some(_) => return Err(ApiError::bad("content must be a string or a list of parts", Some("messages"))),
        };
        let tool_calls = match o.get("tool_calls") {
            Some(Value::Array(a)) => a.clone(),
            _ => Vec::new(),
        };
        out.push(Message { role: role.to_owned(), content, tool_calls });
    }
    Ok(out)
}

// ---- the engine ----------------------------------------------------------------------------------

/// The engine thread: takes jobs, steps the scheduler while there is work, cancels requests whose client
/// is gone, and keeps the gauges up to date. Ends when every sender is gone or at shutdown (cancelling
/// what runs).
fn engine<B: Backend>(mut s: Scheduler<B>, jobs: mpsc::Receiver<Job>, metrics: Arc<Metrics>, stop: Arc<AtomicBool>) {
    let mut live: HashMap<RequestId, tmpsc::UnboundedSender<Event>> = HashMap::new();
    // The scheduler's counters when the metrics were last brought up to date.
    let mut seen = s.stats();
    loop {
        let first = if s.is_idle() {
            match jobs.recv_timeout(Duration::from_millis(200)) {
                Ok(j) => Some(j),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        } else {
            None
        };
        for job in first.into_iter().chain(std::iter::from_fn(|| jobs.try_recv().ok())) {
            let events = job.events.clone();
            let m = metrics.clone();
            let mut last = None::<std::time::Instant>;
            let sink: herd_core::schedule::Sink = Box::new(move |e| {
                match &e {
                    Event::Token(_) => {
                        let now = std::time::Instant::now();
                        if let Some(t) = last {
                            m.itl.observe(now.duration_since(t).as_secs_f64());
                        }
                        last = Some(now);
                    }
                    Event::Done(f) => {
                        if let Some(t) = f.time_to_first_token {
                            m.ttft.observe(t.as_secs_f64());
                        }
                    }
                }
                events.send(e).is_ok()
            });
            match s.submit(job.req, sink) {
                Ok(id) => {
                    metrics.requests.inc();
                    live.insert(id, job.events);
                    let _ = job.accepted.send(Ok(()));
                }
                Err(e) => {
                    let _ = job.accepted.send(Err(e));
                }
            }
        }
        if stop.load(Ordering::Relaxed) {
            for id in live.keys().copied().collect::<Vec<_>>() {
                s.cancel(id);
            }
            break;
        }
        // Clients gone: their requests end before the step.
        live.retain(|&id, tx| {
            if tx.is_closed() {
                s.cancel(id);
                false
            } else {
                true
            }
        });
        if let Err(e) = s.step() {
            eprintln!("herd serve: a step failed: {}", e.to_string().replace('\n', " "));
        }
        // Also counts what ended outside the step (cancelled before it).
        let now = s.stats();
        metrics.prompt_tokens.inc_by(now.prompt_tokens - seen.prompt_tokens);
        metrics.generated_tokens.inc_by(now.generated_tokens - seen.generated_tokens);
        metrics.finished.inc_by(now.finished - seen.finished);
        metrics.cancelled.inc_by(now.cancelled - seen.cancelled);
        metrics.failed.inc_by(now.failed - seen.failed);
        seen = now;
        let (running, waiting) = s.load();
        metrics.running.set(running as i64);
        metrics.waiting.set(waiting as i64);
        metrics.kv_tokens.set(s.cached_tokens() as i64);
        metrics.kv_bytes.set(s.cache_bytes() as i64);
        if let Some(x) = s.model().expert_stats() {
            metrics.expert_hits.set(x.hits as i64);
            metrics.expert_misses.set(x.lookups.saturating_sub(x.hits) as i64);
        }
    }
}

// ---- generation over HTTP ------------------------------------------------------------------------

/// Submits a request to the engine; its events, or the refusal.
async fn submit(sh: &Shared, req: Request) -> std::result::Result<tmpsc::UnboundedReceiver<Event>, ApiError> {
    if sh.shutting_down.load(Ordering::Relaxed) {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            "shutting_down",
            "the server is shutting down",
        ));
    }
    let (tx, rx) = tmpsc::unbounded_channel();
    let (atx, arx) = oneshot::channel();
    let sent = sh
        .jobs
        .lock()
        .map_err(|_| {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", "internal_error", "engine poisoned")
        })?
        .send(Job { req, events: tx, accepted: atx });
    let gone = || {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            "engine_stopped",
            "the model's engine has stopped",
        )
    };
    sent.map_err(|_| gone())?;
    match arx.await {
        Ok(Ok(())) => Ok(rx),
        Ok(Err(e)) => Err(from_herd(e)),
        Err(_) => Err(gone()),
    }
}

/// Turns token events into text: decoded incrementally, cut at the first stop string; text that could
/// still be the start of a stop string is held back until it is not.
struct Detok {
    dec: herd_core::tokenizer::StreamDecoder,
    stop: Vec<String>,
    /// Decoded and not yet released.
    held: String,
    stopped: bool,
}

impl Detok {
    fn new(tok: &Tokenizer, stop: Vec<String>) -> Detok {
        Detok { dec: tok.stream_decoder(true), stop, held: String::new(), stopped: false }
    }

    /// The text released by one more token (empty while held back); after a stop string, nothing.
    fn push(&mut self, id: u32) -> String {
        if self.stopped {
            return String::new();
        }
        if let Ok(Some(s)) = self.dec.push(id) {
            self.held.push_str(&s);
        }
        if let Some(at) = self.stop.iter().filter_map(|s| self.held.find(s.as_str())).min() {
            self.stopped = true;
            let out = self.held[..at].to_owned();
            self.held.clear();
            return out;
        }
        // Keep the longest tail that is a proper prefix of a stop string.
        let keep = self
            .stop
            .iter()
            .flat_map(|s| (1..s.len()).filter(|&k| s.is_char_boundary(k)).map(move |k| &s[..k]))
            .filter(|p| self.held.ends_with(p))
            .map(str::len)
            .max()
            .unwrap_or(0);
        let cut = self.held.len() - keep;
        let out = self.held[..cut].to_owned();
        self.held.drain(..cut);
        out
    }

    /// What is held at the end.
    fn finish(&mut self) -> String {
        if self.stopped {
            return String::new();
        }
        std::mem::take(&mut self.held)
    }
}

fn finish_reason(f: &Finish, stopped_by_string: bool) -> &'static str {
    match f.reason {
        Ok(StopReason::Length) if !stopped_by_string => "length",
        _ => "stop",
    }
}

fn usage(f: &Finish, generated: usize) -> Value {
    json!({
        "prompt_tokens": f.prompt_tokens,
        "completion_tokens": generated,
        "total_tokens": f.prompt_tokens + generated,
        "prompt_tokens_details": {"cached_tokens": 0},
    })
}

/// A token as OpenAI's logprobs entry (chat shape: token, logprob, bytes, top_logprobs).
fn logprob_entry(tok: &Tokenizer, t: &Token) -> Value {
    let piece = |id: u32| tok.decode(&[id], false).unwrap_or_default();
    let one = |id: u32, lp: f32| {
        let s = piece(id);
        json!({"token": s, "logprob": lp, "bytes": s.as_bytes()})
    };
    let mut e = one(t.id, t.logprob.unwrap_or(f32::NEG_INFINITY));
    e["top_logprobs"] = Value::Array(t.top.iter().map(|&(id, lp)| one(id, lp)).collect());
    e
}

/// Legacy completions' logprobs object from the chat-shaped entries.
fn completion_logprobs(entries: &[Value]) -> Value {
    json!({
        "tokens": entries.iter().map(|e| e["token"].clone()).collect::<Vec<_>>(),
        "token_logprobs": entries.iter().map(|e| e["logprob"].clone()).collect::<Vec<_>>(),
        "top_logprobs": entries.iter().map(|e| {
            let mut o = Map::new();
            for t in e["top_logprobs"].as_array().into_iter().flatten() {
                o.insert(t["token"].as_str().unwrap_or_default().to_owned(), t["logprob"].clone());
            }
            Value::Object(o)
        }).collect::<Vec<_>>(),
    })
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Chat,
    Completion,
}

async fn generate(sh: Arc<Shared>, kind: Kind, g: Gen) -> Response {
    let n = sh.next_id.fetch_add(1, Ordering::Relaxed);
    let id = match kind {
        Kind::Chat => format!("chatcmpl-{n}"),
        Kind::Completion => format!("cmpl-{n}"),
    };
    let created = now_secs();
    let Gen { req, stop, stream, include_usage, logprobs } = g;
    let prompt_len = req.prompt.len();
    let mut rx = match submit(&sh, req).await {
        Ok(rx) => rx,
        Err(e) => return e.into_response(),
    };
    let mut detok = Detok::new(&sh.tok, stop);
    if !stream {
        let mut text = String::new();
        let mut entries = Vec::new();
        let mut generated = 0;
        let finish = loop {
            match rx.recv().await {
                Some(Event::Token(t)) => {
                    generated += 1;
                    text.push_str(&detok.push(t.id));
                    if logprobs {
                        entries.push(logprob_entry(&sh.tok, &t));
                    }
                    if detok.stopped {
                        drop(rx);
                        break None;
                    }
                }
                Some(Event::Done(f)) => break Some(f),
                None => break None,
            }
        };
        text.push_str(&detok.finish());
        let (reason, usage) = match &finish {
            Some(f) => {
                if let Err(e) = &f.reason {
                    return ApiError::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "server_error",
                        "generation_failed",
                        e.clone(),
                    )
                    .into_response();
                }
                if f.reason == Ok(StopReason::Cancelled) && sh.shutting_down.load(Ordering::Relaxed) {
                    return ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "server_error",
                        "shutting_down",
                        "the server is shutting down",
                    )
                    .into_response();
                }
                (finish_reason(f, detok.stopped), usage(f, generated))
            }
            // Stopped by a stop string (the request is cancelled by dropping its events).
            None => (
                "stop",
                json!({"prompt_tokens": prompt_len, "completion_tokens": generated, "total_tokens": prompt_len + generated, "prompt_tokens_details": {"cached_tokens": 0}}),
            ),
        };
        let lp = if logprobs { Some(entries) } else { None };
        let body = match kind {
            Kind::Chat => json!({
                "id": id, "object": "chat.completion", "created": created, "model": sh.model_id,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                    "logprobs": lp.map(|c| json!({"content": c})), "finish_reason": reason}],
                "usage": usage,
            }),
            Kind::Completion => json!({
                "id": id, "object": "text_completion", "created": created, "model": sh.model_id,
                "choices": [{"index": 0, "text": text, "logprobs": lp.map(|c| completion_logprobs(&c)), "finish_reason": reason}],
                "usage": usage,
            }),
        };
        return json_response(StatusCode::OK, &body);
    }
    // Server-Sent Events: one `data: {chunk}` per piece of text, then the finish, usage, and [DONE].
    let sh2 = sh.clone();
    let chunk = move |delta: Value, lp: Option<Value>, reason: Option<&str>| -> Value {
        match kind {
            Kind::Chat => {
                json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": sh2.model_id,
                "choices": [{"index": 0, "delta": delta, "logprobs": lp.map(|c| json!({"content": c})), "finish_reason": reason}]})
            }
            Kind::Completion => {
                json!({"id": id, "object": "text_completion", "created": created, "model": sh2.model_id,
                "choices": [{"index": 0, "text": delta.get("content").cloned().unwrap_or(json!("")), "logprobs": lp.map(|c| completion_logprobs(c.as_array().map_or(&[][..], |v| v.as_slice()))), "finish_reason": reason}]})
            }
        }
    };
    let (out_tx, out_rx) = tmpsc::channel::<std::result::Result<Bytes, std::convert::Infallible>>(64);
    let sh3 = sh.clone();
    tokio::spawn(async move {
        let send = |v: &Value| Bytes::from(format!("data: {v}\n\n"));
        if kind == Kind::Chat
            && out_tx.send(Ok(send(&chunk(json!({"role": "assistant", "content": ""}), None, None)))).await.is_err()
        {
            return;
        }
        let mut generated = 0;
        let mut done = None;
        while let Some(e) = rx.recv().await {
            match e {
                Event::Token(t) => {
                    generated += 1;
                    let text = detok.push(t.id);
                    let lp = logprobs.then(|| json!([logprob_entry(&sh3.tok, &t)]));
                    if (!text.is_empty() || lp.is_some())
                        && out_tx.send(Ok(send(&chunk(json!({"content": text}), lp, None)))).await.is_err()
                    {
                        return; // the client is gone: dropping `rx` cancels the request
                    }
                    if detok.stopped {
                        break;
                    }
                }
                Event::Done(f) => {
                    done = Some(f);
                    break;
                }
            }
        }
        drop(rx);
        let tail = detok.finish();
        if !tail.is_empty() {
            let _ = out_tx.send(Ok(send(&chunk(json!({"content": tail}), None, None)))).await;
        }
        match &done {
            Some(f)
                if f.reason.is_err()
                    || (f.reason == Ok(StopReason::Cancelled) && sh3.shutting_down.load(Ordering::Relaxed)) =>
            {
                let msg = match &f.reason {
                    Err(e) => e.clone(),
                    Ok(_) => "the server is shutting down".into(),
                };
                let _ = out_tx
                    .send(Ok(send(
                        &json!({"error": {"message": msg, "type": "server_error", "param": null, "code": null}}),
                    )))
                    .await;
            }
            _ => {
                let reason = done.as_ref().map_or("stop", |f| finish_reason(f, detok.stopped));
                let delta = if kind == Kind::Chat { json!({}) } else { json!({"content": ""}) };
                let _ = out_tx.send(Ok(send(&chunk(delta, None, Some(reason))))).await;
                if include_usage {
                    let u = match &done {
                        Some(f) => usage(f, generated),
                        None => {
                            json!({"prompt_tokens": prompt_len, "completion_tokens": generated, "total_tokens": prompt_len + generated, "prompt_tokens_details": {"cached_tokens": 0}})
                        }
                    };
                    let obj = if kind == Kind::Chat { "chat.completion.chunk" } else { "text_completion" };
                    let _ = out_tx
                        .send(Ok(send(&json!({"id": format!("usage-{n}"), "object": obj, "created": created, "model": sh3.model_id, "choices": [], "usage": u}))))
                        .await;
                }
            }
        }
        let _ = out_tx.send(Ok(Bytes::from_static(b"data: [DONE]\n\n"))).await;
    });
    let body =
        Body::from_stream(futures_util::stream::unfold(
            out_rx,
            |mut rx| async move { rx.recv().await.map(|b| (b, rx)) },
        ));
    let mut r = Response::new(body);
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

async fn chat_completions(
    State(sh): State<Arc<Shared>>,
    headers: HeaderMap,
    body: std::result::Result<Bytes, BytesRejection>,
) -> Response {
    let run = async {
        authorize(&sh, &headers)?;
        let m = json_body(body)?;
        let msgs = messages(&m)?;
        let tmpl = sh
            .tmpl
            .as_ref()
            .ok_or_else(|| ApiError::bad("this model has no chat template: use /v1/completions", None))?;
        let rendered = tmpl.render(&msgs, None, true).map_err(|e| ApiError::bad(e.to_string(), Some("messages")))?;
        let ids = sh.tok.encode_rendered(&rendered).map_err(|e| ApiError::bad(e.to_string(), Some("messages")))?;
        generation(&sh, &m, ids, true)
    };
    match run.await {
        Ok(g) => generate(sh, Kind::Chat, g).await,
        Err(e) => e.into_response(),
    }
}

async fn completions(
    State(sh): State<Arc<Shared>>,
    headers: HeaderMap,
    body: std::result::Result<Bytes, BytesRejection>,
) -> Response {
    let run = async {
        authorize(&sh, &headers)?;
        let m = json_body(body)?;
        let vocab_err = || {
            ApiError::bad("prompt must be a string, a list of token ids, or a list of one of either", Some("prompt"))
        };
        let prompt = match m.get("prompt") {
            Some(Value::Array(a)) if a.len() == 1 && !a[0].is_number() => a[0].clone(),
            Some(v) => v.clone(),
            None => return Err(ApiError::bad("prompt is required", Some("prompt"))),
        };
        let ids = match prompt {
            Value::String(s) => {
                sh.tok.encode_plain(&s, true).map_err(|e| ApiError::bad(e.to_string(), Some("prompt")))?
            }
            Value::Array(a) => a
                .iter()
                .map(|v| v.as_u64().filter(|&x| x <= u32::MAX as u64).map(|x| x as u32).ok_or_else(vocab_err))
                .collect::<std::result::Result<_, _>>()?,
            _ => return Err(vocab_err()),
        };
        if boolean(&m, "echo")? {
            return Err(ApiError::bad("echo is not supported", Some("echo")));
        }
        generation(&sh, &m, ids, false)
    };
    match run.await {
        Ok(g) => generate(sh, Kind::Completion, g).await,
        Err(e) => e.into_response(),
    }
}

async fn models(State(sh): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if let Err(e) = authorize(&sh, &headers) {
        return e.into_response();
    }
    json_response(
        StatusCode::OK,
        &json!({"object": "list", "data": [{"id": sh.model_id, "object": "model", "created": sh.created, "owned_by": "herd"}]}),
    )
}

async fn health(State(sh): State<Arc<Shared>>) -> Response {
    if sh.ready.load(Ordering::Relaxed) && !sh.shutting_down.load(Ordering::Relaxed) {
        json_response(StatusCode::OK, &json!({"status": "ok"}))
    } else {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", "not_ready", "the model is not ready")
            .into_response()
    }
}

async fn metrics_text(State(sh): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if let Err(e) = authorize(&sh, &headers) {
        return e.into_response();
    }
    let mut r = Response::new(Body::from(sh.metrics.text()));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    r
}

async fn not_found() -> Response {
    ApiError::new(StatusCode::NOT_FOUND, "invalid_request_error", "not_found", "no such route").into_response()
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}

/// Loads the model onto `backend` and serves it until SIGINT/SIGTERM.
pub fn serve<B: Backend + 'static>(
    backend: Arc<B>,
    files: &ModelFiles,
    opts: Options,
    experts: Option<&ExpertCacheOptions>,
) -> Result<()> {
    let tok = files.tokenizer()?;
    let tmpl = files.chat_template().ok();
    let gen = files.generation_config()?;
    let defaults = gen.sampling_params();
    let addr: SocketAddr = format!("{}:{}", opts.host, opts.port)
        .parse()
        .with_context(|| format!("--host {} --port {}", opts.host, opts.port))?;
    let listener = std::net::TcpListener::bind(addr).with_context(|| format!("cannot listen on {addr}"))?;
    listener.set_nonblocking(true)?;
    let local = listener.local_addr()?;
    let (cfg, model) = files.load(backend, experts)?;
    let stop_ids =
        if gen.eos_token_ids.is_empty() { cfg.text.eos_token_ids.clone() } else { gen.eos_token_ids.clone() };
    let model = Arc::new(model);
    let sched = Scheduler::new(model, opts.sched)?;
    let metrics = Arc::new(Metrics::new());
    let stop = Arc::new(AtomicBool::new(false));
    let (jobs_tx, jobs_rx) = mpsc::channel::<Job>();
    let model_id = files.model_id();
    let shared = Arc::new(Shared {
        tok,
        tmpl,
        model_id,
        created: now_secs(),
        ctx: cfg.text.max_position_embeddings,
        defaults,
        stop_ids,
        jobs: Mutex::new(jobs_tx),
        metrics: metrics.clone(),
        api_key: opts.api_key.clone(),
        ready: AtomicBool::new(false),
        shutting_down: stop.clone(),
        next_id: AtomicU64::new(0),
    });
    let engine_stop = stop.clone();
    let engine_thread = std::thread::Builder::new()
        .name("herd-engine".into())
        .spawn(move || engine(sched, jobs_rx, metrics, engine_stop))
        .context("starting the engine thread")?;
    shared.ready.store(true, Ordering::Relaxed);
    let app = Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route("/v1/models", get(models))
        .route("/health", get(health))
        .route("/metrics", get(metrics_text))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(opts.body_limit))
        .with_state(shared.clone());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let result = rt.block_on(async move {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        println!("herd serve: {} at http://{local}/v1 (OpenAI API; Ctrl-C stops)", shared.model_id);
        use std::io::Write;
        let _ = std::io::stdout().flush();
        let sd = shared.clone();
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                shutdown_signal().await;
                eprintln!("herd serve: shutting down");
                sd.shutting_down.store(true, Ordering::Relaxed);
            })
            .await
    });
    stop.store(true, Ordering::Relaxed);
    drop(rt);
    let _ = engine_thread.join();
    result.context("serving")?;
    Ok(())
}
