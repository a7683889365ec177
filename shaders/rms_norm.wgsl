// RMS norm, one workgroup per row: y = x · rsqrt(mean(x²) + eps) (· w), f32 throughout; and the residual
// add fused with it (acc += x, then out = norm(acc) · w).
// Bindings: x, out, w (weight words; a dummy without weight), acc (add_rms_norm only).

struct RmsNormParams { rows: u32, dim: u32, eps: f32, has_weight: u32 }

@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
@group(0) @binding(3) var<storage, read> w: array<u32>;

@group(0) @binding(4) var<storage, read_write> acc: array<f32>;

fn weight(i: u32) -> f32 {
    if (load_RmsNormParams().has_weight == 0u) { return 1.0; }
    return wval(w[widx(i)], i);
}

@compute @workgroup_size(256)
fn rms_norm(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let p = load_RmsNormParams();
    let row = group_index(wid, nwg);
    let dim = p.dim;
    let base = row * dim;
    var ss = 0.0;
    for (var i = li; i < dim; i += 256u) { let v = x[base + i]; ss += v * v; }
    let r = 1.0 / sqrt(wg_sum256(li, ss) / f32(dim) + p.eps);
    for (var i = li; i < dim; i += 256u) { out[base + i] = x[base + i] * r * weight(i); }
}

@compute @workgroup_size(256)
fn rms_norm_inplace(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let p = load_RmsNormParams();
    let row = group_index(wid, nwg);
    let dim = p.dim;
    let base = row * dim;
    var ss = 0.0;
    for (var i = li; i < dim; i += 256u) { let v = out[base + i]; ss += v * v; }
    let r = 1.0 / sqrt(wg_sum256(li, ss) / f32(dim) + p.eps);
    for (var i = li; i < dim; i += 256u) { out[base + i] = out[base + i] * r * weight(i); }
}

// acc[row] += x[row]; out[row] = rms_norm(acc[row]) · w. Each invocation re-reads only the elements it wrote.
@compute @workgroup_size(256)
fn add_rms_norm(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let p = load_RmsNormParams();
    let row = group_index(wid, nwg);
    let dim = p.dim;
    let base = row * dim;
    var ss = 0.0;
    for (var i = li; i < dim; i += 256u) {
        let v = acc[base + i] + x[base + i];
        acc[base + i] = v;
        ss += v * v;
    }
    let r = 1.0 / sqrt(wg_sum256(li, ss) / f32(dim) + p.eps);
    for (var i = li; i < dim; i += 256u) { out[base + i] = acc[base + i] * r * weight(i); }
}
