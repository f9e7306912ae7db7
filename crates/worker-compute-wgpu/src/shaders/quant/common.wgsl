// Reading GGUF blocks out of `w`, the weight as an array of little-endian u32 words. Blocks
// are packed as in the file, so a block (18 bytes for Q4_0) may start at any even byte.

fn w_u8(b: u32) -> u32 {
    return (w[b >> 2u] >> ((b & 3u) * 8u)) & 0xffu;
}

// The u16 at the even byte offset `b`.
fn w_u16(b: u32) -> u32 {
    return (w[b >> 2u] >> ((b & 2u) * 8u)) & 0xffffu;
}

// The u32 at byte offset `b`, aligned or not.
fn w_u32(b: u32) -> u32 {
    let i = b >> 2u;
    let s = (b & 3u) * 8u;
    if (s == 0u) {
        return w[i];
    }
    return (w[i] >> s) | (w[i + 1u] << (32u - s));
}

// The f16 at the even byte offset `b`.
fn w_f16(b: u32) -> f32 {
    return unpack2x16float(w_u16(b)).x;
}

// The four bytes of `v`, lowest first.
fn bytes4(v: u32) -> vec4<u32> {
    return vec4<u32>(v, v >> 8u, v >> 16u, v >> 24u) & vec4<u32>(255u);
}

// The nibble at bit `shift` of each byte of `v`.
fn nibbles(v: u32, shift: u32) -> vec4<f32> {
    return vec4<f32>((bytes4(v) >> vec4<u32>(shift)) & vec4<u32>(15u));
}

// The four bytes of `v` as signed integers.
fn sbytes(v: u32) -> vec4<f32> {
    let b = bitcast<vec4<i32>>(vec4<u32>(v << 24u, v << 16u, v << 8u, v)) >> vec4<u32>(24u);
    return vec4<f32>(b);
}

// The 6-bit scale and min of sub-block `j` of a Q4_K / Q5_K block whose 12 scale bytes start
// at byte `sb` (ggml's get_scale_min_k4).
fn scale_min_k4(sb: u32, j: u32) -> vec2<f32> {
    if (j < 4u) {
        return vec2<f32>(f32(w_u8(sb + j) & 63u), f32(w_u8(sb + j + 4u) & 63u));
    }
    let a = w_u8(sb + j + 4u);
    let sc = (a & 15u) | ((w_u8(sb + j - 4u) >> 6u) << 4u);
    let mn = (a >> 4u) | ((w_u8(sb + j) >> 6u) << 4u);
    return vec2<f32>(f32(sc), f32(mn));
}
