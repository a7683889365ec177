//! KV-cache behaviour on the CPU backend with the f32 fixtures (scout: chunk 8, NoPE/full layers 3 and
//! 7; maverick: chunk 8, dense/MoE interleaved; guard: no chunking, every layer full).
//!
//! Each check compares against an independent computation: transformers' logits (reference.safetensors)
//! where they cover the tokens, else herd's one-shot prefill of the same tokens into a fresh cache, where
//! attention reads only the step's new keys and never the cache, a different code path from cached
//! decoding (which reads pages through page tables, rings of pages, and pages shared between sequences).

use std::path::Path;
use std::sync::Arc;

use herd_conformance::{fixture_dir, random_ids, rel_err, Reference};
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
    // Pages of 3 slots (rings of 9 for a chunk of 8) and the CPU's own 16.
    for page in [3, 16] {
        uneven_pieces_paged(name, page);
    }
}

fn uneven_pieces_paged(name: &str, page: usize) {
    let r = Reference::load(name);
    let m = paged(name, page);
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
            let worst = check_positions(&format!("{name} row {b} pages of {page} pieces {pieces:?}"), &got, want, v);
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
    for page in [1, 3, 16] {
        join_and_leave_paged(name, page);
    }
}

fn join_and_leave_paged(name: &str, page: usize) {
    let r = Reference::load(name);
    let m = paged(name, page);
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
    for page in [3, 16] {
        long_decode_paged(name, seqs, page);
    }
}

fn long_decode_paged(name: &str, seqs: &[(usize, usize, usize)], page: usize) {
    let m = paged(name, page);
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
            "{name} (chunk {chunk:?}, pages of {page}) sequence {i} of {} tokens, decoded after a prefill of {}",
            row.len(),
            seqs[i].2.max(1)
        );
        let worst = check_positions(&label, &got[i], &alone, v);
        eprintln!("{label}: worst rel err {worst:.2e}");
    }
}

#[test]
fn long_decode_scout() {
    // 70 tokens through a ring of one chunk (8) in pages of 3 or 16: wraps many times.
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
// (d) Memory: pages are taken as positions are written; chunked layers stop at their ring of pages, full
// layers keep growing a page at a time.
// ---------------------------------------------------------------------------------------------------

/// (full layers, chunked layers, bytes per slot per layer: K and V, f32).
fn layout(m: &Llama4<CpuBackend>) -> (usize, usize, usize) {
    let full = m.cfg.layer_types.iter().filter(|&&k| k == AttnKind::Full).count();
    let chunked = m.cfg.layer_types.len() - full;
    (full, chunked, 2 * m.cfg.num_key_value_heads * m.cfg.head_dim * 4)
}

/// The bytes of one sequence of `n` tokens: ⌈n / page⌉ pages in every full layer, and in every chunked layer
/// as many of its ring's ⌈C / page⌉ pages as the tokens have reached.
fn expected_bytes(m: &Llama4<CpuBackend>, page: usize, n: usize) -> usize {
    let (full, chunked, slot) = layout(m);
    let ring = m.cfg.attention_chunk_size.map_or(usize::MAX, |c| c.div_ceil(page));
    (full * n.div_ceil(page) + chunked * n.div_ceil(page).min(ring)) * page * slot
}

fn paged(name: &str, page: usize) -> Llama4<CpuBackend> {
    herd_conformance::cpu_fixture(name, page)
}

/// Bytes of a cache holding one sequence of `n` tokens fed as one prefill.
fn bytes_after_prefill(m: &Llama4<CpuBackend>, n: usize, seed: u64) -> usize {
    let mut cache = m.new_cache().unwrap();
    let s = cache.add_sequence();
    pollster::block_on(m.forward(&mut cache, &[(s, &random_ids(seed, n, m.cfg.vocab_size))], &[], Rows::Last)).unwrap();
    assert!(cache.reserved_bytes() >= cache.bytes());
    cache.bytes()
}

#[test]
fn chunked_layers_stop_growing() {
    for name in ["scout", "maverick", "guard"] {
        for page in [1, 3, 16] {
            let m = paged(name, page);
            let (b40, b80) = (bytes_after_prefill(&m, 40, 1), bytes_after_prefill(&m, 80, 2));
            eprintln!("{name}, pages of {page}: 40 tokens {b40} B, 80 tokens {b80} B");
            assert_eq!(b40, expected_bytes(&m, page, 40), "{name}, pages of {page}: 40-token cache");
            assert_eq!(b80, expected_bytes(&m, page, 80), "{name}, pages of {page}: 80-token cache");
        }
    }
    // The chunked layers' share is the same at 40 and 80 tokens: the difference is the full layers' alone.
    let m = paged("scout", 3);
    let (full, _, slot) = layout(&m);
    assert_eq!(bytes_after_prefill(&m, 80, 3) - bytes_after_prefill(&m, 40, 4), full * (27 - 14) * 3 * slot);
}

#[test]
fn pages_are_taken_one_at_a_time_while_decoding() {
    for page in [3, 16] {
        let m = paged("scout", page);
        let ids = random_ids(9, 80, m.cfg.vocab_size);
        let mut cache = m.new_cache().unwrap();
        let s = cache.add_sequence();
        for (t, id) in ids.iter().enumerate() {
            pollster::block_on(m.forward(&mut cache, &[(s, &[*id])], &[], Rows::Last)).unwrap();
            assert_eq!(cache.bytes(), expected_bytes(&m, page, t + 1), "pages of {page}, {} tokens", t + 1);
            // The buffers grow by doubling: never more than twice what is held, plus the first few pages.
            let (full, chunked, slot) = layout(&m);
            assert!(cache.reserved_bytes() <= 2 * cache.bytes() + (full + chunked) * 4 * page * slot);
        }
    }
}

#[test]
fn two_sequences_each_hold_their_own_pages() {
    let m = paged("scout", 3);
    let mut cache = m.new_cache().unwrap();
    let (a, b) = (cache.add_sequence(), cache.add_sequence());
    let (ta, tb) = (random_ids(5, 50, m.cfg.vocab_size), random_ids(6, 30, m.cfg.vocab_size));
    pollster::block_on(m.forward(&mut cache, &[(a, &ta), (b, &tb)], &[], Rows::Last)).unwrap();
    assert_eq!(cache.bytes(), expected_bytes(&m, 3, 50) + expected_bytes(&m, 3, 30));
    // A removed sequence's pages go back to the pool and serve the next one without the buffers growing.
    let reserved = cache.reserved_bytes();
    cache.remove_sequence(a);
    assert_eq!(cache.bytes(), expected_bytes(&m, 3, 30));
    let c = cache.add_sequence();
    pollster::block_on(m.forward(&mut cache, &[(c, &ta[..45])], &[], Rows::Last)).unwrap();
    assert_eq!(cache.bytes(), expected_bytes(&m, 3, 30) + expected_bytes(&m, 3, 45));
    assert_eq!(cache.reserved_bytes(), reserved, "the freed pages were reused");
}

// ---------------------------------------------------------------------------------------------------
// (e) Shared prefixes: a fork shares its source's pages (nothing copied), and both go on writing their own
// tokens (copy-on-write of the page they share part of) without disturbing each other.
// ---------------------------------------------------------------------------------------------------

fn shared_prefix_then_diverge(name: &str, page: usize) {
    let r = Reference::load(name);
    let m = paged(name, page);
    let v = m.cfg.vocab_size;
    let row = &r.input_ids[0];
    let mut cache = m.new_cache().unwrap();
    let a = cache.add_sequence();
    let k = 11; // not a multiple of any page size here but 1: the last shared page is partly written
    let mut got_a = pollster::block_on(m.forward(&mut cache, &[(a, &row[..k])], &[], Rows::All)).unwrap();
    let held = cache.bytes();
    let (b, n) = cache.fork(m.backend(), a, k).unwrap();
    assert_eq!(n, k, "{name}: the whole prefix is reusable right after it was written");
    assert_eq!(cache.bytes(), held, "{name}, pages of {page}: forking copied pages");
    // A second fork, of part of the prefix (in the chunk the source is in: its ring holds all of it).
    let (c, n_c) = cache.fork(m.backend(), a, 9).unwrap();
    assert_eq!(n_c, 9);
    assert_eq!(cache.bytes(), held, "{name}, pages of {page}: forking copied pages");
    // The source goes on with its own row (checked against transformers), the forks with other tokens, in
    // one batch: prefill pieces, then decode steps.
    let tail_b = random_ids(40, 14, v);
    let tail_c = random_ids(41, 9, v);
    let (mut got_b, mut got_c) = (Vec::new(), Vec::new());
    let (mut fa, mut fb, mut fc) = (k, 0, 0);
    for step in 0.. {
        let na = if step == 0 { 3 } else { 1 }.min(row.len() - fa);
        let nb = if step == 0 { 5 } else { 1 }.min(tail_b.len() - fb);
        let nc = 1.min(tail_c.len() - fc);
        let mut batch: Vec<(herd_core::kv::SeqId, &[u32])> = Vec::new();
        if nb > 0 {
            batch.push((b, &tail_b[fb..fb + nb]));
        }
        if na > 0 {
            batch.push((a, &row[fa..fa + na]));
        }
        if nc > 0 {
            batch.push((c, &tail_c[fc..fc + nc]));
        }
        if batch.is_empty() {
            break;
        }
        let out = pollster::block_on(m.forward(&mut cache, &batch, &[], Rows::All)).unwrap();
        let mut off = 0;
        for (n, got) in [(nb, &mut got_b), (na, &mut got_a), (nc, &mut got_c)] {
            got.extend_from_slice(&out[off..off + n * v]);
            off += n * v;
        }
        fa += na;
        fb += nb;
        fc += nc;
    }
    let label = format!("{name}, pages of {page}");
    check_positions(&format!("{label}: the source vs transformers"), &got_a, &r.logits[0], v);
    let whole_b: Vec<u32> = row[..k].iter().chain(&tail_b).copied().collect();
    let alone_b = prefill_alone(&m, &whole_b);
    check_positions(&format!("{label}: the fork at {k} vs alone"), &got_b, &alone_b[k * v..], v);
    let whole_c: Vec<u32> = row[..9].iter().chain(&tail_c).copied().collect();
    let alone_c = prefill_alone(&m, &whole_c);
    check_positions(&format!("{label}: the fork at 9 vs alone"), &got_c, &alone_c[9 * v..], v);
    // The pages wholly inside a shared prefix are held once: less than three separate sequences would take
    // (with pages larger than the prefix, every fork copied the one page it shared).
    let separate = expected_bytes(&m, page, row.len())
        + expected_bytes(&m, page, whole_b.len())
        + expected_bytes(&m, page, whole_c.len());
    let held = cache.bytes();
    assert!(held < separate || (page > 9 && held == separate), "{label}: {held} B held, {separate} B separately");
    // Removing the source leaves the forks intact.
    cache.remove_sequence(a);
    let next = random_ids(42, 1, v);
    let out = pollster::block_on(m.forward(&mut cache, &[(b, &next)], &[], Rows::Last)).unwrap();
    let mut all_b = whole_b.clone();
    all_b.extend(&next);
    let want = prefill_alone(&m, &all_b);
    check_positions(&format!("{label}: the fork after its source left"), &out, &want[(all_b.len() - 1) * v..], v);
}

#[test]
fn shared_prefixes_diverge_by_copy_on_write() {
    for page in [1, 3, 16] {
        shared_prefix_then_diverge("scout", page);
        shared_prefix_then_diverge("guard", page);
    }
    shared_prefix_then_diverge("maverick", 5);
}

/// A fork of a prefix whose chunk the source has overwritten in its ring stops at that chunk's start.
#[test]
fn a_fork_stops_where_the_ring_was_overwritten() {
    let m = paged("scout", 3); // rings of 3 pages of 3: 9 slots for a chunk of 8
    let v = m.cfg.vocab_size;
    let ids = random_ids(50, 30, v);
    let mut cache = m.new_cache().unwrap();
    let a = cache.add_sequence();
    pollster::block_on(m.forward(&mut cache, &[(a, &ids)], &[], Rows::Last)).unwrap();
    // Position 20 is in the chunk 16..24, whose positions 16..20 the ring no longer holds (30 − 9 = 21).
    assert_eq!(cache.reusable(a, 20).unwrap(), 16);
    // Positions 24..28: the ring still holds 21..29.
    assert_eq!(cache.reusable(a, 28).unwrap(), 28);
    let (b, n) = cache.fork(m.backend(), a, 20).unwrap();
    assert_eq!(n, 16);
    let out = pollster::block_on(m.forward(&mut cache, &[(b, &ids[16..20])], &[], Rows::All)).unwrap();
    let want = prefill_alone(&m, &ids[..20]);
    check_positions("the fork fed from the chunk start", &out, &want[16 * v..], v);
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

/// Pools sized up front hold a sequence of that many pages without growing (no arena is copied).
#[test]
fn pools_reserved_up_front_do_not_grow() {
    let m = paged("scout", 3);
    let mut cache = m.new_cache().unwrap();
    cache.reserve_pages(m.backend(), 20).unwrap();
    let reserved = cache.reserved_bytes();
    let (full, chunked, slot) = layout(&m);
    assert_eq!(reserved, (full + chunked) * 20 * 3 * slot);
    let s = cache.add_sequence();
    pollster::block_on(m.forward(&mut cache, &[(s, &random_ids(7, 60, m.cfg.vocab_size))], &[], Rows::Last)).unwrap();
    assert_eq!(cache.bytes(), expected_bytes(&m, 3, 60));
    assert_eq!(cache.reserved_bytes(), reserved, "60 tokens (20 pages) grew the reserved pools");
}
