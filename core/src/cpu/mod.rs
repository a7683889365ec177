//! The CPU backend: the reference the others are checked against, and a backend people run. Multi-threaded
//! on one pool of spinning threads ([`pool`]), f32 accumulation; the hot ops have vector kernels per [`Simd`] level, each with a scalar twin
//! (docs/backends.md, "The CPU backend's kernels"). One file per op family (named as the WGSL and CUDA files
//! are); this file owns buffers and weights.
//!
//! Ops run when they are called, so "enqueue" and "execute" coincide and [`Backend::read`] has nothing to
//! wait for. Weights stay in their checkpoint format, read into huge pages ([`arena`]) or borrowed from the
//! memory-mapped file when its alignment allows ([`WeightMemory`]): quantized weights in the integer kernels' layouts are multiplied as integers
//! (activations rounded to int8 per group, [`gemv`]), in decode and, from AVX2 up, in prefill; other
//! quantized layouts, and prefill on the scalar level, convert to f32 a block at a time.

#[cfg(not(target_arch = "wasm32"))]
mod arena;
mod attention;
#[cfg(target_arch = "x86_64")]
mod dot512;
mod elementwise;
mod fused;
pub mod gemv;
mod kv_store;
mod layer_norm;
mod matmul;
mod moe;
#[cfg(target_arch = "aarch64")]
mod neon;
pub mod pool;
#[cfg(target_arch = "x86_64")]
mod qpanel;
mod quantize;
mod rms_norm;
mod rope;
mod sample;
pub mod simd;
#[cfg(target_arch = "x86_64")]
mod vnni;
#[cfg(target_arch = "x86_64")]
mod vnni_xw;
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
mod wasm;
// The 128-bit kernels of this build (NEON on aarch64, SIMD128 on wasm32), which have the same functions with
// the same contract: one dispatch in each kernel serves both levels.
#[cfg(target_arch = "aarch64")]
use neon as lanes128;
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
use wasm as lanes128;
mod xw;
#[cfg(target_arch = "x86_64")]
mod xw512;

use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::backend::check::{self, BufDesc};
use crate::backend::{ops, Backend};
use crate::checkpoint::{FileBytes, TensorRef};
use crate::error::{HerdError, Result};
use crate::quant::{DType, QuantLayout};

#[cfg(not(target_arch = "wasm32"))]
pub use arena::WeightMemory;
pub use matmul::WView;
pub use simd::Simd;

/// A CPU buffer: f32 activations or u32 indices.
pub enum CpuBuffer {
    F32(RwLock<Vec<f32>>),
    U32(RwLock<Vec<u32>>),
}

fn err(msg: impl Into<String>) -> HerdError {
    HerdError::Backend { backend: "cpu".into(), msg: msg.into() }
}

/// A buffer's lock, or the error for a poisoned one or one of the other kind (the op checks make the
/// latter an internal error).
fn locked<T>(lock: Option<std::sync::LockResult<T>>, want: &str) -> Result<T> {
    match lock {
        Some(l) => l.map_err(|_| err("poisoned buffer")),
        // The op checks give every op buffers of the kinds it takes.
        None => Err(HerdError::internal(format!("cpu: expected {want} buffer"))),
    }
}

impl CpuBuffer {
    fn f32s(&self) -> Option<&RwLock<Vec<f32>>> {
        if let CpuBuffer::F32(v) = self {
            Some(v)
        } else {
            None
        }
    }
    fn u32s(&self) -> Option<&RwLock<Vec<u32>>> {
        if let CpuBuffer::U32(v) = self {
            Some(v)
        } else {
            None
        }
    }
    pub(crate) fn f32(&self) -> Result<RwLockReadGuard<'_, Vec<f32>>> {
        locked(self.f32s().map(|v| v.read()), "an f32")
    }
    pub(crate) fn f32_mut(&self) -> Result<RwLockWriteGuard<'_, Vec<f32>>> {
        locked(self.f32s().map(|v| v.write()), "an f32")
    }
    pub(crate) fn u32(&self) -> Result<RwLockReadGuard<'_, Vec<u32>>> {
        locked(self.u32s().map(|v| v.read()), "a u32")
    }
    pub(crate) fn u32_mut(&self) -> Result<RwLockWriteGuard<'_, Vec<u32>>> {
        locked(self.u32s().map(|v| v.write()), "a u32")
    }
}

/// Checks that a slice holds at least `need` elements (an op's shape arguments against its buffers).
pub(crate) fn need(what: &str, have: usize, need: usize) -> Result<()> {
    if have < need {
        return Err(err(format!("{what}: buffer has {have} elements, op needs {need}")));
    }
    Ok(())
}

/// Weight bytes: borrowed from the checkpoint mapping, an aligned private copy, a copy in huge pages, or (the
/// expert cache's slots) a private copy that is written row by row while the model runs.
enum WeightBytes {
    Mapped {
        file: Arc<FileBytes>,
        start: usize,
        end: usize,
    },
    Owned(Vec<u32>, usize),
    Writable(RwLock<Vec<u32>>, usize),
    #[cfg(not(target_arch = "wasm32"))]
    Huge(arena::Slice),
}

/// A weight on the CPU, in its checkpoint format.
pub struct CpuWeight {
    pub dtype: DType,
    pub shape: Vec<usize>,
    bytes: WeightBytes,
}

/// A weight's bytes, held for reading (a writable weight stays locked against writes meanwhile).
pub(crate) struct WeightRead<'a> {
    w: &'a CpuWeight,
    guard: Option<RwLockReadGuard<'a, Vec<u32>>>,
}

impl WeightRead<'_> {
    fn raw(&self) -> &[u8] {
        match (&self.w.bytes, &self.guard) {
            (WeightBytes::Mapped { file, start, end }, _) => &file.as_slice()[*start..*end],
            (WeightBytes::Owned(v, len), _) => &bytemuck::cast_slice(v)[..*len],
            (WeightBytes::Writable(_, len), Some(g)) => &bytemuck::cast_slice(g)[..*len],
            (WeightBytes::Writable(..), None) => &[],
            #[cfg(not(target_arch = "wasm32"))]
            (WeightBytes::Huge(s), _) => s.bytes(),
        }
    }
    /// The elements as stored: f32 values, or bf16/f16 bit patterns.
    pub(crate) fn view(&self) -> WView<'_> {
        let raw = self.raw();
        match self.w.dtype {
            DType::F32 => WView::F32(bytemuck::cast_slice(raw)),
            DType::BF16 => WView::BF16(bytemuck::cast_slice(raw)),
            DType::F16 => WView::F16(bytemuck::cast_slice(raw)),
            // The layout was checked when the weight was loaded.
            DType::Q8(_) | DType::Q4(_) => match QuantLayout::new(self.w.dtype, &self.w.shape) {
                Ok(l) => WView::Quant(raw, l),
                Err(_) => WView::F32(&[]),
            },
        }
    }
}

impl CpuWeight {
    pub(crate) fn read(&self) -> Result<WeightRead<'_>> {
        let guard = match &self.bytes {
            WeightBytes::Writable(v, _) => Some(v.read().map_err(|_| err("poisoned weight"))?),
            _ => None,
        };
        Ok(WeightRead { w: self, guard })
    }
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// The CPU backend. Runs its ops on the process's one CPU pool ([`pool`]; `pool::set_threads` sizes it).
pub struct CpuBackend {
    simd: Simd,
    /// Where loaded weights live: huge pages (from `arena`) or the checkpoint's mapping.
    #[cfg(not(target_arch = "wasm32"))]
    huge: Option<arena::Arena>,
}

impl Default for CpuBackend {
    fn default() -> Self {
        CpuBackend::new()
    }
}

impl CpuBackend {
    /// The backend with the best kernels this processor runs.
    pub fn new() -> Self {
        CpuBackend::with_simd(Simd::detect())
    }
    /// The backend with the kernels of `simd` (which the processor must run: see [`Simd::available`]).
    pub fn with_simd(simd: Simd) -> Self {
        let b = CpuBackend {
            simd: simd.min(Simd::detect()),
            #[cfg(not(target_arch = "wasm32"))]
            huge: None,
        };
        #[cfg(not(target_arch = "wasm32"))]
        let b = b.with_weight_memory(WeightMemory::detect());
        b
    }
    /// The backend keeping the weights it loads in `m` ([`WeightMemory::HugePages`] only where the kernel
    /// has transparent huge pages: elsewhere the mapping).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn with_weight_memory(mut self, m: WeightMemory) -> Self {
        let huge = m == WeightMemory::HugePages && WeightMemory::detect() == WeightMemory::HugePages;
        self.huge = huge.then(arena::Arena::default);
        self
    }
    /// Where this backend keeps the weights it loads.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn weight_memory(&self) -> WeightMemory {
        if self.huge.is_some() {
            WeightMemory::HugePages
        } else {
            WeightMemory::Mapped
        }
    }
    pub fn simd(&self) -> Simd {
        self.simd
    }

    /// A checkpoint tensor as a weight: into huge pages when this backend keeps weights there and `huge`,
    /// else borrowed from the mapping (copied where the mapping is not aligned for the format).
    fn load(&self, t: &TensorRef, huge: bool) -> Result<CpuWeight> {
        let (start, end) = t.range();
        let want = t.dtype.bytes(&t.shape).map_err(|e| HerdError::tensor(&t.name, e))?;
        if end - start != want {
            return Err(HerdError::tensor(
                &t.name,
                format!("{} bytes for shape {:?} in {}, expected {want}", end - start, t.shape, t.dtype.name()),
            ));
        }
        #[cfg(target_arch = "wasm32")]
        let _ = huge;
        #[cfg(not(target_arch = "wasm32"))]
        if let Some(arena) = self.huge.as_ref().filter(|_| huge) {
            crate::limits::check_host_alloc(&format!("tensor `{}`", t.name), want as u128)?;
            let s = arena
                .alloc(want, |dst| t.file().read_into(start, dst))
                .map_err(|e| HerdError::tensor(&t.name, e.to_string()))?;
            return Ok(CpuWeight { dtype: t.dtype, shape: t.shape.clone(), bytes: WeightBytes::Huge(s) });
        }
        let align = t.dtype.size().max(1);
        let ptr = t.bytes().as_ptr() as usize;
        let bytes = if ptr.is_multiple_of(align) {
            WeightBytes::Mapped { file: t.file().clone(), start, end }
        } else {
            let b = t.bytes();
            let mut v = vec![0u32; b.len().div_ceil(4)];
            bytemuck::cast_slice_mut::<u32, u8>(&mut v)[..b.len()].copy_from_slice(b);
            WeightBytes::Owned(v, b.len())
        };
        Ok(CpuWeight { dtype: t.dtype, shape: t.shape.clone(), bytes })
    }
}

impl Backend for CpuBackend {
    const KIND: &'static str = "cpu";

    type Buffer = CpuBuffer;
    type Weight = CpuWeight;

    fn name(&self) -> String {
        let n = pool::threads();
        #[cfg(not(target_arch = "wasm32"))]
        let weights = if self.huge.is_some() { ", weights in huge pages" } else { ", mapped weights" };
        #[cfg(target_arch = "wasm32")]
        let weights = "";
        format!("cpu ({n} thread{}, {}{weights})", if n == 1 { "" } else { "s" }, self.simd.name())
    }

    fn free_memory(&self) -> Option<crate::backend::FreeMemory> {
        let bytes = crate::limits::available_memory()? as usize;
        Some(crate::backend::FreeMemory { bytes, holds_weights: false })
    }

    fn matmul_activation_block(&self, dtype: DType, k: usize, m: usize) -> Option<usize> {
        // At every row count from AVX2 up (prefill takes the integer kernels too); a few rows on the scalar level.
        if m > matmul::SMALL_M && self.simd == Simd::Scalar {
            return None;
        }
        gemv::activation_block(dtype, k).or_else(|| gemv::expert_activation_block(dtype))
    }

    fn buffer_desc(&self, b: &CpuBuffer) -> BufDesc {
        match b {
            CpuBuffer::F32(v) => BufDesc { len: v.read().map_or(0, |v| v.len()), is_u32: false },
            CpuBuffer::U32(v) => BufDesc { len: v.read().map_or(0, |v| v.len()), is_u32: true },
        }
    }
    fn weight_desc<'a>(&self, w: &'a CpuWeight) -> (DType, &'a [usize]) {
        (w.dtype, &w.shape)
    }

    fn alloc(&self, len: usize) -> Result<CpuBuffer> {
        // A buffer larger than the machine (a KV cache for a context it cannot hold) is an error, not an abort.
        crate::limits::check_host_alloc("a CPU buffer", len as u128 * 4)?;
        Ok(CpuBuffer::F32(RwLock::new(vec![0.0; len])))
    }
    fn alloc_u32(&self, len: usize) -> Result<CpuBuffer> {
        crate::limits::check_host_alloc("a CPU buffer", len as u128 * 4)?;
        // Zeroed by the allocator: pages become resident when first written, not now.
        Ok(CpuBuffer::U32(RwLock::new(vec![0; len])))
    }
    fn upload(&self, data: &[f32]) -> Result<CpuBuffer> {
        Ok(CpuBuffer::F32(RwLock::new(data.to_vec())))
    }
    fn upload_u32(&self, data: &[u32]) -> Result<CpuBuffer> {
        Ok(CpuBuffer::U32(RwLock::new(data.to_vec())))
    }
    fn write_u32(&self, buf: &CpuBuffer, data: &[u32]) -> Result<()> {
        check::write_u32(self, buf, data).map_err(err)?;
        let mut b = buf.u32_mut()?;
        need("write_u32", b.len(), data.len())?;
        b[..data.len()].copy_from_slice(data);
        Ok(())
    }
    fn read(&self, buf: &CpuBuffer) -> Result<Vec<f32>> {
        Ok(buf.f32()?.clone())
    }
    fn read_u32(&self, buf: &CpuBuffer) -> Result<Vec<u32>> {
        Ok(buf.u32()?.clone())
    }
    fn read_u32_into(&self, buf: &CpuBuffer, out: &mut Vec<u32>) -> impl std::future::Future<Output = Result<()>> {
        let got = buf.u32().map(|v| {
            out.clear();
            out.extend_from_slice(&v);
        });
        std::future::ready(got)
    }
    fn copy(&self, src: &CpuBuffer, src_off: usize, dst: &CpuBuffer, dst_off: usize, len: usize) -> Result<()> {
        check::copy(self, src, src_off, dst, dst_off, len).map_err(err)?;
        fn run<T: Copy>(s: &[T], d: &mut [T], src_off: usize, dst_off: usize, len: usize) -> Result<()> {
            need("copy src", s.len(), src_off + len)?;
            need("copy dst", d.len(), dst_off + len)?;
            d[dst_off..dst_off + len].copy_from_slice(&s[src_off..src_off + len]);
            Ok(())
        }
        if self.buffer_desc(src).is_u32 {
            run(&src.u32()?, &mut dst.u32_mut()?, src_off, dst_off, len)
        } else {
            run(&src.f32()?, &mut dst.f32_mut()?, src_off, dst_off, len)
        }
    }

    fn load_weight(&self, t: &TensorRef) -> Result<CpuWeight> {
        self.load(t, true)
    }

    fn load_table(&self, t: &TensorRef) -> Result<CpuWeight> {
        self.load(t, false)
    }

    fn alloc_weight(&self, name: &str, shape: &[usize], dtype: DType) -> Result<CpuWeight> {
        let n = dtype.bytes(shape).map_err(|e| HerdError::tensor(name, e))?;
        crate::limits::check_host_alloc(&format!("tensor `{name}`"), n as u128)?;
        Ok(CpuWeight {
            dtype,
            shape: shape.to_vec(),
            bytes: WeightBytes::Writable(RwLock::new(vec![0u32; n.div_ceil(4)]), n),
        })
    }

    fn write_weight_row(&self, w: &CpuWeight, row: usize, t: &TensorRef) -> Result<()> {
        let WeightBytes::Writable(v, _) = &w.bytes else {
            return Err(err("write_weight_row: the weight was not made by alloc_weight"));
        };
        let (dst, src) = crate::backend::row_copy(w.dtype, &w.shape, row, t)?;
        let mut g = v.write().map_err(|_| err("poisoned weight"))?;
        let bytes: &mut [u8] = bytemuck::cast_slice_mut(&mut g[..]);
        for (d, s) in dst.into_iter().zip(src) {
            bytes[d.start..d.end].copy_from_slice(&t.bytes()[s]);
        }
        Ok(())
    }

    fn run_embed(&self, call: &ops::Embed<'_, Self>) -> Result<()> {
        let &ops::Embed { table, ids, n, dim, out } = call;
        elementwise::embed(table, &ids.u32()?, n, dim, &mut out.f32_mut()?)
    }

    fn run_rms_norm(&self, call: &ops::RmsNorm<'_, Self>) -> Result<()> {
        let &ops::RmsNorm { x, weight, rows, dim, eps, out } = call;
        let held = weight.map(|w| w.read()).transpose()?;
        let w = held.as_ref().map(|h| h.view());
        if std::ptr::eq(x, out) {
            let mut o = out.f32_mut()?;
            rms_norm::rms_norm_inplace(&mut o, w, rows, dim, eps)
        } else {
            rms_norm::rms_norm(&x.f32()?, w, rows, dim, eps, &mut out.f32_mut()?)
        }
    }

    fn run_add_rms_norm(&self, call: &ops::AddRmsNorm<'_, Self>) -> Result<()> {
        let &ops::AddRmsNorm { acc, x, weight, rows, dim, eps, out } = call;
        rms_norm::add_rms_norm(
            &mut acc.f32_mut()?,
            &x.f32()?,
            weight.read()?.view(),
            rows,
            dim,
            eps,
            &mut out.f32_mut()?,
        )
    }

    fn run_layer_norm(&self, call: &ops::LayerNorm<'_, Self>) -> Result<()> {
        let &ops::LayerNorm { x, weight, bias, rows, dim, eps, out } = call;
        let (w, b) = (weight.read()?, bias.read()?);
        if std::ptr::eq(x, out) {
            layer_norm::layer_norm_inplace(&mut out.f32_mut()?, w.view(), b.view(), rows, dim, eps)
        } else {
            layer_norm::layer_norm(&x.f32()?, &mut out.f32_mut()?, w.view(), b.view(), rows, dim, eps)
        }
    }

    fn run_bias_act(&self, call: &ops::BiasAct<'_, Self>) -> Result<()> {
        let &ops::BiasAct { x, bias, rows, dim, act } = call;
        let held = bias.map(|w| w.read()).transpose()?;
        layer_norm::bias_act(&mut x.f32_mut()?, held.as_ref().map(|h| h.view()), rows, dim, act)
    }

    fn run_matmul(&self, call: &ops::Matmul<'_, Self>) -> Result<()> {
        let &ops::Matmul { x, m, w, out } = call;
        let (n, k) = (w.shape[0], w.shape[1]);
        let x = x.f32()?;
        let mut o = out.f32_mut()?;
        need("matmul x", x.len(), m * k)?;
        need("matmul out", o.len(), m * n)?;
        matmul::linear(self.simd, &x[..m * k], m, k, n, &w.read()?.view(), &mut o[..m * n]);
        Ok(())
    }

    fn run_matmuls(&self, call: &ops::Matmuls<'_, Self>) -> Result<()> {
        let &ops::Matmuls { x, m, ws, outs } = call;
        // Attention's q, k and v: one op for a few rows (fused.rs).
        if let ([a, b, c], [oa, ob, oc]) = (ws, outs) {
            let k = a.shape[1];
            let xs = x.f32()?;
            need("matmuls x", xs.len(), m * k)?;
            let (mut oa, mut ob, mut oc) = (oa.f32_mut()?, ob.f32_mut()?, oc.f32_mut()?);
            let (ra, rb, rc) = (a.read()?, b.read()?, c.read()?);
            let (na, nb, nc) = (a.shape[0], b.shape[0], c.shape[0]);
            need("matmuls out", oa.len(), m * na)?;
            need("matmuls out", ob.len(), m * nb)?;
            need("matmuls out", oc.len(), m * nc)?;
            let jobs = [(ra.view(), na, &mut oa[..]), (rb.view(), nb, &mut ob[..]), (rc.view(), nc, &mut oc[..])];
            if fused::linears_small(self.simd, &xs[..m * k], m, k, jobs) {
                return Ok(());
            }
        }
        crate::backend::matmuls_each(self, call)
    }

    fn run_rope(&self, call: &ops::Rope<'_, Self>) -> Result<()> {
        let &ops::Rope { x, rows, heads, head_dim, positions, inv_freq, norm_eps } = call;
        let mut x = x.f32_mut()?;
        rope::rope(&mut x, rows, heads, head_dim, &positions.u32()?, &inv_freq.f32()?)?;
        match norm_eps {
            // The reference composes the two ops; the device backends fuse them.
            Some(eps) => rms_norm::rms_norm_inplace(&mut x, None, rows * heads, head_dim, eps),
            None => Ok(()),
        }
    }

    fn run_attention(&self, call: &ops::Attention<'_, Self>) -> Result<()> {
        let &ops::Attention { q, k_new, v_new, k_cache, v_cache, pages, seqs, p, out } = call;
        use attention::CacheView;
        let (kf, vf, kw, vw);
        let (kc, vc) = if pages.dtype == crate::kv_format::KvDtype::F32 {
            (kf, vf) = (k_cache.f32()?, v_cache.f32()?);
            (CacheView::F32(&kf), CacheView::F32(&vf))
        } else {
            (kw, vw) = (k_cache.u32()?, v_cache.u32()?);
            (CacheView::Words(&kw), CacheView::Words(&vw))
        };
        attention::attention(
            &q.f32()?,
            &k_new.f32()?,
            &v_new.f32()?,
            kc,
            vc,
            pages,
            seqs,
            p,
            &mut out.f32_mut()?,
            self.simd,
        )
    }

    fn run_kv_store(&self, call: &ops::KvStore<'_, Self>) -> Result<()> {
        let &ops::KvStore { k_new, v_new, k_cache, v_cache, pages, seqs, kv_heads, head_dim } = call;
        if pages.dtype == crate::kv_format::KvDtype::F32 {
            let kv_dim = kv_heads * head_dim;
            kv_store::kv_store(&k_new.f32()?, &mut k_cache.f32_mut()?, pages, seqs, kv_dim)?;
            return kv_store::kv_store(&v_new.f32()?, &mut v_cache.f32_mut()?, pages, seqs, kv_dim);
        }
        if pages.dtype == crate::kv_format::KvDtype::Q4 {
            kv_store::kv_store_q4_keys(&k_new.f32()?, &mut k_cache.u32_mut()?, pages, seqs, kv_heads, head_dim)?;
        } else {
            kv_store::kv_store_words(&k_new.f32()?, &mut k_cache.u32_mut()?, pages, seqs, kv_heads, head_dim)?;
        }
        kv_store::kv_store_words(&v_new.f32()?, &mut v_cache.u32_mut()?, pages, seqs, kv_heads, head_dim)
    }

    fn run_add(&self, call: &ops::Add<'_, Self>) -> Result<()> {
        let &ops::Add { acc, x, n } = call;
        elementwise::add(&mut acc.f32_mut()?, &x.f32()?, n)
    }

    fn run_swiglu(&self, call: &ops::Swiglu<'_, Self>) -> Result<()> {
        let &ops::Swiglu { x, m, gate_w, up_w, width, out, .. } = call;
        let k = gate_w.shape[1];
        let done = {
            let (x, mut o) = (x.f32()?, out.f32_mut()?);
            need("swiglu x", x.len(), m * k)?;
            need("swiglu out", o.len(), m * width)?;
            let (g, u) = (gate_w.read()?, up_w.read()?);
            fused::swiglu_small(self.simd, &x[..m * k], m, k, width, &g.view(), &u.view(), &mut o[..m * width])
        };
        if done {
            return Ok(());
        }
        crate::backend::swiglu_unfused(self, call)
    }

    fn run_silu_mul(&self, call: &ops::SiluMul<'_, Self>) -> Result<()> {
        let &ops::SiluMul { gate, up, n } = call;
        elementwise::silu_mul(&mut gate.f32_mut()?, &up.f32()?, n)
    }

    fn run_router_topk(&self, call: &ops::RouterTopk<'_, Self>) -> Result<()> {
        let &ops::RouterTopk { logits, rows, n_experts, k, idx, score } = call;
        moe::router_topk(&logits.f32()?, rows, n_experts, k, &mut idx.u32_mut()?, &mut score.f32_mut()?)
    }

    fn run_moe(&self, call: &ops::Moe<'_, Self>) -> Result<()> {
        let &ops::Moe { x, rows, idx, score, k, gate_up, down, out } = call;
        moe::moe(self.simd, &x.f32()?, rows, &idx.u32()?, &score.f32()?, k, gate_up, down, &mut out.f32_mut()?)
    }

    fn run_gather_rows(&self, call: &ops::GatherRows<'_, Self>) -> Result<()> {
        let &ops::GatherRows { x, rows, n, dim, out } = call;
        elementwise::gather_rows(&x.f32()?, &rows.u32()?, n, dim, &mut out.f32_mut()?)
    }

    fn run_sample(&self, call: &ops::Sample<'_, Self>) -> Result<()> {
        let &ops::Sample { logits, rows, vocab, params, draws, history, out } = call;
        sample::sample(&mut logits.f32_mut()?, rows, vocab, params, draws, history, &mut out.u32_mut()?)
    }

    fn run_mask_logits(&self, call: &ops::MaskLogits<'_, Self>) -> Result<()> {
        let &ops::MaskLogits { logits, rows, vocab, mask } = call;
        sample::mask_logits(&mut logits.f32_mut()?, rows, vocab, &mask.u32()?);
        Ok(())
    }
}
