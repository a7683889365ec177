//! Golden tests on the wgpu backend (Vulkan over Mesa lavapipe in CI): the same transformers references
//! and tolerances as the CPU. With no adapter the tests say so; with HERD_REQUIRE_WGPU=1 (set by
//! scripts/test.sh) a missing adapter is a failure.

use std::sync::{Arc, OnceLock};

use herd_conformance::golden::{
    check_greedy, check_greedy_paged, check_logits, check_logits_paged, load, BF16_TOL, F32_TOL,
};
use herd_conformance::{fixture_dir, Reference};
use herd_core::model::Rows;
use herd_wgpu::{WgpuBackend, WgpuOptions};

/// One device for the whole file (opening one per test is slow on lavapipe).
fn gpu() -> Option<Arc<WgpuBackend>> {
    static GPU: OnceLock<Option<Arc<WgpuBackend>>> = OnceLock::new();
    GPU.get_or_init(|| herd_conformance::backend_or_not_run("wgpu", "HERD_REQUIRE_WGPU", WgpuBackend::new())).clone()
}

/// A second device with `opts` (after the first opened: a missing adapter is reported once, by [`gpu`]).
fn gpu_with(opts: &WgpuOptions) -> Option<Arc<WgpuBackend>> {
    gpu()?;
    Some(Arc::new(WgpuBackend::with_options(opts).expect("the adapter opened once already")))
}

#[test]
fn golden_fixtures_on_wgpu() {
    let Some(be) = gpu() else { return };
    for name in ["scout", "maverick", "guard", "demo"] {
        check_logits(&be, name, F32_TOL, false);
        check_logits(&be, name, F32_TOL, true);
        check_greedy(&be, name);
    }
    check_logits(&be, "scout_bf16", BF16_TOL, false);
    check_logits(&be, "scout_bf16", BF16_TOL, true);
    // Other page sizes than the backend's 16: 3 does not divide the chunk of 8 (rings of 9 slots), 1 is a
    // page per slot.
    for page in [1, 3] {
        check_logits_paged(&be, "scout", F32_TOL, true, Some(page));
        check_greedy_paged(&be, "scout", Some(page));
    }
    check_logits_paged(&be, "guard", F32_TOL, true, Some(5));
}

/// Under 8 KiB storage bindings (one sequence's logits fill one) every weight above that is split across
/// bindings (embedding, lm_head, the expert tensors by whole experts), prompts run as steps of a few
/// tokens, and the KV cache of the full-attention layers spreads over several buffers: the results must
/// not change.
#[test]
fn golden_fixtures_on_wgpu_with_tiny_bindings() {
    let Some(be) = gpu_with(&WgpuOptions { max_binding: Some(8 << 10), ..Default::default() }) else { return };
    for name in ["scout", "maverick"] {
        check_logits(&be, name, F32_TOL, false);
        check_logits(&be, name, F32_TOL, true);
        check_greedy(&be, name);
    }
    // Here a cache buffer holds 4 pages of 16 slots. Three sequences of 20 prompt tokens (two pages each)
    // need two buffers; then the first grows to a third page while its buffer is full and moves to another.
    // Every logit row is checked against the CPU reference backend fed the same tokens.
    let r = Reference::load("scout");
    let m = load(&be, &fixture_dir("scout"));
    let cpu = load(&Arc::new(herd_core::cpu::CpuBackend::new()), &fixture_dir("scout"));
    let rows: Vec<Vec<u32>> =
        (0..3).map(|i| r.input_ids[i % r.input_ids.len()].iter().map(|&t| (t + i as u32) % 2048).collect()).collect();
    let mut cache = m.new_cache().unwrap();
    let mut cpu_cache = cpu.new_cache().unwrap();
    let ids: Vec<_> = rows.iter().map(|_| cache.add_sequence()).collect();
    let cpu_ids: Vec<_> = rows.iter().map(|_| cpu_cache.add_sequence()).collect();
    let mut step = |feed: &[(usize, &[u32])]| {
        let batch: Vec<_> = feed.iter().map(|&(i, t)| (ids[i], t)).collect();
        let got = pollster::block_on(m.forward(&mut cache, &batch, &[], Rows::Last)).unwrap();
        let batch: Vec<_> = feed.iter().map(|&(i, t)| (cpu_ids[i], t)).collect();
        let want = pollster::block_on(cpu.forward(&mut cpu_cache, &batch, &[], Rows::Last)).unwrap();
        let e = herd_conformance::rel_err(&got, &want);
        assert!(e <= F32_TOL, "tiny bindings vs the CPU: relative error {e:.3e}");
    };
    step(&[(0, &rows[0]), (1, &rows[1]), (2, &rows[2])]);
    let more: Vec<u32> = (0..13).map(|i| (i * 91 % 2048) as u32).collect();
    step(&[(0, &more[..4]), (1, &more[4..5])]);
    step(&[(0, &more[4..12]), (2, &more[12..])]);
    for t in &more[..3] {
        step(&[(0, std::slice::from_ref(t)), (1, std::slice::from_ref(t)), (2, std::slice::from_ref(t))]);
    }
    assert!(cache.arenas().0 > 2, "the full-attention cache stayed in {} buffer(s)", cache.arenas().0);
    // One sequence whose keys cannot fit one buffer is refused with a clear error, not a device error.
    let mut cache = m.new_cache().unwrap();
    let seq = cache.add_sequence();
    let long: Vec<u32> = (0..70).map(|i| (i * 37 % 2048) as u32).collect();
    let e = pollster::block_on(m.forward(&mut cache, &[(seq, &long)], &[], Rows::Last))
        .expect_err("70 tokens cannot fit 64 slots")
        .to_string();
    assert!(e.contains("largest buffer") && !e.contains('\n'), "{e}");
    assert_eq!(cache.seq_len(seq).unwrap(), 0, "refused before any step ran");
}

/// The vision path (tests/fixtures/scout_vision): the tower's rows, then logits and greedy ids with two
/// images in the prompt.
#[test]
fn images_in_prompts_match_transformers_on_wgpu() {
    let Some(be) = gpu() else { return };
    herd_conformance::vision::check_all(&be);
}

/// Under 1.5 MiB bindings the tower runs the 5-tile image as five passes of one tile each (and the
/// prompt as several steps): the results must not change.
#[test]
fn images_in_prompts_match_transformers_on_wgpu_in_passes() {
    let Some(be) = gpu_with(&WgpuOptions { max_binding: Some(3 << 19), ..Default::default() }) else { return };
    herd_conformance::vision::check_all(&be);
}

/// Two threads running models on one device at once: each op records as one unbroken run (an op's
/// metadata and scratch buffers are not shared with another thread's op), so both get transformers'
/// logits.
#[test]
fn two_threads_share_one_device() {
    let Some(be) = gpu() else { return };
    std::thread::scope(|s| {
        for name in ["scout", "maverick"] {
            let be = be.clone();
            s.spawn(move || {
                check_logits(&be, name, F32_TOL, true);
                check_logits(&be, name, F32_TOL, false);
            });
        }
    });
}
