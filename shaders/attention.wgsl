// Attention for a batch of sequences, and the KV-cache store. Three kernels compute the same thing:
// attention_split (decode: few queries per sequence, keys split across workgroups), attention_tiled
// (prefill: query and key tiles in shared memory), and attention (any shape; the fallback).
// attention: one workgroup of 64 per (query row, head). Keys are visited in blocks of 64 (one per
// invocation) with an online softmax in f32; cached keys (positions < pos0) come from the sequence's cache
// pages, new ones from k_new/v_new. Masks: causal, plus ⌊j/C⌋ = ⌊i/C⌋ when chunk C > 0. NoPE temperature
// tuning scales the query by 1 + attn_scale · ln(1 + ⌊(i+1)/floor_scale⌋).
// seqs: 5 words per sequence (q_start, q_len, pos0, page_base, slot_cap), then the page tables: position j of a
// sequence lives in cache slot seqs[page_base + r / page_size] · page_size + r % page_size, r = j % slot_cap
// (page_base counts from the start of seqs); row_seq: row → sequence. q4 keys (herd_core::kv_q4): pages of
// key_words words, and each sequence's stage (f32 keys of the page it is filling) at slot
// seqs[page_base + slot_cap / page_size] (in kv_dim words) of k_cache.

// head_dim ≤ 256; temperature: whether NoPE temperature tuning is on; splits and group (query heads per kv
// head): attention_split's; bidirectional: every query sees its sequence's keys up to its last new row
// (attention and attention_tiled only).
struct AttentionParams {
    heads: u32, kv_heads: u32, head_dim: u32, scale: f32, chunk: u32, temperature: u32, floor_scale: f32,
    attn_scale: f32, rows: u32, splits: u32, group: u32, bidirectional: u32, page_size: u32, kv_dtype: u32,
    slot_words: u32, key_words: u32,
}
// kv_dim: kv heads · head_dim; page_size: slots per cache page; kv_dtype, slot_words: the cache's format (below);
// units: what one invocation writes per row (values for f32, words for the 16-bit formats, kv heads for the
// byte formats).
// key_words: q4's words per key page.
struct KvStoreParams {
    rows: u32, kv_dim: u32, page_size: u32, kv_dtype: u32, slot_words: u32, head_dim: u32, units: u32, key_words: u32,
}

@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> k_new: array<f32>;
@group(0) @binding(3) var<storage, read> v_new: array<f32>;
// The caches as words in their format (herd_core::kv_format): 0 f32 (the value's bits), 1 bf16 and 2 f16 (two
// values a word, the even one low), 3 q8 and 4 fp8 (a byte a value, then an f32 scale per kv head), 5 q4 (4-bit
// codes, 8 a word, the first lowest; a value slot's codes, then a word (f16 step | f16 minimum << 16) per group of
// min(32, head_dim) channels; a key page's codes slot after slot, then such a word per channel).
@group(0) @binding(4) var<storage, read_write> k_cache: array<u32>;
@group(0) @binding(5) var<storage, read_write> v_cache: array<u32>;
@group(0) @binding(6) var<storage, read> seqs: array<u32>;
@group(0) @binding(7) var<storage, read> row_seq: array<u32>;
@group(0) @binding(8) var<storage, read_write> out: array<f32>;

var<workgroup> wmeta: array<u32, 8>;
var<workgroup> qs: array<f32, 256>;
var<workgroup> ps: array<f32, 64>;
var<workgroup> red: array<f32, 64>;

var<private> q_start: u32;
var<private> pos0: u32;
var<private> page_base: u32;
var<private> slot_cap: u32;
var<private> page_size: u32;
var<private> kv_off: u32; // kv head · head_dim
var<private> kv_row: u32; // kv heads · head_dim
var<private> kv_dtype: u32;
var<private> slot_words: u32;
var<private> kv_hd: u32; // head_dim
var<private> key_words: u32; // q4: words of a key page

// The value of an OCP FP8 E4M3 byte.
fn e4m3_value(b: u32) -> f32 {
    let e = (b >> 3u) & 15u;
    let m = f32(b & 7u);
    var v = 0.0;
    if (e == 0u) { v = ldexp(m, -9); } else { v = ldexp(8.0 + m, i32(e) - 10); }
    if ((b & 0x80u) != 0u) { v = -v; }
    return v;
}
// The E4M3 byte of x, rounded to nearest even, saturating at ±448 (as herd_core::kv_format::e4m3_from_f32).
fn e4m3_byte(x: f32) -> u32 {
    var sign = 0u;
    if (x < 0.0) { sign = 0x80u; }
    let a = abs(x);
    if (a >= 448.0) { return sign | 0x7eu; }
    var e = i32((bitcast<u32>(a) >> 23u) & 0xffu) - 127;
    if (e < -6) { return sign | u32(round(ldexp(a, 9))); }
    var m = u32(round(ldexp(a, 3 - e)));
    if (m == 16u) { e = e + 1; m = 8u; }
    return sign | (u32(e + 7) << 3u) | (m - 8u);
}
// Element e of a slot, from the word holding it and (byte formats) its head's scale word.
fn kv_decode(w: u32, scale: u32, e: u32) -> f32 {
    switch kv_dtype {
        case 0u: { return bitcast<f32>(w); }
        case 1u: { return bitcast<f32>(((w >> (16u * (e & 1u))) & 0xffffu) << 16u); }
        case 2u: { return unpack2x16float(w)[e & 1u]; }
        case 3u: { return f32(bitcast<i32>(((w >> (8u * (e & 3u))) & 0xffu) << 24u) >> 24u) * bitcast<f32>(scale); }
        default: { return e4m3_value((w >> (8u * (e & 3u))) & 0xffu) * bitcast<f32>(scale); }
    }
}
// The word of a slot that holds element e.
fn kv_word(e: u32) -> u32 {
    if (kv_dtype == 0u) { return e; }
    if (kv_dtype <= 2u) { return e / 2u; }
    return e / 4u;
}

// The cache slot of cached position j.
fn slot_of(j: u32) -> u32 {
    let r = j % slot_cap;
    return seqs[page_base + r / page_size] * page_size + r % page_size;
}
fn kval(j: u32, c: u32) -> f32 {
    if (j < pos0 && kv_dtype == 5u) {
        let e = kv_off + c;
        if (j >= (pos0 / page_size) * page_size) {
            let st = seqs[page_base + slot_cap / page_size];
            return bitcast<f32>(k_cache[(st + j % page_size) * kv_row + e]);
        }
        let b = seqs[page_base + (j % slot_cap) / page_size] * key_words;
        let sm = unpack2x16float(k_cache[b + page_size * kv_row / 8u + e]);
        let x = (j % page_size) * kv_row + e;
        return sm.y + f32((k_cache[b + x / 8u] >> (4u * (x & 7u))) & 15u) * sm.x;
    }
    if (j < pos0) {
        let e = kv_off + c;
        let b = slot_of(j) * slot_words;
        var s = 0u;
        if (kv_dtype >= 3u) { s = k_cache[b + kv_row / 4u + e / kv_hd]; }
        return kv_decode(k_cache[b + kv_word(e)], s, e);
    }
    return k_new[(q_start + j - pos0) * kv_row + kv_off + c];
}
fn vval(j: u32, c: u32) -> f32 {
    if (j < pos0 && kv_dtype == 5u) {
        let e = kv_off + c;
        let b = slot_of(j) * slot_words;
        let sm = unpack2x16float(v_cache[b + kv_row / 8u + e / min(32u, kv_hd)]);
        return sm.y + f32((v_cache[b + e / 8u] >> (4u * (e & 7u))) & 15u) * sm.x;
    }
    if (j < pos0) {
        let e = kv_off + c;
        let b = slot_of(j) * slot_words;
        var s = 0u;
        if (kv_dtype >= 3u) { s = v_cache[b + kv_row / 4u + e / kv_hd]; }
        return kv_decode(v_cache[b + kv_word(e)], s, e);
    }
    return v_new[(q_start + j - pos0) * kv_row + kv_off + c];
}
// Sets the cache format's private values from the attention parameters.
fn attention_format() {
    let ap = load_AttentionParams();
    kv_dtype = ap.kv_dtype;
    slot_words = ap.slot_words;
    kv_hd = ap.head_dim;
    key_words = ap.key_words;
}

// A query row's sequence, read by one invocation and shared with the workgroup: (valid, q_start, pos0,
// page_base, slot_cap, first visible key, absolute position, last visible key). Also sets the private cache addressing.
fn row_meta(li: u32, row: u32) -> array<u32, 8> {
    if (li == 0u) {
        var m = array<u32, 8>(0u, 0u, 0u, 0u, 1u, 0u, 0u, 0u);
        if (row < load_AttentionParams().rows) {
            let si = row_seq[row];
            if (si != 0xffffffffu) {
                let qs0 = seqs[si * 5u];
                let p0 = seqs[si * 5u + 2u];
                let i = p0 + row - qs0;
                var lo = 0u;
                if (load_AttentionParams().chunk > 0u) { lo = (i / load_AttentionParams().chunk) * load_AttentionParams().chunk; }
                // The last key it sees: itself, or (bidirectional) the sequence's last new row.
                var last = i;
                if (load_AttentionParams().bidirectional != 0u) { last = p0 + seqs[si * 5u + 1u] - 1u; }
                m = array<u32, 8>(1u, qs0, p0, seqs[si * 5u + 3u], seqs[si * 5u + 4u], lo, i, last);
            }
        }
        wmeta = m;
    }
    let mt = workgroupUniformLoad(&wmeta);
    q_start = mt[1];
    pos0 = mt[2];
    page_base = mt[3];
    slot_cap = mt[4];
    page_size = load_AttentionParams().page_size;
    attention_format();
    return mt;
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
    let ap = load_AttentionParams();
    let g = group_index(wid, nwg);
    let heads = ap.heads;
    let kvh = ap.kv_heads;
    let d = ap.head_dim;
    let row = g / heads;
    let head = g % heads;
    let mt = row_meta(li, row);
    if (mt[0] == 0u) { return; }
    let lo = mt[5];
    let i = mt[6];
    let last = mt[7];
    kv_row = kvh * d;
    kv_off = (head / (heads / kvh)) * d;
    var tsc = 1.0;
    if (ap.temperature != 0u) { tsc = 1.0 + ap.attn_scale * log(1.0 + floor((f32(i) + 1.0) / ap.floor_scale)); }
    let qbase = (row * heads + head) * d;
    for (var c = li; c < d; c += 64u) { qs[c] = q[qbase + c] * tsc; }
    workgroupBarrier();
    let scale = ap.scale;
    var m_run = NEG_BIG;
    var l_run = 0.0;
    var acc = array<f32, 4>(0.0, 0.0, 0.0, 0.0);
    for (var start = lo; start <= last; start += 64u) {
        let j = start + li;
        var s = NEG_BIG;
        if (j <= last) {
            var dot = 0.0;
            for (var c = 0u; c < d; c++) { dot += qs[c] * kval(j, c); }
            s = dot * scale;
        }
        let mb = reduce_max(li, s);
        let new_m = max(m_run, mb);
        var p = 0.0;
        if (j <= last) { p = exp(s - new_m); }
        ps[li] = p;
        let lb = reduce_sum(li, p);
        let corr = exp(m_run - new_m);
        l_run = l_run * corr + lb;
        let cnt = min(64u, last + 1u - start);
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

// Writes new keys and values into their cache slots in the cache's format: row q_start + t → the slot of
// position pos0 + t; when a step has more tokens than a ring of slot_cap slots holds, only the last slot_cap of
// them are written. One invocation per (row, unit): a value (f32), a word of two values (16-bit), or a kv head
// (byte formats: its scale is the head's max |x| over 127 or 448).
@compute @workgroup_size(256)
fn kv_store(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let kp = load_KvStoreParams();
    let x = group_index(wid, nwg) * 256u + li;
    let kvd = kp.kv_dim;
    if (x >= kp.rows * kp.units) { return; }
    let row = x / kp.units;
    let u = x % kp.units;
    let si = row_seq[row];
    if (si == 0xffffffffu) { return; }
    let qs0 = seqs[si * 5u];
    let p0 = seqs[si * 5u + 2u];
    let cap = seqs[si * 5u + 4u];
    // A step longer than a ring keeps only its last `cap` tokens (earlier ones would be overwritten;
    // writing them all would race on the same slots).
    if (row - qs0 + cap < seqs[si * 5u + 1u]) { return; }
    page_base = seqs[si * 5u + 3u];
    slot_cap = cap;
    page_size = kp.page_size;
    let b = slot_of(p0 + row - qs0) * kp.slot_words;
    let src = row * kvd;
    if (kp.kv_dtype == 5u) {
        // q4: a group of values; the row's keys of that group go to the stage when the step leaves their page
        // incomplete (kv_store_q4_keys has read the stage already).
        let g = min(32u, kp.head_dim);
        let c0 = u * g;
        var lo = v_new[src + c0];
        var hi = lo;
        for (var i = 1u; i < g; i++) { lo = min(lo, v_new[src + c0 + i]); hi = max(hi, v_new[src + c0 + i]); }
        let sm = q4_params(lo, hi);
        v_cache[b + kvd / 8u + u] = q4_param_word(sm);
        for (var w = 0u; w < g / 8u; w++) {
            var cw = 0u;
            for (var t = 0u; t < 8u; t++) { cw = cw | (q4_code(v_new[src + c0 + 8u * w + t], sm) << (4u * t)); }
            v_cache[b + c0 / 8u + w] = cw;
        }
        let pos = p0 + row - qs0;
        let end = p0 + seqs[si * 5u + 1u];
        let ps = kp.page_size;
        if (pos >= (end / ps) * ps) {
            let st = seqs[page_base + cap / ps];
            for (var i = 0u; i < g; i++) { k_cache[(st + pos % ps) * kvd + c0 + i] = bitcast<u32>(k_new[src + c0 + i]); }
        }
        return;
    }
    switch kp.kv_dtype {
        case 0u: {
            k_cache[b + u] = bitcast<u32>(k_new[src + u]);
            v_cache[b + u] = bitcast<u32>(v_new[src + u]);
        }
        case 1u: {
            k_cache[b + u] = bf16_pair(k_new[src + 2u * u], k_new[src + 2u * u + 1u]);
            v_cache[b + u] = bf16_pair(v_new[src + 2u * u], v_new[src + 2u * u + 1u]);
        }
        case 2u: {
            k_cache[b + u] = pack2x16float(vec2<f32>(k_new[src + 2u * u], k_new[src + 2u * u + 1u]));
            v_cache[b + u] = pack2x16float(vec2<f32>(v_new[src + 2u * u], v_new[src + 2u * u + 1u]));
        }
        default: {
            let hd = kp.head_dim;
            let h0 = src + u * hd;
            var top = 127.0;
            if (kp.kv_dtype == 4u) { top = 448.0; }
            var ka = 0.0;
            var va = 0.0;
            for (var i = 0u; i < hd; i++) { ka = max(ka, abs(k_new[h0 + i])); va = max(va, abs(v_new[h0 + i])); }
            let ks = ka / top;
            let vs = va / top;
            k_cache[b + kvd / 4u + u] = bitcast<u32>(ks);
            v_cache[b + kvd / 4u + u] = bitcast<u32>(vs);
            for (var w = 0u; w < hd / 4u; w++) {
                var kw = 0u;
                var vw = 0u;
                for (var t = 0u; t < 4u; t++) {
                    let i = h0 + 4u * w + t;
                    kw = kw | (quant_byte(k_new[i], ks, kp.kv_dtype) << (8u * t));
                    vw = vw | (quant_byte(v_new[i], vs, kp.kv_dtype) << (8u * t));
                }
                k_cache[b + (u * hd) / 4u + w] = kw;
                v_cache[b + (u * hd) / 4u + w] = vw;
            }
        }
    }
}

// q4 (herd_core::kv_q4): a group's (step, minimum) for values in [lo, hi]: the minimum the largest f16 at or
// below lo, the step the smallest f16 at or above (hi - min) / 15 (whatever way the conversion rounds).
fn f16_bits_down(x: f32) -> u32 {
    let b = pack2x16float(vec2<f32>(x, 0.0)) & 0xffffu;
    if (unpack2x16float(b).x <= x) { return b; }
    if ((b & 0x8000u) == 0u) {
        if (b == 0u) { return 0x8001u; }
        return b - 1u;
    }
    return b + 1u;
}
fn f16_bits_up(x: f32) -> u32 {
    let b = pack2x16float(vec2<f32>(x, 0.0)) & 0xffffu;
    if (unpack2x16float(b).x >= x) { return b; }
    return b + 1u;
}
fn q4_params(lo: f32, hi: f32) -> vec2<f32> {
    let m = unpack2x16float(f16_bits_down(lo)).x;
    let s = unpack2x16float(f16_bits_up((hi - m) / 15.0)).x;
    return vec2<f32>(s, m);
}
fn q4_param_word(sm: vec2<f32>) -> u32 {
    return pack2x16float(sm);
}
fn q4_code(x: f32, sm: vec2<f32>) -> u32 {
    if (sm.x > 0.0) { return u32(clamp(round((x - sm.y) / sm.x), 0.0, 15.0)); }
    return 0u;
}

// q4 keys, before kv_store: one invocation per (row, 8 channels). A row whose position is the last slot of a page
// (and whose ring slot no later row of the step takes) quantizes that page's 8 channels: its keys before pos0
// from the sequence's stage, the rest from k_new.
@compute @workgroup_size(256)
fn kv_store_q4_keys(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let kp = load_KvStoreParams();
    let x = group_index(wid, nwg) * 256u + li;
    let kvd = kp.kv_dim;
    let units = kvd / 8u;
    if (x >= kp.rows * units) { return; }
    let row = x / units;
    let w = x % units;
    let si = row_seq[row];
    if (si == 0xffffffffu) { return; }
    let qs0 = seqs[si * 5u];
    let p0 = seqs[si * 5u + 2u];
    let cap = seqs[si * 5u + 4u];
    let ps = kp.page_size;
    let pos = p0 + row - qs0;
    if (pos % ps != ps - 1u || row - qs0 + cap < seqs[si * 5u + 1u]) { return; }
    let pb = seqs[si * 5u + 3u];
    let st = seqs[pb + cap / ps];
    let base = seqs[pb + (pos % cap) / ps] * kp.key_words;
    let b0 = pos + 1u - ps;
    var lo = array<f32, 8>(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0);
    var hi = array<f32, 8>(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0);
    for (var i = 0u; i < ps; i++) {
        for (var t = 0u; t < 8u; t++) {
            let v = q4_key_in(b0 + i, p0, qs0, st, ps, kvd, 8u * w + t);
            if (i == 0u) { lo[t] = v; hi[t] = v; } else { lo[t] = min(lo[t], v); hi[t] = max(hi[t], v); }
        }
    }
    var sm: array<vec2<f32>, 8>;
    for (var t = 0u; t < 8u; t++) {
        sm[t] = q4_params(lo[t], hi[t]);
        k_cache[base + ps * kvd / 8u + 8u * w + t] = q4_param_word(sm[t]);
    }
    for (var i = 0u; i < ps; i++) {
        var cw = 0u;
        for (var t = 0u; t < 8u; t++) { cw = cw | (q4_code(q4_key_in(b0 + i, p0, qs0, st, ps, kvd, 8u * w + t), sm[t]) << (4u * t)); }
        k_cache[base + i * kvd / 8u + w] = cw;
    }
}
// Key channel c of position x of a page being completed: from the stage before pos0, else from k_new.
fn q4_key_in(x: u32, p0: u32, qs0: u32, st: u32, ps: u32, kvd: u32, c: u32) -> f32 {
    if (x < p0) { return bitcast<f32>(k_cache[(st + x % ps) * kvd + c]); }
    return k_new[(qs0 + x - p0) * kvd + c];
}

// Two values as bf16 (round to nearest even) in one word, the first low.
fn bf16_bits(x: f32) -> u32 {
    let b = bitcast<u32>(x);
    return (b + 0x7fffu + ((b >> 16u) & 1u)) >> 16u;
}
fn bf16_pair(a: f32, b: f32) -> u32 {
    return bf16_bits(a) | (bf16_bits(b) << 16u);
}
// The byte of x at scale s: q8 (round(x / s) within ±127) or fp8.
fn quant_byte(x: f32, s: f32, dtype: u32) -> u32 {
    var q = 0.0;
    if (s > 0.0) { q = x / s; }
    if (dtype == 3u) { return u32(bitcast<u32>(i32(clamp(round(q), -127.0, 127.0)))) & 0xffu; }
    return e4m3_byte(q);
}

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
