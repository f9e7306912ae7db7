// KV cache entries as f32: element e of the keys (`kc`) or values (`vc`) is word e.
alias Kv = f32;

fn key2(e: u32) -> vec2<f32> {
    return vec2<f32>(kc[e], kc[e + 1u]);
}

fn value1(e: u32) -> f32 {
    return vc[e];
}
