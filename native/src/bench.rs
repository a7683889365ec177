//! `herd bench`: prefill and decode speed and peak memory on a random prompt.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;
use herd_core::backend::Backend;
use herd_core::model::Rows;
use herd_core::sampling::argmax;
use rand::{Rng, SeedableRng};

use crate::files::ModelFiles;
use crate::BenchArgs;

/// Peak resident memory of this process (Linux), in bytes.
fn peak_rss() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

pub fn bench<B: Backend>(backend: Arc<B>, files: &ModelFiles, a: &BenchArgs) -> Result<()> {
    let name = backend.name();
    let t_load = Instant::now();
    let (cfg, model) = files.load(backend)?;
    let load_s = t_load.elapsed().as_secs_f64();
    let v = cfg.text.vocab_size;
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let prompt: Vec<u32> = (0..a.prompt_tokens.max(1)).map(|_| rng.random_range(0..v as u32)).collect();
    let (mut best_prefill, mut best_decode) = (f64::INFINITY, f64::INFINITY);
    for rep in 0..=a.repeat.max(1) {
        let mut cache = model.new_cache()?;
        let seq = cache.add_sequence();
        let t0 = Instant::now();
        let logits = model.forward(&mut cache, &[(seq, &prompt)], Rows::Last)?;
        let prefill = t0.elapsed().as_secs_f64();
        let mut next = argmax(&logits);
        let t1 = Instant::now();
        for _ in 0..a.gen_tokens {
            let l = model.forward(&mut cache, &[(seq, &[next])], Rows::Last)?;
            next = argmax(&l);
        }
        let decode = t1.elapsed().as_secs_f64();
        if rep > 0 {
            best_prefill = best_prefill.min(prefill);
            best_decode = best_decode.min(decode);
        }
    }
    let prefill_tps = prompt.len() as f64 / best_prefill;
    let decode_tps = a.gen_tokens as f64 / best_decode.max(1e-12);
    let peak = peak_rss().unwrap_or(0);
    if a.json {
        println!(
            "{}",
            serde_json::json!({
                "model": files.describe(), "backend": name, "prompt_tokens": prompt.len(), "gen_tokens": a.gen_tokens,
                "load_s": load_s, "prefill_tok_s": prefill_tps, "decode_tok_s": decode_tps, "peak_rss_bytes": peak,
            })
        );
    } else {
        println!("model: {}", files.describe());
        println!("backend: {name}");
        println!("load: {load_s:.2} s");
        println!("prefill: {} tokens in {:.1} ms = {prefill_tps:.1} tok/s", prompt.len(), best_prefill * 1e3);
        println!("decode: {} tokens in {:.1} ms = {decode_tps:.1} tok/s", a.gen_tokens, best_decode * 1e3);
        println!("peak memory (RSS): {:.1} MiB", peak as f64 / (1024.0 * 1024.0));
    }
    Ok(())
}
