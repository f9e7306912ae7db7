// out[r] = src[idx[idx_off + r]] for r < rows, one invocation per element.

struct Params {
    rows: u32,
    cols: u32,
    idx_off: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<storage, read> src: array<f32>;
@group(0) @binding(3) var<storage, read> idx: array<u32>;

@compute @workgroup_size(64)
fn main(inv: Inv) {
    let i = global_index(inv);
    if (i >= p.rows * p.cols) {
        return;
    }
    let r = i / p.cols;
    out[i] = src[idx[p.idx_off + r] * p.cols + i % p.cols];
}
