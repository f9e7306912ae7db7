// Layer norm in place, one workgroup per row: x = (x - mean) / sqrt(var + eps) * w + b.

struct Params {
    rows: u32,
    cols: u32,
    eps: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<f32>;
@group(0) @binding(3) var<storage, read> b: array<f32>;

@compute @workgroup_size(64)
fn main(inv: Inv, sg: Sg) {
    let t = inv.t;
    let r = group_index(inv);
    if (r >= p.rows) {
        return;
    }
    let base = r * p.cols;
    let n = f32(p.cols);
    var s = 0.0;
    for (var i = t; i < p.cols; i += 64u) {
        s += x[base + i];
    }
    let mean = wg_sum(s, t, sg) / n;
    var ss = 0.0;
    for (var i = t; i < p.cols; i += 64u) {
        let d = x[base + i] - mean;
        ss += d * d;
    }
    let rstd = 1.0 / sqrt(wg_sum(ss, t, sg) / n + p.eps);
    for (var i = t; i < p.cols; i += 64u) {
        x[base + i] = (x[base + i] - mean) * rstd * w[i] + b[i];
    }
}
