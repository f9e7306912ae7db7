// Q5_K (176 bytes per 256: f16 d, f16 dmin, 12 scale bytes, 32 bytes of fifth bits, 128 of
// nibbles). As Q4_K, plus bit 2c (low nibbles) or 2c+1 (high) of byte l of the fifth bits.
fn quad(row: u32, i: u32) -> vec4<f32> {
    let base = row + (i >> 6u) * 176u;
    let e = (i & 63u) * 4u;
    let c = e >> 6u;
    let hi = (e >> 5u) & 1u;
    let l = e & 31u;
    let sm = scale_min_k4(base + 4u, 2u * c + hi);
    let v = w_u32(base + 48u + 32u * c + l);
    let hq = bytes4(w_u32(base + 16u + l));
    let h = vec4<f32>((hq >> vec4<u32>(2u * c + hi)) & vec4<u32>(1u)) * 16.0;
    return (w_f16(base) * sm.x) * (nibbles(v, hi * 4u) + h) - w_f16(base + 2u) * sm.y;
}
