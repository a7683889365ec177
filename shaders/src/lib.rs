//! herd-wgpu: the Backend on wgpu, every op a WGSL compute shader (one .wgsl file per op family, named as
//! the CPU op it mirrors). Ops record dispatches into one command encoder; [`Backend::read`] submits it and
//! waits, so a decode step is one submission and one readback (of the sampled ids: `sample` runs on the
//! device). Natively reads block; in a browser (wasm32) they cannot, and [`Backend::read_async`] awaits
//! instead. This file picks a kernel per op and shape; `gpu` owns the device, pipelines and pools.

mod gpu;

use herd_core::backend::{Act, AttnParams, AttnSeq, Backend};
use herd_core::checkpoint::TensorRef;
use herd_core::error::Result;
use herd_core::sampling::{check_sample_args, history_table, min_p_threshold, sample_flags, SamplingParams};

use gpu::{err, Gpu, Shader};
pub use gpu::{shader_sources, GpuBuffer, GpuWeight, WgpuOptions};

/// The wgpu backend.
pub struct WgpuBackend {
    gpu: Gpu,
}

fn need(what: &str, b: &GpuBuffer, n: usize) -> Result<()> {
    if b.len < n {
        return Err(err(format!("{what}: buffer has {} elements, op needs {n}", b.len)));
    }
    Ok(())
}

/// Keys per workgroup of the split decode attention kernel (SPLIT in attention.wgsl).
const ATTN_SPLIT: usize = 256;
/// Sequences with at most this many new tokens take the decode kernel; longer ones the tiled prefill kernel.
const ATTN_DECODE_MAX_Q: usize = 8;

fn groups(n: usize, per: usize) -> u32 {
    n.div_ceil(per) as u32
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

    /// True for a discrete or integrated GPU (not a CPU emulation such as lavapipe).
    pub fn is_hardware(&self) -> bool {
        matches!(self.gpu.info.device_type, wgpu::DeviceType::DiscreteGpu | wgpu::DeviceType::IntegratedGpu)
    }

    /// The grouped-expert MoE (see moe.wgsl): route the (row, choice) pairs into per-expert tiles, the
    /// gate/up pass split along D, SwiGLU, the down pass split along F, and the sum into `out`.
    #[allow(clippy::too_many_arguments)]
    fn moe_grouped(
        &self,
        x: &GpuBuffer,
        rows: usize,
        idx: &GpuBuffer,
        score: &GpuBuffer,
        k: usize,
        gate_up: &GpuWeight,
        down: &GpuWeight,
        out: &GpuBuffer,
        [e, d, f]: [usize; 3],
    ) -> Result<()> {
        let nrc = rows * k;
        // Tiles of up to 8 entries per expert: at most one partly filled tile per expert that is used.
        let tmax = nrc.div_ceil(8) + e.min(nrc);
        let route = self.gpu.scratch("moe route", 1 + 3 * tmax + nrc, true)?;
        let p = [rows as u32, k as u32, e as u32, tmax as u32];
        self.gpu.dispatch(Shader::Moe, "moe_route", 0, &[(2, &idx.buf), (7, &route)], &p, 1)?;
        // Split the input dimension across workgroups while the partial sums stay small (32 MiB).
        let budget = (32 << 20).min(self.gpu.max_binding() as usize);
        let splits = |kd: usize, nc: usize| kd.div_ceil(128).min(budget / (4 * nrc * nc)).max(1);
        let per = if gate_up.dtype == herd_core::quant::DType::F32 { 4 } else { 8 };
        let gemv = |w: &GpuWeight,
                    input: &wgpu::Buffer,
                    kd: usize,
                    nc: usize,
                    mode: u32,
                    role: &'static str|
         -> Result<(wgpu::Buffer, usize)> {
            let s = splits(kd, nc);
            let chunk = kd.div_ceil(s);
            let partial = self.gpu.scratch(role, s * nrc * nc, false)?;
            let pblocks = (nc / per).div_ceil(64);
            for part in &w.parts {
                let p = [
                    rows as u32,
                    k as u32,
                    e as u32,
                    kd as u32,
                    nc as u32,
                    chunk as u32,
                    s as u32,
                    part.first as u32,
                    part.count as u32,
                    mode,
                    tmax as u32,
                ];
                let b = [(1, input), (3, &score.buf), (5, &partial), (8, &route), (9, &part.buf)];
                self.gpu.dispatch(Shader::Moe, "moe_gemv", w.wdt(), &b, &p, (pblocks * s * tmax) as u32)?;
            }
            Ok((partial, s))
        };
        let (pu, su) = gemv(gate_up, &x.buf, d, 2 * f, 0, "moe gate/up partials")?;
        let h = self.gpu.scratch("moe activations", nrc * f, false)?;
        let p = [rows as u32, k as u32, f as u32, su as u32];
        self.gpu.dispatch(Shader::Moe, "moe_act", 0, &[(1, &pu), (5, &h)], &p, groups(nrc * f, 256))?;
        let (pd, sd) = gemv(down, &h, f, d, 1, "moe down partials")?;
        let p = [rows as u32, k as u32, d as u32, sd as u32, e as u32];
        let b = [(1, &pd), (2, &idx.buf), (5, &out.buf)];
        self.gpu.dispatch(Shader::Moe, "moe_sum", 0, &b, &p, groups(rows * d, 256))
    }

    /// Row → sequence index for the attention metadata.
    fn seq_buffers(&self, seqs: &[AttnSeq]) -> Result<(wgpu::Buffer, wgpu::Buffer, usize)> {
        let rows = seqs.iter().map(|s| (s.q_start + s.q_len) as usize).max().unwrap_or(0);
        let mut row_seq = vec![u32::MAX; rows.max(1)];
        let mut words = Vec::with_capacity(seqs.len() * 5);
        for (i, s) in seqs.iter().enumerate() {
            for r in s.q_start..s.q_start + s.q_len {
                row_seq[r as usize] = i as u32;
            }
            words.extend([s.q_start, s.q_len, s.pos0, s.slot_base, s.slot_cap.max(1)]);
        }
        Ok((self.gpu.meta(&words)?, self.gpu.meta(&row_seq)?, rows))
    }
}

impl Backend for WgpuBackend {
    type Buffer = GpuBuffer;
    type Weight = GpuWeight;

    fn name(&self) -> String {
        let sg = if self.gpu.subgroups { ", subgroups" } else { "" };
        format!("wgpu: {}{sg}{}", self.adapter(), if self.gpu.cpu_kernels { ", CPU kernels" } else { "" })
    }

    fn max_buffer_len(&self) -> usize {
        (self.gpu.max_binding() / 4) as usize
    }
    fn alloc(&self, len: usize) -> Result<GpuBuffer> {
        let _op = self.gpu.op();
        self.gpu.alloc(len, false)
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
        let _op = self.gpu.op();
        if !buf.is_u32 {
            return Err(err("write_u32: expected a u32 buffer, got f32"));
        }
        need("write_u32", buf, data.len())?;
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
        let _op = self.gpu.op();
        need("copy src", src, src_off + len)?;
        need("copy dst", dst, dst_off + len)?;
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

    fn embed(&self, table: &GpuWeight, ids: &GpuBuffer, n: usize, dim: usize, out: &GpuBuffer) -> Result<()> {
        let _op = self.gpu.op();
        need("embed ids", ids, n)?;
        need("embed out", out, n * dim)?;
        for part in &table.parts {
            let b = [(1, &out.buf), (3, &ids.buf), (4, &part.buf), (12, part.scale_buf())];
            let p = [n as u32, dim as u32, part.first as u32, part.count as u32];
            self.gpu.dispatch(Shader::Elementwise, "embed", table.wdt(), &b, &p, groups(n * dim, 256))?;
        }
        Ok(())
    }

    fn rms_norm(
        &self,
        x: &GpuBuffer,
        weight: Option<&GpuWeight>,
        rows: usize,
        dim: usize,
        eps: f32,
        out: &GpuBuffer,
    ) -> Result<()> {
        let _op = self.gpu.op();
        need("rms_norm x", x, rows * dim)?;
        need("rms_norm out", out, rows * dim)?;
        if weight.is_some_and(|w| w.dtype.is_quantized()) {
            return Err(err("rms_norm: needs a float weight"));
        }
        let (wbuf, wdt) = match weight {
            Some(w) if w.parts.len() == 1 => (&w.parts[0].buf, w.wdt()),
            Some(_) => return Err(err("rms_norm: weight split across bindings")),
            None => (&self.gpu.dummy, 0),
        };
        let p = [rows as u32, dim as u32, eps.to_bits(), u32::from(weight.is_some())];
        if std::ptr::eq(x, out) {
            self.gpu.dispatch(Shader::RmsNorm, "rms_norm_inplace", wdt, &[(2, &out.buf), (3, wbuf)], &p, rows as u32)
        } else {
            self.gpu.dispatch(
                Shader::RmsNorm,
                "rms_norm",
                wdt,
                &[(1, &x.buf), (2, &out.buf), (3, wbuf)],
                &p,
                rows as u32,
            )
        }
    }

    fn add_rms_norm(
        &self,
        acc: &GpuBuffer,
        x: &GpuBuffer,
        weight: &GpuWeight,
        rows: usize,
        dim: usize,
        eps: f32,
        out: &GpuBuffer,
    ) -> Result<()> {
        let _op = self.gpu.op();
        if std::ptr::eq(acc, x) || std::ptr::eq(acc, out) || std::ptr::eq(x, out) {
            return Err(err("add_rms_norm: acc, x and out must be distinct buffers"));
        }
        if weight.dtype.is_quantized() {
            return Err(err("add_rms_norm: needs a float weight"));
        }
        need("add_rms_norm acc", acc, rows * dim)?;
        need("add_rms_norm x", x, rows * dim)?;
        need("add_rms_norm out", out, rows * dim)?;
        let [part] = &weight.parts[..] else {
            return Err(err("add_rms_norm: weight split across bindings"));
        };
        let p = [rows as u32, dim as u32, eps.to_bits(), 1];
        let b = [(1, &x.buf), (2, &out.buf), (3, &part.buf), (4, &acc.buf)];
        self.gpu.dispatch(Shader::RmsNorm, "add_rms_norm", weight.wdt(), &b, &p, rows as u32)
    }

    fn layer_norm(
        &self,
        x: &GpuBuffer,
        weight: &GpuWeight,
        bias: &GpuWeight,
        rows: usize,
        dim: usize,
        eps: f32,
        out: &GpuBuffer,
    ) -> Result<()> {
        let _op = self.gpu.op();
        need("layer_norm x", x, rows * dim)?;
        need("layer_norm out", out, rows * dim)?;
        if weight.dtype.is_quantized() || weight.dtype != bias.dtype {
            return Err(err(format!(
                "layer_norm: weight ({}) and bias ({}) must be one float format",
                weight.dtype.name(),
                bias.dtype.name()
            )));
        }
        let ([wp], [bp]) = (&weight.parts[..], &bias.parts[..]) else {
            return Err(err("layer_norm: weight split across bindings"));
        };
        if weight.shape.iter().product::<usize>() != dim || bias.shape.iter().product::<usize>() != dim {
            return Err(err(format!("layer_norm: weight {:?} / bias {:?} for dim {dim}", weight.shape, bias.shape)));
        }
        let p = [rows as u32, dim as u32, eps.to_bits()];
        if std::ptr::eq(x, out) {
            let b = [(2, &out.buf), (3, &wp.buf), (4, &bp.buf)];
            self.gpu.dispatch(Shader::LayerNorm, "layer_norm_inplace", weight.wdt(), &b, &p, rows as u32)
        } else {
            let b = [(1, &x.buf), (2, &out.buf), (3, &wp.buf), (4, &bp.buf)];
            self.gpu.dispatch(Shader::LayerNorm, "layer_norm", weight.wdt(), &b, &p, rows as u32)
        }
    }

    fn bias_act(&self, x: &GpuBuffer, bias: Option<&GpuWeight>, rows: usize, dim: usize, act: Act) -> Result<()> {
        let _op = self.gpu.op();
        let n = rows * dim;
        need("bias_act x", x, n)?;
        let (bbuf, wdt) = match bias {
            Some(b) if b.dtype.is_quantized() => return Err(err("bias_act: needs a float bias")),
            Some(b) if b.shape.iter().product::<usize>() != dim => {
                return Err(err(format!("bias_act: bias {:?} for rows of {dim}", b.shape)))
            }
            Some(b) => match &b.parts[..] {
                [part] => (&part.buf, b.wdt()),
                _ => return Err(err("bias_act: bias split across bindings")),
            },
            None => (&self.gpu.dummy, 0),
        };
        let p = [n as u32, dim as u32, u32::from(bias.is_some()), u32::from(act == Act::Gelu)];
        self.gpu.dispatch(Shader::LayerNorm, "bias_act", wdt, &[(2, &x.buf), (4, bbuf)], &p, groups(n, 256))
    }

    fn matmul(&self, x: &GpuBuffer, m: usize, w: &GpuWeight, out: &GpuBuffer) -> Result<()> {
        let _op = self.gpu.op();
        let [n, k] = w.shape[..] else {
            return Err(err(format!("matmul: weight has shape {:?}, expected 2 dims", w.shape)));
        };
        need("matmul x", x, m * k)?;
        need("matmul out", out, m * n)?;
        if m > 8 && !self.gpu.cpu_kernels {
            // Prefill: the tiled GEMM (32 rows × 64 columns per workgroup).
            for part in &w.parts {
                let p = [m as u32, k as u32, n as u32, part.first as u32, part.count as u32];
                let groups = (part.count.div_ceil(64) * m.div_ceil(32)) as u32;
                let b = [(1, &x.buf), (2, &part.buf), (3, &out.buf), (12, part.scale_buf())];
                self.gpu.dispatch(Shader::Matmul, "matmul_tiled", w.wdt(), &b, &p, groups)?;
            }
            return Ok(());
        }
        let mblocks = m.div_ceil(8);
        // Rows whose byte length is a multiple of 16 are read 16 bytes at a time (float formats; quantized
        // weights are read element by element, with their scales).
        let vec = !w.dtype.is_quantized() && (k * w.dtype.size()).is_multiple_of(16);
        // Quantized rows of whole 16-byte pieces (and groups of whole 8s): 16 bytes at a time too.
        let qvec = match w.dtype {
            herd_core::quant::DType::Q4(g) => k.is_multiple_of(32) && g.group.is_multiple_of(8),
            herd_core::quant::DType::Q8(g) => k.is_multiple_of(16) && g.group.is_multiple_of(8),
            _ => false,
        };
        for part in &w.parts {
            let p = [m as u32, k as u32, n as u32, part.first as u32, part.count as u32];
            if self.gpu.cpu_kernels {
                let groups = (part.count.div_ceil(64) * mblocks) as u32;
                let b = [(1, &x.buf), (2, &part.buf), (3, &out.buf), (12, part.scale_buf())];
                self.gpu.dispatch(Shader::Matmul, "matmul_col", w.wdt(), &b, &p, groups)?;
                continue;
            }
            let groups = (part.count.div_ceil(8) * mblocks) as u32;
            if qvec {
                let b = [(1, &x.buf), (4, &part.buf), (3, &out.buf), (12, part.scale_buf())];
                self.gpu.dispatch(Shader::Matmul, "matmul_q", w.wdt(), &b, &p, groups)?;
            } else if vec {
                let b = [(1, &x.buf), (4, &part.buf), (3, &out.buf)];
                self.gpu.dispatch(Shader::Matmul, "matmul_vec", w.wdt(), &b, &p, groups)?;
            } else {
                let b = [(1, &x.buf), (2, &part.buf), (3, &out.buf), (12, part.scale_buf())];
                self.gpu.dispatch(Shader::Matmul, "matmul", w.wdt(), &b, &p, groups)?;
            }
        }
        Ok(())
    }

    fn rope(
        &self,
        x: &GpuBuffer,
        rows: usize,
        heads: usize,
        head_dim: usize,
        positions: &GpuBuffer,
        inv_freq: &GpuBuffer,
        norm_eps: Option<f32>,
    ) -> Result<()> {
        let _op = self.gpu.op();
        need("rope x", x, rows * heads * head_dim)?;
        need("rope positions", positions, rows)?;
        need("rope inv_freq", inv_freq, head_dim / 2)?;
        let b = [(1, &x.buf), (2, &positions.buf), (3, &inv_freq.buf)];
        match norm_eps {
            // One workgroup per head vector: rotate, then normalise it.
            Some(eps) => {
                let p = [rows as u32, heads as u32, head_dim as u32, eps.to_bits()];
                self.gpu.dispatch(Shader::Rope, "rope_norm", 0, &b, &p, (rows * heads) as u32)
            }
            None => {
                let p = [rows as u32, heads as u32, head_dim as u32];
                self.gpu.dispatch(Shader::Rope, "rope", 0, &b, &p, groups(rows * heads * head_dim / 2, 256))
            }
        }
    }

    fn attention(
        &self,
        q: &GpuBuffer,
        k_new: &GpuBuffer,
        v_new: &GpuBuffer,
        k_cache: &GpuBuffer,
        v_cache: &GpuBuffer,
        seqs: &[AttnSeq],
        p: &AttnParams,
        out: &GpuBuffer,
    ) -> Result<()> {
        let _op = self.gpu.op();
        let (h, kvh, d) = (p.n_heads, p.n_kv_heads, p.head_dim);
        if d > 256 || h % kvh != 0 {
            return Err(err(format!("attention: head_dim {d} (at most 256) / heads {h} over {kvh} kv heads")));
        }
        let (seq_buf, row_seq, rows) = self.seq_buffers(seqs)?;
        need("attention q", q, rows * h * d)?;
        need("attention k_new", k_new, rows * kvh * d)?;
        need("attention v_new", v_new, rows * kvh * d)?;
        need("attention out", out, rows * h * d)?;
        let slots = k_cache.len.min(v_cache.len) / (kvh * d);
        for s in seqs {
            if (s.slot_base + s.slot_cap) as usize > slots {
                return Err(err(format!(
                    "attention: cache region {}+{} exceeds {slots} slots",
                    s.slot_base, s.slot_cap
                )));
            }
        }
        let t = p.temperature;
        let group = h / kvh;
        // Keys the busiest query sees: how many splits the decode kernel needs.
        let chunk = if p.bidirectional { None } else { p.chunk };
        let visible =
            seqs.iter()
                .flat_map(|s| (0..s.q_len).map(move |t| (s, s.pos0 + t)))
                .map(|(s, i)| {
                    if p.bidirectional {
                        s.pos0 + s.q_len
                    } else {
                        i - chunk.map_or(0, |c| i / c as u32 * c as u32) + 1
                    }
                })
                .max()
                .unwrap_or(1) as usize;
        let splits = visible.div_ceil(ATTN_SPLIT);
        let params = [
            h as u32,
            kvh as u32,
            d as u32,
            p.scale.to_bits(),
            chunk.unwrap_or(0) as u32,
            u32::from(t.is_some()),
            t.map_or(0.0, |t| t.floor_scale).to_bits(),
            t.map_or(0.0, |t| t.attn_scale).to_bits(),
            rows as u32,
            splits as u32,
            group as u32,
            u32::from(p.bidirectional),
        ];
        let b = [
            (1, &q.buf),
            (2, &k_new.buf),
            (3, &v_new.buf),
            (4, &k_cache.buf),
            (5, &v_cache.buf),
            (6, &seq_buf),
            (7, &row_seq),
            (8, &out.buf),
        ];
        let max_q = seqs.iter().map(|s| s.q_len).max().unwrap_or(0);
        // The decode kernels are causal only: a bidirectional call takes the tiled kernel or the fallback.
        if (max_q as usize > ATTN_DECODE_MAX_Q || p.bidirectional) && d <= 128 {
            // Prefill: blocks of up to 16 rows of one sequence.
            let blocks: Vec<u32> = seqs
                .iter()
                .enumerate()
                .flat_map(|(si, s)| (s.q_start..s.q_start + s.q_len).step_by(16).flat_map(move |r| [si as u32, r]))
                .collect();
            let bb = self.gpu.meta(&blocks)?;
            let mut bt: Vec<_> = b.iter().copied().filter(|(i, _)| *i != 7).collect();
            bt.push((10, &bb));
            let groups = (blocks.len() / 2 * h) as u32;
            return self.gpu.dispatch(Shader::Attention, "attention_tiled", 0, &bt, &params, groups);
        }
        if group <= 8 && !p.bidirectional {
            // Decode: (row, kv head, split) workgroups, merged when there is more than one split.
            let part = self.gpu.scratch(
                "attention partials",
                if splits > 1 { rows * h * splits * (d + 2) } else { 1 },
                false,
            )?;
            let mut bs = b.to_vec();
            bs.push((9, &part));
            self.gpu.dispatch(Shader::Attention, "attention_split", 0, &bs, &params, (rows * kvh * splits) as u32)?;
            if splits > 1 {
                let bc = [(7, &row_seq), (8, &out.buf), (9, &part)];
                self.gpu.dispatch(Shader::Attention, "attention_combine", 0, &bc, &params, (rows * h) as u32)?;
            }
            return Ok(());
        }
        self.gpu.dispatch(Shader::Attention, "attention", 0, &b, &params, (rows * h) as u32)
    }

    fn kv_store(
        &self,
        k_new: &GpuBuffer,
        v_new: &GpuBuffer,
        k_cache: &GpuBuffer,
        v_cache: &GpuBuffer,
        seqs: &[AttnSeq],
        kv_dim: usize,
    ) -> Result<()> {
        let _op = self.gpu.op();
        let (seq_buf, row_seq, rows) = self.seq_buffers(seqs)?;
        need("kv_store k_new", k_new, rows * kv_dim)?;
        need("kv_store v_new", v_new, rows * kv_dim)?;
        for s in seqs {
            need("kv_store cache", k_cache, (s.slot_base + s.slot_cap) as usize * kv_dim)?;
            need("kv_store cache", v_cache, (s.slot_base + s.slot_cap) as usize * kv_dim)?;
        }
        let p = [rows as u32, kv_dim as u32];
        let b = [(2, &k_new.buf), (3, &v_new.buf), (4, &k_cache.buf), (5, &v_cache.buf), (6, &seq_buf), (7, &row_seq)];
        self.gpu.dispatch(Shader::Attention, "kv_store", 0, &b, &p, groups(rows * kv_dim, 256))
    }

    fn add(&self, acc: &GpuBuffer, x: &GpuBuffer, n: usize) -> Result<()> {
        let _op = self.gpu.op();
        if std::ptr::eq(acc, x) {
            return Err(err("add: accumulator and addend are the same buffer"));
        }
        need("add acc", acc, n)?;
        need("add x", x, n)?;
        self.gpu.dispatch(Shader::Elementwise, "add", 0, &[(1, &acc.buf), (2, &x.buf)], &[n as u32], groups(n, 256))
    }

    fn silu_mul(&self, gate: &GpuBuffer, up: &GpuBuffer, n: usize) -> Result<()> {
        let _op = self.gpu.op();
        if std::ptr::eq(gate, up) {
            return Err(err("silu_mul: gate and up are the same buffer"));
        }
        need("silu_mul gate", gate, n)?;
        need("silu_mul up", up, n)?;
        self.gpu.dispatch(
            Shader::Elementwise,
            "silu_mul",
            0,
            &[(1, &gate.buf), (2, &up.buf)],
            &[n as u32],
            groups(n, 256),
        )
    }

    fn router_topk(
        &self,
        logits: &GpuBuffer,
        rows: usize,
        n_experts: usize,
        k: usize,
        idx: &GpuBuffer,
        score: &GpuBuffer,
    ) -> Result<()> {
        let _op = self.gpu.op();
        if k == 0 || k > n_experts {
            return Err(err(format!("router: top-{k} of {n_experts} experts")));
        }
        need("router logits", logits, rows * n_experts)?;
        need("router idx", idx, rows * k)?;
        need("router score", score, rows * k)?;
        let b = [(1, &logits.buf), (5, &score.buf), (6, &idx.buf)];
        self.gpu.dispatch(
            Shader::Moe,
            "router_topk",
            0,
            &b,
            &[rows as u32, n_experts as u32, k as u32],
            groups(rows, 64),
        )
    }

    fn moe(
        &self,
        x: &GpuBuffer,
        rows: usize,
        idx: &GpuBuffer,
        score: &GpuBuffer,
        k: usize,
        gate_up: &GpuWeight,
        down: &GpuWeight,
        out: &GpuBuffer,
    ) -> Result<()> {
        let _op = self.gpu.op();
        let [e, d, f2] = gate_up.shape[..] else {
            return Err(err(format!("moe: gate_up has shape {:?}", gate_up.shape)));
        };
        let f = f2 / 2;
        if down.shape != [e, f, d] || down.dtype != gate_up.dtype {
            return Err(err(format!(
                "moe: down has shape {:?} ({:?}), expected {:?}",
                down.shape,
                down.dtype,
                [e, f, d]
            )));
        }
        need("moe x", x, rows * d)?;
        need("moe idx", idx, rows * k)?;
        need("moe score", score, rows * k)?;
        need("moe out", out, rows * d)?;
        for w in [gate_up, down] {
            if w.dtype.grouping().is_some_and(|g| g.axis != herd_core::quant::GroupAxis::SecondLast) {
                return Err(err("moe: quantized expert tensors must be grouped along their input axis"));
            }
        }
        let per = if gate_up.dtype == herd_core::quant::DType::F32 { 4 } else { 8 };
        let grouped = !gate_up.dtype.is_quantized();
        if grouped && (2 * f).is_multiple_of(per) && d.is_multiple_of(per) && e <= 256 {
            return self.moe_grouped(x, rows, idx, score, k, gate_up, down, out, [e, d, f]);
        }
        let h = self.gpu.scratch("moe activations", rows * k * f, false)?;
        for part in &gate_up.parts {
            let p = [rows as u32, k as u32, d as u32, f as u32, part.first as u32, part.count as u32];
            let b = [(1, &x.buf), (2, &idx.buf), (3, &score.buf), (4, &part.buf), (5, &h), (12, part.scale_buf())];
            self.gpu.dispatch(Shader::Moe, "moe_up", gate_up.wdt(), &b, &p, groups(rows * k * f, 64))?;
        }
        for part in &down.parts {
            let p = [rows as u32, k as u32, d as u32, f as u32, part.first as u32, part.count as u32];
            let b = [(1, &h), (2, &idx.buf), (4, &part.buf), (5, &out.buf), (12, part.scale_buf())];
            self.gpu.dispatch(Shader::Moe, "moe_down", down.wdt(), &b, &p, groups(rows * d, 64))?;
        }
        Ok(())
    }

    fn gather_rows(&self, x: &GpuBuffer, rows: &GpuBuffer, n: usize, dim: usize, out: &GpuBuffer) -> Result<()> {
        let _op = self.gpu.op();
        need("gather_rows rows", rows, n)?;
        need("gather_rows out", out, n * dim)?;
        let b = [(1, &out.buf), (2, &x.buf), (3, &rows.buf)];
        self.gpu.dispatch(
            Shader::Elementwise,
            "gather_rows",
            0,
            &b,
            &[n as u32, dim as u32, (x.len / dim.max(1)) as u32],
            groups(n * dim, 256),
        )
    }

    fn sample(
        &self,
        logits: &GpuBuffer,
        rows: usize,
        vocab: usize,
        params: &SamplingParams,
        draws: &[f32],
        history: &[&[u32]],
        out: &GpuBuffer,
    ) -> Result<()> {
        let _op = self.gpu.op();
        check_sample_args(rows, draws, history)?;
        need("sample logits", logits, rows * vocab)?;
        need("sample out", out, rows)?;
        if vocab == 0 || !out.is_u32 || logits.is_u32 {
            return Err(err("sample: needs f32 logits of a non-empty vocabulary and a u32 output"));
        }
        let hist = history_table(history, params.repetition_penalty != 1.0);
        let flags = sample_flags(params);
        let p = [
            rows as u32,
            vocab as u32,
            params.temperature.to_bits(),
            params.top_k.min(u32::MAX as usize) as u32,
            params.top_p.to_bits(),
            min_p_threshold(params.min_p.max(f32::MIN_POSITIVE)).to_bits(),
            params.repetition_penalty.to_bits(),
            flags,
        ];
        let draw_bits: Vec<u32> = draws.iter().map(|u| u.to_bits()).collect();
        let (hb, db) = (self.gpu.meta(&hist)?, self.gpu.meta(&draw_bits)?);
        let cand = self.gpu.scratch("sample candidates", rows * vocab, false)?;
        let b = [(1, &logits.buf), (2, &hb), (3, &db), (4, &out.buf), (5, &cand)];
        self.gpu.dispatch(Shader::Sample, "sample", 0, &b, &p, rows as u32)
    }
}
