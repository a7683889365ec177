//! `herd serve-web`: the browser demo and a model directory over HTTP on this machine, with the range
//! requests the page reads weights by (tower-http's ServeDir answers `Range` with 206 and
//! `Content-Range`). The page is served at `/`, the model at `/model/`; a model without a checksum
//! manifest gets one made at start (`herd web-manifest` writes it to the directory instead).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use axum::http::{header, HeaderValue};
use axum::routing::get;
use axum::Router;
use herd_web::manifest::{self, MANIFEST};
use tower_http::services::ServeDir;

use crate::files::ModelFiles;

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

/// Writes `dir`'s checksum manifest into it.
pub fn write_manifest(dir: &Path) -> Result<()> {
    let m = manifest::build(dir).map_err(anyhow::Error::msg)?;
    let path = dir.join(MANIFEST);
    std::fs::write(&path, serde_json::to_vec(&m)?).with_context(|| format!("writing {}", path.display()))?;
    println!("wrote {} ({} tensors)", path.display(), m["tensors"].as_object().map_or(0, |t| t.len()));
    Ok(())
}

pub fn serve(model: &ModelFiles, www: Option<PathBuf>, host: &str, port: u16) -> Result<()> {
    let www = www_dir(www)?;
    let dir = model.to_dir()?;
    if !dir.join("config.json").exists() {
        bail!("{}: no config.json (not a model directory)", dir.display());
    }
    let made = if dir.join(MANIFEST).exists() {
        None
    } else {
        Some(serde_json::to_vec(&manifest::build(&dir).map_err(anyhow::Error::msg)?)?)
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async move {
        let mut app = Router::new();
        if let Some(m) = made {
            let route = format!("/model/{MANIFEST}");
            app = app.route(&route, get(move || async move { ([(header::CONTENT_TYPE, "application/json")], m) }));
        }
        let app = app
            .nest_service("/model", ServeDir::new(&dir))
            .fallback_service(ServeDir::new(&www))
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
