//! OpenAI's API, the request side: the JSON bodies of `POST /v1/chat/completions` and `POST /v1/completions`
//! parsed and checked into what the [`crate::schedule::Scheduler`] runs. Everything here is pure (no I/O, no
//! model), so `herd serve` and the request fuzz target run the same code; every refusal is an [`ApiError`]
//! in OpenAI's shape with a one-line message naming the field.
//!
//! What a request may hold is bounded before anything is allocated for it: the body by the server's body
//! limit, images by [`MAX_IMAGES`] (each a `data:` URL: nothing here names a file or fetches a URL), stop
//! strings by [`MAX_STOP`], the prompt by the model's context, log-probabilities by [`MAX_TOP_LOGPROBS`].

use base64::Engine;
use serde_json::{json, Map, Value};

use crate::chat::{ChatTemplate, Content, Message, Part};
use crate::constrain::{Constrainer, Constraint, Grammar};
use crate::error::HerdError;
use crate::sampling::SamplingParams;
use crate::schedule::GenerateParams;
use crate::schedule::{Request, MAX_TOP_LOGPROBS};
use crate::tokenizer::Tokenizer;
use crate::tools::Tools;

/// Images one chat request may hold.
pub const MAX_IMAGES: usize = 16;
/// Stop strings one request may hold (OpenAI's limit).
pub const MAX_STOP: usize = 4;

/// A refusal in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}` with an HTTP status.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: u16,
    /// OpenAI's `type`: `invalid_request_error`, `authentication_error`, `rate_limit_error`, `server_error`.
    pub kind: &'static str,
    pub message: String,
    pub param: Option<&'static str>,
    pub code: Option<&'static str>,
}

impl ApiError {
    /// 400, `invalid_request_error`, naming the field at fault.
    pub fn bad(message: impl Into<String>, param: Option<&'static str>) -> ApiError {
        ApiError { status: 400, kind: "invalid_request_error", message: message.into(), param, code: None }
    }

    pub fn new(status: u16, kind: &'static str, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, kind, message: message.into(), param: None, code: Some(code) }
    }

    /// The JSON body; the message on one line.
    pub fn body(&self) -> Value {
        json!({"error": {"message": one_line(&self.message), "type": self.kind, "param": self.param, "code": self.code}})
    }
}

impl From<HerdError> for ApiError {
    fn from(e: HerdError) -> ApiError {
        match e {
            HerdError::Busy(m) => ApiError::new(429, "rate_limit_error", "queue_full", m),
            HerdError::Input(m) => ApiError::bad(m, None),
            other => ApiError::new(500, "server_error", "internal_error", other.to_string()),
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.status, self.kind, one_line(&self.message))
    }
}

fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

/// The body as a JSON object.
pub fn parse_body(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(ApiError::bad("the body must be a JSON object", None)),
        Err(e) => Err(ApiError::bad(format!("malformed JSON: {e}"), None)),
    }
}

fn num(m: &Map<String, Value>, key: &'static str) -> Result<Option<f64>, ApiError> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => {
            n.as_f64().map(Some).ok_or_else(|| ApiError::bad(format!("{key} must be a number"), Some(key)))
        }
        Some(_) => Err(ApiError::bad(format!("{key} must be a number"), Some(key))),
    }
}

fn uint(m: &Map<String, Value>, key: &'static str) -> Result<Option<u64>, ApiError> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_u64()
            .map(Some)
            .ok_or_else(|| ApiError::bad(format!("{key} must be a non-negative integer"), Some(key))),
        Some(_) => Err(ApiError::bad(format!("{key} must be a non-negative integer"), Some(key))),
    }
}

fn boolean(m: &Map<String, Value>, key: &'static str) -> Result<bool, ApiError> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(ApiError::bad(format!("{key} must be a boolean"), Some(key))),
    }
}

/// What the server knows of the model it serves, for checking requests.
#[derive(Debug, Clone)]
pub struct Served {
    /// The id `/v1/models` lists; a request naming another model is refused.
    pub model_id: String,
    /// The context in tokens (prompt and generation together): the model's, or less where the server's
    /// memory plan allows less.
    pub context: usize,
    pub vocab_size: usize,
    /// Sampling when the request says nothing (the model's generation_config.json).
    pub defaults: SamplingParams,
    pub stop_ids: Vec<u32>,
    /// The grammar engine for `response_format` and forced tool calls (None: the tokenizer is one llguidance
    /// cannot read, and such requests are refused).
    pub constrainer: Option<Constrainer>,
}

/// A checked request: what to run and how to answer.
#[derive(Debug, Clone)]
pub struct Gen {
    pub req: Request,
    pub stop: Vec<String>,
    pub stream: bool,
    pub include_usage: bool,
    pub logprobs: bool,
    /// The request's tools (chat only): how the answer is read back ([`crate::tools`]).
    pub tools: Option<Tools>,
}

/// The generation fields of a request (sampling, budget, stop strings, log-probabilities, streaming) with
/// the prompt's ids, checked against the model. `chat`: the chat endpoint's field shapes (`logprobs: bool` +
/// `top_logprobs`) rather than the legacy completions' (`logprobs: int`).
pub fn generation(s: &Served, m: &Map<String, Value>, prompt: Vec<u32>, chat: bool) -> Result<Gen, ApiError> {
    if let Some(model) = m.get("model") {
        match model.as_str() {
            Some(x) if x == s.model_id => {}
            Some(x) => {
                return Err(ApiError::new(
                    404,
                    "invalid_request_error",
                    "model_not_found",
                    format!("model {x:?} is not served here (this server serves {:?})", s.model_id),
                ))
            }
            None => return Err(ApiError::bad("model must be a string", Some("model"))),
        }
    }
    if let Some(n) = uint(m, "n")? {
        if n != 1 {
            return Err(ApiError::bad("n must be 1", Some("n")));
        }
    }
    let mut p = s.defaults;
    if let Some(t) = num(m, "temperature")? {
        p.temperature = t as f32;
    }
    if let Some(t) = num(m, "top_p")? {
        p.top_p = t as f32;
    }
    if let Some(k) = uint(m, "top_k")? {
        p.top_k = k.min(u32::MAX as u64) as usize;
    }
    if let Some(v) = num(m, "min_p")? {
        p.min_p = v as f32;
    }
    if let Some(v) = num(m, "repetition_penalty")? {
        p.repetition_penalty = v as f32;
    }
    p.seed = uint(m, "seed")?;
    p.validate().map_err(|e| ApiError::bad(e.to_string(), None))?;
    let max = match (uint(m, "max_completion_tokens")?, uint(m, "max_tokens")?) {
        (Some(a), _) | (None, Some(a)) => a.min(s.context as u64) as usize,
        (None, None) => s.context,
    };
    let stop = match m.get("stop") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(x)) => vec![x.clone()],
        Some(Value::Array(a)) if a.len() <= MAX_STOP && a.iter().all(Value::is_string) => {
            a.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect()
        }
        Some(_) => {
            return Err(ApiError::bad(format!("stop must be a string or up to {MAX_STOP} strings"), Some("stop")))
        }
    };
    if stop.iter().any(String::is_empty) {
        return Err(ApiError::bad("stop strings must not be empty", Some("stop")));
    }
    let (logprobs, top) = if chat {
        let on = boolean(m, "logprobs")?;
        let top = uint(m, "top_logprobs")?;
        if top.is_some() && !on {
            return Err(ApiError::bad("top_logprobs needs logprobs: true", Some("top_logprobs")));
        }
        (on, top.unwrap_or(0))
    } else {
        match uint(m, "logprobs")? {
            Some(n) => (true, n),
            None => (false, 0),
        }
    };
    if top > MAX_TOP_LOGPROBS as u64 {
        return Err(ApiError::bad(
            format!("at most {MAX_TOP_LOGPROBS} top log-probabilities"),
            Some(if chat { "top_logprobs" } else { "logprobs" }),
        ));
    }
    let penalty = |key: &'static str| -> Result<f32, ApiError> {
        let v = num(m, key)?.unwrap_or(0.0);
        if !(-2.0..=2.0).contains(&v) {
            return Err(ApiError::bad(format!("{key} = {v} is out of range ([-2, 2])"), Some(key)));
        }
        Ok(v as f32)
    };
    let (presence_penalty, frequency_penalty) = (penalty("presence_penalty")?, penalty("frequency_penalty")?);
    let include_usage = match m.get("stream_options") {
        Some(Value::Object(o)) => boolean(o, "include_usage")?,
        None | Some(Value::Null) => false,
        Some(_) => return Err(ApiError::bad("stream_options must be an object", Some("stream_options"))),
    };
    let field = if chat { "messages" } else { "prompt" };
    if prompt.is_empty() {
        return Err(ApiError::bad("the prompt is empty", Some(field)));
    }
    if prompt.len() > s.context {
        return Err(ApiError::bad(
            format!(
                "the prompt is {} tokens, more than the {} tokens of context this server takes",
                prompt.len(),
                s.context
            ),
            Some(field),
        ));
    }
    if let Some(&bad) = prompt.iter().find(|&&t| t as usize >= s.vocab_size) {
        return Err(ApiError::bad(
            format!("token id {bad} is outside the model's vocabulary of {} ids", s.vocab_size),
            Some(field),
        ));
    }
    let tools = if chat { crate::tools::parse(m)? } else { None };
    let mut constraint = if chat { response_format(s, m)? } else { None };
    if let Some(g) = tools.as_ref().and_then(Tools::grammar) {
        const P: Option<&str> = Some("tool_choice");
        if constraint.is_some() {
            return Err(ApiError::bad("response_format cannot be used with a required or named tool_choice", P));
        }
        let Some(c) = &s.constrainer else {
            return Err(ApiError::bad("this model's tokenizer does not support a required or named tool_choice", P));
        };
        constraint = Some(c.start(&g).map_err(|e| ApiError::bad(one_line(&e.to_string()), Some("tools")))?);
    }
    let req = Request {
        prompt,
        params: GenerateParams { max_tokens: max, sampling: p, stop_ids: s.stop_ids.clone() },
        presence_penalty,
        frequency_penalty,
        logprobs: logprobs.then_some(top as usize),
        constraint,
    };
    Ok(Gen { req, stop, stream: boolean(m, "stream")?, include_usage, logprobs, tools })
}

/// `response_format`: `{"type": "text"}` (or none), `{"type": "json_object"}`, or `{"type": "json_schema",
/// "json_schema": {"name", "schema", "strict"}}` compiled by llguidance; what it cannot compile (a schema
/// keyword it does not support) is refused here, before any work.
fn response_format(s: &Served, m: &Map<String, Value>) -> Result<Option<Constraint>, ApiError> {
    const P: Option<&str> = Some("response_format");
    let grammar = match m.get("response_format") {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Object(f)) => match f.get("type").and_then(Value::as_str) {
            Some("text") => return Ok(None),
            Some("json_object") => Grammar::JsonObject,
            Some("json_schema") => {
                let Some(Value::Object(js)) = f.get("json_schema") else {
                    return Err(ApiError::bad("response_format.json_schema must be an object", P));
                };
                match js.get("name") {
                    Some(Value::String(n)) if crate::tools::valid_name(n) => {}
                    _ => {
                        return Err(ApiError::bad(
                            "response_format.json_schema.name must be 1-64 letters, digits, '_' or '-'",
                            P,
                        ))
                    }
                }
                boolean(js, "strict")?;
                match js.get("schema") {
                    None | Some(Value::Null) => Grammar::JsonSchema(json!({})),
                    Some(v @ (Value::Object(_) | Value::Bool(true))) => Grammar::JsonSchema(v.clone()),
                    Some(_) => return Err(ApiError::bad("response_format.json_schema.schema must be an object", P)),
                }
            }
            _ => {
                return Err(ApiError::bad(
                    "response_format.type must be \"text\", \"json_object\" or \"json_schema\"",
                    P,
                ))
            }
        },
        Some(_) => return Err(ApiError::bad("response_format must be an object", P)),
    };
    let Some(c) = &s.constrainer else {
        return Err(ApiError::bad("this model's tokenizer does not support response_format", P));
    };
    c.start(&grammar).map(Some).map_err(|e| ApiError::bad(one_line(&e.to_string()), P))
}

/// A chat request's conversation: its messages as the chat template takes them, and the bytes of its images
/// (still encoded: PNG, JPEG, WebP or GIF), one per [`Part::Image`] in order.
#[derive(Debug, Clone, Default)]
pub struct Conversation {
    pub messages: Vec<Message>,
    pub images: Vec<Vec<u8>>,
}

/// The image of an `image_url` part: a `data:` URL holding base64 (`data:image/png;base64,...`). Any other
/// URL is refused: the server fetches nothing.
pub fn data_url(url: &str) -> Result<Vec<u8>, ApiError> {
    let param = Some("messages");
    let Some(rest) = url.strip_prefix("data:") else {
        let scheme = url.split_once(':').map_or("", |(s, _)| s);
        let shown = if scheme.len() <= 16 && scheme.chars().all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c)) {
            format!("a {scheme}: URL")
        } else {
            "that URL".to_owned()
        };
        return Err(ApiError::bad(
            format!(
                "image_url must be a data: URL (data:image/png;base64,...); the server fetches nothing, not {shown}"
            ),
            param,
        ));
    };
    let Some((meta, data)) = rest.split_once(',') else {
        return Err(ApiError::bad("a data: URL needs a comma before its data", param));
    };
    let mut meta = meta.split(';');
    let media = meta.next().unwrap_or_default().trim().to_ascii_lowercase();
    if !(media.is_empty() || media.starts_with("image/")) {
        let shown: String = media.chars().take(40).collect();
        return Err(ApiError::bad(format!("a data: URL of type {shown:?} is not an image"), param));
    }
    if !meta.any(|p| p.trim().eq_ignore_ascii_case("base64")) {
        return Err(ApiError::bad("an image's data: URL must be base64 (data:image/png;base64,...)", param));
    }
    // Whitespace may wrap long base64 (MIME style); padding is optional.
    let clean: Vec<u8> = data.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    let engine = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    let bytes =
        engine.decode(&clean).map_err(|e| ApiError::bad(format!("an image's base64 is invalid: {e}"), param))?;
    if bytes.is_empty() {
        return Err(ApiError::bad("an image's data: URL is empty", param));
    }
    Ok(bytes)
}

/// A chat request's `messages`: each `{role, content}` with content a string or a list of parts (`text`, and
/// `image_url` with a `data:` URL); `developer` is taken as `system`; an assistant's `tool_calls` go to the
/// template with their arguments as JSON objects.
pub fn conversation(m: &Map<String, Value>) -> Result<Conversation, ApiError> {
    let param = Some("messages");
    let Some(Value::Array(list)) = m.get("messages") else {
        return Err(ApiError::bad("messages must be a list of messages", param));
    };
    if list.is_empty() {
        return Err(ApiError::bad("messages must not be empty", param));
    }
    let mut out = Conversation { messages: Vec::with_capacity(list.len()), images: Vec::new() };
    for msg in list {
        let Some(o) = msg.as_object() else {
            return Err(ApiError::bad("each message must be an object", param));
        };
        let role = match o.get("role").and_then(Value::as_str) {
            Some("developer") => "system",
            Some(r @ ("system" | "user" | "assistant" | "tool")) => r,
            Some(r) => {
                let shown: String = r.chars().take(40).collect();
                return Err(ApiError::bad(format!("unknown role {shown:?}"), param));
            }
            None => return Err(ApiError::bad("each message needs a role", param)),
        };
        let content = match o.get("content") {
            None | Some(Value::Null) => Content::Text(String::new()),
            Some(Value::String(s)) => Content::Text(s.clone()),
            Some(Value::Array(parts)) => {
                let mut ps = Vec::with_capacity(parts.len());
                for part in parts {
                    match part.get("type").and_then(Value::as_str) {
                        Some("text") => match part.get("text").and_then(Value::as_str) {
                            Some(t) => ps.push(Part::Text { text: t.to_owned() }),
                            None => return Err(ApiError::bad("a text part needs a text string", param)),
                        },
                        Some("image_url") => {
                            let url = match part.get("image_url") {
                                Some(Value::Object(u)) => u.get("url").and_then(Value::as_str),
                                Some(Value::String(u)) => Some(u.as_str()),
                                _ => None,
                            };
                            let Some(url) = url else {
                                return Err(ApiError::bad("an image_url part needs image_url.url", param));
                            };
                            if out.images.len() == MAX_IMAGES {
                                return Err(ApiError::bad(format!("at most {MAX_IMAGES} images per request"), param));
                            }
                            out.images.push(data_url(url)?);
                            ps.push(Part::Image);
                        }
                        Some(other) => {
                            let shown: String = other.chars().take(40).collect();
                            return Err(ApiError::bad(format!("unknown content part type {shown:?}"), param));
                        }
                        None => return Err(ApiError::bad("each content part needs a type", param)),
                    }
                }
                Content::Parts(ps)
            }
            Some(_) => return Err(ApiError::bad("content must be a string or a list of parts", param)),
        };
        let tool_calls = match o.get("tool_calls") {
            Some(Value::Array(a)) => crate::tools::calls_for_template(a),
            _ => Vec::new(),
        };
        out.messages.push(Message { role: role.to_owned(), content, tool_calls });
    }
    Ok(out)
}

/// The conversation rendered by the model's chat template (with the generation prompt) and tokenized: one
/// `<|image|>` placeholder per image, still to be expanded by the image planner.
/// `tools` (from [`Tools::for_template`]) are shown to the model as its template does.
pub fn chat_ids(
    messages: &[Message],
    tools: Option<&[Value]>,
    tmpl: Option<&ChatTemplate>,
    tok: &Tokenizer,
) -> Result<Vec<u32>, ApiError> {
    let tmpl = tmpl.ok_or_else(|| ApiError::bad("this model has no chat template: use /v1/completions", None))?;
    let rendered = tmpl.render(messages, tools, true).map_err(|e| ApiError::bad(e.to_string(), Some("messages")))?;
    tok.encode_rendered(&rendered).map_err(|e| ApiError::bad(e.to_string(), Some("messages")))
}

/// A completion request's `prompt`: a string (tokenized as plain text after BOS: special-token strings in
/// it are ordinary text), a list of token ids, or a list of one of either.
pub fn completion_ids(m: &Map<String, Value>, tok: &Tokenizer) -> Result<Vec<u32>, ApiError> {
    let shape =
        || ApiError::bad("prompt must be a string, a list of token ids, or a list of one of either", Some("prompt"));
    if boolean(m, "echo")? {
        return Err(ApiError::bad("echo is not supported", Some("echo")));
    }
    let prompt = match m.get("prompt") {
        Some(Value::Array(a)) if a.len() == 1 && !a[0].is_number() => &a[0],
        Some(v) => v,
        None => return Err(ApiError::bad("prompt is required", Some("prompt"))),
    };
    match prompt {
        Value::String(s) => tok.encode_plain(s, true).map_err(|e| ApiError::bad(e.to_string(), Some("prompt"))),
        Value::Array(a) => {
            a.iter().map(|v| v.as_u64().filter(|&x| x <= u32::MAX as u64).map(|x| x as u32).ok_or_else(shape)).collect()
        }
        _ => Err(shape()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png_url() -> String {
        // A 1x1 PNG, base64.
        "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4z8AAAAMBAQDJ/pLvAAAAAElFTkSuQmCC"
            .to_owned()
    }

    #[test]
    fn data_urls() {
        let png = data_url(&png_url()).unwrap();
        assert_eq!(&png[1..4], b"PNG");
        // Unpadded and wrapped base64 decode the same.
        let wrapped = png_url().trim_end_matches('=').replacen("iVBOR", "iVB\nOR", 1);
        assert_eq!(data_url(&wrapped).unwrap(), png);
        for (url, says) in [
            ("https://example.invalid/cat.png", "fetches nothing, not a https: URL"),
            ("file:///etc/passwd", "not a file: URL"),
            ("data:image/png;base64", "comma"),
            ("data:text/plain;base64,aGk=", "\"text/plain\" is not an image"),
            ("data:image/png,rawbytes", "must be base64"),
            ("data:image/png;base64,@@@@", "base64 is invalid"),
            ("data:image/png;base64,", "is empty"),
        ] {
            let e = data_url(url).unwrap_err();
            assert!(e.message.contains(says), "{url}: {}", e.message);
            assert_eq!((e.status, e.param), (400, Some("messages")));
        }
    }

    #[test]
    fn conversations_with_images() {
        let m = parse_body(
            json!({"messages": [
                {"role": "developer", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "What is"}, {"type": "image_url", "image_url": {"url": png_url()}}, {"type": "image_url", "image_url": png_url()}]},
            ]})
            .to_string()
            .as_bytes(),
        )
        .unwrap();
        let c = conversation(&m).unwrap();
        assert_eq!(c.images.len(), 2);
        assert_eq!(c.messages[0].role, "system");
        match &c.messages[1].content {
            Content::Parts(p) => assert_eq!(p.iter().filter(|p| matches!(p, Part::Image)).count(), 2),
            other => panic!("{other:?}"),
        }
        let many: Vec<Value> =
            (0..=MAX_IMAGES).map(|_| json!({"type": "image_url", "image_url": {"url": png_url()}})).collect();
        let m = parse_body(json!({"messages": [{"role": "user", "content": many}]}).to_string().as_bytes()).unwrap();
        assert!(conversation(&m).unwrap_err().message.contains("at most 16 images"));
        for (body, says) in [
            (json!({"messages": []}), "must not be empty"),
            (json!({"messages": [{"role": "wizard", "content": "x"}]}), "unknown role"),
            (json!({"messages": [{"role": "user", "content": [{"text": "x"}]}]}), "needs a type"),
            (json!({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}), "image_url.url"),
            (json!({"messages": [{"role": "user", "content": [{"type": "audio"}]}]}), "unknown content part"),
        ] {
            let m = parse_body(body.to_string().as_bytes()).unwrap();
            assert!(conversation(&m).unwrap_err().message.contains(says), "{body}");
        }
    }

    #[test]
    fn generation_fields_are_checked() {
        let s = Served {
            model_id: "m".into(),
            context: 64,
            vocab_size: 100,
            constrainer: None,
            defaults: SamplingParams::default(),
            stop_ids: vec![7],
        };
        let g = |v: Value, prompt: Vec<u32>| generation(&s, v.as_object().unwrap(), prompt, true);
        let ok = g(json!({"max_tokens": 1u64 << 60, "stop": ["a", "b"], "logprobs": true, "top_logprobs": 3}), vec![1])
            .unwrap();
        assert_eq!(ok.req.params.max_tokens, 64, "the budget is capped by the context");
        assert_eq!((ok.stop.len(), ok.req.logprobs), (2, Some(3)));
        for (body, prompt, param) in [
            (json!({"model": "other"}), vec![1], None),
            (json!({"n": 2}), vec![1], Some("n")),
            (json!({"temperature": -1}), vec![1], None),
            (json!({"presence_penalty": 3}), vec![1], Some("presence_penalty")),
            (json!({"frequency_penalty": -1e300}), vec![1], Some("frequency_penalty")),
            (json!({"stop": ["a", "b", "c", "d", "e"]}), vec![1], Some("stop")),
            (json!({"stop": ""}), vec![1], Some("stop")),
            (json!({"top_logprobs": 2}), vec![1], Some("top_logprobs")),
            (json!({"logprobs": true, "top_logprobs": 21}), vec![1], Some("top_logprobs")),
            (json!({"stream_options": 1}), vec![1], Some("stream_options")),
            (json!({}), vec![], Some("messages")),
            (json!({}), vec![1; 65], Some("messages")),
            (json!({}), vec![100], Some("messages")),
        ] {
            let e = g(body.clone(), prompt).unwrap_err();
            assert_eq!(e.param, param, "{body}: {e}");
            assert!(e.status == 400 || (e.status == 404 && e.code == Some("model_not_found")), "{body}: {e}");
        }
    }

    #[test]
    fn errors_are_one_line() {
        let e = parse_body(b"{\n\"a\": \n").unwrap_err();
        assert!(e.message.starts_with("malformed JSON"), "{}", e.message);
        assert!(!e.body().to_string().contains("\\n"));
        assert_eq!(parse_body(b"[1]").unwrap_err().message, "the body must be a JSON object");
        let busy: ApiError = HerdError::Busy("9 waiting".into()).into();
        assert_eq!((busy.status, busy.code), (429, Some("queue_full")));
        // A broken invariant is the server's fault, not the client's: 500, not 400.
        let bug: ApiError = HerdError::internal("step buffers missing").into();
        assert_eq!((bug.status, bug.code), (500, Some("internal_error")));
        assert!(bug.message.contains("a bug in herd"), "{}", bug.message);
    }
}
