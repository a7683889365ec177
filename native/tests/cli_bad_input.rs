//! End-to-end bad-input tests of the `herd` binary: each must end the process with exit code 1 and exactly
//! one `error:` line on stderr naming the file, tensor or field at fault, with no panic and no partial output.

mod common;

use common::*;
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
    // Where there is no NVIDIA driver, asking for CUDA is a clear error (on a GPU machine it would run).
    if herd_cuda::CudaBackend::new().is_err() {
        fails(
            "logits --backend cuda",
            herd(["logits", "--model", s(&scout), "--input", s(&input), "--output", s(&output), "--backend", "cuda"]),
            &["cuda", "no CUDA driver"],
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
            &["cuda", "no CUDA driver"],
        );
        fails("bench --backend cuda", herd(["bench", "--synthetic", "tiny", "--backend", "cuda"]), &["no CUDA driver"]);
    } else {
        eprintln!("a CUDA device is present: the no-driver error is not checked here");
    }
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
