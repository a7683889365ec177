//! Text ⇄ token ids for Llama 4: a thin wrapper over the `tokenizers` crate that loads a model
//! directory's `tokenizer.json` (or its bytes), plus a streaming decoder for generation.
//!
//! Special tokens (`<|eot|>`, `<|begin_of_text|>`, …) are the one subtle point. Hugging Face's
//! `tokenizer(text)` parses special-token strings wherever they appear, so a user who types
//! `<|eot|>` would inject a real end-of-turn. The `tokenizers` crate exposes the opposite behaviour
//! (transformers' `split_special_tokens=True`) only as a tokenizer-wide flag
//! (`set_encode_special_tokens`), so this wrapper keeps a second copy of the tokenizer with that
//! flag set, built lazily the first time it is needed. Hence three entry points:
//! - [`Tokenizer::encode`]: exactly HF's `encode(text, add_special_tokens)`: special strings parse.
//! - [`Tokenizer::encode_plain`]: for raw user text: special strings are tokenized as ordinary text.
//! - [`Tokenizer::encode_rendered`]: for a rendered chat template: special strings parse and no BOS
//!   is added (the template already wrote it; adding one would give a double BOS).
//!
//! The `generation_config.json` reader ([`GenerationConfig`]: stop ids, sampling defaults) lives
//! here too, next to the other model-directory files of the text front end.
//!
//! All encodes use `encode_fast` (no offsets), and truncation/padding stored in the file are
//! switched off so a long prompt is never cut silently.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use crate::error::{HerdError, Result};
use crate::limits::{read_input, InputKind};
use crate::sampling::SamplingParams;
use serde_json::Value;

/// A loaded tokenizer. Cloning is cheap (shared).
#[derive(Clone)]
pub struct Tokenizer {
    inner: Arc<Inner>,
}

struct Inner {
    /// Parses special-token strings (HF default).
    tok: tokenizers::Tokenizer,
    /// Same tokenizer with `encode_special_tokens = true`: special strings are plain text.
    plain: OnceLock<tokenizers::Tokenizer>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer").field("vocab_size", &self.vocab_size()).finish()
    }
}

pub(crate) fn one_line(s: impl std::fmt::Display) -> String {
    s.to_string().split_whitespace().collect::<Vec<_>>().join(" ")
}

fn tok_err(what: &str, e: impl std::fmt::Display) -> HerdError {
    HerdError::Tokenizer(format!("{what}: {}", one_line(e)))
}

impl Tokenizer {
    /// Load `<dir>/tokenizer.json`.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self> {
        Self::from_file(dir.as_ref().join("tokenizer.json"))
    }

    /// Load a `tokenizer.json` file. Errors name the file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = read_input(path, InputKind::Tokenizer)?;
        Self::parse(&bytes).map_err(|msg| HerdError::bad_file(path, msg))
    }

    /// Load from the bytes of a `tokenizer.json` (in-memory / wasm).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        Self::parse(bytes).map_err(|msg| HerdError::Tokenizer(format!("tokenizer.json: {msg}")))
    }

    fn parse(bytes: &[u8]) -> std::result::Result<Self, String> {
        let mut tok = guarded(|| tokenizers::Tokenizer::from_bytes(bytes))
            .and_then(|r| r.map_err(one_line))
            .map_err(|e| format!("not a valid tokenizer.json: {e}"))?;
        tok.with_truncation(None).map_err(one_line)?;
        tok.with_padding(None);
        tok.set_encode_special_tokens(false);
        Ok(Tokenizer { inner: Arc::new(Inner { tok, plain: OnceLock::new() }) })
    }

    fn plain(&self) -> &tokenizers::Tokenizer {
        self.inner.plain.get_or_init(|| {
            let mut t = self.inner.tok.clone();
            t.set_encode_special_tokens(true);
            t
        })
    }

    /// HF-compatible `encode(text, add_special_tokens)`: special-token strings in `text` become
    /// special tokens; `add_special` runs the post-processor (Llama 4: prepends BOS).
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>> {
        let enc = guarded(|| self.inner.tok.encode_fast(text, add_special))
            .map_err(|e| HerdError::Tokenizer(format!("encode: {e}")))?
            .map_err(|e| tok_err("encode", e))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Encode untrusted user text: special-token strings are tokenized as ordinary characters
    /// (HF `split_special_tokens=True`). `add_bos` runs the post-processor (prepends BOS).
    pub fn encode_plain(&self, text: &str, add_bos: bool) -> Result<Vec<u32>> {
        let enc = guarded(|| self.plain().encode_fast(text, add_bos))
            .map_err(|e| HerdError::Tokenizer(format!("encode: {e}")))?
            .map_err(|e| tok_err("encode", e))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Encode a rendered chat template: special-token strings parse, nothing is added.
    pub fn encode_rendered(&self, rendered: &str) -> Result<Vec<u32>> {
        self.encode(rendered, false)
    }

    /// Ids back to text. Ids the tokenizer does not know are skipped (as in HF).
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        guarded(|| self.inner.tok.decode(ids, skip_special))
            .map_err(|e| HerdError::Tokenizer(format!("decode: {e}")))?
            .map_err(|e| tok_err("decode", e))
    }

    /// The id of a token string (base or added), if any.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.tok.token_to_id(token)
    }

    /// The token string of an id (byte-level form, e.g. `Ġthe`), if any.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.tok.id_to_token(id)
    }

    /// Number of distinct tokens the tokenizer knows (base vocabulary + added tokens). The model's
    /// embedding may have more rows (Llama 4: 202048, with unused reserved slots at the end).
    pub fn vocab_size(&self) -> usize {
        self.inner.tok.get_vocab_size(true)
    }

    /// True if `id` is a special (added, `special: true`) token such as `<|eot|>`.
    pub fn is_special(&self, id: u32) -> bool {
        self.inner.tok.get_added_tokens_decoder().get(&id).is_some_and(|t| t.special)
    }

    /// A streaming decoder for generated ids.
    pub fn stream_decoder(&self, skip_special: bool) -> StreamDecoder {
        StreamDecoder { tok: self.clone(), skip_special, ids: Vec::new(), prefix: String::new(), prefix_index: 0 }
    }

    /// The wrapped `tokenizers` tokenizer (special strings parse).
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner.tok
    }
}

/// Incremental detokenizer: push ids one at a time, get back the newly completed text.
///
/// A token may carry only part of a UTF-8 character (byte-level BPE); such text is held back until
/// the character is complete, so no chunk ever ends in a broken character. Built on
/// `tokenizers`' `DecodeStream` algorithm (`step_decode_stream`, used here with owned state so the
/// decoder has no lifetime and can live next to the tokenizer).
pub struct StreamDecoder {
    tok: Tokenizer,
    skip_special: bool,
    ids: Vec<u32>,
    prefix: String,
    prefix_index: usize,
}

impl StreamDecoder {
    /// Add one id; returns the text it completes, or `None` while a character is incomplete (or
    /// the token decodes to nothing, e.g. a skipped special token).
    pub fn push(&mut self, id: u32) -> Result<Option<String>> {
        guarded(|| {
            tokenizers::step_decode_stream(
                &self.tok.inner.tok,
                vec![id],
                self.skip_special,
                &mut self.ids,
                &mut self.prefix,
                &mut self.prefix_index,
            )
        })
        .map_err(|e| HerdError::Tokenizer(format!("stream decode: {e}")))?
        .map_err(|e| tok_err("stream decode", e))
    }

    /// End of stream: whatever is still held back (an incomplete character comes out as U+FFFD).
    /// The decoder is reset and can be reused.
    pub fn finish(&mut self) -> Result<Option<String>> {
        let s = self.tok.decode(&self.ids, self.skip_special)?;
        let out = match s.strip_prefix(self.prefix.as_str()) {
            Some(rest) if !rest.is_empty() => Some(rest.to_string()),
            _ => None,
        };
        self.ids.clear();
        self.prefix.clear();
        self.prefix_index = 0;
        Ok(out)
    }
}

// ---------------------------------------------------------------------------------------------
// generation_config.json

/// What `generation_config.json` says; every field optional. A missing file gives the defaults.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GenerationConfig {
    /// Stop ids (`eos_token_id`, an int or a list); empty if absent.
    pub eos_token_ids: Vec<u32>,
    pub bos_token_id: Option<u32>,
    pub pad_token_id: Option<u32>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<usize>,
    pub min_p: Option<f32>,
    pub repetition_penalty: Option<f32>,
    pub do_sample: Option<bool>,
    pub max_new_tokens: Option<usize>,
}

impl GenerationConfig {
    /// Read `<dir>/generation_config.json`; absent → `Default`.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self> {
        Self::from_file(dir.as_ref().join("generation_config.json"))
    }

    /// Read a generation config file; absent → `Default`; bad JSON or field → `BadFile` naming it.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        match read_json(path, false, InputKind::SmallJson)? {
            None => Ok(Self::default()),
            Some(v) => Self::from_value(&v).map_err(|m| HerdError::bad_file(path, m)),
        }
    }

    /// Parse the text of a `generation_config.json` (in-memory / wasm).
    pub fn from_json_str(json: &str) -> Result<Self> {
        let err = |m: String| HerdError::Tokenizer(format!("generation_config.json: {m}"));
        let v: Value = serde_json::from_str(json).map_err(|e| err(format!("invalid JSON: {e}")))?;
        Self::from_value(&v).map_err(err)
    }

    fn from_value(v: &Value) -> std::result::Result<Self, String> {
        if !v.is_object() {
            return Err("expected a JSON object".into());
        }
        let field = |k: &str| v.get(k).filter(|x| !x.is_null());
        let id = |k: &str, x: &Value| {
            x.as_u64().and_then(|n| u32::try_from(n).ok()).ok_or_else(|| format!("`{k}` must be a token id"))
        };
        let opt_id = |k: &str| field(k).map(|x| id(k, x)).transpose();
        let opt_f32 = |k: &str| {
            field(k).map(|x| x.as_f64().map(|f| f as f32).ok_or_else(|| format!("`{k}` must be a number"))).transpose()
        };
        let opt_usize = |k: &str| {
            field(k)
                .map(|x| x.as_u64().map(|n| n as usize).ok_or_else(|| format!("`{k}` must be a non-negative integer")))
                .transpose()
        };
        let eos_token_ids = match field("eos_token_id") {
            None => Vec::new(),
            Some(Value::Array(a)) => a.iter().map(|x| id("eos_token_id", x)).collect::<std::result::Result<_, _>>()?,
            Some(x) => vec![id("eos_token_id", x)?],
        };
        let do_sample = field("do_sample")
            .map(|x| x.as_bool().ok_or_else(|| "`do_sample` must be a bool".to_string()))
            .transpose()?;
        Ok(GenerationConfig {
            eos_token_ids,
            bos_token_id: opt_id("bos_token_id")?,
            pad_token_id: opt_id("pad_token_id")?,
            temperature: opt_f32("temperature")?,
            top_p: opt_f32("top_p")?,
            top_k: opt_usize("top_k")?,
            min_p: opt_f32("min_p")?,
            repetition_penalty: opt_f32("repetition_penalty")?,
            do_sample,
            max_new_tokens: opt_usize("max_new_tokens")?,
        })
    }

    /// Sampling defaults the way transformers reads this file: `do_sample` false or absent means
    /// greedy; otherwise temperature (default 1), top_k (HF default 50), top_p, min_p apply.
    pub fn sampling_params(&self) -> SamplingParams {
        let mut p = SamplingParams { repetition_penalty: self.repetition_penalty.unwrap_or(1.0), ..Default::default() };
        if self.do_sample == Some(true) {
            p.temperature = self.temperature.unwrap_or(1.0);
            p.top_k = self.top_k.unwrap_or(50);
            p.top_p = self.top_p.unwrap_or(1.0);
            p.min_p = self.min_p.unwrap_or(0.0);
        }
        p
    }
}

thread_local! {
    static QUIET: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs a call into the tokenizers library, whose deserializers and post-processors `expect` on some
/// malformed files (a decoder without a body, a template naming a special token it does not define): a
/// panic there becomes an error naming its message, and is not printed by the panic hook.
fn guarded<T>(f: impl FnOnce() -> T) -> std::result::Result<T, String> {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET.with(|q| q.get()) {
                previous(info)
            }
        }));
    });
    let was = QUIET.with(|q| q.replace(true));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    QUIET.with(|q| q.set(was));
    r.map_err(|p| {
        let msg = p.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| p.downcast_ref::<String>().cloned());
        format!("the tokenizers library failed on it ({})", crate::error::line(msg.as_deref().unwrap_or("a panic")))
    })
}

/// Read a small JSON file: `Ok(None)` if it does not exist and is not `required`; `Io`/`BadFile`
/// errors name the file.
pub(crate) fn read_json(path: &Path, required: bool, kind: InputKind) -> Result<Option<Value>> {
    if !required && matches!(std::fs::metadata(path), Err(e) if e.kind() == std::io::ErrorKind::NotFound) {
        return Ok(None);
    }
    let bytes = read_input(path, kind)?;
    serde_json::from_slice(&bytes).map(Some).map_err(|e| HerdError::bad_file(path, format!("invalid JSON: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/tokenizer");

    fn tok() -> Tokenizer {
        Tokenizer::from_dir(FIXTURE).expect("fixture tokenizer loads")
    }

    fn cases() -> Value {
        let s = std::fs::read_to_string(format!("{FIXTURE}/cases.json")).expect("cases.json");
        serde_json::from_str(&s).expect("cases.json parses")
    }

    fn ids(v: &Value) -> Vec<u32> {
        v.as_array().expect("id list").iter().map(|x| x.as_u64().expect("id") as u32).collect()
    }

    #[test]
    fn fixture_cases_encode_and_decode_exactly() {
        let t = tok();
        let c = cases();
        let list = c["cases"].as_array().expect("cases");
        assert!(list.len() >= 10);
        for case in list {
            let text = case["text"].as_str().expect("text");
            assert_eq!(t.encode(text, false).unwrap(), ids(&case["ids_no_special"]), "{text:?}");
            assert_eq!(t.encode(text, true).unwrap(), ids(&case["ids_with_special"]), "{text:?}");
            let want_tokens: Vec<String> =
                case["tokens_no_special"].as_array().unwrap().iter().map(|x| x.as_str().unwrap().to_string()).collect();
            let got_tokens: Vec<String> =
                ids(&case["ids_no_special"]).iter().map(|&i| t.id_to_token(i).unwrap()).collect();
            assert_eq!(got_tokens, want_tokens, "{text:?}");
            let decoded = case["decoded"].as_str().expect("decoded");
            assert_eq!(t.decode(&ids(&case["ids_no_special"]), false).unwrap(), decoded);
            assert_eq!(
                t.decode(&ids(&case["ids_with_special"]), true).unwrap(),
                decoded.replace("<|eot|>", "").replace("<|begin_of_text|>", "")
            );
        }
    }

    #[test]
    fn fixture_metadata() {
        let t = tok();
        let c = cases();
        assert_eq!(t.vocab_size() as u64, c["vocab_size"].as_u64().unwrap());
        for (s, id) in c["special_tokens"].as_object().unwrap() {
            let id = id.as_u64().unwrap() as u32;
            assert_eq!(t.token_to_id(s), Some(id), "{s}");
            assert!(t.is_special(id), "{s}");
        }
        assert_eq!(t.token_to_id("<|begin_of_text|>"), Some(c["bos_token_id"].as_u64().unwrap() as u32));
        assert_eq!(t.token_to_id("no such token"), None);
        assert!(!t.is_special(64));
    }

    #[test]
    fn plain_encoding_does_not_parse_special_strings() {
        let t = tok();
        let text = "<|eot|> is the end-of-turn token; <|begin_of_text|>starts text";
        let parsed = t.encode(text, false).unwrap();
        assert!(parsed.contains(&t.token_to_id("<|eot|>").unwrap()));
        let plain = t.encode_plain(text, false).unwrap();
        assert!(plain.iter().all(|&i| !t.is_special(i)), "{plain:?}");
        assert_eq!(t.decode(&plain, false).unwrap(), text);
        assert_eq!(t.decode(&plain, true).unwrap(), text, "plain text survives skip_special");
        let bos = t.token_to_id("<|begin_of_text|>").unwrap();
        assert_eq!(t.encode_plain(text, true).unwrap()[0], bos);
        assert_eq!(t.encode_plain(text, true).unwrap()[1..], plain[..]);
        // Ordinary text is identical either way, and the parsing tokenizer is unaffected.
        assert_eq!(t.encode_plain("Hello, world!", false).unwrap(), t.encode("Hello, world!", false).unwrap());
        assert_eq!(t.encode(text, false).unwrap(), parsed);
        assert_eq!(t.encode_rendered(text).unwrap(), parsed);
    }

    #[test]
    fn stream_decoder_matches_full_decode_and_never_splits_characters() {
        let t = tok();
        let c = cases();
        for case in c["cases"].as_array().unwrap() {
            let ids = ids(&case["ids_no_special"]);
            let mut d = t.stream_decoder(false);
            let mut out = String::new();
            let mut held_back = 0;
            for &id in &ids {
                match d.push(id).unwrap() {
                    Some(s) => {
                        assert!(!s.contains('\u{FFFD}'), "broken char in chunk {s:?}");
                        out.push_str(&s)
                    }
                    None => held_back += 1,
                }
            }
            if let Some(rest) = d.finish().unwrap() {
                out.push_str(&rest);
            }
            assert_eq!(out, case["decoded"].as_str().unwrap());
            let text = case["text"].as_str().unwrap();
            if text.contains('😀') {
                assert!(held_back >= 3, "4-byte emoji split over byte tokens must be held back");
            }
        }
        // skip_special on a chat rendering: stream == decode(skip).
        for chat in c["chats"].as_array().unwrap() {
            let ids = ids(&chat["ids"]);
            let mut d = t.stream_decoder(true);
            let mut out = String::new();
            for &id in &ids {
                out.push_str(&d.push(id).unwrap().unwrap_or_default());
            }
            out.push_str(&d.finish().unwrap().unwrap_or_default());
            assert_eq!(out, t.decode(&ids, true).unwrap());
        }
    }

    #[test]
    fn finish_flushes_incomplete_character() {
        let t = tok();
        // "ð" "Ł" "ĺ" are the first 3 bytes of a 4-byte emoji.
        let ids = [172, 253, 246];
        let mut d = t.stream_decoder(false);
        for id in ids {
            assert_eq!(d.push(id).unwrap(), None);
        }
        let rest = d.finish().unwrap().unwrap();
        assert!(rest.contains('\u{FFFD}'));
        assert_eq!(d.push(64).unwrap().as_deref(), Some("a"), "reusable after finish");
    }

    #[test]
    fn bad_tokenizer_files_give_one_line_errors_naming_the_file() {
        let dir = std::env::temp_dir().join(format!("herd-tok-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let e = Tokenizer::from_dir(dir.join("missing")).unwrap_err().to_string();
        assert!(e.contains("tokenizer.json") && !e.contains('\n'), "{e}");
        assert!(matches!(Tokenizer::from_dir(dir.join("missing")), Err(HerdError::Io { .. })));
        let bad = dir.join("tokenizer.json");
        std::fs::write(&bad, "{\"model\": [1, 2,\n").unwrap();
        let e = Tokenizer::from_file(&bad).unwrap_err();
        assert!(matches!(e, HerdError::BadFile { .. }), "{e}");
        let e = e.to_string();
        assert!(e.contains(&*bad.to_string_lossy()) && !e.contains('\n'), "{e}");
        std::fs::write(&bad, "{\"version\": \"1.0\"}").unwrap();
        let e = Tokenizer::from_file(&bad).unwrap_err().to_string();
        assert!(e.contains("tokenizer.json") && !e.contains('\n'), "{e}");
        let e = Tokenizer::from_bytes(b"not json").unwrap_err().to_string();
        assert!(e.starts_with("tokenizer: tokenizer.json") && !e.contains('\n'), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn shareable_across_threads() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<Tokenizer>();
        send_sync::<StreamDecoder>();
        send_sync::<crate::chat::ChatTemplate>();
        send_sync::<crate::sampling::Sampler>();
    }

    #[test]
    fn from_bytes_matches_from_file() {
        let bytes = std::fs::read(format!("{FIXTURE}/tokenizer.json")).unwrap();
        let t = Tokenizer::from_bytes(&bytes).unwrap();
        assert_eq!(t.encode("Hello, world!", true).unwrap(), tok().encode("Hello, world!", true).unwrap());
    }

    #[test]
    fn generation_config_reads_fixture_and_defaults() {
        let g = GenerationConfig::from_dir(FIXTURE).unwrap();
        let c = cases();
        assert_eq!(g.eos_token_ids, ids(&c["eos_token_ids_generation"]));
        assert_eq!(g.bos_token_id, Some(1955));
        assert_eq!(g.pad_token_id, Some(1973));
        assert_eq!((g.temperature, g.top_p, g.top_k, g.do_sample), (Some(0.6), Some(0.9), None, Some(true)));
        let p = g.sampling_params();
        assert_eq!((p.temperature, p.top_p, p.top_k), (0.6, 0.9, 50));
        // Absent file → defaults (greedy); single int eos.
        let g = GenerationConfig::from_dir("/nonexistent-herd-dir").unwrap();
        assert_eq!(g, GenerationConfig::default());
        assert!(g.sampling_params().is_greedy());
        let g = GenerationConfig::from_json_str(r#"{"eos_token_id": 7, "temperature": 0.5}"#).unwrap();
        assert_eq!(g.eos_token_ids, vec![7]);
        assert!(g.sampling_params().is_greedy(), "do_sample absent means greedy");
    }

    #[test]
    fn bad_generation_config_names_file_and_field() {
        let dir = std::env::temp_dir().join(format!("herd-gen-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("generation_config.json");
        for (body, what) in [
            ("{\"eos_token_id\": [1, \"x\"]}", "`eos_token_id`"),
            ("{\"top_k\": -1}", "`top_k`"),
            ("{\"temperature\": \"hot\"}", "`temperature`"),
            ("{\"do_sample\": 1}", "`do_sample`"),
            ("[1, 2]", "object"),
            ("{\"top_p\": 0.9,\n", "invalid JSON"),
        ] {
            std::fs::write(&p, body).unwrap();
            let e = GenerationConfig::from_dir(&dir).unwrap_err();
            assert!(matches!(e, HerdError::BadFile { .. }));
            let e = e.to_string();
            assert!(e.contains(&*p.to_string_lossy()) && e.contains(what) && !e.contains('\n'), "{e}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
