//! Device memory: allocations through the driver (or the emulator), a pool of freed ones kept for reuse by
//! size, and frees deferred until the work that may still use them has run.

use std::collections::HashMap;

use cudarc::driver::{result as drv, sys};
use herd_core::error::Result;

use super::{cu, err, Dev, Engine};

/// Why an allocation failed.
enum Alloc {
    OutOfMemory(String),
    Failed(String),
}

/// Freed allocations kept for reuse by size (a step's one-off buffers recur with the same sizes; cudaMalloc
/// and cudaFree cost far more than a lookup), up to `cap` bytes; the size of every live allocation.
pub(super) struct Pool {
    free: HashMap<usize, Vec<u64>>,
    held: usize,
    cap: usize,
    size: HashMap<u64, usize>,
}

impl Pool {
    pub(super) fn new(cap: usize) -> Pool {
        Pool { free: HashMap::new(), held: 0, cap, size: HashMap::new() }
    }
}

impl Dev {
    /// `n` bytes, from the pool when an allocation of that size was freed, else from the device (emptying
    /// the pool and trying again when the device is out of memory).
    pub(super) fn malloc(&self, n: usize, what: &str) -> Result<u64> {
        self.bind()?;
        let mut mem = self.mem.lock().map_err(|_| err("allocator poisoned"))?;
        if let Some(p) = mem.free.get_mut(&n).and_then(|v| v.pop()) {
            mem.held -= n;
            return Ok(p);
        }
        let oom = |e: String| err(format!("out of device memory allocating {n} bytes of {what} ({e})"));
        let p = match self.raw_malloc(n) {
            Ok(p) => p,
            Err(Alloc::OutOfMemory(_)) if mem.held > 0 => {
                self.drain(&mut mem);
                self.raw_malloc(n).map_err(|e| match e {
                    Alloc::OutOfMemory(e) => oom(e),
                    Alloc::Failed(e) => err(format!("allocating {n} bytes of {what}: {e}")),
                })?
            }
            Err(Alloc::OutOfMemory(e)) => return Err(oom(e)),
            Err(Alloc::Failed(e)) => return Err(err(format!("allocating {n} bytes of {what}: {e}"))),
        };
        mem.size.insert(p, n);
        Ok(p)
    }

    /// cuMemAlloc; the caller has bound the context.
    fn raw_malloc(&self, n: usize) -> std::result::Result<u64, Alloc> {
        match &self.engine {
            Engine::Emu(e) => e.malloc(n).map_err(|e| {
                let e = e.to_string();
                let e = e.strip_prefix("backend cuda: ").unwrap_or(&e).to_owned();
                if e.contains("CUDA_ERROR_OUT_OF_MEMORY") {
                    Alloc::OutOfMemory(e)
                } else {
                    Alloc::Failed(e)
                }
            }),
            // SAFETY: plain allocation.
            Engine::Cuda(_) => unsafe { drv::malloc_sync(n) }.map_err(|e| {
                if e.0 == sys::cudaError_enum::CUDA_ERROR_OUT_OF_MEMORY {
                    Alloc::OutOfMemory(format!("{e:?}"))
                } else {
                    Alloc::Failed(format!("cuMemAlloc: {e:?}"))
                }
            }),
        }
    }

    /// cuMemFree; the caller has bound the context.
    pub(super) fn raw_free(&self, p: u64) {
        match &self.engine {
            Engine::Emu(e) => {
                if let Err(e) = e.free(p) {
                    eprintln!("herd: cuda: {e}");
                }
            }
            // SAFETY: callers free only allocations no pending command uses.
            Engine::Cuda(_) => unsafe {
                let _ = drv::free_sync(p);
            },
        }
    }

    pub(super) fn drain(&self, mem: &mut Pool) {
        for (_, v) in mem.free.drain() {
            for p in v {
                mem.size.remove(&p);
                self.raw_free(p);
            }
        }
        mem.held = 0;
    }

    /// `bytes` (at least 4) of device memory whose contents the caller overwrites before any use.
    pub fn alloc_raw(&self, bytes: usize) -> Result<u64> {
        let n = bytes.max(4);
        let p = self.malloc(n, "a buffer")?;
        if let Engine::Emu(e) = &self.engine {
            // What a GPU would hold is unknown: NaN, so that a read before the caller's write shows.
            e.poison(p, n)?;
        }
        Ok(p)
    }

    /// A zeroed device allocation of `bytes` (at least 4).
    pub fn alloc(&self, bytes: usize) -> Result<u64> {
        let _st = self.lock()?;
        let n = bytes.max(4);
        let p = self.malloc(n, "a buffer")?;
        match &self.engine {
            // SAFETY: zeroing the allocation (fresh or from the pool) on our stream, before any later work.
            Engine::Cuda(c) => cu("cuMemsetD8Async", unsafe { drv::memset_d8_async(p, 0, n, c.stream) })?,
            Engine::Emu(e) => e.memset_async(p, 0, n)?,
        }
        Ok(p)
    }

    /// Frees `p` once the work enqueued so far is done (at the next read).
    pub fn free_later(&self, p: u64) {
        if let Ok(mut v) = self.free_later.lock() {
            v.push(p);
        }
    }

    /// Returns `p` to the pool (or to the device when the pool is full); no command may use it any more.
    pub(super) fn free_now(&self, p: u64) {
        if self.bind().is_err() {
            return;
        }
        let Ok(mut mem) = self.mem.lock() else { return };
        let Some(&n) = mem.size.get(&p) else { return };
        if mem.held + n <= mem.cap {
            mem.free.entry(n).or_default().push(p);
            mem.held += n;
        } else {
            mem.size.remove(&p);
            self.raw_free(p);
        }
    }
}
