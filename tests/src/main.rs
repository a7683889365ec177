//! `conformance`: the op table on every backend present (cpu, wgpu, cuda); `--backend cuda-emu` runs it on the
//! CUDA backend's CPU emulator. `--perf` also times each row (GB/s,
//! GFLOP/s); `--op NAME` keeps rows whose op contains NAME; `--backend NAME` runs one backend. A backend
//! that is not present is reported as not run; `--subgroups` / `--no-subgroups` force wgpu's reductions onto
//! subgroup operations or off them (by default: on for hardware GPUs that have them). With
//! HERD_REQUIRE_CUDA=1 a missing CUDA device counts as a failure (a GPU run cannot pass by skipping).
//! `--cpu-simd scalar|avx2|avx512|neon|simd128` runs the CPU backend's kernels of that level (default: the best
//! it has). Built without its default features (`wgpu`, `cuda`), it runs the CPU backend alone: how the op
//! table runs for other processors, under an emulator (scripts/cross-test.sh). Exits non-zero if any row fails.

use herd_conformance::table::{dispatch_cost, format_table, run_table, RowResult};
use herd_core::backend::Backend;
use herd_core::cpu::CpuBackend;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |flag: &str| args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1)).map(String::as_str);
    let perf = args.iter().any(|a| a == "--perf");
    let filter = arg("--op");
    let only = arg("--backend");
    let want = |name: &str| only.is_none_or(|o| o == name);
    let mut all: Vec<RowResult> = Vec::new();
    let mut run = |name: String, rows: Vec<RowResult>| {
        println!("{}", format_table(&name, &rows));
        all.extend(rows);
    };
    if want("cpu") {
        // --cpu-simd LEVEL: the CPU kernels of that level (Simd::name) instead of the best this processor runs.
        let be = match arg("--cpu-simd").map(herd_core::cpu::Simd::parse) {
            None => CpuBackend::new(),
            Some(Ok(simd)) => CpuBackend::with_simd(simd),
            Some(Err(e)) => {
                eprintln!("error: {e}");
                std::process::exit(2);
            }
        };
        run(be.name(), run_table(&be, perf, filter));
        if perf {
            print_dispatch_cost(&be);
        }
    }
    #[cfg(feature = "wgpu")]
    if want("wgpu") {
        wgpu_table(&args, perf, filter, &mut run);
    }
    #[allow(unused_mut)]
    let mut missing = 0;
    #[cfg(feature = "cuda")]
    {
        missing += cuda_tables(only, perf, filter, &mut run);
    }
    let failed = all.iter().filter(|r| !r.passed()).count() + missing;
    println!("conformance: {} passed, {} failed", all.len() + missing - failed, failed);
    if failed > 0 {
        std::process::exit(1);
    }
}

fn print_dispatch_cost<B: Backend>(be: &B) {
    match dispatch_cost(be, 2000) {
        Ok((rec, total)) => {
            println!(
                "{}: fixed cost per op: {rec:.2} us recording, {total:.2} us in total (2000 one-element adds)\n",
                be.name()
            )
        }
        Err(e) => println!("{}: fixed cost per op: ERROR {e}\n", be.name()),
    }
}

/// The op table on the wgpu backend, when it has an adapter.
#[cfg(feature = "wgpu")]
fn wgpu_table(args: &[String], perf: bool, filter: Option<&str>, run: &mut impl FnMut(String, Vec<RowResult>)) {
    use herd_wgpu::{WgpuBackend, WgpuOptions};
    let subgroups = if args.iter().any(|a| a == "--no-subgroups") {
        Some(false)
    } else if args.iter().any(|a| a == "--subgroups") {
        Some(true)
    } else {
        None
    };
    // --cpu-kernels: the kernels a CPU adapter in a browser takes (no barriers), on this device.
    let cpu_kernels = args.iter().any(|a| a == "--cpu-kernels").then_some(true);
    let opts = WgpuOptions { subgroups, cpu_kernels, ..Default::default() };
    match WgpuBackend::with_options(&opts) {
        Ok(be) => {
            run(be.name(), run_table(&be, perf, filter));
            if perf {
                print_dispatch_cost(&be);
            }
        }
        Err(e) => println!("backend wgpu: NOT RUN ({e})\n"),
    }
}

/// The op table on the CUDA backend (and, asked for by name, on its CPU emulator); returns how many backends
/// that had to run could not.
#[cfg(feature = "cuda")]
fn cuda_tables(
    only: Option<&str>,
    perf: bool,
    filter: Option<&str>,
    run: &mut impl FnMut(String, Vec<RowResult>),
) -> usize {
    use herd_cuda::CudaBackend;
    let want = |name: &str| only.is_none_or(|o| o == name);
    let mut missing = 0;
    if want("cuda") {
        match CudaBackend::with_options(0, &herd_conformance::cuda_options_from_env()) {
            Ok(be) => {
                run(be.name(), run_table(&be, perf, filter));
                if perf {
                    print_dispatch_cost(&be);
                }
                let g = be.graph_stats();
                println!("cuda graphs: {} steps, {} replayed, {} captured", g.steps, g.replayed, g.captured);
                println!("cuda libraries: {}\n", herd_cuda::cuda_libraries());
            }
            Err(e) => {
                println!("backend cuda: NOT RUN ({e})\n");
                if std::env::var("HERD_REQUIRE_CUDA").as_deref() == Ok("1") {
                    missing += 1;
                }
            }
        }
    }
    // The CUDA backend with its kernels run by the CPU emulator: only when asked for by name (it is slow).
    if only == Some("cuda-emu") {
        match CudaBackend::emulated_with(&herd_conformance::cuda_options_from_env()) {
            Ok(be) => {
                run(be.name(), run_table(&be, false, filter));
            }
            Err(e) => {
                println!("backend cuda-emu: NOT RUN ({e})\n");
                missing += 1;
            }
        }
    }
    missing
}
