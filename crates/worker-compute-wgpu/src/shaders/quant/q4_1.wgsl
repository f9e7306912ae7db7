// Q4_1 (20 bytes: f16 d, f16 m, 16 bytes of nibbles): x = q d + m.
fn quad(row: u32, i: u32) -> vec4<f32> {
    let base = row + (i >> 3u) * 20u;
    let q = i & 7u;
    let v = w_u32(base + 4u + 4u * (q & 3u));
    return nibbles(v, (q >> 2u) * 4u) * w_f16(base) + w_f16(base + 2u);
}
