//! `herd plan`: what a model takes on a device of a given memory (weights, the expert cache, a step's
//! activations, the KV cache of chunked and of global layers) and the longest context that fits, or what a
//! given context needs. Nothing is loaded: the figures come from the config and the checkpoint's header (or
//! the synthetic model's formats).

use anyhow::{bail, Result};
use herd_core::backend::DEFAULT_KV_PAGE;
use herd_core::config::TextConfig;
use herd_core::experts::parse_size;
use herd_core::kv_format::{parse_kv_dtypes, KvDtype};
use herd_core::plan::{is_routed_expert, plan, text_tensors, Plan, PlanRequest};

use crate::files::ModelFiles;
use crate::{synthetic, PlanArgs};

/// Bytes of the text model's tensors, and of those that are routed experts.
fn weight_bytes(files: &ModelFiles, a: &PlanArgs) -> Result<(TextConfig, usize, usize, String)> {
    let mut all = 0usize;
    let mut experts = 0usize;
    let mut add = |name: &str, bytes: usize| {
        all = all.saturating_add(bytes);
        if is_routed_expert(name) {
            experts = experts.saturating_add(bytes);
        }
    };
    match &a.synthetic {
        Some(name) => {
            // The published depth (tiny: its own two layers).
            let full = if name == "tiny" { synthetic::DEFAULT_LAYERS } else { synthetic::FULL_LAYERS };
            let layers = a.layers.unwrap_or(full);
            let (dtype, qplan) = synthetic::quant_format(a.quant.as_deref())?;
            let fmt = qplan.as_ref().map_or(dtype.name().to_owned(), |p| p.name());
            let (cfg, weights) = synthetic::synthetic(name, layers, dtype, qplan)?;
            for (n, shape) in text_tensors(&cfg.text) {
                let b = weights.format_of(&n, &shape).bytes(&shape).map_err(|e| anyhow::anyhow!("{n}: {e}"))?;
                add(&n, b);
            }
            let of = if name == "tiny" { String::new() } else { format!(" of {}", synthetic::FULL_LAYERS) };
            Ok((cfg.text, all, experts, format!("synthetic {name} ({layers}{of} layers, {fmt} weights)")))
        }
        None => {
            if a.quant.is_some() || a.layers.is_some() {
                bail!("--quant and --layers go with --synthetic (a model directory's formats are its own)");
            }
            let (cfg, all, experts) = checkpoint_weight_bytes(files)?;
            Ok((cfg, all, experts, files.describe()))
        }
    }
}

/// Bytes of a model directory's vision tower (`vision_model.*` and `multi_modal_projector.*`, from the
/// checkpoint's headers): what images load beside the text model.
pub(crate) fn vision_weight_bytes(files: &ModelFiles) -> Result<usize> {
    let ck = files.checkpoint()?;
    let tower = |n: &str| n.starts_with("vision_model.") || n.starts_with("multi_modal_projector.");
    Ok(ck.tensors().filter(|(n, _)| tower(n)).map(|(_, t)| t.bytes().len()).sum())
}

/// Bytes of a model directory's text-model tensors, and of those that are routed experts (from the
/// checkpoint's headers: nothing is read). Every tensor of the text model counts, whatever its layout (a
/// compressed-tensors checkpoint stores each expert's packed weights and scales apart); the vision tower's do
/// not ([`vision_weight_bytes`]).
pub(crate) fn checkpoint_weight_bytes(files: &ModelFiles) -> Result<(TextConfig, usize, usize)> {
    let cfg = files.config()?;
    let ck = files.checkpoint()?;
    let (mut all, mut experts) = (0usize, 0usize);
    for (name, t) in ck.tensors() {
        if name.starts_with("model.") || name.starts_with("lm_head.") {
            all = all.saturating_add(t.bytes().len());
            if is_routed_expert(name) {
                experts = experts.saturating_add(t.bytes().len());
            }
        }
    }
    Ok((cfg.text, all, experts))
}

pub(crate) fn gib(b: usize) -> String {
    format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64)
}

pub fn run(files: &ModelFiles, a: &PlanArgs) -> Result<()> {
    let device = parse_size(&a.device_memory).map_err(|e| anyhow::anyhow!("--device-memory: {e}"))? as usize;
    let (cfg, all, experts, describe) = weight_bytes(files, a)?;
    let expert_cache = match &a.expert_cache {
        Some(s) => parse_size(s).map_err(|e| anyhow::anyhow!("--expert-cache: {e}"))? as usize,
        None => 0,
    };
    if expert_cache > 0 && experts == 0 {
        bail!("--expert-cache: this model has no routed experts to stream");
    }
    let resident = if expert_cache > 0 { all - experts } else { all };
    if let Some(n) = a.context.filter(|&n| n > cfg.max_position_embeddings) {
        bail!("--context {n} is more than the model's context of {} positions", cfg.max_position_embeddings);
    }
    let req = PlanRequest {
        device_memory: device,
        weights: resident,
        expert_cache,
        seqs: a.seqs,
        context: a.context,
        kept_slots: 0,
        step_rows: 0,
    };
    let dtypes = parse_kv_dtypes(&a.kv_dtype, KvDtype::Bf16).map_err(|e| anyhow::anyhow!("--kv-dtype: {e}"))?;
    let p = plan(&cfg, DEFAULT_KV_PAGE, dtypes, &req).map_err(|e| anyhow::anyhow!("--kv-dtype: {e}"))?;
    if a.json {
        println!("{}", to_json(&p, &describe, dtypes));
    } else {
        print(&p, &describe, expert_cache > 0, dtypes);
    }
    Ok(())
}

/// The one-line reason a plan does not fit.
pub(crate) fn refusal(p: &Plan) -> String {
    match p.asked {
        Some((n, need)) if p.longest > 0 => format!(
            "{n} tokens of context need {need} bytes ({}), more than the {} bytes ({}) given; the longest that fits is {} tokens",
            crate::fit::human(need),
            p.device_memory,
            crate::fit::human(p.device_memory),
            p.longest
        ),
        _ => format!(
            "the model needs {} bytes ({}) before any context, more than the {} bytes given",
            p.total(1),
            crate::fit::human(p.total(1)),
            p.device_memory
        ),
    }
}

fn to_json(p: &Plan, describe: &str, dtypes: [KvDtype; 2]) -> serde_json::Value {
    serde_json::json!({
        "model": describe, "device_memory": p.device_memory, "weights": p.weights,
        "expert_cache": p.expert_cache, "activations": p.activations, "seqs": p.seqs,
        "kv": {
            "dtype_global": dtypes[0].name(), "dtype_chunked": dtypes[1].name(), "page_slots": p.kv.page,
            "bytes_per_slot_global": p.kv.slot_bytes()[0], "bytes_per_slot_chunked": p.kv.slot_bytes()[1],
            "full_layers": p.kv.full_layers, "chunked_layers": p.kv.chunked_layers,
            "chunked_bytes_per_seq": p.kv.chunked_bytes(), "global_bytes_per_token": p.kv.bytes_per_token(),
        },
        "max_context": p.max_context, "longest_context": p.longest,
        "kv_bytes_at_longest": p.seqs * p.kv.bytes(p.longest),
        "context": p.asked.map(|a| a.0), "bytes_needed": p.asked.map(|a| a.1),
        "kv_bytes_at_context": p.asked.map(|a| p.seqs * p.kv.bytes(a.0)), "fits": p.fits(),
    })
}

fn print(p: &Plan, describe: &str, streamed: bool, dtypes: [KvDtype; 2]) {
    println!("model: {describe}");
    println!("device memory: {} ({} bytes)", gib(p.device_memory), p.device_memory);
    let what = if streamed { "resident weights (the routed experts streamed)" } else { "weights" };
    println!("{what}: {}", gib(p.weights));
    if streamed {
        println!("expert cache: {}", gib(p.expert_cache));
    }
    println!("activations (a step of up to {} tokens): {}", herd_core::model::MAX_STEP_ROWS, gib(p.activations));
    println!(
        "KV cache (global {}, chunked {}, pages of {} positions): {} chunked layer(s) hold at most {} per sequence; {} global layer(s) add {} KiB per token",
        dtypes[0].name(),
        dtypes[1].name(),
        p.kv.page,
        p.kv.chunked_layers,
        gib(p.kv.chunked_bytes()),
        p.kv.full_layers,
        p.kv.bytes_per_token() / 1024
    );
    let seqs = if p.seqs > 1 { format!(" for each of {} sequences", p.seqs) } else { String::new() };
    println!(
        "longest context that fits{seqs}: {} tokens (KV {}; the model's own limit is {})",
        p.longest,
        gib(p.seqs * p.kv.bytes(p.longest)),
        p.max_context
    );
    if let Some((n, need)) = p.asked {
        let verdict = if need <= p.device_memory { "fits" } else { "does not fit" };
        println!("{n} tokens{seqs}: {} in all (KV {}): {verdict}", gib(need), gib(p.seqs * p.kv.bytes(n)));
    }
    if !p.fits() {
        println!("does not fit: {}", refusal(p));
    }
}
