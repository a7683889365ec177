//! `herd serve` end to end, over real sockets with the built-in demo model on the CPU: answers equal
//! `herd run`'s, concurrent requests equal their runs alone, streams (and clients leaving them), errors in
//! OpenAI's shape with the right status, the API key, the queue limit, /metrics, and a clean shutdown on
//! SIGTERM. The official `openai` Python client drives it too (tests/tools/openai_client.py), when the test
//! command has installed it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_herd");

/// A running `herd serve` on a free port, killed on drop.
struct Server {
    child: Child,
    addr: String,
}

impl Server {
    fn start(args: &[&str]) -> Server {
        Self::start_env(args, &[])
    }

    fn start_env(args: &[&str], env: &[(&str, &str)]) -> Server {
        let mut cmd = Command::new(BIN);
        cmd.args(["serve", "--port", "0"]).args(args).stdout(Stdio::piped()).stderr(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start herd serve");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let addr = line
            .split("http://")
            .nth(1)
            .and_then(|r| r.split('/').next())
            .unwrap_or_else(|| panic!("no URL in {line:?}"))
            .to_owned();
        let srv = Server { child, addr };
        // The model loads while the server answers: /health says when it is ready.
        let t0 = Instant::now();
        while srv.raw("GET", "/health", &[], b"").0 != 200 {
            assert!(t0.elapsed() < Duration::from_secs(120), "herd serve never became ready");
            std::thread::sleep(Duration::from_millis(20));
        }
        srv
    }

    /// One request; (status, headers lowercased, body).
    fn raw(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> (u16, String, Vec<u8>) {
        let mut s = TcpStream::connect(&self.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: {}\r\n",
            self.addr,
            body.len()
        );
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes()).unwrap();
        let _ = s.write_all(body);
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        parse_response(&out)
    }

    fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let (st, _, b) = self.raw("POST", path, &[("Content-Type", "application/json")], body.to_string().as_bytes());
        (st, serde_json::from_slice(&b).unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&b))))
    }

    fn metric(&self, name: &str) -> f64 {
        let (_, _, b) = self.raw("GET", "/metrics", &[], b"");
        let text = String::from_utf8(b).unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')).and_then(|v| v.trim().parse().ok()))
            .unwrap_or_else(|| panic!("no metric {name} in:\n{text}"))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn parse_response(out: &[u8]) -> (u16, String, Vec<u8>) {
    let split = out.windows(4).position(|w| w == b"\r\n\r\n").expect("a complete response head");
    let head = String::from_utf8_lossy(&out[..split]).to_lowercase();
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let mut body = out[split + 4..].to_vec();
    if head.contains("transfer-encoding: chunked") {
        body = dechunk(&body);
    }
    (status, head, body)
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(nl) = b.windows(2).position(|w| w == b"\r\n") {
        let n = usize::from_str_radix(String::from_utf8_lossy(&b[..nl]).trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.extend_from_slice(&b[nl + 2..nl + 2 + n]);
        b = &b[nl + 2 + n + 2..];
    }
    out
}

fn chat(content: &str, max_tokens: usize) -> Value {
    json!({"model": "herd-demo", "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens, "temperature": 0})
}

fn text_of(v: &Value) -> String {
    v["choices"][0]["message"]["content"].as_str().unwrap_or_else(|| panic!("no content in {v}")).to_owned()
}

/// The data lines of an SSE body.
fn events(body: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(body).lines().filter_map(|l| l.strip_prefix("data: ").map(str::to_owned)).collect()
}

fn fixture(rel: &str) -> String {
    format!("{}/../tests/fixtures/{rel}", env!("CARGO_MANIFEST_DIR"))
}

/// A chat request of one user message: the images (as base64 `data:` URLs), then the text.
fn image_chat(images: &[&[u8]], text: &str, max_tokens: usize) -> Value {
    use base64::Engine;
    let mut parts: Vec<Value> = images
        .iter()
        .map(|b| {
            let url = format!("data:image/png;base64,{}", base64::engine::general_purpose::STANDARD.encode(b));
            json!({"type": "image_url", "image_url": {"url": url}})
        })
        .collect();
    parts.push(json!({"type": "text", "text": text}));
    json!({"messages": [{"role": "user", "content": parts}], "max_tokens": max_tokens, "temperature": 0})
}

/// `herd run --chat`'s greedy answer of 8 tokens to `text` with `images` (paths), its final newline taken off.
fn run_with_images(model: &str, images: &[&str], text: &str) -> String {
    let mut args = vec!["run", "--model", model, "--chat", "--temperature", "0", "--max-tokens", "8"];
    for i in images {
        args.extend(["--image", i]);
    }
    args.extend(["--prompt", text]);
    let out = Command::new(BIN).args(&args).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    text.strip_suffix('\n').unwrap_or(&text).to_owned()
}

/// Images in chat requests go through the vision tower: the answer equals `herd run --chat --image`'s
/// (itself checked against transformers in cli_vision.rs), alone and batched with other requests while
/// the prompts are read in small pieces (so an image's patch tokens are split across steps); a corrupt
/// image is a 400 naming it.
#[test]
fn images_in_chat_requests_equal_herd_run() {
    let model = fixture("scout_vision");
    let srv = Server::start(&["--model", &model, "--max-batch-tokens", "48"]);
    let (a, b) = (fixture("vision/photo_200x300.png"), fixture("vision/alpha_480x640.png"));
    let (pa, pb) = (std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    let run = |imgs: &[&str], text: &str| run_with_images(&model, imgs, text);
    let want_one = run(&[&a], "What is in the picture?");
    let want_two = run(&[&b, &a], "Compare them.");
    let want_text = run(&[], "Tell me about pictures.");
    let asks: Vec<Value> = vec![
        image_chat(&[&pa], "What is in the picture?", 8),
        image_chat(&[&pb, &pa], "Compare them.", 8),
        image_chat(&[], "Tell me about pictures.", 8),
    ];
    let alone: Vec<String> = asks.iter().map(|q| text_of(&srv.post("/v1/chat/completions", q).1)).collect();
    assert_eq!(alone, [want_one.clone(), want_two.clone(), want_text.clone()]);
    let together: Vec<String> = std::thread::scope(|s| {
        let hs: Vec<_> = asks
            .iter()
            .chain(asks.iter())
            .map(|q| {
                let srv = &srv;
                s.spawn(move || text_of(&srv.post("/v1/chat/completions", q).1))
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(together, [alone.clone(), alone].concat());
    // Prefix reuse keys images by their pixels: the same image again reuses its rows (all but what the
    // fixture's 8-token attention chunks lost to the answer), an image not seen before none of its rows.
    let (_, again) = srv.post("/v1/chat/completions", &asks[0]);
    assert_eq!(text_of(&again), want_one);
    let (p, cached) =
        (again["usage"]["prompt_tokens"].as_u64().unwrap(), &again["usage"]["prompt_tokens_details"]["cached_tokens"]);
    assert!(cached.as_u64().unwrap() + 8 >= p, "the same image again reused {cached} of {p} tokens");
    let gray = std::fs::read(fixture("vision/gray_90x130.png")).unwrap();
    let (_, other) = srv.post("/v1/chat/completions", &image_chat(&[&gray], "What is in the picture?", 8));
    let cached = other["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap();
    assert!(cached < 16, "another image reused {cached} tokens: {}", other["usage"]);
    let (st, v) = srv.post("/v1/chat/completions", &image_chat(&[&pa[..pa.len() / 2]], "Cut short?", 2));
    assert_eq!(st, 400, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().starts_with("image 1: "), "{v}");
}

#[test]
fn answers_equal_herd_run_alone_and_together() {
    let srv = Server::start(&[]);
    let prompts = [
        "Hello! Tell me a story.",
        "What is the best way to travel?",
        "Who are you?",
        "Sing a song of the sea.",
        "Why?",
        "Count to ten, slowly, and then back down again.",
        "Hello again.",
        "In the beginning",
    ];
    let n = [24, 9, 17, 30, 5, 21, 12, 26];
    let solo: Vec<String> =
        prompts.iter().zip(n).map(|(p, k)| text_of(&srv.post("/v1/chat/completions", &chat(p, k)).1)).collect();
    // herd run --temperature 0 gives the same text.
    let run = Command::new(BIN)
        .args(["run", "--chat", "--temperature", "0", "--max-tokens", "24", "--prompt", prompts[0]])
        .output()
        .unwrap();
    assert!(run.status.success());
    assert_eq!(String::from_utf8_lossy(&run.stdout).trim_end(), solo[0]);
    // All at once: each the same as alone.
    let together: Vec<String> = std::thread::scope(|s| {
        let srv = &srv;
        let hs: Vec<_> = prompts
            .iter()
            .zip(n)
            .map(|(p, k)| s.spawn(move || text_of(&srv.post("/v1/chat/completions", &chat(p, k)).1)))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(together, solo);
    // Prefix reuse: the same short request again reuses its whole prompt but the last token, and a chat's
    // next turn its earlier turns; the answers are those of a server that reuses nothing.
    let (_, again) = srv.post("/v1/chat/completions", &chat(prompts[4], n[4]));
    assert_eq!(text_of(&again), solo[4]);
    let u = &again["usage"];
    assert_eq!(u["prompt_tokens_details"]["cached_tokens"], u["prompt_tokens"].as_u64().unwrap() - 1, "{u}");
    let mut turn = chat(prompts[0], 12);
    turn["messages"] = json!([
        {"role": "user", "content": prompts[0]},
        {"role": "assistant", "content": solo[0]},
        {"role": "user", "content": "And then?"},
    ]);
    let (_, next) = srv.post("/v1/chat/completions", &turn);
    let cached = next["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap();
    assert!(cached >= 26, "the next turn reused {cached} tokens: {}", next["usage"]);
    assert!(srv.metric("herd_prefix_cache_hit_tokens_total") >= cached as f64);
    let fresh = Server::start(&["--prefix-cache-tokens", "0"]);
    let (_, want) = fresh.post("/v1/chat/completions", &turn);
    assert_eq!(want["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
    assert_eq!(text_of(&next), text_of(&want));
    // Streamed: the deltas add up to the same text, then a finish chunk, usage, [DONE].
    let mut body = chat(prompts[3], 30);
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let (st, head, b) = srv.raw("POST", "/v1/chat/completions", &[], body.to_string().as_bytes());
    assert_eq!(st, 200);
    assert!(head.contains("text/event-stream"), "{head}");
    let ev = events(&b);
    assert_eq!(ev.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = ev[..ev.len() - 1].iter().map(|e| serde_json::from_str(e).unwrap()).collect();
    let streamed: String = chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
    assert_eq!(streamed, solo[3]);
    assert_eq!(chunks[chunks.len() - 2]["choices"][0]["finish_reason"], "length");
    assert_eq!(chunks[chunks.len() - 1]["usage"]["completion_tokens"], 30);
    // Completions, with logprobs whose chosen token is the most likely (greedy).
    let (st, v) = srv.post(
        "/v1/completions",
        &json!({"prompt": "Once upon a time", "max_tokens": 6, "temperature": 0, "logprobs": 3}),
    );
    assert_eq!(st, 200, "{v}");
    let lp = &v["choices"][0]["logprobs"];
    assert_eq!(lp["tokens"].as_array().unwrap().len(), 6);
    for (i, top) in lp["top_logprobs"].as_array().unwrap().iter().enumerate() {
        let best = top.as_object().unwrap().values().filter_map(Value::as_f64).fold(f64::MIN, f64::max);
        assert!((best - lp["token_logprobs"][i].as_f64().unwrap()).abs() < 1e-6, "{lp}");
    }
    // A stop string cuts the text before it.
    let cut = &solo[0][..solo[0].len() / 2];
    let stop_at = cut.split_whitespace().last().unwrap();
    let mut body = chat(prompts[0], 24);
    body["stop"] = json!([stop_at]);
    let (_, v) = srv.post("/v1/chat/completions", &body);
    let want = &solo[0][..solo[0].find(stop_at).unwrap()];
    assert_eq!(text_of(&v), want);
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
}

/// With --device-memory the server plans: each request may hold the longest context that --max-seqs of them
/// fit (about a thousand tokens of the demo model's f32 KV in 8 MiB, beside a step's activations), and a longer
/// prompt gets a 400 that says so, though the model's own context (4096) would take it.
#[test]
fn the_memory_plan_limits_requests() {
    let srv = Server::start(&["--device-memory", "8MiB", "--max-seqs", "2", "--prefix-cache-tokens", "0"]);
    let (st, v) = srv.post("/v1/chat/completions", &chat(&"word ".repeat(3000), 2));
    assert_eq!(st, 400, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("tokens of context this server takes"), "{v}");
    assert_eq!(srv.post("/v1/chat/completions", &chat("hi", 2)).0, 200);
}

#[test]
fn bad_requests_get_openai_errors() {
    let srv = Server::start(&["--body-limit", "100000"]);
    let err = |st: u16, b: &[u8], want: u16, what: &str| {
        assert_eq!(st, want, "{what}: {}", String::from_utf8_lossy(b));
        let v: Value = serde_json::from_slice(b).unwrap_or_else(|_| panic!("{what}: not JSON"));
        assert!(v["error"]["message"].is_string() && v["error"]["type"].is_string(), "{what}: {v}");
    };
    let post = |body: &[u8]| srv.raw("POST", "/v1/chat/completions", &[], body);
    for (body, what) in [
        (&b"{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}"[..], "cut short"),
        (b"\xff\xfe{}", "invalid UTF-8"),
        (b"[1, 2]", "not an object"),
        (b"{\"messages\": []}", "empty messages"),
        (b"{\"messages\": \"hi\"}", "messages not a list"),
        (b"{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], \"temperature\": \"hot\"}", "wrong type"),
        (b"{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], \"temperature\": -1}", "out of range"),
        (b"{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], \"n\": 3}", "n"),
        (b"{\"messages\": [{\"role\": \"user\", \"content\": [{\"type\": \"image_url\", \"image_url\": {\"url\": \"file:///etc/passwd\"}}]}]}", "image url"),
    ] {
        let (st, _, b) = post(body);
        err(st, &b, 400, what);
    }
    let deep = vec![b'['; 90_000];
    let (st, _, b) = post(&deep);
    err(st, &b, 400, "deep nesting");
    let (st, _, b) = post(&vec![b' '; 200_000]);
    err(st, &b, 413, "body over the limit");
    let long = "word ".repeat(5000);
    let (st, _, b) = post(chat(&long, 4).to_string().as_bytes());
    err(st, &b, 400, "prompt over the context");
    let mut other = chat("hi", 2);
    other["model"] = json!("gpt-4");
    let (st, _, b) = post(other.to_string().as_bytes());
    err(st, &b, 404, "unknown model");
    let (st, _, b) = srv.raw("GET", "/v2/nothing", &[], b"");
    err(st, &b, 404, "unknown route");
    // The demo model has no vision tower weights: an image is refused, saying so.
    let png = std::fs::read(fixture("vision/photo_200x300.png")).unwrap();
    let (st, v) = srv.post("/v1/chat/completions", &image_chat(&[&png], "What is this?", 2));
    assert_eq!(st, 400, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("no vision tower"), "{v}");
    // Still serving.
    assert_eq!(srv.post("/v1/chat/completions", &chat("hi", 2)).0, 200);
}

#[test]
fn api_key_queue_limit_and_cancelled_streams() {
    let srv = Server::start_env(&["--max-seqs", "1", "--max-queue", "1"], &[("HERD_API_KEY", "sesame")]);
    let (st, _, _) = srv.raw("GET", "/health", &[], b"");
    assert_eq!(st, 200, "health is open");
    for auth in [None, Some("Bearer nope"), Some("sesame")] {
        let h: Vec<(&str, &str)> = auth.map(|a| ("Authorization", a)).into_iter().collect();
        let (st, _, b) = srv.raw("GET", "/v1/models", &h, b"");
        assert_eq!(st, 401, "{auth:?}: {}", String::from_utf8_lossy(&b));
    }
    let key = [("Authorization", "Bearer sesame")];
    let (st, _, b) = srv.raw("GET", "/v1/models", &key, b"");
    assert_eq!(st, 200);
    let models: Value = serde_json::from_slice(&b).unwrap();
    assert_eq!(models["data"][0]["id"], "herd-demo");
    // One running, one waiting: a flood past that is refused with 429 and Retry-After.
    let statuses: Vec<(u16, String)> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..6)
            .map(|_| {
                s.spawn(|| {
                    let (st, head, _) = srv.raw(
                        "POST",
                        "/v1/chat/completions",
                        &key,
                        chat("Tell me a long story.", 40).to_string().as_bytes(),
                    );
                    (st, head)
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(statuses.iter().any(|(s, _)| *s == 200), "{statuses:?}");
    let refused: Vec<_> = statuses.iter().filter(|(s, _)| *s == 429).collect();
    assert!(!refused.is_empty(), "no request was refused: {:?}", statuses.iter().map(|s| s.0).collect::<Vec<_>>());
    assert!(refused.iter().all(|(_, h)| h.contains("retry-after:")));
    // Clients that leave mid-stream: their requests end (cancelled, unless the model ended one first) and
    // the cache is back to idle.
    let idle = || {
        let t0 = Instant::now();
        loop {
            let (_, _, b) = srv.raw("GET", "/metrics", &key, b"");
            let text = String::from_utf8(b).unwrap();
            let get = |n: &str| {
                text.lines()
                    .find_map(|l| {
                        l.strip_prefix(n).and_then(|r| r.strip_prefix(' ')).and_then(|v| v.trim().parse::<f64>().ok())
                    })
                    .unwrap_or_else(|| panic!("no metric {n}"))
            };
            if get("herd_kv_cache_tokens") == 0.0
                && get("herd_requests_running") == 0.0
                && get("herd_requests_waiting") == 0.0
            {
                return (get("herd_requests_cancelled_total"), get("herd_requests_finished_total"));
            }
            assert!(t0.elapsed() < Duration::from_secs(60), "the server did not go back to idle");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let (c0, f0) = idle();
    let mut body = chat("Tell me everything.", 400);
    body["stream"] = json!(true);
    let mut accepted = 0;
    for _ in 0..25 {
        let mut s = TcpStream::connect(&srv.addr).unwrap();
        let b = body.to_string();
        write!(s, "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sesame\r\nContent-Length: {}\r\n\r\n{b}", b.len()).unwrap();
        let mut first = [0u8; 256];
        let _ = s.read(&mut first);
        // With one place running and one waiting, some are refused (429) while the last leaver's request
        // is still being cancelled.
        accepted += usize::from(first.starts_with(b"HTTP/1.1 200"));
        drop(s);
    }
    assert!(accepted > 0);
    let (c1, f1) = idle();
    assert!(c1 - c0 >= 1.0, "no abandoned stream was cancelled");
    assert_eq!((c1 - c0) + (f1 - f0), accepted as f64, "abandoned streams that neither ended nor were cancelled");
}

#[test]
fn sigterm_ends_streams_and_exits() {
    let mut srv = Server::start(&[]);
    let mut body = chat("Tell me everything.", 2000);
    body["stream"] = json!(true);
    let mut s = TcpStream::connect(&srv.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let b = body.to_string();
    write!(s, "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{b}", b.len()).unwrap();
    let mut first = [0u8; 512];
    let _ = s.read(&mut first);
    let t0 = Instant::now();
    while srv.metric("herd_generation_tokens_total") < 3.0 {
        assert!(t0.elapsed() < Duration::from_secs(30), "no tokens generated");
        std::thread::sleep(Duration::from_millis(20));
    }
    let pid = srv.child.id();
    assert!(Command::new("kill").args(["-TERM", &pid.to_string()]).status().unwrap().success());
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    let text = String::from_utf8_lossy(&rest);
    assert!(
        text.contains("shutting down") && text.contains("[DONE]"),
        "the stream did not end with an error event: {}",
        &text[text.len().saturating_sub(400)..]
    );
    let t0 = Instant::now();
    loop {
        if let Some(st) = srv.child.try_wait().unwrap() {
            assert!(st.success(), "exit status {st}");
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "herd serve did not exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The official `openai` Python client against the server: chat (plain and streamed), completions,
/// models, logprobs, a wrong key, a malformed request, and an image part (a second server, of the
/// `scout_vision` fixture). Needs the package: the test command installs it in
/// a virtual environment and sets HERD_OPENAI_PYTHON (and HERD_REQUIRE_OPENAI=1, so that its absence
/// fails instead of saying NOT RUN).
#[test]
fn the_official_openai_client_works() {
    let Some(py) = std::env::var_os("HERD_OPENAI_PYTHON") else {
        let why = "HERD_OPENAI_PYTHON, a python with the openai package, is not set";
        herd_core::not_run("openai client", Some("HERD_REQUIRE_OPENAI"), &why);
        return;
    };
    let srv = Server::start_env(&[], &[("HERD_API_KEY", "sesame")]);
    let run = Command::new(BIN)
        .args(["run", "--chat", "--temperature", "0", "--max-tokens", "20", "--prompt", "Hello! Tell me a story."])
        .output()
        .unwrap();
    let model = fixture("scout_vision");
    let image = fixture("vision/photo_200x300.png");
    let vision = Server::start(&["--model", &model]);
    let seen = run_with_images(&model, &[&image], "What is in the picture?");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/tools/openai_client.py");
    let out = Command::new(py)
        .arg(script)
        .args([
            format!("http://{}/v1", srv.addr),
            "sesame".into(),
            String::from_utf8_lossy(&run.stdout).trim_end().to_owned(),
            format!("http://{}/v1", vision.addr),
            image.clone(),
            seen,
            fixture("schemas"),
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    eprintln!("{}", String::from_utf8_lossy(&out.stdout));
}

#[path = "serve/faults.rs"]
mod faults;

#[path = "serve/guard.rs"]
mod guard;
