//! `vision_config`: the vision tower's settings, parsed and validated with the rest of config.json
//! (`ModelConfig::vision`).

use serde_json::{Map, Value};

use super::{as_usize, Fields, TextConfig};
use crate::error::{HerdError, Result};

/// `vision_config` (docs/llama4.md §1.3) and the image token ids at the top level. Absent fields take
/// transformers' `Llama4VisionConfig` defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct VisionConfig {
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub num_channels: usize,
    pub image_size: usize,
    pub patch_size: usize,
    pub norm_eps: f32,
    pub pixel_shuffle_ratio: f32,
    pub projector_input_dim: usize,
    pub projector_output_dim: usize,
    pub vision_output_dim: usize,
    pub rope_theta: f32,
    pub multi_modal_projector_bias: bool,
    /// `image_token_index`: the `<|patch|>` id whose embeddings the image features replace.
    pub image_token_id: Option<u32>,
    /// `boi_token_index` / `eoi_token_index`: `<|image_start|>` and `<|image_end|>`.
    pub boi_token_id: Option<u32>,
    pub eoi_token_id: Option<u32>,
}

impl VisionConfig {
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// Patches per side of a tile (24 for Llama 4: 336 / 14).
    pub fn patches_per_side(&self) -> usize {
        self.image_size / self.patch_size
    }

    /// `<|patch|>` tokens per tile after the pixel shuffle (144 for Llama 4).
    pub fn tokens_per_tile(&self) -> usize {
        patches_per_tile(self.image_size as u32, self.patch_size as u32, self.pixel_shuffle_ratio as f64)
            .expect("validated when parsed")
    }
}

/// Parses and validates `vision_config` (`f`), with the image token ids from the top level (`root`).
pub(crate) fn parse(f: &Fields, root: &Map<String, Value>, text: &TextConfig) -> Result<VisionConfig> {
    let n = |k: &str, d: usize| f.usize_or(k, d);
    let top = |k: &str| -> Result<Option<u32>> {
        match root.get(k).filter(|v| !v.is_null()) {
            None => Ok(None),
            Some(v) => as_usize(v).filter(|&id| id < text.vocab_size).map(|id| Some(id as u32)).ok_or_else(|| {
                HerdError::config(k, format!("expected a token id below vocab_size {}, got {v}", text.vocab_size))
            }),
        }
    };
    let c = VisionConfig {
        hidden_size: n("hidden_size", 768)?,
        num_hidden_layers: n("num_hidden_layers", 34)?,
        num_attention_heads: n("num_attention_heads", 16)?,
        intermediate_size: n("intermediate_size", 5632)?,
        num_channels: n("num_channels", 3)?,
        image_size: n("image_size", 448)?,
        patch_size: n("patch_size", 14)?,
        norm_eps: f.f32_or("norm_eps", 1e-5)?,
        pixel_shuffle_ratio: f.f32_or("pixel_shuffle_ratio", 0.5)?,
        projector_input_dim: n("projector_input_dim", 4096)?,
        projector_output_dim: n("projector_output_dim", 4096)?,
        vision_output_dim: n("vision_output_dim", 7680)?,
        rope_theta: match f.get("rope_parameters").and_then(|p| p.get("rope_theta")) {
            Some(v) => v
                .as_f64()
                .ok_or_else(|| HerdError::config(f.name("rope_parameters.rope_theta"), "expected a number"))?
                as f32,
            None => f.f32_or("rope_theta", 10000.0)?,
        },
        multi_modal_projector_bias: f.bool_or("multi_modal_projector_bias", false)?,
        image_token_id: top("image_token_index")?,
        boi_token_id: top("boi_token_index")?,
        eoi_token_id: top("eoi_token_index")?,
    };
    for (k, v) in [
        ("hidden_size", c.hidden_size),
        ("num_hidden_layers", c.num_hidden_layers),
        ("num_attention_heads", c.num_attention_heads),
        ("intermediate_size", c.intermediate_size),
        ("image_size", c.image_size),
        ("patch_size", c.patch_size),
        ("projector_input_dim", c.projector_input_dim),
        ("projector_output_dim", c.projector_output_dim),
        ("vision_output_dim", c.vision_output_dim),
    ] {
        if v == 0 {
            return Err(HerdError::config(f.name(k), "must be positive"));
        }
    }
    use crate::limits::config as lim;
    for (k, v, max) in [
        ("hidden_size", c.hidden_size, lim::MAX_HIDDEN),
        ("num_hidden_layers", c.num_hidden_layers, lim::MAX_LAYERS),
        ("num_attention_heads", c.num_attention_heads, lim::MAX_HEADS),
        ("intermediate_size", c.intermediate_size, lim::MAX_INTERMEDIATE),
        ("image_size", c.image_size, lim::MAX_IMAGE_SIZE),
        ("patch_size", c.patch_size, lim::MAX_IMAGE_SIZE),
        ("projector_input_dim", c.projector_input_dim, lim::MAX_HIDDEN),
        ("projector_output_dim", c.projector_output_dim, lim::MAX_HIDDEN),
        ("vision_output_dim", c.vision_output_dim, lim::MAX_INTERMEDIATE),
    ] {
        super::check_max(f, k, v, max)?;
    }
    if c.num_channels != 3 {
        return Err(HerdError::config(f.name("num_channels"), format!("expected 3 (RGB), got {}", c.num_channels)));
    }
    if let Some(act) = f.get("hidden_act") {
        if act.as_str() != Some("gelu") {
            return Err(HerdError::config(f.name("hidden_act"), format!("expected \"gelu\", got {act}")));
        }
    }
    if !c.hidden_size.is_multiple_of(c.num_attention_heads) {
        return Err(HerdError::config(
            f.name("num_attention_heads"),
            format!("{} does not divide hidden_size {}", c.num_attention_heads, c.hidden_size),
        ));
    }
    // The 2-D RoPE gives half of each head's pairs to the column and half to the row.
    if !c.head_dim().is_multiple_of(4) {
        return Err(HerdError::config(
            f.name("num_attention_heads"),
            format!("head size {} is not a multiple of 4 (the 2-D RoPE splits its pairs in two)", c.head_dim()),
        ));
    }
    patches_per_tile(c.image_size as u32, c.patch_size as u32, c.pixel_shuffle_ratio as f64).map_err(|e| match e {
        HerdError::Config { field, msg } => {
            HerdError::config(format!("vision_config.{}", field.trim_start_matches("vision_config.")), msg)
        }
        other => other,
    })?;
    if !(c.norm_eps > 0.0 && c.norm_eps.is_finite()) {
        return Err(HerdError::config(f.name("norm_eps"), format!("must be positive, got {}", c.norm_eps)));
    }
    if !(c.rope_theta > 0.0 && c.rope_theta.is_finite()) {
        return Err(HerdError::config(f.name("rope_theta"), format!("must be positive, got {}", c.rope_theta)));
    }
    Ok(c)
}

/// `<|patch|>` tokens per tile: the encoder's patches per tile after the pixel shuffle,
/// (image_size / patch_size)² · pixel_shuffle_ratio² (144 for Llama 4: 24² / 4).
pub fn patches_per_tile(image_size: u32, patch_size: u32, pixel_shuffle_ratio: f64) -> Result<usize> {
    if patch_size == 0 || !image_size.is_multiple_of(patch_size) {
        return Err(HerdError::Config {
            field: "vision_config.patch_size".into(),
            msg: format!("image_size {image_size} is not a multiple of patch_size {patch_size}"),
        });
    }
    let side = (image_size / patch_size) as f64;
    let n = side * side * pixel_shuffle_ratio * pixel_shuffle_ratio;
    if !(n >= 1.0 && n.fract() == 0.0) {
        return Err(HerdError::Config {
            field: "vision_config.pixel_shuffle_ratio".into(),
            msg: format!("{pixel_shuffle_ratio} does not divide the {side}x{side} patch grid"),
        });
    }
    Ok(n as usize)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::ModelConfig;
    use crate::error::Result;

    fn parse(s: &str) -> Result<ModelConfig> {
        ModelConfig::from_json_bytes(s.as_bytes())
    }

    /// Scout's published top level and vision_config (docs/llama4.md §1.3), with a minimal text config.
    const SCOUT_VISION: &str = r#"{"architectures":["Llama4ForConditionalGeneration"],"boi_token_index":200080,
        "eoi_token_index":200081,"image_token_index":200092,"text_config":{"vocab_size":202048,"hidden_size":64,
        "num_hidden_layers":1,"num_attention_heads":4,"head_dim":16},"vision_config":{"attention_dropout":0.0,
        "hidden_act":"gelu","hidden_size":1408,"image_size":336,"initializer_range":0.02,"intermediate_size":5632,
        "model_type":"llama4_vision_model","multi_modal_projector_bias":false,"norm_eps":1e-05,
        "num_attention_heads":16,"num_channels":3,"num_hidden_layers":34,"patch_size":14,"pixel_shuffle_ratio":0.5,
        "projector_dropout":0.0,"projector_input_dim":4096,"projector_output_dim":4096,"rope_theta":10000,
        "vision_feature_layer":-1,"vision_feature_select_strategy":"default","vision_output_dim":4096}}"#;

    #[test]
    fn scout_vision_config() {
        let v = parse(SCOUT_VISION).unwrap().vision.expect("vision_config");
        assert_eq!((v.hidden_size, v.num_hidden_layers, v.head_dim(), v.intermediate_size), (1408, 34, 88, 5632));
        assert_eq!((v.patches_per_side(), v.tokens_per_tile()), (24, 144));
        assert_eq!((v.projector_input_dim, v.projector_output_dim, v.vision_output_dim), (4096, 4096, 4096));
        assert_eq!((v.rope_theta, v.norm_eps, v.pixel_shuffle_ratio), (10000.0, 1e-5, 0.5));
        assert_eq!((v.image_token_id, v.boi_token_id, v.eoi_token_id), (Some(200092), Some(200080), Some(200081)));
        assert!(!v.multi_modal_projector_bias);
    }

    /// The multimodal fixtures made by transformers carry a (tiny) vision_config; the flat one has none.
    #[test]
    fn fixture_vision_configs() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures");
        for name in ["maverick", "guard"] {
            let c = ModelConfig::from_file(Path::new(&format!("{dir}/{name}/config.json"))).unwrap();
            let v = c.vision.unwrap_or_else(|| panic!("{name}: no vision_config"));
            assert_eq!((v.hidden_size, v.image_size, v.patch_size, v.tokens_per_tile()), (32, 28, 14, 1), "{name}");
            assert_eq!(v.image_token_id, Some(2047), "{name}: <|patch|>");
        }
        let flat = ModelConfig::from_file(Path::new(&format!("{dir}/scout/config.json"))).unwrap();
        assert!(flat.vision.is_none());
    }

    #[test]
    fn bad_vision_configs_are_refused() {
        let cases = [
            ("\"patch_size\":14", "\"patch_size\":15", "vision_config.patch_size"),
            ("\"hidden_act\":\"gelu\"", "\"hidden_act\":\"relu\"", "vision_config.hidden_act"),
            ("\"num_attention_heads\":16", "\"num_attention_heads\":15", "vision_config.num_attention_heads"),
            ("\"num_attention_heads\":16", "\"num_attention_heads\":64", "multiple of 4"),
            ("\"pixel_shuffle_ratio\":0.5", "\"pixel_shuffle_ratio\":0.3", "vision_config.pixel_shuffle_ratio"),
            ("\"num_channels\":3", "\"num_channels\":4", "vision_config.num_channels"),
            ("\"image_token_index\":200092", "\"image_token_index\":300000", "image_token_index"),
            ("\"hidden_size\":1408", "\"hidden_size\":0", "vision_config.hidden_size"),
        ];
        for (from, to, want) in cases {
            assert!(SCOUT_VISION.contains(from), "{from}");
            let e = parse(&SCOUT_VISION.replace(from, to)).unwrap_err().to_string();
            assert!(e.contains(want) && !e.contains('\n'), "{to}: {e}");
        }
        assert!(parse(&SCOUT_VISION.replace("\"vision_config\":{", "\"vision_config\":7,\"x\":{")).is_err());
    }
}
