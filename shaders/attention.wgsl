// Attention for a batch of sequences, and the KV-cache store: one shader module, joined by shader.rs from this
// file (parameters, bindings, the KV formats' readers, the fallback kernel), kv_store.wgsl (the stores) and
// attention_blocks.wgsl. Three kernels compute the same thing: attention_split (decode: few queries per
// sequence, keys split across workgroups) and attention_tiled (prefill: query and key tiles in shared
// memory), both in attention_blocks.wgsl, and attention here (any shape; the fallback).
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
