//! The one way a test says that it cannot run here (no GPU adapter, no C++ compiler, no NVRTC, no browser):
//! [`not_run`] prints `WHAT: NOT RUN (why)` and appends that line to the file HERD_NOT_RUN_LOG names, whose
//! lines scripts/test.sh counts in its closing line (`herd: N passed, M failed, K NOT RUN`), so a skipped test
//! is never read as a passed one. Where the test's HERD_REQUIRE_* variable is 1 (the test script sets it when
//! it has installed what the test needs) a missing piece is a failure instead. docs/checks.md lists them.

/// Reports that `what` cannot run because of `why`; panics instead when `require` names a variable set to 1.
pub fn not_run(what: &str, require: Option<&str>, why: &dyn std::fmt::Display) {
    if let Some(var) = require {
        assert!(std::env::var(var).as_deref() != Ok("1"), "{what}: required ({var}=1) but it cannot run: {why}");
    }
    let line = format!("{what}: NOT RUN ({why})");
    eprintln!("{line}");
    if let Some(path) = std::env::var_os("HERD_NOT_RUN_LOG") {
        use std::io::Write;
        // The count is a report: a log that cannot be written leaves the line on stderr only.
        if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
            let _ = writeln!(f, "{line}");
        }
    }
}
