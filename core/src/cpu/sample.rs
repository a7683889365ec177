//! Token sampling on the CPU: each row through [`crate::sampling::pick`], the definition the device kernels
//! follow.

use super::pool;

use super::{err, need};
use crate::error::Result;
use crate::sampling::{pick, SamplingParams};

pub fn sample(
    logits: &mut [f32],
    rows: usize,
    vocab: usize,
    params: &SamplingParams,
    draws: &[f32],
    history: &[&[u32]],
    out: &mut [u32],
) -> Result<()> {
    need("sample logits", logits.len(), rows * vocab)?;
    need("sample out", out.len(), rows)?;
    if vocab == 0 {
        return Err(err("sample: empty vocabulary"));
    }
    let o = pool::Shared::new(&mut out[..rows]);
    // SAFETY: out[r] is row r's task's alone.
    pool::chunks_mut(&mut logits[..rows * vocab], vocab, |r, row| unsafe {
        o.slice(r, 1)[0] = pick(row, history[r], params, draws[r])
    });
    Ok(())
}

/// [`crate::backend::Backend::mask_logits`]: a token whose bit in its row's mask is clear gets -inf.
pub fn mask_logits(logits: &mut [f32], rows: usize, vocab: usize, mask: &[u32]) {
    let words = vocab.div_ceil(32);
    if words == 0 {
        return;
    }
    for (row, m) in logits[..rows * vocab].chunks_mut(vocab).zip(mask.chunks(words)) {
        for (t, l) in row.iter_mut().enumerate() {
            if m[t / 32] >> (t % 32) & 1 == 0 {
                *l = f32::NEG_INFINITY;
            }
        }
    }
}
