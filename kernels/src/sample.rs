//! Token sampling on the device (sample.cu), exactly as herd_core::sampling::pick defines it.

use herd_core::error::Result;
use herd_core::sampling::{check_sample_args, history_table, min_p_threshold, sample_flags, SamplingParams};

use crate::device::{err, f, ptr, u, Arg};
use crate::{need, CudaBackend, CudaBuffer};

impl CudaBackend {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn sample_impl(
        &self,
        logits: &CudaBuffer,
        rows: usize,
        vocab: usize,
        params: &SamplingParams,
        draws: &[f32],
        history: &[&[u32]],
        out: &CudaBuffer,
    ) -> Result<()> {
        let _op = self.dev.op();
        check_sample_args(rows, draws, history)?;
        need("sample logits", logits, rows * vocab)?;
        need("sample out", out, rows)?;
        if vocab == 0 || !out.is_u32 || logits.is_u32 {
            return Err(err("sample: needs f32 logits of a non-empty vocabulary and a u32 output"));
        }
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
        let args = vec![
            ptr(logits.ptr),
            hm,
            dm,
            ptr(out.ptr),
            ptr(cand),
            u(rows),
            u(vocab),
            f(params.temperature),
            u(params.top_k.min(u32::MAX as usize)),
            f(params.top_p),
            f(min_p_threshold(params.min_p.max(f32::MIN_POSITIVE))),
            f(params.repetition_penalty),
            Arg::V(flags as u64),
        ];
        self.launch("sample", "sample", (rows as u32, 1, 1), 1024, 0, args)
    }
}
