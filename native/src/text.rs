//! `herd run` and `herd chat`: text in, streamed text out.

use herd_core::experts::ExpertCacheOptions;
use std::io::{BufRead, Write};
use std::sync::Arc;

use anyhow::{Context, Result};
use herd_core::backend::Backend;
use herd_core::chat::Message;
use herd_core::generate::{GenerateParams, GenerateStats, Session};
use herd_core::sampling::{Sampler, SamplingParams};
use herd_core::tokenizer::Tokenizer;

use crate::files::ModelFiles;
use crate::SamplingArgs;

/// Sampling settings: the model's generation_config.json, overridden by flags.
fn sampling(files: &ModelFiles, a: &SamplingArgs) -> Result<SamplingParams> {
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
fn stop_ids(files: &ModelFiles, cfg_eos: &[u32]) -> Result<Vec<u32>> {
    let g = files.generation_config()?;
    Ok(if g.eos_token_ids.is_empty() { cfg_eos.to_vec() } else { g.eos_token_ids })
}

fn report(stats: &GenerateStats) {
    eprintln!(
        "\n[prefill: {} tokens, {:.1} tok/s | decode: {} tokens, {:.1} tok/s]",
        stats.prompt_tokens,
        stats.prefill_tps(),
        stats.generated_tokens,
        stats.decode_tps()
    );
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

#[allow(clippy::too_many_arguments)]
pub fn run<B: Backend>(
    backend: Arc<B>,
    files: &ModelFiles,
    prompt: &str,
    chat: bool,
    system: Option<&str>,
    a: &SamplingArgs,
    experts: Option<&ExpertCacheOptions>,
    show_stats: bool,
) -> Result<()> {
    let tok = files.tokenizer()?;
    let params = GenerateParams { max_tokens: a.max_tokens, sampling: sampling(files, a)?, stop_ids: vec![] };
    let ids = if chat || system.is_some() {
        let tmpl = files.chat_template()?;
        let mut msgs = Vec::new();
        if let Some(s) = system {
            msgs.push(Message::system(s));
        }
        msgs.push(Message::user(prompt));
        tok.encode_rendered(&tmpl.render(&msgs, None, true)?)?
    } else {
        tok.encode_plain(prompt, true)?
    };
    let (cfg, model) = files.load(backend, experts)?;
    let params = GenerateParams { stop_ids: stop_ids(files, &cfg.text.eos_token_ids)?, ..params };
    let mut sampler = Sampler::new(params.sampling)?;
    let mut session = Session::new(&model)?;
    let mut text = String::new();
    let (_, stats) = session.generate(&model, &ids, &params, &mut sampler, &mut streamer(&tok, &mut text))?;
    println!();
    report(&stats);
    if show_stats {
        match model.expert_stats() {
            Some(s) => eprintln!("{s}"),
            None => eprintln!("expert cache: off (every expert resident; --expert-cache SIZE streams them)"),
        }
    }
    Ok(())
}

pub fn chat<B: Backend>(
    backend: Arc<B>,
    files: &ModelFiles,
    system: Option<&str>,
    a: &SamplingArgs,
    experts: Option<&ExpertCacheOptions>,
) -> Result<()> {
    let tok = files.tokenizer()?;
    let tmpl = files.chat_template()?;
    let sampling = sampling(files, a)?;
    let (cfg, model) = files.load(backend, experts)?;
    let params =
        GenerateParams { max_tokens: a.max_tokens, sampling, stop_ids: stop_ids(files, &cfg.text.eos_token_ids)? };
    let mut sampler = Sampler::new(params.sampling)?;
    let mut session = Session::new(&model)?;
    let mut msgs: Vec<Message> = system.map(|s| vec![Message::system(s)]).unwrap_or_default();
    eprintln!("herd chat with {} — /reset starts over, /exit (or end of input) quits.", files.describe());
    let stdin = std::io::stdin();
    loop {
        eprint!("> ");
        let mut line = String::new();
        if stdin.lock().read_line(&mut line).context("reading stdin")? == 0 {
            break;
        }
        let line = line.trim_end_matches(['\n', '\r']);
        match line.trim() {
            "" => continue,
            "/exit" | "/quit" => break,
            "/reset" => {
                msgs.truncate(usize::from(system.is_some()));
                session.reset(&model)?;
                eprintln!("(conversation cleared)");
                continue;
            }
            _ => {}
        }
        msgs.push(Message::user(line));
        let ids = tok.encode_rendered(&tmpl.render(&msgs, None, true)?)?;
        let mut reply = String::new();
        let result = session.generate(&model, &ids, &params, &mut sampler, &mut streamer(&tok, &mut reply));
        match result {
            Ok((_, stats)) => {
                println!();
                report(&stats);
                msgs.push(Message::assistant(reply));
            }
            Err(e) => {
                // A turn that cannot run (e.g. the conversation outgrew the context) is reported, not fatal.
                msgs.pop();
                eprintln!("error: {e}");
            }
        }
    }
    Ok(())
}
