// Mat-vec for a few activation rows (decode), with subgroups: each subgroup takes one weight
// row j and a group of up to 4 activation rows, its invocations stride over the row's
// elements four at a time, and a subgroup sum finishes it: no workgroup barrier. A workgroup
// holds `per_wg` rows, the fewest subgroups it can have (64 over the adapter's largest
// subgroup size); where subgroups are smaller, the extra ones idle. No width is assumed.
// Bindings and parameters: matmul_bindings.wgsl.

@compute @workgroup_size(64)
fn main(inv: Inv, sg: Sg) {
    let g = group_index(inv);
    let row_groups = (p.nrows + p.per_wg - 1u) / p.per_wg;
    let j = (g % row_groups) * p.per_wg + sg.id;
    let r0 = (g / row_groups) * 4u;
    if (r0 >= p.rows || sg.id >= p.per_wg || j >= p.nrows) {
        return;
    }
    let nr = min(4u, p.rows - r0);
    let row = j * p.row_bytes;
    // One accumulator per activation row, by name: a dynamically indexed vector would sit
    // in memory on some drivers (lavapipe).
    let xb = r0 * p.k4;
    var a0 = 0.0;
    var a1 = 0.0;
    var a2 = 0.0;
    var a3 = 0.0;
    for (var i = sg.lane; i < p.k4; i += sg.size) {
        let wq = quad(row, i);
        a0 += dot(wq, x[xb + i]);
        if (nr > 1u) {
            a1 += dot(wq, x[xb + p.k4 + i]);
        }
        if (nr > 2u) {
            a2 += dot(wq, x[xb + 2u * p.k4 + i]);
        }
        if (nr > 3u) {
            a3 += dot(wq, x[xb + 3u * p.k4 + i]);
        }
    }
    let s = vec4<f32>(subgroupAdd(a0), subgroupAdd(a1), subgroupAdd(a2), subgroupAdd(a3));
    if (sg.lane == 0u) {
        let o = r0 * p.n + p.j0 + j;
        out[o] = s.x;
        if (nr > 1u) {
            out[o + p.n] = s.y;
        }
        if (nr > 2u) {
            out[o + 2u * p.n] = s.z;
        }
        if (nr > 3u) {
            out[o + 3u * p.n] = s.w;
        }
    }
}
