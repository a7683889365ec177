//! `herd serve --guard`: Llama Guard in front of the model, on text and on images.

use super::*;

/// `--guard` with a tiny guard trained to answer `unsafe` and `S1` when the last message holds the marker word
/// (tests/fixtures/guard_marker, made by tests/tools/train_guard.py): a marked request is refused with 400 and
/// its category, another is served; an answer that must write the marker (a schema whose only value is it) is
/// cut off with `finish_reason: "content_filter"` and none of it is sent, in one body and streamed; /metrics
/// counts the verdicts by stage and category.
#[test]
fn the_guard_refuses_marked_requests_and_filters_marked_answers() {
    let guard = fixture("guard_marker");
    let s = Server::start(&["--guard", &guard, "--guard-every", "3"]);
    let marker = "zyzzyva";
    let (st, v) = s.post("/v1/chat/completions", &chat(&format!("Tell me about the {marker} please."), 4));
    assert_eq!(st, 400, "{v}");
    assert_eq!(v["error"]["code"], "content_filter", "{v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("S1 (Violent Crimes)"), "{msg}");
    let (st, v) = s.post("/v1/completions", &json!({"prompt": format!("The {marker} sat"), "max_tokens": 2}));
    assert_eq!((st, v["error"]["code"].as_str()), (400, Some("content_filter")), "{v}");
    let (st, v) = s.post("/v1/chat/completions", &chat("Tell me about the sea please.", 6));
    assert_eq!(st, 200, "{v}");
    assert_ne!(v["choices"][0]["finish_reason"], "content_filter", "{v}");
    // The answer must be {"w":"zyzzyva"}: the guard stops it.
    let schema = json!({"type": "object", "properties": {"w": {"const": marker}}, "required": ["w"],
                        "additionalProperties": false});
    let mut req = chat("Name a word.", 16);
    req["response_format"] = json!({"type": "json_schema", "json_schema": {"name": "w", "schema": schema}});
    let (st, v) = s.post("/v1/chat/completions", &req);
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["choices"][0]["finish_reason"], "content_filter", "{v}");
    assert!(v["choices"][0]["message"]["content"].is_null(), "{v}");
    req["stream"] = json!(true);
    let (st, _, body) = s.raw("POST", "/v1/chat/completions", &[], req.to_string().as_bytes());
    assert_eq!(st, 200);
    let ev = events(&body);
    let text = streamed_text(&ev);
    assert!(!text.contains(marker), "unchecked text was sent: {text:?}");
    let last: Value = serde_json::from_str(&ev[ev.len() - 2]).unwrap();
    assert_eq!(last["choices"][0]["finish_reason"], "content_filter", "{ev:?}");
    assert_eq!(ev.last().map(String::as_str), Some("[DONE]"));
    // Two refused inputs, the served one and the two answers: by stage, verdict and category.
    let m = |labels: &str| s.metric(&format!("herd_guard_verdicts_total{{{labels}}}"));
    assert_eq!(m("stage=\"input\",verdict=\"unsafe\""), 2.0);
    assert_eq!(m("stage=\"input\",verdict=\"safe\""), 3.0);
    assert!(m("stage=\"output\",verdict=\"unsafe\"") >= 2.0);
    assert_eq!(s.metric("herd_guard_unsafe_categories_total{stage=\"input\",category=\"S1\"}"), 2.0);
}

/// `--guard` and images: the guard reads a request's images with its own vision tower (the marker still
/// decides: the trained guard must not be swayed by the image), a marked request with an image is refused, and
/// an unmarked one is answered, in one body and streamed (its answer checked with the image every 3 tokens),
/// with the same text as `herd run` without a guard.
#[test]
fn the_guard_checks_requests_with_their_images() {
    let (model, guard) = (fixture("scout_vision"), fixture("guard_marker"));
    let a = fixture("vision/photo_200x300.png");
    let pa = std::fs::read(&a).unwrap();
    let want = run_with_images(&model, &[&a], "What is in the picture?");
    let s = Server::start(&["--model", &model, "--guard", &guard, "--guard-every", "3"]);
    let (st, v) = s.post("/v1/chat/completions", &image_chat(&[&pa], "What is the zyzzyva in the picture?", 8));
    assert_eq!((st, v["error"]["code"].as_str()), (400, Some("content_filter")), "{v}");
    let mut req = image_chat(&[&pa], "What is in the picture?", 8);
    let (st, v) = s.post("/v1/chat/completions", &req);
    assert_eq!(st, 200, "{v}");
    assert_eq!(text_of(&v), want);
    req["stream"] = json!(true);
    let (st, _, body) = s.raw("POST", "/v1/chat/completions", &[], req.to_string().as_bytes());
    assert_eq!(st, 200);
    assert_eq!(streamed_text(&events(&body)), want);
    let m = |labels: &str| s.metric(&format!("herd_guard_verdicts_total{{{labels}}}"));
    assert_eq!((m("stage=\"input\",verdict=\"unsafe\""), m("stage=\"input\",verdict=\"safe\"")), (1.0, 2.0));
    let outputs = m("stage=\"output\",verdict=\"safe\"");
    assert!(outputs >= 4.0, "{outputs}");
    // The model read the image of each served request, the guard that of every check.
    assert_eq!(s.metric("herd_images_total"), 2.0);
    assert_eq!(s.metric("herd_guard_images_total"), 3.0 + outputs);
}

/// The text of a stream's chunks.
fn streamed_text(events: &[String]) -> String {
    events
        .iter()
        .filter_map(|e| serde_json::from_str::<Value>(e).ok())
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str().map(str::to_owned))
        .collect()
}
