//! `herd bench --json-schema FILE` / `--grammar FILE`: what constrained decoding costs. One run decodes the same
//! prompt with and without the grammar, alternately, `--repeat` times each (the best of each is kept), with the
//! same seeded sampling, so the two speeds are a ratio on one machine at one moment. The grammar's own work is
//! measured apart too: the constrained tokens are replayed through a fresh constraint on this thread, timing
//! each mask (and the commit after it) against the decode step it runs beside.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Result};
use herd_core::backend::Backend;
use herd_core::constrain::{Constraint, Grammar};
use herd_core::model::Llama4;
use herd_core::sampling::SamplingParams;
use herd_core::schedule::{queue, Event, GenerateParams, Request, StopReason};

use crate::files::{LoadOptions, ModelFiles};
use crate::BenchArgs;

/// One decode: (seconds for the tokens after the first, tokens after the first, the ids).
fn decode_once<B: Backend>(
    model: &Arc<Llama4<B>>,
    prompt: &[u32],
    a: &BenchArgs,
    constraint: Option<Constraint>,
    stops: &[u32],
) -> Result<(f64, usize, Vec<u32>)> {
    let mut s = crate::text::one_at_a_time(model.clone(), false)?;
    let sampling = SamplingParams { temperature: 1.0, seed: Some(0), ..Default::default() };
    let stop_ids = if constraint.is_some() { stops.to_vec() } else { vec![] };
    let params = GenerateParams { max_tokens: a.gen_tokens + 1, sampling, stop_ids };
    let (sink, events) = queue();
    s.submit(Request { constraint, ..Request::new(prompt.to_vec(), params) }, sink)?;
    // The prompt and the first token, then the timed decode steps.
    crate::backend_arg::step(&mut s)?;
    let t = Instant::now();
    while !s.is_idle() {
        crate::backend_arg::step(&mut s)?;
    }
    let secs = t.elapsed().as_secs_f64();
    let mut ids = vec![];
    while let Some(e) = events.pop() {
        match e {
            Event::Token(t) => ids.push(t.id),
            Event::Done(f) => match f.reason {
                Ok(StopReason::Stop(id)) => ids.push(id),
                Ok(_) => {}
                Err(m) => bail!("{m}"),
            },
        }
    }
    Ok((secs, ids.len().saturating_sub(1), ids))
}

pub fn bench_constrain<B: Backend>(
    backend: Arc<B>,
    files: &ModelFiles,
    a: &BenchArgs,
    grammar: &Grammar,
) -> Result<()> {
    if a.synthetic.is_some() {
        bail!("--json-schema and --grammar need a model's tokenizer: they take --model (or the built-in model), not --synthetic");
    }
    if a.gen_tokens < 2 {
        bail!("--gen-tokens must be at least 2 to time decode steps under a grammar");
    }
    let tok = files.tokenizer()?;
    let (constrainer, stops) = crate::text::constrainer(files, &tok)?;
    // Compiled before the model loads: a schema it cannot take is refused first.
    let fresh = || constrainer.start(grammar);
    fresh()?;
    let opts = LoadOptions { experts: None, kv_dtype: a.backend.kv_dtype.clone(), device_memory: None };
    let loaded = crate::bench::load(backend, files, None, &opts)?;
    let model = Arc::new(loaded.model);
    let ctx = loaded.cfg.text.max_position_embeddings;
    let prompt = tok.encode("Describe the king of Israel", true)?;
    if prompt.len() + a.gen_tokens > ctx {
        bail!(
            "the prompt ({} tokens) plus --gen-tokens {} is more than the model's context of {ctx}",
            prompt.len(),
            a.gen_tokens
        );
    }
    let (mut free, mut held) = ((f64::INFINITY, 0), (f64::INFINITY, 0));
    let mut ids = vec![];
    // A warm-up of each, then the timed repetitions, alternated.
    for rep in 0..=a.repeat.max(1) {
        let (s, n, _) = decode_once(&model, &prompt, a, None, &stops)?;
        let (cs, cn, cids) = decode_once(&model, &prompt, a, Some(fresh()?), &stops)?;
        if rep > 0 {
            if s / n.max(1) as f64 <= free.0 / free.1.max(1) as f64 {
                free = (s, n);
            }
            if cn > 0 && cs / cn as f64 <= held.0 / held.1.max(1) as f64 {
                held = (cs, cn);
            }
        }
        ids = cids;
    }
    if held.1 == 0 {
        bail!("the grammar ended after one token: no decode step to time (try a schema with longer output)");
    }
    // The grammar's work alone, token by token, on this thread.
    let mut c = fresh()?;
    let (mut mask_s, mut masks) = (0.0, 0);
    for &id in &ids {
        let t = Instant::now();
        c.mask(&stops)?;
        if !stops.contains(&id) {
            c.commit(id)?;
        }
        mask_s += t.elapsed().as_secs_f64();
        masks += 1;
    }
    let free_ms = free.0 * 1e3 / free.1 as f64;
    let held_ms = held.0 * 1e3 / held.1 as f64;
    let mask_ms = mask_s * 1e3 / masks as f64;
    let text = tok.decode(&ids, true)?;
    if a.json {
        let j = serde_json::json!({
            "model": loaded.describe, "backend": model.backend().name(), "kv_dtype": crate::files::kv_dtypes_name(model.kv_dtypes()),
            "unconstrained_ms_per_token": free_ms, "unconstrained_tok_s": 1e3 / free_ms, "unconstrained_tokens": free.1,
            "constrained_ms_per_token": held_ms, "constrained_tok_s": 1e3 / held_ms, "constrained_tokens": held.1,
            "mask_ms_per_token": mask_ms, "mask_share_of_step": mask_ms / free_ms, "output": text,
        });
        println!("{j}");
    } else {
        println!("model: {}", loaded.describe);
        println!("backend: {}", model.backend().name());
        println!("without the grammar: {:.3} ms per token = {:.1} tok/s ({} tokens)", free_ms, 1e3 / free_ms, free.1);
        println!("with the grammar: {:.3} ms per token = {:.1} tok/s ({} tokens)", held_ms, 1e3 / held_ms, held.1);
        println!("ratio: {:.3} (constrained time per token / unconstrained)", held_ms / free_ms);
        println!(
            "mask alone: {mask_ms:.3} ms per token ({masks} masks and commits on one thread) = {:.1}% of an unconstrained decode step",
            100.0 * mask_ms / free_ms
        );
        println!("output: {text}");
    }
    Ok(())
}
