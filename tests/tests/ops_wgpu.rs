//! The op table on the wgpu backend (Vulkan over Mesa lavapipe in CI), against the plain f64 references,
//! with the device's subgroup operations and without them.
//! With no adapter the test says so; with HERD_REQUIRE_WGPU=1 (set by scripts/test.sh, which installs
//! lavapipe) a missing adapter is a failure.

use herd_conformance::quant_table::run_quant_table;
use herd_conformance::table::{format_table, run_table};
use herd_core::backend::Backend;
use herd_wgpu::{WgpuBackend, WgpuOptions};

#[test]
fn wgpu_backend_passes_the_op_table() {
    op_table(&WgpuOptions { subgroups: Some(true), ..Default::default() });
}

/// The shaders' fallback reductions (for devices without subgroups, as many browsers are), on the same
/// device.
#[test]
fn wgpu_backend_without_subgroups_passes_the_op_table() {
    op_table(&WgpuOptions { subgroups: Some(false), ..Default::default() });
}

/// The kernels a CPU adapter in a browser (SwiftShader) takes, without barriers, on the same device.
#[test]
fn wgpu_backend_with_cpu_kernels_passes_the_op_table() {
    op_table(&WgpuOptions { subgroups: Some(false), cpu_kernels: Some(true), ..Default::default() });
}

fn op_table(opts: &WgpuOptions) {
    let be = match WgpuBackend::with_options(opts) {
        Ok(b) => b,
        Err(e) => {
            assert!(std::env::var("HERD_REQUIRE_WGPU").as_deref() != Ok("1"), "wgpu required but not available: {e}");
            eprintln!("wgpu: NOT RUN ({e})");
            return;
        }
    };
    let mut rows = run_table(&be, false, None);
    rows.extend(run_quant_table(&be, false, None));
    let table = format_table(&be.name(), &rows);
    eprintln!("{table}");
    assert!(rows.len() > 40, "the table lost rows: {}", rows.len());
    let failed: Vec<_> =
        rows.iter().filter(|r| !r.passed()).map(|r| format!("{} {} ({:?})", r.op, r.case, r.error)).collect();
    assert!(failed.is_empty(), "failing rows: {failed:?}\n{table}");
    let wrong = herd_conformance::bad_calls::bad_calls(&be);
    assert!(wrong.is_empty(), "bad calls not refused as they must be:\n{}", wrong.join("\n"));
}
