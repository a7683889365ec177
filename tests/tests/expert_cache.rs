//! Expert streaming (`--expert-cache`) on the CPU reference, wgpu (lavapipe in CI) and the CUDA backend's
//! CPU emulator: identical logits to the resident model at every budget, the budget never exceeded, damaged
//! expert files reported at fetch time (see `herd_conformance::streaming`). With no wgpu adapter or no C++
//! compiler for the emulator those parts say NOT RUN; HERD_REQUIRE_WGPU=1 / HERD_REQUIRE_CUDA_EMU=1
//! (scripts/test.sh) make that a failure.

use std::sync::Arc;

use herd_conformance::backend_or_not_run;
use herd_conformance::streaming::{check_damaged, check_identical, check_synthetic};
use herd_core::cpu::CpuBackend;

const CASES: [(&str, Option<&str>); 4] =
    [("scout", None), ("maverick", None), ("scout_bf16", None), ("scout", Some("q4g16"))];

#[test]
fn streaming_is_exact_on_cpu() {
    let be = Arc::new(CpuBackend::new());
    for (name, quant) in CASES {
        check_identical(&be, name, quant);
    }
    check_identical(&be, "maverick", Some("q8g16"));
    check_synthetic(&be, "scout", None);
    check_synthetic(&be, "maverick", Some("q4g16"));
}

#[test]
fn damaged_experts_are_errors_on_cpu() {
    let be = Arc::new(CpuBackend::new());
    check_damaged(&be, "scout", "cpu");
    check_damaged(&be, "scout_bf16", "cpu");
}

#[test]
fn streaming_is_exact_on_wgpu() {
    let Some(be) = backend_or_not_run("wgpu", "HERD_REQUIRE_WGPU", herd_wgpu::WgpuBackend::new()) else { return };
    for (name, quant) in CASES {
        check_identical(&be, name, quant);
    }
    check_synthetic(&be, "scout", Some("q4g16"));
    check_damaged(&be, "scout", "wgpu");
}

#[test]
fn streaming_is_exact_on_cuda_emulator() {
    let made = herd_cuda::CudaBackend::emulated_with(&herd_conformance::cuda_options_from_env());
    let Some(be) = backend_or_not_run("cuda-emu", "HERD_REQUIRE_CUDA_EMU", made) else { return };
    for (name, quant) in [("scout", None), ("maverick", None), ("scout", Some("q4g16"))] {
        check_identical(&be, name, quant);
    }
    check_damaged(&be, "scout", "cuda-emu");
}

/// On a GPU (scripts/gpu-check.sh sets HERD_REQUIRE_CUDA=1); NOT RUN elsewhere.
#[test]
fn streaming_is_exact_on_cuda() {
    let Some(be) = backend_or_not_run(
        "cuda",
        "HERD_REQUIRE_CUDA",
        herd_cuda::CudaBackend::with_options(0, &herd_conformance::cuda_options_from_env()),
    ) else {
        return;
    };
    for (name, quant) in CASES {
        check_identical(&be, name, quant);
    }
    check_synthetic(&be, "scout", Some("q4g16"));
    check_damaged(&be, "scout", "cuda");
}
