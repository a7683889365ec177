//! Constrained decoding (`herd_core::constrain`): seeded, sampled generations of the built-in demo model (which
//! was never taught JSON) under six JSON schemas all parse and validate, checked by an independent JSON Schema
//! validator (the `jsonschema` crate), on the CPU and on wgpu; each ends because the grammar is complete (a
//! stop id), not at its budget. A request whose tokens are picked on the host (it asks for log-probabilities:
//! the host's mask) gives the same tokens as on the device (`mask_logits`). A schema llguidance cannot
//! compile is refused in one line naming what it does not support.

use std::sync::{Arc, Mutex};

use herd_conformance::{backend_or_not_run, demo_dir, golden};
use herd_core::backend::Backend;
use herd_core::constrain::{Constrainer, Grammar};
use herd_core::cpu::CpuBackend;
use herd_core::model::Llama4;
use herd_core::sampling::SamplingParams;
use herd_core::schedule::{Event, Finish, GenerateParams, Request, Scheduler, SchedulerConfig, StopReason};
use herd_core::tokenizer::{GenerationConfig, Tokenizer};
use serde_json::{json, Value};

/// Generations per schema on the CPU. Lavapipe runs the demo model's wide steps about 30 times slower than
/// the CPU backend, so wgpu checks fewer: the grammars and masks are the same code; what wgpu adds is its own
/// mask and sampling kernels.
const SEEDS: u64 = 50;
const WGPU_SEEDS: u64 = 16;

/// The schemas of tests/fixtures/schemas (shared with the CLI's and the openai client's tests): nested
/// objects, bounded arrays, enums and consts, numbers with ranges, strings with patterns, required and
/// optional fields.
fn schemas() -> Vec<(String, Value)> {
    let dir = format!("{}/fixtures/schemas", env!("CARGO_MANIFEST_DIR"));
    let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    assert_eq!(files.len(), 6, "{dir}");
    files
        .iter()
        .map(|f| {
            let name = f.file_stem().unwrap().to_string_lossy().replace('_', " ");
            (name, serde_json::from_slice(&std::fs::read(f).unwrap()).unwrap())
        })
        .collect()
}

struct Demo {
    tok: Tokenizer,
    constrainer: Constrainer,
    prompt: Vec<u32>,
    stops: Vec<u32>,
}

fn demo<B: Backend>(be: &Arc<B>) -> (Arc<Llama4<B>>, Demo) {
    let model = Arc::new(golden::load(be, &demo_dir()));
    let tok = Tokenizer::from_dir(demo_dir()).unwrap();
    let stops = GenerationConfig::from_dir(demo_dir()).unwrap().eos_token_ids;
    let constrainer = Constrainer::new(&tok, model.cfg.vocab_size, stops[0]).unwrap();
    let prompt = tok.encode("Describe the king of Israel", true).unwrap();
    (model, Demo { tok, constrainer, prompt, stops })
}

type Got = Arc<Mutex<(Vec<u32>, Option<Finish>)>>;

/// Runs `reqs` together, all in one batch and returns each one's tokens and how it ended.
fn run_all<B: Backend>(model: &Arc<Llama4<B>>, reqs: Vec<Request>) -> Vec<(Vec<u32>, Finish)> {
    run_with(model, reqs, SchedulerConfig::default().max_batch_tokens)
}

/// [`run_all`] with a batch budget of `max_batch_tokens` tokens a step.
fn run_with<B: Backend>(
    model: &Arc<Llama4<B>>,
    reqs: Vec<Request>,
    max_batch_tokens: usize,
) -> Vec<(Vec<u32>, Finish)> {
    let cfg = SchedulerConfig { max_seqs: reqs.len(), max_queue: reqs.len(), max_batch_tokens, ..Default::default() };
    let mut s = Scheduler::new(model.clone(), cfg).unwrap();
    let got: Vec<Got> = reqs.iter().map(|_| Got::default()).collect();
    for (r, g) in reqs.into_iter().zip(&got) {
        let g = g.clone();
        let sink = Box::new(move |e| {
            let mut g = g.lock().unwrap();
            match e {
                Event::Token(t) => g.0.push(t.id),
                Event::Done(f) => g.1 = Some(f),
            }
            true
        });
        s.submit(r, sink).unwrap();
    }
    pollster::block_on(s.run_to_idle()).unwrap();
    got.iter()
        .map(|g| {
            let mut g = g.lock().unwrap();
            (std::mem::take(&mut g.0), g.1.take().expect("every request ends"))
        })
        .collect()
}

fn request(d: &Demo, grammar: &Grammar, seed: u64, logprobs: bool) -> Request {
    let sampling = SamplingParams { temperature: 1.0, top_p: 0.95, seed: Some(seed), ..Default::default() };
    Request {
        constraint: Some(d.constrainer.start(grammar).unwrap()),
        logprobs: logprobs.then_some(0),
        ..Request::new(d.prompt.clone(), GenerateParams { max_tokens: 120, sampling, stop_ids: d.stops.clone() })
    }
}

/// `seeds` generations under each schema, all six schemas' requests in one batch (rows under different
/// grammars side by side in every step); each schema's outputs must include `min_distinct` different texts.
fn check_schemas<B: Backend>(be: &Arc<B>, what: &str, seeds: u64, min_distinct: usize) {
    let (model, d) = demo(be);
    let schemas = schemas();
    let reqs = schemas
        .iter()
        .flat_map(|(_, schema)| {
            let grammar = Grammar::JsonSchema(schema.clone());
            (0..seeds).map(move |seed| (grammar.clone(), seed))
        })
        .map(|(grammar, seed)| request(&d, &grammar, seed, false))
        .collect();
    let got = run_all(&model, reqs);
    for ((name, schema), got) in schemas.iter().zip(got.chunks(seeds as usize)) {
        let validator = jsonschema::validator_for(schema).unwrap();
        let mut distinct = std::collections::HashSet::new();
        for (seed, (ids, fin)) in got.iter().enumerate() {
            let text = d.tok.decode(ids, true).unwrap();
            assert!(
                matches!(fin.reason, Ok(StopReason::Stop(id)) if d.stops.contains(&id)),
                "{what}, {name}, seed {seed}: ended with {:?} after {text:?}",
                fin.reason
            );
            let v: Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{what}, {name}, seed {seed}: {text:?} is not JSON: {e}"));
            if let Err(e) = validator.validate(&v) {
                panic!("{what}, {name}, seed {seed}: {text} does not follow the schema: {e}");
            }
            distinct.insert(text);
        }
        // Sampled, not one answer forced on every seed (the enums schema has only 12 answers).
        assert!(distinct.len() >= min_distinct, "{what}, {name}: only {} distinct outputs", distinct.len());
        eprintln!("{what}, {name}: {seeds} valid, {} distinct", distinct.len());
    }
}

#[test]
fn sampled_outputs_follow_their_schemas_on_the_cpu() {
    check_schemas(&Arc::new(CpuBackend::new()), "cpu", SEEDS, 5);
}

#[test]
fn sampled_outputs_follow_their_schemas_on_wgpu() {
    let Some(be) = backend_or_not_run("wgpu", "HERD_REQUIRE_WGPU", herd_wgpu::WgpuBackend::new()) else { return };
    check_schemas(&be, "wgpu", WGPU_SEEDS, 2);
}

/// The host's mask (a request with log-probabilities is sampled on the host) and the device's (`mask_logits`
/// then `sample`) pick the same tokens, under a schema and a Lark grammar.
#[test]
fn host_and_device_masks_pick_the_same_tokens() {
    let be = Arc::new(CpuBackend::new());
    let (model, d) = demo(&be);
    let lark = Grammar::Lark("start: (\"yes\" | \"no\") \" \" /[a-z]{1,8}/ \".\"".into());
    for grammar in [Grammar::JsonSchema(schemas().into_iter().find(|s| s.0 == "numbers with ranges").unwrap().1), lark]
    {
        let device = run_all(&model, (0..8).map(|s| request(&d, &grammar, s, false)).collect());
        let host = run_all(&model, (0..8).map(|s| request(&d, &grammar, s, true)).collect());
        for (s, (a, b)) in device.iter().zip(&host).enumerate() {
            assert_eq!(a.0, b.0, "{grammar:?}, seed {s}: device and host differ");
        }
        if let Grammar::Lark(_) = grammar {
            for (ids, _) in &device {
                let text = d.tok.decode(ids, true).unwrap();
                let (word, rest) = text.split_once(' ').unwrap_or_else(|| panic!("{text:?}"));
                assert!(["yes", "no"].contains(&word) && rest.ends_with('.'), "{text:?}");
                assert!(rest[..rest.len() - 1].chars().all(|c| c.is_ascii_lowercase()), "{text:?}");
            }
        }
    }
}

/// What llguidance cannot compile is refused in one line that names it; so is a Lark syntax error.
#[test]
fn unsupported_schemas_are_refused_in_one_line() {
    let tok = Tokenizer::from_dir(demo_dir()).unwrap();
    let c = Constrainer::new(&tok, 4096, 1).unwrap();
    for (g, needle) in [
        (Grammar::JsonSchema(json!({"type": "array", "uniqueItems": true})), "uniqueItems"),
        (Grammar::JsonSchema(json!({"type": "strin"})), "strin"),
        (Grammar::Lark("start: (\"a\" ".into()), "grammar"),
    ] {
        let e = match c.start(&g) {
            Ok(_) => panic!("{g:?} was accepted"),
            Err(e) => e.to_string(),
        };
        assert!(e.contains(needle) && !e.contains('\n'), "{g:?}: {e}");
    }
}

/// A prompt read over several steps (a 7-token batch budget: chunked prefill) keeps its grammar until the
/// step that gives its first token, beside requests that decode meanwhile.
#[test]
fn prompts_read_over_several_steps_keep_their_grammar() {
    let be = Arc::new(CpuBackend::new());
    let (model, mut d) = demo(&be);
    d.prompt = d.tok.encode(&"and the king said ".repeat(12), true).unwrap();
    let (name, schema) = schemas().into_iter().find(|s| s.0 == "enums").unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let grammar = Grammar::JsonSchema(schema);
    let reqs = (0..4).map(|s| request(&d, &grammar, s, s % 2 == 1)).collect();
    for (seed, (ids, fin)) in run_with(&model, reqs, 7).iter().enumerate() {
        let text = d.tok.decode(ids, true).unwrap();
        assert!(matches!(fin.reason, Ok(StopReason::Stop(_))), "{name}, seed {seed}: {:?} {text:?}", fin.reason);
        let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name}, seed {seed}: {text:?}: {e}"));
        assert!(validator.is_valid(&v), "{name}, seed {seed}: {text}");
    }
}
