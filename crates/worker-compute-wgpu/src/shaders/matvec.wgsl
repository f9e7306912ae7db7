// Mat-vec for a few activation rows (decode): one workgroup per weight row j of this part and
// group of up to 4 activation rows; the 64 invocations stride over the row's elements four
// at a time, then the workgroup adds up (bindings and parameters: matmul_bindings.wgsl).

@compute @workgroup_size(64)
fn main(inv: Inv, sg: Sg) {
    let t = inv.t;
    let g = group_index(inv);
    let j = g % p.nrows;
    let r0 = (g / p.nrows) * 4u;
    if (r0 >= p.rows) {
        return;
    }
    let nr = min(4u, p.rows - r0);
    let row = j * p.row_bytes;
    var acc = vec4<f32>(0.0);
    for (var i = t; i < p.k4; i += 64u) {
        let wq = quad(row, i);
        for (var r = 0u; r < nr; r++) {
            acc[r] += dot(wq, x[(r0 + r) * p.k4 + i]);
        }
    }
    for (var r = 0u; r < nr; r++) {
        let s = wg_sum(acc[r], t, sg);
        if (t == 0u) {
            out[(r0 + r) * p.n + p.j0 + j] = s;
        }
    }
}
