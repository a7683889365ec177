//! The CUDA device: context and stream, kernels (NVRTC at first use, for the device's own architecture),
//! memory, and the command list. Ops record commands; a read submits the step's list at once, as a CUDA
//! graph when the same list was submitted before (decode steps record the same kernels on the same buffers,
//! with everything that changes per step — positions, sequence tables, draws — in the step's metadata,
//! which is copied to the device before the list runs). So a decode step is one graph launch.
//!
//! Every driver call runs with the device's context bound to the calling thread (`bind`, done by `lock`
//! and by each entry point that calls the driver without it): a thread's first call may be an allocation.
//! [`crate::CudaOptions::sync_each`] (`herd --cuda-sync`, `HERD_CUDA_SYNC=1`) is the debugging mode: graphs off, and a wait after every command, so that a fault is
//! reported with the command that caused it.

use std::collections::HashMap;
use std::ffi::{c_void, CString};
use std::sync::{Arc, Mutex, MutexGuard};

mod transfer;
use transfer::Staging;

use crate::emu::Op;
use crate::kernel::{DevPtr, FieldInfo, FieldKind};
use crate::nvrtc::compile;
use crate::CudaOptions;
use cudarc::driver::{result as drv, sys, CudaContext};
use herd_core::error::{HerdError, Result};
use herd_core::oplock::{OpGuard, OpLock};

pub(crate) fn err(msg: impl Into<String>) -> HerdError {
    HerdError::Backend { backend: "cuda".into(), msg: msg.into() }
}

pub(crate) fn cu<T, E: std::fmt::Debug>(what: &str, r: std::result::Result<T, E>) -> Result<T> {
    r.map_err(|e| err(format!("{what}: {e:?}")))
}

/// A kernel handle (a CUfunction, kept as an address so commands can be compared and hashed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Func(pub usize);

/// Row-major `c[m, n] (+)= b[m, k] · a[n, k]ᵀ` on cuBLAS, a and b both of `bf16` or both f32.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Gemm {
    pub a: u64,
    pub b: u64,
    pub c: u64,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub bf16: bool,
    pub accumulate: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Cmd {
    Launch {
        f: Func,
        grid: (u32, u32, u32),
        block: u32,
        smem: u32,
        /// The kernel's one argument, its parameter struct, as 8-byte words; the fields say which words are
        /// [`DevPtr`]s (resolved when the list is submitted).
        params: Vec<u64>,
        fields: &'static [FieldInfo],
    },
    Copy {
        dst: u64,
        src: u64,
        bytes: usize,
    },
    /// Copies `bytes` of the step's metadata from offset `off` to `dst`.
    MetaCopy {
        dst: u64,
        off: usize,
        bytes: usize,
    },
    Gemm(Gemm),
}

enum GraphExec {
    Cuda(sys::CUgraphExec),
    /// The emulator's graph: the captured commands, with their captured arguments.
    Emu(Vec<Op>),
}

struct Graph {
    key: Vec<Cmd>,
    meta_dev: u64,
    exec: GraphExec,
    used: u64,
}

/// Graph use so far: steps submitted, steps replayed from a graph, graphs captured.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GraphStats {
    pub steps: u64,
    pub replayed: u64,
    pub captured: u64,
}

/// Up to this many captured graphs are kept (the least recently used goes first).
const MAX_GRAPHS: usize = 8;
/// Lists shorter than this run directly (a graph saves launch overhead only on long lists).
const MIN_GRAPH_CMDS: usize = 16;
struct State {
    cmds: Vec<Cmd>,
    meta: Vec<u32>,
    meta_dev: u64,
    meta_cap: usize,
    graphs: Vec<Graph>,
    last: Vec<Cmd>,
    scratch: HashMap<&'static str, (u64, usize)>,
    stats: GraphStats,
    tick: u64,
    graphs_on: bool,
}

/// The CUDA driver side: stream, modules, cuBLAS, pinned staging.
struct Cuda {
    stream: sys::CUstream,
    modules: Mutex<HashMap<&'static str, sys::CUmodule>>,
    blas: Option<crate::blas::Handle>,
    /// Last, so that it is released after everything above (fields drop in order).
    ctx: Arc<CudaContext>,
}

/// Where commands run: a CUDA device, or the CPU emulator of the same kernels.
enum Engine {
    Cuda(Cuda),
    Emu(Box<crate::emu::Emu>),
}

pub(crate) struct Dev {
    ops: OpLock,
    engine: Engine,
    pub name: String,
    pub arch: (i32, i32),
    pub sms: u32,
    pub total_mem: usize,
    funcs: Mutex<HashMap<String, Func>>,
    st: Mutex<State>,
    free_later: Mutex<Vec<u64>>,
    mem: Mutex<Pool>,
    stage: Mutex<Staging>,
    /// The dynamic shared memory each function may use (its attribute, only ever raised: a launch recorded
    /// earlier in the step may need more than a later one).
    smem_allowed: Mutex<HashMap<Func, usize>>,
    /// A wait after every command, graphs off ([`crate::CudaOptions::sync_each`]).
    sync_each: bool,
    /// Threads that fill staging buffers.
    pub(crate) copy_threads: usize,
}

/// Why an allocation failed.
enum Alloc {
    OutOfMemory(String),
    Failed(String),
}

/// [`crate::CudaOptions::copy_threads`], or half the cores (at most 8).
fn copy_threads(opts: &CudaOptions) -> usize {
    opts.copy_threads
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()).div_ceil(2).min(8))
}

/// Freed allocations kept for reuse by size (a step's one-off buffers recur with the same sizes; cudaMalloc
/// and cudaFree cost far more than a lookup), up to `cap` bytes; the size of every live allocation.
struct Pool {
    free: HashMap<usize, Vec<u64>>,
    held: usize,
    cap: usize,
    size: HashMap<u64, usize>,
}

impl Pool {
    fn new(cap: usize) -> Pool {
        Pool { free: HashMap::new(), held: 0, cap, size: HashMap::new() }
    }
}

// SAFETY: the raw handles (stream, modules, cuBLAS handle, events, pinned memory) belong to one context
// that every entry point binds to its thread first; mutable state is behind mutexes, and the CUDA driver
// is thread safe for these calls.
unsafe impl Send for Dev {}
unsafe impl Sync for Dev {}

fn new_state(graphs: bool) -> State {
    State {
        cmds: Vec::new(),
        meta: Vec::new(),
        meta_dev: 0,
        meta_cap: 0,
        graphs: Vec::new(),
        last: Vec::new(),
        scratch: HashMap::new(),
        stats: GraphStats::default(),
        tick: 0,
        graphs_on: graphs,
    }
}

impl Dev {
    pub fn open(ordinal: usize, opts: &CudaOptions) -> Result<Arc<Dev>> {
        // SAFETY: probing for the shared library only.
        if !unsafe { sys::is_culib_present() } {
            return Err(err("no CUDA driver on this machine (libcuda.so was not found)"));
        }
        cu("cuInit", drv::init())?;
        let n = cu("cuDeviceGetCount", drv::device::get_count())?;
        if n <= 0 {
            return Err(err("the CUDA driver sees no device"));
        }
        if ordinal >= n as usize {
            return Err(err(format!("CUDA device {ordinal} requested, {n} present")));
        }
        let ctx = cu("cuCtxCreate", CudaContext::new(ordinal))?;
        ctx.bind_to_thread().map_err(|e| err(format!("bind context: {e:?}")))?;
        let name = cu("device name", ctx.name())?;
        let arch = cu("compute capability", ctx.compute_capability())?;
        let sms = cu("SM count", ctx.attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT))?;
        let total_mem = cu("total memory", ctx.total_mem())?;
        let stream = cu("cuStreamCreate", drv::stream::create(drv::stream::StreamKind::NonBlocking))?;
        let ev =
            || cu("cuEventCreate", drv::event::create(sys::CUevent_flags::CU_EVENT_DISABLE_TIMING)).map(|e| e as u64);
        // None (said once on stderr) when cuBLAS cannot be loaded: prefill then runs on the GEMV kernels.
        let blas = crate::blas::open(stream)?;
        let cuda = Cuda { stream, modules: Mutex::new(HashMap::new()), blas, ctx };
        let stage = Staging { bufs: Vec::new(), events: [ev()?, ev()?], meta: None, meta_event: ev()? };
        Ok(Arc::new(Dev {
            ops: OpLock::default(),
            engine: Engine::Cuda(cuda),
            name,
            arch,
            sms: sms as u32,
            total_mem,
            funcs: Mutex::new(HashMap::new()),
            st: Mutex::new(new_state(opts.graphs)),
            free_later: Mutex::new(Vec::new()),
            mem: Mutex::new(Pool::new((total_mem / 16).min(4 << 30))),
            stage: Mutex::new(stage),
            smem_allowed: Mutex::new(HashMap::new()),
            sync_each: opts.sync_each,
            copy_threads: copy_threads(opts),
        }))
    }

    /// The CPU emulator, shaped like an H100 (132 SMs, sm_90) so that kernels are chosen as there, with the
    /// race check (see emu.h) when `opts` ask for it.
    pub fn emulated(opts: &CudaOptions) -> Result<Arc<Dev>> {
        let e = crate::emu::Emu::new(opts.racecheck)?;
        e.bind();
        let stage = Staging {
            bufs: Vec::new(),
            events: [e.event_create()?, e.event_create()?],
            meta: None,
            meta_event: e.event_create()?,
        };
        Ok(Arc::new(Dev {
            ops: OpLock::default(),
            engine: Engine::Emu(Box::new(e)),
            name: "emulated on the CPU".into(),
            arch: (9, 0),
            sms: 132,
            total_mem: 0,
            funcs: Mutex::new(HashMap::new()),
            st: Mutex::new(new_state(opts.graphs)),
            free_later: Mutex::new(Vec::new()),
            mem: Mutex::new(Pool::new(256 << 20)),
            stage: Mutex::new(stage),
            smem_allowed: Mutex::new(HashMap::new()),
            sync_each: opts.sync_each,
            copy_threads: copy_threads(opts),
        }))
    }

    /// Held for the whole of an op (see [`OpLock`]).
    pub fn op(&self) -> OpGuard<'_> {
        self.ops.enter()
    }

    pub fn has_blas(&self) -> bool {
        match &self.engine {
            Engine::Cuda(c) => c.blas.is_some(),
            Engine::Emu(_) => true,
        }
    }

    fn bind(&self) -> Result<()> {
        match &self.engine {
            Engine::Cuda(c) => c.ctx.bind_to_thread().map_err(|e| err(format!("bind context: {e:?}"))),
            Engine::Emu(e) => {
                e.bind();
                Ok(())
            }
        }
    }

    fn lock(&self) -> Result<MutexGuard<'_, State>> {
        self.bind()?;
        self.st.lock().map_err(|_| err("device state poisoned by an earlier panic"))
    }

    /// Kernel `name` of family `family`, compiling the family on first use.
    pub fn func(&self, family: &'static str, name: &str) -> Result<Func> {
        let mut funcs = self.funcs.lock().map_err(|_| err("kernel table poisoned"))?;
        if let Some(&f) = funcs.get(name) {
            return Ok(f);
        }
        self.bind()?;
        let f = match &self.engine {
            Engine::Emu(e) => e.func(family, name)?,
            Engine::Cuda(c) => {
                let mut mods = c.modules.lock().map_err(|_| err("module table poisoned"))?;
                let module = match mods.get(family) {
                    Some(&m) => m,
                    None => {
                        let bin = compile(family, self.arch)?;
                        // SAFETY: `bin` is a CUBIN for this device, alive during the call.
                        let m = cu(&format!("load {family}.cu"), unsafe {
                            drv::module::load_data(bin.as_ptr() as *const c_void)
                        })?;
                        mods.insert(family, m);
                        m
                    }
                };
                let cname = CString::new(name).map_err(|_| err("bad kernel name"))?;
                // SAFETY: a loaded module and a NUL-terminated name.
                let f =
                    cu(&format!("kernel {name} in {family}.cu"), unsafe { drv::module::get_function(module, cname) })?;
                Func(f as usize)
            }
        };
        funcs.insert(name.to_owned(), f);
        Ok(f)
    }

    /// Lets kernel `f` use `bytes` of dynamic shared memory (above the 48 KiB default). The attribute is
    /// only ever raised: launches recorded earlier, and not yet issued, may need more.
    pub fn allow_smem(&self, f: Func, bytes: usize) -> Result<()> {
        if bytes <= 48 << 10 {
            return Ok(());
        }
        let mut allowed = self.smem_allowed.lock().map_err(|_| err("attribute table poisoned"))?;
        if allowed.get(&f).is_some_and(|&a| a >= bytes) {
            return Ok(());
        }
        self.bind()?;
        match &self.engine {
            // SAFETY: a live function handle.
            Engine::Cuda(_) => cu("cuFuncSetAttribute", unsafe {
                drv::function::set_function_attribute(
                    f.0 as sys::CUfunction,
                    sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                    bytes as i32,
                )
            })?,
            Engine::Emu(e) => e.set_max_dyn_smem(f, bytes as u32)?,
        }
        allowed.insert(f, bytes);
        Ok(())
    }

    /// The dynamic shared memory function `f` may use now.
    #[cfg(test)]
    pub fn smem_limit(&self, f: Func) -> usize {
        self.smem_allowed.lock().ok().and_then(|m| m.get(&f).copied()).unwrap_or(48 << 10)
    }

    // ---- memory ---------------------------------------------------------------------------------------

    /// `n` bytes, from the pool when an allocation of that size was freed, else from the device (emptying
    /// the pool and trying again when the device is out of memory).
    fn malloc(&self, n: usize, what: &str) -> Result<u64> {
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
    fn raw_free(&self, p: u64) {
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

    fn drain(&self, mem: &mut Pool) {
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

    /// Runs the step so far, waits for it, and copies `bytes` from `src` to the host.
    pub fn read(&self, src: u64, bytes: usize) -> Result<Vec<u8>> {
        let _op = self.op();
        let mut st = self.lock()?;
        self.flush(&mut st)?;
        let mut out = vec![0u8; bytes];
        match &self.engine {
            Engine::Emu(e) => {
                e.synchronize()?;
                e.dtoh(&mut out, src)?;
            }
            Engine::Cuda(c) => {
                // SAFETY: our stream; after it drains nothing on the device touches `src`.
                cu("cuStreamSynchronize", unsafe { drv::stream::synchronize(c.stream) })?;
                if bytes > 0 {
                    // SAFETY: `src` holds at least `bytes` (checked by the op), and the stream has drained.
                    cu("cuMemcpyDtoH", unsafe { drv::memcpy_dtoh_sync(&mut out, src) })?;
                }
            }
        }
        let dead: Vec<u64> = self.free_later.lock().map(|mut v| std::mem::take(&mut *v)).unwrap_or_default();
        for p in dead {
            self.free_now(p);
        }
        Ok(out)
    }

    /// Returns `p` to the pool (or to the device when the pool is full); no command may use it any more.
    fn free_now(&self, p: u64) {
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

    /// Waits for everything enqueued (the step is submitted first).
    pub fn sync(&self) -> Result<()> {
        self.read(0, 0).map(|_| ())
    }

    // ---- recording ------------------------------------------------------------------------------------

    pub fn record(&self, cmd: Cmd) -> Result<()> {
        self.lock()?.cmds.push(cmd);
        Ok(())
    }

    /// Appends `data` to the step's metadata (16-byte aligned) and returns its byte offset.
    pub fn meta(&self, data: &[u32]) -> Result<DevPtr> {
        let mut st = self.lock()?;
        while st.meta.len() % 4 != 0 {
            st.meta.push(0);
        }
        let off = st.meta.len() * 4;
        st.meta.extend_from_slice(data);
        if data.is_empty() {
            st.meta.push(0); // a valid address even for an empty table
        }
        Ok(DevPtr::meta(off))
    }

    /// A device buffer of at least `bytes` kept under `role` between steps (grown when too small).
    pub fn scratch(&self, role: &'static str, bytes: usize) -> Result<u64> {
        let mut st = self.lock()?;
        if let Some(&(p, n)) = st.scratch.get(role) {
            if n >= bytes {
                return Ok(p);
            }
            self.free_later(p);
        }
        let n = bytes.max(256).next_power_of_two();
        let p = self.malloc(n, role)?;
        st.scratch.insert(role, (p, n));
        Ok(p)
    }

    pub fn stats(&self) -> GraphStats {
        self.st.lock().map(|s| s.stats).unwrap_or_default()
    }

    fn destroy(&self, g: Graph) {
        if let GraphExec::Cuda(exec) = g.exec {
            // SAFETY: the driver defers destruction past launches still pending.
            unsafe {
                let _ = drv::graph::exec_destroy(exec);
            }
        }
    }

    /// Submits the recorded step: its metadata, then its commands (replayed from a graph when this exact
    /// list ran before).
    fn flush(&self, st: &mut State) -> Result<()> {
        if st.cmds.is_empty() {
            st.meta.clear();
            return Ok(());
        }
        self.upload_meta(st)?;
        st.meta.clear();
        let meta_dev = st.meta_dev;
        let cmds = std::mem::take(&mut st.cmds);
        st.stats.steps += 1;
        st.tick += 1;
        let tick = st.tick;
        if let Some(g) = st.graphs.iter_mut().find(|g| g.meta_dev == meta_dev && g.key == cmds) {
            g.used = tick;
            st.stats.replayed += 1;
            match g.exec {
                // SAFETY: an instantiated graph whose buffers are alive (the same list was just recorded).
                GraphExec::Cuda(exec) => cu("cuGraphLaunch", unsafe { drv::graph::launch(exec, self.stream()?) })?,
                GraphExec::Emu(ref ops) => match &self.engine {
                    Engine::Emu(e) => e.graph_launch(ops)?,
                    Engine::Cuda(_) => return Err(err("an emulator graph on a GPU")),
                },
            }
            st.last = cmds;
            return Ok(());
        }
        let capturable = st.graphs_on
            && !self.sync_each
            && cmds.len() >= MIN_GRAPH_CMDS
            && !cmds.iter().any(|c| matches!(c, Cmd::Gemm(_)))
            && st.last == cmds;
        if capturable {
            let exec = match &self.engine {
                Engine::Cuda(_) => {
                    let exec = self.capture(&cmds, meta_dev)?;
                    // SAFETY: a freshly instantiated graph.
                    cu("cuGraphLaunch", unsafe { drv::graph::launch(exec, self.stream()?) })?;
                    GraphExec::Cuda(exec)
                }
                Engine::Emu(e) => {
                    e.begin_capture()?;
                    let issued = self.issue_all(&cmds, meta_dev);
                    let ops = e.end_capture();
                    issued?;
                    let ops = ops?;
                    e.graph_launch(&ops)?;
                    GraphExec::Emu(ops)
                }
            };
            if st.graphs.len() >= MAX_GRAPHS {
                if let Some(i) = st.graphs.iter().enumerate().min_by_key(|(_, g)| g.used).map(|(i, _)| i) {
                    let g = st.graphs.swap_remove(i);
                    self.destroy(g);
                }
            }
            st.graphs.push(Graph { key: cmds.clone(), meta_dev, exec, used: tick });
            st.stats.captured += 1;
        } else {
            self.issue_all(&cmds, meta_dev)?;
        }
        st.last = cmds;
        Ok(())
    }

    fn stream(&self) -> Result<sys::CUstream> {
        match &self.engine {
            Engine::Cuda(c) => Ok(c.stream),
            Engine::Emu(_) => Err(err("the emulator has no stream")),
        }
    }

    fn issue_all(&self, cmds: &[Cmd], meta_dev: u64) -> Result<()> {
        if !self.sync_each {
            return cmds.iter().try_for_each(|c| self.issue(c, meta_dev));
        }
        for (i, c) in cmds.iter().enumerate() {
            self.issue(c, meta_dev)
                .and_then(|()| self.stream_sync())
                .map_err(|e| err(format!("command {i} of {} ({}): {e}", cmds.len(), self.describe(c))))?;
        }
        Ok(())
    }

    /// A command in words, for HERD_CUDA_SYNC=1's errors.
    fn describe(&self, c: &Cmd) -> String {
        match c {
            Cmd::Launch { f, grid, block, smem, .. } => {
                let name = match &self.engine {
                    Engine::Emu(e) => e.name(*f),
                    Engine::Cuda(_) => self
                        .funcs
                        .lock()
                        .ok()
                        .and_then(|m| m.iter().find(|(_, v)| **v == *f).map(|(k, _)| k.clone()))
                        .unwrap_or_default(),
                };
                format!("kernel {name}, grid {grid:?}, block {block}, {smem} bytes of shared memory")
            }
            Cmd::Copy { bytes, .. } => format!("device copy of {bytes} bytes"),
            Cmd::MetaCopy { bytes, .. } => format!("metadata copy of {bytes} bytes"),
            Cmd::Gemm(g) => format!("cuBLAS GEMM {}x{}x{}", g.m, g.n, g.k),
        }
    }

    /// Waits for the stream.
    fn stream_sync(&self) -> Result<()> {
        match &self.engine {
            Engine::Emu(e) => e.synchronize(),
            // SAFETY: our own stream.
            Engine::Cuda(c) => cu("cuStreamSynchronize", unsafe { drv::stream::synchronize(c.stream) }),
        }
    }

    fn capture(&self, cmds: &[Cmd], meta_dev: u64) -> Result<sys::CUgraphExec> {
        let stream = self.stream()?;
        // SAFETY: capture on our stream, ended on every path.
        unsafe {
            cu(
                "cuStreamBeginCapture",
                drv::stream::begin_capture(stream, sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL),
            )?;
            let issued = self.issue_all(cmds, meta_dev);
            let graph = drv::stream::end_capture(stream);
            issued?;
            let graph = cu("cuStreamEndCapture", graph)?;
            let exec = drv::graph::instantiate(graph, sys::CUgraphInstantiate_flags(0));
            let _ = drv::graph::destroy(graph);
            cu("cuGraphInstantiate", exec)
        }
    }

    fn issue(&self, c: &Cmd, meta_dev: u64) -> Result<()> {
        // The parameter struct with its metadata pointers made addresses.
        let resolve = |params: &[u64], fields: &[FieldInfo]| {
            let mut words = params.to_vec();
            for fl in fields.iter().filter(|fl| fl.kind == FieldKind::Ptr) {
                words[fl.offset / 8] = DevPtr::resolve(words[fl.offset / 8], meta_dev);
            }
            words
        };
        match (&self.engine, c) {
            (Engine::Emu(e), Cmd::Launch { f, grid, block, smem, params, fields }) => {
                // The emulator's trampoline reads the struct from where its first argument slot points.
                e.launch(*f, *grid, *block, *smem, &resolve(params, fields))
            }
            (Engine::Emu(e), Cmd::Copy { dst, src, bytes }) => e.dtod_async(*dst, *src, *bytes),
            (Engine::Emu(e), Cmd::MetaCopy { dst, off, bytes }) => e.dtod_async(*dst, meta_dev + *off as u64, *bytes),
            (Engine::Emu(e), Cmd::Gemm(g)) => e.gemm_async(g),
            (Engine::Cuda(cd), Cmd::Launch { f, grid, block, smem, params, fields }) => {
                let mut words = resolve(params, fields);
                let mut args = [words.as_mut_ptr() as *mut c_void];
                // SAFETY: every kernel takes one argument, its parameter struct, whose bytes `words` holds
                // (8-byte aligned, the struct's size; the layout test checks the Rust and .cu twins agree).
                cu("cuLaunchKernel", unsafe {
                    drv::launch_kernel(f.0 as sys::CUfunction, *grid, (*block, 1, 1), *smem, cd.stream, &mut args)
                })
            }
            (Engine::Cuda(cd), Cmd::Copy { dst, src, bytes }) => {
                // SAFETY: both ranges lie in live allocations (checked by the op).
                cu("cuMemcpyDtoDAsync", unsafe { drv::memcpy_dtod_async(*dst, *src, *bytes, cd.stream) })
            }
            (Engine::Cuda(cd), Cmd::MetaCopy { dst, off, bytes }) => {
                // SAFETY: as above; the metadata was copied to the arena ahead of the list.
                cu("cuMemcpyDtoDAsync", unsafe {
                    drv::memcpy_dtod_async(*dst, meta_dev + *off as u64, *bytes, cd.stream)
                })
            }
            (Engine::Cuda(cd), Cmd::Gemm(g)) => crate::blas::gemm(cd.blas, g),
        }
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.bind();
        if let Err(e) = self.stream_sync() {
            eprintln!("herd: cuda: {e}");
        }
        let mut dead: Vec<u64> = self.free_later.lock().map(|mut v| std::mem::take(&mut *v)).unwrap_or_default();
        if let Ok(mut st) = self.st.lock() {
            for g in std::mem::take(&mut st.graphs) {
                self.destroy(g);
            }
            dead.extend(st.scratch.drain().map(|(_, (p, _))| p));
            if st.meta_dev != 0 {
                dead.push(st.meta_dev);
            }
        }
        for p in dead {
            self.free_now(p);
        }
        if let Ok(mut mem) = self.mem.lock() {
            self.drain(&mut mem);
        }
        if let Ok(mut stage) = self.stage.lock() {
            stage.bufs.clear();
            stage.meta = None;
            let events = stage.events;
            for e in events.into_iter().chain([stage.meta_event]) {
                self.event_destroy(e);
            }
        }
        if let Engine::Cuda(c) = &self.engine {
            // SAFETY: tearing down our own handles after the stream drained.
            unsafe {
                if let Some(h) = c.blas {
                    crate::blas::destroy(h);
                }
                if let Ok(mods) = c.modules.lock() {
                    for (_, &m) in mods.iter() {
                        let _ = drv::module::unload(m);
                    }
                }
                let _ = drv::stream::destroy(c.stream);
            }
        }
    }
}
