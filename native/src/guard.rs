//! Llama Guard 4 next to a model (`herd run --guard`, `herd serve --guard`) and on its own (`herd guard`):
//! its files, its greedy request for a conversation, and the reading of its answer
//! ([`herd_core::guard`] has the conversation, the prompt and the verdict).

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use herd_core::backend::Backend;
use herd_core::chat::{ChatTemplate, Message};
use herd_core::guard::{self, Conversation, Policy, Verdict, MAX_ANSWER_TOKENS};
use herd_core::sampling::SamplingParams;
use herd_core::schedule::{GenerateParams, Request, Scheduler, SchedulerConfig};
use herd_core::tokenizer::Tokenizer;
use herd_core::vision::input::PlannedImage;
use herd_core::vision::preprocess::RgbImage;

use crate::files::{LoadOptions, ModelFiles};
use crate::fit::Need;
use crate::images::{Planner, Vision};

/// Tokens of answer between two checks of a streamed answer, unless `--guard-every` says otherwise.
pub const DEFAULT_EVERY: usize = 32;

/// The longest guard prompt (its template and the conversation), unless the guard's own context is shorter:
/// what its scheduler takes and the memory plan reserves. A longer conversation is refused, not let through.
pub const GUARD_CONTEXT: usize = 16384;

/// Checks the server's guard runs at once (its scheduler's sequences, reserved in the memory plan).
pub fn server_seqs(max_seqs: usize) -> usize {
    max_seqs.clamp(1, 4)
}

/// A guard model's files and settings: what is needed to turn a conversation into its request and its
/// answer into a verdict.
pub struct GuardFiles {
    pub files: ModelFiles,
    pub tok: Tokenizer,
    tmpl: ChatTemplate,
    pub policy: Policy,
    stop_ids: Vec<u32>,
    /// The tokens one check holds (its prompt and answer), and the longest prompt within it.
    pub context: usize,
    pub max_prompt: usize,
    /// How the guard's own processor plans images (Llama Guard 4 reads them with its vision tower), or why
    /// it cannot: a conversation with images is then refused, not checked without them.
    pub planner: std::result::Result<Planner, String>,
}

impl GuardFiles {
    /// Opens a guard's directory; `categories` is `--guard-categories` (None: all).
    pub fn open(dir: PathBuf, categories: Option<&str>) -> Result<GuardFiles> {
        let policy = match categories {
            Some(list) => Policy::only(list)?,
            None => Policy::all(),
        };
        let files = ModelFiles::new(Some(dir));
        let what = || format!("the guard model {}", files.describe());
        let cfg = files.config().with_context(what)?;
        let tok = files.tokenizer().with_context(what)?;
        let tmpl = files.chat_template().with_context(|| format!("{}: its chat template", what()))?;
        let gen = files.generation_config().with_context(what)?;
        let stop_ids =
            if gen.eos_token_ids.is_empty() { cfg.text.eos_token_ids.clone() } else { gen.eos_token_ids.clone() };
        let context = cfg.text.max_position_embeddings.min(GUARD_CONTEXT);
        let max_prompt = context.saturating_sub(MAX_ANSWER_TOKENS);
        let planner = Planner::new(&files, &tok).map_err(|e| format!("{e:#}").replace('\n', " "));
        Ok(GuardFiles { files, tok, tmpl, policy, stop_ids, context, max_prompt, planner })
    }

    /// The greedy request that asks the guard about the last turn of `conv` (from
    /// [`herd_core::guard::conversation`]), with the images it holds planned by the guard's processor
    /// (`images`: all the images of the messages `conv` was made from). A prompt longer than the guard's
    /// context is an error, and so are images for a guard that cannot read them.
    pub fn request(&self, conv: &Conversation, images: &[RgbImage]) -> Result<(Request, Vec<PlannedImage>)> {
        let ids = guard::prompt(&self.tmpl, &self.tok, &self.policy, conv)?;
        let (ids, planned) = match conv.images.is_empty() {
            true => (ids, Vec::new()),
            false => {
                let planner =
                    self.planner.as_ref().map_err(|e| anyhow::anyhow!("the guard cannot check images: {e}"))?;
                let mut picked = Vec::with_capacity(conv.images.len());
                for &i in &conv.images {
                    let im = images.get(i).with_context(|| format!("the guard was given no image {}", i + 1))?;
                    picked.push(im.clone());
                }
                planner.plan(&ids, picked, &[]).context("the guard's prompt")?
            }
        };
        if ids.len() > self.max_prompt {
            anyhow::bail!(
                "the conversation is too long for the guard: its prompt is {} tokens, the guard takes {}",
                ids.len(),
                self.max_prompt
            );
        }
        let params = GenerateParams {
            max_tokens: MAX_ANSWER_TOKENS,
            sampling: SamplingParams::default(),
            stop_ids: self.stop_ids.clone(),
        };
        Ok((Request::new(ids, params), planned))
    }

    /// The verdict in the guard's answer (its ids, stop id excluded).
    pub fn verdict(&self, ids: &[u32]) -> Result<Verdict> {
        let text = self.tok.decode(ids, true)?;
        guard::parse(&text).map_err(|e| anyhow::anyhow!(e))
    }

    /// Loads the guard's weights onto `backend` (see [`load`]), and its vision tower when `images` (a guard
    /// without one takes no images: [`GuardFiles::request`] refuses them).
    pub fn load<B: Backend>(
        &self,
        backend: Arc<B>,
        opts: &LoadOptions,
        seqs: usize,
        images: bool,
    ) -> Result<Loaded<B>> {
        let vision = match (&self.planner, images) {
            (Ok(p), true) => Some(Vision::load(&self.files, &backend, p).context("the guard's vision tower")?),
            _ => None,
        };
        let s = load(&self.files, self.context, backend.clone(), opts, seqs)?;
        Ok(Loaded { s, vision, backend, images_read: 0 })
    }

    /// The bytes the guard will hold on `backend` with `seqs` checks at once (its weights where the device
    /// holds them, its vision tower's too when it will read `images`, its KV cache, a step's activations): what the main model's memory plan leaves it. 0 where
    /// the memory is unknown; an error when the guard alone does not fit.
    pub fn reserve<B: Backend>(&self, backend: &B, opts: &LoadOptions, seqs: usize, images: bool) -> Result<usize> {
        let opts = LoadOptions { experts: None, ..opts.clone() };
        let vision = images && self.planner.is_ok();
        let context = Some(self.context);
        let need = Need { seqs, context, kept_slots: self.context, step_rows: 0, reserved: 0, vision };
        let plan = crate::fit::check(backend, &self.files, &opts, &need).context("the guard model")?;
        Ok(plan.map_or(0, |p| p.total(self.context)))
    }
}

/// Loads a guard's weights onto `backend` with the main model's load options (the guard is dense: an expert
/// cache does not apply) and a scheduler for `seqs` checks at once.
pub fn load<B: Backend>(
    files: &ModelFiles,
    context: usize,
    backend: Arc<B>,
    opts: &LoadOptions,
    seqs: usize,
) -> Result<Scheduler<B>> {
    let opts = LoadOptions { experts: None, ..opts.clone() };
    let (_, model) = files.load(backend, &opts).with_context(|| "loading the guard model")?;
    let sc = SchedulerConfig {
        max_seqs: seqs,
        max_batch_tokens: context.min(8192),
        max_queue: 1024,
        // What a stream's checks share (the conversation so far) is read once.
        prefix_cache_tokens: context,
        max_context: Some(context),
    };
    Ok(Scheduler::new(Arc::new(model), sc)?)
}

/// The guard loaded for the CLI: its scheduler, and its vision tower when it reads images.
pub struct Loaded<B: Backend> {
    pub s: Scheduler<B>,
    pub vision: Option<Vision<B>>,
    pub backend: Arc<B>,
    /// The images its checks have read.
    pub images_read: usize,
}

/// One check of the guard, to its end (the CLI's way; the server queues checks on an engine): `conv`'s
/// images are those of `images` it names.
pub fn check<B: Backend>(
    l: &mut Loaded<B>,
    g: &GuardFiles,
    conv: &Conversation,
    images: &[RgbImage],
) -> Result<Verdict> {
    let (req, planned) = g.request(conv, images)?;
    let encoded = match (&l.vision, planned.is_empty()) {
        (_, true) => None,
        (Some(v), false) => {
            let patch = g.planner.as_ref().map_err(|e| anyhow::anyhow!("{e}"))?.tokens.patch;
            let encoded = v.encode(&l.backend, &planned)?;
            l.images_read += encoded.len();
            Some(crate::text::images_of(patch, &encoded))
        }
        (None, false) => anyhow::bail!("the guard's vision tower is not loaded"),
    };
    let mut ids = Vec::new();
    crate::text::generate(&mut l.s, req, encoded, &mut |id| {
        ids.push(id);
        true
    })?;
    g.verdict(&ids)
}

/// `herd run`'s answer under a guard: text is printed once a check has passed it.
pub struct Guarded<'a, B: Backend> {
    pub g: &'a GuardFiles,
    pub l: Loaded<B>,
    /// The conversation answered, and its images.
    pub conv: Vec<Message>,
    pub images: Vec<RgbImage>,
    pub every: usize,
    /// The answer so far, and how much of it is printed.
    pub text: String,
    pub shown: usize,
    /// Tokens since the last check.
    pub since: usize,
    /// The verdict that stopped the answer.
    pub unsafe_: Option<Verdict>,
}

impl<B: Backend> Guarded<'_, B> {
    /// Checks the answer so far: prints what it passes and returns true, or keeps the verdict and returns
    /// false (a check that fails to run stops the answer too: it has not been found safe).
    pub fn check(&mut self) -> bool {
        self.since = 0;
        let conv = herd_core::guard::conversation(&self.conv, Some(&self.text));
        let v = check(&mut self.l, self.g, &conv, &self.images).unwrap_or_else(|e| Verdict {
            safe: false,
            categories: vec![format!("the check failed: {}", e.to_string().replace('\n', " "))],
        });
        if v.refuses(&self.g.policy) {
            self.unsafe_ = Some(v);
            return false;
        }
        print!("{}", &self.text[self.shown..]);
        self.shown = self.text.len();
        std::io::stdout().flush().is_ok()
    }
}

/// `herd guard`: the verdict on a prompt (and an answer to it), printed as the guard's own two lines:
/// `safe`, or `unsafe` and the categories, one per line with their names.
pub fn run<B: Backend>(backend: Arc<B>, g: &GuardFiles, a: &GuardCmd, opts: &LoadOptions) -> Result<Verdict> {
    let mut images = Vec::new();
    for p in &a.image {
        images.extend(crate::images::read_images(p, a.max_frames)?);
    }
    let user = Message::user_with_images(images.len(), a.prompt.as_str());
    let conv = guard::conversation(&[user], a.response.as_deref());
    g.request(&conv, &images)?; // the prompt's length, checked before anything loads
    let mut l = g.load(backend, opts, 1, !images.is_empty())?;
    let t0 = std::time::Instant::now();
    let v = check(&mut l, g, &conv, &images)?;
    let response = a.response.as_deref();
    let refused = v.refuses(&g.policy);
    println!("{}", if refused { "unsafe" } else { "safe" });
    for c in v.categories.iter().filter(|_| refused) {
        println!("{c}: {}", guard::category_name(c).unwrap_or("(not one of Llama Guard 4's categories)"));
    }
    let read = match l.images_read {
        0 => String::new(),
        1 => " with its image".into(),
        n => format!(" with its {n} images"),
    };
    eprintln!(
        "[{}{read} checked in {:.0} ms{}]",
        if response.is_some() { "the response" } else { "the prompt" },
        t0.elapsed().as_secs_f64() * 1e3,
        if !v.safe && !refused { "; unsafe only for categories --guard-categories leaves out" } else { "" }
    );
    Ok(v)
}

/// `herd guard`'s arguments.
#[derive(clap::Args)]
pub struct GuardCmd {
    /// The Llama Guard 4 model directory.
    #[arg(long)]
    pub model: PathBuf,
    #[command(flatten)]
    pub backend: crate::backend_arg::BackendArg,
    /// The user's message.
    #[arg(long)]
    pub prompt: String,
    /// A model's answer to it: the answer is then what is checked, with the prompt as its context.
    #[arg(long)]
    pub response: Option<String>,
    /// An image of the user's message (PNG, JPEG, WebP or GIF; an animated GIF or a folder of frames is a
    /// video), read by the guard's vision tower. Repeat for several.
    #[arg(long, value_name = "PATH")]
    pub image: Vec<PathBuf>,
    /// At most this many frames of a video, sampled evenly, each an image.
    #[arg(long, default_value_t = 8)]
    pub max_frames: usize,
    /// Check only these categories (comma-separated keys, e.g. S1,S9,S10; default all of S1..S14).
    #[arg(long, value_name = "LIST")]
    pub guard_categories: Option<String>,
}

/// The guard flags of `herd run` and `herd serve`.
#[derive(clap::Args, Clone, Debug)]
pub struct GuardArg {
    /// A Llama Guard 4 model directory, loaded next to the model on the same backend: the user's turn is
    /// checked before generation (an unsafe one is refused) and the answer as it is written (every
    /// --guard-every tokens and at its end; an unsafe answer is cut off where it was found).
    #[arg(long, value_name = "DIR")]
    pub guard: Option<PathBuf>,
    /// Check only these of the guard's categories (comma-separated keys, e.g. S1,S9,S10; default all of
    /// S1..S14). The others are left out of the guard's prompt, as its chat template's
    /// `excluded_category_keys`.
    #[arg(long, value_name = "LIST", requires = "guard")]
    pub guard_categories: Option<String>,
    /// Tokens of answer between two checks while it is written: text is shown only once a check has passed
    /// it, so a smaller N shows text sooner and costs more checks.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_EVERY)]
    pub guard_every: usize,
}

impl GuardArg {
    /// The guard's files, when one was asked for.
    pub fn open(&self) -> Result<Option<GuardFiles>> {
        if !(1..=1 << 20).contains(&self.guard_every) {
            anyhow::bail!("--guard-every {}: give a number of tokens from 1 to {}", self.guard_every, 1 << 20);
        }
        self.guard.clone().map(|d| GuardFiles::open(d, self.guard_categories.as_deref())).transpose()
    }
}
