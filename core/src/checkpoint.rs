//! Safetensors checkpoints: a single `model.safetensors` or shards listed by `model.safetensors.index.json`,
//! memory-mapped (never read whole), validated, with tensor names mapped so that both
//! `Llama4ForConditionalGeneration` (`language_model.model.*`) and `Llama4ForCausalLM` (`model.*`) layouts
//! answer to the same logical name (`model.layers.0.self_attn.q_proj.weight`, `lm_head.weight`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{HerdError, Result};
use crate::quant::DType;

/// The bytes of one safetensors file.
pub enum FileBytes {
    /// A memory-mapped file, with the open file itself for [`FileBytes::read_range`].
    #[cfg(not(target_arch = "wasm32"))]
    Mapped {
        map: memmap2::Mmap,
        file: std::fs::File,
        path: PathBuf,
    },
    Static(&'static [u8]),
    Owned(Vec<u8>),
}

impl FileBytes {
    pub fn as_slice(&self) -> &[u8] {
        match self {
            #[cfg(not(target_arch = "wasm32"))]
            FileBytes::Mapped { map, .. } => map,
            FileBytes::Static(s) => s,
            FileBytes::Owned(v) => v,
        }
    }

    /// A copy of bytes `start..end`. A mapped file is read with positioned reads rather than through the
    /// mapping, so a file that was truncated or replaced after it was opened (a download cut short, a
    /// rewrite) is an error here instead of a fault: what streamed experts are read with.
    pub fn read_range(&self, start: usize, end: usize) -> std::result::Result<Vec<u8>, String> {
        let mut out = vec![0u8; end.saturating_sub(start)];
        self.read_into(start, &mut out)?;
        Ok(out)
    }

    /// Bytes `start..start + out.len()` into `out`, as [`FileBytes::read_range`] reads them: a mapped file
    /// with positioned reads, which neither fault on a file cut short nor leave the mapping's pages resident.
    pub fn read_into(&self, start: usize, out: &mut [u8]) -> std::result::Result<(), String> {
        let end = start + out.len();
        match self {
            #[cfg(not(target_arch = "wasm32"))]
            FileBytes::Mapped { .. } if out.len() >= 2 * READ_PART => {
                // Large reads in parts on rayon's threads: into fresh memory most of the time goes to the
                // kernel zeroing the pages it faults in, which runs on the thread that touches them.
                use rayon::prelude::*;
                out.par_chunks_mut(READ_PART)
                    .enumerate()
                    .try_for_each(|(i, part)| self.read_into(start + i * READ_PART, part))
            }
            #[cfg(not(target_arch = "wasm32"))]
            FileBytes::Mapped { file, path, .. } => {
                let mut done = 0;
                while done < out.len() {
                    match read_at(file, &mut out[done..], (start + done) as u64) {
                        Ok(0) => {
                            let len = file.metadata().map(|m| m.len()).unwrap_or(0);
                            return Err(format!(
                                "{}: bytes {start}..{end} are past the end of the file ({len} bytes now): it was \
                                 truncated after it was opened",
                                path.display()
                            ));
                        }
                        Ok(n) => done += n,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(format!("{}: {e}", path.display())),
                    }
                }
                Ok(())
            }
            _ => {
                let s = self.as_slice();
                let src = s
                    .get(start..end)
                    .ok_or_else(|| format!("bytes {start}..{end} are past the end of the data ({} bytes)", s.len()))?;
                out.copy_from_slice(src);
                Ok(())
            }
        }
    }
}

/// The parts [`FileBytes::read_into`] splits a large read into.
#[cfg(not(target_arch = "wasm32"))]
const READ_PART: usize = 4 << 20;

#[cfg(unix)]
fn read_at(f: &std::fs::File, buf: &mut [u8], off: u64) -> std::io::Result<usize> {
    std::os::unix::fs::FileExt::read_at(f, buf, off)
}

#[cfg(windows)]
fn read_at(f: &std::fs::File, buf: &mut [u8], off: u64) -> std::io::Result<usize> {
    std::os::windows::fs::FileExt::seek_read(f, buf, off)
}

/// One tensor of a checkpoint: where its bytes are, and what they are.
#[derive(Clone)]
pub struct TensorRef {
    /// The name as stored in the file.
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
    file: Arc<FileBytes>,
    start: usize,
    end: usize,
}

impl TensorRef {
    /// The tensor's raw little-endian bytes (borrowed from the mapping).
    pub fn bytes(&self) -> &[u8] {
        &self.file.as_slice()[self.start..self.end]
    }
    /// The file the bytes live in, for backends that keep the mapping instead of copying.
    pub fn file(&self) -> &Arc<FileBytes> {
        &self.file
    }
    /// Byte range inside [`TensorRef::file`].
    pub fn range(&self) -> (usize, usize) {
        (self.start, self.end)
    }
    /// A tensor that owns its bytes (not read from a file).
    pub fn owned(name: &str, dtype: DType, shape: Vec<usize>, bytes: Vec<u8>) -> TensorRef {
        let end = bytes.len();
        TensorRef { name: name.into(), dtype, shape, file: Arc::new(FileBytes::Owned(bytes)), start: 0, end }
    }
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    /// The tensor converted to f32 (allocates; meant for small tensors such as norms).
    pub fn to_f32(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.numel()];
        crate::quant::bytes_to_f32(self.dtype, &self.shape, self.bytes(), &mut out);
        out
    }
}

/// A tensor in a dtype herd does not compute with (e.g. int32 packed values), as stored.
#[derive(Clone)]
pub struct RawTensor {
    pub name: String,
    pub dtype: safetensors::Dtype,
    pub shape: Vec<usize>,
    file: Arc<FileBytes>,
    start: usize,
    end: usize,
}

impl RawTensor {
    pub fn bytes(&self) -> &[u8] {
        &self.file.as_slice()[self.start..self.end]
    }
}

/// All tensors of a checkpoint by logical name (a clone shares the files).
#[derive(Clone)]
pub struct Checkpoint {
    tensors: HashMap<String, TensorRef>,
    /// Tensors in a format herd cannot compute with: logical name → (stored name, message).
    unsupported: HashMap<String, (String, String)>,
    /// Tensors of other dtypes (integers: the packed values of other tools' quantized formats), for readers
    /// that know them ([`Checkpoint::raw`]).
    raw: HashMap<String, RawTensor>,
    /// Where the tensors came from, for messages.
    pub source: String,
}

const INDEX: &str = "model.safetensors.index.json";
const SINGLE: &str = "model.safetensors";

/// The shard file names a `model.safetensors.index.json` lists (its `weight_map` values), sorted and
/// deduplicated, each checked to name a file inside the model directory; the error is one line, without
/// the index's path. Pure, so the fuzz targets run it as [`Checkpoint::open_dir`] does.
pub fn parse_index(bytes: &[u8]) -> std::result::Result<Vec<String>, String> {
    let v: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| format!("not valid JSON: {e}"))?;
    let map = v.get("weight_map").and_then(|m| m.as_object()).ok_or("no `weight_map` object")?;
    let mut shards = std::collections::BTreeSet::new();
    for (name, f) in map {
        let f = f.as_str().ok_or_else(|| format!("weight_map[{name:?}] is not a file name"))?;
        if f.contains('/') || f.contains('\\') || f.starts_with('.') {
            return Err(format!("weight_map[{name:?}] names a file outside the model directory: {f:?}"));
        }
        shards.insert(f);
    }
    Ok(shards.into_iter().map(str::to_owned).collect())
}

/// Maps a stored tensor name to herd's logical name: the multimodal wrapper's `language_model.` prefix
/// is dropped (as transformers does when loading a full checkpoint into `Llama4ForCausalLM`).
fn logical_name(stored: &str) -> &str {
    stored.strip_prefix("language_model.").unwrap_or(stored)
}

impl Checkpoint {
    /// Opens the safetensors files of a model directory.
    pub fn open_dir(dir: &Path) -> Result<Self> {
        let index = dir.join(INDEX);
        let files: Vec<PathBuf> = if index.exists() {
            let bytes = crate::limits::read_input(&index, crate::limits::InputKind::Index)?;
            let shards = parse_index(&bytes).map_err(|m| HerdError::bad_file(&index, m))?;
            shards.into_iter().map(|s| dir.join(s)).collect()
        } else if dir.join(SINGLE).exists() {
            vec![dir.join(SINGLE)]
        } else {
            if !dir.is_dir() {
                return Err(HerdError::bad_file(dir, "model directory does not exist"));
            }
            return Err(HerdError::bad_file(dir, format!("no {SINGLE} or {INDEX} in the model directory")));
        };
        let mut ck = Checkpoint {
            tensors: HashMap::new(),
            unsupported: HashMap::new(),
            raw: HashMap::new(),
            source: dir.display().to_string(),
        };
        for path in files {
            // A shard must be a regular file: a FIFO would block the open, a device map garbage.
            let meta = std::fs::metadata(&path).map_err(|e| HerdError::io(&path, e))?;
            if !meta.is_file() {
                return Err(HerdError::bad_file(&path, "is not a regular file (a directory, device or FIFO)"));
            }
            let file = std::fs::File::open(&path).map_err(|e| HerdError::io(&path, e))?;
            #[cfg(not(target_arch = "wasm32"))]
            // SAFETY: the mapping is read-only; herd never writes model files while they are mapped. A file
            // truncated by another process while mapped would fault, as with every mmap-based loader.
            let bytes = FileBytes::Mapped {
                map: unsafe { memmap2::Mmap::map(&file) }.map_err(|e| HerdError::io(&path, e))?,
                file,
                path: path.clone(),
            };
            #[cfg(target_arch = "wasm32")]
            let bytes = {
                use std::io::Read;
                let mut v = Vec::new();
                (&file).read_to_end(&mut v).map_err(|e| HerdError::io(&path, e))?;
                FileBytes::Owned(v)
            };
            ck.add_file(&path.display().to_string(), bytes)?;
        }
        Ok(ck)
    }

    /// A checkpoint from in-memory safetensors files (the built-in demo model, the browser).
    pub fn from_bytes(files: Vec<(String, FileBytes)>) -> Result<Self> {
        let mut ck = Checkpoint {
            tensors: HashMap::new(),
            unsupported: HashMap::new(),
            raw: HashMap::new(),
            source: "<memory>".into(),
        };
        for (name, bytes) in files {
            ck.add_file(&name, bytes)?;
        }
        Ok(ck)
    }

    /// A checkpoint from tensors already in memory (name, dtype, shape, little-endian bytes), each kept in its
    /// own [`FileBytes::Owned`] buffer: no safetensors serialisation, no copy. Used for synthetic models.
    pub fn from_tensors(source: &str, tensors: Vec<(String, DType, Vec<usize>, Vec<u8>)>) -> Result<Self> {
        let mut ck = Checkpoint {
            tensors: HashMap::new(),
            unsupported: HashMap::new(),
            raw: HashMap::new(),
            source: source.into(),
        };
        for (name, dtype, shape, bytes) in tensors {
            if Ok(bytes.len()) != dtype.bytes(&shape) {
                return Err(HerdError::tensor(
                    &name,
                    format!("in {source}: {} bytes for shape {shape:?} of {}", bytes.len(), dtype.name()),
                ));
            }
            let logical = logical_name(&name).to_owned();
            let end = bytes.len();
            let t =
                TensorRef { name: name.clone(), dtype, shape, file: Arc::new(FileBytes::Owned(bytes)), start: 0, end };
            if ck.tensors.insert(logical.clone(), t).is_some() {
                return Err(HerdError::tensor(
                    &name,
                    format!("in {source}: appears twice (as `{}`)", logical.escape_debug()),
                ));
            }
        }
        Ok(ck)
    }

    fn add_file(&mut self, path: &str, bytes: FileBytes) -> Result<()> {
        let bytes = Arc::new(bytes);
        let (n, meta) = safetensors::SafeTensors::read_metadata(bytes.as_slice()).map_err(|e| {
            HerdError::bad_file(path, format!("not a valid safetensors file ({e}); truncated or corrupt?"))
        })?;
        for h in header_tensors(path, 8 + n, &meta)? {
            let logical = logical_name(&h.name).to_owned();
            let Some(dtype) = h.dtype else {
                // Reported when (and only if) the model asks for it: a checkpoint may carry tensors herd
                // does not use in a format it cannot compute with.
                let msg = format!("in {path}: unsupported dtype {:?} (herd reads F32, BF16, F16)", h.stored);
                let raw = RawTensor {
                    name: h.name.clone(),
                    dtype: h.stored,
                    shape: h.shape,
                    file: bytes.clone(),
                    start: h.start,
                    end: h.end,
                };
                self.raw.insert(logical.clone(), raw);
                self.unsupported.insert(logical, (h.name, msg));
                continue;
            };
            let t = TensorRef {
                name: h.name.clone(),
                dtype,
                shape: h.shape,
                file: bytes.clone(),
                start: h.start,
                end: h.end,
            };
            if self.tensors.insert(logical.clone(), t).is_some() {
                return Err(HerdError::tensor(
                    &h.name,
                    format!("in {path}: appears twice (as `{}`)", logical.escape_debug()),
                ));
            }
        }
        Ok(())
    }

    /// A tensor by logical name.
    pub fn get(&self, name: &str) -> Result<&TensorRef> {
        if let Some((stored, msg)) = self.unsupported.get(name) {
            return Err(HerdError::tensor(stored, msg.clone()));
        }
        self.tensors
            .get(name)
            .ok_or_else(|| HerdError::tensor(name, format!("missing from the checkpoint in {}", self.source)))
    }

    /// A tensor of a dtype herd does not compute with, by logical name.
    pub fn raw(&self, name: &str) -> Option<&RawTensor> {
        self.raw.get(name)
    }

    /// Every tensor of a dtype herd does not compute with, by logical name.
    pub fn raw_tensors(&self) -> impl Iterator<Item = (&str, &RawTensor)> {
        self.raw.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// A tensor by logical name, checking its shape.
    pub fn get_shaped(&self, name: &str, shape: &[usize]) -> Result<&TensorRef> {
        let t = self.get(name)?;
        if t.shape != shape {
            return Err(HerdError::tensor(
                &t.name,
                format!("has shape {:?}, expected {:?} from config.json", t.shape, shape),
            ));
        }
        Ok(t)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name) || self.unsupported.contains_key(name)
    }

    /// All tensors (logical name → tensor).
    pub fn tensors(&self) -> impl Iterator<Item = (&str, &TensorRef)> {
        self.tensors.iter().map(|(k, v)| (k.as_str(), v))
    }
}

/// One tensor of a safetensors file as the file's header describes it, before its bytes are read: what a
/// browser learns from one range request for the header, before it fetches only the tensors it needs.
#[derive(Debug, Clone)]
pub struct HeaderTensor {
    /// The stored name (`language_model.model.…` or `model.…`).
    pub name: String,
    /// herd's format for it; None for a dtype herd does not compute with (`stored` says which).
    pub dtype: Option<DType>,
    pub stored: safetensors::Dtype,
    /// The logical shape (a quantized tensor's, from the file's metadata).
    pub shape: Vec<usize>,
    /// Byte offsets in the file (the header included).
    pub start: usize,
    pub end: usize,
}

impl HeaderTensor {
    /// herd's logical name (see [`Checkpoint`]).
    pub fn logical(&self) -> &str {
        logical_name(&self.name)
    }
}

/// The length of a safetensors header, 8 + n, from the file's first 8 bytes (where its data starts).
pub fn header_len(path: &str, first: &[u8]) -> Result<usize> {
    let n: [u8; 8] = first
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| HerdError::bad_file(path, "shorter than a safetensors header"))?;
    let n = u64::from_le_bytes(n);
    // safetensors' own limit.
    if n > 100_000_000 {
        return Err(HerdError::bad_file(path, format!("a header of {n} bytes: not a safetensors file?")));
    }
    Ok(8 + n as usize)
}

/// The tensors a safetensors header describes, from the file's first [`header_len`] bytes, checked against
/// the file's length.
pub fn parse_header(path: &str, head: &[u8], file_len: usize) -> Result<Vec<HeaderTensor>> {
    let base = header_len(path, head)?;
    let json = head.get(8..base).ok_or_else(|| HerdError::bad_file(path, "the header is cut short"))?;
    let meta: safetensors::tensor::Metadata = serde_json::from_slice(json)
        .map_err(|e| HerdError::bad_file(path, format!("not a valid safetensors header ({e})")))?;
    let tensors = header_tensors(path, base, &meta)?;
    if let Some(t) = tensors.iter().find(|t| t.end > file_len) {
        return Err(HerdError::tensor(
            &t.name,
            format!("in {path}: bytes {}..{} are past the end of the file ({file_len} bytes)", t.start, t.end),
        ));
    }
    Ok(tensors)
}

/// Each tensor of a parsed header, its format read from the file's metadata (herd's quantized tensors) or
/// its dtype, its size checked against its shape.
fn header_tensors(path: &str, base: usize, meta: &safetensors::tensor::Metadata) -> Result<Vec<HeaderTensor>> {
    let notes = meta.metadata().clone().unwrap_or_default();
    let mut out = Vec::new();
    for (name, info) in meta.tensors() {
        let (s, e) = info.data_offsets;
        if e < s {
            return Err(HerdError::tensor(&name, format!("in {path}: data offsets {s}..{e} run backwards")));
        }
        // A quantized tensor (herd_core::quant): U8 bytes whose format and logical shape the file's
        // metadata gives.
        let (dtype, shape) = if let Some(desc) = notes.get(&crate::quant::metadata_key(&name)) {
            let (dtype, shape) =
                crate::quant::parse_metadata(desc).map_err(|e| HerdError::tensor(&name, format!("in {path}: {e}")))?;
            let want = dtype.bytes(&shape).map_err(|e| HerdError::tensor(&name, e))?;
            if info.dtype != safetensors::Dtype::U8 || e - s != want {
                return Err(HerdError::tensor(
                    &name,
                    format!("in {path}: {} bytes of {:?} for {desc}, expected {want} bytes of U8", e - s, info.dtype),
                ));
            }
            (Some(dtype), shape)
        } else {
            let dtype = DType::from_safetensors(info.dtype);
            if let Some(dt) = dtype {
                let size =
                    crate::quant::checked_numel(&info.shape).ok().and_then(|n| n.checked_mul(dt.size())).ok_or_else(
                        || HerdError::tensor(&name, format!("in {path}: shape {:?} is too large", info.shape)),
                    )?;
                if e - s != size {
                    return Err(HerdError::tensor(
                        &name,
                        format!("in {path}: {} bytes for shape {:?} of {}", e - s, info.shape, dt.name()),
                    ));
                }
            }
            (dtype, info.shape.clone())
        };
        let (Some(start), Some(end)) = (base.checked_add(s), base.checked_add(e)) else {
            return Err(HerdError::tensor(&name, format!("in {path}: data offsets {s}..{e} are past any file")));
        };
        out.push(HeaderTensor { name, dtype, stored: info.dtype, shape, start, end });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_tensors_keeps_bytes_and_checks_sizes() {
        let bytes: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0].iter().flat_map(|x| x.to_le_bytes()).collect();
        let ck = Checkpoint::from_tensors(
            "<test>",
            vec![
                ("language_model.model.norm.weight".into(), DType::F32, vec![2, 3], bytes),
                ("lm_head.weight".into(), DType::BF16, vec![2], vec![0x80, 0x3f, 0x00, 0x40]),
            ],
        )
        .unwrap();
        let t = ck.get_shaped("model.norm.weight", &[2, 3]).unwrap();
        assert_eq!(t.to_f32(), vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        assert_eq!(t.name, "language_model.model.norm.weight");
        assert_eq!(ck.get("lm_head.weight").unwrap().to_f32(), vec![1.0, 2.0]);
        assert_eq!(ck.source, "<test>");

        let err = Checkpoint::from_tensors("<test>", vec![("w".into(), DType::BF16, vec![3], vec![0; 4])])
            .err()
            .expect("wrong size accepted")
            .to_string();
        assert!(err.contains("4 bytes for shape [3]"), "{err}");
    }

    /// A header read alone (as a browser reads it) describes the same tensors, at the same bytes, as the
    /// whole file opened as a checkpoint; a header cut short, garbled or pointing past the file is an error.
    #[test]
    fn a_header_alone_describes_the_file_as_the_checkpoint_does() {
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures");
        for dir in ["scout", "scout_bf16"] {
            let path = fixtures.join(dir).join("model.safetensors");
            let file = std::fs::read(&path).unwrap();
            let ck = Checkpoint::from_bytes(vec![("f".into(), FileBytes::Owned(file.clone()))]).unwrap();
            let n = header_len("f", &file[..8]).unwrap();
            let tensors = parse_header("f", &file[..n], file.len()).unwrap();
            assert_eq!(tensors.len(), ck.tensors().count(), "{dir}");
            for h in &tensors {
                let t = ck.get(h.logical()).unwrap();
                assert_eq!((Some(t.dtype), &t.shape), (h.dtype, &h.shape), "{dir}: {}", h.name);
                assert!(t.bytes() == &file[h.start..h.end], "{dir}: {} bytes differ", h.name);
            }
            assert!(parse_header("f", &file[..n - 1], file.len()).is_err(), "{dir}: short header");
            assert!(header_len("f", &file[..7]).is_err());
            let short = parse_header("f", &file[..n], file.len() - 1).expect_err("past the end").to_string();
            assert!(short.contains("past the end"), "{short}");
            let mut bad = file[..n].to_vec();
            bad[9] = b'#';
            assert!(parse_header("f", &bad, file.len()).is_err(), "{dir}: garbled header");
        }
    }
}
