//! End-to-end tests of images through the `herd` binary, against transformers' reference for the
//! `scout_vision` fixture (tests/tools/make_vision_model.py): `herd run --image`, `herd logits` with
//! `pixel_values`, `herd chat`'s `/image`, and the errors for bad images and over-long prompts.

mod common;

use common::*;
use herd_conformance::vision::{VisionReference, NAME};
use herd_core::tokenizer::Tokenizer;

fn images() -> Vec<String> {
    let r = VisionReference::load();
    r.images.iter().map(|f| s(&fixture_dir("vision").join(f)).to_owned()).collect()
}

/// The fixture's prompt: `TEXT` of reference.json (`<|image|>` placeholders where the images go).
fn prompt_text() -> String {
    let j: Value = serde_json::from_slice(&std::fs::read(fixture_dir(NAME).join("reference.json")).unwrap()).unwrap();
    j["prompt"]["text"].as_str().unwrap().to_owned()
}

fn check_run(backend: &str) {
    let r = VisionReference::load();
    let model = fixture_dir(NAME);
    let imgs = images();
    let n = r.greedy_ids.len().to_string();
    let text = prompt_text();
    let mut args = vec!["run", "--model", s(&model), "--prompt", &text, "--temperature", "0", "--max-tokens", &n];
    args.extend(["--backend", backend, "--kv-dtype", "f32"]);
    for i in &imgs {
        args.extend(["--image", i.as_str()]);
    }
    let (out, err) = ok("run with images", herd(args));
    // The prompt's ids are the processor's (its length says the images expanded alike), and the text is
    // transformers' greedy continuation.
    assert!(err.contains(&format!("prefill: {} tokens", r.input_ids.len())), "{err}");
    assert!(err.contains("2 images, 6 tiles encoded"), "{err}");
    let tok = Tokenizer::from_dir(&model).unwrap();
    let want = tok.decode(&r.greedy_ids, true).unwrap();
    assert_eq!(out.strip_suffix('\n').unwrap_or(&out), want, "{backend}: {err}");
}

#[test]
fn run_with_images_prints_the_transformers_greedy_text() {
    check_run("cpu");
}

#[test]
fn run_with_images_on_wgpu_prints_the_transformers_greedy_text() {
    match herd_wgpu::WgpuBackend::new() {
        Ok(_) => check_run("wgpu"),
        Err(e) => {
            herd_core::not_run("wgpu", Some("HERD_REQUIRE_WGPU"), &e);
        }
    }
}

/// The memory plan counts the vision tower's weights when images load it (on wgpu, where the device holds
/// the weights): --device-memory 1500KiB holds the text model and a short chat (1.0 MB before any context),
/// not with an image (1.9 MB: the tower's 771 KiB and the longer prompt's step); one line says so.
#[test]
fn the_memory_plan_counts_the_vision_tower() {
    if let Err(e) = herd_wgpu::WgpuBackend::new() {
        herd_core::not_run("wgpu", Some("HERD_REQUIRE_WGPU"), &e);
        return;
    }
    let model = fixture_dir(NAME);
    let img = images().remove(1);
    let run = |image: bool| {
        let mut args = vec!["run", "--model", s(&model), "--backend", "wgpu", "--chat", "--prompt", "What is this?"];
        args.extend(["--max-tokens", "2", "--device-memory", "1500KiB"]);
        if image {
            args.extend(["--image", img.as_str()]);
        }
        herd(args)
    };
    ok("a chat that fits", run(false));
    let line = fails("a chat with an image", run(true), &["not enough memory (--device-memory: 1.5 MiB)"]);
    assert!(line.contains("its weights include the vision tower's 771.0 KiB"), "{line}");
}

/// The fixture's pixel values as the processor made them (tests/fixtures/vision/pixels.safetensors).
fn reference_pixels() -> (Vec<f32>, usize) {
    let bytes = std::fs::read(fixture_dir("vision").join("pixels.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let table: Vec<f32> =
        st.tensor("table").unwrap().data().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
    let mut px = Vec::new();
    let mut tiles = 0;
    for f in &VisionReference::load().images {
        let t = st.tensor(f).unwrap();
        tiles += t.shape()[0];
        px.extend(t.data().iter().map(|&c| table[c as usize]));
    }
    (px, tiles)
}

fn write_input(path: &Path, ids: &[u32], pixels: Option<(&[f32], Vec<usize>)>) {
    let idb: Vec<u8> = ids.iter().flat_map(|&x| (x as i64).to_le_bytes()).collect();
    let mut views = vec![("input_ids".to_owned(), TensorView::new(Dtype::I64, vec![1, ids.len()], &idb).unwrap())];
    let pb: Vec<u8>;
    if let Some((px, shape)) = pixels {
        pb = px.iter().flat_map(|x| x.to_le_bytes()).collect();
        views.push(("pixel_values".to_owned(), TensorView::new(Dtype::F32, shape, &pb).unwrap()));
    }
    let map: HashMap<String, TensorView> = views.into_iter().collect();
    safetensors::serialize_to_file(&map, None, path).unwrap();
}

/// `herd logits` with the processor's own `pixel_values` beside `input_ids`: the last rows' logits are
/// transformers', prefill and decode.
#[test]
fn logits_with_pixel_values_match_transformers() {
    let r = VisionReference::load();
    let (px, tiles) = reference_pixels();
    let sc = Scratch::new("vision-logits");
    let (input, output) = (sc.path("in.safetensors"), sc.path("out.safetensors"));
    write_input(&input, &r.input_ids, Some((&px, vec![tiles, 3, 336, 336])));
    let model = fixture_dir(NAME);
    for decode in [false, true] {
        let mut args = vec!["logits", "--model", s(&model), "--input", s(&input), "--output", s(&output)];
        if decode {
            args.push("--decode");
        }
        ok("logits with pixel_values", herd(args));
        let (_, shape, data) = read_tensor(&output, "logits");
        let v = shape[2];
        let all: Vec<f32> = data.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
        let tail = &all[(r.input_ids.len() - r.tail) * v..];
        let e = rel_err(tail, &r.logits_tail);
        assert!(e <= F32_TOL, "decode={decode}: relative error {e:.3e}");
    }
}

#[test]
fn bad_pixel_values_and_images_are_refused_with_one_line() {
    let r = VisionReference::load();
    let sc = Scratch::new("vision-bad");
    let model = fixture_dir(NAME);
    let (input, output) = (sc.path("in.safetensors"), sc.path("out.safetensors"));
    // pixel_values of the wrong shape, and too few tiles for the prompt's <|patch|> tokens
    let px = vec![0f32; 2 * 3 * 336 * 336];
    write_input(&input, &r.input_ids, Some((&px, vec![2, 3, 336, 336])));
    let logits = |i: &Path| herd(["logits", "--model", s(&model), "--input", s(i), "--output", s(&output)]);
    fails("too few tiles", logits(&input), &["2 tiles", "864 image patch tokens"]);
    write_input(&input, &r.input_ids, Some((&px[..3 * 336 * 336 * 2 - 336 * 336 * 2], vec![2, 2, 336, 336])));
    fails("wrong shape", logits(&input), &["pixel_values", "[2, 2, 336, 336]", "[tiles, 3, 336, 336]"]);
    write_input(&input, &r.input_ids, Some((&px, vec![2, 3, 336, 336])));
    fails(
        "text-only model",
        herd(["logits", "--model", s(&fixture_dir("scout")), "--input", s(&input), "--output", s(&output)]),
        &["no vision tower"],
    );
    assert!(!output.exists(), "a refused run wrote its output");

    // Bad image files for `herd run --image`.
    let run = |img: &Path| herd(["run", "--model", s(&model), "--prompt", "hi", "--image", s(img)]);
    let empty = sc.path("empty.png");
    std::fs::write(&empty, b"").unwrap();
    fails("empty image", run(&empty), &["empty.png", "empty"]);
    let garbage = sc.path("garbage.jpg");
    std::fs::write(&garbage, b"\xff\xd8\xff\xe0 not really a jpeg at all").unwrap();
    fails("corrupt image", run(&garbage), &["garbage.jpg", "image"]);
    let png = std::fs::read(fixture_dir("vision").join("photo_200x300.png")).unwrap();
    let cut = sc.path("cut.png");
    std::fs::write(&cut, &png[..png.len() / 2]).unwrap();
    fails("truncated image", run(&cut), &["cut.png"]);
    let bmp = sc.path("pic.bmp");
    let mut b = b"BM".to_vec();
    b.extend([0u8; 60]);
    std::fs::write(&bmp, &b).unwrap();
    fails("unsupported format", run(&bmp), &["pic.bmp", "not supported"]);
    fails("missing file", run(&sc.path("nope.png")), &["nope.png"]);
    let dir = sc.path("frames");
    std::fs::create_dir_all(&dir).unwrap();
    fails("empty folder", run(&dir), &["frames", "no PNG, JPEG, WebP or GIF"]);
    // A huge image is refused from its header, before decoding it.
    let huge = sc.path("huge.png");
    let mut h = png.clone();
    h[16..20].copy_from_slice(&100_000u32.to_be_bytes());
    h[20..24].copy_from_slice(&100_000u32.to_be_bytes());
    let crc = crc32(&h[12..29]); // the IHDR chunk's type and data
    h[29..33].copy_from_slice(&crc.to_be_bytes());
    std::fs::write(&huge, &h).unwrap();
    fails("huge image", run(&huge), &["huge.png", "100000"]);
    // The built-in demo model has a vision_config but no tower weights.
    let img = fixture_dir("vision").join("photo_200x300.png");
    fails("demo model", herd(["run", "--prompt", "hi", "--image", s(&img)]), &["no vision tower weights"]);
}

/// Images whose tokens do not fit the context are refused before the model loads.
#[test]
fn prompts_whose_images_overflow_the_context_are_refused() {
    let model = fixture_dir(NAME);
    let img = fixture_dir("vision").join("alpha_480x640.png"); // 5 tiles: 720 patch tokens
    let mut args = vec!["run".to_owned(), "--model".into(), s(&model).into(), "--prompt".into(), "hi".into()];
    for _ in 0..6 {
        args.extend(["--image".into(), s(&img).into()]);
    }
    fails("context", herd(args), &["more than the model's context of 4096 tokens", "6 images"]);
    // A GIF is a video: its 3 frames are sampled to --max-frames.
    let gif = fixture_dir("vision").join("frames_120x160.gif");
    let (_, err) = ok(
        "video",
        herd([
            "run",
            "--model",
            s(&model),
            "--prompt",
            "hi",
            "--image",
            s(&gif),
            "--max-frames",
            "2",
            "--max-tokens",
            "2",
        ]),
    );
    assert!(err.contains("2 images, 2 tiles encoded"), "{err}");
}

/// `/image` in `herd chat`: a bad path is reported and the chat goes on; an attached image goes into the
/// next message, and a second turn reuses the conversation.
#[test]
fn chat_takes_images() {
    let model = fixture_dir(NAME);
    let img = fixture_dir("vision").join("photo_200x300.png");
    let input = format!("/image {}\n/image /no/such/file.png\nWhat is this?\nAnd now?\n", s(&img));
    let out = herd_stdin(["chat", "--model", s(&model), "--max-tokens", "3", "--temperature", "0"], Some(&input));
    let (_, err) = ok("chat", out);
    assert!(err.contains("(1 images attached to your next message)"), "{err}");
    assert!(err.contains("error: ") && err.contains("file.png"), "{err}");
    assert_eq!(err.matches("[prefill:").count(), 2, "{err}");
}

/// CRC-32 (IEEE), as PNG chunks carry it.
fn crc32(bytes: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in bytes {
        c ^= b as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
        }
    }
    !c
}
