//! Driving the model: scoring rows of ids (one prefill, or token by token through the KV cache), batched
//! greedy continuation, and sampled generation with stop tokens and a streaming callback.

use std::time::Duration;

// `std::time::Instant::now` panics in a browser (wasm32-unknown-unknown); web-time's is std's elsewhere.
use web_time::Instant;

use crate::backend::Backend;
use crate::error::{HerdError, Result};
use crate::kv::SeqId;
use crate::model::{ImageRows, Llama4, Rows};
use crate::sampling::{Sampler, SamplingParams};

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

/// Logits `[T, V]` for every token of every row. All rows run as one batch (each its own sequence).
/// `decode`: feed the tokens one step at a time through the KV cache instead of one prefill.
pub fn score_rows<B: Backend>(model: &Llama4<B>, rows: &[Vec<u32>], decode: bool) -> Result<Vec<Vec<f32>>> {
    score_rows_with_images(model, rows, &[], decode)
}

/// [`score_rows`] with image rows in place of `<|patch|>` embeddings: `images` is empty or one entry per row.
pub fn score_rows_with_images<B: Backend>(
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
        let logits = model.forward_with_images(&mut cache, &batch, &imgs, Rows::All)?;
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
        let logits = model.forward_with_images(&mut cache, &batch, &imgs, Rows::Last)?;
        for (j, &i) in live.iter().enumerate() {
            out[i].extend_from_slice(&logits[j * v..(j + 1) * v]);
        }
    }
    Ok(out)
}

/// Greedy continuation of each row by `n` tokens (no stop tokens), all rows decoded as one batch.
pub fn greedy_rows<B: Backend>(model: &Llama4<B>, rows: &[Vec<u32>], n: usize) -> Result<Vec<Vec<u32>>> {
    pollster::block_on(greedy_rows_async(model, rows, n))
}

/// [`greedy_rows`] with image rows in place of the prompts' `<|patch|>` embeddings (one entry per row).
pub fn greedy_rows_with_images<B: Backend>(
    model: &Llama4<B>,
    rows: &[Vec<u32>],
    images: &[Option<ImageRows<'_, B>>],
    n: usize,
) -> Result<Vec<Vec<u32>>> {
    pollster::block_on(greedy_rows_images_async(model, rows, images, n))
}

/// [`greedy_rows`] without blocking (see [`Llama4::forward_async`]).
pub async fn greedy_rows_async<B: Backend>(model: &Llama4<B>, rows: &[Vec<u32>], n: usize) -> Result<Vec<Vec<u32>>> {
    greedy_rows_images_async(model, rows, &[], n).await
}

async fn greedy_rows_images_async<B: Backend>(
    model: &Llama4<B>,
    rows: &[Vec<u32>],
    images: &[Option<ImageRows<'_, B>>],
    n: usize,
) -> Result<Vec<Vec<u32>>> {
    let mut imgs: Vec<_> = images.iter().map(Option::as_ref).collect();
    check_rows(model, rows, n)?;
    let mut cache = model.new_cache()?;
    let ids: Vec<SeqId> = rows.iter().map(|_| cache.add_sequence()).collect();
    let mut out: Vec<Vec<u32>> = vec![Vec::with_capacity(n); rows.len()];
    if n == 0 {
        return Ok(out);
    }
    // Greedy picks on the device: one id per row comes back each step.
    let greedy = SamplingParams::default();
    let draws = vec![0.0; rows.len()];
    let history: Vec<&[u32]> = vec![&[]; rows.len()];
    let mut batch: Vec<(SeqId, &[u32])> = ids.iter().copied().zip(rows.iter().map(|r| r.as_slice())).collect();
    loop {
        let next = model.forward_sample_with_images_async(&mut cache, &batch, &imgs, &greedy, &draws, &history).await?;
        imgs.clear(); // the images go in with the prompts
        for (o, id) in out.iter_mut().zip(next) {
            o.push(id);
        }
        if out[0].len() == n {
            return Ok(out);
        }
        batch = ids.iter().copied().zip(out.iter().map(|o| &o[o.len() - 1..])).collect();
    }
}

/// What a generation should do.
#[derive(Debug, Clone)]
pub struct GenerateParams {
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    /// Generation stops after any of these ids (it is not passed to the callback).
    pub stop_ids: Vec<u32>,
}

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// A stop id was produced.
    Stop(u32),
    /// `max_tokens` were produced.
    Length,
    /// The callback asked to stop.
    Cancelled,
}

/// Timing of one generation.
#[derive(Debug, Clone)]
pub struct GenerateStats {
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
    pub prefill_time: Duration,
    pub decode_time: Duration,
    pub stop: StopReason,
}

impl GenerateStats {
    pub fn prefill_tps(&self) -> f64 {
        self.prompt_tokens as f64 / self.prefill_time.as_secs_f64().max(1e-9)
    }
    /// Decode speed over the tokens after the first (the first comes out of the prefill).
    pub fn decode_tps(&self) -> f64 {
        self.generated_tokens.saturating_sub(1) as f64 / self.decode_time.as_secs_f64().max(1e-9)
    }
}

/// A conversation's running state: its cache sequence and the ids in it, so a multi-turn chat only feeds
/// what each new turn adds.
pub struct Session<B: Backend> {
    cache: crate::kv::KvCache<B>,
    seq: SeqId,
    /// Exactly the ids held in the cache.
    cached: Vec<u32>,
    /// The images whose rows the cache holds (their keys), and how many image rows it holds.
    image_keys: Vec<u64>,
    image_rows: usize,
}

/// One image of a conversation for [`Session::generate_with_images`]: its rows from the vision tower
/// (`rows`: `n` rows from the start of the buffer) and a key telling it from other images (e.g.
/// [`crate::vision::input::pixel_key`]), by which a later turn knows the cache holds the same image.
pub struct SessionImage<'a, B: Backend> {
    pub key: u64,
    pub rows: &'a B::Buffer,
    pub n: usize,
}

impl<B: Backend> Session<B> {
    pub fn new(model: &Llama4<B>) -> Result<Self> {
        let mut cache = model.new_cache()?;
        let seq = cache.add_sequence();
        Ok(Session { cache, seq, cached: Vec::new(), image_keys: Vec::new(), image_rows: 0 })
    }

    /// The ids held in the cache.
    pub fn cached(&self) -> &[u32] {
        &self.cached
    }

    /// Starts over with an empty cache.
    pub fn reset(&mut self, model: &Llama4<B>) -> Result<()> {
        *self = Session::new(model)?;
        Ok(())
    }

    /// Generates after the whole conversation `ids`: if the cache holds a prefix of `ids` only the rest is
    /// fed, otherwise the session restarts. Calls `on_token` for each generated id that is not a stop id
    /// (return false to stop). Returns the generated ids (with a final stop id, if any) and timings.
    pub fn generate(
        &mut self,
        model: &Llama4<B>,
        ids: &[u32],
        params: &GenerateParams,
        sampler: &mut Sampler,
        on_token: &mut dyn FnMut(u32) -> bool,
    ) -> Result<(Vec<u32>, GenerateStats)> {
        pollster::block_on(self.generate_async(model, ids, params, sampler, on_token))
    }

    /// [`Session::generate`] without blocking (see [`Llama4::forward_async`]).
    pub async fn generate_async(
        &mut self,
        model: &Llama4<B>,
        ids: &[u32],
        params: &GenerateParams,
        sampler: &mut Sampler,
        on_token: &mut dyn FnMut(u32) -> bool,
    ) -> Result<(Vec<u32>, GenerateStats)> {
        self.generate_with_images_async(model, ids, 0, &[], params, sampler, on_token).await
    }

    /// [`Session::generate`] for a conversation holding images: `images` are all of its images in order,
    /// whose rows replace its `<|patch|>` (`patch`) tokens' embeddings. The cache is reused while it holds a
    /// prefix of `ids` whose images are the first of `images` (by key).
    #[allow(clippy::too_many_arguments)]
    pub fn generate_with_images(
        &mut self,
        model: &Llama4<B>,
        ids: &[u32],
        patch: u32,
        images: &[SessionImage<'_, B>],
        params: &GenerateParams,
        sampler: &mut Sampler,
        on_token: &mut dyn FnMut(u32) -> bool,
    ) -> Result<(Vec<u32>, GenerateStats)> {
        pollster::block_on(self.generate_with_images_async(model, ids, patch, images, params, sampler, on_token))
    }

    /// [`Session::generate_with_images`] without blocking.
    #[allow(clippy::too_many_arguments)]
    pub async fn generate_with_images_async(
        &mut self,
        model: &Llama4<B>,
        ids: &[u32],
        patch: u32,
        images: &[SessionImage<'_, B>],
        params: &GenerateParams,
        sampler: &mut Sampler,
        on_token: &mut dyn FnMut(u32) -> bool,
    ) -> Result<(Vec<u32>, GenerateStats)> {
        let ctx = model.cfg.max_position_embeddings;
        if ids.len() > ctx {
            return Err(HerdError::Input(format!(
                "prompt of {} tokens is longer than the model's context of {ctx} tokens",
                ids.len()
            )));
        }
        let patches = |t: &[u32]| if images.is_empty() { 0 } else { t.iter().filter(|&&x| x == patch).count() };
        let total: usize = images.iter().map(|i| i.n).sum();
        if patches(ids) != total {
            return Err(HerdError::Input(format!(
                "the prompt has {} image patch tokens but its images give {total} rows",
                patches(ids)
            )));
        }
        let same_images =
            self.image_keys.len() <= images.len() && self.image_keys.iter().zip(images).all(|(k, i)| *k == i.key);
        if !(ids.starts_with(&self.cached) && ids.len() > self.cached.len() && same_images) {
            self.reset(model)?;
        }
        let all = ImageRows { token: patch, parts: images.iter().map(|i| (i.rows, 0, i.n)).collect() };
        let rows = all.skip(self.image_rows);
        let prompt = &ids[self.cached.len()..];
        if prompt.is_empty() {
            return Err(HerdError::Input("empty prompt".into()));
        }
        let max_tokens = params.max_tokens.min(ctx - ids.len());
        // The repetition penalty reads the whole conversation; without it no history goes to the device.
        let penalty = sampler.params().repetition_penalty != 1.0;
        let mut seen = if penalty { ids.to_vec() } else { Vec::new() };
        let t0 = Instant::now();
        let mut prefill_time = None;
        let mut fed: Vec<u32> = prompt.to_vec();
        let mut out = Vec::new();
        let mut stop = StopReason::Length;
        // The rows go in with the prompt; generated tokens take their own embeddings.
        let mut imgs = if images.is_empty() { vec![] } else { vec![Some(&rows)] };
        if max_tokens == 0 {
            // Nothing to generate: the prompt still goes into the cache.
            model.forward_with_images_async(&mut self.cache, &[(self.seq, prompt)], &imgs, Rows::Last).await?;
            self.cached.extend_from_slice(prompt);
            self.image_keys = images.iter().map(|i| i.key).collect();
            self.image_rows = total;
        }
        let mut t1 = Instant::now();
        while out.len() < max_tokens {
            let u = sampler.draw();
            let next = match model
                .forward_sample_with_images_async(
                    &mut self.cache,
                    &[(self.seq, &fed)],
                    &imgs,
                    sampler.params(),
                    &[u],
                    &[&seen],
                )
                .await
            {
                Ok(next) => next,
                Err(e) => {
                    // The cache may hold what failed: start the next turn afresh.
                    self.reset(model)?;
                    return Err(e);
                }
            };
            self.cached.extend_from_slice(&fed);
            if self.cached.len() == ids.len() {
                imgs.clear();
                self.image_keys = images.iter().map(|i| i.key).collect();
                self.image_rows = total;
            }
            if prefill_time.is_none() {
                prefill_time = Some(t0.elapsed());
                t1 = Instant::now();
            }
            let id = next[0];
            out.push(id);
            if penalty {
                seen.push(id);
            }
            if params.stop_ids.contains(&id) {
                stop = StopReason::Stop(id);
                break;
            }
            if !on_token(id) {
                stop = StopReason::Cancelled;
                break;
            }
            fed = vec![id];
        }
        let stats = GenerateStats {
            prompt_tokens: prompt.len(),
            generated_tokens: out.len(),
            prefill_time: prefill_time.unwrap_or_else(|| t0.elapsed()),
            decode_time: t1.elapsed(),
            stop,
        };
        Ok((out, stats))
    }
}
