// out[m, n] = Σ_k x[m, k] · w[n, k] (nn.Linear weights, any format). One workgroup of 64 per (output
// column n, block of 8 rows): the weight row is read once per 8 rows, partial sums reduced in shared memory.
// The weight may be split into parts (row ranges) that each fit one binding: a dispatch covers columns
// col0..col0+ncols from the bound part. params: m, k, n, col0, ncols.

@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<u32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

var<workgroup> part: array<array<f32, 64>, 8>;

@compute @workgroup_size(64)
fn matmul(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let g = group_index(wid, nwg);
    let m = pu(0u);
    let k = pu(1u);
    let n = pu(2u);
    let ncols = pu(4u);
    let lc = g % ncols;
    let col = pu(3u) + lc;
    let m0 = (g / ncols) * 8u;
    if (m0 >= m) { return; }
    let rows = min(8u, m - m0);
    var acc: array<f32, 8>;
    for (var r = 0u; r < 8u; r++) { acc[r] = 0.0; }
    let wbase = lc * k;
    for (var kk = li; kk < k; kk += 64u) {
        let e = wbase + kk;
        let wv = wval(w[widx(e)], e);
        for (var r = 0u; r < rows; r++) { acc[r] += x[(m0 + r) * k + kk] * wv; }
    }
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
