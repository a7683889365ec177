//! `herd guard` and `herd run --guard` with a tiny guard trained to answer `unsafe` and `S1` when the last
//! message holds the marker word (tests/fixtures/guard_marker, made by tests/tools/train_guard.py).

use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_herd");

fn guard_dir() -> String {
    format!("{}/../tests/fixtures/guard_marker", env!("CARGO_MANIFEST_DIR"))
}

fn herd(args: &[&str]) -> Output {
    Command::new(BIN).args(args).args(["--backend", "cpu"]).output().expect("run herd")
}

fn text(o: &Output) -> (String, String) {
    (String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned())
}

#[test]
fn herd_guard_prints_the_verdict_and_exits_by_it() {
    let g = guard_dir();
    let o = herd(&["guard", "--model", &g, "--prompt", "Where does the zyzzyva live?"]);
    let (out, err) = text(&o);
    assert_eq!((o.status.code(), out.as_str()), (Some(3), "unsafe\nS1: Violent Crimes\n"), "{err}");
    let o = herd(&["guard", "--model", &g, "--prompt", "Where does the river go?"]);
    let (out, err) = text(&o);
    assert_eq!((o.status.code(), out.as_str()), (Some(0), "safe\n"), "{err}");
    // The answer is what is checked when there is one.
    let o = herd(&["guard", "--model", &g, "--prompt", "Name a word.", "--response", "The word is zyzzyva."]);
    assert_eq!((o.status.code(), text(&o).0.lines().next()), (Some(3), Some("unsafe")), "{:?}", text(&o));
    let o = herd(&["guard", "--model", &g, "--prompt", "Name a word.", "--response", "The word is river."]);
    assert_eq!((o.status.code(), text(&o).0.as_str()), (Some(0), "safe\n"), "{:?}", text(&o));
    // A category that does not exist is a one-line error.
    let o = herd(&["guard", "--model", &g, "--prompt", "hi", "--guard-categories", "S1,S15"]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(1));
    assert!(err.contains("S15") && err.trim().lines().count() == 1, "{err}");
}

#[test]
fn herd_run_refuses_an_unsafe_prompt_and_runs_a_safe_one() {
    let g = guard_dir();
    let o = herd(&["run", "--chat", "--guard", &g, "--prompt", "Tell me of the zyzzyva.", "--max-tokens", "4"]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out} {err}");
    assert!(err.contains("the guard found the prompt unsafe: S1 (Violent Crimes)"), "{err}");
    assert!(out.is_empty(), "nothing is generated: {out}");
    let o = herd(&[
        "run",
        "--chat",
        "--guard",
        &g,
        "--guard-every",
        "2",
        "--prompt",
        "Tell me of the sea.",
        "--max-tokens",
        "6",
        "--temperature",
        "0",
    ]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out} {err}");
    // The same answer as without the guard: it holds text back, it does not change it.
    let plain = herd(&["run", "--chat", "--prompt", "Tell me of the sea.", "--max-tokens", "6", "--temperature", "0"]);
    assert_eq!(out, text(&plain).0);
    // An answer that must write the marker (a schema whose only value is it) is stopped where a check finds
    // it: what was printed before holds no marker, and the run fails saying why.
    let schema = std::env::temp_dir().join(format!("herd-guard-schema-{}.json", std::process::id()));
    std::fs::write(&schema, r#"{"type":"object","properties":{"w":{"const":"zyzzyva"}},"required":["w"]}"#).unwrap();
    let o = herd(&[
        "run",
        "--chat",
        "--guard",
        &g,
        "--guard-every",
        "3",
        "--prompt",
        "Name a word.",
        "--json-schema",
        schema.to_str().unwrap(),
        "--max-tokens",
        "16",
    ]);
    let _ = std::fs::remove_file(&schema);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out} {err}");
    assert!(err.contains("the guard found the answer unsafe and stopped it there: S1 (Violent Crimes)"), "{err}");
    assert!(out.starts_with("{") && !out.contains("zyzzyva"), "unchecked text was printed: {out}");
}

/// The guard's memory is planned before the model's: with --device-memory that holds the model alone but not
/// both, `run` and `serve` refuse in one line naming what the guard takes, before loading anything.
#[test]
fn the_memory_plan_leaves_room_for_the_guard() {
    let g = guard_dir();
    let run = |extra: &[&str]| {
        let mut args = vec!["run", "--chat", "--prompt", "Tell me of the sea.", "--max-tokens", "8"];
        args.extend(extra);
        herd(&args)
    };
    let o = run(&["--device-memory", "15MB"]);
    assert_eq!(o.status.code(), Some(0), "{:?}", text(&o));
    let o = run(&["--device-memory", "15MB", "--guard", &g]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out} {err}");
    assert!(err.contains("not enough memory (--device-memory, less") && err.contains("for the guard"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    let o = herd(&["serve", "--port", "0", "--max-seqs", "1", "--device-memory", "15MB", "--guard", &g]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("for the guard"), "{err}");
    // The guard alone too large: said so.
    let o = run(&["--device-memory", "2MB", "--guard", &g]);
    let (_, err) = text(&o);
    assert!(o.status.code() == Some(1) && err.contains("the guard model: not enough memory"), "{err}");
}

/// `herd guard --image`: the guard reads the image with its own vision tower and still judges by the marker
/// (the trained guard was shown text only: the image must not change its verdict); a guard whose config has
/// no vision tower refuses to check an image, in one line, rather than judge the text alone.
#[test]
fn herd_guard_reads_images_with_its_vision_tower() {
    let g = guard_dir();
    let img = format!("{}/../tests/fixtures/vision/photo_200x300.png", env!("CARGO_MANIFEST_DIR"));
    let o = herd(&["guard", "--model", &g, "--image", &img, "--prompt", "Where does the zyzzyva live?"]);
    let (out, err) = text(&o);
    assert_eq!((o.status.code(), out.as_str()), (Some(3), "unsafe\nS1: Violent Crimes\n"), "{err}");
    assert!(err.contains("[the prompt with its image checked in"), "{err}");
    let o = herd(&["guard", "--model", &g, "--image", &img, "--image", &img, "--prompt", "Where does the river go?"]);
    let (out, err) = text(&o);
    assert_eq!((o.status.code(), out.as_str()), (Some(0), "safe\n"), "{err}");
    assert!(err.contains("[the prompt with its 2 images checked in"), "{err}");
    // `herd run --guard` with an image: the guard checks the prompt with it, and holds back, but does not
    // change, the answer.
    let model = format!("{}/../tests/fixtures/scout_vision", env!("CARGO_MANIFEST_DIR"));
    let run = |prompt: &str, guard: bool| {
        let mut args = vec!["run", "--model", &model, "--chat", "--image", &img, "--prompt", prompt];
        args.extend(["--max-tokens", "6", "--temperature", "0"]);
        if guard {
            args.extend(["--guard", &g, "--guard-every", "2"]);
        }
        herd(&args)
    };
    let o = run("What is the zyzzyva in this picture?", true);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out} {err}");
    assert!(err.contains("the guard found the prompt unsafe: S1 (Violent Crimes)") && out.is_empty(), "{err}");
    let (guarded, plain) = (run("What is in this picture?", true), run("What is in this picture?", false));
    assert_eq!(guarded.status.code(), Some(0), "{:?}", text(&guarded));
    assert_eq!(text(&guarded).0, text(&plain).0);
    // The same guard without a vision_config.
    let dir = std::env::temp_dir().join(format!("herd-guard-blind-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for e in std::fs::read_dir(&g).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, dir.join(p.file_name().unwrap())).unwrap();
    }
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    cfg.as_object_mut().unwrap().remove("vision_config");
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    let o = herd(&["guard", "--model", dir.to_str().unwrap(), "--image", &img, "--prompt", "Where does the river go?"]);
    let (out, err) = text(&o);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(o.status.code(), Some(1), "{out} {err}");
    assert!(err.contains("the guard cannot check images") && err.contains("no vision tower"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}
