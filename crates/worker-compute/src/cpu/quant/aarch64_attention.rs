//! The NEON attention kernels: [`generic::attend`] over keys and values gathered to f32 in
//! the kernels' layout, and [`generic::attend_f16`] over the f16 blocks of a KV cache, read
//! where they lie (`fcvtl`, no gather). Both run one body, [`attend_with`], generic over where
//! the entries come from ([`Entries`]); f16 to f32 is exact, so on the same entries the two
//! give the same bits. The x86 module `x86_attention` is the same design on AVX2.

use std::arch::aarch64::*;

use super::aarch64::exp_nonpositive;
use super::attention_vector_shapes;
use super::generic::{self, F16Block, KEY_BLOCK as KB};

/// Where [`attend_with`] reads keys and values: blocks of [`KB`] positions, each block's keys
/// transposed (`[head_dim][KB]`), values one row per position.
///
/// # Safety
/// `key_block(b)` for every block the caller names, and `value_row(t)` for every position
/// below its `n`, must point at that many entries ([`attend_with`]'s contract).
unsafe trait Entries: Copy {
    /// The first entry of key block `b`: element `d` of its position `p` is entry `d * KB + p`.
    ///
    /// # Safety
    /// `b` must be a block of the entries.
    unsafe fn key_block(self, b: usize) -> *const u8;
    /// The first of position `t`'s values.
    ///
    /// # Safety
    /// `t` must be a position of the entries.
    unsafe fn value_row(self, t: usize) -> *const u8;
    /// Entries `i..i + 4` from `p`, as f32.
    ///
    /// # Safety
    /// They must be readable; the CPU must have NEON.
    unsafe fn load4(p: *const u8, i: usize) -> float32x4_t;
}

/// Keys and values gathered to f32: the key blocks one after the other, then value rows of
/// `vhd` likewise.
#[derive(Clone, Copy)]
struct F32Entries {
    keys: *const f32,
    values: *const f32,
    hd: usize,
    vhd: usize,
}

// SAFETY: the pointers are offset within the gathered buffers, whose sizes `attend_neon`
// checked against the blocks and positions it names.
unsafe impl Entries for F32Entries {
    #[inline(always)]
    unsafe fn key_block(self, b: usize) -> *const u8 {
        // SAFETY: block `b` lies inside the keys (the caller's contract).
        unsafe { self.keys.add(b * self.hd * KB) as *const u8 }
    }
    #[inline(always)]
    unsafe fn value_row(self, t: usize) -> *const u8 {
        // SAFETY: position `t` lies inside the values (the caller's contract).
        unsafe { self.values.add(t * self.vhd) as *const u8 }
    }
    #[inline(always)]
    unsafe fn load4(p: *const u8, i: usize) -> float32x4_t {
        // SAFETY: the caller guarantees the four floats and NEON.
        unsafe { vld1q_f32((p as *const f32).add(i)) }
    }
}

/// The f16 blocks of a KV cache, where they lie.
#[derive(Clone, Copy)]
struct F16Entries<'a> {
    blocks: &'a [F16Block<'a>],
    vhd: usize,
}

// SAFETY: `attend_f16_neon` checked that there is a block for every position it names and
// that each block holds `hd * KB` keys and `KB * vhd` values.
unsafe impl Entries for F16Entries<'_> {
    #[inline(always)]
    unsafe fn key_block(self, b: usize) -> *const u8 {
        // SAFETY: `b` is one of the blocks (the caller's contract).
        unsafe { self.blocks.get_unchecked(b).keys.as_ptr() }
    }
    #[inline(always)]
    unsafe fn value_row(self, t: usize) -> *const u8 {
        // SAFETY: block `t / KB` exists and holds `KB` rows of `vhd` values.
        unsafe {
            let block = self.blocks.get_unchecked(t / KB);
            block.values.as_ptr().add(2 * (t % KB) * self.vhd)
        }
    }
    #[inline(always)]
    unsafe fn load4(p: *const u8, i: usize) -> float32x4_t {
        // SAFETY: the caller guarantees the four halves and NEON.
        unsafe { vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16((p as *const u16).add(i)))) }
    }
}

/// [`generic::attend`] with sixteen positions per four vectors: a vector exponential, and per
/// group of up to four heads one pass over the keys and one over the values (each key and
/// value read once for the group). Alone, a head's keys are scored four blocks at a time
/// (sixteen FMA chains) and 32 output columns are held in registers. Every head's sums run in
/// the same order either way, so its result does not depend on the group. Positions before
/// `first` (a sliding window) get the weight 0, exactly, as those past `n`.
///
/// # Safety
/// The CPU must support NEON. The shapes are checked here: any the vector path cannot take (a
/// value head not a multiple of 4 wide, `q` or `out` not `heads` whole heads, too few keys or
/// values, `first >= n`) go to the scalar kernel.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "neon")]
pub(super) unsafe fn attend_neon(
    q: &[f32],
    keys: &[f32],
    values: &[f32],
    first: usize,
    n: usize,
    scale: f32,
    sinks: &[f32],
    out: &mut [f32],
    scores: &mut Vec<f32>,
    heads: usize,
) {
    let heads = heads.max(1);
    let (hd, vhd) = (q.len() / heads, out.len() / heads);
    if !attention_vector_shapes(q, out, heads, (first, n), sinks, 4)
        || keys.len() < n.div_ceil(KB) * KB * hd
        || values.len() < n * vhd
    {
        return generic::attend(q, keys, values, first, n, scale, sinks, out, scores, heads);
    }
    let e = F32Entries {
        keys: keys.as_ptr(),
        values: values.as_ptr(),
        hd,
        vhd,
    };
    // SAFETY: the caller guarantees NEON; the shapes were checked above, and `e` reaches
    // `n.div_ceil(KB)` key blocks and `n` value rows.
    unsafe { attend_with(q, e, first, n, scale, sinks, out, scores, heads) }
}

/// [`generic::attend_f16`] reading the blocks where they lie, with the same bits as
/// [`attend_neon`] over the same entries converted to f32.
///
/// # Safety
/// The CPU must support NEON. The shapes are checked here: any the vector path cannot take
/// (as [`attend_neon`], or a block too short) go to the scalar kernel.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "neon")]
pub(super) unsafe fn attend_f16_neon(
    q: &[f32],
    blocks: &[F16Block<'_>],
    first: usize,
    n: usize,
    scale: f32,
    sinks: &[f32],
    out: &mut [f32],
    scores: &mut Vec<f32>,
    heads: usize,
) {
    let heads = heads.max(1);
    let (hd, vhd) = (q.len() / heads, out.len() / heads);
    let needed = n.div_ceil(KB);
    if !attention_vector_shapes(q, out, heads, (first, n), sinks, 4)
        || blocks.len() < needed
        || blocks[..needed]
            .iter()
            .any(|b| b.keys.len() < 2 * hd * KB || b.values.len() < 2 * KB * vhd)
    {
        return generic::attend_f16(q, blocks, first, n, scale, sinks, out, scores, heads);
    }
    let e = F16Entries { blocks, vhd };
    // SAFETY: the caller guarantees NEON; the shapes were checked above, and every block
    // below `n.div_ceil(KB)` holds its keys and values.
    unsafe { attend_with(q, e, first, n, scale, sinks, out, scores, heads) }
}

/// The attention body of [`attend_neon`] and [`attend_f16_neon`].
///
/// No `target_feature` of its own: inlined into them.
///
/// # Safety
/// The CPU must support NEON. `q.len() == heads * hd`, `out.len() == heads * vhd` with `vhd`
/// a multiple of 4, `first < n`, `sinks` empty or one per head, and `e` reaches
/// `n.div_ceil(KB)` key blocks of `hd * KB` entries and `n` value rows of `vhd`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn attend_with<E: Entries>(
    q: &[f32],
    e: E,
    first: usize,
    n: usize,
    scale: f32,
    sinks: &[f32],
    out: &mut [f32],
    scores: &mut Vec<f32>,
    heads: usize,
) {
    // SAFETY: the caller guarantees NEON and the shapes. `scores` is resized to
    // `heads * stride + heads` floats. So scoring reads the query rows `h0..h0 + g` of `q` and
    // key blocks below `blocks` and writes `KB` scores per head and block inside that head's
    // `stride`; the softmax reads and writes `[i, i + 4)` of each head's `stride` scores
    // (`stride` is a multiple of `KB` = 16) and one inverse sum at `heads * stride + h`; the
    // value pass reads `n` weights per head and `n` value rows and writes each head's `vhd`
    // outputs: the ranges `score_blocks`, `score_heads` and `values_heads` require.
    unsafe {
        let (hd, vhd) = (q.len() / heads, out.len() / heads);
        let blocks = n.div_ceil(KB);
        // Per head `blocks * KB` scores, then one inverse sum per head.
        let stride = blocks * KB;
        scores.clear();
        scores.resize(heads * stride + heads, 0.0);
        let sp = scores.as_mut_ptr();
        let qp = q.as_ptr();
        let mut h0 = 0;
        while h0 < heads {
            let g = (heads - h0).min(4);
            let (qh, sh) = (qp.add(h0 * hd), sp.add(h0 * stride));
            match g {
                1 => {
                    // Four blocks at a time, for more FMA chains.
                    let mut b = 0;
                    while b + 4 <= blocks {
                        score_blocks::<4, E>(qh, hd, e, b, scale, sh.add(b * KB));
                        b += 4;
                    }
                    while b < blocks {
                        score_blocks::<1, E>(qh, hd, e, b, scale, sh.add(b * KB));
                        b += 1;
                    }
                }
                2 => score_heads::<2, E>(qh, hd, e, blocks, scale, sh, stride),
                3 => score_heads::<3, E>(qh, hd, e, blocks, scale, sh, stride),
                _ => score_heads::<4, E>(qh, hd, e, blocks, scale, sh, stride),
            }
            h0 += g;
        }
        for h in 0..heads {
            let s = std::slice::from_raw_parts_mut(sp.add(h * stride), stride);
            s[..first].fill(f32::NEG_INFINITY);
            s[n..].fill(f32::NEG_INFINITY);
            let sink = sinks.get(h).copied();
            // The maximum, four lanes at a time. The same value in any order.
            let mut lane_max = vdupq_n_f32(f32::NEG_INFINITY);
            for c in s.chunks_exact(4) {
                lane_max = vmaxq_f32(lane_max, vld1q_f32(c.as_ptr()));
            }
            let max = vmaxvq_f32(lane_max);
            let max = sink.map_or(max, |k| max.max(k));
            let mut vsum = vdupq_n_f32(0.0);
            for c in s.chunks_exact_mut(4) {
                let e = exp_nonpositive(vsubq_f32(vld1q_f32(c.as_ptr()), vdupq_n_f32(max)));
                vst1q_f32(c.as_mut_ptr(), e);
                vsum = vaddq_f32(vsum, e);
            }
            let sink_term = sink.map_or(0.0, |k| (k - max).exp());
            *sp.add(heads * stride + h) = 1.0 / (vaddvq_f32(vsum) + sink_term);
        }
        let op = out.as_mut_ptr();
        let mut h0 = 0;
        while h0 < heads {
            let g = (heads - h0).min(4);
            let w = |i: usize| sp.add((h0 + i) * stride) as *const f32;
            let inv = |i: usize| *sp.add(heads * stride + h0 + i);
            let o = |i: usize| op.add((h0 + i) * vhd);
            match g {
                1 => values_heads::<1, 8, E>(&[w(0)], n, e, vhd, &[inv(0)], &[o(0)]),
                2 => values_heads::<2, 4, E>(
                    &[w(0), w(1)],
                    n,
                    e,
                    vhd,
                    &[inv(0), inv(1)],
                    &[o(0), o(1)],
                ),
                3 => values_heads::<3, 4, E>(
                    &[w(0), w(1), w(2)],
                    n,
                    e,
                    vhd,
                    &[inv(0), inv(1), inv(2)],
                    &[o(0), o(1), o(2)],
                ),
                _ => values_heads::<4, 4, E>(
                    &[w(0), w(1), w(2), w(3)],
                    n,
                    e,
                    vhd,
                    &[inv(0), inv(1), inv(2), inv(3)],
                    &[o(0), o(1), o(2), o(3)],
                ),
            }
            h0 += g;
        }
    }
}

/// Scores of the `N` key blocks of `e` from block `b` against the query at `q` (`hd` floats),
/// times `scale`, into `out`.
///
/// No `target_feature` of its own: inlined into `attend_with`.
///
/// # Safety
/// The CPU must support NEON. `q` must be valid for reading `hd` floats, `e` must reach key
/// blocks `b..b + N` and `out` must be valid for writing `N * KB` floats.
#[inline(always)]
unsafe fn score_blocks<const N: usize, E: Entries>(
    q: *const f32,
    hd: usize,
    e: E,
    b: usize,
    scale: f32,
    out: *mut f32,
) {
    // SAFETY: the caller guarantees NEON and the ranges; the loads read `q[d]` and entries
    // `d * KB` plus `0..16` of blocks `b + i` for `i < N`, `d < hd`, the stores `out[i * KB..]
    // [..16]`.
    unsafe {
        let kb: [*const u8; N] = std::array::from_fn(|i| e.key_block(b + i));
        let mut acc = [[vdupq_n_f32(0.0); 4]; N];
        for d in 0..hd {
            let qd = vdupq_n_f32(*q.add(d));
            for (k, a) in kb.iter().zip(acc.iter_mut()) {
                for (j, aj) in a.iter_mut().enumerate() {
                    *aj = vfmaq_f32(*aj, qd, E::load4(*k, d * KB + 4 * j));
                }
            }
        }
        for (i, a) in acc.iter().enumerate() {
            for (j, aj) in a.iter().enumerate() {
                vst1q_f32(out.add(i * KB + 4 * j), vmulq_n_f32(*aj, scale));
            }
        }
    }
}

/// Scores of `G` heads (queries at `q`, `hd` apart) against key blocks `0..blocks` of `e`,
/// each key vector loaded once for the heads; head `i`'s scores go to `out + i * stride`.
///
/// No `target_feature` of its own: inlined into `attend_with`.
///
/// # Safety
/// The CPU must support NEON. For every head `i < G`, element `d < hd` and block
/// `b < blocks`: `q` must be valid for reading `q[i * hd + d]`, `e` must reach key block `b`,
/// and `out` must be valid for writing `KB` floats at `i * stride + b * KB`.
#[inline(always)]
unsafe fn score_heads<const G: usize, E: Entries>(
    q: *const f32,
    hd: usize,
    e: E,
    blocks: usize,
    scale: f32,
    out: *mut f32,
    stride: usize,
) {
    // SAFETY: the caller guarantees NEON and the ranges; the reads are entries `d * KB` plus
    // `0..16` of block `b` and `q` at `i * hd + d`, the writes `out` at `i * stride + b * KB`
    // plus `0..16`, all inside them.
    unsafe {
        for b in 0..blocks {
            let kb = e.key_block(b);
            let mut acc = [[vdupq_n_f32(0.0); 4]; G];
            for d in 0..hd {
                let kv: [float32x4_t; 4] = std::array::from_fn(|j| E::load4(kb, d * KB + 4 * j));
                for (i, a) in acc.iter_mut().enumerate() {
                    let qd = vdupq_n_f32(*q.add(i * hd + d));
                    for (aj, kj) in a.iter_mut().zip(&kv) {
                        *aj = vfmaq_f32(*aj, qd, *kj);
                    }
                }
            }
            for (i, a) in acc.iter().enumerate() {
                let o = out.add(i * stride + b * KB);
                for (j, aj) in a.iter().enumerate() {
                    vst1q_f32(o.add(4 * j), vmulq_n_f32(*aj, scale));
                }
            }
        }
    }
}

/// Positions per tile of the value pass: each tile's values are read once per group of
/// columns from L1/L2, not once per group from memory.
const VALUE_TILE: usize = 256;

/// For `G` heads, `out[i] = inv[i] · Σ_t w[i][t] · v[t]` over `n` positions and all `vhd`
/// columns (a multiple of 4): tiles of [`VALUE_TILE`] positions, and in each `4C` columns per
/// pass over the tile, each value vector loaded once for the heads. Between tiles the sums
/// wait in `out`, so each column's sum runs over `t` in order.
///
/// No `target_feature` of its own: inlined into `attend_with`.
///
/// # Safety
/// The CPU must support NEON, and `vhd` must be a multiple of 4. For each head `i < G`, `w[i]`
/// must be valid for reading `n` floats and `out[i]` for reading and writing `vhd`; `e` must
/// reach the value rows of positions `0..n`, `vhd` entries each.
#[inline(always)]
unsafe fn values_heads<const G: usize, const C: usize, E: Entries>(
    w: &[*const f32; G],
    n: usize,
    e: E,
    vhd: usize,
    inv: &[f32; G],
    out: &[*mut f32; G],
) {
    // SAFETY: the caller guarantees NEON and the ranges; each call covers positions `t0..t1`
    // inside `0..n` and columns `c..c + 4 * C` (then `c..c + 4`) with that end at most `vhd`,
    // since `vhd` is a multiple of 4, which is what `weighted_values` needs.
    unsafe {
        let mut t0 = 0;
        while t0 < n {
            let t1 = (t0 + VALUE_TILE).min(n);
            let mut c = 0;
            while c + 4 * C <= vhd {
                weighted_values::<G, C, E>(w, (t0..t1, n), e, inv, out, c);
                c += 4 * C;
            }
            while c < vhd {
                weighted_values::<G, 1, E>(w, (t0..t1, n), e, inv, out, c);
                c += 4;
            }
            t0 = t1;
        }
    }
}

/// For `G` heads, the sums `Σ_t w[i][t] · v[t][c..c + 4C]` over the positions `ts` of a tile,
/// from 0 at the first tile or from the sums `out[i][c..c + 4C]` holds, in order over `t`;
/// stored back into `out[i]`, times `inv[i]` after the last tile (the one ending at `n`).
///
/// No `target_feature` of its own: inlined into `attend_with`.
///
/// # Safety
/// The CPU must support NEON. For every `t` in `ts`, `e` must reach position `t`'s values
/// `c..c + 4C`; for each head `i < G`, `w[i]` must be valid for reading floats `ts` and
/// `out[i]` for reading and writing `4 * C` floats at `c`.
#[inline(always)]
unsafe fn weighted_values<const G: usize, const C: usize, E: Entries>(
    w: &[*const f32; G],
    (ts, n): (std::ops::Range<usize>, usize),
    e: E,
    inv: &[f32; G],
    out: &[*mut f32; G],
    c: usize,
) {
    // SAFETY: the caller guarantees NEON and the ranges; the loads read values `c + 4 * j..`
    // plus `0..4` of each position for `j < C`, `w[i][t]` and `out[i][c + 4 * j..][..4]`, the
    // stores write the latter, all inside them.
    unsafe {
        let (first, last) = (ts.start == 0, ts.end == n);
        let mut acc: [[float32x4_t; C]; G] = std::array::from_fn(|i| {
            std::array::from_fn(|j| match first {
                true => vdupq_n_f32(0.0),
                false => vld1q_f32(out[i].add(c + 4 * j)),
            })
        });
        for t in ts {
            let vt = e.value_row(t);
            let vs: [float32x4_t; C] = std::array::from_fn(|j| E::load4(vt, c + 4 * j));
            for (i, a) in acc.iter_mut().enumerate() {
                let wt = vdupq_n_f32(*w[i].add(t));
                for (aj, vj) in a.iter_mut().zip(&vs) {
                    *aj = vfmaq_f32(*aj, wt, *vj);
                }
            }
        }
        for (i, a) in acc.iter().enumerate() {
            for (j, aj) in a.iter().enumerate() {
                let v = match last {
                    true => vmulq_n_f32(*aj, inv[i]),
                    false => *aj,
                };
                vst1q_f32(out[i].add(c + 4 * j), v);
            }
        }
    }
}
