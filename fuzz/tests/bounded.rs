//! The short, bounded fuzz run of `cargo test`: for every target of `herd_fuzz::TARGETS`, each file of
//! `fuzz/corpus/<target>/` and `fuzz/regressions/<target>/` is replayed, then a fixed number of
//! proptest-generated mutations of the corpus (bit flips, inserts, deletes, overwrites with interesting
//! values, splices from another seed, truncations) is run, from a fixed seed so that every run executes the
//! same inputs. A failing input is shrunk and written to `target/herd-fuzz-failures/`.
//!
//! `HERD_FUZZ_CASES=N` sets the number of mutations per target (for a longer run by hand); the long,
//! coverage-guided runs are `scripts/fuzz.sh`'s (see FUZZING.md).

use std::io::Write;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestError, TestRng, TestRunner};

/// One edit of a seed. Positions are taken modulo the length of the bytes at the time of the edit.
#[derive(Debug, Clone)]
enum Edit {
    Flip {
        at: u32,
        bit: u8,
    },
    Insert {
        at: u32,
        bytes: Vec<u8>,
    },
    Delete {
        at: u32,
        len: u16,
    },
    Overwrite {
        at: u32,
        bytes: Vec<u8>,
    },
    /// Overwrite with one of [`INTERESTING`].
    Interesting {
        at: u32,
        which: u8,
        insert: bool,
    },
    /// Copy `len` bytes at `src_at` of seed `from` to `at`, replacing the rest (a crossover) or inserted.
    Splice {
        from: u16,
        src_at: u32,
        len: u16,
        at: u32,
        insert: bool,
    },
    Truncate {
        at: u32,
    },
}

/// Values that make parsers take their edge paths: numbers at the limits of every integer type, negative,
/// fractional and huge numbers, JSON's other kinds, quotes and brackets, and bytes that are not UTF-8.
const INTERESTING: &[&[u8]] = &[
    b"0",
    b"-1",
    b"1",
    b"255",
    b"65536",
    b"2147483648",
    b"4294967295",
    b"4294967296",
    b"9223372036854775807",
    b"18446744073709551615",
    b"18446744073709551616",
    b"1e308",
    b"-0.0",
    b"0.5",
    b"NaN",
    b"null",
    b"true",
    b"[]",
    b"{}",
    b"\"\"",
    b"\"",
    b"[",
    b"{",
    b",",
    b"\\u0000",
    b"\\ud800",
    b"\n",
    b"{{",
    b"{%",
    b"%}",
    b"}}",
    b"\xff\xff\xff\xff\xff\xff\xff\xff",
    b"\x00\x00\x00\x00",
    b"\x80",
    b"\xc3\x28",
];

fn edit() -> impl Strategy<Value = Edit> {
    let bytes = proptest::collection::vec(any::<u8>(), 1..16);
    prop_oneof![
        4 => (any::<u32>(), 0u8..8).prop_map(|(at, bit)| Edit::Flip { at, bit }),
        2 => (any::<u32>(), bytes.clone()).prop_map(|(at, bytes)| Edit::Insert { at, bytes }),
        2 => (any::<u32>(), 1u16..64).prop_map(|(at, len)| Edit::Delete { at, len }),
        2 => (any::<u32>(), bytes).prop_map(|(at, bytes)| Edit::Overwrite { at, bytes }),
        4 => (any::<u32>(), any::<u8>(), any::<bool>()).prop_map(|(at, which, insert)| Edit::Interesting { at, which, insert }),
        1 => (any::<u16>(), any::<u32>(), 1u16..512, any::<u32>(), any::<bool>())
            .prop_map(|(from, src_at, len, at, insert)| Edit::Splice { from, src_at, len, at, insert }),
        1 => any::<u32>().prop_map(|at| Edit::Truncate { at }),
    ]
}

fn pos(at: u32, len: usize) -> usize {
    at as usize % (len + 1)
}

fn apply(seed: &[u8], edits: &[Edit], seeds: &[Vec<u8>]) -> Vec<u8> {
    let mut d = seed.to_vec();
    for e in edits {
        match e {
            Edit::Flip { at, bit } => {
                if !d.is_empty() {
                    let i = *at as usize % d.len();
                    d[i] ^= 1 << bit;
                }
            }
            Edit::Insert { at, bytes } => {
                let i = pos(*at, d.len());
                d.splice(i..i, bytes.iter().copied());
            }
            Edit::Delete { at, len } => {
                let i = pos(*at, d.len());
                let j = (i + *len as usize).min(d.len());
                d.drain(i..j);
            }
            Edit::Overwrite { at, bytes } => {
                let i = pos(*at, d.len());
                let j = (i + bytes.len()).min(d.len());
                d.splice(i..j, bytes.iter().copied());
            }
            Edit::Interesting { at, which, insert } => {
                let v = INTERESTING[*which as usize % INTERESTING.len()];
                let i = pos(*at, d.len());
                let j = if *insert { i } else { (i + v.len()).min(d.len()) };
                d.splice(i..j, v.iter().copied());
            }
            Edit::Splice { from, src_at, len, at, insert } => {
                let src = &seeds[*from as usize % seeds.len()];
                let s = pos(*src_at, src.len());
                let chunk = &src[s..(s + *len as usize).min(src.len())];
                let i = pos(*at, d.len());
                if *insert {
                    d.splice(i..i, chunk.iter().copied());
                } else {
                    d.truncate(i);
                    d.extend_from_slice(&src[s..]);
                }
            }
            Edit::Truncate { at } => {
                let i = pos(*at, d.len());
                d.truncate(i);
            }
        }
    }
    d
}

fn files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.is_file()).collect();
    paths.sort();
    paths.into_iter().map(|p| (p.clone(), std::fs::read(&p).unwrap())).collect()
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default()
}

/// Runs one target: the replay, then `cases` mutations. Prints one line.
fn run(name: &str, cases: u32) {
    let f = herd_fuzz::target(name).unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let start = Instant::now();
    let corpus = files(&root.join("corpus").join(name));
    assert!(!corpus.is_empty(), "fuzz/corpus/{name} has no seeds");
    let regressions = files(&root.join("regressions").join(name));
    // Every saved input, each on its own so that every failing file is named.
    let mut failed = Vec::new();
    for (path, data) in corpus.iter().chain(&regressions) {
        if let Err(p) = catch_unwind(AssertUnwindSafe(|| f(data))) {
            failed.push(format!("{}: {}", path.display(), panic_message(&*p)));
        }
    }
    // HERD_FUZZ_KEEP_GOING=1: run every case, keep the first input of each distinct failure (by message).
    let keep_going = std::env::var_os("HERD_FUZZ_KEEP_GOING").is_some();
    assert!(keep_going || failed.is_empty(), "{name}: saved inputs fail:\n{}", failed.join("\n"));

    // Mutations start from the corpus only: a regression may be a deliberately slow input.
    let seeds: Vec<Vec<u8>> = corpus.iter().map(|(_, d)| d.clone()).collect();
    let cases = std::env::var("HERD_FUZZ_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(cases);
    let config = Config { cases, failure_persistence: None, max_shrink_iters: 512, ..Config::default() };
    // A fixed seed per target (from its name): every run executes the same inputs.
    let mut key = [0u8; 32];
    for (i, b) in name.bytes().enumerate() {
        key[i % 32] ^= b;
    }
    let mut runner = TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &key));
    let last_failure: Mutex<Option<Vec<u8>>> = Mutex::new(None);
    let distinct: Mutex<Vec<(String, Vec<u8>)>> = Mutex::new(Vec::new());
    let last_input = std::env::var_os("HERD_FUZZ_LAST_INPUT");
    let strategy = (any::<u16>(), proptest::collection::vec(edit(), 1..8));
    let result = runner.run(&strategy, |(which, edits)| {
        let data = apply(&seeds[which as usize % seeds.len()], &edits, &seeds);
        // HERD_FUZZ_LAST_INPUT=FILE: each input is written there before it runs (to find one that kills the
        // process: a stack overflow, an abort, the OOM killer).
        if let Some(path) = &last_input {
            std::fs::write(path, &data).unwrap();
        }
        match catch_unwind(AssertUnwindSafe(|| f(&data))) {
            Ok(()) => Ok(()),
            Err(p) => {
                let msg = panic_message(&*p);
                if keep_going {
                    let key: String = msg.chars().take(60).collect();
                    let mut d = distinct.lock().unwrap();
                    if !d.iter().any(|(k, _)| *k == key) {
                        d.push((key, data));
                    }
                    return Ok(());
                }
                *last_failure.lock().unwrap() = Some(data);
                Err(TestCaseError::fail(msg))
            }
        }
    });
    let distinct = distinct.into_inner().unwrap();
    if !distinct.is_empty() || !failed.is_empty() {
        let dir = root.join("../target/herd-fuzz-failures");
        std::fs::create_dir_all(&dir).unwrap();
        let mut lines = Vec::new();
        for (msg, data) in &distinct {
            let path = dir.join(format!("{name}-{:016x}", fnv(data)));
            std::fs::write(&path, data).unwrap();
            lines.push(format!("{}: {msg}", path.display()));
        }
        panic!(
            "{name}: {} saved inputs fail, {} distinct failures in {cases} mutations ({:.1} s):\n{}\n{}",
            failed.len(),
            distinct.len(),
            start.elapsed().as_secs_f64(),
            failed.join("\n"),
            lines.join("\n")
        );
    }
    if let Err(e) = result {
        let msg = match &e {
            TestError::Fail(why, _) => why.to_string(),
            TestError::Abort(why) => why.to_string(),
        };
        let saved = last_failure.lock().unwrap().take().map(|data| {
            let dir = root.join("../target/herd-fuzz-failures");
            std::fs::create_dir_all(&dir).unwrap();
            let path = dir.join(format!("{name}-{:016x}", fnv(&data)));
            std::fs::write(&path, &data).unwrap();
            path
        });
        panic!(
            "{name}: a mutated input fails: {msg}\nthe shrunk input is in {} (replay it by copying it into \
             fuzz/regressions/{name}/)",
            saved.map(|p| p.display().to_string()).unwrap_or_default()
        );
    }
    let n = corpus.len() + regressions.len() + cases as usize;
    // Past the test harness's capture, so that a plain `cargo test` shows it.
    let _ = writeln!(
        std::io::stderr(),
        "herd-fuzz {name}: {n} inputs ({} seeds, {} regressions, {cases} mutations) in {:.1} s",
        corpus.len(),
        regressions.len(),
        start.elapsed().as_secs_f64()
    );
}

fn fnv(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf29ce484222325u64, |h, &b| (h ^ b as u64).wrapping_mul(0x100000001b3))
}

// Cases per target: about 5 s of one core each in the dev profile (workspace crates at opt-level 1), so the
// whole test takes 20-40 s on a 2-core machine.
#[test]
fn ids() {
    run("ids", 700_000);
}

#[test]
fn index() {
    run("index", 320_000);
}

#[test]
fn config() {
    run("config", 400_000);
}

#[test]
fn safetensors() {
    run("safetensors", 400_000);
}

#[test]
fn compressed() {
    run("compressed", 250_000);
}

#[test]
fn image() {
    run("image", 9_000);
}

#[test]
fn chat_template() {
    run("chat_template", 100_000);
}

#[test]
fn tokenizer() {
    run("tokenizer", 7_000);
}

#[test]
fn request() {
    run("request", 300_000);
}

#[test]
fn every_target_has_a_test() {
    let src = include_str!("bounded.rs");
    for (name, _) in herd_fuzz::TARGETS {
        assert!(src.contains(&format!("run(\"{name}\", ")), "no bounded run of target {name}");
    }
}

/// The seeds reach the parsers' success paths (a corpus of inputs that are all refused early would fuzz
/// only the first check): every seed of most targets is accepted, and the compressed-tensors seed has
/// quantized Linears and experts.
#[test]
fn seeds_are_accepted() {
    use herd_core::checkpoint::{parse_index, Checkpoint, FileBytes};
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let seeds = |t: &str| files(&root.join(t));
    for (p, d) in seeds("config") {
        herd_core::config::ModelConfig::from_json_bytes(&d).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    }
    let ck = |d: &[u8]| Checkpoint::from_bytes(vec![("seed".into(), FileBytes::Owned(d.to_vec()))]);
    for (p, d) in seeds("safetensors") {
        if p.extension().is_some_and(|e| e == "safetensors") {
            let c = ck(&d).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            assert!(c.tensors().count() > 0, "{}", p.display());
        }
        herd_core::checkpoint::parse_header("seed", &d, usize::MAX).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    }
    for (p, d) in seeds("index") {
        assert!(!parse_index(&d).unwrap_or_else(|e| panic!("{}: {e}", p.display())).is_empty());
    }
    let (_, d) =
        seeds("compressed").into_iter().find(|(p, _)| p.extension().is_some_and(|e| e == "safetensors")).unwrap();
    let linears = herd_core::compressed::quantized_linears(&ck(&d).unwrap()).unwrap();
    assert!(linears.iter().any(|l| l.stem.ends_with("self_attn.q_proj")), "no q_proj in the compressed seed");
    assert!(linears.iter().any(|l| l.stem.ends_with("experts.0.gate_proj")), "no experts in the compressed seed");
    for (p, d) in seeds("tokenizer") {
        herd_core::tokenizer::Tokenizer::from_bytes(&d).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    }
    for (p, d) in seeds("chat_template") {
        let s = String::from_utf8(d).unwrap();
        let t = if p.extension().is_some_and(|e| e == "json") {
            herd_core::chat::ChatTemplate::from_config_str(&s)
        } else {
            herd_core::chat::ChatTemplate::from_template(&s, Some("<s>"), Some("</s>"))
        };
        let t = t.unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        let m = [herd_core::chat::Message::user("hi")];
        t.render(&m, None, true).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    }
    for (p, d) in seeds("image") {
        herd_core::vision::preprocess::decode(&d).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    }
    let tok =
        herd_core::tokenizer::Tokenizer::from_bytes(include_bytes!("../../tests/fixtures/tokenizer/tokenizer.json"))
            .unwrap();
    let fixture_served = herd_core::openai::Served {
        model_id: "fixture".into(),
        context: 96,
        vocab_size: tok.vocab_size(),
        defaults: Default::default(),
        constrainer: None,
        stop_ids: vec![1],
    };
    let mut chats = 0;
    for (p, d) in seeds("request") {
        use herd_core::openai;
        let m = openai::parse_body(&d).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        // Each seed is a valid chat or completion request for the fixture.
        let ids = match openai::conversation(&m) {
            Ok(c) => {
                chats += 1;
                let t = herd_core::chat::ChatTemplate::from_config_str(include_str!(
                    "../../tests/fixtures/tokenizer/tokenizer_config.json"
                ))
                .unwrap();
                openai::chat_ids(&c.messages, None, Some(&t), &tok)
            }
            Err(_) => openai::completion_ids(&m, &tok),
        };
        let ids = ids.unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        openai::generation(&fixture_served, &m, ids, m.contains_key("messages"))
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    }
    assert!(chats >= 3, "the request seeds hold chat requests");
    for (p, d) in seeds("ids") {
        herd_core::ids::parse_input_ids(&d).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    }
}

/// A hang found by hand, kept as a generated input (too large to commit as a file): an index naming 100,000
/// distinct shards (2 MB, far below the 256 MiB an index may have) must parse in well under a second, not in
/// time quadratic in the number of shards.
#[test]
fn index_with_many_shards_is_not_quadratic() {
    let entries: Vec<String> = (0..100_000).map(|i| format!("\"t{i}\":\"s{i}\"")).collect();
    let json = format!("{{\"weight_map\":{{{}}}}}", entries.join(","));
    let start = Instant::now();
    let shards = herd_core::checkpoint::parse_index(json.as_bytes()).unwrap();
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(shards.len(), 100_000);
    assert!(secs < 2.0, "parse_index took {secs:.1} s for 100,000 shards");
}
