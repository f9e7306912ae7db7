// RMS norm in place, one workgroup per segment of `seg` elements (a row, or one head of a
// row): x = x / sqrt(mean(x^2) + eps) * w, with `w` a vector of `seg`.

struct Params {
    segs: u32,
    seg: u32,
    eps: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<f32>;

@compute @workgroup_size(64)
fn main(inv: Inv, sg: Sg) {
    let t = inv.t;
    let s = group_index(inv);
    if (s >= p.segs) {
        return;
    }
    let base = s * p.seg;
    var ss = 0.0;
    for (var i = t; i < p.seg; i += 64u) {
        let v = x[base + i];
        ss += v * v;
    }
    let r = 1.0 / sqrt(wg_sum(ss, t, sg) / f32(p.seg) + p.eps);
    for (var i = t; i < p.seg; i += 64u) {
        x[base + i] = x[base + i] * r * w[i];
    }
}
