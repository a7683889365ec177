//! Images for `herd run --image` and `herd chat`'s `/image`: files (PNG, JPEG, WebP, GIF) and videos (an
//! animated GIF, or a folder of frames) read into images, planned and counted into the prompt before any
//! pixel work, then preprocessed and encoded by the model's vision tower.

use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use herd_core::backend::Backend;
use herd_core::tokenizer::Tokenizer;
use herd_core::vision::encoder::VisionTower;
use herd_core::vision::input::{
    expand_placeholders, image_tokens, pixel_key, sample_frames, tile_options, PlannedImage,
};
use herd_core::vision::layout::{ImageTokens, TileOptions};
use herd_core::vision::preprocess::{decode, RgbImage};

use crate::files::ModelFiles;

/// The image files a folder of frames holds: PNG, JPEG, WebP or GIF by extension, in name order.
fn frame_files(dir: &Path) -> Result<Vec<std::path::PathBuf>> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("{}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let ext = p.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
            p.is_file() && matches!(ext.as_deref(), Some("png" | "jpg" | "jpeg" | "webp" | "gif"))
        })
        .collect();
    files.sort();
    if files.is_empty() {
        bail!("{}: the folder holds no PNG, JPEG, WebP or GIF frames", dir.display());
    }
    Ok(files)
}

/// The images one `--image PATH` stands for: the image of a file; the frames of an animated GIF or of a
/// folder of images (a video), sampled evenly down to `max_frames`, each its own image.
pub fn read_images(path: &Path, max_frames: usize) -> Result<Vec<RgbImage>> {
    if max_frames == 0 {
        bail!("--max-frames must be at least 1");
    }
    let one = |p: &Path| -> Result<Vec<RgbImage>> {
        let bytes = herd_core::limits::read_input(p, herd_core::limits::InputKind::Image)?;
        decode(&bytes).with_context(|| format!("{}", p.display()))
    };
    if path.is_dir() {
        let files = frame_files(path)?;
        return sample_frames(files.len(), max_frames)
            .into_iter()
            .map(|i| Ok(one(&files[i])?.swap_remove(0)))
            .collect();
    }
    let frames = one(path)?;
    let keep = sample_frames(frames.len(), max_frames);
    Ok(frames.into_iter().enumerate().filter(|(i, _)| keep.contains(i)).map(|(_, f)| f).collect())
}

/// What a prompt's images are planned with: the processor's settings, the image tokens, the `<|patch|>`
/// tokens per tile and the model's context.
pub struct Planner {
    pub opts: TileOptions,
    pub tokens: ImageTokens,
    pub per_tile: usize,
    pub context: usize,
}

impl Planner {
    /// The model's planner; a model without a vision tower is an error that says so.
    pub fn new(files: &ModelFiles, tok: &Tokenizer) -> Result<Self> {
        let cfg = files.config()?;
        let vision = cfg.vision.as_ref().ok_or_else(|| {
            anyhow::anyhow!(
                "{} has no vision tower (its config.json has no vision_config): images need a multimodal Llama 4 \
                 checkpoint",
                files.describe()
            )
        })?;
        if !files.checkpoint()?.contains("vision_model.patch_embedding.linear.weight") {
            bail!(
                "{} has no vision tower weights (no vision_model.* tensors in its checkpoint): images need a \
                 multimodal Llama 4 checkpoint",
                files.describe()
            );
        }
        Ok(Planner {
            opts: tile_options(vision, files.preprocessor_config()?.as_deref())?,
            tokens: image_tokens(tok)?,
            per_tile: vision.tokens_per_tile(),
            context: cfg.text.max_position_embeddings,
        })
    }

    /// Plans `images` and expands the `<|image|>` placeholders of `ids` (those of `earlier` images first),
    /// refusing a prompt longer than the context before any pixel work.
    /// How many tokens the prompt `ids` (one `<|image|>` per image) becomes once its images (those already
    /// planned, then `new`) are expanded: no pixel work, so a chat can measure a conversation before a turn.
    pub fn expanded_len(&self, ids: &[u32], earlier: &[PlannedImage], new: &[RgbImage]) -> Result<usize> {
        let mut plans: Vec<_> = earlier.iter().map(|p| p.plan).collect();
        for im in new {
            plans.push(herd_core::vision::layout::plan(im.height, im.width, &self.opts)?);
        }
        Ok(expand_placeholders(ids, &plans, self.per_tile, &self.tokens)?.len())
    }

    pub fn plan(
        &self,
        ids: &[u32],
        images: Vec<RgbImage>,
        earlier: &[PlannedImage],
    ) -> Result<(Vec<u32>, Vec<PlannedImage>)> {
        let planned =
            images.into_iter().map(|im| PlannedImage::new(im, &self.opts)).collect::<herd_core::Result<Vec<_>>>()?;
        let plans: Vec<_> = earlier.iter().chain(&planned).map(|p| p.plan).collect();
        let out = expand_placeholders(ids, &plans, self.per_tile, &self.tokens)?;
        if out.len() > self.context {
            let patches = out.iter().filter(|&&i| i == self.tokens.patch).count();
            bail!(
                "the prompt is {} tokens with its {} images ({patches} image patch tokens), more than the model's \
                 context of {} tokens: use fewer or smaller images (or fewer --max-frames)",
                out.len(),
                plans.len(),
                self.context
            );
        }
        Ok((out, planned))
    }
}

/// The images kept encoded by a [`Vision`]: a request's images come back with each of its guard's checks, and
/// a chat's with each turn.
const ENCODED_KEPT: usize = 4;

/// The model's vision tower and what it encodes images with, and the images it encoded last.
pub struct Vision<B: Backend> {
    pub tower: VisionTower<B>,
    pub opts: TileOptions,
    /// The last [`ENCODED_KEPT`] images encoded, by a hash of their plan and pixels, most recent last.
    kept: std::sync::Mutex<Vec<(u64, Encoded<B>)>>,
}

/// A hash of an image as planned: its tile plan and its pixels (a cheaper key than the preprocessed tiles').
fn image_key(im: &PlannedImage) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::hash::DefaultHasher::new();
    (im.plan.canvas, im.plan.resized, im.plan.grid, im.image.height, im.image.width).hash(&mut h);
    h.write(&im.image.data);
    h.finish()
}

impl<B: Backend> Vision<B> {
    pub fn load(files: &ModelFiles, be: &Arc<B>, planner: &Planner) -> Result<Self> {
        let cfg = files.config()?;
        let vision = cfg.vision.as_ref().context("no vision_config")?;
        let tower = VisionTower::load(&**be, &files.checkpoint()?, vision, cfg.text.hidden_size)
            .context("loading the vision tower")?;
        Ok(Vision { tower, opts: planner.opts, kept: Default::default() })
    }

    /// Preprocesses and encodes images: their rows, row counts and keys. An image encoded lately is not
    /// encoded again.
    pub fn encode(&self, be: &B, images: &[PlannedImage]) -> Result<Vec<Encoded<B>>> {
        images
            .iter()
            .map(|im| {
                let k = image_key(im);
                let mut kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(i) = kept.iter().position(|(key, _)| *key == k) {
                    let hit = kept.remove(i);
                    kept.push(hit.clone());
                    return Ok(hit.1);
                }
                drop(kept);
                let px = im.pixels(&self.opts)?;
                let rows = self.tower.encode(be, &px.pixel_values, px.tiles())?;
                let e =
                    Encoded { key: pixel_key(&px), rows: rows.into(), n: px.tiles() * self.tower.tokens_per_tile() };
                let mut kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
                if kept.len() == ENCODED_KEPT {
                    kept.remove(0);
                }
                kept.push((k, e.clone()));
                Ok(e)
            })
            .collect()
    }
}

/// One encoded image of a conversation.
pub struct Encoded<B: Backend> {
    pub key: u64,
    pub rows: std::sync::Arc<B::Buffer>,
    pub n: usize,
}

impl<B: Backend> Clone for Encoded<B> {
    fn clone(&self) -> Self {
        Encoded { key: self.key, rows: self.rows.clone(), n: self.n }
    }
}
