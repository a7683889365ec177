//! `herd bench --context N,...`: decode speed at depth. The KV cache, sized for the depth up front, is filled
//! with N positions of random keys and values written by the backend's kv_store (what attention costs does
//! not depend on the values) instead of running an N-token prefill, then tokens are decoded one at a time; the report gives the bytes each token reads: weights, and the keys and values
//! its attention reads (every position in full-attention layers, the current chunk in chunked ones).

use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;
use herd_core::backend::Backend;
use herd_core::config::{AttnKind, TextConfig};
use herd_core::kv_format::KvDtype;
use herd_core::model::{Pick, Picked};
use herd_core::sampling::SamplingParams;

use crate::bench::{decode_weight_bytes, load, Loaded, Synth};
use crate::files::{kv_dtypes_name, LoadOptions, ModelFiles};
use crate::BenchArgs;

/// Bytes of keys and values the attention of the token at position `p` reads, over every layer, with keys
/// and values of global and chunked layers in `dtypes`.
pub(crate) fn kv_bytes_read(cfg: &TextConfig, dtypes: [KvDtype; 2], p: usize) -> Result<usize> {
    let per_position = |d: KvDtype| {
        // A page's keys and values over its slots (q4 keys' parameters are per page).
        let page = herd_core::backend::DEFAULT_KV_PAGE;
        Ok::<_, anyhow::Error>(
            d.page_bytes(cfg.num_key_value_heads, cfg.head_dim, page).map_err(|e| anyhow::anyhow!("{e}"))? / page,
        )
    };
    let (global, chunked) = (per_position(dtypes[0])?, per_position(dtypes[1])?);
    Ok(cfg
        .layer_types
        .iter()
        .map(|k| match (k, cfg.attention_chunk_size) {
            (AttnKind::Chunked, Some(c)) => (p % c + 1) * chunked,
            _ => (p + 1) * global,
        })
        .sum::<usize>())
}

pub fn bench_context<B: Backend>(
    backend: Arc<B>,
    files: &ModelFiles,
    a: &BenchArgs,
    synthetic: Option<&Synth<'_>>,
    opts: &LoadOptions,
) -> Result<()> {
    let name = backend.name();
    let Loaded { cfg, model, describe, synth, load_s } = load(backend, files, synthetic, opts)?;
    let kv = kv_dtypes_name(model.kv_dtypes());
    let (weight_bytes, _) = decode_weight_bytes(files, &synth, &model, &cfg)?;
    let gen = a.gen_tokens.max(1);
    let greedy = SamplingParams::default();
    let mut depths = a.context.clone();
    depths.sort_unstable();
    depths.dedup();
    if !a.json {
        println!("model: {describe}");
        println!("backend: {name}");
        println!("load: {load_s:.2} s");
        println!(
            "decode at depth: the KV cache filled to the depth with random keys and values by kv_store (not computed \
             by a prefill), then {gen} \
             token(s) decoded one at a time, best of {} after a warm-up; KV in {kv}, pages of {} slots",
            a.repeat.max(1),
            model.new_cache()?.page_size()
        );
    }
    let mut rows = Vec::new();
    for &depth in &depths {
        let mut best = f64::INFINITY;
        let mut held = 0;
        for rep in 0..=a.repeat.max(1) {
            let mut cache = model.new_cache()?;
            let seq = cache.add_sequence();
            cache.reserve_for(model.backend(), 1, depth + gen, 0)?;
            cache.fill_random(model.backend(), seq, depth, depth as u64)?;
            let mut tok = (depth % cfg.text.vocab_size) as u32;
            let t0 = Instant::now();
            for _ in 0..gen {
                let pick = [Pick::Sample { params: &greedy, draw: 0.0, history: &[], mask: None }];
                let got = pollster::block_on(model.forward_pick(&mut cache, &[(seq, &[tok])], &[], &pick))?;
                match got.first() {
                    Some(Picked::Id(id)) => tok = *id,
                    _ => anyhow::bail!("the decode step picked no token"),
                }
            }
            let secs = t0.elapsed().as_secs_f64();
            if rep > 0 {
                best = best.min(secs);
            }
            held = cache.bytes();
        }
        let mut kv_read = 0;
        for p in depth..depth + gen {
            kv_read += kv_bytes_read(&cfg.text, model.kv_dtypes(), p)?;
        }
        kv_read /= gen;
        let tps = gen as f64 / best;
        let per_token = weight_bytes + kv_read;
        let gbs = per_token as f64 * tps / 1e9;
        if a.json {
            rows.push(serde_json::json!({
                "context": depth, "gen_tokens": gen, "decode_tok_s": tps, "ms_per_token": 1e3 / tps,
                "kv_bytes_held": held, "kv_bytes_read_per_token": kv_read,
                "weight_bytes_per_token": weight_bytes, "gb_s": gbs,
            }));
        } else {
            println!(
                "context {depth}: {tps:.2} tok/s ({:.2} ms/token); KV held {:.1} MiB; per token {:.1} MiB of KV + {:.1} MiB of weights read = {gbs:.2} GB/s",
                1e3 / tps,
                held as f64 / (1 << 20) as f64,
                kv_read as f64 / (1 << 20) as f64,
                weight_bytes as f64 / (1 << 20) as f64,
            );
        }
    }
    if a.json {
        let j = serde_json::json!({
            "model": describe, "backend": name, "load_s": load_s, "kv_filled": "random", "kv_dtype": kv, "depths": rows,
            "synthetic": synth.as_ref().map(|s| s.0.clone()),
        });
        println!("{j}");
    }
    Ok(())
}
