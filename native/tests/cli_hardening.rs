//! Hostile input against the `herd` binary, one test per class of failure: sizes that overflow or ask for
//! more memory than any machine has, inputs that are not regular files, chat templates that never end or
//! grow without bound, outputs that must not be clobbered, and a chat that outgrows its context. Each case
//! runs under a memory ulimit and a time limit, and must end in one `error:` line and exit code 1 (or, for
//! the chat, go on), never a panic, an abort or a hang.

mod common;
use common::*;

/// Address space a run may take: the CPU backend on the tiny fixtures needs far less.
const ULIMIT_KIB: u64 = 4 << 20;

/// `herd args` under `ulimit -v` and `timeout`, with `umask` set, optionally fed `stdin_file`.
fn bounded(args: &[&str], umask: &str, stdin_file: Option<&Path>) -> Output {
    let quoted: Vec<String> = args.iter().map(|a| format!("'{}'", a.replace('\'', "'\\''"))).collect();
    let script = format!("ulimit -v {ULIMIT_KIB}; umask {umask}; exec timeout 120 '{BIN}' {}", quoted.join(" "));
    let mut cmd = Command::new("sh");
    cmd.args(["-c", &script]).stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.stdin(match stdin_file {
        Some(p) => Stdio::from(std::fs::File::open(p).unwrap()),
        None => Stdio::null(),
    });
    cmd.output().expect("run herd under sh")
}

/// Fails cleanly (see `fails`), within the memory limit and the time limit (`timeout` exits 124).
fn refused(case: &str, args: &[&str], wants: &[&str]) -> String {
    let out = bounded(args, "022", None);
    assert_ne!(out.status.code(), Some(124), "{case}: hung until the time limit\n{}", describe(&out));
    fails(case, out, wants)
}

fn mkfifo(p: &Path) {
    let st = Command::new("mkfifo").arg(p).status().expect("mkfifo");
    assert!(st.success(), "mkfifo {}", p.display());
}

/// A copy of the built-in demo model (native/demo) in `sub`.
fn demo_copy(sc: &Scratch, sub: &str) -> PathBuf {
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("demo");
    let m = sc.path(sub);
    std::fs::create_dir_all(&m).unwrap();
    for f in ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "generation_config.json"] {
        std::fs::copy(demo.join(f), m.join(f)).unwrap();
    }
    m
}

#[test]
fn config_sizes_are_bounded() {
    let sc = Scratch::new("cfgsizes");
    let m = sc.bare_model("scout", "m");
    let original = std::fs::read(m.join("config.json")).unwrap();
    for (field, value) in [
        ("head_dim", Value::from(9_223_372_036_854_775_806u64)),
        ("num_hidden_layers", Value::from(u64::MAX)),
        ("num_hidden_layers", Value::from(1_000_000_000_000u64)),
        ("num_attention_heads", Value::from(9_223_372_036_854_775_812u64)),
        ("num_key_value_heads", Value::from(1u64 << 40)),
        ("vocab_size", Value::from(1u64 << 40)),
        ("hidden_size", Value::from(1u64 << 62)),
        ("intermediate_size", Value::from(1u64 << 50)),
        ("num_local_experts", Value::from(1_000_000_000u64)),
        ("max_position_embeddings", Value::from(1u64 << 62)),
        ("attention_chunk_size", Value::from(1u64 << 62)),
    ] {
        std::fs::write(m.join("config.json"), &original).unwrap();
        edit_config(&m, |c| {
            c.insert(field.into(), value.clone());
        });
        refused(&format!("inspect with {field} = {value}"), &["inspect", "--model", s(&m)], &[field, "limit"]);
    }
    // The vision tower's sizes too (a u32 cast once made 2^32 + 336 read as 336).
    let v = sc.model_copy("scout_vision", "v", &["config.json"]);
    let mut cfg: Value = serde_json::from_slice(&std::fs::read(v.join("config.json")).unwrap()).unwrap();
    cfg["vision_config"]["image_size"] = Value::from((1u64 << 32) + 336);
    std::fs::write(v.join("config.json"), serde_json::to_vec(&cfg).unwrap()).unwrap();
    refused("vision image_size 2^32 + 336", &["inspect", "--model", s(&v)], &["vision_config.image_size"]);
}

#[test]
fn flags_and_ids_are_bounded() {
    let sc = Scratch::new("flags");
    let scout = fixture_dir("scout");
    let (input, output) = (sc.path("ids.safetensors"), sc.path("out.safetensors"));
    write_ids(&input, &[vec![3, 4, 5, 6]], Dtype::I64);
    let big = u64::MAX.to_string();
    let greedy = |n: &str| {
        ["greedy", "--model", s(&scout), "--input", s(&input), "--max-tokens", n, "--output", s(&output)]
            .map(str::to_owned)
    };
    let g = greedy(&big);
    refused("greedy --max-tokens 2^64-1", &g.iter().map(String::as_str).collect::<Vec<_>>(), &["context"]);
    let g = greedy(&(1u64 << 40).to_string());
    refused("greedy --max-tokens 2^40", &g.iter().map(String::as_str).collect::<Vec<_>>(), &["context"]);
    assert!(!output.exists());
    refused("bench --prompt-tokens 2^64-1", &["bench", "--prompt-tokens", &big], &["--prompt-tokens", "context"]);
    // Checked before the model runs, not after the prompt's prefill.
    refused("bench past the context", &["bench", "--prompt-tokens", "4000", "--gen-tokens", "200"], &["context"]);
    refused("bench --layers 2^64-1", &["bench", "--synthetic", "tiny", "--layers", &big], &["--layers"]);
    refused("bench --images 2^64-1", &["bench", "--synthetic", "tiny", "--images", &big], &["--images"]);
    refused(
        "--expert-cache past 2^64",
        &["run", "--prompt", "hi", "--expert-cache", "100000000TiB"],
        &["--expert-cache"],
    );

    // Logits larger than any machine's memory are refused before the model loads: 64 rows of 4096 ids over a
    // 2^24-id vocabulary would be 32 TiB.
    let m = sc.bare_model("scout", "m");
    edit_config(&m, |c| {
        c.insert("vocab_size".into(), Value::from(1u64 << 24));
    });
    write_ids(&input, &vec![vec![7; 4096]; 64], Dtype::I32);
    refused(
        "logits of 32 TiB",
        &["logits", "--model", s(&m), "--input", s(&input), "--output", s(&output)],
        &["ids.safetensors", "memory", "TiB"],
    );
}

#[test]
fn inputs_must_be_regular_files() {
    let sc = Scratch::new("regular");
    let files =
        ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "generation_config.json"];
    let irregular = "not a regular file";
    for (name, kind, want) in [
        ("config.json", "fifo", irregular),
        ("config.json", "dir", "is a directory"),
        ("config.json", "zero", irregular),
        ("tokenizer.json", "fifo", irregular),
        ("tokenizer_config.json", "zero", irregular),
        ("generation_config.json", "fifo", irregular),
        ("model.safetensors", "dir", irregular),
        ("model.safetensors", "fifo", irregular),
    ] {
        let m = sc.model_copy("scout", &format!("{name}-{kind}"), &files);
        let p = m.join(name);
        std::fs::remove_file(&p).unwrap();
        match kind {
            "fifo" => mkfifo(&p),
            "dir" => std::fs::create_dir(&p).unwrap(),
            _ => std::os::unix::fs::symlink("/dev/zero", &p).unwrap(),
        }
        refused(
            &format!("{name} as a {kind}"),
            &["run", "--model", s(&m), "--chat", "--prompt", "hi", "--max-tokens", "2"],
            &[name, want],
        );
    }
    let out = sc.path("out.safetensors");
    let fifo = sc.path("ids.fifo");
    mkfifo(&fifo);
    for input in [Path::new("/dev/zero"), fifo.as_path()] {
        refused(
            &format!("ids from {}", input.display()),
            &["logits", "--model", s(&fixture_dir("scout")), "--input", s(input), "--output", s(&out)],
            &["not a regular file"],
        );
    }
    refused(
        "image from a FIFO",
        &["run", "--model", s(&fixture_dir("scout_vision")), "--prompt", "hi", "--image", s(&fifo)],
        &["ids.fifo", "not a regular file"],
    );
}

#[test]
fn chat_templates_are_bounded() {
    let sc = Scratch::new("templates");
    for (case, template, wants) in [
        (
            "a string doubled 60 times",
            "{% set ns = namespace(s='xxxxxxxx') %}{% for i in range(60) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}\
             {{ ns.s|length }}",
            "memory",
        ),
        (
            "a list doubled 40 times, then joined",
            "{% set ns = namespace(l=[1]) %}{% for i in range(40) %}{% set ns.l = ns.l + ns.l %}{% endfor %}\
             {{ ns.l|join(',') }}",
            "chat template `default`",
        ),
        (
            "three nested loops of 10000",
            "{% for i in range(10000) %}{% for j in range(10000) %}{% for k in range(10000) %}{% endfor %}\
             {% endfor %}{% endfor %}",
            "instructions",
        ),
        ("an endless output", "{% for i in range(100000) %}{{ 'x' * 10000000 }}{% endfor %}", "output"),
        ("unbounded recursion", "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", "chat template `default`"),
    ] {
        let m = demo_copy(&sc, &format!("t{}", case.len()));
        let mut cfg: Value = serde_json::from_slice(&std::fs::read(m.join("tokenizer_config.json")).unwrap()).unwrap();
        cfg["chat_template"] = Value::from(template);
        std::fs::write(m.join("tokenizer_config.json"), serde_json::to_vec(&cfg).unwrap()).unwrap();
        refused(case, &["run", "--model", s(&m), "--chat", "--prompt", "hi", "--max-tokens", "2"], &[wants]);
    }
}

#[test]
fn outputs_are_never_clobbered() {
    let sc = Scratch::new("outputs");
    let scout = fixture_dir("scout");
    let input = sc.path("ids.safetensors");
    write_ids(&input, &[vec![3, 4, 5]], Dtype::I64);
    let greedy = |out: &Path, umask: &str| {
        bounded(
            &["greedy", "--model", s(&scout), "--input", s(&input), "--max-tokens", "2", "--output", s(out)],
            umask,
            None,
        )
    };
    // A FIFO (or a device, such as /dev/null) is refused, not replaced by a regular file.
    let fifo = sc.path("out.fifo");
    mkfifo(&fifo);
    fails("output onto a FIFO", greedy(&fifo, "022"), &["out.fifo", "not a regular file"]);
    assert!(std::fs::symlink_metadata(&fifo).unwrap().file_type().is_fifo(), "the FIFO was replaced");
    // A symbolic link is not written through, and its target is untouched.
    let target = sc.path("target.txt");
    std::fs::write(&target, b"keep me").unwrap();
    let link = sc.path("link.safetensors");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    fails("output through a symlink", greedy(&link, "022"), &["link.safetensors", "symbolic link"]);
    assert_eq!(std::fs::read(&target).unwrap(), b"keep me");
    assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
    // A new file takes the mode the umask gives; an existing regular file is replaced whole.
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    for (umask, mode) in [("022", 0o644), ("027", 0o640), ("077", 0o600)] {
        let out = sc.path(&format!("out-{umask}.safetensors"));
        ok(&format!("greedy with umask {umask}"), greedy(&out, umask));
        assert_eq!(std::fs::metadata(&out).unwrap().permissions().mode() & 0o777, mode, "umask {umask}");
        std::fs::write(&out, b"old").unwrap();
        ok("greedy over an existing file", greedy(&out, umask));
        assert_eq!(read_tensor(&out, "greedy_ids").1, vec![1, 2]);
    }
    let mut left: Vec<_> =
        std::fs::read_dir(&sc.dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    left.retain(|n| n.contains("herd-tmp"));
    assert!(left.is_empty(), "temporary files left behind: {left:?}");
}

/// `herd chat` past its context: the oldest turns are dropped, and said to be, instead of every later turn
/// failing; a message longer than the context could ever hold is refused before it is tokenized, and an
/// input with no line ends (/dev/zero) ends the chat with an error instead of filling memory.
#[test]
fn chat_outgrows_its_context() {
    let sc = Scratch::new("chatctx");
    let m = demo_copy(&sc, "m");
    edit_config(&m, |c| {
        c.insert("max_position_embeddings".into(), Value::from(64));
    });
    let turn = "And the LORD spake unto Moses, saying, Speak unto the children of Israel.\n";
    let mut input = turn.repeat(4);
    input.push_str(&"a".repeat(1 << 20));
    input.push('\n');
    input.push_str(turn);
    let stdin = sc.path("stdin.txt");
    std::fs::write(&stdin, &input).unwrap();
    let out = bounded(&["chat", "--model", s(&m), "--max-tokens", "8", "--temperature", "0"], "022", Some(&stdin));
    let (_, err) = ok("chat past its context", out);
    assert!(err.contains("the oldest"), "no turn was dropped:\n{err}");
    assert!(err.contains("that message is"), "the 1 MiB line was not refused:\n{err}");
    assert_eq!(err.matches("[prefill:").count(), 5, "every short turn answered:\n{err}");

    let out = bounded(&["chat", "--model", s(&m), "--max-tokens", "8"], "022", Some(Path::new("/dev/zero")));
    assert_ne!(out.status.code(), Some(124), "chat < /dev/zero hung\n{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(err.contains("error: reading stdin") && !err.contains("panicked"), "{}", describe(&out));
}
