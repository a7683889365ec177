//! `herd inspect`: what a model is, read from its config and checkpoint header (no weights are read).

use std::collections::BTreeMap;

use anyhow::Result;
use herd_core::config::AttnKind;

use crate::files::ModelFiles;

fn human(bytes: f64) -> String {
    const U: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < U.len() {
        v /= 1024.0;
        i += 1;
    }
    format!("{v:.1} {}", U[i])
}

fn count(n: usize) -> String {
    match n {
        n if n >= 1_000_000_000 => format!("{:.2}B", n as f64 / 1e9),
        n if n >= 1_000_000 => format!("{:.2}M", n as f64 / 1e6),
        n if n >= 1_000 => format!("{:.1}K", n as f64 / 1e3),
        n => n.to_string(),
    }
}

pub fn inspect(files: &ModelFiles) -> Result<()> {
    let cfg = files.config()?;
    let ck = files.checkpoint()?;
    let t = &cfg.text;
    println!("model: {}", files.describe());
    println!(
        "architecture: {} ({})",
        cfg.architecture.as_deref().unwrap_or("unknown"),
        if cfg.multimodal { "multimodal checkpoint; herd runs its text model" } else { "text model" }
    );
    println!(
        "hidden {} · {} layers · {} query heads / {} kv heads × head_dim {} · vocab {}",
        t.hidden_size, t.num_hidden_layers, t.num_attention_heads, t.num_key_value_heads, t.head_dim, t.vocab_size
    );
    let rope = match &t.rope_scaling {
        herd_core::config::RopeScaling::Default => format!("theta {}", t.rope_theta),
        herd_core::config::RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings } => format!(
            "theta {}, llama3 scaling (factor {factor}, low {low_freq_factor}, high {high_freq_factor}, original context {original_max_position_embeddings})",
            t.rope_theta
        ),
    };
    println!(
        "RoPE: {rope}; context {} tokens; chunk {}",
        t.max_position_embeddings,
        t.attention_chunk_size.map_or("none".into(), |c| c.to_string())
    );
    println!();
    println!("{:>5}  {:<34} feed-forward", "layer", "attention");
    for i in 0..t.num_hidden_layers {
        let attn = match (t.use_rope[i], t.layer_types[i]) {
            (true, AttnKind::Chunked) => format!(
                "RoPE, chunked ({}){}",
                t.attention_chunk_size.unwrap_or(0),
                if t.use_qk_norm { ", QK norm" } else { "" }
            ),
            (true, AttnKind::Full) => format!("RoPE, global{}", if t.use_qk_norm { ", QK norm" } else { "" }),
            (false, k) => format!(
                "NoPE, {}{}",
                if k == AttnKind::Chunked { "chunked" } else { "global" },
                if t.attn_temperature_tuning { ", temperature tuning" } else { "" }
            ),
        };
        let ffn = if t.moe_layers[i] {
            format!(
                "MoE: {} experts × {} (top-{}) + shared expert",
                t.num_local_experts, t.intermediate_size, t.num_experts_per_tok
            )
        } else {
            format!("dense MLP × {}", t.intermediate_size_mlp)
        };
        println!("{i:>5}  {attn:<34} {ffn}");
    }
    println!();

    // Parameters and bytes by dtype, over every tensor in the checkpoint.
    let mut by_dtype: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    let (mut total, mut text, mut experts) = (0usize, 0usize, 0usize);
    // compressed-tensors' quantized Linears: their packed values and scales count as one int4/int8 weight.
    let linears = herd_core::compressed::quantized_linears(&ck)?;
    let packed: std::collections::HashSet<String> =
        linears.iter().map(|l| format!("{}.weight_scale", l.stem)).collect();
    let mut all: Vec<(String, &str, usize, usize)> = linears
        .iter()
        .map(|l| {
            (
                format!("{}.weight", l.stem),
                if l.bits == 4 { "int4 (compressed-tensors)" } else { "int8 (compressed-tensors)" },
                l.numel,
                l.bytes,
            )
        })
        .collect();
    for (name, tr) in ck.tensors() {
        if !packed.contains(name) {
            all.push((name.to_owned(), tr.dtype.name(), tr.numel(), tr.bytes().len()));
        }
    }
    for (name, dtype, n, bytes) in &all {
        let (name, n) = (name.as_str(), *n);
        let e = by_dtype.entry(dtype).or_default();
        e.0 += n;
        e.1 += bytes;
        total += n;
        if name.starts_with("model.") || name == "lm_head.weight" {
            text += n;
        }
        if name.contains(".experts.") {
            experts += n;
        }
    }
    let per_expert = experts.checked_div(t.num_local_experts).unwrap_or(0);
    let active = text - experts + per_expert * t.num_experts_per_tok;
    println!("parameters: {} total, {} text, {} active per token (text)", count(total), count(text), count(active));
    for (d, (n, b)) in &by_dtype {
        println!("  {d}: {} parameters, {}", count(*n), human(*b as f64));
    }
    // herd keeps keys and values in f32 on every backend.
    let dtype_bytes = 4;
    let per_layer = 2 * t.num_key_value_heads * t.head_dim * dtype_bytes;
    let full = t.layer_types.iter().filter(|&&k| k == AttnKind::Full).count();
    let chunked = t.num_hidden_layers - full;
    println!(
        "KV cache: {} per token per layer at {} bytes/element; {} global layers grow with the context, {} chunked layers stop at {} tokens",
        human(per_layer as f64),
        dtype_bytes,
        full,
        chunked,
        t.attention_chunk_size.map_or("-".into(), |c| c.to_string())
    );
    match t.attention_chunk_size {
        Some(c) if chunked > 0 => println!(
            "  all layers: {} per token for the first {c} tokens, then {} per further token",
            human((per_layer * t.num_hidden_layers) as f64),
            human((per_layer * full) as f64)
        ),
        _ => println!("  all layers: {} per token", human((per_layer * t.num_hidden_layers) as f64)),
    }
    Ok(())
}
