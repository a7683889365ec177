// Whole-workgroup reductions over 256 invocations, shared by the shaders that need them: the plain variant,
// a tree in shared memory (8 barriers). reduce_subgroups.wgsl has the same functions on subgroup operations
// (1 barrier), used when the device offers subgroups. Every invocation gets the result.

var<workgroup> wg_red: array<f32, 256>;
var<workgroup> wg_red_u: array<u32, 256>;

fn wg_sum256(li: u32, v: f32) -> f32 {
    wg_red[li] = v;
    for (var s = 128u; s > 0u; s = s >> 1u) {
        workgroupBarrier();
        if (li < s) { wg_red[li] = wg_red[li] + wg_red[li + s]; }
    }
    workgroupBarrier();
    let r = wg_red[0];
    workgroupBarrier();
    return r;
}

struct ArgMax { v: f32, i: u32 }

// The largest v, and the lowest i among the invocations that hold it.
fn wg_argmax256(li: u32, v: f32, i: u32) -> ArgMax {
    wg_red[li] = v;
    wg_red_u[li] = i;
    for (var s = 128u; s > 0u; s = s >> 1u) {
        workgroupBarrier();
        if (li < s) {
            let v2 = wg_red[li + s];
            let i2 = wg_red_u[li + s];
            if (v2 > wg_red[li] || (v2 == wg_red[li] && i2 < wg_red_u[li])) { wg_red[li] = v2; wg_red_u[li] = i2; }
        }
    }
    workgroupBarrier();
    let r = ArgMax(wg_red[0], wg_red_u[0]);
    workgroupBarrier();
    return r;
}
