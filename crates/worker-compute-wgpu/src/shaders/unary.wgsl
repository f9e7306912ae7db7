// In-place ops over the first `n` elements, one invocation each. `OP` is replaced by the
// op's expression of `a` (the element) and `p.f`.

struct Params {
    n: u32,
    f: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> x: array<f32>;

@compute @workgroup_size(64)
fn main(
    @builtin(local_invocation_index) t: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let i = (wid.x + wid.y * nwg.x) * 64u + t;
    if (i >= p.n) {
        return;
    }
    let a = x[i];
    x[i] = OP;
}
