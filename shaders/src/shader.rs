//! The shader modules: which .wgsl file a pipeline comes from, and the WGSL the device compiles for it (the
//! shared prelude, the reductions, the file, and the loaders of its parameter structs).

/// Which .wgsl file a pipeline comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Shader {
    Elementwise,
    RmsNorm,
    LayerNorm,
    Rope,
    Matmul,
    Attention,
    Moe,
    Sample,
}

impl Shader {
    pub(crate) const ALL: [Shader; 8] = [
        Shader::Elementwise,
        Shader::RmsNorm,
        Shader::LayerNorm,
        Shader::Rope,
        Shader::Matmul,
        Shader::Attention,
        Shader::Moe,
        Shader::Sample,
    ];

    fn source(self) -> &'static str {
        match self {
            Shader::Elementwise => include_str!("../elementwise.wgsl"),
            Shader::RmsNorm => include_str!("../rms_norm.wgsl"),
            Shader::LayerNorm => include_str!("../layer_norm.wgsl"),
            Shader::Rope => include_str!("../rope.wgsl"),
            Shader::Matmul => include_str!("../matmul.wgsl"),
            // One module in three files (each under 300 lines), joined in this order.
            Shader::Attention => {
                concat!(
                    include_str!("../attention.wgsl"),
                    include_str!("../kv_store.wgsl"),
                    include_str!("../attention_blocks.wgsl")
                )
            }
            Shader::Moe => include_str!("../moe.wgsl"),
            Shader::Sample => include_str!("../sample.wgsl"),
        }
    }
}

/// The WGSL of `shader` for weight format `wdt`, with subgroup reductions or shared-memory ones. Browsers
/// (`browser`) want the WGSL directive for subgroup operations; Naga (native) takes them from the device
/// feature and rejects the directive.
pub(crate) fn compose(shader: Shader, wdt: u32, subgroups: bool, browser: bool) -> String {
    let (enable, reduce) = if subgroups {
        (if browser { "enable subgroups;\n" } else { "" }, include_str!("../reduce_subgroups.wgsl"))
    } else {
        ("", include_str!("../reduce.wgsl"))
    };
    let source = shader.source();
    format!("{enable}const WDT: u32 = {wdt}u;\n{PRELUDE}\n{reduce}\n{source}\n{}", crate::kernel::loaders(source))
}

/// Every shader module the backend builds, as (label, WGSL) for a browser: each .wgsl file with each weight
/// format (f32, bf16, f16, and q8/q4 with f16 or bf16 scales) and with shared-memory reductions (and
/// subgroup ones when `subgroups`). For checking them with a browser's own WGSL compiler, which is stricter
/// than Naga (it enforces WGSL's uniformity rules, for one).
pub fn shader_sources(subgroups: bool) -> Vec<(String, String)> {
    use herd_core::quant::{DType, GroupAxis, Grouping, ScaleType};
    let g = |group, scale| Grouping { group, scale, axis: GroupAxis::Last };
    let (f16_32, bf16_128) = (g(32, ScaleType::F16), g(128, ScaleType::BF16));
    let formats = [
        DType::F32,
        DType::BF16,
        DType::F16,
        DType::Q8(f16_32),
        DType::Q8(bf16_128),
        DType::Q4(f16_32),
        DType::Q4(bf16_128),
    ];
    let wdts = formats.map(crate::buffer::weight_code);
    let mut out = Vec::new();
    for sh in Shader::ALL {
        for &wdt in &wdts {
            for sg in [false, true].into_iter().filter(|&g| !g || subgroups) {
                out.push((
                    format!("{sh:?} WDT={wdt:#x}{}", if sg { " subgroups" } else { "" }),
                    compose(sh, wdt, sg, true),
                ));
            }
        }
    }
    out
}

/// Prepended to every shader: the parameter block, weight unpacking for the pipeline's weight format
/// (`WDT`: 0 f32, 1 bf16, 2 f16; weights are bound as u32 words), and the linear workgroup index.
const PRELUDE: &str = r#"
@group(0) @binding(0) var<uniform> params: array<vec4<u32>, 4>;
fn pu(i: u32) -> u32 { return params[i / 4u][i % 4u]; }
// WDT's low 3 bits: the weight kind (0 f32, 1 bf16, 2 f16, 3 q8, 4 q4); for q8/q4 (herd_core::quant), bit 3 is
// the scale type (0 f16, 1 bf16) and bits 8.. the group size. Quantized weights are read element by element
// (value from `wval`, times the scale of its group: `sval` on the scales' word).
const WK: u32 = WDT & 7u;
const QST: u32 = (WDT >> 3u) & 1u;
const QG: u32 = max(WDT >> 8u, 1u);
// Index of the u32 word holding weight element i.
fn widx(i: u32) -> u32 {
    if (WK == 0u) { return i; }
    if (WK == 3u) { return i >> 2u; }
    if (WK == 4u) { return i >> 3u; }
    return i >> 1u;
}
// Weight element i from its word (the integer, for the quantized kinds).
fn wval(word: u32, i: u32) -> f32 {
    if (WK == 0u) { return bitcast<f32>(word); }
    if (WK == 1u) { return bitcast<f32>(((word >> ((i & 1u) * 16u)) & 0xffffu) << 16u); }
    if (WK == 3u) { return f32(extractBits(bitcast<i32>(word), (i & 3u) * 8u, 8u)); }
    if (WK == 4u) { return f32(i32((word >> ((i & 7u) * 4u)) & 15u) - 8); }
    return unpack2x16float(word)[i & 1u];
}
// Scale si from the scales' word.
fn sval(word: u32, si: u32) -> f32 {
    let h = (word >> ((si & 1u) * 16u)) & 0xffffu;
    if (QST == 1u) { return bitcast<f32>(h << 16u); }
    return unpack2x16float(h).x;
}
// The scale index of element e of an input-major [.., kin, n] tensor (groups along kin).
fn qsec(e: u32, kin: u32, n: u32) -> u32 {
    let o = e / (kin * n);
    let rem = e % (kin * n);
    return (o * (kin / QG) + (rem / n) / QG) * n + rem % n;
}
// 16 bytes of weight words as 4 (f32) or 8 (16-bit formats) values.
fn unpack16(q: vec4<u32>) -> array<f32, 8> {
    var wv: array<f32, 8>;
    if (WDT == 0u) {
        wv[0] = bitcast<f32>(q.x); wv[1] = bitcast<f32>(q.y); wv[2] = bitcast<f32>(q.z); wv[3] = bitcast<f32>(q.w);
    } else if (WDT == 1u) {
        wv[0] = bitcast<f32>(q.x << 16u); wv[1] = bitcast<f32>(q.x & 0xffff0000u);
        wv[2] = bitcast<f32>(q.y << 16u); wv[3] = bitcast<f32>(q.y & 0xffff0000u);
        wv[4] = bitcast<f32>(q.z << 16u); wv[5] = bitcast<f32>(q.z & 0xffff0000u);
        wv[6] = bitcast<f32>(q.w << 16u); wv[7] = bitcast<f32>(q.w & 0xffff0000u);
    } else {
        let a = unpack2x16float(q.x); let b = unpack2x16float(q.y);
        let c = unpack2x16float(q.z); let d = unpack2x16float(q.w);
        wv[0] = a.x; wv[1] = a.y; wv[2] = b.x; wv[3] = b.y; wv[4] = c.x; wv[5] = c.y; wv[6] = d.x; wv[7] = d.y;
    }
    return wv;
}
// Workgroups are laid out as a 2-D grid (x at most 65535): their linear index.
fn group_index(wid: vec3<u32>, nwg: vec3<u32>) -> u32 { return wid.y * nwg.x + wid.x; }
const NEG_BIG: f32 = -3.0e38;
"#;
