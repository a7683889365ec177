//! Interleaved-pair RoPE on CUDA, alone or with Llama 4's weightless QK norm (rope.cu).

use herd_core::backend::ops;
use herd_core::error::Result;

use crate::kernel::{kernel, params, DevPtr};
use crate::{blocks, CudaBackend};

params! {
    pub struct RopeParams {
        pub x: DevPtr, pub pos: DevPtr, pub inv_freq: DevPtr, pub rows: u32, pub heads: u32, pub hd: u32, pub norm: u32,
        pub eps: f32, pub pad: u32,
    }
}

kernel!(Rope: "rope", RopeParams => "rope");

impl CudaBackend {
    pub(crate) fn rope_impl(&self, call: &ops::Rope<'_, CudaBackend>) -> Result<()> {
        let &ops::Rope { x, rows, heads, head_dim, positions, inv_freq, norm_eps } = call;
        let _op = self.dev.op();
        if rows * heads == 0 {
            return Ok(());
        }
        let p = RopeParams {
            x: x.at(),
            pos: positions.at(),
            inv_freq: inv_freq.at(),
            rows: rows as u32,
            heads: heads as u32,
            hd: head_dim as u32,
            norm: u32::from(norm_eps.is_some()),
            eps: norm_eps.unwrap_or(0.0),
            pad: 0,
        };
        self.launch(Rope, (blocks(rows * heads, 8), 1, 1), 256, 0, &p)
    }
}
