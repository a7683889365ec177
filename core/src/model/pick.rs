//! What a forward pass gives back per sequence ([`Pick`]): nothing, its logits, or its next token sampled on
//! the device, so that generation reads back one id per sequence rather than a row of logits.

use crate::backend::Backend;
use crate::constrain::MaskRef;
use crate::error::Result;
use crate::sampling::SamplingParams;

use super::Llama4;

/// What [`Llama4::forward_pick`] gives back for one sequence of the batch.
#[derive(Debug, Clone, Copy)]
pub enum Pick<'a> {
    /// Nothing (a prompt that is still being read).
    Nothing,
    /// The logits of its last token, read back (for what the host does with them: log-probabilities,
    /// penalties the device does not apply).
    Logits,
    /// Its next token, picked on the device exactly as [`crate::sampling::pick`] defines it with `params`,
    /// the uniform draw `draw` ∈ [0, 1) and the ids already in the sequence (`history`, read only when the
    /// repetition penalty is on), among the tokens `mask` allows when it is given (constrained decoding:
    /// [`Backend::mask_logits`] on the device first; a mask that failed to compute allows every token, and
    /// the caller ends that sequence).
    Sample { params: &'a SamplingParams, draw: f32, history: &'a [u32], mask: Option<MaskRef<'a>> },
}

/// One sequence's answer from [`Llama4::forward_pick`].
#[derive(Debug, Clone, PartialEq)]
pub enum Picked {
    Nothing,
    Logits(Vec<f32>),
    Id(u32),
}

impl<B: Backend> Llama4<B> {
    /// What `picks` asks of each of `rows` rows of `logits`: the rows wanted as logits are read back first,
    /// then each group of rows to sample with the same parameters is sampled on the device (in place when
    /// the group is every row, else gathered into a buffer of its own) and its ids read back.
    pub(super) async fn pick(
        &self,
        logits: &B::Buffer,
        rows: usize,
        picks: &[Pick<'_>],
        ids: &B::Buffer,
    ) -> Result<Vec<Picked>> {
        let be = &*self.backend;
        let v = self.cfg.vocab_size;
        let mut out = vec![Picked::Nothing; rows];
        if picks.iter().any(|p| matches!(p, Pick::Logits)) {
            let host = be.read_async(logits).await?;
            for (r, p) in picks.iter().enumerate() {
                if matches!(p, Pick::Logits) {
                    out[r] = Picked::Logits(host[r * v..(r + 1) * v].to_vec());
                }
            }
        }
        // Rows to sample, grouped by their parameters (the seed only shapes the draws, made on the host).
        let mut groups: Vec<(SamplingParams, Vec<usize>)> = Vec::new();
        for (r, p) in picks.iter().enumerate() {
            if let Pick::Sample { params, .. } = p {
                let key = SamplingParams { seed: None, ..**params };
                match groups.iter_mut().find(|g| g.0 == key) {
                    Some(g) => g.1.push(r),
                    None => groups.push((key, vec![r])),
                }
            }
        }
        for (params, members) in &groups {
            let n = members.len();
            let (draws, history): (Vec<f32>, Vec<&[u32]>) = members
                .iter()
                .map(|&r| match picks[r] {
                    Pick::Sample { draw, history, .. } => (draw, history),
                    _ => (0.0, &[][..]),
                })
                .unzip();
            // The group's masks, a row of ones for a member without one.
            let mut masks: Option<Vec<u32>> = None;
            let words = v.div_ceil(32);
            for (k, &r) in members.iter().enumerate() {
                if let Pick::Sample { mask: Some(m), .. } = picks[r] {
                    let all = masks.get_or_insert_with(|| vec![u32::MAX; n * words]);
                    if let Some(w) = m.words()? {
                        all[k * words..(k + 1) * words].copy_from_slice(&w);
                    }
                }
            }
            let masks = masks.map(|m| be.upload_u32(&m)).transpose()?;
            let got = if n == rows {
                if let Some(m) = &masks {
                    be.mask_logits(logits, rows, v, m)?;
                }
                be.sample(logits, rows, v, params, &draws, &history, ids)?;
                be.read_u32_async(ids).await?
            } else {
                let which = be.upload_u32(&members.iter().map(|&r| r as u32).collect::<Vec<_>>())?;
                let sel = be.alloc(n * v)?;
                let picked = be.upload_u32(&vec![0; n])?;
                be.gather_rows(logits, &which, n, v, &sel)?;
                if let Some(m) = &masks {
                    be.mask_logits(&sel, n, v, m)?;
                }
                be.sample(&sel, n, v, params, &draws, &history, &picked)?;
                be.read_u32_async(&picked).await?
            };
            for (&r, &id) in members.iter().zip(&got) {
                out[r] = Picked::Id(id);
            }
        }
        Ok(out)
    }
}
