//! The op table on the CPU reference backend, against the plain f64 reference implementations.

use herd_conformance::table::{assert_backend_passes, assert_rows_pass};
use herd_core::cpu::{CpuBackend, Simd};

/// Every row, and the bad calls every backend refuses with its op's check message (ops_wgpu.rs and ops_cuda.rs
/// run the same).
#[test]
fn cpu_backend_passes_the_op_table() {
    assert_backend_passes(&CpuBackend::new());
}

/// The ops with vector kernels, at every other level of them this processor runs (the scalar fallback
/// included): each level is checked against the reference, not only the best one.
#[test]
fn every_cpu_kernel_level_passes_the_op_table() {
    let best = Simd::detect();
    for simd in Simd::available().into_iter().filter(|&s| s != best) {
        for op in ["matmul", "swiglu", "moe", "attention"] {
            assert_rows_pass(&CpuBackend::with_simd(simd), Some(op));
        }
    }
}

/// Every op of the Backend trait has rows in the table: the trait's methods are read from its source, so a
/// new op without rows fails here. The methods that are not ops (buffers, weights, reads) are named, with
/// where their behaviour is checked.
#[test]
fn every_backend_op_has_rows_in_the_table() {
    let src = include_str!("../../core/src/backend/mod.rs");
    let body = &src[src.find("pub trait Backend").expect("the Backend trait")..];
    let body = &body[..body.find("\n}\n").expect("the trait's end")];
    let methods: Vec<&str> = body
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("fn "))
        .map(|l| l.split(['(', '<']).next().unwrap_or(""))
        // An op's checked arguments go to its run_ method: the op itself is what the table calls.
        .filter(|m| !m.starts_with("run_"))
        .collect();
    assert!(methods.len() > 20, "the trait's methods were not found: {methods:?}");
    // Not ops: the backend's name, buffers and weights (exercised by every row), and the synthetic weights
    // (checked against the host generator in golden_cuda.rs, the one backend that makes them itself).
    let not_ops = [
        "name",
        "buffer_desc",
        "weight_desc",
        "stats",
        "max_buffer_len",
        "kv_page_size",
        "alloc",
        "alloc_u32",
        "free_memory",
        "upload",
        "upload_u32",
        "read",
        "read_u32",
        "read_async",
        "read_u32_async",
        // Decode's ids read into a kept vector: every scheduler test's greedy text goes through it (schedule.rs).
        "read_u32_into",
        "load_weight",
        // The embedding table's upload (every golden test's embed reads through it; golden.rs checks the CPU's
        // two places for weights).
        "load_table",
        "synthetic_weight",
        "alloc_weight",
        "write_weight_row",
        "host_to_device_peak_gbps",
        // How the op table's reference rounds a matmul's activations (the matmul and swiglu rows).
        "matmul_activation_block",
    ];
    let ops: std::collections::BTreeSet<&str> = herd_conformance::table::cases().iter().map(|c| c.op()).collect();
    let missing: Vec<_> = methods.iter().filter(|m| !not_ops.contains(m) && !ops.contains(*m)).collect();
    assert!(missing.is_empty(), "Backend ops without rows in the op table: {missing:?}");
    let stale: Vec<_> = not_ops.iter().filter(|m| !methods.contains(m)).collect();
    assert!(stale.is_empty(), "names in not_ops that the trait no longer has: {stale:?}");
}
