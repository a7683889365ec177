//! The op table on the CUDA backend, against the plain f64 references. It needs an NVIDIA GPU and driver:
//! without one the test says NOT RUN, and with HERD_REQUIRE_CUDA=1 (set by scripts/gpu-check.sh) that is a
//! failure. CI has no GPU; the GPU script runs this table through the `conformance` binary. CI runs the
//! table on the CUDA backend's CPU emulator instead: the same host code and .cu kernels, compiled as C++
//! (HERD_REQUIRE_CUDA_EMU=1 makes a missing C++ compiler a failure).

use herd_conformance::backend_or_not_run;
use herd_conformance::table::{assert_backend_passes, assert_picked_rows_pass};
use herd_cuda::CudaBackend;

#[test]
fn cuda_backend_passes_the_op_table() {
    if let Some(be) = backend_or_not_run(
        "cuda",
        "HERD_REQUIRE_CUDA",
        CudaBackend::with_options(0, &herd_conformance::cuda_options_from_env()),
    ) {
        table(&be);
    }
}

#[test]
fn cuda_emulator_passes_the_op_table() {
    if let Some(be) = backend_or_not_run(
        "cuda emulator",
        "HERD_REQUIRE_CUDA_EMU",
        CudaBackend::emulated_with(&herd_conformance::cuda_options_from_env()),
    ) {
        table(&be);
    }
}

/// The same table with the emulator's race check (emu.h): every load and store of every kernel is checked
/// for two threads touching the same bytes without a barrier between them, where a GPU would make the
/// result depend on scheduling (lanes of a warp relying on lock-step execution, or on a shuffle to publish
/// their stores). In two tests that the test threads run side by side (the check is slow): attention and
/// the MoE ops, then every other op and the bad calls.
#[test]
fn cuda_emulator_passes_the_op_table_under_the_race_check() {
    if let Some(be) = racecheck_emulator() {
        assert_picked_rows_pass(be.as_ref(), |op| !RACECHECK_APART.contains(&op), 100);
        let wrong = herd_conformance::bad_calls::bad_calls(be.as_ref());
        assert!(wrong.is_empty(), "bad calls not refused as they must be:\n{}", wrong.join("\n"));
    }
}

#[test]
fn cuda_emulator_passes_attention_and_moe_rows_under_the_race_check() {
    if let Some(be) = racecheck_emulator() {
        assert_picked_rows_pass(be.as_ref(), |op| RACECHECK_APART.contains(&op), 40);
    }
}

/// The ops of the race check's second test.
const RACECHECK_APART: [&str; 2] = ["attention", "moe"];

fn racecheck_emulator() -> Option<std::sync::Arc<CudaBackend>> {
    backend_or_not_run(
        "cuda emulator",
        "HERD_REQUIRE_CUDA_EMU",
        CudaBackend::emulated_with(&herd_cuda::CudaOptions {
            racecheck: true,
            ..herd_conformance::cuda_options_from_env()
        }),
    )
}

fn table(be: &CudaBackend) {
    assert_backend_passes(be);
}
