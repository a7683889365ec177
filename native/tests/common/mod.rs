//! Helpers shared by the `herd` binary's end-to-end tests (cli.rs, cli_bad_input.rs).
#![allow(dead_code)]

pub use std::collections::HashMap;
pub use std::ffi::OsStr;
pub use std::io::Write;
pub use std::path::{Path, PathBuf};
pub use std::process::{Command, Output, Stdio};
pub use std::sync::atomic::{AtomicUsize, Ordering};

pub use herd_conformance::{fixture_dir, rel_err, Reference};
pub use safetensors::tensor::TensorView;
pub use safetensors::{Dtype, SafeTensors};
pub use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_herd");
/// f32 fixtures: max |Δ| / max |ref| (as in tests/tests/golden.rs).
pub const F32_TOL: f64 = 1e-4;
/// bf16 checkpoint: transformers rounds activations to bf16, herd keeps f32 activations.
pub const BF16_TOL: f64 = 3e-2;
/// The fixtures' generation stop ids (generation_config.json) and first special-token id.
pub const EOS_IDS: [u32; 3] = [1956, 1962, 1963];
pub const FIRST_SPECIAL: u32 = 1955;

// ---------------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------------

/// A scratch directory for one test, removed on drop.
pub struct Scratch {
    pub dir: PathBuf,
}

impl Scratch {
    pub fn new(tag: &str) -> Scratch {
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

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// A sub-directory holding copies of `files` from a fixture.
    pub fn model_copy(&self, fixture: &str, sub: &str, files: &[&str]) -> PathBuf {
        let d = self.path(sub);
        std::fs::create_dir_all(&d).unwrap();
        for f in files {
            std::fs::copy(fixture_dir(fixture).join(f), d.join(f))
                .unwrap_or_else(|e| panic!("copy {fixture}/{f}: {e}"));
        }
        d
    }

    /// A copy of a fixture's model files only: config.json and its safetensors (+ index), no tokenizer.
    pub fn bare_model(&self, fixture: &str, sub: &str) -> PathBuf {
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

pub fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

pub fn herd<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    herd_stdin(args, None)
}

pub fn herd_stdin<I, S>(args: I, stdin: Option<&str>) -> Output
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
        // herd may exit before reading its input (a bad flag is refused first): a broken pipe is then
        // expected, and what herd printed is what the test checks.
        if let Err(e) = pipe.write_all(text.as_bytes()) {
            assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "writing herd's input: {e}");
        }
        // Dropping the pipe closes it: end of input.
    }
    child.wait_with_output().expect("wait for herd")
}

pub fn describe(out: &Output) -> String {
    format!(
        "status {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Asserts success and that nothing panicked; returns (stdout, stderr).
pub fn ok(case: &str, out: Output) -> (String, String) {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{case}: herd failed\n{}", describe(&out));
    assert!(!err.contains("panicked"), "{case}: panic on stderr\n{}", describe(&out));
    (String::from_utf8(out.stdout).expect("stdout is UTF-8"), err)
}

/// Asserts a clean failure: exit code 1, empty stdout, stderr exactly one line starting with "error:"
/// that contains every string in `wants`, and no panic. Returns the error line.
pub fn fails(case: &str, out: Output, wants: &[&str]) -> String {
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

pub fn write_tensor(path: &Path, name: &str, dtype: Dtype, shape: Vec<usize>, data: &[u8]) {
    let view = TensorView::new(dtype, shape, data).unwrap();
    let tensors: HashMap<String, TensorView> = [(name.to_owned(), view)].into_iter().collect();
    safetensors::serialize_to_file(&tensors, None, path).unwrap();
}

/// Writes `input_ids` [B, T] as int64 or int32.
pub fn write_ids(path: &Path, rows: &[Vec<u32>], dtype: Dtype) {
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
pub fn read_tensor(path: &Path, name: &str) -> (Dtype, Vec<usize>, Vec<u8>) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = SafeTensors::deserialize(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let names = st.names();
    assert_eq!(names, vec![name], "{}: want exactly one tensor `{name}`", path.display());
    let t = st.tensor(name).unwrap();
    (t.dtype(), t.shape().to_vec(), t.data().to_vec())
}

/// `herd logits` on `fixture`'s reference input_ids (written as `dtype`) vs the reference logits.
pub fn check_logits(fixture: &str, model: &Path, dtype: Dtype, decode: bool, tol: f64) {
    check_logits_on("cpu", fixture, model, dtype, decode, tol)
}

/// [`check_logits`] on `backend`, with the KV cache in f32 (exact to the reference on every backend).
pub fn check_logits_on(backend: &str, fixture: &str, model: &Path, dtype: Dtype, decode: bool, tol: f64) {
    check_logits_kv(backend, fixture, model, dtype, decode, tol, Some("f32"))
}

/// [`check_logits_on`] with the KV cache in `kv` (`--kv-dtype`; None: the backend's default).
pub fn check_logits_kv(
    backend: &str,
    fixture: &str,
    model: &Path,
    dtype: Dtype,
    decode: bool,
    tol: f64,
    kv: Option<&str>,
) {
    let r = Reference::load(fixture);
    let sc = Scratch::new(&format!("logits-{fixture}"));
    let (input, output) = (sc.path("ids.safetensors"), sc.path("out.safetensors"));
    write_ids(&input, &r.input_ids, dtype);
    let mut args =
        vec!["logits", "--model", s(model), "--input", s(&input), "--output", s(&output), "--backend", backend];
    if decode {
        args.push("--decode");
    }
    if let Some(kv) = kv {
        args.extend(["--kv-dtype", kv]);
    }
    let case = format!("{fixture} logits on {backend} ({dtype:?} ids, decode={decode}, KV {kv:?})");
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
pub fn run_greedy(model: &Path, rows: &[Vec<u32>], n: usize) -> Vec<Vec<u32>> {
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

pub fn check_greedy(fixture: &str, model: &Path) {
    let r = Reference::load(fixture);
    let got = run_greedy(model, &r.input_ids, r.greedy_ids[0].len());
    assert_eq!(got, r.greedy_ids, "{fixture}: `herd greedy` differs from transformers' greedy_ids");
}

/// Rewrites `config.json` in `dir` (the `text_config` object of multimodal configs, else the root).
pub fn edit_config(dir: &Path, f: impl FnOnce(&mut serde_json::Map<String, Value>)) {
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
