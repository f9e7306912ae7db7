// out[r] = the row idx[idx_off + r] of the weight, dequantized, for the ids that fall in this
// part of it (rows row0..row0+nrows); one invocation per four elements.

struct Params {
    rows: u32,
    k4: u32,
    row_bytes: u32,
    row0: u32,
    nrows: u32,
    idx_off: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> out: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> w: array<u32>;
@group(0) @binding(3) var<storage, read> idx: array<u32>;

@compute @workgroup_size(64)
fn main(inv: Inv) {
    let g = global_index(inv);
    if (g >= p.rows * p.k4) {
        return;
    }
    let r = g / p.k4;
    let i = g % p.k4;
    let id = idx[p.idx_off + r];
    if (id < p.row0 || id >= p.row0 + p.nrows) {
        return;
    }
    out[g] = quad((id - p.row0) * p.row_bytes, i);
}
