// Rotary embedding in place, one invocation per (row, head, pair). The cosines and sines come
// from `table` (computed on the host in f64, as the CPU backend does): `half` (cos, sin)
// pairs per row from `table_off`. Pair i rotates (2i, 2i+1) (normal) or (i, i+half) (neox).

struct Params {
    rows: u32,
    heads: u32,
    head_dim: u32,
    half: u32,
    cols: u32,
    neox: u32,
    table_off: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> x: array<f32>;
@group(0) @binding(2) var<storage, read> table: array<f32>;

@compute @workgroup_size(64)
fn main(inv: Inv) {
    let g = global_index(inv);
    if (g >= p.rows * p.heads * p.half) {
        return;
    }
    let i = g % p.half;
    let h = (g / p.half) % p.heads;
    let r = g / (p.half * p.heads);
    let cs = p.table_off + 2u * (r * p.half + i);
    let c = table[cs];
    let s = table[cs + 1u];
    let base = r * p.cols + h * p.head_dim;
    var a = base + 2u * i;
    var b = a + 1u;
    if (p.neox != 0u) {
        a = base + i;
        b = a + p.half;
    }
    let x0 = x[a];
    let x1 = x[b];
    x[a] = x0 * c - x1 * s;
    x[b] = x0 * s + x1 * c;
}
