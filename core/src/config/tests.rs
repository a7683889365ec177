//! config.json parsing against the published configs and the checks on bad values.

use super::*;

fn parse(s: &str) -> Result<ModelConfig> {
    ModelConfig::from_json_bytes(s.as_bytes())
}

#[test]
fn published_scout_dialect() {
    let c = parse(
        r#"{"architectures":["Llama4ForConditionalGeneration"],"text_config":{
        "vocab_size":202048,"hidden_size":5120,"num_hidden_layers":48,"num_attention_heads":40,
        "num_key_value_heads":8,"head_dim":128,"intermediate_size":8192,"intermediate_size_mlp":16384,
        "num_local_experts":16,"num_experts_per_tok":1,"interleave_moe_layer_step":1,"no_rope_layers":[],
        "attention_chunk_size":8192,"use_qk_norm":true,"attn_temperature_tuning":4,"floor_scale":8192,
        "attn_scale":0.1,"rope_theta":500000.0,"rope_scaling":{"rope_type":"llama3","factor":16.0,
        "low_freq_factor":1.0,"high_freq_factor":1.0,"original_max_position_embeddings":8192},
        "torch_dtype":"bfloat16","bos_token_id":200000,"eos_token_id":[200001,200007,200008],"pad_token_id":200018,
        "max_position_embeddings":10485760}}"#,
    )
    .unwrap();
    let t = &c.text;
    assert!(c.multimodal);
    assert!(t.moe_layers.iter().all(|&m| m));
    let nope: Vec<usize> = (0..48).filter(|&i| !t.use_rope[i]).collect();
    assert_eq!(nope, (0..12).map(|k| 4 * k + 3).collect::<Vec<_>>());
    for i in 0..48 {
        assert_eq!(t.layer_types[i] == AttnKind::Chunked, t.use_rope[i]);
    }
    assert!(t.attn_temperature_tuning);
    assert_eq!(t.eos_token_ids, vec![200001, 200007, 200008]);
    assert_eq!(t.dtype.as_deref(), Some("bfloat16"));
    // Spec check values for Scout's llama3 scaling.
    let f = t.rope_inv_freq();
    assert_eq!(f[0], 1.0);
    assert!((f[1] - 0.8146172).abs() < 1e-6);
    assert!((f[34] - 9.3847385e-4).abs() < 1e-9);
    assert!((f[35] - 4.778106e-5).abs() / 4.778106e-5 < 1e-5);
    assert!((f[63] - 1.534463e-7).abs() / 1.534463e-7 < 1e-5);
}

#[test]
fn maverick_alternates_dense_and_moe() {
    let c = parse(
        r#"{"vocab_size":100,"hidden_size":8,"num_hidden_layers":6,"num_attention_heads":2,
        "head_dim":4,"interleave_moe_layer_step":2,"rope_scaling":null,"use_qk_norm":false}"#,
    )
    .unwrap();
    assert_eq!(c.text.moe_layers, vec![false, true, false, true, false, true]);
    assert_eq!(c.text.rope_scaling, RopeScaling::Default);
    assert_eq!(c.text.num_key_value_heads, 2);
    assert!(!c.multimodal);
}

#[test]
fn guard_has_no_chunking() {
    let c = parse(
        r#"{"vocab_size":100,"hidden_size":8,"num_hidden_layers":4,"num_attention_heads":2,
        "head_dim":4,"moe_layers":[],"attention_chunk_size":null,"interleave_moe_layer_step":0}"#,
    )
    .unwrap();
    assert!(c.text.layer_types.iter().all(|&k| k == AttnKind::Full));
    assert!(c.text.moe_layers.iter().all(|&m| !m));
    assert_eq!(c.text.use_rope, vec![true, true, true, false]);
}

#[test]
fn transformers5_dialect() {
    let c = parse(
        r#"{"vocab_size":100,"hidden_size":8,"num_hidden_layers":2,"num_attention_heads":2,
        "head_dim":4,"moe_layers":[1],"no_rope_layers":[1,0],"attention_chunk_size":4,
        "layer_types":["chunked_attention","full_attention"],"dtype":"float32",
        "rope_parameters":{"rope_type":"llama3","rope_theta":10000.0,"factor":8.0,"low_freq_factor":1.0,
        "high_freq_factor":4.0,"original_max_position_embeddings":64}}"#,
    )
    .unwrap();
    let t = c.text;
    assert_eq!(t.moe_layers, vec![false, true]);
    assert_eq!(t.layer_types, vec![AttnKind::Chunked, AttnKind::Full]);
    assert_eq!(t.rope_theta, 10000.0);
    assert!(matches!(t.rope_scaling, RopeScaling::Llama3 { factor, .. } if factor == 8.0));
}

#[test]
fn errors_name_the_field() {
    let cases = [
        (r#"{"hidden_size":8,"num_hidden_layers":2,"num_attention_heads":2}"#, "vocab_size"),
        (
            r#"{"vocab_size":10,"hidden_size":8,"num_hidden_layers":2,"num_attention_heads":3,"num_key_value_heads":2}"#,
            "num_key_value_heads",
        ),
        (
            r#"{"vocab_size":10,"hidden_size":8,"num_hidden_layers":2,"num_attention_heads":2,"moe_layers":[5]}"#,
            "moe_layers",
        ),
        (r#"{"vocab_size":10,"hidden_size":8,"num_hidden_layers":2,"num_attention_heads":2,"head_dim":3}"#, "head_dim"),
        (r#"{"vocab_size":10,"hidden_size":"big","num_hidden_layers":2,"num_attention_heads":2}"#, "hidden_size"),
        (
            r#"{"vocab_size":10,"hidden_size":8,"num_hidden_layers":2,"num_attention_heads":2,"rope_scaling":{"rope_type":"yarn"}}"#,
            "rope_type",
        ),
        (
            r#"{"vocab_size":10,"hidden_size":8,"num_hidden_layers":2,"num_attention_heads":2,"attention_chunk_size":0}"#,
            "attention_chunk_size",
        ),
        (
            r#"{"vocab_size":10,"hidden_size":8,"num_hidden_layers":2,"num_attention_heads":2,"num_experts_per_tok":9,"num_local_experts":4}"#,
            "num_experts_per_tok",
        ),
        (
            r#"{"vocab_size":10,"hidden_size":8,"num_hidden_layers":2,"num_attention_heads":2,"no_rope_layers":[1]}"#,
            "no_rope_layers",
        ),
        (
            r#"{"text_config":{"model_type":"llama","vocab_size":10,"hidden_size":8,"num_hidden_layers":2,"num_attention_heads":2}}"#,
            "text_config.model_type",
        ),
        (r#"[1,2]"#, "<root>"),
        (r#"{"vocab_size":10,"#, "<root>"),
    ];
    for (json, field) in cases {
        let e = parse(json).unwrap_err().to_string();
        assert!(e.contains(field), "{json} → {e}");
        assert!(!e.contains('\n'));
    }
}
