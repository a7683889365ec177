//! The bounds herd puts on everything that comes from outside: the named limits a config, a header or a
//! flag is checked against before any size derived from it is computed, checked arithmetic that names the
//! field when a product does not fit, the machine's memory as a ceiling on what one request may allocate,
//! and [`read_input`], the one function every input file is read through (regular files only, capped per
//! kind of file, so a FIFO or `/dev/zero` given as a config is refused instead of read forever).

use std::path::Path;

use crate::error::{HerdError, Result};

/// Config bounds. Each is far above what any published Llama 4 model uses (named beside it) and far
/// below where the sizes derived from it could overflow: with every field at its bound, the largest
/// product herd forms (all layers' experts' parameters, times 4 bytes) still fits in 64 bits.
pub mod config {
    /// Scout and Maverick have 48 layers; the vision tower 34.
    pub const MAX_LAYERS: usize = 1024;
    /// Scout and Maverick: 5120; the vision tower 1408.
    pub const MAX_HIDDEN: usize = 65_536;
    /// 40 query heads, 8 key/value heads.
    pub const MAX_HEADS: usize = 1024;
    /// 128 (the vision tower: 88).
    pub const MAX_HEAD_DIM: usize = 1024;
    /// Expert width 8192, dense MLP width 16384 (the vision tower: 5632).
    pub const MAX_INTERMEDIATE: usize = 1 << 20;
    /// Maverick has 128 routed experts, Scout 16.
    pub const MAX_EXPERTS: usize = 4096;
    /// 202,048 ids.
    pub const MAX_VOCAB: usize = 1 << 24;
    /// Scout's 10M-token context is 10,485,760 positions.
    pub const MAX_POSITIONS: usize = 1 << 28;
    /// The vision tower's tile side, 336 pixels.
    pub const MAX_IMAGE_SIZE: usize = 4096;
}

/// The most bytes of each kind of input file herd reads (a published Llama 4's is named beside it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputKind {
    /// config.json (a few KB).
    Config,
    /// tokenizer.json (27 MB for Llama 4's 200k-id vocabulary).
    Tokenizer,
    /// tokenizer_config.json, chat_template.jinja (the chat template lives in them; a few hundred KB).
    TokenizerConfig,
    /// generation_config.json, preprocessor_config.json, herd-manifest.json's small siblings.
    SmallJson,
    /// model.safetensors.index.json (a few MB for Maverick's thousands of tensors).
    Index,
    /// An image or a video frame (PNG, JPEG, WebP, GIF).
    Image,
    /// A JSON schema or a Lark grammar for constrained decoding (`herd run --json-schema`, `--grammar`).
    Grammar,
    /// A safetensors file of `input_ids` (and `pixel_values`) for `herd logits` / `herd greedy`.
    Ids,
}

impl InputKind {
    /// The cap in bytes.
    pub fn max_bytes(self) -> u64 {
        const MIB: u64 = 1 << 20;
        match self {
            InputKind::Config | InputKind::SmallJson | InputKind::Grammar => 16 * MIB,
            InputKind::TokenizerConfig => 64 * MIB,
            InputKind::Tokenizer | InputKind::Index => 256 * MIB,
            InputKind::Image => 256 * MIB,
            InputKind::Ids => 4096 * MIB,
        }
    }

    fn what(self) -> &'static str {
        match self {
            InputKind::Config => "a config file",
            InputKind::Tokenizer => "a tokenizer file",
            InputKind::TokenizerConfig => "a tokenizer config or chat template",
            InputKind::SmallJson => "a settings file",
            InputKind::Index => "a checkpoint index",
            InputKind::Image => "an image",
            InputKind::Ids => "an ids file",
            InputKind::Grammar => "a schema or grammar file",
        }
    }
}

/// Checks that `path` is a regular file (symlinks followed: model directories in a download cache are
/// links to blobs) of at most `kind`'s cap, and returns its length.
pub fn check_input(path: &Path, kind: InputKind) -> Result<u64> {
    let meta = std::fs::metadata(path).map_err(|e| HerdError::io(path, e))?;
    check_meta(path, &meta, kind)
}

fn check_meta(path: &Path, meta: &std::fs::Metadata, kind: InputKind) -> Result<u64> {
    if meta.is_dir() {
        return Err(HerdError::bad_file(path, format!("is a directory, not {}", kind.what())));
    }
    if !meta.is_file() {
        return Err(HerdError::bad_file(
            path,
            format!("is not a regular file (a device, FIFO or socket), not {}", kind.what()),
        ));
    }
    let cap = kind.max_bytes();
    if meta.len() > cap {
        return Err(HerdError::bad_file(
            path,
            format!("is {}, more than the {} herd reads as {}", fmt_bytes(meta.len()), fmt_bytes(cap), kind.what()),
        ));
    }
    Ok(meta.len())
}

/// Reads a whole input file: a regular file (never a FIFO, device or directory) of at most `kind`'s cap.
/// The file is opened without blocking (a FIFO swapped in after the check cannot hang the open) and checked
/// again once open; at most cap + 1 bytes are ever read, so a file that grows while read is refused too.
pub fn read_input(path: &Path, kind: InputKind) -> Result<Vec<u8>> {
    use std::io::Read;
    check_input(path, kind)?;
    let mut opts = std::fs::OpenOptions::new();
    opts.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.custom_flags(libc_o_nonblock());
    }
    let file = opts.open(path).map_err(|e| HerdError::io(path, e))?;
    let meta = file.metadata().map_err(|e| HerdError::io(path, e))?;
    let len = check_meta(path, &meta, kind)?;
    let cap = kind.max_bytes();
    let mut buf = Vec::with_capacity(len as usize);
    file.take(cap + 1).read_to_end(&mut buf).map_err(|e| HerdError::io(path, e))?;
    if buf.len() as u64 > cap {
        return Err(HerdError::bad_file(
            path,
            format!("grew past the {} herd reads as {}", fmt_bytes(cap), kind.what()),
        ));
    }
    Ok(buf)
}

/// [`read_input`] as UTF-8 text.
pub fn read_input_string(path: &Path, kind: InputKind) -> Result<String> {
    String::from_utf8(read_input(path, kind)?).map_err(|_| HerdError::bad_file(path, "is not UTF-8 text"))
}

/// O_NONBLOCK: the same value on every Linux architecture; the BSDs and macOS use 4.
#[cfg(unix)]
fn libc_o_nonblock() -> i32 {
    if cfg!(any(target_os = "linux", target_os = "android")) {
        0o4000
    } else {
        4
    }
}

/// `a * b`, or an error naming `what` when the product does not fit.
pub fn mul(what: &str, a: usize, b: usize) -> Result<usize> {
    a.checked_mul(b).ok_or_else(|| HerdError::Input(format!("{what}: {a} x {b} overflows")))
}

/// The product of `dims`, or an error naming `what` when it does not fit.
pub fn product(what: &str, dims: &[usize]) -> Result<usize> {
    dims.iter().try_fold(1usize, |acc, &d| mul(what, acc, d))
}

/// The machine's physical memory in bytes, where the platform says (Linux's /proc/meminfo).
pub fn physical_memory() -> Option<u64> {
    static TOTAL: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
    *TOTAL.get_or_init(read_physical_memory)
}

fn read_physical_memory() -> Option<u64> {
    meminfo("MemTotal:")
}

/// The memory the machine can give a process now without swapping (Linux's MemAvailable: free memory and
/// the caches the system can drop), where the platform says.
pub fn available_memory() -> Option<u64> {
    meminfo("MemAvailable:")
}

/// A field of /proc/meminfo, in bytes.
fn meminfo(field: &str) -> Option<u64> {
    #[cfg(target_os = "linux")]
    {
        let s = std::fs::read_to_string("/proc/meminfo").ok()?;
        let line = s.lines().find(|l| l.starts_with(field))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        kib.checked_mul(1024)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = field;
        None
    }
}

/// Refuses, before anything is allocated, a request for more host memory than the machine has: `what` says
/// what it is for, and the message gives the size asked for.
pub fn check_host_alloc(what: &str, bytes: u128) -> Result<()> {
    if let Some(total) = physical_memory() {
        if bytes > total as u128 {
            return Err(HerdError::Input(format!(
                "{what} needs {} of memory, more than this machine's {}",
                fmt_bytes_u128(bytes),
                fmt_bytes(total)
            )));
        }
    }
    Ok(())
}

/// The global allocator of herd's binaries: the system's, plus a memory budget that [`with_memory_budget`]
/// sets on one thread while it runs code whose memory use an input decides (a chat template that comes with
/// a model directory). Where it is not installed (a library user, the browser) the budget is not enforced.
pub struct BudgetedAlloc;

#[derive(Clone, Copy)]
struct Budget {
    /// Bytes still allowed on this thread.
    left: usize,
    limit: usize,
    /// What runs under the budget, for the message: a `&str` alive for the budget's scope.
    what: (*const u8, usize),
}

thread_local! {
    static BUDGET: std::cell::Cell<Option<Budget>> = const { std::cell::Cell::new(None) };
}

/// Allocations made through [`BudgetedAlloc`] (new blocks and reallocations), every thread together.
static ALLOCATIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How many allocations [`BudgetedAlloc`] has made so far (None where it is not the global allocator, so
/// none are counted): `herd bench` reports them per decode step.
pub fn allocations() -> Option<u64> {
    match ALLOCATIONS.load(std::sync::atomic::Ordering::Relaxed) {
        0 => None,
        n => Some(n),
    }
}

fn count_allocation() {
    ALLOCATIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

/// Runs `f` with at most `limit` bytes of new memory on this thread (allocations net of frees). Going
/// past it ends the process with a one-line error naming `what`, exit code 1: an allocator cannot return
/// an error, and the alternative is the machine's memory running out.
pub fn with_memory_budget<R>(what: &str, limit: usize, f: impl FnOnce() -> R) -> R {
    let outer = BUDGET.with(|b| b.replace(Some(Budget { left: limit, limit, what: (what.as_ptr(), what.len()) })));
    struct Restore(Option<Budget>);
    impl Drop for Restore {
        fn drop(&mut self) {
            BUDGET.with(|b| b.set(self.0));
        }
    }
    let _restore = Restore(outer);
    f()
}

/// Charges `grow` bytes to this thread's budget (or refunds `shrink`); false when the budget is spent.
fn charge(grow: usize, shrink: usize) -> bool {
    BUDGET
        .try_with(|b| match b.get() {
            None => true,
            Some(mut budget) => {
                let left = budget.left.saturating_add(shrink).min(budget.limit);
                match left.checked_sub(grow) {
                    Some(l) => {
                        budget.left = l;
                        b.set(Some(budget));
                        true
                    }
                    None => {
                        b.set(None);
                        over_budget(budget)
                    }
                }
            }
        })
        .unwrap_or(true)
}

#[cold]
fn over_budget(b: Budget) -> bool {
    use std::io::Write;
    // SAFETY: `what` points at the `&str` that `with_memory_budget` was given, alive for the budget's scope.
    let what = unsafe { std::str::from_utf8_unchecked(std::slice::from_raw_parts(b.what.0, b.what.1)) };
    // Formatted on the stack: nothing may allocate here.
    let mut buf = [0u8; 512];
    let mut w = &mut buf[..];
    let _ = writeln!(w, "error: {what}: needs more than {} of memory; refused", Mib(b.limit as u64));
    let n = 512 - w.len();
    let _ = std::io::stderr().write_all(&buf[..n]);
    std::process::exit(1)
}

/// A size in MiB without allocating (the message of a spent budget).
struct Mib(u64);

impl std::fmt::Display for Mib {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} MiB", self.0 >> 20)
    }
}

// SAFETY: every call goes to the system allocator unchanged; the budget only decides whether to make it.
unsafe impl std::alloc::GlobalAlloc for BudgetedAlloc {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        count_allocation();
        charge(layout.size(), 0);
        unsafe { std::alloc::System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        count_allocation();
        charge(layout.size(), 0);
        unsafe { std::alloc::System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        charge(0, layout.size());
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        count_allocation();
        charge(new_size.saturating_sub(layout.size()), layout.size().saturating_sub(new_size));
        unsafe { std::alloc::System.realloc(ptr, layout, new_size) }
    }
}

/// `n` bytes as a short human size (B, KiB, MiB, GiB, TiB).
pub fn fmt_bytes(n: u64) -> String {
    fmt_bytes_u128(n as u128)
}

fn fmt_bytes_u128(n: u128) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_what_is_not_a_regular_file_of_bounded_size() {
        let dir = std::env::temp_dir().join(format!("herd-limits-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let e = read_input(&dir, InputKind::Config).unwrap_err().to_string();
        assert!(e.contains("is a directory"), "{e}");
        #[cfg(target_os = "linux")]
        {
            let e = read_input(Path::new("/dev/zero"), InputKind::Config).unwrap_err().to_string();
            assert!(e.contains("not a regular file"), "{e}");
        }
        let big = dir.join("big.json");
        let f = std::fs::File::create(&big).unwrap();
        f.set_len(InputKind::Config.max_bytes() + 1).unwrap();
        let e = read_input(&big, InputKind::Config).unwrap_err().to_string();
        assert!(e.contains("more than the 16.0 MiB"), "{e}");
        std::fs::write(&big, b"{}").unwrap();
        assert_eq!(read_input(&big, InputKind::Config).unwrap(), b"{}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn products_name_the_field() {
        assert_eq!(product("x", &[3, 4, 5]).unwrap(), 60);
        // Past usize on 64-bit and 32-bit targets alike (wasm32 runs these tests too).
        let e = product("logits", &[usize::MAX / 2, 3]).unwrap_err().to_string();
        assert!(e.starts_with("logits:"), "{e}");
    }

    #[test]
    fn allocations_beyond_the_machine_are_refused() {
        if physical_memory().is_some() {
            let e = check_host_alloc("the logits", 1u128 << 70).unwrap_err().to_string();
            assert!(e.contains("the logits needs 1048576.0 PiB"), "{e}");
            check_host_alloc("a little", 1 << 20).unwrap();
        }
    }
}
