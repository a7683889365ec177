//! herd-wgpu: the Backend on wgpu, every op a WGSL compute shader (one .wgsl file per op family, named as
//! the CPU op it mirrors). Ops record dispatches into one command encoder; [`Backend::read`] submits it and
//! waits, so a decode step is one submission and one readback (of the sampled ids: `sample` runs on the
//! device). Natively reads block; in a browser (wasm32) they cannot, and [`Backend::read_async`] awaits
//! instead. Each op family has a module (the same names as core's CPU backend and the .wgsl files): it
//! declares its kernels' parameter structs and entry points ([`kernel`]) and picks a kernel per shape. This
//! file wires them into the Backend trait; `gpu` owns the device, pipelines and pools.

mod attention;
mod buffer;
mod elementwise;
mod gpu;
mod kernel;
mod layer_norm;
#[cfg(test)]
mod layout_tests;
mod matmul;
mod moe;
mod rms_norm;
mod rope;
mod sample;
mod shader;

use herd_core::backend::check::{self, BufDesc};
use herd_core::backend::{ops, Backend};
use herd_core::checkpoint::TensorRef;
use herd_core::error::Result;

use gpu::{err, Gpu};
pub use gpu::{GpuBuffer, GpuWeight, WgpuOptions};

pub use shader::shader_sources;

/// The wgpu backend.
pub struct WgpuBackend {
    gpu: Gpu,
}

impl WgpuBackend {
    /// Opens the best GPU adapter wgpu finds.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn new() -> Result<Self> {
        Self::with_options(&WgpuOptions::default())
    }

    /// Opens the best GPU adapter as `opts` say (binding limit, subgroups).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn with_options(opts: &WgpuOptions) -> Result<Self> {
        Ok(WgpuBackend { gpu: Gpu::new(opts)? })
    }

    /// Opens the device without blocking (in a browser, the only way).
    pub async fn open(opts: &WgpuOptions) -> Result<Self> {
        Ok(WgpuBackend { gpu: Gpu::open(opts).await? })
    }

    /// The instance, adapter, device and queue the backend computes on, for drawing on the same device (e.g.
    /// `herd app`'s window): wgpu's handles are shared references, so these are the backend's own.
    pub fn handles(&self) -> (wgpu::Instance, wgpu::Adapter, wgpu::Device, wgpu::Queue) {
        let g = &self.gpu;
        (g.instance.clone(), g.adapter.clone(), g.device.clone(), g.queue.clone())
    }

    /// Whether reductions run on subgroup operations on this device.
    pub fn uses_subgroups(&self) -> bool {
        self.gpu.subgroups
    }

    /// The adapter's name, type and API, e.g. `llvmpipe (LLVM 15.0.6, 256 bits) (Cpu, Vulkan)`.
    pub fn adapter(&self) -> String {
        let i = &self.gpu.info;
        // Browsers often leave the name empty (it would help fingerprinting); the driver may say more.
        let name =
            [&i.name, &i.driver, &i.driver_info].into_iter().find(|s| !s.is_empty()).map_or("unnamed adapter", |s| s);
        format!("{name} ({:?}, {:?})", i.device_type, i.backend)
    }

    /// The limits herd runs within on this device, e.g. `storage binding 128 MiB, buffer 2048 MiB, workgroup
    /// storage 32 KiB, 256 invocations, subgroups off, shader-f16 no`.
    pub fn limits(&self) -> String {
        let l = &self.gpu.limits;
        format!(
            "storage binding {} MiB, buffer {} MiB, workgroup storage {} KiB, {} invocations per workgroup, subgroups {}, shader-f16 {}",
            l.max_storage_buffer_binding_size >> 20,
            l.max_buffer_size >> 20,
            l.max_compute_workgroup_storage_size >> 10,
            l.max_compute_invocations_per_workgroup,
            if self.gpu.subgroups { "on" } else { "off" },
            if self.gpu.device.features().contains(wgpu::Features::SHADER_F16) { "yes" } else { "no (not needed)" },
        )
    }

    /// True for an adapter that says it is a CPU implementation (lavapipe, SwiftShader: a browser's fallback
    /// adapter).
    pub fn is_software(&self) -> bool {
        self.gpu.info.device_type == wgpu::DeviceType::Cpu
    }

    /// True for a discrete or integrated GPU (not a CPU emulation such as lavapipe).
    pub fn is_hardware(&self) -> bool {
        matches!(self.gpu.info.device_type, wgpu::DeviceType::DiscreteGpu | wgpu::DeviceType::IntegratedGpu)
    }
}

impl Backend for WgpuBackend {
    const KIND: &'static str = "wgpu";

    type Buffer = GpuBuffer;
    type Weight = GpuWeight;

    fn name(&self) -> String {
        let sg = if self.gpu.subgroups { ", subgroups" } else { "" };
        format!("wgpu: {}{sg}{}", self.adapter(), if self.gpu.cpu_kernels { ", CPU kernels" } else { "" })
    }

    fn buffer_desc(&self, b: &GpuBuffer) -> BufDesc {
        BufDesc { len: b.len, is_u32: b.is_u32 }
    }
    fn weight_desc<'a>(&self, w: &'a GpuWeight) -> (herd_core::quant::DType, &'a [usize]) {
        (w.dtype, &w.shape)
    }

    fn max_buffer_len(&self) -> usize {
        (self.gpu.max_binding() / 4) as usize
    }
    fn alloc(&self, len: usize) -> Result<GpuBuffer> {
        let _op = self.gpu.op();
        self.gpu.alloc(len, false)
    }
    fn alloc_u32(&self, len: usize) -> Result<GpuBuffer> {
        let _op = self.gpu.op();
        self.gpu.alloc(len, true)
    }
    fn upload(&self, data: &[f32]) -> Result<GpuBuffer> {
        let _op = self.gpu.op();
        self.gpu.upload_bytes(bytemuck::cast_slice(data), data.len(), false)
    }
    fn upload_u32(&self, data: &[u32]) -> Result<GpuBuffer> {
        let _op = self.gpu.op();
        self.gpu.upload_bytes(bytemuck::cast_slice(data), data.len(), true)
    }
    fn write_u32(&self, buf: &GpuBuffer, data: &[u32]) -> Result<()> {
        check::write_u32(self, buf, data).map_err(err)?;
        let _op = self.gpu.op();
        if data.is_empty() {
            return Ok(());
        }
        // The words land in a pooled buffer before the step runs; the copy keeps them in order with it.
        let src = self.gpu.meta(data)?;
        self.gpu.record(|enc| enc.copy_buffer_to_buffer(&src, 0, &buf.buf, 0, (data.len() * 4) as u64))
    }
    fn read(&self, buf: &GpuBuffer) -> Result<Vec<f32>> {
        let _op = self.gpu.op();
        if buf.is_u32 {
            return Err(err("read: expected an f32 buffer, got u32"));
        }
        Ok(self.gpu.read_words(buf)?.into_iter().map(f32::from_bits).collect())
    }
    fn read_u32(&self, buf: &GpuBuffer) -> Result<Vec<u32>> {
        let _op = self.gpu.op();
        if !buf.is_u32 {
            return Err(err("read_u32: expected a u32 buffer, got f32"));
        }
        self.gpu.read_words(buf)
    }
    /// In a browser `read` cannot wait for the GPU and fails; this awaits the readback instead.
    async fn read_async(&self, buf: &GpuBuffer) -> Result<Vec<f32>> {
        let _op = self.gpu.op();
        if buf.is_u32 {
            return Err(err("read: expected an f32 buffer, got u32"));
        }
        Ok(self.gpu.read_words_async(buf).await?.into_iter().map(f32::from_bits).collect())
    }
    async fn read_u32_async(&self, buf: &GpuBuffer) -> Result<Vec<u32>> {
        let _op = self.gpu.op();
        if !buf.is_u32 {
            return Err(err("read_u32: expected a u32 buffer, got f32"));
        }
        self.gpu.read_words_async(buf).await
    }
    fn copy(&self, src: &GpuBuffer, src_off: usize, dst: &GpuBuffer, dst_off: usize, len: usize) -> Result<()> {
        check::copy(self, src, src_off, dst, dst_off, len).map_err(err)?;
        let _op = self.gpu.op();
        if len == 0 {
            return Ok(());
        }
        self.gpu.record(|enc| {
            enc.copy_buffer_to_buffer(&src.buf, (src_off * 4) as u64, &dst.buf, (dst_off * 4) as u64, (len * 4) as u64)
        })
    }
    fn load_weight(&self, t: &TensorRef) -> Result<GpuWeight> {
        let _op = self.gpu.op();
        let want = t.dtype.bytes(&t.shape).map_err(|e| err(format!("{}: {e}", t.name.escape_debug())))?;
        if t.bytes().len() != want {
            return Err(err(format!("{}: {} bytes, expected {want}", t.name.escape_debug(), t.bytes().len())));
        }
        self.gpu.upload_weight(&t.name, t.bytes(), t.dtype, &t.shape)
    }

    fn alloc_weight(&self, name: &str, shape: &[usize], dtype: herd_core::quant::DType) -> Result<GpuWeight> {
        let _op = self.gpu.op();
        dtype.bytes(shape).map_err(|e| err(format!("{}: {e}", name.escape_debug())))?;
        self.gpu.zeroed_weight(name, dtype, shape)
    }

    fn write_weight_row(&self, w: &GpuWeight, row: usize, t: &TensorRef) -> Result<()> {
        let _op = self.gpu.op();
        let (dst, src) = herd_core::backend::row_copy(w.dtype, &w.shape, row, t)?;
        let part = w
            .parts
            .iter()
            .find(|p| row >= p.first && row < p.first + p.count)
            .ok_or_else(|| err(format!("write_weight_row: row {row} of {:?}", w.shape)))?;
        // Offsets inside the part: the row's place in the tensor less the part's first row's.
        let base = herd_core::quant::row_ranges(w.dtype, &w.shape, part.first).map_err(err)?;
        let first = [base.values, base.scales];
        for (j, (d, s)) in dst.into_iter().zip(src).enumerate() {
            if d.is_empty() {
                continue;
            }
            let buf = if j == 0 { &part.buf } else { part.scale_buf() };
            let off = (d.start - first[j].start) as u64;
            let bytes = &t.bytes()[s];
            if !off.is_multiple_of(4) || !bytes.len().is_multiple_of(4) {
                return Err(err(format!(
                    "write_weight_row: {} bytes at byte {off} of {:?} are not whole 4-byte words",
                    bytes.len(),
                    w.shape
                )));
            }
            // Staged in a buffer of its own and copied in the step's command stream, so it lands in order
            // with the work recorded before and after it.
            let stage = self.gpu.upload_bytes(bytes, 0, true)?;
            self.gpu.record(|enc| enc.copy_buffer_to_buffer(&stage.buf, 0, buf, off, bytes.len() as u64))?;
        }
        Ok(())
    }

    fn run_embed(&self, call: &ops::Embed<'_, Self>) -> Result<()> {
        elementwise::embed(&self.gpu, call)
    }
    fn run_rms_norm(&self, call: &ops::RmsNorm<'_, Self>) -> Result<()> {
        rms_norm::rms_norm(&self.gpu, call)
    }
    fn run_add_rms_norm(&self, call: &ops::AddRmsNorm<'_, Self>) -> Result<()> {
        rms_norm::add_rms_norm(&self.gpu, call)
    }
    fn run_layer_norm(&self, call: &ops::LayerNorm<'_, Self>) -> Result<()> {
        layer_norm::layer_norm(&self.gpu, call)
    }
    fn run_bias_act(&self, call: &ops::BiasAct<'_, Self>) -> Result<()> {
        layer_norm::bias_act(&self.gpu, call)
    }
    fn run_matmul(&self, call: &ops::Matmul<'_, Self>) -> Result<()> {
        matmul::matmul(&self.gpu, call)
    }
    fn run_rope(&self, call: &ops::Rope<'_, Self>) -> Result<()> {
        rope::rope(&self.gpu, call)
    }
    fn run_attention(&self, call: &ops::Attention<'_, Self>) -> Result<()> {
        attention::attention(&self.gpu, call)
    }
    fn run_kv_store(&self, call: &ops::KvStore<'_, Self>) -> Result<()> {
        attention::kv_store(&self.gpu, call)
    }
    fn run_add(&self, call: &ops::Add<'_, Self>) -> Result<()> {
        let &ops::Add { acc, x, n } = call;
        elementwise::eltwise(&self.gpu, elementwise::Eltwise::Add, acc, x, n)
    }
    fn run_silu_mul(&self, call: &ops::SiluMul<'_, Self>) -> Result<()> {
        let &ops::SiluMul { gate, up, n } = call;
        elementwise::eltwise(&self.gpu, elementwise::Eltwise::SiluMul, gate, up, n)
    }
    fn run_router_topk(&self, call: &ops::RouterTopk<'_, Self>) -> Result<()> {
        moe::router_topk(&self.gpu, call)
    }
    fn run_moe(&self, call: &ops::Moe<'_, Self>) -> Result<()> {
        moe::moe(&self.gpu, call)
    }
    fn run_gather_rows(&self, call: &ops::GatherRows<'_, Self>) -> Result<()> {
        elementwise::gather_rows(&self.gpu, call)
    }
    fn run_sample(&self, call: &ops::Sample<'_, Self>) -> Result<()> {
        sample::sample(&self.gpu, call)
    }

    fn run_mask_logits(&self, call: &ops::MaskLogits<'_, Self>) -> Result<()> {
        sample::mask_logits(&self.gpu, call)
    }
}
