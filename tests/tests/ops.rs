//! The op table on the CPU reference backend, against the plain f64 reference implementations.

use herd_conformance::table::{format_table, run_table};
use herd_core::cpu::CpuBackend;

#[test]
fn cpu_backend_passes_the_op_table() {
    let rows = run_table(&CpuBackend::new(), false, None);
    let table = format_table("cpu", &rows);
    eprintln!("{table}");
    assert!(rows.len() > 40, "the table lost rows: {}", rows.len());
    let failed: Vec<_> = rows.iter().filter(|r| !r.passed()).map(|r| format!("{} {}", r.op, r.case)).collect();
    assert!(failed.is_empty(), "failing rows: {failed:?}\n{table}");
}

/// The quantized formats (int8/int4, group-wise) on the CPU reference (ops_wgpu.rs and ops_cuda.rs run the
/// same rows on their backends).
#[test]
fn cpu_backend_passes_the_quantized_rows() {
    let rows = herd_conformance::quant_table::run_quant_table(&CpuBackend::new(), false, None);
    let table = format_table("cpu", &rows);
    eprintln!("{table}");
    assert!(rows.len() >= 15, "the quantized table lost rows: {}", rows.len());
    let failed: Vec<_> =
        rows.iter().filter(|r| !r.passed()).map(|r| format!("{} {} ({:?})", r.op, r.case, r.error)).collect();
    assert!(failed.is_empty(), "failing rows: {failed:?}\n{table}");
}

/// The bad calls every backend refuses with its op's check message (ops_wgpu.rs and ops_cuda.rs run the same
/// rows).
#[test]
fn cpu_backend_refuses_the_bad_calls() {
    let wrong = herd_conformance::bad_calls::bad_calls(&CpuBackend::new());
    assert!(wrong.is_empty(), "bad calls not refused as they must be:\n{}", wrong.join("\n"));
}
