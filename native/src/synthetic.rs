//! Synthetic models for `herd bench --synthetic NAME`: the real text-config shapes of Scout, Maverick or
//! Llama Guard 4 (or a tiny Scout-like model for tests), with only `L` layers and seeded random bf16
//! weights generated in memory, so full-scale speed can be measured without downloading the weights.

use std::time::Instant;

use anyhow::{bail, Context, Result};
use herd_core::checkpoint::Checkpoint;
use herd_core::config::ModelConfig;
use herd_core::quant::DType;
use rayon::prelude::*;

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
    // Shared by all published models (spec §1.4).
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

/// config.json text of the synthetic model (the multimodal wrapper, text part only).
pub fn config_json(name: &str, layers: usize) -> Result<String> {
    let text = text_config(name, layers)?;
    Ok(format!(
        r#"{{"architectures":["Llama4ForConditionalGeneration"],"model_type":"llama4","tie_word_embeddings":false,"text_config":{text}}}"#
    ))
}

/// What fills a tensor.
#[derive(Clone, Copy)]
enum Fill {
    Random,
    Ones,
}

/// xorshift64*; cheap and good enough for benchmark weights.
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> Self {
        // splitmix64 of the seed, so neighbouring seeds give unrelated streams (and never 0).
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        XorShift((z ^ (z >> 31)) | 1)
    }
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// bf16 bits of a uniform value in ±SCALE from 16 random bits (round to nearest).
#[inline]
fn uniform_bf16(r: u16) -> u16 {
    let x = (r as f32 * (1.0 / 32768.0) - 1.0) * SCALE;
    let b = x.to_bits();
    ((b + 0x7fff + ((b >> 16) & 1)) >> 16) as u16
}

/// Fills `out` (bf16 little-endian) in parallel: each 1 MiB chunk has its own seeded generator, so the
/// result depends only on (tensor index, chunk index), not on the thread count.
fn fill(out: &mut [u8], fill: Fill, tensor: u64) {
    const CHUNK: usize = 1 << 20;
    match fill {
        Fill::Ones => {
            let one = 0x3f80u16.to_le_bytes(); // bf16 1.0
            out.par_chunks_mut(CHUNK).for_each(|c| {
                for p in c.chunks_exact_mut(2) {
                    p.copy_from_slice(&one);
                }
            })
        }
        Fill::Random => out.par_chunks_mut(CHUNK).enumerate().for_each(|(ci, c)| {
            let mut rng = XorShift::new(SEED ^ (tensor << 40) ^ ci as u64);
            let mut quads = c.chunks_exact_mut(8);
            for q in &mut quads {
                let r = rng.next();
                let mut v = [0u8; 8];
                for k in 0..4 {
                    let h = uniform_bf16((r >> (16 * k)) as u16);
                    v[2 * k..2 * k + 2].copy_from_slice(&h.to_le_bytes());
                }
                q.copy_from_slice(&v);
            }
            for p in quads.into_remainder().chunks_exact_mut(2) {
                p.copy_from_slice(&uniform_bf16(rng.next() as u16).to_le_bytes());
            }
        }),
    }
}

/// A synthetic model: its config (parsed from the config.json text, like a real one) and an in-memory
/// checkpoint with every tensor herd's loader asks for, in the published names and shapes.
pub fn synthetic(name: &str, layers: usize) -> Result<(ModelConfig, Checkpoint)> {
    if layers == 0 {
        bail!("--layers must be at least 1");
    }
    let json = config_json(name, layers)?;
    let cfg = ModelConfig::from_json_bytes(json.as_bytes()).context("synthetic config.json")?;
    let t = &cfg.text;
    let (d, v, h, kvh, hd) = (t.hidden_size, t.vocab_size, t.num_attention_heads, t.num_key_value_heads, t.head_dim);
    let (e, f, fd) = (t.num_local_experts, t.intermediate_size, t.intermediate_size_mlp);

    let mut specs: Vec<(String, Vec<usize>, Fill)> = vec![
        ("language_model.model.embed_tokens.weight".into(), vec![v, d], Fill::Random),
        ("language_model.model.norm.weight".into(), vec![d], Fill::Ones),
        ("language_model.lm_head.weight".into(), vec![v, d], Fill::Random),
    ];
    for i in 0..layers {
        let p = format!("language_model.model.layers.{i}.");
        let mut add = |n: &str, shape: Vec<usize>, fl: Fill| specs.push((format!("{p}{n}"), shape, fl));
        add("input_layernorm.weight", vec![d], Fill::Ones);
        add("post_attention_layernorm.weight", vec![d], Fill::Ones);
        add("self_attn.q_proj.weight", vec![h * hd, d], Fill::Random);
        add("self_attn.k_proj.weight", vec![kvh * hd, d], Fill::Random);
        add("self_attn.v_proj.weight", vec![kvh * hd, d], Fill::Random);
        add("self_attn.o_proj.weight", vec![d, h * hd], Fill::Random);
        let mlp = |add: &mut dyn FnMut(&str, Vec<usize>, Fill), pre: &str, w: usize| {
            add(&format!("{pre}gate_proj.weight"), vec![w, d], Fill::Random);
            add(&format!("{pre}up_proj.weight"), vec![w, d], Fill::Random);
            add(&format!("{pre}down_proj.weight"), vec![d, w], Fill::Random);
        };
        if t.moe_layers[i] {
            add("feed_forward.router.weight", vec![e, d], Fill::Random);
            add("feed_forward.experts.gate_up_proj", vec![e, d, 2 * f], Fill::Random);
            add("feed_forward.experts.down_proj", vec![e, f, d], Fill::Random);
            mlp(&mut add, "feed_forward.shared_expert.", f);
        } else {
            mlp(&mut add, "feed_forward.", fd);
        }
    }

    let total: usize = specs.iter().map(|(_, s, _)| s.iter().product::<usize>() * 2).sum();
    let gb = |b: usize| b as f64 / 1e9;
    eprintln!(
        "synthetic {name}: generating {} tensors, {:.2} GB of random bf16 ({layers} of {FULL_LAYERS} layers, {} threads)",
        specs.len(),
        gb(total),
        rayon::current_num_threads()
    );
    let t0 = Instant::now();
    let mut done = 0usize;
    let mut tensors = Vec::with_capacity(specs.len());
    for (ti, (tname, shape, fl)) in specs.into_iter().enumerate() {
        let n = shape.iter().product::<usize>() * 2;
        // Zeroed allocation: the OS hands out untouched pages, and `fill` writes each byte once.
        let mut bytes = vec![0u8; n];
        fill(&mut bytes, fl, ti as u64);
        done += n;
        if n >= 256 << 20 {
            eprintln!("  {tname} {shape:?}: {:.2} GB ({:.1}/{:.1} GB)", gb(n), gb(done), gb(total));
        }
        tensors.push((tname, DType::BF16, shape, bytes));
    }
    eprintln!("synthetic {name}: {:.2} GB generated in {:.1} s", gb(total), t0.elapsed().as_secs_f64());
    let ck = Checkpoint::from_tensors(&format!("<synthetic {name}>"), tensors)?;
    Ok((cfg, ck))
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
        let m = parse("maverick", 4).text;
        assert_eq!(m.moe_layers, vec![false, true, false, true]);
        assert_eq!(m.num_local_experts, 128);
        assert!(!m.use_qk_norm);
        let g = parse("guard", 2).text;
        assert!(g.moe_layers.iter().all(|&m| !m));
        assert!(config_json("llama", 1).is_err());
    }

    #[test]
    fn tiny_builds_and_is_seeded() {
        let (cfg, ck) = synthetic("tiny", 2).unwrap();
        assert_eq!(cfg.text.hidden_size, 64);
        let w = ck.get_shaped("model.layers.1.feed_forward.experts.gate_up_proj", &[4, 64, 256]).unwrap().to_f32();
        assert!(w.iter().all(|x| x.abs() <= SCALE * 1.01));
        assert!(w.iter().any(|&x| x != 0.0));
        assert_eq!(ck.get("model.norm.weight").unwrap().to_f32(), vec![1.0; 64]);
        let (_, ck2) = synthetic("tiny", 2).unwrap();
        assert_eq!(ck2.get("lm_head.weight").unwrap().bytes(), ck.get("lm_head.weight").unwrap().bytes());
    }
}
