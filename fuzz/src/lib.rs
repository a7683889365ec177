//! Fuzz targets for every parser in herd-core that reads bytes from outside: one function per target,
//! `fn(&[u8])`, that feeds the bytes to herd-core's real entry point and asserts what must hold for any
//! input: no panic, an error whose message is one line, and, where it is cheap, an invariant of what was
//! parsed. A target panics when a property fails, so the same function serves two drivers:
//!
//! * `tests/bounded.rs` (part of `cargo test --workspace`): replays the seed corpus and the saved
//!   regressions, then a fixed, seeded number of proptest-generated mutations of the seeds;
//! * `src/bin/afl.rs` (feature `afl`, built by `scripts/fuzz.sh` with cargo-afl): coverage-guided long runs.
//!
//! See FUZZING.md at the repository root.

use std::fmt::Display;

use herd_core::chat::{ChatTemplate, Content, Message, Part};
use herd_core::checkpoint::{header_len, parse_header, parse_index, Checkpoint, FileBytes};
use herd_core::compressed::{is_pack_quantized, quantized_linears, CompressedTensors};
use herd_core::config::ModelConfig;
use herd_core::cpu::CpuBackend;
use herd_core::openai::{self, ApiError, Served, MAX_IMAGES, MAX_STOP};
use herd_core::source::WeightSource;
use herd_core::tokenizer::Tokenizer;
use herd_core::vision::preprocess::{self, MAX_SIDE};

/// A fuzz target: panics when a property fails.
pub type Target = fn(&[u8]);

/// Every target by name, in the order `scripts/fuzz.sh all` runs them (cheapest first).
pub const TARGETS: &[(&str, Target)] = &[
    ("ids", ids),
    ("index", index),
    ("config", config),
    ("safetensors", safetensors),
    ("compressed", compressed),
    ("image", image),
    ("chat_template", chat_template),
    ("tokenizer", tokenizer),
    ("request", request),
];

/// The target called `name`.
pub fn target(name: &str) -> Option<Target> {
    TARGETS.iter().find(|(n, _)| *n == name).map(|&(_, f)| f)
}

/// The most elements a target converts or copies per tensor, so one execution stays fast.
const MAX_NUMEL: usize = 1 << 16;

/// An error must be a non-empty single line (herd prints it after `error: `).
#[track_caller]
fn one_line(what: &str, e: impl Display) {
    let s = e.to_string();
    assert!(!s.is_empty(), "{what}: empty error message");
    assert!(!s.contains('\n') && !s.contains('\r'), "{what}: error message is not one line: {s:?}");
}

/// `config.json`: [`ModelConfig::from_json_bytes`] (text and vision config). A parsed config's per-layer
/// vectors have one entry per layer, and every size derived from it is computed without overflow.
pub fn config(data: &[u8]) {
    let c = match ModelConfig::from_json_bytes(data) {
        Ok(c) => c,
        Err(e) => return one_line("config", e),
    };
    let t = &c.text;
    let n = t.num_hidden_layers;
    assert_eq!(t.moe_layers.len(), n, "moe_layers");
    assert_eq!(t.use_rope.len(), n, "use_rope");
    assert_eq!(t.layer_types.len(), n, "layer_types");
    assert!(t.num_moe_layers() <= n);
    assert!(t.hidden_size > 0 && t.num_attention_heads > 0 && t.num_key_value_heads > 0 && t.head_dim > 0);
    if t.num_moe_layers() > 0 {
        assert!(
            (1..=t.num_local_experts).contains(&t.num_experts_per_tok),
            "MoE layers with top-{} of {} experts",
            t.num_experts_per_tok,
            t.num_local_experts
        );
    }
    assert_eq!(t.rope_inv_freq().len(), t.head_dim / 2);
    let _ = t.decode_params();
    let _ = t.total_params();
    if let Some(v) = &c.vision {
        let _ = v.head_dim();
        let _ = v.patches_per_side();
        let _ = v.tokens_per_tile();
    }
    // Parsing is a function of the bytes.
    let again = ModelConfig::from_json_bytes(data).expect("a config that parsed once parses again");
    assert_eq!(format!("{:?}", again.text), format!("{:?}", c.text));
}

/// A safetensors file: [`header_len`] and [`parse_header`] (what the browser reads from one range request),
/// then [`Checkpoint::from_bytes`] and a read of every tensor it lists. Whatever both accept they agree on.
pub fn safetensors(data: &[u8]) {
    const PATH: &str = "fuzz.safetensors";
    let header = match header_len(PATH, data) {
        Ok(n) => {
            assert!(n >= 8);
            match parse_header(PATH, data, data.len()) {
                Ok(ts) => {
                    for t in &ts {
                        assert!(n <= t.start && t.start <= t.end && t.end <= data.len(), "{} out of range", t.name);
                        if let Some(dt) = t.dtype {
                            assert_eq!(dt.bytes(&t.shape), Ok(t.end - t.start), "{}", t.name);
                        }
                        let _ = t.logical();
                    }
                    Some(ts)
                }
                Err(e) => {
                    one_line("parse_header", e);
                    None
                }
            }
        }
        Err(e) => {
            one_line("header_len", e);
            None
        }
    };
    let ck = match Checkpoint::from_bytes(vec![(PATH.into(), FileBytes::Owned(data.to_vec()))]) {
        Ok(ck) => ck,
        Err(e) => return one_line("Checkpoint::from_bytes", e),
    };
    let header = header.expect("parse_header refused a file Checkpoint::from_bytes took");
    for (name, t) in ck.tensors() {
        let b = t.bytes();
        assert_eq!(t.dtype.bytes(&t.shape), Ok(b.len()), "{name}");
        let (s, e) = t.range();
        assert!(header.iter().any(|h| h.name == t.name && (h.start, h.end) == (s, e)), "{name}: not in the header");
        if t.numel() <= MAX_NUMEL {
            assert_eq!(t.to_f32().len(), t.numel());
        }
        assert!(ck.get_shaped(name, &t.shape).is_ok());
        assert!(ck.contains(name));
    }
    for (name, r) in ck.raw_tensors() {
        let _ = r.bytes();
        // A tensor herd cannot compute with is an error naming it when asked for.
        if let Err(e) = ck.get(name) {
            one_line("Checkpoint::get", e);
        }
    }
    if let Err(e) = ck.get("model.norm.weight") {
        one_line("Checkpoint::get", e);
    }
}

/// `model.safetensors.index.json`: [`parse_index`]. The shards it accepts are sorted, distinct, and inside
/// the model directory.
pub fn index(data: &[u8]) {
    match parse_index(data) {
        Ok(shards) => {
            assert!(shards.windows(2).all(|w| w[0] < w[1]), "shards not sorted and distinct");
            for s in &shards {
                assert!(!s.contains('/') && !s.contains('\\') && !s.starts_with('.'), "shard {s:?} escapes");
            }
        }
        Err(e) => one_line("parse_index", e),
    }
}

/// compressed-tensors: [`is_pack_quantized`] on a `config.json` (input that is JSON), or a pack-quantized
/// safetensors file (input that is not): every quantized Linear it lists is converted to herd's format on the
/// CPU backend, and so are the fused expert tensors built from per-expert Linears.
pub fn compressed(data: &[u8]) {
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) {
        if let Err(e) = is_pack_quantized(&v) {
            one_line("is_pack_quantized", e);
        }
        return;
    }
    let ck = match Checkpoint::from_bytes(vec![("fuzz.safetensors".into(), FileBytes::Owned(data.to_vec()))]) {
        Ok(ck) => ck,
        Err(e) => return one_line("Checkpoint::from_bytes", e),
    };
    let linears = match quantized_linears(&ck) {
        Ok(l) => l,
        Err(e) => return one_line("quantized_linears", e),
    };
    let be = CpuBackend::new();
    let src = CompressedTensors { ck: &ck };
    let shape_of = |stem: &str| -> Option<[usize; 2]> {
        let b = ck.raw(&format!("{stem}.weight_shape"))?.bytes();
        let v: Vec<i64> = b.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect();
        match v[..] {
            [o, i] if o >= 0 && i >= 0 => Some([o as usize, i as usize]),
            _ => None,
        }
    };
    let mut work = 0usize;
    for l in linears.iter().take(64) {
        assert!(l.bits == 4 || l.bits == 8, "{}: {} bits", l.stem, l.bits);
        let Some(shape) = shape_of(&l.stem) else { continue };
        assert_eq!(shape[0].checked_mul(shape[1]), Some(l.numel), "{}", l.stem);
        work = work.saturating_add(l.numel);
        if work > 4 * MAX_NUMEL {
            break;
        }
        let name = format!("{}.weight", l.stem);
        assert!(WeightSource::<CpuBackend>::contains(&src, &name));
        if let Err(e) = src.weight(&be, &name, &shape) {
            one_line("CompressedTensors::weight", e);
        }
        // The fused expert tensors of an MoE layer, from its per-expert Linears.
        let Some(prefix) = l.stem.strip_suffix("experts.0.gate_proj") else { continue };
        let experts = (0..).take_while(|e| ck.raw(&format!("{prefix}experts.{e}.gate_proj.weight_packed")).is_some());
        let n = experts.count().min(16);
        let up = shape_of(&format!("{prefix}experts.0.up_proj")).unwrap_or([0, 0]);
        let down = shape_of(&format!("{prefix}experts.0.down_proj")).unwrap_or([0, 0]);
        // The sizes come from the file: the work cap must not overflow either.
        let Some(rows) = shape[0].checked_add(up[0]) else { continue };
        let gate_up = [n, shape[1], rows];
        let down = [n, down[1], down[0]];
        let xs = WeightSource::<CpuBackend>::experts(&src).expect("compressed-tensors streams experts");
        for (suffix, shape) in [("experts.gate_up_proj", gate_up), ("experts.down_proj", down)] {
            let numel = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
            if numel.is_none_or(|n| n > 4 * MAX_NUMEL) {
                continue;
            }
            let name = format!("{prefix}{suffix}");
            if let Err(e) = src.weight(&be, &name, &shape) {
                one_line("CompressedTensors::weight (fused)", e);
            }
            match xs.format(&name, &shape) {
                Ok(_) => {
                    for e in 0..n.min(2) {
                        match xs.fetch(&name, &shape, e) {
                            Ok(t) => assert_eq!(t.shape[0], 1),
                            Err(err) => one_line("ExpertSource::fetch", err),
                        }
                    }
                }
                Err(e) => one_line("ExpertSource::format", e),
            }
        }
    }
}

/// The fixed text every loaded tokenizer encodes: ASCII, special-token strings, multi-byte characters.
const TEXT: &str = "And God said, <|begin_of_text|>Let there be light\u{e9}\u{1F600} <|eot|>\n\t 42";

/// `tokenizer.json`: [`Tokenizer::from_bytes`]; a loaded tokenizer encodes and decodes [`TEXT`] and streams
/// its ids back.
pub fn tokenizer(data: &[u8]) {
    let t = match Tokenizer::from_bytes(data) {
        Ok(t) => t,
        Err(e) => return one_line("Tokenizer::from_bytes", e),
    };
    let _ = t.vocab_size();
    for ids in [t.encode(TEXT, true), t.encode_plain(TEXT, true), t.encode_rendered(TEXT)] {
        let ids = match ids {
            Ok(ids) => ids,
            Err(e) => {
                one_line("Tokenizer::encode", e);
                continue;
            }
        };
        for skip in [false, true] {
            if let Err(e) = t.decode(&ids, skip) {
                one_line("Tokenizer::decode", e);
            }
        }
        let mut s = t.stream_decoder(false);
        for &id in ids.iter().take(64) {
            let _ = t.is_special(id);
            let _ = t.id_to_token(id);
            if let Err(e) = s.push(id) {
                one_line("StreamDecoder::push", e);
                break;
            }
        }
        if let Err(e) = s.finish() {
            one_line("StreamDecoder::finish", e);
        }
    }
    // Ids the tokenizer does not know are skipped, not a panic.
    let _ = t.decode(&[u32::MAX, 0, 1, 2], false);
}

/// The input both as a `tokenizer_config.json` ([`ChatTemplate::from_config_str`]) and as a bare template
/// ([`ChatTemplate::from_template`]); each template that loads renders a fixed short conversation, with and
/// without tools. A hostile template must end in an error, not hang or exhaust memory.
pub fn chat_template(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    match ChatTemplate::from_config_str(&text) {
        Ok(t) => render(&t),
        Err(e) => one_line("ChatTemplate::from_config_str", e),
    }
    match ChatTemplate::from_template(&text, Some("<|begin_of_text|>"), Some("<|eot|>")) {
        Ok(t) => render(&t),
        Err(e) => one_line("ChatTemplate::from_template", e),
    }
}

fn render(t: &ChatTemplate) {
    let _ = (t.bos(), t.eos(), t.names());
    let messages = [
        Message::system("You are terse."),
        Message::user("And God said"),
        Message::assistant("Let there be light."),
        Message::user_with_images(1, "What is this?"),
    ];
    let tools = [serde_json::json!({
        "type": "function",
        "function": {"name": "verse", "description": "Looks a verse up", "parameters": {"type": "object",
            "properties": {"book": {"type": "string"}}, "required": ["book"]}}
    })];
    for (tools, gen) in [(None, true), (Some(&tools[..]), false)] {
        if let Err(e) = t.render(&messages, tools, gen) {
            one_line("ChatTemplate::render", e);
        }
    }
}

/// An image file: [`preprocess::decode`] (PNG, JPEG, WebP, GIF). Each frame has the size it says, within
/// the limits, and a small one resizes.
pub fn image(data: &[u8]) {
    let frames = match preprocess::decode(data) {
        Ok(f) => f,
        Err(e) => return one_line("decode", e),
    };
    assert!(!frames.is_empty());
    for f in &frames {
        assert!(f.width > 0 && f.height > 0 && f.width <= MAX_SIDE && f.height <= MAX_SIDE);
        assert_eq!(f.data.len(), f.width as usize * f.height as usize * 3);
    }
    if let Some(f) = frames.first().filter(|f| f.width as usize * f.height as usize <= MAX_NUMEL) {
        let r = preprocess::resize(f, 7, 5);
        assert_eq!((r.height, r.width, r.data.len()), (7, 5, 7 * 5 * 3));
    }
}

/// The `input_ids` safetensors file of `herd logits` / `herd greedy`: [`herd_core::ids::parse_input_ids`].
/// Rows are non-empty and of one length.
pub fn ids(data: &[u8]) {
    match herd_core::ids::parse_input_ids(data) {
        Ok(rows) => {
            assert!(!rows.is_empty() && !rows[0].is_empty());
            assert!(rows.iter().all(|r| r.len() == rows[0].len()));
        }
        Err(e) => one_line("parse_input_ids", e),
    }
}

/// The fixture model's tokenizer and chat template, and what a server of it checks requests against (a
/// short context, so that over-long prompts are reached).
struct Fixture {
    tok: Tokenizer,
    tmpl: ChatTemplate,
    served: Served,
}

fn fixture() -> &'static Fixture {
    static F: std::sync::OnceLock<Fixture> = std::sync::OnceLock::new();
    F.get_or_init(|| {
        let tok = Tokenizer::from_bytes(include_bytes!("../../tests/fixtures/tokenizer/tokenizer.json"))
            .expect("the fixture tokenizer loads");
        let tmpl = ChatTemplate::from_config_str(include_str!("../../tests/fixtures/tokenizer/tokenizer_config.json"))
            .expect("the fixture chat template loads");
        let served = Served {
            model_id: "fixture".into(),
            context: 96,
            vocab_size: tok.vocab_size(),
            defaults: Default::default(),
            constrainer: None,
            stop_ids: vec![1],
        };
        Fixture { tok, tmpl, served }
    })
}

/// A refusal of a request: a client error (400, or 404 for another model) with a one-line message.
#[track_caller]
fn refused(what: &str, e: ApiError) {
    one_line(what, &e);
    assert!(e.status == 400 || (e.status == 404 && e.code == Some("model_not_found")), "{what}: {e}");
    let body = e.body();
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(!message.is_empty() && !message.contains(['\n', '\r']), "{what}: the body's message {message:?}");
}

/// A body of `POST /v1/chat/completions` and of `POST /v1/completions` for `herd serve`:
/// [`openai::parse_body`], then [`openai::conversation`], [`openai::chat_ids`] (the fixture's template and
/// tokenizer) and [`openai::generation`]; and [`openai::completion_ids`] and `generation`. What is accepted
/// is within the model: a non-empty prompt of known ids within the context, a budget within the context,
/// valid sampling, at most [`MAX_STOP`] non-empty stop strings, at most 20 log-probabilities, penalties in
/// [-2, 2], one decoded image per image part.
pub fn request(data: &[u8]) {
    let f = fixture();
    let m = match openai::parse_body(data) {
        Ok(m) => m,
        Err(e) => return refused("parse_body", e),
    };
    let check = |g: &openai::Gen| {
        let r = &g.req;
        assert!(!r.prompt.is_empty() && r.prompt.len() <= f.served.context);
        assert!(r.prompt.iter().all(|&t| (t as usize) < f.served.vocab_size));
        assert!(r.params.max_tokens <= f.served.context);
        r.params.sampling.validate().expect("accepted sampling parameters are valid");
        assert!(g.stop.len() <= MAX_STOP && g.stop.iter().all(|s| !s.is_empty()));
        assert!(r.logprobs.is_none_or(|n| n <= herd_core::schedule::MAX_TOP_LOGPROBS));
        assert!((-2.0..=2.0).contains(&r.presence_penalty) && (-2.0..=2.0).contains(&r.frequency_penalty));
    };
    match openai::conversation(&m) {
        Ok(c) => {
            let parts = c
                .messages
                .iter()
                .map(|m| match &m.content {
                    Content::Parts(p) => p.iter().filter(|p| matches!(p, Part::Image)).count(),
                    Content::Text(_) => 0,
                })
                .sum::<usize>();
            assert_eq!(parts, c.images.len());
            assert!(c.images.len() <= MAX_IMAGES && c.images.iter().all(|b| !b.is_empty()));
            // Tools the request lists go to the template; a bad list is refused by `generation` too.
            let tools = herd_core::tools::parse(&m).ok().flatten();
            match openai::chat_ids(&c.messages, tools.as_ref().and_then(|t| t.for_template()), Some(&f.tmpl), &f.tok) {
                Ok(ids) => match openai::generation(&f.served, &m, ids, true) {
                    Ok(g) => check(&g),
                    Err(e) => refused("generation (chat)", e),
                },
                Err(e) => refused("chat_ids", e),
            }
        }
        Err(e) => refused("conversation", e),
    }
    match openai::completion_ids(&m, &f.tok) {
        Ok(ids) => match openai::generation(&f.served, &m, ids, false) {
            Ok(g) => check(&g),
            Err(e) => refused("generation (completion)", e),
        },
        Err(e) => refused("completion_ids", e),
    }
}
