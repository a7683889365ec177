//! `herd logits` and `herd greedy`: ids in, numbers out, through safetensors files. These work on token
//! ids alone (no tokenizer files needed) and are the stable interface that independent checks run.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use herd_core::backend::Backend;
use herd_core::config::ModelConfig;
use herd_core::generate::score_rows;
use herd_core::limits::{self, read_input, InputKind};
use herd_core::model::{ImagePart, ImageRows, Llama4};
use herd_core::vision::encoder::VisionTower;

use crate::files::LoadOptions;
use safetensors::{Dtype, SafeTensors};

/// Reads `input_ids` (int64 or int32, [B, T]) as rows of ids.
fn read_ids(path: &Path) -> Result<Vec<Vec<u32>>> {
    let bytes = read_input(path, InputKind::Ids)?;
    herd_core::ids::parse_input_ids(&bytes).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// Before the model loads: the rows fit the context (with `gen` more tokens each), and the output fits in this
/// machine's memory (`logits`: the vocabulary's f32 scores per position, held twice while written; else ids).
fn check_sizes(path: &Path, model: &Path, rows: &[Vec<u32>], gen: usize, logits: bool) -> Result<()> {
    let cfg = ModelConfig::from_file(&model.join("config.json"))?;
    let ctx = cfg.text.max_position_embeddings;
    let t = rows[0].len();
    if t.checked_add(gen).is_none_or(|n| n > ctx) {
        bail!(
            "{}: rows of {t} ids{} do not fit the model's context of {ctx} positions (max_position_embeddings)",
            path.display(),
            if gen > 0 { format!(" plus {gen} new tokens") } else { String::new() }
        );
    }
    let positions = limits::mul("input_ids", rows.len(), t.saturating_add(gen))?;
    let per = if logits { cfg.text.vocab_size.saturating_mul(8) } else { 16 };
    limits::check_host_alloc(&format!("{}: the output", path.display()), positions as u128 * per as u128)?;
    Ok(())
}

fn write(path: &Path, name: &str, dtype: Dtype, shape: Vec<usize>, data: Vec<u8>) -> Result<()> {
    let view = safetensors::tensor::TensorView::new(dtype, shape, &data).map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
    let tensors: HashMap<String, _> = [(name.to_owned(), view)].into_iter().collect();
    let bytes = safetensors::serialize(&tensors, None).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    drop(data);
    crate::files::write_output(path, |f| std::io::Write::write_all(f, &bytes))
}

/// Ids the model cannot embed are reported against the input file, before any compute.
fn check_vocab(path: &Path, rows: &[Vec<u32>], vocab: usize) -> Result<()> {
    if let Some(bad) = rows.iter().flatten().find(|&&id| id as usize >= vocab) {
        bail!("{}: `input_ids` holds {bad}, outside the model's vocabulary of {vocab} ids", path.display());
    }
    Ok(())
}

fn load<B: Backend>(backend: Arc<B>, model: &Path, opts: &LoadOptions) -> Result<Llama4<B>> {
    let mut m = Llama4::from_dir_with(backend, model, opts.experts.as_ref(), &mut |_, _| {})?;
    crate::files::note_unused_cache(&m, opts.experts.as_ref(), &model.display().to_string());
    opts.apply(&mut m)?;
    Ok(m)
}

/// The optional `pixel_values` (float32 [tiles, channels, size, size], the tiles of every row's images in
/// order) of an input file, checked against the model's vision tower and the rows' `<|patch|>` tokens.
fn read_pixels(path: &Path, model: &Path, rows: &[Vec<u32>]) -> Result<Option<(Vec<f32>, usize, u32)>> {
    let bytes = read_input(path, InputKind::Ids)?;
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| anyhow::anyhow!("{}: not a valid safetensors file ({e})", path.display()))?;
    let Ok(t) = st.tensor("pixel_values") else { return Ok(None) };
    let cfg = ModelConfig::from_file(&model.join("config.json"))?;
    let Some(v) = cfg.vision.as_ref() else {
        bail!("{}: has `pixel_values`, but the model has no vision tower (no vision_config)", path.display())
    };
    let want = [v.num_channels, v.image_size, v.image_size];
    match t.shape() {
        [n, rest @ ..] if *n > 0 && rest == want => {}
        s => bail!(
            "{}: `pixel_values` has shape {s:?}, expected [tiles, {}, {}, {}]",
            path.display(),
            want[0],
            want[1],
            want[2]
        ),
    }
    if t.dtype() != Dtype::F32 {
        bail!("{}: `pixel_values` has dtype {:?}, expected float32", path.display(), t.dtype());
    }
    let tiles = t.shape()[0];
    let patch = v.image_token_id.context("config.json names no image_token_index for the <|patch|> tokens")?;
    let patches: usize = rows.iter().flatten().filter(|&&i| i == patch).count();
    if patches != tiles * v.tokens_per_tile() {
        bail!(
            "{}: `input_ids` has {patches} image patch tokens (id {patch}) but `pixel_values` has {tiles} tiles of {} \
             tokens each",
            path.display(),
            v.tokens_per_tile()
        );
    }
    let px: Vec<f32> = t.data().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap_or_default())).collect();
    Ok(Some((px, tiles, patch)))
}

pub fn logits<B: Backend>(
    backend: Arc<B>,
    model: &Path,
    input: &Path,
    output: &Path,
    decode: bool,
    opts: &LoadOptions,
) -> Result<()> {
    crate::files::check_output(output)?;
    let rows = read_ids(input)?;
    check_sizes(input, model, &rows, 0, true)?;
    let pixels = read_pixels(input, model, &rows)?;
    let m = load(backend.clone(), model, opts)?;
    check_vocab(input, &rows, m.cfg.vocab_size)?;
    let t = rows[0].len();
    let logits = match pixels {
        None => pollster::block_on(score_rows(&m, &rows, &[], decode))?,
        Some((px, tiles, patch)) => {
            let tower = VisionTower::from_dir(&*backend, model).context("loading the vision tower")?;
            let buf = tower.encode(&*backend, &px, tiles)?;
            // Each row takes the next rows of the encoded tiles, one per <|patch|> token.
            let mut first = 0;
            let images: Vec<_> = rows
                .iter()
                .map(|r| {
                    let n = r.iter().filter(|&&i| i == patch).count();
                    first += n;
                    Some(ImageRows { token: patch, parts: vec![ImagePart { buf: &buf, first: first - n, len: n }] })
                })
                .collect();
            pollster::block_on(score_rows(&m, &rows, &images, decode))?
        }
    };
    let data: Vec<u8> = logits.iter().flatten().flat_map(|x| x.to_le_bytes()).collect();
    write(output, "logits", Dtype::F32, vec![rows.len(), t, m.cfg.vocab_size], data)
}

pub fn greedy<B: Backend>(
    backend: Arc<B>,
    model: &Path,
    input: &Path,
    n: usize,
    output: &Path,
    opts: &LoadOptions,
    spec: &crate::speculate::SpecArgs,
) -> Result<()> {
    if n == 0 {
        bail!("--max-tokens must be at least 1");
    }
    crate::files::check_output(output)?;
    let rows = read_ids(input)?;
    check_sizes(input, model, &rows, n, false)?;
    let m = load(backend, model, opts)?;
    check_vocab(input, &rows, m.cfg.vocab_size)?;
    let m = Arc::new(m);
    let target = crate::files::ModelFiles::new(Some(model.to_path_buf()));
    let drafter = spec.drafter(m.backend(), &target, m.cfg.vocab_size, opts)?.map(|d| (d, spec.draft_tokens));
    let out = pollster::block_on(herd_core::generate::greedy_rows_drafted(&m, &rows, n, drafter))?;
    let data: Vec<u8> = out.iter().flatten().flat_map(|&x| (x as i64).to_le_bytes()).collect();
    write(output, "greedy_ids", Dtype::I64, vec![rows.len(), n], data)
}
