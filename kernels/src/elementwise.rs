//! Element-wise and row ops on CUDA (elementwise.cu): the embedding lookup, the residual add, SwiGLU's
//! silu·up and the row gather.

use herd_core::backend::ops;
use herd_core::error::Result;
use herd_core::quant::Fill;
use herd_core::quant::{DType, GroupAxis, QuantLayout};

use crate::device::err;
use crate::kernel::{dts, kernel, params, DevPtr, FLOATS};
use crate::{blocks, CudaBackend, CudaWeight};

params! {
    pub struct EmbedParams { pub t: DevPtr, pub ids: DevPtr, pub out: DevPtr, pub n: u32, pub dim: u32 }
    pub struct EmbedQParams {
        pub t: DevPtr, pub sc: DevPtr, pub ids: DevPtr, pub out: DevPtr, pub st: u32, pub group: u32, pub n: u32,
        pub dim: u32,
    }
    pub struct AddParams { pub acc: DevPtr, pub x: DevPtr, pub n: u32, pub pad: u32 }
    pub struct SiluMulParams { pub gate: DevPtr, pub up: DevPtr, pub n: u32, pub pad: u32 }
    pub struct GatherRowsParams { pub x: DevPtr, pub rows: DevPtr, pub out: DevPtr, pub n: u32, pub dim: u32 }
    pub struct SynthParams { pub out: DevPtr, pub n: u64, pub seed: u64, pub scale: f32, pub ones: u32 }
    pub struct SynthQParams {
        pub v: DevPtr, pub sc: DevPtr, pub outer: u64, pub seed: u64, pub nscales: u64, pub st: u32, pub group: u32,
        pub axis: u32, pub second: u32, pub last: u32, pub scale: f32,
    }
}

kernel!(Embed { dt: DType }: "elementwise", EmbedParams => |k| format!("embed_{}", dts(k.dt)),
    all FLOATS.map(|dt| Embed { dt }).to_vec());
kernel!(EmbedQ { bits: u32 }: "elementwise", EmbedQParams => |k| format!("embed_q{}", k.bits),
    all vec![EmbedQ { bits: 4 }, EmbedQ { bits: 8 }]);
kernel!(Add: "elementwise", AddParams => "add");
kernel!(SiluMul: "elementwise", SiluMulParams => "silu_mul");
kernel!(GatherRows: "elementwise", GatherRowsParams => "gather_rows");
kernel!(Synth { dt: DType }: "elementwise", SynthParams => |k| format!("synth_{}", dts(k.dt)),
    all FLOATS.map(|dt| Synth { dt }).to_vec());
kernel!(SynthQ { bits: u32 }: "elementwise", SynthQParams => |k| format!("synth_q{}", k.bits),
    all vec![SynthQ { bits: 4 }, SynthQ { bits: 8 }]);

impl CudaBackend {
    pub(crate) fn embed_impl(&self, call: &ops::Embed<'_, CudaBackend>) -> Result<()> {
        let &ops::Embed { table, ids, n, dim, out } = call;
        let _op = self.dev.op();
        if n == 0 {
            return Ok(());
        }
        let grid = (blocks(n * dim, 256), 1, 1);
        if let Some(bits) = table.bits() {
            let p = EmbedQParams {
                t: table.at(),
                sc: DevPtr::new(table.scales),
                ids: ids.at(),
                out: out.at(),
                st: table.st,
                group: table.group,
                n: n as u32,
                dim: dim as u32,
            };
            return self.launch(EmbedQ { bits }, grid, 256, 0, &p);
        }
        let p = EmbedParams { t: table.at(), ids: ids.at(), out: out.at(), n: n as u32, dim: dim as u32 };
        self.launch(Embed { dt: table.dtype }, grid, 256, 0, &p)
    }

    pub(crate) fn add_impl(&self, call: &ops::Add<'_, CudaBackend>) -> Result<()> {
        let &ops::Add { acc, x, n } = call;
        let _op = self.dev.op();
        if n == 0 {
            return Ok(());
        }
        self.launch(Add, (blocks(n, 256), 1, 1), 256, 0, &AddParams { acc: acc.at(), x: x.at(), n: n as u32, pad: 0 })
    }

    pub(crate) fn silu_mul_impl(&self, call: &ops::SiluMul<'_, CudaBackend>) -> Result<()> {
        let &ops::SiluMul { gate, up, n } = call;
        let _op = self.dev.op();
        if n == 0 {
            return Ok(());
        }
        let p = SiluMulParams { gate: gate.at(), up: up.at(), n: n as u32, pad: 0 };
        self.launch(SiluMul, (blocks(n, 256), 1, 1), 256, 0, &p)
    }

    pub(crate) fn gather_rows_impl(&self, call: &ops::GatherRows<'_, CudaBackend>) -> Result<()> {
        let &ops::GatherRows { x, rows, n, dim, out } = call;
        let _op = self.dev.op();
        if n * dim == 0 {
            return Ok(());
        }
        let p = GatherRowsParams { x: x.at(), rows: rows.at(), out: out.at(), n: n as u32, dim: dim as u32 };
        self.launch(GatherRows, (blocks(n * dim, 256), 1, 1), 256, 0, &p)
    }

    /// A synthetic weight made on the device by the synth kernels (the same values as the host generator).
    pub(crate) fn synthetic_weight_impl(
        &self,
        name: &str,
        shape: &[usize],
        dtype: DType,
        fill: Fill,
    ) -> Result<CudaWeight> {
        let _op = self.dev.op();
        let n: usize = shape.iter().product();
        let bytes = dtype.bytes(shape).map_err(|e| err(format!("{}: {e}", name.escape_debug())))?;
        let p = self.dev.alloc_raw(bytes)?;
        let w = CudaWeight::new(&self.dev, p, dtype, shape)?;
        let (seed, scale, ones) = match fill {
            Fill::Ones => (0, 0.0, 1),
            Fill::Uniform { seed, scale } => (seed, scale, 0),
        };
        if let (Some(g), Some(bits)) = (dtype.grouping(), w.bits()) {
            if ones == 1 {
                return Err(err(format!("{}: a quantized tensor of ones", name.escape_debug())));
            }
            let l = QuantLayout::new(dtype, shape).map_err(err)?;
            let axis = u32::from(g.axis == GroupAxis::SecondLast);
            let outer = n / (l.second * l.last);
            let grid = blocks(l.scales.div_ceil(2), 256).min(self.dev.sms * 64);
            let sp = SynthQParams {
                v: w.at(),
                sc: DevPtr::new(w.scales),
                outer: outer as u64,
                seed,
                nscales: l.scales as u64,
                st: w.st,
                group: g.group,
                axis,
                second: l.second as u32,
                last: l.last as u32,
                scale,
            };
            self.launch(SynthQ { bits }, (grid, 1, 1), 256, 0, &sp)?;
            self.dev.sync()?;
            return Ok(w);
        }
        let grid = blocks(n, 256).min(self.dev.sms * 64);
        let sp = SynthParams { out: w.at(), n: n as u64, seed, scale, ones };
        self.launch(Synth { dt: dtype }, (grid, 1, 1), 256, 0, &sp)?;
        // Made now, so that loading is timed as loading and not as the first step.
        self.dev.sync()?;
        Ok(w)
    }
}
