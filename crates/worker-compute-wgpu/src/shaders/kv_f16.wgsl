// KV cache entries as f16, two to a word (WGSL's core pack2x16float / unpack2x16float, so
// no `shader-f16` feature is needed): elements e and e+1 (e even) share word e/2.
alias Kv = u32;

fn key2(e: u32) -> vec2<f32> {
    return unpack2x16float(kc[e >> 1u]);
}

fn value1(e: u32) -> f32 {
    return unpack2x16float(vc[e >> 1u])[e & 1u];
}
