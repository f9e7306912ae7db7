// Tiled mat-mul (prefill): one workgroup per 32 activation rows x 32 weight rows of this
// part; each step stages 32 elements of both (the weight dequantized) in shared memory, and
// each of the 64 invocations accumulates a 4 x 4 block of outputs (bindings and parameters:
// matmul_bindings.wgsl).

// [32 rows][8 quads] of activations and of weights.
var<workgroup> xs: array<vec4<f32>, 256>;
var<workgroup> ws: array<vec4<f32>, 256>;

@compute @workgroup_size(64)
fn main(inv: Inv) {
    let t = inv.t;
    let col_tiles = (p.nrows + 31u) / 32u;
    let g = group_index(inv);
    let n0 = (g % col_tiles) * 32u;
    let m0 = (g / col_tiles) * 32u;
    if (m0 >= p.rows) {
        return;
    }
    let tx = t % 8u;
    let ty = t / 8u;
    var acc: array<vec4<f32>, 4>;
    for (var k0 = 0u; k0 < p.k4; k0 += 8u) {
        for (var e = t; e < 256u; e += 64u) {
            let rr = e / 8u;
            let kq = k0 + e % 8u;
            var xv = vec4<f32>(0.0);
            if (m0 + rr < p.rows && kq < p.k4) {
                xv = x[(m0 + rr) * p.k4 + kq];
            }
            xs[e] = xv;
            var wv = vec4<f32>(0.0);
            if (n0 + rr < p.nrows && kq < p.k4) {
                wv = quad((n0 + rr) * p.row_bytes, kq);
            }
            ws[e] = wv;
        }
        workgroupBarrier();
        for (var q = 0u; q < 8u; q++) {
            let w0 = ws[(tx * 4u) * 8u + q];
            let w1 = ws[(tx * 4u + 1u) * 8u + q];
            let w2 = ws[(tx * 4u + 2u) * 8u + q];
            let w3 = ws[(tx * 4u + 3u) * 8u + q];
            for (var a = 0u; a < 4u; a++) {
                let xv = xs[(ty * 4u + a) * 8u + q];
                acc[a] += vec4<f32>(dot(xv, w0), dot(xv, w1), dot(xv, w2), dot(xv, w3));
            }
        }
        workgroupBarrier();
    }
    for (var a = 0u; a < 4u; a++) {
        let m = m0 + ty * 4u + a;
        for (var b = 0u; b < 4u; b++) {
            let c = n0 + tx * 4u + b;
            if (m < p.rows && c < p.nrows) {
                out[m * p.n + p.j0 + c] = acc[a][b];
            }
        }
    }
}
