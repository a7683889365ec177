// The vision tower's row ops. layer_norm: nn.LayerNorm, one workgroup per row, two passes in f32 (the mean,
// then the mean square deviation from it): y = (x − mean) · rsqrt(var + eps) · w + b. Bindings: x, out, w,
// b (w and b in one weight format).
// bias_act: in place, x[r, c] += b[c] (when has_bias), then the activation (0 none, 1 exact GELU).

struct LayerNormParams { rows: u32, dim: u32, eps: f32 }
// n: elements.
struct BiasActParams { n: u32, dim: u32, has_bias: u32, act: u32 }

@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
@group(0) @binding(3) var<storage, read> w: array<u32>;
@group(0) @binding(4) var<storage, read> b: array<u32>;

fn lnorm_w(i: u32) -> f32 { return wval(w[widx(i)], i); }
fn lnorm_b(i: u32) -> f32 { return wval(b[widx(i)], i); }

@compute @workgroup_size(256)
fn layer_norm(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let p = load_LayerNormParams();
    let row = group_index(wid, nwg);
    let dim = p.dim;
    let base = row * dim;
    var s = 0.0;
    for (var i = li; i < dim; i += 256u) { s += x[base + i]; }
    let mean = wg_sum256(li, s) / f32(dim);
    var ss = 0.0;
    for (var i = li; i < dim; i += 256u) { let d = x[base + i] - mean; ss += d * d; }
    let r = 1.0 / sqrt(wg_sum256(li, ss) / f32(dim) + p.eps);
    for (var i = li; i < dim; i += 256u) { out[base + i] = (x[base + i] - mean) * r * lnorm_w(i) + lnorm_b(i); }
}

@compute @workgroup_size(256)
fn layer_norm_inplace(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let p = load_LayerNormParams();
    let row = group_index(wid, nwg);
    let dim = p.dim;
    let base = row * dim;
    var s = 0.0;
    for (var i = li; i < dim; i += 256u) { s += out[base + i]; }
    let mean = wg_sum256(li, s) / f32(dim);
    var ss = 0.0;
    for (var i = li; i < dim; i += 256u) { let d = out[base + i] - mean; ss += d * d; }
    let r = 1.0 / sqrt(wg_sum256(li, ss) / f32(dim) + p.eps);
    for (var i = li; i < dim; i += 256u) { out[base + i] = (out[base + i] - mean) * r * lnorm_w(i) + lnorm_b(i); }
}

// erfc(z) for z ≥ 0 (Numerical Recipes' erfcc: fractional error below 1.2e-7).
fn erfc_pos(z: f32) -> f32 {
    let t = 1.0 / (1.0 + 0.5 * z);
    let p = -1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 + t * (-0.18628806 + t * (0.27886807
        + t * (-1.13520398 + t * (1.48851587 + t * (-0.82215223 + t * 0.17087277))))))));
    return t * exp(p - z * z);
}

// x · (1 + erf(x/√2)) / 2, written through erfc so that the negative tail keeps its relative precision.
fn gelu(v: f32) -> f32 {
    let e = erfc_pos(abs(v) * 0.70710678118654752);
    if (v >= 0.0) { return v * (1.0 - 0.5 * e); }
    return 0.5 * v * e;
}

@compute @workgroup_size(256)
fn bias_act(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let p = load_BiasActParams();
    let i = group_index(wid, nwg) * 256u + li;
    if (i >= p.n) { return; }
    var v = out[i];
    if (p.has_bias != 0u) { v += lnorm_b(i % p.dim); }
    if (p.act == 1u) { v = gelu(v); }
    out[i] = v;
}
