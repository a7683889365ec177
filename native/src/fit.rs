//! Before a model loads: whether its weights, expert cache, a step's activations and the KV cache of the
//! contexts asked fit the device's memory — the plan `herd plan` prints — so that `run`, `chat` and `serve`
//! refuse what cannot fit with a one-line reason instead of failing partway through a load or a generation,
//! and `serve` picks the longest context its requests may have.

use anyhow::{bail, Result};
use herd_core::backend::Backend;
use herd_core::plan::{plan, Plan, PlanRequest};

use crate::files::{LoadOptions, ModelFiles};
use crate::plan::{checkpoint_weight_bytes, refusal, vision_weight_bytes};

/// What a command will hold at once.
pub struct Need {
    /// Sequences held at once.
    pub seqs: usize,
    /// Tokens each sequence reaches (None: find the longest that fits).
    pub context: Option<usize>,
    /// Slots the prefix cache keeps besides them.
    pub kept_slots: usize,
    /// Tokens the largest step feeds the model (0: the most a prompt piece has).
    pub step_rows: usize,
    /// Bytes the device holds for something else at the same time: the guard model beside this one.
    pub reserved: usize,
    /// Whether the vision tower loads too (its weights are then planned with the text model's).
    pub vision: bool,
}

/// The plan of `files` on `backend` for `need`, against `--device-memory` or else what the device has free
/// now; an error with the one-line reason when it does not fit. None where the memory is unknown (wgpu
/// without `--device-memory`): nothing is checked then.
pub fn check<B: Backend>(backend: &B, files: &ModelFiles, opts: &LoadOptions, need: &Need) -> Result<Option<Plan>> {
    let (memory, holds_weights, whose) = match (opts.device_memory, backend.free_memory()) {
        (Some(m), free) => (m, free.is_none_or(|f| f.holds_weights), "--device-memory".to_string()),
        // What the device has free, less headroom for what the plan does not itemise: a GPU's driver, library
        // workspaces and pooled buffers (5%, at least 512 MiB); the rest of the process on the CPU (10%).
        (None, Some(f)) => {
            let headroom = if f.holds_weights { (f.bytes / 20).max(512 << 20) } else { f.bytes / 10 };
            (f.bytes.saturating_sub(headroom), f.holds_weights, format!("free on {} now, less headroom", B::KIND))
        }
        (None, None) => return Ok(None),
    };
    let (memory, whose) = match need.reserved {
        0 => (memory, whose),
        r => (memory.saturating_sub(r), format!("{whose}, less {} for the guard", human(r))),
    };
    let (cfg, all, experts) = checkpoint_weight_bytes(files)?;
    let cache = opts.experts.as_ref().map_or(0, |c| c.budget as usize);
    let vision = if need.vision { vision_weight_bytes(files)? } else { 0 };
    let resident = if cache > 0 { all - experts } else { all } + vision;
    let [global, chunked] = opts.kv_dtypes::<B>()?;
    let req = PlanRequest {
        device_memory: memory,
        // Weights the device holds count; the CPU's are mapped from their files (the system pages them).
        weights: if holds_weights { resident } else { 0 },
        expert_cache: cache,
        seqs: need.seqs,
        context: need.context.map(|n| n.min(cfg.max_position_embeddings)),
        kept_slots: need.kept_slots,
        step_rows: need.step_rows,
    };
    let p =
        plan(&cfg, backend.kv_page_size(), [global, chunked], &req).map_err(|e| anyhow::anyhow!("--kv-dtype: {e}"))?;
    if !p.fits() {
        let kv = crate::files::kv_dtypes_name([global, chunked]);
        let hint = if p.longest == 0 {
            match (experts > 0 && cache == 0 && holds_weights, opts.device_memory.is_some()) {
                (true, _) => "; --expert-cache SIZE streams the routed experts instead of holding them".to_string(),
                (false, false) => "; a quantized copy (herd quantize) takes less".to_string(),
                (false, true) => String::new(),
            }
        } else if global.is_byte() || global == herd_core::kv_format::KvDtype::Q4 {
            format!(" (KV cache in {kv})")
        } else {
            format!(" (KV cache in {kv}; --kv-dtype q8 holds about twice as many tokens as bf16, 4 times f32)")
        };
        let tower = match vision {
            v if v > 0 && holds_weights => format!(" (its weights include the vision tower's {})", human(v)),
            _ => String::new(),
        };
        bail!("not enough memory ({whose}: {}): {}{tower}{hint}", human(memory), refusal(&p));
    }
    Ok(Some(p))
}

/// Bytes in the largest binary unit that keeps a whole number before the point (GiB, MiB, KiB).
pub fn human(b: usize) -> String {
    let b = b as f64;
    match b {
        _ if b >= (1u64 << 30) as f64 => format!("{:.2} GiB", b / (1u64 << 30) as f64),
        _ if b >= (1u64 << 20) as f64 => format!("{:.1} MiB", b / (1u64 << 20) as f64),
        _ => format!("{:.1} KiB", b / 1024.0),
    }
}
