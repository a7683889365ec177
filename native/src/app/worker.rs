//! The thread that owns the model in `herd app`: it loads it (telling the window how far it got), then
//! answers the window's messages one turn at a time through a [`Conversation`] (the generation scheduler),
//! sending back each piece of the answer with the experts the step's routers picked and the live figures.
//! The window never waits for it.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;
use eframe::egui;
use herd_core::backend::Backend;
use herd_core::experts::ExpertCacheOptions;
use herd_core::sampling::SamplingParams;
use herd_core::schedule::GenerateParams;

use crate::conversation::Conversation;
use crate::files::{LoadOptions, ModelFiles};
use crate::fit::Need;

/// What the window asks of the model.
pub enum Ask {
    /// Answer this message with these settings.
    Send { text: String, params: Settings },
    /// Attach the image(s) at this path to the next message.
    Attach(PathBuf),
    /// Forget the conversation.
    NewChat,
}

/// The sampling settings the window shows.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    pub temperature: f32,
    pub top_p: f32,
    pub top_k: usize,
    pub seed: Option<u64>,
    pub max_tokens: usize,
}

/// What the model has to say to the window.
pub enum Told {
    /// Layers loaded so far, of this many.
    Loading(usize, usize),
    Loaded(Box<Loaded>),
    /// The model could not load: the window shows why and stays open.
    LoadFailed(String),
    /// A piece of the answer, with the step's expert picks (per MoE layer, rows × k; empty when the step
    /// read none) and the figures after it.
    Piece {
        text: String,
        picks: Vec<(usize, Vec<u32>)>,
        live: Live,
    },
    /// The turn is over (stopped, at its end, or out of tokens).
    Done {
        live: Live,
        note: Option<String>,
    },
    /// The turn could not run (the message is kept in the box).
    Failed(String),
    /// Images attached to the next message now, or why the last ones could not be.
    Attached(Result<usize, String>),
}

/// What the window shows about the model once loaded.
pub struct Loaded {
    pub model: String,
    pub backend: String,
    /// The GPU's limits, where the backend has them.
    pub limits: Option<String>,
    pub context: usize,
    /// MoE layers (the routing view's rows) and experts per layer (its columns), picks per row.
    pub moe_layers: Vec<usize>,
    pub experts: usize,
    pub top_k: usize,
    /// Bytes of the weights kept resident, and of the routed experts (held by the expert cache).
    pub weight_bytes: usize,
    pub settings: Settings,
}

/// Figures of the running turn and of the model's memory.
#[derive(Clone, Debug, Default)]
pub struct Live {
    pub prompt_tokens: usize,
    pub cached_tokens: usize,
    pub generated: usize,
    pub prefill_tps: f64,
    pub decode_tps: f64,
    pub kv_bytes: usize,
    pub expert_cache_bytes: u64,
    pub expert_lookups: u64,
    pub expert_hits: u64,
    pub expert_bytes_moved: u64,
}

/// The model's side of `herd app`.
pub struct Worker<B: Backend> {
    pub backend: Arc<B>,
    pub files: ModelFiles,
    pub opts: LoadOptions,
    pub system: Option<String>,
    /// The sampling flags: what they leave unset comes from the model's generation_config.json.
    pub flags: crate::SamplingArgs,
    pub max_frames: usize,
    pub limits: Option<String>,
    pub stop: Arc<AtomicBool>,
    pub ctx: egui::Context,
    /// The least time between two frames that show new pieces of an answer.
    pub repaint: std::time::Duration,
}

impl<B: Backend + 'static> Worker<B> {
    /// Loads the model and answers `asks` until the window hangs up.
    pub fn run(self, asks: Receiver<Ask>, told: Sender<Told>) {
        let say = |t: Told| {
            // Pieces of an answer are shown at most every `self.repaint`: a fast model does not keep the
            // window drawing (on a CPU adapter, drawing takes the cores the model computes on).
            let piece = matches!(t, Told::Piece { .. });
            let _ = told.send(t);
            match piece {
                true => self.ctx.request_repaint_after(self.repaint),
                false => self.ctx.request_repaint(),
            }
        };
        let (mut conv, stop_ids, sampling) = match self.load(&say) {
            Ok(c) => c,
            Err(e) => return say(Told::LoadFailed(crate::one_line(&e))),
        };
        for ask in asks {
            match ask {
                Ask::NewChat => conv.reset(),
                Ask::Attach(path) => {
                    let got = crate::images::read_images(&path, self.max_frames).and_then(|f| conv.attach(f));
                    say(Told::Attached(got.map_err(|e| crate::one_line(&e))));
                }
                Ask::Send { text, params } => self.turn(&mut conv, &text, &params, sampling, &stop_ids, &say),
            }
        }
    }

    fn load(&self, say: &dyn Fn(Told)) -> Result<(Conversation<B>, Vec<u32>, SamplingParams)> {
        let sampling = crate::text::sampling(&self.files, &self.flags)?;
        crate::fit::check(
            &*self.backend,
            &self.files,
            &self.opts,
            &Need { seqs: 1, context: None, kept_slots: 0, step_rows: 0, reserved: 0, vision: false },
        )?;
        // The routing view needs each step's picks: the experts go through an expert cache that reads them
        // (holding every expert unless --expert-cache says less; then it streams as it would anyway).
        let mut opts = self.opts.clone();
        if self.files.config()?.text.moe_layers.iter().any(|&m| m) {
            let cache = opts.experts.take().unwrap_or(ExpertCacheOptions::new(u64::MAX / 4));
            opts.experts = Some(ExpertCacheOptions { trace_picks: true, ..cache });
        }
        let (cfg, model) = self.files.load_with_progress(self.backend.clone(), &opts, &mut |d, n| {
            say(Told::Loading(d, n));
        })?;
        let stop_ids = crate::text::stop_ids(&self.files, &cfg.text.eos_token_ids)?;
        let (_, all, experts) = crate::plan::checkpoint_weight_bytes(&self.files)?;
        let t = &cfg.text;
        let moe_layers = (0..t.num_hidden_layers).filter(|&i| t.moe_layers.get(i) == Some(&true)).collect();
        let loaded = Loaded {
            model: self.files.describe(),
            backend: self.backend.name(),
            limits: self.limits.clone(),
            context: t.max_position_embeddings,
            moe_layers,
            experts: t.num_local_experts,
            top_k: t.num_experts_per_tok.max(1),
            weight_bytes: if self.opts.experts.is_some() { all - experts } else { all },
            settings: Settings {
                temperature: sampling.temperature,
                top_p: sampling.top_p,
                top_k: sampling.top_k,
                seed: sampling.seed,
                max_tokens: self.flags.max_tokens,
            },
        };
        let conv = Conversation::new(self.backend.clone(), &self.files, model, self.system.as_deref())?;
        yield_to_the_window();
        say(Told::Loaded(Box::new(loaded)));
        Ok((conv, stop_ids, sampling))
    }

    fn turn(
        &self,
        conv: &mut Conversation<B>,
        text: &str,
        s: &Settings,
        mut sampling: SamplingParams,
        stop_ids: &[u32],
        say: &dyn Fn(Told),
    ) {
        // The window clears `stop` when it sends: a Stop pressed right after Send is not lost here.
        yield_to_the_window();
        (sampling.temperature, sampling.top_p, sampling.top_k, sampling.seed) =
            (s.temperature, s.top_p, s.top_k, s.seed);
        if let Err(e) = sampling.validate() {
            return say(Told::Failed(e.to_string()));
        }
        let params = GenerateParams { max_tokens: s.max_tokens, sampling, stop_ids: stop_ids.to_vec() };
        let model = conv.model().clone();
        let mut first: Option<Instant> = None;
        let mut generated = 0usize;
        let mut live = Live::default();
        let kv_of = |c: &Conversation<B>| c.scheduler().cache_bytes();
        let kv_before = kv_of(conv);
        let mut on_text = |piece: &str| {
            let now = Instant::now();
            generated += 1;
            let f = *first.get_or_insert(now);
            live.generated = generated;
            live.prefill_tps = 0.0;
            if generated > 1 {
                live.decode_tps = (generated - 1) as f64 / now.duration_since(f).as_secs_f64().max(1e-9);
            }
            fill_experts(&mut live, &model);
            live.kv_bytes = kv_before;
            say(Told::Piece { text: piece.to_string(), picks: model.expert_picks(), live: live.clone() });
            !self.stop.load(Ordering::SeqCst)
        };
        let result = conv.say(text, &params, &mut on_text);
        match result {
            Ok(turn) => {
                let f = &turn.finish;
                let mut live = Live {
                    prompt_tokens: f.prompt_tokens,
                    cached_tokens: f.cached_tokens,
                    generated: f.generated_tokens,
                    prefill_tps: f.prefill_tps(),
                    decode_tps: f.decode_tps(),
                    kv_bytes: kv_of(conv),
                    ..Live::default()
                };
                fill_experts(&mut live, conv.model());
                let note = (turn.dropped > 0).then(|| {
                    format!(
                        "The conversation no longer fit the model's context of {} tokens: the oldest {} messages \
                         were dropped.",
                        conv.context(),
                        turn.dropped
                    )
                });
                say(Told::Done { live, note });
            }
            Err(e) => say(Told::Failed(crate::one_line(&e))),
        }
    }
}

fn fill_experts<B: Backend>(live: &mut Live, model: &herd_core::model::Llama4<B>) {
    if let Some(s) = model.expert_stats() {
        (live.expert_cache_bytes, live.expert_lookups, live.expert_hits, live.expert_bytes_moved) =
            (s.capacity, s.lookups, s.hits, s.bytes_moved);
    }
}

/// Lowers the priority of the threads that compute for the model (this worker, the CPU backend's pool, the
/// expert prefetcher) below the window's, so that where they share the cores (the CPU backend; a window drawn by
/// a CPU adapter, whose threads are not ours) the window is drawn first and the model takes what is left. Run
/// after the model loads and before each answer, so threads started since are caught too. Linux only: other
/// systems keep every thread at one priority.
fn yield_to_the_window() {
    #[cfg(target_os = "linux")]
    {
        const NICE: libc::c_int = 10;
        let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return };
        for t in tasks.flatten() {
            let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
            let ours = ["herd-model", "herd-cpu-", "herd-expert"].iter().any(|p| comm.starts_with(p));
            let Some(tid) = t.file_name().to_str().and_then(|s| s.parse::<libc::id_t>().ok()) else { continue };
            if ours {
                // SAFETY: setpriority takes plain integers; on Linux `who` under PRIO_PROCESS is a thread id.
                // A refusal (e.g. a sandbox) only leaves the thread where it was.
                unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, NICE) };
            }
        }
    }
}
