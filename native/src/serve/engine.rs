//! The engine thread of `herd serve`: it owns the model through a [`Scheduler`], takes jobs from the HTTP
//! handlers, encodes their images with the vision tower, steps the scheduler while there is work, cancels
//! the requests whose client is gone, and keeps the metrics.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use herd_core::backend::Backend;
use herd_core::openai::ApiError;
use herd_core::schedule::{Event, Images, Request, RequestId, Scheduler};
use herd_core::vision::input::PlannedImage;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tokio::sync::{mpsc as tmpsc, oneshot};

use crate::images::Vision;

/// The server's metrics (Prometheus text at `/metrics`).
pub struct Metrics {
    registry: Registry,
    running: Gauge,
    waiting: Gauge,
    requests: Counter,
    prompt_tokens: Counter,
    cached_prompt_tokens: Counter,
    prefix_cache_tokens: Gauge,
    generated_tokens: Counter,
    finished: Counter,
    cancelled: Counter,
    failed: Counter,
    kv_tokens: Gauge,
    kv_bytes: Gauge,
    expert_hits: Gauge,
    expert_misses: Gauge,
    drafted_tokens: Counter,
    accepted_tokens: Counter,
    ttft: Histogram,
    itl: Histogram,
    /// Images given to the engine's vision tower with requests (encoded, or found among those it keeps).
    pub images: Counter,
    /// The same for the guard's engine: the images its checks read.
    pub guard_images: Counter,
    /// The guard's verdicts by stage (input, output) and verdict (safe, unsafe).
    pub guard_verdicts: Family<Vec<(String, String)>, Counter>,
    /// Categories of the guard's unsafe verdicts, by stage and category (S1..S14).
    pub guard_categories: Family<Vec<(String, String)>, Counter>,
    /// How long a check took, from asking to the verdict.
    pub guard_seconds: Histogram,
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut r = Registry::with_prefix("herd");
        fn add<M: prometheus_client::registry::Metric + Clone>(r: &mut Registry, name: &str, help: &str, m: M) -> M {
            r.register(name, help, m.clone());
            m
        }
        let (g, c) = (Gauge::default, Counter::default);
        let running = add(&mut r, "requests_running", "Requests in the running batch", g());
        let waiting = add(&mut r, "requests_waiting", "Requests waiting for a place in the batch", g());
        let requests = add(&mut r, "requests", "Requests accepted", c());
        let finished =
            add(&mut r, "requests_finished", "Requests ended by a stop token, a stop string or their budget", c());
        let cancelled = add(&mut r, "requests_cancelled", "Requests cancelled (client gone, or shutdown)", c());
        let failed = add(&mut r, "requests_failed", "Requests ended by an error of the model", c());
        let prompt_tokens = add(&mut r, "prompt_tokens", "Prompt tokens computed by the model", c());
        let cached_prompt_tokens =
            add(&mut r, "prefix_cache_hit_tokens", "Prompt tokens reused from the KV cache instead of computed", c());
        let prefix_cache_tokens =
            add(&mut r, "prefix_cache_tokens", "Tokens of ended requests kept in the KV cache for reuse", g());
        let generated_tokens = add(&mut r, "generation_tokens", "Tokens generated", c());
        let kv_tokens = add(&mut r, "kv_cache_tokens", "Tokens held in the KV cache by running requests", g());
        let kv_bytes = add(
            &mut r,
            "kv_cache_bytes",
            "Bytes of the KV-cache pages in use (a page shared by several sequences counts once)",
            g(),
        );
        let expert_hits = add(&mut r, "expert_cache_hits", "Routed experts found in the expert cache", g());
        let expert_misses = add(&mut r, "expert_cache_misses", "Routed expert lookups the expert cache missed", g());
        let drafted_tokens =
            add(&mut r, "spec_drafted_tokens", "Tokens drafted for speculative decoding and verified", c());
        let accepted_tokens =
            add(&mut r, "spec_accepted_tokens", "Drafted tokens the model kept (speculative decoding)", c());
        let ttft = add(
            &mut r,
            "time_to_first_token_seconds",
            "From submission to the first token",
            Histogram::new(exponential_buckets(0.001, 2.0, 18)),
        );
        let itl = add(
            &mut r,
            "inter_token_latency_seconds",
            "Between two tokens of one request",
            Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
        );
        let images = add(&mut r, "images", "Images read by the model's vision tower with requests", c());
        let guard_images =
            add(&mut r, "guard_images", "Images read by Llama Guard's vision tower with its checks", c());
        let guard_verdicts = add(
            &mut r,
            "guard_verdicts",
            "Llama Guard verdicts, by stage (input: the user's turn; output: the answer) and verdict",
            Family::default(),
        );
        let guard_categories = add(
            &mut r,
            "guard_unsafe_categories",
            "Categories (S1..S14) named by unsafe Llama Guard verdicts, by stage",
            Family::default(),
        );
        let guard_seconds = add(
            &mut r,
            "guard_check_seconds",
            "Time of one Llama Guard check, from asking to the verdict",
            Histogram::new(exponential_buckets(0.001, 2.0, 16)),
        );
        Metrics {
            registry: r,
            guard_verdicts,
            guard_categories,
            guard_seconds,
            images,
            guard_images,
            running,
            waiting,
            requests,
            prompt_tokens,
            cached_prompt_tokens,
            prefix_cache_tokens,
            generated_tokens,
            finished,
            cancelled,
            failed,
            kv_tokens,
            kv_bytes,
            expert_hits,
            expert_misses,
            drafted_tokens,
            accepted_tokens,
            ttft,
            itl,
        }
    }

    pub fn text(&self) -> String {
        let mut s = String::new();
        let _ = encode(&mut s, &self.registry);
        s
    }
}

/// A request for the engine thread: what to run (with its images, planned and not yet encoded), where its
/// events go, and where the answer to the submission itself goes (refused at once, or queued).
pub struct Job {
    pub req: Request,
    pub images: Vec<PlannedImage>,
    pub events: tmpsc::UnboundedSender<Event>,
    pub accepted: oneshot::Sender<Result<(), ApiError>>,
    /// Set when the answer needs no more tokens (a stop string): the request ends like a cancelled one.
    pub stop: Arc<AtomicBool>,
}

/// The model's vision tower and the id of the tokens its rows replace.
pub struct Eyes<B: Backend> {
    pub vision: Vision<B>,
    pub backend: Arc<B>,
    pub patch: u32,
}

/// Encodes a job's images (none: no images), counted in `read`.
fn encode_images<B: Backend>(
    eyes: Option<&Eyes<B>>,
    images: &[PlannedImage],
    read: &Counter,
) -> Result<Option<Images<B>>, ApiError> {
    if images.is_empty() {
        return Ok(None);
    }
    let Some(e) = eyes else {
        return Err(ApiError::bad("this model has no vision tower", Some("messages")));
    };
    let encoded = e
        .vision
        .encode(&e.backend, images)
        .map_err(|err| ApiError::new(500, "server_error", "vision_failed", format!("encoding the images: {err:#}")))?;
    read.inc_by(encoded.len() as u64);
    let keys = encoded.iter().map(|x| x.key).collect();
    Ok(Some(Images { patch: e.patch, rows: encoded.into_iter().map(|x| (x.rows, x.n)).collect(), keys }))
}

/// The engine thread: takes jobs, steps the scheduler while there is work, cancels requests whose client
/// is gone, and keeps the gauges up to date. Ends when every sender is gone or at shutdown (cancelling
/// what runs).
pub fn engine<B: Backend>(
    mut s: Scheduler<B>,
    eyes: Option<Eyes<B>>,
    jobs: mpsc::Receiver<Job>,
    metrics: Arc<Metrics>,
    stop: Arc<AtomicBool>,
) {
    let mut live: HashMap<RequestId, (tmpsc::UnboundedSender<Event>, Arc<AtomicBool>)> = HashMap::new();
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
        // Answered once the metrics count them: a client told its request is accepted finds it there.
        let mut replies = Vec::new();
        for job in first.into_iter().chain(std::iter::from_fn(|| jobs.try_recv().ok())) {
            let events = job.events.clone();
            let halt = job.stop.clone();
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
                events.send(e).is_ok() && !halt.load(Ordering::Relaxed)
            });
            let submitted = encode_images(eyes.as_ref(), &job.images, &metrics.images)
                .and_then(|images| s.submit_with_images(job.req, images, sink).map_err(ApiError::from));
            match submitted {
                Ok(id) => {
                    metrics.requests.inc();
                    live.insert(id, (job.events, job.stop));
                    replies.push((job.accepted, Ok(())));
                }
                Err(e) => replies.push((job.accepted, Err(e))),
            }
        }
        if !replies.is_empty() {
            publish(&s, &metrics, &mut seen);
            for (to, r) in replies {
                let _ = to.send(r);
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
            if tx.0.is_closed() || tx.1.load(Ordering::Relaxed) {
                s.cancel(id);
                false
            } else {
                true
            }
        });
        // What was accepted and cancelled shows before the step, which may be long.
        publish(&s, &metrics, &mut seen);
        if let Err(e) = crate::backend_arg::step(&mut s) {
            eprintln!("herd serve: a step failed: {}", e.to_string().replace('\n', " "));
        }
        publish(&s, &metrics, &mut seen);
    }
}

/// Brings the metrics up to date with the scheduler (`seen`: its counters when last published).
fn publish<B: Backend>(s: &Scheduler<B>, metrics: &Metrics, seen: &mut herd_core::schedule::SchedulerStats) {
    let now = s.stats();
    metrics.prompt_tokens.inc_by(now.prompt_tokens - seen.prompt_tokens);
    metrics.cached_prompt_tokens.inc_by(now.cached_prompt_tokens - seen.cached_prompt_tokens);
    metrics.generated_tokens.inc_by(now.generated_tokens - seen.generated_tokens);
    metrics.finished.inc_by(now.finished - seen.finished);
    metrics.cancelled.inc_by(now.cancelled - seen.cancelled);
    metrics.failed.inc_by(now.failed - seen.failed);
    metrics.drafted_tokens.inc_by(now.drafted_tokens - seen.drafted_tokens);
    metrics.accepted_tokens.inc_by(now.accepted_tokens - seen.accepted_tokens);
    *seen = now;
    let (running, waiting) = s.load();
    metrics.running.set(running as i64);
    metrics.waiting.set(waiting as i64);
    metrics.kv_tokens.set(s.cached_tokens() as i64);
    metrics.prefix_cache_tokens.set(s.kept_tokens() as i64);
    metrics.kv_bytes.set(s.cache_bytes() as i64);
    if let Some(x) = s.model().expert_stats() {
        metrics.expert_hits.set(x.hits as i64);
        metrics.expert_misses.set(x.lookups.saturating_sub(x.hits) as i64);
    }
}
