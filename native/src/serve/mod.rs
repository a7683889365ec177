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

mod engine;
mod guarded;
mod respond;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use herd_core::backend::Backend;
use herd_core::chat::ChatTemplate;
use herd_core::constrain::Constrainer;
use herd_core::openai::{self, ApiError, Served};
use herd_core::schedule::{Scheduler, SchedulerConfig};
use herd_core::tokenizer::Tokenizer;
use herd_core::vision::preprocess::{decode, RgbImage};
use serde_json::{json, Map, Value};
use tokio::sync::oneshot;

use crate::files::{LoadOptions, ModelFiles};
use crate::fit::Need;
use crate::images::{Planner, Vision};
use engine::{engine, Eyes, Job, Metrics};
use respond::{generate, Kind};

/// What `herd serve` was asked for.
pub struct Options {
    pub host: String,
    pub port: u16,
    pub sched: SchedulerConfig,
    pub api_key: Option<String>,
    pub body_limit: usize,
    /// Llama Guard 4 and how many tokens of a streamed answer go between its checks.
    pub guard: Option<(crate::guard::GuardFiles, usize)>,
    /// `--speculate`: the drafter each request's decoding is verified against (off unless asked).
    pub speculate: crate::speculate::SpecArgs,
}

/// What the handlers share.
struct Shared {
    tok: Tokenizer,
    tmpl: Option<ChatTemplate>,
    served: Served,
    /// None when the model has no vision tower (requests with images are refused).
    planner: Option<Planner>,
    /// One image decode at a time.
    decoding: tokio::sync::Semaphore,
    created: u64,
    jobs: Mutex<mpsc::Sender<Job>>,
    metrics: Arc<Metrics>,
    api_key: Option<String>,
    /// Set once the model is loaded.
    ready: Arc<AtomicBool>,
    shutting_down: Arc<AtomicBool>,
    next_id: AtomicU64,
    /// Llama Guard 4, when the server has one (`--guard`).
    guard: Option<guarded::GuardClient>,
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

/// An [`ApiError`] as the response: its status, OpenAI's JSON body, and `Retry-After` when busy.
trait Reply {
    fn reply(self) -> Response;
}

impl Reply for ApiError {
    fn reply(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut r = json_response(status, &self.body());
        if status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE {
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        r
    }
}

/// `Authorization: Bearer KEY`, compared in constant time.
fn authorize(sh: &Shared, headers: &HeaderMap) -> Result<(), ApiError> {
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
            401,
            "authentication_error",
            "invalid_api_key",
            "missing or wrong API key (Authorization: Bearer KEY)",
        ))
    }
}
/// The body as a JSON object, or the error for it.
fn json_body(body: Result<Bytes, BytesRejection>) -> Result<Map<String, Value>, ApiError> {
    let body = body.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(413, "invalid_request_error", "body_too_large", "request body too large")
        } else {
            ApiError::bad(format!("could not read the body: {r}"), None)
        }
    })?;
    openai::parse_body(&body)
}

async fn chat_completions(
    State(sh): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let run = async {
        authorize(&sh, &headers)?;
        let m = json_body(body)?;
        let conv = openai::conversation(&m)?;
        let tools = herd_core::tools::parse(&m)?;
        let decoded = if conv.images.is_empty() { Vec::new() } else { decode_images(&sh, conv.images).await? };
        let checked = guarded::Checked { messages: conv.messages, images: Arc::new(decoded) };
        guarded::check_input(&sh, &checked).await?;
        let ids = openai::chat_ids(
            &checked.messages,
            tools.as_ref().and_then(|t| t.for_template()),
            sh.tmpl.as_ref(),
            &sh.tok,
        )?;
        let (ids, images) = match (checked.images.is_empty(), &sh.planner) {
            (true, _) => (ids, Vec::new()),
            (false, Some(p)) => p
                .plan(&ids, checked.images.to_vec(), &[])
                .map_err(|e| ApiError::bad(format!("{e:#}"), Some("messages")))?,
            (false, None) => unreachable!("decode_images refuses images for a model without a vision tower"),
        };
        Ok::<_, ApiError>((openai::generation(&sh.served, &m, ids, true)?, images, checked))
    };
    match run.await {
        Ok((g, images, checked)) => generate(sh, Kind::Chat, g, images, Some(checked)).await,
        Err(e) => e.reply(),
    }
}

/// Decodes a request's images (one at a time across the server: a decode may take a second and up to
/// [`herd_core::vision::preprocess::MAX_DECODE_BYTES`]), for the model's processor and the guard's to plan.
/// The first frame of an animated image is the image. A model without a vision tower refuses images.
async fn decode_images(sh: &Arc<Shared>, bytes: Vec<Vec<u8>>) -> Result<Vec<RgbImage>, ApiError> {
    let bad = |m: String| ApiError::bad(m, Some("messages"));
    if sh.planner.is_none() {
        return Err(bad(format!(
            "{} has no vision tower: image parts need a multimodal Llama 4 checkpoint",
            sh.served.model_id
        )));
    }
    let _permit = sh
        .decoding
        .acquire()
        .await
        .map_err(|_| ApiError::new(503, "server_error", "shutting_down", "the server is shutting down"))?;
    tokio::task::spawn_blocking(move || {
        let mut decoded = Vec::with_capacity(bytes.len());
        for (i, b) in bytes.iter().enumerate() {
            let mut frames = decode(b).map_err(|e| bad(format!("image {}: {e}", i + 1)))?;
            decoded.push(frames.swap_remove(0));
        }
        Ok(decoded)
    })
    .await
    .map_err(|e| ApiError::new(500, "server_error", "internal_error", format!("decoding the images: {e}")))?
}

async fn completions(
    State(sh): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let run = async {
        authorize(&sh, &headers)?;
        let m = json_body(body)?;
        let ids = openai::completion_ids(&m, &sh.tok)?;
        // The guard reads a raw prompt as the user's turn.
        let messages = match &sh.guard {
            Some(_) => vec![herd_core::chat::Message::user(sh.tok.decode(&ids, true).unwrap_or_default())],
            None => Vec::new(),
        };
        let checked = guarded::Checked { messages, images: Arc::default() };
        guarded::check_input(&sh, &checked).await?;
        Ok::<_, ApiError>((openai::generation(&sh.served, &m, ids, false)?, checked))
    };
    match run.await {
        Ok((g, checked)) => generate(sh, Kind::Completion, g, Vec::new(), Some(checked)).await,
        Err(e) => e.reply(),
    }
}

async fn models(State(sh): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if let Err(e) = authorize(&sh, &headers) {
        return e.reply();
    }
    json_response(
        StatusCode::OK,
        &json!({"object": "list", "data": [{"id": sh.served.model_id, "object": "model", "created": sh.created, "owned_by": "herd"}]}),
    )
}

async fn health(State(sh): State<Arc<Shared>>) -> Response {
    if sh.ready.load(Ordering::Relaxed) && !sh.shutting_down.load(Ordering::Relaxed) {
        json_response(StatusCode::OK, &json!({"status": "ok"}))
    } else {
        ApiError::new(503, "server_error", "not_ready", "the model is not ready").reply()
    }
}

async fn metrics_text(State(sh): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if let Err(e) = authorize(&sh, &headers) {
        return e.reply();
    }
    let mut r = Response::new(Body::from(sh.metrics.text()));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    r
}

async fn not_found() -> Response {
    ApiError::new(404, "invalid_request_error", "not_found", "no such route").reply()
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
    load_opts: &LoadOptions,
) -> Result<()> {
    let tok = files.tokenizer()?;
    let tmpl = files.chat_template().ok();
    let gen = files.generation_config()?;
    let cfg = files.config()?;
    // A bad --kv-dtype, or a model and KV cache that do not fit the device's memory, is refused before the
    // server listens; the memory plan sets how long a request may be.
    load_opts.check::<B>(&cfg.text)?;
    let mut opts = opts;
    let model_ctx = cfg.text.max_position_embeddings;
    // Images, when the model has a vision tower (why not is said once the plan has passed).
    let (planner, blind) = match cfg.vision.as_ref().map(|_| Planner::new(files, &tok)) {
        Some(Ok(p)) => (Some(p), None),
        Some(Err(e)) => (None, Some(format!("{e:#}").replace('\n', " "))),
        None => (None, None),
    };
    // The guard's memory first: the model's plan gets what it leaves.
    let guard_seqs = crate::guard::server_seqs(opts.sched.max_seqs);
    let reserved = match &opts.guard {
        Some((g, _)) => g.reserve(&*backend, load_opts, guard_seqs, planner.is_some())?,
        None => 0,
    };
    let need = Need {
        seqs: opts.sched.max_seqs,
        context: opts.sched.max_context,
        kept_slots: opts.sched.prefix_cache_tokens,
        step_rows: opts.sched.max_batch_tokens,
        reserved,
        vision: planner.is_some(),
    };
    let planned = crate::fit::check(&*backend, files, load_opts, &need)?;
    let context = match (opts.sched.max_context, &planned) {
        (Some(n), _) => n.min(model_ctx),
        (None, Some(p)) => p.longest.min(model_ctx),
        (None, None) => model_ctx,
    };
    opts.sched.max_context = Some(context);
    // With a plan, the cache is sized for it before the first request: it never grows past it.
    let reserve = planned.as_ref().map(|_| (opts.sched.max_seqs, context));
    if let Some(p) = &planned {
        eprintln!(
            "herd serve: requests hold up to {context} tokens each ({} at once, KV cache in {}; {} of {} planned)",
            opts.sched.max_seqs,
            crate::files::kv_dtypes_name(load_opts.kv_dtypes::<B>()?),
            crate::fit::human(p.total(context)),
            crate::fit::human(p.device_memory),
        );
    }
    let addr: SocketAddr = format!("{}:{}", opts.host, opts.port)
        .parse()
        .with_context(|| format!("--host {} --port {}", opts.host, opts.port))?;
    if let Some(why) = blind {
        eprintln!("herd serve: requests with images will be refused: {why}");
    }
    let listener = std::net::TcpListener::bind(addr).with_context(|| format!("cannot listen on {addr}"))?;
    listener.set_nonblocking(true)?;
    let local = listener.local_addr()?;
    let patch = planner.as_ref().map(|p| p.tokens.patch);
    let stop_ids =
        if gen.eos_token_ids.is_empty() { cfg.text.eos_token_ids.clone() } else { gen.eos_token_ids.clone() };
    // The grammar engine for `response_format`: a tokenizer llguidance cannot read serves without it.
    let constrainer = match stop_ids.first().map(|&eos| Constrainer::new(&tok, cfg.text.vocab_size, eos)) {
        Some(Ok(c)) => Some(c),
        Some(Err(e)) => {
            eprintln!("herd serve: response_format is off: {e}");
            None
        }
        None => None,
    };
    let metrics = Arc::new(Metrics::new());
    let guard_images = metrics.guard_images.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let ready = Arc::new(AtomicBool::new(false));
    let (jobs_tx, jobs_rx) = mpsc::channel::<Job>();
    let (guard_tx, guard_rx) = mpsc::channel::<Job>();
    let (guard_files, guard) = match opts.guard.take() {
        Some((files, every)) => {
            eprintln!("herd serve: Llama Guard from {} checks requests and answers", files.files.describe());
            // The guard reads images when the model takes them and the guard has a vision tower.
            let eyes = patch.is_some() && files.planner.is_ok();
            let model_files = guarded::GuardEngine { files: files.files.clone(), context: files.context, eyes };
            (Some(model_files), Some(guarded::GuardClient { files, every, jobs: Mutex::new(guard_tx) }))
        }
        None => (None, None),
    };
    let shared = Arc::new(Shared {
        tok,
        tmpl,
        served: Served {
            model_id: files.model_id(),
            context,
            vocab_size: cfg.text.vocab_size,
            defaults: gen.sampling_params(),
            constrainer,
            stop_ids,
        },
        planner,
        decoding: tokio::sync::Semaphore::new(1),
        created: now_secs(),
        jobs: Mutex::new(jobs_tx),
        metrics: metrics.clone(),
        api_key: opts.api_key.clone(),
        ready: ready.clone(),
        shutting_down: stop.clone(),
        next_id: AtomicU64::new(0),
        guard,
    });
    // The model loads on the engine thread while the server answers: /health is 503 and requests are
    // refused with 503 until it is ready. A failed load ends the server with its error.
    let (failed_tx, failed_rx) = oneshot::channel::<String>();
    let (engine_stop, files, load_opts) = (stop.clone(), files.clone(), load_opts.clone());
    let sched = opts.sched;
    let speculate = opts.speculate.clone();
    let engine_thread = std::thread::Builder::new()
        .name("herd-engine".into())
        .spawn(move || {
            let load = || -> Result<_> {
                let eyes = match patch {
                    Some(patch) => {
                        let planner = Planner::new(&files, &files.tokenizer()?)?;
                        let vision = Vision::load(&files, &backend, &planner)?;
                        Some(Eyes { vision, backend: backend.clone(), patch })
                    }
                    None => None,
                };
                let (_, model) = files.load(backend.clone(), &load_opts)?;
                let mut s = Scheduler::new(Arc::new(model), sched)?;
                speculate.attach(&mut s, &files, &load_opts, false)?;
                if let Some((seqs, tokens)) = reserve {
                    s.reserve(seqs, tokens)?;
                }
                // The guard on its own engine thread, loaded before the server says it is ready.
                if let Some(g) = guard_files {
                    g.start(backend, &load_opts, guard_seqs, guard_rx, engine_stop.clone(), guard_images)?;
                }
                Ok((s, eyes))
            };
            match load() {
                Ok((s, eyes)) => {
                    ready.store(true, Ordering::Relaxed);
                    eprintln!("herd serve: the model is loaded");
                    engine(s, eyes, jobs_rx, metrics, engine_stop)
                }
                Err(e) => {
                    let _ = failed_tx.send(format!("{e:#}").replace('\n', " "));
                }
            }
        })
        .context("starting the engine thread")?;
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
        println!("herd serve: {} at http://{local}/v1 (OpenAI API; Ctrl-C stops)", shared.served.model_id);
        use std::io::Write;
        let _ = std::io::stdout().flush();
        let sd = shared.clone();
        let failed = Arc::new(Mutex::new(None::<String>));
        let failed2 = failed.clone();
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                tokio::select! {
                    _ = shutdown_signal() => eprintln!("herd serve: shutting down"),
                    Ok(e) = failed_rx => *failed2.lock().unwrap_or_else(|p| p.into_inner()) = Some(e),
                }
                sd.shutting_down.store(true, Ordering::Relaxed);
            })
            .await?;
        let failed = failed.lock().unwrap_or_else(|p| p.into_inner()).take();
        Ok::<_, std::io::Error>(failed)
    });
    stop.store(true, Ordering::Relaxed);
    drop(rt);
    let _ = engine_thread.join();
    if let Some(e) = result.context("serving")? {
        anyhow::bail!("loading the model: {e}");
    }
    Ok(())
}
