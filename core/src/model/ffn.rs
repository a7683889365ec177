//! Llama 4 feed-forward blocks: the dense SwiGLU MLP (non-MoE layers) and the MoE block (top-k sigmoid
//! router whose score scales the expert input, routed experts, always-on shared expert).

use super::Scratch;
use crate::backend::Backend;
use crate::config::TextConfig;
use crate::error::Result;
use crate::experts::{ExpertCache, StreamScratch};
use crate::source::WeightSource;

/// down(silu(gate(x)) ⊙ up(x)), nn.Linear weights.
pub(super) struct Mlp<B: Backend> {
    gate: B::Weight,
    up: B::Weight,
    down: B::Weight,
    width: usize,
}

impl<B: Backend> Mlp<B> {
    fn load(be: &B, ck: &dyn WeightSource<B>, prefix: &str, d: usize, width: usize) -> Result<Self> {
        let w = |n: &str, shape: &[usize]| ck.weight(be, &format!("{prefix}{n}.weight"), shape);
        Ok(Mlp {
            gate: w("gate_proj", &[width, d])?,
            up: w("up_proj", &[width, d])?,
            down: w("down_proj", &[d, width])?,
            width,
        })
    }

    /// s.a → s.o
    fn forward(&self, be: &B, s: &Scratch<B>, t: usize) -> Result<()> {
        be.swiglu(&s.a, t, &self.gate, &self.up, self.width, &s.gate, &s.up)?;
        be.matmul(&s.gate, t, &self.down, &s.o)
    }
}

pub(super) enum Ffn<B: Backend> {
    Dense(Mlp<B>),
    /// `experts` None: the routed experts stream through the model's expert cache.
    Moe {
        router: B::Weight,
        experts: Option<(B::Weight, B::Weight)>,
        shared: Mlp<B>,
    },
}

impl<B: Backend> Ffn<B> {
    /// With `streamed`, the routed experts are left to the expert cache (which checked them).
    pub fn load(be: &B, ck: &dyn WeightSource<B>, cfg: &TextConfig, i: usize, streamed: bool) -> Result<Self> {
        let d = cfg.hidden_size;
        let p = format!("model.layers.{i}.feed_forward.");
        if !cfg.moe_layers[i] {
            return Ok(Ffn::Dense(Mlp::load(be, ck, &p, d, cfg.intermediate_size_mlp)?));
        }
        let (e, f) = (cfg.num_local_experts, cfg.intermediate_size);
        let experts = if streamed {
            None
        } else {
            // The fused expert tensors carry no `.weight` suffix and are input-major: [E, D, 2F], [E, F, D].
            Some((
                ck.weight(be, &format!("{p}experts.gate_up_proj"), &[e, d, 2 * f])?,
                ck.weight(be, &format!("{p}experts.down_proj"), &[e, f, d])?,
            ))
        };
        Ok(Ffn::Moe {
            router: ck.weight(be, &format!("{p}router.weight"), &[e, d])?,
            experts,
            shared: Mlp::load(be, ck, &format!("{p}shared_expert."), d, f)?,
        })
    }

    /// The router of a MoE block.
    pub fn router(&self) -> Option<&B::Weight> {
        match self {
            Ffn::Moe { router, .. } => Some(router),
            Ffn::Dense(_) => None,
        }
    }

    /// Reads `s.a` (normed hidden [t, D]), writes the block's output [t, D] into `s.o`. A streamed block
    /// runs its experts through `cache` (as layer `layer`; `next` is the next MoE layer and its router).
    #[allow(clippy::too_many_arguments)]
    pub async fn forward(
        &self,
        be: &B,
        cfg: &TextConfig,
        s: &Scratch<B>,
        t: usize,
        cache: Option<&ExpertCache<B>>,
        layer: usize,
        next: Option<(usize, &B::Weight)>,
    ) -> Result<()> {
        match self {
            Ffn::Dense(m) => m.forward(be, s, t),
            Ffn::Moe { router, experts, shared } => {
                let (e, k) = (cfg.num_local_experts, cfg.num_experts_per_tok);
                shared.forward(be, s, t)?;
                be.matmul(&s.a, t, router, &s.router_logits)?;
                be.router_topk(&s.router_logits, t, e, k, &s.idx, &s.score)?;
                match (experts, cache) {
                    (Some((gate_up, down)), _) => be.moe(&s.a, t, &s.idx, &s.score, k, gate_up, down, &s.o),
                    (None, Some(c)) => {
                        let ss = StreamScratch {
                            a: &s.a,
                            o: &s.o,
                            idx: &s.idx,
                            score: &s.score,
                            slot_idx: &s.slot_idx,
                            pred_logits: &s.pred_logits,
                            pred_idx: &s.pred_idx,
                            pred_score: &s.pred_score,
                        };
                        c.moe(be, &ss, t, layer, next).await
                    }
                    (None, None) => Err(crate::error::HerdError::internal(format!(
                        "layer {layer}: routed experts neither loaded nor streamed"
                    ))),
                }
            }
        }
    }
}
