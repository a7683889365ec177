//! Where a model's files come from: a model directory, or the small demo model built into the binary
//! (so `herd run` works on a fresh machine with no download).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use herd_core::backend::Backend;
use herd_core::chat::ChatTemplate;
use herd_core::checkpoint::{Checkpoint, FileBytes};
use herd_core::config::ModelConfig;
use herd_core::experts::ExpertCacheOptions;
use herd_core::kv_format::{parse_kv_dtypes, KvDtype};
use herd_core::model::Llama4;
use herd_core::tokenizer::{GenerationConfig, Tokenizer};

/// The built-in demo model: a tiny Llama 4 in the published layout, with a Llama 4-format tokenizer.
pub(crate) mod demo {
    pub const CONFIG: &[u8] = include_bytes!("../demo/config.json");
    pub const WEIGHTS: &[u8] = include_bytes!("../demo/model.safetensors");
    pub const TOKENIZER: &[u8] = include_bytes!("../demo/tokenizer.json");
    pub const TOKENIZER_CONFIG: &str = include_str!("../demo/tokenizer_config.json");
    pub const GENERATION_CONFIG: &str = include_str!("../demo/generation_config.json");
}

/// How a command sets up its model beyond the weights: the expert cache and the KV cache's formats.
#[derive(Clone, Default)]
pub struct LoadOptions {
    /// Stream the routed experts through a cache of this size (None: every expert resident).
    pub experts: Option<ExpertCacheOptions>,
    /// `--kv-dtype` as given (None: the backend's default, see [`LoadOptions::kv_dtypes`]).
    pub kv_dtype: Option<String>,
    /// `--device-memory`: the bytes to plan against instead of what the device has free.
    pub device_memory: Option<usize>,
}

impl LoadOptions {
    /// The KV formats of global and chunked layers on backend `B`: what `--kv-dtype` says, and where it says
    /// nothing, bf16 on a GPU (half the memory and bandwidth of f32, within a few thousandths of its logits)
    /// and f32 on the CPU (the reference).
    pub fn kv_dtypes<B: Backend>(&self) -> Result<[KvDtype; 2]> {
        let default = if B::KIND == "cpu" { KvDtype::F32 } else { KvDtype::Bf16 };
        match &self.kv_dtype {
            None => Ok([default; 2]),
            Some(s) => parse_kv_dtypes(s, default).map_err(|e| anyhow::anyhow!("--kv-dtype: {e}")),
        }
    }

    /// Refuses a `--kv-dtype` that does not parse or that cannot hold this model's heads, before anything loads.
    pub fn check<B: Backend>(&self, cfg: &herd_core::config::TextConfig) -> Result<()> {
        for d in self.kv_dtypes::<B>()? {
            d.slot_words(cfg.num_key_value_heads, cfg.head_dim).map_err(|e| anyhow::anyhow!("--kv-dtype: {e}"))?;
        }
        Ok(())
    }

    /// Sets the model's KV formats (checked against its head size).
    pub fn apply<B: Backend>(&self, model: &mut Llama4<B>) -> Result<()> {
        let [global, chunked] = self.kv_dtypes::<B>()?;
        model.set_kv_dtypes(global, chunked).map_err(|e| anyhow::anyhow!("--kv-dtype: {e}"))
    }
}

/// "bf16", or "global=q8,chunked=bf16" where they differ: the KV formats in a benchmark's or server's output.
pub fn kv_dtypes_name([global, chunked]: [KvDtype; 2]) -> String {
    if global == chunked {
        global.name().to_string()
    } else {
        format!("global={},chunked={}", global.name(), chunked.name())
    }
}

#[derive(Clone)]
pub enum ModelFiles {
    Dir(PathBuf),
    Demo,
}

impl ModelFiles {
    pub fn new(dir: Option<PathBuf>) -> Self {
        dir.map_or(ModelFiles::Demo, ModelFiles::Dir)
    }

    /// The model as a directory on disk: the demo model is written out once (under the temp dir).
    pub fn to_dir(&self) -> Result<PathBuf> {
        match self {
            ModelFiles::Dir(d) => Ok(d.clone()),
            ModelFiles::Demo => {
                let dir = std::env::temp_dir().join(format!("herd-demo-model-{}", env!("CARGO_PKG_VERSION")));
                std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
                for (name, bytes) in [
                    ("config.json", demo::CONFIG),
                    ("model.safetensors", demo::WEIGHTS),
                    ("tokenizer.json", demo::TOKENIZER),
                    ("tokenizer_config.json", demo::TOKENIZER_CONFIG.as_bytes()),
                    ("generation_config.json", demo::GENERATION_CONFIG.as_bytes()),
                ] {
                    let path = dir.join(name);
                    // Only a regular file of the right length is read back (never a FIFO or link put there).
                    let same = std::fs::symlink_metadata(&path)
                        .is_ok_and(|m| m.is_file() && m.len() == bytes.len() as u64)
                        && std::fs::read(&path).ok().as_deref() == Some(bytes);
                    if !same {
                        // Written beside and renamed, so a concurrent reader never sees half a file.
                        let tmp = dir.join(format!(".{name}.{}", std::process::id()));
                        std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
                        std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
                    }
                }
                Ok(dir)
            }
        }
    }

    /// The name a server gives the model: its directory's name (a Hugging Face cache snapshot is named by
    /// its repository), or `herd-demo`.
    pub fn model_id(&self) -> String {
        match self {
            ModelFiles::Demo => "herd-demo".into(),
            ModelFiles::Dir(d) => {
                let d = d.canonicalize().unwrap_or_else(|_| d.clone());
                let parts: Vec<String> = d.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect();
                let n = parts.len();
                // .../models--org--name/snapshots/<revision>
                if n >= 3 && parts[n - 2] == "snapshots" && parts[n - 3].starts_with("models--") {
                    return parts[n - 3].trim_start_matches("models--").replacen("--", "/", 1);
                }
                parts.last().cloned().unwrap_or_else(|| "model".into())
            }
        }
    }

    pub fn describe(&self) -> String {
        match self {
            ModelFiles::Dir(d) => d.display().to_string(),
            ModelFiles::Demo => "the built-in demo model".into(),
        }
    }

    pub fn config(&self) -> Result<ModelConfig> {
        Ok(match self {
            ModelFiles::Dir(d) => ModelConfig::from_file(&d.join("config.json"))?,
            ModelFiles::Demo => ModelConfig::from_json_bytes(demo::CONFIG).context("demo config.json")?,
        })
    }

    pub fn checkpoint(&self) -> Result<Checkpoint> {
        Ok(match self {
            ModelFiles::Dir(d) => Checkpoint::open_dir(d)?,
            ModelFiles::Demo => {
                Checkpoint::from_bytes(vec![("demo/model.safetensors".into(), FileBytes::Static(demo::WEIGHTS))])?
            }
        })
    }

    pub fn tokenizer(&self) -> Result<Tokenizer> {
        Ok(match self {
            ModelFiles::Dir(d) => Tokenizer::from_dir(d)?,
            ModelFiles::Demo => Tokenizer::from_bytes(demo::TOKENIZER)?,
        })
    }

    pub fn chat_template(&self) -> Result<ChatTemplate> {
        Ok(match self {
            ModelFiles::Dir(d) => ChatTemplate::from_dir(d)?,
            ModelFiles::Demo => ChatTemplate::from_config_str(demo::TOKENIZER_CONFIG)?,
        })
    }

    /// preprocessor_config.json (the image processor's settings), when the model has one.
    pub fn preprocessor_config(&self) -> Result<Option<String>> {
        match self {
            ModelFiles::Dir(d) => {
                let path = d.join("preprocessor_config.json");
                if !path.exists() {
                    return Ok(None);
                }
                Ok(Some(herd_core::limits::read_input_string(&path, herd_core::limits::InputKind::SmallJson)?))
            }
            ModelFiles::Demo => Ok(None),
        }
    }

    pub fn generation_config(&self) -> Result<GenerationConfig> {
        Ok(match self {
            ModelFiles::Dir(d) => GenerationConfig::from_dir(d)?,
            ModelFiles::Demo => GenerationConfig::from_json_str(demo::GENERATION_CONFIG)?,
        })
    }

    /// Loads the text model onto `backend`, with a progress bar on a terminal, set up as `opts` says.
    pub fn load<B: Backend>(&self, backend: Arc<B>, opts: &LoadOptions) -> Result<(ModelConfig, Llama4<B>)> {
        let bar = indicatif::ProgressBar::new(self.config()?.text.num_hidden_layers as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template("loading {msg} [{bar:30}] {pos}/{len} layers {elapsed}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar.set_message(self.describe());
        let loaded = self.load_with_progress(backend, opts, &mut |done, _| bar.set_position(done as u64));
        bar.finish_and_clear();
        loaded
    }

    /// [`ModelFiles::load`] telling `progress` each layer loaded (layers done, layers in all).
    pub fn load_with_progress<B: Backend>(
        &self,
        backend: Arc<B>,
        opts: &LoadOptions,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<(ModelConfig, Llama4<B>)> {
        let experts = opts.experts.as_ref();
        let cfg = self.config()?;
        let ck = self.checkpoint()?;
        // compressed-tensors' pack-quantized checkpoints are read into herd's int4/int8 formats.
        let ct = match self {
            ModelFiles::Dir(d) => {
                let path = d.join("config.json");
                let raw: serde_json::Value = serde_json::from_slice(&herd_core::limits::read_input(
                    &path,
                    herd_core::limits::InputKind::Config,
                )?)
                .with_context(|| format!("{}: not valid JSON", path.display()))?;
                herd_core::compressed::is_pack_quantized(&raw)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
            }
            ModelFiles::Demo => false,
        };
        let mut model = if ct {
            let src = herd_core::compressed::CompressedTensors { ck: &ck };
            Llama4::load_with(backend, &src, &cfg.text, experts, progress)?
        } else {
            Llama4::load_with(backend, &ck, &cfg.text, experts, progress)?
        };
        note_unused_cache(&model, experts, &self.describe());
        opts.apply(&mut model)?;
        Ok((cfg, model))
    }
}

/// Says on stderr when --expert-cache was given for a model without routed experts (a dense model).
pub fn note_unused_cache<B: Backend>(model: &Llama4<B>, experts: Option<&ExpertCacheOptions>, what: &str) {
    if experts.is_some() && model.expert_stats().is_none() {
        eprintln!("note: {what} has no routed experts: --expert-cache changes nothing");
    }
}

/// Refuses an output path [`write_output`] would refuse (a link, or something other than a regular file),
/// so a command can say so before it computes anything.
pub fn check_output(path: &std::path::Path) -> Result<()> {
    use anyhow::bail;
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => {
            bail!("{}: is a symbolic link; herd does not write through links (give the target's path)", path.display())
        }
        Ok(m) if !m.is_file() => bail!(
            "{}: exists and is not a regular file (a directory, device or FIFO); refused rather than replaced",
            path.display()
        ),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(anyhow::Error::new(e).context(format!("{}", path.display()))),
    }
}

/// Writes an output file the safe way: never through a symbolic link, never over anything but a regular
/// file (so `--output /dev/null` or a FIFO is refused instead of replaced by a file), through a temporary
/// file in the same directory renamed into place once complete (a failure leaves the old file, or none),
/// created with the mode the umask gives (0666 before it), as any file a user's tool makes.
pub fn write_output(
    path: &std::path::Path,
    write: impl FnOnce(&mut std::fs::File) -> std::io::Result<()>,
) -> Result<()> {
    use std::io::Write;
    check_output(path)?;
    let name = path.file_name().with_context(|| format!("{}: not a file name", path.display()))?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!(".{}.herd-tmp.{}.{n}", name.to_string_lossy(), std::process::id()));
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o666);
    let mut file = opts.open(&tmp).with_context(|| format!("{}: cannot create a file beside it", path.display()))?;
    let done = write(&mut file).and_then(|_| file.flush()).and_then(|_| file.sync_all());
    drop(file);
    if let Err(e) = done.and_then(|_| std::fs::rename(&tmp, path)) {
        let _ = std::fs::remove_file(&tmp);
        return Err(anyhow::Error::new(e).context(format!("{}: cannot write", path.display())));
    }
    Ok(())
}
