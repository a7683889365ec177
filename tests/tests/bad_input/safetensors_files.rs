//! Safetensors files: missing, truncated or corrupt files and shard indexes, tensors of the wrong shape or
//! dtype, missing tensors.

use super::*;

#[test]
fn safetensors_missing() {
    let t = TempModel::copy("scout", "st-missing");
    t.remove("model.safetensors");
    assert_load_err("model.safetensors missing", &t.dir, &[&t.path_str(), "model.safetensors"]);
}

#[test]
fn safetensors_truncated() {
    let full = std::fs::read(fixture_dir("scout").join("model.safetensors")).unwrap();
    let n = header_len(&full);
    let cuts = [
        ("empty file", 0),
        ("inside the 8-byte length", 3),
        ("right after the length", 8),
        ("inside the JSON header", 8 + n / 2),
        ("just before the header ends", 8 + n - 1),
        ("right after the header", 8 + n),
        ("inside the data", 8 + n + (full.len() - 8 - n) / 2),
        ("one byte short", full.len() - 1),
    ];
    for (what, cut) in cuts {
        let t = TempModel::copy("scout", "st-truncated");
        t.write("model.safetensors", &full[..cut]);
        assert_load_err(
            &format!("model.safetensors cut {what} ({cut} of {} bytes)", full.len()),
            &t.dir,
            &["model.safetensors", "not a valid safetensors file"],
        );
    }
}

#[test]
fn safetensors_trailing_garbage() {
    let mut full = std::fs::read(fixture_dir("scout").join("model.safetensors")).unwrap();
    full.extend_from_slice(b"trailing bytes");
    let t = TempModel::copy("scout", "st-trailing");
    t.write("model.safetensors", &full);
    assert_load_err(
        "model.safetensors with trailing bytes",
        &t.dir,
        &["model.safetensors", "not a valid safetensors file"],
    );
}

#[test]
fn safetensors_header_garbage() {
    let full = std::fs::read(fixture_dir("scout").join("model.safetensors")).unwrap();
    let n = header_len(&full);
    let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();

    // The JSON header overwritten with junk of the same length.
    let mut junk = full.clone();
    junk[8..8 + n].iter_mut().enumerate().for_each(|(i, b)| *b = b"#@!garbage"[i % 10]);
    cases.push(("junk JSON header", junk));

    // Invalid UTF-8 in the header.
    let mut not_utf8 = full.clone();
    not_utf8[8 + n / 2] = 0xff;
    cases.push(("invalid UTF-8 in the header", not_utf8));

    // A header length far larger than the file.
    let mut huge = full.clone();
    huge[..8].copy_from_slice(&(1u64 << 40).to_le_bytes());
    cases.push(("header length 2^40", huge));
    let mut max = full.clone();
    max[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    cases.push(("header length u64::MAX", max));

    // A header length one byte off (the JSON ends early / late).
    let mut off = full.clone();
    off[..8].copy_from_slice(&((n - 1) as u64).to_le_bytes());
    cases.push(("header length one short", off));

    // A whole file of random-looking bytes.
    let mut x: u32 = 12345;
    let random: Vec<u8> = (0..4096)
        .map(|_| {
            x = x.wrapping_mul(1664525).wrapping_add(1013904223);
            (x >> 24) as u8
        })
        .collect();
    cases.push(("random bytes", random));

    // Valid JSON, but the offsets point past the end of the file.
    let header = br#"{"model.norm.weight":{"dtype":"F32","shape":[1000000],"data_offsets":[0,4000000]}}"#;
    let mut past_end = (header.len() as u64).to_le_bytes().to_vec();
    past_end.extend_from_slice(header);
    past_end.extend_from_slice(&[0u8; 64]);
    cases.push(("offsets past the end of the file", past_end));

    // Valid JSON, offsets that overlap.
    let header = br#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#;
    let mut overlap = (header.len() as u64).to_le_bytes().to_vec();
    overlap.extend_from_slice(header);
    overlap.extend_from_slice(&[0u8; 12]);
    cases.push(("overlapping offsets", overlap));

    // Valid JSON, a shape whose element count overflows.
    let header = br#"{"a":{"dtype":"F32","shape":[4294967296,4294967296,4294967296],"data_offsets":[0,8]}}"#;
    let mut overflow = (header.len() as u64).to_le_bytes().to_vec();
    overflow.extend_from_slice(header);
    overflow.extend_from_slice(&[0u8; 8]);
    cases.push(("shape overflows", overflow));

    for (what, bytes) in cases {
        let t = TempModel::copy("scout", "st-garbage");
        t.write("model.safetensors", &bytes);
        assert_load_err(
            &format!("model.safetensors: {what}"),
            &t.dir,
            &["model.safetensors", "not a valid safetensors file"],
        );
    }
}

/// A tensor name is copied into the message: a name with a line break in it must not make the message
/// span lines. An unused tensor in a format herd cannot compute with does not stop the model loading; it is
/// reported when asked for.
#[test]
fn tensor_name_with_newline_stays_one_line() {
    let t = TempModel::copy("scout", "st-newline-name");
    t.rewrite_safetensors("model.safetensors", |m| {
        m.insert("evil\nname".into(), (Dtype::I64, vec![2], vec![0u8; 16]));
    });
    assert!(load(&t.dir).is_ok(), "an unused I64 tensor must not stop loading");
    let ck = herd_core::checkpoint::Checkpoint::open_dir(&t.dir).unwrap();
    assert_err("tensor name with a newline", ck.get("evil\nname").map(|_| ()), &["evil", "unsupported dtype"]);
}

#[test]
fn shard_missing() {
    let t = TempModel::copy("maverick", "shard-missing");
    t.remove("model-00003-of-00005.safetensors");
    assert_load_err("shard missing", &t.dir, &["model-00003-of-00005.safetensors"]);
}

#[test]
fn shard_truncated() {
    let t = TempModel::copy("maverick", "shard-truncated");
    let full = t.read("model-00004-of-00005.safetensors");
    t.write("model-00004-of-00005.safetensors", &full[..full.len() - 100]);
    assert_load_err("shard truncated", &t.dir, &["model-00004-of-00005.safetensors", "not a valid safetensors file"]);
}

#[test]
fn index_corrupt() {
    let idx = "model.safetensors.index.json";
    let full = std::fs::read(fixture_dir("maverick").join(idx)).unwrap();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("garbage", b"\x00\x01garbage".to_vec(), "not valid JSON"),
        ("truncated", full[..full.len() / 2].to_vec(), "not valid JSON"),
        ("empty", Vec::new(), "not valid JSON"),
        ("no weight_map", br#"{"metadata": {}}"#.to_vec(), "weight_map"),
        ("weight_map a list", br#"{"weight_map": ["a", "b"]}"#.to_vec(), "weight_map"),
        ("file name not a string", br#"{"weight_map": {"lm_head.weight": 5}}"#.to_vec(), "lm_head.weight"),
        (
            "path outside the dir",
            br#"{"weight_map": {"lm_head.weight": "../../etc/passwd"}}"#.to_vec(),
            "outside the model directory",
        ),
    ];
    for (what, bytes, want) in cases {
        let t = TempModel::copy("maverick", "index-corrupt");
        t.write(idx, &bytes);
        assert_load_err(&format!("index.json {what}"), &t.dir, &[idx, want]);
    }
}

#[test]
fn index_lists_nonexistent_shard() {
    let t = TempModel::copy("maverick", "index-extra-shard");
    let mut v: Value = serde_json::from_slice(&t.read("model.safetensors.index.json")).unwrap();
    v["weight_map"]["language_model.model.norm.weight"] = json!("model-00009-of-00009.safetensors");
    t.write("model.safetensors.index.json", serde_json::to_string(&v).unwrap().as_bytes());
    assert_load_err("index names a shard that is not there", &t.dir, &["model-00009-of-00009.safetensors"]);
}

#[test]
fn tensor_wrong_shape() {
    let t = TempModel::copy("scout", "wrong-shape");
    let name = "model.layers.2.self_attn.q_proj.weight";
    t.rewrite_safetensors("model.safetensors", |m| {
        let (_, shape, data) = m.get_mut(name).unwrap();
        assert_eq!(shape, &vec![64, 32], "fixture changed");
        // One row fewer.
        shape[0] -= 1;
        data.truncate(shape[0] * shape[1] * 4);
    });
    assert_load_err("q_proj one row short", &t.dir, &[&format!("`{name}`"), "[63, 32]", "[64, 32]"]);
}

#[test]
fn tensor_wrong_shape_in_shard() {
    // Maverick's tensors are stored under `language_model.`; the message names the stored name.
    let t = TempModel::copy("maverick", "wrong-shape-shard");
    let idx: Value = serde_json::from_slice(&t.read("model.safetensors.index.json")).unwrap();
    let name = "language_model.model.layers.1.feed_forward.experts.gate_up_proj";
    let shard = idx["weight_map"][name].as_str().unwrap().to_owned();
    t.rewrite_safetensors(&shard, |m| {
        let (_, shape, data) = m.get_mut(name).unwrap();
        // [E, D, 2F] → [E, D, 2F - 2]: transposed-layout mistakes look like this.
        let old = shape.clone();
        shape[2] -= 2;
        let n: usize = shape.iter().product();
        data.truncate(n * 4);
        assert_eq!(old, vec![8, 32, 32], "fixture changed");
    });
    assert_load_err("expert gate_up_proj narrower", &t.dir, &[&format!("`{name}`"), "[8, 32, 30]", "[8, 32, 32]"]);
}

#[test]
fn tensor_transposed() {
    let t = TempModel::copy("scout", "transposed");
    let name = "model.layers.0.self_attn.o_proj.weight";
    t.rewrite_safetensors("model.safetensors", |m| {
        let (_, shape, _) = m.get_mut(name).unwrap();
        // [32, 64] → [64, 32], same bytes.
        shape.swap(0, 1);
    });
    assert_load_err("o_proj transposed", &t.dir, &[&format!("`{name}`"), "[64, 32]", "expected [32, 64]"]);
}

#[test]
fn tensor_unsupported_dtype() {
    let name = "model.layers.1.input_layernorm.weight";
    for (dtype, size, label) in [(Dtype::I64, 8, "I64"), (Dtype::U8, 1, "U8"), (Dtype::F64, 8, "F64")] {
        let t = TempModel::copy("scout", "bad-dtype");
        t.rewrite_safetensors("model.safetensors", |m| {
            let (d, shape, data) = m.get_mut(name).unwrap();
            *d = dtype;
            *data = vec![0u8; shape.iter().product::<usize>() * size];
        });
        assert_load_err(
            &format!("{label} weight"),
            &t.dir,
            &[&format!("`{name}`"), "unsupported dtype", label, "model.safetensors"],
        );
    }
}

#[test]
fn tensor_unsupported_dtype_big_weight() {
    let name = "model.embed_tokens.weight";
    let t = TempModel::copy("scout", "bad-dtype-embed");
    t.rewrite_safetensors("model.safetensors", |m| {
        let (d, shape, data) = m.get_mut(name).unwrap();
        *d = Dtype::U8;
        *data = vec![7u8; shape.iter().product::<usize>()];
    });
    assert_load_err("U8 embedding", &t.dir, &[&format!("`{name}`"), "unsupported dtype", "U8"]);
}

#[test]
fn required_tensor_missing() {
    for name in [
        "model.norm.weight",
        "lm_head.weight",
        "model.layers.5.feed_forward.router.weight",
        "model.layers.7.self_attn.v_proj.weight",
    ] {
        let t = TempModel::copy("scout", "tensor-missing");
        t.rewrite_safetensors("model.safetensors", |m| {
            m.remove(name).unwrap();
        });
        assert_load_err(&format!("{name} dropped"), &t.dir, &[&format!("`{name}`"), "missing"]);
    }
}

#[test]
fn required_tensor_missing_from_shards() {
    let t = TempModel::copy("maverick", "tensor-missing-shard");
    let idx: Value = serde_json::from_slice(&t.read("model.safetensors.index.json")).unwrap();
    let stored = "language_model.model.layers.2.feed_forward.down_proj.weight";
    let shard = idx["weight_map"][stored].as_str().unwrap().to_owned();
    t.rewrite_safetensors(&shard, |m| {
        m.remove(stored).unwrap();
    });
    // Reported by its logical name.
    assert_load_err(
        "dense down_proj dropped from its shard",
        &t.dir,
        &["`model.layers.2.feed_forward.down_proj.weight`", "missing"],
    );
}

#[test]
fn tensor_duplicated_across_shards() {
    let t = TempModel::copy("maverick", "tensor-twice");
    let idx: Value = serde_json::from_slice(&t.read("model.safetensors.index.json")).unwrap();
    let stored = "language_model.model.norm.weight";
    let shard = idx["weight_map"][stored].as_str().unwrap().to_owned();
    let other = if shard == "model-00001-of-00005.safetensors" {
        "model-00002-of-00005.safetensors"
    } else {
        "model-00001-of-00005.safetensors"
    };
    // The same logical tensor, once with the multimodal prefix and once without.
    t.rewrite_safetensors(other, |m| {
        m.insert("model.norm.weight".into(), (Dtype::F32, vec![32], vec![0u8; 128]));
    });
    assert_load_err("norm twice", &t.dir, &["norm.weight", "appears twice"]);
}

#[test]
fn hidden_size_disagrees_with_tensors() {
    for (fixture, embed) in
        [("scout", "model.embed_tokens.weight"), ("maverick", "language_model.model.embed_tokens.weight")]
    {
        let t = TempModel::copy(fixture, "hidden-size");
        t.edit_config(|c| {
            c.insert("hidden_size".into(), json!(48));
        });
        assert_load_err(
            &format!("{fixture} hidden_size 48"),
            &t.dir,
            &[&format!("`{embed}`"), "[2048, 32]", "expected [2048, 48]"],
        );
    }
}

#[test]
fn vocab_size_disagrees_with_tensors() {
    let t = TempModel::copy("guard", "vocab-size");
    t.edit_config(|c| {
        c.insert("vocab_size".into(), json!(4096));
    });
    assert_load_err(
        "guard vocab_size 4096",
        &t.dir,
        &["`language_model.model.embed_tokens.weight`", "[2048, 64]", "expected [4096, 64]"],
    );
}

#[test]
fn intact_copies_load() {
    // The helpers themselves do not break anything: an unmodified copy, and one rewritten through
    // serialize_to_file unchanged, both load.
    for fixture in ["scout", "maverick", "guard"] {
        let t = TempModel::copy(fixture, "intact");
        load_ok(&t.dir);
    }
    let t = TempModel::copy("scout", "intact-rewritten");
    t.rewrite_safetensors("model.safetensors", |_| {});
    load_ok(&t.dir);
}
