//! Each op's arguments as one value: what [`super::Backend`]'s op methods check ([`super::check`]) and then
//! hand to the backend (`Backend::run_<op>`), so a backend receives a call whose shapes, kinds and aliasing
//! are already checked, and its kernels take the arguments by name.

use super::{Act, AttnParams, AttnSeq, Backend, KvPages};
use crate::sampling::SamplingParams;

/// The arguments of [`Backend::embed`] (see there).
pub struct Embed<'a, B: Backend + ?Sized> {
    pub table: &'a B::Weight,
    pub ids: &'a B::Buffer,
    pub n: usize,
    pub dim: usize,
    pub out: &'a B::Buffer,
}

/// The arguments of [`Backend::rms_norm`] (see there).
pub struct RmsNorm<'a, B: Backend + ?Sized> {
    pub x: &'a B::Buffer,
    pub weight: Option<&'a B::Weight>,
    pub rows: usize,
    pub dim: usize,
    pub eps: f32,
    pub out: &'a B::Buffer,
}

/// The arguments of [`Backend::add_rms_norm`] (see there).
pub struct AddRmsNorm<'a, B: Backend + ?Sized> {
    pub acc: &'a B::Buffer,
    pub x: &'a B::Buffer,
    pub weight: &'a B::Weight,
    pub rows: usize,
    pub dim: usize,
    pub eps: f32,
    pub out: &'a B::Buffer,
}

/// The arguments of [`Backend::layer_norm`] (see there).
pub struct LayerNorm<'a, B: Backend + ?Sized> {
    pub x: &'a B::Buffer,
    pub weight: &'a B::Weight,
    pub bias: &'a B::Weight,
    pub rows: usize,
    pub dim: usize,
    pub eps: f32,
    pub out: &'a B::Buffer,
}

/// The arguments of [`Backend::bias_act`] (see there).
pub struct BiasAct<'a, B: Backend + ?Sized> {
    pub x: &'a B::Buffer,
    pub bias: Option<&'a B::Weight>,
    pub rows: usize,
    pub dim: usize,
    pub act: Act,
}

/// The arguments of [`Backend::matmul`] (see there).
pub struct Matmul<'a, B: Backend + ?Sized> {
    pub x: &'a B::Buffer,
    pub m: usize,
    pub w: &'a B::Weight,
    pub out: &'a B::Buffer,
}

/// The arguments of [`Backend::matmuls`] (see there).
pub struct Matmuls<'a, B: Backend + ?Sized> {
    pub x: &'a B::Buffer,
    pub m: usize,
    pub ws: &'a [&'a B::Weight],
    pub outs: &'a [&'a B::Buffer],
}

/// The arguments of [`Backend::rope`] (see there).
pub struct Rope<'a, B: Backend + ?Sized> {
    pub x: &'a B::Buffer,
    pub rows: usize,
    pub heads: usize,
    pub head_dim: usize,
    pub positions: &'a B::Buffer,
    pub inv_freq: &'a B::Buffer,
    pub norm_eps: Option<f32>,
}

/// The arguments of [`Backend::attention`] (see there).
pub struct Attention<'a, B: Backend + ?Sized> {
    pub q: &'a B::Buffer,
    pub k_new: &'a B::Buffer,
    pub v_new: &'a B::Buffer,
    pub k_cache: &'a B::Buffer,
    pub v_cache: &'a B::Buffer,
    pub pages: KvPages<'a>,
    pub seqs: &'a [AttnSeq],
    pub p: &'a AttnParams,
    pub out: &'a B::Buffer,
}

/// The arguments of [`Backend::kv_store`] (see there).
pub struct KvStore<'a, B: Backend + ?Sized> {
    pub k_new: &'a B::Buffer,
    pub v_new: &'a B::Buffer,
    pub k_cache: &'a B::Buffer,
    pub v_cache: &'a B::Buffer,
    pub pages: KvPages<'a>,
    pub seqs: &'a [AttnSeq],
    pub kv_heads: usize,
    pub head_dim: usize,
}

/// The arguments of [`Backend::add`] (see there).
pub struct Add<'a, B: Backend + ?Sized> {
    pub acc: &'a B::Buffer,
    pub x: &'a B::Buffer,
    pub n: usize,
}

/// The arguments of [`Backend::silu_mul`] (see there).
pub struct SiluMul<'a, B: Backend + ?Sized> {
    pub gate: &'a B::Buffer,
    pub up: &'a B::Buffer,
    pub n: usize,
}

/// The arguments of [`Backend::swiglu`] (see there).
pub struct Swiglu<'a, B: Backend + ?Sized> {
    pub x: &'a B::Buffer,
    pub m: usize,
    pub gate_w: &'a B::Weight,
    pub up_w: &'a B::Weight,
    pub width: usize,
    pub out: &'a B::Buffer,
    pub scratch: &'a B::Buffer,
}

/// The arguments of [`Backend::router_topk`] (see there).
pub struct RouterTopk<'a, B: Backend + ?Sized> {
    pub logits: &'a B::Buffer,
    pub rows: usize,
    pub n_experts: usize,
    pub k: usize,
    pub idx: &'a B::Buffer,
    pub score: &'a B::Buffer,
}

/// The arguments of [`Backend::moe`] (see there).
pub struct Moe<'a, B: Backend + ?Sized> {
    pub x: &'a B::Buffer,
    pub rows: usize,
    pub idx: &'a B::Buffer,
    pub score: &'a B::Buffer,
    pub k: usize,
    pub gate_up: &'a B::Weight,
    pub down: &'a B::Weight,
    pub out: &'a B::Buffer,
}

/// The arguments of [`Backend::gather_rows`] (see there).
pub struct GatherRows<'a, B: Backend + ?Sized> {
    pub x: &'a B::Buffer,
    pub rows: &'a B::Buffer,
    pub n: usize,
    pub dim: usize,
    pub out: &'a B::Buffer,
}

/// The arguments of [`Backend::sample`] (see there).
pub struct Sample<'a, B: Backend + ?Sized> {
    pub logits: &'a B::Buffer,
    pub rows: usize,
    pub vocab: usize,
    pub params: &'a SamplingParams,
    pub draws: &'a [f32],
    pub history: &'a [&'a [u32]],
    pub out: &'a B::Buffer,
}

/// The arguments of [`Backend::mask_logits`] (see there).
pub struct MaskLogits<'a, B: Backend + ?Sized> {
    pub logits: &'a B::Buffer,
    pub rows: usize,
    pub vocab: usize,
    pub mask: &'a B::Buffer,
}
