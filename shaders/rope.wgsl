// Interleaved-pair RoPE, in place: pair (2j, 2j+1) of each head of row r turns by positions[r] · inv_freq[j].
// The angle is formed in f32 as transformers does, then reduced to [-π, π] with a two-part 2π so that
// GPU sin/cos (accurate only near zero) see a small argument. rope_norm also applies Llama 4's weightless QK
// norm to each rotated head vector.

// eps: rope_norm's (rope ignores it).
struct RopeParams { rows: u32, heads: u32, head_dim: u32, eps: f32 }

@group(0) @binding(1) var<storage, read_write> x: array<f32>;
@group(0) @binding(2) var<storage, read> positions: array<u32>;
@group(0) @binding(3) var<storage, read> inv_freq: array<f32>;

const TWO_PI_HI: f32 = 6.28125;
const TWO_PI_LO: f32 = 0.0019353071795864769;
const INV_TWO_PI: f32 = 0.15915494309189535;

// The pair (2j, 2j+1) of row r, rotated.
fn rotate(r: u32, j: u32, x0: f32, x1: f32) -> vec2<f32> {
    let a = f32(positions[r]) * inv_freq[j];
    let n = round(a * INV_TWO_PI);
    let red = (a - n * TWO_PI_HI) - n * TWO_PI_LO;
    let c = cos(red);
    let s = sin(red);
    return vec2<f32>(x0 * c - x1 * s, x0 * s + x1 * c);
}

@compute @workgroup_size(256)
fn rope(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let p = load_RopeParams();
    let i = group_index(wid, nwg) * 256u + li;
    let half_d = p.head_dim / 2u;
    let per_row = p.heads * half_d;
    if (i >= p.rows * per_row) { return; }
    let e = 2u * i; // pair index i covers elements 2i, 2i+1 (heads are contiguous)
    let y = rotate(i / per_row, i % half_d, x[e], x[e + 1u]);
    x[e] = y.x;
    x[e + 1u] = y.y;
}

var<workgroup> ss_part: array<f32, 64>;

// One workgroup of 64 per (row, head): rotate the head's pairs, then scale it by rsqrt(mean(x²) + eps).
@compute @workgroup_size(64)
fn rope_norm(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let p = load_RopeParams();
    let g = group_index(wid, nwg);
    let d = p.head_dim;
    if (g >= p.rows * p.heads) { return; }
    let r = g / p.heads;
    let base = g * d;
    var ss = 0.0;
    for (var j = li; j < d / 2u; j += 64u) {
        let y = rotate(r, j, x[base + 2u * j], x[base + 2u * j + 1u]);
        x[base + 2u * j] = y.x;
        x[base + 2u * j + 1u] = y.y;
        ss += y.x * y.x + y.y * y.y;
    }
    ss_part[li] = ss;
    for (var s = 32u; s > 0u; s = s >> 1u) {
        workgroupBarrier();
        if (li < s) { ss_part[li] = ss_part[li] + ss_part[li + s]; }
    }
    workgroupBarrier();
    let scale = 1.0 / sqrt(ss_part[0] / f32(d) + p.eps);
    // Each invocation rescales the pairs it rotated.
    for (var j = li; j < d / 2u; j += 64u) {
        x[base + 2u * j] = x[base + 2u * j] * scale;
        x[base + 2u * j + 1u] = x[base + 2u * j + 1u] * scale;
    }
}
