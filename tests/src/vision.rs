//! Golden checks of the vision path on one backend against the `scout_vision` fixture (made by
//! tests/tools/make_vision_model.py): the tower's output rows, then the model's logits and greedy ids for a
//! prompt holding two images, all from the image files through herd's own preprocessing.

use std::sync::Arc;

use herd_core::backend::Backend;
use herd_core::model::{ImagePart, ImageRows, Pick, Picked, Rows};
use herd_core::sampling::SamplingParams;
use herd_core::vision::encoder::VisionTower;
use herd_core::vision::layout::TileOptions;
use herd_core::vision::preprocess::{decode, preprocess};
use safetensors::{Dtype, SafeTensors};

use crate::{fixture_dir, rel_err};

pub const NAME: &str = "scout_vision";
/// The f32 tolerance of the text fixtures.
pub const TOL: f64 = 1e-4;

/// The fixture's reference: the prompt, the image rows, the last logits rows and the greedy ids.
pub struct VisionReference {
    pub input_ids: Vec<u32>,
    pub features: Vec<f32>,
    pub logits_tail: Vec<f32>,
    pub tail: usize,
    pub greedy_ids: Vec<u32>,
    pub images: Vec<String>,
}

fn f32s(st: &SafeTensors, name: &str) -> (Vec<f32>, Vec<usize>) {
    let t = st.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(t.dtype(), Dtype::F32, "{name}");
    (t.data().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect(), t.shape().to_vec())
}

fn ids(st: &SafeTensors, name: &str) -> Vec<u32> {
    let t = st.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(t.dtype(), Dtype::I64, "{name}");
    t.data().chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap()) as u32).collect()
}

impl VisionReference {
    pub fn load() -> Self {
        let dir = fixture_dir(NAME);
        let bytes = std::fs::read(dir.join("reference.safetensors")).expect("scout_vision/reference.safetensors");
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("reference.json")).unwrap()).unwrap();
        let images = json["prompt"]["images"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().into()).collect();
        let (logits_tail, shape) = f32s(&st, "logits_tail");
        VisionReference {
            input_ids: ids(&st, "input_ids"),
            features: f32s(&st, "image_features").0,
            logits_tail,
            tail: shape[0],
            greedy_ids: ids(&st, "greedy_ids"),
            images,
        }
    }
}

/// The pixel values and tile count of each of the fixture's image files, by herd's preprocessing.
pub fn pixels(images: &[String]) -> Vec<(Vec<f32>, usize)> {
    images
        .iter()
        .map(|f| {
            let bytes = std::fs::read(fixture_dir("vision").join(f)).unwrap();
            let img = decode(&bytes).unwrap().remove(0);
            let p = preprocess(&img, &TileOptions::default()).unwrap();
            let tiles = p.tiles();
            (p.pixel_values, tiles)
        })
        .collect()
}

pub fn tower<B: Backend>(be: &Arc<B>) -> VisionTower<B> {
    VisionTower::from_dir(&**be, &fixture_dir(NAME)).unwrap_or_else(|e| panic!("{NAME}: {e}"))
}

/// Every check of the vision path on `be`, each image encoded once: the tower's rows for both images
/// (encoded one image at a time) equal the reference's; the model's logits with those rows in place of the
/// `<|patch|>` embeddings, as one prefill and as a prefill then one token at a time (the second image's
/// last rows fed with their tokens); and greedy decoding after the prompt.
pub fn check_all<B: Backend>(be: &Arc<B>) {
    let r = VisionReference::load();
    let dir = fixture_dir(NAME);
    let m = crate::golden::load(be, &dir);
    let t = tower(be);
    let token = t.cfg.image_token_id.expect("the fixture names its <|patch|> id");
    let encoded: Vec<(B::Buffer, usize)> = pixels(&r.images)
        .into_iter()
        .map(|(px, tiles)| (t.encode(&**be, &px, tiles).unwrap(), tiles * t.tokens_per_tile()))
        .collect();
    let mut got = Vec::new();
    for (buf, n) in &encoded {
        got.extend(be.read(buf).unwrap().into_iter().take(n * t.text_hidden));
    }
    let e = rel_err(&got, &r.features);
    eprintln!("{NAME} image features on {}: rel err {e:.2e}", be.name());
    assert!(e <= TOL, "{NAME}: image features differ from transformers': relative error {e:.3e} > {TOL:.0e}");

    let all =
        ImageRows { token, parts: encoded.iter().map(|(b, n)| ImagePart { buf: b, first: 0, len: *n }).collect() };
    let ids = &r.input_ids;
    let (v, n) = (m.cfg.vocab_size, ids.len());
    let patches = |toks: &[u32]| toks.iter().filter(|&&x| x == token).count();
    for decode in [false, true] {
        let mut cache = m.new_cache().unwrap();
        let seq = cache.add_sequence();
        let got = if decode {
            let split = n - r.tail;
            let first = all.take(patches(&ids[..split]));
            pollster::block_on(m.forward(&mut cache, &[(seq, &ids[..split])], &[Some(&first)], Rows::Last)).unwrap();
            let mut used = patches(&ids[..split]);
            let mut got = Vec::new();
            for i in split..n {
                let one = all.skip(used).take(patches(&ids[i..i + 1]));
                let step = &[(seq, &ids[i..i + 1])];
                got.extend(pollster::block_on(m.forward(&mut cache, step, &[Some(&one)], Rows::Last)).unwrap());
                used += patches(&ids[i..i + 1]);
            }
            got
        } else {
            let rows = pollster::block_on(m.forward(&mut cache, &[(seq, ids)], &[Some(&all)], Rows::All)).unwrap();
            rows[(n - r.tail) * v..].to_vec()
        };
        let e = rel_err(&got, &r.logits_tail);
        eprintln!("{NAME} logits on {} (decode={decode}): rel err {e:.2e}", be.name());
        assert!(e <= TOL, "{NAME} (decode={decode}): logits differ from transformers': rel error {e:.3e} > {TOL:.0e}");
    }

    let mut cache = m.new_cache().unwrap();
    let seq = cache.add_sequence();
    let greedy = SamplingParams::default();
    let mut fed = ids.clone();
    let mut out = Vec::new();
    for step in 0..r.greedy_ids.len() {
        let imgs = if step == 0 { vec![Some(&all)] } else { vec![] };
        let pick = [Pick::Sample { params: &greedy, draw: 0.0, history: &[], mask: None }];
        let next = pollster::block_on(m.forward_pick(&mut cache, &[(seq, &fed)], &imgs, &pick)).unwrap();
        let Picked::Id(id) = next[0] else { panic!("{NAME}: no id picked: {:?}", next[0]) };
        out.push(id);
        fed = vec![id];
    }
    assert_eq!(out, r.greedy_ids, "{NAME}: greedy continuation with images differs from transformers");
}
