//! The background fetcher: the next layer's likely experts, read while the current layer runs.

use std::collections::HashMap;
use std::sync::{mpsc, Arc, Condvar, Mutex};

use super::ExpertSource;
use crate::checkpoint::TensorRef;
use crate::error::Result;

type Fetched = Result<[TensorRef; 2]>;
/// A prefetch request: (layer, expert, tensor names, tensor shapes).
type Request = (usize, usize, [String; 2], [Vec<usize>; 2]);
/// (layer, expert) → None while in flight, then the result; with the condition variable waiters use.
type Done = Arc<(Mutex<HashMap<(usize, usize), Option<Fetched>>>, Condvar)>;

/// The background fetcher: requests by (layer, expert), results kept until taken.
pub(super) struct Prefetcher {
    tx: Mutex<mpsc::Sender<Request>>,
    done: Done,
}

impl Prefetcher {
    pub(super) fn start(source: Arc<dyn ExpertSource>) -> Option<Prefetcher> {
        let (tx, rx) = mpsc::channel::<Request>();
        let done: Done = Arc::default();
        let d = done.clone();
        // Where threads are not available (wasm32), experts are fetched when needed only.
        std::thread::Builder::new()
            .name("herd-expert-prefetch".into())
            .spawn(move || {
                while let Ok((layer, e, names, shapes)) = rx.recv() {
                    let r =
                        (|| Ok([source.fetch(&names[0], &shapes[0], e)?, source.fetch(&names[1], &shapes[1], e)?]))();
                    let (m, cv) = &*d;
                    if let Ok(mut g) = m.lock() {
                        g.insert((layer, e), Some(r));
                    }
                    cv.notify_all();
                }
            })
            .ok()?;
        Some(Prefetcher { tx: Mutex::new(tx), done })
    }

    pub(super) fn request(&self, layer: usize, e: usize, names: &[String; 2], shapes: &[Vec<usize>; 2]) -> bool {
        let (m, _) = &*self.done;
        let Ok(mut g) = m.lock() else { return false };
        if g.contains_key(&(layer, e)) {
            return false;
        }
        let sent = self.tx.lock().is_ok_and(|tx| tx.send((layer, e, names.clone(), shapes.clone())).is_ok());
        if sent {
            g.insert((layer, e), None);
        }
        sent
    }

    /// The prefetched expert, waiting for it if it is in flight; None if it was never requested.
    pub(super) fn take(&self, layer: usize, e: usize) -> Option<Fetched> {
        let (m, cv) = &*self.done;
        let mut g = m.lock().ok()?;
        loop {
            match g.get(&(layer, e)) {
                None => return None,
                Some(Some(_)) => return g.remove(&(layer, e)).flatten(),
                Some(None) => g = cv.wait(g).ok()?,
            }
        }
    }

    /// Drops what was fetched for `layer` and not used (in-flight ones are dropped on a later call).
    pub(super) fn discard(&self, layer: usize) {
        let (m, _) = &*self.done;
        if let Ok(mut g) = m.lock() {
            g.retain(|&(l, _), v| l != layer || v.is_none());
        }
    }
}
