//! End-to-end tests of the `herd` binary: each test runs the built executable as a user would and checks
//! what it prints and writes. Numbers are checked against the transformers references in tests/fixtures
//! (`input_ids`, `logits`, `greedy_ids`), never against herd's own earlier output. Bad input must end the
//! process with exit code 1 and exactly one `error:` line on stderr that names what is wrong.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

use herd_conformance::{fixture_dir, rel_err, Reference};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_herd");
/// f32 fixtures: max |Δ| / max |ref| (as in tests/tests/golden.rs).
const F32_TOL: f64 = 1e-4;
/// bf16 checkpoint: transformers rounds activations to bf16, herd keeps f32 activations.
const BF16_TOL: f64 = 3e-2;
/// The fixtures' generation stop ids (generation_config.json) and first special-token id.
const EOS_IDS: [u32; 3] = [1956, 1962, 1963];
const FIRST_SPECIAL: u32 = 1955;

// ---------------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------------

/// A scratch directory for one test, removed on drop.
struct Scratch {
    dir: PathBuf,
}

impl Scratch {
    fn new(tag: &str) -> Scratch {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
            "herd-cli-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// A sub-directory holding copies of `files` from a fixture.
    fn model_copy(&self, fixture: &str, sub: &str, files: &[&str]) -> PathBuf {
        let d = self.path(sub);
        std::fs::create_dir_all(&d).unwrap();
        for f in files {
            std::fs::copy(fixture_dir(fixture).join(f), d.join(f))
                .unwrap_or_else(|e| panic!("copy {fixture}/{f}: {e}"));
        }
        d
    }

    /// A copy of a fixture's model files only: config.json and its safetensors (+ index), no tokenizer.
    fn bare_model(&self, fixture: &str, sub: &str) -> PathBuf {
        let names: Vec<String> = std::fs::read_dir(fixture_dir(fixture))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| {
                n == "config.json"
                    || n == "model.safetensors.index.json"
                    || (n.ends_with(".safetensors") && n.starts_with("model"))
            })
            .collect();
        let refs: Vec<&str> = names.iter().map(|s| s.as_str()).collect();
        self.model_copy(fixture, sub, &refs)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn herd<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    herd_stdin(args, None)
}

fn herd_stdin<I, S>(args: I, stdin: Option<&str>) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = Command::new(BIN);
    cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    let mut child = cmd.spawn().expect("spawn herd");
    if let Some(text) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        pipe.write_all(text.as_bytes()).unwrap();
        // Dropping the pipe closes it: end of input.
    }
    child.wait_with_output().expect("wait for herd")
}

fn describe(out: &Output) -> String {
    format!(
        "status {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Asserts success and that nothing panicked; returns (stdout, stderr).
fn ok(case: &str, out: Output) -> (String, String) {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{case}: herd failed\n{}", describe(&out));
    assert!(!err.contains("panicked"), "{case}: panic on stderr\n{}", describe(&out));
    (String::from_utf8(out.stdout).expect("stdout is UTF-8"), err)
}

/// Asserts a clean failure: exit code 1, empty stdout, stderr exactly one line starting with "error:"
/// that contains every string in `wants`, and no panic. Returns the error line.
fn fails(case: &str, out: Output, wants: &[&str]) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{case}: want exit code 1\n{}", describe(&out));
    assert!(!err.contains("panicked"), "{case}: panic\n{}", describe(&out));
    let lines: Vec<&str> = err.trim_end_matches('\n').split('\n').collect();
    assert_eq!(lines.len(), 1, "{case}: want exactly one line on stderr\n{}", describe(&out));
    let line = lines[0];
    assert!(line.starts_with("error: "), "{case}: stderr must start with `error: `\n{}", describe(&out));
    for w in wants {
        assert!(line.contains(w), "{case}: error line lacks {w:?}: {line}");
    }
    // The cause chain is not printed twice (an error that shows its source, then the source again).
    let parts: Vec<&str> = line.split(": ").collect();
    assert!(parts.windows(2).all(|w| w[0] != w[1]), "{case}: repeated cause in {line:?}");
    assert!(out.stdout.is_empty(), "{case}: nothing should be printed to stdout\n{}", describe(&out));
    eprintln!("{case}: {line}");
    line.to_owned()
}

fn write_tensor(path: &Path, name: &str, dtype: Dtype, shape: Vec<usize>, data: &[u8]) {
    let view = TensorView::new(dtype, shape, data).unwrap();
    let tensors: HashMap<String, TensorView> = [(name.to_owned(), view)].into_iter().collect();
    safetensors::serialize_to_file(&tensors, None, path).unwrap();
}

/// Writes `input_ids` [B, T] as int64 or int32.
fn write_ids(path: &Path, rows: &[Vec<u32>], dtype: Dtype) {
    let t = rows[0].len();
    assert!(rows.iter().all(|r| r.len() == t));
    let data: Vec<u8> = match dtype {
        Dtype::I64 => rows.iter().flatten().flat_map(|&x| (x as i64).to_le_bytes()).collect(),
        Dtype::I32 => rows.iter().flatten().flat_map(|&x| (x as i32).to_le_bytes()).collect(),
        d => panic!("write_ids: {d:?}"),
    };
    write_tensor(path, "input_ids", dtype, vec![rows.len(), t], &data);
}

/// Reads one tensor of an output file: (dtype, shape, raw little-endian bytes).
fn read_tensor(path: &Path, name: &str) -> (Dtype, Vec<usize>, Vec<u8>) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = SafeTensors::deserialize(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let names = st.names();
    assert_eq!(names, vec![name], "{}: want exactly one tensor `{name}`", path.display());
    let t = st.tensor(name).unwrap();
    (t.dtype(), t.shape().to_vec(), t.data().to_vec())
}

/// `herd logits` on `fixture`'s reference input_ids (written as `dtype`) vs the reference logits.
fn check_logits(fixture: &str, model: &Path, dtype: Dtype, decode: bool, tol: f64) {
    check_logits_on("cpu", fixture, model, dtype, decode, tol)
}

fn check_logits_on(backend: &str, fixture: &str, model: &Path, dtype: Dtype, decode: bool, tol: f64) {
    let r = Reference::load(fixture);
    let sc = Scratch::new(&format!("logits-{fixture}"));
    let (input, output) = (sc.path("ids.safetensors"), sc.path("out.safetensors"));
    write_ids(&input, &r.input_ids, dtype);
    let mut args =
        vec!["logits", "--model", s(model), "--input", s(&input), "--output", s(&output), "--backend", backend];
    if decode {
        args.push("--decode");
    }
    let case = format!("{fixture} logits on {backend} ({dtype:?} ids, decode={decode})");
    ok(&case, herd(&args));
    let (dt, shape, data) = read_tensor(&output, "logits");
    let (b, t) = (r.input_ids.len(), r.input_ids[0].len());
    assert_eq!(dt, Dtype::F32, "{case}: logits dtype");
    assert_eq!(shape, vec![b, t, r.vocab], "{case}: logits shape");
    let vals: Vec<f32> = data.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
    for (row, want) in r.logits.iter().enumerate() {
        let got = &vals[row * t * r.vocab..(row + 1) * t * r.vocab];
        let e = rel_err(got, want);
        assert!(e <= tol, "{case}: row {row} relative error {e:.3e} > {tol:.0e}");
    }
    assert!(!sc.path("out.partial").exists(), "{case}: temporary file left behind");
}

/// `herd greedy` on `fixture`'s reference input_ids vs the reference greedy_ids.
fn run_greedy(model: &Path, rows: &[Vec<u32>], n: usize) -> Vec<Vec<u32>> {
    let sc = Scratch::new("greedy");
    let (input, output) = (sc.path("ids.safetensors"), sc.path("out.safetensors"));
    write_ids(&input, rows, Dtype::I64);
    let ns = n.to_string();
    ok(
        &format!("greedy {}", model.display()),
        herd(["greedy", "--model", s(model), "--input", s(&input), "--max-tokens", &ns, "--output", s(&output)]),
    );
    let (dt, shape, data) = read_tensor(&output, "greedy_ids");
    assert_eq!(dt, Dtype::I64, "greedy_ids dtype");
    assert_eq!(shape, vec![rows.len(), n], "greedy_ids shape");
    let vals: Vec<u32> =
        data.chunks_exact(8).map(|c| u32::try_from(i64::from_le_bytes(c.try_into().unwrap())).unwrap()).collect();
    vals.chunks(n).map(|c| c.to_vec()).collect()
}

fn check_greedy(fixture: &str, model: &Path) {
    let r = Reference::load(fixture);
    let got = run_greedy(model, &r.input_ids, r.greedy_ids[0].len());
    assert_eq!(got, r.greedy_ids, "{fixture}: `herd greedy` differs from transformers' greedy_ids");
}

/// Rewrites `config.json` in `dir` (the `text_config` object of multimodal configs, else the root).
fn edit_config(dir: &Path, f: impl FnOnce(&mut serde_json::Map<String, Value>)) {
    let path = dir.join("config.json");
    let mut v: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let obj = if v.get("text_config").is_some() {
        v["text_config"].as_object_mut().unwrap()
    } else {
        v.as_object_mut().unwrap()
    };
    f(obj);
    std::fs::write(&path, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
}

// ---------------------------------------------------------------------------------------------------
// 1. herd logits vs transformers
// ---------------------------------------------------------------------------------------------------

#[test]
fn logits_scout_prefill_int64() {
    check_logits("scout", &fixture_dir("scout"), Dtype::I64, false, F32_TOL);
}

#[test]
fn logits_scout_decode_int64() {
    check_logits("scout", &fixture_dir("scout"), Dtype::I64, true, F32_TOL);
}

#[test]
fn logits_scout_int32_input() {
    check_logits("scout", &fixture_dir("scout"), Dtype::I32, false, F32_TOL);
    check_logits("scout", &fixture_dir("scout"), Dtype::I32, true, F32_TOL);
}

#[test]
fn logits_maverick_sharded_prefill_and_decode() {
    check_logits("maverick", &fixture_dir("maverick"), Dtype::I64, false, F32_TOL);
    check_logits("maverick", &fixture_dir("maverick"), Dtype::I64, true, F32_TOL);
}

#[test]
fn logits_guard_and_bf16() {
    check_logits("guard", &fixture_dir("guard"), Dtype::I64, false, F32_TOL);
    check_logits("scout_bf16", &fixture_dir("scout_bf16"), Dtype::I64, false, BF16_TOL);
}

// ---------------------------------------------------------------------------------------------------
// 2. herd greedy vs transformers
// ---------------------------------------------------------------------------------------------------

#[test]
fn greedy_scout() {
    check_greedy("scout", &fixture_dir("scout"));
}

#[test]
fn greedy_maverick() {
    check_greedy("maverick", &fixture_dir("maverick"));
}

#[test]
fn greedy_guard() {
    check_greedy("guard", &fixture_dir("guard"));
}

/// Fewer tokens than the reference: the first n of the reference continuation.
#[test]
fn greedy_shorter_is_prefix() {
    let r = Reference::load("scout");
    let got = run_greedy(&fixture_dir("scout"), &r.input_ids, 3);
    let want: Vec<Vec<u32>> = r.greedy_ids.iter().map(|row| row[..3].to_vec()).collect();
    assert_eq!(got, want);
}

// ---------------------------------------------------------------------------------------------------
// 3. logits/greedy need no tokenizer files
// ---------------------------------------------------------------------------------------------------

#[test]
fn logits_and_greedy_without_tokenizer_files() {
    let sc = Scratch::new("bare");
    let scout = sc.bare_model("scout", "scout");
    let mut files: Vec<_> =
        std::fs::read_dir(&scout).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    files.sort();
    assert_eq!(files, ["config.json", "model.safetensors"]);
    check_logits("scout", &scout, Dtype::I64, false, F32_TOL);
    check_greedy("scout", &scout);

    let maverick = sc.bare_model("maverick", "maverick");
    assert!(!maverick.join("tokenizer.json").exists() && !maverick.join("generation_config.json").exists());
    check_greedy("maverick", &maverick);
}

// ---------------------------------------------------------------------------------------------------
// 4. herd inspect
// ---------------------------------------------------------------------------------------------------

/// The rows of the layer table: (layer index, attention column + feed-forward column).
fn layer_rows(stdout: &str) -> Vec<(usize, String)> {
    stdout
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("layer"))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .map(|l| {
            let l = l.trim_start();
            let (i, rest) = l.split_once(' ').unwrap_or_else(|| panic!("layer row: {l:?}"));
            (i.parse().unwrap_or_else(|_| panic!("layer row: {l:?}")), rest.trim().to_owned())
        })
        .collect()
}

#[test]
fn inspect_maverick_layer_table() {
    let (out, _) = ok("inspect maverick", herd(["inspect", "--model", s(&fixture_dir("maverick"))]));
    let cfg: Value =
        serde_json::from_slice(&std::fs::read(fixture_dir("maverick").join("config.json")).unwrap()).unwrap();
    let t = &cfg["text_config"];
    let n = t["num_hidden_layers"].as_u64().unwrap() as usize;
    assert_eq!(n, 8);
    assert!(out.contains(&format!("{n} layers")), "{out}");
    assert!(out.contains(&format!("vocab {}", t["vocab_size"])), "{out}");
    let rows = layer_rows(&out);
    assert_eq!(rows.iter().map(|r| r.0).collect::<Vec<_>>(), (0..n).collect::<Vec<_>>(), "layer table:\n{out}");
    let experts = format!("{} experts", t["num_local_experts"]);
    for (i, row) in &rows {
        // interleave_moe_layer_step 2: layers 1, 3, 5, 7 are MoE, the others dense.
        if i % 2 == 1 {
            assert!(
                row.contains("MoE") && row.contains(&experts) && !row.contains("dense"),
                "layer {i} should be MoE with {experts}: {row}"
            );
        } else {
            assert!(row.contains("dense") && !row.contains("MoE"), "layer {i} should be dense: {row}");
        }
        // no_rope_layer_interval 4: layers 3 and 7 are NoPE (global), the others RoPE (chunked).
        if *i == 3 || *i == 7 {
            assert!(row.contains("NoPE") && row.contains("global"), "layer {i} should be NoPE, global: {row}");
        } else {
            assert!(
                row.contains("RoPE") && !row.contains("NoPE") && row.contains("chunked"),
                "layer {i} should be RoPE, chunked: {row}"
            );
        }
    }
}

#[test]
fn inspect_demo_model() {
    let (out, _) = ok("inspect demo", herd(["inspect"]));
    assert!(out.contains("built-in demo model"), "{out}");
    // Compare against the demo config shipped in the source tree.
    let cfg: Value =
        serde_json::from_slice(&std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("demo/config.json")).unwrap())
            .unwrap();
    let t = cfg.get("text_config").unwrap_or(&cfg);
    let n = t["num_hidden_layers"].as_u64().unwrap() as usize;
    assert!(out.contains(&format!("hidden {}", t["hidden_size"])), "{out}");
    assert!(out.contains(&format!("{n} layers")), "{out}");
    assert!(out.contains(&format!("vocab {}", t["vocab_size"])), "{out}");
    let rows = layer_rows(&out);
    assert_eq!(rows.len(), n, "{out}");
    let moe: Vec<u64> = t["moe_layers"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
    for (i, row) in &rows {
        assert_eq!(row.contains("MoE"), moe.contains(&(*i as u64)), "demo layer {i}: {row}");
    }
}

// ---------------------------------------------------------------------------------------------------
// 5. herd run
// ---------------------------------------------------------------------------------------------------

/// Parses the `[prefill: P tokens, X tok/s | decode: D tokens, Y tok/s]` report: (P, D).
fn speed_report(stderr: &str) -> (usize, usize) {
    let line = stderr
        .lines()
        .find(|l| l.contains("prefill") && l.contains("decode"))
        .unwrap_or_else(|| panic!("no speed report on stderr:\n{stderr}"));
    assert_eq!(line.matches("tok/s").count(), 2, "{line}");
    let num_after = |key: &str| -> usize {
        let rest = &line[line.find(key).unwrap() + key.len()..];
        rest.split_whitespace().next().unwrap().parse().unwrap_or_else(|_| panic!("{key} in {line}"))
    };
    (num_after("prefill:"), num_after("decode:"))
}

#[test]
fn run_demo_greedy() {
    let (out, err) = ok("run demo", herd(["run", "--prompt", "hello", "--max-tokens", "5", "--temperature", "0"]));
    assert!(out.ends_with('\n'), "{out:?}");
    let (p, d) = speed_report(&err);
    assert!(p >= 2, "prompt is BOS + `hello`: {err}");
    assert!((1..=5).contains(&d), "decoded {d} tokens with --max-tokens 5: {err}");
    // Greedy is deterministic.
    let (out2, _) = ok("run demo again", herd(["run", "--prompt", "hello", "--max-tokens", "5", "--temperature", "0"]));
    assert_eq!(out, out2);
}

#[test]
fn run_demo_chat() {
    let (_, err) = ok(
        "run --chat",
        herd(["run", "--prompt", "hello", "--chat", "--system", "be brief", "--max-tokens", "5", "--temperature", "0"]),
    );
    let (p_chat, d) = speed_report(&err);
    assert!((1..=5).contains(&d), "{err}");
    let (_, err_plain) = ok("run plain", herd(["run", "--prompt", "hello", "--max-tokens", "5", "--temperature", "0"]));
    let (p_plain, _) = speed_report(&err_plain);
    assert!(p_chat > p_plain, "the chat template should add tokens around the prompt ({p_chat} vs {p_plain})");
}

#[test]
fn run_sampling_seeded() {
    let args = |seed: &str| {
        [
            "run",
            "--prompt",
            "hello",
            "--max-tokens",
            "16",
            "--temperature",
            "1",
            "--top-p",
            "1",
            "--top-k",
            "0",
            "--seed",
            seed,
        ]
        .map(String::from)
    };
    let (a, _) = ok("seed 7", herd(args("7")));
    let (b, _) = ok("seed 7 again", herd(args("7")));
    assert_eq!(a, b, "same seed, different output");
    // The seed is used: different seeds do not all give the same text at temperature 1.
    let others: Vec<String> = ["1", "2", "3"].iter().map(|sd| ok("other seed", herd(args(sd))).0).collect();
    assert!(others.iter().any(|o| *o != a), "seeds 1, 2, 3 and 7 all gave {a:?}");
}

/// GPT-2 byte-level BPE: the printable character standing for each byte, inverted.
fn byte_level_decoder() -> HashMap<char, u8> {
    let mut bs: Vec<u32> = (b'!' as u32..=b'~' as u32).chain(0xA1..=0xAC).chain(0xAE..=0xFF).collect();
    let mut cs = bs.clone();
    let mut n = 0;
    for b in 0..256u32 {
        if !bs.contains(&b) {
            bs.push(b);
            cs.push(256 + n);
            n += 1;
        }
    }
    bs.iter().zip(&cs).map(|(&b, &c)| (char::from_u32(c).unwrap(), b as u8)).collect()
}

/// Decodes ids with the fixture's tokenizer.json (byte-level BPE), skipping special tokens.
fn decode(tokenizer_json: &Path, ids: &[u32]) -> String {
    let tok: Value = serde_json::from_slice(&std::fs::read(tokenizer_json).unwrap()).unwrap();
    let mut by_id: HashMap<u64, &str> =
        tok["model"]["vocab"].as_object().unwrap().iter().map(|(k, v)| (v.as_u64().unwrap(), k.as_str())).collect();
    let mut special = Vec::new();
    for a in tok["added_tokens"].as_array().unwrap() {
        by_id.insert(a["id"].as_u64().unwrap(), a["content"].as_str().unwrap());
        if a["special"].as_bool().unwrap() {
            special.push(a["id"].as_u64().unwrap());
        }
    }
    let inv = byte_level_decoder();
    let mut bytes = Vec::new();
    for &id in ids {
        if special.contains(&(id as u64)) {
            continue;
        }
        let piece = by_id[&(id as u64)];
        bytes.extend(piece.chars().map(|c| inv[&c]));
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// `herd run --temperature 0` on a prompt whose transformers tokenization is known prints the greedy
/// continuation of those ids (cut at the first stop token, special tokens not shown).
#[test]
fn run_temperature_0_is_greedy() {
    let cases: Value =
        serde_json::from_slice(&std::fs::read(fixture_dir("tokenizer").join("cases.json")).unwrap()).unwrap();
    let case = cases["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["text"] == "Hello, world!")
        .expect("tokenizer case `Hello, world!`");
    let ids: Vec<u32> =
        case["ids_with_special"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
    assert_eq!(ids[0], FIRST_SPECIAL, "BOS first");
    let n = 8;
    let greedy = run_greedy(&fixture_dir("scout"), std::slice::from_ref(&ids), n).remove(0);
    let stop = greedy.iter().position(|id| EOS_IDS.contains(id)).unwrap_or(n);
    let want = decode(&fixture_dir("scout").join("tokenizer.json"), &greedy[..stop]);

    let (out, err) = ok(
        "run scout t=0",
        herd([
            "run",
            "--model",
            s(&fixture_dir("scout")),
            "--prompt",
            "Hello, world!",
            "--temperature",
            "0",
            "--max-tokens",
            "8",
        ]),
    );
    let (p, d) = speed_report(&err);
    assert_eq!(p, ids.len(), "prompt tokens: {err}");
    assert_eq!(d, (stop + 1).min(n), "generated tokens (greedy {greedy:?}): {err}");
    assert_eq!(out.strip_suffix('\n').unwrap_or(&out), want, "greedy ids {greedy:?}");
}

// ---------------------------------------------------------------------------------------------------
// 6. herd chat
// ---------------------------------------------------------------------------------------------------

#[test]
fn chat_demo_reset_exit() {
    let out = herd_stdin(["chat", "--max-tokens", "4", "--temperature", "0"], Some("hi\n/reset\nhello again\n/exit\n"));
    let (_, err) = ok("chat", out);
    assert_eq!(err.matches("tok/s | decode").count(), 2, "two turns, two reports:\n{err}");
    assert!(err.contains("conversation cleared"), "{err}");
    assert!(!err.contains("error"), "{err}");
    // After /reset the second turn starts from scratch: its prompt is as short as a first turn's.
    let prompts: Vec<usize> =
        err.split("[prefill:").skip(1).map(|r| r.split_whitespace().next().unwrap().parse().unwrap()).collect();
    let (_, err1) =
        ok("chat one turn", herd_stdin(["chat", "--max-tokens", "4", "--temperature", "0"], Some("hello again\n")));
    let fresh: usize = err1.split("[prefill:").nth(1).unwrap().split_whitespace().next().unwrap().parse().unwrap();
    assert_eq!(prompts[1], fresh, "second turn after /reset should see only its own message\n{err}");
}

#[test]
fn chat_demo_end_of_input() {
    let (_, err) = ok("chat eof", herd_stdin(["chat", "--max-tokens", "2", "--temperature", "0"], Some("hi\n")));
    assert_eq!(err.matches("tok/s | decode").count(), 1, "{err}");
}

// ---------------------------------------------------------------------------------------------------
// 7. Bad input: exit code 1, one `error:` line naming the culprit, no panic
// ---------------------------------------------------------------------------------------------------

/// Runs logits and greedy on `model` with the scout reference ids; both must fail with `wants`.
fn both_fail(case: &str, model: &Path, wants: &[&str]) {
    let sc = Scratch::new("both-fail");
    let (input, output) = (sc.path("ids.safetensors"), sc.path("out.safetensors"));
    write_ids(&input, &Reference::load("scout").input_ids, Dtype::I64);
    fails(
        &format!("logits: {case}"),
        herd(["logits", "--model", s(model), "--input", s(&input), "--output", s(&output)]),
        wants,
    );
    fails(
        &format!("greedy: {case}"),
        herd(["greedy", "--model", s(model), "--input", s(&input), "--max-tokens", "2", "--output", s(&output)]),
        wants,
    );
    assert!(!output.exists() && !sc.path("out.partial").exists(), "{case}: output written despite the error");
}

#[test]
fn bad_model_dir_missing() {
    let sc = Scratch::new("missing");
    let gone = sc.path("no-such-model");
    both_fail("missing model dir", &gone, &["no-such-model"]);
    fails("inspect missing dir", herd(["inspect", "--model", s(&gone)]), &["no-such-model"]);
    fails(
        "run missing dir",
        herd(["run", "--model", s(&gone), "--prompt", "hi", "--max-tokens", "2"]),
        &["no-such-model"],
    );
}

#[test]
fn bad_config_json() {
    let sc = Scratch::new("badcfg");
    let m = sc.bare_model("scout", "m");
    std::fs::write(m.join("config.json"), b"{\"hidden_size\": 32, \"num_hidden_layers\": ").unwrap();
    both_fail("corrupt config.json", &m, &["config.json"]);
    fails("inspect corrupt config", herd(["inspect", "--model", s(&m)]), &["config.json"]);

    let m2 = sc.bare_model("maverick", "m2");
    edit_config(&m2, |c| {
        c.insert("vocab_size".into(), Value::from("lots"));
    });
    both_fail("vocab_size a string", &m2, &["config.json", "vocab_size"]);
}

#[test]
fn bad_config_missing() {
    let sc = Scratch::new("nocfg");
    let m = sc.bare_model("scout", "m");
    std::fs::remove_file(m.join("config.json")).unwrap();
    both_fail("no config.json", &m, &["config.json"]);
}

#[test]
fn bad_safetensors_truncated() {
    let sc = Scratch::new("trunc");
    let m = sc.bare_model("scout", "m");
    let full = std::fs::read(m.join("model.safetensors")).unwrap();
    // Cut inside the data, then inside the JSON header.
    std::fs::write(m.join("model.safetensors"), &full[..full.len() / 2]).unwrap();
    both_fail("model.safetensors cut in half", &m, &["model.safetensors"]);
    std::fs::write(m.join("model.safetensors"), &full[..100]).unwrap();
    both_fail("model.safetensors cut in the header", &m, &["model.safetensors"]);
    fails("inspect truncated safetensors", herd(["inspect", "--model", s(&m)]), &["model.safetensors"]);

    // A missing shard of a sharded checkpoint.
    let mv = sc.bare_model("maverick", "mv");
    std::fs::remove_file(mv.join("model-00003-of-00005.safetensors")).unwrap();
    both_fail("missing shard", &mv, &["model-00003-of-00005.safetensors"]);
}

#[test]
fn bad_backend() {
    let sc = Scratch::new("backend");
    let (input, output) = (sc.path("ids.safetensors"), sc.path("out.safetensors"));
    write_ids(&input, &Reference::load("scout").input_ids, Dtype::I64);
    let scout = fixture_dir("scout");
    fails(
        "logits --backend cuda",
        herd(["logits", "--model", s(&scout), "--input", s(&input), "--output", s(&output), "--backend", "cuda"]),
        &["backend", "cuda"],
    );
    fails(
        "greedy --backend cuda",
        herd([
            "greedy",
            "--model",
            s(&scout),
            "--input",
            s(&input),
            "--max-tokens",
            "2",
            "--output",
            s(&output),
            "--backend",
            "cuda",
        ]),
        &["backend", "cuda"],
    );
    fails("run --backend metal", herd(["run", "--prompt", "hi", "--backend", "metal"]), &["backend", "metal"]);
    fails("chat --backend metal", herd_stdin(["chat", "--backend", "metal"], Some("hi\n")), &["backend", "metal"]);
    fails("bench --backend metal", herd(["bench", "--backend", "metal"]), &["backend", "metal"]);
    assert!(!output.exists());
}

/// Runs logits and greedy on the scout model with `input`; both must fail naming the input file and `wants`.
fn input_fails(case: &str, sc: &Scratch, input: &Path, wants: &[&str]) {
    let output = sc.path("out.safetensors");
    let scout = fixture_dir("scout");
    let name = input.file_name().unwrap().to_str().unwrap();
    let mut all = vec![name];
    all.extend_from_slice(wants);
    fails(
        &format!("logits: {case}"),
        herd(["logits", "--model", s(&scout), "--input", s(input), "--output", s(&output)]),
        &all,
    );
    fails(
        &format!("greedy: {case}"),
        herd(["greedy", "--model", s(&scout), "--input", s(input), "--max-tokens", "2", "--output", s(&output)]),
        &all,
    );
    assert!(!output.exists(), "{case}: output written");
}

#[test]
fn bad_input_files() {
    let sc = Scratch::new("input");
    let rows = Reference::load("scout").input_ids;

    let p = sc.path("no-ids.safetensors");
    write_tensor(
        &p,
        "tokens",
        Dtype::I64,
        vec![1, 2],
        &[1i64, 2].iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>(),
    );
    input_fails("no input_ids tensor", &sc, &p, &["input_ids"]);

    let p = sc.path("float-ids.safetensors");
    write_tensor(
        &p,
        "input_ids",
        Dtype::F32,
        vec![1, 3],
        &[1f32, 2., 3.].iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>(),
    );
    input_fails("float input_ids", &sc, &p, &["input_ids", "F32"]);

    let p = sc.path("ids-1d.safetensors");
    write_tensor(
        &p,
        "input_ids",
        Dtype::I64,
        vec![3],
        &[1i64, 2, 3].iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>(),
    );
    input_fails("1-D input_ids", &sc, &p, &["input_ids", "shape"]);

    let p = sc.path("negative.safetensors");
    write_tensor(
        &p,
        "input_ids",
        Dtype::I64,
        vec![1, 2],
        &[5i64, -1].iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>(),
    );
    input_fails("negative id", &sc, &p, &["input_ids", "-1"]);

    let p = sc.path("not-safetensors.safetensors");
    std::fs::write(&p, b"hello, I am not a safetensors file").unwrap();
    input_fails("not safetensors", &sc, &p, &[]);

    let p = sc.path("absent.safetensors");
    input_fails("input file missing", &sc, &p, &[]);

    // One id past the vocabulary (2048 ids: 0..=2047).
    let mut big = rows.clone();
    big[1][5] = 2048;
    let p = sc.path("big-id.safetensors");
    write_ids(&p, &big, Dtype::I64);
    let output = sc.path("out.safetensors");
    let scout = fixture_dir("scout");
    for sub in ["logits", "greedy"] {
        let mut args = vec![sub, "--model", s(&scout), "--input", s(&p), "--output", s(&output)];
        if sub == "greedy" {
            args.extend(["--max-tokens", "2"]);
        }
        fails(&format!("{sub}: id ≥ vocab"), herd(&args), &["big-id.safetensors", "input_ids", "2048", "vocab"]);
    }
    assert!(!output.exists());
}

#[test]
fn bad_greedy_max_tokens_0() {
    let sc = Scratch::new("n0");
    let (input, output) = (sc.path("ids.safetensors"), sc.path("out.safetensors"));
    write_ids(&input, &Reference::load("scout").input_ids, Dtype::I64);
    fails(
        "greedy --max-tokens 0",
        herd([
            "greedy",
            "--model",
            s(&fixture_dir("scout")),
            "--input",
            s(&input),
            "--max-tokens",
            "0",
            "--output",
            s(&output),
        ]),
        &["--max-tokens"],
    );
    assert!(!output.exists());
}

#[test]
fn bad_prompt_longer_than_context() {
    let sc = Scratch::new("ctx");
    let m = sc.model_copy(
        "scout",
        "m",
        &["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "generation_config.json"],
    );
    edit_config(&m, |c| {
        c.insert("max_position_embeddings".into(), Value::from(16));
    });
    let long = "The quick brown fox jumps over the lazy dog. ".repeat(4);
    fails(
        "run: prompt longer than the context",
        herd(["run", "--model", s(&m), "--prompt", &long, "--max-tokens", "4", "--temperature", "0"]),
        &["16"],
    );

    // The same through logits: 20 reference tokens > 16 positions.
    let (input, output) = (sc.path("ids.safetensors"), sc.path("out.safetensors"));
    write_ids(&input, &Reference::load("scout").input_ids, Dtype::I64);
    fails(
        "logits: ids longer than the context",
        herd(["logits", "--model", s(&m), "--input", s(&input), "--output", s(&output)]),
        &["16"],
    );
    // 14 prompt tokens + 4 generated > 16.
    let short: Vec<Vec<u32>> = Reference::load("scout").input_ids.iter().map(|r| r[..14].to_vec()).collect();
    write_ids(&input, &short, Dtype::I64);
    fails(
        "greedy: ids + new tokens longer than the context",
        herd(["greedy", "--model", s(&m), "--input", s(&input), "--max-tokens", "4", "--output", s(&output)]),
        &["16"],
    );
    assert!(!output.exists());
}

#[test]
fn bad_run_without_tokenizer() {
    let sc = Scratch::new("notok");
    let m = sc.bare_model("scout", "m");
    fails(
        "run without tokenizer.json",
        herd(["run", "--model", s(&m), "--prompt", "hi", "--max-tokens", "2"]),
        &["tokenizer.json"],
    );
}

#[test]
fn output_in_missing_directory() {
    let sc = Scratch::new("outdir");
    let input = sc.path("ids.safetensors");
    write_ids(&input, &Reference::load("scout").input_ids, Dtype::I64);
    let missing = sc.path("no-such-dir");
    let output = missing.join("out.safetensors");
    let scout = fixture_dir("scout");
    fails(
        "logits into missing dir",
        herd(["logits", "--model", s(&scout), "--input", s(&input), "--output", s(&output)]),
        &["no-such-dir/out.safetensors"],
    );
    fails(
        "greedy into missing dir",
        herd(["greedy", "--model", s(&scout), "--input", s(&input), "--max-tokens", "2", "--output", s(&output)]),
        &["no-such-dir/out.safetensors"],
    );
    assert!(!missing.exists(), "the missing directory was created");
    let left: Vec<_> = std::fs::read_dir(&sc.dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left, vec![OsStr::new("ids.safetensors").to_owned()], "files left behind");
}

/// The output path is an existing directory: the write fails, and no temporary file is left next to it.
#[test]
fn output_is_a_directory() {
    let sc = Scratch::new("outisdir");
    let input = sc.path("ids.safetensors");
    write_ids(&input, &Reference::load("scout").input_ids, Dtype::I64);
    let dir_out = sc.path("out.safetensors");
    std::fs::create_dir(&dir_out).unwrap();
    std::fs::write(dir_out.join("keep"), b"x").unwrap();
    fails(
        "logits onto a directory",
        herd(["logits", "--model", s(&fixture_dir("scout")), "--input", s(&input), "--output", s(&dir_out)]),
        &["out.safetensors"],
    );
    let mut left: Vec<_> =
        std::fs::read_dir(&sc.dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    left.sort();
    assert_eq!(left, ["ids.safetensors", "out.safetensors"], "files left behind");
    assert!(dir_out.join("keep").exists());
}

/// `herd logits --backend wgpu` (Vulkan over lavapipe in CI) against the transformers references. With no
/// adapter the test says so; with HERD_REQUIRE_WGPU=1 (set by scripts/test.sh) that is a failure.
#[test]
fn logits_on_wgpu() {
    if let Err(e) = herd_wgpu::WgpuBackend::new() {
        assert!(std::env::var("HERD_REQUIRE_WGPU").as_deref() != Ok("1"), "wgpu required but not available: {e}");
        eprintln!("wgpu: NOT RUN ({e})");
        return;
    }
    for fixture in ["scout", "maverick", "guard"] {
        check_logits_on("wgpu", fixture, &fixture_dir(fixture), Dtype::I64, false, F32_TOL);
        check_logits_on("wgpu", fixture, &fixture_dir(fixture), Dtype::I64, true, F32_TOL);
    }
    check_logits_on("wgpu", "scout_bf16", &fixture_dir("scout_bf16"), Dtype::I64, false, BF16_TOL);
}

/// `herd bench --synthetic tiny --json`: a model built in memory (Scout's structure at toy size, random
/// weights) runs on the CPU and the report carries the synthetic fields.
#[test]
fn bench_synthetic_tiny_json() {
    let (stdout, _) = ok(
        "bench --synthetic tiny",
        herd(["bench", "--synthetic", "tiny", "--json", "--prompt-tokens", "8", "--gen-tokens", "4", "--repeat", "1"]),
    );
    let j: Value = serde_json::from_str(stdout.trim()).expect("bench --json prints one JSON object");
    assert_eq!(j["synthetic"], "tiny", "{j}");
    assert_eq!(j["layers"], 2, "{j}");
    for key in ["ms_per_layer_token", "param_bytes", "prefill_tok_s", "decode_tok_s", "gen_tokens"] {
        let v = j[key].as_f64().unwrap_or_else(|| panic!("{key} missing or not a number in {j}"));
        assert!(v > 0.0, "{key} = {v} in {j}");
    }
    fails(
        "bench --synthetic with --model",
        herd(["bench", "--synthetic", "tiny", "--model", "somewhere"]),
        &["--synthetic and --model"],
    );
}
