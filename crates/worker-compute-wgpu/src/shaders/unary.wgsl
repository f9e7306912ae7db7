// In-place ops over the first `n` elements, one invocation each. `OP` is replaced by the
// op's expression of `a` (the element) and `p.f`.

struct Params {
    n: u32,
    f: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> x: array<f32>;

@compute @workgroup_size(64)
fn main(inv: Inv) {
    let i = global_index(inv);
    if (i >= p.n) {
        return;
    }
    let a = x[i];
    x[i] = OP;
}
