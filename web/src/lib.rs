//! herd-web: herd in a web page. A wasm-bindgen API (see `api`) over herd-core and herd-wgpu on the
//! browser's WebGPU: load a model from a URL, with progress; generate with a streaming token callback;
//! cancel; statistics. Weights come by HTTP range requests (`remote`): each safetensors header first, then
//! the tensors the model keeps resident, and routed experts only when a router picks them, into an expert
//! cache of a set byte budget. Every range is checked against the model's checksum manifest ([`manifest`])
//! before use, kept in the browser's Cache API, retried when a fetch fails, and reported when it keeps
//! failing. Nothing waits by blocking: readback and fetches are awaited.
//!
//! The manifest code also builds natively (for `herd serve-web` and `herd web-manifest`); the rest is
//! wasm32 only.

pub mod manifest;

#[cfg(target_arch = "wasm32")]
mod api;
#[cfg(target_arch = "wasm32")]
mod fetch;
#[cfg(target_arch = "wasm32")]
mod remote;
