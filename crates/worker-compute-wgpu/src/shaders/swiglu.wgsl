// out = silu(gate) * up over the first `n` elements.

struct Params {
    n: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<storage, read> gate: array<f32>;
@group(0) @binding(3) var<storage, read> up: array<f32>;

@compute @workgroup_size(64)
fn main(inv: Inv) {
    let i = global_index(inv);
    if (i >= p.n) {
        return;
    }
    let a = gate[i];
    out[i] = a / (1.0 + exp(-a)) * up[i];
}
