// Q5_1 (24 bytes: f16 d, f16 m, u32 of fifth bits, 16 bytes of nibbles): x = q d + m.
fn quad(row: u32, i: u32) -> vec4<f32> {
    let base = row + (i >> 3u) * 24u;
    let q = i & 7u;
    let hi = q >> 2u;
    let j0 = 4u * (q & 3u);
    let v = w_u32(base + 8u + j0);
    let hb = w_u32(base + 4u) >> (j0 + 16u * hi);
    let h = vec4<f32>(vec4<u32>(hb, hb >> 1u, hb >> 2u, hb >> 3u) & vec4<u32>(1u)) * 16.0;
    return (nibbles(v, hi * 4u) + h) * w_f16(base) + w_f16(base + 2u);
}
