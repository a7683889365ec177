//! The backend flags every model-running subcommand shares (`--backend`, the expert cache, the GPU
//! backends' switches and their environment variables), and opening the backend they name.

use anyhow::{bail, Result};
use clap::builder::BoolishValueParser;
use clap::{ArgAction, Args, ValueEnum};
use herd_core::cpu::WeightMemory;
use herd_core::experts::{parse_size, ExpertCacheOptions, Policy};
use herd_cuda::{CudaBackend, CudaOptions};
use herd_wgpu::{WgpuBackend, WgpuOptions};

/// The compute backends `--backend` names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum BackendKind {
    Cpu,
    Wgpu,
    Cuda,
    /// The CUDA kernels on a CPU emulator, for testing.
    CudaEmu,
    /// CUDA if there is an NVIDIA GPU, else a hardware GPU through wgpu, else cpu.
    Auto,
}

/// Eviction policies of the expert cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum PolicyArg {
    /// Recency and frequency of use.
    Lrfu,
    /// Least recently used.
    Lru,
}

#[derive(Args)]
pub(crate) struct BackendArg {
    /// Compute backend.
    #[arg(long, value_enum, default_value_t = BackendKind::Cpu)]
    pub(crate) backend: BackendKind,
    /// Stream the routed experts through a device cache of this many bytes instead of loading them all
    /// (e.g. 96KiB, 512MiB, 24GiB): for models larger than the device's memory. `herd bench` takes a
    /// comma-separated list and measures each (`off`: every expert resident).
    #[arg(long, value_name = "SIZE")]
    expert_cache: Option<String>,
    /// Eviction policy of --expert-cache.
    #[arg(long, value_enum, default_value_t = PolicyArg::Lrfu, requires = "expert_cache")]
    expert_policy: PolicyArg,
    /// With --expert-cache: fetch each expert only when a layer needs it (no prefetch of the next layer's).
    #[arg(long, requires = "expert_cache")]
    no_prefetch: bool,
    /// The KV cache's format: f32, bf16, f16, q8 (int8, a scale per token and head), fp8 (e4m3, likewise) or
    /// q4 (KIVI: 4-bit keys per channel over each page of 16 tokens, values per token in groups of 32 channels);
    /// or global=FORMAT,chunked=FORMAT for full-attention and chunked layers apart (a part left out takes the
    /// default). Default: bf16 on a GPU (wgpu, cuda), f32 on the CPU.
    #[arg(long, value_name = "FORMAT")]
    pub(crate) kv_dtype: Option<String>,
    /// CPU: worker threads for the CPU backend's kernels (default: the physical cores).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
    threads: Option<u16>,
    /// CPU: keep the weights in the checkpoint file's mapping instead of reading them into memory in huge
    /// pages: nothing copied at load, and the OS may evict pages of a model larger than memory, but decode
    /// reads the weights through 4 KiB pages (slower). Huge pages are the default where Linux has them.
    #[arg(long)]
    mmap: bool,
    #[command(flatten)]
    device: DeviceArgs,
}

/// How the GPU backends run: tuning and debugging switches, each also set by its environment variable.
#[derive(Args)]
pub(crate) struct DeviceArgs {
    /// CUDA: replay a step that repeats the previous one as a CUDA graph.
    #[arg(long, env = "HERD_CUDA_GRAPHS", default_value_t = true, action = ArgAction::Set, value_parser = BoolishValueParser::new(), value_name = "BOOL", hide_env_values = true)]
    cuda_graphs: bool,
    /// CUDA: wait after every command (graphs off), so that a command that faults is named. Slow; debugging.
    #[arg(long, env = "HERD_CUDA_SYNC", value_parser = BoolishValueParser::new(), hide_env_values = true)]
    cuda_sync: bool,
    /// CUDA: prefill GEMMs round activations to bf16 (one tensor-core pass) instead of keeping f32 accuracy.
    #[arg(long, env = "HERD_CUDA_BF16_ACTIVATIONS", value_parser = BoolishValueParser::new(), hide_env_values = true)]
    cuda_bf16_activations: bool,
    /// CUDA: threads that fill the pinned staging buffers of uploads (default: half the cores, at most 8).
    #[arg(long, env = "HERD_COPY_THREADS", value_name = "N", value_parser = clap::value_parser!(u16).range(1..), hide_env_values = true)]
    copy_threads: Option<u16>,
    /// cuda-emu: check every kernel for data races between threads. Several times slower.
    #[arg(long, env = "HERD_CUDA_EMU_RACECHECK", value_parser = BoolishValueParser::new(), hide_env_values = true)]
    emu_racecheck: bool,
    /// wgpu: decode matmuls without barriers, as on CPU adapters (default: only a browser's CPU adapter).
    #[arg(long, env = "HERD_WGPU_CPU_KERNELS", action = ArgAction::Set, value_parser = BoolishValueParser::new(), value_name = "BOOL", hide_env_values = true)]
    wgpu_cpu_kernels: Option<bool>,
}

impl DeviceArgs {
    fn cuda(&self) -> CudaOptions {
        CudaOptions {
            bf16_activations: self.cuda_bf16_activations,
            graphs: self.cuda_graphs,
            sync_each: self.cuda_sync,
            copy_threads: self.copy_threads.map(usize::from),
            racecheck: self.emu_racecheck,
        }
    }
    fn wgpu(&self) -> WgpuOptions {
        WgpuOptions { cpu_kernels: self.wgpu_cpu_kernels, ..WgpuOptions::default() }
    }
}

impl BackendArg {
    /// The expert cache options, one per size given (`off`: None); none without --expert-cache.
    pub(crate) fn expert_caches(&self) -> Result<Vec<Option<ExpertCacheOptions>>> {
        let Some(list) = &self.expert_cache else { return Ok(Vec::new()) };
        let policy = match self.expert_policy {
            PolicyArg::Lrfu => Policy::Lrfu,
            PolicyArg::Lru => Policy::Lru,
        };
        list.split(',')
            .map(|s| {
                if s.trim() == "off" {
                    return Ok(None);
                }
                let budget = parse_size(s).map_err(|e| anyhow::anyhow!("--expert-cache: {e}"))?;
                Ok(Some(ExpertCacheOptions { budget, policy, prefetch: !self.no_prefetch, trace_picks: false }))
            })
            .collect()
    }

    /// How a command that loads one model sets it up: its expert cache and KV formats.
    pub(crate) fn load_options(&self) -> Result<crate::files::LoadOptions> {
        Ok(crate::files::LoadOptions {
            experts: self.expert_cache()?,
            kv_dtype: self.kv_dtype.clone(),
            device_memory: None,
        })
    }

    /// The one expert cache of a command that loads one model.
    pub(crate) fn expert_cache(&self) -> Result<Option<ExpertCacheOptions>> {
        let mut v = self.expert_caches()?;
        if v.len() > 1 {
            bail!("--expert-cache takes one size here (a list is for `herd bench`)");
        }
        Ok(v.pop().flatten())
    }
}

/// The backend a run uses (the CPU's with where it keeps weights).
pub(crate) enum Chosen {
    Cpu(WeightMemory),
    Wgpu(Box<WgpuBackend>),
    Cuda(Box<CudaBackend>),
}

/// The backend `--backend` names; `auto`: an NVIDIA GPU through CUDA when there is one, else a hardware GPU
/// through wgpu, else the CPU (said on stderr).
pub(crate) fn choose_backend(a: &BackendArg) -> Result<Chosen> {
    let threads = a.threads.map_or_else(physical_cores, usize::from);
    // The pools are global and made once: a second command in one process (the tests) keeps the first's.
    // The CPU backend's kernels run on herd_core's pool; rayon's runs the quantizer and weight fills.
    herd_core::cpu::pool::set_threads(threads);
    let _ = rayon::ThreadPoolBuilder::new().num_threads(threads).build_global();
    let (cuda, wgpu) = (a.device.cuda(), a.device.wgpu());
    let cpu = if a.mmap { WeightMemory::Mapped } else { WeightMemory::detect() };
    Ok(match a.backend {
        BackendKind::Cpu => Chosen::Cpu(cpu),
        BackendKind::Wgpu => Chosen::Wgpu(Box::new(WgpuBackend::with_options(&wgpu)?)),
        BackendKind::Cuda => Chosen::Cuda(Box::new(CudaBackend::with_options(0, &cuda)?)),
        // The CUDA backend with its kernels run by its CPU emulator: slow, for checking kernels without a GPU.
        BackendKind::CudaEmu => Chosen::Cuda(Box::new(CudaBackend::emulated_with(&cuda)?)),
        BackendKind::Auto => match CudaBackend::with_options(0, &cuda) {
            Ok(c) => {
                eprintln!("backend: cuda on {} ({})", c.device_name(), herd_cuda::cuda_libraries());
                Chosen::Cuda(Box::new(c))
            }
            Err(_) => auto_wgpu_or_cpu(&wgpu, cpu),
        },
    })
}

/// The processor's physical cores (hyper-threads share a core's vector units, so the kernels gain nothing
/// from them): distinct thread-sibling sets on Linux, else the logical CPUs this process may use.
fn physical_cores() -> usize {
    let logical = std::thread::available_parallelism().map_or(1, usize::from);
    let Ok(dir) = std::fs::read_dir("/sys/devices/system/cpu") else { return logical };
    let mut cores = std::collections::BTreeSet::new();
    for e in dir.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name.strip_prefix("cpu").is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())) {
            if let Ok(s) = std::fs::read_to_string(e.path().join("topology/thread_siblings_list")) {
                cores.insert(s.trim().to_owned());
            }
        }
    }
    // Cores this process may not use (a container's CPU limit) are not counted.
    if cores.is_empty() {
        logical
    } else {
        cores.len().min(logical)
    }
}

fn auto_wgpu_or_cpu(opts: &WgpuOptions, cpu: WeightMemory) -> Chosen {
    match WgpuBackend::with_options(opts) {
        Ok(w) if w.is_hardware() => {
            eprintln!("backend: wgpu on {}", w.adapter());
            Chosen::Wgpu(Box::new(w))
        }
        Ok(w) => {
            eprintln!("backend: cpu (the only wgpu adapter, {}, is not a hardware GPU)", w.adapter());
            Chosen::Cpu(cpu)
        }
        Err(e) => {
            eprintln!("backend: cpu ({e})");
            Chosen::Cpu(cpu)
        }
    }
}

/// Runs one scheduler step (on the calling thread, which the CPU backend's pool works beside).
pub(crate) fn step<B: herd_core::backend::Backend>(s: &mut herd_core::schedule::Scheduler<B>) -> herd_core::Result<()> {
    use std::future::Future;
    let mut step = std::pin::pin!(s.step());
    // On the CPU every await of a step is ready at once: one poll with a waker that does nothing runs it
    // whole, without the allocation pollster makes per call. A step that does wait (a GPU readback) is then
    // blocked on; the future registers pollster's waker when polled again.
    match step.as_mut().poll(&mut std::task::Context::from_waker(std::task::Waker::noop())) {
        std::task::Poll::Ready(r) => r,
        std::task::Poll::Pending => pollster::block_on(step),
    }
}
