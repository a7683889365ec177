// Element-wise and row ops: residual add, SwiGLU's silu·up, row gather, embedding lookup.
// Bindings (shared by every entry point): a read-write f32, b read-only f32, idx u32, w weight words.

@group(0) @binding(1) var<storage, read_write> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read> idx: array<u32>;
@group(0) @binding(4) var<storage, read> w: array<u32>;

// a[i] += b[i]; params: n
@compute @workgroup_size(256)
fn add(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let i = group_index(wid, nwg) * 256u + li;
    if (i < pu(0u)) { a[i] = a[i] + b[i]; }
}

// a[i] = silu(a[i]) * b[i]; params: n
@compute @workgroup_size(256)
fn silu_mul(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let i = group_index(wid, nwg) * 256u + li;
    if (i < pu(0u)) {
        let g = a[i];
        a[i] = g / (1.0 + exp(-g)) * b[i];
    }
}

// a[r, c] = b[idx[r], c]; params: n, dim, rows of b
@compute @workgroup_size(256)
fn gather_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let i = group_index(wid, nwg) * 256u + li;
    let dim = pu(1u);
    if (i < pu(0u) * dim) {
        let r = idx[i / dim];
        if (r < pu(2u)) { a[i] = b[r * dim + i % dim]; } else { a[i] = 0.0; }
    }
}

// Scales of a quantized table (any buffer for the float formats).
@group(0) @binding(12) var<storage, read> wsc: array<u32>;

// a[r, c] = w[idx[r], c] (the embedding table in its weight format) for ids in the bound part of the table,
// rows first..first+count. params: n, dim, first, count
@compute @workgroup_size(256)
fn embed(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let i = group_index(wid, nwg) * 256u + li;
    let dim = pu(1u);
    if (i < pu(0u) * dim) {
        let id = idx[i / dim];
        if (id >= pu(2u) && id - pu(2u) < pu(3u)) {
            let e = (id - pu(2u)) * dim + i % dim;
            var v = wval(w[widx(e)], e);
            if (WK >= 3u) { let si = e / QG; v = v * sval(wsc[si >> 1u], si); }
            a[i] = v;
        }
    }
}
