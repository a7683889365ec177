//! The KV cache against the memory plan (`herd plan`) and in its other formats, on the CPU backend with the f32
//! fixtures: what the plan says a sequence holds is what the cache holds, the plan's tensors are what the model
//! loads, and decode logits through each KV format stay near transformers' f32 logits.

use std::sync::Arc;

use herd_conformance::{cpu_fixture as paged, random_ids, rel_err, Reference};
use herd_core::cpu::CpuBackend;
use herd_core::model::{Llama4, Rows};

const F32_FIXTURES: [&str; 3] = ["scout", "maverick", "guard"];

/// What the plan says one sequence of n tokens holds is what the cache reports, for every fixture, page size
/// and length (the chunked rings filling up and the global layers growing).
#[test]
fn the_plans_kv_bytes_are_what_the_cache_holds() {
    use herd_core::kv_format::KvDtype;
    use herd_core::plan::KvLayout;
    for name in F32_FIXTURES {
        for (page, dtypes) in [
            (1, [KvDtype::F32; 2]),
            (3, [KvDtype::Q8, KvDtype::Bf16]),
            (16, [KvDtype::F16, KvDtype::Fp8]),
            (5, [KvDtype::Q4, KvDtype::Bf16]),
            (8, [KvDtype::F32, KvDtype::Q4]),
        ] {
            let mut m = paged(name, page);
            m.set_kv_dtypes(dtypes[0], dtypes[1]).unwrap();
            let layout = KvLayout::with_dtypes(&m.cfg, page, dtypes).unwrap();
            let mut cache = m.new_cache().unwrap();
            let s = cache.add_sequence();
            let ids = random_ids(11, 60, m.cfg.vocab_size);
            for (n, piece) in [(0, 1), (1, 7), (8, 9), (17, 30), (47, 13)] {
                pollster::block_on(m.forward(&mut cache, &[(s, &ids[n..n + piece])], &[], Rows::Last)).unwrap();
                let len = n + piece;
                assert_eq!(cache.bytes(), layout.bytes(len), "{name}, pages of {page}, {len} tokens");
            }
        }
    }
}

/// The plan's list of tensors is what the model loads: names and shapes, for every fixture (dense and MoE
/// layers, tied and untied embeddings).
#[test]
fn the_plans_tensors_are_what_the_model_loads() {
    use herd_core::checkpoint::Checkpoint;
    use herd_core::source::WeightSource;
    use std::cell::RefCell;
    struct Recording(Checkpoint, RefCell<Vec<(String, Vec<usize>)>>);
    impl WeightSource<CpuBackend> for Recording {
        fn contains(&self, name: &str) -> bool {
            self.0.contains(name)
        }
        fn weight(
            &self,
            be: &CpuBackend,
            name: &str,
            shape: &[usize],
        ) -> herd_core::Result<<CpuBackend as herd_core::backend::Backend>::Weight> {
            self.1.borrow_mut().push((name.to_owned(), shape.to_vec()));
            WeightSource::<CpuBackend>::weight(&self.0, be, name, shape)
        }
    }
    for name in ["scout", "maverick", "guard", "demo"] {
        let dir = herd_conformance::model_dir(name);
        let cfg = herd_core::config::ModelConfig::from_file(&dir.join("config.json")).unwrap();
        let rec = Recording(Checkpoint::open_dir(&dir).unwrap(), RefCell::new(Vec::new()));
        Llama4::load_with(Arc::new(CpuBackend::new()), &rec, &cfg.text, None, &mut |_, _| {}).unwrap();
        let mut loaded = rec.1.into_inner();
        let mut planned = herd_core::plan::text_tensors(&cfg.text);
        loaded.sort();
        planned.sort();
        assert_eq!(planned, loaded, "{name}");
    }
}

/// Mean KL divergence (nats) from the reference's next-token distribution to `got`'s, and the share of
/// positions whose most likely token is the reference's, over rows of `vocab` logits.
fn kl_and_top1(got: &[f32], want: &[f32], vocab: usize) -> (f64, f64) {
    let log_softmax = |x: &[f32]| {
        let m = x.iter().fold(f64::NEG_INFINITY, |a, &v| a.max(v as f64));
        let lse = m + x.iter().map(|&v| (v as f64 - m).exp()).sum::<f64>().ln();
        x.iter().map(|&v| v as f64 - lse).collect::<Vec<f64>>()
    };
    let argmax = |x: &[f32]| x.iter().enumerate().fold(0, |b, (i, &v)| if v > x[b] { i } else { b });
    let (mut kl, mut same, mut n) = (0.0, 0usize, 0usize);
    for (g, w) in got.chunks_exact(vocab).zip(want.chunks_exact(vocab)) {
        let (lq, lp) = (log_softmax(g), log_softmax(w));
        kl += lp.iter().zip(&lq).map(|(p, q)| p.exp() * (p - q)).sum::<f64>();
        same += (argmax(g) == argmax(w)) as usize;
        n += 1;
    }
    (kl / n.max(1) as f64, same as f64 / n.max(1) as f64)
}

/// Decode logits (token by token through the cache) in each KV format against transformers' f32 logits, on
/// every f32 fixture and the trained demo model: worst relative error, mean KL divergence and top-1 agreement.
/// The bounds are about twice what was measured (BENCHMARKS.md, "KV formats").
#[test]
fn kv_formats_hold_the_decode_logits() {
    use herd_core::generate::score_rows;
    use herd_core::kv_format::KvDtype;
    for name in F32_FIXTURES.into_iter().chain(["demo"]) {
        let r = Reference::load(name);
        // (format, relative error, mean KL, top-1 agreement at least)
        for (dtype, bound, kl_bound, top1_bound) in [
            (KvDtype::F32, 1e-4, 1e-10, 1.0),
            (KvDtype::Bf16, 3e-3, 6e-6, 1.0),
            (KvDtype::F16, 4e-4, 1e-7, 1.0),
            (KvDtype::Q8, 7e-2, 2e-4, 0.95),
            (KvDtype::Fp8, 7e-2, 1e-3, 0.875),
            (KvDtype::Q4, 1.2e-1, 6e-3, 0.85),
        ] {
            let mut m = paged(name, 16);
            m.set_kv_dtypes(dtype, dtype).unwrap();
            let got = pollster::block_on(score_rows(&m, &r.input_ids, &[], true)).unwrap();
            let worst = got.iter().zip(&r.logits).map(|(g, w)| rel_err(g, w)).fold(0f64, f64::max);
            let (kl, top1): (Vec<f64>, Vec<f64>) =
                got.iter().zip(&r.logits).map(|(g, w)| kl_and_top1(g, w, r.vocab)).unzip();
            let kl = kl.iter().sum::<f64>() / kl.len() as f64;
            let top1 = top1.iter().sum::<f64>() / top1.len() as f64;
            eprintln!(
                "{name} kv={}: decode logits rel err {worst:.3e}, mean KL {kl:.3e}, top-1 {top1:.4}",
                dtype.name()
            );
            assert!(worst <= bound, "{name} kv={}: {worst:.3e} > {bound:.0e}", dtype.name());
            assert!(kl <= kl_bound, "{name} kv={}: mean KL {kl:.3e} > {kl_bound:.0e}", dtype.name());
            assert!(top1 >= top1_bound, "{name} kv={}: top-1 agreement {top1:.4} < {top1_bound}", dtype.name());
        }
    }
}

/// q4 keys wait in a per-sequence stage until their page completes: a fork inside a page copies its source's
/// stage, and a fork inside a page the source has since completed (its f32 keys gone) stops at the page's
/// start. Either way the fork then computes what a sequence fed the same steps alone computes, and the source
/// goes on undisturbed.
#[test]
fn q4_forks_copy_the_stage_or_stop_at_the_page() {
    use herd_core::kv::{KvCache, SeqId};
    use herd_core::kv_format::KvDtype;
    for name in ["scout", "guard"] {
        let mut m = paged(name, 4);
        m.set_kv_dtypes(KvDtype::Q4, KvDtype::Q4).unwrap();
        let v = m.cfg.vocab_size;
        let ids = random_ids(60, 40, v);
        let tail = random_ids(61, 9, v);
        // Feeds `pieces` one step each; the logits of every row.
        let feed = |cache: &mut KvCache<CpuBackend>, s: SeqId, pieces: &[&[u32]]| -> Vec<f32> {
            let mut out = Vec::new();
            for p in pieces {
                out.extend(pollster::block_on(m.forward(cache, &[(s, p)], &[], Rows::All)).unwrap());
            }
            out
        };
        let alone = |pieces: &[&[u32]]| -> Vec<f32> {
            let mut cache = m.new_cache().unwrap();
            let s = cache.add_sequence();
            feed(&mut cache, s, pieces)
        };
        let close = |label: &str, got: &[f32], want: &[f32]| {
            assert_eq!(got.len(), want.len());
            let worst = got.chunks(v).zip(want.chunks(v)).map(|(g, w)| rel_err(g, w)).fold(0f64, f64::max);
            assert!(worst <= 1e-4, "{name}: {label}: relative error {worst:.3e}");
        };
        let mut cache = m.new_cache().unwrap();
        let a = cache.add_sequence();
        let mut got_a = feed(&mut cache, a, &[&ids[..10]]);
        // Inside the page the source is filling: the whole prefix, its last two keys from the copied stage.
        let (b, n) = cache.fork(m.backend(), a, 10).unwrap();
        assert_eq!(n, 10, "{name}: a fork inside the source's own stage");
        let steps: [&[u32]; 4] = [&tail[..5], &tail[5..6], &tail[6..7], &tail[7..]];
        let got = feed(&mut cache, b, &steps);
        close("the fork at 10 vs alone", &got, &alone(&[&ids[..10], steps[0], steps[1], steps[2], steps[3]])[10 * v..]);
        // The source completes that page: a fork at 10 now holds 8 and is fed 8..10 again.
        got_a.extend(feed(&mut cache, a, &[&ids[10..14], &ids[14..15]]));
        let (c, n) = cache.fork(m.backend(), a, 10).unwrap();
        assert_eq!(n, 8, "{name}: a fork inside a page the source completed stops at the page");
        let first: Vec<u32> = ids[8..10].iter().chain(&tail[..5]).copied().collect();
        let got = feed(&mut cache, c, &[&first, steps[1], steps[2], steps[3]]);
        let want = alone(&[&ids[..8], &first, steps[1], steps[2], steps[3]]);
        close("the fork at 8 vs alone", &got, &want[8 * v..]);
        // The source, undisturbed by both forks, against the same steps alone.
        got_a.extend(feed(&mut cache, a, &[&ids[15..17]]));
        let want_a = alone(&[&ids[..10], &ids[10..14], &ids[14..15], &ids[15..17]]);
        close("the source beside its forks", &got_a[9 * v..], &want_a[9 * v..]);
    }
}
