//! HTTP in the page: whole small files, and byte ranges that are verified before use, kept in the browser's
//! Cache API, retried when a fetch fails or its bytes do not check, and reported when they keep failing.

use std::cell::{Cell, RefCell};

use js_sys::{Promise, Uint8Array};
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;
use web_sys::{Cache, Request, RequestCache, RequestInit, Response};

/// Attempts per range before it is reported (a failure, a short body or bytes that do not check).
const TRIES: u32 = 4;
/// The Cache API store the page keeps verified ranges in.
const STORE: &str = "herd-ranges-v1";

/// What the page's fetches did so far.
#[derive(Debug, Clone, Default)]
pub struct FetchStats {
    pub requests: u64,
    pub bytes: u64,
    pub cache_hits: u64,
    pub cache_bytes: u64,
    pub retries: u64,
}

thread_local! {
    static CACHE: RefCell<Option<Cache>> = const { RefCell::new(None) };
    static CACHE_TRIED: Cell<bool> = const { Cell::new(false) };
    static STATS: RefCell<FetchStats> = RefCell::new(FetchStats::default());
}

pub fn stats() -> FetchStats {
    STATS.with(|s| s.borrow().clone())
}

fn count(f: impl FnOnce(&mut FetchStats)) {
    STATS.with(|s| f(&mut s.borrow_mut()));
}

fn js_err(e: JsValue) -> String {
    if let Some(e) = e.dyn_ref::<js_sys::Error>() {
        return String::from(e.message());
    }
    e.as_string().unwrap_or_else(|| format!("{e:?}"))
}

fn window() -> Result<web_sys::Window, String> {
    web_sys::window().ok_or_else(|| "no window (herd-web runs in a page)".to_string())
}

/// Waits `ms` milliseconds without blocking.
pub async fn sleep(ms: i32) {
    let p = Promise::new(&mut |resolve, _| {
        if let Ok(w) = window() {
            let _ = w.set_timeout_with_callback_and_timeout_and_arguments_0(&resolve, ms);
        }
    });
    let _ = JsFuture::from(p).await;
}

/// The Cache API store, opened once; None where the page may not use it (not a secure context).
async fn cache() -> Option<Cache> {
    if let Some(c) = CACHE.with(|c| c.borrow().clone()) {
        return Some(c);
    }
    if CACHE_TRIED.with(|t| t.replace(true)) {
        return None;
    }
    let caches = window().ok()?.caches().ok()?;
    let c: Cache = JsFuture::from(caches.open(STORE)).await.ok()?.dyn_into().ok()?;
    CACHE.with(|slot| *slot.borrow_mut() = Some(c.clone()));
    Some(c)
}

async fn response(url: &str, range: Option<(usize, usize)>) -> Result<Response, String> {
    let init = RequestInit::new();
    init.set_method("GET");
    // The page keeps what it verified itself; the HTTP cache would only hold a second copy.
    init.set_cache(RequestCache::NoStore);
    let req = Request::new_with_str_and_init(url, &init).map_err(js_err)?;
    if let Some((a, b)) = range {
        req.headers().set("Range", &format!("bytes={a}-{}", b - 1)).map_err(js_err)?;
    }
    let r = JsFuture::from(window()?.fetch_with_request(&req)).await.map_err(|e| format!("{url}: {}", js_err(e)))?;
    r.dyn_into::<Response>().map_err(|_| format!("{url}: not a response"))
}

async fn body(r: &Response) -> Result<Vec<u8>, String> {
    let buf = JsFuture::from(r.array_buffer().map_err(js_err)?).await.map_err(js_err)?;
    Ok(Uint8Array::new(&buf).to_vec())
}

/// A whole file; None when the server says it is not there (404).
pub async fn get(url: &str) -> Result<Option<Vec<u8>>, String> {
    let mut last = String::new();
    for attempt in 0..TRIES {
        if attempt > 0 {
            count(|s| s.retries += 1);
            sleep(100 << attempt).await;
        }
        let r = match response(url, None).await {
            Ok(r) => r,
            Err(e) => {
                last = e;
                continue;
            }
        };
        match r.status() {
            404 => return Ok(None),
            200 => match body(&r).await {
                Ok(b) => {
                    count(|s| {
                        s.requests += 1;
                        s.bytes += b.len() as u64;
                    });
                    return Ok(Some(b));
                }
                Err(e) => last = format!("{url}: {e}"),
            },
            s => last = format!("{url}: HTTP {s}"),
        }
    }
    Err(format!("{last} (after {TRIES} tries)"))
}

/// Bytes `a..b` of `url` from the server (one try): they must come back as exactly that range.
async fn range_once(url: &str, a: usize, b: usize) -> Result<Vec<u8>, String> {
    let r = response(url, Some((a, b))).await?;
    let bytes = match r.status() {
        206 => body(&r).await?,
        200 => {
            return Err(format!(
                "{url}: the server ignored the Range header (HTTP 200): serve the model with range requests \
                 (herd serve-web does)"
            ))
        }
        s => return Err(format!("{url}: HTTP {s} for bytes {a}..{b}")),
    };
    count(|s| {
        s.requests += 1;
        s.bytes += bytes.len() as u64;
    });
    if bytes.len() != b - a {
        return Err(format!("{url}: {} bytes came back for bytes {a}..{b} ({} expected)", bytes.len(), b - a));
    }
    Ok(bytes)
}

/// The total length of `url`, from the Content-Range of a one-byte range request.
pub async fn length(url: &str) -> Result<usize, String> {
    let mut last = String::new();
    for attempt in 0..TRIES {
        if attempt > 0 {
            count(|s| s.retries += 1);
            sleep(100 << attempt).await;
        }
        match response(url, Some((0, 1))).await {
            Ok(r) if r.status() == 206 => {
                let cr = r.headers().get("Content-Range").map_err(js_err)?.unwrap_or_default();
                let _ = body(&r).await;
                return cr
                    .rsplit('/')
                    .next()
                    .and_then(|n| n.trim().parse().ok())
                    .ok_or_else(|| format!("{url}: no length in Content-Range {cr:?}"));
            }
            Ok(r) => last = format!("{url}: HTTP {} for a range request", r.status()),
            Err(e) => last = e,
        }
    }
    Err(format!("{last} (after {TRIES} tries)"))
}

fn key(url: &str, a: usize, b: usize) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}herd-bytes={a}-{b}")
}

async fn cached(c: &Cache, k: &str) -> Option<Vec<u8>> {
    let hit = JsFuture::from(c.match_with_str(k)).await.ok()?;
    let r: Response = hit.dyn_into().ok()?;
    body(&r).await.ok()
}

async fn store(c: &Cache, k: &str, bytes: &[u8]) {
    let arr = Uint8Array::from(bytes);
    if let Ok(r) = Response::new_with_opt_buffer_source(Some(&arr)) {
        // A full cache (quota) only costs a refetch next time.
        let _ = JsFuture::from(c.put_with_str(k, &r)).await;
    }
}

/// Checks a range's parts together (a checksum, or values that must be finite).
pub type Verify<'a> = dyn Fn(&[&[u8]]) -> Result<(), String> + 'a;

/// The byte ranges `parts` of `url`, checked together by `verify` before they are returned: from the
/// browser's cache when it has them (and they still check), else from the server, retried up to [`TRIES`]
/// times. What checked is cached; what did not is never returned.
pub async fn ranges(
    url: &str,
    parts: &[(usize, usize)],
    what: &str,
    verify: &Verify<'_>,
) -> Result<Vec<Vec<u8>>, String> {
    let store_ = cache().await;
    let keys: Vec<String> = parts.iter().map(|&(a, b)| key(url, a, b)).collect();
    if let Some(c) = &store_ {
        let mut got = Vec::new();
        for (&(a, b), k) in parts.iter().zip(&keys) {
            match if a == b { Some(Vec::new()) } else { cached(c, k).await } {
                Some(v) if v.len() == b - a => got.push(v),
                _ => break,
            }
        }
        if got.len() == parts.len() {
            let refs: Vec<&[u8]> = got.iter().map(Vec::as_slice).collect();
            if verify(&refs).is_ok() {
                count(|s| {
                    s.cache_hits += 1;
                    s.cache_bytes += got.iter().map(|v| v.len() as u64).sum::<u64>();
                });
                return Ok(got);
            }
            for k in &keys {
                let _ = JsFuture::from(c.delete_with_str(k)).await;
            }
        }
    }
    let mut last = String::new();
    for attempt in 0..TRIES {
        if attempt > 0 {
            count(|s| s.retries += 1);
            sleep(100 << attempt).await;
        }
        let mut got = Vec::with_capacity(parts.len());
        let mut failed = None;
        for &(a, b) in parts {
            if a == b {
                got.push(Vec::new());
                continue;
            }
            match range_once(url, a, b).await {
                Ok(v) => got.push(v),
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        if let Some(e) = failed {
            last = e;
            continue;
        }
        let refs: Vec<&[u8]> = got.iter().map(Vec::as_slice).collect();
        match verify(&refs) {
            Ok(()) => {
                if let Some(c) = &store_ {
                    for ((&(a, b), k), v) in parts.iter().zip(&keys).zip(&got) {
                        if a < b {
                            store(c, k, v).await;
                        }
                    }
                }
                return Ok(got);
            }
            Err(e) => last = format!("{url}: {e}"),
        }
    }
    Err(format!("{what}: {last} (after {TRIES} tries)"))
}
