// What the mat-vec and mat-mul kernels share: out[r][j0 + j] = dot(x[r], w[j]) for the
// `rows` activation rows and the `nrows` weight rows of this part of the weight (its rows
// j0..j0 + nrows; the output is `n` wide), rows of `k4` groups of four elements,
// `row_bytes` apart in `w`. `per_wg`: weight rows per workgroup of the subgroup mat-vec.

struct Params {
    rows: u32,
    n: u32,
    nrows: u32,
    j0: u32,
    k4: u32,
    row_bytes: u32,
    per_wg: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> w: array<u32>;
