//! `herd`: run Meta's Llama 4 models. Subcommands: run, chat, app, serve, inspect, logits, greedy, bench,
//! bench-serve, quantize, serve-web, web-manifest.

mod app;
mod backend_arg;
mod bench;
mod bench_batch;
mod bench_constrain;
mod bench_context;
mod bench_serve;
mod bench_spec;
mod bench_vision;
mod conversation;
mod files;
mod fit;
mod guard;
mod ids_io;
mod images;
mod inspect;
mod plan;
mod quantize;
mod serve;
mod serve_web;
mod speculate;
mod synthetic;
mod text;

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Result};
use clap::{Args, Parser, Subcommand};
use herd_core::cpu::CpuBackend;

use backend_arg::{choose_backend, BackendArg, Chosen};

use bench::BenchArgs;
use files::ModelFiles;

/// The system allocator, with the memory budget that a chat template's render runs under
/// (`herd_core::limits::with_memory_budget`).
#[global_allocator]
static ALLOC: herd_core::limits::BudgetedAlloc = herd_core::limits::BudgetedAlloc;

#[derive(Parser)]
#[command(
    name = "herd",
    version,
    about = "Run Meta's Llama 4 models (Scout, Maverick, Llama Guard 4) from their published checkpoints"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Generate text from a prompt, streamed to stdout (speeds to stderr).
    Run(RunArgs),
    /// Interactive multi-turn chat in the terminal.
    Chat(TextArgs),
    /// A desktop chat window: the answer streaming in, images by drag and drop, sampling settings, and live
    /// views of the experts each layer picks, speed, the expert cache and memory.
    App(app::AppArgs),
    /// Describe a model: layers, heads, experts, parameters, bytes, KV cache per token.
    Inspect(ModelArg),
    /// Logits for each row of `input_ids` in a safetensors file.
    Logits(LogitsArgs),
    /// Greedy continuation of each row of `input_ids` in a safetensors file.
    Greedy(GreedyArgs),
    /// Measure prefill and decode speed and peak memory.
    Bench(BenchArgs),
    /// Plan a model's memory on a device: weights, expert cache, activations, the KV cache of chunked and
    /// global layers, and the longest context that fits (or what --context needs). Loads nothing.
    Plan(PlanArgs),
    /// Write a quantized copy of a model directory (int4 or int8, group-wise), loadable like any other.
    Quantize(QuantizeArgs),
    /// Serve a model over HTTP with the OpenAI API (chat and text completions, streaming), many requests at
    /// once (continuous batching).
    Serve(ServeArgs),
    /// Load-test an OpenAI-compatible server: request and token throughput, time to first token and
    /// inter-token latency (p50, p99), errors.
    BenchServe(bench_serve::Options),
    /// Serve the browser demo (web/www, built by scripts/build-web.sh) and a model, with range requests.
    ServeWeb(ServeWebArgs),
    /// Write herd-manifest.json into a model directory: the checksums the browser demo verifies ranges by.
    WebManifest(WebManifestArgs),
    /// Ask Llama Guard 4 whether a prompt (or an answer to it) is safe: prints `safe`, or `unsafe` and the
    /// violated categories one per line. Exit status 0 when safe, 3 when unsafe, 1 on an error.
    Guard(guard::GuardCmd),
}

#[derive(Args)]
struct ServeArgs {
    #[command(flatten)]
    model: ModelArg,
    #[command(flatten)]
    backend: BackendArg,
    /// The address to listen on (loopback unless told otherwise).
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// 0 picks a free port (the URL printed says which).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Requests generating at once (the rest wait).
    #[arg(long, default_value_t = 16)]
    max_seqs: usize,
    /// Tokens one step feeds the model at most: every running request's next token, then pieces of prompts.
    #[arg(long, default_value_t = 512)]
    max_batch_tokens: usize,
    /// Requests waiting for a place; past it, requests are refused with 429 and Retry-After.
    #[arg(long, default_value_t = 256)]
    max_queue: usize,
    /// Tokens of ended requests kept in the KV cache so that later prompts starting the same way (a chat's
    /// earlier turns, a shared system prompt) reuse them; least recently used first out. Prompts also reuse
    /// what running requests hold. 0 turns prefix reuse off.
    #[arg(long, default_value_t = 8192)]
    prefix_cache_tokens: usize,
    /// Require `Authorization: Bearer KEY` on /v1 routes and /metrics (also from $HERD_API_KEY).
    #[arg(long, value_name = "KEY")]
    api_key: Option<String>,
    /// The largest request body, in bytes.
    #[arg(long, default_value_t = 16 << 20)]
    body_limit: usize,
    /// The most tokens one request may hold, prompt and generated. Default: the longest context with which
    /// --max-seqs requests and the prefix cache fit the device's memory (see `herd plan`), at most the model's.
    #[arg(long, value_name = "TOKENS")]
    max_context: Option<usize>,
    /// The memory to plan against (e.g. 80GB) instead of what the device has free.
    #[arg(long, value_name = "SIZE")]
    device_memory: Option<String>,
    #[command(flatten)]
    guard: guard::GuardArg,
    #[command(flatten)]
    speculate: speculate::SpecArgs,
}

#[derive(Args)]
struct ServeWebArgs {
    #[command(flatten)]
    model: ModelArg,
    /// The page's directory (default: web/www in this source tree).
    #[arg(long)]
    www: Option<PathBuf>,
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// 0 picks a free port (the URL printed says which).
    #[arg(long, default_value_t = 8080)]
    port: u16,
}

#[derive(Args)]
struct WebManifestArgs {
    /// The model directory to write it into.
    #[arg(long)]
    model: PathBuf,
}

#[derive(Args)]
struct QuantizeArgs {
    /// The model directory to read.
    #[arg(long)]
    model: PathBuf,
    /// The directory to write (must not exist, or be empty).
    #[arg(long)]
    out: PathBuf,
    /// q4 or q8 (a group size may be given as q4g32).
    #[arg(long, value_name = "q4|q8")]
    format: String,
    /// Elements per scale along each matrix's input axis (default 128; 32 is finer).
    #[arg(long)]
    group: Option<u32>,
    /// Parts to keep unquantized, comma-separated: attention, embed, shared, lm_head, experts, or any part of
    /// a tensor name. Norms and routers are never quantized.
    #[arg(long, value_delimiter = ',', value_name = "PARTS")]
    keep_bf16: Vec<String>,
}

#[derive(Args)]
struct ModelArg {
    /// Model directory (config.json, *.safetensors, tokenizer files). Default: the built-in demo model.
    #[arg(long)]
    model: Option<PathBuf>,
}

/// Sampling flags; unset ones come from the model's generation_config.json.
#[derive(Args, Clone)]
pub struct SamplingArgs {
    /// Maximum tokens to generate.
    #[arg(long, default_value_t = 256)]
    max_tokens: usize,
    /// Softmax temperature; 0 means greedy.
    #[arg(long)]
    temperature: Option<f32>,
    /// Keep only the k most likely tokens (0: off).
    #[arg(long)]
    top_k: Option<usize>,
    /// Nucleus sampling: keep the smallest set with this total probability (1: off).
    #[arg(long)]
    top_p: Option<f32>,
    /// Drop tokens whose probability is below min_p times the top one (0: off).
    #[arg(long)]
    min_p: Option<f32>,
    /// Penalise tokens already seen (1: off).
    #[arg(long)]
    repetition_penalty: Option<f32>,
    /// Random seed, for repeatable sampling (in `chat`, turn N samples with the seed plus N).
    #[arg(long)]
    seed: Option<u64>,
}

/// What `run` and `chat` share.
#[derive(Args)]
struct TextArgs {
    #[command(flatten)]
    model: ModelArg,
    /// System message (for `run`, implies --chat).
    #[arg(long)]
    system: Option<String>,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// An animated GIF or a folder of frames given as an image is a video: at most this many frames,
    /// sampled evenly, each given to the model as an image.
    #[arg(long, default_value_t = 8)]
    max_frames: usize,
    #[command(flatten)]
    backend: BackendArg,
    /// The memory to plan against (e.g. 20GiB) instead of what the device has free: the model, its KV cache
    /// and activations must fit or nothing loads (see `herd plan`).
    #[arg(long, value_name = "SIZE")]
    device_memory: Option<String>,
}

#[derive(Args)]
struct RunArgs {
    /// The prompt.
    #[arg(long)]
    prompt: String,
    /// An image for the prompt (PNG, JPEG, WebP or GIF; an animated GIF or a folder of frames is a video).
    /// Repeat for several. With --chat they come before the text of the user message; without, they come
    /// first after the start of the text, or where the prompt has `<|image|>` placeholders, one per image.
    #[arg(long, value_name = "PATH")]
    image: Vec<PathBuf>,
    /// Wrap the prompt in the model's chat template as a user message.
    #[arg(long)]
    chat: bool,
    /// Print the expert cache's statistics (hits, misses, bytes moved, time waited) after generating.
    #[arg(long)]
    stats: bool,
    /// Constrain the output to JSON valid under this JSON schema (a file; compiled by llguidance: a keyword it
    /// does not support is an error before anything loads).
    #[arg(long, value_name = "FILE", conflicts_with = "grammar")]
    json_schema: Option<PathBuf>,
    /// Constrain the output to this grammar (a file in llguidance's Lark syntax).
    #[arg(long, value_name = "FILE")]
    grammar: Option<PathBuf>,
    #[command(flatten)]
    guard: guard::GuardArg,
    #[command(flatten)]
    speculate: speculate::SpecArgs,
    #[command(flatten)]
    text: TextArgs,
}

#[derive(Args)]
struct LogitsArgs {
    /// Model directory (config.json and safetensors; no tokenizer needed).
    #[arg(long)]
    model: PathBuf,
    /// safetensors file with `input_ids` (int64 or int32 [B, T]) and, for a model with a vision tower,
    /// optionally `pixel_values` (float32 [tiles, 3, H, W], as the reference processor makes them): the
    /// tiles' rows replace the `<|patch|>` tokens' embeddings, in order across the rows.
    #[arg(long)]
    input: PathBuf,
    /// Output safetensors file; gets `logits` (float32 [B, T, V]).
    #[arg(long)]
    output: PathBuf,
    /// Feed the tokens one at a time through the KV cache instead of one prefill.
    #[arg(long)]
    decode: bool,
    #[command(flatten)]
    backend: BackendArg,
}

#[derive(Args)]
struct GreedyArgs {
    /// Model directory (config.json and safetensors; no tokenizer needed).
    #[arg(long)]
    model: PathBuf,
    /// safetensors file with `input_ids` (int64 or int32 [B, T]).
    #[arg(long)]
    input: PathBuf,
    /// Tokens to generate per row (no stop tokens).
    #[arg(long)]
    max_tokens: usize,
    /// Output safetensors file; gets `greedy_ids` (int64 [B, N]).
    #[arg(long)]
    output: PathBuf,
    #[command(flatten)]
    speculate: speculate::SpecArgs,
    #[command(flatten)]
    backend: BackendArg,
}

#[derive(Args)]
pub struct PlanArgs {
    #[command(flatten)]
    model: ModelArg,
    /// Plan the published shapes of scout, maverick or guard (or tiny) instead of --model.
    #[arg(long, value_name = "NAME", conflicts_with = "model")]
    synthetic: Option<String>,
    /// With --synthetic: layers (default: the published 48; tiny: 2).
    #[arg(long)]
    layers: Option<usize>,
    /// With --synthetic: the weight format: bf16 (default), f16, f32, or quantized q4, q8, q4g32...
    #[arg(long, value_name = "FORMAT")]
    quant: Option<String>,
    /// The device's memory, e.g. 80GB, 24GiB.
    #[arg(long, value_name = "SIZE")]
    device_memory: String,
    /// Check this context (tokens per sequence) instead of only finding the longest that fits.
    #[arg(long, value_name = "TOKENS")]
    context: Option<usize>,
    /// Sequences held at once.
    #[arg(long, default_value_t = 1)]
    seqs: usize,
    /// The KV cache's format: f32, bf16, f16, q8, fp8 or q4, or global=FORMAT,chunked=FORMAT (a part left out is
    /// bf16). The default, bf16, is what `run` and `serve` use on a GPU.
    #[arg(long, default_value = "bf16", value_name = "FORMAT")]
    kv_dtype: String,
    /// Stream the routed experts through a cache of this size instead of holding them.
    #[arg(long, value_name = "SIZE")]
    expert_cache: Option<String>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// Runs `f` with the backend named by `--backend`. Every subcommand is generic over the backend, so a new
/// backend is one more arm here.
macro_rules! with_backend {
    ($name:expr, |$b:ident| $body:expr) => {{
        match choose_backend(&$name)? {
            Chosen::Cpu(weights) => {
                let $b = Arc::new(CpuBackend::new().with_weight_memory(weights));
                $body
            }
            Chosen::Wgpu(w) => {
                let $b = Arc::new(*w);
                $body
            }
            Chosen::Cuda(c) => {
                let $b = Arc::new(*c);
                $body
            }
        }
    }};
}

fn main() {
    let cli = Cli::try_parse().unwrap_or_else(|e| usage_error(e));
    if let Err(e) = dispatch(cli.cmd) {
        eprintln!("error: {}", one_line(&e));
        std::process::exit(1);
    }
}

/// Help and version print as clap prints them; a usage error becomes one line (clap's message with its
/// hints folded in) and exit code 1, as every other error.
fn usage_error(e: clap::Error) -> ! {
    use clap::error::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        e.exit();
    }
    let text = e.render().to_string();
    let parts: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("For more information") && !l.starts_with("Usage:"))
        .collect();
    let line = parts.join(" ");
    eprintln!("error: {}", line.strip_prefix("error: ").unwrap_or(&line));
    std::process::exit(1);
}

/// One line: the cause chain joined by ": ", skipping a cause whose text its parent already includes
/// (errors that print their source in their own message, e.g. `{path}: {source}`).
fn one_line(e: &anyhow::Error) -> String {
    let mut msg = String::new();
    for cause in e.chain() {
        let s = cause.to_string();
        if msg.ends_with(&s) {
            continue;
        }
        if !msg.is_empty() {
            msg.push_str(": ");
        }
        msg.push_str(&s);
    }
    msg.replace('\n', " ")
}

/// The load options of a command that plans its memory before loading (`--device-memory`).
fn load_options(backend: &BackendArg, device_memory: &Option<String>) -> Result<files::LoadOptions> {
    let mut opts = backend.load_options()?;
    if let Some(s) = device_memory {
        let bytes = herd_core::experts::parse_size(s).map_err(|e| anyhow::anyhow!("--device-memory: {e}"))?;
        opts.device_memory = Some(bytes as usize);
    }
    Ok(opts)
}

fn dispatch(cmd: Cmd) -> Result<()> {
    match cmd {
        Cmd::Run(a) => {
            let t = a.text;
            let opts = load_options(&t.backend, &t.device_memory)?;
            let files = ModelFiles::new(t.model.model);
            let mut images = Vec::new();
            for p in &a.image {
                images.extend(images::read_images(p, t.max_frames)?);
            }
            let grammar = text::grammar_arg(a.json_schema.as_deref(), a.grammar.as_deref())?;
            let prompt = text::Prompt { text: &a.prompt, chat: a.chat, system: t.system.as_deref(), images };
            let guard = a.guard.open()?;
            let guard = guard.as_ref().map(|g| (g, a.guard.guard_every));
            a.speculate.check()?;
            with_backend!(t.backend, |b| text::run(
                b,
                &files,
                prompt,
                &t.sampling,
                &opts,
                a.stats,
                grammar.as_ref(),
                guard,
                &a.speculate
            ))
        }
        Cmd::Guard(a) => {
            let opts = a.backend.load_options()?;
            let g = guard::GuardFiles::open(a.model.clone(), a.guard_categories.as_deref())?;
            let v = with_backend!(a.backend, |b| guard::run(b, &g, &a, &opts))?;
            if v.refuses(&g.policy) {
                std::process::exit(3);
            }
            Ok(())
        }
        Cmd::Chat(t) => {
            let opts = load_options(&t.backend, &t.device_memory)?;
            with_backend!(t.backend, |b| text::chat(
                b,
                &ModelFiles::new(t.model.model),
                t.system.as_deref(),
                &t.sampling,
                t.max_frames,
                &opts
            ))
        }
        Cmd::App(a) => app::run(a),
        Cmd::Inspect(a) => inspect::inspect(&ModelFiles::new(a.model)),
        Cmd::Plan(a) => plan::run(&ModelFiles::new(a.model.model.clone()), &a),
        Cmd::Logits(a) => {
            let opts = a.backend.load_options()?;
            with_backend!(a.backend, |b| ids_io::logits(b, &a.model, &a.input, &a.output, a.decode, &opts))
        }
        Cmd::Greedy(a) => {
            let opts = a.backend.load_options()?;
            a.speculate.check()?;
            with_backend!(a.backend, |b| ids_io::greedy(
                b,
                &a.model,
                &a.input,
                a.max_tokens,
                &a.output,
                &opts,
                &a.speculate
            ))
        }
        Cmd::Quantize(a) => quantize::quantize_dir(&a.model, &a.out, &a.format, a.group, &a.keep_bf16),
        Cmd::Serve(a) => {
            let load_opts = load_options(&a.backend, &a.device_memory)?;
            let api_key = a.api_key.or_else(|| std::env::var("HERD_API_KEY").ok()).filter(|k| !k.is_empty());
            let opts = serve::Options {
                host: a.host,
                port: a.port,
                sched: herd_core::schedule::SchedulerConfig {
                    max_seqs: a.max_seqs,
                    max_batch_tokens: a.max_batch_tokens,
                    max_queue: a.max_queue,
                    prefix_cache_tokens: a.prefix_cache_tokens,
                    max_context: a.max_context,
                },
                api_key,
                body_limit: a.body_limit,
                guard: a.guard.open()?.map(|g| (g, a.guard.guard_every)),
                speculate: a.speculate.clone(),
            };
            a.speculate.check()?;
            let files = ModelFiles::new(a.model.model);
            with_backend!(a.backend, |b| serve::serve(b, &files, opts, &load_opts))
        }
        Cmd::BenchServe(mut a) => {
            a.api_key = a.api_key.or_else(|| std::env::var("HERD_API_KEY").ok()).filter(|k| !k.is_empty());
            bench_serve::bench_serve(&a)
        }
        Cmd::ServeWeb(a) => serve_web::serve(&ModelFiles::new(a.model.model), a.www, &a.host, a.port),
        Cmd::WebManifest(a) => serve_web::write_manifest(&a.model),
        Cmd::Bench(a) => {
            if a.synthetic.is_some() && a.model.model.is_some() {
                bail!("--synthetic and --model exclude each other: --synthetic builds its own model");
            }
            if !a.images.is_empty() {
                return with_backend!(a.backend, |b| bench_vision::bench_images(
                    b,
                    &ModelFiles::new(a.model.model.clone()),
                    &a
                ));
            }
            if let Some(g) = text::grammar_arg(a.json_schema.as_deref(), a.grammar.as_deref())? {
                let files = ModelFiles::new(a.model.model.clone());
                return with_backend!(a.backend, |b| bench_constrain::bench_constrain(b, &files, &a, &g));
            }
            a.speculate.check()?;
            if a.speculate.spec()? != speculate::Spec::Off {
                if a.synthetic.is_some() || !a.context.is_empty() {
                    bail!("--speculate measures a model's text: it takes neither --synthetic nor --context");
                }
                let opts = a.backend.load_options()?;
                let files = ModelFiles::new(a.model.model.clone());
                return with_backend!(a.backend, |b| bench_spec::bench_spec(b, &files, &a, &opts));
            }
            if a.temperature.is_some() && a.batch.is_empty() {
                bail!("--temperature applies to --speculate or --batch");
            }
            if !a.batch.is_empty() {
                if a.batch.contains(&0) {
                    bail!("--batch takes sizes of at least 1");
                }
                let opts = a.backend.load_options()?;
                let files = ModelFiles::new(a.model.model.clone());
                let synth = bench::synth(&a)?;
                return with_backend!(a.backend, |b| bench_batch::bench_batch(b, &files, &a, synth.as_ref(), &opts));
            }
            let caches = a.backend.expert_caches()?;
            with_backend!(a.backend, |b| bench::bench(b, &ModelFiles::new(a.model.model.clone()), &a, &caches))
        }
    }
}
