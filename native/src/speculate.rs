//! `--speculate ngram|draft:DIR|off [--draft-tokens K]`: the drafter a command's scheduler verifies
//! ([`herd_core::speculate`]).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::Args;
use herd_core::backend::Backend;
use herd_core::schedule::Scheduler;
use herd_core::speculate::{DraftModel, Drafter, PromptLookup};

use crate::files::{LoadOptions, ModelFiles};

#[derive(Args, Clone, Debug, Default)]
pub struct SpecArgs {
    /// Speculative decoding: `ngram` (prompt lookup: drafts from earlier text that the last tokens match),
    /// `draft:DIR` (a smaller model sharing the tokenizer drafts greedily), or `off`. The target checks every
    /// drafted token: greedy output is unchanged and sampled output keeps its distribution. Default: `ngram`
    /// for greedy generation in `run` and `chat` (where it cannot change a token), else off.
    #[arg(long, value_name = "ngram|draft:DIR|off")]
    pub speculate: Option<String>,
    /// The most tokens drafted per sequence and step (each sequence adapts below it to how its drafts fare).
    #[arg(long, value_name = "K", default_value_t = 8)]
    pub draft_tokens: usize,
}

/// What `--speculate` names.
#[derive(Debug, Clone, PartialEq)]
pub enum Spec {
    Off,
    Ngram,
    Draft(PathBuf),
}

impl SpecArgs {
    pub fn spec(&self) -> Result<Spec> {
        Ok(match self.speculate.as_deref() {
            None | Some("off") => Spec::Off,
            Some("ngram") => Spec::Ngram,
            Some(s) if s.starts_with("draft:") && s.len() > 6 => Spec::Draft(PathBuf::from(&s[6..])),
            Some(s) => bail!("--speculate {s}: expected ngram, draft:DIR or off"),
        })
    }

    /// Checks the flags before anything loads.
    pub fn check(&self) -> Result<()> {
        let spec = self.spec()?;
        if spec != Spec::Off && !(1..=64).contains(&self.draft_tokens) {
            bail!("--draft-tokens {}: expected 1 to 64", self.draft_tokens);
        }
        if let Spec::Draft(d) = &spec {
            if !d.join("config.json").is_file() {
                bail!("--speculate draft:{}: no config.json there", d.display());
            }
        }
        Ok(())
    }

    /// The drafter, loaded on `backend` (a draft model with `opts`' KV formats, its experts resident), for a
    /// target of `vocab` ids whose files are `target`.
    pub fn drafter<B: Backend>(
        &self,
        backend: &Arc<B>,
        target: &ModelFiles,
        vocab: usize,
        opts: &LoadOptions,
    ) -> Result<Option<Box<dyn Drafter>>> {
        Ok(match self.spec()? {
            Spec::Off => None,
            Spec::Ngram => Some(Box::new(PromptLookup::default())),
            Spec::Draft(dir) => {
                let files = ModelFiles::new(Some(dir.clone()));
                same_tokenizer(target, &files)?;
                let opts = LoadOptions { experts: None, ..opts.clone() };
                let (_, model) =
                    files.load(backend.clone(), &opts).with_context(|| format!("the draft model {}", dir.display()))?;
                let d = DraftModel::new(Arc::new(model), vocab, dir.display().to_string())?;
                Some(Box::new(d))
            }
        })
    }

    /// Gives `sched` the drafter, if one is asked for; with `auto` and no --speculate, prompt lookup for
    /// greedy requests (what `run` and `chat` do by default: it never changes a token there, and costs
    /// little where it does not draft; not with a q4 KV cache, which cannot roll back).
    pub fn attach<B: Backend>(
        &self,
        sched: &mut Scheduler<B>,
        target: &ModelFiles,
        opts: &LoadOptions,
        auto: bool,
    ) -> Result<()> {
        let model = sched.model().clone();
        if self.speculate.is_none() && auto {
            if !model.kv_dtypes().contains(&herd_core::kv_format::KvDtype::Q4) {
                sched.set_drafter(Box::new(PromptLookup::default()), self.draft_tokens, true)?;
            }
            return Ok(());
        }
        if let Some(d) = self.drafter(model.backend(), target, model.cfg.vocab_size, opts)? {
            sched.set_drafter(d, self.draft_tokens, false)?;
        }
        Ok(())
    }
}

/// The raw tokenizer.json of a model, where it has one.
fn tokenizer_json(files: &ModelFiles) -> Result<Option<Vec<u8>>> {
    match files {
        ModelFiles::Demo => Ok(Some(crate::files::demo::TOKENIZER.to_vec())),
        ModelFiles::Dir(d) => {
            let p = d.join("tokenizer.json");
            if !p.is_file() {
                return Ok(None);
            }
            Ok(Some(herd_core::limits::read_input(&p, herd_core::limits::InputKind::Tokenizer)?))
        }
    }
}

/// Refuses a draft model whose tokenizer.json differs from the target's (where both have one; without, the
/// vocabularies' sizes are compared when the drafter is made).
fn same_tokenizer(target: &ModelFiles, draft: &ModelFiles) -> Result<()> {
    if let (Some(a), Some(b)) = (tokenizer_json(target)?, tokenizer_json(draft)?) {
        if a != b {
            bail!("the draft model's tokenizer.json differs from the target's: a draft model must share the tokenizer");
        }
    }
    Ok(())
}
