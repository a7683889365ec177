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

#[test]
fn guard_prompts_match_transformers_rendering_and_logits() {
    let dir = fixture_dir("guard");
    let reference: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap()).unwrap();
    let tmpl = ChatTemplate::from_dir(&dir).unwrap();
    let tok = Tokenizer::from_dir(&dir).unwrap();
    let model = Llama4::from_dir(Arc::new(CpuBackend::new()), &dir, &mut |_, _| {}).unwrap();
    let bytes = std::fs::read(dir.join("reference_guard_prompts.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let last: Vec<f32> = st
        .tensor("last_logits")
        .unwrap()
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
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
        // The policy that leaves out exactly those categories.
        let keep: Vec<&str> = guard::CATEGORIES.iter().map(|(k, _)| *k).filter(|k| !excluded.contains(k)).collect();
        let policy = if excluded.is_empty() { Policy::all() } else { Policy::only(&keep.join(",")).unwrap() };
        assert_eq!(policy.excluded(), excluded.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        let conv = guard::conversation(&msgs, None);
        let mut extra = serde_json::Map::new();
        extra.insert("excluded_category_keys".into(), serde_json::json!(policy.excluded()));
        let rendered = tmpl.render_with(&conv, None, true, &extra).unwrap();
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
