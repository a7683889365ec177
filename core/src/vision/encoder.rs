//! The Llama 4 vision tower (docs/llama4.md §4.3–4.5), written once against [`Backend`]: tiles of pixels
//! in, one row of text-model embedding per `<|patch|>` token out.
//!
//! Per tile: the 14×14 patches (unfolded on the host, as `nn.Unfold` orders them) times the patch
//! embedding; the class token appended last; the positional embedding; `layernorm_pre`; the pre-LN encoder
//! layers (bidirectional attention with the 2-D RoPE, biased q/k/v/o, an exact-GELU MLP); `layernorm_post`;
//! the class token dropped; the pixel shuffle (a row gather); the adapter MLP (GELU after both layers); the
//! multi-modal projector. Tiles are independent, so a batch of tiles runs as a batch of sequences, and a
//! large image runs as several such passes when one would not fit the backend's largest buffer.
//!
//! The 2-D RoPE runs on the text model's [`Backend::rope`]: a head of `hd` values is two halves of `hd/2`
//! (the patch's column, then its row, each 1-based; the class token is not rotated), so the q and k buffers
//! are rotated as rows of `hd/2` with one position per half-head.

use crate::backend::{Act, AttnParams, AttnSeq, Backend, KvPages};
use crate::error::{HerdError, Result};
use crate::source::WeightSource;

use crate::config::VisionConfig;

struct Norm<B: Backend> {
    w: B::Weight,
    b: B::Weight,
}

/// A linear layer: nn.Linear weight [out, in], and its bias when it has one.
struct Linear<B: Backend> {
    w: B::Weight,
    b: Option<B::Weight>,
    out: usize,
}

struct Layer<B: Backend> {
    ln1: Norm<B>,
    ln2: Norm<B>,
    q: Linear<B>,
    k: Linear<B>,
    v: Linear<B>,
    o: Linear<B>,
    fc1: Linear<B>,
    fc2: Linear<B>,
}

/// The vision tower and the multi-modal projector of a Llama 4 checkpoint, on one backend.
pub struct VisionTower<B: Backend> {
    pub cfg: VisionConfig,
    /// The text model's width: each output row's length.
    pub text_hidden: usize,
    patch: B::Weight,
    /// The class embedding as an f32 buffer [hidden] (made on the device at load time).
    class: B::Buffer,
    /// positional_embedding_vlm [patches + 1, hidden], added to every tile as one bias of that length.
    pos: B::Weight,
    pre: Norm<B>,
    post: Norm<B>,
    layers: Vec<Layer<B>>,
    adapter1: Linear<B>,
    adapter2: Linear<B>,
    projector: Linear<B>,
    /// The RoPE frequencies of one half-head, [head_dim / 4].
    inv_freq: B::Buffer,
    /// A one-slot stand-in for the KV cache the attention op reads nothing from here.
    no_cache: B::Buffer,
}

impl<B: Backend> VisionTower<B> {
    /// Loads `vision_model.*` and `multi_modal_projector.*` from `src`, checking every shape against `cfg`.
    pub fn load(be: &B, src: &dyn WeightSource<B>, cfg: &VisionConfig, text_hidden: usize) -> Result<Self> {
        let d = cfg.hidden_size;
        let n = cfg.patches_per_side().pow(2);
        let w = |name: &str, shape: &[usize]| src.weight(be, name, shape);
        let norm = |p: &str| -> Result<Norm<B>> {
            Ok(Norm { w: w(&format!("{p}.weight"), &[d])?, b: w(&format!("{p}.bias"), &[d])? })
        };
        let linear = |p: &str, out: usize, inp: usize, bias: bool| -> Result<Linear<B>> {
            Ok(Linear {
                w: w(&format!("{p}.weight"), &[out, inp])?,
                b: if bias { Some(w(&format!("{p}.bias"), &[out])?) } else { None },
                out,
            })
        };
        let v = "vision_model";
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for j in 0..cfg.num_hidden_layers {
            let p = format!("{v}.model.layers.{j}");
            let f = cfg.intermediate_size;
            layers.push(Layer {
                ln1: norm(&format!("{p}.input_layernorm"))?,
                ln2: norm(&format!("{p}.post_attention_layernorm"))?,
                q: linear(&format!("{p}.self_attn.q_proj"), d, d, true)?,
                k: linear(&format!("{p}.self_attn.k_proj"), d, d, true)?,
                v: linear(&format!("{p}.self_attn.v_proj"), d, d, true)?,
                o: linear(&format!("{p}.self_attn.o_proj"), d, d, true)?,
                fc1: linear(&format!("{p}.mlp.fc1"), f, d, true)?,
                fc2: linear(&format!("{p}.mlp.fc2"), d, f, true)?,
            });
        }
        let k = cfg.num_channels * cfg.patch_size * cfg.patch_size;
        let class_w = w(&format!("{v}.class_embedding"), &[d])?;
        let class = be.alloc(d)?;
        be.bias_act(&class, Some(&class_w), 1, d, Act::Identity)?;
        let (pi, po) = (cfg.projector_input_dim, cfg.projector_output_dim);
        if pi != po || cfg.vision_output_dim != po {
            // The adapter's second layer is [out, out] and the projector reads vision_output_dim columns.
            return Err(HerdError::config(
                "vision_config.projector_output_dim",
                format!(
                    "the adapter needs projector_input_dim = projector_output_dim = vision_output_dim, got {pi}, {po}, {}",
                    cfg.vision_output_dim
                ),
            ));
        }
        let shuffled = shuffled_width(cfg)?;
        let hd = cfg.head_dim();
        let inv: Vec<f32> = (0..hd / 4).map(|j| 1.0 / cfg.rope_theta.powf((2 * j) as f32 / (hd / 2) as f32)).collect();
        Ok(VisionTower {
            cfg: cfg.clone(),
            text_hidden,
            patch: w(&format!("{v}.patch_embedding.linear.weight"), &[d, k])?,
            class,
            pos: w(&format!("{v}.positional_embedding_vlm"), &[n + 1, d])?,
            pre: norm(&format!("{v}.layernorm_pre"))?,
            post: norm(&format!("{v}.layernorm_post"))?,
            layers,
            adapter1: linear(&format!("{v}.vision_adapter.mlp.fc1"), pi, shuffled, false)?,
            adapter2: linear(&format!("{v}.vision_adapter.mlp.fc2"), po, po, false)?,
            projector: linear("multi_modal_projector.linear_1", text_hidden, cfg.vision_output_dim, false)?,
            inv_freq: be.upload(&inv)?,
            no_cache: be.alloc(d)?,
        })
    }

    /// Loads the tower of a model directory (config.json + safetensors); a model without a
    /// `vision_config` is an error that says so.
    pub fn from_dir(be: &B, dir: &std::path::Path) -> Result<Self> {
        let path = dir.join("config.json");
        let cfg = crate::config::ModelConfig::from_file(&path)?;
        let vision = cfg.vision.as_ref().ok_or_else(|| {
            HerdError::bad_file(&path, "this model has no vision tower (no vision_config): it takes no images")
        })?;
        let ck = crate::checkpoint::Checkpoint::open_dir(dir)?;
        Self::load(be, &ck, vision, cfg.text.hidden_size)
    }

    /// Output rows per tile (`<|patch|>` tokens).
    pub fn tokens_per_tile(&self) -> usize {
        self.cfg.tokens_per_tile()
    }

    /// How many tiles one pass takes on `be`: its widest buffer (the MLP's, per token of every tile) must
    /// fit the backend's largest.
    fn tiles_per_pass(&self, be: &B) -> usize {
        let c = &self.cfg;
        let per_tile = (c.patches_per_side().pow(2) + 1)
            * [c.intermediate_size, c.hidden_size, c.num_channels * c.patch_size * c.patch_size]
                .into_iter()
                .max()
                .unwrap_or(1);
        (be.max_buffer_len() / per_tile.max(1)).max(1)
    }

    /// Encodes `tiles` tiles of `pixel_values` ([tiles, channels, size, size], f32, as the processor makes
    /// them) into a device buffer [tiles · tokens_per_tile, text_hidden]: the embeddings of the image's
    /// `<|patch|>` tokens, in order.
    pub fn encode(&self, be: &B, pixel_values: &[f32], tiles: usize) -> Result<B::Buffer> {
        let c = &self.cfg;
        let (ch, s) = (c.num_channels, c.image_size);
        if tiles == 0 || pixel_values.len() != tiles * ch * s * s {
            return Err(HerdError::Input(format!(
                "pixel_values has {} values, expected tiles × {ch} × {s} × {s} for {tiles} tiles",
                pixel_values.len()
            )));
        }
        if let Some(bad) = pixel_values.iter().find(|v| !v.is_finite()) {
            return Err(HerdError::Input(format!("pixel_values holds {bad}")));
        }
        let per = self.tokens_per_tile();
        let out = be.alloc(tiles * per * self.text_hidden)?;
        let step = self.tiles_per_pass(be);
        let tile_len = ch * s * s;
        for t0 in (0..tiles).step_by(step) {
            let nt = step.min(tiles - t0);
            let part = self.encode_pass(be, &pixel_values[t0 * tile_len..(t0 + nt) * tile_len], nt)?;
            be.copy(&part, 0, &out, t0 * per * self.text_hidden, nt * per * self.text_hidden)?;
        }
        Ok(out)
    }

    fn encode_pass(&self, be: &B, pixels: &[f32], tiles: usize) -> Result<B::Buffer> {
        let c = &self.cfg;
        let (d, g, ps) = (c.hidden_size, c.patches_per_side(), c.patch_size);
        let (np, heads, hd) = (g * g, c.num_attention_heads, c.head_dim());
        let len = np + 1; // tokens per tile: the patches, then the class token
        let rows = tiles * len;
        // Patch embedding: the patches of every tile, then one row for the class embedding.
        let patches = be.upload(&unfold(pixels, tiles, c.num_channels, c.image_size, ps))?;
        let embedded = be.alloc((tiles * np + 1) * d)?;
        be.matmul(&patches, tiles * np, &self.patch, &embedded)?;
        drop(patches);
        be.copy(&self.class, 0, &embedded, tiles * np * d, d)?;
        let order: Vec<u32> =
            (0..tiles).flat_map(|t| (0..np).map(move |p| (t * np + p) as u32).chain([(tiles * np) as u32])).collect();
        let h = be.alloc(rows * d)?;
        be.gather_rows(&embedded, &be.upload_u32(&order)?, rows, d, &h)?;
        drop(embedded);
        be.bias_act(&h, Some(&self.pos), tiles, len * d, Act::Identity)?;
        be.layer_norm(&h, &self.pre.w, &self.pre.b, rows, d, c.norm_eps, &h)?;

        // 2-D RoPE positions: per token, per head, (column + 1, row + 1); the class token stays at 0.
        let pos: Vec<u32> = (0..tiles)
            .flat_map(|_| 0..len)
            .flat_map(|n| {
                let (col, row) = if n < np { ((n % g) as u32 + 1, (n / g) as u32 + 1) } else { (0, 0) };
                (0..heads).flat_map(move |_| [col, row])
            })
            .collect();
        let pos = be.upload_u32(&pos)?;
        let seqs: Vec<AttnSeq> = (0..tiles)
            .map(|t| AttnSeq { q_start: (t * len) as u32, q_len: len as u32, pos0: 0, page_base: 0, slot_cap: 1 })
            .collect();
        let params = AttnParams {
            n_heads: heads,
            n_kv_heads: heads,
            head_dim: hd,
            scale: (hd as f32).powf(-0.5),
            chunk: None,
            bidirectional: true,
            temperature: None,
        };
        let a = be.alloc(rows * d)?;
        let (q, kb, v, o) = (be.alloc(rows * d)?, be.alloc(rows * d)?, be.alloc(rows * d)?, be.alloc(rows * d)?);
        let f = be.alloc(rows * c.intermediate_size)?;
        for layer in &self.layers {
            be.layer_norm(&h, &layer.ln1.w, &layer.ln1.b, rows, d, c.norm_eps, &a)?;
            linear(be, &a, rows, &layer.q, &q, Act::Identity)?;
            linear(be, &a, rows, &layer.k, &kb, Act::Identity)?;
            linear(be, &a, rows, &layer.v, &v, Act::Identity)?;
            be.rope(&q, rows * heads * 2, 1, hd / 2, &pos, &self.inv_freq, None)?;
            be.rope(&kb, rows * heads * 2, 1, hd / 2, &pos, &self.inv_freq, None)?;
            // Nothing is cached: the one-slot page is never read.
            let pages = KvPages { table: &[0], size: 1, dtype: Default::default() };
            be.attention(&q, &kb, &v, &self.no_cache, &self.no_cache, pages, &seqs, &params, &a)?;
            linear(be, &a, rows, &layer.o, &o, Act::Identity)?;
            be.add(&h, &o, rows * d)?;
            be.layer_norm(&h, &layer.ln2.w, &layer.ln2.b, rows, d, c.norm_eps, &a)?;
            linear(be, &a, rows, &layer.fc1, &f, Act::Gelu)?;
            linear(be, &f, rows, &layer.fc2, &o, Act::Identity)?;
            be.add(&h, &o, rows * d)?;
        }
        drop((q, kb, v, o, f));
        be.layer_norm(&h, &self.post.w, &self.post.b, rows, d, c.norm_eps, &h)?;

        // Pixel shuffle, dropping the class token: output token (R, C) of the (g/2)² grid is the
        // concatenation of patches (2R, 2C), (2R, 2C+1), (2R+1, 2C), (2R+1, 2C+1).
        let half = g / 2;
        let picks: Vec<u32> = (0..tiles)
            .flat_map(|t| {
                (0..half * half).flat_map(move |tok| {
                    let (r, cc) = (tok / half, tok % half);
                    [(0, 0), (0, 1), (1, 0), (1, 1)]
                        .into_iter()
                        .map(move |(dr, dc)| (t * len + (2 * r + dr) * g + 2 * cc + dc) as u32)
                })
            })
            .collect();
        let shuffled = be.alloc(tiles * np * d)?;
        be.gather_rows(&h, &be.upload_u32(&picks)?, tiles * np, d, &shuffled)?;
        drop((h, a));
        let toks = tiles * half * half;
        let x1 = be.alloc(toks * self.adapter1.out)?;
        linear(be, &shuffled, toks, &self.adapter1, &x1, Act::Gelu)?;
        let x2 = be.alloc(toks * self.adapter2.out)?;
        linear(be, &x1, toks, &self.adapter2, &x2, Act::Gelu)?;
        let out = be.alloc(toks * self.text_hidden)?;
        linear(be, &x2, toks, &self.projector, &out, Act::Identity)?;
        Ok(out)
    }
}

/// `out = act(x · wᵀ + b)`.
fn linear<B: Backend>(be: &B, x: &B::Buffer, rows: usize, l: &Linear<B>, out: &B::Buffer, act: Act) -> Result<()> {
    be.matmul(x, rows, &l.w, out)?;
    if l.b.is_some() || act != Act::Identity {
        be.bias_act(out, l.b.as_ref(), rows, l.out, act)?;
    }
    Ok(())
}

/// The adapter's input width: the tower's width times the four patches the pixel shuffle joins.
fn shuffled_width(cfg: &VisionConfig) -> Result<usize> {
    if cfg.pixel_shuffle_ratio != 0.5 || !cfg.patches_per_side().is_multiple_of(2) {
        return Err(HerdError::config(
            "vision_config.pixel_shuffle_ratio",
            format!(
                "the tower runs a pixel shuffle of 0.5 on an even patch grid, not {} on {}",
                cfg.pixel_shuffle_ratio,
                cfg.patches_per_side()
            ),
        ));
    }
    Ok(cfg.hidden_size * 4)
}

/// `nn.Unfold(p, stride p)` then the transpose: [tiles, c, s, s] → rows [tiles · (s/p)², c·p·p], patch index
/// row-major over the grid, feature index `ch · p² + ky · p + kx`.
pub fn unfold(pixels: &[f32], tiles: usize, c: usize, s: usize, p: usize) -> Vec<f32> {
    let g = s / p;
    let k = c * p * p;
    let mut out = vec![0f32; tiles * g * g * k];
    for t in 0..tiles {
        for gy in 0..g {
            for gx in 0..g {
                let row = &mut out[((t * g + gy) * g + gx) * k..][..k];
                for ch in 0..c {
                    for ky in 0..p {
                        let src = ((t * c + ch) * s + gy * p + ky) * s + gx * p;
                        row[ch * p * p + ky * p..][..p].copy_from_slice(&pixels[src..src + p]);
                    }
                }
            }
        }
    }
    out
}
