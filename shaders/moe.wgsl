// Mixture of experts: the top-k sigmoid router, and the routed experts run only for the experts each row
// picked, with the router score scaling the expert *input*. gate_up is [E, D, 2F] (gate columns 0..F, up
// F..2F) and down [E, F, D], both input-major (x·W), in the pipeline's weight format.
// Bindings: xin (x, or the SwiGLU activations h), idx, score, w (weight words), outb (f32 out), idxw.
// Expert weights may be split into parts of whole experts (first..first+count) that each fit one binding;
// a dispatch handles the choices whose expert is in the bound part.

@group(0) @binding(1) var<storage, read> xin: array<f32>;
@group(0) @binding(2) var<storage, read> idx: array<u32>;
@group(0) @binding(3) var<storage, read> score: array<f32>;
@group(0) @binding(4) var<storage, read> w: array<u32>;
@group(0) @binding(5) var<storage, read_write> outb: array<f32>;
@group(0) @binding(6) var<storage, read_write> idxw: array<u32>;

fn wv(e: u32) -> f32 { return wval(w[widx(e)], e); }

// Per row of logits [rows, E]: the k largest (lower index first on ties), scores sigmoid(logit).
// params: rows, E, k. Writes idxw [rows, k] and outb [rows, k].
@compute @workgroup_size(64)
fn router_topk(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let r = group_index(wid, nwg) * 64u + li;
    let ne = pu(1u);
    let k = pu(2u);
    if (r >= pu(0u)) { return; }
    for (var c = 0u; c < k; c++) {
        var best = 0xffffffffu;
        var bv = 0.0;
        for (var j = 0u; j < ne; j++) {
            var taken = false;
            for (var p = 0u; p < c; p++) { if (idxw[r * k + p] == j) { taken = true; } }
            let l = xin[r * ne + j];
            if (!taken && (best == 0xffffffffu || l > bv)) { best = j; bv = l; }
        }
        idxw[r * k + c] = best;
        outb[r * k + c] = 1.0 / (1.0 + exp(-bv));
    }
}

// h[(r·k + c), f] = silu(u·G_e[:, f]) · (u·U_e[:, f]) with u = score · x[r]. params: rows, k, D, F, first, count.
@compute @workgroup_size(64)
fn moe_up(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let t = group_index(wid, nwg) * 64u + li;
    let k = pu(1u);
    let d = pu(2u);
    let f = pu(3u);
    if (t >= pu(0u) * k * f) { return; }
    let rc = t / f;
    let ff = t % f;
    let r = rc / k;
    let gex = idx[rc];
    if (gex < pu(4u) || gex - pu(4u) >= pu(5u)) { return; }
    let ex = gex - pu(4u);
    let s = score[rc];
    let base = ex * d * 2u * f + ff;
    var g = 0.0;
    var u = 0.0;
    for (var dd = 0u; dd < d; dd++) {
        let xv = s * xin[r * d + dd];
        let e1 = base + dd * 2u * f;
        g += xv * wv(e1);
        u += xv * wv(e1 + f);
    }
    outb[t] = g / (1.0 + exp(-g)) * u;
}

// out[r, o] += Σ_c Σ_f h[(r·k + c), f] · Dn_e[f, o] over the choices in the bound part. params: as moe_up.
@compute @workgroup_size(64)
fn moe_down(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let t = group_index(wid, nwg) * 64u + li;
    let k = pu(1u);
    let d = pu(2u);
    let f = pu(3u);
    if (t >= pu(0u) * d) { return; }
    let r = t / d;
    let o = t % d;
    var y = 0.0;
    for (var c = 0u; c < k; c++) {
        let gex = idx[r * k + c];
        if (gex >= pu(4u) && gex - pu(4u) < pu(5u)) {
            let ex = gex - pu(4u);
            let hb = (r * k + c) * f;
            let wb = ex * f * d + o;
            for (var ff = 0u; ff < f; ff++) { y += xin[hb + ff] * wv(wb + ff * d); }
        }
    }
    outb[t] = outb[t] + y;
}
