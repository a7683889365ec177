//! The vision tower's row ops on CUDA: layer norm and the bias add fused with GELU (layer_norm.cu).

use herd_core::backend::ops;
use herd_core::backend::Act;
use herd_core::error::Result;

use crate::kernel::{dts, kernel, params, DevPtr, FLOATS};
use crate::{blocks, CudaBackend};
use herd_core::quant::DType;

params! {
    pub struct LayerNormParams { pub x: DevPtr, pub w: DevPtr, pub b: DevPtr, pub out: DevPtr, pub dim: u32, pub eps: f32 }
    pub struct BiasActParams { pub x: DevPtr, pub b: DevPtr, pub n: u32, pub dim: u32, pub has_bias: u32, pub act: u32 }
}

kernel!(LayerNorm { dt: DType }: "layer_norm", LayerNormParams => |k| format!("layer_norm_{}", dts(k.dt)),
    all FLOATS.map(|dt| LayerNorm { dt }).to_vec());
kernel!(BiasAct { dt: DType }: "layer_norm", BiasActParams => |k| format!("bias_act_{}", dts(k.dt)),
    all FLOATS.map(|dt| BiasAct { dt }).to_vec());

impl CudaBackend {
    pub(crate) fn layer_norm_impl(&self, call: &ops::LayerNorm<'_, CudaBackend>) -> Result<()> {
        let &ops::LayerNorm { x, weight, bias, rows, dim, eps, out } = call;
        let _op = self.dev.op();
        if rows == 0 {
            return Ok(());
        }
        let threads = (dim / 4).next_power_of_two().clamp(32, 1024) as u32;
        let p = LayerNormParams { x: x.at(), w: weight.at(), b: bias.at(), out: out.at(), dim: dim as u32, eps };
        self.launch(LayerNorm { dt: weight.dtype }, (rows as u32, 1, 1), threads, 0, &p)
    }

    pub(crate) fn bias_act_impl(&self, call: &ops::BiasAct<'_, CudaBackend>) -> Result<()> {
        let &ops::BiasAct { x, bias, rows, dim, act } = call;
        let _op = self.dev.op();
        let n = rows * dim;
        if n == 0 {
            return Ok(());
        }
        let (dt, b) = bias.map_or((DType::F32, DevPtr::NULL), |b| (b.dtype, b.at()));
        let p = BiasActParams {
            x: x.at(),
            b,
            n: n as u32,
            dim: dim as u32,
            has_bias: u32::from(bias.is_some()),
            act: u32::from(act == Act::Gelu),
        };
        self.launch(BiasAct { dt }, (blocks(n, 256), 1, 1), 256, 0, &p)
    }
}
