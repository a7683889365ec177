// The KV-cache store (part of the attention module: shader.rs joins attention.wgsl, this file and
// attention_blocks.wgsl into one, so the parameter structs and the KV formats' helpers of attention.wgsl
// serve here too).

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

