//! Llama Guard 4 as a safety check around a chat: what the guard is shown, and what its answer means.
//!
//! The guard is a dense Llama 4 that answers `safe`, or `unsafe` and a line of violated categories
//! (`S1,S10`), for the last turn of a conversation: the user's turn (checked before generation) or the
//! answer (checked after it, and while it streams). It reads the conversation through its own chat template,
//! the one in its model directory, which lists the categories and takes `excluded_category_keys` to leave some
//! out; `--guard-categories` sets that list. Running it is the caller's: a greedy request of at most
//! [`MAX_ANSWER_TOKENS`] tokens through a scheduler of the guard's model.

use serde_json::{json, Map, Value};

use crate::chat::{ChatTemplate, Content, Message, Part};
use crate::error::{HerdError, Result};
use crate::tokenizer::Tokenizer;

/// Llama Guard 4's hazard categories (its model card: the MLCommons taxonomy and Code Interpreter Abuse).
pub const CATEGORIES: [(&str, &str); 14] = [
    ("S1", "Violent Crimes"),
    ("S2", "Non-Violent Crimes"),
    ("S3", "Sex-Related Crimes"),
    ("S4", "Child Sexual Exploitation"),
    ("S5", "Defamation"),
    ("S6", "Specialized Advice"),
    ("S7", "Privacy"),
    ("S8", "Intellectual Property"),
    ("S9", "Indiscriminate Weapons"),
    ("S10", "Hate"),
    ("S11", "Suicide & Self-Harm"),
    ("S12", "Sexual Content"),
    ("S13", "Elections"),
    ("S14", "Code Interpreter Abuse"),
];

/// The longest answer read from the guard: `unsafe` and all fourteen categories fit with room to spare.
pub const MAX_ANSWER_TOKENS: usize = 64;

/// The name of a category key (`S1` → "Violent Crimes"); None for a key the guard does not define.
pub fn category_name(key: &str) -> Option<&'static str> {
    CATEGORIES.iter().find(|(k, _)| *k == key).map(|(_, n)| *n)
}

/// Which categories the guard checks: all, or those `--guard-categories` names (the rest are passed to the
/// template as `excluded_category_keys`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Policy {
    excluded: Vec<String>,
}

impl Policy {
    /// Every category.
    pub fn all() -> Policy {
        Policy::default()
    }

    /// Only the categories of a comma-separated list (`S1,S10`, case-insensitive, spaces allowed).
    pub fn only(list: &str) -> Result<Policy> {
        let mut keep = Vec::new();
        for item in list.split(',').map(str::trim) {
            let key = item.to_ascii_uppercase();
            if category_name(&key).is_none() {
                return Err(HerdError::Input(format!(
                    "--guard-categories: `{item}` is not one of Llama Guard 4's categories S1..S14"
                )));
            }
            if !keep.contains(&key) {
                keep.push(key);
            }
        }
        let excluded = CATEGORIES.iter().map(|(k, _)| k.to_string()).filter(|k| !keep.contains(k)).collect::<Vec<_>>();
        Ok(Policy { excluded })
    }

    /// The categories left out.
    pub fn excluded(&self) -> &[String] {
        &self.excluded
    }

    /// Whether a category counts (one the policy left out may still come back from a guard that ignores its
    /// template's list; it is then not a reason to refuse).
    pub fn checks(&self, key: &str) -> bool {
        !self.excluded.iter().any(|k| k == key)
    }
}

/// The conversation as the guard is shown it ([`conversation`]): its turns, and which of the messages' images
/// they hold.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Conversation {
    /// User and assistant turns, alternating from a user turn; each is its images' placeholders, then its text.
    pub turns: Vec<Message>,
    /// The images of `turns`, in the order of their placeholders: indices among all the image parts of the
    /// messages it was made from (as [`crate::openai::conversation`] lists their bytes).
    pub images: Vec<usize>,
}

impl Conversation {
    pub fn is_empty(&self) -> bool {
        self.turns.is_empty()
    }
}

/// The conversation as the guard is shown it: user and assistant turns only (system prompts and tool
/// results are the application's, not the user's or the model's), with their text and images, turns with
/// neither dropped, consecutive turns of one role joined (images first, as Llama Guard 4's template renders
/// them), starting with a user turn, as the guard's template requires (it refuses roles that do not
/// alternate). With `answer`, the model's answer is the last assistant turn (joined to one the conversation
/// ends with, which it continues).
pub fn conversation(messages: &[Message], answer: Option<&str>) -> Conversation {
    struct Turn {
        role: String,
        text: String,
        images: Vec<usize>,
    }
    fn push(turns: &mut Vec<Turn>, role: &str, text: &str, images: Vec<usize>) {
        let text = if text.trim().is_empty() { "" } else { text };
        if text.is_empty() && images.is_empty() {
            return;
        }
        match turns.last_mut() {
            Some(t) if t.role == role => {
                if !t.text.is_empty() && !text.is_empty() {
                    t.text.push_str("\n\n");
                }
                t.text.push_str(text);
                t.images.extend(images);
            }
            None if role != "user" => {}
            _ => turns.push(Turn { role: role.to_owned(), text: text.to_owned(), images }),
        }
    }
    let mut turns: Vec<Turn> = Vec::new();
    let mut seen = 0;
    for m in messages {
        let n = match &m.content {
            Content::Parts(p) => p.iter().filter(|p| matches!(p, Part::Image)).count(),
            Content::Text(_) => 0,
        };
        if m.role == "user" || m.role == "assistant" {
            push(&mut turns, &m.role, &m.text(), (seen..seen + n).collect());
        }
        seen += n;
    }
    if let Some(a) = answer {
        match turns.last_mut() {
            Some(t) if t.role == "assistant" => t.text.push_str(a),
            _ => push(&mut turns, "assistant", a, Vec::new()),
        }
    }
    let images = turns.iter().flat_map(|t| t.images.iter().copied()).collect();
    let turns = turns
        .into_iter()
        .map(|t| {
            let mut parts: Vec<Part> = t.images.iter().map(|_| Part::Image).collect();
            parts.push(Part::Text { text: t.text });
            Message { role: t.role, content: Content::Parts(parts), tool_calls: Vec::new() }
        })
        .collect();
    Conversation { turns, images }
}

/// The guard's prompt for a conversation from [`conversation`]: its template rendered with the policy's
/// `excluded_category_keys`, tokenized as rendered (the template writes the BOS), one `<|image|>` per image
/// (to be expanded into the image's tokens).
pub fn prompt(tmpl: &ChatTemplate, tok: &Tokenizer, policy: &Policy, conv: &Conversation) -> Result<Vec<u32>> {
    if conv.is_empty() {
        return Err(HerdError::Input("the guard has no user or assistant text or image to check".into()));
    }
    let mut extra = Map::new();
    extra.insert("excluded_category_keys".into(), json!(policy.excluded()));
    let rendered = tmpl.render_with(&conv.turns, None, true, &extra)?;
    tok.encode_rendered(&rendered)
}

/// What the guard said.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    /// `S1`-style keys (empty when safe).
    pub categories: Vec<String>,
    pub safe: bool,
}

impl Verdict {
    /// Unsafe under `policy`: the guard said unsafe, and not only for categories the policy leaves out.
    pub fn refuses(&self, policy: &Policy) -> bool {
        !self.safe && (self.categories.is_empty() || self.categories.iter().any(|c| policy.checks(c)))
    }

    /// The categories with their names: `S1 (Violent Crimes), S10 (Hate)`.
    pub fn describe(&self) -> String {
        if self.categories.is_empty() {
            return "no category given".into();
        }
        let named = |k: &String| match category_name(k) {
            Some(n) => format!("{k} ({n})"),
            None => k.clone(),
        };
        self.categories.iter().map(named).collect::<Vec<_>>().join(", ")
    }

    /// As JSON: `{"safe": false, "categories": [{"key": "S1", "name": "Violent Crimes"}]}`.
    pub fn to_json(&self) -> Value {
        let cats: Vec<Value> = self.categories.iter().map(|k| json!({"key": k, "name": category_name(k)})).collect();
        json!({"safe": self.safe, "categories": cats})
    }
}

/// Reads the guard's answer: `safe`, or `unsafe` with an optional line of comma-separated categories (case
/// and surrounding space aside). Anything else is an error carrying the answer: a guard whose answer cannot
/// be read has not said the text is safe.
pub fn parse(answer: &str) -> std::result::Result<Verdict, String> {
    let mut lines = answer.trim().lines().map(str::trim).filter(|l| !l.is_empty());
    let first = lines.next().unwrap_or("").to_ascii_lowercase();
    match first.as_str() {
        "safe" => Ok(Verdict { safe: true, categories: Vec::new() }),
        "unsafe" => {
            let mut categories = Vec::new();
            for c in lines.next().unwrap_or("").split(',').map(|c| c.trim().to_ascii_uppercase()) {
                let ok = c.len() > 1 && c.starts_with('S') && c[1..].bytes().all(|b| b.is_ascii_digit());
                if ok && !categories.contains(&c) {
                    categories.push(c);
                }
            }
            Ok(Verdict { safe: false, categories })
        }
        _ => Err(format!(
            "the guard answered neither safe nor unsafe: {:?}",
            answer.chars().take(80).collect::<String>()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_read_as_the_model_card_writes_them() {
        assert_eq!(parse("safe"), Ok(Verdict { safe: true, categories: vec![] }));
        assert_eq!(parse("\n\nsafe\n"), Ok(Verdict { safe: true, categories: vec![] }));
        let v = parse("unsafe\nS1,S10").unwrap();
        assert_eq!((v.safe, v.categories.clone()), (false, vec!["S1".to_string(), "S10".to_string()]));
        assert_eq!(v.describe(), "S1 (Violent Crimes), S10 (Hate)");
        assert_eq!(parse("Unsafe\n s9 , S9").unwrap().categories, vec!["S9"]);
        assert_eq!(parse("unsafe").unwrap(), Verdict { safe: false, categories: vec![] });
        assert!(parse("").is_err());
        assert!(parse("maybe\nS1").is_err());
        assert!(parse("safety first").is_err());
    }

    #[test]
    fn a_policy_names_what_the_template_leaves_out() {
        assert!(Policy::all().excluded().is_empty());
        let p = Policy::only("s1, S10,S1").unwrap();
        assert_eq!(p.excluded().len(), 12);
        assert!(p.checks("S1") && p.checks("S10") && !p.checks("S2"));
        let e = Policy::only("S1,S15").unwrap_err().to_string();
        assert!(e.contains("S15") && e.contains("S1..S14"), "{e}");
        assert!(Policy::only("").is_err());
        // A verdict only for categories left out does not refuse; one without categories does.
        let v = Verdict { safe: false, categories: vec!["S2".into()] };
        assert!(!v.refuses(&p) && v.refuses(&Policy::all()));
        assert!(Verdict { safe: false, categories: vec![] }.refuses(&p));
    }

    #[test]
    fn the_guard_sees_alternating_user_and_assistant_turns() {
        let msgs = vec![
            Message::system("be brief"),
            Message::assistant("hello"),
            Message::user("one"),
            Message::user_with_images(1, "two"),
            Message::tool("{\"x\": 1}"),
            Message::assistant("   "),
            Message::assistant("three"),
        ];
        let c = conversation(&msgs, None);
        let texts: Vec<(String, String)> = c.turns.iter().map(|m| (m.role.clone(), m.text())).collect();
        assert_eq!(texts, vec![("user".into(), "one\n\ntwo".into()), ("assistant".into(), "three".into())]);
        // The image of the joined user turn comes before its text.
        assert_eq!(c.images, vec![0]);
        assert!(matches!(&c.turns[0].content, Content::Parts(p) if p[0] == Part::Image && p.len() == 2));
        // The answer continues a trailing assistant turn, or becomes one.
        assert_eq!(conversation(&msgs, Some(" four")).turns[1].text(), "three four");
        let c = conversation(&[Message::user("hi")], Some("there"));
        assert_eq!((c.turns.len(), c.turns[1].role.as_str(), c.turns[1].text()), (2, "assistant", "there".to_string()));
        assert!(matches!(&c.turns[0].content, Content::Parts(p) if p.len() == 1));
        assert!(c.images.is_empty());
        assert!(conversation(&[Message::system("only")], None).is_empty());
    }

    #[test]
    fn images_are_counted_across_all_messages_and_kept_with_their_turns() {
        // Images 0 (a system prompt's) and 3 (a tool result's) are not shown; a turn of images alone is.
        let msgs = vec![
            Message { role: "system".into(), content: Content::Parts(vec![Part::Image]), tool_calls: vec![] },
            Message::user_with_images(2, "  "),
            Message::tool("t"),
            Message { role: "tool".into(), content: Content::Parts(vec![Part::Image]), tool_calls: vec![] },
            Message::assistant("a"),
            Message::user_with_images(1, "b"),
        ];
        let c = conversation(&msgs, None);
        assert_eq!(c.images, vec![1, 2, 4]);
        let roles: Vec<&str> = c.turns.iter().map(|m| m.role.as_str()).collect();
        assert_eq!(roles, vec!["user", "assistant", "user"]);
        let parts = |i: usize| match &c.turns[i].content {
            Content::Parts(p) => p.clone(),
            Content::Text(_) => unreachable!(),
        };
        assert_eq!(parts(0), vec![Part::Image, Part::Image, Part::Text { text: String::new() }]);
        assert_eq!(parts(2), vec![Part::Image, Part::Text { text: "b".into() }]);
    }
}
