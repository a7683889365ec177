//! `herd run --json-schema FILE` and `--grammar FILE` on the built-in demo model (which was never taught JSON):
//! seeded, sampled runs under each schema of tests/fixtures/schemas print JSON that an independent validator
//! (the `jsonschema` crate) accepts; a Lark grammar's output has its shape; bad schema and grammar files are
//! refused in one line, before the model loads. The same sweep runs through the library on the CPU and wgpu
//! (tests/tests/constrain.rs) and through the server (the openai client's test).

mod common;

use common::*;
use serde_json::Value;

/// Seeds per schema (each one a process that loads the model: about a tenth of a second).
const SEEDS: u32 = 50;

fn schema_files() -> Vec<std::path::PathBuf> {
    let dir = format!("{}/../tests/fixtures/schemas", env!("CARGO_MANIFEST_DIR"));
    let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    assert_eq!(files.len(), 6, "{dir}");
    files
}

fn run_args(flag: &str, file: &str, seed: u32) -> Vec<String> {
    let seed = seed.to_string();
    ["run", flag, file, "--prompt", "Describe the king of Israel", "--temperature", "1", "--top-p", "0.95"]
        .iter()
        .map(|s| s.to_string())
        .chain(["--max-tokens", "120", "--seed", &seed].map(String::from))
        .collect()
}

#[test]
fn run_json_schema_prints_valid_json() {
    for file in schema_files() {
        let schema: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
        let validator = jsonschema::validator_for(&schema).unwrap();
        let mut distinct = std::collections::HashSet::new();
        for seed in 0..SEEDS {
            let case = format!("{}, seed {seed}", file.display());
            let (out, _) = ok(&case, herd(run_args("--json-schema", s(&file), seed)));
            let text = out.strip_suffix('\n').unwrap_or_else(|| panic!("{case}: no final newline in {out:?}"));
            let v: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{case}: {text:?} is not JSON: {e}"));
            if let Err(e) = validator.validate(&v) {
                panic!("{case}: {text} does not follow the schema: {e}");
            }
            distinct.insert(text.to_owned());
        }
        // Sampled, not one answer forced (the enums schema has only 12 answers).
        assert!(distinct.len() >= 5, "{}: only {} distinct outputs", file.display(), distinct.len());
    }
}

#[test]
fn run_grammar_follows_a_lark_grammar() {
    let dir = Scratch::new("cli-grammar");
    let g = dir.path("answer.lark");
    std::fs::write(&g, "start: (\"yes\" | \"no\") \", \" /[a-z]{1,8}/ \"!\"\n").unwrap();
    for seed in 0..4 {
        let (out, _) = ok("lark", herd(run_args("--grammar", s(&g), seed)));
        let text = out.trim_end_matches('\n');
        let (word, rest) = text.split_once(", ").unwrap_or_else(|| panic!("{text:?}"));
        let rest = rest.strip_suffix('!').unwrap_or_else(|| panic!("{text:?}"));
        assert!(["yes", "no"].contains(&word), "{text:?}");
        assert!((1..=8).contains(&rest.len()) && rest.chars().all(|c| c.is_ascii_lowercase()), "{text:?}");
    }
}

#[test]
fn bad_schemas_and_grammars_are_refused_in_one_line() {
    let dir = Scratch::new("cli-bad-grammar");
    let file = |name: &str, body: &str| {
        let p = dir.path(name);
        std::fs::write(&p, body).unwrap();
        p
    };
    let run = |flag: &str, p: &std::path::Path| herd(run_args(flag, s(p), 0));
    let unsupported = file("dep.json", r#"{"type": "array", "uniqueItems": true}"#);
    fails("unsupported keyword", run("--json-schema", &unsupported), &["uniqueItems"]);
    let typo = file("typo.json", r#"{"type": "strin"}"#);
    fails("unknown type", run("--json-schema", &typo), &["strin"]);
    let not_json = file("broken.json", r#"{"type": "object""#);
    fails("not JSON", run("--json-schema", &not_json), &["broken.json"]);
    let lark = file("bad.lark", "start: (\"a\" \n");
    fails("bad Lark", run("--grammar", &lark), &["grammar"]);
    fails("missing file", run("--json-schema", &dir.path("nope.json")), &["nope.json"]);
    fails("a directory", run("--grammar", &dir.path("")), &["is a directory"]);
    let both = herd(["run", "--json-schema", s(&typo), "--grammar", s(&lark)]);
    fails("both flags", both, &["--json-schema", "cannot be used with", "--grammar"]);
}
