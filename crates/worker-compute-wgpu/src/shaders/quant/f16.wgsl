// F16: elements 4i..4i+3 of the row at byte `row` (rows of a multiple of 4 elements).
fn quad(row: u32, i: u32) -> vec4<f32> {
    let b = (row >> 2u) + 2u * i;
    return vec4<f32>(unpack2x16float(w[b]), unpack2x16float(w[b + 1u]));
}
