// Writes this call's keys and values into one layer of the paged cache: one invocation per
// (row, KV head, pair of elements). Row r sits at position pos of the sequence in table row
// seq, in block table[seq * seq_blocks + pos / 16], slot pos % 16. Per layer the cache is
// [block][kv head][16 positions][head width], keys and values apart.

struct Params {
    rows: u32,
    kv_heads: u32,
    hd: u32,
    vhd: u32,
    pairs: u32,
    pos_off: u32,
    seq_off: u32,
    table_off: u32,
    seq_blocks: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> kc: array<Kv>;
@group(0) @binding(2) var<storage, read_write> vc: array<Kv>;
@group(0) @binding(3) var<storage, read> k: array<f32>;
@group(0) @binding(4) var<storage, read> v: array<f32>;
@group(0) @binding(5) var<storage, read> idx: array<u32>;

@compute @workgroup_size(64)
fn main(inv: Inv) {
    let g = global_index(inv);
    if (g >= p.rows * p.kv_heads * p.pairs) {
        return;
    }
    let d = 2u * (g % p.pairs);
    let h = (g / p.pairs) % p.kv_heads;
    let r = g / (p.pairs * p.kv_heads);
    let pos = idx[p.pos_off + r];
    let seq = idx[p.seq_off + r];
    let block = idx[p.table_off + seq * p.seq_blocks + pos / 16u];
    let slot = (block * p.kv_heads + h) * 16u + pos % 16u;
    if (d < p.hd) {
        let src = (r * p.kv_heads + h) * p.hd + d;
        store_k2(slot * p.hd + d, vec2<f32>(k[src], k[src + 1u]));
    }
    if (d < p.vhd) {
        let src = (r * p.kv_heads + h) * p.vhd + d;
        store_v2(slot * p.vhd + d, vec2<f32>(v[src], v[src + 1u]));
    }
}
