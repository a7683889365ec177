//! Answers of `herd serve`: a checked request goes to the engine, and its token events come back as
//! OpenAI's JSON (one body) or as Server-Sent Events; text is decoded incrementally and cut at stop strings.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use herd_core::openai::{ApiError, Gen};
use herd_core::schedule::StopReason;
use herd_core::schedule::{Event, Finish, Request, Token};
use herd_core::tokenizer::Tokenizer;
use herd_core::tools::{Call, Tools};
use herd_core::vision::input::PlannedImage;
use serde_json::{json, Map, Value};
use tokio::sync::{mpsc as tmpsc, oneshot};

use super::engine::Job;
use super::guarded::Gate;
use super::{json_response, now_secs, Reply, Shared};

/// Submits a request to the model's engine; its events, or the refusal.
async fn submit(
    sh: &Shared,
    req: Request,
    images: Vec<PlannedImage>,
) -> std::result::Result<(tmpsc::UnboundedReceiver<Event>, Arc<AtomicBool>), ApiError> {
    submit_to(sh, &sh.jobs, req, images).await
}

/// Submits a request to an engine (the model's or the guard's).
pub(super) async fn submit_to(
    sh: &Shared,
    jobs: &std::sync::Mutex<std::sync::mpsc::Sender<Job>>,
    req: Request,
    images: Vec<PlannedImage>,
) -> std::result::Result<(tmpsc::UnboundedReceiver<Event>, Arc<AtomicBool>), ApiError> {
    if sh.shutting_down.load(Ordering::Relaxed) {
        return Err(ApiError::new(503, "server_error", "shutting_down", "the server is shutting down"));
    }
    if !sh.ready.load(Ordering::Relaxed) {
        return Err(ApiError::new(503, "server_error", "loading", "the model is still loading"));
    }
    let (tx, rx) = tmpsc::unbounded_channel();
    let (atx, arx) = oneshot::channel();
    let stop = Arc::new(AtomicBool::new(false));
    let sent = jobs
        .lock()
        .map_err(|_| ApiError::new(500, "server_error", "internal_error", "engine poisoned"))?
        .send(Job { req, images, events: tx, accepted: atx, stop: stop.clone() });
    let gone = || ApiError::new(503, "server_error", "engine_stopped", "the model's engine has stopped");
    sent.map_err(|_| gone())?;
    match arx.await {
        Ok(Ok(())) => Ok((rx, stop)),
        Ok(Err(e)) => Err(e),
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

/// The answer's text held back while it may still be a tool call (it starts with `{` or `[`, or, with a
/// required or named `tool_choice`, always), so that a call is sent as `tool_calls` and never as content.
struct Held {
    tools: Option<Tools>,
    on: bool,
    text: String,
}

impl Held {
    fn new(tools: Option<Tools>) -> Held {
        let on = tools.as_ref().is_some_and(Tools::reads_calls);
        Held { tools, on, text: String::new() }
    }

    /// What of `piece` may be sent as content now.
    fn take(&mut self, piece: String) -> String {
        if !self.on {
            return piece;
        }
        self.text.push_str(&piece);
        let t = self.text.trim_start();
        let forced = self.tools.as_ref().is_some_and(Tools::forced);
        if forced || t.is_empty() || t.starts_with('{') || t.starts_with('[') {
            return String::new();
        }
        self.on = false;
        std::mem::take(&mut self.text)
    }

    /// At the end: the calls, if what was held is wholly calls to the request's tools; else the held text.
    fn finish(&mut self) -> Result<Vec<Call>, String> {
        let text = std::mem::take(&mut self.text);
        match self.tools.as_ref().and_then(|t| t.calls(&text)) {
            Some(calls) if self.on => Ok(calls),
            _ => Err(text),
        }
    }
}

/// Calls in OpenAI's `tool_calls` shape, their ids unique to the request `n`.
fn tool_calls(calls: &[Call], n: u64) -> Value {
    let list: Vec<Value> = calls
        .iter()
        .enumerate()
        .map(|(i, c)| {
            json!({"id": format!("call_{n}_{i}"), "type": "function",
                   "function": {"name": c.name, "arguments": c.arguments}})
        })
        .collect();
    Value::Array(list)
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
        "prompt_tokens_details": {"cached_tokens": f.cached_tokens},
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
pub enum Kind {
    Chat,
    Completion,
}

/// Runs a request and answers it; `guarded` is the conversation the guard checks the answer in (None: the
/// request has none, as a raw completion; with no guard loaded it is not used).
pub async fn generate(
    sh: Arc<Shared>,
    kind: Kind,
    g: Gen,
    images: Vec<PlannedImage>,
    guarded: Option<super::guarded::Checked>,
) -> Response {
    let mut gate = Gate::new(&sh, guarded);
    let n = sh.next_id.fetch_add(1, Ordering::Relaxed);
    let id = match kind {
        Kind::Chat => format!("chatcmpl-{n}"),
        Kind::Completion => format!("cmpl-{n}"),
    };
    let created = now_secs();
    let Gen { req, stop, stream, include_usage, logprobs, tools } = g;
    let mut held = Held::new(tools);
    // A stop string ends the request through `halt`; its events then run on to `Done` (with the counts).
    let (mut rx, halt) = match submit(&sh, req, images).await {
        Ok(r) => r,
        Err(e) => return e.reply(),
    };
    let mut detok = Detok::new(&sh.tok, stop);
    if !stream {
        let mut text = String::new();
        let mut entries = Vec::new();
        let mut generated = 0;
        let finish = loop {
            match rx.recv().await {
                Some(Event::Token(_)) if detok.stopped => {}
                Some(Event::Token(t)) => {
                    generated += 1;
                    text.push_str(&detok.push(t.id));
                    if logprobs {
                        entries.push(logprob_entry(&sh.tok, &t));
                    }
                    if detok.stopped {
                        halt.store(true, Ordering::Relaxed);
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
                    return ApiError::new(500, "server_error", "generation_failed", e.clone()).reply();
                }
                if f.reason == Ok(StopReason::Cancelled) && sh.shutting_down.load(Ordering::Relaxed) {
                    return ApiError::new(503, "server_error", "shutting_down", "the server is shutting down").reply();
                }
                (finish_reason(f, detok.stopped), usage(f, generated))
            }
            None => {
                return ApiError::new(503, "server_error", "engine_stopped", "the model's engine has stopped").reply()
            }
        };
        // The guard reads the whole answer first; an unsafe one is withheld.
        let filtered = match gate.as_mut() {
            Some(g) => !g.pass(&sh, &text).await,
            None => false,
        };
        let lp = if logprobs && !filtered { Some(entries) } else { None };
        held.text = text.clone();
        let (message, reason) = match held.finish() {
            _ if filtered => {
                text.clear();
                (json!({"role": "assistant", "content": null}), "content_filter")
            }
            Ok(calls) => {
                (json!({"role": "assistant", "content": null, "tool_calls": tool_calls(&calls, n)}), "tool_calls")
            }
            Err(_) => (json!({"role": "assistant", "content": text}), reason),
        };
        let body = match kind {
            Kind::Chat => json!({
                "id": id, "object": "chat.completion", "created": created, "model": sh.served.model_id,
                "choices": [{"index": 0, "message": message,
                    "logprobs": lp.map(|c| json!({"content": c})), "finish_reason": reason}],
                "usage": usage,
            }),
            Kind::Completion => json!({
                "id": id, "object": "text_completion", "created": created, "model": sh.served.model_id,
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
                json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": sh2.served.model_id,
                "choices": [{"index": 0, "delta": delta, "logprobs": lp.map(|c| json!({"content": c})), "finish_reason": reason}]})
            }
            Kind::Completion => {
                json!({"id": id, "object": "text_completion", "created": created, "model": sh2.served.model_id,
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
        // Text (and its logprobs) not sent yet: under a guard, what no check has passed.
        let (mut full, mut pending, mut pending_lp) = (String::new(), String::new(), Vec::new());
        let mut filtered = false;
        while let Some(e) = rx.recv().await {
            match e {
                Event::Token(_) if detok.stopped || filtered => {}
                Event::Token(t) => {
                    generated += 1;
                    let piece = detok.push(t.id);
                    full.push_str(&piece);
                    pending.push_str(&held.take(piece));
                    if logprobs {
                        pending_lp.push(logprob_entry(&sh3.tok, &t));
                    }
                    if detok.stopped {
                        halt.store(true, Ordering::Relaxed);
                    }
                    let release = match gate.as_mut() {
                        None => true,
                        Some(g) => g.due() && g.pass(&sh3, &full).await,
                    };
                    if !release && gate.as_ref().is_some_and(|g| g.stopped.is_some()) {
                        filtered = true;
                        halt.store(true, Ordering::Relaxed);
                    } else if release && (!pending.is_empty() || !pending_lp.is_empty()) {
                        let lp = logprobs.then(|| Value::Array(std::mem::take(&mut pending_lp)));
                        let delta = json!({"content": std::mem::take(&mut pending)});
                        if out_tx.send(Ok(send(&chunk(delta, lp, None)))).await.is_err() {
                            return; // the client is gone: dropping `rx` cancels the request
                        }
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
        full.push_str(&tail);
        pending.push_str(&held.take(tail));
        // The end of the answer: what no check has seen yet is checked before it goes out.
        if let (Some(g), false, Some(Ok(_))) = (gate.as_mut(), filtered, done.as_ref().map(|f| &f.reason)) {
            filtered = !g.pass(&sh3, &full).await;
        }
        if !filtered && (!pending.is_empty() || !pending_lp.is_empty()) {
            let lp = logprobs.then(|| Value::Array(std::mem::take(&mut pending_lp)));
            let _ = out_tx.send(Ok(send(&chunk(json!({"content": pending}), lp, None)))).await;
        }
        // What was held back: calls (their name, then their arguments), or content after all.
        let calls = match held.finish() {
            _ if filtered => None,
            Ok(calls) => Some(calls),
            Err(text) if !text.is_empty() => {
                let _ = out_tx.send(Ok(send(&chunk(json!({"content": text}), None, None)))).await;
                None
            }
            Err(_) => None,
        };
        if let Some(calls) = &calls {
            for (i, c) in tool_calls(calls, n).as_array().into_iter().flatten().enumerate() {
                let head = json!({"index": i, "id": c["id"], "type": "function",
                                  "function": {"name": c["function"]["name"], "arguments": ""}});
                let args = json!({"index": i, "function": {"arguments": c["function"]["arguments"]}});
                for piece in [head, args] {
                    let _ = out_tx.send(Ok(send(&chunk(json!({"tool_calls": [piece]}), None, None)))).await;
                }
            }
        }
        match &done {
            None => {
                let _ = out_tx
                    .send(Ok(send(&json!({"error": {"message": "the model's engine has stopped", "type": "server_error", "param": null, "code": null}}))))
                    .await;
            }
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
            Some(f) => {
                let reason = match () {
                    _ if filtered => "content_filter",
                    _ if calls.is_some() => "tool_calls",
                    _ => finish_reason(f, detok.stopped),
                };
                let delta = if kind == Kind::Chat { json!({}) } else { json!({"content": ""}) };
                let _ = out_tx.send(Ok(send(&chunk(delta, None, Some(reason))))).await;
                if include_usage {
                    let u = usage(f, generated);
                    let obj = if kind == Kind::Chat { "chat.completion.chunk" } else { "text_completion" };
                    let _ = out_tx
                        .send(Ok(send(&json!({"id": format!("usage-{n}"), "object": obj, "created": created, "model": sh3.served.model_id, "choices": [], "usage": u}))))
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
