// Q4_0 (18 bytes: f16 d, 16 bytes of nibbles; element j low nibble of byte j, element j+16
// high nibble): x = (q - 8) d. Elements 4i..4i+3 of the row at byte `row`.
fn quad(row: u32, i: u32) -> vec4<f32> {
    let base = row + (i >> 3u) * 18u;
    let q = i & 7u;
    let v = w_u32(base + 2u + 4u * (q & 3u));
    return (nibbles(v, (q >> 2u) * 4u) - 8.0) * w_f16(base);
}
