//! Synthetic models for `herd bench --synthetic NAME`: the real text-config shapes of Scout, Maverick or
//! Llama Guard 4 (or a tiny Scout-like model for tests), with only `L` layers and seeded random bf16
//! weights made where they are used (`herd_core::synthetic`), so full-scale speed can be measured without downloading the weights.

use anyhow::{bail, Context, Result};
use herd_core::config::ModelConfig;
use herd_core::quant::{DType, QuantPlan};
use herd_core::synthetic::SyntheticWeights;

/// Names `--synthetic` accepts.
pub const NAMES: &[&str] = &["scout", "maverick", "guard", "tiny"];

/// Layers when `--layers` is not given.
pub const DEFAULT_LAYERS: usize = 2;

/// Layers of the published model (all three have 48).
pub const FULL_LAYERS: usize = 48;

/// Uniform weights in ±SCALE; norms are 1.
const SCALE: f32 = 0.02;
const SEED: u64 = 0x5eed_4e7d;

/// The text_config of `name` in the published (transformers 4.5x) dialect, with `layers` layers.
fn text_config(name: &str, layers: usize) -> Result<String> {
    // Shared by all published models (docs/llama4.md §1.4).
    let common = r#""num_attention_heads":40,"num_key_value_heads":8,"head_dim":128,"hidden_size":5120,
        "vocab_size":202048,"intermediate_size":8192,"num_experts_per_tok":1,"no_rope_layers":[],
        "rope_theta":500000.0,"rms_norm_eps":1e-05,"attn_temperature_tuning":4,"floor_scale":8192,
        "attn_scale":0.1,"hidden_act":"silu","attention_bias":false,"tie_word_embeddings":false,
        "torch_dtype":"bfloat16","bos_token_id":200000,"eos_token_id":[200001,200007,200008],
        "pad_token_id":200018,"model_type":"llama4_text""#;
    let llama3 = r#""rope_scaling":{"rope_type":"llama3","factor":16.0,"low_freq_factor":1.0,
        "high_freq_factor":1.0,"original_max_position_embeddings":8192}"#;
    let specific = match name {
        "scout" => format!(
            r#""intermediate_size_mlp":16384,"num_local_experts":16,"interleave_moe_layer_step":1,
            "attention_chunk_size":8192,"use_qk_norm":true,{llama3},"max_position_embeddings":10485760"#
        ),
        "maverick" => r#""intermediate_size_mlp":16384,"num_local_experts":128,"interleave_moe_layer_step":2,
            "attention_chunk_size":8192,"use_qk_norm":false,"rope_scaling":null,"max_position_embeddings":1048576"#
            .to_owned(),
        // Llama Guard 4: dense (pruned from Scout, keeping the shared expert's width), full attention. Its rope
        // scaling, QK norm and context are taken from Scout (the spec says "read config"): an assumption.
        "guard" => format!(
            r#""intermediate_size_mlp":8192,"num_local_experts":0,"interleave_moe_layer_step":0,"moe_layers":[],
            "attention_chunk_size":null,"use_qk_norm":true,{llama3},"max_position_embeddings":10485760"#
        ),
        "tiny" => {
            // Scout's structure at toy size: all layers MoE, chunked attention, llama3 scaling, QK norm.
            return Ok(format!(
                r#"{{"num_attention_heads":4,"num_key_value_heads":2,"head_dim":16,"hidden_size":64,
                "vocab_size":512,"intermediate_size":128,"intermediate_size_mlp":256,"num_local_experts":4,
                "num_experts_per_tok":1,"interleave_moe_layer_step":1,"no_rope_layers":[],"rope_theta":500000.0,
                "rms_norm_eps":1e-05,"attn_temperature_tuning":4,"floor_scale":8192,"attn_scale":0.1,
                "attention_chunk_size":8192,"use_qk_norm":true,{llama3},"max_position_embeddings":10485760,
                "tie_word_embeddings":false,"torch_dtype":"bfloat16","bos_token_id":1,"eos_token_id":[2],
                "model_type":"llama4_text","num_hidden_layers":{layers}}}"#
            ));
        }
        other => bail!("unknown synthetic model {other:?} (available: {})", NAMES.join(", ")),
    };
    Ok(format!("{{{common},{specific},\"num_hidden_layers\":{layers}}}"))
}

/// The published vision_config (the same in all three models, docs/llama4.md §1.3), and a tiny one of the same
/// geometry (336-px tiles of 14-px patches) for tests.
const VISION: &str = r#"{"hidden_act":"gelu","hidden_size":1408,"image_size":336,"intermediate_size":5632,
    "model_type":"llama4_vision_model","multi_modal_projector_bias":false,"norm_eps":1e-05,"num_attention_heads":16,
    "num_channels":3,"num_hidden_layers":34,"patch_size":14,"pixel_shuffle_ratio":0.5,"projector_input_dim":4096,
    "projector_output_dim":4096,"rope_theta":10000,"vision_output_dim":4096}"#;
const TINY_VISION: &str = r#"{"hidden_act":"gelu","hidden_size":64,"image_size":336,"intermediate_size":256,
    "norm_eps":1e-05,"num_attention_heads":4,"num_channels":3,"num_hidden_layers":2,"patch_size":14,
    "pixel_shuffle_ratio":0.5,"projector_input_dim":64,"projector_output_dim":64,"rope_theta":10000,
    "vision_output_dim":64}"#;

/// config.json text of the synthetic model (the multimodal wrapper, with its vision tower).
pub fn config_json(name: &str, layers: usize) -> Result<String> {
    let text = text_config(name, layers)?;
    let vision = if name == "tiny" { TINY_VISION } else { VISION };
    Ok(format!(
        r#"{{"architectures":["Llama4ForConditionalGeneration"],"model_type":"llama4","tie_word_embeddings":false,"text_config":{text},"vision_config":{vision}}}"#
    ))
}

/// A synthetic model: its config (parsed from the config.json text, like a real one) and the weight source
/// that makes every tensor herd's loader asks for, in `dtype`, on the backend that loads it (on a GPU
/// backend the weights are made on the device; nothing the size of the model exists on the host).
pub fn synthetic(
    name: &str,
    layers: usize,
    dtype: DType,
    plan: Option<QuantPlan>,
) -> Result<(ModelConfig, SyntheticWeights)> {
    let max = herd_core::limits::config::MAX_LAYERS;
    if layers == 0 || layers > max {
        bail!("--layers must be in 1..={max}, got {layers}");
    }
    let json = config_json(name, layers)?;
    let cfg = ModelConfig::from_json_bytes(json.as_bytes()).context("synthetic config.json")?;
    let w = SyntheticWeights::new(dtype, SCALE, SEED);
    Ok((
        cfg,
        match plan {
            Some(p) => w.quantized(p),
            None => w,
        },
    ))
}

/// The weight formats `--quant` names: a float format for every tensor, or a quantization plan (`q4`, `q8`,
/// `q4g32`, ...) for the matrices, the rest in bf16.
pub fn quant_format(name: Option<&str>) -> Result<(DType, Option<QuantPlan>)> {
    match name.unwrap_or("bf16") {
        "bf16" => Ok((DType::BF16, None)),
        "f16" => Ok((DType::F16, None)),
        "f32" => Ok((DType::F32, None)),
        q if q.starts_with('q') => {
            Ok((DType::BF16, Some(QuantPlan::parse(q).map_err(|e| anyhow::anyhow!("--quant {q}: {e}"))?)))
        }
        other => bail!("--quant {other:?}: unknown weight format (bf16, f16, f32, q4, q8, q4g32, ...)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_have_the_published_structure() {
        let parse = |n: &str, l: usize| ModelConfig::from_json_bytes(config_json(n, l).unwrap().as_bytes()).unwrap();
        let s = parse("scout", 4).text;
        assert_eq!((s.hidden_size, s.num_local_experts, s.num_hidden_layers), (5120, 16, 4));
        assert!(s.moe_layers.iter().all(|&m| m) && s.use_qk_norm);
        assert_eq!(s.use_rope, vec![true, true, true, false]);
        // Scout is "17B active": ~16.1B weight parameters per decode token, the embedding table aside.
        let active = parse("scout", 48).text.decode_params() as f64;
        assert!((active - 16.14e9).abs() < 0.05e9, "{active}");
        let m = parse("maverick", 4).text;
        assert_eq!(m.moe_layers, vec![false, true, false, true]);
        assert_eq!(m.num_local_experts, 128);
        assert!(!m.use_qk_norm);
        let g = parse("guard", 2).text;
        assert!(g.moe_layers.iter().all(|&m| !m));
        assert!(config_json("llama", 1).is_err());
    }

    #[test]
    fn tiny_loads_seeded_weights() {
        use herd_core::cpu::CpuBackend;
        use herd_core::model::Llama4;
        use std::sync::Arc;
        let (cfg, w) = synthetic("tiny", 2, DType::BF16, None).unwrap();
        assert_eq!(cfg.text.hidden_size, 64);
        let be = Arc::new(CpuBackend::new());
        let model = Llama4::load(be.clone(), &w, &cfg.text, &mut |_, _| {}).unwrap();
        // 2 layers of the tiny shape, in bf16.
        assert!(w.bytes_made() > 2 * 4 * 64 * 256 * 2);
        let mut cache = model.new_cache().unwrap();
        let s = cache.add_sequence();
        let a = pollster::block_on(model.forward(&mut cache, &[(s, &[1, 2, 3])], &[], herd_core::model::Rows::Last))
            .unwrap();
        let (_, w2) = synthetic("tiny", 2, DType::BF16, None).unwrap();
        let model2 = Llama4::load(be, &w2, &cfg.text, &mut |_, _| {}).unwrap();
        let mut cache2 = model2.new_cache().unwrap();
        let s2 = cache2.add_sequence();
        let b = pollster::block_on(model2.forward(&mut cache2, &[(s2, &[1, 2, 3])], &[], herd_core::model::Rows::Last))
            .unwrap();
        assert_eq!(a, b, "the same seed gives the same model");
        assert!(a.iter().all(|x| x.is_finite()) && a.iter().any(|&x| x != a[0]));
        assert!(quant_format(Some("q5")).is_err() && quant_format(Some("zz")).is_err());
        assert_eq!(quant_format(None).unwrap(), (DType::BF16, None));
        assert_eq!(quant_format(Some("q4g32")).unwrap().1.unwrap().group, 32);
    }
}
