//! The wgpu device behind [`crate::WgpuBackend`]: adapter and device set-up, buffers, the pipeline cache,
//! and the one command encoder every op records into until the host reads a result. Per-dispatch costs
//! are kept off the hot path: parameters go into a uniform arena written once per step, bind groups are
//! reused from the step before, and small per-step tables live in pooled buffers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use herd_core::error::{HerdError, Result};
use herd_core::quant::DType;
use wgpu::util::DeviceExt;

pub use crate::buffer::{GpuBuffer, GpuWeight, WeightPart};
use crate::kernel::{Kernel, MAX_PARAM_BYTES};
use crate::shader::{compose, Shader};

/// How to open the device.
#[derive(Debug, Clone, Copy, Default)]
pub struct WgpuOptions {
    /// Limit each storage binding to this many bytes (at least 256), to run as a device or browser with
    /// smaller limits would: tensors and steps are then split more finely.
    pub max_binding: Option<u64>,
    /// Reductions on subgroup operations: `Some(true)` whenever the device has them, `Some(false)` never,
    /// `None` (the default) on hardware GPUs that have them, natively. CPU implementations (lavapipe) emulate
    /// them: there the op table's reductions measured slower with them than with shared memory.
    pub subgroups: Option<bool>,
    /// Kernels without shared-memory reductions where a CPU runs the shaders (barriers cost a CPU adapter far
    /// more than a GPU): `Some(true)` always, `Some(false)` never, `None` (the default) on a CPU adapter in a
    /// browser (Chrome's SwiftShader). Natively lavapipe keeps the GPU kernels, which the tests cover there.
    pub cpu_kernels: Option<bool>,
}

/// The step being recorded: its command encoder, the compute pass consecutive dispatches share (ended
/// before a copy and before submission), the parameter words of its dispatches (one 256-byte slot each,
/// written into the uniform arena once, at submission), and the metadata slots it has filled.
struct Recorder {
    enc: wgpu::CommandEncoder,
    pass: Option<wgpu::ComputePass<'static>>,
    params: Vec<u32>,
    meta_used: usize,
    meta_by_content: HashMap<Vec<u32>, usize>,
}

/// Parameter slots per arena chunk, and the bytes of one slot (the largest uniform offset alignment).
const SLOTS_PER_CHUNK: usize = 256;
const SLOT_BYTES: usize = 256;
const SLOT_WORDS: usize = SLOT_BYTES / 4;

/// A bind group is reused while its pipeline, arena slot and buffers are the same: a decode step records
/// the same dispatches on the same buffers as the step before, so it finds them all.
#[derive(PartialEq, Eq, Hash)]
struct BindKey {
    pipeline: usize,
    slot: usize,
    buffers: Vec<(u32, wgpu::Buffer)>,
}

/// Bind groups of this step and the one before: an entry not used for a whole step is dropped (with the
/// buffers it holds).
#[derive(Default)]
struct BindCache {
    current: HashMap<BindKey, wgpu::BindGroup>,
    previous: HashMap<BindKey, wgpu::BindGroup>,
}

/// Buffers kept across steps: the uniform arena's chunks, small metadata uploads (filled once per step
/// each, with queue writes that land before the step's commands), and scratch buffers by role.
#[derive(Default)]
struct Pools {
    arena: Vec<wgpu::Buffer>,
    meta: Vec<(wgpu::Buffer, usize)>,
    scratch: HashMap<&'static str, GpuBuffer>,
}

/// A pipeline: shader file, entry point, weight format.
type PipelineKey = (Shader, &'static str, u32);

/// Maximum workgroups in one grid dimension.
const MAX_GROUPS: u32 = 65535;

pub struct Gpu {
    /// The instance and adapter the device came from: a window drawn on the same device needs them.
    pub(crate) instance: wgpu::Instance,
    pub(crate) adapter: wgpu::Adapter,
    pub(crate) device: wgpu::Device,
    pub(crate) queue: wgpu::Queue,
    pub(crate) info: wgpu::AdapterInfo,
    /// Reductions use subgroup operations (the device has them and the options allow them).
    pub(crate) subgroups: bool,
    /// Decode matmuls run without barriers (see [`WgpuOptions::cpu_kernels`]).
    pub(crate) cpu_kernels: bool,
    pub(crate) limits: wgpu::Limits,
    pipelines: Mutex<HashMap<PipelineKey, Arc<(wgpu::ComputePipeline, wgpu::BindGroupLayout)>>>,
    encoder: Mutex<Option<Recorder>>,
    binds: Mutex<BindCache>,
    pools: Mutex<Pools>,
    /// One thread's op at a time: an op's dispatches and the scratch buffers they share stay together.
    ops: herd_core::oplock::OpLock,
    error: Arc<Mutex<Option<String>>>,
    /// A 4-byte buffer bound where an op has no tensor to give (e.g. a weightless RMS norm).
    pub(crate) dummy: wgpu::Buffer,
}

pub(crate) fn err(msg: impl Into<String>) -> HerdError {
    HerdError::Backend { backend: "wgpu".into(), msg: msg.into() }
}

impl Gpu {
    /// Opens the best adapter wgpu finds (a discrete GPU first), with every limit it offers, as `opts` allow.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn new(opts: &WgpuOptions) -> Result<Self> {
        pollster::block_on(Self::open(opts))
    }

    /// [`Gpu::new`] without blocking (the only way in a browser).
    pub async fn open(opts: &WgpuOptions) -> Result<Self> {
        let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
        let adapter = instance
            .request_adapter(&wgpu::RequestAdapterOptions {
                power_preference: wgpu::PowerPreference::HighPerformance,
                force_fallback_adapter: false,
                compatible_surface: None,
                apply_limit_buckets: false,
            })
            .await
            .map_err(|e| err(format!("no GPU adapter found ({e})")))?;
        let info = adapter.get_info();
        let mut limits = adapter.limits();
        if let Some(m) = opts.max_binding {
            limits.max_storage_buffer_binding_size = limits.max_storage_buffer_binding_size.min(m.max(256));
        }
        let hardware = matches!(info.device_type, wgpu::DeviceType::DiscreteGpu | wgpu::DeviceType::IntegratedGpu);
        // In a browser only when asked for: no browser that could check the subgroup kernels against its own
        // WGSL compiler has run them yet (the headless test browser has no subgroups).
        let default = hardware && !cfg!(target_arch = "wasm32");
        let subgroups = opts.subgroups.unwrap_or(default) && adapter.features().contains(wgpu::Features::SUBGROUP);
        let features = if subgroups { wgpu::Features::SUBGROUP } else { wgpu::Features::empty() };
        let cpu_kernels =
            opts.cpu_kernels.unwrap_or(cfg!(target_arch = "wasm32") && info.device_type == wgpu::DeviceType::Cpu);
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("herd"),
                required_features: features,
                required_limits: limits.clone(),
                ..Default::default()
            })
            .await
            .map_err(|e| err(format!("{}: cannot open the device ({e})", info.name)))?;
        let error = Arc::new(Mutex::new(None));
        let sink = error.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            if let Ok(mut g) = sink.lock() {
                g.get_or_insert_with(|| e.to_string().replace('\n', " "));
            }
        }));
        let dummy = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("dummy"),
            size: 16,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        });
        Ok(Gpu {
            instance,
            adapter,
            device,
            queue,
            info,
            subgroups,
            cpu_kernels,
            limits,
            pipelines: Mutex::new(HashMap::new()),
            encoder: Mutex::new(None),
            binds: Mutex::new(BindCache::default()),
            pools: Mutex::new(Pools::default()),
            ops: herd_core::oplock::OpLock::default(),
            error,
            dummy,
        })
    }

    /// Fails with the first device error since the last check (validation errors, out of memory).
    pub(crate) fn check(&self) -> Result<()> {
        match self.error.lock().map_err(|_| err("poisoned error slot"))?.take() {
            Some(e) => Err(err(e)),
            None => Ok(()),
        }
    }

    fn storage_usage() -> wgpu::BufferUsages {
        wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST
    }

    fn check_size(&self, bytes: u64, what: &str) -> Result<()> {
        let max = self.limits.max_storage_buffer_binding_size.min(self.limits.max_buffer_size);
        if bytes > max {
            return Err(err(format!(
                "{what}: {bytes} bytes exceed this device's largest storage binding ({max} bytes)"
            )));
        }
        Ok(())
    }

    pub fn alloc(&self, len: usize, is_u32: bool) -> Result<GpuBuffer> {
        let bytes = (len.max(1) * 4) as u64;
        self.check_size(bytes, "buffer")?;
        let buf = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size: bytes,
            usage: Self::storage_usage(),
            mapped_at_creation: false,
        });
        Ok(GpuBuffer { buf, len, is_u32 })
    }

    pub fn upload_bytes(&self, bytes: &[u8], len: usize, is_u32: bool) -> Result<GpuBuffer> {
        self.check_size(bytes.len().max(4) as u64, "buffer")?;
        let mut padded;
        let contents = if bytes.len().is_multiple_of(4) && !bytes.is_empty() {
            bytes
        } else {
            padded = bytes.to_vec();
            padded.resize(bytes.len().div_ceil(4).max(1) * 4, 0);
            &padded
        };
        let buf = self.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: None,
            contents,
            usage: Self::storage_usage(),
        });
        Ok(GpuBuffer { buf, len, is_u32 })
    }

    /// Largest storage binding this device allows, in bytes.
    pub(crate) fn max_binding(&self) -> u64 {
        self.limits.max_storage_buffer_binding_size.min(self.limits.max_buffer_size)
    }

    pub fn upload_weight(&self, name: &str, bytes: &[u8], dtype: DType, shape: &[usize]) -> Result<GpuWeight> {
        self.make_weight(name, Some(bytes), dtype, shape)
    }

    /// A zeroed weight in the parts [`Gpu::upload_weight`] would use (the expert cache's slots).
    pub fn zeroed_weight(&self, name: &str, dtype: DType, shape: &[usize]) -> Result<GpuWeight> {
        self.make_weight(name, None, dtype, shape)
    }

    /// Bytes `lo..hi` of a weight's contents as one buffer (zeroed when there are no contents).
    fn part_buf(&self, bytes: Option<&[u8]>, lo: usize, hi: usize) -> Result<wgpu::Buffer> {
        match bytes {
            Some(b) => Ok(self.upload_bytes(&b[lo..hi.min(b.len())], 0, true)?.buf),
            None => {
                let n = ((hi - lo).div_ceil(4).max(1) * 4) as u64;
                self.check_size(n, "buffer")?;
                // wgpu zeroes new buffers.
                Ok(self.device.create_buffer(&wgpu::BufferDescriptor {
                    label: None,
                    size: n,
                    usage: Self::storage_usage(),
                    mapped_at_creation: false,
                }))
            }
        }
    }

    fn make_weight(&self, name: &str, bytes: Option<&[u8]>, dtype: DType, shape: &[usize]) -> Result<GpuWeight> {
        let outer = shape.first().copied().unwrap_or(1).max(1);
        let inner = shape.iter().skip(1).product::<usize>().max(1);
        if dtype.is_quantized() {
            return self.upload_quantized(name, bytes, dtype, shape, outer, inner);
        }
        let row_bytes = (inner * dtype.size()) as u64;
        let max = self.max_binding();
        if row_bytes > max {
            return Err(err(format!(
                "{name}: one row of {row_bytes} bytes exceeds this device's largest storage binding ({max} bytes)"
            )));
        }
        let mut per = (max / row_bytes) as usize;
        // Packed 16-bit weights: a part must hold an even number of elements so no word is split.
        if dtype.size() == 2 && inner % 2 == 1 && per % 2 == 1 {
            per -= 1;
        }
        let per = per.max(1);
        let mut parts = Vec::new();
        let mut first = 0;
        while first < outer {
            let count = per.min(outer - first);
            let lo = first * inner * dtype.size();
            let hi = (first + count) * inner * dtype.size();
            parts.push(WeightPart { buf: self.part_buf(bytes, lo, hi)?, scales: None, first, count });
            first += count;
        }
        Ok(GpuWeight { parts, dtype, shape: shape.to_vec() })
    }

    /// A quantized weight in parts of whole outer rows, each with its values and its scales (every outer
    /// row holds the same number of both: the groups never cross one).
    fn upload_quantized(
        &self,
        name: &str,
        bytes: Option<&[u8]>,
        dtype: DType,
        shape: &[usize],
        outer: usize,
        inner: usize,
    ) -> Result<GpuWeight> {
        let l = herd_core::quant::QuantLayout::new(dtype, shape).map_err(|e| err(format!("{name}: {e}")))?;
        let row_vals = inner * l.bits as usize / 8;
        let row_scales = 2 * inner / l.group;
        if !row_vals.is_multiple_of(4) || shape.len() < 2 {
            return Err(err(format!("{name}: {} rows of {inner} elements do not fill whole u32 words", dtype.name())));
        }
        let max = self.max_binding() as usize;
        let per = (max / row_vals.max(row_scales).max(1)).max(1);
        let mut parts = Vec::new();
        let mut first = 0;
        while first < outer {
            let count = per.min(outer - first);
            let vb = self.part_buf(bytes, first * row_vals, (first + count) * row_vals)?;
            let s0 = l.scale_offset + first * row_scales;
            let sb = self.part_buf(bytes, s0, s0 + count * row_scales)?;
            parts.push(WeightPart { buf: vb, scales: Some(sb), first, count });
            first += count;
        }
        Ok(GpuWeight { parts, dtype, shape: shape.to_vec() })
    }

    fn pipeline(
        &self,
        shader: Shader,
        entry: &'static str,
        wdt: u32,
    ) -> Result<Arc<(wgpu::ComputePipeline, wgpu::BindGroupLayout)>> {
        let mut cache = self.pipelines.lock().map_err(|_| err("poisoned pipeline cache"))?;
        if let Some(p) = cache.get(&(shader, entry, wdt)) {
            return Ok(p.clone());
        }
        let src = compose(shader, wdt, self.subgroups, cfg!(target_arch = "wasm32"));
        let module = self.device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some(entry),
            source: wgpu::ShaderSource::Wgsl(src.into()),
        });
        let pipe = self.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(entry),
            layout: None,
            module: &module,
            entry_point: Some(entry),
            compilation_options: Default::default(),
            cache: None,
        });
        let layout = pipe.get_bind_group_layout(0);
        let p = Arc::new((pipe, layout));
        self.check()?;
        cache.insert((shader, entry, wdt), p.clone());
        Ok(p)
    }

    /// Records one dispatch of `groups` workgroups: `params` (at most 16 words) at binding 0, then
    /// `(binding, buffer)` pairs.
    pub(crate) fn dispatch<K: Kernel>(
        &self,
        kernel: K,
        wdt: u32,
        bindings: &[(u32, &wgpu::Buffer)],
        params: &K::Params,
        groups: u32,
    ) -> Result<()> {
        if groups == 0 {
            return Ok(());
        }
        let params: &[u32] = bytemuck::cast_slice(std::slice::from_ref(params));
        if params.len() * 4 > MAX_PARAM_BYTES {
            return Err(err(format!("{kernel:?}: parameters of {} bytes exceed the uniform block", params.len() * 4)));
        }
        let pipeline = self.pipeline(kernel.shader(), kernel.entry(), wdt)?;
        let mut g = self.encoder.lock().map_err(|_| err("poisoned encoder"))?;
        let rec = g.get_or_insert_with(|| self.new_recorder());
        let slot = rec.params.len() / SLOT_WORDS;
        rec.params.extend_from_slice(params);
        rec.params.resize((slot + 1) * SLOT_WORDS, 0);
        let key = BindKey {
            pipeline: Arc::as_ptr(&pipeline) as usize,
            slot,
            buffers: bindings.iter().map(|(b, buf)| (*b, (*buf).clone())).collect(),
        };
        let bg = self.bind_group(&pipeline.1, key)?;
        let (x, y) = if groups <= MAX_GROUPS { (groups, 1) } else { (MAX_GROUPS, groups.div_ceil(MAX_GROUPS)) };
        let pass = rec.pass.get_or_insert_with(|| {
            rec.enc
                .begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("step"), timestamp_writes: None })
                .forget_lifetime()
        });
        pass.set_pipeline(&pipeline.0);
        pass.set_bind_group(0, &bg, &[]);
        pass.dispatch_workgroups(x, y, 1);
        Ok(())
    }

    /// The bind group for `key`, from this step's or the last step's cache, or made now.
    #[allow(clippy::mutable_key_type)] // as in read_words
    fn bind_group(&self, layout: &wgpu::BindGroupLayout, key: BindKey) -> Result<wgpu::BindGroup> {
        let mut cache = self.binds.lock().map_err(|_| err("poisoned bind group cache"))?;
        if let Some(bg) = cache.current.get(&key) {
            return Ok(bg.clone());
        }
        if let Some(bg) = cache.previous.remove(&key) {
            cache.current.insert(key, bg.clone());
            return Ok(bg);
        }
        let chunk = key.slot / SLOTS_PER_CHUNK;
        let arena = {
            let mut pools = self.pools.lock().map_err(|_| err("poisoned buffer pools"))?;
            while pools.arena.len() <= chunk {
                pools.arena.push(self.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("params"),
                    size: (SLOTS_PER_CHUNK * SLOT_BYTES) as u64,
                    usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                }));
            }
            pools.arena[chunk].clone()
        };
        let mut entries = vec![wgpu::BindGroupEntry {
            binding: 0,
            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                buffer: &arena,
                offset: ((key.slot % SLOTS_PER_CHUNK) * SLOT_BYTES) as u64,
                size: std::num::NonZeroU64::new(64),
            }),
        }];
        entries.extend(
            key.buffers.iter().map(|(b, buf)| wgpu::BindGroupEntry { binding: *b, resource: buf.as_entire_binding() }),
        );
        let bg = self.device.create_bind_group(&wgpu::BindGroupDescriptor { label: None, layout, entries: &entries });
        cache.current.insert(key, bg.clone());
        Ok(bg)
    }

    /// A device buffer holding `words` for this step's dispatches to read (sequence tables, block lists,
    /// draws): one of a pool of buffers kept across steps, each filled at most once per step (identical
    /// contents share one), by a queue write that lands before the step's commands run.
    pub(crate) fn meta(&self, words: &[u32]) -> Result<wgpu::Buffer> {
        let words = if words.is_empty() { &[0u32][..] } else { words };
        let mut g = self.encoder.lock().map_err(|_| err("poisoned encoder"))?;
        let rec = g.get_or_insert_with(|| self.new_recorder());
        let mut pools = self.pools.lock().map_err(|_| err("poisoned buffer pools"))?;
        if let Some(&i) = rec.meta_by_content.get(words) {
            return Ok(pools.meta[i].0.clone());
        }
        let i = rec.meta_used;
        rec.meta_used += 1;
        if pools.meta.len() <= i || pools.meta[i].1 < words.len() {
            let cap = words.len().next_power_of_two().max(64);
            self.check_size((cap * 4) as u64, "metadata")?;
            let buf = self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("meta"),
                size: (cap * 4) as u64,
                usage: Self::storage_usage(),
                mapped_at_creation: false,
            });
            if pools.meta.len() <= i {
                pools.meta.push((buf, cap));
            } else {
                pools.meta[i] = (buf, cap);
            }
        }
        let buf = pools.meta[i].0.clone();
        self.queue.write_buffer(&buf, 0, bytemuck::cast_slice(words));
        rec.meta_by_content.insert(words.to_vec(), i);
        Ok(buf)
    }

    /// A scratch buffer of at least `len` elements for one role inside an op (e.g. the MoE partial sums),
    /// kept across steps and grown when too small. Its contents are undefined; ops that share a role run
    /// one after the other, so each sees only what it wrote.
    /// Held for the whole of an op that records several dispatches around a scratch buffer (attention's
    /// splits, the MoE's routes and partial sums, sampling's candidates), so that another thread's op
    /// cannot record between them.
    pub(crate) fn op(&self) -> herd_core::oplock::OpGuard<'_> {
        self.ops.enter()
    }

    pub(crate) fn scratch(&self, role: &'static str, len: usize, is_u32: bool) -> Result<wgpu::Buffer> {
        let mut pools = self.pools.lock().map_err(|_| err("poisoned buffer pools"))?;
        if let Some(b) = pools.scratch.get(role) {
            if b.len >= len && b.is_u32 == is_u32 {
                return Ok(b.buf.clone());
            }
        }
        let b = self.alloc(len.max(1).next_power_of_two().min(self.max_binding() as usize / 4).max(len), is_u32)?;
        let buf = b.buf.clone();
        pools.scratch.insert(role, b);
        Ok(buf)
    }

    fn new_recorder(&self) -> Recorder {
        let enc = self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("step") });
        Recorder { enc, pass: None, params: Vec::new(), meta_used: 0, meta_by_content: HashMap::new() }
    }

    /// Runs `f` on the step's command encoder (created on first use), outside the shared compute pass.
    pub(crate) fn record(&self, f: impl FnOnce(&mut wgpu::CommandEncoder)) -> Result<()> {
        let mut g = self.encoder.lock().map_err(|_| err("poisoned encoder"))?;
        let rec = g.get_or_insert_with(|| self.new_recorder());
        rec.pass = None; // ends the compute pass
        f(&mut rec.enc);
        Ok(())
    }

    /// Submits everything recorded, copies `buf` back and waits for it: the one host wait of a step.
    #[allow(clippy::mutable_key_type)] // BindKey holds wgpu::Buffers, which hash and compare by their fixed id
    pub fn read_words(&self, buf: &GpuBuffer) -> Result<Vec<u32>> {
        #[cfg(target_arch = "wasm32")]
        {
            let _ = buf;
            Err(err("a browser cannot block on the GPU: read with read_words_async"))
        }
        #[cfg(not(target_arch = "wasm32"))]
        pollster::block_on(self.read_words_async(buf))
    }

    /// [`Gpu::read_words`] without blocking: the mapping is awaited (in a browser, the page's event loop
    /// completes it; natively the device is polled first, so the future is ready when first polled).
    #[allow(clippy::mutable_key_type)] // as in read_words
    pub async fn read_words_async(&self, buf: &GpuBuffer) -> Result<Vec<u32>> {
        let bytes = (buf.len * 4) as u64;
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size: bytes.max(4),
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        if bytes > 0 {
            self.record(|enc| enc.copy_buffer_to_buffer(&buf.buf, 0, &staging, 0, bytes))?;
        }
        let enc = self.encoder.lock().map_err(|_| err("poisoned encoder"))?.take();
        if let Some(mut rec) = enc {
            rec.pass = None;
            {
                // The step's parameters, one queue write per arena chunk, ahead of its commands.
                let pools = self.pools.lock().map_err(|_| err("poisoned buffer pools"))?;
                for (chunk, words) in rec.params.chunks(SLOTS_PER_CHUNK * SLOT_WORDS).enumerate() {
                    self.queue.write_buffer(&pools.arena[chunk], 0, bytemuck::cast_slice(words));
                }
            }
            self.queue.submit([rec.enc.finish()]);
            let mut cache = self.binds.lock().map_err(|_| err("poisoned bind group cache"))?;
            let current = std::mem::take(&mut cache.current);
            cache.previous = current;
        }
        let slice = staging.slice(..);
        let (tx, rx) = futures_channel::oneshot::channel();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        #[cfg(not(target_arch = "wasm32"))]
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| err(format!("device lost while waiting ({e})")))?;
        rx.await.map_err(|_| err("readback never completed"))?.map_err(|e| err(format!("readback failed ({e})")))?;
        self.check()?;
        let data = slice.get_mapped_range().map_err(|e| err(format!("readback mapping failed ({e})")))?;
        let words: Vec<u32> = bytemuck::cast_slice(&data[..bytes as usize]).to_vec();
        drop(data);
        staging.unmap();
        Ok(words)
    }
}
