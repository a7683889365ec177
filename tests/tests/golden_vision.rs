//! The vision path against transformers (tests/fixtures/scout_vision) on the CPU reference backend: the
//! tower's rows, logits with two images in the prompt (prefill and decode) and greedy ids.

use std::sync::Arc;

use herd_conformance::vision;
use herd_core::cpu::CpuBackend;

#[test]
fn images_in_prompts_match_transformers_on_cpu() {
    vision::check_all(&Arc::new(CpuBackend::new()));
}
