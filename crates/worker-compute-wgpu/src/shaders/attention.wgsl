// Causal attention over one layer of the paged cache, one workgroup per (row, query head):
// the row at position pos attends to positions first..=pos of its sequence (first = 0, or
// the start of its sliding window), reading key/value head h / group. Positions go in
// chunks of 64, one per invocation for the scores, with an online softmax (running maximum
// and sum, rescaled per chunk); each invocation owns up to 4 of the value dimensions.
// A row's result depends only on its query, the cache and its position.

struct Params {
    rows: u32,
    heads: u32,
    kv_heads: u32,
    hd: u32,
    vhd: u32,
    group: u32,
    scale: f32,
    window: u32,
    pos_off: u32,
    seq_off: u32,
    table_off: u32,
    seq_blocks: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<storage, read> q: array<f32>;
@group(0) @binding(3) var<storage, read> kc: array<Kv>;
@group(0) @binding(4) var<storage, read> vc: array<Kv>;
@group(0) @binding(5) var<storage, read> idx: array<u32>;

var<workgroup> qs: array<f32, 256>;
var<workgroup> probs: array<f32, 64>;
var<workgroup> vrow: array<u32, 64>;

@compute @workgroup_size(64)
fn main(inv: Inv, sg: Sg) {
    let t = inv.t;
    let g = group_index(inv);
    let r = g / p.heads;
    let h = g % p.heads;
    if (r >= p.rows) {
        return;
    }
    let kvh = h / p.group;
    let pos = idx[p.pos_off + r];
    let seq = idx[p.seq_off + r];
    let n = pos + 1u;
    var first = 0u;
    if (p.window > 0u && n > p.window) {
        first = n - p.window;
    }
    for (var d = t; d < p.hd; d += 64u) {
        qs[d] = q[(r * p.heads + h) * p.hd + d];
    }
    workgroupBarrier();
    var m = -3.0e38;
    var l = 0.0;
    var acc = vec4<f32>(0.0);
    for (var p0 = first; p0 < n; p0 += 64u) {
        let at = p0 + t;
        let valid = at < n;
        var s = -3.0e38;
        if (valid) {
            let block = idx[p.table_off + seq * p.seq_blocks + at / 16u];
            let slot = (block * p.kv_heads + kvh) * 16u + at % 16u;
            let kb = slot * p.hd;
            var dot = 0.0;
            for (var d = 0u; d < p.hd; d += 2u) {
                let kv = key2(kb + d);
                dot = fma(qs[d], kv.x, dot);
                dot = fma(qs[d + 1u], kv.y, dot);
            }
            s = dot * p.scale;
            vrow[t] = slot * p.vhd;
        }
        let m_new = max(m, wg_max(s, t, sg));
        let alpha = exp(m - m_new);
        let e = select(0.0, exp(s - m_new), valid);
        probs[t] = e;
        l = l * alpha + wg_sum(e, t, sg);
        let count = min(64u, n - p0);
        for (var j = 0u; j < 4u; j++) {
            let d = t + 64u * j;
            if (d < p.vhd) {
                var a = acc[j] * alpha;
                for (var u = 0u; u < count; u++) {
                    a = fma(probs[u], value1(vrow[u] + d), a);
                }
                acc[j] = a;
            }
        }
        m = m_new;
        workgroupBarrier();
    }
    for (var j = 0u; j < 4u; j++) {
        let d = t + 64u * j;
        if (d < p.vhd) {
            out[(r * p.heads + h) * p.vhd + d] = acc[j] / l;
        }
    }
}
