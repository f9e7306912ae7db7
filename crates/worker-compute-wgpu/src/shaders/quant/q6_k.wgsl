// Q6_K (210 bytes per 256: 128 bytes of low nibbles, 64 of high bit pairs, 16 signed
// scales, f16 d). Per 128 elements n, group g of 32: low nibbles from byte 64n+l(+32 for odd
// g), nibble g/2; high bits from byte 32n+l, pair g; scale 8n + l/16 + 2g; x = d sc (q - 32).
fn quad(row: u32, i: u32) -> vec4<f32> {
    let base = row + (i >> 6u) * 210u;
    let e = (i & 63u) * 4u;
    let n = e >> 7u;
    let g = (e >> 5u) & 3u;
    let l = e & 31u;
    let lo = (bytes4(w_u32(base + 64u * n + l + 32u * (g & 1u))) >> vec4<u32>(4u * (g >> 1u))) & vec4<u32>(15u);
    let hb = (bytes4(w_u32(base + 128u + 32u * n + l)) >> vec4<u32>(2u * g)) & vec4<u32>(3u);
    let q = vec4<f32>(vec4<i32>(lo | (hb << vec4<u32>(4u))) - vec4<i32>(32));
    let sc = f32(bitcast<i32>(w_u8(base + 192u + 8u * n + (l >> 4u) + 2u * g) << 24u) >> 24u);
    return (w_f16(base + 208u) * sc) * q;
}
