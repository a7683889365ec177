//! Checks of expert streaming (`--expert-cache`) on any backend, against the same backend with every
//! expert resident: identical logits (bit for bit) with a budget that holds every expert and with the
//! smallest budget that works (k experts per MoE layer, so prefill runs in rounds), the budget never
//! exceeded, and a corrupt or truncated expert file reported as a one-line error when an expert is fetched.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use herd_core::backend::Backend;
use herd_core::checkpoint::Checkpoint;
use herd_core::config::ModelConfig;
use herd_core::experts::{ExpertCacheOptions, ExpertStats, Policy};
use herd_core::generate::score_rows;
use herd_core::model::Llama4;
use herd_core::quant::QuantPlan;
use herd_core::source::QuantizeOnLoad;

use crate::{fixture_dir, Reference};

fn load<B: Backend>(be: &Arc<B>, name: &str, quant: Option<&str>, opts: Option<&ExpertCacheOptions>) -> Llama4<B> {
    let dir = fixture_dir(name);
    let cfg = ModelConfig::from_file(&dir.join("config.json")).unwrap();
    let ck = Checkpoint::open_dir(&dir).unwrap();
    let r = match quant {
        Some(q) => {
            let src = QuantizeOnLoad { ck: &ck, plan: QuantPlan::parse(q).unwrap() };
            Llama4::load_with(be.clone(), &src, &cfg.text, opts, &mut |_, _| {})
        }
        None => Llama4::load_with(be.clone(), &ck, &cfg.text, opts, &mut |_, _| {}),
    };
    r.unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// (prefill logits, token-by-token logits) of the fixture's reference rows.
fn logits<B: Backend>(m: &Llama4<B>, rows: &[Vec<u32>]) -> (Vec<Vec<f32>>, Vec<Vec<f32>>) {
    (
        pollster::block_on(score_rows(m, rows, &[], false)).unwrap(),
        pollster::block_on(score_rows(m, rows, &[], true)).unwrap(),
    )
}

fn check_budget(s: &ExpertStats, budget: u64) {
    assert!(s.capacity <= budget, "slots take {} B, over the budget of {budget} B", s.capacity);
    assert!(
        s.peak_resident <= s.capacity,
        "{} B resident at once, over the {} B of slots",
        s.peak_resident,
        s.capacity
    );
    assert!(s.hits <= s.lookups && s.lru_hits <= s.lookups);
}

/// Fixture `name` (optionally quantized as it loads, e.g. "q4g16") streamed at several budgets on `be`:
/// identical logits to the resident model on `be`, within budget. Returns the stats of the smallest budget.
pub fn check_identical<B: Backend>(be: &Arc<B>, name: &str, quant: Option<&str>) -> ExpertStats {
    let rows = Reference::load(name).input_ids;
    let resident = load(be, name, quant, None);
    let want = logits(&resident, &rows);
    drop(resident);
    // The expert size and count, from a cache that holds them all.
    let probe = load(be, name, quant, Some(&ExpertCacheOptions::new(u64::MAX / 4)));
    let s = probe.expert_stats().unwrap();
    drop(probe);
    let cfg = ModelConfig::from_file(&fixture_dir(name).join("config.json")).unwrap().text;
    let moe_layers = cfg.moe_layers.iter().filter(|&&m| m).count() as u64;
    let all = s.experts as u64 * s.expert_bytes;
    let min = moe_layers * cfg.num_experts_per_tok as u64 * s.expert_bytes;
    let mut last = ExpertStats::default();
    for (budget, policy, prefetch, trace_picks) in [
        (all, Policy::Lrfu, true, false),
        (all, Policy::Lru, false, true),
        (all + s.expert_bytes - 1, Policy::Lru, false, false),
        (min, Policy::Lrfu, true, false),
        (min, Policy::Lru, false, true),
        (min + moe_layers / 2 * s.expert_bytes, Policy::Lrfu, true, false),
    ] {
        let opts = ExpertCacheOptions { budget, policy, prefetch, trace_picks };
        let m = load(be, name, quant, Some(&opts));
        let got = logits(&m, &rows);
        let st = m.expert_stats().unwrap();
        let what =
            format!("{name} {quant:?} on {} with a {budget} B cache ({policy:?}, prefetch {prefetch})", be.name());
        assert!(got.0 == want.0, "{what}: prefill logits differ from the resident model's");
        assert!(got.1 == want.1, "{what}: decode logits differ from the resident model's");
        check_budget(&st, budget);
        if trace_picks {
            // Every streamed layer kept its router's picks of the last step (a decode row per live sequence).
            let picks = m.expert_picks();
            assert_eq!(picks.len() as u64, moe_layers, "{what}: picks of {} layers", picks.len());
            let k = cfg.num_experts_per_tok;
            for (layer, p) in &picks {
                let n = p.len();
                assert!(n > 0 && n % k == 0 && n <= rows.len() * k, "{what}: layer {layer} kept {n} picks");
                assert!(p.iter().all(|&x| (x as usize) < cfg.num_local_experts), "{what}: layer {layer}: {p:?}");
            }
        }
        assert!(st.fetched > 0 && st.lookups > 0, "{what}: no expert was fetched");
        if budget >= all {
            assert_eq!(st.slots, st.experts, "{what}");
            assert!(st.fetched <= st.experts as u64, "{what}: {} fetches with every expert resident", st.fetched);
        }
        if budget == min {
            assert!(st.extra_rounds > 0, "{what}: one slot per pick never needed rounds");
            assert!(st.fetched > st.experts as u64, "{what}: the smallest cache evicted nothing");
        }
        eprintln!("{what}:\n{st}");
        if budget == min && policy == Policy::Lrfu {
            last = st;
        }
    }
    // Below the smallest budget: a clear error at load.
    let opts = ExpertCacheOptions::new(min - 1);
    let dir = fixture_dir(name);
    let mcfg = ModelConfig::from_file(&dir.join("config.json")).unwrap();
    let ck = Checkpoint::open_dir(&dir).unwrap();
    match Llama4::load_with(be.clone(), &ck, &mcfg.text, Some(&opts), &mut |_, _| {}) {
        Ok(_) => panic!("{name}: a cache of {} B loaded, below the {min} B it needs", min - 1),
        Err(e) => {
            let msg = e.to_string();
            assert!(msg.contains("--expert-cache") && !msg.contains('\n'), "{msg}");
        }
    }
    last
}

/// A copy of fixture `name` in `dir` with its routed experts in a shard of their own (so that file can be
/// damaged without touching the tensors that stay resident). Returns the experts shard's path.
pub fn split_copy(name: &str, dir: &Path) -> PathBuf {
    let src = fixture_dir(name);
    std::fs::create_dir_all(dir).unwrap();
    std::fs::copy(src.join("config.json"), dir.join("config.json")).unwrap();
    let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<String> = st.names().into_iter().map(String::from).collect();
    names.sort();
    let (experts, rest): (Vec<String>, Vec<String>) = names.into_iter().partition(|n| n.contains(".experts."));
    let mut map = serde_json::Map::new();
    for (file, list) in [("model-00001-of-00002.safetensors", &rest), ("model-00002-of-00002.safetensors", &experts)] {
        let views: Vec<(String, safetensors::tensor::TensorView)> =
            list.iter().map(|n| (n.clone(), st.tensor(n).unwrap())).collect();
        safetensors::serialize_to_file(views, None, &dir.join(file)).unwrap();
        for n in list {
            map.insert(n.clone(), serde_json::Value::String(file.into()));
        }
    }
    let index = serde_json::json!({ "metadata": {}, "weight_map": map });
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
    dir.join("model-00002-of-00002.safetensors")
}

/// The data section's start in a safetensors file (after the 8-byte length and the header).
fn data_start(path: &Path) -> usize {
    let b = std::fs::read(path).unwrap();
    8 + u64::from_le_bytes(b[..8].try_into().unwrap()) as usize
}

fn expect_fetch_error<B: Backend>(be: &Arc<B>, dir: &Path, damage: impl FnOnce(), want: &str) {
    let cfg = ModelConfig::from_file(&dir.join("config.json")).unwrap();
    let ck = Checkpoint::open_dir(dir).unwrap();
    let opts = ExpertCacheOptions::new(1 << 20);
    let m = Llama4::load_with(be.clone(), &ck, &cfg.text, Some(&opts), &mut |_, _| {})
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    damage();
    let rows = vec![vec![1u32, 2, 3, 4, 5, 6, 7, 8]];
    match pollster::block_on(score_rows(&m, &rows, &[], false)) {
        Ok(_) => panic!("{}: a damaged expert file ran ({want} expected)", dir.display()),
        Err(e) => {
            let msg = e.to_string();
            assert!(msg.contains(want) && msg.contains("expert") && !msg.contains('\n'), "{msg}");
            eprintln!("{}: {msg}", be.name());
        }
    }
}

/// A corrupt (non-finite) and a truncated experts file, damaged after the model loaded: the first fetch
/// fails with a one-line error naming the tensor and expert.
pub fn check_damaged<B: Backend>(be: &Arc<B>, name: &str, tag: &str) {
    let root = std::env::temp_dir().join(format!("herd-stream-{}-{tag}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let dir = root.join("corrupt");
    let shard = split_copy(name, &dir);
    expect_fetch_error(
        be,
        &dir,
        || {
            use std::io::{Seek, SeekFrom, Write};
            let s = data_start(&shard);
            let len = std::fs::metadata(&shard).unwrap().len() as usize;
            let mut f = std::fs::OpenOptions::new().write(true).open(&shard).unwrap();
            f.seek(SeekFrom::Start(s as u64)).unwrap();
            f.write_all(&vec![0xff; len - s]).unwrap();
        },
        "corrupt",
    );
    let dir = root.join("truncated");
    let shard = split_copy(name, &dir);
    expect_fetch_error(
        be,
        &dir,
        || {
            let f = std::fs::OpenOptions::new().write(true).open(&shard).unwrap();
            f.set_len(data_start(&shard) as u64 + 100).unwrap();
        },
        "truncated",
    );
    let _ = std::fs::remove_dir_all(&root);
}

/// Synthetic weights (the fixture's shapes, `herd bench --synthetic`'s generator, optionally quantized):
/// experts made on the host when fetched give the resident synthetic model's logits exactly.
pub fn check_synthetic<B: Backend>(be: &Arc<B>, name: &str, quant: Option<&str>) {
    use herd_core::quant::DType;
    use herd_core::synthetic::SyntheticWeights;
    let cfg = ModelConfig::from_file(&fixture_dir(name).join("config.json")).unwrap().text;
    let make = || {
        let w = SyntheticWeights::new(DType::BF16, 0.05, 7);
        match quant {
            Some(q) => w.quantized(QuantPlan::parse(q).unwrap()),
            None => w,
        }
    };
    let rows = Reference::load(name).input_ids;
    let resident = Llama4::load(be.clone(), &make(), &cfg, &mut |_, _| {}).unwrap();
    let want = logits(&resident, &rows);
    drop(resident);
    let opts = ExpertCacheOptions::new(1);
    let probe = ExpertCacheOptions::new(u64::MAX / 4);
    let m = Llama4::load_with(be.clone(), &make(), &cfg, Some(&probe), &mut |_, _| {}).unwrap();
    let one = m.expert_stats().unwrap().expert_bytes;
    drop(m);
    let k = cfg.num_experts_per_tok as u64;
    let layers = cfg.moe_layers.iter().filter(|&&x| x).count() as u64;
    let opts = ExpertCacheOptions { budget: one * k * layers, ..opts };
    let m = Llama4::load_with(be.clone(), &make(), &cfg, Some(&opts), &mut |_, _| {}).unwrap();
    let got = logits(&m, &rows);
    assert!(got == want, "{name} synthetic {quant:?} on {}: streamed logits differ", be.name());
    check_budget(&m.expert_stats().unwrap(), opts.budget);
}
