// Element-wise and row ops: residual add, SwiGLU's silu·up, row gather, embedding lookup.
// Bindings (shared by every entry point): a read-write f32, b read-only f32, idx u32, w weight words.

@group(0) @binding(1) var<storage, read_write> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read> idx: array<u32>;
@group(0) @binding(4) var<storage, read> w: array<u32>;

// Parameters of add and silu_mul: the element count.
struct EltwiseParams { n: u32 }
// Parameters of gather_rows: rows to gather, row length, rows of b.
struct GatherParams { n: u32, dim: u32, src_rows: u32 }
// Parameters of embed: ids, row length, and the rows of the table in the bound part (first..first+count).
struct EmbedParams { n: u32, dim: u32, first: u32, count: u32 }

// a[i] += b[i]
@compute @workgroup_size(256)
fn add(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let i = group_index(wid, nwg) * 256u + li;
    if (i < load_EltwiseParams().n) { a[i] = a[i] + b[i]; }
}

// a[i] = silu(a[i]) * b[i]
@compute @workgroup_size(256)
fn silu_mul(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let i = group_index(wid, nwg) * 256u + li;
    if (i < load_EltwiseParams().n) {
        let g = a[i];
        a[i] = g / (1.0 + exp(-g)) * b[i];
    }
}

// a[r, c] = b[idx[r], c] (0 for an index past b's rows)
@compute @workgroup_size(256)
fn gather_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let i = group_index(wid, nwg) * 256u + li;
    let p = load_GatherParams();
    let dim = p.dim;
    if (i < p.n * dim) {
        let r = idx[i / dim];
        if (r < p.src_rows) { a[i] = b[r * dim + i % dim]; } else { a[i] = 0.0; }
    }
}

// Scales of a quantized table (any buffer for the float formats).
@group(0) @binding(12) var<storage, read> wsc: array<u32>;

// a[r, c] = w[idx[r], c] (the embedding table in its weight format) for ids in the bound part of the table,
// rows first..first+count.
@compute @workgroup_size(256)
fn embed(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let i = group_index(wid, nwg) * 256u + li;
    let p = load_EmbedParams();
    let dim = p.dim;
    if (i < p.n * dim) {
        let id = idx[i / dim];
        if (id >= p.first && id - p.first < p.count) {
            let e = (id - p.first) * dim + i % dim;
            var v = wval(w[widx(e)], e);
            if (WK >= 3u) { let si = e / QG; v = v * sval(wsc[si >> 1u], si); }
            a[i] = v;
        }
    }
}
