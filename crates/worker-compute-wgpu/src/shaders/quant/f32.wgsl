// F32: elements 4i..4i+3 of the row at byte `row` (rows of a multiple of 4 elements).
fn quad(row: u32, i: u32) -> vec4<f32> {
    let b = (row >> 2u) + 4u * i;
    return bitcast<vec4<f32>>(vec4<u32>(w[b], w[b + 1u], w[b + 2u], w[b + 3u]));
}
