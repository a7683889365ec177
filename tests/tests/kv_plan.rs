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
        for (page, dtypes) in [(1, [KvDtype::F32; 2]), (3, [KvDtype::Q8, KvDtype::Bf16]), (16, [KvDtype::F16, KvDtype::Fp8])] {
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
    use std::cell::RefCell;
    use herd_core::checkpoint::Checkpoint;
    use herd_core::source::WeightSource;
    struct Recording(Checkpoint, RefCell<Vec<(String, Vec<usize>)>>);
    impl WeightSource<CpuBackend> for Recording {
        fn contains(&self, name: &str) -> bool {
            self.0.contains(name)
        }
        fn weight(&self, be: &CpuBackend, name: &str, shape: &[usize]) -> herd_core::Result<<CpuBackend as herd_core::backend::Backend>::Weight> {
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

/// Relative error of the decode logits (token by token through the cache) in each KV format, on every f32
/// fixture; the bounds are about twice what was measured.
#[test]
fn kv_formats_hold_the_decode_logits() {
    use herd_core::generate::score_rows;
    use herd_core::kv_format::KvDtype;
    for name in F32_FIXTURES {
        let r = Reference::load(name);
        for (dtype, bound) in [(KvDtype::F32, 1e-4), (KvDtype::Bf16, 3e-3), (KvDtype::F16, 4e-4), (KvDtype::Q8, 7e-2), (KvDtype::Fp8, 5e-2)] {
            let mut m = paged(name, 16);
            m.set_kv_dtypes(dtype, dtype).unwrap();
            let got = pollster::block_on(score_rows(&m, &r.input_ids, &[], true)).unwrap();
            let worst = got.iter().zip(&r.logits).map(|(g, w)| rel_err(g, w)).fold(0f64, f64::max);
            eprintln!("{name} kv={}: decode logits rel err {worst:.3e}", dtype.name());
            assert!(worst <= bound, "{name} kv={}: {worst:.3e} > {bound:.0e}", dtype.name());
        }
    }
}
