//! `conformance`: the op table on every backend present. `--perf` also times each row (GB/s, GFLOP/s);
//! `--op NAME` keeps rows whose op contains NAME. Exits non-zero if any row fails.

use herd_conformance::table::{format_table, run_table};
use herd_core::backend::Backend;
use herd_core::cpu::CpuBackend;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let perf = args.iter().any(|a| a == "--perf");
    let filter = args.iter().position(|a| a == "--op").and_then(|i| args.get(i + 1)).map(String::as_str);
    let be = CpuBackend::new();
    let rows = run_table(&be, perf, filter);
    print!("{}", format_table(&be.name(), &rows));
    if rows.iter().any(|r| !r.passed()) {
        std::process::exit(1);
    }
}
