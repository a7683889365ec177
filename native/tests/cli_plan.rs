//! The memory plan through the CLI: `herd plan`, `herd bench --context` (decode at depth, the KV bytes it
//! holds against the plan's formula) and `run`/`serve` refusing what does not fit the memory they plan
//! against, before loading anything.

mod common;

use common::*;

/// `herd bench --context`: decode after a KV cache filled to each depth. The tiny synthetic model has two
/// chunked layers (chunk 8192) of 2 kv heads of 16: 256 bytes of f32 keys and values per position and layer,
/// in pages of 16 positions.
#[test]
fn bench_at_depth() {
    let (stdout, _) = ok(
        "bench --context",
        herd(["bench", "--synthetic", "tiny", "--json", "--context", "1024,64", "--gen-tokens", "2", "--repeat", "1"]),
    );
    let j: Value = serde_json::from_str(stdout.trim()).expect("bench --json prints one JSON object");
    assert_eq!(j["kv_filled"], "random", "{j}");
    let rows = j["depths"].as_array().unwrap_or_else(|| panic!("no depths in {j}"));
    let depths: Vec<u64> = rows.iter().map(|r| r["context"].as_u64().unwrap()).collect();
    assert_eq!(depths, [64, 1024], "{j}");
    for r in rows {
        let d = r["context"].as_u64().unwrap();
        // The pages held after d + 2 positions, and the positions each token's attention reads (p + 1 in
        // each layer, p = d and d + 1).
        assert_eq!(r["kv_bytes_held"].as_u64(), Some(2 * (d + 2).div_ceil(16) * 16 * 256), "{r}");
        assert_eq!(r["kv_bytes_read_per_token"].as_u64(), Some(2 * (2 * d + 3) * 256 / 2), "{r}");
        assert!(r["decode_tok_s"].as_f64().is_some_and(|t| t > 0.0), "{r}");
    }
    // The plan's figure for the same tokens (depth + the 2 decoded) is what the cache held, in f32 (the CPU's
    // default) and in q8 (a byte per value and a scale per head: 2 × (32 / 4 + 2) words per position and layer).
    let plan = |n: u64, kv: &str| {
        let n = n.to_string();
        let args =
            ["plan", "--synthetic", "tiny", "--device-memory", "1GiB", "--json", "--context", &n, "--kv-dtype", kv];
        let (plan, _) = ok("plan --context", herd(args));
        let p: Value = serde_json::from_str(plan.trim()).expect("plan --json prints one JSON object");
        assert_eq!(p["fits"], true, "{p}");
        p
    };
    for r in rows {
        let p = plan(r["context"].as_u64().unwrap() + 2, "f32");
        assert_eq!(p["kv_bytes_at_context"], r["kv_bytes_held"], "plan {p} vs bench {r}");
    }
    let (stdout, _) = ok(
        "bench --context --kv-dtype q8",
        herd([
            "bench",
            "--synthetic",
            "tiny",
            "--json",
            "--context",
            "100",
            "--gen-tokens",
            "2",
            "--repeat",
            "1",
            "--kv-dtype",
            "q8",
        ]),
    );
    let j: Value = serde_json::from_str(stdout.trim()).expect("bench --json prints one JSON object");
    let r = &j["depths"][0];
    assert_eq!(j["kv_dtype"], "q8", "{j}");
    assert_eq!(r["kv_bytes_held"].as_u64(), Some(2 * 102u64.div_ceil(16) * 16 * 2 * 10 * 4), "{r}");
    assert_eq!(r["kv_bytes_read_per_token"].as_u64(), Some((2 * 100 + 3) * 2 * 10 * 4), "{r}");
    assert_eq!(plan(102, "q8")["kv_bytes_at_context"], r["kv_bytes_held"], "{r}");
    fails(
        "bench --context past the context",
        herd(["bench", "--synthetic", "tiny", "--context", "10485760"]),
        &["--context 10485760 plus --gen-tokens 32", "context of 10485760"],
    );
}

/// `herd plan`: Scout's published shapes with int4 weights on an 80 GB device, KV in bf16 (the default).
/// Each figure is recomputed here from the published config: 12 global layers of 8 kv heads × 128 (48 KiB of
/// bf16 keys and values per token), 36 chunked layers holding one chunk of 8192 each.
#[test]
fn plan_for_scout() {
    let (out, _) =
        ok("plan", herd(["plan", "--synthetic", "scout", "--quant", "q4", "--device-memory", "80GB", "--json"]));
    let p: Value = serde_json::from_str(out.trim()).expect("plan --json prints one JSON object");
    assert_eq!(p["kv"]["global_bytes_per_token"], 12 * 2 * 8 * 128 * 2, "{p}");
    assert_eq!(p["kv"]["chunked_bytes_per_seq"], 36u64 * 8192 * 2 * 8 * 128 * 2, "{p}");
    let fixed = ["weights", "activations", "expert_cache"].iter().map(|k| p[k].as_u64().unwrap()).sum::<u64>();
    let longest = p["longest_context"].as_u64().unwrap();
    let kv = |n: u64| 36 * 8192 * 4096 + 12 * n.div_ceil(16) * 16 * 4096;
    assert!(fixed + kv(longest) <= 80_000_000_000 && fixed + kv(longest + 1) > 80_000_000_000, "{p}");
    assert_eq!(p["kv_bytes_at_longest"], kv(longest), "{p}");
    // int4 weights: about half a byte per parameter of Scout's 109B.
    let w = p["weights"].as_u64().unwrap() as f64;
    assert!(w > 0.5 * 107e9 && w < 0.6 * 110e9, "{p}");
    // A context that does not fit is said so, with what it needs and the longest that does.
    let (out, _) = ok(
        "plan --context too long",
        herd(["plan", "--synthetic", "scout", "--quant", "q4", "--device-memory", "80GB", "--context", "1000000"]),
    );
    let need = fixed + kv(1_000_000);
    for want in [
        format!("does not fit: 1000000 tokens of context need {need} bytes"),
        format!("the longest that fits is {longest} tokens"),
    ] {
        assert!(out.contains(&want), "{want:?} not in\n{out}");
    }
    // q4 KV (KIVI): a key page is 16 × 1024 codes of 4 bits and a parameter word per channel, a value slot 1024
    // codes and a word per 32 channels; and a stage of 16 f32 key slots per sequence and layer. A million
    // tokens fit.
    let (out, _) = ok(
        "plan --kv-dtype q4",
        herd([
            "plan",
            "--synthetic",
            "scout",
            "--quant",
            "q4",
            "--device-memory",
            "80GB",
            "--json",
            "--kv-dtype",
            "q4",
        ]),
    );
    let q: Value = serde_json::from_str(out.trim()).expect("plan --json prints one JSON object");
    let page = 4 * (16 * 1024 / 8 + 1024) + 4 * 16 * (1024 / 8 + 1024 / 32);
    assert_eq!(q["kv"]["global_bytes_per_token"], 12 * page / 16, "{q}");
    let stages = 48 * 16 * 1024 * 4;
    assert_eq!(q["kv"]["chunked_bytes_per_seq"], 36 * (512 * page + 16 * 1024 * 4), "{q}");
    let kv4 = |n: u64| 36 * 512 * page + 12 * n.div_ceil(16) * page + stages;
    let longest = q["longest_context"].as_u64().unwrap();
    assert!(longest > 1_000_000 && fixed + kv4(longest) <= 80_000_000_000, "{q}");
    assert!(fixed + kv4(longest + 16) > 80_000_000_000, "{q}");
    assert_eq!(q["kv_bytes_at_longest"], kv4(longest), "{q}");
    fails(
        "plan --device-memory junk",
        herd(["plan", "--synthetic", "tiny", "--device-memory", "lots"]),
        &["--device-memory"],
    );
    fails(
        "plan --quant with a model directory",
        herd(["plan", "--device-memory", "8GB", "--quant", "q4"]),
        &["--quant and --layers go with --synthetic"],
    );
}

/// `herd run` plans before it loads: the demo model's KV cache for the prompt and --max-tokens must fit
/// --device-memory (on the CPU the weights are mapped from their file and do not count), else one line says
/// what it needs and the longest that fits; q8 holds what f32 could not.
#[test]
fn run_refuses_what_does_not_fit() {
    let run = |mem: &str, kv: &str| {
        herd([
            "run",
            "--prompt",
            "hi",
            "--max-tokens",
            "500",
            "--temperature",
            "0",
            "--device-memory",
            mem,
            "--kv-dtype",
            kv,
        ])
    };
    let line = fails(
        "run --device-memory 600KiB --kv-dtype f32",
        run("600KiB", "f32"),
        &["not enough memory (--device-memory: 600.0 KiB)", "502 tokens of context need", "the longest that fits is"],
    );
    let longest: usize =
        line.split("the longest that fits is ").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap();
    assert!(longest < 502, "{line}");
    fails("run --device-memory 1KiB", run("1KiB", "q8"), &["not enough memory", "before any context"]);
    let (_, err) = ok("run --device-memory 600KiB --kv-dtype q8", run("600KiB", "q8"));
    assert!(err.contains("[prefill: 2 tokens"), "{err}");
    fails("run --device-memory junk", run("lots", "q8"), &["--device-memory"]);
    fails("run --kv-dtype q5", run("1GiB", "q5"), &["--kv-dtype", "unknown KV format \"q5\""]);
}

/// `herd serve` refuses, before it listens, a model that does not fit --device-memory, and otherwise limits
/// each request to the longest context that --max-seqs requests fit.
#[test]
fn serve_refuses_what_does_not_fit() {
    fails(
        "serve --device-memory 1KiB",
        herd(["serve", "--port", "0", "--device-memory", "1KiB"]),
        &["not enough memory", "before any context"],
    );
    fails(
        "serve --max-context too long",
        herd([
            "serve",
            "--port",
            "0",
            "--device-memory",
            "8MiB",
            "--max-context",
            "4000",
            "--max-seqs",
            "4",
            "--prefix-cache-tokens",
            "0",
        ]),
        &["not enough memory", "4000 tokens of context need"],
    );
}
