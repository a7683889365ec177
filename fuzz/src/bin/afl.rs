//! The coverage-guided driver for cargo-afl: `herd-fuzz-afl TARGET` (or `HERD_FUZZ_TARGET=TARGET`) runs
//! one target of [`herd_fuzz::TARGETS`] under afl-fuzz in persistent mode. Built only with the `afl`
//! feature; `scripts/fuzz.sh` builds and runs it.

fn main() {
    let name = std::env::args().nth(1).or_else(|| std::env::var("HERD_FUZZ_TARGET").ok()).unwrap_or_default();
    let Some(target) = herd_fuzz::target(&name) else {
        let names: Vec<&str> = herd_fuzz::TARGETS.iter().map(|(n, _)| *n).collect();
        eprintln!("usage: herd-fuzz-afl TARGET (one of {})", names.join(", "));
        std::process::exit(2);
    };
    afl::fuzz!(|data: &[u8]| {
        target(data);
    });
}
