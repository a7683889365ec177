//! The CPU reference backend: plain, obviously right, multi-threaded with rayon, f32 accumulation.
//! One file per op family (named as the WGSL and CUDA files are); this file owns buffers and weights.
//!
//! Ops run when they are called, so "enqueue" and "execute" coincide and [`Backend::read`] has nothing to
//! wait for. Weights stay in their checkpoint format, borrowed from the memory-mapped file when its
//! alignment allows (no copy), and are converted to f32 a block at a time inside the matmuls.

mod attention;
mod elementwise;
mod layer_norm;
mod matmul;
mod moe;
mod rms_norm;
mod rope;
mod sample;

use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::backend::check::{self, BufDesc};
use crate::backend::{Act, AttnParams, AttnSeq, Backend};
use crate::checkpoint::{FileBytes, TensorRef};
use crate::error::{HerdError, Result};
use crate::quant::{DType, QuantLayout};
use crate::sampling::SamplingParams;

pub use matmul::WView;

/// A CPU buffer: f32 activations or u32 indices.
pub enum CpuBuffer {
    F32(RwLock<Vec<f32>>),
    U32(RwLock<Vec<u32>>),
}

fn err(msg: impl Into<String>) -> HerdError {
    HerdError::Backend { backend: "cpu".into(), msg: msg.into() }
}

impl CpuBuffer {
    pub(crate) fn f32(&self) -> Result<RwLockReadGuard<'_, Vec<f32>>> {
        match self {
            CpuBuffer::F32(v) => v.read().map_err(|_| err("poisoned buffer")),
            CpuBuffer::U32(_) => Err(err("expected an f32 buffer, got u32")),
        }
    }
    pub(crate) fn f32_mut(&self) -> Result<RwLockWriteGuard<'_, Vec<f32>>> {
        match self {
            CpuBuffer::F32(v) => v.write().map_err(|_| err("poisoned buffer")),
            CpuBuffer::U32(_) => Err(err("expected an f32 buffer, got u32")),
        }
    }
    pub(crate) fn u32(&self) -> Result<RwLockReadGuard<'_, Vec<u32>>> {
        match self {
            CpuBuffer::U32(v) => v.read().map_err(|_| err("poisoned buffer")),
            CpuBuffer::F32(_) => Err(err("expected a u32 buffer, got f32")),
        }
    }
    pub(crate) fn u32_mut(&self) -> Result<RwLockWriteGuard<'_, Vec<u32>>> {
        match self {
            CpuBuffer::U32(v) => v.write().map_err(|_| err("poisoned buffer")),
            CpuBuffer::F32(_) => Err(err("expected a u32 buffer, got f32")),
        }
    }
}

/// Checks that a slice holds at least `need` elements (an op's shape arguments against its buffers).
pub(crate) fn need(what: &str, have: usize, need: usize) -> Result<()> {
    if have < need {
        return Err(err(format!("{what}: buffer has {have} elements, op needs {need}")));
    }
    Ok(())
}

/// Weight bytes: borrowed from the checkpoint mapping, an aligned private copy, or (the expert cache's
/// slots) a private copy that is written row by row while the model runs.
enum WeightBytes {
    Mapped { file: Arc<FileBytes>, start: usize, end: usize },
    Owned(Vec<u32>, usize),
    Writable(RwLock<Vec<u32>>, usize),
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

/// The CPU backend. Uses rayon's global pool.
#[derive(Default)]
pub struct CpuBackend;

impl CpuBackend {
    pub fn new() -> Self {
        CpuBackend
    }
}

impl Backend for CpuBackend {
    type Buffer = CpuBuffer;
    type Weight = CpuWeight;

    fn name(&self) -> String {
        format!("cpu ({} threads)", rayon::current_num_threads())
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
    fn copy(&self, src: &CpuBuffer, src_off: usize, dst: &CpuBuffer, dst_off: usize, len: usize) -> Result<()> {
        check::copy(self, src, src_off, dst, dst_off, len).map_err(err)?;
        let s = src.f32()?;
        let mut d = dst.f32_mut()?;
        need("copy src", s.len(), src_off + len)?;
        need("copy dst", d.len(), dst_off + len)?;
        d[dst_off..dst_off + len].copy_from_slice(&s[src_off..src_off + len]);
        Ok(())
    }

    fn load_weight(&self, t: &TensorRef) -> Result<CpuWeight> {
        let (start, end) = t.range();
        let want = t.dtype.bytes(&t.shape).map_err(|e| HerdError::tensor(&t.name, e))?;
        if end - start != want {
            return Err(HerdError::tensor(
                &t.name,
                format!("{} bytes for shape {:?} in {}, expected {want}", end - start, t.shape, t.dtype.name()),
            ));
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

    fn embed(&self, table: &CpuWeight, ids: &CpuBuffer, n: usize, dim: usize, out: &CpuBuffer) -> Result<()> {
        check::embed(self, table, ids, n, dim, out).map_err(err)?;
        elementwise::embed(table, &ids.u32()?, n, dim, &mut out.f32_mut()?)
    }

    fn rms_norm(
        &self,
        x: &CpuBuffer,
        weight: Option<&CpuWeight>,
        rows: usize,
        dim: usize,
        eps: f32,
        out: &CpuBuffer,
    ) -> Result<()> {
        check::rms_norm(self, x, weight, rows, dim, out).map_err(err)?;
        let held = weight.map(|w| w.read()).transpose()?;
        let w = held.as_ref().map(|h| h.view());
        if std::ptr::eq(x, out) {
            let mut o = out.f32_mut()?;
            rms_norm::rms_norm_inplace(&mut o, w, rows, dim, eps)
        } else {
            rms_norm::rms_norm(&x.f32()?, w, rows, dim, eps, &mut out.f32_mut()?)
        }
    }

    fn add_rms_norm(
        &self,
        acc: &CpuBuffer,
        x: &CpuBuffer,
        weight: &CpuWeight,
        rows: usize,
        dim: usize,
        eps: f32,
        out: &CpuBuffer,
    ) -> Result<()> {
        check::add_rms_norm(self, acc, x, weight, rows, dim, out).map_err(err)?;
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

    fn layer_norm(
        &self,
        x: &CpuBuffer,
        weight: &CpuWeight,
        bias: &CpuWeight,
        rows: usize,
        dim: usize,
        eps: f32,
        out: &CpuBuffer,
    ) -> Result<()> {
        check::layer_norm(self, x, weight, bias, rows, dim, out).map_err(err)?;
        let (w, b) = (weight.read()?, bias.read()?);
        if std::ptr::eq(x, out) {
            layer_norm::layer_norm_inplace(&mut out.f32_mut()?, w.view(), b.view(), rows, dim, eps)
        } else {
            layer_norm::layer_norm(&x.f32()?, &mut out.f32_mut()?, w.view(), b.view(), rows, dim, eps)
        }
    }

    fn bias_act(&self, x: &CpuBuffer, bias: Option<&CpuWeight>, rows: usize, dim: usize, act: Act) -> Result<()> {
        check::bias_act(self, x, bias, rows, dim).map_err(err)?;
        let held = bias.map(|w| w.read()).transpose()?;
        layer_norm::bias_act(&mut x.f32_mut()?, held.as_ref().map(|h| h.view()), rows, dim, act)
    }

    fn matmul(&self, x: &CpuBuffer, m: usize, w: &CpuWeight, out: &CpuBuffer) -> Result<()> {
        let (n, k) = check::matmul(self, x, m, w, out).map_err(err)?;
        let x = x.f32()?;
        let mut o = out.f32_mut()?;
        need("matmul x", x.len(), m * k)?;
        need("matmul out", o.len(), m * n)?;
        matmul::linear(&x[..m * k], m, k, n, &w.read()?.view(), &mut o[..m * n]);
        Ok(())
    }

    fn rope(
        &self,
        x: &CpuBuffer,
        rows: usize,
        heads: usize,
        head_dim: usize,
        positions: &CpuBuffer,
        inv_freq: &CpuBuffer,
        norm_eps: Option<f32>,
    ) -> Result<()> {
        check::rope(self, x, rows, heads, head_dim, positions, inv_freq).map_err(err)?;
        let mut x = x.f32_mut()?;
        rope::rope(&mut x, rows, heads, head_dim, &positions.u32()?, &inv_freq.f32()?)?;
        match norm_eps {
            // The reference composes the two ops; the device backends fuse them.
            Some(eps) => rms_norm::rms_norm_inplace(&mut x, None, rows * heads, head_dim, eps),
            None => Ok(()),
        }
    }

    fn attention(
        &self,
        q: &CpuBuffer,
        k_new: &CpuBuffer,
        v_new: &CpuBuffer,
        k_cache: &CpuBuffer,
        v_cache: &CpuBuffer,
        seqs: &[AttnSeq],
        p: &AttnParams,
        out: &CpuBuffer,
    ) -> Result<()> {
        check::attention(self, q, k_new, v_new, k_cache, v_cache, seqs, p, out).map_err(err)?;
        attention::attention(
            &q.f32()?,
            &k_new.f32()?,
            &v_new.f32()?,
            &k_cache.f32()?,
            &v_cache.f32()?,
            seqs,
            p,
            &mut out.f32_mut()?,
        )
    }

    fn kv_store(
        &self,
        k_new: &CpuBuffer,
        v_new: &CpuBuffer,
        k_cache: &CpuBuffer,
        v_cache: &CpuBuffer,
        seqs: &[AttnSeq],
        kv_dim: usize,
    ) -> Result<()> {
        check::kv_store(self, k_new, v_new, k_cache, v_cache, seqs, kv_dim).map_err(err)?;
        attention::kv_store(&k_new.f32()?, &mut k_cache.f32_mut()?, seqs, kv_dim)?;
        attention::kv_store(&v_new.f32()?, &mut v_cache.f32_mut()?, seqs, kv_dim)
    }

    fn add(&self, acc: &CpuBuffer, x: &CpuBuffer, n: usize) -> Result<()> {
        check::add(self, acc, x, n).map_err(err)?;
        elementwise::add(&mut acc.f32_mut()?, &x.f32()?, n)
    }

    fn silu_mul(&self, gate: &CpuBuffer, up: &CpuBuffer, n: usize) -> Result<()> {
        check::silu_mul(self, gate, up, n).map_err(err)?;
        elementwise::silu_mul(&mut gate.f32_mut()?, &up.f32()?, n)
    }

    fn router_topk(
        &self,
        logits: &CpuBuffer,
        rows: usize,
        n_experts: usize,
        k: usize,
        idx: &CpuBuffer,
        score: &CpuBuffer,
    ) -> Result<()> {
        check::router_topk(self, logits, rows, n_experts, k, idx, score).map_err(err)?;
        moe::router_topk(&logits.f32()?, rows, n_experts, k, &mut idx.u32_mut()?, &mut score.f32_mut()?)
    }

    fn moe(
        &self,
        x: &CpuBuffer,
        rows: usize,
        idx: &CpuBuffer,
        score: &CpuBuffer,
        k: usize,
        gate_up: &CpuWeight,
        down: &CpuWeight,
        out: &CpuBuffer,
    ) -> Result<()> {
        let _ = check::moe(self, x, rows, idx, score, k, gate_up, down, out).map_err(err)?;
        moe::moe(&x.f32()?, rows, &idx.u32()?, &score.f32()?, k, gate_up, down, &mut out.f32_mut()?)
    }

    fn gather_rows(&self, x: &CpuBuffer, rows: &CpuBuffer, n: usize, dim: usize, out: &CpuBuffer) -> Result<()> {
        check::gather_rows(self, x, rows, n, dim, out).map_err(err)?;
        elementwise::gather_rows(&x.f32()?, &rows.u32()?, n, dim, &mut out.f32_mut()?)
    }

    fn sample(
        &self,
        logits: &CpuBuffer,
        rows: usize,
        vocab: usize,
        params: &SamplingParams,
        draws: &[f32],
        history: &[&[u32]],
        out: &CpuBuffer,
    ) -> Result<()> {
        check::sample(self, logits, rows, vocab, out).map_err(err)?;
        sample::sample(&mut logits.f32_mut()?, rows, vocab, params, draws, history, &mut out.u32_mut()?)
    }

    fn mask_logits(&self, logits: &CpuBuffer, rows: usize, vocab: usize, mask: &CpuBuffer) -> Result<()> {
        check::mask_logits(self, logits, rows, vocab, mask).map_err(err)?;
        sample::mask_logits(&mut logits.f32_mut()?, rows, vocab, &mask.u32()?);
        Ok(())
    }
}
