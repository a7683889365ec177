//! The op table on the wgpu backend (Vulkan over Mesa lavapipe in CI), against the plain f64 references,
//! with the device's subgroup operations and without them.
//! With no adapter the test says so; with HERD_REQUIRE_WGPU=1 (set by scripts/test.sh, which installs
//! lavapipe) a missing adapter is a failure.

use herd_conformance::table::assert_backend_passes;
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
            herd_core::not_run("wgpu", Some("HERD_REQUIRE_WGPU"), &e);
            return;
        }
    };
    assert_backend_passes(&be);
}
