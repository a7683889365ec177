//! Constrained decoding: output that follows a JSON schema or a grammar, token by token.
//!
//! The grammar engine is llguidance (the one behind llama.cpp's and vLLM's structured outputs). A
//! [`Constrainer`] is built once per tokenizer: the bytes of every token of the model's vocabulary in a
//! token trie, and llguidance's parser factory over it. Each constrained request gets a [`Constraint`], the
//! parser state of its output so far; before each of its tokens the scheduler asks it for the mask of
//! allowed tokens (a bit per token, the layout of [`crate::backend::Backend::mask_logits`]), the backend
//! applies the mask to the logits on the device before sampling, and the sampled token is committed to the
//! constraint. Once the grammar is complete, or may end, the request's stop ids are allowed too; once
//! nothing may follow, only they are.

use std::sync::Arc;

use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{TokEnv, TokRxInfo, TokTrie, TokenId, TokenizerEnv};
use llguidance::{JsonCompileOptions, Matcher, ParserFactory};
use serde_json::Value;

use crate::error::{HerdError, Result};
use crate::tokenizer::{one_line, Tokenizer};

/// What the output must follow.
#[derive(Debug, Clone, PartialEq)]
pub enum Grammar {
    /// Any JSON object (OpenAI's `response_format: {"type": "json_object"}`).
    JsonObject,
    /// A value valid under this JSON schema (`{"type": "json_schema"}`, `herd run --json-schema`).
    JsonSchema(Value),
    /// A grammar in llguidance's Lark syntax (`herd run --grammar`).
    Lark(String),
}

impl Grammar {
    /// llguidance's grammar. JSON is written as `json.dumps` writes it (`", "` and `": "`, no other
    /// whitespace): a model free to put whitespace anywhere can fill its budget with newlines. A schema
    /// that sets llguidance's own options (`x-guidance`) keeps them.
    fn top_level(&self) -> TopLevelGrammar {
        let json = |mut schema: Value| {
            if schema == Value::Bool(true) {
                schema = serde_json::json!({});
            }
            if let Some(o) = schema.as_object_mut().filter(|o| !o.contains_key("x-guidance")) {
                let opts = JsonCompileOptions {
                    item_separator: ", ".into(),
                    key_separator: ": ".into(),
                    whitespace_flexible: false,
                    ..JsonCompileOptions::default()
                };
                if let Ok(v) = serde_json::to_value(opts) {
                    o.insert("x-guidance".into(), v);
                }
            }
            TopLevelGrammar::from_json_schema(schema)
        };
        match self {
            Grammar::JsonObject => json(serde_json::json!({"type": "object"})),
            Grammar::JsonSchema(s) => json(s.clone()),
            Grammar::Lark(g) => TopLevelGrammar::from_lark(g.clone()),
        }
    }

    fn what(&self) -> &'static str {
        match self {
            Grammar::JsonObject | Grammar::JsonSchema(_) => "JSON schema",
            Grammar::Lark(_) => "grammar",
        }
    }
}

/// herd's tokenizer seen by llguidance: the trie of token bytes, and the tokenizer itself for text the
/// grammar forces.
struct Env {
    trie: TokTrie,
    tok: Tokenizer,
}

impl TokenizerEnv for Env {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<TokenId> {
        match std::str::from_utf8(s) {
            Ok(text) => self.tok.encode_plain(text, false).unwrap_or_else(|_| self.trie.greedy_tokenize(s)),
            Err(_) => self.trie.greedy_tokenize(s),
        }
    }
}

/// The grammar engine for one tokenizer and vocabulary; cheap to share (build it once per model).
#[derive(Clone)]
pub struct Constrainer {
    factory: Arc<ParserFactory>,
    vocab: usize,
    eos: u32,
}

impl std::fmt::Debug for Constrainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Constrainer").field("vocab", &self.vocab).finish()
    }
}

impl Constrainer {
    /// The engine for `tok` and a model of `vocab` ids (ids past the tokenizer's are never allowed), whose
    /// generation ends at `eos` (the first of the model's stop ids).
    pub fn new(tok: &Tokenizer, vocab: usize, eos: u32) -> Result<Self> {
        let err = |e: &dyn std::fmt::Display| HerdError::Tokenizer(format!("constrained decoding: {}", one_line(e)));
        let json: Value =
            serde_json::from_str(&tok.inner().to_string(false).map_err(|e| err(&e))?).map_err(|e| err(&e))?;
        let mut words = llguidance::token_bytes_from_tokenizer_json(&json).map_err(|e| err(&e))?;
        if words.len() > vocab {
            return Err(err(&format!("the tokenizer has {} tokens, the model {vocab}", words.len())));
        }
        words.resize(vocab, Vec::new());
        if eos as usize >= vocab {
            return Err(err(&format!("stop id {eos} is outside the vocabulary of {vocab}")));
        }
        let info = TokRxInfo::new(vocab as u32, eos);
        let env: TokEnv = Arc::new(Env { trie: TokTrie::from(&info, &words), tok: tok.clone() });
        let mut factory = ParserFactory::new_simple(&env).map_err(|e| err(&e))?;
        factory.quiet();
        Ok(Constrainer { factory: Arc::new(factory), vocab, eos })
    }

    /// A fresh constraint for `grammar`, or a one-line error naming what llguidance cannot compile (an
    /// unsupported schema keyword, a Lark syntax error), before any work is done.
    pub fn start(&self, grammar: &Grammar) -> Result<Constraint> {
        let parser = self
            .factory
            .create_parser(grammar.top_level())
            .map_err(|e| HerdError::Input(format!("{}: {}", grammar.what(), one_line(e))))?;
        let m = Matcher::new(Ok(parser));
        if let Some(e) = m.get_error() {
            return Err(HerdError::Input(format!("{}: {}", grammar.what(), one_line(e))));
        }
        Ok(Constraint { m, vocab: self.vocab, eos: self.eos })
    }

    /// u32 words of one row's mask.
    pub fn words(&self) -> usize {
        self.vocab.div_ceil(32)
    }
}

/// One output's grammar state (see the module docs). Cloning copies the state.
pub struct Constraint {
    m: Matcher,
    vocab: usize,
    eos: u32,
}

impl Clone for Constraint {
    fn clone(&self) -> Self {
        Constraint { m: self.m.deep_clone(), vocab: self.vocab, eos: self.eos }
    }
}

impl std::fmt::Debug for Constraint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Constraint").field("stopped", &self.m.is_stopped()).finish()
    }
}

impl Constraint {
    /// The tokens allowed next, a bit per id (`vocab.div_ceil(32)` words, bit t % 32 of word t / 32), with
    /// every id of `stops` allowed where the grammar may end. Never empty: a grammar with no way on is an error.
    pub fn mask(&mut self, stops: &[u32]) -> Result<Vec<u32>> {
        let vob = self.m.compute_mask_or_eos().map_err(|e| self.error(e))?;
        let mut words = vec![0u32; self.vocab.div_ceil(32)];
        let src = vob.as_slice();
        let n = words.len().min(src.len());
        words[..n].copy_from_slice(&src[..n]);
        let r = self.vocab % 32;
        if let (true, Some(last)) = (r != 0, words.last_mut()) {
            *last &= (1u32 << r) - 1;
        }
        let eos = self.eos as usize;
        if words[eos / 32] >> (eos % 32) & 1 == 1 {
            for &s in stops.iter().filter(|&&s| (s as usize) < self.vocab) {
                words[s as usize / 32] |= 1 << (s % 32);
            }
        }
        if words.iter().all(|&w| w == 0) {
            return Err(HerdError::Input("the grammar allows no token here".into()));
        }
        Ok(words)
    }

    /// Advances the state past `id` (a token its last mask allowed; stop ids are not passed here).
    pub fn commit(&mut self, id: u32) -> Result<()> {
        self.m.consume_token(id).map_err(|e| self.error(e))
    }

    /// Whether nothing but a stop id may follow.
    pub fn is_finished(&self) -> bool {
        self.m.is_stopped()
    }

    fn error(&self, e: impl std::fmt::Display) -> HerdError {
        HerdError::Input(format!("constrained decoding: {}", one_line(e)))
    }
}

/// Sets every logit `mask` does not allow to -inf (the host's copy of `mask_logits`, for rows sampled on
/// the host).
pub fn apply_mask(logits: &mut [f32], mask: &[u32]) {
    for (t, l) in logits.iter_mut().enumerate() {
        if mask.get(t / 32).is_none_or(|w| w >> (t % 32) & 1 == 0) {
            *l = f32::NEG_INFINITY;
        }
    }
}

/// One step's masks, computed while the forward runs: [`Masks::start`] hands the constraints to a thread
/// (on wasm32, which has none, it computes them at once), the sampling asks for rows once the step's work is
/// enqueued ([`MaskRef::words`] waits for the thread), and [`Masks::finish`] gives the constraints back.
pub struct Masks {
    state: std::sync::Mutex<MaskState>,
}

type MaskJob = (Constraint, Vec<u32>);
type MaskDone = Vec<(Constraint, Result<Vec<u32>>)>;

enum MaskState {
    #[cfg(not(target_arch = "wasm32"))]
    Running(std::thread::JoinHandle<MaskDone>),
    Ready(MaskDone),
    Gone,
}

fn compute(jobs: Vec<MaskJob>) -> MaskDone {
    jobs.into_iter()
        .map(|(mut c, stops)| {
            let m = c.mask(&stops);
            (c, m)
        })
        .collect()
}

impl Masks {
    /// Starts computing the mask of each (constraint, stop ids), in order.
    pub fn start(jobs: Vec<MaskJob>) -> Masks {
        #[cfg(not(target_arch = "wasm32"))]
        let state = MaskState::Running(std::thread::spawn(move || compute(jobs)));
        #[cfg(target_arch = "wasm32")]
        let state = MaskState::Ready(compute(jobs));
        Masks { state: std::sync::Mutex::new(state) }
    }

    fn ready(&self) -> Result<std::sync::MutexGuard<'_, MaskState>> {
        let mut st = self.state.lock().map_err(|_| HerdError::internal("the mask lock was poisoned"))?;
        let state = std::mem::replace(&mut *st, MaskState::Gone);
        *st = match state {
            #[cfg(not(target_arch = "wasm32"))]
            MaskState::Running(h) => {
                MaskState::Ready(h.join().map_err(|_| HerdError::internal("the grammar engine panicked"))?)
            }
            s => s,
        };
        Ok(st)
    }

    /// Job `i`'s mask: None when it failed (the caller's step then ends that sequence with
    /// [`Masks::finish`]'s error).
    pub fn row(&self, i: usize) -> Result<Option<Vec<u32>>> {
        match &*self.ready()? {
            MaskState::Ready(done) => Ok(done.get(i).and_then(|d| d.1.as_ref().ok()).cloned()),
            _ => Err(HerdError::internal("the step's masks were already taken")),
        }
    }

    /// The constraints back, each with its mask or the error computing it.
    pub fn finish(self) -> Result<MaskDone> {
        match std::mem::replace(&mut *self.ready()?, MaskState::Gone) {
            MaskState::Ready(done) => Ok(done),
            _ => Err(HerdError::internal("the step's masks were already taken")),
        }
    }
}

/// Row `row` of a step's [`Masks`], as a pick refers to it.
#[derive(Clone, Copy)]
pub struct MaskRef<'a> {
    pub masks: &'a Masks,
    pub row: usize,
}

impl std::fmt::Debug for MaskRef<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MaskRef({})", self.row)
    }
}

impl MaskRef<'_> {
    /// Its mask (waiting for it), or None when computing it failed.
    pub fn words(&self) -> Result<Option<Vec<u32>>> {
        self.masks.row(self.row)
    }
}
