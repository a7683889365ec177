//! KV-cache behaviour on the CPU backend with the f32 fixtures (scout: chunk 8, NoPE/full layers 3 and
//! 7; maverick: chunk 8, dense/MoE interleaved; guard: no chunking, every layer full).
//!
//! Each check compares against an independent computation: transformers' logits (reference.safetensors)
//! where they cover the tokens, else herd's one-shot prefill of the same tokens into a fresh cache, where
//! attention reads only the step's new keys and never the cache, a different code path from cached
//! decoding (which reads ring buffers and relocated regions).

use std::path::Path;
use std::sync::Arc;

use herd_conformance::{fixture_dir, rel_err, Reference};
use herd_core::config::AttnKind;
use herd_core::cpu::CpuBackend;
use herd_core::kv::SeqId;
use herd_core::model::{Llama4, Rows};

const TOL: f64 = 1e-4;
const F32_FIXTURES: [&str; 3] = ["scout", "maverick", "guard"];

fn load(name: &str) -> Llama4<CpuBackend> {
    let dir = fixture_dir(name);
    load_dir(&dir)
}

fn load_dir(dir: &Path) -> Llama4<CpuBackend> {
    Llama4::from_dir(Arc::new(CpuBackend::new()), dir, &mut |_, _| {})
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
}

/// Deterministic token ids in 0..vocab (an LCG; no external randomness, so failures reproduce).
fn random_ids(seed: u64, n: usize, vocab: usize) -> Vec<u32> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(1);
    (0..n)
        .map(|_| {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((x >> 33) % vocab as u64) as u32
        })
        .collect()
}

/// Splits `len` tokens into pieces following `pattern` cyclically (the last piece cut to fit).
fn pieces_from(pattern: &[usize], len: usize) -> Vec<usize> {
    let mut out = Vec::new();
    let mut left = len;
    for &p in pattern.iter().cycle() {
        if left == 0 {
            break;
        }
        let p = p.min(left);
        out.push(p);
        left -= p;
    }
    out
}

/// Logits [T·V] of `toks` from one prefill into a fresh cache.
fn prefill_alone(m: &Llama4<CpuBackend>, toks: &[u32]) -> Vec<f32> {
    let mut cache = m.new_cache().unwrap();
    let s = cache.add_sequence();
    pollster::block_on(m.forward(&mut cache, &[(s, toks)], &[], Rows::All)).unwrap()
}

/// Asserts every position of `got` matches `want` (both [T·V]) to `TOL`; returns the worst error.
#[track_caller]
fn check_positions(label: &str, got: &[f32], want: &[f32], v: usize) -> f64 {
    assert_eq!(got.len(), want.len(), "{label}: {} logits, expected {}", got.len(), want.len());
    let mut worst = 0f64;
    for (pos, (g, w)) in got.chunks_exact(v).zip(want.chunks_exact(v)).enumerate() {
        let e = rel_err(g, w);
        assert!(e <= TOL, "{label}: position {pos}: relative error {e:.3e} > {TOL:.0e}");
        worst = worst.max(e);
    }
    worst
}

// ---------------------------------------------------------------------------------------------------
// (a) A row fed in uneven pieces reproduces transformers at every position.
// ---------------------------------------------------------------------------------------------------

fn uneven_pieces(name: &str) {
    let r = Reference::load(name);
    let m = load(name);
    let v = m.cfg.vocab_size;
    assert_eq!(r.vocab, v);
    let patterns: [&[usize]; 6] = [&[3, 1, 7, 9], &[1], &[8], &[7, 2, 9, 2], &[1, 1, 1, 17], &[5, 11, 1, 3]];
    for (b, (row, want)) in r.input_ids.iter().zip(&r.logits).enumerate() {
        for pattern in patterns {
            let pieces = pieces_from(pattern, row.len());
            // Rows::All: every position of every piece.
            let mut cache = m.new_cache().unwrap();
            let s = cache.add_sequence();
            let mut got = Vec::with_capacity(row.len() * v);
            let mut at = 0;
            for &n in &pieces {
                let out = pollster::block_on(m.forward(&mut cache, &[(s, &row[at..at + n])], &[], Rows::All)).unwrap();
                assert_eq!(out.len(), n * v);
                got.extend_from_slice(&out);
                at += n;
                assert_eq!(cache.seq_len(s).unwrap(), at);
            }
            let worst = check_positions(&format!("{name} row {b} pieces {pieces:?}"), &got, want, v);
            eprintln!("{name} row {b} pieces {pieces:?}: worst rel err {worst:.2e}");

            // Rows::Last: the last position of each piece.
            let mut cache = m.new_cache().unwrap();
            let s = cache.add_sequence();
            let mut at = 0;
            for &n in &pieces {
                let out = pollster::block_on(m.forward(&mut cache, &[(s, &row[at..at + n])], &[], Rows::Last)).unwrap();
                at += n;
                let e = rel_err(&out, &want[(at - 1) * v..at * v]);
                assert!(
                    e <= TOL,
                    "{name} row {b} pieces {pieces:?} (Rows::Last): position {}: relative error {e:.3e}",
                    at - 1
                );
            }
        }
    }
}

#[test]
fn uneven_pieces_scout() {
    uneven_pieces("scout");
}
#[test]
fn uneven_pieces_maverick() {
    uneven_pieces("maverick");
}
#[test]
fn uneven_pieces_guard() {
    uneven_pieces("guard");
}

// ---------------------------------------------------------------------------------------------------
// (b) Sequences joining and leaving one cache match each sequence alone.
// ---------------------------------------------------------------------------------------------------

struct Plan {
    /// The step at which the sequence is added to the cache.
    start: usize,
    tokens: Vec<u32>,
    pieces: Vec<usize>,
    /// Transformers' logits for these tokens, when they are a reference row.
    reference: Option<Vec<f32>>,
}

fn join_and_leave(name: &str) {
    let r = Reference::load(name);
    let m = load(name);
    let v = m.cfg.vocab_size;
    let ref_row = |i: usize| (r.input_ids[i].clone(), Some(r.logits[i].clone()));
    let rand_row = |seed: u64, n: usize| (random_ids(seed, n, v), None);
    // (start step, tokens, piece pattern): prefills, decodes and mixed steps overlap; some sequences
    // leave while others keep growing, and later ones join into the freed space.
    type Spec<'a> = (usize, (Vec<u32>, Option<Vec<f32>>), &'a [usize]);
    let specs: Vec<Spec> = vec![
        (0, ref_row(0), &[5, 1, 1, 1, 12]),
        (0, rand_row(1, 33), &[2, 1, 1, 10, 1, 1, 1, 1, 15]),
        (1, rand_row(2, 12), &[12]),
        (2, ref_row(r.input_ids.len() - 1), &[9, 1, 1, 9]),
        (3, rand_row(3, 40), &[1]),
        (5, rand_row(4, 17), &[16, 1]),
        (7, rand_row(5, 9), &[3, 6]),
        (9, rand_row(6, 26), &[1, 1, 24]),
        (20, rand_row(7, 30), &[7]),
    ];
    let plans: Vec<Plan> = specs
        .into_iter()
        .map(|(start, (tokens, reference), pattern)| {
            let pieces = pieces_from(pattern, tokens.len());
            Plan { start, tokens, pieces, reference }
        })
        .collect();

    let mut cache = m.new_cache().unwrap();
    let mut ids: Vec<Option<SeqId>> = vec![None; plans.len()];
    let mut next_piece = vec![0usize; plans.len()];
    let mut fed = vec![0usize; plans.len()];
    let mut got: Vec<Vec<f32>> = plans.iter().map(|p| Vec::with_capacity(p.tokens.len() * v)).collect();
    let mut removed: Vec<SeqId> = Vec::new();
    let mut max_batch = 0;
    for step in 0.. {
        for (i, p) in plans.iter().enumerate() {
            if p.start == step {
                ids[i] = Some(cache.add_sequence());
            }
        }
        let mut live: Vec<usize> =
            (0..plans.len()).filter(|&i| ids[i].is_some() && next_piece[i] < plans[i].pieces.len()).collect();
        if live.is_empty() {
            if plans.iter().all(|p| p.start <= step) {
                break;
            }
            continue;
        }
        // Row order varies from step to step.
        if step % 2 == 1 {
            live.reverse();
        }
        max_batch = max_batch.max(live.len());
        let batch: Vec<(SeqId, &[u32])> = live
            .iter()
            .map(|&i| {
                let n = plans[i].pieces[next_piece[i]];
                (ids[i].unwrap(), &plans[i].tokens[fed[i]..fed[i] + n])
            })
            .collect();
        let out = pollster::block_on(m.forward(&mut cache, &batch, &[], Rows::All)).unwrap();
        let mut off = 0;
        for &i in &live {
            let n = plans[i].pieces[next_piece[i]];
            got[i].extend_from_slice(&out[off..off + n * v]);
            off += n * v;
            fed[i] += n;
            next_piece[i] += 1;
            assert_eq!(cache.seq_len(ids[i].unwrap()).unwrap(), fed[i], "{name}: step {step}: length of sequence {i}");
        }
        assert_eq!(off, out.len());
        // Finished sequences leave right away.
        for &i in &live {
            if next_piece[i] == plans[i].pieces.len() {
                let id = ids[i].unwrap();
                cache.remove_sequence(id);
                removed.push(id);
            }
        }
        for id in &removed {
            assert!(cache.seq_len(*id).is_err(), "{name}: removed sequence {} is still known", id.0);
        }
    }
    assert!(max_batch >= 4, "{name}: the schedule should overlap at least 4 sequences, got {max_batch}");

    for (i, p) in plans.iter().enumerate() {
        assert_eq!(fed[i], p.tokens.len(), "{name}: sequence {i} not fully fed");
        let alone = prefill_alone(&m, &p.tokens);
        let worst =
            check_positions(&format!("{name} sequence {i} (pieces {:?}) vs alone", p.pieces), &got[i], &alone, v);
        eprintln!(
            "{name} sequence {i} ({} tokens, from step {}): worst rel err vs alone {worst:.2e}",
            p.tokens.len(),
            p.start
        );
        if let Some(want) = &p.reference {
            check_positions(&format!("{name} sequence {i} vs transformers"), &got[i], want, v);
        }
    }
}

#[test]
fn join_and_leave_scout() {
    join_and_leave("scout");
}
#[test]
fn join_and_leave_maverick() {
    join_and_leave("maverick");
}
#[test]
fn join_and_leave_guard() {
    join_and_leave("guard");
}

// ---------------------------------------------------------------------------------------------------
// (c) Long sequences decoded token by token match one prefill at every position.
// ---------------------------------------------------------------------------------------------------

/// Sequences of the given lengths, each starting at the given step with a prefill of the given size and
/// then decoding one token per step, all in one cache; each compared with its one-shot prefill.
fn long_decode(name: &str, seqs: &[(usize, usize, usize)]) {
    let m = load(name);
    let v = m.cfg.vocab_size;
    let chunk = m.cfg.attention_chunk_size;
    let rows: Vec<Vec<u32>> =
        seqs.iter().enumerate().map(|(i, &(_, len, _))| random_ids(100 + i as u64, len, v)).collect();
    let mut cache = m.new_cache().unwrap();
    let mut ids: Vec<Option<SeqId>> = vec![None; seqs.len()];
    let mut fed = vec![0usize; seqs.len()];
    let mut got: Vec<Vec<f32>> = rows.iter().map(|r| Vec::with_capacity(r.len() * v)).collect();
    for step in 0.. {
        for (i, &(start, _, _)) in seqs.iter().enumerate() {
            if start == step {
                ids[i] = Some(cache.add_sequence());
            }
        }
        let live: Vec<usize> = (0..seqs.len()).filter(|&i| ids[i].is_some() && fed[i] < rows[i].len()).collect();
        if live.is_empty() {
            if seqs.iter().all(|s| s.0 <= step) {
                break;
            }
            continue;
        }
        // The first step of a sequence is its prefill, every later one a single token.
        let take: Vec<usize> = live.iter().map(|&i| if fed[i] == 0 { seqs[i].2.max(1) } else { 1 }).collect();
        let batch: Vec<(SeqId, &[u32])> =
            live.iter().zip(&take).map(|(&i, &n)| (ids[i].unwrap(), &rows[i][fed[i]..fed[i] + n])).collect();
        let out = pollster::block_on(m.forward(&mut cache, &batch, &[], Rows::All)).unwrap();
        let mut off = 0;
        for (&i, &n) in live.iter().zip(&take) {
            got[i].extend_from_slice(&out[off..off + n * v]);
            off += n * v;
            fed[i] += n;
        }
    }
    for (i, row) in rows.iter().enumerate() {
        let alone = prefill_alone(&m, row);
        let label = format!(
            "{name} (chunk {chunk:?}) sequence {i} of {} tokens, decoded after a prefill of {}",
            row.len(),
            seqs[i].2.max(1)
        );
        let worst = check_positions(&label, &got[i], &alone, v);
        eprintln!("{label}: worst rel err {worst:.2e}");
    }
}

#[test]
fn long_decode_scout() {
    // 70 tokens through a ring of 8: wraps 8 times; full layers relocate 16 → 32 → 64 → 128 slots.
    long_decode("scout", &[(0, 70, 1)]);
}
#[test]
fn long_decode_scout_batched() {
    // Two long sequences in one cache, one joining late after a prefill that itself spans chunks.
    long_decode("scout", &[(0, 150, 1), (11, 70, 13), (40, 45, 8)]);
}
#[test]
fn long_decode_maverick() {
    long_decode("maverick", &[(0, 70, 1), (5, 61, 9)]);
}
#[test]
fn long_decode_guard() {
    // No chunking: every layer keeps the whole history.
    long_decode("guard", &[(0, 70, 1)]);
    long_decode("guard", &[(0, 130, 3), (20, 70, 17)]);
}

// ---------------------------------------------------------------------------------------------------
// (d) Memory: chunked layers stop growing at the chunk size, full layers keep growing.
// ---------------------------------------------------------------------------------------------------

/// (full layers, chunked layers, bytes per slot per layer: K and V, f32).
fn layout(m: &Llama4<CpuBackend>) -> (usize, usize, usize) {
    let full = m.cfg.layer_types.iter().filter(|&&k| k == AttnKind::Full).count();
    let chunked = m.cfg.layer_types.len() - full;
    (full, chunked, 2 * m.cfg.num_key_value_heads * m.cfg.head_dim * 4)
}

/// Bytes of a cache holding one sequence of `n` tokens fed as one prefill.
fn bytes_after_prefill(m: &Llama4<CpuBackend>, n: usize, seed: u64) -> usize {
    let mut cache = m.new_cache().unwrap();
    let s = cache.add_sequence();
    pollster::block_on(m.forward(&mut cache, &[(s, &random_ids(seed, n, m.cfg.vocab_size))], &[], Rows::Last)).unwrap();
    cache.bytes()
}

#[test]
fn chunked_layers_stop_growing() {
    for name in ["scout", "maverick"] {
        let m = load(name);
        let c = m.cfg.attention_chunk_size.unwrap();
        let (full, chunked, slot) = layout(&m);
        assert!(full > 0 && chunked > 0, "{name}: needs both layer kinds");
        let (b40, b80) = (bytes_after_prefill(&m, 40, 1), bytes_after_prefill(&m, 80, 2));
        eprintln!(
            "{name}: {full} full + {chunked} chunked layers, {slot} B/slot: 40 tokens {b40} B, 80 tokens {b80} B"
        );
        // The difference is exactly the full layers' share of 40 more tokens.
        assert_eq!(b80 - b40, full * 40 * slot, "{name}: 80-token cache minus 40-token cache");
        // And the totals: full layers hold every token, chunked layers one chunk.
        assert_eq!(b40, (full * 40 + chunked * c) * slot, "{name}: 40-token cache");
        assert_eq!(b80, (full * 80 + chunked * c) * slot, "{name}: 80-token cache");
    }
}

#[test]
fn chunked_layers_stop_growing_while_decoding() {
    let m = load("scout");
    let c = m.cfg.attention_chunk_size.unwrap();
    let (full, chunked, slot) = layout(&m);
    let ids = random_ids(9, 80, m.cfg.vocab_size);
    let mut cache = m.new_cache().unwrap();
    let s = cache.add_sequence();
    let mut last_full_slots = 0;
    let mut at = [0usize; 2];
    for (t, id) in ids.iter().enumerate() {
        pollster::block_on(m.forward(&mut cache, &[(s, &[*id])], &[], Rows::Last)).unwrap();
        let n = t + 1;
        let b = cache.bytes();
        if n >= c {
            // Whatever the full layers hold, the chunked layers hold exactly one chunk.
            let rest = b
                .checked_sub(chunked * c * slot)
                .unwrap_or_else(|| panic!("{n} tokens: {b} B is less than the chunked share"));
            assert_eq!(rest % (full * slot), 0, "{n} tokens: {b} B is not chunked share + whole full-layer slots");
            let full_slots = rest / (full * slot);
            assert!(full_slots >= n, "{n} tokens: full layers hold {full_slots} slots, fewer than the history");
            assert!(
                full_slots < 2 * n + 16,
                "{n} tokens: full layers hold {full_slots} slots, more than doubling needs"
            );
            assert!(full_slots >= last_full_slots, "{n} tokens: full layers shrank");
            last_full_slots = full_slots;
        }
        if n == 40 {
            at[0] = b;
        }
        if n == 80 {
            at[1] = b;
        }
    }
    // Growth between 40 and 80 tokens is entirely the full layers'.
    assert_eq!((at[1] - at[0]) % (full * slot), 0);
    assert!(at[1] > at[0], "full layers must grow between 40 and 80 tokens");
}

#[test]
fn unchunked_layers_all_grow() {
    let m = load("guard");
    let (full, chunked, slot) = layout(&m);
    assert_eq!(chunked, 0);
    let (b40, b80) = (bytes_after_prefill(&m, 40, 3), bytes_after_prefill(&m, 80, 4));
    assert_eq!(b40, full * 40 * slot);
    assert_eq!(b80 - b40, full * 40 * slot);
}

#[test]
fn two_sequences_each_hold_one_chunk() {
    let m = load("scout");
    let c = m.cfg.attention_chunk_size.unwrap();
    let (full, chunked, slot) = layout(&m);
    let mut cache = m.new_cache().unwrap();
    let (a, b) = (cache.add_sequence(), cache.add_sequence());
    let (ta, tb) = (random_ids(5, 50, m.cfg.vocab_size), random_ids(6, 30, m.cfg.vocab_size));
    pollster::block_on(m.forward(&mut cache, &[(a, &ta), (b, &tb)], &[], Rows::Last)).unwrap();
    assert_eq!(cache.bytes(), (full * (50 + 30) + chunked * 2 * c) * slot);
}

#[test]
fn fixtures_are_what_these_tests_assume() {
    // The chunk and layer layouts the tests above are written for.
    let scout = load("scout");
    assert_eq!(scout.cfg.attention_chunk_size, Some(8));
    let full: Vec<usize> = (0..8).filter(|&i| scout.cfg.layer_types[i] == AttnKind::Full).collect();
    assert_eq!(full, vec![3, 7]);
    assert_eq!(load("maverick").cfg.attention_chunk_size, Some(8));
    assert_eq!(load("guard").cfg.attention_chunk_size, None);
    for name in F32_FIXTURES {
        assert!(load(name).cfg.max_position_embeddings >= 150, "{name}");
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
        let cfg = SchedulerConfig { max_seqs: 1, max_batch_tokens: ctx, max_queue: 1, prefix_cache_tokens: ctx };
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
