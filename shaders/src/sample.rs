//! Token sampling on the device (sample.wgsl), exactly as herd_core::sampling::pick defines it.

use herd_core::backend::ops;
use herd_core::error::Result;
use herd_core::sampling::{history_table, min_p_threshold, sample_flags};

use crate::gpu::Gpu;
use crate::kernel::{groups, kernels, params};
use crate::WgpuBackend;

params! {
    /// `top_k`: 0 off; `top_p`: 1 off; `min_p_key`: the min-p threshold as a shifted logit; `flags`: 1 greedy,
    /// 2 min-p, 4 the repetition penalty.
    pub struct SampleParams {
        pub rows: u32,
        pub vocab: u32,
        pub temperature: f32,
        pub top_k: u32,
        pub top_p: f32,
        pub min_p_key: f32,
        pub penalty: f32,
        pub flags: u32,
    }

    /// `n`: logits (rows · vocab); `words`: u32 words of mask per row; `neg_inf`: the bits of -inf (a WGSL
    /// constant cannot be infinite).
    pub struct MaskParams { pub n: u32, pub vocab: u32, pub words: u32, pub neg_inf: u32 }
}

kernels! {
    pub enum Sample: Sample, SampleParams { Rows => "sample" }
}
kernels! {
    pub enum MaskLogits: Sample, MaskParams { Rows => "mask_logits" }
}

pub(crate) fn sample(gpu: &Gpu, call: &ops::Sample<'_, WgpuBackend>) -> Result<()> {
    let &ops::Sample { logits, rows, vocab, params, draws, history, out } = call;
    let _op = gpu.op();
    let hist = history_table(history, params.repetition_penalty != 1.0);
    let p = SampleParams {
        rows: rows as u32,
        vocab: vocab as u32,
        temperature: params.temperature,
        top_k: params.top_k.min(u32::MAX as usize) as u32,
        top_p: params.top_p,
        min_p_key: min_p_threshold(params.min_p.max(f32::MIN_POSITIVE)),
        penalty: params.repetition_penalty,
        flags: sample_flags(params),
    };
    let draw_bits: Vec<u32> = draws.iter().map(|u| u.to_bits()).collect();
    let (hb, db) = (gpu.meta(&hist)?, gpu.meta(&draw_bits)?);
    let cand = gpu.scratch("sample candidates", rows * vocab, false)?;
    let b = [(1, &logits.buf), (2, &hb), (3, &db), (4, &out.buf), (5, &cand)];
    gpu.dispatch(Sample::Rows, 0, &b, &p, rows as u32)
}

/// Backend::mask_logits (shapes checked in core).
pub(crate) fn mask_logits(gpu: &Gpu, call: &ops::MaskLogits<'_, WgpuBackend>) -> Result<()> {
    let &ops::MaskLogits { logits, rows, vocab, mask } = call;
    let _op = gpu.op();
    let n = rows * vocab;
    let p = MaskParams {
        n: n as u32,
        vocab: vocab as u32,
        words: vocab.div_ceil(32) as u32,
        neg_inf: f32::NEG_INFINITY.to_bits(),
    };
    gpu.dispatch(MaskLogits::Rows, 0, &[(1, &logits.buf), (6, &mask.buf)], &p, groups(n, 256))
}
