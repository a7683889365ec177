//! Continuous batching changes nothing: requests run together by the scheduler (joining mid-way, prompts
//! cut into pieces by a small batch budget) give each the tokens it gets alone, greedy and seeded; a
//! greedy request alone gives what a plain loop over the model gives (the whole prompt in one forward pass,
//! the argmax of its logits on the host, then one token at a time); a seeded request picks the same tokens
//! on the device as on the host (where log-probabilities send it). On the CPU and on wgpu, with the built-in
//! demo model (trained, so its greedy continuations are not degenerate) and a transformers fixture (chunked
//! attention across piece boundaries, MoE), and on CUDA (a GPU, or its emulator).

use std::sync::{Arc, Mutex};

use herd_conformance::{backend_or_not_run, golden, model_dir};
use herd_core::backend::Backend;
use herd_core::cpu::CpuBackend;
use herd_core::model::Llama4;
use herd_core::sampling::SamplingParams;
use herd_core::schedule::{Event, Finish, Request, Scheduler, SchedulerConfig};
use herd_core::schedule::{GenerateParams, StopReason};
use herd_core::HerdError;

/// What one request received: its tokens and how it ended.
type Got = Arc<Mutex<(Vec<u32>, Option<Finish>)>>;

fn sink(got: &Got) -> herd_core::schedule::Sink {
    let got = got.clone();
    Box::new(move |e| {
        let mut g = got.lock().unwrap();
        match e {
            Event::Token(t) => g.0.push(t.id),
            Event::Done(f) => {
                assert!(g.1.is_none(), "two Done events");
                g.1 = Some(f);
            }
        }
        true
    })
}

fn prompt(len: usize, seed: u32, vocab: usize) -> Vec<u32> {
    (0..len as u32)
        .map(|i| (i.wrapping_mul(2654435761).wrapping_add(seed.wrapping_mul(40503)) >> 7) % vocab as u32)
        .collect()
}

fn requests(vocab: usize, n: usize, seeded: bool) -> Vec<Request> {
    (0..n)
        .map(|i| {
            let sampling = if seeded {
                SamplingParams {
                    temperature: 0.9,
                    top_p: 0.95,
                    top_k: 40,
                    seed: Some(1000 + i as u64),
                    ..Default::default()
                }
            } else {
                SamplingParams::default()
            };
            Request::new(
                prompt([3, 17, 40, 9, 64, 1, 25, 33][i % 8] + i, i as u32, vocab),
                GenerateParams { max_tokens: 4 + (i * 5) % 13, sampling, stop_ids: Vec::new() },
            )
        })
        .collect()
}

/// Runs `reqs` through one scheduler; request i is submitted before step `join[i]`.
fn run<B: Backend>(model: &Arc<Llama4<B>>, reqs: &[Request], join: &[u64], cfg: SchedulerConfig) -> Vec<Vec<u32>> {
    let mut s = Scheduler::new(model.clone(), cfg).unwrap();
    let got: Vec<Got> = reqs.iter().map(|_| Got::default()).collect();
    let mut step = 0u64;
    loop {
        for (i, r) in reqs.iter().enumerate() {
            if join[i] == step {
                s.submit(r.clone(), sink(&got[i])).unwrap();
            }
        }
        if s.is_idle() && join.iter().all(|&j| j <= step) {
            break;
        }
        pollster::block_on(s.step()).unwrap();
        step += 1;
    }
    assert_eq!(s.cached_tokens(), 0, "the cache holds tokens of finished requests");
    got.iter()
        .zip(reqs)
        .map(|(g, r)| {
            let g = g.lock().unwrap();
            let f = g.1.as_ref().expect("every request ends with Done");
            assert_eq!(f.reason, Ok(StopReason::Length));
            assert_eq!((f.prompt_tokens, f.generated_tokens), (r.prompt.len(), g.0.len()));
            g.0.clone()
        })
        .collect()
}

fn alone<B: Backend>(model: &Arc<Llama4<B>>, reqs: &[Request]) -> Vec<Vec<u32>> {
    reqs.iter().map(|r| run(model, std::slice::from_ref(r), &[0], SchedulerConfig::default()).remove(0)).collect()
}

fn check_batching<B: Backend>(model: &Arc<Llama4<B>>, what: &str, counts: &[usize]) {
    for seeded in [false, true] {
        check_batching_of(model, what, counts, seeded);
    }
}

/// [`check_batching`] for greedy requests or for seeded sampled ones.
fn check_batching_of<B: Backend>(model: &Arc<Llama4<B>>, what: &str, counts: &[usize], seeded: bool) {
    let vocab = model.cfg.vocab_size;
    let all = requests(vocab, *counts.iter().max().unwrap(), seeded);
    let solo = alone(model, &all);
    if !seeded {
        for (r, got) in all.iter().zip(&solo) {
            let want = golden::reference_greedy(model, &r.prompt, r.params.max_tokens);
            assert_eq!(got, &want, "{what}: the scheduler's greedy tokens differ from a plain loop's");
        }
    } else {
        // Log-probabilities send a request's sampling to the host (`pick` on its logits); without them it
        // is sampled on the device. The same seed picks the same tokens either way.
        let host: Vec<Request> = all.iter().map(|r| Request { logprobs: Some(0), ..r.clone() }).collect();
        for (i, (h, d)) in alone(model, &host).iter().zip(&solo).enumerate() {
            assert_eq!(h, d, "{what}: seeded request {i}: host sampling differs from the device's");
        }
    }
    for &n in counts {
        let reqs = &all[..n];
        // Half join at once, the rest one every other step; a batch budget small enough to cut prompts.
        let join: Vec<u64> =
            (0..n).map(|i| if i < n.div_ceil(2) { 0 } else { 2 * (i - n.div_ceil(2)) as u64 + 1 }).collect();
        for cfg in [
            SchedulerConfig {
                max_seqs: 16,
                max_batch_tokens: 512,
                max_queue: 64,
                prefix_cache_tokens: 0,
                max_context: None,
            },
            SchedulerConfig {
                max_seqs: 4,
                max_batch_tokens: 7,
                max_queue: 64,
                prefix_cache_tokens: 0,
                max_context: None,
            },
        ] {
            let together = run(model, reqs, &join, cfg);
            for (i, (t, s)) in together.iter().zip(&solo).enumerate() {
                assert_eq!(t, s, "{what}: request {i} of {n} (seeded={seeded}, {cfg:?}) differs from its run alone");
            }
        }
    }
}

#[test]
fn batching_changes_nothing_on_cpu() {
    let be = Arc::new(CpuBackend::new());
    for name in ["demo", "scout"] {
        let model = Arc::new(golden::load(&be, &model_dir(name)));
        check_batching(&model, &format!("cpu, {name}"), &[1, 4, 16]);
    }
}

#[test]
fn batching_changes_nothing_on_wgpu() {
    let Some(be) = backend_or_not_run("wgpu", "HERD_REQUIRE_WGPU", herd_wgpu::WgpuBackend::new()) else { return };
    let model = Arc::new(golden::load(&be, &model_dir("demo")));
    check_batching(&model, "wgpu, demo", &[1, 4]);
}

/// The scheduler on the CUDA backend (what `herd serve --backend cuda` runs): batched decode steps of several
/// sequences (the GEMVs' several-row kernels, attention over several page tables) give each request what it
/// gets alone. On a GPU (scripts/gpu-check.sh; NOT RUN without one) with the demo model and a transformers
/// fixture, and on the CUDA backend's CPU emulator with the demo model.
#[test]
fn batching_changes_nothing_on_cuda() {
    let made = herd_cuda::CudaBackend::with_options(0, &herd_conformance::cuda_options_from_env());
    let Some(be) = backend_or_not_run("cuda", "HERD_REQUIRE_CUDA", made) else { return };
    for name in ["demo", "scout"] {
        let model = Arc::new(golden::load(&be, &model_dir(name)));
        check_batching(&model, &format!("cuda, {name}"), &[1, 4, 16]);
    }
}

/// Greedy and seeded requests are two tests on the emulator, so that the test threads run them side by side.
fn check_batching_on_the_cuda_emulator(seeded: bool) {
    let made = herd_cuda::CudaBackend::emulated_with(&herd_conformance::cuda_options_from_env());
    let Some(be) = backend_or_not_run("cuda emulator", "HERD_REQUIRE_CUDA_EMU", made) else { return };
    let model = Arc::new(golden::load(&be, &model_dir("demo")));
    check_batching_of(&model, "cuda emulator, demo", &[1, 4], seeded);
}

#[test]
fn greedy_batching_changes_nothing_on_the_cuda_emulator() {
    check_batching_on_the_cuda_emulator(false);
}

#[test]
fn seeded_batching_changes_nothing_on_the_cuda_emulator() {
    check_batching_on_the_cuda_emulator(true);
}

/// A sink that says stop ends its request within the step, frees its cache, and leaves the others as they
/// were; a cancelled waiting request never runs; refusals happen at submission.
#[test]
fn cancellation_and_refusals() {
    let be = Arc::new(CpuBackend::new());
    let model = Arc::new(golden::load(&be, &model_dir("demo")));
    let vocab = model.cfg.vocab_size;
    let reqs = requests(vocab, 3, false);
    let solo = alone(&model, &reqs);
    let mut s = Scheduler::new(
        model.clone(),
        SchedulerConfig { max_seqs: 2, max_batch_tokens: 64, max_queue: 2, prefix_cache_tokens: 0, max_context: None },
    )
    .unwrap();
    let got: Vec<Got> = (0..3).map(|_| Got::default()).collect();
    // Request 0 stops itself after two tokens.
    let g0 = got[0].clone();
    s.submit(
        reqs[0].clone(),
        Box::new(move |e| {
            let mut g = g0.lock().unwrap();
            match e {
                Event::Token(t) => g.0.push(t.id),
                Event::Done(f) => g.1 = Some(f),
            }
            g.0.len() < 2
        }),
    )
    .unwrap();
    s.submit(reqs[1].clone(), sink(&got[1])).unwrap();
    pollster::block_on(s.step()).unwrap(); // both join (max_seqs 2)
    let id2 = s.submit(reqs[2].clone(), sink(&got[2])).unwrap();
    let extra = s.submit(reqs[2].clone(), sink(&Got::default())).unwrap();
    let busy = s.submit(reqs[2].clone(), sink(&Got::default())).unwrap_err();
    assert!(matches!(busy, HerdError::Busy(_)), "{busy}");
    assert!(s.cancel(id2) && s.cancel(extra));
    assert!(!s.cancel(id2), "cancelled twice");
    pollster::block_on(s.run_to_idle()).unwrap();
    let g0 = got[0].lock().unwrap();
    assert_eq!(g0.1.as_ref().unwrap().reason, Ok(StopReason::Cancelled));
    assert_eq!(g0.0, solo[0][..2]);
    assert_eq!(got[1].lock().unwrap().0, solo[1], "a cancellation beside it changed a request");
    let g2 = got[2].lock().unwrap();
    assert!(g2.0.is_empty() && g2.1.as_ref().unwrap().reason == Ok(StopReason::Cancelled));
    assert_eq!(s.cached_tokens(), 0);
    let st = s.stats();
    assert_eq!((st.finished, st.cancelled), (1, 3));
    // Refused at submission, nothing queued.
    let bad = |prompt: Vec<u32>| Request::new(prompt, reqs[0].params.clone());
    assert!(s.submit(bad(vec![]), sink(&Got::default())).is_err());
    assert!(s.submit(bad(vec![vocab as u32]), sink(&Got::default())).is_err());
    assert!(s.submit(bad(vec![1; model.cfg.max_position_embeddings + 1]), sink(&Got::default())).is_err());
    let hot = Request::new(
        vec![1],
        GenerateParams {
            sampling: SamplingParams { temperature: -1.0, top_p: 2.0, ..Default::default() },
            ..reqs[0].params.clone()
        },
    );
    assert!(s.submit(hot, sink(&Got::default())).is_err());
    let penalty = Request { presence_penalty: 3.0, ..Request::new(vec![1], reqs[0].params.clone()) };
    assert!(s.submit(penalty, sink(&Got::default())).is_err());
    assert!(s.is_idle());
}

/// Runs requests one after another through one scheduler (so each can reuse what the earlier ones left);
/// each one's tokens and the prompt tokens it reused.
fn one_by_one<B: Backend>(s: &mut Scheduler<B>, reqs: &[Request]) -> Vec<(Vec<u32>, usize)> {
    reqs.iter()
        .map(|r| {
            let g = Got::default();
            s.submit(r.clone(), sink(&g)).unwrap();
            pollster::block_on(s.run_to_idle()).unwrap();
            let g = g.lock().unwrap();
            let f = g.1.as_ref().unwrap();
            assert_eq!(f.reason, Ok(StopReason::Length));
            (g.0.clone(), f.cached_tokens)
        })
        .collect()
}

/// Prefix reuse changes nothing: requests whose prompts begin like earlier or running ones (a chat's next
/// turn holding the previous answer, the same prompt twice, shared prefixes ending inside and at the
/// boundaries of the scout fixture's 8-token attention chunks, a source that has moved on past the chunk
/// the prefix ends in) give exactly the tokens they get alone with no reuse, one after another and all
/// together with prompts cut into pieces; the reused counts are what the cache can give; the kept tokens
/// stay within the budget, least recently used out first.
#[test]
fn prefix_reuse_changes_nothing() {
    check_prefix_reuse(&Arc::new(CpuBackend::new()), &["demo", "scout"]);
}

#[test]
fn prefix_reuse_changes_nothing_on_wgpu() {
    let Some(be) = backend_or_not_run("wgpu", "HERD_REQUIRE_WGPU", herd_wgpu::WgpuBackend::new()) else { return };
    check_prefix_reuse(&be, &["demo"]);
}

fn check_prefix_reuse<B: Backend>(be: &Arc<B>, names: &[&str]) {
    for &name in names {
        let model = Arc::new(golden::load(be, &model_dir(name)));
        let vocab = model.cfg.vocab_size;
        let chunked = model.cfg.attention_chunk_size.is_some() && name == "scout";
        let params = |n: usize| GenerateParams { max_tokens: n, sampling: SamplingParams::default(), stop_ids: vec![] };
        let cat = |a: &[u32], b: &[u32]| [a, b].concat();
        let base = prompt(21, 5, vocab);
        let first = Request::new(base.clone(), params(6));
        let first_out = alone(&model, std::slice::from_ref(&first)).remove(0);
        let reqs = vec![
            first.clone(),
            Request::new(cat(&base[..13], &prompt(5, 9, vocab)), params(5)), // shares 13: inside a chunk
            Request::new(cat(&cat(&base, &first_out), &prompt(4, 11, vocab)), params(7)), // the next turn
            Request::new(base.clone(), params(3)),                           // the same prompt again
            Request::new(cat(&base[..16], &prompt(6, 13, vocab)), params(4)), // shares 16: a chunk boundary
            Request::new(prompt(9, 77, vocab), params(4)),
        ];
        let solo = alone(&model, &reqs);
        let cfg = |budget| SchedulerConfig {
            max_seqs: 6,
            max_batch_tokens: 7,
            max_queue: 64,
            prefix_cache_tokens: budget,
            max_context: None,
        };
        let mut s = Scheduler::new(model.clone(), cfg(10_000)).unwrap();
        let got = one_by_one(&mut s, &reqs);
        for (i, ((t, _), want)) in got.iter().zip(&solo).enumerate() {
            assert_eq!(t, want, "{name}: request {i}, one after another with prefix reuse, differs from its run alone");
        }
        let cached: Vec<usize> = got.iter().map(|g| g.1).collect();
        // The first ended holding 21 + 5 tokens. Chunked layers keep only the current chunk (8 tokens in the
        // scout fixture's, 32 in the demo's): a prefix of 13 ends in chunk 8..16, which the first request's
        // later tokens (16..26) overwrote, so only 8 are reused (scout). The next turn (request 2) begins with
        // all the first holds, so it takes that sequence over and leaves it 37 long; the same prompt again
        // (request 3, 20 to reuse) then finds positions 0..5 of the demo's first chunk overwritten by 32..37
        // and reuses request 1's 13 instead (in scout's chunk 16..24 only 16 and 17 were lost: 16 reused).
        let want = if chunked { [0, 8, 26, 16, 16, 0] } else { [0, 13, 26, 13, 16, 0] };
        assert_eq!(cached, want, "{name}: prompt tokens reused");
        assert_eq!(s.stats().cached_prompt_tokens, want.iter().sum::<usize>() as u64);
        assert_eq!(s.cached_tokens(), 0);
        // All at once, joining every other step: reuse from running requests too.
        let join: Vec<u64> = (0..reqs.len() as u64).map(|i| 2 * i).collect();
        let together = run(&model, &reqs, &join, cfg(10_000));
        assert_eq!(together, solo, "{name}: requests run together with prefix reuse differ from their runs alone");
        // A budget of 30 tokens keeps the last one or two ended requests only.
        let mut s = Scheduler::new(model.clone(), cfg(30)).unwrap();
        let got = one_by_one(&mut s, &[reqs[0].clone(), reqs[5].clone(), reqs[3].clone()]);
        assert!(s.kept_tokens() <= 30, "{} tokens kept", s.kept_tokens());
        assert_eq!((got[0].0.clone(), got[2].0.clone()), (solo[0].clone(), solo[3].clone()));
        assert_eq!(got[2].1, 0, "{name}: the first request's tokens were evicted (26 + 12 > 30)");
        s.clear_prefix_cache();
        assert_eq!(s.kept_tokens(), 0);
        // A budget of 0 turns reuse off, from kept and running requests alike.
        let mut s = Scheduler::new(model.clone(), cfg(0)).unwrap();
        let got = one_by_one(&mut s, &reqs[..4]);
        assert!(got.iter().all(|g| g.1 == 0) && s.stats().cached_prompt_tokens == 0);
        assert_eq!(got.into_iter().map(|g| g.0).collect::<Vec<_>>(), solo[..4]);
    }
}

/// A chat through the scheduler feeds only what a new turn adds: its next turn takes over the sequence the
/// last one left (no copy), generates the same ids as a fresh scheduler fed the whole conversation, and a
/// conversation that does not extend the cached one reuses only what it shares.
#[test]
fn a_chat_reuses_the_cached_prefix_across_turns() {
    use herd_core::sampling::SamplingParams;
    use herd_core::schedule::GenerateParams;
    use herd_core::schedule::{queue, Event, Finish, Request, Scheduler, SchedulerConfig};
    let r = herd_conformance::Reference::load("scout");
    let m = std::sync::Arc::new(
        herd_core::model::Llama4::from_dir(
            std::sync::Arc::new(herd_core::cpu::CpuBackend::new()),
            &herd_conformance::fixture_dir("scout"),
            &mut |_, _| {},
        )
        .unwrap(),
    );
    let ctx = m.cfg.max_position_embeddings;
    let chat = || {
        let cfg = SchedulerConfig {
            max_seqs: 1,
            max_batch_tokens: ctx,
            max_queue: 1,
            prefix_cache_tokens: ctx,
            max_context: None,
        };
        Scheduler::new(m.clone(), cfg).unwrap()
    };
    let turn = |s: &mut Scheduler<_>, ids: &[u32]| -> (Vec<u32>, Finish) {
        let params = GenerateParams { max_tokens: 6, sampling: SamplingParams::default(), stop_ids: vec![] };
        let (sink, events) = queue();
        s.submit(Request::new(ids.to_vec(), params), sink).unwrap();
        pollster::block_on(s.run_to_idle()).unwrap();
        let mut out = Vec::new();
        loop {
            match events.pop().expect("a Done event") {
                Event::Token(t) => out.push(t.id),
                Event::Done(f) => return (out, f),
            }
        }
    };
    let mut s = chat();
    let turn1: Vec<u32> = r.input_ids[0].clone();
    let (out1, st1) = turn(&mut s, &turn1);
    assert_eq!((st1.prompt_tokens, st1.cached_tokens), (turn1.len(), 0));
    // transformers' greedy continuation of the same prompt.
    assert_eq!(out1, r.greedy_ids[0][..6].to_vec());
    assert_eq!(s.kept_tokens(), turn1.len() + 5, "the conversation (all but the last id, never fed) is kept");
    // Turn 2: the conversation so far, plus new user tokens.
    let mut turn2 = turn1.clone();
    turn2.extend(&out1);
    turn2.extend(&r.input_ids[1][..5]);
    let (out2, st2) = turn(&mut s, &turn2);
    // Only the last generated id (never fed) and the new tokens were fed.
    assert_eq!(st2.prompt_tokens - st2.cached_tokens, 1 + 5);
    assert_eq!(s.kept_tokens(), turn2.len() + 5, "the turn continued the kept sequence in place");
    let (want2, st_fresh) = turn(&mut chat(), &turn2);
    assert_eq!(st_fresh.cached_tokens, 0);
    assert_eq!(out2, want2);
    // A conversation that does not extend the cached one reuses what it shares, and nothing else changes.
    let other: Vec<u32> = r.input_ids[1].clone();
    let shared = other.iter().zip(&turn2).take_while(|(a, b)| a == b).count();
    let (out3, st3) = turn(&mut s, &other);
    assert!(st3.cached_tokens <= shared, "{} reused of {shared} shared", st3.cached_tokens);
    assert_eq!(out3, turn(&mut chat(), &other).0);
}
