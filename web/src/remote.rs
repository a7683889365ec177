//! A model directory on a web server: its small files, each safetensors header (one range request), the
//! tensors the model keeps resident, and the routed experts as an [`ExpertSource`] that fetches one expert's
//! bytes when a router picks it. Every range is verified against the checksum manifest before use.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

use futures_util::future::join_all;
use herd_core::backend::Backend;
use herd_core::checkpoint::{header_len, parse_header, HeaderTensor, TensorRef};
use herd_core::quant::DType;
use herd_core::source::{ExpertFuture, ExpertSource};
use herd_core::source::{StageFuture, WeightSource};
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

/// The layer a logical tensor name belongs to.
fn layer_of(logical: &str) -> Option<usize> {
    logical.strip_prefix("model.layers.")?.split('.').next()?.parse().ok()
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

    /// The text model's tensors of one part (see [`WeightSource::stage`]): `None` those outside the layers,
    /// `Some(i)` layer i's; without the routed experts when they stream.
    fn part(&self, part: Option<usize>, streamed: bool) -> Vec<(&RemoteFile, &HeaderTensor)> {
        let prefix = part.map(|i| format!("model.layers.{i}."));
        self.files
            .iter()
            .flat_map(|f| f.tensors.iter().map(move |t| (f, t)))
            .filter(|(_, t)| {
                let l = t.logical();
                let ours = match &prefix {
                    Some(p) => l.starts_with(p.as_str()),
                    None => !l.starts_with("model.layers."),
                };
                ours && text_tensor(l) && !(streamed && is_routed_expert(l))
            })
            .collect()
    }

    /// Bytes of the text model's tensors that load (all but streamed experts).
    pub fn resident_bytes(&self, streamed: bool) -> usize {
        let layers = self.files.iter().flat_map(|f| &f.tensors).filter_map(|t| layer_of(t.logical())).max();
        let parts = std::iter::once(None).chain((0..layers.map_or(0, |n| n + 1)).map(Some));
        parts.map(|p| self.part(p, streamed).iter().map(|(_, t)| t.end - t.start).sum::<usize>()).sum()
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

/// The model's weights over HTTP: each part is fetched when the model stages it (a few ranges in flight,
/// verified), uploaded when asked for, and its bytes dropped then, so the page holds one layer's tensors at
/// a time. Routed experts stream from [`HttpExperts`] when `streamed`.
pub struct WebWeights<'a> {
    pub remote: &'a Remote,
    pub streamed: bool,
    pub experts: Arc<HttpExperts>,
    /// Fetched and not yet uploaded: logical name → tensor.
    staged: RefCell<HashMap<String, TensorRef>>,
    /// Bytes fetched so far, and `progress("weights", done, total)`.
    done: RefCell<usize>,
    pub total: usize,
    /// The most bytes staged at once.
    pub peak: RefCell<usize>,
    progress: RefCell<Progress<'a>>,
}

impl<'a> WebWeights<'a> {
    pub fn new(remote: &'a Remote, streamed: bool, progress: Progress<'a>) -> Self {
        WebWeights {
            remote,
            streamed,
            experts: Arc::new(remote.experts()),
            staged: RefCell::new(HashMap::new()),
            done: RefCell::new(0),
            total: remote.resident_bytes(streamed),
            peak: RefCell::new(0),
            progress: RefCell::new(progress),
        }
    }

    async fn fetch_part(&self, part: Option<usize>) -> Result<()> {
        let wanted = self.remote.part(part, self.streamed);
        for batch in wanted.chunks(IN_FLIGHT) {
            let got = join_all(batch.iter().map(|&(f, t)| self.remote.fetch_tensor(f, t))).await;
            for ((_, t), r) in batch.iter().zip(got) {
                let (dtype, bytes) = r?;
                *self.done.borrow_mut() += bytes.len();
                let tensor = TensorRef::owned(&t.name, dtype, t.shape.clone(), bytes);
                self.staged.borrow_mut().insert(t.logical().to_owned(), tensor);
            }
            let held: usize = self.staged.borrow().values().map(|t| t.bytes().len()).sum();
            let mut peak = self.peak.borrow_mut();
            *peak = (*peak).max(held);
            (self.progress.borrow_mut())("weights", *self.done.borrow() as f64, self.total as f64);
        }
        Ok(())
    }
}

impl WebWeights<'_> {
    fn has(&self, name: &str) -> bool {
        self.remote.files.iter().any(|f| f.tensors.iter().any(|t| t.logical() == name))
    }
}

impl<B: Backend> WeightSource<B> for WebWeights<'_> {
    fn contains(&self, name: &str) -> bool {
        self.has(name)
    }
    fn weight(&self, be: &B, name: &str, shape: &[usize]) -> Result<B::Weight> {
        let t = self.staged.borrow_mut().remove(name).ok_or_else(|| {
            if self.has(name) {
                HerdError::tensor(name, "asked for before its part was fetched")
            } else {
                HerdError::tensor(name, format!("not in the checkpoint at {}", self.remote.base))
            }
        })?;
        if t.shape != shape {
            return Err(HerdError::tensor(&t.name, format!("shape {:?}, the config needs {shape:?}", t.shape)));
        }
        be.load_weight(&t)
    }
    fn experts(&self) -> Option<Arc<dyn ExpertSource>> {
        Some(self.experts.clone())
    }
    fn stage(&self, part: Option<usize>) -> StageFuture<'_> {
        Box::pin(self.fetch_part(part))
    }
}
