//! Golden tests: herd's CPU reference backend against Hugging Face transformers on tiny random Llama 4
//! models (tests/fixtures, made by tests/tools/make_fixtures.py). f32 fixtures must match to 1e-4
//! relative error (max |Δ| / max |ref|) with identical greedy ids; the bf16 fixture, where transformers
//! rounds every activation to bf16 and herd keeps f32 activations, to BF16_TOL. The built-in demo model
//! (native/demo, trained by tests/tools/train_demo.py) is checked the same way: its bf16 weights, with the
//! reference computed in f32.

use std::sync::Arc;

use herd_conformance::golden::{self, BF16_TOL, F32_TOL};
use herd_conformance::{fixture_dir, rel_err, Reference};
use herd_core::cpu::CpuBackend;
use herd_core::generate::score_rows;

fn cpu() -> Arc<CpuBackend> {
    Arc::new(CpuBackend::new())
}
fn check_logits(name: &str, tol: f64, decode: bool) {
    golden::check_logits(&cpu(), name, tol, decode)
}
fn check_greedy(name: &str) {
    golden::check_greedy(&cpu(), name)
}

/// Both places the CPU backend keeps weights (huge pages are the default where Linux has them, so the other
/// tests cover that one there): the same references either way.
#[test]
fn weights_mapped_or_in_huge_pages() {
    use herd_core::cpu::WeightMemory;
    for want in [WeightMemory::Mapped, WeightMemory::HugePages] {
        let be = Arc::new(CpuBackend::new().with_weight_memory(want));
        if be.weight_memory() != want {
            // Not silent: where the kernel has no transparent huge pages the backend keeps the mapping.
            eprintln!("weights in huge pages: NOT RUN (no transparent huge pages here); the mapping checked instead");
        }
        golden::check_logits(&be, "maverick", F32_TOL, false);
    }
}

#[test]
fn scout_prefill_logits() {
    check_logits("scout", F32_TOL, false);
}
#[test]
fn scout_decode_logits() {
    check_logits("scout", F32_TOL, true);
}
#[test]
fn scout_greedy() {
    check_greedy("scout");
}
#[test]
fn maverick_prefill_logits() {
    check_logits("maverick", F32_TOL, false);
}
#[test]
fn maverick_decode_logits() {
    check_logits("maverick", F32_TOL, true);
}
#[test]
fn maverick_greedy() {
    check_greedy("maverick");
}
#[test]
fn guard_prefill_and_decode_logits() {
    check_logits("guard", F32_TOL, false);
    check_logits("guard", F32_TOL, true);
}
#[test]
fn guard_greedy() {
    check_greedy("guard");
}
/// Decode logits and greedy ids through KV caches of other page sizes than the CPU's 16: one slot, 3 and 5
/// (which do not divide the fixtures' chunk of 8: rings of 9 and 10 slots), and exactly one chunk.
#[test]
fn fixtures_through_pages_of_several_sizes() {
    for name in ["scout", "maverick", "guard"] {
        for page in [1, 3, 5, 8] {
            golden::check_logits_paged(&cpu(), name, F32_TOL, true, Some(page));
            golden::check_greedy_paged(&cpu(), name, Some(page));
        }
    }
}
/// The built-in demo model (trained, bf16 weights; the reference computes in f32 from those weights).
#[test]
fn demo_model_logits_and_greedy() {
    check_logits("demo", F32_TOL, false);
    check_logits("demo", F32_TOL, true);
    check_greedy("demo");
}
#[test]
fn bf16_checkpoint_logits() {
    check_logits("scout_bf16", BF16_TOL, false);
    check_logits("scout_bf16", BF16_TOL, true);
}

/// The published checkpoints' config dialect (rope_theta + rope_scaling, torch_dtype, no_rope_layers: [],
/// no moe_layers/layer_types, attn_temperature_tuning: 4) loads to the same model.
#[test]
fn published_config_dialect_gives_same_logits() {
    let src = fixture_dir("scout");
    let dir = std::env::temp_dir().join(format!("herd-published-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(src.join("config.published.json"), dir.join("config.json")).unwrap();
    std::fs::copy(src.join("model.safetensors"), dir.join("model.safetensors")).unwrap();
    let r = Reference::load("scout");
    let m = golden::load(&cpu(), &dir);
    let got = pollster::block_on(score_rows(&m, &r.input_ids, &[], false)).unwrap();
    std::fs::remove_dir_all(&dir).ok();
    for (g, want) in got.iter().zip(&r.logits) {
        let e = rel_err(g, want);
        assert!(e <= F32_TOL, "published dialect: relative error {e:.3e}");
    }
}
