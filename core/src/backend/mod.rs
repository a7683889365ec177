//! The Backend trait: the small set of coarse ops the Llama 4 model is written against.
//!
//! Ops *enqueue* work on buffer handles; nothing is waited for until [`Backend::read`] (the host reads
//! once per step: the logits). The CPU reference runs each op as it is called; the wgpu backend records
//! them into one command encoder per step, the CUDA backend into one captured graph. Every op works on a
//! batch of sequences with their own lengths and positions: a single prompt is a batch of one.
//!
//! Buffers hold f32 activations or u32 indices (ids, positions, expert choices); which one is fixed at
//! creation and documented per op. Weights are uploaded once, in their checkpoint format
//! ([`crate::quant::DType`]), and stay in that format: each backend multiplies by each format.
//!
//! Shapes are row-major and passed explicitly. An op never aliases an input with its output unless the op
//! says it works in place.

pub mod check;
pub mod ops;

pub use check::row_copy;

use crate::checkpoint::TensorRef;
use crate::error::{HerdError, Result};
use crate::kv_format::KvDtype;
use crate::quant::DType;
use crate::quant::Fill;
use crate::sampling::SamplingParams;

/// Per-sequence metadata for [`Backend::attention`] and [`Backend::kv_store`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub struct AttnSeq {
    /// First row of this sequence's new tokens in `q`, `k_new`, `v_new`, `out`.
    pub q_start: u32,
    /// Number of new tokens of this sequence in this step.
    pub q_len: u32,
    /// Absolute position of the first new token (= tokens already in the cache).
    pub pos0: u32,
    /// Where this sequence's page table starts in [`KvPages::table`].
    pub page_base: u32,
    /// The sequence's slots, a whole number of pages: position `p` lives in its slot `p % slot_cap`, that is
    /// in page `table[page_base + (p % slot_cap) / size]` at offset `(p % slot_cap) % size` (see
    /// [`KvPages::slot`]). For a chunked layer the slots must hold at least min(chunk, history) positions
    /// (a ring); for a full layer the whole history.
    pub slot_cap: u32,
}

/// The memory a device has for a model now ([`Backend::free_memory`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FreeMemory {
    /// Bytes free.
    pub bytes: usize,
    /// Whether the weights take from it. On the CPU they are mapped from their files: pages the system can
    /// drop and read again, so only the KV cache, activations and expert cache need to fit.
    pub holds_weights: bool,
}

/// Slots per KV-cache page unless a backend says otherwise ([`Backend::kv_page_size`]).
pub const DEFAULT_KV_PAGE: usize = 16;

/// How a layer's cache buffers are paged: they hold pages of `size` slots (a slot is one position's
/// [n_kv_heads, head_dim] keys or values), and `table` lists, per sequence from its
/// [`AttnSeq::page_base`], the pages of its slots in order. Sequences may share pages.
///
/// [`KvDtype::Q4`] keys are quantized a page at a time ([`crate::kv_q4`]): the key buffer holds pages of
/// [`KvDtype::key_page_words`] words, and after them each sequence's stage, the f32 keys of the page it is
/// filling. A sequence's table then has one entry more, after its pages, `table[page_base + slot_cap / size]`
/// ([`KvPages::stage`]): where its stage starts, counted in slots of `n_kv_heads · head_dim` words (its stage
/// slot `i` is the words `(entry + i) · kv_dim ..`, the keys of the position at offset `i` of its page).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvPages<'a> {
    pub table: &'a [u32],
    pub size: usize,
    /// The format of the cache buffers: f32 buffers for [`KvDtype::F32`], else u32 buffers of
    /// [`KvDtype::slot_words`] words per slot ([`crate::kv_format`]).
    pub dtype: KvDtype,
}

impl KvPages<'_> {
    /// The cache slot that holds position `p` of sequence `s` (the table is checked by the op checks).
    pub fn slot(&self, s: &AttnSeq, p: usize) -> usize {
        let r = p % (s.slot_cap as usize).max(1);
        self.table[s.page_base as usize + r / self.size] as usize * self.size + r % self.size
    }

    /// The page holding position `p` of sequence `s`.
    pub fn page(&self, s: &AttnSeq, p: usize) -> usize {
        let r = p % (s.slot_cap as usize).max(1);
        self.table[s.page_base as usize + r / self.size] as usize
    }

    /// Table entries a sequence takes: its pages, and (q4 keys) its stage.
    pub fn entries(&self, s: &AttnSeq) -> usize {
        s.slot_cap as usize / self.size.max(1) + usize::from(self.dtype == KvDtype::Q4)
    }

    /// Q4: the first slot (in `kv_dim` words) of sequence `s`'s stage in the key buffer.
    pub fn stage(&self, s: &AttnSeq) -> usize {
        self.table[s.page_base as usize + s.slot_cap as usize / self.size] as usize
    }

    /// Q4: whether cached position `j` of `s` is read from the stage (it lies in the page the step started in,
    /// not yet complete), not its page.
    pub fn staged(&self, s: &AttnSeq, j: usize) -> bool {
        let p0 = s.pos0 as usize;
        j < p0 && j >= p0 / self.size * self.size
    }
}

/// Shape and masking of one attention call.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AttnParams {
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    /// Softmax scale applied to q·k (1/√head_dim in Llama 4).
    pub scale: f32,
    /// `Some(C)`: query i sees keys j ≤ i with ⌊j/C⌋ = ⌊i/C⌋ (fixed blocks from token 0). `None`: causal.
    pub chunk: Option<usize>,
    /// Every query sees every key of its sequence, cached and new, up to the sequence's last new row: no
    /// causal mask (`chunk` is then ignored). The vision encoder's attention over the patches of a tile.
    pub bidirectional: bool,
    /// NoPE-layer temperature tuning: query at absolute position p is multiplied by
    /// `1 + attn_scale · ln(1 + ⌊(p+1)/floor_scale⌋)` (computed in f32).
    pub temperature: Option<Temperature>,
}

/// An element-wise activation of [`Backend::bias_act`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Act {
    /// None: the bias add alone.
    Identity,
    /// The exact GELU of nn.GELU(): `x · (1 + erf(x / √2)) / 2`.
    Gelu,
}

/// The exact GELU, `x · (1 + erf(x / √2)) / 2`, in f32: the CPU reference's, with libm's erff. CUDA uses
/// its erff; WGSL has no erf, and the shaders use a rational approximation of erfc (error below 2e-7).
pub fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + libm::erff(x * std::f32::consts::FRAC_1_SQRT_2))
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Temperature {
    pub floor_scale: f32,
    pub attn_scale: f32,
}

impl Temperature {
    /// The query scale at absolute position `p`, as transformers computes it.
    pub fn scale_at(&self, p: u32) -> f32 {
        let f = ((p as f32 + 1.0) / self.floor_scale).floor();
        f.ln_1p() * self.attn_scale + 1.0
    }
}

/// A device that runs Llama 4. All ops enqueue work; [`Backend::read`] waits for it.
pub trait Backend: Send + Sync + 'static {
    /// A device buffer of f32 or u32 elements.
    type Buffer: Send + Sync;
    /// A weight tensor in its checkpoint format.
    type Weight: Send + Sync;

    /// The backend's kind in error messages: `cpu`, `wgpu`, `cuda`.
    const KIND: &'static str;

    /// A short name for messages and benchmarks, e.g. `cpu (2 threads)`.
    fn name(&self) -> String;

    /// What the op checks ([`check`]) see of a buffer: its length in elements and whether it holds u32.
    fn buffer_desc(&self, b: &Self::Buffer) -> check::BufDesc;
    /// A weight's format and shape.
    fn weight_desc<'a>(&self, w: &'a Self::Weight) -> (DType, &'a [usize]);

    // ---- memory -------------------------------------------------------------------------------------
    /// Counters worth showing in a benchmark (e.g. how many steps ran as CUDA graphs), if the backend keeps any.
    fn stats(&self) -> Option<String> {
        None
    }
    /// Slots per page of the KV cache here (see [`KvPages`]): small enough that a short sequence wastes
    /// little, large enough that attention reads whole runs of keys.
    fn kv_page_size(&self) -> usize {
        DEFAULT_KV_PAGE
    }
    /// The memory free for a model on this device now, for planning before a load; None where the backend
    /// cannot tell (wgpu: neither WebGPU nor the native APIs it wraps report free memory).
    fn free_memory(&self) -> Option<FreeMemory> {
        None
    }
    /// The most elements one buffer may hold here (the model cuts larger steps into pieces).
    fn max_buffer_len(&self) -> usize {
        usize::MAX / 4
    }
    /// A zeroed f32 buffer of `len` elements.
    fn alloc(&self, len: usize) -> Result<Self::Buffer>;
    /// A zeroed u32 buffer of `len` elements. The default uploads zeros from the host; a backend with its own
    /// zeroed allocation overrides it (a KV cache of gigabytes then never exists on the host).
    fn alloc_u32(&self, len: usize) -> Result<Self::Buffer> {
        self.upload_u32(&vec![0; len])
    }
    /// An f32 buffer holding `data`.
    fn upload(&self, data: &[f32]) -> Result<Self::Buffer>;
    /// A u32 buffer holding `data`.
    fn upload_u32(&self, data: &[u32]) -> Result<Self::Buffer>;
    /// Overwrites the first `data.len()` elements of a u32 buffer, in order with the enqueued work: ops
    /// enqueued before see the old contents, ops enqueued after the new ones.
    fn write_u32(&self, buf: &Self::Buffer, data: &[u32]) -> Result<()>;
    /// Waits for all enqueued work and returns an f32 buffer's contents.
    fn read(&self, buf: &Self::Buffer) -> Result<Vec<f32>>;
    /// Waits for all enqueued work and returns a u32 buffer's contents.
    fn read_u32(&self, buf: &Self::Buffer) -> Result<Vec<u32>>;
    /// [`Backend::read`] without blocking: where waiting is impossible (a browser's WebGPU) the readback is
    /// awaited. The default reads at once, so the future is ready when first polled.
    fn read_async(&self, buf: &Self::Buffer) -> impl std::future::Future<Output = Result<Vec<f32>>> {
        std::future::ready(self.read(buf))
    }
    /// [`Backend::read_u32`] without blocking (see [`Backend::read_async`]).
    fn read_u32_async(&self, buf: &Self::Buffer) -> impl std::future::Future<Output = Result<Vec<u32>>> {
        std::future::ready(self.read_u32(buf))
    }
    /// [`Backend::read_u32_async`] into `out`, replacing its contents. The default reads into a new vector;
    /// the CPU backend copies into `out`'s allocation (a decode step's ids, read back without allocating).
    fn read_u32_into(&self, buf: &Self::Buffer, out: &mut Vec<u32>) -> impl std::future::Future<Output = Result<()>> {
        async move {
            *out = self.read_u32_async(buf).await?;
            Ok(())
        }
    }
    /// Copies `len` f32 elements from `src[src_off..]` to `dst[dst_off..]` (distinct buffers).
    fn copy(&self, src: &Self::Buffer, src_off: usize, dst: &Self::Buffer, dst_off: usize, len: usize) -> Result<()>;
    /// Uploads a checkpoint tensor, keeping its format.
    fn load_weight(&self, t: &TensorRef) -> Result<Self::Weight>;
    /// Uploads a tensor that only [`Backend::embed`] reads, a row per token (an embedding table that is not
    /// also the output head). The default is [`Backend::load_weight`]; the CPU backend leaves it in the
    /// checkpoint's mapping even when it copies weights into huge pages, so only the rows used are resident.
    fn load_table(&self, t: &TensorRef) -> Result<Self::Weight> {
        self.load_weight(t)
    }
    /// A synthetic weight ([`crate::quant::fill`]): the same values on every backend. The default makes the
    /// bytes on the host and uploads them; a device backend may make them in place (no host copy).
    fn synthetic_weight(&self, name: &str, shape: &[usize], dtype: DType, fill: Fill) -> Result<Self::Weight> {
        let bytes = crate::quant::fill::tensor_bytes(0, shape, dtype, fill).map_err(|e| HerdError::tensor(name, e))?;
        self.load_weight(&TensorRef::owned(name, dtype, shape.to_vec(), bytes))
    }

    /// A zeroed weight of `shape` in `dtype`, filled later one outer row at a time with
    /// [`Backend::write_weight_row`]: the expert cache's slots. The default uploads zeros from the host.
    fn alloc_weight(&self, name: &str, shape: &[usize], dtype: DType) -> Result<Self::Weight> {
        let n = dtype.bytes(shape).map_err(|e| HerdError::tensor(name, e))?;
        self.load_weight(&TensorRef::owned(name, dtype, shape.to_vec(), vec![0; n]))
    }
    /// Overwrites outer row `row` of `w` (a weight from [`Backend::alloc_weight`], shape [R, ...]) with
    /// `t`, a tensor of `w`'s format and shape [1, ...] ([`row_copy`] says which bytes go where), in order
    /// with the enqueued work: ops enqueued before read the old row, ops enqueued after the new one.
    fn write_weight_row(&self, w: &Self::Weight, row: usize, t: &TensorRef) -> Result<()>;

    /// The block in which a matmul of `m` rows by a weight of `dtype` and shape `[n, k]` rounds its
    /// activations to 8-bit integers before multiplying (each block scaled by its largest magnitude / 127,
    /// as [`crate::cpu::gemv::quantize_rows`] documents), or None when it multiplies them as f32. For the
    /// MoE op, `dtype` is the expert tensors' and `m` the op's rows × picks. The op table's reference rounds
    /// them the same way.
    fn matmul_activation_block(&self, dtype: DType, k: usize, m: usize) -> Option<usize> {
        let _ = (dtype, k, m);
        None
    }

    /// The link's best host-to-device rate in GB/s (pinned memory, one large copy), which
    /// [`Backend::write_weight_row`]'s rate is judged against; None where there is no separate device memory
    /// or no way to measure it. Measures when called (about a second on a GPU).
    fn host_to_device_peak_gbps(&self) -> Result<Option<f64>> {
        Ok(None)
    }

    // ---- ops ----------------------------------------------------------------------------------------
    /// `out[r, :] = table[ids[r], :]` for r < n; `table` is [V, dim], `ids` u32 [n], `out` [n, dim].
    /// Ids ≥ V are an error of the caller (the model checks them on the host).
    fn embed(&self, table: &Self::Weight, ids: &Self::Buffer, n: usize, dim: usize, out: &Self::Buffer) -> Result<()> {
        let call = ops::Embed { table, ids, n, dim, out };
        check::embed(self, &call).map_err(|msg| refused::<Self>(msg))?;
        self.run_embed(&call)
    }
    /// [`Backend::embed`] once its arguments are checked ([`check::embed`]).
    fn run_embed(&self, call: &ops::Embed<'_, Self>) -> Result<()>;

    /// RMS norm of each of `rows` rows of length `dim`: `y = x · rsqrt(mean(x²) + eps) (· w)`, computed in
    /// f32. `weight` None gives Llama 4's weightless QK norm. `out` may be `x` (in place).
    fn rms_norm(
        &self,
        x: &Self::Buffer,
        weight: Option<&Self::Weight>,
        rows: usize,
        dim: usize,
        eps: f32,
        out: &Self::Buffer,
    ) -> Result<()> {
        let call = ops::RmsNorm { x, weight, rows, dim, eps, out };
        check::rms_norm(self, &call).map_err(|msg| refused::<Self>(msg))?;
        self.run_rms_norm(&call)
    }
    /// [`Backend::rms_norm`] once its arguments are checked ([`check::rms_norm`]).
    fn run_rms_norm(&self, call: &ops::RmsNorm<'_, Self>) -> Result<()>;

    /// The residual add fused with the RMS norm that follows it: `acc[r] += x[r]`, then
    /// `out[r] = acc[r] · rsqrt(mean(acc[r]²) + eps) · w` for each of `rows` rows of length `dim` (f32).
    /// `acc`, `x` and `out` are distinct buffers.
    #[allow(clippy::too_many_arguments)]
    fn add_rms_norm(
        &self,
        acc: &Self::Buffer,
        x: &Self::Buffer,
        weight: &Self::Weight,
        rows: usize,
        dim: usize,
        eps: f32,
        out: &Self::Buffer,
    ) -> Result<()> {
        let call = ops::AddRmsNorm { acc, x, weight, rows, dim, eps, out };
        check::add_rms_norm(self, &call).map_err(|msg| refused::<Self>(msg))?;
        self.run_add_rms_norm(&call)
    }
    /// [`Backend::add_rms_norm`] once its arguments are checked ([`check::add_rms_norm`]).
    fn run_add_rms_norm(&self, call: &ops::AddRmsNorm<'_, Self>) -> Result<()>;

    /// Layer norm of each of `rows` rows of length `dim` (nn.LayerNorm): `y = (x − mean) · rsqrt(var + eps) · w
    /// + b` with the biased variance, computed in f32. `out` may be `x` (in place).
    #[allow(clippy::too_many_arguments)]
    fn layer_norm(
        &self,
        x: &Self::Buffer,
        weight: &Self::Weight,
        bias: &Self::Weight,
        rows: usize,
        dim: usize,
        eps: f32,
        out: &Self::Buffer,
    ) -> Result<()> {
        let call = ops::LayerNorm { x, weight, bias, rows, dim, eps, out };
        check::layer_norm(self, &call).map_err(|msg| refused::<Self>(msg))?;
        self.run_layer_norm(&call)
    }
    /// [`Backend::layer_norm`] once its arguments are checked ([`check::layer_norm`]).
    fn run_layer_norm(&self, call: &ops::LayerNorm<'_, Self>) -> Result<()>;

    /// In place on `x` [rows, dim]: `x[r, c] += bias[c]` when a bias is given, then the activation `act`
    /// on every element. A bias of `rows · dim` elements with `rows = 1` is an elementwise add; one of
    /// `dim` elements is broadcast over the rows (nn.Linear's bias).
    fn bias_act(&self, x: &Self::Buffer, bias: Option<&Self::Weight>, rows: usize, dim: usize, act: Act) -> Result<()> {
        let call = ops::BiasAct { x, bias, rows, dim, act };
        check::bias_act(self, &call).map_err(|msg| refused::<Self>(msg))?;
        self.run_bias_act(&call)
    }
    /// [`Backend::bias_act`] once its arguments are checked ([`check::bias_act`]).
    fn run_bias_act(&self, call: &ops::BiasAct<'_, Self>) -> Result<()>;

    /// `out[m, n] = Σ_k x[m, k] · w[n, k]`: `w` is an nn.Linear weight [n, k].
    fn matmul(&self, x: &Self::Buffer, m: usize, w: &Self::Weight, out: &Self::Buffer) -> Result<()> {
        let call = ops::Matmul { x, m, w, out };
        check::matmul(self, &call).map_err(|msg| refused::<Self>(msg))?;
        self.run_matmul(&call)
    }
    /// [`Backend::matmul`] once its arguments are checked ([`check::matmul`]).
    fn run_matmul(&self, call: &ops::Matmul<'_, Self>) -> Result<()>;

    /// [`Backend::matmul`] of one input by several weights (attention's q, k and v): `outs[i] = x · ws[i]ᵀ`. The
    /// default is one matmul each; a backend may run them as one op.
    fn matmuls(&self, x: &Self::Buffer, m: usize, ws: &[&Self::Weight], outs: &[&Self::Buffer]) -> Result<()> {
        let call = ops::Matmuls { x, m, ws, outs };
        check::matmuls(self, &call).map_err(|msg| refused::<Self>(msg))?;
        self.run_matmuls(&call)
    }
    /// [`Backend::matmuls`] once its arguments are checked.
    fn run_matmuls(&self, call: &ops::Matmuls<'_, Self>) -> Result<()> {
        matmuls_each(self, call)
    }

    /// Interleaved-pair RoPE, in place: x is [rows, heads, head_dim]; row r is rotated by angle
    /// `positions[r] · inv_freq[j]` (f32) on the pair (2j, 2j+1). `positions` u32 [rows], `inv_freq` f32
    /// [head_dim/2]. With `norm_eps`, each rotated head vector is then RMS-normalised without a weight
    /// (Llama 4's QK norm, which follows RoPE), in the same pass.
    #[allow(clippy::too_many_arguments)]
    fn rope(
        &self,
        x: &Self::Buffer,
        rows: usize,
        heads: usize,
        head_dim: usize,
        positions: &Self::Buffer,
        inv_freq: &Self::Buffer,
        norm_eps: Option<f32>,
    ) -> Result<()> {
        let call = ops::Rope { x, rows, heads, head_dim, positions, inv_freq, norm_eps };
        check::rope(self, &call).map_err(|msg| refused::<Self>(msg))?;
        self.run_rope(&call)
    }
    /// [`Backend::rope`] once its arguments are checked ([`check::rope`]).
    fn run_rope(&self, call: &ops::Rope<'_, Self>) -> Result<()>;

    /// Attention of the new tokens of every sequence in `seqs` over that sequence's cached keys/values
    /// (positions < pos0, read from `k_cache`/`v_cache` [slots, n_kv_heads, head_dim] through `pages`) and its new ones
    /// (`k_new`/`v_new` [rows, n_kv_heads, head_dim]). `q` and `out` are [rows, n_heads, head_dim]. Query
    /// head h reads kv head h / (n_heads / n_kv_heads). Softmax in f32. The cache is not modified, and rows of
    /// `out` outside the given sequences are left as they are (the model calls this once per cache arena).
    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        q: &Self::Buffer,
        k_new: &Self::Buffer,
        v_new: &Self::Buffer,
        k_cache: &Self::Buffer,
        v_cache: &Self::Buffer,
        pages: KvPages<'_>,
        seqs: &[AttnSeq],
        p: &AttnParams,
        out: &Self::Buffer,
    ) -> Result<()> {
        let call = ops::Attention { q, k_new, v_new, k_cache, v_cache, pages, seqs, p, out };
        check::attention(self, &call).map_err(|msg| refused::<Self>(msg))?;
        self.run_attention(&call)
    }
    /// [`Backend::attention`] once its arguments are checked ([`check::attention`]).
    fn run_attention(&self, call: &ops::Attention<'_, Self>) -> Result<()>;

    /// Writes the new keys/values of every sequence into its cache slots, in the cache's format
    /// (`pages.dtype`, quantized per kv head where it is a byte format): row `q_start + t` goes to the slot
    /// of position `pos0 + t` ([`KvPages::slot`]; a step longer than a ring of `slot_cap` slots leaves it
    /// holding its last `slot_cap` tokens). Rows are `[kv_heads, head_dim]`.
    #[allow(clippy::too_many_arguments)]
    fn kv_store(
        &self,
        k_new: &Self::Buffer,
        v_new: &Self::Buffer,
        k_cache: &Self::Buffer,
        v_cache: &Self::Buffer,
        pages: KvPages<'_>,
        seqs: &[AttnSeq],
        kv_heads: usize,
        head_dim: usize,
    ) -> Result<()> {
        let call = ops::KvStore { k_new, v_new, k_cache, v_cache, pages, seqs, kv_heads, head_dim };
        check::kv_store(self, &call).map_err(|msg| refused::<Self>(msg))?;
        self.run_kv_store(&call)
    }
    /// [`Backend::kv_store`] once its arguments are checked ([`check::kv_store`]).
    fn run_kv_store(&self, call: &ops::KvStore<'_, Self>) -> Result<()>;

    /// `acc[i] += x[i]` for i < n (the residual add), in place on `acc`.
    fn add(&self, acc: &Self::Buffer, x: &Self::Buffer, n: usize) -> Result<()> {
        let call = ops::Add { acc, x, n };
        check::add(self, &call).map_err(|msg| refused::<Self>(msg))?;
        self.run_add(&call)
    }
    /// [`Backend::add`] once its arguments are checked ([`check::add`]).
    fn run_add(&self, call: &ops::Add<'_, Self>) -> Result<()>;

    /// `gate[i] = silu(gate[i]) · up[i]` for i < n, in place on `gate`.
    fn silu_mul(&self, gate: &Self::Buffer, up: &Self::Buffer, n: usize) -> Result<()> {
        let call = ops::SiluMul { gate, up, n };
        check::silu_mul(self, &call).map_err(|msg| refused::<Self>(msg))?;
        self.run_silu_mul(&call)
    }
    /// [`Backend::silu_mul`] once its arguments are checked ([`check::silu_mul`]).
    fn run_silu_mul(&self, call: &ops::SiluMul<'_, Self>) -> Result<()>;

    /// The first half of a SwiGLU MLP: `out[m, F] = silu(x · gate_wᵀ) ⊙ (x · up_wᵀ)` for nn.Linear weights
    /// [F, K] (`width` = F). `scratch` holds m·F elements the op may overwrite. The default is two matmuls
    /// and [`Backend::silu_mul`]; a backend may fuse them (one pass over both weights, no intermediate).
    #[allow(clippy::too_many_arguments)]
    fn swiglu(
        &self,
        x: &Self::Buffer,
        m: usize,
        gate_w: &Self::Weight,
        up_w: &Self::Weight,
        width: usize,
        out: &Self::Buffer,
        scratch: &Self::Buffer,
    ) -> Result<()> {
        let call = ops::Swiglu { x, m, gate_w, up_w, width, out, scratch };
        check::swiglu(self, &call).map_err(|msg| refused::<Self>(msg))?;
        self.run_swiglu(&call)
    }

    /// [`Backend::swiglu`] once its arguments are checked.
    fn run_swiglu(&self, call: &ops::Swiglu<'_, Self>) -> Result<()> {
        swiglu_unfused(self, call)
    }

    /// The Llama 4 router on logits [rows, n_experts]: per row, the top `k` experts by raw logit
    /// (`idx` u32 [rows, k], highest first, lower index first on ties) and their scores
    /// `sigmoid(logit)` (`score` f32 [rows, k]). No softmax, no renormalisation.
    fn router_topk(
        &self,
        logits: &Self::Buffer,
        rows: usize,
        n_experts: usize,
        k: usize,
        idx: &Self::Buffer,
        score: &Self::Buffer,
    ) -> Result<()> {
        let call = ops::RouterTopk { logits, rows, n_experts, k, idx, score };
        check::router_topk(self, &call).map_err(|msg| refused::<Self>(msg))?;
        self.run_router_topk(&call)
    }
    /// [`Backend::router_topk`] once its arguments are checked ([`check::router_topk`]).
    fn run_router_topk(&self, call: &ops::RouterTopk<'_, Self>) -> Result<()>;

    /// Routed experts, accumulated: for each row r and each of its k choices (e = idx[r, c], s = score[r, c]),
    /// `u = s · x[r]`, `out[r] += (silu(u·G_e) ⊙ (u·U_e)) · Dn_e`, where `gate_up` is the fused checkpoint
    /// tensor [E, D, 2F] (G_e = columns 0..F, U_e = F..2F; x·W orientation) and `down` is [E, F, D]. A row's
    /// choices are added in choice order, so which expert sits at which index does not change the result.
    /// A choice with e ≥ E adds nothing (the expert cache runs a step's experts in rounds that way).
    #[allow(clippy::too_many_arguments)]
    fn moe(
        &self,
        x: &Self::Buffer,
        rows: usize,
        idx: &Self::Buffer,
        score: &Self::Buffer,
        k: usize,
        gate_up: &Self::Weight,
        down: &Self::Weight,
        out: &Self::Buffer,
    ) -> Result<()> {
        let call = ops::Moe { x, rows, idx, score, k, gate_up, down, out };
        check::moe(self, &call).map_err(|msg| refused::<Self>(msg))?;
        self.run_moe(&call)
    }
    /// [`Backend::moe`] once its arguments are checked ([`check::moe`]).
    fn run_moe(&self, call: &ops::Moe<'_, Self>) -> Result<()>;

    /// `out[i, :] = x[rows[i], :]` for i < n; `rows` u32 [n], rows of length `dim`.
    fn gather_rows(
        &self,
        x: &Self::Buffer,
        rows: &Self::Buffer,
        n: usize,
        dim: usize,
        out: &Self::Buffer,
    ) -> Result<()> {
        let call = ops::GatherRows { x, rows, n, dim, out };
        check::gather_rows(self, &call).map_err(|msg| refused::<Self>(msg))?;
        self.run_gather_rows(&call)
    }
    /// [`Backend::gather_rows`] once its arguments are checked ([`check::gather_rows`]).
    fn run_gather_rows(&self, call: &ops::GatherRows<'_, Self>) -> Result<()>;

    /// The next token of each of `rows` rows of `logits` [rows, vocab], into `out` (u32 [rows]), exactly as
    /// [`crate::sampling::pick`] defines it, with the uniform draw `draws[r]` ∈ [0, 1) and the ids already in
    /// that sequence `history[r]` (read only when the repetition penalty is on). `logits` is overwritten.
    #[allow(clippy::too_many_arguments)]
    fn sample(
        &self,
        logits: &Self::Buffer,
        rows: usize,
        vocab: usize,
        params: &SamplingParams,
        draws: &[f32],
        history: &[&[u32]],
        out: &Self::Buffer,
    ) -> Result<()> {
        let call = ops::Sample { logits, rows, vocab, params, draws, history, out };
        check::sample(self, &call).map_err(|msg| refused::<Self>(msg))?;
        self.run_sample(&call)
    }
    /// [`Backend::sample`] once its arguments are checked ([`check::sample`]).
    fn run_sample(&self, call: &ops::Sample<'_, Self>) -> Result<()>;

    /// Constrained decoding: the logits of the tokens a row may not take become -inf, which
    /// [`Backend::sample`] gives no weight (temperature, top-k, top-p and min-p then apply among the allowed
    /// tokens). `mask` is u32 [rows, vocab.div_ceil(32)]: token t of row r is allowed when bit t % 32 of word
    /// r · words + t / 32 is set, the layout of llguidance's token sets; bits past the vocabulary are ignored.
    /// The host writes the mask while the step's forward runs, so a constrained step reads back no more than
    /// an unconstrained one. A row whose mask allows nothing is left all -inf.
    fn mask_logits(&self, logits: &Self::Buffer, rows: usize, vocab: usize, mask: &Self::Buffer) -> Result<()> {
        let call = ops::MaskLogits { logits, rows, vocab, mask };
        check::mask_logits(self, &call).map_err(|msg| refused::<Self>(msg))?;
        self.run_mask_logits(&call)
    }
    /// [`Backend::mask_logits`] once its arguments are checked ([`check::mask_logits`]).
    fn run_mask_logits(&self, call: &ops::MaskLogits<'_, Self>) -> Result<()>;
}

/// [`Backend::matmuls`] as one matmul per weight: the default, and a backend's way when it does not fuse a call.
pub fn matmuls_each<B: Backend + ?Sized>(be: &B, call: &ops::Matmuls<'_, B>) -> Result<()> {
    call.ws.iter().zip(call.outs).try_for_each(|(w, out)| be.matmul(call.x, call.m, w, out))
}

/// [`Backend::swiglu`] as two matmuls and `silu_mul`: the default, and a backend's way when it does not fuse a
/// call.
pub fn swiglu_unfused<B: Backend + ?Sized>(be: &B, call: &ops::Swiglu<'_, B>) -> Result<()> {
    let &ops::Swiglu { x, m, gate_w, up_w, width, out, scratch } = call;
    be.matmul(x, m, gate_w, out)?;
    be.matmul(x, m, up_w, scratch)?;
    be.silu_mul(out, scratch, m * width)
}

/// A call an op's check refused, as the backend's error.
fn refused<B: Backend + ?Sized>(msg: String) -> HerdError {
    HerdError::Backend { backend: B::KIND.into(), msg }
}
