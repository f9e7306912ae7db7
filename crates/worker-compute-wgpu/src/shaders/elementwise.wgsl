// Element-wise ops over the first `n` elements, one invocation each. `OP` is replaced by
// the op's expression of `a` (the destination's element), `b` (the source's) and `p.f`.

struct Params {
    n: u32,
    cols: u32,
    f: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> dst: array<f32>;
@group(0) @binding(2) var<storage, read> src: array<f32>;

@compute @workgroup_size(64)
fn main(inv: Inv) {
    let i = global_index(inv);
    if (i >= p.n) {
        return;
    }
    let a = dst[i];
    let b = src[SRC_INDEX];
    dst[i] = OP;
}
