//! The JavaScript API (wasm-bindgen): `loadModel(url, options)` resolves to a `Herd`, which chats with a
//! streaming token callback, continues token ids greedily (the automation hook), cancels, and reports its
//! statistics. Every method returns at once; work that waits (readback, fetches) runs as a promise. The model
//! runs on the page's WebGPU device, or, in a browser without WebGPU or whose WebGPU is a software fallback,
//! on the CPU backend in WebAssembly (its SIMD128 kernels, one thread), which hands the page back to the
//! browser between steps.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;

use herd_core::backend::Backend;
use herd_core::chat::{ChatTemplate, Message};
use herd_core::config::ModelConfig;
use herd_core::cpu::CpuBackend;
use herd_core::experts::{ExpertCacheOptions, Policy};
use herd_core::generate::greedy_rows;
use herd_core::kv_format::{parse_kv_dtypes, KvDtype};
use herd_core::model::Llama4;
use herd_core::schedule::{queue, Event, Request, Scheduler, SchedulerConfig};
use herd_core::schedule::{GenerateParams, StopReason};
use herd_core::tokenizer::{GenerationConfig, Tokenizer};
use herd_wgpu::{WgpuBackend, WgpuOptions};
use js_sys::{Function, Promise, Reflect};
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::future_to_promise;

use crate::fetch;
use crate::remote::{Remote, WebWeights};

#[wasm_bindgen(start)]
fn start() {
    std::panic::set_hook(Box::new(|info| web_sys::console::error_1(&format!("herd-web panicked: {info}").into())));
}

fn get(o: &JsValue, key: &str) -> Option<JsValue> {
    if !o.is_object() {
        return None;
    }
    Reflect::get(o, &key.into()).ok().filter(|v| !v.is_undefined() && !v.is_null())
}

fn get_f64(o: &JsValue, key: &str) -> Option<f64> {
    get(o, key).and_then(|v| v.as_f64())
}

/// An expert cache budget: bytes as a number, or a size such as "64MiB".
fn budget(o: &JsValue) -> Result<Option<u64>, JsError> {
    match get(o, "expertCache") {
        None => Ok(None),
        Some(v) => match (v.as_f64(), v.as_string()) {
            (Some(n), _) if n >= 0.0 => Ok(Some(n as u64)),
            (_, Some(s)) if s.trim().is_empty() => Ok(None),
            (_, Some(s)) => herd_core::experts::parse_size(&s).map(Some).map_err(|e| JsError::new(&e)),
            _ => Err(JsError::new("expertCache: a byte count or a size such as \"64MiB\"")),
        },
    }
}

struct Inner<B: Backend> {
    model: Arc<Llama4<B>>,
    cfg: ModelConfig,
    tok: Tokenizer,
    chat: ChatTemplate,
    gen: GenerationConfig,
    /// One request at a time, the conversation kept in its cache between turns (taken out while a turn
    /// runs).
    sched: RefCell<Option<Scheduler<B>>>,
    conversation: RefCell<Vec<Message>>,
    busy: Cell<bool>,
    cancel: Cell<bool>,
    adapter: String,
    limits: String,
    verified: bool,
    last: RefCell<serde_json::Value>,
    /// Bytes loaded, and the most the page held at once while loading.
    load: serde_json::Value,
    /// Whether to hand the page back to the browser after each step (the CPU backend: see [`yield_to_page`]).
    yields: bool,
}

/// A loaded model on the page's GPU, or on its CPU.
#[wasm_bindgen]
pub struct Herd {
    engine: Engine,
}

enum Engine {
    Gpu(Rc<Inner<WgpuBackend>>),
    Cpu(Rc<Inner<CpuBackend>>),
}

/// `$body` with `$i` bound to the engine's `Rc<Inner<_>>`, whichever backend it runs on.
macro_rules! on_engine {
    ($herd:expr, $i:ident => $body:expr) => {
        match &$herd.engine {
            Engine::Gpu($i) => $body,
            Engine::Cpu($i) => $body,
        }
    };
}

/// Loads the model directory at `url` (config.json, tokenizer files, safetensors and their index, and the
/// checksum manifest herd-manifest.json). `options`: `{backend: "auto" | "webgpu" | "cpu", expertCache: bytes |
/// "64MiB", routing: bool, kvDtype: "bf16", onProgress: (phase, done, total) => void}`. `backend` "auto" (the
/// default) runs on WebGPU where the browser has a hardware adapter, else on the CPU backend. Routed experts are
/// fetched only when a router picks them, into an expert cache of `expertCache` bytes (default: room for all of
/// them). `routing: false` skips reading every layer's picks once all its experts are on the GPU (faster; no
/// routing picture). `kvDtype` is the KV cache's format as `herd --kv-dtype` takes it (f32, bf16, f16, q8, fp8,
/// q4, or `global=...,chunked=...`); bf16 by default on WebGPU, as on every GPU, f32 on the CPU.
#[wasm_bindgen(js_name = loadModel)]
pub async fn load_model(url: String, options: JsValue) -> Result<Herd, JsError> {
    let on_progress = get(&options, "onProgress").and_then(|f| f.dyn_into::<Function>().ok());
    let mut progress = |phase: &str, done: f64, total: f64| {
        if let Some(f) = &on_progress {
            let _ = f.call3(&JsValue::NULL, &phase.into(), &done.into(), &total.into());
        }
    };
    let budget = budget(&options)?;
    // `backend`: "webgpu", "cpu", or "auto" (the default): WebGPU where the browser has a hardware adapter, else
    // the CPU.
    let want = get(&options, "backend").and_then(|v| v.as_string()).unwrap_or_else(|| "auto".into());
    if !matches!(want.as_str(), "auto" | "webgpu" | "cpu") {
        return Err(JsError::new(&format!("backend: {want:?} is not one of auto, webgpu, cpu")));
    }
    // navigator.gpu (read by name: web-sys keeps WebGPU behind an unstable flag).
    let gpu = web_sys::window().and_then(|w| get(&w.navigator().into(), "gpu"));
    if want == "webgpu" && gpu.is_none() {
        return Err(JsError::new("WebGPU is not available in this browser (navigator.gpu is missing)"));
    }
    // With "auto", a software adapter (a browser's fallback, SwiftShader) is passed over: the CPU backend's
    // own kernels run the demo model about 19 times faster than WebGPU emulated on the same CPU (BENCHMARKS.md).
    let mut software = false;
    if want != "cpu" && gpu.is_some() {
        progress("gpu", 0.0, 1.0);
        match WgpuBackend::open(&WgpuOptions::default()).await {
            Ok(b) if want == "auto" && b.is_software() => software = true,
            Ok(b) => {
                let (adapter, limits) = (b.adapter(), b.limits());
                let inner =
                    load_on(Arc::new(b), &url, &options, budget, KvDtype::Bf16, false, adapter, limits, &mut progress);
                return Ok(Herd { engine: Engine::Gpu(inner.await?) });
            }
            // navigator.gpu can be there with no adapter behind it (WebGPU switched off, or blocklisted).
            Err(e) if want == "webgpu" => return Err(JsError::new(&e.to_string())),
            Err(_) => {}
        }
    }
    let b = CpuBackend::new();
    let why =
        if software { "this browser's WebGPU adapter is a CPU emulation" } else { "no WebGPU adapter in this browser" };
    let adapter = format!("{} (WebAssembly; {why})", b.name());
    let limits = "the CPU backend: the page's memory (wasm32: at most 4 GiB)".to_owned();
    // f32 KV on the CPU, as `herd` keeps it there by default.
    let inner = load_on(Arc::new(b), &url, &options, budget, KvDtype::F32, true, adapter, limits, &mut progress);
    Ok(Herd { engine: Engine::Cpu(inner.await?) })
}

/// Loads the model at `url` onto `backend` (see [`load_model`]).
#[allow(clippy::too_many_arguments)]
async fn load_on<B: Backend>(
    backend: Arc<B>,
    url: &str,
    options: &JsValue,
    budget: Option<u64>,
    default_kv: KvDtype,
    yields: bool,
    adapter: String,
    limits: String,
    progress: &mut dyn FnMut(&str, f64, f64),
) -> Result<Rc<Inner<B>>, JsError> {
    let e = |e: herd_core::HerdError| JsError::new(&e.to_string());
    let remote = Remote::open(url, progress).await.map_err(e)?;
    let cfg = ModelConfig::from_json_bytes(&remote.config).map_err(e)?;
    let tok = Tokenizer::from_bytes(&remote.tokenizer).map_err(e)?;
    let chat = ChatTemplate::from_config_str(&remote.tokenizer_config).map_err(e)?;
    let gen = match &remote.generation_config {
        Some(s) => GenerationConfig::from_json_str(s).map_err(e)?,
        None => GenerationConfig::default(),
    };
    let streamed = cfg.text.moe_layers.iter().any(|&m| m);
    let opts = ExpertCacheOptions {
        budget: budget.unwrap_or(u64::MAX / 4),
        policy: Policy::Lrfu,
        // No threads in a page: experts are fetched when a layer needs them.
        prefetch: false,
        // The routing picture needs every layer's picks each step: one readback per MoE layer.
        trace_picks: get(options, "routing").is_none_or(|v| v.as_bool() != Some(false)),
    };
    let weights = WebWeights::new(&remote, streamed, progress);
    let kv = match get(options, "kvDtype").and_then(|v| v.as_string()) {
        Some(s) => parse_kv_dtypes(&s, default_kv).map_err(|m| JsError::new(&format!("kvDtype: {m}")))?,
        None => [default_kv; 2],
    };
    let mut model = Llama4::load_with_async(backend, &weights, &cfg.text, streamed.then_some(&opts), &mut |_, _| {})
        .await
        .map_err(e)?;
    model.set_kv_dtypes(kv[0], kv[1]).map_err(e)?;
    let load = serde_json::json!({ "resident_bytes": weights.total, "peak_held_bytes": *weights.peak.borrow() });
    drop(weights);
    let model = Arc::new(model);
    let ctx = cfg.text.max_position_embeddings;
    let sched = Scheduler::new(
        model.clone(),
        SchedulerConfig {
            max_seqs: 1,
            max_batch_tokens: ctx,
            max_queue: 1,
            prefix_cache_tokens: ctx,
            max_context: None,
        },
    )
    .map_err(e)?;
    progress("ready", 1.0, 1.0);
    Ok(Rc::new(Inner {
        model,
        cfg,
        tok,
        chat,
        gen,
        sched: RefCell::new(Some(sched)),
        conversation: RefCell::new(Vec::new()),
        busy: Cell::new(false),
        cancel: Cell::new(false),
        adapter,
        limits,
        verified: remote.manifest.is_some(),
        last: RefCell::new(serde_json::Value::Null),
        load,
        yields,
    }))
}

/// Clears the busy flag however the work ends.
struct Busy<B: Backend>(Rc<Inner<B>>);

impl<B: Backend> Busy<B> {
    fn take(inner: &Rc<Inner<B>>) -> Result<Busy<B>, JsValue> {
        if inner.busy.replace(true) {
            return Err(JsError::new("the model is already generating").into());
        }
        inner.cancel.set(false);
        Ok(Busy(inner.clone()))
    }
}

impl<B: Backend> Drop for Busy<B> {
    fn drop(&mut self) {
        self.0.busy.set(false);
    }
}

fn js(e: herd_core::HerdError) -> JsValue {
    JsError::new(&e.to_string()).into()
}

/// Hands the page back to the browser until its next task (a 0 ms timeout). On the CPU a step computes
/// without waiting for anything, so without this a generation would hold the page (no painting, no Stop
/// button) until it ended.
async fn yield_to_page() {
    let p = Promise::new(&mut |resolve, _| {
        let timeout = Reflect::get(&js_sys::global(), &"setTimeout".into()).ok();
        match timeout.and_then(|f| f.dyn_into::<Function>().ok()) {
            Some(f) => drop(f.call2(&JsValue::NULL, &resolve, &0.into())),
            None => drop(resolve.call0(&JsValue::NULL)),
        }
    });
    let _ = wasm_bindgen_futures::JsFuture::from(p).await;
}

impl<B: Backend> Inner<B> {
    /// Per streamed layer, the experts picked for each row of the last step, flattened [layer][row][k].
    fn picks(&self) -> (Vec<u32>, usize) {
        let p = self.model.expert_picks();
        let k = self.cfg.text.num_experts_per_tok.max(1);
        let rows = p.iter().map(|(_, v)| v.len() / k).min().unwrap_or(0);
        (p.iter().flat_map(|(_, v)| v[..rows * k].iter().copied()).collect(), rows)
    }
}

/// [`Herd::chat`] on the engine's backend.
fn chat_on<B: Backend>(inner: Rc<Inner<B>>, text: String, options: JsValue) -> Promise {
    future_to_promise(async move {
        let _busy = Busy::take(&inner)?;
        let mut sampling = inner.gen.sampling_params();
        if let Some(t) = get_f64(&options, "temperature") {
            sampling.temperature = t as f32;
        }
        if let Some(v) = get_f64(&options, "topP") {
            sampling.top_p = v as f32;
        }
        if let Some(v) = get_f64(&options, "topK") {
            sampling.top_k = v as usize;
        }
        sampling.seed = get_f64(&options, "seed").map(|s| s as u64);
        let max_tokens = get_f64(&options, "maxTokens").map_or(256, |n| n as usize);
        let stop_ids = if inner.gen.eos_token_ids.is_empty() {
            inner.cfg.text.eos_token_ids.clone()
        } else {
            inner.gen.eos_token_ids.clone()
        };
        let params = GenerateParams { max_tokens, sampling, stop_ids };
        let mut msgs = inner.conversation.borrow().clone();
        msgs.push(Message::user(&text));
        let ids = inner.tok.encode_rendered(&inner.chat.render(&msgs, None, true).map_err(js)?).map_err(js)?;
        let on_token = get(&options, "onToken").and_then(|f| f.dyn_into::<Function>().ok());
        let mut dec = inner.tok.stream_decoder(true);
        let mut answer = String::new();
        // The scheduler is out of its cell while the turn runs (no borrow held across an await); `Busy`
        // keeps every other turn out meanwhile.
        let Some(mut sched) = inner.sched.borrow_mut().take() else {
            return Err(JsError::new("the model is already generating").into());
        };
        let result = async {
            let (sink, events) = queue();
            let id = sched.submit(Request::new(ids, params), sink)?;
            loop {
                let stepped = sched.step().await;
                if inner.yields {
                    yield_to_page().await;
                }
                let mut done = None;
                while let Some(e) = events.pop() {
                    match e {
                        Event::Token(t) => {
                            let piece = dec.push(t.id).ok().flatten().unwrap_or_default();
                            answer.push_str(&piece);
                            let mut go_on = !inner.cancel.get();
                            if let Some(f) = &on_token {
                                let (picks, rows) = inner.picks();
                                let args = js_sys::Array::of4(
                                    &piece.into(),
                                    &t.id.into(),
                                    &js_sys::Uint32Array::from(&picks[..]).into(),
                                    &(rows as u32).into(),
                                );
                                if f.apply(&JsValue::NULL, &args).ok().is_some_and(|r| r == JsValue::FALSE) {
                                    go_on = false;
                                }
                            }
                            if !go_on {
                                sched.cancel(id);
                            }
                        }
                        Event::Done(f) => done = Some(f),
                    }
                }
                if let Some(f) = done {
                    return match &f.reason {
                        Err(m) => Err(herd_core::HerdError::Input(m.clone())),
                        Ok(_) => Ok(f),
                    };
                }
                stepped?;
            }
        }
        .await;
        *inner.sched.borrow_mut() = Some(sched);
        let st = result.map_err(js)?;
        msgs.push(Message::assistant(&answer));
        *inner.conversation.borrow_mut() = msgs;
        let stop = match st.reason {
            Ok(StopReason::Stop(_)) => "stop",
            Ok(StopReason::Length) => "length",
            _ => "cancelled",
        };
        let j = serde_json::json!({
            "prompt_tokens": st.prompt_tokens, "cached_tokens": st.cached_tokens,
            "generated_tokens": st.generated_tokens,
            "prefill_tok_s": st.prefill_tps(), "decode_tok_s": st.decode_tps(), "stop": stop, "text": answer,
        });
        *inner.last.borrow_mut() = j.clone();
        Ok(j.to_string().into())
    })
}

/// [`Herd::greedy_ids`] on the engine's backend.
fn greedy_on<B: Backend>(inner: Rc<Inner<B>>, ids: Vec<u32>, max_tokens: usize) -> Promise {
    future_to_promise(async move {
        let _busy = Busy::take(&inner)?;
        let v = inner.cfg.text.vocab_size;
        if ids.is_empty() {
            return Err(JsError::new("prompt_ids is empty").into());
        }
        if let Some(bad) = ids.iter().find(|&&i| i as usize >= v) {
            return Err(JsError::new(&format!("prompt id {bad} is past the vocabulary ({v} ids)")).into());
        }
        let t0 = web_time::Instant::now();
        let out = greedy_rows(&inner.model, &[ids], max_tokens).await.map_err(js)?;
        let secs = t0.elapsed().as_secs_f64();
        *inner.last.borrow_mut() = serde_json::json!({ "generated_tokens": max_tokens, "seconds": secs });
        Ok(js_sys::Uint32Array::from(&out[0][..]).into())
    })
}

#[wasm_bindgen]
impl Herd {
    /// Sends `text` as the next user turn of the conversation and streams the answer: `options` is
    /// `{maxTokens, temperature, topP, topK, seed, onToken: (text, id, picks, rows) => bool | void}`, where
    /// `picks` holds, per MoE layer, the experts chosen for each of the step's `rows` tokens (top-k each);
    /// return `false` from onToken to stop. Resolves to the generation's statistics.
    pub fn chat(&self, text: String, options: JsValue) -> Promise {
        on_engine!(self, i => chat_on(i.clone(), text, options))
    }

    /// Continues `ids` greedily by `max_tokens` tokens, with no chat template and no stop ids (as
    /// `herd greedy` does), and resolves to the new ids.
    #[wasm_bindgen(js_name = greedyIds)]
    pub fn greedy_ids(&self, ids: Vec<u32>, max_tokens: usize) -> Promise {
        on_engine!(self, i => greedy_on(i.clone(), ids, max_tokens))
    }

    /// Asks a running generation to stop after its current token.
    pub fn cancel(&self) {
        on_engine!(self, i => i.cancel.set(true))
    }

    /// Forgets the conversation.
    pub fn reset(&self) {
        on_engine!(self, i => {
            i.conversation.borrow_mut().clear();
            // While a turn runs the scheduler is out of its cell; what it keeps is exact either way (a prefix
            // is reused only where the tokens are the same).
            if let Some(s) = i.sched.borrow_mut().as_mut() {
                s.clear_prefix_cache();
            }
        })
    }

    /// The statistics as JSON: the last generation, the expert cache, the page's fetches, the device.
    pub fn stats(&self) -> String {
        on_engine!(self, i => stats_of(i))
    }

    /// The GPU adapter, e.g. `SwiftShader Device (Subzero) (Cpu, BrowserWebGpu)`, or the CPU backend (in a
    /// browser without WebGPU).
    #[wasm_bindgen(getter)]
    pub fn adapter(&self) -> String {
        on_engine!(self, i => i.adapter.clone())
    }

    /// The device limits herd runs within.
    #[wasm_bindgen(getter)]
    pub fn limits(&self) -> String {
        on_engine!(self, i => i.limits.clone())
    }

    /// The MoE layers' indices (the rows of a routing picture), experts per layer, and picks per token.
    #[wasm_bindgen(getter, js_name = moeLayers)]
    pub fn moe_layers(&self) -> Vec<u32> {
        let t = on_engine!(self, i => &i.cfg.text);
        (0..t.num_hidden_layers).filter(|&l| t.moe_layers[l]).map(|l| l as u32).collect()
    }

    #[wasm_bindgen(getter)]
    pub fn experts(&self) -> u32 {
        on_engine!(self, i => i.cfg.text.num_local_experts as u32)
    }

    #[wasm_bindgen(getter, js_name = expertsPerToken)]
    pub fn experts_per_token(&self) -> u32 {
        on_engine!(self, i => i.cfg.text.num_experts_per_tok as u32)
    }

    /// Token ids of `text` (plain, with BOS), for pages that build their own prompts.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, JsError> {
        on_engine!(self, i => i.tok.encode_plain(text, true)).map_err(|e| JsError::new(&e.to_string()))
    }

    pub fn decode(&self, ids: Vec<u32>) -> Result<String, JsError> {
        on_engine!(self, i => i.tok.decode(&ids, true)).map_err(|e| JsError::new(&e.to_string()))
    }
}

/// [`Herd::stats`] of one engine.
fn stats_of<B: Backend>(i: &Inner<B>) -> String {
    let f = fetch::stats();
    let mut j = serde_json::json!({
        "last": *i.last.borrow(), "adapter": i.adapter, "limits": i.limits, "verified": i.verified, "load": i.load,
        "kv_dtype": i.model.kv_dtypes().map(|d| d.name()),
        "fetch": {"requests": f.requests, "bytes": f.bytes, "cache_hits": f.cache_hits,
                  "cache_bytes": f.cache_bytes, "retries": f.retries},
    });
    if let Some(s) = i.model.expert_stats() {
        j["experts"] = serde_json::json!({
            "budget": s.budget, "slot_bytes": s.capacity, "slots": s.slots, "experts": s.experts,
            "expert_bytes": s.expert_bytes, "lookups": s.lookups, "hits": s.hits, "hit_rate": s.hit_rate(),
            "lru_hit_rate": s.lru_hit_rate(), "fetched": s.fetched, "bytes_moved": s.bytes_moved,
            "wait_s": s.wait_secs, "upload_s": s.upload_secs, "extra_rounds": s.extra_rounds, "policy": s.policy,
        });
    }
    j.to_string()
}
