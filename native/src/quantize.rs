//! `herd quantize`: a model directory in, a quantized one out (config.json with its quantization_config,
//! safetensors shards, the tokenizer and generation files), loadable like any other. Tensor by tensor from
//! the memory-mapped input: each matrix is quantized when its bytes are written and dropped after, so
//! memory stays near one tensor, whatever the model's size.
//!
//! A quantized tensor is stored under its own name as U8 bytes in herd_core::quant's layout; the file's
//! metadata (`herd.quant.<name>`) gives its format and logical shape.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use herd_core::checkpoint::{Checkpoint, TensorRef};
use herd_core::config::ModelConfig;
use herd_core::limits::{read_input, InputKind};
use herd_core::quant::{metadata_key, metadata_value, quantize, DType, QuantPlan};
use indicatif::{ProgressBar, ProgressStyle};
use safetensors::tensor::View;

/// Largest shard written (bytes of tensor data).
const SHARD: usize = 4 << 30;

/// Files copied as they are when present.
const COPIED: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "generation_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "chat_template.json",
    "preprocessor_config.json",
    "processor_config.json",
];

/// The part names `--keep-bf16` knows (a model may lack one: a dense model has no experts).
const KEEP_PARTS: &[&str] = &["attention", "attn", "embed", "embeddings", "shared", "lm_head", "experts"];

/// Aliases for `--keep-bf16`: a part of the model by its usual name, or any substring of tensor names.
fn keep_pattern(k: &str) -> &str {
    match k {
        "attention" | "attn" => "self_attn",
        "embed" | "embeddings" => "embed_tokens",
        "shared" => "shared_expert",
        other => other,
    }
}

/// One output tensor: written as stored, or quantized when the writer asks for its bytes.
struct Out<'a> {
    src: &'a TensorRef,
    to: Option<DType>,
    shape: Vec<usize>,
    len: usize,
    bar: &'a ProgressBar,
}

impl View for &Out<'_> {
    fn dtype(&self) -> safetensors::Dtype {
        match self.to {
            Some(_) => safetensors::Dtype::U8,
            None => match self.src.dtype {
                DType::F32 => safetensors::Dtype::F32,
                DType::BF16 => safetensors::Dtype::BF16,
                DType::F16 => safetensors::Dtype::F16,
                // An input tensor that is already quantized is copied with its description.
                DType::Q8(_) | DType::Q4(_) => safetensors::Dtype::U8,
            },
        }
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        self.bar.inc(self.src.bytes().len() as u64);
        match self.to {
            // The plan accepted this shape, so quantize cannot fail; an empty result would be caught by the
            // size check when the file is read back.
            Some(dt) => Cow::Owned(quantize(&self.src.to_f32(), &self.src.shape, dt).unwrap_or_default()),
            None => Cow::Borrowed(self.src.bytes()),
        }
    }
    fn data_len(&self) -> usize {
        self.len
    }
}

pub fn quantize_dir(model: &Path, out: &Path, format: &str, group: Option<u32>, keep: &[String]) -> Result<()> {
    let src_cfg = model.join("config.json");
    ModelConfig::from_file(&src_cfg)?; // a model herd can run, before anything is written
    let ck = Checkpoint::open_dir(model)?;
    let mut plan = QuantPlan::parse(format).map_err(|e| anyhow::anyhow!("--format {format}: {e}"))?;
    if let Some(g) = group {
        // A group size in --format (q4g32) and another in --group: which one was meant is not known.
        if format.contains('g') && g != plan.group {
            bail!("--format {format} and --group {g} conflict: give the group size once");
        }
        plan = QuantPlan::parse(&format!("q{}g{g}", plan.bits)).map_err(|e| anyhow::anyhow!("--group {g}: {e}"))?;
    }
    // A tensor herd cannot read (an integer dtype: another tool's packed values, an I64 table) cannot be
    // converted or described, and dropping it would leave a model that does not load: refused, by name.
    let mut unreadable: Vec<(&str, &herd_core::checkpoint::RawTensor)> = ck.raw_tensors().collect();
    unreadable.sort_by(|a, b| a.1.name.cmp(&b.1.name));
    if let Some((_, t)) = unreadable.first() {
        let more = match unreadable.len() - 1 {
            0 => String::new(),
            n => format!(" (and {n} more)"),
        };
        bail!(
            "tensor `{}`{more}: dtype {:?}, which herd quantize cannot convert (it reads F32, BF16, F16); nothing written",
            t.name.escape_debug(),
            t.dtype
        );
    }
    plan.keep = keep.iter().map(|k| keep_pattern(k.trim()).to_owned()).filter(|k| !k.is_empty()).collect();
    // A part that names no tensor is a typo (which would otherwise quantize everything): refused, unless it
    // is one of the known part names, which a model may lack.
    for k in keep.iter().map(|k| k.trim()).filter(|k| !k.is_empty() && !KEEP_PARTS.contains(k)) {
        let pat = keep_pattern(k);
        if !ck.tensors().any(|(logical, _)| logical.contains(pat)) {
            bail!(
                "--keep-bf16 {k}: names no tensor of the model (give {}, or part of a tensor name)",
                KEEP_PARTS.join(", ")
            );
        }
    }
    if out.exists() {
        let same = std::fs::canonicalize(out).ok() == std::fs::canonicalize(model).ok();
        if same {
            bail!("--out {} is the model directory itself: choose a new directory", out.display());
        }
        if std::fs::read_dir(out).map(|mut d| d.next().is_some()).unwrap_or(true) {
            bail!("--out {} exists and is not empty: choose a new directory", out.display());
        }
    }

    // Every tensor, by stored name, with its output format and size; then shards of at most SHARD bytes.
    let mut tensors: Vec<(&str, &TensorRef)> = ck.tensors().collect();
    tensors.sort_by_key(|(_, t)| t.name.clone());
    let bar = ProgressBar::new(tensors.iter().map(|(_, t)| t.bytes().len() as u64).sum());
    bar.set_style(
        ProgressStyle::with_template("quantizing {bar:40} {bytes}/{total_bytes} ({eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut outs = Vec::with_capacity(tensors.len());
    let (mut quantized, mut kept) = (0usize, 0usize);
    for (logical, t) in &tensors {
        let to = if t.dtype.is_quantized() { None } else { plan.format_of(logical, &t.shape) };
        let (shape, len) = match (to, t.dtype.is_quantized()) {
            (Some(dt), _) => {
                let n = dt.bytes(&t.shape).map_err(|e| anyhow::anyhow!("{}: {e}", t.name))?;
                (vec![n], n)
            }
            (None, true) => (vec![t.bytes().len()], t.bytes().len()),
            (None, false) => (t.shape.clone(), t.bytes().len()),
        };
        if to.is_some() {
            quantized += 1;
        } else {
            kept += 1;
        }
        outs.push(Out { src: t, to, shape, len, bar: &bar });
    }
    let mut shards: Vec<Vec<&Out>> = vec![Vec::new()];
    let mut size = 0;
    for o in &outs {
        if size + o.len > SHARD && !shards.last().is_some_and(|s| s.is_empty()) {
            shards.push(Vec::new());
            size = 0;
        }
        size += o.len;
        if let Some(s) = shards.last_mut() {
            s.push(o);
        }
    }

    // Written into a temporary sibling directory, renamed into place when complete: a failure leaves no
    // half-written model behind.
    let parent = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let tmp = parent.join(format!(
        ".{}.partial",
        out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "quantized".into())
    ));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let result = write_all(&tmp, model, &src_cfg, &shards, &plan, quantized);
    bar.finish_and_clear();
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    if out.exists() {
        std::fs::remove_dir(out).with_context(|| format!("replacing the empty {}", out.display()))?;
    }
    std::fs::rename(&tmp, out).with_context(|| format!("moving the result to {}", out.display()))?;
    eprintln!(
        "wrote {}: {quantized} tensors as {}, {kept} as stored, {} shard(s)",
        out.display(),
        plan.name(),
        shards.len()
    );
    Ok(())
}

fn write_all(
    dir: &Path,
    model: &Path,
    src_cfg: &Path,
    shards: &[Vec<&Out>],
    plan: &QuantPlan,
    quantized: usize,
) -> Result<()> {
    let names: Vec<String> = if shards.len() == 1 {
        vec!["model.safetensors".into()]
    } else {
        (1..=shards.len()).map(|i| format!("model-{i:05}-of-{:05}.safetensors", shards.len())).collect()
    };
    let mut weight_map = serde_json::Map::new();
    let mut total = 0usize;
    // The mode a new file gets here (0666 less the umask), for the shards: the safetensors writer makes a
    // private temporary file and renames it.
    #[cfg(unix)]
    let mode = {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let probe = dir.join(".mode-probe");
        let f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o666)
            .open(&probe)
            .with_context(|| format!("creating a file in {}", dir.display()))?;
        let mode = f.metadata()?.permissions().mode() & 0o777;
        drop(f);
        std::fs::remove_file(&probe)?;
        mode
    };
    for (shard, file) in shards.iter().zip(&names) {
        let mut meta = HashMap::new();
        for o in shard {
            let desc = match o.to {
                Some(dt) => metadata_value(dt, &o.src.shape),
                None => metadata_value(o.src.dtype, &o.src.shape),
            };
            if let Some(d) = desc {
                meta.insert(metadata_key(&o.src.name), d);
            }
            weight_map.insert(o.src.name.clone(), serde_json::Value::String(file.clone()));
            total += o.len;
        }
        let path: PathBuf = dir.join(file);
        let views = shard.iter().map(|o| (o.src.name.clone(), *o));
        safetensors::serialize_to_file(views, Some(meta), &path)
            .with_context(|| format!("writing {}", path.display()))?;
        // The writer's temporary file is private; a model file gets the mode any new file gets.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))?;
        }
    }
    if shards.len() > 1 {
        let index = serde_json::json!({ "metadata": { "total_size": total }, "weight_map": weight_map });
        std::fs::write(dir.join("model.safetensors.index.json"), serde_json::to_vec_pretty(&index)?)?;
    }
    // config.json as it was, with the quantization described.
    let mut cfg: serde_json::Value = serde_json::from_slice(&read_input(src_cfg, InputKind::Config)?)
        .with_context(|| format!("{}: not valid JSON", src_cfg.display()))?;
    if let Some(obj) = cfg.as_object_mut() {
        obj.insert(
            "quantization_config".into(),
            serde_json::json!({
                "quant_method": "herd",
                "format": plan.name(),
                "bits": plan.bits,
                "group_size": plan.group,
                "symmetric": true,
                "scale_dtype": "bf16",
                "kept_unquantized": plan.keep,
                "quantized_tensors": quantized,
            }),
        );
    }
    std::fs::write(dir.join("config.json"), serde_json::to_vec_pretty(&cfg)?)?;
    // Read as inputs are (regular files of bounded size) and written anew: created with 0666 less the umask,
    // where a copy would take the source's mode.
    for f in COPIED {
        let p = model.join(f);
        if p.exists() {
            let kind = match *f {
                "tokenizer.json" => InputKind::Tokenizer,
                "tokenizer_config.json" | "chat_template.jinja" | "chat_template.json" => InputKind::TokenizerConfig,
                _ => InputKind::SmallJson,
            };
            let bytes = read_input(&p, kind)?;
            std::fs::write(dir.join(f), bytes).with_context(|| format!("writing {}", dir.join(f).display()))?;
        }
    }
    Ok(())
}
