//! `herd bench --context N,...`: decode speed at depth. The KV cache is filled with N positions of zeros
//! (what attention costs does not depend on the values) instead of running an N-token prefill, then tokens
//! are decoded one at a time; the report gives the bytes each token reads: weights, and the keys and values
//! its attention reads (every position in full-attention layers, the current chunk in chunked ones).

use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;
use herd_core::backend::Backend;
use herd_core::config::{AttnKind, TextConfig};
use herd_core::experts::ExpertCacheOptions;
use herd_core::model::{Pick, Picked};
use herd_core::sampling::SamplingParams;

use crate::bench::{decode_weight_bytes, load, Loaded, Synth};
use crate::files::ModelFiles;
use crate::BenchArgs;

/// Bytes of keys and values the attention of the token at position `p` reads, over every layer (f32).
pub(crate) fn kv_bytes_read(cfg: &TextConfig, p: usize) -> usize {
    let per_position = 2 * cfg.num_key_value_heads * cfg.head_dim * 4;
    cfg.layer_types
        .iter()
        .map(|k| match (k, cfg.attention_chunk_size) {
            (AttnKind::Chunked, Some(c)) => p % c + 1,
            _ => p + 1,
        })
        .sum::<usize>()
        * per_position
}

pub fn bench_context<B: Backend>(
    backend: Arc<B>,
    files: &ModelFiles,
    a: &BenchArgs,
    synthetic: Option<&Synth<'_>>,
    experts: Option<&ExpertCacheOptions>,
) -> Result<()> {
    let name = backend.name();
    let Loaded { cfg, model, describe, synth, load_s } = load(backend, files, synthetic, experts)?;
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
            "decode at depth: the KV cache filled with zeros to the depth (not computed by a prefill), then {gen} \
             token(s) decoded one at a time, best of {} after a warm-up; KV in f32, pages of {} slots",
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
            cache.assume_filled(model.backend(), seq, depth)?;
            let mut tok = (depth % cfg.text.vocab_size) as u32;
            let t0 = Instant::now();
            for _ in 0..gen {
                let pick = [Pick::Sample { params: &greedy, draw: 0.0, history: &[] }];
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
        let kv_read = (depth..depth + gen).map(|p| kv_bytes_read(&cfg.text, p)).sum::<usize>() / gen;
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
            "model": describe, "backend": name, "load_s": load_s, "kv_filled": "zeros", "depths": rows,
            "synthetic": synth.as_ref().map(|s| s.0.clone()),
        });
        println!("{j}");
    }
    Ok(())
}
