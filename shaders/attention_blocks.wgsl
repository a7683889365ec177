// The block kernels of the attention module (joined after attention.wgsl and kv_store.wgsl, whose
// parameter structs, bindings and KV-format readers they use): split-KV decode and tiled prefill.

// ---- decode: split-KV, query heads of one kv head together ---------------------------------------------
// attention_split: one workgroup of 64 per (row, kv head, split of SPLIT keys). The G = heads / kv heads query
// heads that share the kv head are handled together, so each key and value is read once for all of them.
// Scores of the split sit in shared memory; each of G groups of 8 invocations takes one head's max and sum.
// With one split the output is written directly; otherwise (max, sum, unnormalised output) go to `part`
// and attention_combine merges the splits.
// part: [rows, heads, splits, head_dim + 2].

const SPLIT: u32 = 256u;
const GMAX: u32 = 8u;

@group(0) @binding(9) var<storage, read_write> part: array<f32>;

var<workgroup> sq: array<f32, 2048>; // G · head_dim query values (G ≤ 8, head_dim ≤ 256)
var<workgroup> sc: array<f32, 2048>; // G · SPLIT scores, then probabilities
var<workgroup> gstat: array<f32, 64>;
var<workgroup> gm: array<f32, 8>;
var<workgroup> gl: array<f32, 8>;

@compute @workgroup_size(64)
fn attention_split(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let ap = load_AttentionParams();
    let g = group_index(wid, nwg);
    let heads = ap.heads;
    let kvh = ap.kv_heads;
    let d = ap.head_dim;
    let splits = ap.splits;
    let gq = ap.group;
    let split = g % splits;
    let kh = (g / splits) % kvh;
    let row = g / (splits * kvh);
    let mt = row_meta(li, row);
    if (mt[0] == 0u) { return; }
    let i = mt[6];
    kv_row = kvh * d;
    kv_off = kh * d;
    // This split's keys: j0 .. j0 + n - 1 (n may be 0 for a row with fewer keys than others).
    let j0 = mt[5] + split * SPLIT;
    var n = 0u;
    if (j0 <= i) { n = min(SPLIT, i + 1u - j0); }
    var tsc = 1.0;
    if (ap.temperature != 0u) { tsc = 1.0 + ap.attn_scale * log(1.0 + floor((f32(i) + 1.0) / ap.floor_scale)); }
    for (var e = li; e < gq * d; e += 64u) {
        let hh = kh * gq + e / d;
        sq[e] = q[(row * heads + hh) * d + e % d] * tsc;
    }
    workgroupBarrier();
    let scale = ap.scale;
    for (var jj = li; jj < n; jj += 64u) {
        var dot = array<f32, 8>(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0);
        for (var c = 0u; c < d; c++) {
            let kv = kval(j0 + jj, c);
            for (var h = 0u; h < gq; h++) { dot[h] += sq[h * d + c] * kv; }
        }
        for (var h = 0u; h < gq; h++) { sc[h * SPLIT + jj] = dot[h] * scale; }
    }
    workgroupBarrier();
    // Per head: max, then probabilities and their sum, by 8 invocations each.
    let h8 = li / 8u;
    let l8 = li % 8u;
    var mx = NEG_BIG;
    if (h8 < gq) { for (var jj = l8; jj < n; jj += 8u) { mx = max(mx, sc[h8 * SPLIT + jj]); } }
    gstat[li] = mx;
    workgroupBarrier();
    if (l8 == 0u && h8 < gq) {
        var m = NEG_BIG;
        for (var t = 0u; t < 8u; t++) { m = max(m, gstat[li + t]); }
        gm[h8] = m;
    }
    workgroupBarrier();
    var sm = 0.0;
    if (h8 < gq) {
        let m = gm[h8];
        for (var jj = l8; jj < n; jj += 8u) {
            let p = exp(sc[h8 * SPLIT + jj] - m);
            sc[h8 * SPLIT + jj] = p;
            sm += p;
        }
    }
    gstat[li] = sm;
    workgroupBarrier();
    if (l8 == 0u && h8 < gq) {
        var s = 0.0;
        for (var t = 0u; t < 8u; t++) { s += gstat[li + t]; }
        gl[h8] = s;
    }
    workgroupBarrier();
    // Output channels c = li + 64·t; every head of the group at once.
    var acc: array<array<f32, 4>, 8>;
    for (var h = 0u; h < GMAX; h++) { for (var t = 0u; t < 4u; t++) { acc[h][t] = 0.0; } }
    for (var jj = 0u; jj < n; jj++) {
        for (var t = 0u; t < 4u; t++) {
            let c = li + t * 64u;
            if (c < d) {
                let vv = vval(j0 + jj, c);
                for (var h = 0u; h < gq; h++) { acc[h][t] += sc[h * SPLIT + jj] * vv; }
            }
        }
    }
    for (var h = 0u; h < gq; h++) {
        let hh = kh * gq + h;
        for (var t = 0u; t < 4u; t++) {
            let c = li + t * 64u;
            if (c < d) {
                if (splits == 1u) {
                    out[(row * heads + hh) * d + c] = acc[h][t] / gl[h];
                } else {
                    part[((row * heads + hh) * splits + split) * (d + 2u) + c] = acc[h][t];
                }
            }
        }
        if (splits > 1u && li == 0u) {
            let pb = ((row * heads + hh) * splits + split) * (d + 2u) + d;
            part[pb] = gm[h];
            part[pb + 1u] = gl[h];
        }
    }
}

// Merges the splits of attention_split: one workgroup of 64 per (row, head).
@compute @workgroup_size(64)
fn attention_combine(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let ap = load_AttentionParams();
    let g = group_index(wid, nwg);
    let heads = ap.heads;
    let d = ap.head_dim;
    let splits = ap.splits;
    let row = g / heads;
    if (row >= ap.rows || row_seq[row] == 0xffffffffu) { return; }
    let base = g * splits * (d + 2u);
    var m = NEG_BIG;
    for (var s = 0u; s < splits; s++) {
        let pb = base + s * (d + 2u) + d;
        if (part[pb + 1u] > 0.0) { m = max(m, part[pb]); }
    }
    var l = 0.0;
    for (var s = 0u; s < splits; s++) {
        let pb = base + s * (d + 2u) + d;
        if (part[pb + 1u] > 0.0) { l += exp(part[pb] - m) * part[pb + 1u]; }
    }
    for (var c = li; c < d; c += 64u) {
        var o = 0.0;
        for (var s = 0u; s < splits; s++) {
            let pb = base + s * (d + 2u);
            if (part[pb + d + 1u] > 0.0) { o += exp(part[pb + d] - m) * part[pb + c]; }
        }
        out[g * d + c] = o / l;
    }
}

// ---- prefill: tiles of queries and keys ---------------------------------------------------------------
// attention_tiled: one workgroup of 128 per (block of up to BR query rows of one sequence, head). Keys and
// values come through shared memory a tile of BC at a time and serve every query of the block; online
// softmax per row. For head_dim ≤ 128. blocks: (sequence, first row) per block.

const BR: u32 = 16u;
const BC: u32 = 32u;

@group(0) @binding(10) var<storage, read> blocks: array<u32>;

var<workgroup> tq: array<f32, 2048>; // BR · head_dim
var<workgroup> tkv: array<f32, 4096>; // BC · head_dim: keys, then values
var<workgroup> ts: array<f32, 512>; // BR · BC
var<workgroup> trow_m: array<f32, 16>;
var<workgroup> trow_l: array<f32, 16>;
var<workgroup> trow_c: array<f32, 16>;

@compute @workgroup_size(128)
fn attention_tiled(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let ap = load_AttentionParams();
    let g = group_index(wid, nwg);
    let heads = ap.heads;
    let kvh = ap.kv_heads;
    let d = ap.head_dim;
    let chunk = ap.chunk;
    let head = g % heads;
    let blk = g / heads;
    let si = blocks[blk * 2u];
    let r0 = blocks[blk * 2u + 1u];
    let qs0 = seqs[si * 5u];
    let qn = seqs[si * 5u + 1u];
    let p0 = seqs[si * 5u + 2u];
    q_start = qs0;
    pos0 = p0;
    page_base = seqs[si * 5u + 3u];
    slot_cap = seqs[si * 5u + 4u];
    page_size = ap.page_size;
    attention_format();
    kv_row = kvh * d;
    kv_off = (head / (heads / kvh)) * d;
    let nr = min(BR, qs0 + qn - r0);
    // Absolute positions of the block's first and last query, and the first key any of them sees.
    let i_first = p0 + r0 - qs0;
    var i_last = i_first + nr - 1u;
    let bidir = ap.bidirectional != 0u;
    if (bidir) { i_last = p0 + qn - 1u; } // every query sees the whole sequence
    var k_lo = 0u;
    if (chunk > 0u) { k_lo = (i_first / chunk) * chunk; }
    let scale = ap.scale;
    for (var e = li; e < BR * d; e += 128u) {
        let r = e / d;
        var v = 0.0;
        if (r < nr) {
            let i = i_first + r;
            var tsc = 1.0;
            if (ap.temperature != 0u) { tsc = 1.0 + ap.attn_scale * log(1.0 + floor((f32(i) + 1.0) / ap.floor_scale)); }
            v = q[((r0 + r) * heads + head) * d + e % d] * tsc * scale;
        }
        tq[e] = v;
    }
    if (li < BR) { trow_m[li] = NEG_BIG; trow_l[li] = 0.0; }
    let r = li / 8u; // the row this invocation scores and accumulates
    let l8 = li % 8u;
    var acc: array<f32, 16>;
    for (var t = 0u; t < 16u; t++) { acc[t] = 0.0; }
    var i_r = i_first + r;
    if (bidir) { i_r = i_last; }
    var lo_r = 0u;
    if (chunk > 0u) { lo_r = (i_r / chunk) * chunk; }
    workgroupBarrier();
    for (var t0 = k_lo; t0 <= i_last; t0 += BC) {
        let nk = min(BC, i_last + 1u - t0);
        for (var e = li; e < BC * d; e += 128u) {
            let jj = e / d;
            var v = 0.0;
            if (jj < nk) { v = kval(t0 + jj, e % d); }
            tkv[e] = v;
        }
        workgroupBarrier();
        // Scores: row r, keys l8 + 8·u.
        for (var u = 0u; u < BC / 8u; u++) {
            let jj = l8 + 8u * u;
            let j = t0 + jj;
            var s = NEG_BIG;
            if (r < nr && jj < nk && j >= lo_r && j <= i_r) {
                var dot = 0.0;
                for (var c = 0u; c < d; c++) { dot += tq[r * d + c] * tkv[jj * d + c]; }
                s = dot;
            }
            ts[r * BC + jj] = s;
        }
        workgroupBarrier();
        for (var e = li; e < BC * d; e += 128u) {
            let jj = e / d;
            var v = 0.0;
            if (jj < nk) { v = vval(t0 + jj, e % d); }
            tkv[e] = v;
        }
        if (l8 == 0u) {
            var m = trow_m[r];
            for (var jj = 0u; jj < BC; jj++) { m = max(m, ts[r * BC + jj]); }
            let corr = exp(trow_m[r] - m);
            var s = 0.0;
            for (var jj = 0u; jj < BC; jj++) {
                var p = 0.0;
                if (ts[r * BC + jj] > NEG_BIG) { p = exp(ts[r * BC + jj] - m); }
                ts[r * BC + jj] = p;
                s += p;
            }
            trow_l[r] = trow_l[r] * corr + s;
            trow_m[r] = m;
            trow_c[r] = corr;
        }
        workgroupBarrier();
        let corr = trow_c[r];
        for (var t = 0u; t < 16u; t++) {
            let c = l8 + 8u * t;
            if (c < d) {
                var a = acc[t] * corr;
                for (var jj = 0u; jj < nk; jj++) { a += ts[r * BC + jj] * tkv[jj * d + c]; }
                acc[t] = a;
            }
        }
        workgroupBarrier();
    }
    if (r < nr) {
        for (var t = 0u; t < 16u; t++) {
            let c = l8 + 8u * t;
            if (c < d) { out[((r0 + r) * heads + head) * d + c] = acc[t] / trow_l[r]; }
        }
    }
}
