//! The AVX2 attention kernels: [`generic::attend`] over keys and values gathered to f32 in
//! the kernels' layout, and [`generic::attend_f16`] over the f16 blocks of a KV cache, read
//! where they lie (no gather: decode at long contexts spent most of its attention converting
//! the cache to f32 scratch and reading it back). Both run one body, [`attend_with`], generic
//! over where the entries come from ([`Entries`]); f16 to f32 is exact, so on the same entries
//! the two give the same bits.

use std::arch::x86_64::*;

use super::attention_vector_shapes;
use super::generic::{self, F16Block, KEY_BLOCK as KB};
use super::x86::{exp_nonpositive_avx2, hsum_ps};

/// Where [`attend_with`] reads keys and values: blocks of [`KB`] positions, each block's keys
/// transposed (`[head_dim][KB]`), values one row per position.
///
/// # Safety
/// `key_block(b)` for every block the caller names, and `value_row(t)` for every position
/// below its `n`, must point at that many entries ([`attend_with`]'s contract).
unsafe trait Entries: Copy {
    /// Bytes of one entry.
    const BYTES: usize;
    /// Whether the blocks lie apart in memory (a cache's), so that the body prefetches them;
    /// gathered scratch is one contiguous run, fresh in the cache.
    const SCATTERED: bool;
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
    /// Entries `i..i + 8` from `p`, as f32.
    ///
    /// # Safety
    /// They must be readable; the CPU must have AVX2 (and F16C for f16 entries).
    unsafe fn load8(p: *const u8, i: usize) -> __m256;
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

// SAFETY: the pointers are offset within the gathered buffers, whose sizes `attend_avx2`
// checked against the blocks and positions it names.
unsafe impl Entries for F32Entries {
    const BYTES: usize = 4;
    const SCATTERED: bool = false;
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
    unsafe fn load8(p: *const u8, i: usize) -> __m256 {
        // SAFETY: the caller guarantees the eight floats and AVX2.
        unsafe { _mm256_loadu_ps((p as *const f32).add(i)) }
    }
}

/// The f16 blocks of a KV cache, where they lie.
#[derive(Clone, Copy)]
struct F16Entries<'a> {
    blocks: &'a [F16Block<'a>],
    vhd: usize,
}

// SAFETY: `attend_f16_avx2` checked that there is a block for every position it names and
// that each block holds `hd * KB` keys and `KB * vhd` values.
unsafe impl Entries for F16Entries<'_> {
    const BYTES: usize = 2;
    const SCATTERED: bool = true;
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
    unsafe fn load8(p: *const u8, i: usize) -> __m256 {
        // SAFETY: the caller guarantees the eight halves, AVX2 and F16C.
        unsafe { _mm256_cvtph_ps(_mm_loadu_si128((p as *const u16).add(i) as *const __m128i)) }
    }
}

/// Key blocks prefetched ahead of the one being scored, and value rows ahead of the one
/// being summed (in the first pass over a tile), where the entries are a cache's
/// ([`Entries::SCATTERED`]). A cache's blocks lie apart (other heads'
/// and layers' between them) and were evicted by the weights since the last step, so the
/// hardware prefetchers, which stop at page boundaries, leave each block's first lines to
/// wait for memory.
const PREFETCH_BLOCKS: usize = 2;
const PREFETCH_ROWS: usize = 2 * KB;

/// Prefetches the cache lines of `bytes` bytes from `p` into L1.
///
/// # Safety
/// None beyond SSE (x86-64's baseline): a prefetch does not fault.
#[inline(always)]
unsafe fn prefetch(p: *const u8, bytes: usize) {
    for line in (0..bytes).step_by(64) {
        // SAFETY: a prefetch of any address is harmless.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(line) as *const i8) };
    }
}

/// [`generic::attend`] with sixteen positions per pair of vectors: a vector exponential, and
/// per group of up to four heads one pass over the keys and one over the values (each key and
/// value read once for the group). Alone, a head's keys are scored four blocks at a time (eight
/// FMA chains) and 64 output columns are held in registers. Every head's sums run in the same
/// order either way, so its result does not depend on the group. Positions before `first` (a
/// sliding window) get the weight 0, exactly, as those past `n`.
///
/// # Safety
/// The CPU must support AVX2 and FMA. The shapes are checked here: any the vector path cannot
/// take (a value head not a multiple of 8 wide, `q` or `out` not `heads` whole heads, too few
/// keys or values, `first >= n`) go to the scalar kernel.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn attend_avx2(
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
    if !attention_vector_shapes(q, out, heads, (first, n), sinks, 8)
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
    // SAFETY: the features are the caller's; the shapes were checked above, and `e` reaches
    // `n.div_ceil(KB)` key blocks and `n` value rows.
    unsafe { attend_with(q, e, first, n, scale, sinks, out, scores, heads) }
}

/// [`generic::attend_f16`] reading the blocks where they lie, with the same bits as
/// [`attend_avx2`] over the same entries converted to f32.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C. The shapes are checked here: any the vector path
/// cannot take (as [`attend_avx2`], or a block too short) go to the scalar kernel.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn attend_f16_avx2(
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
    if !attention_vector_shapes(q, out, heads, (first, n), sinks, 8)
        || blocks.len() < needed
        || blocks[..needed]
            .iter()
            .any(|b| b.keys.len() < 2 * hd * KB || b.values.len() < 2 * KB * vhd)
    {
        return generic::attend_f16(q, blocks, first, n, scale, sinks, out, scores, heads);
    }
    let e = F16Entries { blocks, vhd };
    // SAFETY: the features are the caller's; the shapes were checked above, and every block
    // below `n.div_ceil(KB)` holds its keys and values.
    unsafe { attend_with(q, e, first, n, scale, sinks, out, scores, heads) }
}

/// The attention body of [`attend_avx2`] and [`attend_f16_avx2`].
///
/// No `target_feature` of its own: inlined into them.
///
/// # Safety
/// The CPU must support AVX2 and FMA (and what `E::load8` needs). `q.len() == heads * hd`,
/// `out.len() == heads * vhd` with `vhd` a multiple of 8, `first < n`, `sinks` empty or one
/// per head, and `e` reaches `n.div_ceil(KB)` key blocks of `hd * KB` entries and `n` value
/// rows of `vhd`.
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
    // SAFETY: the caller guarantees the features and the shapes. `scores` is resized to
    // `heads * stride + heads` floats. So scoring reads the query rows `h0..h0 + g` of `q` and
    // key blocks below `blocks` and writes `KB` scores per head and block inside that head's
    // `stride`; the softmax reads and writes `[i, i + 8)` of each head's `stride` scores
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
        let vscale = _mm256_set1_ps(scale);
        let mut h0 = 0;
        while h0 < heads {
            let g = (heads - h0).min(4);
            let (qh, sh) = (qp.add(h0 * hd), sp.add(h0 * stride));
            match g {
                1 => {
                    // Four blocks at a time, for more FMA chains.
                    let mut b = 0;
                    while b + 4 <= blocks {
                        score_blocks::<4, E>(
                            q.get_unchecked(h0 * hd..(h0 + 1) * hd),
                            e,
                            (b, blocks),
                            vscale,
                            sh.add(b * KB),
                        );
                        b += 4;
                    }
                    while b < blocks {
                        score_blocks::<1, E>(
                            q.get_unchecked(h0 * hd..(h0 + 1) * hd),
                            e,
                            (b, blocks),
                            vscale,
                            sh.add(b * KB),
                        );
                        b += 1;
                    }
                }
                2 => score_heads::<2, E>(qh, hd, e, blocks, vscale, sh, stride),
                3 => score_heads::<3, E>(qh, hd, e, blocks, vscale, sh, stride),
                _ => score_heads::<4, E>(qh, hd, e, blocks, vscale, sh, stride),
            }
            h0 += g;
        }
        for h in 0..heads {
            let s = std::slice::from_raw_parts_mut(sp.add(h * stride), stride);
            s[..first].fill(f32::NEG_INFINITY);
            s[n..].fill(f32::NEG_INFINITY);
            let sink = sinks.get(h).copied();
            // The maximum, eight lanes at a time (one chain of dependent `max` per score was
            // a quarter of the kernel at 2,048 positions). The same value in any order.
            let mut lane_max = _mm256_set1_ps(f32::NEG_INFINITY);
            for i in (0..stride).step_by(8) {
                lane_max = _mm256_max_ps(lane_max, _mm256_loadu_ps(s.as_ptr().add(i)));
            }
            let lanes: [f32; 8] = std::mem::transmute(lane_max);
            let max = lanes.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
            let max = sink.map_or(max, |k| max.max(k));
            let (vmax, mut vsum) = (_mm256_set1_ps(max), _mm256_setzero_ps());
            for i in (0..stride).step_by(8) {
                let e =
                    exp_nonpositive_avx2(_mm256_sub_ps(_mm256_loadu_ps(s.as_ptr().add(i)), vmax));
                _mm256_storeu_ps(s.as_mut_ptr().add(i), e);
                vsum = _mm256_add_ps(vsum, e);
            }
            let sink_term = sink.map_or(0.0, |k| (k - max).exp());
            *sp.add(heads * stride + h) = 1.0 / (hsum_ps(vsum) + sink_term);
        }
        let op = out.as_mut_ptr();
        let mut h0 = 0;
        while h0 < heads {
            let g = (heads - h0).min(4);
            let w = |i: usize| sp.add((h0 + i) * stride) as *const f32;
            let inv = |i: usize| _mm256_set1_ps(*sp.add(heads * stride + h0 + i));
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
                3 => values_heads::<3, 2, E>(
                    &[w(0), w(1), w(2)],
                    n,
                    e,
                    vhd,
                    &[inv(0), inv(1), inv(2)],
                    &[o(0), o(1), o(2)],
                ),
                _ => values_heads::<4, 2, E>(
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

/// Scores of `G` heads (queries at `q`, `hd` apart) against key blocks `0..blocks` of `e`,
/// each key vector loaded once for the heads; head `i`'s scores go to `out + i * stride`.
///
/// No `target_feature` of its own: inlined into `attend_with`.
///
/// # Safety
/// The CPU must support AVX2 and FMA. For every head `i < G`, element `d < hd` and block
/// `b < blocks`: `q` must be valid for reading `q[i * hd + d]`, `e` must reach key block `b`,
/// and `out` must be valid for writing `KB` floats at `i * stride + b * KB`.
#[inline(always)]
unsafe fn score_heads<const G: usize, E: Entries>(
    q: *const f32,
    hd: usize,
    e: E,
    blocks: usize,
    scale: __m256,
    out: *mut f32,
    stride: usize,
) {
    // SAFETY: the caller guarantees the features and the ranges; the reads are entries
    // `d * KB` plus `0..16` of block `b` and `q` at `i * hd + d`, the writes `out` at
    // `i * stride + b * KB` plus `0..16`, all inside them.
    unsafe {
        for b in 0..blocks {
            if E::SCATTERED && b + PREFETCH_BLOCKS < blocks {
                prefetch(e.key_block(b + PREFETCH_BLOCKS), hd * KB * E::BYTES);
            }
            let kb = e.key_block(b);
            let mut acc = [[_mm256_setzero_ps(); 2]; G];
            for d in 0..hd {
                let (k0, k1) = (E::load8(kb, d * KB), E::load8(kb, d * KB + 8));
                for (i, a) in acc.iter_mut().enumerate() {
                    let qd = _mm256_set1_ps(*q.add(i * hd + d));
                    a[0] = _mm256_fmadd_ps(qd, k0, a[0]);
                    a[1] = _mm256_fmadd_ps(qd, k1, a[1]);
                }
            }
            for (i, a) in acc.iter().enumerate() {
                let o = out.add(i * stride + b * KB);
                _mm256_storeu_ps(o, _mm256_mul_ps(a[0], scale));
                _mm256_storeu_ps(o.add(8), _mm256_mul_ps(a[1], scale));
            }
        }
    }
}

/// Positions per tile of the value pass: each tile's values (16-32 KB at 64 f16 or f32
/// columns) are read once per group of columns from L1/L2, not once per group from memory.
const VALUE_TILE: usize = 256;

/// For `G` heads, `out[i] = inv[i] · Σ_t w[i][t] · v[t]` over `n` positions and all `vhd`
/// columns (a multiple of 8): tiles of [`VALUE_TILE`] positions, and in each `8C` columns per
/// pass over the tile, each value vector loaded once for the heads. Between tiles the sums
/// wait in `out`, so each column's sum runs over `t` in order.
///
/// No `target_feature` of its own: inlined into `attend_with`.
///
/// # Safety
/// The CPU must support AVX2 and FMA, and `vhd` must be a multiple of 8. For each head `i < G`,
/// `w[i]` must be valid for reading `n` floats and `out[i]` for reading and writing `vhd`; `e`
/// must reach the value rows of positions `0..n`, `vhd` entries each.
#[inline(always)]
unsafe fn values_heads<const G: usize, const C: usize, E: Entries>(
    w: &[*const f32; G],
    n: usize,
    e: E,
    vhd: usize,
    inv: &[__m256; G],
    out: &[*mut f32; G],
) {
    // SAFETY: the caller guarantees the features and the ranges; each call covers positions
    // `t0..t1` inside `0..n` and columns `c..c + 8 * C` (then `c..c + 8`) with that end at most
    // `vhd`, since `vhd` is a multiple of 8, which is what `weighted_values` needs.
    unsafe {
        let mut t0 = 0;
        while t0 < n {
            let t1 = (t0 + VALUE_TILE).min(n);
            let mut c = 0;
            while c + 8 * C <= vhd {
                weighted_values::<G, C, E>(w, (t0..t1, n), (e, vhd), inv, out, c);
                c += 8 * C;
            }
            while c < vhd {
                weighted_values::<G, 1, E>(w, (t0..t1, n), (e, vhd), inv, out, c);
                c += 8;
            }
            t0 = t1;
        }
    }
}

/// Scores of the `N` key blocks of `e` from block `b` against `q`, times `scale`, into `out`,
/// prefetching the next `N` of its `blocks`.
///
/// No `target_feature` of its own: inlined into `attend_with`.
///
/// # Safety
/// The CPU must support AVX2 and FMA. `e` must reach key blocks `b..b + N` of `q.len() * KB`
/// entries and `out` must be valid for writing `N * KB` floats. No alignment is needed.
#[inline(always)]
unsafe fn score_blocks<const N: usize, E: Entries>(
    q: &[f32],
    e: E,
    (b, blocks): (usize, usize),
    scale: __m256,
    out: *mut f32,
) {
    // SAFETY: the caller guarantees the features and the ranges; the loads read entries
    // `d * KB` plus `0..16` of blocks `b + i` for `i < N`, `d < hd`, and the stores write
    // `out[i * KB..][..16]`, inside `N * KB`.
    unsafe {
        if E::SCATTERED {
            for ahead in b + N..(b + 2 * N).min(blocks) {
                prefetch(e.key_block(ahead), q.len() * KB * E::BYTES);
            }
        }
        let kb: [*const u8; N] = std::array::from_fn(|i| e.key_block(b + i));
        let mut acc = [[_mm256_setzero_ps(); 2]; N];
        for (d, &qd) in q.iter().enumerate() {
            let qd = _mm256_set1_ps(qd);
            for (k, a) in kb.iter().zip(acc.iter_mut()) {
                a[0] = _mm256_fmadd_ps(qd, E::load8(*k, d * KB), a[0]);
                a[1] = _mm256_fmadd_ps(qd, E::load8(*k, d * KB + 8), a[1]);
            }
        }
        for (i, a) in acc.iter().enumerate() {
            _mm256_storeu_ps(out.add(i * KB), _mm256_mul_ps(a[0], scale));
            _mm256_storeu_ps(out.add(i * KB + 8), _mm256_mul_ps(a[1], scale));
        }
    }
}

/// For `G` heads, the sums `Σ_t w[i][t] · v[t][c..c + 8C]` over the positions `ts` of a tile,
/// from 0 at the first tile or from the sums `out[i][c..c + 8C]` holds, in order over `t`;
/// stored back into `out[i]`, times `inv[i]` after the last tile (the one ending at `n`). The
/// first pass over a tile (`c == 0`) prefetches the value rows (`vhd` entries) ahead.
///
/// No `target_feature` of its own: inlined into `attend_with`.
///
/// # Safety
/// The CPU must support AVX2 and FMA. For every `t` in `ts`, `e` must reach position `t`'s
/// values `c..c + 8C`; for each head `i < G`, `w[i]` must be valid for reading floats `ts` and
/// `out[i]` for reading and writing `8 * C` floats at `c`. No alignment is needed.
#[inline(always)]
unsafe fn weighted_values<const G: usize, const C: usize, E: Entries>(
    w: &[*const f32; G],
    (ts, n): (std::ops::Range<usize>, usize),
    (e, vhd): (E, usize),
    inv: &[__m256; G],
    out: &[*mut f32; G],
    c: usize,
) {
    // SAFETY: the caller guarantees the features and the ranges; the loads read values
    // `c + 8 * j..` plus `0..8` of each position for `j < C`, `w[i][t]` and `out[i][c + 8 *
    // j..][..8]`, the stores write the latter, all inside them.
    unsafe {
        let (first, last) = (ts.start == 0, ts.end == n);
        let mut acc: [[__m256; C]; G] = std::array::from_fn(|i| {
            std::array::from_fn(|j| match first {
                true => _mm256_setzero_ps(),
                false => _mm256_loadu_ps(out[i].add(c + 8 * j)),
            })
        });
        for t in ts {
            if E::SCATTERED && c == 0 && t + PREFETCH_ROWS < n {
                prefetch(e.value_row(t + PREFETCH_ROWS), vhd * E::BYTES);
            }
            let vt = e.value_row(t);
            let vs: [__m256; C] = std::array::from_fn(|j| E::load8(vt, c + 8 * j));
            for (i, a) in acc.iter_mut().enumerate() {
                let wt = _mm256_set1_ps(*w[i].add(t));
                for (aj, vj) in a.iter_mut().zip(&vs) {
                    *aj = _mm256_fmadd_ps(wt, *vj, *aj);
                }
            }
        }
        for (i, a) in acc.iter().enumerate() {
            for (j, aj) in a.iter().enumerate() {
                let v = match last {
                    true => _mm256_mul_ps(*aj, inv[i]),
                    false => *aj,
                };
                _mm256_storeu_ps(out[i].add(c + 8 * j), v);
            }
        }
    }
}
