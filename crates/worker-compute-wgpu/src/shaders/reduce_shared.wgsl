// Workgroup reductions through shared memory: a tree over the 64 invocations. Used when the
// adapter has no subgroup operations (or they are turned off).

// Nothing: no subgroup builtins are read. `local_invocation_id` keeps the struct non-empty;
// kernels use `local_invocation_index` instead.
struct Sg {
    @builtin(local_invocation_id) unused: vec3<u32>,
}

var<workgroup> red: array<f32, 64>;

// The sum of `v` over the workgroup, returned to every invocation. Call in uniform control flow.
fn wg_sum(v: f32, t: u32, sg: Sg) -> f32 {
    red[t] = v;
    workgroupBarrier();
    for (var s = 32u; s > 0u; s >>= 1u) {
        if (t < s) {
            red[t] += red[t + s];
        }
        workgroupBarrier();
    }
    let r = red[0];
    workgroupBarrier();
    return r;
}

// The maximum of `v` over the workgroup, returned to every invocation.
fn wg_max(v: f32, t: u32, sg: Sg) -> f32 {
    red[t] = v;
    workgroupBarrier();
    for (var s = 32u; s > 0u; s >>= 1u) {
        if (t < s) {
            red[t] = max(red[t], red[t + s]);
        }
        workgroupBarrier();
    }
    let r = red[0];
    workgroupBarrier();
    return r;
}
