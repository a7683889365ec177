//! The KV cache's memory on the CPU with Scout's attention shapes (8 kv heads of 128, chunks of 8192, one
//! global layer in four; 4 of its 48 layers): at 8K, 64K and 256K tokens of context, sized up front and filled
//! by kv_store, the bytes the cache reports are the memory plan's formula (`KvLayout::bytes`), it reserves no
//! more, and the process's peak resident memory grows by those bytes and no more. Each depth runs in a child
//! process of this test binary, so that its resident memory is its own.

use std::process::Command;

use herd_core::config::ModelConfig;
use herd_core::cpu::CpuBackend;
use herd_core::kv::KvCache;
use herd_core::kv_format::{parse_kv_dtypes, KvDtype};
use herd_core::plan::KvLayout;

const CHILD: &str = "HERD_KV_MEMORY_CHILD";
const PAGE: usize = 16;

/// Scout's published text shapes that the KV cache depends on, with 4 layers (3 chunked RoPE layers, then a
/// global NoPE one).
fn scout_shapes() -> herd_core::config::TextConfig {
    let json = r#"{"model_type":"llama4","text_config":{"num_attention_heads":40,"num_key_value_heads":8,
        "head_dim":128,"hidden_size":5120,"vocab_size":202048,"intermediate_size":8192,"intermediate_size_mlp":16384,
        "num_local_experts":16,"num_experts_per_tok":1,"interleave_moe_layer_step":1,"no_rope_layers":[],
        "rope_theta":500000.0,"rms_norm_eps":1e-05,"attn_temperature_tuning":4,"floor_scale":8192,"attn_scale":0.1,
        "attention_chunk_size":8192,"use_qk_norm":true,"max_position_embeddings":10485760,
        "tie_word_embeddings":false,"bos_token_id":200000,"eos_token_id":[200001],"model_type":"llama4_text",
        "num_hidden_layers":4}}"#;
    ModelConfig::from_json_bytes(json.as_bytes()).expect("Scout's shapes parse").text
}

/// A field of /proc/self/status, in bytes.
fn status(field: &str) -> usize {
    let s = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let line = s.lines().find(|l| l.starts_with(field)).unwrap_or_else(|| panic!("no {field} in /proc/self/status"));
    line.split_whitespace().nth(1).and_then(|v| v.parse::<usize>().ok()).expect("a number of kB") * 1024
}

/// In the child: one depth, one format; prints what the cache holds, reserves, the plan's figure, and how much
/// the resident memory grew at its peak.
fn child(spec: &str) {
    let (depth, kv) = spec.split_once(':').expect("DEPTH:KV");
    let depth: usize = depth.parse().expect("a depth");
    let dtypes = parse_kv_dtypes(kv, KvDtype::F32).expect("a KV format");
    let cfg = scout_shapes();
    let be = CpuBackend::new();
    let mut cache = KvCache::with_options(&be, &cfg, PAGE, dtypes).unwrap();
    let seq = cache.add_sequence();
    let before = status("VmRSS:");
    // Resets the peak (VmHWM) to the current resident size, so the peak after is this fill's.
    let peak_reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
    cache.reserve_for(&be, 1, depth, 0).unwrap();
    cache.fill_random(&be, seq, depth, 7).unwrap();
    let after = if peak_reset { status("VmHWM:") } else { status("VmRSS:") };
    let planned = KvLayout::with_dtypes(&cfg, PAGE, dtypes).unwrap().bytes(depth);
    println!(
        "kv-memory held={} reserved={} planned={planned} grew={} peak={peak_reset}",
        cache.bytes(),
        cache.reserved_bytes(),
        after.saturating_sub(before)
    );
}

#[test]
fn kv_memory_at_depth() {
    if let Ok(spec) = std::env::var(CHILD) {
        return child(&spec);
    }
    if !cfg!(target_os = "linux") {
        herd_core::not_run("kv memory", None, &"resident memory is read from Linux's /proc");
        return;
    }
    // Formats chosen so 256K stays near 0.6 GiB: f32 everywhere, then bf16 global layers, then q8 ones.
    for (depth, kv) in [(8192, "f32"), (65536, "global=bf16,chunked=f32"), (262144, "global=q8,chunked=bf16")] {
        let out = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "kv_memory_at_depth", "--nocapture", "--test-threads", "1"])
            .env(CHILD, format!("{depth}:{kv}"))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{depth} {kv}: child failed\n{text}\n{}", String::from_utf8_lossy(&out.stderr));
        // The report may follow the harness's "test ... " on its line.
        let line = text
            .lines()
            .find_map(|l| l.find("kv-memory ").map(|i| &l[i..]))
            .unwrap_or_else(|| panic!("no report in\n{text}"));
        let field = |k: &str| -> usize {
            let v = line.split(' ').find_map(|w| w.strip_prefix(&format!("{k}="))).unwrap();
            v.parse().unwrap_or_else(|_| panic!("{k} in {line}"))
        };
        let (held, reserved, planned, grew) = (field("held"), field("reserved"), field("planned"), field("grew"));
        eprintln!("{depth} tokens, KV {kv}: {line}");
        assert_eq!(held, planned, "{depth} {kv}: the cache holds what the plan says");
        assert_eq!(reserved, held, "{depth} {kv}: sized up front, the cache reserves nothing beyond what it holds");
        // Resident growth: every byte held (the pages are touched by kv_store), and no more than those plus the
        // fill's block of rows (2 × 1024 rows × 1024 f32 = 8 MiB, on the host and again as the backend's
        // buffers) and 8 MiB of allocator slack.
        let slack = 2 * (8 << 20) + (8 << 20);
        assert!(grew >= held - held / 50, "{depth} {kv}: resident memory grew {grew} bytes for {held} held");
        assert!(grew <= held + slack, "{depth} {kv}: resident memory grew {grew} bytes, {held} held");
    }
}
