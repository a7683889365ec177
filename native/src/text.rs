//! `herd run` and `herd chat`: text in, streamed text out.

use std::io::{BufRead, Write};
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use herd_core::backend::Backend;
use herd_core::chat::Message;
use herd_core::constrain::{Constrainer, Constraint, Grammar};
use herd_core::error::HerdError;
use herd_core::limits::{read_input, read_input_string, InputKind};
use herd_core::model::Llama4;
use herd_core::sampling::SamplingParams;
use herd_core::schedule::GenerateParams;
use herd_core::schedule::{queue, Event, Finish, Images, Request, Scheduler, SchedulerConfig};
use herd_core::tokenizer::Tokenizer;

use crate::conversation::Conversation;
use crate::files::{LoadOptions, ModelFiles};
use crate::fit::Need;
use crate::guard::GuardFiles;
use crate::images::{Encoded, Planner, Vision};
use crate::SamplingArgs;
use herd_core::vision::preprocess::RgbImage;
use std::time::Instant;

/// Sampling settings: the model's generation_config.json, overridden by flags.
pub(crate) fn sampling(files: &ModelFiles, a: &SamplingArgs) -> Result<SamplingParams> {
    let mut p = files.generation_config()?.sampling_params();
    if let Some(t) = a.temperature {
        p.temperature = t;
    }
    if let Some(k) = a.top_k {
        p.top_k = k;
    }
    if let Some(v) = a.top_p {
        p.top_p = v;
    }
    if let Some(v) = a.min_p {
        p.min_p = v;
    }
    if let Some(v) = a.repetition_penalty {
        p.repetition_penalty = v;
    }
    p.seed = a.seed;
    p.validate()?;
    Ok(p)
}

/// Stop ids: generation_config.json's eos list, else config.json's.
pub(crate) fn stop_ids(files: &ModelFiles, cfg_eos: &[u32]) -> Result<Vec<u32>> {
    let g = files.generation_config()?;
    Ok(if g.eos_token_ids.is_empty() { cfg_eos.to_vec() } else { g.eos_token_ids })
}

fn report(f: &Finish) {
    let reused =
        if f.cached_tokens > 0 { format!(" ({} reused from the cache)", f.cached_tokens) } else { String::new() };
    eprintln!(
        "\n[prefill: {} tokens{reused}, {:.1} tok/s | decode: {} tokens, {:.1} tok/s]",
        f.prompt_tokens,
        f.prefill_tps(),
        f.generated_tokens,
        f.decode_tps()
    );
}

/// The scheduler of `herd run` and `herd chat`: one request at a time, its prompt read in one step (the
/// model splits what its buffers cannot hold), and for a chat the conversation so far kept in the cache
/// (`keep` tokens) so that each turn only feeds what it adds.
pub fn one_at_a_time<B: Backend>(model: Arc<Llama4<B>>, keep: bool) -> Result<Scheduler<B>> {
    let ctx = model.cfg.max_position_embeddings;
    let cfg = SchedulerConfig {
        max_seqs: 1,
        max_batch_tokens: ctx,
        max_queue: 1,
        prefix_cache_tokens: if keep { ctx } else { 0 },
        max_context: None,
    };
    Ok(Scheduler::new(model, cfg)?)
}

/// Runs one request through the scheduler to its end, handing each generated id that is not a stop id to
/// `on_token` between steps (return false to stop there). Returns how it ended; a failed step is an error.
pub fn generate<B: Backend>(
    s: &mut Scheduler<B>,
    req: Request,
    images: Option<Images<B>>,
    on_token: &mut dyn FnMut(u32) -> bool,
) -> Result<Finish> {
    let (sink, events) = queue();
    let id = s.submit_with_images(req, images, sink)?;
    loop {
        let stepped = crate::backend_arg::step(s);
        while let Some(e) = events.pop() {
            match e {
                Event::Token(t) => {
                    if !on_token(t.id) {
                        s.cancel(id);
                    }
                }
                Event::Done(f) => {
                    return match &f.reason {
                        Err(m) => Err(anyhow::anyhow!("{m}")),
                        Ok(_) => Ok(f),
                    };
                }
            }
        }
        stepped?;
    }
}

/// Streams decoded text of each generated id to stdout.
fn streamer<'a>(tok: &'a Tokenizer, out: &'a mut String) -> impl FnMut(u32) -> bool + 'a {
    let mut dec = tok.stream_decoder(true);
    move |id| {
        if let Ok(Some(s)) = dec.push(id) {
            print!("{s}");
            out.push_str(&s);
            // A closed stdout (e.g. piped into `head`) ends generation quietly.
            return std::io::stdout().flush().is_ok();
        }
        true
    }
}

/// What `herd run` generates after: the text, whether it goes through the chat template, and its images.
pub struct Prompt<'a> {
    pub text: &'a str,
    pub chat: bool,
    pub system: Option<&'a str>,
    pub images: Vec<RgbImage>,
}

/// The prompt's ids with one `<|image|>` placeholder per image: in the chat template's user message
/// (images first), else where the text has `<|image|>` (then there must be one per image), else right
/// after the start of the text.
fn prompt_ids(files: &ModelFiles, tok: &Tokenizer, p: &Prompt) -> Result<Vec<u32>> {
    let n = p.images.len();
    if p.chat || p.system.is_some() {
        let tmpl = files.chat_template()?;
        let mut msgs = Vec::new();
        if let Some(s) = p.system {
            msgs.push(Message::system(s));
        }
        msgs.push(if n > 0 { Message::user_with_images(n, p.text) } else { Message::user(p.text) });
        return Ok(tok.encode_rendered(&tmpl.render(&msgs, None, true)?)?);
    }
    if n == 0 {
        return Ok(tok.encode_plain(p.text, true)?);
    }
    let image = tok.token_to_id("<|image|>").context("the tokenizer has no <|image|> token: it takes no images")?;
    let mut ids = tok.encode_plain("", true)?; // the start of the text (BOS)
    let pieces: Vec<&str> = p.text.split("<|image|>").collect();
    if pieces.len() == 1 {
        ids.extend(std::iter::repeat_n(image, n));
        ids.extend(tok.encode_plain(p.text, false)?);
    } else {
        for (i, piece) in pieces.iter().enumerate() {
            if i > 0 {
                ids.push(image);
            }
            ids.extend(tok.encode_plain(piece, false)?);
        }
    }
    Ok(ids)
}

/// `--json-schema FILE` / `--grammar FILE` read and parsed (compiled later, against the model's tokenizer).
pub fn grammar_arg(schema: Option<&Path>, lark: Option<&Path>) -> Result<Option<Grammar>> {
    if let Some(p) = schema {
        let bytes = read_input(p, InputKind::Grammar)?;
        let v: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| HerdError::bad_file(p, format!("is not a JSON schema: {e}")))?;
        if !v.is_object() && v != serde_json::Value::Bool(true) {
            return Err(HerdError::bad_file(p, "is not a JSON schema: not an object").into());
        }
        return Ok(Some(Grammar::JsonSchema(v)));
    }
    match lark {
        Some(p) => Ok(Some(Grammar::Lark(read_input_string(p, InputKind::Grammar)?))),
        None => Ok(None),
    }
}

/// The grammar engine over the model's vocabulary, and the model's stop ids (the first ends a grammar).
pub(crate) fn constrainer(files: &ModelFiles, tok: &Tokenizer) -> Result<(Constrainer, Vec<u32>)> {
    let cfg = files.config()?;
    let stops = stop_ids(files, &cfg.text.eos_token_ids)?;
    let Some(&eos) = stops.first() else {
        return Err(HerdError::Input("constrained decoding needs a stop id (the model names none)".into()).into());
    };
    Ok((Constrainer::new(tok, cfg.text.vocab_size, eos)?, stops))
}

/// The constraint for `grammar` over the model's vocabulary, compiled before anything loads.
fn constraint(files: &ModelFiles, tok: &Tokenizer, grammar: Option<&Grammar>) -> Result<Option<Constraint>> {
    let Some(g) = grammar else { return Ok(None) };
    Ok(Some(constrainer(files, tok)?.0.start(g)?))
}

#[allow(clippy::too_many_arguments)]
pub fn run<B: Backend>(
    backend: Arc<B>,
    files: &ModelFiles,
    prompt: Prompt,
    a: &SamplingArgs,
    opts: &LoadOptions,
    show_stats: bool,
    grammar: Option<&Grammar>,
    guard: Option<(&GuardFiles, usize)>,
    spec: &crate::speculate::SpecArgs,
) -> Result<()> {
    let tok = files.tokenizer()?;
    // The guard checks the prompt, with its images, before the model loads (the prompt's length for it
    // before anything does). It reads the prompt as the user's turn, its images first.
    let guard_images = match guard {
        Some(_) => prompt.images.clone(),
        None => Vec::new(),
    };
    let user = Message::user_with_images(guard_images.len(), prompt.text.replace("<|image|>", ""));
    let conv = vec![user];
    let guard_conv = herd_core::guard::conversation(&conv, None);
    if let Some((g, _)) = guard {
        g.request(&guard_conv, &guard_images)?;
    }
    // The guard's memory is planned before it loads: the model's plan below gets what it leaves.
    let reserved = match guard {
        Some((g, _)) => g.reserve(&*backend, opts, 1, !guard_images.is_empty())?,
        None => 0,
    };
    let mut guard = match guard {
        Some((g, every)) => {
            let mut l = g.load(backend.clone(), opts, 1, !guard_images.is_empty())?;
            let v = crate::guard::check(&mut l, g, &guard_conv, &guard_images)?;
            if v.refuses(&g.policy) {
                anyhow::bail!("the guard found the prompt unsafe: {}", v.describe());
            }
            let (text, shown, since, unsafe_) = (String::new(), 0, 0, None);
            Some(crate::guard::Guarded { g, l, conv, images: guard_images, every, text, shown, since, unsafe_ })
        }
        None => None,
    };
    let params = GenerateParams { max_tokens: a.max_tokens, sampling: sampling(files, a)?, stop_ids: vec![] };
    let ids = prompt_ids(files, &tok, &prompt)?;
    let constraint = constraint(files, &tok, grammar)?;
    // Images are planned, and the prompt's length checked, before anything loads.
    let planned = match prompt.images.is_empty() {
        true => None,
        false => {
            let planner = Planner::new(files, &tok)?;
            let (ids, planned) = planner.plan(&ids, prompt.images, &[])?;
            Some((planner, ids, planned))
        }
    };
    // The prompt and the tokens asked for must fit the device's memory, checked before anything loads.
    let prompt_len = planned.as_ref().map_or(ids.len(), |p| p.1.len());
    let context = Some(prompt_len + params.max_tokens);
    let need = Need { seqs: 1, context, kept_slots: 0, step_rows: prompt_len, reserved, vision: planned.is_some() };
    let fits = crate::fit::check(&*backend, files, opts, &need)?;
    let (cfg, model) = files.load(backend.clone(), opts)?;
    let params = GenerateParams { stop_ids: stop_ids(files, &cfg.text.eos_token_ids)?, ..params };
    let mut sched = one_at_a_time(Arc::new(model), false)?;
    spec.attach(&mut sched, files, opts, true)?;
    if fits.is_some() {
        // The cache sized once for what was planned: it never grows past it.
        sched.reserve(1, prompt_len + params.max_tokens.min(cfg.text.max_position_embeddings))?;
    }
    let mut text = String::new();
    let mut plain = streamer(&tok, &mut text);
    let has_guard = guard.is_some();
    let mut dec = tok.stream_decoder(true);
    let mut guarded = |id: u32| -> bool {
        let gd = guard.as_mut().expect("only with a guard");
        if let Ok(Some(piece)) = dec.push(id) {
            gd.text.push_str(&piece);
        }
        gd.since += 1;
        gd.since < gd.every || gd.check()
    };
    let on_token: &mut dyn FnMut(u32) -> bool = if has_guard { &mut guarded } else { &mut plain };
    let stats = match planned {
        None => generate(&mut sched, Request { constraint, ..Request::new(ids, params) }, None, on_token)?,
        Some((planner, ids, planned)) => {
            let vision = Vision::load(files, &backend, &planner)?;
            let t0 = Instant::now();
            let encoded = vision.encode(&backend, &planned)?;
            let tiles: usize = encoded.iter().map(|e| e.n / vision.tower.tokens_per_tile()).sum();
            eprintln!(
                "[images: {} images, {tiles} tiles encoded in {:.2} s]",
                encoded.len(),
                t0.elapsed().as_secs_f64()
            );
            let images = images_of(planner.tokens.patch, &encoded);
            generate(&mut sched, Request { constraint, ..Request::new(ids, params) }, Some(images), on_token)?
        }
    };
    if let Some(gd) = guard.as_mut() {
        // The end of the answer: checked once more (unless the last check saw all of it).
        if gd.unsafe_.is_none() && (gd.since > 0 || gd.shown < gd.text.len()) {
            gd.check();
        }
        if let Some(v) = &gd.unsafe_ {
            println!();
            report(&stats);
            anyhow::bail!("the guard found the answer unsafe and stopped it there: {}", v.describe());
        }
    }
    println!();
    report(&stats);
    if show_stats {
        match sched.model().expert_stats() {
            Some(s) => eprintln!("{s}"),
            None => eprintln!("expert cache: off (every expert resident; --expert-cache SIZE streams them)"),
        }
    }
    Ok(())
}

/// A request's images from their encodings.
pub(crate) fn images_of<B: Backend>(patch: u32, encoded: &[Encoded<B>]) -> Images<B> {
    Images {
        patch,
        rows: encoded.iter().map(|e| (e.rows.clone(), e.n)).collect(),
        keys: encoded.iter().map(|e| e.key).collect(),
    }
}

pub fn chat<B: Backend>(
    backend: Arc<B>,
    files: &ModelFiles,
    system: Option<&str>,
    a: &SamplingArgs,
    max_frames: usize,
    opts: &LoadOptions,
) -> Result<()> {
    let tok = files.tokenizer()?;
    let sampling = sampling(files, a)?;
    // The model and one token of conversation must fit; the conversation's length is checked as it grows.
    crate::fit::check(
        &*backend,
        files,
        opts,
        &Need { seqs: 1, context: None, kept_slots: 0, step_rows: 0, reserved: 0, vision: false },
    )?;
    let (cfg, model) = files.load(backend.clone(), opts)?;
    let params =
        GenerateParams { max_tokens: a.max_tokens, sampling, stop_ids: stop_ids(files, &cfg.text.eos_token_ids)? };
    let mut conv = Conversation::new(backend, files, model, system)?;
    eprintln!(
        "herd chat with {} — /image PATH attaches an image to your next message, /reset starts over, /exit (or end \
         of input) quits.",
        files.describe()
    );
    let ctx = conv.context();
    // No message longer than the context could hold even at the longest token is read into memory.
    let max_line = ctx.saturating_mul(longest_token(&tok)).saturating_add(2);
    let stdin = std::io::stdin();
    loop {
        eprint!("> ");
        let line = match read_line_bounded(&mut stdin.lock(), max_line).context("reading stdin")? {
            None => break,
            Some(Err(n)) => {
                eprintln!(
                    "error: that message is {n} bytes or more, more than the model's context of {ctx} tokens can \
                     hold; not sent"
                );
                continue;
            }
            Some(Ok(l)) => l,
        };
        let line = line.trim_end_matches(['\n', '\r']);
        match line.trim() {
            "" => continue,
            "/exit" | "/quit" => break,
            "/reset" => {
                conv.reset();
                eprintln!("(conversation cleared)");
                continue;
            }
            l if l.starts_with("/image") => {
                let path = l["/image".len()..].trim();
                let got = match path.is_empty() {
                    true => Err(anyhow::anyhow!("/image needs a path: /image PATH")),
                    false => crate::images::read_images(std::path::Path::new(path), max_frames),
                }
                .and_then(|frames| conv.attach(frames));
                match got {
                    Ok(n) => eprintln!("({n} images attached to your next message)"),
                    Err(e) => eprintln!("error: {}", crate::one_line(&e)),
                }
                continue;
            }
            _ => {}
        }
        let mut on_text = |s: &str| {
            print!("{s}");
            // A closed stdout (e.g. piped into `head`) ends the answer quietly.
            std::io::stdout().flush().is_ok()
        };
        match conv.say(line, &params, &mut on_text) {
            Ok(turn) => {
                println!();
                if turn.dropped > 0 {
                    eprintln!(
                        "(the conversation no longer fit the model's context of {ctx} tokens: the oldest {} \
                         messages were dropped)",
                        turn.dropped
                    );
                }
                report(&turn.finish);
            }
            // A turn that cannot run (e.g. the conversation outgrew the context) is reported, not fatal.
            Err(e) => eprintln!("error: {}", crate::one_line(&e)),
        }
    }
    Ok(())
}

/// How far past the limit an over-long line is read (and dropped) looking for its end, before the input is
/// taken for one without lines at all.
const MAX_DISCARD: usize = 1 << 30;

/// Reads one line of at most `max` bytes: `None` at the end of input, `Err(n)` for a longer line (read through
/// to its end and dropped, `n` the bytes seen), so an endless line (`herd chat < /dev/zero`) never fills memory.
fn read_line_bounded(r: &mut impl BufRead, max: usize) -> std::io::Result<Option<Result<String, usize>>> {
    let mut line = Vec::new();
    let mut seen = 0usize;
    loop {
        let buf = r.fill_buf()?;
        if buf.is_empty() {
            break;
        }
        let (chunk, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (&buf[..=i], true),
            None => (buf, false),
        };
        let n = chunk.len();
        seen = seen.saturating_add(n);
        if seen > max.saturating_add(MAX_DISCARD) {
            return Err(std::io::Error::other(format!("a line of more than {seen} bytes: stopping")));
        }
        if seen <= max {
            line.extend_from_slice(chunk);
        } else {
            line = Vec::new();
        }
        r.consume(n);
        if done {
            break;
        }
    }
    if seen == 0 {
        return Ok(None);
    }
    if seen > max {
        return Ok(Some(Err(seen)));
    }
    Ok(Some(Ok(String::from_utf8_lossy(&line).into_owned())))
}

/// The most bytes one token of `tok`'s vocabulary stands for (byte-level tokens: one character a byte).
fn longest_token(tok: &Tokenizer) -> usize {
    tok.inner().get_vocab(true).keys().map(|k| k.chars().count()).max().unwrap_or(1).max(1)
}
