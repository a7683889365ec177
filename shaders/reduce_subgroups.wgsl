// The reductions of reduce.wgsl on subgroup operations: each subgroup reduces its lanes, its first lane
// (the one with no lanes before it) leaves the result in shared memory (slot li / subgroup size: 1-D workgroups map invocations to subgroups
// in order), and after one barrier every invocation combines the slots in the same order.

var<workgroup> wg_red: array<f32, 256>;
var<workgroup> wg_red_u: array<u32, 256>;

fn wg_sum256(li: u32, v: f32) -> f32 {
    let sg = subgroupAdd(1u);
    let s = subgroupAdd(v);
    if (subgroupExclusiveAdd(1u) == 0u) { wg_red[li / sg] = s; }
    workgroupBarrier();
    var t = 0.0;
    for (var j = 0u; j < 256u / sg; j++) { t += wg_red[j]; }
    workgroupBarrier();
    return t;
}

struct ArgMax { v: f32, i: u32 }

fn wg_argmax256(li: u32, v: f32, i: u32) -> ArgMax {
    let sg = subgroupAdd(1u);
    let m = subgroupMax(v);
    var cand = 0xffffffffu;
    if (v == m) { cand = i; }
    let mi = subgroupMin(cand);
    if (subgroupExclusiveAdd(1u) == 0u) {
        wg_red[li / sg] = m;
        wg_red_u[li / sg] = mi;
    }
    workgroupBarrier();
    var r = ArgMax(wg_red[0], wg_red_u[0]);
    for (var j = 1u; j < 256u / sg; j++) {
        let v2 = wg_red[j];
        let i2 = wg_red_u[j];
        if (v2 > r.v || (v2 == r.v && i2 < r.i)) { r = ArgMax(v2, i2); }
    }
    workgroupBarrier();
    return r;
}
