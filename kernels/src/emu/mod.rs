//! The CUDA emulator's host side: each kernel family's .cu source, with emu.h in front, compiled by the
//! system C++ compiler into a shared library (cached under the temp directory by a hash of the sources),
//! and launched by name; and a model of the driver around it, strict where a GPU is strict. It exists so that
//! the CUDA backend — its host code, its command lists and graphs, and its kernels — runs the op table and
//! the golden fixtures on machines without a GPU (`CudaBackend::emulated`). It is a test device, not a fast
//! one.
//!
//! What it models, so that host code that would fail on a GPU fails here too:
//! - **Contexts.** Every driver call needs a context bound to the calling thread (one emulated context, as
//!   the primary context of device 0), else it fails with CUDA_ERROR_INVALID_CONTEXT.
//! - **One stream, run lazily.** Launches, copies and memsets queue up and run only when the host waits: a
//!   stream or event synchronisation. So a copy from pinned host memory reads that memory when it runs, not
//!   when it was queued: overwriting or freeing a staging buffer before its copy ran shows (a freed one is an
//!   error). A copy from pageable memory is taken at once, as the driver stages it. A device-to-host copy
//!   does not wait for the stream (it is a non-blocking stream).
//! - **Graph capture.** While the stream captures, its work goes into the graph; waiting on it, or on an
//!   event recorded in it, or allocating from the capturing thread, fails and invalidates the capture, as on
//!   the driver. Replaying a graph replays the captured commands with their captured arguments.
//! - **Memory.** Fresh device allocations are filled with NaN bytes (u32 0xffffffff); copies must lie inside
//!   live allocations.
//! - **Launches.** The grid within the driver's limits, the block within the kernel's `__launch_bounds__`,
//!   dynamic shared memory over 48 KiB only up to what the function's attribute allows (and never over the
//!   227 KiB of a Hopper SM): each checked when the launch is queued, as cuLaunchKernel does.
//! - **Warps**, with the race check ([`crate::CudaOptions::racecheck`], or [`Emu::new`]'s `race`): see emu.h.
//!
//! cuBLAS is a plain f32-accumulating GEMM.

use std::alloc::{alloc, alloc_zeroed, dealloc, Layout};
use std::cell::Cell;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ffi::{c_char, c_void, CString};
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::ThreadId;

use herd_core::error::Result;

use crate::device::{err, Func, Gemm};
use crate::nvrtc::{COMMON, FAMILIES};
pub use build::available;
use build::{build, cxx, KernelDecl, EMU_H};

pub(crate) mod build;
mod execute;

type LaunchFn = unsafe extern "C" fn(*const c_char, u32, u32, u32, u32, u64, *mut *mut c_void) -> i32;
type MessageFn = unsafe extern "C" fn() -> *const c_char;

/// Dynamic shared memory a function may use without raising its attribute.
pub(crate) const SMEM_DEFAULT: u32 = 48 << 10;
/// The most shared memory one block may have on Hopper (sm_90): 227 KiB.
pub(crate) const SMEM_MAX: u32 = 227 << 10;

/// Numbers the private copies of the families' libraries that emulated devices load.
static COPIES: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// Whether the emulated context is current on this thread.
    static BOUND: Cell<bool> = const { Cell::new(false) };
}

/// Pinned host allocations (address → layout), for all emulated devices of the process.
static PINNED: Mutex<BTreeMap<u64, Layout>> = Mutex::new(BTreeMap::new());

/// A kernel of a loaded library.
#[derive(Clone)]
struct Kernel {
    lib: Arc<libloading::Library>,
    name: CString,
    /// `__launch_bounds__` (0: none, so the device's 1024).
    bound: u32,
    /// CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES.
    max_dyn_smem: u32,
}

/// A command of the emulated stream.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Op {
    Launch {
        f: Func,
        grid: (u32, u32, u32),
        block: u32,
        smem: u32,
        args: Vec<u64>,
    },
    /// Device or pinned host memory to device or pinned host memory.
    Copy {
        dst: u64,
        src: u64,
        bytes: usize,
    },
    /// From pageable host memory, taken when the copy was queued.
    Upload {
        dst: u64,
        data: Arc<Vec<u8>>,
    },
    Memset {
        dst: u64,
        bytes: usize,
        value: u8,
    },
    Gemm(Gemm),
}

struct Capture {
    thread: ThreadId,
    ops: Vec<Op>,
    /// Why the capture is invalid (it fails at its end).
    invalid: Option<String>,
}

#[derive(Default)]
struct Stream {
    queue: VecDeque<Op>,
    /// Commands queued and run so far.
    issued: u64,
    done: u64,
    capture: Option<Capture>,
}

/// An event: the stream position it was recorded at, and whether that was inside a capture.
#[derive(Clone, Copy, Default)]
struct EventState {
    at: u64,
    captured: bool,
}

/// A family's loaded library and its kernels.
type Family = (Arc<libloading::Library>, Arc<Vec<KernelDecl>>);

pub(crate) struct Emu {
    dir: PathBuf,
    race: bool,
    libs: Mutex<HashMap<&'static str, Family>>,
    funcs: Mutex<Vec<Kernel>>,
    allocs: Mutex<BTreeMap<u64, Layout>>,
    stream: Mutex<Stream>,
    events: Mutex<Vec<Option<EventState>>>,
}

fn poisoned() -> herd_core::error::HerdError {
    err("emulator poisoned by an earlier panic")
}

/// Whether `[p, p + n)` lies inside one allocation of `map` (address → layout).
fn inside(map: &BTreeMap<u64, Layout>, p: u64, n: usize) -> bool {
    map.range(..=p).next_back().is_some_and(|(&a, l)| p >= a && p + n as u64 <= a + l.size() as u64)
}

impl Emu {
    pub fn new(race: bool) -> Result<Emu> {
        if !available() {
            return Err(err(format!("emulator: no C++ compiler ({}) found", cxx())));
        }
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (EMU_H, COMMON, FAMILIES, race).hash(&mut h);
        cxx().hash(&mut h);
        let dir = std::env::temp_dir().join(format!("herd-cuda-emu-{:016x}", h.finish()));
        Ok(Emu {
            dir,
            race,
            libs: Mutex::new(HashMap::new()),
            funcs: Mutex::new(Vec::new()),
            allocs: Mutex::new(BTreeMap::new()),
            stream: Mutex::new(Stream::default()),
            events: Mutex::new(Vec::new()),
        })
    }

    /// Makes the emulated context current on this thread (cuCtxSetCurrent).
    pub fn bind(&self) {
        BOUND.with(|b| b.set(true));
    }

    /// Fails as the driver does when no context is current on the calling thread.
    fn ctx(call: &str) -> Result<()> {
        if BOUND.with(Cell::get) {
            Ok(())
        } else {
            Err(err(format!("{call}: CUDA_ERROR_INVALID_CONTEXT (no context is current on this thread)")))
        }
    }

    pub fn func(&self, family: &'static str, name: &str) -> Result<Func> {
        Self::ctx("cuModuleGetFunction")?;
        let mut libs = self.libs.lock().map_err(|_| poisoned())?;
        let (lib, decls) = match libs.get(family) {
            Some(l) => l.clone(),
            None => {
                let src = FAMILIES.iter().find(|f| f.0 == family).ok_or_else(|| err(format!("no family {family}")))?.1;
                let (path, decls) = build(&self.dir, family, src, self.race)?;
                // The scheduler's state is global in a library, and every load of one file shares it: each
                // emulated device loads a copy of its own (removed once loaded), so that devices on different
                // threads run kernels at the same time. One device runs one launch at a time (its stream).
                let n = COPIES.fetch_add(1, Ordering::Relaxed);
                let copy = self.dir.join(format!("{family}.{}.{n}.so", std::process::id()));
                std::fs::copy(&path, &copy)
                    .map_err(|e| err(format!("emulator: copying {} to {}: {e}", path.display(), copy.display())))?;
                // SAFETY: a library built above from our own sources; its initialisers do nothing.
                let l = unsafe { libloading::Library::new(&copy) };
                let _ = std::fs::remove_file(&copy);
                let l = Arc::new(l.map_err(|e| err(format!("emulator: loading {}: {e}", copy.display())))?);
                let v = (l, Arc::new(decls));
                libs.insert(family, v.clone());
                v
            }
        };
        let decl = decls
            .iter()
            .find(|k| k.name == name)
            .ok_or_else(|| err(format!("kernel {name} in {family}.cu: CUDA_ERROR_NOT_FOUND")))?;
        let mut funcs = self.funcs.lock().map_err(|_| poisoned())?;
        funcs.push(Kernel {
            lib,
            name: CString::new(name).map_err(|_| err("bad kernel name"))?,
            bound: decl.bound,
            max_dyn_smem: SMEM_DEFAULT,
        });
        Ok(Func(funcs.len() - 1))
    }

    /// cuFuncSetAttribute(CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES).
    pub fn set_max_dyn_smem(&self, f: Func, bytes: u32) -> Result<()> {
        Self::ctx("cuFuncSetAttribute")?;
        if bytes > SMEM_MAX {
            return Err(err(format!(
                "cuFuncSetAttribute: CUDA_ERROR_INVALID_VALUE ({bytes} bytes of dynamic shared memory, the device has {SMEM_MAX})"
            )));
        }
        let mut funcs = self.funcs.lock().map_err(|_| poisoned())?;
        funcs.get_mut(f.0).ok_or_else(|| err("unknown kernel"))?.max_dyn_smem = bytes;
        Ok(())
    }

    /// The kernel's name, for messages.
    pub fn name(&self, f: Func) -> String {
        self.funcs
            .lock()
            .ok()
            .and_then(|v| v.get(f.0).map(|k| k.name.to_string_lossy().into_owned()))
            .unwrap_or_default()
    }

    /// cuLaunchKernel: checks the launch as the driver does, then queues it.
    pub fn launch(&self, f: Func, grid: (u32, u32, u32), block: u32, smem: u32, args: &[u64]) -> Result<()> {
        Self::ctx("cuLaunchKernel")?;
        let k = self.funcs.lock().map_err(|_| poisoned())?.get(f.0).cloned().ok_or_else(|| err("unknown kernel"))?;
        let name = k.name.to_string_lossy();
        let bad = |why: String| err(format!("cuLaunchKernel {name}: {why}"));
        if grid.0 == 0 || grid.1 == 0 || grid.2 == 0 || grid.0 > i32::MAX as u32 || grid.1 > 65535 || grid.2 > 65535 {
            return Err(bad(format!("CUDA_ERROR_INVALID_VALUE (grid {grid:?}; at most (2^31-1, 65535, 65535))")));
        }
        let bound = if k.bound == 0 { 1024 } else { k.bound };
        if block == 0 || block > bound {
            return Err(bad(format!(
                "CUDA_ERROR_INVALID_VALUE (block of {block} threads; the kernel's launch bounds allow {bound})"
            )));
        }
        if smem > k.max_dyn_smem {
            return Err(bad(format!(
                "CUDA_ERROR_INVALID_VALUE ({smem} bytes of dynamic shared memory; the function allows {}, \
                 raise CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES first)",
                k.max_dyn_smem
            )));
        }
        self.enqueue(Op::Launch { f, grid, block, smem, args: args.to_vec() })
    }

    /// Queues `op` on the stream (or adds it to the graph being captured).
    fn enqueue(&self, op: Op) -> Result<()> {
        let mut s = self.stream.lock().map_err(|_| poisoned())?;
        if let Some(c) = &mut s.capture {
            if let Op::Upload { .. } = op {
                c.invalid.get_or_insert_with(|| "a copy from pageable host memory".into());
                return Err(err(
                    "cuMemcpyHtoDAsync: CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED (a copy from pageable host memory while \
                     the stream captures a graph)",
                ));
            }
            c.ops.push(op);
            return Ok(());
        }
        s.queue.push_back(op);
        s.issued += 1;
        Ok(())
    }

    /// Runs queued commands until `upto` of them have run.
    fn run_until(&self, s: &mut Stream, upto: u64) -> Result<()> {
        while s.done < upto {
            let Some(op) = s.queue.pop_front() else { break };
            s.done += 1;
            self.execute(&op)?;
        }
        Ok(())
    }

    /// Waits for a sync call's stream: fails while it captures (and invalidates the capture).
    fn sync_to(&self, call: &str, upto: Option<u64>) -> Result<()> {
        Self::ctx(call)?;
        let mut s = self.stream.lock().map_err(|_| poisoned())?;
        if let Some(c) = &mut s.capture {
            c.invalid.get_or_insert_with(|| format!("{call} during the capture"));
            return Err(err(format!(
                "{call}: CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED (waiting on a stream that is capturing a graph)"
            )));
        }
        let upto = upto.unwrap_or(s.issued);
        self.run_until(&mut s, upto)
    }

    /// cuStreamSynchronize: runs everything queued; the first failure is returned.
    pub fn synchronize(&self) -> Result<()> {
        self.sync_to("cuStreamSynchronize", None)
    }

    pub fn event_create(&self) -> Result<u64> {
        Self::ctx("cuEventCreate")?;
        let mut ev = self.events.lock().map_err(|_| poisoned())?;
        ev.push(Some(EventState::default()));
        Ok(ev.len() as u64 - 1)
    }

    pub fn event_destroy(&self, e: u64) {
        if let Ok(mut ev) = self.events.lock() {
            if let Some(slot) = ev.get_mut(e as usize) {
                *slot = None;
            }
        }
    }

    pub fn event_record(&self, e: u64) -> Result<()> {
        Self::ctx("cuEventRecord")?;
        let s = self.stream.lock().map_err(|_| poisoned())?;
        let mut ev = self.events.lock().map_err(|_| poisoned())?;
        let slot = ev
            .get_mut(e as usize)
            .and_then(Option::as_mut)
            .ok_or_else(|| err("cuEventRecord: CUDA_ERROR_INVALID_HANDLE"))?;
        *slot = EventState { at: s.issued, captured: s.capture.is_some() };
        Ok(())
    }

    pub fn event_synchronize(&self, e: u64) -> Result<()> {
        Self::ctx("cuEventSynchronize")?;
        let st = self.events.lock().map_err(|_| poisoned())?.get(e as usize).copied().flatten();
        let st = st.ok_or_else(|| err("cuEventSynchronize: CUDA_ERROR_INVALID_HANDLE"))?;
        if st.captured {
            return Err(err(
                "cuEventSynchronize: CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED (the event was recorded in a graph capture)",
            ));
        }
        let mut s = self.stream.lock().map_err(|_| poisoned())?;
        self.run_until(&mut s, st.at)
    }

    /// cuStreamBeginCapture (thread-local mode) on the stream.
    pub fn begin_capture(&self) -> Result<()> {
        Self::ctx("cuStreamBeginCapture")?;
        let mut s = self.stream.lock().map_err(|_| poisoned())?;
        if s.capture.is_some() {
            return Err(err("cuStreamBeginCapture: CUDA_ERROR_ILLEGAL_STATE (the stream is already capturing)"));
        }
        s.capture = Some(Capture { thread: std::thread::current().id(), ops: Vec::new(), invalid: None });
        Ok(())
    }

    /// cuStreamEndCapture + instantiation: the captured commands.
    pub fn end_capture(&self) -> Result<Vec<Op>> {
        Self::ctx("cuStreamEndCapture")?;
        let mut s = self.stream.lock().map_err(|_| poisoned())?;
        let c = s.capture.take().ok_or_else(|| err("cuStreamEndCapture: CUDA_ERROR_ILLEGAL_STATE (not capturing)"))?;
        if let Some(why) = c.invalid {
            return Err(err(format!("cuStreamEndCapture: CUDA_ERROR_STREAM_CAPTURE_INVALIDATED ({why})")));
        }
        Ok(c.ops)
    }

    /// cuGraphLaunch.
    pub fn graph_launch(&self, ops: &[Op]) -> Result<()> {
        Self::ctx("cuGraphLaunch")?;
        ops.iter().try_for_each(|op| self.enqueue(op.clone()))
    }

    /// Fails, and invalidates the capture, when the calling thread is capturing (cuMemAlloc and friends are
    /// not allowed then).
    fn not_capturing(&self, call: &str) -> Result<()> {
        let mut s = self.stream.lock().map_err(|_| poisoned())?;
        if let Some(c) = &mut s.capture {
            if c.thread == std::thread::current().id() {
                c.invalid.get_or_insert_with(|| format!("{call} during the capture"));
                return Err(err(format!(
                    "{call}: CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED (called while capturing a graph)"
                )));
            }
        }
        Ok(())
    }

    /// cuMemAlloc: fresh memory filled with NaN bytes.
    pub fn malloc(&self, bytes: usize) -> Result<u64> {
        Self::ctx("cuMemAlloc")?;
        self.not_capturing("cuMemAlloc")?;
        let layout = Layout::from_size_align(bytes.max(4), 256).map_err(|_| err("allocation too large"))?;
        // SAFETY: non-zero size; freed with the same layout.
        let p = unsafe { alloc(layout) };
        if p.is_null() {
            return Err(err(format!("cuMemAlloc: CUDA_ERROR_OUT_OF_MEMORY ({bytes} bytes)")));
        }
        // SAFETY: `p` holds layout.size() bytes.
        unsafe { std::ptr::write_bytes(p, 0xff, layout.size()) };
        self.allocs.lock().map_err(|_| poisoned())?.insert(p as u64, layout);
        Ok(p as u64)
    }

    /// Fills `[p, p + bytes)`, which no queued command uses, with NaN bytes at once.
    pub fn poison(&self, p: u64, bytes: usize) -> Result<()> {
        if !inside(&*self.allocs.lock().map_err(|_| poisoned())?, p, bytes) {
            return Err(err("emulator: poisoning memory outside any allocation"));
        }
        // SAFETY: inside a live allocation (checked above).
        unsafe { std::ptr::write_bytes(p as *mut u8, 0xff, bytes) };
        Ok(())
    }

    pub fn free(&self, p: u64) -> Result<()> {
        Self::ctx("cuMemFree")?;
        self.not_capturing("cuMemFree")?;
        if let Some(layout) = self.allocs.lock().map_err(|_| poisoned())?.remove(&p) {
            // SAFETY: allocated by `malloc` with this layout, removed from the table so freed once.
            unsafe { dealloc(p as *mut u8, layout) }
            Ok(())
        } else {
            Err(err("cuMemFree: CUDA_ERROR_INVALID_VALUE (not an allocation)"))
        }
    }

    /// cuMemAllocHost: page-locked host memory (zeroed).
    pub fn malloc_host(&self, bytes: usize) -> Result<*mut u8> {
        Self::ctx("cuMemAllocHost")?;
        let layout = Layout::from_size_align(bytes.max(1), 4096).map_err(|_| err("allocation too large"))?;
        // SAFETY: non-zero size; freed with the same layout.
        let p = unsafe { alloc_zeroed(layout) };
        if p.is_null() {
            return Err(err(format!("cuMemAllocHost: CUDA_ERROR_OUT_OF_MEMORY ({bytes} bytes)")));
        }
        PINNED.lock().map_err(|_| poisoned())?.insert(p as u64, layout);
        Ok(p)
    }

    /// cuMemFreeHost. Copies still queued from this memory fail when they run.
    pub fn free_host(p: *mut u8) -> Result<()> {
        Self::ctx("cuMemFreeHost")?;
        let layout = PINNED.lock().map_err(|_| poisoned())?.remove(&(p as u64));
        let layout = layout.ok_or_else(|| err("cuMemFreeHost: CUDA_ERROR_INVALID_VALUE (not pinned memory)"))?;
        // SAFETY: allocated by `malloc_host` with this layout, removed from the table so freed once.
        unsafe { dealloc(p, layout) };
        Ok(())
    }

    /// cuMemcpyHtoDAsync: from pinned memory the copy reads `src` when it runs; from pageable memory the
    /// bytes are taken now.
    pub fn htod_async(&self, dst: u64, src: &[u8]) -> Result<()> {
        Self::ctx("cuMemcpyHtoDAsync")?;
        let p = src.as_ptr() as u64;
        if inside(&*PINNED.lock().map_err(|_| poisoned())?, p, src.len()) {
            self.enqueue(Op::Copy { dst, src: p, bytes: src.len() })
        } else {
            self.enqueue(Op::Upload { dst, data: Arc::new(src.to_vec()) })
        }
    }

    /// cuMemcpyDtoDAsync.
    pub fn dtod_async(&self, dst: u64, src: u64, bytes: usize) -> Result<()> {
        Self::ctx("cuMemcpyDtoDAsync")?;
        self.enqueue(Op::Copy { dst, src, bytes })
    }

    /// cuMemsetD8Async.
    pub fn memset_async(&self, dst: u64, value: u8, bytes: usize) -> Result<()> {
        Self::ctx("cuMemsetD8Async")?;
        self.enqueue(Op::Memset { dst, bytes, value })
    }

    /// cublasGemmEx on the stream.
    pub fn gemm_async(&self, g: &Gemm) -> Result<()> {
        Self::ctx("cublasGemmEx")?;
        self.enqueue(Op::Gemm(*g))
    }

    /// cuMemcpyDtoH: synchronous, and (the stream being non-blocking) not ordered after the stream's work.
    pub fn dtoh(&self, dst: &mut [u8], src: u64) -> Result<()> {
        Self::ctx("cuMemcpyDtoH")?;
        self.check_range("cuMemcpyDtoH source", src, dst.len())?;
        // SAFETY: `src` holds dst.len() bytes of a live allocation (checked above).
        unsafe { std::ptr::copy(src as *const u8, dst.as_mut_ptr(), dst.len()) };
        Ok(())
    }
}

impl Drop for Emu {
    fn drop(&mut self) {
        if let Ok(allocs) = self.allocs.get_mut() {
            for (&p, &layout) in allocs.iter() {
                // SAFETY: allocated by `malloc` with this layout; the table owns what is left.
                unsafe { dealloc(p as *mut u8, layout) }
            }
            allocs.clear();
        }
    }
}

/// cuBLAS's GEMM: row-major c[m, n] (+)= b[m, k] · a[n, k]ᵀ with f32 accumulation.
///
/// SAFETY: the pointers must address tensors of the sizes `g` says.
unsafe fn gemm(g: &Gemm) {
    let (m, n, k) = (g.m, g.n, g.k);
    let load = |p: u64, i: usize| -> f32 {
        if g.bf16 {
            f32::from_bits((*(p as *const u16).add(i) as u32) << 16)
        } else {
            *(p as *const f32).add(i)
        }
    };
    let c = g.c as *mut f32;
    for r in 0..m {
        for j in 0..n {
            let mut s = 0.0f32;
            for kk in 0..k {
                s += load(g.a, j * k + kk) * load(g.b, r * k + kk);
            }
            let o = c.add(r * n + j);
            *o = if g.accumulate { *o + s } else { s };
        }
    }
}
