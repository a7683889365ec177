//! Token sampling on the device (sample.cu), exactly as herd_core::sampling::pick defines it.

use herd_core::backend::ops;
use herd_core::error::Result;
use herd_core::sampling::{history_table, min_p_threshold, sample_flags};

use crate::kernel::{kernel, params, DevPtr};
use crate::CudaBackend;

params! {
    pub struct SampleParams {
        pub logits: DevPtr, pub hist: DevPtr, pub draws: DevPtr, pub out: DevPtr, pub cand: DevPtr, pub rows: u32,
        pub vocab: u32, pub temp: f32, pub topk: u32, pub topp: f32, pub ln_minp: f32, pub pen: f32, pub flags: u32,
    }
    /// `n`: logits (rows · vocab); `words`: u32 words of mask per row.
    pub struct MaskLogitsParams { pub logits: DevPtr, pub mask: DevPtr, pub n: u32, pub vocab: u32, pub words: u32, pub pad: u32 }
}

kernel!(Sample: "sample", SampleParams => "sample");
kernel!(MaskLogits: "sample", MaskLogitsParams => "mask_logits");

impl CudaBackend {
    pub(crate) fn sample_impl(&self, call: &ops::Sample<'_, CudaBackend>) -> Result<()> {
        let &ops::Sample { logits, rows, vocab, params, draws, history, out } = call;
        let _op = self.dev.op();
        if rows == 0 {
            return Ok(());
        }
        let hist = history_table(history, params.repetition_penalty != 1.0);
        let flags = sample_flags(params);
        let draw_bits: Vec<u32> = draws.iter().map(|u| u.to_bits()).collect();
        // Draws first: the history, whose length changes every token, goes last in the step's metadata.
        let dm = self.dev.meta(&draw_bits)?;
        let hm = self.dev.meta(&hist)?;
        let cand = self.dev.scratch("sample candidates", rows * vocab * 4)?;
        let p = SampleParams {
            logits: logits.at(),
            hist: hm,
            draws: dm,
            out: out.at(),
            cand: DevPtr::new(cand),
            rows: rows as u32,
            vocab: vocab as u32,
            temp: params.temperature,
            topk: params.top_k.min(u32::MAX as usize) as u32,
            topp: params.top_p,
            ln_minp: min_p_threshold(params.min_p.max(f32::MIN_POSITIVE)),
            pen: params.repetition_penalty,
            flags,
        };
        self.launch(Sample, (rows as u32, 1, 1), 1024, 0, &p)
    }

    /// Backend::mask_logits (shapes checked in core).
    pub(crate) fn mask_logits_impl(&self, call: &ops::MaskLogits<'_, CudaBackend>) -> Result<()> {
        let &ops::MaskLogits { logits, rows, vocab, mask } = call;
        let _op = self.dev.op();
        let n = rows * vocab;
        if n == 0 {
            return Ok(());
        }
        let p = MaskLogitsParams {
            logits: logits.at(),
            mask: mask.at(),
            n: n as u32,
            vocab: vocab as u32,
            words: vocab.div_ceil(32) as u32,
            pad: 0,
        };
        self.launch(MaskLogits, (crate::blocks(n, 256), 1, 1), 256, 0, &p)
    }
}
