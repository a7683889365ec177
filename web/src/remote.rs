//! A model directory on a web server: its small files, each safetensors header (one range request), the
//! tensors the model keeps resident, and the routed experts as an [`ExpertSource`] that fetches one expert's
//! bytes when a router picks it. Every range is verified against the checksum manifest before use.

use std::collections::HashMap;
use std::sync::Arc;

use futures_util::future::join_all;
use herd_core::backend::Backend;
use herd_core::checkpoint::{header_len, parse_header, Checkpoint, HeaderTensor, TensorRef};
use herd_core::experts::{ExpertFuture, ExpertSource};
use herd_core::model::WeightSource;
use herd_core::quant::DType;
use herd_core::{HerdError, Result};

use crate::fetch;
use crate::manifest::{is_routed_expert, Manifest, MANIFEST};

/// Range requests in flight at once while the resident tensors load.
const IN_FLIGHT: usize = 6;

/// `progress(phase, done, total)`.
pub type Progress<'a> = &'a mut dyn FnMut(&str, f64, f64);

fn input(m: impl Into<String>) -> HerdError {
    HerdError::Input(m.into())
}

/// One safetensors file of the model.
pub struct RemoteFile {
    pub url: String,
    pub tensors: Vec<HeaderTensor>,
}

/// A model directory served over HTTP.
pub struct Remote {
    pub base: String,
    pub config: Vec<u8>,
    pub tokenizer: Vec<u8>,
    pub tokenizer_config: String,
    pub generation_config: Option<String>,
    pub files: Vec<RemoteFile>,
    pub manifest: Option<Arc<Manifest>>,
}

/// Whether the text model reads this tensor (the vision tower's are never fetched).
fn text_tensor(logical: &str) -> bool {
    logical.starts_with("model.") || logical == "lm_head.weight"
}

impl Remote {
    /// Reads the directory at `base`: config, tokenizer files, index, manifest, and each file's header.
    pub async fn open(base: &str, progress: Progress<'_>) -> Result<Remote> {
        let base = if base.ends_with('/') { base.to_owned() } else { format!("{base}/") };
        let need = |name: &'static str, v: Option<Vec<u8>>| {
            v.ok_or_else(|| input(format!("{base}{name}: not found (HTTP 404); is this a model directory?")))
        };
        let get = |name: &str| {
            let url = format!("{base}{name}");
            async move { fetch::get(&url).await.map_err(input) }
        };
        progress("config", 0.0, 4.0);
        let config = need("config.json", get("config.json").await?)?;
        progress("tokenizer", 1.0, 4.0);
        let tokenizer = need("tokenizer.json", get("tokenizer.json").await?)?;
        let tokenizer_config = String::from_utf8(need("tokenizer_config.json", get("tokenizer_config.json").await?)?)
            .map_err(|_| input(format!("{base}tokenizer_config.json: not UTF-8")))?;
        let generation_config = get("generation_config.json").await?.and_then(|b| String::from_utf8(b).ok());
        progress("index", 2.0, 4.0);
        let names: Vec<String> = match get("model.safetensors.index.json").await? {
            Some(bytes) => {
                let v: serde_json::Value = serde_json::from_slice(&bytes)
                    .map_err(|e| input(format!("{base}model.safetensors.index.json: not valid JSON ({e})")))?;
                let map = v["weight_map"]
                    .as_object()
                    .ok_or_else(|| input(format!("{base}model.safetensors.index.json: no weight_map")))?;
                let mut f: Vec<String> = map.values().filter_map(|x| x.as_str().map(str::to_owned)).collect();
                f.sort();
                f.dedup();
                f
            }
            None => vec!["model.safetensors".into()],
        };
        let manifest = match get(MANIFEST).await? {
            Some(bytes) => Some(Arc::new(Manifest::parse(&bytes).map_err(|e| input(format!("{base}{e}")))?)),
            None => None,
        };
        progress("headers", 3.0, 4.0);
        let mut files = Vec::with_capacity(names.len());
        for name in &names {
            let url = format!("{base}{name}");
            let len = match manifest.as_ref().and_then(|m| m.file_len(name)) {
                Some(n) => n as usize,
                None => fetch::length(&url).await.map_err(input)?,
            };
            let first = fetch::ranges(&url, &[(0, 8.min(len))], name, &|_| Ok(())).await.map_err(input)?;
            let n = header_len(name, &first[0])?;
            if n > len {
                return Err(input(format!("{url}: a header of {n} bytes in a file of {len}: truncated or corrupt")));
            }
            let head = fetch::ranges(&url, &[(0, n)], name, &|_| Ok(())).await.map_err(input)?;
            let tensors = parse_header(name, &head[0], len)?;
            files.push(RemoteFile { url, tensors });
        }
        progress("headers", 4.0, 4.0);
        Ok(Remote { base, config, tokenizer, tokenizer_config, generation_config, files, manifest })
    }

    /// Fetches every tensor of the text model but the routed experts when `streamed` (those stay behind
    /// [`Remote::experts`]), verified, as a checkpoint in memory. `progress("weights", bytes, total)`.
    pub async fn resident(&self, streamed: bool, progress: Progress<'_>) -> Result<Checkpoint> {
        let wanted: Vec<(&RemoteFile, &HeaderTensor)> = self
            .files
            .iter()
            .flat_map(|f| f.tensors.iter().map(move |t| (f, t)))
            .filter(|(_, t)| text_tensor(t.logical()) && !(streamed && is_routed_expert(t.logical())))
            .collect();
        let total: usize = wanted.iter().map(|(_, t)| t.end - t.start).sum();
        let mut done = 0;
        let mut tensors = Vec::with_capacity(wanted.len());
        // A few requests in flight at once (what a browser runs in parallel per host over HTTP/1.1), so a
        // model of many small tensors does not wait one round trip per tensor.
        for batch in wanted.chunks(IN_FLIGHT) {
            progress("weights", done as f64, total as f64);
            let got = join_all(batch.iter().map(|&(f, t)| self.fetch_tensor(f, t))).await;
            for ((_, t), r) in batch.iter().zip(got) {
                let (dtype, bytes) = r?;
                done += t.end - t.start;
                tensors.push((t.name.clone(), dtype, t.shape.clone(), bytes));
            }
        }
        progress("weights", total as f64, total as f64);
        Checkpoint::from_tensors(&self.base, tensors)
    }

    /// One resident tensor, verified.
    async fn fetch_tensor(&self, f: &RemoteFile, t: &HeaderTensor) -> Result<(DType, Vec<u8>)> {
        let dtype = t.dtype.ok_or_else(|| {
            HerdError::tensor(
                &t.name,
                format!("{:?} is not a format herd-web reads (F32, BF16, F16, herd's int4/int8)", t.stored),
            )
        })?;
        let verify = |parts: &[&[u8]]| -> std::result::Result<(), String> {
            match &self.manifest {
                Some(m) => m.check_tensor(&t.name, parts[0]),
                None => herd_core::quant::check_finite(dtype, &t.shape, parts[0]),
            }
        };
        let what = format!("tensor {}", t.name);
        let mut got = fetch::ranges(&f.url, &[(t.start, t.end)], &what, &verify).await.map_err(input)?;
        Ok((dtype, got.remove(0)))
    }

    /// The routed experts, fetched one at a time by range when the model asks.
    pub fn experts(&self) -> HttpExperts {
        let mut tensors = HashMap::new();
        for f in &self.files {
            for t in &f.tensors {
                if is_routed_expert(t.logical()) {
                    tensors.insert(t.logical().to_owned(), (f.url.clone(), t.clone()));
                }
            }
        }
        HttpExperts { tensors, manifest: self.manifest.clone() }
    }
}

/// Routed experts fetched by HTTP range when a router picks them.
pub struct HttpExperts {
    /// Logical name → (file URL, tensor).
    tensors: HashMap<String, (String, HeaderTensor)>,
    manifest: Option<Arc<Manifest>>,
}

impl HttpExperts {
    fn tensor(&self, name: &str, shape: &[usize]) -> Result<(&str, &HeaderTensor, DType)> {
        let (url, t) = self.tensors.get(name).ok_or_else(|| HerdError::tensor(name, "not in the checkpoint"))?;
        if t.shape != shape {
            return Err(HerdError::tensor(name, format!("shape {:?}, the config needs {shape:?}", t.shape)));
        }
        let dt =
            t.dtype.ok_or_else(|| HerdError::tensor(name, format!("{:?} is not a format herd reads", t.stored)))?;
        Ok((url, t, dt))
    }

    async fn fetch_row(&self, name: &str, shape: &[usize], e: usize) -> Result<TensorRef> {
        let (url, t, dt) = self.tensor(name, shape)?;
        let ctx = |m: String| HerdError::tensor(&t.name, format!("expert {e}: {m}"));
        let rr = herd_core::quant::row_ranges(dt, &t.shape, e).map_err(ctx)?;
        let parts = [
            (t.start + rr.values.start, t.start + rr.values.end),
            (t.start + rr.scales.start, t.start + rr.scales.end),
        ];
        let mut one = t.shape.clone();
        one[0] = 1;
        let verify = |p: &[&[u8]]| -> std::result::Result<(), String> {
            match &self.manifest {
                Some(m) => m.check_row(&t.name, e, p),
                None => herd_core::quant::check_finite(dt, &one, &herd_core::quant::row_tensor(dt, p[0], p[1])),
            }
        };
        let what = format!("{} expert {e}", t.name);
        let got = fetch::ranges(url, &parts, &what, &verify).await.map_err(input)?;
        let bytes = herd_core::quant::row_tensor(dt, &got[0], &got[1]);
        herd_core::quant::check_finite(dt, &one, &bytes).map_err(|m| ctx(format!("{m}: the file is corrupt")))?;
        Ok(TensorRef::owned(&t.name, dt, one, bytes))
    }
}

impl ExpertSource for HttpExperts {
    fn format(&self, name: &str, shape: &[usize]) -> Result<DType> {
        Ok(self.tensor(name, shape)?.2)
    }
    fn fetch(&self, name: &str, _shape: &[usize], e: usize) -> Result<TensorRef> {
        Err(HerdError::tensor(name, format!("expert {e}: a page fetches experts without blocking (fetch_async)")))
    }
    fn fetch_async<'a>(&'a self, name: &'a str, shape: &'a [usize], e: usize) -> ExpertFuture<'a> {
        Box::pin(self.fetch_row(name, shape, e))
    }
}

/// The resident tensors, and the experts behind HTTP.
pub struct WebWeights {
    pub ck: Checkpoint,
    pub experts: Arc<HttpExperts>,
}

impl<B: Backend> WeightSource<B> for WebWeights {
    fn contains(&self, name: &str) -> bool {
        self.ck.contains(name)
    }
    fn weight(&self, be: &B, name: &str, shape: &[usize]) -> Result<B::Weight> {
        be.load_weight(self.ck.get_shaped(name, shape)?)
    }
    fn experts(&self) -> Option<Arc<dyn ExpertSource>> {
        Some(self.experts.clone())
    }
}
