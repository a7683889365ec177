//! `herd logits` and `herd greedy`: ids in, numbers out, through safetensors files. These work on token
//! ids alone (no tokenizer files needed) and are the stable interface that independent checks run.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use herd_core::backend::Backend;
use herd_core::experts::ExpertCacheOptions;
use herd_core::generate::{greedy_rows, score_rows};
use herd_core::model::Llama4;
use safetensors::{Dtype, SafeTensors};

/// Reads `input_ids` (int64 or int32, [B, T]) as rows of ids.
fn read_ids(path: &Path) -> Result<Vec<Vec<u32>>> {
    let bytes = std::fs::read(path).with_context(|| format!("{}", path.display()))?;
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| anyhow::anyhow!("{}: not a valid safetensors file ({e})", path.display()))?;
    let t = st.tensor("input_ids").map_err(|_| anyhow::anyhow!("{}: no tensor `input_ids`", path.display()))?;
    let [b, n] = t.shape()[..] else {
        bail!("{}: `input_ids` has shape {:?}, expected [B, T]", path.display(), t.shape())
    };
    if b == 0 || n == 0 {
        bail!("{}: `input_ids` is empty (shape {:?})", path.display(), t.shape());
    }
    let vals: Vec<i64> = match t.dtype() {
        Dtype::I64 => t.data().chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap_or_default())).collect(),
        Dtype::I32 => {
            t.data().chunks_exact(4).map(|c| i32::from_le_bytes(c.try_into().unwrap_or_default()) as i64).collect()
        }
        d => bail!("{}: `input_ids` has dtype {d:?}, expected int64 or int32", path.display()),
    };
    if let Some(bad) = vals.iter().find(|&&v| v < 0 || v > u32::MAX as i64) {
        bail!("{}: `input_ids` holds {bad}, not a token id", path.display());
    }
    Ok((0..b).map(|i| vals[i * n..(i + 1) * n].iter().map(|&v| v as u32).collect()).collect())
}

fn write(path: &Path, name: &str, dtype: Dtype, shape: Vec<usize>, data: Vec<u8>) -> Result<()> {
    let view = safetensors::tensor::TensorView::new(dtype, shape, &data).map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
    let tensors: HashMap<String, _> = [(name.to_owned(), view)].into_iter().collect();
    // safetensors writes a sibling temporary file and renames it: a failure never leaves a partial output.
    safetensors::serialize_to_file(&tensors, None, path)
        .map_err(|e| anyhow::anyhow!("{}: cannot write ({e})", path.display()))
}

/// Ids the model cannot embed are reported against the input file, before any compute.
fn check_vocab(path: &Path, rows: &[Vec<u32>], vocab: usize) -> Result<()> {
    if let Some(bad) = rows.iter().flatten().find(|&&id| id as usize >= vocab) {
        bail!("{}: `input_ids` holds {bad}, outside the model's vocabulary of {vocab} ids", path.display());
    }
    Ok(())
}

fn load<B: Backend>(backend: Arc<B>, model: &Path, experts: Option<&ExpertCacheOptions>) -> Result<Llama4<B>> {
    let m = Llama4::from_dir_with(backend, model, experts, &mut |_, _| {})?;
    crate::files::note_unused_cache(&m, experts, &model.display().to_string());
    Ok(m)
}

pub fn logits<B: Backend>(
    backend: Arc<B>,
    model: &Path,
    input: &Path,
    output: &Path,
    decode: bool,
    experts: Option<&ExpertCacheOptions>,
) -> Result<()> {
    let rows = read_ids(input)?;
    let m = load(backend, model, experts)?;
    check_vocab(input, &rows, m.cfg.vocab_size)?;
    let t = rows[0].len();
    let logits = score_rows(&m, &rows, decode)?;
    let data: Vec<u8> = logits.iter().flatten().flat_map(|x| x.to_le_bytes()).collect();
    write(output, "logits", Dtype::F32, vec![rows.len(), t, m.cfg.vocab_size], data)
}

pub fn greedy<B: Backend>(
    backend: Arc<B>,
    model: &Path,
    input: &Path,
    n: usize,
    output: &Path,
    experts: Option<&ExpertCacheOptions>,
) -> Result<()> {
    if n == 0 {
        bail!("--max-tokens must be at least 1");
    }
    let rows = read_ids(input)?;
    let m = load(backend, model, experts)?;
    check_vocab(input, &rows, m.cfg.vocab_size)?;
    let out = greedy_rows(&m, &rows, n)?;
    let data: Vec<u8> = out.iter().flatten().flat_map(|&x| (x as i64).to_le_bytes()).collect();
    write(output, "greedy_ids", Dtype::I64, vec![rows.len(), n], data)
}
