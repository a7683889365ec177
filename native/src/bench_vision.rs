//! `herd bench --images 1,16`: the time to encode an image of each tile count through the vision tower
//! (patch embedding to the projector's rows, read back), best of `--repeat` after a warm-up. The tower comes
//! from `--model`, or with `--synthetic` is built with the published vision_config and random weights.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use herd_core::backend::Backend;
use herd_core::vision::encoder::VisionTower;
use rand::{Rng, SeedableRng};

use crate::files::ModelFiles;
use crate::{synthetic, BenchArgs};

pub fn bench_images<B: Backend>(backend: Arc<B>, files: &ModelFiles, a: &BenchArgs) -> Result<()> {
    if a.images.contains(&0) {
        bail!("--images takes tile counts of at least 1");
    }
    let t_load = Instant::now();
    let (tower, describe) = match &a.synthetic {
        Some(name) => {
            let (dtype, plan) = synthetic::quant_format(a.quant.as_deref())?;
            let fmt = plan.as_ref().map_or(dtype.name().to_owned(), |p| p.name());
            let (cfg, weights) = synthetic::synthetic(name, 1, dtype, plan)?;
            let vision = cfg.vision.as_ref().context("the synthetic config has a vision_config")?;
            let tower = VisionTower::load(&*backend, &weights, vision, cfg.text.hidden_size)?;
            (
                tower,
                format!("synthetic {name} vision tower ({} layers, random {fmt} weights)", vision.num_hidden_layers),
            )
        }
        None => {
            let cfg = files.config()?;
            let vision = cfg.vision.as_ref().with_context(|| format!("{} has no vision tower", files.describe()))?;
            let tower = VisionTower::load(&*backend, &files.checkpoint()?, vision, cfg.text.hidden_size)
                .context("loading the vision tower")?;
            (tower, format!("{} vision tower ({} layers)", files.describe(), vision.num_hidden_layers))
        }
    };
    let load_s = t_load.elapsed().as_secs_f64();
    let c = &tower.cfg;
    let tile_len = c.num_channels * c.image_size * c.image_size;
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let mut results = Vec::new();
    for &tiles in &a.images {
        // The pixels and the tower's activations per tile (its tokens, several hidden-wide rows each) must fit.
        let per_tile = tile_len.saturating_add(
            c.patches_per_side()
                .pow(2)
                .saturating_add(1)
                .saturating_mul(c.intermediate_size.max(c.hidden_size))
                .saturating_mul(4),
        );
        let bytes = herd_core::limits::mul("--images", tiles, per_tile.saturating_mul(4))?;
        herd_core::limits::check_host_alloc(&format!("--images {tiles}"), bytes as u128)?;
        let px: Vec<f32> = (0..tiles * tile_len).map(|_| rng.random_range(-1.0..1.0)).collect();
        let mut best = f64::INFINITY;
        for rep in 0..=a.repeat.max(1) {
            let t0 = Instant::now();
            let rows = tower.encode(&*backend, &px, tiles)?;
            backend.read(&rows)?;
            if rep > 0 {
                best = best.min(t0.elapsed().as_secs_f64());
            }
        }
        results.push((tiles, best));
    }
    if a.json {
        let rows: Vec<_> = results
            .iter()
            .map(|&(t, s)| serde_json::json!({"tiles": t, "seconds": s, "tiles_per_s": t as f64 / s}))
            .collect();
        let j = serde_json::json!({"backend": backend.name(), "model": describe, "load_s": load_s,
            "tokens_per_tile": tower.tokens_per_tile(), "encode": rows});
        println!("{j}");
        return Ok(());
    }
    println!("{} on {}", describe, backend.name());
    println!("load: {load_s:.2} s; {} <|patch|> tokens per tile", tower.tokens_per_tile());
    for (tiles, s) in results {
        println!("encode {tiles:>2} tiles: {s:>8.3} s ({:.2} tiles/s)", tiles as f64 / s);
    }
    Ok(())
}
