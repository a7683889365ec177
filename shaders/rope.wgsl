// Interleaved-pair RoPE, in place: pair (2j, 2j+1) of each head of row r turns by positions[r] · inv_freq[j].
// The angle is formed in f32 as transformers does, then reduced to [-π, π] with a two-part 2π so that
// GPU sin/cos (accurate only near zero) see a small argument. params: rows, heads, head_dim.

@group(0) @binding(1) var<storage, read_write> x: array<f32>;
@group(0) @binding(2) var<storage, read> positions: array<u32>;
@group(0) @binding(3) var<storage, read> inv_freq: array<f32>;

const TWO_PI_HI: f32 = 6.28125;
const TWO_PI_LO: f32 = 0.0019353071795864769;
const INV_TWO_PI: f32 = 0.15915494309189535;

@compute @workgroup_size(256)
fn rope(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let i = group_index(wid, nwg) * 256u + li;
    let half_d = pu(2u) / 2u;
    let per_row = pu(1u) * half_d;
    if (i >= pu(0u) * per_row) { return; }
    let r = i / per_row;
    let j = i % half_d;
    let a = f32(positions[r]) * inv_freq[j];
    let n = round(a * INV_TWO_PI);
    let red = (a - n * TWO_PI_HI) - n * TWO_PI_LO;
    let c = cos(red);
    let s = sin(red);
    let e = 2u * i; // pair index i covers elements 2i, 2i+1 (heads are contiguous)
    let x0 = x[e];
    let x1 = x[e + 1u];
    x[e] = x0 * c - x1 * s;
    x[e + 1u] = x0 * s + x1 * c;
}
