//! The browser demo in a real browser: headless Chromium (WebGPU on its SwiftShader adapter, without
//! shader-f16, which the page takes when told to: by default it passes a software adapter over for the CPU
//! backend) loads the page from `herd serve-web`, which serves a fixture model with range requests. The
//! page's automation hook continues the fixture's prompt greedily; its ids must equal `herd greedy`'s (and
//! transformers' greedy ids), with the experts streamed at a budget that holds them all and at the
//! smallest budget (experts fetched again and again); a model whose expert bytes no longer match its
//! manifest must be an error on the page, never a generation.
//!
//! Needs Chromium, node with playwright-core (web/tests/node_modules) and the built page (web/www/pkg):
//! scripts/test.sh installs and builds them and sets HERD_REQUIRE_BROWSER=1, which makes a missing one a
//! failure. Without it a missing one prints NOT RUN.

mod common;

use common::*;
use std::io::BufRead;
use std::sync::Mutex;

/// One browser at a time: each runs WebGPU on the CPU.
static BROWSER: Mutex<()> = Mutex::new(());

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Why the browser test cannot run here, if it cannot.
fn missing() -> Option<String> {
    let chromium = std::env::var("HERD_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    if !Path::new(&chromium).exists() {
        return Some(format!("no Chromium at {chromium}"));
    }
    if Command::new("node").arg("--version").output().map_or(true, |o| !o.status.success()) {
        return Some("no node".into());
    }
    if !root().join("web/tests/node_modules/playwright-core").exists() {
        return Some("no playwright-core in web/tests/node_modules (npm install there)".into());
    }
    if !root().join("web/www/pkg/herd_web_bg.wasm").exists() {
        return Some("the page is not built (scripts/build-web.sh)".into());
    }
    None
}

/// Whether the test may run; false (with NOT RUN printed) when it cannot and is not required to.
fn can_run(test: &str) -> bool {
    match missing() {
        None => true,
        Some(why) => {
            herd_core::not_run(test, Some("HERD_REQUIRE_BROWSER"), &why);
            false
        }
    }
}

/// `herd serve-web` on a free port, stopped on drop.
struct Server {
    child: std::process::Child,
    url: String,
}

impl Server {
    fn start(model: &Path) -> Server {
        Server::spawn(&["serve-web", "--model", s(model), "--port", "0"])
    }

    /// `herd serve-web` with no --model: the built-in demo model.
    fn start_default() -> Server {
        Server::spawn(&["serve-web", "--port", "0"])
    }

    fn spawn(args: &[&str]) -> Server {
        let mut child = Command::new(BIN)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start herd serve-web");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let url = line
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .unwrap_or_else(|| panic!("serve-web printed {line:?}"))
            .to_owned();
        Server { child, url }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The page at `url` (a query) in headless Chromium on WebGPU, until its title is `done` or `error: ...`. The
/// browser's adapter is a software one, which the page would pass over for the CPU unless told otherwise.
fn page(url: &str) -> Value {
    browser(&[&format!("{url}&backend=webgpu"), "400"])
}

/// browser.mjs with `args`: its JSON line.
fn browser(args: &[&str]) -> Value {
    let out = Command::new("node").arg(root().join("web/tests/browser.mjs")).args(args).output().expect("run node");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().unwrap_or_default();
    serde_json::from_str(line).unwrap_or_else(|e| {
        panic!("browser.mjs printed {text:?} ({e}); stderr {}", String::from_utf8_lossy(&out.stderr))
    })
}

/// Every WGSL module herd-wgpu builds (each file, weight format and reduction) passes the browser's own
/// WGSL compiler, which is stricter than Naga's validation that the native tests go through (uniformity
/// of barriers, for one).
#[test]
fn every_shader_module_compiles_in_the_browser() {
    let Some(Setup { _one, sc, dir, .. }) = setup("every_shader_module_compiles_in_the_browser", "web-wgsl") else {
        return;
    };
    // SwiftShader has no subgroups, so only the shared-memory reductions can be checked here.
    let sources = herd_wgpu::shader_sources(false);
    let file = sc.path("shaders.json");
    std::fs::write(&file, serde_json::to_vec(&sources).unwrap()).unwrap();
    let server = Server::start(&dir);
    let v = browser(&["--shaders", s(&file), &server.url, "300"]);
    assert_eq!(v["title"], "done", "{v}");
    let errors = v["errors"].as_array().unwrap();
    let shown: Vec<String> = errors.iter().take(40).map(|e| format!("{}: {}", e[0], e[1])).collect();
    assert!(errors.is_empty(), "{} of {} modules fail:\n{}", errors.len(), sources.len(), shown.join("\n"));
}

fn ids_of(v: &Value) -> Vec<u32> {
    v["ids"].as_str().unwrap_or_default().split(',').filter(|s| !s.is_empty()).map(|s| s.parse().unwrap()).collect()
}

/// The fixture `scout` copied to a scratch directory (the server serves it as is).
fn model(sc: &Scratch) -> PathBuf {
    sc.model_copy(
        "scout",
        "model",
        &["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "generation_config.json"],
    )
}

/// The query of the automation hook for the fixture's first prompt row, with the KV cache in f32 (the
/// page's default is bf16, as on every GPU; f32 is what `herd greedy` on the CPU and transformers compute).
fn query(r: &Reference, extra: &str) -> (Vec<u32>, usize, String) {
    let ids = r.input_ids[0].clone();
    let n = r.greedy_ids[0].len();
    let list: Vec<String> = ids.iter().map(u32::to_string).collect();
    (ids, n, format!("?model=model/&prompt_ids={}&max_tokens={n}&greedy=1&kv=f32{extra}", list.join(",")))
}

/// What a browser test starts from: the browser to itself, a scratch directory with the fixture model, and
/// the fixture's reference. None (NOT RUN printed) where it cannot run and is not required to.
struct Setup {
    _one: std::sync::MutexGuard<'static, ()>,
    sc: Scratch,
    dir: PathBuf,
    r: Reference,
}

fn setup(test: &str, tag: &str) -> Option<Setup> {
    if !can_run(test) {
        return None;
    }
    let one = BROWSER.lock().unwrap_or_else(|e| e.into_inner());
    let sc = Scratch::new(tag);
    let dir = model(&sc);
    Some(Setup { _one: one, sc, dir, r: Reference::load("scout") })
}

fn expect_done(case: &str, v: &Value) {
    assert_eq!(v["title"], "done", "{case}: the page ended with {:?}; console: {}", v["title"], v["console"]);
}

#[test]
fn the_page_continues_a_prompt_as_herd_greedy_does() {
    let Some(Setup { _one, sc: _sc, dir, r }) = setup("the_page_continues_a_prompt_as_herd_greedy_does", "web-greedy")
    else {
        return;
    };
    let (ids, n, q) = query(&r, "");
    let native = run_greedy(&dir, &[ids], n).remove(0);
    assert_eq!(native, r.greedy_ids[0], "herd greedy differs from transformers");
    let server = Server::start(&dir);
    let v = page(&format!("{}{q}", server.url));
    expect_done("default budget", &v);
    assert_eq!(ids_of(&v), native, "the page's greedy ids differ from `herd greedy`'s");
    let stats: Value = serde_json::from_str(v["stats"].as_str().unwrap()).unwrap();
    assert_eq!(stats["verified"], true, "every range should be checked against the manifest: {stats}");
    // The weights load a part at a time (the embeddings and lm_head, then each layer): the page held the
    // largest part at most, never all of them.
    let file = std::fs::read(dir.join("model.safetensors")).unwrap();
    let mut parts: HashMap<String, u64> = HashMap::new();
    for (name, view) in SafeTensors::deserialize(&file).unwrap().tensors() {
        if !name.contains("feed_forward.experts.") {
            let layer = name.strip_prefix("model.layers.").and_then(|r| r.split('.').next()).unwrap_or("rest");
            *parts.entry(layer.to_owned()).or_default() += view.data().len() as u64;
        }
    }
    let (largest, all) = (*parts.values().max().unwrap(), parts.values().sum::<u64>());
    let load = &stats["load"];
    assert_eq!(load["resident_bytes"].as_u64(), Some(all), "{stats}");
    let held = load["peak_held_bytes"].as_u64().unwrap();
    assert!(held > 0 && held <= largest && largest < all, "held {held} B at once; largest part {largest} of {all}");
    let e = &stats["experts"];
    assert!(e["fetched"].as_u64().unwrap() > 0, "no expert was fetched: {stats}");
    assert!(
        e["fetched"].as_u64().unwrap() <= e["experts"].as_u64().unwrap(),
        "with room for every expert, each is fetched at most once: {stats}"
    );
    eprintln!("adapter: {}; {}", stats["adapter"], stats["limits"]);
}

/// The page's default model (what `herd serve-web` serves without --model: the built-in demo model) continues
/// the demo reference's first prompt exactly as transformers does.
#[test]
fn the_page_runs_the_built_in_model_as_transformers_does() {
    let Some(Setup { _one, .. }) = setup("the_page_runs_the_built_in_model_as_transformers_does", "web-demo") else {
        return;
    };
    let r = Reference::load("demo");
    let (_, _, q) = query(&r, "");
    let server = Server::start_default();
    let v = page(&format!("{}{q}", server.url));
    expect_done("built-in model", &v);
    assert_eq!(ids_of(&v), r.greedy_ids[0], "the page's greedy ids on the built-in model differ from transformers'");
    let stats: Value = serde_json::from_str(v["stats"].as_str().unwrap()).unwrap();
    assert_eq!(stats["verified"], true, "every range should be checked against the manifest: {stats}");
    assert_eq!(stats["kv_dtype"], serde_json::json!(["f32", "f32"]), "the page's KV format (kv=f32): {stats}");
}

#[test]
fn the_page_refetches_experts_at_the_smallest_budget_with_the_same_ids() {
    let Some(Setup { _one, sc: _sc, dir, r }) =
        setup("the_page_refetches_experts_at_the_smallest_budget_with_the_same_ids", "web-small")
    else {
        return;
    };
    // One expert per MoE layer (top-1): the smallest cache there is.
    let file = std::fs::read(dir.join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&file).unwrap();
    let cfg: Value = serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
    let t = cfg.get("text_config").unwrap_or(&cfg);
    let (e, k) = (t["num_local_experts"].as_u64().unwrap(), t["num_experts_per_tok"].as_u64().unwrap());
    let mut bytes = 0u64;
    let mut layers = 0u64;
    for (name, view) in st.tensors() {
        if name.ends_with("feed_forward.experts.gate_up_proj") || name.ends_with("feed_forward.experts.down_proj") {
            bytes += view.data().len() as u64;
            layers += u64::from(name.ends_with("gate_up_proj"));
        }
    }
    let min = bytes / e * k;
    let (ids, n, q) = query(&r, &format!("&expert_cache={min}"));
    let native = run_greedy(&dir, &[ids], n).remove(0);
    let server = Server::start(&dir);
    let v = page(&format!("{}{q}", server.url));
    expect_done("smallest budget", &v);
    assert_eq!(ids_of(&v), native, "at {min} B the page's ids differ from `herd greedy`'s");
    let stats: Value = serde_json::from_str(v["stats"].as_str().unwrap()).unwrap();
    let ex = &stats["experts"];
    assert_eq!(ex["slots"].as_u64(), Some(layers * k), "{stats}");
    assert!(
        ex["fetched"].as_u64().unwrap() > ex["experts"].as_u64().unwrap(),
        "one slot per layer should fetch experts again during generation: {stats}"
    );
    assert!(
        stats["fetch"]["cache_hits"].as_u64().unwrap() > 0,
        "refetched experts should come from the browser's cache: {stats}"
    );
}

/// The page as a person uses it: Load the model, type a message, Send, and Stop once the answer starts. The
/// answer streams in through the chat template and the token callback, Stop cancels the generation, and the
/// routing picture gets painted.
#[test]
fn the_chat_streams_an_answer_and_stop_cancels_it() {
    let Some(Setup { _one, sc: _sc, dir, .. }) = setup("the_chat_streams_an_answer_and_stop_cancels_it", "web-chat")
    else {
        return;
    };
    let server = Server::start(&dir);
    let url = format!("{}?model=model/&backend=webgpu", server.url);
    let v = browser(&["--chat", "Tell me about the sea.", &url, "400"]);
    assert_eq!(v["error"], "", "{v}");
    assert!(!v["answer"].as_str().unwrap().is_empty(), "no answer streamed in: {v}");
    let stats: Value = serde_json::from_str(v["stats"].as_str().unwrap()).unwrap();
    let last = &stats["last"];
    assert_eq!(last["stop"], "cancelled", "Stop did not cancel the generation: {stats}");
    assert!(last["generated_tokens"].as_u64().unwrap() < 200, "{stats}");
    assert!(last["prompt_tokens"].as_u64().unwrap() > 5, "the chat template should wrap the message: {stats}");
    assert!(v["heatmap"].as_u64().unwrap() > 0, "the routing picture is blank: {v}");
    assert!(v["speed"].as_str().unwrap().contains("tok/s"), "{v}");
}

/// A browser without WebGPU, or whose WebGPU adapter is a software one (this browser's SwiftShader), runs the
/// model on the CPU backend in WebAssembly (its SIMD128 kernels), with a notice saying so: without WebGPU the
/// automation hook's greedy ids equal `herd greedy`'s; with the software adapter the chat streams an answer
/// on the CPU and Stop cancels it (the page is handed back to the browser between steps).
#[test]
fn without_a_hardware_gpu_the_page_runs_on_the_cpu() {
    let Some(Setup { _one, sc: _sc, dir, r }) = setup("without_a_hardware_gpu_the_page_runs_on_the_cpu", "web-nogpu")
    else {
        return;
    };
    let (ids, n, q) = query(&r, "");
    let native = run_greedy(&dir, &[ids], n).remove(0);
    let server = Server::start(&dir);
    let v = browser(&["--no-webgpu", &format!("{}{q}", server.url), "400"]);
    expect_done("without WebGPU", &v);
    assert!(v["notice"].as_str().unwrap().contains("runs the model on the CPU"), "no notice on the page: {v}");
    assert_eq!(ids_of(&v), native, "the page's greedy ids on the CPU differ from `herd greedy`'s");
    let stats: Value = serde_json::from_str(v["stats"].as_str().unwrap()).unwrap();
    let adapter = stats["adapter"].as_str().unwrap();
    assert!(adapter.starts_with("cpu (1 thread, simd128)"), "the page should run the SIMD128 kernels: {adapter}");
    let url = format!("{}?model=model/", server.url);
    let v = browser(&["--chat", "Tell me about the sea.", &url, "400"]);
    assert_eq!(v["error"], "", "{v}");
    assert!(!v["answer"].as_str().unwrap().is_empty(), "no answer streamed in: {v}");
    let stats: Value = serde_json::from_str(v["stats"].as_str().unwrap()).unwrap();
    let adapter = stats["adapter"].as_str().unwrap();
    assert!(adapter.contains("CPU emulation"), "the software adapter should be passed over for the CPU: {adapter}");
    assert_eq!(stats["last"]["stop"], "cancelled", "Stop did not cancel the generation on the CPU: {stats}");
}

#[test]
fn the_page_reports_a_corrupt_range_and_generates_nothing() {
    let Some(Setup { _one, sc: _sc, dir, r }) =
        setup("the_page_reports_a_corrupt_range_and_generates_nothing", "web-corrupt")
    else {
        return;
    };
    // The manifest is made from the good file; then one byte of every expert of one layer changes on disk.
    ok("web-manifest", herd(["web-manifest", "--model", s(&dir)]));
    let path = dir.join("model.safetensors");
    let mut file = std::fs::read(&path).unwrap();
    let (n, _) = SafeTensors::read_metadata(&file).unwrap();
    let st = SafeTensors::deserialize(&file).unwrap();
    let (name, view) = st
        .tensors()
        .into_iter()
        .filter(|(name, _)| name.ends_with("feed_forward.experts.gate_up_proj"))
        .min_by_key(|(name, _)| name.clone())
        .unwrap();
    let start = view.data().as_ptr() as usize - file.as_ptr() as usize;
    let (e, row) = (view.shape()[0], view.data().len() / view.shape()[0]);
    assert!(start >= 8 + n);
    drop(st);
    for x in 0..e {
        file[start + x * row + 5] ^= 0x40;
    }
    std::fs::write(&path, &file).unwrap();
    let (_, _, q) = query(&r, "");
    let server = Server::start(&dir);
    let v = page(&format!("{}{q}", server.url));
    let title = v["title"].as_str().unwrap();
    assert!(title.starts_with("error:"), "a corrupt {name} gave {title:?}; console: {}", v["console"]);
    assert!(title.contains("checksum mismatch") && title.contains(&name), "{title}");
    assert!(ids_of(&v).is_empty(), "ids were written despite the error: {v}");
}

/// `herd serve-web` refuses, in one line, a page directory that is not one (or not built) and a model
/// directory that is not one; `herd web-manifest` a directory with no checkpoint. No browser needed.
#[test]
fn serve_web_refuses_what_it_cannot_serve() {
    let sc = Scratch::new("web-bad");
    let empty = sc.path("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let www = sc.path("www");
    std::fs::create_dir_all(www.join("pkg")).unwrap();
    std::fs::write(www.join("index.html"), "<!doctype html>").unwrap();
    fails("serve-web, no page", herd(["serve-web", "--www", s(&empty), "--port", "0"]), &["no index.html"]);
    fails("serve-web, page not built", herd(["serve-web", "--www", s(&www), "--port", "0"]), &["build-web.sh"]);
    std::fs::write(www.join("pkg/herd_web_bg.wasm"), b"\0asm").unwrap();
    fails(
        "serve-web, not a model",
        herd(["serve-web", "--www", s(&www), "--model", s(&empty), "--port", "0"]),
        &["no config.json"],
    );
    fails("web-manifest, no checkpoint", herd(["web-manifest", "--model", s(&empty)]), &["model.safetensors"]);
}
