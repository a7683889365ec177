//! `herd quantize` end to end: the written directory loads like any checkpoint and computes exactly what
//! quantizing while loading computes (the same bytes), `--keep-bf16` keeps what it names, and bad
//! requests or a damaged quantized file give one clear error line.

mod common;

use std::sync::Arc;

use common::*;
use herd_core::checkpoint::Checkpoint;
use herd_core::config::ModelConfig;
use herd_core::cpu::CpuBackend;
use herd_core::generate::score_rows;
use herd_core::model::Llama4;
use herd_core::quant::{DType, QuantPlan};
use herd_core::source::QuantizeOnLoad;

/// Logits of the fixture's reference ids through `herd logits` on `model`.
fn cli_logits(model: &Path, sc: &Scratch) -> Vec<f32> {
    let r = Reference::load("scout");
    let (input, output) = (sc.path("ids.safetensors"), sc.path("out.safetensors"));
    write_ids(&input, &r.input_ids, Dtype::I64);
    ok("logits", herd(["logits", "--model", s(model), "--input", s(&input), "--output", s(&output)]));
    let (_, _, data) = read_tensor(&output, "logits");
    data.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
}

#[test]
fn quantized_directory_loads_and_matches_quantizing_on_load() {
    let sc = Scratch::new("quantize");
    let out = sc.path("scout-q4");
    let (_, err) = ok(
        "quantize",
        herd(["quantize", "--model", s(&fixture_dir("scout")), "--out", s(&out), "--format", "q4", "--group", "16"]),
    );
    assert!(err.contains("as q4g16"), "{err}");
    for f in ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"] {
        assert!(out.join(f).exists(), "{f} missing");
    }
    let cfg: Value = serde_json::from_slice(&std::fs::read(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["quantization_config"]["format"], "q4g16", "{cfg}");

    // The same model, quantized in memory while it loads: identical logits.
    let dir = fixture_dir("scout");
    let mcfg = ModelConfig::from_file(&dir.join("config.json")).unwrap();
    let ck = Checkpoint::open_dir(&dir).unwrap();
    let src = QuantizeOnLoad { ck: &ck, plan: QuantPlan::parse("q4g16").unwrap() };
    let m = Llama4::load(Arc::new(CpuBackend::new()), &src, &mcfg.text, &mut |_, _| {}).unwrap();
    let r = Reference::load("scout");
    let want: Vec<f32> = pollster::block_on(score_rows(&m, &r.input_ids, &[], false)).unwrap().concat();
    assert_eq!(cli_logits(&out, &sc), want, "the written model differs from quantizing on load");

    // Written tensors: matrices quantized, norms and routers as stored.
    let q = Checkpoint::open_dir(&out).unwrap();
    assert!(matches!(q.get("model.layers.0.self_attn.q_proj.weight").unwrap().dtype, DType::Q4(_)));
    assert!(matches!(q.get("model.layers.0.feed_forward.experts.gate_up_proj").unwrap().dtype, DType::Q4(_)));
    assert_eq!(q.get("model.layers.0.input_layernorm.weight").unwrap().dtype, DType::F32);
    assert_eq!(q.get("model.layers.0.feed_forward.router.weight").unwrap().dtype, DType::F32);

    // --keep-bf16 attention: the attention projections keep their format.
    let kept = sc.path("scout-q8-keep");
    ok(
        "quantize --keep-bf16",
        herd([
            "quantize",
            "--model",
            s(&fixture_dir("scout")),
            "--out",
            s(&kept),
            "--format",
            "q8g16",
            "--keep-bf16",
            "attention,lm_head",
        ]),
    );
    let k = Checkpoint::open_dir(&kept).unwrap();
    assert_eq!(k.get("model.layers.0.self_attn.q_proj.weight").unwrap().dtype, DType::F32);
    assert_eq!(k.get("lm_head.weight").unwrap().dtype, DType::F32);
    assert!(matches!(k.get("model.layers.0.feed_forward.shared_expert.up_proj.weight").unwrap().dtype, DType::Q8(_)));
    let logits = cli_logits(&kept, &sc);
    assert!(logits.iter().all(|x| x.is_finite()));
}

#[test]
fn bad_quantize_requests_fail_clearly() {
    let sc = Scratch::new("quantize-bad");
    let model = fixture_dir("scout");
    let out = sc.path("out");
    fails("format q3", herd(["quantize", "--model", s(&model), "--out", s(&out), "--format", "q3"]), &["q3"]);
    fails(
        "group 12",
        herd(["quantize", "--model", s(&model), "--out", s(&out), "--format", "q4", "--group", "12"]),
        &["group size 12"],
    );
    fails(
        "out is the model",
        herd(["quantize", "--model", s(&model), "--out", s(&model), "--format", "q4"]),
        &["model directory itself"],
    );
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("keep.txt"), "mine").unwrap();
    fails(
        "out not empty",
        herd(["quantize", "--model", s(&model), "--out", s(&out), "--format", "q4"]),
        &["not empty"],
    );
    assert_eq!(std::fs::read_to_string(out.join("keep.txt")).unwrap(), "mine", "existing data untouched");
    fails(
        "missing model",
        herd(["quantize", "--model", s(&sc.path("nope")), "--out", s(&sc.path("o2")), "--format", "q4"]),
        &["nope"],
    );
    assert!(!sc.path("o2").exists());

    // A quantized file cut short: loading names the file and says so, in one line.
    let q = sc.path("q");
    ok("quantize", herd(["quantize", "--model", s(&model), "--out", s(&q), "--format", "q4", "--group", "16"]));
    let f = q.join("model.safetensors");
    let bytes = std::fs::read(&f).unwrap();
    std::fs::write(&f, &bytes[..bytes.len() - 1000]).unwrap();
    let r = Reference::load("scout");
    let input = sc.path("ids.safetensors");
    write_ids(&input, &r.input_ids, Dtype::I64);
    fails(
        "truncated quantized model",
        herd(["logits", "--model", s(&q), "--input", s(&input), "--output", s(&sc.path("o.safetensors"))]),
        &["model.safetensors"],
    );
    // A description that does not match the bytes.
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = String::from_utf8(bytes[8..8 + n].to_vec()).unwrap();
    // The q_proj description ([64, 32]: 32 divides its rows too, so the size check is what fails).
    let key = "\"herd.quant.model.layers.0.self_attn.q_proj.weight\":\"q4;group=16";
    assert!(header.contains(key), "{header}");
    let bad = header.replacen(key, &key.replace("group=16", "group=32"), 1);
    assert_eq!(bad.len(), header.len());
    let mut b2 = bytes.clone();
    b2[8..8 + n].copy_from_slice(bad.as_bytes());
    std::fs::write(&f, &b2).unwrap();
    fails(
        "wrong quantization description",
        herd(["logits", "--model", s(&q), "--input", s(&input), "--output", s(&sc.path("o.safetensors"))]),
        &["expected"],
    );
}

/// `herd inspect` on a compressed-tensors checkpoint counts its packed Linears as int4/int8 weights: the
/// same parameter count as the dequantized f32 copy of it.
#[test]
fn inspect_counts_compressed_tensors_linears() {
    let (ct, _) = ok("inspect scout_ct", herd(["inspect", "--model", s(&fixture_dir("scout_ct"))]));
    let (deq, _) = ok("inspect scout_ct_dequant", herd(["inspect", "--model", s(&fixture_dir("scout_ct_dequant"))]));
    let params = |out: &str| out.lines().find(|l| l.starts_with("parameters:")).unwrap_or("").to_owned();
    assert_eq!(params(&ct), params(&deq), "parameter counts differ:\n{ct}\n{deq}");
    assert!(ct.contains("int4 (compressed-tensors)") && ct.contains("int8 (compressed-tensors)"), "{ct}");
}
