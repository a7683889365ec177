//! Bad input gives a clear one-line error, never a panic: every broken model directory (missing or
//! corrupt config.json, out-of-range config fields, missing, truncated or corrupt safetensors files and
//! shard indexes, tensors of the wrong shape or dtype, missing tensors) and every bad run-time input
//! (token ids outside the vocabulary, prompts longer than the context, empty rows) is an `Err` whose
//! message is a single line naming the file, tensor or field at fault.
//!
//! Each broken model lives in its own temporary directory: a copy of a fixture with one thing broken,
//! removed when the case ends (pass or fail).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use herd_conformance::fixture_dir;
use herd_core::cpu::CpuBackend;
use herd_core::error::HerdError;
use herd_core::generate::score_rows;
use herd_core::model::{Llama4, Rows};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use serde_json::{json, Value};

// ---------------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------------

/// A scratch copy of a fixture's model files, deleted on drop.
struct TempModel {
    dir: PathBuf,
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

impl TempModel {
    /// An empty, not yet created directory path unique to this case.
    fn path_only(tag: &str) -> TempModel {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("herd-bad-input-{}-{n}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        TempModel { dir }
    }

    /// A copy of the fixture's config.json and safetensors files (not the reference or tokenizer).
    fn copy(fixture: &str, tag: &str) -> TempModel {
        let t = TempModel::path_only(tag);
        std::fs::create_dir_all(&t.dir).unwrap();
        for entry in std::fs::read_dir(fixture_dir(fixture)).unwrap() {
            let p = entry.unwrap().path();
            let name = p.file_name().unwrap().to_str().unwrap().to_owned();
            let wanted = name == "config.json"
                || name == "model.safetensors.index.json"
                || (name.ends_with(".safetensors") && name != "reference.safetensors");
            if wanted {
                std::fs::copy(&p, t.dir.join(&name)).unwrap();
            }
        }
        t
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn read(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.file(name)).unwrap()
    }

    fn write(&self, name: &str, bytes: &[u8]) {
        std::fs::write(self.file(name), bytes).unwrap();
    }

    fn remove(&self, name: &str) {
        std::fs::remove_file(self.file(name)).unwrap();
    }

    /// Edits config.json as JSON: the `text_config` object of multimodal fixtures, else the root.
    fn edit_config(&self, f: impl FnOnce(&mut serde_json::Map<String, Value>)) {
        let mut v: Value = serde_json::from_slice(&self.read("config.json")).unwrap();
        let obj = v.as_object_mut().unwrap();
        let target = if obj.contains_key("text_config") {
            obj.get_mut("text_config").unwrap().as_object_mut().unwrap()
        } else {
            obj
        };
        f(target);
        self.write("config.json", serde_json::to_string_pretty(&v).unwrap().as_bytes());
    }

    /// Rewrites a safetensors file of the copy: `f` gets every tensor (name → dtype, shape, bytes) and
    /// may change, add or remove any; the result is written with `safetensors::serialize_to_file`.
    fn rewrite_safetensors(&self, file: &str, f: impl FnOnce(&mut HashMap<String, (Dtype, Vec<usize>, Vec<u8>)>)) {
        let bytes = self.read(file);
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let mut tensors: HashMap<String, (Dtype, Vec<usize>, Vec<u8>)> =
            st.tensors().into_iter().map(|(n, t)| (n, (t.dtype(), t.shape().to_vec(), t.data().to_vec()))).collect();
        f(&mut tensors);
        let views: Vec<(String, TensorView)> =
            tensors.iter().map(|(n, (d, s, b))| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap())).collect();
        safetensors::serialize_to_file(views, None, &self.file(file)).unwrap();
    }

    fn path_str(&self) -> String {
        self.dir.display().to_string()
    }
}

impl Drop for TempModel {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn load(dir: &Path) -> Result<Llama4<CpuBackend>, HerdError> {
    Llama4::from_dir(Arc::new(CpuBackend::new()), dir, &mut |_, _| {})
}

fn load_ok(dir: &Path) -> Llama4<CpuBackend> {
    load(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
}

/// Asserts `r` is an error whose message is non-empty, one line, and contains every string of `wants`.
/// Returns the message.
#[track_caller]
fn assert_err<T>(case: &str, r: Result<T, HerdError>, wants: &[&str]) -> String {
    let msg = match r {
        Ok(_) => panic!("{case}: expected an error, got Ok"),
        Err(e) => e.to_string(),
    };
    eprintln!("{case}: {msg}");
    assert!(!msg.trim().is_empty(), "{case}: empty error message");
    assert!(!msg.contains('\n') && !msg.contains('\r'), "{case}: error message is not one line: {msg:?}");
    for w in wants {
        assert!(msg.contains(w), "{case}: error message {msg:?} does not contain {w:?}");
    }
    msg
}

/// Loads `dir` and asserts the one-line error contains every string of `wants`.
#[track_caller]
fn assert_load_err(case: &str, dir: &Path, wants: &[&str]) -> String {
    assert_err(case, load(dir), wants)
}

/// The byte length of a safetensors file's JSON header.
fn header_len(bytes: &[u8]) -> usize {
    u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize
}

// ---------------------------------------------------------------------------------------------------
// The model directory and config.json
// ---------------------------------------------------------------------------------------------------

#[test]
fn model_dir_missing() {
    let t = TempModel::path_only("missing-dir");
    assert!(!t.dir.exists());
    assert_load_err("model dir missing", &t.dir, &[&t.path_str(), "model directory does not exist"]);
}

#[test]
fn model_dir_is_a_file() {
    let t = TempModel::path_only("dir-is-file");
    std::fs::write(&t.dir, b"not a directory").unwrap();
    let r = load(&t.dir);
    std::fs::remove_file(&t.dir).ok();
    assert_err("model dir is a file", r, &[&t.path_str()]);
}

#[test]
fn config_missing() {
    let t = TempModel::copy("scout", "config-missing");
    t.remove("config.json");
    assert_load_err("config.json missing", &t.dir, &["config.json"]);
}

#[test]
fn config_not_json() {
    let t = TempModel::copy("scout", "config-not-json");
    t.write("config.json", b"this is not JSON at all\n{\n");
    assert_load_err("config.json not JSON", &t.dir, &["config.json", "not valid JSON"]);
}

#[test]
fn config_not_an_object() {
    let t = TempModel::copy("scout", "config-array");
    t.write("config.json", b"[1, 2, 3]");
    assert_load_err("config.json an array", &t.dir, &["config.json", "not a JSON object"]);
}

#[test]
fn config_empty() {
    let t = TempModel::copy("scout", "config-empty");
    t.write("config.json", b"");
    assert_load_err("config.json empty", &t.dir, &["config.json", "not valid JSON"]);
}

#[test]
fn config_truncated() {
    for fixture in ["scout", "maverick"] {
        let full = std::fs::read(fixture_dir(fixture).join("config.json")).unwrap();
        for cut in [1, full.len() / 3, full.len() / 2, full.len() - 3] {
            let t = TempModel::copy(fixture, "config-truncated");
            t.write("config.json", &full[..cut]);
            assert_load_err(
                &format!("{fixture} config.json cut at {cut}/{}", full.len()),
                &t.dir,
                &["config.json", "not valid JSON"],
            );
        }
    }
}

/// One config field changed to a bad value: the error names config.json and the field.
fn bad_field(fixture: &str, key: &str, value: Value, wants: &[&str]) {
    let t = TempModel::copy(fixture, &format!("field-{key}"));
    t.edit_config(|c| {
        c.insert(key.to_owned(), value.clone());
    });
    let mut all = vec!["config.json"];
    all.extend_from_slice(wants);
    assert_load_err(&format!("{fixture}: {key} = {value}"), &t.dir, &all);
}

#[test]
fn config_kv_heads_not_dividing_heads() {
    // num_attention_heads is 4.
    bad_field("scout", "num_key_value_heads", json!(3), &["`num_key_value_heads`", "does not divide"]);
    bad_field("maverick", "num_key_value_heads", json!(3), &["`text_config.num_key_value_heads`", "does not divide"]);
    bad_field("scout", "num_key_value_heads", json!(0), &["`num_key_value_heads`", "at least 1"]);
}

#[test]
fn config_moe_layer_out_of_range() {
    // 8 layers: index 8 is one past the end.
    bad_field("scout", "moe_layers", json!([0, 1, 8]), &["`moe_layers`", "layer 8 is out of range"]);
    bad_field("maverick", "moe_layers", json!([1, 3, 100]), &["`text_config.moe_layers`", "layer 100"]);
    bad_field("scout", "moe_layers", json!([0, -1]), &["`moe_layers`", "-1"]);
}

#[test]
fn config_head_dim_odd() {
    bad_field("scout", "head_dim", json!(15), &["`head_dim`", "even", "15"]);
    bad_field("guard", "head_dim", json!(17), &["`text_config.head_dim`", "even", "17"]);
}

#[test]
fn config_vocab_size_a_string() {
    bad_field("scout", "vocab_size", json!("2048"), &["`vocab_size`", "non-negative integer", "\"2048\""]);
    bad_field("maverick", "vocab_size", json!("lots"), &["`text_config.vocab_size`", "\"lots\""]);
}

#[test]
fn config_other_fields_out_of_range() {
    bad_field("scout", "vocab_size", json!(-5), &["`vocab_size`", "-5"]);
    bad_field("scout", "hidden_size", json!(0), &["`hidden_size`", "at least 1"]);
    bad_field("scout", "num_hidden_layers", json!(2.5), &["`num_hidden_layers`", "2.5"]);
    bad_field("scout", "attention_chunk_size", json!(0), &["`attention_chunk_size`"]);
    bad_field("scout", "num_experts_per_tok", json!(5), &["`num_experts_per_tok`", "1..=4"]);
    bad_field("scout", "layer_types", json!(["full_attention"]), &["`layer_types`", "1 entries for 8 layers"]);
    bad_field("scout", "rms_norm_eps", json!(-1.0), &["`rms_norm_eps`", "positive"]);
    bad_field("scout", "eos_token_id", json!([1956, 9999]), &["`eos_token_id`", "9999"]);
}

/// `bad_field`'s edit with a harmless key still loads: the helper itself breaks nothing.
#[test]
fn config_helper_unknown_key_still_loads() {
    let t = TempModel::copy("maverick", "field-harmless");
    t.edit_config(|c| {
        c.insert("some_unknown_key".into(), json!(1));
    });
    load_ok(&t.dir);
}

#[path = "bad_input/safetensors_files.rs"]
mod safetensors_files;

// ---------------------------------------------------------------------------------------------------
// Run-time input
// ---------------------------------------------------------------------------------------------------

#[test]
fn token_id_outside_vocabulary() {
    let m = load_ok(&fixture_dir("scout"));
    assert_eq!(m.cfg.vocab_size, 2048);
    for decode in [false, true] {
        assert_err(
            &format!("id 2048 (decode={decode})"),
            pollster::block_on(score_rows(&m, &[vec![1, 2, 2048]], &[], decode)),
            &["2048", "vocabulary"],
        );
        assert_err(
            &format!("id u32::MAX (decode={decode})"),
            pollster::block_on(score_rows(&m, &[vec![5], vec![u32::MAX, 3]], &[], decode)),
            &["4294967295", "vocabulary"],
        );
    }
    // Directly through forward, in a batch with a good sequence.
    let mut cache = m.new_cache().unwrap();
    let (a, b) = (cache.add_sequence(), cache.add_sequence());
    assert_err(
        "forward with id 9999",
        pollster::block_on(m.forward(&mut cache, &[(a, &[1, 2, 3]), (b, &[4, 9999])], &[], Rows::All)),
        &["9999", "vocabulary", "2048"],
    );
    // Nothing was cached by the failed step: the good sequence still starts at position 0.
    assert_eq!(cache.seq_len(a).unwrap(), 0);
}

#[test]
fn prompt_longer_than_context() {
    let t = TempModel::copy("scout", "short-context");
    t.edit_config(|c| {
        c.insert("max_position_embeddings".into(), json!(16));
    });
    let m = load_ok(&t.dir);
    let row: Vec<u32> = (0..20).map(|i| 10 + i * 7).collect();
    for decode in [false, true] {
        assert_err(
            &format!("20 tokens, context 16 (decode={decode})"),
            pollster::block_on(score_rows(&m, std::slice::from_ref(&row), &[], decode)),
            &["context", "16"],
        );
    }
    // Exactly the context is fine.
    pollster::block_on(score_rows(&m, &[row[..16].to_vec()], &[], false)).unwrap();
    // A cached sequence grown past the context by a later step.
    let mut cache = m.new_cache().unwrap();
    let s = cache.add_sequence();
    pollster::block_on(m.forward(&mut cache, &[(s, &row[..10])], &[], Rows::Last)).unwrap();
    assert_err(
        "10 cached + 7 new > 16",
        pollster::block_on(m.forward(&mut cache, &[(s, &row[10..17])], &[], Rows::Last)),
        &["17", "context", "16"],
    );
}

#[test]
fn empty_rows() {
    let m = load_ok(&fixture_dir("guard"));
    assert_err("empty row (prefill)", pollster::block_on(score_rows(&m, &[vec![]], &[], false)), &["no new tokens"]);
    assert_err(
        "empty row next to a good one (prefill)",
        pollster::block_on(score_rows(&m, &[vec![1, 2, 3], vec![]], &[], false)),
        &["no new tokens"],
    );
    // Decoding token by token must refuse it too, not return an empty score.
    assert_err(
        "empty row (decode)",
        pollster::block_on(score_rows(&m, &[vec![]], &[], true)),
        &["row 0", "no new tokens"],
    );
    assert_err(
        "empty row next to a good one (decode)",
        pollster::block_on(score_rows(&m, &[vec![1, 2, 3], vec![]], &[], true)),
        &["row 1", "no new tokens"],
    );
    let mut cache = m.new_cache().unwrap();
    let s = cache.add_sequence();
    assert_err(
        "forward with an empty piece",
        pollster::block_on(m.forward(&mut cache, &[(s, &[])], &[], Rows::All)),
        &["no new tokens"],
    );
    assert_err(
        "forward with an empty batch",
        pollster::block_on(m.forward(&mut cache, &[], &[], Rows::All)),
        &["empty batch"],
    );
    assert_err(
        "forward with a sequence twice",
        pollster::block_on(m.forward(&mut cache, &[(s, &[1]), (s, &[2])], &[], Rows::All)),
        &["twice"],
    );
}

#[test]
fn unknown_sequence() {
    let m = load_ok(&fixture_dir("guard"));
    let mut cache = m.new_cache().unwrap();
    let s = cache.add_sequence();
    cache.remove_sequence(s);
    assert_err(
        "forward on a removed sequence",
        pollster::block_on(m.forward(&mut cache, &[(s, &[1, 2])], &[], Rows::All)),
        &["unknown sequence 0"],
    );
}

#[test]
fn duplicated_tensor_name_with_newline_stays_one_line() {
    let t = TempModel::copy("scout", "st-newline-dup");
    t.rewrite_safetensors("model.safetensors", |m| {
        m.insert("evil\nname".into(), (Dtype::F32, vec![2], vec![0u8; 8]));
        m.insert("language_model.evil\nname".into(), (Dtype::F32, vec![2], vec![0u8; 8]));
    });
    assert_load_err("duplicate tensor name with a newline", &t.dir, &["evil", "appears twice"]);
}
