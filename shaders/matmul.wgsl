// out[m, n] = Σ_k x[m, k] · w[n, k] (nn.Linear weights, any format). One workgroup of 64 per (output
// column n, block of 8 rows): the weight row is read once per 8 rows, partial sums reduced in shared memory.
// The weight may be split into parts (row ranges) that each fit one binding: a dispatch covers columns
// col0..col0+ncols from the bound part. params: m, k, n, col0, ncols.

@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<u32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

@group(0) @binding(4) var<storage, read> w4: array<vec4<u32>>;

var<workgroup> part: array<array<f32, 64>, 8>;

// The block a workgroup computes: local column lc (global col) of the bound part, rows m0..m0+rows
// (rows = 0: past the last row).
struct Tile { k: u32, n: u32, lc: u32, col: u32, m0: u32, rows: u32 }

fn tile(g: u32) -> Tile {
    let m = pu(0u);
    let ncols = pu(4u);
    let lc = g % ncols;
    let m0 = (g / ncols) * 8u;
    var rows = 0u;
    if (m0 < m) { rows = min(8u, m - m0); }
    return Tile(pu(1u), pu(2u), lc, pu(3u) + lc, m0, rows);
}

// Sums each row's 64 partial values and writes the block's outputs.
fn finish(li: u32, acc: array<f32, 8>, rows: u32, m0: u32, n: u32, col: u32) {
    for (var r = 0u; r < 8u; r++) { part[r][li] = acc[r]; }
    for (var s = 32u; s > 0u; s = s >> 1u) {
        workgroupBarrier();
        if (li < s) {
            for (var r = 0u; r < 8u; r++) { part[r][li] = part[r][li] + part[r][li + s]; }
        }
    }
    workgroupBarrier();
    if (li < rows) { out[(m0 + li) * n + col] = part[li][0]; }
}

@compute @workgroup_size(64)
fn matmul(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let t = tile(group_index(wid, nwg));
    if (t.rows == 0u) { return; }
    let k = t.k;
    let lc = t.lc;
    let m0 = t.m0;
    let rows = t.rows;
    var acc: array<f32, 8>;
    for (var r = 0u; r < 8u; r++) { acc[r] = 0.0; }
    let wbase = lc * k;
    for (var kk = li; kk < k; kk += 64u) {
        let e = wbase + kk;
        let wv = wval(w[widx(e)], e);
        for (var r = 0u; r < rows; r++) { acc[r] += x[(m0 + r) * k + kk] * wv; }
    }
    finish(li, acc, rows, m0, t.n, t.col);
}

// matmul with the weight read 16 bytes at a time (4 f32 or 8 packed 16-bit values): for rows whose byte
// length is a multiple of 16. Bindings: x (1), w4 (4), out (3).
@compute @workgroup_size(64)
fn matmul_vec(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let t = tile(group_index(wid, nwg));
    if (t.rows == 0u) { return; }
    let k = t.k;
    let lc = t.lc;
    let m0 = t.m0;
    let rows = t.rows;
    var acc: array<f32, 8>;
    for (var r = 0u; r < 8u; r++) { acc[r] = 0.0; }
    var per = 8u;
    if (WDT == 0u) { per = 4u; }
    let kv = k / per;
    let vbase = lc * kv;
    for (var v = li; v < kv; v += 64u) {
        let q = w4[vbase + v];
        var wv: array<f32, 8>;
        if (WDT == 0u) {
            wv[0] = bitcast<f32>(q.x); wv[1] = bitcast<f32>(q.y); wv[2] = bitcast<f32>(q.z); wv[3] = bitcast<f32>(q.w);
        } else if (WDT == 1u) {
            wv[0] = bitcast<f32>(q.x << 16u); wv[1] = bitcast<f32>(q.x & 0xffff0000u);
            wv[2] = bitcast<f32>(q.y << 16u); wv[3] = bitcast<f32>(q.y & 0xffff0000u);
            wv[4] = bitcast<f32>(q.z << 16u); wv[5] = bitcast<f32>(q.z & 0xffff0000u);
            wv[6] = bitcast<f32>(q.w << 16u); wv[7] = bitcast<f32>(q.w & 0xffff0000u);
        } else {
            let a = unpack2x16float(q.x); let b = unpack2x16float(q.y);
            let c = unpack2x16float(q.z); let d = unpack2x16float(q.w);
            wv[0] = a.x; wv[1] = a.y; wv[2] = b.x; wv[3] = b.y; wv[4] = c.x; wv[5] = c.y; wv[6] = d.x; wv[7] = d.y;
        }
        let kk0 = v * per;
        for (var r = 0u; r < rows; r++) {
            let xb = (m0 + r) * k + kk0;
            var sacc = 0.0;
            for (var e = 0u; e < per; e++) { sacc += x[xb + e] * wv[e]; }
            acc[r] += sacc;
        }
    }
    finish(li, acc, rows, m0, t.n, t.col);
}
