//! A chat with the model, turn by turn: the messages so far (the oldest dropped when the context cannot hold
//! them), the images in them (planned and encoded once), and the scheduler that keeps the conversation's
//! tokens in its cache so that each turn only feeds what it adds. `herd chat` and `herd app` both talk
//! through it.

use std::sync::Arc;

use anyhow::Result;
use herd_core::backend::Backend;
use herd_core::chat::{ChatTemplate, Content, Message, Part};
use herd_core::model::Llama4;
use herd_core::schedule::{Finish, GenerateParams, Request, Scheduler};
use herd_core::tokenizer::Tokenizer;
use herd_core::vision::input::PlannedImage;
use herd_core::vision::preprocess::RgbImage;

use crate::files::ModelFiles;
use crate::images::{Encoded, Planner, Vision};

/// The images of a chat: those already in the conversation (planned and encoded), and those attached to
/// the next message.
struct ChatImages<B: Backend> {
    planner: Option<Planner>,
    vision: Option<Vision<B>>,
    planned: Vec<PlannedImage>,
    encoded: Vec<Encoded<B>>,
    pending: Vec<RgbImage>,
}

/// How a turn went: how the answer ended, and how many of the oldest messages were dropped first to make
/// room for it.
pub struct Turn {
    pub finish: Finish,
    pub dropped: usize,
}

pub struct Conversation<B: Backend> {
    backend: Arc<B>,
    files: ModelFiles,
    tok: Tokenizer,
    tmpl: ChatTemplate,
    sched: Scheduler<B>,
    msgs: Vec<Message>,
    /// Messages never dropped (the system message).
    keep: usize,
    ctx: usize,
    im: ChatImages<B>,
    /// Turns answered so far: a seeded turn samples with the seed plus this.
    turn: u64,
}

impl<B: Backend> Conversation<B> {
    /// A conversation with `model` (loaded from `files`), opened by `system` when given.
    pub fn new(backend: Arc<B>, files: &ModelFiles, model: Llama4<B>, system: Option<&str>) -> Result<Self> {
        let ctx = model.cfg.max_position_embeddings;
        let mut sched = crate::text::one_at_a_time(Arc::new(model), true)?;
        // Prompt lookup for greedy turns, as `herd run` does by default.
        let auto = crate::speculate::SpecArgs { speculate: None, draft_tokens: 8 };
        auto.attach(&mut sched, files, &crate::files::LoadOptions::default(), true)?;
        Ok(Conversation {
            backend,
            files: files.clone(),
            tok: files.tokenizer()?,
            tmpl: files.chat_template()?,
            sched,
            msgs: system.map(|s| vec![Message::system(s)]).unwrap_or_default(),
            keep: usize::from(system.is_some()),
            ctx,
            im: ChatImages {
                planner: None,
                vision: None,
                planned: Vec::new(),
                encoded: Vec::new(),
                pending: Vec::new(),
            },
            turn: 0,
        })
    }

    pub fn model(&self) -> &Arc<Llama4<B>> {
        self.sched.model()
    }

    pub fn scheduler(&self) -> &Scheduler<B> {
        &self.sched
    }

    /// The model's context in tokens.
    pub fn context(&self) -> usize {
        self.ctx
    }

    /// Attaches images to the next message; returns how many are attached now.
    pub fn attach(&mut self, frames: Vec<RgbImage>) -> Result<usize> {
        if self.im.planner.is_none() {
            self.im.planner = Some(Planner::new(&self.files, &self.tok)?);
        }
        self.im.pending.extend(frames);
        Ok(self.im.pending.len())
    }

    /// Forgets every message after the system message, every image, and what the cache kept of them.
    pub fn reset(&mut self) {
        self.msgs.truncate(self.keep);
        self.sched.clear_prefix_cache();
        (self.im.planned, self.im.encoded, self.im.pending) = (Vec::new(), Vec::new(), Vec::new());
    }

    /// Sends the user's `text` (with the attached images) and generates the answer, handing each piece of
    /// decoded text to `on_text` as it comes (return false to stop there). The answer joins the
    /// conversation; a turn that cannot run (e.g. a message longer than the context) leaves the conversation
    /// as it was and is the error.
    pub fn say(&mut self, text: &str, params: &GenerateParams, on_text: &mut dyn FnMut(&str) -> bool) -> Result<Turn> {
        let new_images = std::mem::take(&mut self.im.pending);
        let n_new = new_images.len();
        self.msgs.push(if n_new > 0 { Message::user_with_images(n_new, text) } else { Message::user(text) });
        let dropped = match self.drop_oldest_turns(&new_images) {
            Ok(n) => n,
            Err(e) => {
                self.msgs.pop();
                return Err(e);
            }
        };
        let before = self.im.planned.len();
        let mut reply = String::new();
        let mut dec = self.tok.stream_decoder(true);
        let mut on_token = |id: u32| match dec.push(id) {
            Ok(Some(s)) => {
                reply.push_str(&s);
                on_text(&s)
            }
            _ => true,
        };
        let mut params = params.clone();
        params.sampling.seed = params.sampling.seed.map(|s| s.wrapping_add(self.turn));
        let result = self.turn_ids(new_images).and_then(|(ids, patch)| {
            let images = (!self.im.encoded.is_empty()).then(|| crate::text::images_of(patch, &self.im.encoded));
            crate::text::generate(&mut self.sched, Request::new(ids, params), images, &mut on_token)
        });
        self.turn += 1;
        match result {
            Ok(finish) => {
                self.msgs.push(Message::assistant(reply));
                Ok(Turn { finish, dropped })
            }
            Err(e) => {
                self.msgs.pop();
                self.im.planned.truncate(before);
                self.im.encoded.truncate(before);
                Err(e)
            }
        }
    }

    /// Drops the oldest messages after the first `keep` (the system message) until the conversation, with
    /// its images, leaves the model room for at least one token of answer; returns how many went. The newest
    /// message is never dropped: if it alone does not fit, that is the error.
    fn drop_oldest_turns(&mut self, new_images: &[RgbImage]) -> Result<usize> {
        let (ctx, keep, im) = (self.ctx, self.keep, &mut self.im);
        let mut dropped = 0;
        loop {
            let ids = self.tok.encode_rendered(&self.tmpl.render(&self.msgs, None, true)?)?;
            let len = match &im.planner {
                Some(p) => p.expanded_len(&ids, &im.planned, new_images)?,
                None => ids.len(),
            };
            if len < ctx {
                return Ok(dropped);
            }
            if self.msgs.len() <= keep + 1 {
                anyhow::bail!(
                    "the message is {len} tokens{}, more than the model's context of {ctx} tokens leaves room for",
                    if dropped > 0 { " on its own" } else { "" }
                );
            }
            let gone = self.msgs.remove(keep);
            let images = match &gone.content {
                Content::Parts(parts) => parts.iter().filter(|p| matches!(p, Part::Image)).count(),
                Content::Text(_) => 0,
            };
            let images = images.min(im.planned.len());
            im.planned.drain(..images);
            im.encoded.drain(..images.min(im.encoded.len()));
            dropped += 1;
        }
    }

    /// This turn's ids (the conversation rendered, its images expanded) with its new images planned and
    /// encoded; the `<|patch|>` id (0 when the conversation has no images).
    fn turn_ids(&mut self, new_images: Vec<RgbImage>) -> Result<(Vec<u32>, u32)> {
        let ids = self.tok.encode_rendered(&self.tmpl.render(&self.msgs, None, true)?)?;
        let im = &mut self.im;
        let Some(planner) = &im.planner else { return Ok((ids, 0)) };
        let (ids, planned) = planner.plan(&ids, new_images, &im.planned)?;
        im.planned.extend(planned);
        if im.vision.is_none() {
            im.vision = Some(Vision::load(&self.files, &self.backend, planner)?);
        }
        let Some(vision) = &im.vision else { return Ok((ids, 0)) };
        let start = im.encoded.len();
        let encoded = vision.encode(&self.backend, &im.planned[start..])?;
        im.encoded.extend(encoded);
        Ok((ids, planner.tokens.patch))
    }
}
