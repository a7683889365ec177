// out[m, n] = Σ_k x[m, k] · w[n, k] (nn.Linear weights, any format). One workgroup of 256 per (8 output
// columns, block of 8 rows): 32 invocations share one weight row, each reading every 32nd piece of it, so
// the weight row is read once per 8 rows; their partial sums are reduced in shared memory, for the rows the
// block has only. The weight may be split into parts (row ranges) that each fit one binding: a dispatch
// covers columns col0..col0+ncols from the bound part.

struct MatmulParams { m: u32, k: u32, n: u32, col0: u32, ncols: u32 }

@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<u32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

@group(0) @binding(4) var<storage, read> w4: array<vec4<u32>>;
// Scales of a quantized weight (any buffer for the float formats).
@group(0) @binding(12) var<storage, read> wsc: array<u32>;

// Weight element e of the bound part, groups along k (nn.Linear weights).
fn wlin(e: u32) -> f32 {
    let v = wval(w[widx(e)], e);
    if (WK < 3u) { return v; }
    let si = e / QG;
    return v * sval(wsc[si >> 1u], si);
}

const COLS: u32 = 8u;
const LANES: u32 = 32u;

var<workgroup> part: array<array<f32, 256>, 8>;

// The block a workgroup computes, seen from invocation li: its local column lc (global col) of the bound
// part and its lane; rows m0..m0+rows (rows = 0: nothing to do; valid = false: a column past the part).
struct Tile { k: u32, n: u32, lc: u32, col: u32, lane: u32, m0: u32, rows: u32, valid: bool }

// The first row of workgroup g's block (no rows when it is m or more).
fn tile_m0(g: u32) -> u32 {
    return (g / ((load_MatmulParams().ncols + COLS - 1u) / COLS)) * 8u;
}

fn tile(g: u32, li: u32) -> Tile {
    let m = load_MatmulParams().m;
    let ncols = load_MatmulParams().ncols;
    let ngroups = (ncols + COLS - 1u) / COLS;
    let lc = (g % ngroups) * COLS + li / LANES;
    let m0 = (g / ngroups) * 8u;
    var rows = 0u;
    if (m0 < m) { rows = min(8u, m - m0); }
    return Tile(load_MatmulParams().k, load_MatmulParams().n, lc, load_MatmulParams().col0 + lc, li % LANES, m0, rows, lc < ncols);
}

// Sums each column's 32 partial values per row and writes the block's outputs.
fn finish(li: u32, acc: array<f32, 8>, t: Tile) {
    for (var r = 0u; r < t.rows; r++) { part[r][li] = acc[r]; }
    for (var s = LANES / 2u; s > 0u; s = s >> 1u) {
        workgroupBarrier();
        if (t.lane < s) {
            for (var r = 0u; r < t.rows; r++) { part[r][li] = part[r][li] + part[r][li + s]; }
        }
    }
    workgroupBarrier();
    if (t.valid && t.lane < t.rows) { out[(t.m0 + t.lane) * t.n + t.col] = part[t.lane][li - t.lane]; }
}

@compute @workgroup_size(256)
fn matmul(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let p = load_MatmulParams();
    let g = group_index(wid, nwg);
    // From the workgroup's index alone, so the barriers in `finish` stay in uniform control flow.
    if (tile_m0(g) >= p.m) { return; }
    let t = tile(g, li);
    let k = t.k;
    var acc: array<f32, 8>;
    for (var r = 0u; r < 8u; r++) { acc[r] = 0.0; }
    if (t.valid) {
        let wbase = t.lc * k;
        for (var kk = t.lane; kk < k; kk += LANES) {
            let e = wbase + kk;
            let wv = wlin(e);
            for (var r = 0u; r < t.rows; r++) { acc[r] += x[(t.m0 + r) * k + kk] * wv; }
        }
    }
    finish(li, acc, t);
}

// matmul without shared memory or barriers, for CPU adapters (Chrome's SwiftShader), which run a
// workgroup's invocations as fibers and pay dearly for each barrier: one invocation per output column of the
// bound part, for a block of up to 8 rows, reading the whole weight row itself. Any weight format.
// Bindings: as matmul.
@compute @workgroup_size(64)
fn matmul_col(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let p = load_MatmulParams();
    let g = group_index(wid, nwg);
    let m = p.m;
    let k = p.k;
    let ncols = p.ncols;
    let cblocks = (ncols + 63u) / 64u;
    let lc = (g % cblocks) * 64u + li;
    let m0 = (g / cblocks) * 8u;
    if (lc >= ncols || m0 >= m) { return; }
    let rows = min(8u, m - m0);
    var acc: array<f32, 8>;
    for (var r = 0u; r < 8u; r++) { acc[r] = 0.0; }
    let wbase = lc * k;
    for (var kk = 0u; kk < k; kk++) {
        let wv = wlin(wbase + kk);
        for (var r = 0u; r < rows; r++) { acc[r] += x[(m0 + r) * k + kk] * wv; }
    }
    let n = p.n;
    let col = p.col0 + lc;
    for (var r = 0u; r < rows; r++) { out[(m0 + r) * n + col] = acc[r]; }
}

// The 16-byte piece v of the bound weight as 4 (f32) or 8 (16-bit formats) values.
fn piece(v: u32) -> array<f32, 8> { return unpack16(w4[v]); }

// matmul with the weight read 16 bytes at a time (4 f32 or 8 packed 16-bit values), two pieces in flight
// per invocation: for rows whose byte length is a multiple of 16. Bindings: x (1), w4 (4), out (3).
@compute @workgroup_size(256)
fn matmul_vec(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let p = load_MatmulParams();
    let g = group_index(wid, nwg);
    // From the workgroup's index alone, so the barriers in `finish` stay in uniform control flow.
    if (tile_m0(g) >= p.m) { return; }
    let t = tile(g, li);
    let k = t.k;
    var acc: array<f32, 8>;
    for (var r = 0u; r < 8u; r++) { acc[r] = 0.0; }
    var per = 8u;
    if (WK == 0u) { per = 4u; }
    if (t.valid) {
        let kv = k / per;
        let vbase = t.lc * kv;
        var v = t.lane;
        for (; v + LANES < kv; v += 2u * LANES) {
            let wa = piece(vbase + v);
            let wb = piece(vbase + v + LANES);
            for (var r = 0u; r < t.rows; r++) {
                let xa = (t.m0 + r) * k + v * per;
                let xb = xa + LANES * per;
                var s = 0.0;
                for (var e = 0u; e < per; e++) { s += x[xa + e] * wa[e] + x[xb + e] * wb[e]; }
                acc[r] += s;
            }
        }
        if (v < kv) {
            let wa = piece(vbase + v);
            for (var r = 0u; r < t.rows; r++) {
                let xa = (t.m0 + r) * k + v * per;
                var s = 0.0;
                for (var e = 0u; e < per; e++) { s += x[xa + e] * wa[e]; }
                acc[r] += s;
            }
        }
    }
    finish(li, acc, t);
}

// matmul for quantized weights (WK 3: q8, 4: q4) whose rows are whole 16-byte pieces: a piece holds 16 or 32
// integers, one scale per 8 of them (group sizes are multiples of 8). Bindings: x (1), w4 (4), out (3), wsc (12).
@compute @workgroup_size(256)
fn matmul_q(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let p = load_MatmulParams();
    let g = group_index(wid, nwg);
    // From the workgroup's index alone, so the barriers in `finish` stay in uniform control flow.
    if (tile_m0(g) >= p.m) { return; }
    let t = tile(g, li);
    let k = t.k;
    var acc: array<f32, 8>;
    for (var r = 0u; r < 8u; r++) { acc[r] = 0.0; }
    var per = 32u;
    if (WK == 3u) { per = 16u; }
    if (t.valid) {
        let kv = k / per;
        let vbase = t.lc * kv;
        for (var v = t.lane; v < kv; v += LANES) {
            let q = w4[vbase + v];
            var words = array<u32, 4>(q.x, q.y, q.z, q.w);
            let e0 = (vbase + v) * per;
            for (var c = 0u; c < per / 8u; c++) {
                let si = (e0 + c * 8u) / QG;
                let s = sval(wsc[si >> 1u], si);
                var qv: array<f32, 8>;
                if (WK == 4u) {
                    let wd = words[c];
                    for (var j = 0u; j < 8u; j++) { qv[j] = f32(i32((wd >> (4u * j)) & 15u) - 8); }
                } else {
                    let a = bitcast<i32>(words[2u * c]);
                    let b = bitcast<i32>(words[2u * c + 1u]);
                    for (var j = 0u; j < 4u; j++) {
                        qv[j] = f32(extractBits(a, 8u * j, 8u));
                        qv[4u + j] = f32(extractBits(b, 8u * j, 8u));
                    }
                }
                for (var r = 0u; r < t.rows; r++) {
                    let xa = (t.m0 + r) * k + v * per + c * 8u;
                    var d = 0.0;
                    for (var j = 0u; j < 8u; j++) { d += x[xa + j] * qv[j]; }
                    acc[r] += d * s;
                }
            }
        }
    }
    finish(li, acc, t);
}

// ---- prefill: tiled GEMM ------------------------------------------------------------------------------
// matmul_tiled: for more rows than a GEMV block serves well. One workgroup of 256 per 32 rows × 64 output
// columns; the inputs and weights come through shared memory 16 k-steps at a time, so each weight is read
// once per 32 rows (not once per 8) and each input once per 64 columns; each invocation accumulates 2 × 4
// outputs. Any weight format (unpacked as it is loaded). Parameters: as matmul.

const TM: u32 = 32u;
const TN: u32 = 64u;
const TK: u32 = 16u;

var<workgroup> tx: array<array<f32, 32>, 16>; // [k][row]
var<workgroup> tw: array<array<f32, 64>, 16>; // [k][column]

@compute @workgroup_size(256)
fn matmul_tiled(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let p = load_MatmulParams();
    let g = group_index(wid, nwg);
    let m = p.m;
    let k = p.k;
    let n = p.n;
    let ncols = p.ncols;
    let nct = (ncols + TN - 1u) / TN;
    let c0 = (g % nct) * TN;
    let r0 = (g / nct) * TM;
    if (r0 >= m) { return; }
    let tm = li / 16u; // rows r0 + 2·tm, +1
    let tn = li % 16u; // columns c0 + 4·tn .. +3
    var acc: array<f32, 8>;
    for (var i = 0u; i < 8u; i++) { acc[i] = 0.0; }
    for (var k0 = 0u; k0 < k; k0 += TK) {
        // Inputs: 32 rows × 16 k, two per invocation; weights: 64 columns × 16 k, four per invocation.
        for (var e = li; e < TM * TK; e += 256u) {
            let r = e / TK;
            let kk = e % TK;
            var v = 0.0;
            if (r0 + r < m && k0 + kk < k) { v = x[(r0 + r) * k + k0 + kk]; }
            tx[kk][r] = v;
        }
        for (var e = li; e < TN * TK; e += 256u) {
            let c = e / TK;
            let kk = e % TK;
            var v = 0.0;
            if (c0 + c < ncols && k0 + kk < k) {
                let i = (c0 + c) * k + k0 + kk;
                v = wlin(i);
            }
            tw[kk][c] = v;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < TK; kk++) {
            let a0 = tx[kk][2u * tm];
            let a1 = tx[kk][2u * tm + 1u];
            for (var j = 0u; j < 4u; j++) {
                let b = tw[kk][4u * tn + j];
                acc[j] += a0 * b;
                acc[4u + j] += a1 * b;
            }
        }
        workgroupBarrier();
    }
    for (var j = 0u; j < 4u; j++) {
        let c = c0 + 4u * tn + j;
        if (c < ncols) {
            let col = p.col0 + c;
            if (r0 + 2u * tm < m) { out[(r0 + 2u * tm) * n + col] = acc[j]; }
            if (r0 + 2u * tm + 1u < m) { out[(r0 + 2u * tm + 1u) * n + col] = acc[4u + j]; }
        }
    }
}
