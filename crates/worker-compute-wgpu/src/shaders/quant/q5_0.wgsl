// Q5_0 (22 bytes: f16 d, u32 of fifth bits, 16 bytes of nibbles; element j's fifth bit is
// bit j): x = (q - 16) d.
fn quad(row: u32, i: u32) -> vec4<f32> {
    let base = row + (i >> 3u) * 22u;
    let q = i & 7u;
    let hi = q >> 2u;
    let j0 = 4u * (q & 3u);
    let v = w_u32(base + 6u + j0);
    let hb = w_u32(base + 2u) >> (j0 + 16u * hi);
    let h = vec4<f32>(vec4<u32>(hb, hb >> 1u, hb >> 2u, hb >> 3u) & vec4<u32>(1u)) * 16.0;
    return (nibbles(v, hi * 4u) + h - 16.0) * w_f16(base);
}
