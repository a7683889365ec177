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

// Scales of quantized expert tensors (any buffer for the float formats).
@group(0) @binding(12) var<storage, read> wsc: array<u32>;

// Element e of the bound part of an input-major [experts, kin, n] weight.
fn wv(e: u32, kin: u32, n: u32) -> f32 {
    let v = wval(w[widx(e)], e);
    if (WK < 3u) { return v; }
    let si = qsec(e, kin, n);
    return v * sval(wsc[si >> 1u], si);
}

// Per row of logits [rows, E]: the k largest (lower index first on ties), scores sigmoid(logit).
// Writes idxw [rows, k] and outb [rows, k].
struct RouterParams { rows: u32, experts: u32, k: u32 }
@compute @workgroup_size(64)
fn router_topk(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let prm = load_RouterParams();
    let r = group_index(wid, nwg) * 64u + li;
    let ne = prm.experts;
    let k = prm.k;
    if (r >= prm.rows) { return; }
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

// h[(r·k + c), f] = silu(u·G_e[:, f]) · (u·U_e[:, f]) with u = score · x[r].
// Parameters of moe_up and moe_down: d = D, f = F; the bound part holds experts first..first+count.
struct MoeParams { rows: u32, k: u32, d: u32, f: u32, first: u32, count: u32 }
@compute @workgroup_size(64)
fn moe_up(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let p = load_MoeParams();
    let t = group_index(wid, nwg) * 64u + li;
    let k = p.k;
    let d = p.d;
    let f = p.f;
    if (t >= p.rows * k * f) { return; }
    let rc = t / f;
    let ff = t % f;
    let r = rc / k;
    let gex = idx[rc];
    if (gex < p.first || gex - p.first >= p.count) { return; }
    let ex = gex - p.first;
    let s = score[rc];
    let base = ex * d * 2u * f + ff;
    var g = 0.0;
    var u = 0.0;
    for (var dd = 0u; dd < d; dd++) {
        let xv = s * xin[r * d + dd];
        let e1 = base + dd * 2u * f;
        g += xv * wv(e1, d, 2u * f);
        u += xv * wv(e1 + f, d, 2u * f);
    }
    outb[t] = g / (1.0 + exp(-g)) * u;
}

// out[r, o] += Σ_c Σ_f h[(r·k + c), f] · Dn_e[f, o] over the choices in the bound part.
@compute @workgroup_size(64)
fn moe_down(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let p = load_MoeParams();
    let t = group_index(wid, nwg) * 64u + li;
    let k = p.k;
    let d = p.d;
    let f = p.f;
    if (t >= p.rows * d) { return; }
    let r = t / d;
    let o = t % d;
    var y = 0.0;
    for (var c = 0u; c < k; c++) {
        let gex = idx[r * k + c];
        if (gex >= p.first && gex - p.first < p.count) {
            let ex = gex - p.first;
            let hb = (r * k + c) * f;
            let wb = ex * f * d + o;
            for (var ff = 0u; ff < f; ff++) { y += xin[hb + ff] * wv(wb + ff * d, f, d); }
        }
    }
    outb[t] = outb[t] + y;
}

// ---- grouped experts ------------------------------------------------------------------------------------
// For expert matrices whose rows are a multiple of 16 bytes. moe_route sorts the (row, choice) pairs by
// expert and cuts each expert's list into tiles of up to 8; moe_gemv multiplies a tile's inputs by a slice
// of the expert's matrix, so each weight is read once per tile (once per step when decoding), with the
// input dimension split into `splits` chunks across workgroups; moe_act sums the gate/up partials and
// applies SwiGLU; moe_sum adds the down partials into the output.
//
// route (u32): [0] tile count, [1 .. 1 + 3·tmax) tiles (expert, first list entry, entries), then the
// list of (row·k + choice) ids by expert.
struct MoeRouteParams { rows: u32, k: u32, experts: u32, tmax: u32 }

@group(0) @binding(7) var<storage, read_write> route: array<u32>;
@group(0) @binding(8) var<storage, read> route_r: array<u32>;
@group(0) @binding(9) var<storage, read> w4: array<vec4<u32>>;

var<workgroup> ecount: array<atomic<u32>, 256>;
var<workgroup> ecursor: array<atomic<u32>, 256>;

@compute @workgroup_size(256)
fn moe_route(@builtin(local_invocation_index) li: u32) {
    let p = load_MoeRouteParams();
    let n = p.rows * p.k;
    let ne = p.experts;
    let tmax = p.tmax;
    let list0 = 1u + 3u * tmax;
    atomicStore(&ecount[li], 0u);
    workgroupBarrier();
    for (var rc = li; rc < n; rc += 256u) {
        let e = idx[rc];
        if (e < ne) { atomicAdd(&ecount[e], 1u); }
    }
    workgroupBarrier();
    if (li == 0u) {
        var off = 0u;
        var t = 0u;
        for (var e = 0u; e < ne; e++) {
            let c = atomicLoad(&ecount[e]);
            atomicStore(&ecursor[e], off);
            for (var s = 0u; s < c; s += 8u) {
                route[1u + 3u * t] = e;
                route[2u + 3u * t] = off + s;
                route[3u + 3u * t] = min(8u, c - s);
                t += 1u;
            }
            off += c;
        }
        route[0] = t;
    }
    workgroupBarrier();
    for (var rc = li; rc < n; rc += 256u) {
        let e = idx[rc];
        if (e < ne) { route[list0 + atomicAdd(&ecursor[e], 1u)] = rc; }
    }
}

// moe_gemv: partial[s, rc, c] = Σ_{kk in chunk s} in_rc[kk] · W_e[kk, c] for each (row, choice) rc of a
// tile, where in_rc = score · x[row] (mode 0, the gate/up pass) or h[rc] (mode 1, the down pass). One
// workgroup of 64 per (16-byte column piece block, chunk, tile); each invocation owns one 16-byte piece
// of columns.
// kd: the input dimension (K); nc: columns (N); the bound part holds experts first..first+count.
struct MoeGemvParams {
    rows: u32, k: u32, experts: u32, kd: u32, nc: u32, chunk: u32, splits: u32, first: u32, count: u32, mode: u32,
    tmax: u32,
}

var<workgroup> xs: array<array<f32, 128>, 8>;

fn wpiece(v: u32) -> array<f32, 8> { return unpack16(w4[v]); }

@compute @workgroup_size(64)
fn moe_gemv(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let p = load_MoeGemvParams();
    let g = group_index(wid, nwg);
    let k = p.k;
    let kd = p.kd;
    let nc = p.nc;
    let chunk = p.chunk;
    let splits = p.splits;
    let mode = p.mode;
    var per = 8u;
    if (WK == 0u) { per = 4u; }
    let npieces = nc / per;
    let pblocks = (npieces + 63u) / 64u;
    let pb = g % pblocks;
    let s = (g / pblocks) % splits;
    let t = g / (pblocks * splits);
    if (t >= route_r[0]) { return; }
    let ex = route_r[1u + 3u * t];
    if (ex < p.first || ex - p.first >= p.count) { return; }
    let el = ex - p.first;
    let first = route_r[2u + 3u * t];
    let n = route_r[3u + 3u * t];
    let list0 = 1u + 3u * p.tmax;
    let k0 = s * chunk;
    let k1 = min(kd, k0 + chunk);
    let piece = pb * 64u + li;
    var acc: array<array<f32, 8>, 8>;
    for (var j = 0u; j < 8u; j++) { for (var e = 0u; e < 8u; e++) { acc[j][e] = 0.0; } }
    // Loops over the tile's 8 entries have constant bounds (guarded by j < n) so that acc stays in registers.
    for (var kb = k0; kb < k1; kb += 128u) {
        let kn = min(128u, k1 - kb);
        workgroupBarrier();
        for (var e = li; e < 8u * 128u; e += 64u) {
            let j = e / 128u;
            let kk = e % 128u;
            var v = 0.0;
            if (j < n && kk < kn) {
                let rc = route_r[list0 + first + j];
                if (mode == 0u) { v = score[rc] * xin[(rc / k) * kd + kb + kk]; } else { v = xin[rc * kd + kb + kk]; }
            }
            xs[j][kk] = v;
        }
        workgroupBarrier();
        if (piece < npieces) {
            let vbase = (el * kd + kb) * npieces + piece;
            for (var kk = 0u; kk < kn; kk++) {
                let wv = wpiece(vbase + kk * npieces);
                for (var j = 0u; j < 8u; j++) {
                    if (j < n) {
                        let xv = xs[j][kk];
                        for (var e = 0u; e < 8u; e++) { acc[j][e] += xv * wv[e]; }
                    }
                }
            }
        }
    }
    if (piece < npieces) {
        for (var j = 0u; j < 8u; j++) {
            if (j < n) {
                let rc = route_r[list0 + first + j];
                let ob = (s * p.rows * k + rc) * nc + piece * per;
                for (var e = 0u; e < per; e++) { outb[ob + e] = acc[j][e]; }
            }
        }
    }
}

// h[rc, f] = silu(Σ_s P[s, rc, f]) · Σ_s P[s, rc, F + f]. Bindings: xin = P, outb = h.
struct MoeActParams { rows: u32, k: u32, f: u32, splits: u32 }
@compute @workgroup_size(256)
fn moe_act(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let p = load_MoeActParams();
    let t = group_index(wid, nwg) * 256u + li;
    let nrc = p.rows * p.k;
    let f = p.f;
    if (t >= nrc * f) { return; }
    let rc = t / f;
    let ff = t % f;
    var gs = 0.0;
    var us = 0.0;
    for (var s = 0u; s < p.splits; s++) {
        let b = (s * nrc + rc) * 2u * f + ff;
        gs += xin[b];
        us += xin[b + f];
    }
    outb[t] = gs / (1.0 + exp(-gs)) * us;
}

// out[r, o] += Σ_c Σ_s Q[s, r·k + c, o] over the choices whose expert is valid. Bindings: xin = Q, outb = out.
struct MoeSumParams { rows: u32, k: u32, d: u32, splits: u32, experts: u32 }
@compute @workgroup_size(256)
fn moe_sum(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let p = load_MoeSumParams();
    let t = group_index(wid, nwg) * 256u + li;
    let k = p.k;
    let d = p.d;
    let nrc = p.rows * k;
    if (t >= p.rows * d) { return; }
    let r = t / d;
    let o = t % d;
    var y = 0.0;
    for (var c = 0u; c < k; c++) {
        let rc = r * k + c;
        if (idx[rc] < p.experts) {
            for (var s = 0u; s < p.splits; s++) { y += xin[(s * nrc + rc) * d + o]; }
        }
    }
    outb[t] = outb[t] + y;
}
