//! herd-core: everything in herd that does not depend on a device.
//!
//! * [`config`] turns a Hugging Face `config.json` (either dialect) into a validated [`config::ModelConfig`].
//! * [`checkpoint`] memory-maps safetensors files (single or sharded) and maps tensor names.
//! * [`compressed`] reads compressed-tensors' pack-quantized checkpoints into herd's int4/int8 formats.
//! * [`backend`] is the small set of coarse ops every device implements; [`cpu`] is the reference.
//! * [`model`] is Llama 4, written once against [`backend::Backend`]; [`kv`] is its cache; [`experts`]
//!   streams its routed experts through a device cache of a set size.
//! * [`schedule`] runs every generation (continuous batching with chunked prefill, prefix reuse, [`sampling`]
//!   and stop tokens); [`generate`] scores or greedily continues batches of rows through it (the tests' way in).
//! * [`synthetic`] makes seeded random weights of any shape, for full-scale benchmarks without a checkpoint.
//! * [`limits`] bounds every size that comes from outside and reads every input file; [`ids`] parses the
//!   token-id files of `herd logits`/`herd greedy`.
//! * [`tokenizer`] and [`chat`] turn text and conversations into ids (tokenizer.json, the chat template).
pub mod backend;
pub mod chat;
pub mod checkpoint;
pub mod compressed;
pub mod config;
pub mod constrain;
pub mod cpu;
pub mod error;
pub mod experts;
pub mod generate;
pub mod guard;
pub mod ids;
pub mod kv;
pub mod kv_format;
pub mod kv_q4;
pub mod limits;
pub mod model;
mod not_run;
pub mod openai;
pub mod oplock;
pub mod plan;
pub mod quant;
mod recycle;
pub mod sampling;
pub mod schedule;
pub mod source;
pub mod speculate;
pub mod synthetic;
pub mod tokenizer;
pub mod tools;
pub mod vision;

pub use error::{HerdError, Result};
pub use not_run::not_run;
pub(crate) use recycle::recycle;
