// Stores a pair of entries (elements e, e+1, e even) of the keys or values as one word.
fn store_k2(e: u32, a: vec2<f32>) {
    kc[e >> 1u] = pack2x16float(a);
}

fn store_v2(e: u32, a: vec2<f32>) {
    vc[e >> 1u] = pack2x16float(a);
}
