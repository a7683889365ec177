//! Driving the model outside the scheduler's requests: scoring rows of ids (one prefill, or token by token
//! through the KV cache, for reference checks), and batched greedy continuation (through the
//! [`Scheduler`], like every generation).

use std::sync::Arc;

use crate::backend::Backend;
use crate::error::{HerdError, Result};
use crate::kv::SeqId;
use crate::model::{ImageRows, Llama4, Rows};
use crate::sampling::SamplingParams;
use crate::schedule::{queue, Event, GenerateParams, Request, Scheduler, SchedulerConfig};

/// Every row, with `gen` tokens more, fits the model's context: checked before anything is allocated.
fn check_rows<B: Backend>(model: &Llama4<B>, rows: &[Vec<u32>], gen: usize) -> Result<()> {
    let ctx = model.cfg.max_position_embeddings;
    if let Some((i, r)) = rows.iter().enumerate().find(|(_, r)| r.len().checked_add(gen).is_none_or(|n| n > ctx)) {
        return Err(HerdError::Input(format!(
            "row {i}: {} ids{} do not fit the model's context of {ctx} positions",
            r.len(),
            if gen > 0 { format!(" and {gen} new tokens") } else { String::new() }
        )));
    }
    Ok(())
}

/// Logits `[T, V]` for every token of every row, all rows as one batch (each its own sequence). `images` is
/// empty or has one entry per row: image rows in place of that row's `<|patch|>` embeddings. `decode`: feed
/// the tokens one step at a time through the KV cache instead of one prefill.
pub async fn score_rows<B: Backend>(
    model: &Llama4<B>,
    rows: &[Vec<u32>],
    images: &[Option<ImageRows<'_, B>>],
    decode: bool,
) -> Result<Vec<Vec<f32>>> {
    if !images.is_empty() && images.len() != rows.len() {
        return Err(HerdError::Input(format!("{} image entries for {} rows", images.len(), rows.len())));
    }
    let img = |i: usize| images.get(i).and_then(Option::as_ref);
    if let Some(i) = rows.iter().position(|r| r.is_empty()) {
        return Err(HerdError::Input(format!("row {i} is empty: a sequence in the batch has no new tokens")));
    }
    let v = model.cfg.vocab_size;
    check_rows(model, rows, 0)?;
    let positions: usize = rows.iter().map(Vec::len).sum();
    crate::limits::check_host_alloc("the logits", positions as u128 * v as u128 * 4)?;
    let mut cache = model.new_cache()?;
    let ids: Vec<SeqId> = rows.iter().map(|_| cache.add_sequence()).collect();
    let mut out: Vec<Vec<f32>> = rows.iter().map(|r| Vec::with_capacity(r.len() * v)).collect();
    if !decode {
        let batch: Vec<(SeqId, &[u32])> = ids.iter().copied().zip(rows.iter().map(|r| r.as_slice())).collect();
        let imgs: Vec<_> = (0..if images.is_empty() { 0 } else { rows.len() }).map(img).collect();
        let logits = model.forward(&mut cache, &batch, &imgs, Rows::All).await?;
        let mut off = 0;
        for (o, r) in out.iter_mut().zip(rows) {
            o.extend_from_slice(&logits[off..off + r.len() * v]);
            off += r.len() * v;
        }
        return Ok(out);
    }
    let steps = rows.iter().map(|r| r.len()).max().unwrap_or(0);
    // Image rows each row has used so far.
    let mut used = vec![0usize; rows.len()];
    for step in 0..steps {
        let live: Vec<usize> = (0..rows.len()).filter(|&i| step < rows[i].len()).collect();
        let batch: Vec<(SeqId, &[u32])> = live.iter().map(|&i| (ids[i], &rows[i][step..step + 1])).collect();
        let parts: Vec<Option<ImageRows<'_, B>>> = live
            .iter()
            .map(|&i| {
                let im = img(i)?;
                let n = usize::from(rows[i][step] == im.token);
                let part = im.skip(used[i]).take(n);
                used[i] += n;
                Some(part)
            })
            .collect();
        let imgs: Vec<_> = if images.is_empty() { Vec::new() } else { parts.iter().map(Option::as_ref).collect() };
        let logits = model.forward(&mut cache, &batch, &imgs, Rows::Last).await?;
        for (j, &i) in live.iter().enumerate() {
            out[i].extend_from_slice(&logits[j * v..(j + 1) * v]);
        }
    }
    Ok(out)
}

/// Greedy continuation of each row by `n` tokens (no stop tokens): every row a request of one
/// [`Scheduler`], all decoded as one batch.
pub async fn greedy_rows<B: Backend>(model: &Arc<Llama4<B>>, rows: &[Vec<u32>], n: usize) -> Result<Vec<Vec<u32>>> {
    greedy_rows_drafted(model, rows, n, None).await
}

/// [`greedy_rows`] with speculative decoding: `drafter` and the most tokens it drafts per step (the tokens
/// are the same; only the forwards it takes change).
pub async fn greedy_rows_drafted<B: Backend>(
    model: &Arc<Llama4<B>>,
    rows: &[Vec<u32>],
    n: usize,
    drafter: Option<(Box<dyn crate::speculate::Drafter>, usize)>,
) -> Result<Vec<Vec<u32>>> {
    check_rows(model, rows, n)?;
    if let Some(i) = rows.iter().position(|r| r.is_empty()) {
        return Err(HerdError::Input(format!("row {i} is empty")));
    }
    let mut out = vec![Vec::with_capacity(n); rows.len()];
    if n == 0 || rows.is_empty() {
        return Ok(out);
    }
    let total: usize = rows.iter().map(Vec::len).sum();
    let cfg = SchedulerConfig {
        max_seqs: rows.len(),
        max_batch_tokens: total.max(rows.len()),
        max_queue: rows.len(),
        prefix_cache_tokens: 0,
        max_context: None,
    };
    let mut s = Scheduler::new(model.clone(), cfg)?;
    if let Some((d, k)) = drafter {
        s.set_drafter(d, k, false)?;
    }
    let mut events = Vec::with_capacity(rows.len());
    for r in rows {
        let params = GenerateParams { max_tokens: n, sampling: SamplingParams::default(), stop_ids: Vec::new() };
        let (sink, q) = queue();
        s.submit(Request::new(r.clone(), params), sink)?;
        events.push(q);
    }
    s.run_to_idle().await?;
    for (o, q) in out.iter_mut().zip(events) {
        while let Some(e) = q.pop() {
            match e {
                Event::Token(t) => o.push(t.id),
                Event::Done(f) => {
                    if let Err(m) = f.reason {
                        return Err(HerdError::Input(m));
                    }
                }
            }
        }
    }
    Ok(out)
}
