//! Golden tests: herd's CPU reference backend against Hugging Face transformers on tiny random Llama 4
//! models (tests/fixtures, made by tests/tools/make_fixtures.py). f32 fixtures must match to 1e-4
//! relative error (max |Δ| / max |ref|) with identical greedy ids; the bf16 fixture, where transformers
//! rounds every activation to bf16 and herd keeps f32 activations, to BF16_TOL.

use std::path::Path;
use std::sync::Arc;

use herd_conformance::{fixture_dir, rel_err, Reference};
use herd_core::cpu::CpuBackend;
use herd_core::generate::{greedy_rows, score_rows};
use herd_core::model::Llama4;

const F32_TOL: f64 = 1e-4;
/// bf16 activations in transformers vs f32 activations here: a few bf16 ulps of drift over the layers.
const BF16_TOL: f64 = 3e-2;

fn load(dir: &Path) -> Llama4<CpuBackend> {
    Llama4::from_dir(Arc::new(CpuBackend::new()), dir, &mut |_, _| {})
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
}

fn check_logits(name: &str, tol: f64, decode: bool) {
    let r = Reference::load(name);
    let m = load(&fixture_dir(name));
    let got = score_rows(&m, &r.input_ids, decode).unwrap();
    for (b, (g, want)) in got.iter().zip(&r.logits).enumerate() {
        let e = rel_err(g, want);
        eprintln!("{name} row {b} decode={decode}: rel err {e:.2e}");
        assert!(e <= tol, "{name} row {b} (decode={decode}): relative error {e:.3e} > {tol:.0e}");
    }
}

fn check_greedy(name: &str) {
    let r = Reference::load(name);
    let m = load(&fixture_dir(name));
    let n = r.greedy_ids[0].len();
    let got = greedy_rows(&m, &r.input_ids, n).unwrap();
    assert_eq!(got, r.greedy_ids, "{name}: greedy continuation differs from transformers");
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
    let m = load(&dir);
    let got = score_rows(&m, &r.input_ids, false).unwrap();
    std::fs::remove_dir_all(&dir).ok();
    for (g, want) in got.iter().zip(&r.logits) {
        let e = rel_err(g, want);
        assert!(e <= F32_TOL, "published dialect: relative error {e:.3e}");
    }
}
