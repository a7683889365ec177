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

mod commands;
mod memory;
mod transfer;
use memory::Pool;
use transfer::Staging;

use crate::emu::Op;
use crate::kernel::{DevPtr, FieldInfo};
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

/// [`crate::CudaOptions::copy_threads`], or half the cores (at most 8).
fn copy_threads(opts: &CudaOptions) -> usize {
    opts.copy_threads
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()).div_ceil(2).min(8))
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

    /// Device memory free now (the driver's figure); None on the emulator, which has no device memory.
    pub fn free_memory(&self) -> Option<usize> {
        match &self.engine {
            Engine::Cuda(c) => c.ctx.mem_get_info().ok().map(|(free, _)| free),
            Engine::Emu(_) => None,
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
