//! Replays saved inputs through a target, each on its own, and says which pass and which panic (with the
//! panic's message): `cargo run -p herd-fuzz --example replay -- TARGET FILE...`. A directory stands for
//! the files in it; `HERD_REPLAY_BACKTRACE=1` prints each panic's backtrace. `scripts/fuzz.sh` uses it to
//! check that afl-fuzz's crashes reproduce outside afl.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::time::Instant;

fn main() {
    let mut args = std::env::args().skip(1);
    let name = args.next().unwrap_or_default();
    let Some(target) = herd_fuzz::target(&name) else {
        let names: Vec<&str> = herd_fuzz::TARGETS.iter().map(|(n, _)| *n).collect();
        eprintln!("usage: replay TARGET FILE... (TARGET: one of {})", names.join(", "));
        std::process::exit(2);
    };
    let mut files: Vec<PathBuf> = Vec::new();
    for a in args {
        let p = PathBuf::from(a);
        match std::fs::read_dir(&p) {
            Ok(rd) => {
                let mut v: Vec<PathBuf> = rd.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.is_file()).collect();
                v.sort();
                files.extend(v);
            }
            Err(_) => files.push(p),
        }
    }
    // The panic's location (herd's or a dependency's source line), printed with its message.
    static LOCATION: std::sync::Mutex<String> = std::sync::Mutex::new(String::new());
    std::panic::set_hook(Box::new(|info| {
        let at = info.location().map(|l| format!("{}:{}", l.file(), l.line())).unwrap_or_default();
        *LOCATION.lock().unwrap() = at;
        if std::env::var_os("HERD_REPLAY_BACKTRACE").is_some() {
            eprintln!("{info}\n{}", std::backtrace::Backtrace::force_capture());
        }
    }));
    let mut failed = 0;
    for f in &files {
        let data = std::fs::read(f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        let start = Instant::now();
        let r = catch_unwind(AssertUnwindSafe(|| target(&data)));
        let ms = start.elapsed().as_secs_f64() * 1e3;
        match r {
            Ok(()) => println!("ok     {:>9.2} ms  {}", ms, f.display()),
            Err(p) => {
                failed += 1;
                let msg = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                let at = LOCATION.lock().unwrap().clone();
                println!("PANIC  {:>9.2} ms  {}: {} (at {at})", ms, f.display(), msg.replace('\n', "\\n"));
            }
        }
    }
    println!("{name}: {} inputs, {failed} panic", files.len());
    std::process::exit(if failed > 0 { 1 } else { 0 });
}
