//! What a forward pass gives back per sequence ([`Pick`]): nothing, its logits, or its next token sampled on
//! the device, so that generation reads back one id per sequence rather than a row of logits.

use crate::backend::Backend;
use crate::constrain::MaskRef;
use crate::error::{HerdError, Result};
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
    /// The argmax of each of its last `n` tokens' logits (lowest id on ties, as greedy [`Pick::Sample`]
    /// picks), as [`Picked::Ids`]: what greedy verification of drafted tokens needs. `n` is at most the
    /// sequence's new tokens.
    Argmax(usize),
    /// The logits of its last `n` tokens, read back as one [`Picked::Logits`] of `n` rows.
    LogitRows(usize),
}

impl Pick<'_> {
    /// The rows of logits it needs: those of the sequence's last `rows()` tokens.
    pub fn rows(&self) -> usize {
        match *self {
            Pick::Argmax(n) | Pick::LogitRows(n) => n,
            _ => 1,
        }
    }
}

/// One sequence's answer from [`Llama4::forward_pick`].
#[derive(Debug, Clone, PartialEq)]
pub enum Picked {
    Nothing,
    Logits(Vec<f32>),
    Id(u32),
    Ids(Vec<u32>),
}

/// The host vectors of [`Llama4::pick`], kept between steps (those of borrowed items kept empty).
#[derive(Default)]
pub(super) struct PickRows {
    draws: Vec<f32>,
    history: Vec<&'static [u32]>,
    ids: Vec<u32>,
}

impl<B: Backend> Llama4<B> {
    /// [`Llama4::pick`] for picks that may each need several rows ([`Pick::rows`], in order: `rows` in all):
    /// each is asked of its rows one by one, and the answers gathered back per pick.
    pub(super) async fn pick_rows(
        &self,
        logits: &B::Buffer,
        rows: usize,
        picks: &[Pick<'_>],
        ids: &B::Buffer,
        kept: &mut PickRows,
        out: Vec<Picked>,
    ) -> Result<Vec<Picked>> {
        if picks.iter().all(|p| p.rows() == 1) {
            return self.pick(logits, rows, picks, ids, kept, out).await;
        }
        let mut each: Vec<Pick<'_>> = Vec::with_capacity(rows);
        for p in picks {
            match *p {
                Pick::Argmax(n) => each.extend(std::iter::repeat_n(
                    Pick::Sample { params: &SamplingParams::GREEDY, draw: 0.0, history: &[], mask: None },
                    n,
                )),
                Pick::LogitRows(n) => each.extend(std::iter::repeat_n(Pick::Logits, n)),
                other => each.push(other),
            }
        }
        let mut got = self.pick(logits, rows, &each, ids, kept, Vec::new()).await?.into_iter();
        let mut out = out;
        out.clear();
        for p in picks {
            let mine: Vec<Picked> = got.by_ref().take(p.rows()).collect();
            out.push(match p {
                Pick::Argmax(_) => Picked::Ids(
                    mine.into_iter()
                        .map(|g| match g {
                            Picked::Id(id) => Ok(id),
                            _ => Err(HerdError::internal("an argmax row gave no id")),
                        })
                        .collect::<Result<_>>()?,
                ),
                Pick::LogitRows(_) => Picked::Logits(
                    mine.into_iter()
                        .flat_map(|g| match g {
                            Picked::Logits(l) => l,
                            _ => Vec::new(),
                        })
                        .collect(),
                ),
                _ => mine.into_iter().next().unwrap_or(Picked::Nothing),
            });
        }
        Ok(out)
    }

    /// What `picks` asks of each of `rows` rows of `logits`, into `out`: the rows wanted as logits are read
    /// back first, then each group of rows to sample with the same parameters is sampled on the device (in
    /// place when the group is every row, else gathered into a buffer of its own) and its ids read back. A
    /// step whose rows all sample with the same parameters (every plain decode step) allocates nothing here.
    pub(super) async fn pick(
        &self,
        logits: &B::Buffer,
        rows: usize,
        picks: &[Pick<'_>],
        ids: &B::Buffer,
        kept: &mut PickRows,
        mut out: Vec<Picked>,
    ) -> Result<Vec<Picked>> {
        let be = &*self.backend;
        let v = self.cfg.vocab_size;
        out.clear();
        out.resize(rows, Picked::Nothing);
        if picks.iter().any(|p| matches!(p, Pick::Logits)) {
            let host = be.read_async(logits).await?;
            for (r, p) in picks.iter().enumerate() {
                if matches!(p, Pick::Logits) {
                    out[r] = Picked::Logits(host[r * v..(r + 1) * v].to_vec());
                }
            }
        }
        // Rows to sample, grouped by their parameters (the seed only shapes the draws, made on the host): one
        // group of every row (None) when they all share them.
        let key = |p: &Pick<'_>| match p {
            Pick::Sample { params, .. } => Some(SamplingParams { seed: None, ..**params }),
            _ => None,
        };
        let every = match picks.first().and_then(key) {
            Some(k) if picks.len() == rows && picks.iter().all(|p| key(p) == Some(k)) => Some(k),
            _ => None,
        };
        let mut groups: Vec<(SamplingParams, Vec<usize>)> = Vec::new();
        if every.is_none() {
            for (r, p) in picks.iter().enumerate() {
                if let Some(k) = key(p) {
                    match groups.iter_mut().find(|g| g.0 == k) {
                        Some(g) => g.1.push(r),
                        None => groups.push((k, vec![r])),
                    }
                }
            }
        }
        let all = every.map(|k| (k, None));
        for (params, members) in all.into_iter().chain(groups.iter().map(|(k, m)| (*k, Some(m.as_slice())))) {
            let n = members.map_or(rows, <[usize]>::len);
            let member = |k: usize| members.map_or(k, |m| m[k]);
            let mut history: Vec<&[u32]> = crate::recycle(std::mem::take(&mut kept.history));
            kept.draws.clear();
            for k in 0..n {
                let (d, h) = match picks[member(k)] {
                    Pick::Sample { draw, history, .. } => (draw, history),
                    _ => (0.0, &[][..]),
                };
                kept.draws.push(d);
                history.push(h);
            }
            // The group's masks, a row of ones for a member without one.
            let mut masks: Option<Vec<u32>> = None;
            let words = v.div_ceil(32);
            for k in 0..n {
                if let Pick::Sample { mask: Some(m), .. } = picks[member(k)] {
                    let all = masks.get_or_insert_with(|| vec![u32::MAX; n * words]);
                    if let Some(w) = m.words()? {
                        all[k * words..(k + 1) * words].copy_from_slice(&w);
                    }
                }
            }
            let masks = masks.map(|m| be.upload_u32(&m)).transpose()?;
            if n == rows {
                if let Some(m) = &masks {
                    be.mask_logits(logits, rows, v, m)?;
                }
                be.sample(logits, rows, v, &params, &kept.draws, &history, ids)?;
                be.read_u32_into(ids, &mut kept.ids).await?;
            } else {
                let which = be.upload_u32(&(0..n).map(|k| member(k) as u32).collect::<Vec<_>>())?;
                let sel = be.alloc(n * v)?;
                let picked = be.upload_u32(&vec![0; n])?;
                be.gather_rows(logits, &which, n, v, &sel)?;
                if let Some(m) = &masks {
                    be.mask_logits(&sel, n, v, m)?;
                }
                be.sample(&sel, n, v, &params, &kept.draws, &history, &picked)?;
                be.read_u32_into(&picked, &mut kept.ids).await?;
            }
            kept.history = crate::recycle(history);
            for (k, &id) in kept.ids.iter().enumerate().take(n) {
                out[member(k)] = Picked::Id(id);
            }
        }
        Ok(out)
    }
}
