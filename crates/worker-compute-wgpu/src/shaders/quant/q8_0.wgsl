// Q8_0 (34 bytes: f16 d, 32 signed bytes): x = q d.
fn quad(row: u32, i: u32) -> vec4<f32> {
    let base = row + (i >> 3u) * 34u;
    return sbytes(w_u32(base + 2u + 4u * (i & 7u))) * w_f16(base);
}
