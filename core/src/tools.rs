//! Tool calling on the chat endpoint: OpenAI's `tools` and `tool_choice` checked, the tools handed to the
//! model's chat template (Llama 4's puts them in the first user message and asks for a call as
//! `{"name": ..., "parameters": {...}}`), a required or named call enforced by a grammar (so it always
//! parses), and the model's answer read back as calls.
//!
//! - `auto` (the default with tools): the model may call a tool or answer; an answer that is exactly a call
//!   to one of the tools (a JSON object, or a list of them, optionally inside `<|python_start|>` ...
//!   `<|python_end|>`) becomes `tool_calls`, anything else stays content.
//! - `required`: the answer is a call to one of the tools (a JSON schema over all of them).
//! - `{"type": "function", "function": {"name": N}}`: the answer is a call to N.
//! - `none`: the tools are not shown to the model and nothing is read as a call.

use serde_json::{json, Map, Value};

use crate::constrain::Grammar;
use crate::openai::ApiError;

/// Tools one request may list.
pub const MAX_TOOLS: usize = 128;

/// What the model may or must do with the tools.
#[derive(Debug, Clone, PartialEq)]
pub enum ToolChoice {
    Auto,
    None,
    Required,
    Named(String),
}

/// A request's tools, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Tools {
    /// The request's `tools` as given (`{"type": "function", "function": {...}}`), for the template.
    pub list: Vec<Value>,
    /// Each tool's name and its parameters' schema (`{"type": "object"}` when it gives none).
    pub functions: Vec<(String, Value)>,
    pub choice: ToolChoice,
}

/// One call read from the model's answer: the function's name and its arguments as a JSON string.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    pub name: String,
    pub arguments: String,
}

/// A function or schema name as OpenAI allows it: 1-64 letters, digits, '_' or '-'.
pub(crate) fn valid_name(n: &str) -> bool {
    (1..=64).contains(&n.len()) && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// A request's `tools` and `tool_choice`; None when it lists no tools (a `tool_choice` of `none` or `auto`
/// is then allowed, any other is a 400).
pub fn parse(m: &Map<String, Value>) -> Result<Option<Tools>, ApiError> {
    const T: Option<&str> = Some("tools");
    const C: Option<&str> = Some("tool_choice");
    let list = match m.get("tools") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a.clone(),
        Some(_) => return Err(ApiError::bad("tools must be a list of tools", T)),
    };
    if list.len() > MAX_TOOLS {
        return Err(ApiError::bad(format!("at most {MAX_TOOLS} tools per request"), T));
    }
    let mut functions: Vec<(String, Value)> = Vec::with_capacity(list.len());
    for t in &list {
        if t.get("type").and_then(Value::as_str) != Some("function") {
            return Err(ApiError::bad("each tool must be {\"type\": \"function\", \"function\": {...}}", T));
        }
        let Some(f) = t.get("function").and_then(Value::as_object) else {
            return Err(ApiError::bad("each tool needs a function object", T));
        };
        let name = match f.get("name").and_then(Value::as_str) {
            Some(n) if valid_name(n) => n.to_owned(),
            _ => return Err(ApiError::bad("a function's name must be 1-64 letters, digits, '_' or '-'", T)),
        };
        if functions.iter().any(|(n, _)| *n == name) {
            return Err(ApiError::bad(format!("two tools are named {name:?}"), T));
        }
        let params = match f.get("parameters") {
            None | Some(Value::Null) => json!({"type": "object"}),
            Some(p @ Value::Object(_)) => p.clone(),
            Some(_) => {
                return Err(ApiError::bad(format!("function {name}'s parameters must be a JSON schema object"), T))
            }
        };
        functions.push((name, params));
    }
    let choice = match m.get("tool_choice") {
        None | Some(Value::Null) => ToolChoice::Auto,
        Some(Value::String(s)) => match s.as_str() {
            "auto" => ToolChoice::Auto,
            "none" => ToolChoice::None,
            "required" => ToolChoice::Required,
            _ => {
                return Err(ApiError::bad(
                    "tool_choice must be \"auto\", \"none\", \"required\" or a named function",
                    C,
                ))
            }
        },
        Some(Value::Object(o)) => {
            let name = o.get("function").and_then(|f| f.get("name")).and_then(Value::as_str);
            match (o.get("type").and_then(Value::as_str), name) {
                (Some("function"), Some(n)) => ToolChoice::Named(n.to_owned()),
                _ => {
                    return Err(ApiError::bad(
                        "a named tool_choice is {\"type\": \"function\", \"function\": {\"name\": ...}}",
                        C,
                    ))
                }
            }
        }
        Some(_) => return Err(ApiError::bad("tool_choice must be a string or an object", C)),
    };
    if let ToolChoice::Named(n) = &choice {
        if !functions.iter().any(|(f, _)| f == n) {
            let shown: String = n.chars().take(64).collect();
            return Err(ApiError::bad(format!("tool_choice names {shown:?}, which is not among the tools"), C));
        }
    }
    if functions.is_empty() {
        return match choice {
            ToolChoice::Auto | ToolChoice::None => Ok(None),
            _ => Err(ApiError::bad("tool_choice requires a call, but the request lists no tools", C)),
        };
    }
    Ok(Some(Tools { list, functions, choice }))
}

impl Tools {
    /// The tools the chat template shows the model (none for `tool_choice: "none"`).
    pub fn for_template(&self) -> Option<&[Value]> {
        (self.choice != ToolChoice::None).then_some(self.list.as_slice())
    }

    /// Whether the answer is read for calls.
    pub fn reads_calls(&self) -> bool {
        self.choice != ToolChoice::None
    }

    /// Whether the answer must be a call (so it is never streamed as content).
    pub fn forced(&self) -> bool {
        matches!(self.choice, ToolChoice::Required | ToolChoice::Named(_))
    }

    /// The grammar of a required or named call: `{"name": NAME, "parameters": ARGS}` with ARGS valid under
    /// that function's parameters, as the template asks for it.
    pub fn grammar(&self) -> Option<Grammar> {
        let call = |(name, params): &(String, Value)| {
            json!({"type": "object", "properties": {"name": {"const": name}, "parameters": params},
                   "required": ["name", "parameters"], "additionalProperties": false})
        };
        match &self.choice {
            ToolChoice::Auto | ToolChoice::None => None,
            ToolChoice::Named(n) => self.functions.iter().find(|(f, _)| f == n).map(|f| Grammar::JsonSchema(call(f))),
            ToolChoice::Required if self.functions.len() == 1 => Some(Grammar::JsonSchema(call(&self.functions[0]))),
            ToolChoice::Required => {
                Some(Grammar::JsonSchema(json!({"anyOf": self.functions.iter().map(call).collect::<Vec<_>>()})))
            }
        }
    }

    /// The calls in a finished answer, or None when it is not wholly calls to these tools (then it is
    /// content). A call is `{"name": N, "parameters": {...}}` (or `"arguments"`), alone, in a list, or
    /// several separated by `;`.
    pub fn calls(&self, text: &str) -> Option<Vec<Call>> {
        if !self.reads_calls() {
            return None;
        }
        let t = text.trim();
        let t = t.strip_prefix("<|python_start|>").unwrap_or(t);
        let t = t.strip_suffix("<|python_end|>").unwrap_or(t).trim();
        if !(t.starts_with('{') || t.starts_with('[')) {
            return None;
        }
        let values: Vec<Value> = match serde_json::from_str::<Value>(t) {
            Ok(Value::Array(a)) => a,
            Ok(v) => vec![v],
            Err(_) => t.split(';').map(|p| serde_json::from_str(p.trim()).ok()).collect::<Option<Vec<_>>>()?,
        };
        if values.is_empty() {
            return None;
        }
        values
            .iter()
            .map(|v| {
                let o = v.as_object()?;
                let name = o.get("name")?.as_str()?;
                self.functions.iter().find(|(f, _)| f == name)?;
                let args = o.get("parameters").or_else(|| o.get("arguments")).cloned().unwrap_or(json!({}));
                let args = match args {
                    // Some models write the arguments as a JSON string already.
                    Value::String(s) if serde_json::from_str::<Value>(&s).is_ok_and(|v| v.is_object()) => s,
                    a @ Value::Object(_) => a.to_string(),
                    _ => return None,
                };
                Some(Call { name: name.to_owned(), arguments: args })
            })
            .collect()
    }
}

/// An assistant message's `tool_calls` as the template takes them: OpenAI sends each call's `arguments` as a
/// JSON string, Llama 4's template writes them with `tojson`, so a string that holds a JSON object is given
/// as that object (otherwise it would be written quoted).
pub fn calls_for_template(calls: &[Value]) -> Vec<Value> {
    calls
        .iter()
        .map(|c| {
            let mut c = c.clone();
            if let Some(f) = c.get_mut("function").and_then(Value::as_object_mut) {
                let parsed =
                    f.get("arguments").and_then(Value::as_str).and_then(|s| serde_json::from_str::<Value>(s).ok());
                if let Some(v) = parsed.filter(Value::is_object) {
                    f.insert("arguments".into(), v);
                }
            }
            c
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    fn weather() -> Value {
        json!([{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
            {"type": "function", "function": {"name": "now"}}])
    }

    #[test]
    fn choices_and_refusals() {
        let t = parse(&req(json!({"tools": weather()}))).unwrap().unwrap();
        assert_eq!(t.choice, ToolChoice::Auto);
        assert!(t.grammar().is_none() && t.for_template().is_some());
        let named = json!({"type": "function", "function": {"name": "now"}});
        let t = parse(&req(json!({"tools": weather(), "tool_choice": named}))).unwrap().unwrap();
        assert_eq!(t.choice, ToolChoice::Named("now".into()));
        assert!(matches!(t.grammar(), Some(Grammar::JsonSchema(s)) if s["properties"]["name"]["const"] == "now"));
        let t = parse(&req(json!({"tools": weather(), "tool_choice": "required"}))).unwrap().unwrap();
        assert!(matches!(t.grammar(), Some(Grammar::JsonSchema(s)) if s["anyOf"].as_array().unwrap().len() == 2));
        let t = parse(&req(json!({"tools": weather(), "tool_choice": "none"}))).unwrap().unwrap();
        assert!(t.for_template().is_none() && t.calls(r#"{"name": "now", "parameters": {}}"#).is_none());
        assert_eq!(parse(&req(json!({"tool_choice": "none"}))).unwrap(), None);
        for (body, needle) in [
            (json!({"tools": {}}), "tools must be a list"),
            (json!({"tools": [{"type": "retrieval"}]}), "\"type\": \"function\""),
            (json!({"tools": [{"type": "function", "function": {"name": "a b"}}]}), "1-64 letters"),
            (json!({"tools": [{"type": "function", "function": {"name": "f", "parameters": 3}}]}), "parameters"),
            (json!({"tools": weather(), "tool_choice": "always"}), "tool_choice must be"),
            (json!({"tools": weather(), "tool_choice": {"type": "function", "function": {"name": "x"}}}), "not among"),
            (json!({"tool_choice": "required"}), "lists no tools"),
            (json!({"tools": [weather()[1].clone(), weather()[1].clone()]}), "two tools"),
        ] {
            let e = parse(&req(body.clone())).expect_err("refused");
            assert!(e.message.contains(needle) && e.status == 400, "{body}: {e:?}");
        }
    }

    #[test]
    fn calls_are_read_from_answers() {
        let t = parse(&req(json!({"tools": weather()}))).unwrap().unwrap();
        let one = t.calls(r#" {"name": "get_weather", "parameters": {"city": "Paris"}} "#).unwrap();
        assert_eq!(one, vec![Call { name: "get_weather".into(), arguments: r#"{"city":"Paris"}"#.into() }]);
        let two = t.calls(r#"<|python_start|>{"name": "now", "arguments": "{}"}; {"name": "now"}<|python_end|>"#);
        assert_eq!(two.unwrap().len(), 2);
        let list =
            t.calls(r#"[{"name": "now", "parameters": {}}, {"name": "get_weather", "parameters": {"city": "x"}}]"#);
        assert_eq!(list.unwrap()[1].name, "get_weather");
        for content in ["It is sunny.", r#"{"name": "other", "parameters": {}}"#, r#"{"name": "now""#, "[]", "{}"] {
            assert!(t.calls(content).is_none(), "{content}");
        }
    }

    /// An OpenAI-shaped conversation (arguments as a JSON string, call and tool-message ids, tools and
    /// tool_choice in the body) renders exactly as transformers' apply_chat_template renders the same
    /// conversation with Llama 4's template (tests/fixtures/tokenizer/cases.json, `tool_call_and_ipython`).
    #[test]
    fn openai_shaped_tool_conversations_render_as_transformers_does() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/tokenizer");
        let cases: Value =
            serde_json::from_str(&std::fs::read_to_string(format!("{dir}/cases.json")).unwrap()).unwrap();
        let case = cases["chats"].as_array().unwrap().iter().find(|c| c["name"] == "tool_call_and_ipython").unwrap();
        let mut messages = case["messages"].clone();
        let call = &mut messages[1]["tool_calls"][0];
        call["id"] = json!("call_7");
        let args = call["function"]["arguments"].to_string();
        call["function"]["arguments"] = json!(args);
        messages[2]["tool_call_id"] = json!("call_7");
        let body = req(json!({"messages": messages, "tools": case["tools"], "tool_choice": "auto"}));
        let conv = crate::openai::conversation(&body).unwrap();
        let tools = parse(&body).unwrap().unwrap();
        let tmpl = crate::chat::ChatTemplate::from_dir(dir).unwrap();
        let kwargs = case["template_kwargs"].as_object().unwrap().clone();
        let got = tmpl.render_with(&conv.messages, tools.for_template(), true, &kwargs).unwrap();
        assert_eq!(got, case["rendered"].as_str().unwrap());
    }

    #[test]
    fn arguments_strings_become_objects_for_the_template() {
        let calls = [json!({"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{\"a\": 1}"}})];
        assert_eq!(calls_for_template(&calls)[0]["function"]["arguments"], json!({"a": 1}));
        let odd = [json!({"function": {"name": "f", "arguments": "not json"}})];
        assert_eq!(calls_for_template(&odd)[0]["function"]["arguments"], "not json");
    }
}
