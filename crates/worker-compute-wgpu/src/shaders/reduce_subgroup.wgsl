// Workgroup reductions with subgroup operations: each subgroup reduces in registers, its
// first invocation leaves the result in shared memory, and every invocation adds up the
// `num_subgroups` results. Nothing assumes a subgroup size (lavapipe's is 8, Apple's 32).

struct Sg {
    @builtin(subgroup_invocation_id) lane: u32,
    @builtin(subgroup_size) size: u32,
    @builtin(subgroup_id) id: u32,
    @builtin(num_subgroups) n: u32,
}

var<workgroup> red: array<f32, 64>;

// The sum of `v` over the workgroup, returned to every invocation. Call in uniform control flow.
fn wg_sum(v: f32, t: u32, sg: Sg) -> f32 {
    let s = subgroupAdd(v);
    if (sg.lane == 0u) {
        red[sg.id] = s;
    }
    workgroupBarrier();
    var r = red[0];
    for (var i = 1u; i < sg.n; i++) {
        r += red[i];
    }
    workgroupBarrier();
    return r;
}

// The maximum of `v` over the workgroup, returned to every invocation.
fn wg_max(v: f32, t: u32, sg: Sg) -> f32 {
    let s = subgroupMax(v);
    if (sg.lane == 0u) {
        red[sg.id] = s;
    }
    workgroupBarrier();
    var r = red[0];
    for (var i = 1u; i < sg.n; i++) {
        r = max(r, red[i]);
    }
    workgroupBarrier();
    return r;
}
