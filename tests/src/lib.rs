//! Shared helpers of herd's conformance checks: locating and reading the golden fixtures made by
//! `tests/tools/make_fixtures.py` (transformers on the CPU), and comparing tensors; and the op table
//! ([`table`]) with its plain reference implementations ([`reference`]).

pub mod reference;
pub mod table;

use std::path::PathBuf;

use safetensors::{Dtype, SafeTensors};

/// The fixture directory of one tiny reference model.
pub fn fixture_dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures").join(name)
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
