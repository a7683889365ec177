//! `herd bench --batch 1,4,16`: what continuous batching gives the engine, without the HTTP layer. For each
//! batch size N, N requests (distinct random prompts of `--prompt-tokens`) go through one scheduler that runs
//! them together: their prompts are read in one step, then every step decodes one token of each. The decode
//! steps are timed; the report gives the generated tokens per second over all N and the ratio to N = 1, the
//! number `herd bench-serve` measures through the server.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;
use herd_core::backend::Backend;
use herd_core::sampling::SamplingParams;
use herd_core::schedule::{queue, GenerateParams, Request, Scheduler, SchedulerConfig};
use rand::{Rng, SeedableRng};

use crate::bench::{load, Loaded, Synth};
use crate::files::{kv_dtypes_name, LoadOptions, ModelFiles};
use crate::BenchArgs;

/// One batch size's best repetition.
struct Row {
    batch: usize,
    /// Seconds of the decode steps, all of them.
    decode_s: f64,
    steps: usize,
    /// Seconds of the step that read the prompts.
    prefill_s: f64,
}

pub fn bench_batch<B: Backend>(
    backend: Arc<B>,
    files: &ModelFiles,
    a: &BenchArgs,
    synthetic: Option<&Synth<'_>>,
    opts: &LoadOptions,
) -> Result<()> {
    let name = backend.name();
    let Loaded { cfg, model, describe, load_s, .. } = load(backend, files, synthetic, opts)?;
    let model = Arc::new(model);
    let (v, prompt_len, gen) = (cfg.text.vocab_size, a.prompt_tokens.max(1), a.gen_tokens.max(1));
    // Sampled as a request that sets only a temperature is (`herd serve`): the model's top-k, top-p and min-p
    // from generation_config.json, with transformers' defaults (top-k 50) where it is silent.
    let sampling = match a.temperature {
        Some(t) => {
            let g = match synthetic {
                Some(_) => herd_core::tokenizer::GenerationConfig::default(),
                None => files.generation_config()?,
            };
            SamplingParams {
                temperature: t,
                top_k: g.top_k.unwrap_or(50),
                top_p: g.top_p.unwrap_or(1.0),
                min_p: g.min_p.unwrap_or(0.0),
                ..SamplingParams::default()
            }
        }
        None => SamplingParams::default(),
    };
    sampling.validate()?;
    // Sizes of 0 are refused before the model loads (main.rs).
    let mut sizes = a.batch.clone();
    sizes.sort_unstable();
    sizes.dedup();
    if !a.json {
        println!("model: {describe}");
        println!("backend: {name}");
        println!("KV cache: {}", kv_dtypes_name(model.kv_dtypes()));
        println!("load: {load_s:.2} s");
        println!(
            "batched decode: N requests of {prompt_len} random prompt tokens read in one step, then {gen} steps that \
             each decode one token of every request ({}), best of {} after a warm-up; GFLOP/s counts 2 per active \
             parameter per row ({:.1} MFLOP)",
            match a.temperature {
                Some(t) =>
                    format!("sampled at temperature {t}, top-k {}, top-p {}, seeded", sampling.top_k, sampling.top_p),
                None => "greedy".to_owned(),
            },
            a.repeat.max(1),
            2.0 * cfg.text.decode_params() as f64 / 1e6
        );
    }
    let mut rows: Vec<Row> = Vec::new();
    for &n in &sizes {
        let mut best: Option<Row> = None;
        for rep in 0..=a.repeat.max(1) {
            let scfg = SchedulerConfig {
                max_seqs: n,
                max_batch_tokens: n * prompt_len,
                max_queue: n,
                prefix_cache_tokens: 0,
                max_context: None,
            };
            let mut s = Scheduler::new(model.clone(), scfg)?;
            s.reserve(n, prompt_len + gen + 1)?;
            let mut rng = rand::rngs::StdRng::seed_from_u64(rep as u64);
            let mut streams = Vec::with_capacity(n);
            for i in 0..n {
                let prompt: Vec<u32> = (0..prompt_len).map(|_| rng.random_range(0..v as u32)).collect();
                let sampling = SamplingParams { seed: Some(i as u64), ..sampling };
                let params = GenerateParams { max_tokens: gen + 1, sampling, stop_ids: vec![] };
                let (sink, events) = queue();
                s.submit(Request::new(prompt, params), sink)?;
                streams.push(events);
            }
            let t0 = Instant::now();
            crate::backend_arg::step(&mut s)?;
            let prefill_s = t0.elapsed().as_secs_f64();
            let t1 = Instant::now();
            let mut steps = 0;
            while !s.is_idle() {
                crate::backend_arg::step(&mut s)?;
                steps += 1;
            }
            let decode_s = t1.elapsed().as_secs_f64();
            for events in &streams {
                let made = crate::bench::tokens_made(events)?;
                if made != gen + 1 {
                    anyhow::bail!("a request of the batch of {n} made {made} tokens, not {}", gen + 1);
                }
            }
            if steps != gen {
                anyhow::bail!(
                    "the batch of {n} took {steps} decode steps, not {gen}: its requests did not run together"
                );
            }
            let row = Row { batch: n, decode_s, steps, prefill_s };
            if rep > 0 && best.as_ref().is_none_or(|b| row.decode_s < b.decode_s) {
                best = Some(row);
            }
        }
        rows.push(best.expect("at least one timed repetition"));
    }
    let one = rows.iter().find(|r| r.batch == 1).map(|r| gen as f64 / r.decode_s);
    // What the steps' matrix products do: a multiply and an add per active parameter per row.
    let flop_per_row = 2.0 * cfg.text.decode_params() as f64;
    let mut out = Vec::new();
    for r in &rows {
        let tps = (r.batch * gen) as f64 / r.decode_s;
        let step_ms = r.decode_s * 1e3 / r.steps as f64;
        let ratio = one.map(|o| tps / o);
        let gflops = flop_per_row * tps / 1e9;
        if a.json {
            out.push(serde_json::json!({
                "batch": r.batch, "decode_tok_s": tps, "ms_per_step": step_ms, "vs_batch_1": ratio,
                "prefill_ms": r.prefill_s * 1e3, "gflop_s": gflops,
            }));
        } else {
            println!(
                "batch {}: {tps:.1} generated tok/s ({step_ms:.2} ms per step, {gflops:.1} GFLOP/s){}; prompts read in {:.1} ms",
                r.batch,
                ratio.map_or(String::new(), |x| format!(", {x:.2}x batch 1")),
                r.prefill_s * 1e3
            );
        }
    }
    if a.json {
        let j = serde_json::json!({
            "model": describe, "backend": name, "prompt_tokens": prompt_len, "gen_tokens": gen,
            "temperature": a.temperature, "load_s": load_s, "flop_per_row": flop_per_row, "batches": out,
        });
        println!("{j}");
    }
    Ok(())
}
