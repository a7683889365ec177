//! Where an image goes: the tile canvas the reference processor picks for it, the size it is resized to
//! inside that canvas, and the tokens that stand for it in the prompt (docs/llama4.md §4.1 steps 1-4, §4.2).
//!
//! Everything here is integer and f32 arithmetic done exactly as `Llama4ImageProcessor` does it, so the plan
//! for an image is the reference's, ties included; `tests/fixtures/vision/layout.json` (made by transformers)
//! checks it for many sizes.

pub use crate::config::patches_per_tile;
use crate::error::{HerdError, Result};

/// How images are cut into tiles: the processor's `size` (a square tile), `max_patches` (the most tiles per
/// image) and `resize_to_max_canvas`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TileOptions {
    pub tile: u32,
    pub max_tiles: u32,
    pub resize_to_max_canvas: bool,
}

impl Default for TileOptions {
    /// Llama 4's preprocessor_config.json: 336-pixel tiles, up to 16 of them, no upscaling to the canvas.
    fn default() -> Self {
        TileOptions { tile: 336, max_tiles: 16, resize_to_max_canvas: false }
    }
}

/// The plan for one image of `height` x `width` pixels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TilePlan {
    /// The canvas (height, width) in pixels: whole tiles.
    pub canvas: (u32, u32),
    /// The size (height, width) the image is resized to, aspect kept; the rest of the canvas is padding.
    pub resized: (u32, u32),
    /// Tiles down and across the canvas (the processor's `aspect_ratios`).
    pub grid: (u32, u32),
}

impl TilePlan {
    /// Tiles the encoder sees: the grid's, plus the global tile (the whole image squashed to one tile) when
    /// the grid has more than one.
    pub fn tiles(&self) -> usize {
        let n = (self.grid.0 * self.grid.1) as usize;
        if n > 1 {
            n + 1
        } else {
            n
        }
    }
}

/// The canvases (height, width) in pixels an image may be fitted to, in the reference's order: for n tiles
/// from `max_tiles` down to 1, each factorisation (a, n / a) with a ascending, grouped by aspect ratio in
/// the order each ratio first appears. The order decides ties.
pub fn canvases(opts: &TileOptions) -> Vec<(u32, u32)> {
    // (reduced aspect ratio, its factorisations in order of appearance)
    type Group = ((u32, u32), Vec<(u32, u32)>);
    let mut groups: Vec<Group> = Vec::new();
    for n in (1..=opts.max_tiles).rev() {
        for a in (1..=n).filter(|a| n % a == 0) {
            let (h, w) = (a, n / a);
            // The reference keys a dict by the float h / w; equal ratios are equal reduced fractions.
            let g = gcd(h, w);
            let key = (h / g, w / g);
            match groups.iter_mut().find(|(k, _)| *k == key) {
                Some((_, v)) => v.push((h, w)),
                None => groups.push((key, vec![(h, w)])),
            }
        }
    }
    groups.into_iter().flat_map(|(_, v)| v).map(|(h, w)| (h * opts.tile, w * opts.tile)).collect()
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// The canvas for an image of `height` x `width` (`get_best_fit`): the smallest upscale that fits (the
/// largest with `resize_to_max_canvas`), else the mildest downscale; among canvases with that very scale
/// (compared as f32, as the reference does), the smallest area, the first in order on ties.
pub fn best_fit(height: u32, width: u32, opts: &TileOptions) -> (u32, u32) {
    let all = canvases(opts);
    let scale = |&(ch, cw): &(u32, u32)| {
        let (sw, sh) = (cw as f32 / width as f32, ch as f32 / height as f32);
        if sh > sw {
            sw
        } else {
            sh
        }
    };
    let scales: Vec<f32> = all.iter().map(scale).collect();
    let up = scales.iter().copied().filter(|&s| s >= 1.0);
    let chosen = if up.clone().next().is_some() {
        if opts.resize_to_max_canvas {
            up.fold(f32::MIN, f32::max)
        } else {
            up.fold(f32::MAX, f32::min)
        }
    } else {
        scales.iter().copied().filter(|&s| s < 1.0).fold(f32::MIN, f32::max)
    };
    let mut best: Option<(u32, u32)> = None;
    for (c, s) in all.iter().zip(&scales) {
        if *s == chosen && best.is_none_or(|b| c.0 * c.1 < b.0 * b.1) {
            best = Some(*c);
        }
    }
    best.expect("the chosen scale is one of the canvases'")
}

/// The plan for an image of `height` x `width` pixels. Zero-sized images are refused.
pub fn plan(height: u32, width: u32, opts: &TileOptions) -> Result<TilePlan> {
    if height == 0 || width == 0 {
        return Err(HerdError::Input(format!("image of {width}x{height} pixels: it has no pixels")));
    }
    if opts.tile == 0 || opts.max_tiles == 0 {
        return Err(HerdError::Input(format!(
            "tile size {} and at most {} tiles: both must be positive",
            opts.tile, opts.max_tiles
        )));
    }
    let canvas = best_fit(height, width, opts);
    // The reference mixes number types here, and the results depend on it: the canvas sides are int64
    // tensors, so arithmetic on them is in f32, while a side capped at max(size, tile) stays a Python int
    // and divides in f64. `min(cap, canvas)` keeps the cap when the two are equal.
    let side = |size: u32, canvas: u32| {
        let cap = size.max(opts.tile);
        if !opts.resize_to_max_canvas && cap <= canvas {
            Num::Int(cap)
        } else {
            Num::Tensor(canvas)
        }
    };
    let (th, tw) = (side(height, canvas.0), side(width, canvas.1));
    // `get_max_res_without_distortion`
    let (sw, sh) = (tw.div(width), th.div(height));
    let (h, w) = if sw.lt(&sh) {
        (sw.mul_floor(height).min(th.value()), tw.value())
    } else {
        (th.value(), sh.mul_floor(width).min(tw.value()))
    };
    Ok(TilePlan { canvas, resized: (h.max(1), w.max(1)), grid: (canvas.0 / opts.tile, canvas.1 / opts.tile) })
}

/// A target side as the reference holds it: a Python int, or an int64 tensor (a canvas side).
#[derive(Clone, Copy)]
enum Num {
    Int(u32),
    Tensor(u32),
}

/// A scale: a Python float (f64), or an f32 tensor.
#[derive(Clone, Copy)]
enum Scale {
    F64(f64),
    F32(f32),
}

impl Num {
    fn value(self) -> u32 {
        match self {
            Num::Int(v) | Num::Tensor(v) => v,
        }
    }

    /// `self / size`: true division, in f32 for a tensor.
    fn div(self, size: u32) -> Scale {
        match self {
            Num::Int(v) => Scale::F64(v as f64 / size as f64),
            Num::Tensor(v) => Scale::F32(v as f32 / size as f32),
        }
    }
}

impl Scale {
    /// `self < other`; against a tensor the Python float is cast to f32 first.
    fn lt(&self, other: &Scale) -> bool {
        match (*self, *other) {
            (Scale::F64(a), Scale::F64(b)) => a < b,
            (Scale::F32(a), Scale::F32(b)) => a < b,
            (Scale::F64(a), Scale::F32(b)) => (a as f32) < b,
            (Scale::F32(a), Scale::F64(b)) => a < b as f32,
        }
    }

    /// `math.floor(size * self)`.
    fn mul_floor(self, size: u32) -> u32 {
        match self {
            Scale::F64(s) => (size as f64 * s).floor() as u32,
            Scale::F32(s) => (size as f32 * s).floor() as u32,
        }
    }
}

/// The ids of the special tokens an image expands into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageTokens {
    pub image_start: u32,
    pub image_end: u32,
    pub image: u32,
    pub patch: u32,
    pub tile_x_separator: u32,
    pub tile_y_separator: u32,
}

/// The ids one image stands for in the prompt, in place of the chat template's `<|image|>`:
/// `<|image_start|>`, then for a grid of several tiles each row's tiles (`<|patch|>` × n each, with
/// `<|tile_x_separator|>` between them) closed by `<|tile_y_separator|>`, then `<|image|>`, the global (or
/// only) tile's `<|patch|>` × n, and `<|image_end|>`. The `<|patch|>` runs are in the order of the tiles.
pub fn image_prompt(plan: &TilePlan, per_tile: usize, t: &ImageTokens) -> Vec<u32> {
    let (rows, cols) = plan.grid;
    let mut ids = vec![t.image_start];
    if rows * cols > 1 {
        for _ in 0..rows {
            for x in 0..cols {
                ids.extend(std::iter::repeat_n(t.patch, per_tile));
                if x + 1 < cols {
                    ids.push(t.tile_x_separator);
                }
            }
            ids.push(t.tile_y_separator);
        }
    }
    ids.push(t.image);
    ids.extend(std::iter::repeat_n(t.patch, per_tile));
    ids.push(t.image_end);
    ids
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The worked examples of docs/llama4.md §4.1: (H, W) → canvas, resized size, grid, tiles, patches.
    #[test]
    fn the_spec_examples() {
        let o = TileOptions::default();
        let cases = [
            ((1000, 700), (1008, 1008), (1000, 700), (3, 3), 10, 1440),
            ((480, 640), (672, 672), (480, 640), (2, 2), 5, 720),
            ((200, 300), (336, 336), (224, 336), (1, 1), 1, 144),
            ((768, 1024), (1008, 1344), (768, 1024), (3, 4), 13, 1872),
            ((2000, 3000), (1008, 1680), (1008, 1512), (3, 5), 16, 2304),
        ];
        for ((h, w), canvas, resized, grid, tiles, patches) in cases {
            let p = plan(h, w, &o).unwrap();
            assert_eq!((p.canvas, p.resized, p.grid, p.tiles()), (canvas, resized, grid, tiles), "{h}x{w}");
            assert_eq!(p.tiles() * patches_per_tile(336, 14, 0.5).unwrap(), patches, "{h}x{w}");
        }
    }

    const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/vision/layout.json");

    fn fixture() -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(FIXTURE).expect("layout.json")).expect("layout.json parses")
    }

    fn pair(v: &serde_json::Value) -> (u32, u32) {
        (v[0].as_u64().unwrap() as u32, v[1].as_u64().unwrap() as u32)
    }

    /// transformers' Llama4ImageProcessor on 234 image sizes (tile edges, extreme and simple aspect ratios,
    /// random sizes) under six settings (16 tiles, 16 with resize_to_max_canvas, 9, 4, 1, 2 with
    /// resize_to_max_canvas): the same canvas, resized size, grid and tile count
    /// (tests/fixtures/vision/layout.json, made by make_vision_fixtures.py).
    #[test]
    fn plans_match_the_reference_processor() {
        let f = fixture();
        let cases = f["cases"].as_array().unwrap();
        assert!(cases.len() >= 1400, "{} cases", cases.len());
        for c in cases {
            let (h, w) = (c["height"].as_u64().unwrap() as u32, c["width"].as_u64().unwrap() as u32);
            let opts = TileOptions {
                tile: 336,
                max_tiles: c["max_patches"].as_u64().unwrap() as u32,
                resize_to_max_canvas: c["resize_to_max_canvas"].as_bool().unwrap(),
            };
            let p = plan(h, w, &opts).unwrap();
            let want =
                (pair(&c["canvas"]), pair(&c["resized"]), pair(&c["grid"]), c["tiles"].as_u64().unwrap() as usize);
            assert_eq!((p.canvas, p.resized, p.grid, p.tiles()), want, "{h}x{w} with {opts:?}");
        }
    }

    /// Llama4Processor's expansion of `<|image|>` for six real images (grids 1x1, 1x3, 2x2, 3x1, 3x3, 2x4).
    #[test]
    fn image_prompts_match_the_reference_processor() {
        let f = fixture();
        let sp = &f["special_tokens"];
        let id = |name: &str| sp[name].as_u64().unwrap() as u32;
        let t = ImageTokens {
            image_start: id("<|image_start|>"),
            image_end: id("<|image_end|>"),
            image: id("<|image|>"),
            patch: id("<|patch|>"),
            tile_x_separator: id("<|tile_x_separator|>"),
            tile_y_separator: id("<|tile_y_separator|>"),
        };
        let per_tile = patches_per_tile(336, 14, 0.5).unwrap();
        for p in f["prompts"].as_array().unwrap() {
            let (h, w) = (p["height"].as_u64().unwrap() as u32, p["width"].as_u64().unwrap() as u32);
            let pl = plan(h, w, &TileOptions::default()).unwrap();
            assert_eq!(pl.grid, pair(&p["grid"]), "{h}x{w}");
            assert_eq!(pl.tiles(), p["tiles"].as_u64().unwrap() as usize, "{h}x{w}");
            let want: Vec<u32> = p["ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
            // The reference prompt is BOS, then the image.
            assert_eq!(image_prompt(&pl, per_tile, &t), want[1..], "{h}x{w}");
        }
    }

    #[test]
    fn sixteen_tiles_give_fifty_canvases() {
        assert_eq!(canvases(&TileOptions::default()).len(), 50);
    }

    #[test]
    fn bad_sizes_are_refused() {
        assert!(plan(0, 10, &TileOptions::default()).is_err());
        assert!(plan(10, 0, &TileOptions::default()).is_err());
        assert!(patches_per_tile(336, 15, 0.5).is_err());
        assert!(patches_per_tile(336, 14, 0.3).is_err());
    }

    #[test]
    fn one_tile_has_no_separators() {
        let t =
            ImageTokens { image_start: 1, image_end: 2, image: 3, patch: 4, tile_x_separator: 5, tile_y_separator: 6 };
        let p = plan(100, 100, &TileOptions::default()).unwrap();
        assert_eq!(image_prompt(&p, 2, &t), vec![1, 3, 4, 4, 2]);
        let p = plan(336, 672, &TileOptions::default()).unwrap();
        assert_eq!(p.grid, (1, 2));
        assert_eq!(image_prompt(&p, 1, &t), vec![1, 4, 5, 4, 6, 3, 4, 2]);
    }
}
