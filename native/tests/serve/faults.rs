//! The server under faults: a thousand broken and abandoned requests, and a model that fails to load.

use super::*;

/// Faults, a thousand times over: 1,000 streams whose clients leave (after the first chunk, or before any
/// answer) mixed with bodies cut short, requests cut inside their headers, invalid UTF-8 and answers read to
/// the end, from 8 clients at once; then 10 MB of `[`. The server answers each as it should, keeps serving,
/// its running and waiting requests and KV tokens go back to zero, every accepted request ends (finished or
/// cancelled), and its memory stays within bounds of what it held after warming up.
#[test]
fn a_thousand_faults_leave_the_server_idle() {
    let srv = Server::start(&["--max-seqs", "16", "--max-queue", "64"]);
    let rss = || {
        let s = std::fs::read_to_string(format!("/proc/{}/status", srv.child.id())).unwrap_or_default();
        s.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
    };
    let want = text_of(&srv.post("/v1/chat/completions", &chat("Hello! Tell me a story.", 12)).1);
    let warm = rss();
    let mut stream = chat("Tell me everything.", 400);
    stream["stream"] = json!(true);
    let stream = stream.to_string();
    let short = chat("Why?", 3).to_string();
    let (cancels, others): (usize, usize) = std::thread::scope(|s| {
        let hs: Vec<_> = (0..8u64)
            .map(|t| {
                let (srv, stream, short) = (&srv, &stream, &short);
                s.spawn(move || {
                    let (mut cancels, mut others) = (0, 0);
                    let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ t;
                    while cancels < 125 {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        let mut c = TcpStream::connect(&srv.addr).unwrap();
                        c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
                        let head = |len: usize| {
                            format!(
                                "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {len}\r\n\r\n"
                            )
                        };
                        match x % 8 {
                            // Leaves after the first chunk of its stream, or right after asking.
                            0..=3 => {
                                write!(c, "{}{stream}", head(stream.len())).unwrap();
                                if x % 8 < 3 {
                                    let mut first = [0u8; 64];
                                    let _ = c.read(&mut first);
                                    assert!(first.starts_with(b"HTTP/1.1 200") || first.starts_with(b"HTTP/1.1 429"));
                                }
                                cancels += 1;
                            }
                            // A body cut short, or headers cut short: the server gives up on it.
                            4 => {
                                write!(c, "{}{}", head(stream.len()), &stream[..stream.len() / 3]).unwrap();
                                others += 1;
                            }
                            5 => {
                                c.write_all(&head(stream.len()).as_bytes()[..20]).unwrap();
                                others += 1;
                            }
                            // Invalid UTF-8: a 400.
                            6 => {
                                c.write_all(head(4).as_bytes()).unwrap();
                                c.write_all(b"\xff\xfe{}").unwrap();
                                let mut out = Vec::new();
                                let _ = c.read_to_end(&mut out);
                                assert_eq!(parse_response(&out).0, 400);
                                others += 1;
                            }
                            // Read to the end: answered (or refused while the queue is full).
                            _ => {
                                write!(c, "{}{short}", head(short.len())).unwrap();
                                let mut out = Vec::new();
                                let _ = c.read_to_end(&mut out);
                                let st = parse_response(&out).0;
                                assert!(st == 200 || st == 429, "{st}");
                                others += 1;
                            }
                        }
                    }
                    (cancels, others)
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
    });
    assert_eq!(cancels, 1000);
    let deep = vec![b'['; 10 << 20];
    let (st, _, _) = srv.raw("POST", "/v1/chat/completions", &[], &deep);
    assert_eq!(st, 400, "10 MB of [");
    // Clients that left right after asking may still be reaching the engine: wait for the counts to settle.
    let t0 = Instant::now();
    loop {
        let idle = ["herd_requests_running", "herd_requests_waiting", "herd_kv_cache_tokens"]
            .iter()
            .all(|m| srv.metric(m) == 0.0);
        let ended = srv.metric("herd_requests_finished_total") + srv.metric("herd_requests_cancelled_total");
        let (total, failed) = (srv.metric("herd_requests_total"), srv.metric("herd_requests_failed_total"));
        if idle && ended == total {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "the server did not go back to idle, or accepted requests never ended: {total} accepted, {ended} \
             finished or cancelled, {failed} failed"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        srv.metric("herd_requests_cancelled_total") >= 500.0,
        "{} cancelled",
        srv.metric("herd_requests_cancelled_total")
    );
    assert_eq!(text_of(&srv.post("/v1/chat/completions", &chat("Hello! Tell me a story.", 12)).1), want);
    if let (Some(a), Some(b)) = (warm, rss()) {
        eprintln!("herd serve: {a} kB resident after warming up, {b} kB after {cancels} cancelled streams and {others} other faults");
        assert!(b < a + 300 * 1024, "resident memory grew from {a} kB to {b} kB");
    }
}

/// A model whose weights do not load: a checkpoint cut short is refused before the server listens (the
/// memory plan reads its header), in one line; one whose tensors do not match its config (the plan counts
/// bytes, the load checks shapes) fails on the engine thread after the server has printed its URL (it answers
/// while the model loads, /health 503), and the server exits with the loading error.
#[test]
fn a_model_that_fails_to_load_ends_the_server_with_its_error() {
    let dir = std::env::temp_dir().join(format!("herd-serve-badmodel-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json"] {
        std::fs::copy(fixture(&format!("scout/{f}")), dir.join(f)).unwrap();
    }
    let weights = std::fs::read(fixture("scout/model.safetensors")).unwrap();
    std::fs::write(dir.join("model.safetensors"), &weights[..weights.len() / 2]).unwrap();
    let serve =
        || Command::new(BIN).args(["serve", "--port", "0", "--model"]).arg(&dir).stdin(Stdio::null()).output().unwrap();
    let out = serve();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("error: ") && stderr.contains("model.safetensors"), "{stderr}");
    // Whole weights, a config whose experts are wider than the checkpoint's.
    std::fs::write(dir.join("model.safetensors"), &weights).unwrap();
    let cfg = std::fs::read_to_string(fixture("scout/config.json")).unwrap();
    let cfg = cfg.replacen("\"intermediate_size\": 16,", "\"intermediate_size\": 24,", 1);
    assert!(cfg.contains("\"intermediate_size\": 24,"), "the fixture's config changed shape");
    std::fs::write(dir.join("config.json"), cfg).unwrap();
    let out = serve();
    let _ = std::fs::remove_dir_all(&dir);
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(stdout.contains("http://"), "{stdout}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(last.starts_with("error: loading the model: ") && last.contains("expected [4, 32, 48]"), "{stderr}");
}
