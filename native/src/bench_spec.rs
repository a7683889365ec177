//! `herd bench --speculate ngram|draft:DIR [--prompt TEXT] [--temperature T]`: what speculative decoding
//! gains. One run decodes the same prompt with and without the drafter, alternately, `--repeat` times each
//! after a warm-up of each (the best of each kept), so the speed-up is a ratio on one machine at one moment.
//! Reports tokens/s both ways, the acceptance rate (drafted tokens the target kept), and tokens per target
//! forward. Greedy by default, so the two runs must give the same tokens (checked); with --temperature the
//! runs are seeded alike but their tokens may differ (the same distribution, other draws).

use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Result};
use herd_core::backend::Backend;
use herd_core::model::Llama4;
use herd_core::sampling::SamplingParams;
use herd_core::schedule::{queue, Event, GenerateParams, Request, SchedulerStats};

use crate::files::{LoadOptions, ModelFiles};
use crate::BenchArgs;

/// One decode: seconds for the tokens after the first, the ids, and the scheduler's counters of the decode.
fn decode_once<B: Backend>(
    model: &Arc<Llama4<B>>,
    files: &ModelFiles,
    opts: &LoadOptions,
    prompt: &[u32],
    a: &BenchArgs,
    speculate: bool,
) -> Result<(f64, Vec<u32>, SchedulerStats)> {
    let mut s = crate::text::one_at_a_time(model.clone(), false)?;
    if speculate {
        a.speculate.attach(&mut s, files, opts, false)?;
    }
    let sampling = SamplingParams { temperature: a.temperature.unwrap_or(0.0), seed: Some(0), ..Default::default() };
    let params = GenerateParams { max_tokens: a.gen_tokens + 1, sampling, stop_ids: vec![] };
    let (sink, events) = queue();
    s.submit(Request::new(prompt.to_vec(), params), sink)?;
    // The prompt and the first token, then the timed decode steps.
    crate::backend_arg::step(&mut s)?;
    let before = s.stats();
    let t = Instant::now();
    while !s.is_idle() {
        crate::backend_arg::step(&mut s)?;
    }
    let secs = t.elapsed().as_secs_f64();
    let after = s.stats();
    let mut ids = vec![];
    while let Some(e) = events.pop() {
        match e {
            Event::Token(t) => ids.push(t.id),
            Event::Done(f) => {
                f.reason.map_err(|m| anyhow::anyhow!("{m}"))?;
            }
        }
    }
    let d = SchedulerStats {
        steps: after.steps - before.steps,
        verifications: after.verifications - before.verifications,
        drafted_tokens: after.drafted_tokens - before.drafted_tokens,
        accepted_tokens: after.accepted_tokens - before.accepted_tokens,
        ..after
    };
    Ok((secs, ids, d))
}

pub fn bench_spec<B: Backend>(backend: Arc<B>, files: &ModelFiles, a: &BenchArgs, opts: &LoadOptions) -> Result<()> {
    if a.gen_tokens < 2 {
        bail!("--gen-tokens must be at least 2 to measure decoding");
    }
    let tok = files.tokenizer()?;
    let text = a.prompt.as_deref().unwrap_or(DEFAULT_PROMPT);
    let prompt = tok.encode_plain(text, true)?;
    let (_, model) = files.load(backend.clone(), opts)?;
    let model = Arc::new(model);
    let name = a.speculate.speculate.clone().unwrap_or_default();
    let (mut plain_best, mut spec_best) = (f64::INFINITY, f64::INFINITY);
    let mut last = None;
    for rep in 0..=a.repeat.max(1) {
        let (t0, plain_ids, _) = decode_once(&model, files, opts, &prompt, a, false)?;
        let (t1, spec_ids, st) = decode_once(&model, files, opts, &prompt, a, true)?;
        if a.temperature.unwrap_or(0.0) == 0.0 && plain_ids != spec_ids {
            bail!("greedy decoding with {name} gave other tokens than without: speculation is broken");
        }
        if rep > 0 {
            plain_best = plain_best.min(t0);
            spec_best = spec_best.min(t1);
        }
        last = Some((st, spec_ids.len()));
    }
    let (st, made) = last.unwrap_or_default();
    let n = (made.saturating_sub(1)) as f64;
    let plain_tps = a.gen_tokens as f64 / plain_best;
    let spec_tps = n / spec_best;
    let acceptance = st.accepted_tokens as f64 / (st.drafted_tokens as f64).max(1.0);
    let per_forward = n / (st.steps as f64).max(1.0);
    if a.json {
        let j = serde_json::json!({
            "backend": backend.name(), "speculate": name, "draft_tokens": a.speculate.draft_tokens,
            "prompt_tokens": prompt.len(), "gen_tokens": a.gen_tokens,
            "temperature": a.temperature.unwrap_or(0.0),
            "plain_decode_tok_s": plain_tps, "spec_decode_tok_s": spec_tps, "speedup": spec_tps / plain_tps,
            "acceptance_rate": acceptance, "tokens_per_forward": per_forward,
            "target_forwards": st.steps, "verifications": st.verifications,
            "drafted_tokens": st.drafted_tokens, "accepted_tokens": st.accepted_tokens,
        });
        println!("{j}");
    } else {
        println!(
            "speculative decoding with {name} on {} ({}), {} prompt tokens:",
            files.describe(),
            backend.name(),
            prompt.len()
        );
        println!(
            "  without: {plain_tps:.1} tok/s    with: {spec_tps:.1} tok/s    speed-up {:.2}x",
            spec_tps / plain_tps
        );
        println!(
            "  acceptance {:.1}% ({} of {} drafted), {per_forward:.2} tokens per target forward ({} forwards)",
            acceptance * 100.0,
            st.accepted_tokens,
            st.drafted_tokens,
            st.steps
        );
    }
    Ok(())
}

/// A passage, then its start again: the model's text goes on to quote what it has read.
const DEFAULT_PROMPT: &str = "Genesis 1\n\n1 In the beginning God created the heaven and the earth.\n2 And the earth was without form, and void; and darkness was upon the face of the deep. And the Spirit of God moved upon the face of the waters.\n3 And God said, Let there be light: and there was light.\n4 And God saw the light, that it was good: and God divided the light from the darkness.\n5 And God called the light Day, and the darkness he called Night. And the evening and the morning were the first day.\n\nGenesis 1\n\n1 In the beginning God created the heaven and the earth.\n2 And the earth";
