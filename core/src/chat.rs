//! Chat prompts: the model's Jinja chat template (from `tokenizer_config.json`) rendered with
//! minijinja the way transformers' `apply_chat_template` renders it, and the [`Message`] type a
//! chat loop builds.
//!
//! The environment mirrors transformers: `trim_blocks` + `lstrip_blocks`, Python string/dict/list
//! methods (minijinja-contrib `pycompat`), a Python-`json.dumps`-compatible `tojson` (`indent`,
//! `separators`, `sort_keys`, `ensure_ascii`; no HTML escaping, dict order kept), and the globals
//! `raise_exception(msg)` and `strftime_now(fmt)` (UTC). The rendered prompt already starts with
//! BOS: tokenize it with `Tokenizer::encode_rendered` (no added specials, no double BOS).

use std::path::Path;

use minijinja::value::Value as JValue;
use minijinja::{Environment, Error as JError, ErrorKind};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{HerdError, Result};
use crate::limits::{read_input_string, InputKind};
use crate::tokenizer::{one_line, read_json};

mod jinja;
use jinja::{raise_exception, strftime_now, tojson};

// ---------------------------------------------------------------------------------------------
// Messages

/// One chat message. Serializes to the shape chat templates expect:
/// `{"role": .., "content": "text" | [{"type": "text", "text": ..}, {"type": "image"}], "tool_calls"?: [..]}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: Content,
    /// OpenAI-style tool calls (`{"type": "function", "function": {"name", "arguments"}}`);
    /// omitted from the rendering when empty (templates test `'tool_calls' in message`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<Value>,
}

/// Message content: plain text or a list of parts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<Part>),
}

/// A content part; an image renders as `<|image|>` in the Llama 4 template.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Part {
    Text { text: String },
    Image,
}

impl Message {
    pub fn new(role: impl Into<String>, text: impl Into<String>) -> Self {
        Message { role: role.into(), content: Content::Text(text.into()), tool_calls: Vec::new() }
    }
    pub fn system(text: impl Into<String>) -> Self {
        Self::new("system", text)
    }
    pub fn user(text: impl Into<String>) -> Self {
        Self::new("user", text)
    }
    pub fn assistant(text: impl Into<String>) -> Self {
        Self::new("assistant", text)
    }
    /// A tool result (rendered under the `ipython` header by Llama 4).
    pub fn tool(text: impl Into<String>) -> Self {
        Self::new("tool", text)
    }
    /// A user turn with `images` image placeholders followed by the text.
    pub fn user_with_images(images: usize, text: impl Into<String>) -> Self {
        let mut parts: Vec<Part> = (0..images).map(|_| Part::Image).collect();
        parts.push(Part::Text { text: text.into() });
        Message { role: "user".into(), content: Content::Parts(parts), tool_calls: Vec::new() }
    }
    /// The text of the message (parts joined, images skipped).
    pub fn text(&self) -> String {
        match &self.content {
            Content::Text(t) => t.clone(),
            Content::Parts(p) => p
                .iter()
                .filter_map(|p| match p {
                    Part::Text { text } => Some(text.as_str()),
                    Part::Image => None,
                })
                .collect(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Chat template

/// A compiled chat template plus the special-token strings it refers to.
pub struct ChatTemplate {
    env: Environment<'static>,
    /// Names of the compiled templates ("default" for a single template string).
    names: Vec<String>,
    /// `bos_token`, `eos_token`, `pad_token`, `unk_token` as strings, passed to every render.
    specials: Map<String, Value>,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate").field("names", &self.names).field("specials", &self.specials).finish()
    }
}

impl ChatTemplate {
    /// Load from a model directory: `tokenizer_config.json` (special tokens and `chat_template`);
    /// a `chat_template.jinja` file overrides the config's template (as in transformers), and
    /// `chat_template.json` (`{"chat_template": ...}`, the processor's) is used when neither has one.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let cfg_path = dir.join("tokenizer_config.json");
        let cfg = read_json(&cfg_path, true, InputKind::TokenizerConfig)?.unwrap_or_default();
        let jinja_path = dir.join("chat_template.jinja");
        match std::fs::metadata(&jinja_path).map(|_| read_input_string(&jinja_path, InputKind::TokenizerConfig)) {
            Ok(src) => {
                let src = src?;
                let specials = special_strings(&cfg).map_err(|m| HerdError::bad_file(&cfg_path, m))?;
                return Self::build(vec![("default".into(), src)], specials)
                    .map_err(|m| HerdError::bad_file(&jinja_path, m));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(HerdError::io(&jinja_path, e)),
        }
        if cfg.get("chat_template").is_none_or(Value::is_null) {
            let json_path = dir.join("chat_template.json");
            if let Some(v) = read_json(&json_path, false, InputKind::TokenizerConfig)? {
                let mut merged = cfg.clone();
                if let (Some(m), Some(t)) = (merged.as_object_mut(), v.get("chat_template")) {
                    m.insert("chat_template".into(), t.clone());
                }
                return Self::from_config_value(&merged).map_err(|m| HerdError::bad_file(&json_path, m));
            }
        }
        Self::from_config_value(&cfg).map_err(|m| HerdError::bad_file(&cfg_path, m))
    }

    /// Load from a `tokenizer_config.json` file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let cfg = read_json(path, true, InputKind::TokenizerConfig)?.unwrap_or_default();
        Self::from_config_value(&cfg).map_err(|m| HerdError::bad_file(path, m))
    }

    /// Load from the text of a `tokenizer_config.json` (in-memory / wasm).
    pub fn from_config_str(json: &str) -> Result<Self> {
        let err = |m: String| HerdError::Tokenizer(format!("tokenizer_config.json: {m}"));
        let cfg: Value = serde_json::from_str(json).map_err(|e| err(format!("invalid JSON: {e}")))?;
        Self::from_config_value(&cfg).map_err(err)
    }

    /// Build from a bare template string and the BOS/EOS strings it uses.
    pub fn from_template(template: &str, bos: Option<&str>, eos: Option<&str>) -> Result<Self> {
        let mut specials = Map::new();
        if let Some(b) = bos {
            specials.insert("bos_token".into(), b.into());
        }
        if let Some(e) = eos {
            specials.insert("eos_token".into(), e.into());
        }
        Self::build(vec![("default".into(), template.to_string())], specials)
            .map_err(|m| HerdError::Tokenizer(format!("chat template: {m}")))
    }

    fn from_config_value(cfg: &Value) -> std::result::Result<Self, String> {
        let specials = special_strings(cfg)?;
        let templates = match cfg.get("chat_template") {
            None | Some(Value::Null) => return Err("no `chat_template` in the config".into()),
            Some(Value::String(s)) => vec![("default".to_string(), s.clone())],
            Some(Value::Array(list)) => {
                let mut out = Vec::new();
                for item in list {
                    match (item.get("name").and_then(Value::as_str), item.get("template").and_then(Value::as_str)) {
                        (Some(n), Some(t)) => out.push((n.to_string(), t.to_string())),
                        _ => return Err("`chat_template` list items must be {\"name\": str, \"template\": str}".into()),
                    }
                }
                if out.is_empty() {
                    return Err("`chat_template` is an empty list".into());
                }
                out
            }
            Some(_) => return Err("`chat_template` must be a string or a list of named templates".into()),
        };
        Self::build(templates, specials)
    }

    fn build(templates: Vec<(String, String)>, specials: Map<String, Value>) -> std::result::Result<Self, String> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_fuel(Some(RENDER_FUEL));
        // A value that contains itself would be formatted until the stack overflows: these refuse it first.
        env.set_formatter(jinja::formatter);
        env.add_filter("string", jinja::string);
        env.add_filter("join", jinja::join);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_filter("tojson", tojson);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        let mut names = Vec::new();
        for (name, src) in templates {
            env.add_template_owned(name.clone(), src)
                .map_err(|e| format!("chat template `{name}`: {}", one_line(e)))?;
            names.push(name);
        }
        Ok(ChatTemplate { env, names, specials })
    }

    /// The BOS string the template writes (`bos_token`), if the config names one.
    pub fn bos(&self) -> Option<&str> {
        self.specials.get("bos_token").and_then(Value::as_str)
    }

    /// The EOS string (`eos_token`; `<|eot|>` for Llama 4 instruct), if the config names one.
    pub fn eos(&self) -> Option<&str> {
        self.specials.get("eos_token").and_then(Value::as_str)
    }

    /// Names of the available templates.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Render a conversation. `messages` may be `serde_json::Value`s or [`Message`]s; `tools` are
    /// JSON tool schemas (order of keys is kept). Same as transformers'
    /// `apply_chat_template(messages, tools=tools, add_generation_prompt=.., tokenize=False)`.
    pub fn render<M: Serialize>(
        &self,
        messages: &[M],
        tools: Option<&[Value]>,
        add_generation_prompt: bool,
    ) -> Result<String> {
        self.render_with(messages, tools, add_generation_prompt, &Map::new())
    }

    /// [`ChatTemplate::render`] with extra template variables (transformers' `**kwargs`, e.g.
    /// `date_string`, `tools_in_user_message`, `custom_tools`).
    pub fn render_with<M: Serialize>(
        &self,
        messages: &[M],
        tools: Option<&[Value]>,
        add_generation_prompt: bool,
        extra: &Map<String, Value>,
    ) -> Result<String> {
        // transformers: a `tool_use` template is chosen when tools are given, else `default`.
        let name = match (tools.is_some(), self.names.iter().any(|n| n == "tool_use")) {
            (true, true) => "tool_use",
            _ if self.names.iter().any(|n| n == "default") => "default",
            _ => match self.names.first() {
                Some(n) => n.as_str(),
                None => return Err(HerdError::Tokenizer("chat template: none loaded".into())),
            },
        };
        let tmpl =
            self.env.get_template(name).map_err(|e| HerdError::Tokenizer(format!("chat template: {}", one_line(e))))?;
        let mut ctx: Map<String, Value> = self.specials.clone();
        for (k, v) in extra {
            ctx.insert(k.clone(), v.clone());
        }
        let mut ctx: std::collections::BTreeMap<String, JValue> =
            ctx.into_iter().map(|(k, v)| (k, JValue::from_serialize(&v))).collect();
        ctx.insert("messages".into(), JValue::from_serialize(messages));
        ctx.insert("tools".into(), tools.map(JValue::from_serialize).unwrap_or(JValue::from(())));
        ctx.insert("add_generation_prompt".into(), JValue::from(add_generation_prompt));
        let what = format!("chat template `{name}`");
        // What the prompt may grow to: the conversation's own bytes several times over, plus room for the
        // template's text. Past it, a template is refused rather than rendered on into memory.
        let input_bytes = serde_json::to_vec(&ctx).map(|v| v.len()).unwrap_or(0);
        let max_output = RENDER_OUTPUT_BASE.saturating_add(input_bytes.saturating_mul(RENDER_OUTPUT_PER_INPUT_BYTE));
        let mut out = LimitedWriter { buf: Vec::new(), max: max_output, over: false };
        let result =
            crate::limits::with_memory_budget(&what, max_output.saturating_mul(RENDER_MEMORY_PER_OUTPUT_BYTE), || {
                tmpl.render_captured_to(ctx, &mut out).map(|_| ())
            });
        match result {
            Ok(()) => {
                String::from_utf8(out.buf).map_err(|_| HerdError::Tokenizer(format!("{what}: wrote invalid UTF-8")))
            }
            Err(_) if out.over => Err(HerdError::Tokenizer(format!(
                "{what}: its output passed {} (a template that writes without end?); refused",
                crate::limits::fmt_bytes(max_output as u64)
            ))),
            Err(e) if e.kind() == ErrorKind::OutOfFuel => Err(HerdError::Tokenizer(format!(
                "{what}: ran past its limit of {RENDER_FUEL} instructions (a loop that does not end?); refused"
            ))),
            Err(e) => Err(HerdError::Tokenizer(format!("{what}: {}", one_line(render_msg(&e))))),
        }
    }
}

/// The most template instructions one render may run: a conversation of ten thousand messages through
/// Llama 4's template takes a few million. A template that runs past it (nested loops, unbounded
/// recursion) is refused with an error instead of running on.
pub const RENDER_FUEL: u64 = 50_000_000;
/// The output of one render may be this many bytes plus [`RENDER_OUTPUT_PER_INPUT_BYTE`] times the size
/// of the conversation (as JSON).
pub const RENDER_OUTPUT_BASE: usize = 16 << 20;
pub const RENDER_OUTPUT_PER_INPUT_BYTE: usize = 4;
/// The memory one render may take, as a multiple of its output limit (enforced where the binary installs
/// [`crate::limits::BudgetedAlloc`]).
pub const RENDER_MEMORY_PER_OUTPUT_BYTE: usize = 8;

/// Collects a render's output, failing the render once it passes `max` bytes.
struct LimitedWriter {
    buf: Vec<u8>,
    max: usize,
    over: bool,
}

impl std::io::Write for LimitedWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if self.buf.len().saturating_add(data.len()) > self.max {
            self.over = true;
            return Err(std::io::Error::other("the chat template's output limit"));
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// For `raise_exception` the template's own message is the useful part.
fn render_msg(e: &JError) -> String {
    match (e.kind(), e.detail()) {
        (ErrorKind::InvalidOperation, Some(d)) => d.to_string(),
        _ => e.to_string(),
    }
}

/// bos/eos/pad/unk token strings from a tokenizer config (`"<s>"` or `{"content": "<s>", ..}`).
fn special_strings(cfg: &Value) -> std::result::Result<Map<String, Value>, String> {
    let mut out = Map::new();
    for key in ["bos_token", "eos_token", "pad_token", "unk_token"] {
        let s = match cfg.get(key) {
            None | Some(Value::Null) => continue,
            Some(Value::String(s)) => s.clone(),
            Some(v) => match v.get("content").and_then(Value::as_str) {
                Some(s) => s.to_string(),
                None => return Err(format!("`{key}` must be a string or an object with a string `content`")),
            },
        };
        out.insert(key.into(), Value::String(s));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokenizer::Tokenizer;

    const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/tokenizer");

    fn cases() -> Value {
        let s = std::fs::read_to_string(format!("{FIXTURE}/cases.json")).expect("cases.json");
        serde_json::from_str(&s).expect("cases.json parses")
    }

    fn ids(v: &Value) -> Vec<u32> {
        v.as_array().expect("ids").iter().map(|x| x.as_u64().expect("id") as u32).collect()
    }

    fn tmp_dir(tag: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("herd-chat-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("tmp dir");
        d
    }

    #[test]
    fn fixture_chats_render_and_tokenize_exactly() {
        let t = ChatTemplate::from_dir(FIXTURE).expect("template loads");
        let tok = Tokenizer::from_dir(FIXTURE).expect("tokenizer loads");
        assert_eq!(t.bos(), Some("<|begin_of_text|>"));
        assert_eq!(t.eos(), Some("<|eot|>"));
        let c = cases();
        let chats = c["chats"].as_array().expect("chats");
        assert!(chats.len() >= 5);
        let bos = tok.token_to_id("<|begin_of_text|>").unwrap();
        for chat in chats {
            let name = chat["name"].as_str().unwrap();
            let msgs = chat["messages"].as_array().unwrap();
            let tools = chat["tools"].as_array().map(|v| v.as_slice());
            let agp = chat["add_generation_prompt"].as_bool().unwrap();
            let kwargs = chat["template_kwargs"].as_object().cloned().unwrap_or_default();
            let want = chat["rendered"].as_str().unwrap();
            let got = t.render_with(msgs, tools, agp, &kwargs).unwrap();
            assert_eq!(got, want, "{name}");
            let got_ids = tok.encode_rendered(&got).unwrap();
            assert_eq!(got_ids, ids(&chat["ids"]), "{name}");
            assert_eq!(got_ids[0], bos);
            assert_ne!(got_ids[1], bos, "{name}: double BOS");
            // Typed messages render the same; without date_string, strftime_now is used (not emitted).
            let typed: Vec<Message> = msgs.iter().map(|m| serde_json::from_value(m.clone()).unwrap()).collect();
            let mut kw = kwargs.clone();
            kw.remove("date_string");
            assert_eq!(t.render_with(&typed, tools, agp, &kw).unwrap(), want, "{name} (typed)");
        }
    }

    /// The render limits leave room for real conversations: ten thousand messages (with a tool schema, so
    /// the tool-calling branches run) through Llama 4's template stay within the fuel and output limits,
    /// while a template that loops without end is stopped by the fuel.
    #[test]
    fn render_limits_fit_long_conversations() {
        let t = ChatTemplate::from_dir(FIXTURE).unwrap();
        let msgs: Vec<Message> = (0..10_000)
            .map(|i| if i % 2 == 0 { Message::user(format!("question {i}")) } else { Message::assistant("an answer") })
            .collect();
        let tool: Value = serde_json::json!({"type": "function", "function": {"name": "f", "parameters": {}}});
        let out = t.render(&msgs, Some(&[tool]), true).unwrap();
        assert!(out.contains("question 9998"), "the whole conversation is rendered");
        let endless = ChatTemplate::from_template(
            "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
            None,
            None,
        )
        .unwrap();
        let e = endless.render(&msgs[..1], None, true).unwrap_err().to_string();
        assert!(e.contains("limit of 50000000 instructions"), "{e}");
    }

    #[test]
    fn message_helpers_render_like_json() {
        let t = ChatTemplate::from_dir(FIXTURE).unwrap();
        let typed = vec![
            Message::system("Be brief."),
            Message::user_with_images(1, "Describe this image."),
            Message::assistant("A cat."),
            Message::user("<|eot|>hi"),
        ];
        let out = t.render(&typed, None, true).unwrap();
        assert_eq!(
            out,
            "<|begin_of_text|><|header_start|>system<|header_end|>\n\nBe brief.<|eot|>\
             <|header_start|>user<|header_end|>\n\n<|image|>Describe this image.<|eot|>\
             <|header_start|>assistant<|header_end|>\n\nA cat.<|eot|>\
             <|header_start|>user<|header_end|>\n\n<|eot|>hi<|eot|><|header_start|>assistant<|header_end|>\n\n"
        );
        assert_eq!(typed[1].text(), "Describe this image.");
        let v = serde_json::to_value(&typed[1]).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe this image."}]})
        );
    }

    #[test]
    fn raise_exception_becomes_an_error() {
        let t = ChatTemplate::from_dir(FIXTURE).unwrap();
        let tools = [serde_json::json!({"type": "function", "function": {"name": "f"}})];
        // A system message only: no first user message to put the tools in.
        let e = t.render(&[Message::system("s")], Some(&tools), true).unwrap_err();
        assert!(matches!(e, HerdError::Tokenizer(_)));
        let e = e.to_string();
        assert!(e.contains("Cannot put tools in the first user message") && !e.contains('\n'), "{e}");
    }

    #[test]
    fn python_compat_features() {
        let src = r#"{{ bos_token }}{{ "  x y  ".strip() }}|{{ "a,b".split(",") | tojson }}|
{%- set ns = namespace(n=0) %}{% for i in [1, 2, 3] %}{% set ns.n = ns.n + i %}{% if loop.last %}{{ ns.n }}{% endif %}{% endfor %}|
{{- {"b": 1, "a": [1.5, "é<>&'", none, true, 1e20, 0.00001]} | tojson }}|{{ {"b": 1, "a": {}, "c": []} | tojson(indent=2) }}|
{{- {"z": 1, "a": "é"} | tojson(sort_keys=true, separators=[",", ":"], ensure_ascii=true) }}|{{ "Hi".upper() }}{{ "abc".startswith("a") }}|
{{- x is string }}{{ y is string }}|{{ y[0].text.lstrip("-") }}|{{ strftime_now("%Y")|length }}
{% if x %}
  trimmed
{% endif %}"#;
        let t = ChatTemplate::from_template(src, Some("<s>"), Some("</s>")).unwrap();
        assert_eq!(t.eos(), Some("</s>"));
        let mut extra = Map::new();
        extra.insert("x".into(), "s".into());
        extra.insert("y".into(), serde_json::json!([{"text": "--t"}]));
        let msgs: [Value; 0] = [];
        let out = t.render_with(&msgs, None, false, &extra).unwrap();
        let want = "<s>x y|[\"a\", \"b\"]|6|{\"b\": 1, \"a\": [1.5, \"é<>&'\", null, true, 1e+20, 1e-05]}|\
                    {\n  \"b\": 1,\n  \"a\": {},\n  \"c\": []\n}|{\"a\":\"\\u00e9\",\"z\":1}|HITrue|TrueFalse|t|4\n  trimmed\n";
        assert_eq!(out, want);
    }

    #[test]
    fn named_templates_and_token_objects() {
        let cfg = serde_json::json!({
            "bos_token": {"content": "<B>", "lstrip": false},
            "eos_token": "<E>",
            "chat_template": [
                {"name": "tool_use", "template": "T{{ bos_token }}{{ tools | length }}"},
                {"name": "default", "template": "D{{ bos_token }}{{ messages | length }}{{ eos_token }}"},
            ],
        });
        let t = ChatTemplate::from_config_str(&cfg.to_string()).unwrap();
        assert_eq!((t.bos(), t.eos()), (Some("<B>"), Some("<E>")));
        let m = [Message::user("hi")];
        assert_eq!(t.render(&m, None, true).unwrap(), "D<B>1<E>");
        assert_eq!(t.render(&m, Some(&[Value::Null, Value::Null]), true).unwrap(), "T<B>2");
    }

    #[test]
    fn chat_template_jinja_file_overrides_config() {
        let d = tmp_dir("jinja");
        std::fs::copy(format!("{FIXTURE}/tokenizer_config.json"), d.join("tokenizer_config.json")).unwrap();
        std::fs::write(d.join("chat_template.jinja"), "J{{ bos_token }}").unwrap();
        let t = ChatTemplate::from_dir(&d).unwrap();
        assert_eq!(t.render(&[Message::user("x")], None, false).unwrap(), "J<|begin_of_text|>");
        std::fs::write(d.join("chat_template.jinja"), "{% if %}").unwrap();
        let e = ChatTemplate::from_dir(&d).unwrap_err().to_string();
        assert!(e.contains("chat_template.jinja") && !e.contains('\n'), "{e}");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn bad_template_files_give_one_line_errors_naming_the_file() {
        let d = tmp_dir("bad");
        let cfg_path = d.join("tokenizer_config.json");
        let check = |e: HerdError, what: &str| {
            let s = e.to_string();
            assert!(s.contains(&*cfg_path.to_string_lossy()) && s.contains(what) && !s.contains('\n'), "{s}");
        };
        // Missing file.
        let e = ChatTemplate::from_dir(&d).unwrap_err();
        assert!(matches!(e, HerdError::Io { .. }));
        check(e, "tokenizer_config.json");
        // Corrupt JSON.
        std::fs::write(&cfg_path, "{\"chat_template\": \"x\",\n").unwrap();
        let e = ChatTemplate::from_dir(&d).unwrap_err();
        assert!(matches!(e, HerdError::BadFile { .. }));
        check(e, "invalid JSON");
        // Template syntax error.
        std::fs::write(&cfg_path, r#"{"chat_template": "{% for m in messages %}\n{{ m.role }"}"#).unwrap();
        check(ChatTemplate::from_file(&cfg_path).unwrap_err(), "syntax error");
        // No template, bad token type.
        std::fs::write(&cfg_path, r#"{"bos_token": "<s>"}"#).unwrap();
        check(ChatTemplate::from_dir(&d).unwrap_err(), "no `chat_template`");
        std::fs::write(&cfg_path, r#"{"bos_token": 5, "chat_template": "x"}"#).unwrap();
        check(ChatTemplate::from_dir(&d).unwrap_err(), "`bos_token`");
        let e = ChatTemplate::from_config_str("nope").unwrap_err().to_string();
        assert!(e.starts_with("tokenizer: tokenizer_config.json: invalid JSON"), "{e}");
        let e = ChatTemplate::from_template("{{ x", None, None).unwrap_err().to_string();
        assert!(e.contains("syntax error") && !e.contains('\n'), "{e}");
        let _ = std::fs::remove_dir_all(&d);
    }
}
