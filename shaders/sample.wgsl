// Token sampling on the device: one workgroup of 256 per row of logits picks that row's next token exactly
// as herd_core::sampling::pick defines it, so a decode step reads back one id per sequence instead of a
// vocabulary of logits.
//
// Stages, each a pass over the row: sanitise (NaN and -inf become NEG_BIG, a finite "out" value of weight
// 0; +inf becomes the largest f32) and the repetition penalty; argmax (the answer when greedy); the
// temperature shift l' = (l - max) / T; top-k as a radix select of the k-th largest order key (four 8-bit
// passes with a 256-bin histogram); top-p as a bisection on the order key for the smallest
// (l' descending, id ascending) prefix whose mass reaches top_p, ties at the cut counted off in id order
// (the bisection runs over the candidates only: a token of weight below (1 - top_p) · total / vocab can
// never be in that prefix, since all such tokens together weigh less than what top-p leaves out);
// min-p as a key threshold; then the draw: the first survivor in id order whose cumulative weight exceeds
// u · total, found from per-invocation sums over contiguous slices of the row.
//
// hist: rows + 1 offsets, then each row's distinct history ids.

// top_k: 0 off; top_p: 1 off; min_p_key: the min-p threshold as a shifted logit, ln(min_p); flags: 1 greedy,
// 2 min-p, 4 penalty.
struct SampleParams {
    rows: u32, vocab: u32, temperature: f32, top_k: u32, top_p: f32, min_p_key: f32, penalty: f32, flags: u32,
}

@group(0) @binding(1) var<storage, read_write> logits: array<f32>;
@group(0) @binding(2) var<storage, read> hist: array<u32>;
@group(0) @binding(3) var<storage, read> draws: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<u32>;
// Scratch, vocab values per row: the shifted logits of the top-p candidates.
@group(0) @binding(5) var<storage, read_write> cand: array<f32>;

const WG: u32 = 256u;
const F32_MAX: f32 = 3.4028234663852886e38;
// Order key of l' = 0, the largest shifted logit.
const KEY_ZERO: u32 = 0x80000000u;

var<workgroup> red_f: array<f32, 256>;
var<workgroup> red_u: array<u32, 256>;
var<workgroup> bins: array<atomic<u32>, 256>;
var<workgroup> wg_f: f32;
var<workgroup> wg_u: u32;
var<workgroup> wg_u2: u32;

var<private> base: u32;
var<private> vocab: u32;
// Survivors: key ≥ k_lo, and (key > p_key, or key == p_key with id ≤ p_tie).
var<private> k_lo: u32;
var<private> p_key: u32;
var<private> p_tie: u32;

// A u32 whose order is the f32 order.
fn key(x: f32) -> u32 {
    let b = bitcast<u32>(x);
    if ((b & 0x80000000u) != 0u) { return ~b; }
    return b | 0x80000000u;
}
fn unkey(k: u32) -> f32 {
    if ((k & 0x80000000u) != 0u) { return bitcast<f32>(k & 0x7fffffffu); }
    return bitcast<f32>(~k);
}

fn kept(k: u32, i: u32) -> bool {
    return k >= k_lo && (k > p_key || (k == p_key && i <= p_tie));
}

// Mass Σ exp(l') of the elements whose key is ≥ lo, in every invocation.
fn mass_ge(li: u32, lo: u32) -> f32 {
    var s = 0.0;
    for (var i = li; i < vocab; i += WG) {
        let l = logits[base + i];
        if (key(l) >= lo) { s += exp(l); }
    }
    return wg_sum256(li, s);
}

// Mass of the first n candidates whose key is ≥ lo.
fn cand_mass_ge(li: u32, lo: u32, n: u32) -> f32 {
    var s = 0.0;
    for (var j = li; j < n; j += WG) {
        let l = cand[base + j];
        if (key(l) >= lo) { s += exp(l); }
    }
    return wg_sum256(li, s);
}

// This invocation's contiguous slice of the row, for the passes where id order matters.
fn slice_lo(li: u32) -> u32 { return min(vocab, li * ((vocab + WG - 1u) / WG)); }
fn slice_hi(li: u32) -> u32 { return min(vocab, (li + 1u) * ((vocab + WG - 1u) / WG)); }

@compute @workgroup_size(256)
fn sample(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let sp = load_SampleParams();
    let row = group_index(wid, nwg);
    let rows = sp.rows;
    if (row >= rows) { return; }
    vocab = sp.vocab;
    base = row * vocab;
    let flags = sp.flags;

    // 1. Sanitise, then the penalty over the row's distinct history ids.
    for (var i = li; i < vocab; i += WG) {
        let b = bitcast<u32>(logits[base + i]);
        if ((b & 0x7fffffffu) >= 0x7f800000u) {
            var x = NEG_BIG;
            if (b == 0x7f800000u) { x = F32_MAX; }
            logits[base + i] = x;
        }
    }
    storageBarrier();
    workgroupBarrier();
    if ((flags & 4u) != 0u) {
        let pen = sp.penalty;
        for (var j = hist[row] + li; j < hist[row + 1u]; j += WG) {
            let id = hist[rows + 1u + j];
            if (id < vocab) {
                let x = logits[base + id];
                var y = x / pen;
                if (x < 0.0) { y = x * pen; }
                logits[base + id] = max(y, NEG_BIG);
            }
        }
    }
    storageBarrier();
    workgroupBarrier();

    // 2. Argmax, lowest index on ties.
    var bv = -F32_MAX;
    var bi = 0xffffffffu;
    for (var i = li; i < vocab; i += WG) {
        let x = logits[base + i];
        if (x > bv) { bv = x; bi = i; }
    }
    let am = wg_argmax256(li, bv, bi);
    if (li == 0u) {
        wg_f = am.v;
        wg_u = select(am.i, 0u, am.i == 0xffffffffu);
    }
    let mx = workgroupUniformLoad(&wg_f);
    let best = workgroupUniformLoad(&wg_u);
    if ((flags & 1u) != 0u || mx <= NEG_BIG) {
        if (li == 0u) { out[row] = best; }
        return;
    }

    // 3. Temperature on logits shifted so the largest is 0.
    let t = sp.temperature;
    for (var i = li; i < vocab; i += WG) {
        logits[base + i] = max((logits[base + i] - mx) / t, NEG_BIG);
    }
    storageBarrier();
    workgroupBarrier();

    // 4. top-k: the k-th largest key, 8 bits at a time from the top.
    k_lo = 0u;
    p_key = 0u;
    p_tie = 0xffffffffu;
    let topk = sp.top_k;
    if (topk > 0u && topk < sp.vocab) {
        var prefix = 0u;
        var mask = 0u;
        var remaining = topk;
        for (var rnd = 0u; rnd < 4u; rnd++) {
            let shift = 24u - 8u * rnd;
            atomicStore(&bins[li], 0u);
            workgroupBarrier();
            for (var i = li; i < vocab; i += WG) {
                let k = key(logits[base + i]);
                if ((k & mask) == prefix) { atomicAdd(&bins[(k >> shift) & 255u], 1u); }
            }
            workgroupBarrier();
            if (li == 0u) {
                var cum = 0u;
                var d = 255u;
                loop {
                    let c = atomicLoad(&bins[d]);
                    if (cum + c >= remaining || d == 0u) { break; }
                    cum += c;
                    d -= 1u;
                }
                wg_u = prefix | (d << shift);
                wg_u2 = remaining - cum;
            }
            prefix = workgroupUniformLoad(&wg_u);
            remaining = workgroupUniformLoad(&wg_u2);
            mask = mask | (255u << shift);
        }
        k_lo = prefix;
    }

    // 5. top-p over the top-k survivors: the largest key K whose mass Σ_{key ≥ K} reaches top_p of theirs.
    let topp = sp.top_p;
    if (topp < 1.0) {
        let total = mass_ge(li, k_lo);
        let goal_p = topp * total;
        // Candidates (in id order, so that sums round the same way every time): top-k survivors of
        // weight at least (1 - top_p) · total / vocab, with a margin for rounding in exp and log.
        let bound = log((1.0 - topp) * total / f32(vocab)) - 1e-3;
        var mine = 0u;
        for (var i = slice_lo(li); i < slice_hi(li); i++) {
            let l = logits[base + i];
            if (key(l) >= k_lo && l >= bound) { mine += 1u; }
        }
        red_u[li] = mine;
        workgroupBarrier();
        if (li == 0u) {
            var c = 0u;
            for (var tt = 0u; tt < WG; tt++) {
                let n = red_u[tt];
                red_u[tt] = c;
                c += n;
            }
            wg_u = c;
        }
        let ncand = workgroupUniformLoad(&wg_u);
        var o = red_u[li];
        for (var i = slice_lo(li); i < slice_hi(li); i++) {
            let l = logits[base + i];
            if (key(l) >= k_lo && l >= bound) {
                cand[base + o] = l;
                o += 1u;
            }
        }
        storageBarrier();
        workgroupBarrier();
        var lo = k_lo;
        var hi = KEY_ZERO;
        for (var it = 0u; it < 32u; it++) {
            let mid = lo + (hi - lo + 1u) / 2u;
            let m = cand_mass_ge(li, mid, ncand);
            if (lo < hi) {
                if (m >= goal_p) { lo = mid; } else { hi = mid - 1u; }
            }
        }
        p_key = lo;
        // Elements at the cut all weigh exp(l'): the lowest ids among them fill what the mass above lacks.
        let above = cand_mass_ge(li, lo + 1u, ncand); // 0 when lo is the top key (no l' is above 0)
        let w = exp(unkey(lo));
        let need = max(1.0, ceil((goal_p - above) / w));
        var cnt = 0u;
        for (var i = slice_lo(li); i < slice_hi(li); i++) {
            if (key(logits[base + i]) == lo) { cnt += 1u; }
        }
        red_u[li] = cnt;
        workgroupBarrier();
        if (li == 0u) {
            var c = 0u;
            var owner = WG;
            var before = 0u;
            for (var tt = 0u; tt < WG; tt++) {
                if (owner == WG && f32(c + red_u[tt]) >= need) { owner = tt; before = c; }
                c += red_u[tt];
            }
            wg_u = owner;
            wg_u2 = before;
        }
        let owner = workgroupUniformLoad(&wg_u);
        let before = workgroupUniformLoad(&wg_u2);
        if (li == 0u) { wg_u = vocab; }
        workgroupBarrier();
        if (li == owner) {
            var c = before;
            for (var i = slice_lo(li); i < slice_hi(li); i++) {
                if (key(logits[base + i]) == lo) {
                    c += 1u;
                    if (f32(c) >= need) { wg_u = i; break; }
                }
            }
        }
        p_tie = workgroupUniformLoad(&wg_u);
    }

    // 6. min-p: a key threshold (the largest l', 0, is above any ln(min_p)).
    if ((flags & 2u) != 0u) { k_lo = max(k_lo, key(sp.min_p_key)); }

    // 7. The draw, in id order.
    var part = 0.0;
    for (var i = slice_lo(li); i < slice_hi(li); i++) {
        let l = logits[base + i];
        if (kept(key(l), i)) { part += exp(l); }
    }
    red_f[li] = part;
    workgroupBarrier();
    if (li == 0u) {
        var total = 0.0;
        for (var tt = 0u; tt < WG; tt++) { total += red_f[tt]; }
        let goal = draws[row] * total;
        var c = 0.0;
        var owner = WG;
        var rest = 0.0;
        for (var tt = 0u; tt < WG; tt++) {
            if (owner == WG && c + red_f[tt] > goal) { owner = tt; rest = goal - c; }
            c += red_f[tt];
        }
        wg_u = owner;
        wg_f = rest;
    }
    let owner = workgroupUniformLoad(&wg_u);
    let rest = workgroupUniformLoad(&wg_f);
    if (owner == WG) {
        // Rounding left a sliver of mass: the most likely survivor.
        if (li == 0u) { out[row] = best; }
        return;
    }
    if (li == owner) {
        var c = 0.0;
        var last = best;
        for (var i = slice_lo(li); i < slice_hi(li); i++) {
            let l = logits[base + i];
            if (kept(key(l), i)) {
                c += exp(l);
                last = i;
                if (c > rest) { break; }
            }
        }
        out[row] = last;
    }
}

// mask_logits: constrained decoding. Token t of row r keeps its logit when bit t % 32 of mask word
// r * words + t / 32 is set, and gets -inf otherwise (weight 0 in sample). One invocation per logit.
// neg_inf: the bits of -inf, passed in because WGSL cannot write -inf as a constant (browsers' compilers
// reject a constant expression whose value is not finite).
struct MaskParams { n: u32, vocab: u32, words: u32, neg_inf: u32 }

@group(0) @binding(6) var<storage, read> mask: array<u32>;

@compute @workgroup_size(256)
fn mask_logits(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let p = load_MaskParams();
    let i = group_index(wid, nwg) * 256u + li;
    if (i >= p.n) { return; }
    let r = i / p.vocab;
    let t = i % p.vocab;
    if (((mask[r * p.words + t / 32u] >> (t % 32u)) & 1u) == 0u) {
        logits[i] = bitcast<f32>(p.neg_inf);
    }
}
