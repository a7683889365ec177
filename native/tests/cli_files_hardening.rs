//! The files herd writes and serves: `web-manifest` never writes through a link nor reads a shard outside
//! the model directory, `serve-web` serves only the model's own files and the page (no dotfile, nothing
//! that resolves outside), and `quantize` refuses what it cannot convert and conflicting flags, leaving no
//! output behind. Each refusal is one `error:` line naming the file, tensor or flag, exit code 1, no panic.

mod common;

use std::io::{BufRead, Read};
use std::net::TcpStream;
use std::time::Duration;

use common::*;

/// A symbolic link at `link` to `target`.
fn symlink(target: &Path, link: &Path) {
    #[cfg(unix)]
    std::os::unix::fs::symlink(target, link).unwrap_or_else(|e| panic!("symlink {}: {e}", link.display()));
    #[cfg(not(unix))]
    let _ = (target, link);
}

/// Rewrites `dir`/model.safetensors with tensor `name` stored as I64 (zeros of the same shape).
fn make_i64(dir: &Path, name: &str) {
    let path = dir.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut owned: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for (n, t) in st.tensors() {
        if n == name {
            let numel: usize = t.shape().iter().product();
            owned.push((n, Dtype::I64, t.shape().to_vec(), vec![0u8; numel * 8]));
        } else {
            owned.push((n, t.dtype(), t.shape().to_vec(), t.data().to_vec()));
        }
    }
    assert!(owned.iter().any(|o| o.0 == name && o.1 == Dtype::I64), "no tensor {name}");
    let views: HashMap<String, TensorView> =
        owned.iter().map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap())).collect();
    let tmp = dir.join("rewritten.safetensors");
    safetensors::serialize_to_file(&views, None, &tmp).unwrap();
    drop(st);
    std::fs::rename(&tmp, &path).unwrap();
}

// ---------------------------------------------------------------------------------------------------
// web-manifest
// ---------------------------------------------------------------------------------------------------

#[cfg(unix)]
#[test]
fn web_manifest_refuses_to_write_through_a_link() {
    let sc = Scratch::new("wm-link");
    let m = sc.bare_model("scout", "m");
    let target = sc.path("precious.json");
    std::fs::write(&target, "precious").unwrap();
    symlink(&target, &m.join("herd-manifest.json"));
    fails(
        "web-manifest via a link",
        herd(["web-manifest", "--model", s(&m)]),
        &["herd-manifest.json", "symbolic link"],
    );
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "precious", "the link's target was written");
    assert!(std::fs::symlink_metadata(m.join("herd-manifest.json")).unwrap().file_type().is_symlink());
    let left: Vec<_> = std::fs::read_dir(&m).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(!left.iter().any(|n| n.to_string_lossy().contains("herd-tmp")), "temporary file left: {left:?}");

    // A regular file is replaced as before.
    std::fs::remove_file(m.join("herd-manifest.json")).unwrap();
    ok("web-manifest", herd(["web-manifest", "--model", s(&m)]));
    let v: Value = serde_json::from_slice(&std::fs::read(m.join("herd-manifest.json")).unwrap()).unwrap();
    assert_eq!(v["format"], "herd-manifest");
}

#[test]
fn web_manifest_refuses_an_index_naming_files_outside() {
    let sc = Scratch::new("wm-index");
    let m = sc.bare_model("scout", "m");
    let outside = sc.path("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::copy(m.join("model.safetensors"), outside.join("x.safetensors")).unwrap();
    std::fs::write(
        m.join("model.safetensors.index.json"),
        r#"{"weight_map": {"lm_head.weight": "../outside/x.safetensors"}}"#,
    )
    .unwrap();
    fails(
        "web-manifest, index naming ../outside",
        herd(["web-manifest", "--model", s(&m)]),
        &["model.safetensors.index.json", "../outside/x.safetensors"],
    );
    assert!(!m.join("herd-manifest.json").exists(), "a manifest was written");
}

#[cfg(unix)]
#[test]
fn web_manifest_refuses_a_shard_that_is_not_a_regular_file() {
    let sc = Scratch::new("wm-fifo");
    let m = sc.bare_model("scout", "m");
    let fifo = m.join("model-00001-of-00001.safetensors");
    let made = Command::new("mkfifo").arg(&fifo).status();
    if !made.is_ok_and(|s| s.success()) {
        herd_core::not_run("fifo refusal", None, &"no mkfifo");
        return;
    }
    std::fs::write(
        m.join("model.safetensors.index.json"),
        r#"{"weight_map": {"lm_head.weight": "model-00001-of-00001.safetensors"}}"#,
    )
    .unwrap();
    fails(
        "web-manifest, shard a FIFO",
        herd(["web-manifest", "--model", s(&m)]),
        &["model-00001-of-00001.safetensors", "not a regular file"],
    );
}

// ---------------------------------------------------------------------------------------------------
// serve-web
// ---------------------------------------------------------------------------------------------------

/// `herd serve-web` on a free port of 127.0.0.1, stopped on drop.
struct Server {
    child: std::process::Child,
    addr: String,
}

impl Server {
    fn start(model: &Path, www: &Path) -> Server {
        let mut child = Command::new(BIN)
            .args(["serve-web", "--model", s(model), "--www", s(www), "--host", "127.0.0.1", "--port", "0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .stdin(Stdio::null())
            .spawn()
            .expect("start herd serve-web");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let addr = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("http://"))
            .map(|a| a.trim_end_matches('/').to_owned())
            .unwrap_or_else(|| panic!("serve-web printed {line:?}"));
        assert!(addr.starts_with("127.0.0.1:"), "{addr}");
        Server { child, addr }
    }

    /// A raw HTTP/1.1 GET of `target` (sent as written: no client normalizes it) with `headers`:
    /// (status, headers, body).
    fn get(&self, target: &str, headers: &str) -> (u16, String, Vec<u8>) {
        let mut stream = TcpStream::connect(&self.addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        stream.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
        let req = format!("GET {target} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n{headers}\r\n", self.addr);
        stream.write_all(req.as_bytes()).unwrap();
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).unwrap_or_else(|e| panic!("GET {target}: {e}"));
        let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or_else(|| panic!("GET {target}: {raw:?}"));
        let head = String::from_utf8_lossy(&raw[..split]).into_owned();
        let status: u16 = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        (status, head, raw[split + 4..].to_vec())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A stand-in for the built page (serve-web only checks that it is there): `www/` with `index.html`.
fn fake_page(sc: &Scratch, index: &str) -> PathBuf {
    let www = sc.path("www");
    std::fs::create_dir_all(www.join("pkg")).unwrap();
    std::fs::write(www.join("index.html"), index).unwrap();
    std::fs::write(www.join("pkg/herd_web_bg.wasm"), b"\0asm").unwrap();
    www
}

#[cfg(unix)]
#[test]
fn serve_web_serves_only_the_model_files_and_the_page() {
    let sc = Scratch::new("serve-web");
    let www = fake_page(&sc, "<!doctype html>page");
    std::fs::write(www.join(".env"), "SECRET=www").unwrap();
    let outside = sc.path("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("secret.txt"), "SECRET=outside").unwrap();
    symlink(&outside.join("secret.txt"), &www.join("leak.txt"));

    let m =
        sc.model_copy("scout", "m", &["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]);
    std::fs::write(m.join(".env"), "SECRET=model").unwrap();
    std::fs::create_dir_all(m.join(".git")).unwrap();
    std::fs::write(m.join(".git/config"), "SECRET=git").unwrap();
    std::fs::write(m.join("notes.txt"), "SECRET=notes").unwrap();
    symlink(&outside.join("secret.txt"), &m.join("x"));
    // An allowed name that links outside is not served either.
    symlink(&outside.join("secret.txt"), &m.join("generation_config.json"));
    // A link to another file inside the directory is.
    symlink(Path::new("config.json"), &m.join("preprocessor_config.json"));

    let srv = Server::start(&m, &www);
    let config = std::fs::read(m.join("config.json")).unwrap();
    let (st, head, body) = srv.get("/model/config.json", "");
    assert_eq!((st, &body), (200, &config), "{head}");
    assert!(head.to_ascii_lowercase().contains("content-type: application/json"), "{head}");
    let (st, _, body) = srv.get("/model/preprocessor_config.json", "");
    assert_eq!((st, &body), (200, &config));

    let weights = std::fs::read(m.join("model.safetensors")).unwrap();
    let (st, head, body) = srv.get("/model/model.safetensors", "Range: bytes=8-23\r\n");
    assert_eq!(st, 206, "{head}");
    assert_eq!(body, weights[8..24]);
    assert!(head.to_ascii_lowercase().contains(&format!("content-range: bytes 8-23/{}", weights.len())), "{head}");

    // The manifest, made at start (the directory has none).
    let (st, _, body) = srv.get("/model/herd-manifest.json", "");
    assert_eq!(st, 200);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["format"], "herd-manifest");
    assert!(!m.join("herd-manifest.json").exists(), "serve-web wrote into the model directory");

    let (st, _, body) = srv.get("/", "");
    assert_eq!((st, body.as_slice()), (200, &b"<!doctype html>page"[..]));

    for target in [
        "/model/.env",
        "/model/%2eenv",
        "/model/.git/config",
        "/model/notes.txt",
        "/model/x",
        "/model/generation_config.json",
        "/model/../outside/secret.txt",
        "/model/%2e%2e/outside/secret.txt",
        "/model/..%2f..%2foutside%2fsecret.txt",
        "/model//etc/passwd",
        "/model/",
        "/model",
        "/.env",
        "/leak.txt",
        "/../outside/secret.txt",
        "/%2e%2e/outside/secret.txt",
        "/m/.env",
        "/etc/passwd",
    ] {
        let (st, head, body) = srv.get(target, "");
        assert!(st == 404 || st == 400, "GET {target}: {head}");
        assert!(!String::from_utf8_lossy(&body).contains("SECRET"), "GET {target} leaked: {body:?}");
    }
}

// ---------------------------------------------------------------------------------------------------
// quantize
// ---------------------------------------------------------------------------------------------------

/// No output directory, and no temporary one beside it.
fn nothing_written(case: &str, out: &Path) {
    assert!(!out.exists(), "{case}: {} was made", out.display());
    let parent = out.parent().unwrap();
    let left: Vec<_> = std::fs::read_dir(parent)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("partial"))
        .collect();
    assert!(left.is_empty(), "{case}: left {left:?}");
}

#[test]
fn quantize_refuses_a_tensor_it_cannot_convert() {
    let sc = Scratch::new("q-i64");
    let m = sc.model_copy("scout", "m", &["config.json", "model.safetensors", "tokenizer.json"]);
    make_i64(&m, "lm_head.weight");
    let out = sc.path("q");
    fails(
        "quantize, I64 lm_head",
        herd(["quantize", "--model", s(&m), "--out", s(&out), "--format", "q4", "--group", "16"]),
        &["lm_head.weight", "I64"],
    );
    nothing_written("I64 lm_head", &out);
}

#[test]
fn quantize_refuses_conflicting_or_unknown_flags() {
    let sc = Scratch::new("q-flags");
    let model = fixture_dir("scout");
    let out = sc.path("q");
    fails(
        "q4g32 --group 64",
        herd(["quantize", "--model", s(&model), "--out", s(&out), "--format", "q4g32", "--group", "64"]),
        &["--format q4g32", "--group 64", "conflict"],
    );
    nothing_written("q4g32 --group 64", &out);
    fails(
        "--keep-bf16 typo",
        herd([
            "quantize",
            "--model",
            s(&model),
            "--out",
            s(&out),
            "--format",
            "q4g16",
            "--keep-bf16",
            "attention,atention",
        ]),
        &["--keep-bf16 atention", "names no tensor"],
    );
    nothing_written("--keep-bf16 typo", &out);

    // The same group size twice is no conflict; a known part name the model lacks is no typo.
    let (_, err) = ok(
        "q4g16 --group 16",
        herd([
            "quantize",
            "--model",
            s(&model),
            "--out",
            s(&out),
            "--format",
            "q4g16",
            "--group",
            "16",
            "--keep-bf16",
            "shared,model.layers.0.self_attn.q_proj",
        ]),
    );
    assert!(err.contains("as q4g16"), "{err}");

    // The files written get the mode any new file gets here (0666 less the umask), not a fixed one.
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let probe = sc.path("probe");
        std::fs::OpenOptions::new().write(true).create_new(true).mode(0o666).open(&probe).unwrap();
        let want = std::fs::metadata(&probe).unwrap().permissions().mode() & 0o777;
        for f in ["model.safetensors", "config.json", "tokenizer.json"] {
            let got = std::fs::metadata(out.join(f)).unwrap().permissions().mode() & 0o777;
            assert_eq!(got, want, "{f}: mode {got:o}, want {want:o}");
        }
    }
}

/// A model in the Hugging Face cache layout (`<repo>/snapshots/<rev>/NAME -> ../../blobs/<hash>`) still
/// serves: its files may resolve into their own repository's blobs, and nowhere else.
#[cfg(unix)]
#[test]
fn serve_web_serves_a_model_in_the_download_cache() {
    let sc = Scratch::new("serve-web-hf");
    let www = fake_page(&sc, "<!doctype html>");
    let repo = sc.path("hub/models--meta--tiny");
    let (blobs, snap) = (repo.join("blobs"), repo.join("snapshots/0123abcd"));
    std::fs::create_dir_all(&blobs).unwrap();
    std::fs::create_dir_all(&snap).unwrap();
    for (i, f) in ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"].iter().enumerate() {
        std::fs::copy(fixture_dir("scout").join(f), blobs.join(format!("blob{i}"))).unwrap();
        symlink(Path::new(&format!("../../blobs/blob{i}")), &snap.join(f));
    }
    std::fs::write(repo.join("secret.txt"), "SECRET=repo").unwrap();
    symlink(Path::new("../../secret.txt"), &snap.join("generation_config.json"));

    let srv = Server::start(&snap, &www);
    let (st, head, body) = srv.get("/model/config.json", "");
    assert_eq!((st, body), (200, std::fs::read(fixture_dir("scout").join("config.json")).unwrap()), "{head}");
    assert!(head.to_ascii_lowercase().contains("content-type: application/json"), "{head}");
    let (st, head, body) = srv.get("/model/model.safetensors", "Range: bytes=0-7\r\n");
    assert_eq!((st, body.len()), (206, 8), "{head}");
    let (st, head, body) = srv.get("/model/generation_config.json", "");
    assert_eq!(st, 404, "{head}");
    assert!(!String::from_utf8_lossy(&body).contains("SECRET"));
}
