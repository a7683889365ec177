//! `--expert-cache` end to end: `logits` and `greedy` with the experts streamed through the smallest cache
//! that works match transformers' references (and the resident run's logits bit for bit), `run --stats`
//! prints the cache's statistics and the same text as without a cache, `bench` measures a list of sizes,
//! and bad sizes or policies are one-line errors.

mod common;

use common::*;

/// Scout fixture: 8 MoE layers, top-1, experts of 4 KiB gate/up + 2 KiB down (f32): 48 KiB is one per layer.
const SCOUT_MIN: &str = "48KiB";

fn logits_with(model: &Path, extra: &[&str]) -> Vec<u8> {
    let r = Reference::load("scout");
    let sc = Scratch::new("experts-logits");
    let (input, output) = (sc.path("ids.safetensors"), sc.path("out.safetensors"));
    write_ids(&input, &r.input_ids, Dtype::I64);
    let mut args = vec!["logits", "--model", s(model), "--input", s(&input), "--output", s(&output)];
    args.extend_from_slice(extra);
    ok(&format!("logits {extra:?}"), herd(&args));
    read_tensor(&output, "logits").2
}

#[test]
fn logits_and_greedy_stream_experts_exactly() {
    let dir = fixture_dir("scout");
    let resident = logits_with(&dir, &[]);
    for extra in [&["--expert-cache", SCOUT_MIN][..], &["--expert-cache", "1MiB", "--expert-policy", "lru"][..]] {
        let streamed = logits_with(&dir, extra);
        assert!(streamed == resident, "logits with {extra:?} differ from the resident run's");
    }
    // And against transformers (the resident run is checked the same way in cli.rs).
    let r = Reference::load("scout");
    let vals: Vec<f32> = resident.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
    let t = r.input_ids[0].len();
    for (row, want) in r.logits.iter().enumerate() {
        let e = rel_err(&vals[row * t * r.vocab..(row + 1) * t * r.vocab], want);
        assert!(e <= F32_TOL, "row {row}: relative error {e:.3e}");
    }
    let sc = Scratch::new("experts-greedy");
    let (input, output) = (sc.path("ids.safetensors"), sc.path("out.safetensors"));
    write_ids(&input, &r.input_ids, Dtype::I64);
    let n = r.greedy_ids[0].len().to_string();
    ok(
        "greedy streamed",
        herd([
            "greedy",
            "--model",
            s(&dir),
            "--input",
            s(&input),
            "--max-tokens",
            &n,
            "--output",
            s(&output),
            "--expert-cache",
            SCOUT_MIN,
            "--no-prefetch",
        ]),
    );
    let (_, _, data) = read_tensor(&output, "greedy_ids");
    let got: Vec<u32> = data.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap()) as u32).collect();
    let want: Vec<u32> = r.greedy_ids.concat();
    assert_eq!(got, want, "streamed greedy ids differ from transformers'");
}

#[test]
fn run_stats_and_bench_report_the_cache() {
    let base = ["run", "--prompt", "hello there", "--max-tokens", "6", "--temperature", "0"];
    let (plain, _) = ok("run demo", herd(base));
    let mut args = base.to_vec();
    // 1 MiB holds one 192 KiB expert slot per MoE layer (4 layers), of 8 experts each.
    args.extend(["--expert-cache", "1MiB", "--stats"]);
    let (streamed, err) = ok("run demo streamed", herd(&args));
    assert_eq!(streamed, plain, "streaming the experts changed the generated text");
    for want in ["expert cache: budget 1.0 MiB", "lookups", "hits", "plain LRU", "fetched", "GB/s"] {
        assert!(err.contains(want), "run --stats lacks {want:?}:\n{err}");
    }
    let (out, _) = ok(
        "bench two budgets",
        herd([
            "bench",
            "--synthetic",
            "tiny",
            "--prompt-tokens",
            "8",
            "--gen-tokens",
            "4",
            "--repeat",
            "1",
            "--quant",
            "q4",
            "--expert-cache",
            "96KiB,16MiB",
        ]),
    );
    assert_eq!(out.matches("expert cache: budget").count(), 2, "{out}");
    assert_eq!(out.matches("decode (last repetition): ").count(), 2, "{out}");
    let (json, _) = ok(
        "bench json",
        herd(
            ["bench", "--synthetic", "tiny", "--prompt-tokens", "4", "--gen-tokens", "2", "--repeat", "1", "--json"]
                .into_iter()
                .chain(["--expert-cache", "16MiB"]),
        ),
    );
    let v: Value = serde_json::from_str(json.trim()).unwrap();
    let ec = &v["expert_cache"];
    assert!(ec["slot_bytes"].as_u64().unwrap() <= 16 << 20 && ec["lookups"].as_u64().unwrap() > 0, "{v}");
}

#[test]
fn bad_cache_flags_are_one_line_errors() {
    let dir = fixture_dir("scout");
    let sc = Scratch::new("experts-bad");
    let (input, output) = (sc.path("ids.safetensors"), sc.path("out.safetensors"));
    write_ids(&input, &[vec![1, 2, 3]], Dtype::I64);
    let run = |extra: &[&str]| {
        let mut a = vec!["logits", "--model", s(&dir), "--input", s(&input), "--output", s(&output)];
        a.extend_from_slice(extra);
        herd(&a)
    };
    fails("unknown unit", run(&["--expert-cache", "12XB"]), &["--expert-cache", "unknown unit"]);
    fails("not a number", run(&["--expert-cache", "lots"]), &["--expert-cache", "not a size"]);
    fails("too small", run(&["--expert-cache", "40KiB"]), &["--expert-cache", "needs at least 8"]);
    fails("a list", run(&["--expert-cache", "1MiB,2MiB"]), &["one size"]);
    fails(
        "policy",
        run(&["--expert-cache", "1MiB", "--expert-policy", "mru"]),
        &["--expert-policy", "mru", "lrfu, lru"],
    );
    assert!(!output.exists(), "a failed run wrote its output");
}

#[test]
fn a_cache_on_a_dense_model_says_it_changes_nothing() {
    let r = Reference::load("guard");
    let sc = Scratch::new("experts-dense");
    let (input, output) = (sc.path("ids.safetensors"), sc.path("out.safetensors"));
    write_ids(&input, &r.input_ids, Dtype::I64);
    let dir = fixture_dir("guard");
    let args = ["logits", "--model", s(&dir), "--input", s(&input), "--output", s(&output), "--expert-cache", "1MiB"];
    let (_, err) = ok("dense model with a cache", herd(args));
    assert!(err.contains("no routed experts"), "{err}");
}
