//! Hugging Face `config.json` → [`ModelConfig`]: both dialects (the published checkpoints' `rope_theta` +
//! `rope_scaling`, `torch_dtype`, `no_rope_layers: []`; and transformers 5's `rope_parameters`, `dtype`,
//! explicit `layer_types` / `moe_layers`), both architectures (`Llama4ForConditionalGeneration` with a
//! `text_config`, flat `Llama4ForCausalLM`), every derived field computed as transformers does, and every
//! value validated with an error naming the field.

use std::path::Path;

use serde_json::Value;

use crate::error::{HerdError, Result};

mod fields;
mod vision;

pub(crate) use fields::{as_usize, check_max, Fields};

/// How a RoPE layer scales its frequencies.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    /// Plain RoPE (Maverick).
    Default,
    /// Llama 3 frequency-band scaling (Scout).
    Llama3 { factor: f32, low_freq_factor: f32, high_freq_factor: f32, original_max_position_embeddings: f32 },
}

/// Which keys a layer's queries see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttnKind {
    /// Causal and inside the query's own fixed block of `attention_chunk_size` tokens, aligned at token 0.
    Chunked,
    /// Plain causal over the whole history.
    Full,
}

/// Everything the text model needs, validated.
#[derive(Debug, Clone)]
pub struct TextConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    /// Width of each routed expert and of the shared expert.
    pub intermediate_size: usize,
    /// Width of the dense MLP on non-MoE layers.
    pub intermediate_size_mlp: usize,
    pub num_local_experts: usize,
    pub num_experts_per_tok: usize,
    /// Per layer: MoE block (true) or dense MLP (false).
    pub moe_layers: Vec<bool>,
    /// Per layer: RoPE (true) or NoPE (false).
    pub use_rope: Vec<bool>,
    /// Per layer: chunked or full attention.
    pub layer_types: Vec<AttnKind>,
    pub attention_chunk_size: Option<usize>,
    pub use_qk_norm: bool,
    pub attn_temperature_tuning: bool,
    pub floor_scale: f32,
    pub attn_scale: f32,
    pub rope_theta: f32,
    pub rope_scaling: RopeScaling,
    pub rms_norm_eps: f32,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    pub pad_token_id: Option<u32>,
    /// The dtype the config declares (`dtype` or `torch_dtype`), informational.
    pub dtype: Option<String>,
}

pub use vision::{patches_per_tile, VisionConfig};

/// A whole model config.
#[derive(Debug, Clone)]
pub struct ModelConfig {
    /// `architectures[0]` if present.
    pub architecture: Option<String>,
    /// True when the file is a `Llama4ForConditionalGeneration` config (tensor names under `language_model.`).
    pub multimodal: bool,
    pub text: TextConfig,
    /// The vision tower's config (`vision_config`), when the file has one.
    pub vision: Option<VisionConfig>,
}

impl ModelConfig {
    /// Reads and validates `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let bytes = crate::limits::read_input(path, crate::limits::InputKind::Config)?;
        Self::from_json_bytes(&bytes).map_err(|e| match e {
            HerdError::Config { field, msg } => HerdError::bad_file(path, format!("config field `{field}`: {msg}")),
            other => other,
        })
    }

    /// Parses and validates config.json contents.
    pub fn from_json_bytes(bytes: &[u8]) -> Result<Self> {
        let root: Value =
            serde_json::from_slice(bytes).map_err(|e| HerdError::config("<root>", format!("not valid JSON: {e}")))?;
        let root = root.as_object().ok_or_else(|| HerdError::config("<root>", "not a JSON object"))?;
        let architecture = root
            .get("architectures")
            .and_then(|a| a.as_array())
            .and_then(|a| a.first())
            .and_then(|a| a.as_str())
            .map(str::to_owned);
        let (text_obj, prefix, multimodal) = match root.get("text_config") {
            Some(Value::Object(t)) => (t, "text_config.", true),
            Some(_) => return Err(HerdError::config("text_config", "must be an object")),
            None => (root, "", false),
        };
        let text = parse_text(&Fields { obj: text_obj, root, prefix })?;
        let vision = match root.get("vision_config") {
            Some(Value::Object(v)) => {
                Some(vision::parse(&Fields { obj: v, root, prefix: "vision_config." }, root, &text)?)
            }
            Some(Value::Null) | None => None,
            Some(_) => return Err(HerdError::config("vision_config", "must be an object")),
        };
        Ok(ModelConfig { architecture, multimodal, text, vision })
    }
}

fn parse_rope(f: &Fields) -> Result<(f32, RopeScaling)> {
    // transformers 5: rope_parameters {rope_type, rope_theta, factor, ...}; published: rope_theta + rope_scaling.
    let (params, field) = match f.get("rope_parameters") {
        Some(Value::Object(p)) => (Some(p), "rope_parameters"),
        Some(v) => return Err(HerdError::config(f.name("rope_parameters"), format!("expected an object, got {v}"))),
        None => match f.get("rope_scaling") {
            Some(Value::Object(p)) => (Some(p), "rope_scaling"),
            Some(v) => {
                return Err(HerdError::config(f.name("rope_scaling"), format!("expected an object or null, got {v}")))
            }
            None => (None, "rope_scaling"),
        },
    };
    let sub = params.map(|p| Fields { obj: p, root: f.root, prefix: "" });
    let sub_name = |k: &str| format!("{}{}.{}", f.prefix, field, k);
    let theta = match sub.as_ref().and_then(|s| s.get("rope_theta")) {
        Some(v) => v.as_f64().ok_or_else(|| HerdError::config(sub_name("rope_theta"), "expected a number"))? as f32,
        None => f.f32_or("rope_theta", 500000.0)?,
    };
    if !(theta > 0.0 && theta.is_finite()) {
        return Err(HerdError::config(f.name("rope_theta"), format!("must be positive, got {theta}")));
    }
    let Some(s) = sub else { return Ok((theta, RopeScaling::Default)) };
    let ty = s
        .get("rope_type")
        .or_else(|| s.get("type"))
        .map(|v| {
            v.as_str().map(str::to_owned).ok_or_else(|| HerdError::config(sub_name("rope_type"), "expected a string"))
        })
        .transpose()?
        .unwrap_or_else(|| "default".to_owned());
    let num = |k: &str, default: Option<f32>| -> Result<f32> {
        match s.get(k) {
            Some(v) => v
                .as_f64()
                .map(|x| x as f32)
                .ok_or_else(|| HerdError::config(sub_name(k), format!("expected a number, got {v}"))),
            None => default.ok_or_else(|| HerdError::config(sub_name(k), "missing (required by llama3 RoPE scaling)")),
        }
    };
    match ty.as_str() {
        "default" => Ok((theta, RopeScaling::Default)),
        "llama3" => {
            let max_pos = f.usize_or("max_position_embeddings", 4096 * 32)? as f32;
            let factor = num("factor", None)?;
            let low = num("low_freq_factor", None)?;
            let high = num("high_freq_factor", None)?;
            let orig = num("original_max_position_embeddings", Some(max_pos))?;
            for (k, v) in [
                ("factor", factor),
                ("low_freq_factor", low),
                ("high_freq_factor", high),
                ("original_max_position_embeddings", orig),
            ] {
                if !(v > 0.0 && v.is_finite()) {
                    return Err(HerdError::config(sub_name(k), format!("must be positive, got {v}")));
                }
            }
            if high < low {
                return Err(HerdError::config(
                    sub_name("high_freq_factor"),
                    format!("must be >= low_freq_factor ({low}), got {high}"),
                ));
            }
            Ok((
                theta,
                RopeScaling::Llama3 {
                    factor,
                    low_freq_factor: low,
                    high_freq_factor: high,
                    original_max_position_embeddings: orig,
                },
            ))
        }
        other => Err(HerdError::config(
            sub_name("rope_type"),
            format!("unsupported RoPE type {other:?} (herd knows \"default\" and \"llama3\")"),
        )),
    }
}

fn parse_text(f: &Fields) -> Result<TextConfig> {
    if let Some(mt) = f.get("model_type").and_then(|v| v.as_str()) {
        if !matches!(mt, "llama4_text" | "llama4") {
            return Err(HerdError::config(
                f.name("model_type"),
                format!("expected \"llama4_text\", got {mt:?}: herd runs Llama 4 models"),
            ));
        }
    }
    let vocab_size = f.usize_req("vocab_size")?;
    let hidden_size = f.usize_req("hidden_size")?;
    let num_hidden_layers = f.usize_req("num_hidden_layers")?;
    let num_attention_heads = f.usize_req("num_attention_heads")?;
    let num_key_value_heads = f.usize_or("num_key_value_heads", num_attention_heads)?;
    // transformers: head_dim defaults to 128 when the key is absent, and to D/H when it is null.
    let head_dim = match f.obj.get("head_dim") {
        None => 128,
        Some(Value::Null) => hidden_size.checked_div(num_attention_heads).unwrap_or(0),
        Some(_) => f.usize_req("head_dim")?,
    };
    let intermediate_size = f.usize_or("intermediate_size", 8192)?;
    let intermediate_size_mlp = f.usize_or("intermediate_size_mlp", 16384)?;
    let num_local_experts = f.usize_or("num_local_experts", 16)?;
    let num_experts_per_tok = f.usize_or("num_experts_per_tok", 1)?;
    let max_position_embeddings = f.usize_or("max_position_embeddings", 4096 * 32)?;

    for (k, v) in [
        ("vocab_size", vocab_size),
        ("hidden_size", hidden_size),
        ("num_hidden_layers", num_hidden_layers),
        ("num_attention_heads", num_attention_heads),
        ("num_key_value_heads", num_key_value_heads),
        ("head_dim", head_dim),
        ("max_position_embeddings", max_position_embeddings),
    ] {
        if v == 0 {
            return Err(HerdError::config(f.name(k), "must be at least 1"));
        }
    }
    use crate::limits::config as lim;
    for (k, v, max) in [
        ("vocab_size", vocab_size, lim::MAX_VOCAB),
        ("hidden_size", hidden_size, lim::MAX_HIDDEN),
        ("num_hidden_layers", num_hidden_layers, lim::MAX_LAYERS),
        ("num_attention_heads", num_attention_heads, lim::MAX_HEADS),
        ("num_key_value_heads", num_key_value_heads, lim::MAX_HEADS),
        ("head_dim", head_dim, lim::MAX_HEAD_DIM),
        ("intermediate_size", intermediate_size, lim::MAX_INTERMEDIATE),
        ("intermediate_size_mlp", intermediate_size_mlp, lim::MAX_INTERMEDIATE),
        ("num_local_experts", num_local_experts, lim::MAX_EXPERTS),
        ("num_experts_per_tok", num_experts_per_tok, lim::MAX_EXPERTS),
        ("max_position_embeddings", max_position_embeddings, lim::MAX_POSITIONS),
    ] {
        check_max(f, k, v, max)?;
    }
    if num_attention_heads % num_key_value_heads != 0 {
        return Err(HerdError::config(
            f.name("num_key_value_heads"),
            format!("{num_key_value_heads} does not divide num_attention_heads {num_attention_heads}"),
        ));
    }
    if head_dim % 2 != 0 {
        return Err(HerdError::config(f.name("head_dim"), format!("must be even for RoPE, got {head_dim}")));
    }

    // MoE layers: explicit list wins; else every `step`-th layer starting at step-1.
    let moe_list: Vec<usize> = match f.get("moe_layers") {
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| {
                as_usize(x)
                    .ok_or_else(|| HerdError::config(f.name("moe_layers"), format!("expected layer indices, got {x}")))
            })
            .collect::<Result<_>>()?,
        Some(v) => return Err(HerdError::config(f.name("moe_layers"), format!("expected a list, got {v}"))),
        None => {
            let step = f.usize_or("interleave_moe_layer_step", 1)?;
            if step == 0 {
                return Err(HerdError::config(
                    f.name("interleave_moe_layer_step"),
                    "must be at least 1 when moe_layers is not given",
                ));
            }
            (step - 1..num_hidden_layers).step_by(step).collect()
        }
    };
    let mut moe_layers = vec![false; num_hidden_layers];
    for &i in &moe_list {
        if i >= num_hidden_layers {
            return Err(HerdError::config(
                f.name("moe_layers"),
                format!("layer {i} is out of range (num_hidden_layers {num_hidden_layers})"),
            ));
        }
        moe_layers[i] = true;
    }
    if !moe_list.is_empty() {
        if num_local_experts == 0 {
            return Err(HerdError::config(f.name("num_local_experts"), "must be at least 1 when there are MoE layers"));
        }
        if num_experts_per_tok == 0 || num_experts_per_tok > num_local_experts {
            return Err(HerdError::config(
                f.name("num_experts_per_tok"),
                format!("must be in 1..={num_local_experts} (num_local_experts), got {num_experts_per_tok}"),
            ));
        }
    }

    // no_rope_layers: 1 = RoPE, 0 = NoPE; null or [] means the interval default.
    let use_rope: Vec<bool> = match f.get("no_rope_layers") {
        Some(Value::Array(a)) if !a.is_empty() => {
            if a.len() != num_hidden_layers {
                return Err(HerdError::config(
                    f.name("no_rope_layers"),
                    format!("has {} entries for {num_hidden_layers} layers", a.len()),
                ));
            }
            a.iter()
                .map(|x| match as_usize(x) {
                    Some(0) => Ok(false),
                    Some(1) => Ok(true),
                    _ => match x.as_bool() {
                        Some(b) => Ok(b),
                        None => {
                            Err(HerdError::config(f.name("no_rope_layers"), format!("entries must be 0 or 1, got {x}")))
                        }
                    },
                })
                .collect::<Result<_>>()?
        }
        Some(Value::Array(_)) | None => {
            let interval = f.usize_or("no_rope_layer_interval", 4)?;
            if interval == 0 {
                return Err(HerdError::config(f.name("no_rope_layer_interval"), "must be at least 1"));
            }
            (0..num_hidden_layers).map(|i| (i + 1) % interval != 0).collect()
        }
        Some(v) => return Err(HerdError::config(f.name("no_rope_layers"), format!("expected a list, got {v}"))),
    };

    let attention_chunk_size = f.usize_opt("attention_chunk_size")?;
    if let Some(c) = attention_chunk_size {
        check_max(f, "attention_chunk_size", c, lim::MAX_POSITIONS)?;
    }
    if attention_chunk_size == Some(0) {
        return Err(HerdError::config(f.name("attention_chunk_size"), "must be at least 1 (or null)"));
    }
    let layer_types: Vec<AttnKind> = match f.get("layer_types") {
        Some(Value::Array(a)) => {
            if a.len() != num_hidden_layers {
                return Err(HerdError::config(
                    f.name("layer_types"),
                    format!("has {} entries for {num_hidden_layers} layers", a.len()),
                ));
            }
            a.iter()
                .map(|x| match x.as_str() {
                    Some("chunked_attention") => {
                        if attention_chunk_size.is_none() {
                            Err(HerdError::config(
                                f.name("layer_types"),
                                "\"chunked_attention\" needs attention_chunk_size",
                            ))
                        } else {
                            Ok(AttnKind::Chunked)
                        }
                    }
                    Some("full_attention") => Ok(AttnKind::Full),
                    _ => Err(HerdError::config(f.name("layer_types"), format!("unknown layer type {x}"))),
                })
                .collect::<Result<_>>()?
        }
        Some(v) => return Err(HerdError::config(f.name("layer_types"), format!("expected a list, got {v}"))),
        None => use_rope
            .iter()
            .map(|&r| if r && attention_chunk_size.is_some() { AttnKind::Chunked } else { AttnKind::Full })
            .collect(),
    };

    let (rope_theta, rope_scaling) = parse_rope(f)?;
    let rms_norm_eps = f.f32_or("rms_norm_eps", 1e-5)?;
    if !(rms_norm_eps > 0.0 && rms_norm_eps.is_finite()) {
        return Err(HerdError::config(f.name("rms_norm_eps"), format!("must be positive, got {rms_norm_eps}")));
    }
    let floor_scale = f.f32_or("floor_scale", 8192.0)?;
    let attn_temperature_tuning = f.bool_or("attn_temperature_tuning", true)?;
    if attn_temperature_tuning && !(floor_scale > 0.0 && floor_scale.is_finite()) {
        return Err(HerdError::config(f.name("floor_scale"), format!("must be positive, got {floor_scale}")));
    }
    let attn_scale = f.f32_or("attn_scale", 0.1)?;
    let dtype = f
        .get("dtype")
        .or_else(|| f.get("torch_dtype"))
        .or_else(|| f.root.get("dtype").filter(|v| !v.is_null()))
        .or_else(|| f.root.get("torch_dtype").filter(|v| !v.is_null()))
        .and_then(|v| v.as_str())
        .map(str::to_owned);
    let tie_word_embeddings = match f.root.get("tie_word_embeddings").or_else(|| f.get("tie_word_embeddings")) {
        Some(Value::Bool(b)) => *b,
        _ => false,
    };
    let bos_token_id = f.ids("bos_token_id")?.first().copied();
    let pad_token_id = f.ids("pad_token_id")?.first().copied();
    let eos_token_ids = f.ids("eos_token_id")?;
    for (k, ids) in
        [("bos_token_id", bos_token_id.into_iter().collect::<Vec<_>>()), ("eos_token_id", eos_token_ids.clone())]
    {
        if let Some(bad) = ids.iter().find(|&&i| i as usize >= vocab_size) {
            return Err(HerdError::config(f.name(k), format!("id {bad} is outside the vocabulary ({vocab_size})")));
        }
    }

    Ok(TextConfig {
        vocab_size,
        hidden_size,
        num_hidden_layers,
        num_attention_heads,
        num_key_value_heads,
        head_dim,
        intermediate_size,
        intermediate_size_mlp,
        num_local_experts,
        num_experts_per_tok,
        moe_layers,
        use_rope,
        layer_types,
        attention_chunk_size,
        use_qk_norm: f.bool_or("use_qk_norm", true)?,
        attn_temperature_tuning,
        floor_scale,
        attn_scale,
        rope_theta,
        rope_scaling,
        rms_norm_eps,
        max_position_embeddings,
        tie_word_embeddings,
        bos_token_id,
        eos_token_ids,
        pad_token_id,
        dtype,
    })
}

impl TextConfig {
    /// Weight parameters one decode token reads: every layer's attention, norms, router, shared expert (or
    /// dense MLP) and `num_experts_per_tok` routed experts, the final norm and the lm_head (and one
    /// embedding row). Times the bytes per parameter, this is the memory traffic that bounds decode speed.
    pub fn decode_params(&self) -> usize {
        let (d, h, kvh, hd) = (self.hidden_size, self.num_attention_heads, self.num_key_value_heads, self.head_dim);
        let attn = 2 * d * h * hd + 2 * d * kvh * hd + 2 * d;
        let per_layer: usize = (0..self.num_hidden_layers)
            .map(|i| {
                let ffn = if self.moe_layers.get(i).copied().unwrap_or(false) {
                    let f = self.intermediate_size;
                    self.num_local_experts * d + 3 * d * f * (1 + self.num_experts_per_tok)
                } else {
                    3 * d * self.intermediate_size_mlp
                };
                attn + ffn
            })
            .sum();
        per_layer + d + self.vocab_size * d + d
    }

    /// Every weight parameter of the text model (all experts, the embedding and the lm_head).
    pub fn total_params(&self) -> usize {
        let (d, h, kvh, hd) = (self.hidden_size, self.num_attention_heads, self.num_key_value_heads, self.head_dim);
        let attn = 2 * d * h * hd + 2 * d * kvh * hd + 2 * d;
        let layers: usize = (0..self.num_hidden_layers)
            .map(|i| {
                attn + if self.moe_layers.get(i).copied().unwrap_or(false) {
                    let f = self.intermediate_size;
                    self.num_local_experts * d + 3 * d * f * (1 + self.num_local_experts)
                } else {
                    3 * d * self.intermediate_size_mlp
                }
            })
            .sum();
        let heads = if self.tie_word_embeddings { 1 } else { 2 };
        layers + d + heads * self.vocab_size * d
    }

    /// RoPE inverse frequencies θ_j (f32, length head_dim/2), with the layer's scaling applied, as
    /// transformers computes them.
    pub fn rope_inv_freq(&self) -> Vec<f32> {
        let d = self.head_dim;
        let base: Vec<f32> = (0..d / 2)
            .map(|j| {
                // transformers: 1 / (theta ** (arange(0, d, 2).float() / d)), in f32.
                let e = (2 * j) as f32 / d as f32;
                1.0 / self.rope_theta.powf(e)
            })
            .collect();
        match self.rope_scaling {
            RopeScaling::Default => base,
            RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings } => {
                let low_wl = original_max_position_embeddings / low_freq_factor;
                let high_wl = original_max_position_embeddings / high_freq_factor;
                base.into_iter()
                    .map(|f| {
                        let wl = 2.0 * std::f32::consts::PI / f;
                        if wl < high_wl {
                            f
                        } else if wl > low_wl {
                            f / factor
                        } else if high_freq_factor == low_freq_factor {
                            // Empty band (Scout's 1,1): transformers computes NaN here and discards it.
                            f
                        } else {
                            let s = (original_max_position_embeddings / wl - low_freq_factor)
                                / (high_freq_factor - low_freq_factor);
                            (1.0 - s) * f / factor + s * f
                        }
                    })
                    .collect()
            }
        }
    }

    /// Number of MoE layers.
    pub fn num_moe_layers(&self) -> usize {
        self.moe_layers.iter().filter(|&&m| m).count()
    }
}

#[cfg(test)]
mod tests;
