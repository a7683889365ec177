//! `herd serve-web`: the browser demo and a model directory over HTTP on this machine, with the range
//! requests the page reads weights by (tower-http's ServeFile answers `Range` with 206 and
//! `Content-Range`). The page is served at `/`, the model at `/model/`; a model without a checksum
//! manifest gets one made at start (`herd web-manifest` writes it to the directory instead).
//!
//! What is served, and nothing else (anything else is 404):
//!
//! * `/model/NAME` for the files a model consists of, by name: [`MODEL_FILES`] (config, tokenizer and
//!   generation files, the checkpoint and its index, the manifest) and the shards the index lists (read
//!   with [`herd_core::checkpoint::parse_index`], which refuses names outside the directory). No other name
//!   in the directory is ever served: not a dotfile (`.env`, `.git/...`), not a stray link (`x -> /etc/passwd`).
//! * `/` and below: the files of the page's directory, never a dotfile or dot directory, and nothing that
//!   resolves (links followed) outside that directory.
//!
//! Links among the model's files: each allowed name is resolved once, at start, to a regular file, and
//! that resolved path is what is served (a link changed afterwards changes nothing). The resolved file
//! must lie inside the model directory, with one exception: a directory that is a Hugging Face cache
//! snapshot (`<repo>/snapshots/<revision>/`, whose files are links to `../../blobs/<hash>`) may also
//! resolve into its own repository's `blobs/`. A model file that resolves anywhere else (or to a
//! directory, device or FIFO) is not served, and a `note:` at start says which and why. So links that
//! point out of the directory are never followed out of it, and models in the download cache still serve.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use axum::body::{Body, Bytes};
use axum::extract::{Path as UrlPath, Request};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use herd_core::limits::{read_input, InputKind};
use herd_web::manifest::{self, MANIFEST};
use tower_http::services::ServeFile;

use crate::files::ModelFiles;

/// The checkpoint index, whose shards are served too.
const INDEX: &str = "model.safetensors.index.json";

/// The files of a model directory served at `/model/NAME` (besides the shards the index lists).
pub const MODEL_FILES: &[&str] = &[
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "chat_template.json",
    "preprocessor_config.json",
    "special_tokens_map.json",
    "model.safetensors",
    INDEX,
    MANIFEST,
];

/// The page's directory: `--www`, else web/www of this source tree.
fn www_dir(www: Option<PathBuf>) -> Result<PathBuf> {
    let dir = www.unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../web/www"));
    if !dir.join("index.html").exists() {
        bail!("{}: no index.html (pass --www DIR, the demo page's directory)", dir.display());
    }
    if !dir.join("pkg/herd_web_bg.wasm").exists() {
        bail!("{}: the page is not built (run scripts/build-web.sh first)", dir.join("pkg").display());
    }
    Ok(dir)
}

/// Writes `dir`'s checksum manifest into it (never through a link: [`crate::files::write_output`]).
pub fn write_manifest(dir: &Path) -> Result<()> {
    let m = manifest::build(dir).map_err(anyhow::Error::msg)?;
    let path = dir.join(MANIFEST);
    let bytes = serde_json::to_vec(&m)?;
    crate::files::write_output(&path, |f| std::io::Write::write_all(f, &bytes))?;
    println!("wrote {} ({} tensors)", path.display(), m["tensors"].as_object().map_or(0, |t| t.len()));
    Ok(())
}

/// One file served at `/model/NAME`.
enum Served {
    /// A file on disk: its resolved path, and the content type its name gives.
    File { path: PathBuf, mime: &'static str },
    /// The manifest made at start.
    Memory(Bytes),
}

/// The content type of a model file by its name (a blob in a download cache has no extension).
fn mime_of(name: &str) -> &'static str {
    if name.ends_with(".json") {
        "application/json"
    } else if name.ends_with(".jinja") {
        "text/plain; charset=utf-8"
    } else {
        "application/octet-stream"
    }
}

/// The model directory's files that may be served, by name, each resolved to the regular file it is
/// (see the module doc for which links are followed). Absent files are left out silently; present ones
/// that may not be served are left out with a note.
fn model_files(dir: &Path) -> Result<HashMap<String, PathBuf>> {
    let root = std::fs::canonicalize(dir).with_context(|| format!("{}", dir.display()))?;
    // A Hugging Face cache snapshot: <repo>/snapshots/<revision>/NAME -> ../../blobs/<hash>.
    let blobs = root
        .parent()
        .filter(|p| p.file_name().is_some_and(|n| n == "snapshots"))
        .and_then(Path::parent)
        .map(|repo| repo.join("blobs"))
        .filter(|b| b.is_dir());
    let resolve = |name: &str| -> Option<PathBuf> {
        let path = root.join(name);
        std::fs::symlink_metadata(&path).ok()?; // absent: nothing to say
        let note = |why: String| eprintln!("note: serve-web does not serve {}: {why}", path.display());
        let target = match std::fs::canonicalize(&path) {
            Ok(t) => t,
            Err(e) => {
                note(format!("cannot resolve it ({e})"));
                return None;
            }
        };
        if !(target.starts_with(&root) || blobs.as_ref().is_some_and(|b| target.starts_with(b))) {
            note(format!("it resolves to {}, outside the model directory", target.display()));
            return None;
        }
        if !std::fs::metadata(&target).is_ok_and(|m| m.is_file()) {
            note("it is not a regular file (a directory, device or FIFO)".into());
            return None;
        }
        Some(target)
    };
    let mut files = HashMap::new();
    for name in MODEL_FILES {
        if let Some(p) = resolve(name) {
            files.insert(name.to_string(), p);
        }
    }
    if let Some(index) = files.get(INDEX) {
        let bytes = read_input(index, InputKind::Index)?;
        let shards = herd_core::checkpoint::parse_index(&bytes)
            .map_err(|e| anyhow::anyhow!("{}: {e}", root.join(INDEX).display()))?;
        for s in shards {
            if let Some(p) = resolve(&s) {
                files.insert(s, p);
            }
        }
    }
    Ok(files)
}

/// Decodes a URL path's `%XX` escapes; None for a malformed escape or a result that is not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3).filter(|h| h.iter().all(u8::is_ascii_hexdigit))?;
            out.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The file of the page's directory `www` (canonical) that URL path `url_path` names (a directory: its
/// index.html), or None: a name starting with `.` anywhere in the path (dotfiles, `..`), or a file that
/// resolves outside `www` or is not a regular file.
fn page_file(www: &Path, url_path: &str) -> Option<PathBuf> {
    let decoded = percent_decode(url_path)?;
    let mut path = www.to_path_buf();
    for seg in decoded.split('/').filter(|s| !s.is_empty()) {
        let mut c = Path::new(seg).components();
        if seg.starts_with('.')
            || seg.contains('\\')
            || !matches!((c.next(), c.next()), (Some(Component::Normal(_)), None))
        {
            return None;
        }
        path.push(seg);
    }
    let mut target = std::fs::canonicalize(&path).ok()?;
    if target.is_dir() {
        target = std::fs::canonicalize(target.join("index.html")).ok()?;
    }
    (target.starts_with(www) && target.is_file()).then_some(target)
}

fn not_found() -> Response {
    (StatusCode::NOT_FOUND, "not found").into_response()
}

/// `path` (a regular file, resolved) as the answer to `req`, ranges included.
async fn serve_file(path: &Path, req: Request) -> Response {
    match ServeFile::new(path).try_call(req).await {
        Ok(res) => res.map(Body::new),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

async fn model_file(files: &HashMap<String, Served>, name: &str, req: Request) -> Response {
    match files.get(name) {
        None => not_found(),
        Some(Served::Memory(bytes)) => ([(header::CONTENT_TYPE, "application/json")], bytes.clone()).into_response(),
        Some(Served::File { path, mime }) => {
            let mut res = serve_file(path, req).await;
            if res.status().is_success() {
                res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(mime));
            }
            res
        }
    }
}

pub fn serve(model: &ModelFiles, www: Option<PathBuf>, host: &str, port: u16) -> Result<()> {
    let www = www_dir(www)?;
    let www = std::fs::canonicalize(&www).with_context(|| format!("{}", www.display()))?;
    let dir = model.to_dir()?;
    if !dir.join("config.json").exists() {
        bail!("{}: no config.json (not a model directory)", dir.display());
    }
    let mut files: HashMap<String, Served> = model_files(&dir)?
        .into_iter()
        .map(|(name, path)| {
            let mime = mime_of(&name);
            (name, Served::File { path, mime })
        })
        .collect();
    if !files.contains_key(MANIFEST) {
        let m = serde_json::to_vec(&manifest::build(&dir).map_err(anyhow::Error::msg)?)?;
        files.insert(MANIFEST.into(), Served::Memory(Bytes::from(m)));
    }
    let files = Arc::new(files);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let page_dir = www.clone();
    rt.block_on(async move {
        let app =
            Router::new()
                .route(
                    "/model/{*name}",
                    get(move |UrlPath(name): UrlPath<String>, req: Request| async move {
                        model_file(&files, &name, req).await
                    }),
                )
                .fallback(move |req: Request| async move {
                    match page_file(&page_dir, req.uri().path()) {
                        Some(p) => serve_file(&p, req).await,
                        None => not_found(),
                    }
                })
                // The page and the model may change between runs; the page keeps verified ranges itself.
                .layer(tower_http::set_header::SetResponseHeaderLayer::overriding(
                    header::CACHE_CONTROL,
                    HeaderValue::from_static("no-cache"),
                ));
        let addr: SocketAddr =
            format!("{host}:{port}").parse().with_context(|| format!("{host}:{port}: not an address"))?;
        let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr}"))?;
        let at = listener.local_addr()?;
        println!("herd serve-web: open http://{at}/ (model {} at /model/, page {})", dir.display(), www.display());
        use std::io::Write;
        std::io::stdout().flush()?;
        axum::serve(listener, app).await.context("serving")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_paths_decode_strictly() {
        assert_eq!(percent_decode("/a%20b/%2e%2E").as_deref(), Some("/a b/.."));
        for bad in ["%", "%2", "%zz", "%+1", "%ff"] {
            assert_eq!(percent_decode(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_page_never_serves_dotfiles_or_what_leaves_its_directory() {
        let base = std::env::temp_dir().join(format!("herd-serve-web-page-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let www = base.join("www");
        std::fs::create_dir_all(www.join("pkg")).unwrap();
        std::fs::write(www.join("index.html"), "<!doctype html>").unwrap();
        std::fs::write(www.join("pkg/app.js"), "").unwrap();
        std::fs::write(www.join(".env"), "SECRET=1").unwrap();
        std::fs::write(base.join("outside.txt"), "secret").unwrap();
        #[cfg(unix)]
        std::os::unix::fs::symlink(base.join("outside.txt"), www.join("leak.txt")).unwrap();
        let www = std::fs::canonicalize(&www).unwrap();
        assert_eq!(page_file(&www, "/"), Some(www.join("index.html")));
        assert_eq!(page_file(&www, "/pkg/app.js"), Some(www.join("pkg/app.js")));
        assert_eq!(page_file(&www, "/pkg%2Fapp.js"), Some(www.join("pkg/app.js")));
        for bad in [
            "/.env",
            "/%2eenv",
            "/../outside.txt",
            "/pkg/../../outside.txt",
            "/%2e%2e/outside.txt",
            "/leak.txt",
            "/pkg",
        ] {
            assert_eq!(page_file(&www, bad), None, "{bad}");
        }
        std::fs::remove_dir_all(&base).unwrap();
    }
}
