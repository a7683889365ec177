//! Llama 4 attention (iRoPE): RoPE + QK norm + chunked mask on RoPE layers, NoPE + temperature tuning +
//! full causal mask on the others, GQA, and the KV-cache write.

use super::Scratch;
use crate::backend::{AttnParams, Backend, Temperature};
use crate::config::{AttnKind, TextConfig};
use crate::error::Result;
use crate::kv::KvGroup;
use crate::source::WeightSource;

pub(super) struct Attention<B: Backend> {
    q: B::Weight,
    k: B::Weight,
    v: B::Weight,
    o: B::Weight,
    use_rope: bool,
    qk_norm: bool,
    params: AttnParams,
}

impl<B: Backend> Attention<B> {
    pub fn load(be: &B, ck: &dyn WeightSource<B>, cfg: &TextConfig, i: usize) -> Result<Self> {
        let (d, h, kvh, hd) = (cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim);
        let p = format!("model.layers.{i}.self_attn.");
        let w = |n: &str, shape: &[usize]| ck.weight(be, &format!("{p}{n}.weight"), shape);
        let use_rope = cfg.use_rope[i];
        Ok(Attention {
            q: w("q_proj", &[h * hd, d])?,
            k: w("k_proj", &[kvh * hd, d])?,
            v: w("v_proj", &[kvh * hd, d])?,
            o: w("o_proj", &[d, h * hd])?,
            use_rope,
            qk_norm: use_rope && cfg.use_qk_norm,
            params: AttnParams {
                n_heads: h,
                n_kv_heads: kvh,
                head_dim: hd,
                scale: (hd as f32).powf(-0.5),
                chunk: match cfg.layer_types[i] {
                    AttnKind::Chunked => cfg.attention_chunk_size,
                    AttnKind::Full => None,
                },
                bidirectional: false,
                temperature: (!use_rope && cfg.attn_temperature_tuning)
                    .then_some(Temperature { floor_scale: cfg.floor_scale, attn_scale: cfg.attn_scale }),
            },
        })
    }

    /// Reads `s.a` (normed hidden [t, D]), writes the attention output projected to [t, D] into `s.o`.
    #[allow(clippy::too_many_arguments)]
    pub fn forward<'a>(
        &self,
        be: &B,
        cfg: &TextConfig,
        s: &Scratch<B>,
        t: usize,
        positions: &B::Buffer,
        inv_freq: &B::Buffer,
        cache: impl Iterator<Item = KvGroup<'a, B>>,
    ) -> Result<()> {
        let p = &self.params;
        be.matmuls(&s.a, t, &[&self.q, &self.k, &self.v], &[&s.q, &s.k, &s.v])?;
        if self.use_rope {
            // RoPE, then (on the layers that have it) the weightless QK norm, in one op.
            let norm = self.qk_norm.then_some(cfg.rms_norm_eps);
            be.rope(&s.q, t, p.n_heads, p.head_dim, positions, inv_freq, norm)?;
            be.rope(&s.k, t, p.n_kv_heads, p.head_dim, positions, inv_freq, norm)?;
        }
        // One call per cache arena, each for the sequences whose keys live there.
        for g in cache {
            be.attention(&s.q, &s.k, &s.v, g.k, g.v, g.pages(), g.seqs, p, &s.attn)?;
            be.kv_store(&s.k, &s.v, g.k, g.v, g.pages(), g.seqs, p.n_kv_heads, p.head_dim)?;
        }
        be.matmul(&s.attn, t, &self.o, &s.o)
    }
}
