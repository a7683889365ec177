//! The vision path against transformers (tests/fixtures/scout_vision) on the CPU reference backend.

use std::sync::Arc;

use herd_conformance::vision;
use herd_core::cpu::CpuBackend;

#[test]
fn image_features_match_transformers_on_cpu() {
    vision::check_features(&Arc::new(CpuBackend::new()));
}
