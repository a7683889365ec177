//! Shared helpers of herd's conformance checks: locating and reading the golden fixtures made by
//! `tests/tools/make_fixtures.py` (transformers on the CPU), and comparing tensors; and the op table
//! ([`table`]) with its plain reference implementations ([`reference`]).

pub mod bad_calls;
pub mod reference;
pub mod streaming;
pub mod table;
mod table_attention;
mod table_ops;
mod table_q4;
mod table_report;
mod table_sample;
mod table_vision;
pub mod vision;
pub mod weights;

use std::path::PathBuf;

use safetensors::{Dtype, SafeTensors};

/// The CUDA backend's options for the test binaries and the `conformance` tool, from the environment variables
/// `herd` also takes (its --help lists them): HERD_CUDA_GRAPHS=0, HERD_CUDA_SYNC=1, HERD_CUDA_BF16_ACTIVATIONS=1,
/// HERD_COPY_THREADS=N, HERD_CUDA_EMU_RACECHECK=1. The GPU check runs the same binaries in these modes.
#[cfg(feature = "cuda")]
pub fn cuda_options_from_env() -> herd_cuda::CudaOptions {
    let on = |k: &str| std::env::var(k).is_ok_and(|v| !matches!(v.as_str(), "" | "0" | "false" | "off" | "no"));
    herd_cuda::CudaOptions {
        bf16_activations: on("HERD_CUDA_BF16_ACTIVATIONS"),
        graphs: std::env::var("HERD_CUDA_GRAPHS").map_or(true, |_| on("HERD_CUDA_GRAPHS")),
        sync_each: on("HERD_CUDA_SYNC"),
        copy_threads: std::env::var("HERD_COPY_THREADS").ok().and_then(|v| v.parse().ok()),
        racecheck: on("HERD_CUDA_EMU_RACECHECK"),
    }
}

/// The fixture directory of one tiny reference model: `tests/fixtures/NAME`, or under `$HERD_FIXTURES` when
/// set (a test binary run on another machine, e.g. the GPU check).
pub fn fixture_dir(name: &str) -> PathBuf {
    let root = std::env::var_os("HERD_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures"));
    root.join(name)
}

/// The built-in demo model's files (`native/demo`, made by `tests/tools/train_demo.py`), or `$HERD_DEMO_DIR`
/// when set. Its transformers reference is the fixture `demo` (`tests/fixtures/demo`, reference files only).
pub fn demo_dir() -> PathBuf {
    std::env::var_os("HERD_DEMO_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../native/demo"))
}

/// The model directory of a fixture: the fixture's own directory, or [`demo_dir`] for `demo`.
pub fn model_dir(name: &str) -> PathBuf {
    if name == "demo" {
        demo_dir()
    } else {
        fixture_dir(name)
    }
}

/// The backend `made` gave, or None after saying `NAME: NOT RUN (why)` when it could not be made; with
/// `require` (e.g. HERD_REQUIRE_WGPU) set to 1 a missing backend fails the test instead.
pub fn backend_or_not_run<B>(name: &str, require: &str, made: herd_core::Result<B>) -> Option<std::sync::Arc<B>> {
    match made {
        Ok(b) => Some(std::sync::Arc::new(b)),
        Err(e) => {
            herd_core::not_run(name, Some(require), &e);
            None
        }
    }
}

/// A reference produced by transformers: `input_ids` [B,T], `logits` [B,T,V], `greedy_ids` [B,N].
pub struct Reference {
    pub input_ids: Vec<Vec<u32>>,
    pub logits: Vec<Vec<f32>>,
    pub greedy_ids: Vec<Vec<u32>>,
    pub vocab: usize,
}

fn i64_rows(st: &SafeTensors, name: &str) -> Vec<Vec<u32>> {
    let t = st.tensor(name).unwrap_or_else(|e| panic!("reference tensor {name}: {e}"));
    assert_eq!(t.dtype(), Dtype::I64, "{name} must be int64");
    let [b, n] = t.shape()[..] else { panic!("{name} must be 2-D") };
    let vals: Vec<u32> = t.data().chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap()) as u32).collect();
    (0..b).map(|i| vals[i * n..(i + 1) * n].to_vec()).collect()
}

impl Reference {
    pub fn load(name: &str) -> Reference {
        let path = fixture_dir(name).join("reference.safetensors");
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let input_ids = i64_rows(&st, "input_ids");
        let greedy_ids = i64_rows(&st, "greedy_ids");
        let l = st.tensor("logits").unwrap();
        assert_eq!(l.dtype(), Dtype::F32);
        let [b, t, v] = l.shape()[..] else { panic!("logits must be 3-D") };
        let vals: Vec<f32> = l.data().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
        let logits = (0..b).map(|i| vals[i * t * v..(i + 1) * t * v].to_vec()).collect();
        Reference { input_ids, logits, greedy_ids, vocab: v }
    }
}

/// max |a − b| / max |b|: the error relative to the reference's scale. NaN or Inf anywhere gives +∞.
pub fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    if a.iter().chain(b).any(|x| !x.is_finite()) {
        return f64::INFINITY;
    }
    let scale = b.iter().map(|x| x.abs() as f64).fold(0.0, f64::max).max(1e-30);
    let diff = a.iter().zip(b).map(|(x, y)| (*x as f64 - *y as f64).abs()).fold(0.0, f64::max);
    diff / scale
}

/// Golden checks of one backend against the transformers references: f32 fixtures to [`F32_TOL`] with
/// identical greedy ids, the bf16 fixture to [`BF16_TOL`] (transformers rounds every activation to bf16,
/// herd keeps f32 activations).
/// Deterministic token ids in 0..vocab (an LCG; no external randomness, so failures reproduce).
pub fn random_ids(seed: u64, n: usize, vocab: usize) -> Vec<u32> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(1);
    (0..n)
        .map(|_| {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((x >> 33) % vocab as u64) as u32
        })
        .collect()
}

/// A fixture model on the CPU backend whose KV caches have pages of `page` slots.
pub fn cpu_fixture(name: &str, page: usize) -> herd_core::model::Llama4<herd_core::cpu::CpuBackend> {
    let dir = model_dir(name);
    let mut m = herd_core::model::Llama4::from_dir(
        std::sync::Arc::new(herd_core::cpu::CpuBackend::new()),
        &dir,
        &mut |_, _| {},
    )
    .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    m.set_kv_page_size(page).unwrap();
    m
}

pub mod golden {
    use std::sync::Arc;

    use herd_core::backend::Backend;
    use herd_core::generate::{greedy_rows, score_rows};
    use herd_core::model::{Llama4, Rows};

    use super::{model_dir, rel_err, Reference};

    pub const F32_TOL: f64 = 1e-4;
    /// bf16 activations in transformers vs f32 activations here: a few bf16 ulps of drift over the layers.
    pub const BF16_TOL: f64 = 3e-2;

    pub fn load<B: Backend>(be: &Arc<B>, dir: &std::path::Path) -> Llama4<B> {
        Llama4::from_dir(be.clone(), dir, &mut |_, _| {}).unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
    }

    /// Greedy tokens by a plain loop over the model, independent of the scheduler and of the device's
    /// sampler: the prompt in one forward pass, then one token at a time, each the argmax of its logits on
    /// the host.
    pub fn reference_greedy<B: Backend>(model: &Llama4<B>, prompt: &[u32], n: usize) -> Vec<u32> {
        let mut cache = model.new_cache().unwrap();
        let seq = cache.add_sequence();
        let mut out = Vec::new();
        let mut feed = prompt.to_vec();
        while out.len() < n {
            let logits = pollster::block_on(model.forward(&mut cache, &[(seq, &feed)], &[], Rows::Last)).unwrap();
            let id = herd_core::sampling::argmax(&logits);
            out.push(id);
            feed = vec![id];
        }
        out
    }

    /// Logits of every reference row, prefill or token-by-token decode, within `tol`.
    pub fn check_logits<B: Backend>(be: &Arc<B>, name: &str, tol: f64, decode: bool) {
        check_logits_paged(be, name, tol, decode, None)
    }

    /// [`check_logits`] through KV caches with pages of `page` slots (None: the backend's size).
    pub fn check_logits_paged<B: Backend>(be: &Arc<B>, name: &str, tol: f64, decode: bool, page: Option<usize>) {
        let r = Reference::load(name);
        let mut m = load(be, &model_dir(name));
        if let Some(p) = page {
            m.set_kv_page_size(p).unwrap();
        }
        let got =
            pollster::block_on(score_rows(&m, &r.input_ids, &[], decode)).unwrap_or_else(|e| panic!("{name}: {e}"));
        for (b, (g, want)) in got.iter().zip(&r.logits).enumerate() {
            let e = rel_err(g, want);
            eprintln!("{name} row {b} decode={decode} page={page:?}: rel err {e:.2e}");
            assert!(e <= tol, "{name} row {b} (decode={decode}, page={page:?}): relative error {e:.3e} > {tol:.0e}");
        }
    }

    /// The batched greedy continuation (every row a request of one scheduler, picked on the device) equals
    /// transformers'.
    pub fn check_greedy<B: Backend>(be: &Arc<B>, name: &str) {
        check_greedy_paged(be, name, None)
    }

    /// [`check_greedy`] through KV caches with pages of `page` slots (None: the backend's size).
    pub fn check_greedy_paged<B: Backend>(be: &Arc<B>, name: &str, page: Option<usize>) {
        let r = Reference::load(name);
        let mut m = load(be, &model_dir(name));
        if let Some(p) = page {
            m.set_kv_page_size(p).unwrap();
        }
        let m = Arc::new(m);
        let n = r.greedy_ids[0].len();
        let got = pollster::block_on(greedy_rows(&m, &r.input_ids, n)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(got, r.greedy_ids, "{name} (page {page:?}): greedy continuation differs from transformers");
    }
}
