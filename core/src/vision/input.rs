//! Images as a prompt takes them: the processor's settings (preprocessor_config.json), each image's plan
//! before any pixel work (so an over-long prompt is refused first), the expansion of the prompt's
//! `<|image|>` placeholders, frames sampled from a video, and the key a conversation tells images apart by.

use std::hash::Hasher;

use super::layout::{image_prompt, plan, ImageTokens, TileOptions, TilePlan};
use super::preprocess::{preprocess, Pixels, RgbImage};
use crate::config::VisionConfig;
use crate::error::{HerdError, Result};
use crate::tokenizer::Tokenizer;

/// The processor's settings for a model: tiles of the tower's `image_size`, and `max_patches` /
/// `resize_to_max_canvas` from preprocessor_config.json (`json`, when the model has one; Llama 4's
/// defaults otherwise: 16 tiles, no upscaling to the canvas).
pub fn tile_options(vision: &VisionConfig, json: Option<&str>) -> Result<TileOptions> {
    let mut o = TileOptions { tile: vision.image_size as u32, ..TileOptions::default() };
    let Some(json) = json else { return Ok(o) };
    let bad = |m: String| HerdError::config("preprocessor_config.json", m);
    let v: serde_json::Value = serde_json::from_str(json).map_err(|e| bad(format!("not valid JSON: {e}")))?;
    if let Some(m) = v.get("max_patches") {
        o.max_tiles = m
            .as_u64()
            .filter(|&m| (1..=256).contains(&m))
            .ok_or_else(|| bad(format!("max_patches must be a count of tiles from 1 to 256, got {m}")))?
            as u32;
    }
    if let Some(r) = v.get("resize_to_max_canvas") {
        o.resize_to_max_canvas =
            r.as_bool().ok_or_else(|| bad(format!("resize_to_max_canvas must be true or false, got {r}")))?;
    }
    if let Some(h) = v.get("size").and_then(|s| s.get("height")) {
        if h.as_u64() != Some(vision.image_size as u64) {
            return Err(bad(format!("size.height {h} differs from vision_config.image_size {}", vision.image_size)));
        }
    }
    Ok(o)
}

/// The ids of the special tokens an image expands into, from the tokenizer.
pub fn image_tokens(tok: &Tokenizer) -> Result<ImageTokens> {
    let id = |s: &str| {
        tok.token_to_id(s)
            .ok_or_else(|| HerdError::Input(format!("the tokenizer has no {s} token: it takes no images")))
    };
    Ok(ImageTokens {
        image_start: id("<|image_start|>")?,
        image_end: id("<|image_end|>")?,
        image: id("<|image|>")?,
        patch: id("<|patch|>")?,
        tile_x_separator: id("<|tile_x_separator|>")?,
        tile_y_separator: id("<|tile_y_separator|>")?,
    })
}

/// An image with its tile plan, before any pixel work.
pub struct PlannedImage {
    pub image: RgbImage,
    pub plan: TilePlan,
}

impl PlannedImage {
    pub fn new(image: RgbImage, opts: &TileOptions) -> Result<Self> {
        let plan = plan(image.height, image.width, opts)?;
        Ok(PlannedImage { image, plan })
    }

    /// The tiles, resized, padded and normalised (docs/llama4.md §4.1).
    pub fn pixels(&self, opts: &TileOptions) -> Result<Pixels> {
        preprocess(&self.image, opts)
    }
}

/// Replaces the `<|image|>` placeholders of `ids` (written by the chat template or the user), in order,
/// with the tokens of each image (`plans`); the counts must match.
pub fn expand_placeholders(ids: &[u32], plans: &[TilePlan], per_tile: usize, t: &ImageTokens) -> Result<Vec<u32>> {
    let found = ids.iter().filter(|&&i| i == t.image).count();
    if found != plans.len() {
        return Err(HerdError::Input(format!(
            "the prompt has {found} image placeholders (<|image|>) for {} images",
            plans.len()
        )));
    }
    let mut next = plans.iter();
    let mut out = Vec::with_capacity(ids.len());
    for &id in ids {
        match (id == t.image).then(|| next.next()).flatten() {
            Some(p) => out.extend(image_prompt(p, per_tile, t)),
            None => out.push(id),
        }
    }
    Ok(out)
}

/// The frames a video of `n` frames is sampled to when at most `max` are kept: evenly spaced, each the
/// middle of its stretch (all of them when `n ≤ max`).
pub fn sample_frames(n: usize, max: usize) -> Vec<usize> {
    if n <= max {
        return (0..n).collect();
    }
    (0..max).map(|i| (2 * i + 1) * n / (2 * max)).collect()
}

/// A key for an image's pixel values (a hash of their bits): a conversation reuses its cache only while the
/// images it already holds are the same.
pub fn pixel_key(pixels: &Pixels) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    h.write_usize(pixels.tiles());
    for v in &pixels.pixel_values {
        h.write_u32(v.to_bits());
    }
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_sampled_evenly() {
        assert_eq!(sample_frames(3, 8), vec![0, 1, 2]);
        assert_eq!(sample_frames(10, 3), vec![1, 5, 8]);
        assert_eq!(sample_frames(100, 4), vec![12, 37, 62, 87]);
        assert_eq!(sample_frames(5, 1), vec![2]);
    }

    #[test]
    fn placeholders_expand_in_order_and_must_match() {
        let t =
            ImageTokens { image_start: 1, image_end: 2, image: 3, patch: 4, tile_x_separator: 5, tile_y_separator: 6 };
        let o = TileOptions::default();
        let (one, four) = (plan(200, 300, &o).unwrap(), plan(480, 640, &o).unwrap());
        let ids = expand_placeholders(&[9, 3, 8, 3], &[four, one], 2, &t).unwrap();
        let want = [9, 1, 4, 4, 5, 4, 4, 6, 4, 4, 5, 4, 4, 6, 3, 4, 4, 2, 8, 1, 3, 4, 4, 2];
        assert_eq!(ids, want);
        let e = expand_placeholders(&[3, 3], &[one], 2, &t).unwrap_err().to_string();
        assert!(e.contains("2 image placeholders") && e.contains("for 1 images"), "{e}");
    }

    #[test]
    fn preprocessor_config_is_read_and_checked() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/scout_vision/config.json");
        let v = crate::config::ModelConfig::from_file(std::path::Path::new(path)).unwrap().vision.unwrap();
        let o = tile_options(&v, Some(r#"{"max_patches": 4, "resize_to_max_canvas": true, "size": {"height": 336}}"#))
            .unwrap();
        assert_eq!((o.tile, o.max_tiles, o.resize_to_max_canvas), (336, 4, true));
        assert_eq!(tile_options(&v, None).unwrap().max_tiles, 16);
        for bad in [r#"{"max_patches": 0}"#, r#"{"size": {"height": 448}}"#, "{", r#"{"resize_to_max_canvas": 1}"#] {
            let e = tile_options(&v, Some(bad)).unwrap_err().to_string();
            assert!(e.contains("preprocessor_config.json"), "{bad}: {e}");
        }
    }
}
