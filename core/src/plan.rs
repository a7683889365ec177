//! The memory plan: what a model's weights, its expert cache, a step's activations and the KV cache take on
//! a device, and the longest context that fits (`herd plan`). The KV figures are the cache's own rule
//! ([`crate::kv::KvCache::bytes`]), so what the plan says one sequence of n tokens holds is what the cache
//! reports; the activations are the step buffers the model allocates for its largest step.

use crate::config::{AttnKind, TextConfig};
use crate::kv_format::KvDtype;
use crate::model::MAX_STEP_ROWS;

/// The tensors of the text model, as herd names them and in the shapes it loads (the order of loading).
pub fn text_tensors(cfg: &TextConfig) -> Vec<(String, Vec<usize>)> {
    let (d, h, kvh, hd) = (cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim);
    let mut t: Vec<(String, Vec<usize>)> = vec![("model.embed_tokens.weight".into(), vec![cfg.vocab_size, d])];
    for i in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{i}.");
        t.push((format!("{p}input_layernorm.weight"), vec![d]));
        for (n, rows) in [("q_proj", h * hd), ("k_proj", kvh * hd), ("v_proj", kvh * hd)] {
            t.push((format!("{p}self_attn.{n}.weight"), vec![rows, d]));
        }
        t.push((format!("{p}self_attn.o_proj.weight"), vec![d, h * hd]));
        t.push((format!("{p}post_attention_layernorm.weight"), vec![d]));
        let f = format!("{p}feed_forward.");
        let mlp = |t: &mut Vec<(String, Vec<usize>)>, p: &str, width: usize| {
            t.push((format!("{p}gate_proj.weight"), vec![width, d]));
            t.push((format!("{p}up_proj.weight"), vec![width, d]));
            t.push((format!("{p}down_proj.weight"), vec![d, width]));
        };
        if cfg.moe_layers[i] {
            let (e, w) = (cfg.num_local_experts, cfg.intermediate_size);
            t.push((format!("{f}experts.gate_up_proj"), vec![e, d, 2 * w]));
            t.push((format!("{f}experts.down_proj"), vec![e, w, d]));
            t.push((format!("{f}router.weight"), vec![e, d]));
            mlp(&mut t, &format!("{f}shared_expert."), w);
        } else {
            mlp(&mut t, &f, cfg.intermediate_size_mlp);
        }
    }
    t.push(("model.norm.weight".into(), vec![d]));
    if !cfg.tie_word_embeddings {
        t.push(("lm_head.weight".into(), vec![cfg.vocab_size, d]));
    }
    t
}

/// Whether a tensor is one of the routed experts (what `--expert-cache` streams instead of holding).
pub fn is_routed_expert(name: &str) -> bool {
    name.contains(".feed_forward.experts.")
}

/// How the KV cache of a model takes memory: per layer kind, pages of `page` slots, a slot being one
/// position's keys and values in that kind's format (`page_bytes`: a page of keys and values in one layer,
/// global layers and chunked layers), and for q4 a stage per sequence and layer (`stage_bytes`: the keys of the
/// page being filled, in f32).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvLayout {
    pub full_layers: usize,
    pub chunked_layers: usize,
    /// Pages in a chunked layer's ring (None: no chunking, every layer keeps the whole history).
    pub ring_pages: Option<usize>,
    pub page: usize,
    pub page_bytes: [usize; 2],
    pub stage_bytes: [usize; 2],
}

impl KvLayout {
    /// The layout of f32 keys and values.
    pub fn new(cfg: &TextConfig, page: usize) -> Self {
        Self::with_dtypes(cfg, page, [KvDtype::F32; 2]).expect("f32 holds every head_dim")
    }

    /// The layout with global layers in `dtypes[0]` and chunked layers in `dtypes[1]`.
    pub fn with_dtypes(cfg: &TextConfig, page: usize, dtypes: [KvDtype; 2]) -> Result<Self, String> {
        let page = page.max(1);
        let chunked = match cfg.attention_chunk_size {
            Some(_) => cfg.layer_types.iter().filter(|&&k| k == AttnKind::Chunked).count(),
            None => 0,
        };
        let (kvh, hd) = (cfg.num_key_value_heads, cfg.head_dim);
        let pb = |d: KvDtype| d.page_bytes(kvh, hd, page);
        let sb = |d: KvDtype| 4 * d.stage_words(kvh, hd, page);
        Ok(KvLayout {
            full_layers: cfg.layer_types.len() - chunked,
            chunked_layers: chunked,
            ring_pages: cfg.attention_chunk_size.map(|c| c.div_ceil(page).max(1)),
            page,
            page_bytes: [pb(dtypes[0])?, pb(dtypes[1])?],
            stage_bytes: [sb(dtypes[0]), sb(dtypes[1])],
        })
    }

    /// Bytes one sequence of `n` tokens holds: ⌈n / page⌉ pages in every full-attention layer, in every
    /// chunked layer as many pages of its ring as the tokens reach, and (q4) its stage in every layer.
    pub fn bytes(&self, n: usize) -> usize {
        if n == 0 {
            return 0;
        }
        let pages = n.div_ceil(self.page);
        let ring = self.ring_pages.map_or(pages, |r| pages.min(r));
        let full = self.full_layers.saturating_mul(pages).saturating_mul(self.page_bytes[0]);
        full.saturating_add(self.chunked_layers * ring * self.page_bytes[1]).saturating_add(self.stages())
    }

    /// Bytes of one sequence's stages (q4 keys), over every layer.
    pub fn stages(&self) -> usize {
        self.full_layers * self.stage_bytes[0] + self.chunked_layers * self.stage_bytes[1]
    }

    /// Bytes of the chunked layers once a sequence fills their rings (fixed, whatever the context).
    pub fn chunked_bytes(&self) -> usize {
        self.chunked_layers * (self.ring_pages.unwrap_or(0) * self.page_bytes[1] + self.stage_bytes[1])
    }

    /// Bytes at most that sequences holding `slots` slots in all take (the prefix cache's ended sequences,
    /// each counted in whole pages: a slot in every layer, global and chunked; their q4 stages are not
    /// counted, a page's keys in f32 per sequence and layer).
    pub fn kept_bytes(&self, slots: usize) -> usize {
        let per_page = self.full_layers * self.page_bytes[0] + self.chunked_layers * self.page_bytes[1];
        slots.div_ceil(self.page).saturating_mul(per_page)
    }

    /// Bytes each further token of context adds, in the full-attention layers (a page at a time; this is a
    /// page's bytes over its slots).
    pub fn bytes_per_token(&self) -> usize {
        self.full_layers * self.page_bytes[0] / self.page
    }

    /// Bytes one slot (a position's keys and values in one layer) takes in the layers of each kind, a page's
    /// bytes over its slots.
    pub fn slot_bytes(&self) -> [usize; 2] {
        self.page_bytes.map(|b| b / self.page)
    }
}

/// Bytes of the buffers one step of `rows` new tokens in `seqs` sequences uses: the model's step buffers and
/// the MoE's per-choice partial sums.
pub fn step_bytes(cfg: &TextConfig, rows: usize, seqs: usize) -> usize {
    let (d, h, kvh, hd) = (cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim);
    let ffn = cfg.intermediate_size.max(if cfg.moe_layers.iter().any(|&m| !m) { cfg.intermediate_size_mlp } else { 0 });
    let k = cfg.num_experts_per_tok.max(1);
    let e = cfg.num_local_experts.max(1);
    let moe = if cfg.moe_layers.iter().any(|&m| m) { k * 2 * cfg.intermediate_size } else { 0 };
    let per_row = 3 * d + 2 * h * hd + 2 * kvh * hd + 2 * ffn + 2 * e + 5 * k + 2 + moe;
    let per_seq = 2 + d + cfg.vocab_size;
    4 * (rows * per_row + seqs * per_seq)
}

/// What a plan is asked.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanRequest {
    /// Memory of the device, bytes.
    pub device_memory: usize,
    /// Weights held on the device (without the routed experts when they are streamed).
    pub weights: usize,
    /// The expert cache's budget (0: every expert resident).
    pub expert_cache: usize,
    /// Sequences held at once, each at the context asked or found.
    pub seqs: usize,
    /// A context to check (None: find the longest that fits).
    pub context: Option<usize>,
    /// Slots the prefix cache keeps of ended requests besides the sequences (`herd serve`; 0 elsewhere).
    pub kept_slots: usize,
    /// Tokens the largest step feeds the model (0: [`MAX_STEP_ROWS`], the most a prompt piece has).
    pub step_rows: usize,
}

/// What goes where.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub device_memory: usize,
    pub weights: usize,
    pub expert_cache: usize,
    /// The largest step's buffers.
    pub activations: usize,
    pub kv: KvLayout,
    /// The prefix cache's KV bytes at most.
    pub kept: usize,
    pub seqs: usize,
    /// The model's own limit (max_position_embeddings).
    pub max_context: usize,
    /// The longest context every sequence can have (0: not even one token fits).
    pub longest: usize,
    /// The context asked, and the bytes it needs in all.
    pub asked: Option<(usize, usize)>,
}

impl Plan {
    /// Bytes everything but the sequences' KV takes.
    pub fn fixed(&self) -> usize {
        self.weights.saturating_add(self.expert_cache).saturating_add(self.activations).saturating_add(self.kept)
    }
    /// Bytes in all with every sequence at `n` tokens.
    pub fn total(&self, n: usize) -> usize {
        self.fixed().saturating_add(self.seqs.saturating_mul(self.kv.bytes(n)))
    }
    /// Whether the context asked fits (or, when none was asked, whether one token does).
    pub fn fits(&self) -> bool {
        match self.asked {
            Some((_, need)) => need <= self.device_memory,
            None => self.longest > 0,
        }
    }
}

/// The plan for a model of `cfg` whose KV cache has pages of `page` slots in the formats `dtypes` (global,
/// chunked).
pub fn plan(cfg: &TextConfig, page: usize, dtypes: [KvDtype; 2], req: &PlanRequest) -> Result<Plan, String> {
    let seqs = req.seqs.max(1);
    let mut p = Plan {
        device_memory: req.device_memory,
        weights: req.weights,
        expert_cache: req.expert_cache,
        activations: step_bytes(
            cfg,
            if req.step_rows == 0 { MAX_STEP_ROWS } else { req.step_rows.min(MAX_STEP_ROWS) },
            seqs,
        ),
        kv: KvLayout::with_dtypes(cfg, page, dtypes)?,
        kept: 0,
        seqs,
        max_context: cfg.max_position_embeddings,
        longest: 0,
        asked: None,
    };
    p.kept = p.kv.kept_bytes(req.kept_slots);
    // The KV bytes grow with the context: the longest that fits, by bisection.
    let (mut lo, mut hi) = (0usize, p.max_context);
    while lo < hi {
        let mid = lo + (hi - lo).div_ceil(2);
        if p.total(mid) <= p.device_memory {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    p.longest = lo;
    p.asked = req.context.map(|n| (n, p.total(n)));
    Ok(p)
}
