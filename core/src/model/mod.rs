//! Llama 4's text model, written once against [`Backend`]: loading (every tensor checked against the
//! config), and the batched forward pass (embedding → layers → final norm → lm_head on the rows asked for),
//! returning logits or the tokens sampled from them on the device.

mod attention;
mod ffn;
mod images;
mod pick;
mod steps;

use images::{check_images, fuse_images, step_images, StepImages};
pub use images::{ImagePart, ImageRows};
pub use pick::{Pick, Picked};
pub use steps::MAX_STEP_ROWS;

use std::sync::{Arc, Mutex};

use crate::backend::Backend;
use crate::checkpoint::Checkpoint;
use crate::config::TextConfig;
use crate::error::{HerdError, Result};
use crate::kv::{KvCache, SeqId};
use crate::kv_format::KvDtype;
use crate::sampling::check_sample_args;

use crate::experts::{ExpertCache, ExpertCacheOptions, ExpertStats};
use crate::source::WeightSource;
use attention::Attention;
use ffn::Ffn;

struct Layer<B: Backend> {
    input_norm: B::Weight,
    post_norm: B::Weight,
    attn: Attention<B>,
    ffn: Ffn<B>,
}

/// Which rows of a forward pass come back as logits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rows {
    /// The last new token of each sequence (generation).
    Last,
    /// Every new token (scoring, reference checks).
    All,
}

/// The Llama 4 text model on one backend.
pub struct Llama4<B: Backend> {
    pub cfg: TextConfig,
    backend: Arc<B>,
    embed: B::Weight,
    norm: B::Weight,
    /// None when the embeddings are tied.
    lm_head: Option<B::Weight>,
    layers: Vec<Layer<B>>,
    inv_freq: B::Buffer,
    /// The buffers kept between steps (see [`Scratch`]); a step that finds them busy makes its own.
    step: Mutex<Option<Scratch<B>>>,
    /// The host vectors kept between steps, likewise.
    host: Mutex<HostRows>,
    /// With `--expert-cache`: the routed experts, streamed.
    experts: Option<ExpertCache<B>>,
    /// Slots per KV-cache page of the caches this model makes (the backend's own unless set).
    kv_page: usize,
    /// The KV formats of those caches: full-attention layers, chunked layers.
    kv_dtypes: [KvDtype; 2],
}

/// The buffers of one forward pass, for up to `rows` new tokens in up to `seqs` sequences. The model keeps
/// one set between steps (decode steps then record the same work on the same buffers, which lets a
/// backend reuse what it built for them) and makes a one-off set for a step that does not fit.
pub(crate) struct Scratch<B: Backend> {
    rows: usize,
    seqs: usize,
    pub a: B::Buffer,
    pub o: B::Buffer,
    pub q: B::Buffer,
    pub k: B::Buffer,
    pub v: B::Buffer,
    pub attn: B::Buffer,
    pub gate: B::Buffer,
    pub up: B::Buffer,
    pub router_logits: B::Buffer,
    pub idx: B::Buffer,
    pub score: B::Buffer,
    /// The expert cache's picks as slot numbers, and its prediction of the next layer's picks.
    pub slot_idx: B::Buffer,
    pub pred_logits: B::Buffer,
    pub pred_idx: B::Buffer,
    pub pred_score: B::Buffer,
    hidden: B::Buffer,
    ids: B::Buffer,
    positions: B::Buffer,
    /// Per sequence: the row of its last new token, the normed hidden state there, logits, sampled id.
    last: B::Buffer,
    sel: B::Buffer,
    logits: B::Buffer,
    picked: B::Buffer,
}

/// Steps of at most this many new tokens keep their buffers for the next step.
const KEEP_ROWS: usize = 256;

impl<B: Backend> Scratch<B> {
    fn new(be: &B, cfg: &TextConfig, rows: usize, seqs: usize) -> Result<Self> {
        let (t, n) = (rows, seqs);
        let (d, h, kvh, hd) = (cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim);
        let ffn_width =
            cfg.intermediate_size.max(if cfg.moe_layers.iter().any(|&m| !m) { cfg.intermediate_size_mlp } else { 0 });
        let kk = cfg.num_experts_per_tok.max(1);
        Ok(Scratch {
            rows,
            seqs,
            a: be.alloc(t * d)?,
            o: be.alloc(t * d)?,
            q: be.alloc(t * h * hd)?,
            k: be.alloc(t * kvh * hd)?,
            v: be.alloc(t * kvh * hd)?,
            attn: be.alloc(t * h * hd)?,
            gate: be.alloc(t * ffn_width)?,
            up: be.alloc(t * ffn_width)?,
            router_logits: be.alloc(t * cfg.num_local_experts.max(1))?,
            idx: be.upload_u32(&vec![0; t * kk])?,
            score: be.alloc(t * kk)?,
            slot_idx: be.upload_u32(&vec![0; t * kk])?,
            pred_logits: be.alloc(t * cfg.num_local_experts.max(1))?,
            pred_idx: be.upload_u32(&vec![0; t * kk])?,
            pred_score: be.alloc(t * kk)?,
            hidden: be.alloc(t * d)?,
            ids: be.upload_u32(&vec![0; t])?,
            positions: be.upload_u32(&vec![0; t])?,
            last: be.upload_u32(&vec![0; n])?,
            sel: be.alloc(n * d)?,
            logits: be.alloc(n * cfg.vocab_size)?,
            picked: be.upload_u32(&vec![0; n])?,
        })
    }
}

impl<B: Backend> Llama4<B> {
    /// Uploads every text tensor of `ck` (a [`Checkpoint`] or another [`WeightSource`]) to `backend`,
    /// checking names and shapes against `cfg`. `progress(done, total)` is called after each layer.
    pub fn load(
        backend: Arc<B>,
        ck: &dyn WeightSource<B>,
        cfg: &TextConfig,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Self> {
        Self::load_with(backend, ck, cfg, None, progress)
    }

    /// [`Llama4::load`], with the routed experts streamed through an expert cache when `experts` is given
    /// (they are then not loaded; see [`crate::experts`]).
    pub fn load_with(
        backend: Arc<B>,
        ck: &dyn WeightSource<B>,
        cfg: &TextConfig,
        experts: Option<&ExpertCacheOptions>,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Self> {
        pollster::block_on(Self::load_with_async(backend, ck, cfg, experts, progress))
    }

    /// [`Llama4::load_with`] without blocking: each part of the model is [staged](WeightSource::stage)
    /// (awaited) before it is uploaded, as a browser's source needs.
    pub async fn load_with_async(
        backend: Arc<B>,
        ck: &dyn WeightSource<B>,
        cfg: &TextConfig,
        experts: Option<&ExpertCacheOptions>,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Self> {
        let cache = match experts {
            Some(opts) if cfg.moe_layers.iter().any(|&m| m) => {
                let src = ck.experts().ok_or_else(|| {
                    HerdError::Input("--expert-cache: this weight source cannot stream experts".into())
                })?;
                Some(ExpertCache::new(&*backend, src, cfg, opts.clone())?)
            }
            _ => None,
        };
        let (d, v) = (cfg.hidden_size, cfg.vocab_size);
        let w = |name: &str, shape: &[usize]| ck.weight(&*backend, name, shape);
        ck.stage(None).await?;
        let own_head = ck.contains("lm_head.weight") || !cfg.tie_word_embeddings;
        let embed = if own_head {
            ck.table(&*backend, "model.embed_tokens.weight", &[v, d])?
        } else {
            w("model.embed_tokens.weight", &[v, d])?
        };
        let norm = w("model.norm.weight", &[d])?;
        let lm_head = if own_head { Some(w("lm_head.weight", &[v, d])?) } else { None };
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        let total = cfg.num_hidden_layers;
        for i in 0..total {
            let p = format!("model.layers.{i}.");
            ck.stage(Some(i)).await?;
            layers.push(Layer {
                input_norm: w(&format!("{p}input_layernorm.weight"), &[d])?,
                post_norm: w(&format!("{p}post_attention_layernorm.weight"), &[d])?,
                attn: Attention::load(&*backend, ck, cfg, i)?,
                ffn: Ffn::load(&*backend, ck, cfg, i, cache.is_some())?,
            });
            progress(i + 1, total);
        }
        let inv_freq = backend.upload(&cfg.rope_inv_freq())?;
        let kv_page = backend.kv_page_size();
        Ok(Llama4 {
            cfg: cfg.clone(),
            backend,
            embed,
            norm,
            lm_head,
            layers,
            inv_freq,
            step: Mutex::new(None),
            host: Mutex::new(HostRows::default()),
            experts: cache,
            kv_page,
            kv_dtypes: [KvDtype::F32; 2],
        })
    }

    /// What the expert cache did so far, when the experts stream.
    pub fn expert_stats(&self) -> Option<ExpertStats> {
        self.experts.as_ref().map(ExpertCache::stats)
    }

    /// When the experts stream: per streamed layer, the experts its router picked in the last step that read
    /// them ([`ExpertCacheOptions::trace_picks`] reads them every step).
    pub fn expert_picks(&self) -> Vec<(usize, Vec<u32>)> {
        self.experts.as_ref().map(ExpertCache::picks).unwrap_or_default()
    }

    /// Loads the text model of a model directory (config.json + safetensors).
    pub fn from_dir(backend: Arc<B>, dir: &std::path::Path, progress: &mut dyn FnMut(usize, usize)) -> Result<Self> {
        Self::from_dir_with(backend, dir, None, progress)
    }

    /// [`Llama4::from_dir`] with the options of [`Llama4::load_with`].
    pub fn from_dir_with(
        backend: Arc<B>,
        dir: &std::path::Path,
        experts: Option<&ExpertCacheOptions>,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Self> {
        if !dir.is_dir() {
            return Err(HerdError::bad_file(dir, "model directory does not exist"));
        }
        let path = dir.join("config.json");
        let cfg = crate::config::ModelConfig::from_file(&path)?;
        let ck = Checkpoint::open_dir(dir)?;
        // compressed-tensors' pack-quantized checkpoints are read into herd's int4/int8 formats.
        let raw: serde_json::Value =
            serde_json::from_slice(&crate::limits::read_input(&path, crate::limits::InputKind::Config)?)
                .unwrap_or(serde_json::Value::Null);
        if crate::compressed::is_pack_quantized(&raw).map_err(|e| HerdError::bad_file(&path, e))? {
            return Self::load_with(
                backend,
                &crate::compressed::CompressedTensors { ck: &ck },
                &cfg.text,
                experts,
                progress,
            );
        }
        Self::load_with(backend, &ck, &cfg.text, experts, progress)
    }

    pub fn backend(&self) -> &Arc<B> {
        &self.backend
    }

    /// A fresh KV cache for this model.
    pub fn new_cache(&self) -> Result<KvCache<B>> {
        KvCache::with_options(&*self.backend, &self.cfg, self.kv_page, self.kv_dtypes)
    }

    /// Makes the caches of [`Llama4::new_cache`] keep keys and values of full-attention layers in `global`
    /// and of chunked layers in `chunked` (f32 by default).
    pub fn set_kv_dtypes(&mut self, global: KvDtype, chunked: KvDtype) -> Result<()> {
        for d in [global, chunked] {
            d.slot_words(self.cfg.num_key_value_heads, self.cfg.head_dim).map_err(HerdError::Input)?;
        }
        self.kv_dtypes = [global, chunked];
        Ok(())
    }

    /// The KV formats of global and chunked layers ([`Llama4::set_kv_dtypes`]).
    pub fn kv_dtypes(&self) -> [KvDtype; 2] {
        self.kv_dtypes
    }

    /// Makes the caches of [`Llama4::new_cache`] use pages of `slots` slots (the backend's page size is the
    /// default; results do not depend on it).
    pub fn set_kv_page_size(&mut self, slots: usize) -> Result<()> {
        if slots == 0 {
            return Err(HerdError::Input("a KV-cache page must hold at least one slot".into()));
        }
        self.kv_page = slots;
        Ok(())
    }

    /// Runs the new tokens of each sequence through the model, appending them to the cache, and returns
    /// logits `[rows, vocab]` for the rows asked for (row order = batch order, then token order). `images` is
    /// empty or has one entry per batch entry: the rows that replace that sequence's `<|patch|>` embeddings
    /// (None for a sequence without images). A batch larger than the backend's buffers allow runs as several
    /// steps (see `Llama4::steps`), with the same result. Every wait for the device (and for streamed experts) is
    /// awaited, as a browser requires; natively each await is ready at once (block on it at the edge).
    pub async fn forward(
        &self,
        cache: &mut KvCache<B>,
        batch: &[(SeqId, &[u32])],
        images: &[Option<&ImageRows<'_, B>>],
        rows: Rows,
    ) -> Result<Vec<f32>> {
        let v = self.cfg.vocab_size;
        check_images(batch, images)?;
        let pieces = self.steps(cache, batch, rows)?;
        let mut used = vec![0usize; batch.len()];
        // Per batch entry, the logits rows it has so far.
        let mut per_seq: Vec<Vec<f32>> = vec![Vec::new(); batch.len()];
        for piece in &pieces {
            let step: Vec<(SeqId, &[u32])> = piece.iter().map(|&(bi, toks)| (batch[bi].0, toks)).collect();
            let imgs = step_images(piece, images, &mut used);
            let out = self.run(cache, &step, &imgs, rows, Finish::Logits).await?.logits()?;
            let mut off = 0;
            for &(bi, toks) in piece {
                let n = if rows == Rows::All { toks.len() } else { 1 };
                if rows == Rows::Last {
                    per_seq[bi].clear(); // a later piece of this sequence has its last token
                }
                per_seq[bi].extend_from_slice(&out[off * v..(off + n) * v]);
                off += n;
            }
        }
        Ok(per_seq.concat())
    }

    /// Runs the new tokens of each sequence through the model like [`Llama4::forward`], and gives back for
    /// each sequence what its entry of `picks` asks for after its last token: nothing, its logits, or its
    /// next token picked on the device ([`Backend::sample`], with its own parameters, draw and history), so
    /// that the host reads back one id rather than a row of logits. Sequences whose parameters are the same
    /// (their seeds aside) are sampled together.
    pub async fn forward_pick(
        &self,
        cache: &mut KvCache<B>,
        batch: &[(SeqId, &[u32])],
        images: &[Option<&ImageRows<'_, B>>],
        picks: &[Pick<'_>],
    ) -> Result<Vec<Picked>> {
        self.forward_pick_into(cache, batch, images, picks, Vec::new()).await
    }

    /// [`Llama4::forward_pick`] into `out` (its contents replaced, its allocation kept: a caller that hands
    /// back the last step's vector makes a decode step allocate nothing for it).
    pub async fn forward_pick_into(
        &self,
        cache: &mut KvCache<B>,
        batch: &[(SeqId, &[u32])],
        images: &[Option<&ImageRows<'_, B>>],
        picks: &[Pick<'_>],
        out: Vec<Picked>,
    ) -> Result<Vec<Picked>> {
        if picks.len() != batch.len() {
            return Err(HerdError::internal(format!("{} picks for a batch of {}", picks.len(), batch.len())));
        }
        for p in picks {
            if let Pick::Sample { params, draw, history, .. } = p {
                check_sample_args(1, &[*draw], &[history])?;
                params.validate()?;
            }
        }
        check_images(batch, images)?;
        self.check_batch(cache, batch)?;
        if let Some((p, _)) = picks.iter().zip(batch).find(|(p, b)| p.rows() == 0 || p.rows() > b.1.len()) {
            return Err(HerdError::Input(format!("a pick of {} rows for a sequence of fewer new tokens", p.rows())));
        }
        let outs: usize = picks.iter().map(Pick::rows).sum();
        let mut used = if images.is_empty() { Vec::new() } else { vec![0usize; batch.len()] };
        if self.one_step(batch, outs) {
            // One step (every decode step): the whole batch, in order.
            let piece: steps::Piece<'_> =
                if images.is_empty() { Vec::new() } else { batch.iter().map(|b| b.1).enumerate().collect() };
            let imgs = step_images(&piece, images, &mut used);
            return self.run(cache, batch, &imgs, Rows::Last, Finish::Pick(picks, out)).await?.picked();
        }
        if outs > batch.len() {
            return Err(HerdError::Input(format!(
                "a batch of {} tokens asking for {outs} rows of logits does not fit one step",
                batch.iter().map(|b| b.1.len()).sum::<usize>()
            )));
        }
        // Checked above: cut it into steps.
        let pieces = self.cut(batch, Rows::Last);
        let mut out = out;
        out.clear();
        out.resize(batch.len(), Picked::Nothing);
        // The piece holding each sequence's last token (the last piece it is in): only that one picks for it.
        let mut last = vec![0usize; batch.len()];
        for (pi, piece) in pieces.iter().enumerate() {
            for &(bi, _) in piece {
                last[bi] = pi;
            }
        }
        for (pi, piece) in pieces.iter().enumerate() {
            let step: Vec<(SeqId, &[u32])> = piece.iter().map(|&(bi, toks)| (batch[bi].0, toks)).collect();
            let here: Vec<Pick<'_>> =
                piece.iter().map(|&(bi, _)| if last[bi] == pi { picks[bi] } else { Pick::Nothing }).collect();
            let imgs = step_images(piece, images, &mut used);
            let got = self.run(cache, &step, &imgs, Rows::Last, Finish::Pick(&here, Vec::new())).await?.picked()?;
            for (&(bi, _), g) in piece.iter().zip(got) {
                if !matches!(g, Picked::Nothing) {
                    out[bi] = g;
                }
            }
        }
        Ok(out)
    }

    /// Runs one step (a piece from [`Llama4::steps`]) and returns what `finish` asks for.
    // The step buffers' lock is only ever taken with `try_lock` (a step that finds it taken makes its own
    // buffers), so holding it across the step's awaits cannot block anything.
    #[allow(clippy::await_holding_lock)]
    async fn run(
        &self,
        cache: &mut KvCache<B>,
        batch: &[(SeqId, &[u32])],
        images: &[StepImages<'_, '_, B>],
        rows: Rows,
        finish: Finish<'_>,
    ) -> Result<StepOut> {
        let cfg = &self.cfg;
        let be = &*self.backend;
        let d = cfg.hidden_size;
        // The batch was checked whole by `steps` (every error a user can cause is reported before any work
        // is enqueued); this is one of its pieces.
        // The step's host rows, in vectors kept between steps (fresh ones if another step holds them).
        let mut kept_host = self.host.try_lock().ok();
        let mut own_host = HostRows::default();
        let h = kept_host.as_deref_mut().unwrap_or(&mut own_host);
        h.clear();
        let HostRows { ids, positions, plan, grow, last, pick: pick_rows } = h;
        for &(id, toks) in batch {
            let pos0 = cache.seq_len(id)?;
            plan.push((id, ids.len(), toks.len()));
            positions.extend((pos0..pos0 + toks.len()).map(|p| p as u32));
            ids.extend_from_slice(toks);
        }
        let t = ids.len();
        grow.extend(plan.iter().map(|&(id, _, n)| (id, n)));
        cache.reserve(be, grow)?;

        // Each sequence's rows of logits: its last token's, or its last few for a pick of several.
        let tail = |i: usize| match &finish {
            Finish::Pick(p, _) => p.get(i).map_or(1, Pick::rows),
            Finish::Logits => 1,
        };
        last.extend(plan.iter().enumerate().flat_map(|(i, &(_, r, n))| (r + n - tail(i)..r + n).map(|x| x as u32)));
        let nseq = last.len();
        let mut kept = self.step.try_lock().ok();
        let one_off;
        let s: &Scratch<B> = match kept.as_deref_mut() {
            Some(slot) if t <= KEEP_ROWS => {
                let fits = slot.as_ref().is_some_and(|s| s.rows >= t && s.seqs >= nseq);
                if !fits {
                    let (r, q) = slot.as_ref().map_or((0, 0), |s| (s.rows, s.seqs));
                    *slot = None;
                    // Room to grow into, within what one buffer may hold.
                    let (lr, ls) = self.step_limits(Rows::Last);
                    let rows_cap = t.next_power_of_two().max(r).min(lr).max(t);
                    let seqs_cap = nseq.next_power_of_two().max(q).min(ls).max(nseq);
                    *slot = Some(Scratch::new(be, cfg, rows_cap, seqs_cap)?);
                }
                match slot {
                    Some(s) => s,
                    None => return Err(HerdError::internal("step buffers missing")),
                }
            }
            _ => {
                one_off = Scratch::new(be, cfg, t, nseq)?;
                &one_off
            }
        };
        be.write_u32(&s.ids, ids)?;
        be.write_u32(&s.positions, positions)?;
        be.write_u32(&s.last, last)?;
        let (hidden, ids_buf, pos_buf) = (&s.hidden, &s.ids, &s.positions);
        be.embed(&self.embed, ids_buf, t, d, hidden)?;
        for (&(_, r0, _), (&(_, toks), img)) in plan.iter().zip(batch.iter().zip(images)) {
            if let Some((img, used)) = img {
                fuse_images(be, hidden, d, r0, toks, img, *used)?;
            }
        }
        // Each residual add is fused with the norm that follows it; the last one has no norm after it here
        // (the final norm runs on the rows that come back).
        let eps = cfg.rms_norm_eps;
        if let Some(first) = self.layers.first() {
            be.rms_norm(hidden, Some(&first.input_norm), t, d, eps, &s.a)?;
        }
        cache.plan(plan)?;
        for (i, layer) in self.layers.iter().enumerate() {
            layer.attn.forward(be, cfg, s, t, pos_buf, &self.inv_freq, cache.groups(i))?;
            be.add_rms_norm(hidden, &s.o, &layer.post_norm, t, d, eps, &s.a)?;
            let next = (i + 1..self.layers.len()).find_map(|j| self.layers[j].ffn.router().map(|r| (j, r)));
            layer.ffn.forward(be, cfg, s, t, self.experts.as_ref(), i, next).await?;
            match self.layers.get(i + 1) {
                Some(next) => be.add_rms_norm(hidden, &s.o, &next.input_norm, t, d, eps, &s.a)?,
                None => be.add(hidden, &s.o, t * d)?,
            }
        }
        cache.advance(grow)?;

        let all_logits;
        let (out_rows, src, logits) = match rows {
            Rows::All => {
                all_logits = be.alloc(t * cfg.vocab_size)?;
                (t, hidden, &all_logits)
            }
            Rows::Last => {
                be.gather_rows(hidden, &s.last, nseq, d, &s.sel)?;
                (nseq, &s.sel, &s.logits)
            }
        };
        be.rms_norm(src, Some(&self.norm), out_rows, d, cfg.rms_norm_eps, src)?;
        be.matmul(src, out_rows, self.lm_head.as_ref().unwrap_or(&self.embed), logits)?;
        match finish {
            Finish::Logits => {
                let mut out = be.read_async(logits).await?;
                out.truncate(out_rows * cfg.vocab_size);
                Ok(StepOut::Logits(out))
            }
            Finish::Pick(picks, out) => {
                Ok(StepOut::Picked(self.pick_rows(logits, out_rows, picks, &s.picked, pick_rows, out).await?))
            }
        }
    }
}

/// A step's host rows: its token ids and positions, each sequence's (id, first row, rows), its cache growth,
/// and each sequence's last row.
#[derive(Default)]
struct HostRows {
    ids: Vec<u32>,
    positions: Vec<u32>,
    plan: Vec<(SeqId, usize, usize)>,
    grow: Vec<(SeqId, usize)>,
    last: Vec<u32>,
    pick: pick::PickRows,
}

impl HostRows {
    fn clear(&mut self) {
        self.ids.clear();
        self.positions.clear();
        self.plan.clear();
        self.grow.clear();
        self.last.clear();
    }
}

/// What a step ends with: its logits read back, or for each sequence what its [`Pick`] asks.
enum Finish<'a> {
    Logits,
    /// What to pick, and the vector to pick into.
    Pick(&'a [Pick<'a>], Vec<Picked>),
}

enum StepOut {
    Logits(Vec<f32>),
    Picked(Vec<Picked>),
}

impl StepOut {
    fn logits(self) -> Result<Vec<f32>> {
        match self {
            StepOut::Logits(v) => Ok(v),
            StepOut::Picked(_) => Err(HerdError::internal("a step asked for logits returned picks")),
        }
    }
    fn picked(self) -> Result<Vec<Picked>> {
        match self {
            StepOut::Picked(v) => Ok(v),
            StepOut::Logits(_) => Err(HerdError::internal("a step asked for picks returned logits")),
        }
    }
}
