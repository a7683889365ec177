//! herd-cuda: the Backend on CUDA through cudarc, tuned for Hopper. One .cu file per op family (named as
//! the CPU op and the WGSL shader it mirrors), compiled by NVRTC at first use for the device's own
//! architecture and kept for the process. cudarc loads the driver at run time, and `libs` finds and loads
//! NVRTC and cuBLAS (CUDA 12 or 13, on the loader's path or in the usual toolkit folders; see
//! [`cuda_libraries`]), so this crate builds everywhere and [`CudaBackend::new`] says clearly when there is
//! no driver.
//!
//! Ops record commands; [`Backend::read`] submits the step and waits. A decode step records the same list
//! every token, so from the second token on it is replayed as one CUDA graph (see `device`). Each op family
//! has a module named as the CPU backend's, the .cu file and the WGSL shader, which picks a kernel per op
//! and shape: decode GEMV (16-byte loads, four in flight per lane) for up to 8 rows and cuBLAS above
//! (`matmul`); flash-decoding attention for short query runs and a tiled kernel for prefill (`attention`);
//! MoE as per-entry GEMVs for decode and expert-grouped tiles for batches, routed on the device (`moe`).
//! This file holds buffers and weights and wires the families into the Backend trait.

mod attention;
mod blas;
mod device;
mod elementwise;
mod emu;
#[cfg(test)]
mod emu_tests;
mod kernel;
mod layer_norm;
#[cfg(test)]
mod layout_tests;
mod libs;
mod matmul;
mod moe;
mod nvrtc;
mod rms_norm;
mod rope;
mod sample;

use std::sync::Arc;

use herd_core::backend::check::{self, BufDesc};
use herd_core::backend::{ops, Backend};
use herd_core::checkpoint::TensorRef;
use herd_core::error::Result;
use herd_core::quant::Fill;
use herd_core::quant::{DType, QuantLayout, ScaleType};

pub use device::GraphStats;
use device::{err, Cmd, Dev};
use kernel::{DevPtr, Kernel, Params};
pub use libs::cuda_libraries;
pub use nvrtc::{compile, nvrtc_present, FAMILIES};

/// How the CUDA backend runs. The library reads no environment: front ends fill this from their flags
/// (`herd --help` lists them with the environment variables that set them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CudaOptions {
    /// Prefill GEMMs round activations to bf16 (one tensor-core pass instead of two; what most engines do)
    /// instead of keeping f32 accuracy with x = hi + lo. Off by default; the op table's tolerances assume it
    /// off.
    pub bf16_activations: bool,
    /// Replay a step that repeats the previous one's command list as a CUDA graph (on by default).
    pub graphs: bool,
    /// Wait after every command (graphs off), so that a command that faults is named in the error. For
    /// debugging: much slower.
    pub sync_each: bool,
    /// Threads that fill the pinned staging buffers of uploads; None: half the cores, at most 8 (memory
    /// bandwidth, not cores, is the limit past that).
    pub copy_threads: Option<usize>,
    /// On the emulator only: check each kernel's loads and stores for unordered accesses to the same bytes
    /// by different threads (see emu.h). Several times slower.
    pub racecheck: bool,
}

impl Default for CudaOptions {
    fn default() -> Self {
        CudaOptions { bf16_activations: false, graphs: true, sync_each: false, copy_threads: None, racecheck: false }
    }
}

/// The CUDA backend on one device.
pub struct CudaBackend {
    dev: Arc<Dev>,
    /// See [`CudaOptions::bf16_activations`].
    bf16_activations: bool,
}

/// A device buffer of f32 or u32 elements.
pub struct CudaBuffer {
    ptr: u64,
    pub len: usize,
    pub is_u32: bool,
    dev: Arc<Dev>,
}

impl CudaBuffer {
    /// The buffer's address.
    fn at(&self) -> DevPtr {
        DevPtr::new(self.ptr)
    }
}

impl Drop for CudaBuffer {
    fn drop(&mut self) {
        self.dev.free_later(self.ptr);
    }
}

/// A weight tensor on the device, in its checkpoint format. Quantized formats keep their values and scales
/// in one allocation, laid out as `herd_core::quant` says.
pub struct CudaWeight {
    ptr: u64,
    pub dtype: DType,
    pub shape: Vec<usize>,
    /// Quantized formats: the scales' address, their type (0 f16, 1 bf16), the group size.
    scales: u64,
    st: u32,
    group: u32,
    dev: Arc<Dev>,
}

impl CudaWeight {
    fn new(dev: &Arc<Dev>, ptr: u64, dtype: DType, shape: &[usize]) -> Result<CudaWeight> {
        let (scales, st, group) = match dtype.grouping() {
            Some(g) => {
                let l = QuantLayout::new(dtype, shape).map_err(err)?;
                (ptr + l.scale_offset as u64, u32::from(g.scale == ScaleType::BF16), g.group)
            }
            None => (0, 0, 1),
        };
        Ok(CudaWeight { ptr, dtype, shape: shape.to_vec(), scales, st, group, dev: dev.clone() })
    }
    /// Bits of a quantized format.
    fn bits(&self) -> Option<u32> {
        match self.dtype {
            DType::Q4(_) => Some(4),
            DType::Q8(_) => Some(8),
            _ => None,
        }
    }
    /// The weight's address.
    fn at(&self) -> DevPtr {
        DevPtr::new(self.ptr)
    }
}

impl Drop for CudaWeight {
    fn drop(&mut self) {
        self.dev.free_later(self.ptr);
    }
}

fn words(b: &[u8]) -> impl Iterator<Item = u32> + '_ {
    b.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
}

fn blocks(n: usize, per: usize) -> u32 {
    n.div_ceil(per).max(1) as u32
}

/// Sequences with at most this many new tokens take the flash-decoding kernel; longer ones the tiled one.
const DECODE_MAX_Q: usize = 8;
/// Query heads per kv head the decode kernel serves (MAXG in attention_decode.cu).
const MAX_GROUP: usize = 16;
/// The largest head dimension the attention kernels take.
const MAX_HEAD_DIM: usize = 256;
/// MoE steps with at most this many (row, choice) entries run as per-entry GEMVs.
const MOE_GEMV_MAX: usize = 16;
/// Top-k of the router (MAXK in moe.cu).
const MAX_TOPK: usize = 16;

impl CudaBackend {
    /// Opens CUDA device 0 with the default options.
    pub fn new() -> Result<Self> {
        Self::with_options(0, &CudaOptions::default())
    }

    /// Opens CUDA device `ordinal`.
    pub fn with_options(ordinal: usize, opts: &CudaOptions) -> Result<Self> {
        Ok(CudaBackend { dev: Dev::open(ordinal, opts)?, bf16_activations: opts.bf16_activations })
    }

    /// The CUDA backend on the CPU emulator of its kernels (see `emu`), with the default options: the same
    /// host code, command lists, graphs and .cu kernels, run as C++ on the CPU. For tests on machines without
    /// a GPU; needs a C++ compiler.
    pub fn emulated() -> Result<Self> {
        Self::emulated_with(&CudaOptions::default())
    }

    /// [`CudaBackend::emulated`] with `opts` (among them the emulator's race check).
    pub fn emulated_with(opts: &CudaOptions) -> Result<Self> {
        Ok(CudaBackend { dev: Dev::emulated(opts)?, bf16_activations: opts.bf16_activations })
    }

    /// Whether [`CudaBackend::emulated`] can work here (a C++ compiler is installed).
    pub fn emulator_available() -> bool {
        emu::available()
    }

    /// The device's name, e.g. `NVIDIA H100 80GB HBM3`.
    pub fn device_name(&self) -> &str {
        &self.dev.name
    }

    /// Device memory in bytes.
    pub fn total_memory(&self) -> usize {
        self.dev.total_mem
    }

    /// Compute capability, e.g. (9, 0).
    pub fn arch(&self) -> (i32, i32) {
        self.dev.arch
    }

    /// How many steps ran, how many of them were replayed CUDA graphs, how many graphs were captured.
    pub fn graph_stats(&self) -> GraphStats {
        self.dev.stats()
    }

    /// Records kernel `k` with its parameters.
    fn launch<K: Kernel>(&self, k: K, grid: (u32, u32, u32), block: u32, smem: usize, p: &K::Params) -> Result<()> {
        let fh = self.dev.func(K::FAMILY, &k.entry())?;
        self.dev.allow_smem(fh, smem)?;
        let launch =
            Cmd::Launch { f: fh, grid, block, smem: smem as u32, params: p.words(), fields: K::Params::FIELDS };
        self.dev.record(launch)
    }

    fn buffer(&self, len: usize, is_u32: bool) -> Result<CudaBuffer> {
        let ptr = self.dev.alloc(len * 4)?;
        Ok(CudaBuffer { ptr, len, is_u32, dev: self.dev.clone() })
    }

    /// A buffer that `data` fills at once (no zeroing first).
    fn filled(&self, data: &[u32], is_u32: bool) -> Result<CudaBuffer> {
        let ptr = self.dev.alloc_raw(data.len() * 4)?;
        let b = CudaBuffer { ptr, len: data.len(), is_u32, dev: self.dev.clone() };
        self.dev.upload(b.ptr, bytemuck::cast_slice(data))?;
        Ok(b)
    }
}

impl Backend for CudaBackend {
    const KIND: &'static str = "cuda";

    type Buffer = CudaBuffer;
    type Weight = CudaWeight;

    fn name(&self) -> String {
        let act = if self.bf16_activations { ", bf16 activations" } else { "" };
        format!("cuda ({}, sm_{}{}{act})", self.dev.name, self.dev.arch.0, self.dev.arch.1)
    }

    fn free_memory(&self) -> Option<herd_core::backend::FreeMemory> {
        let bytes = self.dev.free_memory()?;
        Some(herd_core::backend::FreeMemory { bytes, holds_weights: true })
    }

    fn buffer_desc(&self, b: &CudaBuffer) -> BufDesc {
        BufDesc { len: b.len, is_u32: b.is_u32 }
    }
    fn weight_desc<'a>(&self, w: &'a CudaWeight) -> (DType, &'a [usize]) {
        (w.dtype, &w.shape)
    }

    fn stats(&self) -> Option<String> {
        let g = self.dev.stats();
        Some(format!(
            "{} steps submitted, {} replayed as CUDA graphs, {} graphs captured",
            g.steps, g.replayed, g.captured
        ))
    }

    fn alloc(&self, len: usize) -> Result<CudaBuffer> {
        self.buffer(len, false)
    }

    fn alloc_u32(&self, len: usize) -> Result<CudaBuffer> {
        self.buffer(len, true)
    }

    fn upload(&self, data: &[f32]) -> Result<CudaBuffer> {
        self.filled(bytemuck::cast_slice(data), false)
    }

    fn upload_u32(&self, data: &[u32]) -> Result<CudaBuffer> {
        self.filled(data, true)
    }

    fn write_u32(&self, buf: &CudaBuffer, data: &[u32]) -> Result<()> {
        check::write_u32(self, buf, data).map_err(err)?;
        let _op = self.dev.op();
        if data.is_empty() {
            return Ok(());
        }
        let Some(off) = self.dev.meta(data)?.meta_offset() else { return Err(err("metadata offset expected")) };
        self.dev.record(Cmd::MetaCopy { dst: buf.ptr, off, bytes: data.len() * 4 })
    }

    fn read(&self, buf: &CudaBuffer) -> Result<Vec<f32>> {
        if buf.is_u32 {
            return Err(err("read: expected an f32 buffer, got u32"));
        }
        Ok(words(&self.dev.read(buf.ptr, buf.len * 4)?).map(f32::from_bits).collect())
    }

    fn read_u32(&self, buf: &CudaBuffer) -> Result<Vec<u32>> {
        if !buf.is_u32 {
            return Err(err("read_u32: expected a u32 buffer, got f32"));
        }
        Ok(words(&self.dev.read(buf.ptr, buf.len * 4)?).collect())
    }

    fn copy(&self, src: &CudaBuffer, src_off: usize, dst: &CudaBuffer, dst_off: usize, len: usize) -> Result<()> {
        check::copy(self, src, src_off, dst, dst_off, len).map_err(err)?;
        let _op = self.dev.op();
        if len == 0 {
            return Ok(());
        }
        self.dev.record(Cmd::Copy {
            dst: dst.ptr + 4 * dst_off as u64,
            src: src.ptr + 4 * src_off as u64,
            bytes: 4 * len,
        })
    }

    fn load_weight(&self, t: &TensorRef) -> Result<CudaWeight> {
        let bytes = t.bytes();
        let want = t.dtype.bytes(&t.shape).map_err(|e| err(format!("{}: {e}", t.name.escape_debug())))?;
        if bytes.len() != want {
            return Err(err(format!(
                "{}: {} bytes, {} of {:?} needs {want}",
                t.name.escape_debug(),
                bytes.len(),
                t.dtype.name(),
                t.shape
            )));
        }
        let p = self.dev.alloc_raw(bytes.len())?;
        let w = CudaWeight::new(&self.dev, p, t.dtype, &t.shape)?;
        self.dev.upload(p, bytes)?;
        Ok(w)
    }

    fn alloc_weight(&self, name: &str, shape: &[usize], dtype: DType) -> Result<CudaWeight> {
        let _op = self.dev.op();
        let bytes = dtype.bytes(shape).map_err(|e| err(format!("{}: {e}", name.escape_debug())))?;
        let p = self.dev.alloc(bytes)?;
        CudaWeight::new(&self.dev, p, dtype, shape)
    }

    fn write_weight_row(&self, w: &CudaWeight, row: usize, t: &TensorRef) -> Result<()> {
        let (dst, src) = herd_core::backend::row_copy(w.dtype, &w.shape, row, t)?;
        for (d, s) in dst.into_iter().zip(src) {
            if !d.is_empty() {
                self.dev.upload_in_order(w.ptr + d.start as u64, &t.bytes()[s])?;
            }
        }
        Ok(())
    }

    fn host_to_device_peak_gbps(&self) -> Result<Option<f64>> {
        self.dev.h2d_peak_gbps(256 << 20)
    }

    fn synthetic_weight(&self, name: &str, shape: &[usize], dtype: DType, fill: Fill) -> Result<CudaWeight> {
        self.synthetic_weight_impl(name, shape, dtype, fill)
    }

    fn run_embed(&self, call: &ops::Embed<'_, Self>) -> Result<()> {
        self.embed_impl(call)
    }

    fn run_rms_norm(&self, call: &ops::RmsNorm<'_, Self>) -> Result<()> {
        self.rms_norm_impl(call)
    }

    fn run_add_rms_norm(&self, call: &ops::AddRmsNorm<'_, Self>) -> Result<()> {
        self.add_rms_norm_impl(call)
    }

    fn run_layer_norm(&self, call: &ops::LayerNorm<'_, Self>) -> Result<()> {
        self.layer_norm_impl(call)
    }

    fn run_bias_act(&self, call: &ops::BiasAct<'_, Self>) -> Result<()> {
        self.bias_act_impl(call)
    }

    fn run_matmul(&self, call: &ops::Matmul<'_, Self>) -> Result<()> {
        self.matmul_impl(call)
    }

    fn run_swiglu(&self, call: &ops::Swiglu<'_, Self>) -> Result<()> {
        self.swiglu_impl(call)
    }

    fn run_rope(&self, call: &ops::Rope<'_, Self>) -> Result<()> {
        self.rope_impl(call)
    }

    fn run_attention(&self, call: &ops::Attention<'_, Self>) -> Result<()> {
        self.attention_impl(call)
    }

    fn run_kv_store(&self, call: &ops::KvStore<'_, Self>) -> Result<()> {
        self.kv_store_impl(call)
    }

    fn run_add(&self, call: &ops::Add<'_, Self>) -> Result<()> {
        self.add_impl(call)
    }

    fn run_silu_mul(&self, call: &ops::SiluMul<'_, Self>) -> Result<()> {
        self.silu_mul_impl(call)
    }

    fn run_router_topk(&self, call: &ops::RouterTopk<'_, Self>) -> Result<()> {
        self.router_topk_impl(call)
    }

    fn run_moe(&self, call: &ops::Moe<'_, Self>) -> Result<()> {
        self.moe_impl(call)
    }
    fn run_gather_rows(&self, call: &ops::GatherRows<'_, Self>) -> Result<()> {
        self.gather_rows_impl(call)
    }

    fn run_sample(&self, call: &ops::Sample<'_, Self>) -> Result<()> {
        self.sample_impl(call)
    }

    fn run_mask_logits(&self, call: &ops::MaskLogits<'_, Self>) -> Result<()> {
        self.mask_logits_impl(call)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every kernel family compiles with NVRTC for Hopper (and Ampere/Ada). Needs only libnvrtc, not a GPU:
    /// scripts/test.sh fetches it; without it the test says NOT RUN, and HERD_REQUIRE_NVRTC=1 makes that a
    /// failure.
    #[test]
    fn kernels_compile_with_nvrtc() {
        if !nvrtc_present() {
            herd_core::not_run("nvrtc", Some("HERD_REQUIRE_NVRTC"), &compile("elementwise", (9, 0)).unwrap_err());
            return;
        }
        eprintln!("nvrtc: {}", cuda_libraries());
        for arch in [(9, 0), (8, 0), (8, 9)] {
            for (name, _) in FAMILIES {
                let bin = compile(name, arch).unwrap_or_else(|e| panic!("{e}"));
                // An ELF CUBIN.
                assert!(bin.len() > 1000 && bin[..4] == [0x7f, b'E', b'L', b'F'], "{name} for {arch:?}");
            }
        }
    }

    /// A kernel with an error is reported with NVRTC's log, not as a panic or an empty binary.
    #[test]
    fn compile_errors_are_reported() {
        if !nvrtc_present() {
            herd_core::not_run("nvrtc", None, &"NVRTC not found");
            return;
        }
        let e = compile("no_such_family", (9, 0)).unwrap_err().to_string();
        assert!(e.contains("no kernel family"), "{e}");
    }

    #[test]
    fn no_driver_is_a_clear_error() {
        // SAFETY: probing only.
        if unsafe { cudarc::driver::sys::is_culib_present() } {
            eprintln!("a CUDA driver is present: the no-driver message is not checked here");
            return;
        }
        let e = CudaBackend::new().err().expect("no driver, no backend").to_string();
        assert!(e.contains("no CUDA driver"), "{e}");
    }
}
