//! `herd bench-serve`: a load generator for an OpenAI-compatible server (herd's own, or any other): R
//! streamed completions of P random-token prompts and G tokens each, C at a time, each on its own
//! connection. Prints request and token throughput, time to first token and inter-token latency (p50,
//! p99), and errors.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

/// `herd bench-serve`'s flags.
#[derive(clap::Args)]
pub struct Options {
    /// The server's base URL, e.g. http://127.0.0.1:8080/v1.
    #[arg(long)]
    pub url: String,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 1)]
    pub concurrency: usize,
    /// Requests in all.
    #[arg(long, default_value_t = 16)]
    pub requests: usize,
    /// Prompt length (random token ids, different for each request).
    #[arg(long, default_value_t = 128)]
    pub prompt_tokens: usize,
    /// Tokens to generate per request.
    #[arg(long, default_value_t = 64)]
    pub gen_tokens: usize,
    /// The first N prompt tokens are the same in every request (a shared system prompt; prefix reuse).
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub shared_prefix: usize,
    /// The model name to send (default: the first the server lists).
    #[arg(long)]
    pub model: Option<String>,
    /// Sent as `Authorization: Bearer KEY` (also from $HERD_API_KEY).
    #[arg(long, value_name = "KEY")]
    pub api_key: Option<String>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// One request's measurements.
#[derive(Default)]
struct Sample {
    ttft: Option<Duration>,
    gaps: Vec<Duration>,
    tokens: usize,
    error: Option<String>,
}

/// `http://host:port[/v1]` → (host:port, path prefix).
fn split_url(url: &str) -> Result<(String, String)> {
    let rest = url.strip_prefix("http://").context("--url must start with http:// (TLS is not supported)")?;
    let (host, path) = rest.split_once('/').map_or((rest, ""), |(h, p)| (h, p));
    let path = path.trim_end_matches('/');
    let prefix = if path.is_empty() { "/v1".to_owned() } else { format!("/{path}") };
    Ok((host.to_owned(), prefix))
}

fn get_json(host: &str, path: &str, key: Option<&str>) -> Result<Value> {
    let mut s = TcpStream::connect(host).with_context(|| format!("connecting to {host}"))?;
    let auth = key.map(|k| format!("Authorization: Bearer {k}\r\n")).unwrap_or_default();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {host}\r\n{auth}Connection: close\r\n\r\n")?;
    let mut r = BufReader::new(s);
    let mut body = String::new();
    let mut in_body = false;
    let mut line = String::new();
    while r.read_line(&mut line)? > 0 {
        if in_body {
            body.push_str(&line);
        } else if line == "\r\n" {
            in_body = true;
        }
        line.clear();
    }
    // A chunked body: the JSON object is the line that starts with '{'.
    let obj = body.lines().find(|l| l.starts_with('{')).unwrap_or(&body);
    serde_json::from_str(obj).with_context(|| format!("GET {path}: not JSON: {body:.200}"))
}

/// One streamed completion; the time of each token event.
fn one(host: &str, path: &str, key: Option<&str>, body: &str) -> Sample {
    let mut out = Sample::default();
    let run = || -> Result<Sample> {
        let mut s = TcpStream::connect(host)?;
        s.set_read_timeout(Some(Duration::from_secs(600)))?;
        let auth = key.map(|k| format!("Authorization: Bearer {k}\r\n")).unwrap_or_default();
        let t0 = Instant::now();
        write!(
            s,
            "POST {path} HTTP/1.1\r\nHost: {host}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )?;
        let mut r = BufReader::new(s);
        let mut line = String::new();
        r.read_line(&mut line)?;
        let status: u16 = line.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        let mut sample = Sample::default();
        let mut last = None::<Instant>;
        let mut text = String::new();
        loop {
            line.clear();
            if r.read_line(&mut line)? == 0 {
                break;
            }
            if status != 200 {
                text.push_str(&line);
                continue;
            }
            let Some(data) = line.trim_end().strip_prefix("data: ") else { continue };
            if data == "[DONE]" {
                break;
            }
            let v: Value = serde_json::from_str(data).unwrap_or(Value::Null);
            if v.get("error").is_some() {
                bail!("{}", v["error"]["message"]);
            }
            let has_text = v["choices"][0]["text"].as_str().is_some_and(|t| !t.is_empty());
            if has_text {
                let now = Instant::now();
                match last {
                    None => sample.ttft = Some(now - t0),
                    Some(l) => sample.gaps.push(now - l),
                }
                last = Some(now);
                sample.tokens += 1;
            }
            if let Some(n) = v["usage"]["completion_tokens"].as_u64() {
                sample.tokens = n as usize;
            }
        }
        if status != 200 {
            bail!(
                "HTTP {status}: {}",
                text.lines().find(|l| l.starts_with('{')).unwrap_or("").chars().take(200).collect::<String>()
            );
        }
        Ok(sample)
    };
    match run() {
        Ok(s) => out = s,
        Err(e) => out.error = Some(e.to_string()),
    }
    out
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() - 1) as f64 * p).round() as usize]
}

pub fn bench_serve(o: &Options) -> Result<()> {
    if o.concurrency == 0 || o.requests == 0 || o.gen_tokens == 0 || o.prompt_tokens == 0 {
        bail!("--concurrency, --requests, --prompt-tokens and --gen-tokens must be at least 1");
    }
    if o.shared_prefix >= o.prompt_tokens {
        bail!("--shared-prefix {} must be less than --prompt-tokens {}", o.shared_prefix, o.prompt_tokens);
    }
    let (host, prefix) = split_url(&o.url)?;
    let model = match &o.model {
        Some(m) => m.clone(),
        None => {
            let v = get_json(&host, &format!("{prefix}/models"), o.api_key.as_deref())?;
            v["data"][0]["id"].as_str().context("the server lists no model (pass --model)")?.to_owned()
        }
    };
    // Random-token prompts, different for every request after the first `shared_prefix` tokens, which all
    // share; the completions endpoint with token ids keeps every request at G tokens unless the model ends it.
    let bodies: Vec<String> = (0..o.requests)
        .map(|i| {
            let ids: Vec<u32> = (0..o.prompt_tokens)
                .map(|j| {
                    let r = if j < o.shared_prefix { usize::MAX / 2 } else { i };
                    (((r.wrapping_mul(7919).wrapping_add(j * 104729)) as u64).wrapping_mul(2654435761) % 3000 + 100)
                        as u32
                })
                .collect();
            json!({"model": model, "prompt": ids, "max_tokens": o.gen_tokens, "temperature": 0.8, "seed": i,
                   "stream": true, "stream_options": {"include_usage": true}})
            .to_string()
        })
        .collect();
    let path = format!("{prefix}/completions");
    let next = AtomicUsize::new(0);
    let samples = Mutex::new(Vec::with_capacity(o.requests));
    let t0 = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..o.concurrency.min(o.requests) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= o.requests {
                    break;
                }
                let r = one(&host, &path, o.api_key.as_deref(), &bodies[i]);
                samples.lock().unwrap_or_else(|e| e.into_inner()).push(r);
            });
        }
    });
    let wall = t0.elapsed().as_secs_f64();
    let samples = samples.into_inner().unwrap_or_else(|e| e.into_inner());
    let errors: Vec<&str> = samples.iter().filter_map(|s| s.error.as_deref()).collect();
    let ok: Vec<&Sample> = samples.iter().filter(|s| s.error.is_none()).collect();
    let tokens: usize = ok.iter().map(|s| s.tokens).sum();
    let mut ttft: Vec<f64> = ok.iter().filter_map(|s| s.ttft.map(|d| d.as_secs_f64() * 1e3)).collect();
    let mut itl: Vec<f64> = ok.iter().flat_map(|s| s.gaps.iter().map(|d| d.as_secs_f64() * 1e3)).collect();
    let (t50, t99, i50, i99) = (pct(&mut ttft, 0.5), pct(&mut ttft, 0.99), pct(&mut itl, 0.5), pct(&mut itl, 0.99));
    if o.json {
        println!(
            "{}",
            json!({"concurrency": o.concurrency, "requests": o.requests, "prompt_tokens": o.prompt_tokens, "gen_tokens": o.gen_tokens, "shared_prefix": o.shared_prefix,
                   "seconds": wall, "requests_per_s": ok.len() as f64 / wall, "tokens_per_s": tokens as f64 / wall,
                   "ttft_ms_p50": t50, "ttft_ms_p99": t99, "itl_ms_p50": i50, "itl_ms_p99": i99, "errors": errors.len()})
        );
    } else {
        println!(
            "{} requests ({} at a time), {} prompt ({} shared) + {} generated tokens each, against {model} at {}",
            o.requests, o.concurrency, o.prompt_tokens, o.shared_prefix, o.gen_tokens, o.url
        );
        println!(
            "throughput: {:.2} requests/s, {:.1} generated tokens/s ({tokens} tokens in {wall:.2} s)",
            ok.len() as f64 / wall,
            tokens as f64 / wall
        );
        println!("time to first token: p50 {t50:.1} ms, p99 {t99:.1} ms");
        println!("inter-token latency: p50 {i50:.1} ms, p99 {i99:.1} ms");
        println!("errors: {}{}", errors.len(), errors.first().map(|e| format!(" (first: {e})")).unwrap_or_default());
    }
    Ok(())
}
