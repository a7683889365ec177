//! Llama Guard 4's prompts: what herd renders and tokenizes for a conversation is what transformers does with
//! the guard's chat template (tests/fixtures/guard, made by tests/tools/make_fixtures.py), and the guard's
//! logits at the prompt's end match transformers' on the CPU.

use std::sync::Arc;

use herd_conformance::{fixture_dir, golden::F32_TOL, rel_err};
use herd_core::chat::{ChatTemplate, Message};
use herd_core::cpu::CpuBackend;
use herd_core::guard::{self, Policy};
use herd_core::model::Llama4;
use herd_core::tokenizer::Tokenizer;
use serde_json::Value;

/// The reference's logits at each prompt's last position, one row of the vocabulary each.
fn last_logits(path: &std::path::Path) -> Vec<f32> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let t = st.tensor("last_logits").unwrap();
    t.data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect()
}

/// The policy that leaves out exactly the categories `excluded`.
fn policy_without(excluded: &[&str]) -> Policy {
    let keep: Vec<&str> = guard::CATEGORIES.iter().map(|(k, _)| *k).filter(|k| !excluded.contains(k)).collect();
    let policy = if excluded.is_empty() { Policy::all() } else { Policy::only(&keep.join(",")).unwrap() };
    assert_eq!(policy.excluded(), excluded.iter().map(|s| s.to_string()).collect::<Vec<_>>());
    policy
}

#[test]
fn guard_prompts_match_transformers_rendering_and_logits() {
    let dir = fixture_dir("guard");
    let reference: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap()).unwrap();
    let tmpl = ChatTemplate::from_dir(&dir).unwrap();
    let tok = Tokenizer::from_dir(&dir).unwrap();
    let model = Llama4::from_dir(Arc::new(CpuBackend::new()), &dir, &mut |_, _| {}).unwrap();
    let last = last_logits(&dir.join("reference_guard_prompts.safetensors"));
    let v = model.cfg.vocab_size;
    let prompts = reference["guard_prompts"].as_array().expect("guard_prompts in reference.json");
    assert_eq!(prompts.len(), 3);
    for (i, p) in prompts.iter().enumerate() {
        let msgs: Vec<Message> = p["turns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| Message::new(t[0].as_str().unwrap(), t[1].as_str().unwrap()))
            .collect();
        let excluded: Vec<&str> =
            p["excluded_category_keys"].as_array().unwrap().iter().map(|k| k.as_str().unwrap()).collect();
        let policy = policy_without(&excluded);
        let conv = guard::conversation(&msgs, None);
        let mut extra = serde_json::Map::new();
        extra.insert("excluded_category_keys".into(), serde_json::json!(policy.excluded()));
        let rendered = tmpl.render_with(&conv.turns, None, true, &extra).unwrap();
        assert_eq!(rendered, p["rendered"].as_str().unwrap(), "prompt {i}: rendering differs from transformers'");
        let ids = guard::prompt(&tmpl, &tok, &policy, &conv).unwrap();
        let want: Vec<u32> = p["ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
        assert_eq!(ids, want, "prompt {i}: token ids differ from transformers'");
        let logits =
            pollster::block_on(herd_core::generate::score_rows(&model, std::slice::from_ref(&ids), &[], false))
                .unwrap();
        let got = &logits[0][(ids.len() - 1) * v..];
        let err = rel_err(got, &last[i * v..(i + 1) * v]);
        eprintln!("guard prompt {i}: {} tokens, last-position logits rel err {err:.2e}", ids.len());
        assert!(err < F32_TOL, "prompt {i}: rel err {err:.2e}");
    }
}

/// With images (tests/fixtures/guard/reference_guard_images.*, made by tests/tools/make_guard_images.py): the
/// rendering (the placeholders after the role and before the text, S14 left out), the ids once the guard's own
/// processor (preprocessor_config.json: 28-px tiles, at most 4) has expanded each image, and the logits at the
/// prompt's end with the guard's vision tower reading the image files, all as transformers has them.
#[test]
fn guard_prompts_with_images_match_transformers() {
    use herd_core::chat::{Content, Part};
    use herd_core::model::{ImagePart, ImageRows, Rows};
    use herd_core::vision::encoder::VisionTower;
    use herd_core::vision::input::{expand_placeholders, image_tokens, tile_options, PlannedImage};
    use herd_core::vision::preprocess::decode;

    let dir = fixture_dir("guard");
    let reference: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference_guard_images.json")).unwrap()).unwrap();
    let tmpl = ChatTemplate::from_dir(&dir).unwrap();
    let tok = Tokenizer::from_dir(&dir).unwrap();
    let be = Arc::new(CpuBackend::new());
    let model = Llama4::from_dir(be.clone(), &dir, &mut |_, _| {}).unwrap();
    let tower = VisionTower::from_dir(&*be, &dir).unwrap();
    let opts = tile_options(&tower.cfg, Some(&std::fs::read_to_string(dir.join("preprocessor_config.json")).unwrap()))
        .unwrap();
    let tokens = image_tokens(&tok).unwrap();
    let last = last_logits(&dir.join("reference_guard_images.safetensors"));
    let v = model.cfg.vocab_size;
    let convs = reference["conversations"].as_array().expect("conversations");
    assert_eq!(convs.len(), 2);
    for (i, c) in convs.iter().enumerate() {
        // The request as a client sends it: each turn's text, then its images (the guard puts them first).
        let mut msgs = Vec::new();
        let mut files = Vec::new();
        for t in c["turns"].as_array().unwrap() {
            let mut parts = vec![Part::Text { text: t["text"].as_str().unwrap().into() }];
            for f in t["images"].as_array().unwrap() {
                parts.push(Part::Image);
                files.push(f.as_str().unwrap().to_string());
            }
            msgs.push(Message {
                role: t["role"].as_str().unwrap().into(),
                content: Content::Parts(parts),
                tool_calls: vec![],
            });
        }
        let excluded: Vec<&str> =
            c["excluded_category_keys"].as_array().unwrap().iter().map(|k| k.as_str().unwrap()).collect();
        let policy = policy_without(&excluded);
        let conv = guard::conversation(&msgs, c["answer"].as_str());
        assert_eq!(conv.images, (0..files.len()).collect::<Vec<_>>());
        let mut extra = serde_json::Map::new();
        extra.insert("excluded_category_keys".into(), serde_json::json!(policy.excluded()));
        let rendered = tmpl.render_with(&conv.turns, None, true, &extra).unwrap();
        assert_eq!(rendered, c["rendered"].as_str().unwrap(), "conversation {i}: rendering differs from transformers'");
        assert!(!rendered.contains("S14"), "with an image, S14 is left out");
        // The images, read and planned by herd, expand the placeholders as the processor does.
        let planned: Vec<PlannedImage> = files
            .iter()
            .map(|f| {
                let im = decode(&std::fs::read(fixture_dir("vision").join(f)).unwrap()).unwrap().remove(0);
                PlannedImage::new(im, &opts).unwrap()
            })
            .collect();
        let plans: Vec<_> = planned.iter().map(|p| p.plan).collect();
        let ids = guard::prompt(&tmpl, &tok, &policy, &conv).unwrap();
        let ids = expand_placeholders(&ids, &plans, tower.tokens_per_tile(), &tokens).unwrap();
        let want: Vec<u32> = c["ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
        assert_eq!(ids, want, "conversation {i}: token ids differ from transformers'");
        let encoded: Vec<(_, usize)> = planned
            .iter()
            .map(|p| {
                let px = p.pixels(&opts).unwrap();
                (tower.encode(&*be, &px.pixel_values, px.tiles()).unwrap(), px.tiles() * tower.tokens_per_tile())
            })
            .collect();
        assert_eq!(encoded.iter().map(|e| e.1).sum::<usize>(), c["patch_tokens"].as_u64().unwrap() as usize);
        let rows = ImageRows {
            token: tokens.patch,
            parts: encoded.iter().map(|(b, n)| ImagePart { buf: b, first: 0, len: *n }).collect(),
        };
        let mut cache = model.new_cache().unwrap();
        let seq = cache.add_sequence();
        let got = pollster::block_on(model.forward(&mut cache, &[(seq, &ids)], &[Some(&rows)], Rows::Last)).unwrap();
        let err = rel_err(&got, &last[i * v..(i + 1) * v]);
        eprintln!("guard prompt with images {i}: {} tokens, last-position logits rel err {err:.2e}", ids.len());
        assert!(err < F32_TOL, "conversation {i}: rel err {err:.2e}");
    }
}
