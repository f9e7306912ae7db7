// Stores a pair of entries (elements e, e+1) of the keys or values.
fn store_k2(e: u32, a: vec2<f32>) {
    kc[e] = a.x;
    kc[e + 1u] = a.y;
}

fn store_v2(e: u32, a: vec2<f32>) {
    vc[e] = a.x;
    vc[e + 1u] = a.y;
}
