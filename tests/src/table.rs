//! The op table: a list of cases, each one Backend op on one set of shapes in one weight format (the dtype
//! axis: f32, bf16, f16 and the quantized int8/int4 formats), as ggml's test-backend-ops lists its cases.
//! A case is data ([`Spec`]): what it is called, its tolerance, the bytes it moves and the flops it does; its
//! inputs are drawn from a generator seeded by its name (so a filtered run draws the same inputs), it is run on
//! a backend and compared with the plain f64 reference in [`crate::reference`] as normalised mean squared
//! error; NaN or Inf is always a failure. With `perf`, each case is also timed and reported as GB/s and
//! GFLOP/s, so speed and correctness share their cases. A new backend runs the same cases; a new op adds a
//! [`Spec`] variant, its rows in [`cases`], and its run in table_ops.rs (docs/backends.md, "Adding an op").

use herd_core::backend::{Act, Backend};
use herd_core::kv_format::KvDtype;
use herd_core::quant::{DType, GroupAxis, Grouping, ScaleType};
use herd_core::sampling::SamplingParams;

pub use crate::table_attention::AttnCase;
pub use crate::table_report::{dispatch_cost, format_table, nmse, RowResult};
pub(crate) use crate::table_report::{push_row, timed, Out};
pub use crate::table_sample::SampleCase;
pub(crate) use crate::weights::{weight, written_weight, Rng};

/// One row of the table.
#[derive(Clone, Debug)]
pub enum Spec {
    /// x [m, k] · w [n, k]ᵀ.
    Matmul {
        m: usize,
        k: usize,
        n: usize,
        dt: DType,
    },
    /// x [m, k] · wᵢ [nᵢ, k]ᵀ for three weights of one format (attention's q, k and v).
    Matmuls {
        m: usize,
        k: usize,
        ns: [usize; 3],
        dt: DType,
    },
    /// silu(x · gateᵀ) ⊙ (x · upᵀ), x [m, k], gate and up [f, k].
    Swiglu {
        m: usize,
        k: usize,
        f: usize,
        dt: DType,
    },
    RmsNorm {
        rows: usize,
        dim: usize,
        weight: Option<DType>,
        in_place: bool,
    },
    AddRmsNorm {
        rows: usize,
        dim: usize,
        dt: DType,
    },
    Rope {
        rows: usize,
        heads: usize,
        d: usize,
        norm: Option<f32>,
    },
    Attention(AttnCase),
    KvStore(AttnCase),
    Add {
        n: usize,
    },
    SiluMul {
        n: usize,
    },
    RouterTopk {
        rows: usize,
        experts: usize,
        k: usize,
    },
    /// `written`: the expert cache's case: weights written row by row, and picks of an expert past the end.
    Moe {
        rows: usize,
        d: usize,
        f: usize,
        experts: usize,
        k: usize,
        dt: DType,
        written: bool,
    },
    Sample(SampleCase),
    /// Constrained decoding's mask: `allowed` in a thousand tokens keep their logit; with `then_sample`, the
    /// masked rows are sampled (the op's purpose: picks only among the allowed tokens).
    MaskLogits {
        rows: usize,
        vocab: usize,
        allowed: u32,
        then_sample: bool,
    },
    Embed {
        vocab: usize,
        dim: usize,
        n: usize,
        dt: DType,
    },
    GatherRows {
        rows: usize,
        dim: usize,
        picks: Vec<u32>,
    },
    /// Rows with a mean of `mean` test the variance's cancellation.
    LayerNorm {
        rows: usize,
        dim: usize,
        dt: DType,
        in_place: bool,
        mean: f32,
    },
    BiasAct {
        rows: usize,
        dim: usize,
        bias: Option<DType>,
        act: Act,
    },
    Copy {
        src_len: usize,
        src_off: usize,
        dst_len: usize,
        dst_off: usize,
        len: usize,
    },
    WriteU32 {
        n: usize,
    },
}

/// A weight format's name in a row: `bf16`, or `q4g32-f16` (bits, group, scale type).
pub fn format_name(dt: DType) -> String {
    match dt.grouping() {
        None => dt.name().to_string(),
        Some(g) => {
            let s = match g.scale {
                ScaleType::F16 => "f16",
                ScaleType::BF16 => "bf16",
            };
            format!("{}g{}-{s}", dt.name(), g.group)
        }
    }
}

impl Spec {
    /// The op's name (the Backend method).
    pub fn op(&self) -> &'static str {
        match self {
            Spec::Matmul { .. } => "matmul",
            Spec::Matmuls { .. } => "matmuls",
            Spec::Swiglu { .. } => "swiglu",
            Spec::RmsNorm { .. } => "rms_norm",
            Spec::AddRmsNorm { .. } => "add_rms_norm",
            Spec::Rope { .. } => "rope",
            Spec::Attention(_) => "attention",
            Spec::KvStore(_) => "kv_store",
            Spec::Add { .. } => "add",
            Spec::SiluMul { .. } => "silu_mul",
            Spec::RouterTopk { .. } => "router_topk",
            Spec::Moe { .. } => "moe",
            Spec::Sample(_) => "sample",
            Spec::MaskLogits { .. } => "mask_logits",
            Spec::Embed { .. } => "embed",
            Spec::GatherRows { .. } => "gather_rows",
            Spec::LayerNorm { .. } => "layer_norm",
            Spec::BiasAct { .. } => "bias_act",
            Spec::Copy { .. } => "copy",
            Spec::WriteU32 { .. } => "write_u32",
        }
    }

    /// The row's description: its shapes and formats.
    pub fn describe(&self) -> String {
        match self {
            Spec::Matmul { m, k, n, dt } => format!("m={m} k={k} n={n} {}", format_name(*dt)),
            Spec::Matmuls { m, k, ns, dt } => format!("m={m} k={k} n={ns:?} {}", format_name(*dt)),
            Spec::Swiglu { m, k, f, dt } => format!("m={m} k={k} f={f} {}", format_name(*dt)),
            Spec::RmsNorm { rows, dim, weight, in_place } => format!(
                "rows={rows} dim={dim} weight={} {}",
                weight.map_or("none".into(), format_name),
                if *in_place { "in place" } else { "" }
            ),
            Spec::AddRmsNorm { rows, dim, dt } => format!("rows={rows} dim={dim} {}", format_name(*dt)),
            Spec::Rope { rows, heads, d, norm } => {
                format!("rows={rows} heads={heads} d={d}{}", if norm.is_some() { " + qk norm" } else { "" })
            }
            Spec::Attention(a) | Spec::KvStore(a) => a.describe(),
            Spec::Add { n } | Spec::SiluMul { n } => format!("n={n}"),
            Spec::RouterTopk { rows, experts, k } => format!("rows={rows} experts={experts} k={k}"),
            Spec::Moe { rows, d, f, experts, k, dt, written } => format!(
                "rows={rows} d={d} f={f} experts={experts} k={k} {}{}",
                format_name(*dt),
                if *written { " skipped-picks written-rows" } else { "" }
            ),
            Spec::Sample(s) => s.describe(),
            Spec::MaskLogits { rows, vocab, allowed, then_sample } => format!(
                "rows={rows} vocab={vocab} allowed={allowed}/1000{}",
                if *then_sample { " then sample" } else { "" }
            ),
            Spec::Embed { vocab, dim, n, dt } => format!("vocab={vocab} dim={dim} n={n} {}", format_name(*dt)),
            Spec::GatherRows { rows, dim, picks } => format!("rows={rows} dim={dim} picks={picks:?}"),
            Spec::LayerNorm { rows, dim, dt, in_place, mean } => format!(
                "rows={rows} dim={dim} mean={mean} {}{}",
                format_name(*dt),
                if *in_place { " in place" } else { "" }
            ),
            Spec::BiasAct { rows, dim, bias, act } => {
                format!("rows={rows} dim={dim} bias={} {act:?}", bias.map_or("none".into(), format_name))
            }
            Spec::Copy { src_len, src_off, dst_len, dst_off, len } => {
                format!("src={src_len}@{src_off} dst={dst_len}@{dst_off} len={len}")
            }
            Spec::WriteU32 { n } => format!("n={n}"),
        }
    }

    /// The largest normalised mean squared error the row accepts.
    pub fn tol(&self) -> f64 {
        match self {
            Spec::Matmul { .. } | Spec::Matmuls { .. } | Spec::Swiglu { .. } | Spec::Rope { .. } | Spec::Moe { .. } => {
                1e-9
            }
            Spec::RmsNorm { .. }
            | Spec::AddRmsNorm { .. }
            | Spec::Attention(_)
            | Spec::SiluMul { .. }
            | Spec::LayerNorm { .. }
            | Spec::BiasAct { .. } => 1e-10,
            Spec::Add { .. } | Spec::RouterTopk { .. } => 1e-12,
            // A head's scale is max |x| / 127 (or 448), and WGSL lets f32 division be off by 2.5 ulp: NVIDIA's
            // Vulkan driver's is (the H200 gave 1e-17..2e-15 on these rows), where lavapipe, CUDA and the CPU
            // round it correctly. A q8 byte one step off costs about 1e-8 in these cases.
            Spec::KvStore(a) if matches!(a.dtype, KvDtype::Q8 | KvDtype::Fp8) => 1e-12,
            // Exact: data movement, integer picks (and a new op until it says otherwise).
            _ => 0.0,
        }
    }

    /// Bytes one call moves at the least (weights in their format, f32 activations), for GB/s.
    pub fn bytes(&self) -> f64 {
        let quant = |dt: DType, shape: &[usize]| dt.bytes(shape).unwrap_or(0);
        (match self {
            Spec::Matmul { m, k, n, dt } => quant(*dt, &[*n, *k]) + 4 * (m * k + m * n),
            Spec::Matmuls { m, k, ns, dt } => {
                ns.iter().map(|n| quant(*dt, &[*n, *k]) + 4 * m * n).sum::<usize>() + 4 * m * k
            }
            Spec::Swiglu { m, k, f, dt } => 2 * quant(*dt, &[*f, *k]) + 4 * (m * k + m * f),
            Spec::RmsNorm { rows, dim, .. } => 8 * rows * dim,
            Spec::AddRmsNorm { rows, dim, .. } => 16 * rows * dim,
            Spec::Rope { rows, heads, d, .. } => 8 * rows * heads * d,
            Spec::Attention(a) => a.bytes(),
            Spec::KvStore(a) => 16 * a.rows() * a.kv_heads * a.d,
            Spec::Add { n } | Spec::SiluMul { n } => 12 * n,
            Spec::RouterTopk { rows, experts, k } => 4 * rows * (experts + 2 * k),
            // The experts some row picked, each read once.
            Spec::Moe { rows, d, f, experts, k, dt, written } => {
                crate::table_ops::moe_used(*rows, *k, *experts, *written) * quant(*dt, &[3, *d, *f])
            }
            Spec::Sample(s) => 4 * s.rows * s.vocab,
            Spec::MaskLogits { rows, vocab, .. } => 8 * rows * vocab + 4 * rows * vocab.div_ceil(32),
            Spec::Embed { vocab, dim, n, dt } => n * dim * 4 + quant(*dt, &[*vocab, *dim]) / vocab * n,
            Spec::GatherRows { dim, picks, .. } => 8 * picks.len() * dim,
            Spec::LayerNorm { rows, dim, .. } | Spec::BiasAct { rows, dim, .. } => 8 * rows * dim,
            Spec::Copy { len, .. } => 8 * len,
            Spec::WriteU32 { n } => 4 * n,
        }) as f64
    }

    /// Floating-point operations one call does, for GFLOP/s (0 for data movement).
    pub fn flops(&self) -> f64 {
        (match self {
            Spec::Matmul { m, k, n, .. } => 2 * m * k * n,
            Spec::Matmuls { m, k, ns, .. } => 2 * m * k * ns.iter().sum::<usize>(),
            Spec::Swiglu { m, k, f, .. } => 4 * m * k * f,
            Spec::RmsNorm { rows, dim, .. } => 4 * rows * dim,
            Spec::AddRmsNorm { rows, dim, .. } => 5 * rows * dim,
            Spec::Rope { rows, heads, d, .. } => 6 * rows * heads * d,
            Spec::Attention(a) => a.flops(),
            Spec::Add { n } => *n,
            Spec::SiluMul { n } => 5 * n,
            Spec::RouterTopk { rows, experts, .. } => rows * experts,
            Spec::Moe { rows, d, f, k, .. } => rows * k * 6 * d * f,
            Spec::LayerNorm { rows, dim, .. } => 7 * rows * dim,
            Spec::BiasAct { rows, dim, .. } => 20 * rows * dim,
            Spec::KvStore(_)
            | Spec::Sample(_)
            | Spec::MaskLogits { .. }
            | Spec::Embed { .. }
            | Spec::GatherRows { .. }
            | Spec::Copy { .. }
            | Spec::WriteU32 { .. } => 0,
        }) as f64
    }
}

const FLOATS: [DType; 3] = [DType::F32, DType::BF16, DType::F16];

/// An int8 (`bits` 8) or int4 format with groups of `group` along `axis`.
fn q(bits: u32, group: u32, scale: ScaleType, axis: GroupAxis) -> DType {
    let g = Grouping { group, scale, axis };
    if bits == 8 {
        DType::Q8(g)
    } else {
        DType::Q4(g)
    }
}

/// Every row of the table, in the order it runs.
pub fn cases() -> Vec<Spec> {
    let mut c = Vec::new();
    let (f16s, bf16s) = (ScaleType::F16, ScaleType::BF16);
    let (f32_, bf16, f16) = (DType::F32, DType::BF16, DType::F16);

    // matmul, float formats. Large cases: f16 adds nothing over bf16; the largest (a prefill whose f32 weight
    // is split across bindings) runs in f32 only.
    for (m, k, n) in [
        (1, 64, 33),
        (1, 99, 37),
        (3, 129, 67),
        (5, 128, 256),
        (8, 40, 72),
        (9, 17, 65),
        // A few rows' tiles at AVX-512 (dot512) with 3 and 2 weight rows left over, k not a multiple of 16.
        (6, 50, 71),
        (7, 33, 34),
        (37, 96, 130),
        (1, 5120, 8192),
        (128, 1024, 1024),
        (12, 2048, 16400),
    ] {
        let big = m * k * n > 1 << 24;
        for dt in FLOATS.into_iter().filter(|&dt| !(big && dt == f16) && (m * k * n <= 1 << 28 || dt == f32_)) {
            c.push(Spec::Matmul { m, k, n, dt });
        }
    }
    // matmul, quantized formats (nn.Linear weights, groups along K): decode and prefill sizes, an odd n; the
    // largest in the format Scout is served in only.
    let linear = [
        q(8, 32, f16s, GroupAxis::Last),
        q(4, 32, f16s, GroupAxis::Last),
        q(4, 128, bf16s, GroupAxis::Last),
        q(8, 128, bf16s, GroupAxis::Last),
    ];
    for (m, k, n) in [(1, 128, 33), (3, 256, 67), (9, 128, 40), (37, 256, 70), (1, 5120, 8192)] {
        for dt in linear {
            if m * k * n <= 1 << 24 || matches!(dt, DType::Q4(g) if g.group == 128) {
                c.push(Spec::Matmul { m, k, n, dt });
            }
        }
    }
    // Groups of 16 (two to a run of 32 in the CPU's integer kernels; a prefill's rows in its panel kernel),
    // and a k that is no multiple of 32 (which those kernels leave to the f32 path).
    for (m, k, n) in [(2, 96, 33), (4, 48, 19), (20, 96, 33)] {
        for dt in [q(4, 16, f16s, GroupAxis::Last), q(8, 16, bf16s, GroupAxis::Last)] {
            c.push(Spec::Matmul { m, k, n, dt });
        }
    }
    // Groups of 24, no power of two (CUDA's decode GEMV divides for the scale's index instead of shifting).
    for dt in [q(4, 24, f16s, GroupAxis::Last), q(8, 24, bf16s, GroupAxis::Last)] {
        c.push(Spec::Matmul { m: 2, k: 96, n: 33, dt });
    }

    // matmuls: decode's q, k and v of one input (the CPU runs them as one op), each path, and more rows.
    for (m, k, ns, dt) in [
        (1, 128, [64, 32, 32], f32_),
        (2, 96, [40, 17, 17], bf16),
        (1, 128, [64, 32, 33], linear[1]),
        (4, 256, [70, 40, 40], linear[0]),
        (3, 96, [33, 16, 16], q(4, 16, f16s, GroupAxis::Last)),
        (9, 64, [24, 8, 8], linear[1]),
    ] {
        c.push(Spec::Matmuls { m, k, ns, dt });
    }

    for (m, k, f) in [(1, 64, 48), (3, 130, 40), (8, 256, 96), (5, 40, 17), (12, 128, 64), (1, 5120, 8192)] {
        for dt in FLOATS.into_iter().filter(|&dt| m * k * f <= 1 << 24 || dt == bf16) {
            c.push(Spec::Swiglu { m, k, f, dt });
        }
    }
    // swiglu, quantized: decode rows (the CPU runs gate, up and silu·up as one op), each integer path (k a
    // multiple of 64 or not, groups of 16) and a k the integer kernels leave to the f32 path.
    for (m, k, f, dt) in [
        (1, 128, 70, linear[0]),
        (2, 256, 40, linear[1]),
        (3, 256, 33, linear[2]),
        (4, 96, 19, q(4, 16, f16s, GroupAxis::Last)),
        (1, 48, 17, q(8, 16, bf16s, GroupAxis::Last)),
        (9, 128, 40, linear[1]),
    ] {
        c.push(Spec::Swiglu { m, k, f, dt });
    }

    for (rows, dim, weight, in_place) in [
        (1, 64, Some(f32_), false),
        (7, 130, Some(bf16), false),
        (33, 5120, Some(bf16), false),
        (12, 16, None, true),
        (5, 128, None, false),
    ] {
        c.push(Spec::RmsNorm { rows, dim, weight, in_place });
    }
    for (rows, dim, dt) in [(1, 64, f32_), (7, 130, bf16), (33, 5120, bf16), (3, 257, f16)] {
        c.push(Spec::AddRmsNorm { rows, dim, dt });
    }
    for (rows, heads, d, norm) in
        [(5, 3, 16, None), (9, 8, 128, None), (1, 40, 128, None), (7, 5, 16, Some(1e-5)), (3, 40, 128, Some(1e-6))]
    {
        c.push(Spec::Rope { rows, heads, d, norm });
    }

    for a in crate::table_attention::attention_cases() {
        c.push(Spec::Attention(a.clone()));
        c.push(Spec::KvStore(a));
    }

    for n in [1usize, 1000, 4099, 1 << 20] {
        c.push(Spec::Add { n });
        c.push(Spec::SiluMul { n });
    }
    for (rows, experts, k) in [(7, 5, 1), (9, 16, 1), (6, 8, 2), (3, 128, 1), (64, 16, 1)] {
        c.push(Spec::RouterTopk { rows, experts, k });
    }

    // moe, float formats: decode (the CPU's split-k decode in each format, rows a multiple of 4 or not), the
    // per-entry path, several tiles of 8 per expert, batches whose dimensions
    // are not multiples of the tile sizes (CUDA's tensor-core and CUDA-core expert tiles: partial column tiles,
    // partial K steps, many tiles per expert), an expert tensor over 128 MiB (split across bindings by whole
    // experts); then the expert cache's case.
    for (rows, d, f, experts, k, dt, written) in [
        (1, 24, 10, 4, 1, f32_, false),
        (2, 130, 67, 4, 2, f16, false),
        (6, 24, 10, 4, 2, bf16, false),
        (9, 33, 17, 5, 1, f32_, false),
        (9, 32, 16, 4, 2, f16, false),
        (1, 1024, 1024, 16, 1, bf16, false),
        (64, 512, 512, 16, 1, f32_, false),
        (40, 64, 32, 4, 2, bf16, false),
        (50, 72, 40, 8, 2, bf16, false),
        (37, 40, 24, 3, 1, f16, false),
        (2, 1024, 2080, 16, 2, bf16, false),
        (1, 24, 10, 4, 1, f32_, true),
        (9, 32, 16, 4, 2, f16, true),
        (40, 64, 32, 4, 2, bf16, true),
        (50, 72, 40, 8, 2, bf16, true),
        (2, 1024, 2080, 16, 2, bf16, true),
    ] {
        c.push(Spec::Moe { rows, d, f, experts, k, dt, written });
    }
    // moe, quantized formats: the input-major expert tensors, groups along the second-last axis (d and f).
    for (rows, d, f, experts, k, bits, group, written) in [
        (1, 64, 32, 4, 1, 4, 32, false),
        (9, 64, 32, 4, 2, 8, 32, false),
        (20, 128, 64, 4, 1, 4, 64, false),
        (2, 256, 128, 8, 2, 4, 128, false),
        (2, 96, 64, 4, 2, 8, 32, false),
        (9, 64, 32, 4, 2, 4, 32, true),
        (20, 128, 64, 4, 1, 8, 64, true),
        // Experts of a dozen rows and more (the CPU's packed-panel prefill, from 8 rows at q8, 16 at q4).
        (48, 128, 64, 2, 1, 4, 32, false),
        (40, 128, 96, 4, 2, 8, 32, false),
    ] {
        let dt = q(bits, group, f16s, GroupAxis::SecondLast);
        c.push(Spec::Moe { rows, d, f, experts, k, dt, written });
    }

    c.extend(crate::table_sample::sample_cases().into_iter().map(Spec::Sample));
    // mask_logits: a vocabulary shorter than one word, rows that allow nothing, a sparse mask over Scout's vocabulary; then masks followed by
    // sample, whose picks must be allowed tokens exactly as the reference picks them.
    for (rows, vocab, allowed, then_sample) in [
        (1, 5, 500, false),
        (2, 100, 0, false),
        (3, 1000, 100, false),
        (2, 202048, 10, false),
        (4, 1000, 100, true),
        (2, 202048, 2, true),
    ] {
        c.push(Spec::MaskLogits { rows, vocab, allowed, then_sample });
    }

    // embed: float tables and quantized ones (a tied lm_head's embedding).
    for (vocab, dim, dt) in [
        (50, 24, f32_),
        (50, 24, bf16),
        (50, 64, q(4, 32, f16s, GroupAxis::Last)),
        (50, 64, q(8, 64, bf16s, GroupAxis::Last)),
    ] {
        c.push(Spec::Embed { vocab, dim, n: 7, dt });
    }
    c.push(Spec::GatherRows { rows: 11, dim: 37, picks: vec![10, 0, 4, 4] });

    // The vision tower's row ops: 1408 is the real tower's width, 577 rows one tile; layer_norm rows with a
    // large mean test the variance's cancellation. bias_act: a bias broadcast over rows, GELU alone (the
    // adapter), the fused bias + GELU of fc1, a bias as long as the whole buffer (the positional embedding
    // over tiles), and the real tower's fc1 for one tile.
    for (rows, dim, dt, in_place, mean) in [
        (1, 64, f32_, false, 0.0),
        (7, 130, bf16, false, 3.0),
        (12, 16, f32_, true, 0.0),
        (5, 257, f16, false, -20.0),
        (577, 1408, bf16, false, 0.5),
    ] {
        c.push(Spec::LayerNorm { rows, dim, dt, in_place, mean });
    }
    for (rows, dim, bias, act) in [
        (3, 40, Some(f32_), Act::Identity),
        (9, 130, None, Act::Gelu),
        (5, 257, Some(bf16), Act::Gelu),
        (2, 577 * 16, Some(f32_), Act::Identity),
        (577, 5632, Some(bf16), Act::Gelu),
    ] {
        c.push(Spec::BiasAct { rows, dim, bias, act });
    }

    // Buffer ops: copies between offsets (one element, a range ending at both buffers' ends, a large one) and
    // writes of ids.
    for (src_len, src_off, dst_len, dst_off, len) in
        [(5, 4, 3, 0, 1), (100, 7, 80, 13, 67), (1 << 20, 0, (1 << 20) + 5, 5, 1 << 20)]
    {
        c.push(Spec::Copy { src_len, src_off, dst_len, dst_off, len });
    }
    for n in [1, 4099] {
        c.push(Spec::WriteU32 { n });
    }
    c
}

/// The cases' seed: a hash of the row's name, so each row draws the same inputs however the table is filtered.
fn seed(op: &str, case: &str) -> u64 {
    let h = op
        .bytes()
        .chain([0])
        .chain(case.bytes())
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3));
    h | 1
}

/// Runs one case on `be`.
pub fn run_case<B: Backend>(be: &B, spec: &Spec, perf: bool) -> RowResult {
    let case = spec.describe();
    let mut rng = Rng(seed(spec.op(), &case));
    let res = crate::table_ops::run(be, spec, &mut rng, perf);
    let mut rows = Vec::new();
    push_row(
        &mut rows,
        None,
        spec.op(),
        case,
        spec.tol(),
        res.map(|o| Out { bytes: spec.bytes(), flops: spec.flops(), ..o }),
    );
    rows.pop().expect("one row")
}

/// Runs every row of the table on `be`. `filter` keeps rows whose op name contains it.
pub fn run_table<B: Backend>(be: &B, perf: bool, filter: Option<&str>) -> Vec<RowResult> {
    run_rows(be, perf, |op| filter.is_none_or(|f| op.contains(f)))
}

/// The rows of the ops that `pick` accepts.
fn run_rows<B: Backend>(be: &B, perf: bool, pick: impl Fn(&str) -> bool) -> Vec<RowResult> {
    cases().iter().filter(|s| pick(s.op())).map(|s| run_case(be, s, perf)).collect()
}

/// Sampling parameters from (temperature, top_k, top_p, min_p, repetition penalty), unseeded.
pub(crate) fn sampling(t: f32, top_k: usize, top_p: f32, min_p: f32, pen: f32) -> SamplingParams {
    SamplingParams { temperature: t, top_k, top_p, min_p, repetition_penalty: pen, seed: None }
}

/// One backend's op-table test: every row passes and every bad call ([`crate::bad_calls`]) is refused with its
/// check's message.
pub fn assert_backend_passes<B: Backend>(be: &B) {
    assert_rows_pass(be, None);
    let wrong = crate::bad_calls::bad_calls(be);
    assert!(wrong.is_empty(), "bad calls not refused as they must be:\n{}", wrong.join("\n"));
}

/// Every row of the ops containing `filter` (all with None) passes on `be`.
pub fn assert_rows_pass<B: Backend>(be: &B, filter: Option<&str>) {
    assert_picked_rows_pass(be, |op| filter.is_none_or(|f| op.contains(f)), if filter.is_none() { 150 } else { 0 });
}

/// Every row of the ops that `pick` accepts passes on `be`, and there are more than `min_rows` of them. A slow
/// backend's table is split this way into tests that run side by side (the emulator's race check).
pub fn assert_picked_rows_pass<B: Backend>(be: &B, pick: impl Fn(&str) -> bool, min_rows: usize) {
    let rows = run_rows(be, false, pick);
    let table = format_table(&be.name(), &rows);
    eprintln!("{table}");
    assert!(rows.len() > min_rows, "the table lost rows: {}", rows.len());
    let failed: Vec<_> =
        rows.iter().filter(|r| !r.passed()).map(|r| format!("{} {} ({:?})", r.op, r.case, r.error)).collect();
    assert!(failed.is_empty(), "failing rows: {failed:?}\n{table}");
}
