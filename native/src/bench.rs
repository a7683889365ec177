//! `herd bench`: prefill and decode speed and peak memory on a random prompt.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;
use clap::Args;
use herd_core::backend::Backend;
use herd_core::config::ModelConfig;
use herd_core::experts::{ExpertCacheOptions, ExpertStats};
use herd_core::model::Llama4;
use herd_core::sampling::SamplingParams;
use herd_core::schedule::GenerateParams;
use herd_core::schedule::{queue, Event, Queue, Request};
use herd_core::synthetic::SyntheticWeights;
use rand::{Rng, SeedableRng};

use crate::backend_arg::BackendArg;
use crate::files::{kv_dtypes_name, LoadOptions, ModelFiles};
use crate::synthetic;
use crate::{speculate, ModelArg};

/// Peak resident memory of this process (Linux), in bytes.
fn peak_rss() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// One run per expert cache in `caches` (None: every expert resident; one such run when there are none).
pub fn bench<B: Backend>(
    backend: Arc<B>,
    files: &ModelFiles,
    a: &BenchArgs,
    caches: &[Option<ExpertCacheOptions>],
) -> Result<()> {
    // Synthetic weights are described once, so the experts an expert cache makes are made once.
    let synth = synth(a)?;
    // The prompt and the tokens decoded after it must fit the context: checked before anything loads.
    let ctx = match &synth {
        Some((.., cfg, _)) => cfg.text.max_position_embeddings,
        None => files.config()?.text.max_position_embeddings,
    };
    if let Some(&deepest) = a.context.iter().max() {
        if deepest.checked_add(a.gen_tokens).is_none_or(|n| n > ctx) {
            anyhow::bail!(
                "--context {deepest} plus --gen-tokens {} is more than the model's context of {ctx} positions",
                a.gen_tokens
            );
        }
        let (runs, one) = (caches.len().max(1), caches.first().cloned().flatten());
        if runs > 1 {
            anyhow::bail!("--context takes one expert cache (or none), not {runs}");
        }
        let opts = LoadOptions { experts: one, kv_dtype: a.backend.kv_dtype.clone(), device_memory: None };
        return crate::bench_context::bench_context(backend, files, a, synth.as_ref(), &opts);
    }
    let need = a.prompt_tokens.max(1).checked_add(a.gen_tokens);
    if need.is_none_or(|n| n > ctx) {
        anyhow::bail!(
            "--prompt-tokens {} plus --gen-tokens {} is more than the model's context of {ctx} positions",
            a.prompt_tokens,
            a.gen_tokens
        );
    }
    let runs: &[Option<ExpertCacheOptions>] = if caches.is_empty() { &[None] } else { caches };
    // What streamed uploads are judged against, measured in this run.
    let peak_h2d = if runs.iter().any(Option::is_some) { backend.host_to_device_peak_gbps()? } else { None };
    for (i, c) in runs.iter().enumerate() {
        if i > 0 && !a.json {
            println!();
        }
        let opts = LoadOptions { experts: c.clone(), kv_dtype: a.backend.kv_dtype.clone(), device_memory: None };
        bench_one(backend.clone(), files, a, synth.as_ref(), &opts, peak_h2d)?;
    }
    Ok(())
}

/// `--synthetic`'s model, described (its weights are made on the device when it loads); None without it.
pub(crate) fn synth(a: &BenchArgs) -> Result<Option<Synth<'_>>> {
    let Some(sname) = &a.synthetic else { return Ok(None) };
    let layers = a.layers.unwrap_or(synthetic::DEFAULT_LAYERS);
    let (dtype, plan) = synthetic::quant_format(a.quant.as_deref())?;
    let fmt = plan.as_ref().map_or(dtype.name().to_owned(), |p| p.name());
    let (cfg, weights) = synthetic::synthetic(sname, layers, dtype, plan)?;
    Ok(Some((sname.as_str(), layers, fmt, cfg, weights)))
}

/// A synthetic model: its name, layers, format, config and weights.
pub(crate) type Synth<'a> = (&'a str, usize, String, ModelConfig, SyntheticWeights);

/// A model loaded for a benchmark.
pub(crate) struct Loaded<B: Backend> {
    pub cfg: ModelConfig,
    pub model: Llama4<B>,
    pub describe: String,
    /// Synthetic: (name, layers, parameter bytes made).
    pub synth: Option<(String, usize, usize)>,
    /// Seconds to load (for synthetic weights: to make them).
    pub load_s: f64,
}

/// Loads `--model` or builds the synthetic model.
pub(crate) fn load<B: Backend>(
    backend: Arc<B>,
    files: &ModelFiles,
    synthetic: Option<&Synth<'_>>,
    opts: &LoadOptions,
) -> Result<Loaded<B>> {
    let t_load = Instant::now();
    let experts = opts.experts.as_ref();
    let (cfg, model, describe, synth) = match synthetic {
        Some((sname, layers, fmt, cfg, weights)) => {
            let (sname, layers) = (sname.to_string(), *layers);
            let made = weights.bytes_made();
            let mut model = Llama4::load_with(backend, weights, &cfg.text, experts, &mut |_, _| {})?;
            opts.apply(&mut model)?;
            let synth = Some((sname.clone(), layers, weights.bytes_made() - made));
            let of = if sname == "tiny" { String::new() } else { format!(" of {}", synthetic::FULL_LAYERS) };
            (cfg.clone(), model, format!("synthetic {sname} ({layers}{of} layers, random {fmt} weights)"), synth)
        }
        None => {
            let (cfg, model) = files.load(backend, opts)?;
            (cfg, model, files.describe(), None)
        }
    };
    Ok(Loaded { cfg, model, describe, synth, load_s: t_load.elapsed().as_secs_f64() })
}

fn bench_one<B: Backend>(
    backend: Arc<B>,
    files: &ModelFiles,
    a: &BenchArgs,
    synthetic: Option<&Synth<'_>>,
    opts: &LoadOptions,
    peak_h2d: Option<f64>,
) -> Result<()> {
    let name = backend.name();
    let Loaded { cfg, model, describe, synth, load_s } = load(backend, files, synthetic, opts)?;
    let kv = kv_dtypes_name(model.kv_dtypes());
    let layers = cfg.text.num_hidden_layers;
    let v = cfg.text.vocab_size;
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let prompt: Vec<u32> = (0..a.prompt_tokens.max(1)).map(|_| rng.random_range(0..v as u32)).collect();
    let (mut best_prefill, mut best_decode) = (f64::INFINITY, f64::INFINITY);
    // The expert cache during the last repetition's decode.
    let mut decode_stats = None;
    // Allocations per decode step (everything the process allocates meanwhile), in the last repetition.
    let mut decode_allocs = None;
    let model = Arc::new(model);
    for rep in 0..=a.repeat.max(1) {
        // Through the scheduler, as every generation runs: greedy, picked on the device (one id comes back
        // per step), the prompt read in one step.
        let mut s = crate::text::one_at_a_time(model.clone(), false)?;
        let params =
            GenerateParams { max_tokens: a.gen_tokens + 1, sampling: SamplingParams::default(), stop_ids: vec![] };
        let (sink, events) = queue();
        s.submit(Request::new(prompt.clone(), params), sink)?;
        let t0 = Instant::now();
        crate::backend_arg::step(&mut s)?;
        let prefill = t0.elapsed().as_secs_f64();
        let before = model.expert_stats();
        let allocs = herd_core::limits::allocations();
        let t1 = Instant::now();
        while !s.is_idle() {
            crate::backend_arg::step(&mut s)?;
        }
        let decode = t1.elapsed().as_secs_f64();
        if let (Some(a0), Some(a1)) = (allocs, herd_core::limits::allocations()) {
            decode_allocs = Some((a1 - a0) as f64 / a.gen_tokens.max(1) as f64);
        }
        let made = tokens_made(&events)?;
        if made != a.gen_tokens + 1 {
            anyhow::bail!("the benchmark's generation made {made} tokens, not {}", a.gen_tokens + 1);
        }
        if let (Some(b), Some(e)) = (before, model.expert_stats()) {
            decode_stats = Some(DecodeCache::between(&b, &e));
        }
        if rep > 0 {
            best_prefill = best_prefill.min(prefill);
            best_decode = best_decode.min(decode);
        }
    }
    let prefill_tps = prompt.len() as f64 / best_prefill;
    let decode_tps = a.gen_tokens as f64 / best_decode.max(1e-12);
    let peak = peak_rss().unwrap_or(0);
    let (decode_bytes, per_param) = decode_weight_bytes(files, &synth, &model, &cfg)?;
    let decode_gbs = decode_bytes as f64 * decode_tps / 1e9;
    // What scales with depth: decode time per token per layer. It also carries the embedding and lm_head,
    // spread over the layers, so ×48 overestimates a full model (by a lot at 1 layer; less with more layers).
    let ms_per_layer_token = (a.gen_tokens > 0).then(|| best_decode * 1e3 / a.gen_tokens as f64 / layers.max(1) as f64);
    if a.json {
        let mut j = serde_json::json!({
            "model": describe, "backend": name, "prompt_tokens": prompt.len(), "gen_tokens": a.gen_tokens,
            "load_s": load_s, "prefill_tok_s": prefill_tps, "decode_tok_s": decode_tps, "peak_rss_bytes": peak,
            "layers": layers, "ms_per_layer_token": ms_per_layer_token,
            "decode_weight_bytes_per_token": decode_bytes, "decode_weight_gb_s": decode_gbs,
            "synthetic": synth.as_ref().map(|s| s.0.clone()), "backend_stats": model.backend().stats(),
            "kv_dtype": kv, "decode_allocations_per_token": decode_allocs,
        });
        if let Some(st) = model.expert_stats() {
            j["expert_cache"] = serde_json::json!({
                "budget_bytes": st.budget, "slot_bytes": st.capacity, "slots": st.slots, "experts": st.experts,
                "policy": st.policy, "lookups": st.lookups, "hits": st.hits, "hit_rate": st.hit_rate(),
                "lru_hit_rate": st.lru_hit_rate(), "bytes_moved": st.bytes_moved, "upload_gb_s": st.upload_gbps(),
                "wait_s": st.wait_secs, "read_s": st.read_secs, "prefetched": st.prefetched,
                "prefetch_used": st.prefetch_used, "peak_resident_bytes": st.peak_resident,
            });
        }
        if let Some(d) = &decode_stats {
            j["decode_expert_cache"] = serde_json::json!({
                "hit_rate": d.hit_rate, "bytes_per_token": d.bytes as f64 / a.gen_tokens.max(1) as f64,
                "upload_gb_s": d.upload_gbps, "wait_s_per_token": d.wait_s / a.gen_tokens.max(1) as f64,
                "host_to_device_peak_gb_s": peak_h2d,
            });
        }
        if let Some((_, _, bytes)) = &synth {
            j["param_bytes"] = serde_json::json!(bytes);
        }
        println!("{j}");
    } else {
        println!("model: {describe}");
        println!("backend: {name}");
        println!("KV cache: {kv}");
        if let Some((_, _, bytes)) = &synth {
            println!("parameters loaded: {:.2} GB = {bytes} bytes ({layers} layer(s))", *bytes as f64 / 1e9);
        }
        println!("load: {load_s:.2} s");
        println!("prefill: {} tokens in {:.1} ms = {prefill_tps:.1} tok/s", prompt.len(), best_prefill * 1e3);
        println!("decode: {} tokens in {:.1} ms = {decode_tps:.1} tok/s", a.gen_tokens, best_decode * 1e3);
        if let Some(n) = decode_allocs {
            println!("decode allocations: {n:.1} per token (the whole process, while decoding)");
        }
        println!(
            "decode weight traffic: {:.2} GB per token (active parameters x {per_param:.3} bytes) = {decode_gbs:.1} GB/s at that speed",
            decode_bytes as f64 / 1e9
        );
        if let Some(ms) = ms_per_layer_token {
            println!("decode per layer: {ms:.2} ms per layer per token (decode time / tokens / {layers} layer(s))");
            if synth.as_ref().is_some_and(|s| s.0 != "tiny") {
                let full = synthetic::FULL_LAYERS;
                println!(
                    "full model estimate: {:.1} ms per token = {:.2} tok/s decode at {full} layers (per-layer cost × {full}; \
                     an upper bound: the per-layer cost also carries the lm_head, once per token, spread over \
                     {layers} layer(s); more --layers shrink that share)",
                    ms * full as f64,
                    1e3 / (ms * full as f64)
                );
            }
        }
        println!("peak memory (RSS): {:.1} MiB", peak as f64 / (1024.0 * 1024.0));
        if let Some(st) = model.backend().stats() {
            println!("backend: {st}");
        }
        if let Some(st) = model.expert_stats() {
            println!("{st}");
        }
        if let Some(p) = peak_h2d.filter(|_| opts.experts.is_some()) {
            println!("host to device peak: {p:.2} GB/s (one 256 MiB copy from pinned memory, best of 3)");
        }
        match &decode_stats {
            Some(d) if d.lookups == 0 => {
                println!("decode (last repetition): every expert resident (no lookups, no transfers)")
            }
            Some(d) => println!(
                "decode (last repetition): expert hit rate {:.1}%, {:.2} MiB moved per token, host to device {:.2} GB/s{}, {:.2} ms waited per token",
                100.0 * d.hit_rate,
                d.bytes as f64 / a.gen_tokens.max(1) as f64 / (1 << 20) as f64,
                d.upload_gbps,
                match peak_h2d {
                    Some(p) if d.bytes > 0 => format!(" = {:.0}% of the link's {p:.2} GB/s peak", 100.0 * d.upload_gbps / p),
                    _ => String::new(),
                },
                d.wait_s * 1e3 / a.gen_tokens.max(1) as f64
            ),
            None => {}
        }
    }
    Ok(())
}

/// The tokens a request's queue received; an error if the request failed.
pub(crate) fn tokens_made(events: &Queue) -> Result<usize> {
    let mut made = 0;
    while let Some(e) = events.pop() {
        match e {
            Event::Token(_) => made += 1,
            Event::Done(f) => {
                f.reason.map_err(|m| anyhow::anyhow!("{m}"))?;
            }
        }
    }
    Ok(made)
}

/// The decode roofline: the weight bytes each token reads, at the model's average bytes per parameter (the
/// formats made, or the checkpoint's tensors), and that average.
pub(crate) fn decode_weight_bytes<B: Backend>(
    files: &ModelFiles,
    synth: &Option<(String, usize, usize)>,
    model: &Llama4<B>,
    cfg: &ModelConfig,
) -> Result<(usize, f64)> {
    let bytes = match synth {
        // Streamed experts are not among the bytes loaded: add them back.
        Some((_, _, bytes)) => *bytes + model.expert_stats().map_or(0, |s| s.experts * s.expert_bytes as usize),
        // The text model's tensors (a multimodal checkpoint also holds the vision tower's).
        None => files
            .checkpoint()?
            .tensors()
            .filter(|(name, _)| name.starts_with("model.") || *name == "lm_head.weight")
            .map(|(_, t)| t.bytes().len())
            .sum(),
    };
    let per_param = bytes as f64 / cfg.text.total_params().max(1) as f64;
    Ok(((cfg.text.decode_params() as f64 * per_param) as usize, per_param))
}

/// The expert cache over one decode run: the difference of two snapshots.
struct DecodeCache {
    lookups: u64,
    hit_rate: f64,
    bytes: u64,
    upload_gbps: f64,
    wait_s: f64,
}

impl DecodeCache {
    fn between(b: &ExpertStats, e: &ExpertStats) -> Self {
        let lookups = e.lookups - b.lookups;
        let bytes = e.bytes_moved - b.bytes_moved;
        let up = e.upload_secs - b.upload_secs;
        DecodeCache {
            lookups,
            hit_rate: (e.hits - b.hits) as f64 / lookups.max(1) as f64,
            bytes,
            upload_gbps: if up > 0.0 { bytes as f64 / up / 1e9 } else { 0.0 },
            wait_s: e.wait_secs - b.wait_secs,
        }
    }
}

#[derive(Args)]
/// `herd bench`'s flags: one run of prefill and decode, or one of its modes (--context, --batch, --images,
/// --json-schema/--grammar, --speculate).
pub struct BenchArgs {
    #[command(flatten)]
    pub(crate) model: ModelArg,
    /// Prompt length (random token ids).
    #[arg(long, default_value_t = 128)]
    pub(crate) prompt_tokens: usize,
    /// Tokens to decode after the prompt.
    #[arg(long, default_value_t = 32)]
    pub(crate) gen_tokens: usize,
    /// Timed repetitions (the best is reported), after one warm-up.
    #[arg(long, default_value_t = 3)]
    pub(crate) repeat: usize,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub(crate) json: bool,
    /// Benchmark a model built in memory with the real shapes of scout, maverick or guard (or tiny, for
    /// tests) and random weights, made on the device that runs them, instead of --model. No download, no file written.
    #[arg(long, value_name = "NAME")]
    pub(crate) synthetic: Option<String>,
    /// With --synthetic: how many layers to build (the published models have 48).
    #[arg(long, requires = "synthetic")]
    pub(crate) layers: Option<usize>,
    /// With --synthetic: the weight format: bf16 (default), f16, f32, or quantized q4, q8, q4g32, q8g128...
    #[arg(long, requires = "synthetic", value_name = "FORMAT")]
    pub(crate) quant: Option<String>,
    /// Measure decode at these depths instead (comma-separated, e.g. 1024,65536): the KV cache is filled with
    /// that many positions of zeros rather than computed by a prefill (what attention costs does not depend
    /// on the values), then --gen-tokens are decoded one at a time.
    #[arg(long, value_delimiter = ',', value_name = "TOKENS", conflicts_with = "images")]
    pub(crate) context: Vec<usize>,
    /// Measure the vision tower instead of the text model: the time to encode an image of each of these
    /// tile counts (comma-separated, e.g. 1,16), random pixels.
    #[arg(long, value_delimiter = ',', value_name = "TILES")]
    pub(crate) images: Vec<usize>,
    /// Measure what constrained decoding costs instead: decode with and without this JSON schema, alternately,
    /// and time the grammar's masks alone.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["grammar", "context", "images", "synthetic"])]
    pub(crate) json_schema: Option<PathBuf>,
    /// As --json-schema, with a grammar in llguidance's Lark syntax.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["context", "images", "synthetic"])]
    pub(crate) grammar: Option<PathBuf>,
    /// --speculate: measure decoding with and without the drafter instead, alternately, on --prompt.
    #[command(flatten)]
    pub(crate) speculate: speculate::SpecArgs,
    /// With --speculate: the prompt (plain text, no chat template).
    #[arg(long, requires = "speculate")]
    pub(crate) prompt: Option<String>,
    /// With --speculate or --batch: sample at this temperature (seeded) instead of greedily; with --batch the
    /// model's top-k, top-p and min-p apply too, as `herd serve` applies them to a request that sets only a temperature.
    #[arg(long)]
    pub(crate) temperature: Option<f32>,
    /// Measure batched decode instead (comma-separated batch sizes, e.g. 1,4,16): that many requests of
    /// --prompt-tokens random ids run together through one scheduler, each step decoding a token of every one;
    /// reports generated tokens/s over the batch and the ratio to a batch of 1.
    #[arg(long, value_delimiter = ',', value_name = "N", conflicts_with_all = ["context", "images", "json_schema", "grammar"])]
    pub(crate) batch: Vec<usize>,
    #[command(flatten)]
    pub(crate) backend: BackendArg,
}
