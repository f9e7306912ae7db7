// Q4_K (144 bytes per 256: f16 d, f16 dmin, 12 bytes of 6-bit scales and mins, 128 bytes of
// nibbles). Per 64 elements c: byte l of its 32 holds element 64c+l (low nibble, sub-block
// 2c) and 64c+32+l (high nibble, sub-block 2c+1); x = d sc q - dmin m.
fn quad(row: u32, i: u32) -> vec4<f32> {
    let base = row + (i >> 6u) * 144u;
    let e = (i & 63u) * 4u;
    let c = e >> 6u;
    let hi = (e >> 5u) & 1u;
    let l = e & 31u;
    let sm = scale_min_k4(base + 4u, 2u * c + hi);
    let v = w_u32(base + 16u + 32u * c + l);
    return (w_f16(base) * sm.x) * nibbles(v, hi * 4u) - w_f16(base + 2u) * sm.y;
}
