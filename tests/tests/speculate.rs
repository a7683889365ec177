//! Speculative decoding changes no greedy token and keeps the sampled distribution.
//!
//! - Greedy: requests decoded with each drafter (prompt lookup; a draft model that is the target itself, a
//!   good guesser; another model of the same vocabulary, a bad guesser) give the tokens of a plain loop over
//!   the target (the prompt in one forward pass, then the argmax of each step's logits on the host), alone and
//!   four at once under a batch budget that cuts the drafts; on the CPU (the demo model and two transformers
//!   fixtures whose 8-token chunks make verifications meet chunk boundaries), on wgpu, on the CUDA backend's
//!   emulator and (NOT RUN without a GPU; scripts/gpu-check.sh) on CUDA.
//! - Sampling: the joint law of the first three tokens of many seeded requests, decoded with a draft model,
//!   matches the target's probabilities (from plain forward passes) by a chi-squared test; the same test on
//!   tokens made by a wrong rule (a rejected draft redrawn from p itself instead of the residual) fails.

use std::sync::{Arc, Mutex};

use herd_conformance::{backend_or_not_run, golden, model_dir};
use herd_core::backend::Backend;
use herd_core::cpu::CpuBackend;
use herd_core::model::{Llama4, Rows};
use herd_core::sampling::{distribution, Distribution, SamplingParams};
use herd_core::schedule::{Event, GenerateParams, Request, Scheduler, SchedulerConfig};
use herd_core::speculate::{DraftModel, Drafter, PromptLookup};

type Got = Arc<Mutex<Vec<u32>>>;

/// Makes a fresh drafter (each scheduler takes its own).
type MakeDrafter = Box<dyn Fn() -> Box<dyn Drafter>>;

fn sink(got: &Got) -> herd_core::schedule::Sink {
    let got = got.clone();
    Box::new(move |e| {
        match e {
            Event::Token(t) => got.lock().unwrap().push(t.id),
            Event::Done(f) => assert!(f.reason.is_ok(), "a request failed: {:?}", f.reason),
        }
        true
    })
}

/// Prompts that repeat themselves (so prompt lookup drafts), of several lengths.
fn prompts(vocab: usize) -> Vec<Vec<u32>> {
    (0..4u32)
        .map(|i| {
            let unit: Vec<u32> = (0..3 + i).map(|j| (j * 7919 + i * 104_729 + 11) % vocab as u32).collect();
            unit.iter().cycle().take(9 + 5 * i as usize).copied().collect()
        })
        .collect()
}

/// Runs `prompts` greedily, `n` tokens each, all at once through one scheduler with `drafter`.
fn speculated<B: Backend>(
    model: &Arc<Llama4<B>>,
    prompts: &[Vec<u32>],
    n: usize,
    drafter: Box<dyn Drafter>,
    cfg: SchedulerConfig,
) -> (Vec<Vec<u32>>, herd_core::schedule::SchedulerStats) {
    let mut s = Scheduler::new(model.clone(), cfg).unwrap();
    s.set_drafter(drafter, 6, false).unwrap();
    let got: Vec<Got> = prompts.iter().map(|_| Got::default()).collect();
    for (p, g) in prompts.iter().zip(&got) {
        let params = GenerateParams { max_tokens: n, sampling: SamplingParams::default(), stop_ids: vec![] };
        s.submit(Request::new(p.clone(), params), sink(g)).unwrap();
    }
    pollster::block_on(s.run_to_idle()).unwrap();
    assert_eq!(s.cached_tokens(), 0);
    (got.iter().map(|g| g.lock().unwrap().clone()).collect(), s.stats())
}

/// `prompts_n` prompts, `n` tokens each; alone, then four at once.
fn check_greedy<B: Backend>(be: &Arc<B>, target: &str, drafts: &[&str], prompts_n: usize, n: usize) {
    let model = Arc::new(golden::load(be, &model_dir(target)));
    let ps: Vec<Vec<u32>> = prompts(model.cfg.vocab_size).into_iter().take(prompts_n).collect();
    let want: Vec<Vec<u32>> = ps.iter().map(|p| golden::reference_greedy(&model, p, n)).collect();
    let mut drafters: Vec<(String, MakeDrafter)> =
        vec![("ngram".into(), Box::new(|| Box::new(PromptLookup::default())))];
    for &d in drafts {
        let dm = if d == target { model.clone() } else { Arc::new(golden::load(be, &model_dir(d))) };
        let vocab = model.cfg.vocab_size;
        drafters.push((
            format!("draft:{d}"),
            Box::new(move || Box::new(DraftModel::new(dm.clone(), vocab, "d".into()).unwrap())),
        ));
    }
    let configs = [
        SchedulerConfig {
            max_seqs: 1,
            max_batch_tokens: 4096,
            max_queue: 8,
            prefix_cache_tokens: 0,
            max_context: None,
        },
        SchedulerConfig { max_seqs: 4, max_batch_tokens: 9, max_queue: 8, prefix_cache_tokens: 64, max_context: None },
    ];
    for (name, make) in &drafters {
        for cfg in configs {
            let (got, st) = if cfg.max_seqs == 1 {
                let mut all = Vec::new();
                let mut stats = herd_core::schedule::SchedulerStats::default();
                for p in &ps {
                    let (g, s) = speculated(&model, std::slice::from_ref(p), n, make(), cfg);
                    all.extend(g);
                    stats.drafted_tokens += s.drafted_tokens;
                    stats.accepted_tokens += s.accepted_tokens;
                }
                (all, stats)
            } else {
                speculated(&model, &ps, n, make(), cfg)
            };
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert_eq!(g, w, "{target} with {name}, prompt {i}, {cfg:?}: speculation changed greedy tokens");
            }
            assert!(st.drafted_tokens > 0, "{target} with {name}: nothing was drafted, nothing was checked");
            eprintln!(
                "{target} with {name} ({} seqs): {} of {} drafted tokens kept",
                cfg.max_seqs, st.accepted_tokens, st.drafted_tokens
            );
        }
    }
}

#[test]
fn greedy_tokens_unchanged_on_cpu() {
    let be = Arc::new(CpuBackend::new());
    check_greedy(&be, "demo", &["demo", "guard_marker"], 4, 32);
    check_greedy(&be, "scout", &["scout", "maverick"], 4, 32);
}

#[test]
fn greedy_tokens_unchanged_on_wgpu() {
    let Some(be) = backend_or_not_run("wgpu", "HERD_REQUIRE_WGPU", herd_wgpu::WgpuBackend::new()) else { return };
    check_greedy(&be, "demo", &["guard_marker"], 3, 24);
}

/// The target's distribution after `ctx`, with `p`.
fn target_dist<B: Backend>(model: &Llama4<B>, ctx: &[u32], p: &SamplingParams) -> Distribution {
    let mut cache = model.new_cache().unwrap();
    let seq = cache.add_sequence();
    let mut logits = pollster::block_on(model.forward(&mut cache, &[(seq, ctx)], &[], Rows::Last)).unwrap();
    distribution(&mut logits, &[], p)
}

/// Pearson's statistic of `counts` against `probs` over `n` draws, cells of expected count under 5 merged;
/// and its 0.999 quantile (Wilson-Hilferty).
fn chi2(counts: &[usize], probs: &[f64], n: usize) -> (f64, f64) {
    let (mut stat, mut cells, mut small_c, mut small_p) = (0.0, 0usize, 0usize, 0.0);
    for (&c, &p) in counts.iter().zip(probs) {
        if n as f64 * p < 5.0 {
            small_c += c;
            small_p += p;
            continue;
        }
        stat += (c as f64 - n as f64 * p).powi(2) / (n as f64 * p);
        cells += 1;
    }
    if small_p > 0.0 {
        stat += (small_c as f64 - n as f64 * small_p).powi(2) / (n as f64 * small_p);
        cells += 1;
    }
    let df = (cells - 1) as f64;
    let z = 3.09;
    let q = df * (1.0 - 2.0 / (9.0 * df) + z * (2.0 / (9.0 * df)).sqrt()).powi(3);
    (stat, q)
}

#[test]
fn sampled_tokens_keep_the_target_distribution() {
    let be = Arc::new(CpuBackend::new());
    let model = Arc::new(golden::load(&be, &model_dir("demo")));
    let vocab = model.cfg.vocab_size;
    let p = SamplingParams { temperature: 1.0, top_k: 3, ..Default::default() };
    let prompt: Vec<u32> = prompts(vocab)[1].clone();
    // The target's law of the first three tokens: p(a) p(b | a) p(c | a, b) over the top-3 supports.
    let mut cells: Vec<([u32; 3], f64)> = Vec::new();
    let support = |d: &Distribution| -> Vec<(u32, f64)> {
        match d {
            Distribution::Point(id) => vec![(*id, 1.0)],
            Distribution::Weights { cand, .. } => cand.iter().map(|c| (c.0, d.prob(c.0))).collect(),
        }
    };
    let d0 = target_dist(&model, &prompt, &p);
    let mut conds: std::collections::HashMap<Vec<u32>, Distribution> = Default::default();
    for (a, pa) in support(&d0) {
        let ctx: Vec<u32> = prompt.iter().copied().chain([a]).collect();
        let d1 = target_dist(&model, &ctx, &p);
        for (b, pb) in support(&d1) {
            let ctx2: Vec<u32> = ctx.iter().copied().chain([b]).collect();
            let d2 = target_dist(&model, &ctx2, &p);
            for (c, pc) in support(&d2) {
                cells.push(([a, b, c], pa * pb * pc));
            }
            conds.insert(ctx2, d2);
        }
        conds.insert(ctx, d1);
    }
    let cell = |t: &[u32]| cells.iter().position(|c| c.0[..] == t[..]).expect("a token outside the target's support");
    let probs: Vec<f64> = cells.iter().map(|c| c.1).collect();
    let n = 2000;
    // Speculated: a draft model (the target itself, drafting greedily) proposes the second token.
    let mut s = Scheduler::new(
        model.clone(),
        SchedulerConfig {
            max_seqs: 64,
            max_batch_tokens: 4096,
            max_queue: n,
            prefix_cache_tokens: 0,
            max_context: None,
        },
    )
    .unwrap();
    s.set_drafter(Box::new(DraftModel::new(model.clone(), vocab, "self".into()).unwrap()), 4, false).unwrap();
    let got: Vec<Got> = (0..n).map(|_| Got::default()).collect();
    for (i, g) in got.iter().enumerate() {
        let params =
            GenerateParams { max_tokens: 3, sampling: SamplingParams { seed: Some(i as u64), ..p }, stop_ids: vec![] };
        s.submit(Request::new(prompt.clone(), params), sink(g)).unwrap();
    }
    pollster::block_on(s.run_to_idle()).unwrap();
    let st = s.stats();
    assert!(st.drafted_tokens >= n as u64 && st.accepted_tokens > 0 && st.accepted_tokens < st.drafted_tokens);
    let mut counts = vec![0usize; cells.len()];
    for g in &got {
        counts[cell(&g.lock().unwrap())] += 1;
    }
    let (stat, limit) = chi2(&counts, &probs, n);
    eprintln!(
        "speculated: chi2 {stat:.1} (limit {limit:.1}); {} of {} drafts kept",
        st.accepted_tokens, st.drafted_tokens
    );
    assert!(stat < limit, "speculative sampling changed the distribution: chi2 {stat:.1} >= {limit:.1}");
    // A wrong rule on the same drafts: keep the draft with p(x), else redraw from p (the draft may come back).
    let mut rng = Xorshift(0x9E37_79B9_7F4A_7C15);
    let mut keep = Xorshift(0xD1B5_4A32_D192_ED03);
    let mut draw = |d: &Distribution| -> u32 {
        let u = rng.uniform();
        let mut acc = 0.0;
        for (id, pr) in support(d) {
            acc += pr;
            if u < acc {
                return id;
            }
        }
        support(d).last().unwrap().0
    };
    let mut wrong = vec![0usize; cells.len()];
    for _ in 0..n {
        let a = draw(&d0);
        let ctx: Vec<u32> = prompt.iter().copied().chain([a]).collect();
        let d1 = &conds[&ctx];
        let x = match d1 {
            Distribution::Point(id) => *id,
            Distribution::Weights { best, .. } => *best,
        };
        let b = if keep.uniform() < d1.prob(x) { x } else { draw(d1) };
        let ctx2: Vec<u32> = ctx.iter().copied().chain([b]).collect();
        let c = draw(&conds[&ctx2]);
        wrong[cell(&[a, b, c])] += 1;
    }
    let (bad, limit) = chi2(&wrong, &probs, n);
    eprintln!("wrong rule: chi2 {bad:.1} (limit {limit:.1})");
    assert!(bad > limit, "the test cannot tell a wrong acceptance rule: chi2 {bad:.1} < {limit:.1}");
}

/// Uniform draws in [0, 1) for the wrong rule (any source of randomness will do).
struct Xorshift(u64);

impl Xorshift {
    fn uniform(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[test]
fn greedy_tokens_unchanged_on_cuda() {
    let made = herd_cuda::CudaBackend::with_options(0, &herd_conformance::cuda_options_from_env());
    let Some(be) = backend_or_not_run("cuda", "HERD_REQUIRE_CUDA", made) else { return };
    check_greedy(&be, "demo", &["guard_marker"], 3, 24);
    check_greedy(&be, "scout", &["maverick"], 3, 24);
}

#[test]
fn greedy_tokens_unchanged_on_the_cuda_emulator() {
    let made = herd_cuda::CudaBackend::emulated_with(&herd_conformance::cuda_options_from_env());
    let Some(be) = backend_or_not_run("cuda emulator", "HERD_REQUIRE_CUDA_EMU", made) else { return };
    check_greedy(&be, "demo", &["guard_marker"], 2, 16);
}
