//! `herd serve --guard`: Llama Guard 4 on its own engine thread (its own scheduler and KV cache, on the main
//! model's backend), asked about the user's turn before a request is queued and about the answer as it is
//! written. An unsafe user turn is refused with 400 (`code: content_filter`, the categories in the message);
//! an unsafe answer ends with `finish_reason: "content_filter"` where the check found it, and its unchecked
//! text is never sent: a stream's text is released only once a check has passed it (every
//! `--guard-every` tokens, and at the end). The guard reads a request's images with its own vision tower.

use std::sync::atomic::AtomicBool;
use std::sync::{mpsc, Arc, Mutex};
use std::time::Instant;

use anyhow::{Context, Result};
use herd_core::backend::Backend;

use herd_core::chat::Message;
use herd_core::guard::{self, Conversation, Verdict};
use herd_core::openai::ApiError;
use herd_core::schedule::Event;
use herd_core::vision::preprocess::RgbImage;

use super::engine::{engine, Eyes, Job, Metrics};
use super::Shared;
use crate::files::{LoadOptions, ModelFiles};
use crate::guard::GuardFiles;
use crate::images::{Planner, Vision};

/// The guard as the handlers see it: its files, how often a stream is checked, and its engine's queue.
pub struct GuardClient {
    pub files: GuardFiles,
    pub every: usize,
    pub jobs: Mutex<mpsc::Sender<Job>>,
}

/// What the guard's engine thread loads: the guard's files, the tokens a check holds, and whether it reads
/// images (when the model takes them and the guard has a vision tower).
pub struct GuardEngine {
    pub files: ModelFiles,
    pub context: usize,
    pub eyes: bool,
}

impl GuardEngine {
    /// Starts the guard's engine thread (a scheduler of `seqs` checks at once, taking `jobs`) and waits until
    /// it has loaded; its error when it could not.
    pub fn start<B: Backend>(
        self,
        backend: Arc<B>,
        opts: &LoadOptions,
        seqs: usize,
        jobs: mpsc::Receiver<Job>,
        stop: Arc<AtomicBool>,
        images: prometheus_client::metrics::counter::Counter,
    ) -> Result<()> {
        let opts = opts.clone();
        let (loaded_tx, loaded_rx) = mpsc::channel::<Result<()>>();
        let load = move || -> Result<_> {
            let eyes = match self.eyes {
                true => {
                    let planner = Planner::new(&self.files, &self.files.tokenizer()?)?;
                    let vision = Vision::load(&self.files, &backend, &planner).context("the guard's vision tower")?;
                    Some(Eyes { vision, backend: backend.clone(), patch: planner.tokens.patch })
                }
                false => None,
            };
            Ok((crate::guard::load(&self.files, self.context, backend, &opts, seqs)?, eyes))
        };
        std::thread::Builder::new()
            .name("herd-guard".into())
            .spawn(move || match load() {
                Ok((s, eyes)) => {
                    let _ = loaded_tx.send(Ok(()));
                    // The guard's own metrics, but for the images it reads: the server's guard_images.
                    let mut metrics = Metrics::new();
                    metrics.images = images;
                    engine(s, eyes, jobs, Arc::new(metrics), stop)
                }
                Err(e) => {
                    let _ = loaded_tx.send(Err(e));
                }
            })
            .context("starting the guard's engine thread")?;
        loaded_rx.recv().context("the guard's engine thread ended")?
    }
}

#[derive(Clone, Copy)]
pub enum Stage {
    Input,
    Output,
}

impl Stage {
    fn name(self) -> &'static str {
        match self {
            Stage::Input => "input",
            Stage::Output => "output",
        }
    }
}

/// What the guard checks a request in: its messages and their images (decoded, in the order of their parts).
#[derive(Clone, Default)]
pub struct Checked {
    pub messages: Vec<Message>,
    pub images: Arc<Vec<RgbImage>>,
}

/// Asks the guard about the last turn of `conv` (from [`guard::conversation`], its images among `images`);
/// counts the verdict.
pub async fn check(
    sh: &Shared,
    g: &GuardClient,
    conv: &Conversation,
    images: &[RgbImage],
    stage: Stage,
) -> Result<Verdict, ApiError> {
    let t0 = Instant::now();
    let (req, planned) =
        g.files.request(conv, images).map_err(|e| ApiError::bad(format!("{e:#}"), Some("messages")))?;
    let (mut rx, _halt) = super::respond::submit_to(sh, &g.jobs, req, planned).await?;
    let failed = |m: String| ApiError::new(500, "server_error", "guard_failed", format!("the guard: {m}"));
    let mut ids = Vec::new();
    loop {
        match rx.recv().await {
            Some(Event::Token(t)) => ids.push(t.id),
            Some(Event::Done(f)) => match f.reason {
                Err(e) => return Err(failed(e)),
                Ok(_) => break,
            },
            None => return Err(failed("its engine has stopped".into())),
        }
    }
    let v = g.files.verdict(&ids).map_err(|e| failed(format!("{e:#}")))?;
    let m = &sh.metrics;
    m.guard_seconds.observe(t0.elapsed().as_secs_f64());
    let label =
        |k: &str, v: &str| vec![("stage".to_string(), stage.name().to_string()), (k.to_string(), v.to_string())];
    m.guard_verdicts.get_or_create(&label("verdict", if v.safe { "safe" } else { "unsafe" })).inc();
    for c in &v.categories {
        m.guard_categories.get_or_create(&label("category", c)).inc();
    }
    Ok(v)
}

/// The check before a request is queued: an unsafe user turn is refused.
pub async fn check_input(sh: &Shared, c: &Checked) -> Result<(), ApiError> {
    let Some(g) = &sh.guard else { return Ok(()) };
    let conv = guard::conversation(&c.messages, None);
    if conv.is_empty() {
        return Ok(());
    }
    let v = check(sh, g, &conv, &c.images, Stage::Input).await?;
    if v.refuses(&g.files.policy) {
        let mut e = ApiError::new(
            400,
            "invalid_request_error",
            "content_filter",
            format!("the guard found the request unsafe: {}", v.describe()),
        );
        e.param = Some("messages");
        return Err(e);
    }
    Ok(())
}

/// An answer under the guard: the conversation it answers, and how far it has been checked.
pub struct Gate {
    base: Checked,
    every: usize,
    /// Tokens since the last check, and the length of the text it passed.
    since: usize,
    checked: usize,
    /// The verdict that stopped the answer.
    pub stopped: Option<Verdict>,
}

impl Gate {
    /// The gate of a request's answer; None without a guard.
    pub fn new(sh: &Shared, base: Option<Checked>) -> Option<Gate> {
        let g = sh.guard.as_ref()?;
        Some(Gate { base: base.unwrap_or_default(), every: g.every, since: 0, checked: 0, stopped: None })
    }

    /// One more token: whether the answer is due for a check.
    pub fn due(&mut self) -> bool {
        self.since += 1;
        self.since >= self.every
    }

    /// Checks the answer so far (all of its text, `answer`): true when it may be shown. A check that fails
    /// to run stops the answer too, as unsafe: it has not been found safe.
    pub async fn pass(&mut self, sh: &Shared, answer: &str) -> bool {
        self.since = 0;
        let Some(g) = &sh.guard else { return true };
        if answer.trim().is_empty() || (answer.len() == self.checked && self.stopped.is_none()) {
            return self.stopped.is_none();
        }
        let conv = guard::conversation(&self.base.messages, Some(answer));
        let v = match check(sh, g, &conv, &self.base.images, Stage::Output).await {
            Ok(v) => v,
            Err(e) => Verdict { safe: false, categories: vec![format!("(the check failed: {})", e.message)] },
        };
        if v.refuses(&g.files.policy) {
            self.stopped = Some(v);
            return false;
        }
        self.checked = answer.len();
        true
    }
}
