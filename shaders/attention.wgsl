// Attention for a batch of sequences, and the KV-cache store.
// attention: one workgroup of 64 per (query row, head). Keys are visited in blocks of 64 (one per
// invocation) with an online softmax in f32; cached keys (positions < pos0) come from the sequence's ring
// region, new ones from k_new/v_new. Masks: causal, plus ⌊j/C⌋ = ⌊i/C⌋ when chunk C > 0. NoPE temperature
// tuning scales the query by 1 + attn_scale · ln(1 + ⌊(i+1)/floor_scale⌋).
// params: heads, kv heads, head_dim (≤ 256), scale, chunk, temperature?, floor_scale, attn_scale, rows.
// seqs: 5 words per sequence (q_start, q_len, pos0, slot_base, slot_cap); row_seq: row → sequence.

@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> k_new: array<f32>;
@group(0) @binding(3) var<storage, read> v_new: array<f32>;
@group(0) @binding(4) var<storage, read_write> k_cache: array<f32>;
@group(0) @binding(5) var<storage, read_write> v_cache: array<f32>;
@group(0) @binding(6) var<storage, read> seqs: array<u32>;
@group(0) @binding(7) var<storage, read> row_seq: array<u32>;
@group(0) @binding(8) var<storage, read_write> out: array<f32>;

var<workgroup> wmeta: array<u32, 8>;
var<workgroup> qs: array<f32, 256>;
var<workgroup> ps: array<f32, 64>;
var<workgroup> red: array<f32, 64>;

var<private> q_start: u32;
var<private> pos0: u32;
var<private> slot_base: u32;
var<private> slot_cap: u32;
var<private> kv_off: u32; // kv head · head_dim
var<private> kv_row: u32; // kv heads · head_dim

fn kval(j: u32, c: u32) -> f32 {
    if (j < pos0) { return k_cache[(slot_base + j % slot_cap) * kv_row + kv_off + c]; }
    return k_new[(q_start + j - pos0) * kv_row + kv_off + c];
}
fn vval(j: u32, c: u32) -> f32 {
    if (j < pos0) { return v_cache[(slot_base + j % slot_cap) * kv_row + kv_off + c]; }
    return v_new[(q_start + j - pos0) * kv_row + kv_off + c];
}

fn reduce_max(li: u32, v: f32) -> f32 {
    red[li] = v;
    for (var s = 32u; s > 0u; s = s >> 1u) {
        workgroupBarrier();
        if (li < s) { red[li] = max(red[li], red[li + s]); }
    }
    workgroupBarrier();
    let r = red[0];
    workgroupBarrier();
    return r;
}
fn reduce_sum(li: u32, v: f32) -> f32 {
    red[li] = v;
    for (var s = 32u; s > 0u; s = s >> 1u) {
        workgroupBarrier();
        if (li < s) { red[li] = red[li] + red[li + s]; }
    }
    workgroupBarrier();
    let r = red[0];
    workgroupBarrier();
    return r;
}

@compute @workgroup_size(64)
fn attention(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let g = group_index(wid, nwg);
    let heads = pu(0u);
    let kvh = pu(1u);
    let d = pu(2u);
    let row = g / heads;
    let head = g % heads;
    if (li == 0u) {
        var valid = 0u;
        var m = array<u32, 8>(0u, 0u, 0u, 0u, 1u, 0u, 0u, 0u);
        if (row < pu(8u)) {
            let si = row_seq[row];
            if (si != 0xffffffffu) {
                let qs0 = seqs[si * 5u];
                let p0 = seqs[si * 5u + 2u];
                let i = p0 + row - qs0;
                var lo = 0u;
                if (pu(4u) > 0u) { lo = (i / pu(4u)) * pu(4u); }
                m = array<u32, 8>(1u, qs0, p0, seqs[si * 5u + 3u], seqs[si * 5u + 4u], lo, i, 0u);
            }
        }
        wmeta = m;
    }
    let mt = workgroupUniformLoad(&wmeta);
    if (mt[0] == 0u) { return; }
    q_start = mt[1];
    pos0 = mt[2];
    slot_base = mt[3];
    slot_cap = mt[4];
    let lo = mt[5];
    let i = mt[6];
    kv_row = kvh * d;
    kv_off = (head / (heads / kvh)) * d;
    var tsc = 1.0;
    if (pu(5u) != 0u) { tsc = 1.0 + pf(7u) * log(1.0 + floor((f32(i) + 1.0) / pf(6u))); }
    let qbase = (row * heads + head) * d;
    for (var c = li; c < d; c += 64u) { qs[c] = q[qbase + c] * tsc; }
    workgroupBarrier();
    let scale = pf(3u);
    var m_run = NEG_BIG;
    var l_run = 0.0;
    var acc = array<f32, 4>(0.0, 0.0, 0.0, 0.0);
    for (var start = lo; start <= i; start += 64u) {
        let j = start + li;
        var s = NEG_BIG;
        if (j <= i) {
            var dot = 0.0;
            for (var c = 0u; c < d; c++) { dot += qs[c] * kval(j, c); }
            s = dot * scale;
        }
        let mb = reduce_max(li, s);
        let new_m = max(m_run, mb);
        var p = 0.0;
        if (j <= i) { p = exp(s - new_m); }
        ps[li] = p;
        let lb = reduce_sum(li, p);
        let corr = exp(m_run - new_m);
        l_run = l_run * corr + lb;
        let cnt = min(64u, i + 1u - start);
        for (var t = 0u; t < 4u; t++) {
            let c = li + t * 64u;
            if (c < d) {
                var a = acc[t] * corr;
                for (var jj = 0u; jj < cnt; jj++) { a += ps[jj] * vval(start + jj, c); }
                acc[t] = a;
            }
        }
        m_run = new_m;
        workgroupBarrier();
    }
    for (var t = 0u; t < 4u; t++) {
        let c = li + t * 64u;
        if (c < d) { out[qbase + c] = acc[t] / l_run; }
    }
}

// Writes new keys (or values) into their cache slots: row q_start + t → slot_base + (pos0 + t) % slot_cap;
// when a step has more tokens than the region holds, only the last slot_cap of them are written.
// Bound with k_new → k_cache, then v_new → v_cache (bindings 2 and 4). params: rows, kv_dim.
@compute @workgroup_size(256)
fn kv_store(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let x = group_index(wid, nwg) * 256u + li;
    let kvd = pu(1u);
    if (x >= pu(0u) * kvd) { return; }
    let row = x / kvd;
    let e = x % kvd;
    let si = row_seq[row];
    if (si == 0xffffffffu) { return; }
    let qs0 = seqs[si * 5u];
    let p0 = seqs[si * 5u + 2u];
    let cap = seqs[si * 5u + 4u];
    // A step longer than a ring region keeps only its last `cap` tokens (earlier ones would be overwritten;
    // writing them all would race on the same slots).
    if (row - qs0 + cap < seqs[si * 5u + 1u]) { return; }
    let slot = seqs[si * 5u + 3u] + (p0 + row - qs0) % cap;
    k_cache[slot * kvd + e] = k_new[row * kvd + e];
}
