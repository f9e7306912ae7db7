//! aarch64 panel kernels of the k-quants (Q4_K, Q5_K, Q6_K and Q3_K in its layout, IQ4_XS,
//! Q2_K) against [`BlockQ8K`] activations, on a [`Dots`] engine (see `aarch64_panel.rs`).
//!
//! Each computes the integer sums and f32 steps the AVX-512 kernel of the same name documents
//! (`x86_panel.rs`), per quad of four rows: all four quads per super-block for one activation
//! row, one quad per pass over the panel for several (so that the integer and float sums of
//! every row stay in registers).

use std::arch::aarch64::*;

use worker_gguf::quants::iq::KVALUES_IQ4NL;

use super::aarch64_panel::{by_quads, dot_groups, f16x4, store_quads, with_high_bits, Dots};
use super::panel::{PanelFormat, PANEL};
use super::BlockQ8K;

/// Four bytes at `p` (unaligned), unsigned, as i32 lanes.
///
/// # Safety
/// The CPU must support NEON; `p` must be valid for reading 8 bytes (four are used).
#[inline(always)]
unsafe fn u8x4(p: *const u8) -> int32x4_t {
    // SAFETY: the caller guarantees NEON and the 8 bytes.
    unsafe { vreinterpretq_s32_u32(vmovl_u16(vget_low_u16(vmovl_u8(vld1_u8(p))))) }
}

/// Four bytes at `p` (unaligned), signed, as i32 lanes.
///
/// # Safety
/// The CPU must support NEON; `p` must be valid for reading 8 bytes (four are used).
#[inline(always)]
unsafe fn i8x4(p: *const u8) -> int32x4_t {
    // SAFETY: the caller guarantees NEON and the 8 bytes.
    unsafe { vmovl_s16(vget_low_s16(vmovl_s8(vld1_s8(p as *const i8)))) }
}

/// `Σ_k m_k · s_k` per lane over eight pairs: `m` holds, per pair `k`, a quad's eight
/// unsigned bytes (each row's two values side by side), `s` the sixteen 16-bit sums the pairs
/// multiply (pair `k` takes lanes `2k` and `2k + 1`).
///
/// # Safety
/// The CPU must support NEON; `m(k)` must be valid for reading 8 bytes for every `k < K`.
#[inline(always)]
unsafe fn min_sums<const K: usize>(m: impl Fn(usize) -> *const u8, s: [int16x8_t; 2]) -> int32x4_t {
    // SAFETY: the caller guarantees NEON and the reads of `m(k)`.
    unsafe {
        let (mut lo, mut hi) = (vdupq_n_s32(0), vdupq_n_s32(0));
        for k in 0..K {
            let mk = vreinterpretq_s16_u16(vmovl_u8(vld1_u8(m(k))));
            let pairs = vreinterpretq_s32_s16(s[k / 4]);
            let sk = vreinterpretq_s16_s32(match k % 4 {
                0 => vdupq_laneq_s32::<0>(pairs),
                1 => vdupq_laneq_s32::<1>(pairs),
                2 => vdupq_laneq_s32::<2>(pairs),
                _ => vdupq_laneq_s32::<3>(pairs),
            });
            lo = vmlal_s16(lo, vget_low_s16(mk), vget_low_s16(sk));
            hi = vmlal_high_s16(hi, mk, sk);
        }
        vpaddq_s32(lo, hi)
    }
}

/// Q4_K (or, with `HIGH`, Q5_K: 16 added to each quant whose high bit is set) panels against
/// `NR` rows of [`BlockQ8K`]. Per row and super-block, in integers: `tot = Σ_j sc_j · Σ u·x`
/// over the eight sub-blocks and `mins = Σ_j m_j · Σ x`; then
/// `acc = fma(float(tot), d·dx, acc)` and `acc = fma(float(mins), dmin·(-dx), acc)`.
///
/// # Safety
/// The CPU must support the engine's features: this function has no `target_feature` of its own
/// and is inlined into one that enables them. Any lengths are fine: the kernel runs over the
/// panel blocks of `w` for which every row of `x` has a block.
#[inline(always)]
pub(super) unsafe fn panel_dot_q4_k<E: Dots, const HIGH: bool, const NR: usize>(
    w: &[u8],
    x: [&[BlockQ8K]; NR],
) -> [[f32; PANEL]; NR] {
    // SAFETY: as for this function; `q4_k_quads` bounds its reads.
    unsafe { by_quads!(q4_k_quads [E, HIGH,] NR (w, x)) }
}

/// [`panel_dot_q4_k`] in passes of `QG` quads.
///
/// # Safety
/// As for [`panel_dot_q4_k`]; `QG` must divide 4.
#[inline(always)]
unsafe fn q4_k_quads<E: Dots, const HIGH: bool, const NR: usize, const QG: usize>(
    w: &[u8],
    x: [&[BlockQ8K]; NR],
) -> [[f32; PANEL]; NR] {
    // SAFETY: the caller guarantees the engine's features. `b < nb <= w.len() / pbb` puts the
    // panel block `p` (`pbb` bytes) inside `w`, and `nb <= x[r].len()` for every row makes
    // `get_unchecked(b)` in bounds. With `q < 4` it reads from `p`: `d` at `8q` and `dmin` at
    // `32 + 8q` (8 bytes each), 8 scale bytes at `64 + 16j + 4q` (below 196), 8 min bytes at
    // `192 + 32k + 8q` (below 320), Q5_K's 2 mask bytes at `320 + 8(8j + g) + 2q` (below 832) and
    // 16 bytes of each 64-byte chunk `8k + g < 32` past `quants_offset`, which end at `pbb`; from
    // the activation block `qs[32j..][..32]` and the sixteen `bsums`; `store_quads` gets
    // `q0 + QG <= 4`.
    unsafe {
        let fmt = if HIGH {
            PanelFormat::Q5K
        } else {
            PanelFormat::Q4K
        };
        let pbb = fmt.panel_block_bytes();
        let nb = x.iter().fold(w.len() / pbb, |n, r| n.min(r.len()));
        let mut out = [[0f32; PANEL]; NR];
        for q0 in (0..4).step_by(QG) {
            let mut acc = [[vdupq_n_f32(0.0); QG]; NR];
            for b in 0..nb {
                let p = w.as_ptr().add(b * pbb);
                let qp = p.add(fmt.quants_offset());
                for qi in 0..QG {
                    let q = q0 + qi;
                    let mut tot = [vdupq_n_s32(0); NR];
                    for j in 0..8 {
                        let (k, t) = (j / 2, j % 2);
                        let u: [int8x16_t; 8] = std::array::from_fn(|g| {
                            let c = vld1q_u8(qp.add(64 * (8 * k + g) + 16 * q));
                            let v = if t == 0 {
                                vandq_u8(c, vdupq_n_u8(0x0F))
                            } else {
                                vshrq_n_u8::<4>(c)
                            };
                            let v = if HIGH {
                                with_high_bits(v, p.add(320 + 8 * (8 * j + g) + 2 * q))
                            } else {
                                v
                            };
                            vreinterpretq_s8_u8(v)
                        });
                        let sc = u8x4(p.add(64 + 16 * j + 4 * q));
                        for (r, tr) in tot.iter_mut().enumerate() {
                            let a = x[r].get_unchecked(b).qs.as_ptr().add(32 * j);
                            let xv = [vld1q_s8(a), vld1q_s8(a.add(16))];
                            *tr = vmlaq_s32(*tr, dot_groups::<E, 8>(&u, &xv), sc);
                        }
                    }
                    let (d, dmin) = (f16x4(p.add(8 * q)), f16x4(p.add(32 + 8 * q)));
                    for (r, acc_r) in acc.iter_mut().enumerate() {
                        let a = x[r].get_unchecked(b);
                        // The sums of each sub-block of 32: pair k is sub-blocks 2k, 2k+1.
                        let bs = vpaddq_s16(
                            vld1q_s16(a.bsums.as_ptr()),
                            vld1q_s16(a.bsums.as_ptr().add(8)),
                        );
                        let mins = min_sums::<4>(|k| p.add(192 + 32 * k + 8 * q), [bs, bs]);
                        let scale = vmulq_n_f32(d, a.d);
                        acc_r[qi] = vfmaq_f32(acc_r[qi], vcvtq_f32_s32(tot[r]), scale);
                        let mscale = vmulq_n_f32(dmin, -a.d);
                        acc_r[qi] = vfmaq_f32(acc_r[qi], vcvtq_f32_s32(mins), mscale);
                    }
                }
            }
            store_quads(&mut out, &acc, q0);
        }
        out
    }
}

/// Q6_K panels against `NR` rows of [`BlockQ8K`]. Per row and super-block, in integers:
/// `tot = Σ_s sc_s · Σ u·x - 32 · Σ_s sc_s · Σ x` over the sixteen sub-blocks (`u` = the 6-bit
/// quant, unsigned), taken here as `Σ_s sc_s · Σ (u - 32)·x` (the same integer; `u - 32` is a
/// signed byte for `sdot`); then `acc = fma(float(tot), d·dx, acc)`.
///
/// # Safety
/// The CPU must support the engine's features: this function has no `target_feature` of its own
/// and is inlined into one that enables them. Any lengths are fine: the kernel runs over the
/// panel blocks of `w` for which every row of `x` has a block.
#[inline(always)]
pub(super) unsafe fn panel_dot_q6_k<E: Dots, const NR: usize>(
    w: &[u8],
    x: [&[BlockQ8K]; NR],
) -> [[f32; PANEL]; NR] {
    // SAFETY: as for this function; `q6_k_quads` bounds its reads.
    unsafe { by_quads!(q6_k_quads [E,] NR (w, x)) }
}

/// [`panel_dot_q6_k`] in passes of `QG` quads.
///
/// # Safety
/// As for [`panel_dot_q6_k`]; `QG` must divide 4.
#[inline(always)]
unsafe fn q6_k_quads<E: Dots, const NR: usize, const QG: usize>(
    w: &[u8],
    x: [&[BlockQ8K]; NR],
) -> [[f32; PANEL]; NR] {
    // SAFETY: the caller guarantees the engine's features. `b < nb <= w.len() / pbb` puts the
    // panel block `p` (`pbb` bytes) inside `w`, and `nb <= x[r].len()` for every row makes
    // `get_unchecked(b)` in bounds. With `q < 4` it reads from `p`: `d` at `8q` (8 bytes), 8 scale
    // bytes at `32 + 32k + 8q`, `k < 8` (below 288 = `quants_offset`), and 16 bytes of each
    // 64-byte low chunk `c < 32` and high chunk `c % 16` after it, which end at `pbb`; from the
    // activation block `qs[16s..][..16]` and `qs[128 + 16s..][..16]`, `s < 8`; `store_quads` gets
    // `q0 + QG <= 4`.
    unsafe {
        let fmt = PanelFormat::Q6K;
        let pbb = fmt.panel_block_bytes();
        let nb = x.iter().fold(w.len() / pbb, |n, r| n.min(r.len()));
        let (low, bits45, offset) = (vdupq_n_u8(0x0F), vdupq_n_u8(0x30), vdupq_n_u8(32));
        let mut out = [[0f32; PANEL]; NR];
        for q0 in (0..4).step_by(QG) {
            let mut acc = [[vdupq_n_f32(0.0); QG]; NR];
            for b in 0..nb {
                let p = w.as_ptr().add(b * pbb);
                let qp = p.add(fmt.quants_offset());
                let high = qp.add(2048);
                for qi in 0..QG {
                    let q = q0 + qi;
                    // The scales of sub-blocks 2k and 2k+1 as an i16 pair per lane.
                    let pair = |k: usize| {
                        vreinterpretq_s32_s16(vmovl_s8(vld1_s8(p.add(32 + 32 * k + 8 * q) as _)))
                    };
                    let scale = |s: usize| {
                        let v = pair(s / 2);
                        if s.is_multiple_of(2) {
                            vshrq_n_s32::<16>(vshlq_n_s32::<16>(v))
                        } else {
                            vshrq_n_s32::<16>(v)
                        }
                    };
                    let mut tot = [vdupq_n_s32(0); NR];
                    // Sub-block s (elements 16s..16s+16: the low nibbles of chunks 4s..4s+4) and
                    // s + 8 (elements 128+16s..: their high nibbles).
                    for s in 0..8 {
                        let mut u = [vdupq_n_s8(0); 8];
                        for gi in 0..4 {
                            let c = 4 * s + gi;
                            let v = vld1q_u8(qp.add(64 * c + 16 * q));
                            let h = vld1q_u8(high.add(64 * (c % 16) + 16 * q));
                            // Bit pairs of group c at bits 2(c/16), of group c+32 at
                            // 2(c/16)+4, moved to bits 4-5.
                            let (h_lo, h_hi) = if c < 16 {
                                (vshlq_n_u8::<4>(h), h)
                            } else {
                                (vshlq_n_u8::<2>(h), vshrq_n_u8::<2>(h))
                            };
                            let lo = vbslq_u8(bits45, h_lo, vandq_u8(v, low));
                            let hi = vbslq_u8(bits45, h_hi, vshrq_n_u8::<4>(v));
                            u[gi] = vreinterpretq_s8_u8(vsubq_u8(lo, offset));
                            u[4 + gi] = vreinterpretq_s8_u8(vsubq_u8(hi, offset));
                        }
                        let (sc_lo, sc_hi) = (scale(s), scale(s + 8));
                        let (u_lo, u_hi) = ([u[0], u[1], u[2], u[3]], [u[4], u[5], u[6], u[7]]);
                        for (r, tr) in tot.iter_mut().enumerate() {
                            let a = x[r].get_unchecked(b).qs.as_ptr();
                            let s_lo = dot_groups::<E, 4>(&u_lo, &[vld1q_s8(a.add(16 * s))]);
                            let s_hi = dot_groups::<E, 4>(&u_hi, &[vld1q_s8(a.add(128 + 16 * s))]);
                            *tr = vmlaq_s32(vmlaq_s32(*tr, s_lo, sc_lo), s_hi, sc_hi);
                        }
                    }
                    let d = f16x4(p.add(8 * q));
                    for (r, acc_r) in acc.iter_mut().enumerate() {
                        let scale = vmulq_n_f32(d, x[r].get_unchecked(b).d);
                        acc_r[qi] = vfmaq_f32(acc_r[qi], vcvtq_f32_s32(tot[r]), scale);
                    }
                }
            }
            store_quads(&mut out, &acc, q0);
        }
        out
    }
}

/// IQ4_XS panels against `NR` rows of [`BlockQ8K`]. Per row and super-block, in integers:
/// `tot = Σ_j sc_j · Σ level·x` over the eight sub-blocks of 32 (the levels signed, straight
/// from the IQ4_NL table); then `acc = fma(float(tot), d·dx, acc)`.
///
/// # Safety
/// The CPU must support the engine's features: this function has no `target_feature` of its own
/// and is inlined into one that enables them. Any lengths are fine: the kernel runs over the
/// panel blocks of `w` for which every row of `x` has a block.
#[inline(always)]
pub(super) unsafe fn panel_dot_iq4_xs<E: Dots, const NR: usize>(
    w: &[u8],
    x: [&[BlockQ8K]; NR],
) -> [[f32; PANEL]; NR] {
    // SAFETY: as for this function; `iq4_xs_quads` bounds its reads.
    unsafe { by_quads!(iq4_xs_quads [E,] NR (w, x)) }
}

/// [`panel_dot_iq4_xs`] in passes of `QG` quads.
///
/// # Safety
/// As for [`panel_dot_iq4_xs`]; `QG` must divide 4.
#[inline(always)]
unsafe fn iq4_xs_quads<E: Dots, const NR: usize, const QG: usize>(
    w: &[u8],
    x: [&[BlockQ8K]; NR],
) -> [[f32; PANEL]; NR] {
    // SAFETY: the caller guarantees the engine's features. `b < nb <= w.len() / pbb` puts the
    // panel block `p` (`pbb` bytes) inside `w`, and `nb <= x[r].len()` for every row makes
    // `get_unchecked(b)` in bounds. With `q < 4` it reads from `p`: `d` at `8q` (8 bytes), 8 scale
    // bytes at `32 + 16j + 4q` (below 164) and 16 bytes of each 64-byte chunk `8k + g < 32` past
    // `quants_offset` (160), which end at `pbb`; from the activation block `qs[32j..][..32]`; the
    // IQ4_NL table is a 16-byte array; `store_quads` gets `q0 + QG <= 4`.
    unsafe {
        let fmt = PanelFormat::IQ4XS;
        let pbb = fmt.panel_block_bytes();
        let nb = x.iter().fold(w.len() / pbb, |n, r| n.min(r.len()));
        let table = vld1q_s8(KVALUES_IQ4NL.as_ptr());
        let mut out = [[0f32; PANEL]; NR];
        for q0 in (0..4).step_by(QG) {
            let mut acc = [[vdupq_n_f32(0.0); QG]; NR];
            for b in 0..nb {
                let p = w.as_ptr().add(b * pbb);
                let qp = p.add(fmt.quants_offset());
                for qi in 0..QG {
                    let q = q0 + qi;
                    let mut tot = [vdupq_n_s32(0); NR];
                    for j in 0..8 {
                        let (k, t) = (j / 2, j % 2);
                        let u: [int8x16_t; 8] = std::array::from_fn(|g| {
                            let c = vld1q_u8(qp.add(64 * (8 * k + g) + 16 * q));
                            let code = if t == 0 {
                                vandq_u8(c, vdupq_n_u8(0x0F))
                            } else {
                                vshrq_n_u8::<4>(c)
                            };
                            vqtbl1q_s8(table, code)
                        });
                        let sc = i8x4(p.add(32 + 16 * j + 4 * q));
                        for (r, tr) in tot.iter_mut().enumerate() {
                            let a = x[r].get_unchecked(b).qs.as_ptr().add(32 * j);
                            let xv = [vld1q_s8(a), vld1q_s8(a.add(16))];
                            *tr = vmlaq_s32(*tr, dot_groups::<E, 8>(&u, &xv), sc);
                        }
                    }
                    let d = f16x4(p.add(8 * q));
                    for (r, acc_r) in acc.iter_mut().enumerate() {
                        let scale = vmulq_n_f32(d, x[r].get_unchecked(b).d);
                        acc_r[qi] = vfmaq_f32(acc_r[qi], vcvtq_f32_s32(tot[r]), scale);
                    }
                }
            }
            store_quads(&mut out, &acc, q0);
        }
        out
    }
}

/// Q2_K panels against `NR` rows of [`BlockQ8K`]. Per row and super-block, in integers:
/// `tot = Σ_s sc_s · Σ u·x` over the sixteen sub-blocks of 16 and `mins = Σ_s m_s · Σx`;
/// then `acc = fma(float(tot), d·dx, acc)` and `acc = fma(float(mins), dmin·(-dx), acc)`.
///
/// # Safety
/// The CPU must support the engine's features: this function has no `target_feature` of its own
/// and is inlined into one that enables them. Any lengths are fine: the kernel runs over the
/// panel blocks of `w` for which every row of `x` has a block.
#[inline(always)]
pub(super) unsafe fn panel_dot_q2_k<E: Dots, const NR: usize>(
    w: &[u8],
    x: [&[BlockQ8K]; NR],
) -> [[f32; PANEL]; NR] {
    // SAFETY: as for this function; `q2_k_quads` bounds its reads.
    unsafe { by_quads!(q2_k_quads [E,] NR (w, x)) }
}

/// [`panel_dot_q2_k`] in passes of `QG` quads.
///
/// # Safety
/// As for [`panel_dot_q2_k`]; `QG` must divide 4.
#[inline(always)]
unsafe fn q2_k_quads<E: Dots, const NR: usize, const QG: usize>(
    w: &[u8],
    x: [&[BlockQ8K]; NR],
) -> [[f32; PANEL]; NR] {
    // SAFETY: the caller guarantees the engine's features. `b < nb <= w.len() / pbb` puts the
    // panel block `p` (`pbb` bytes) inside `w`, and `nb <= x[r].len()` for every row makes
    // `get_unchecked(b)` in bounds. With `q < 4` it reads from `p`: `d` at `8q` and `dmin` at
    // `32 + 8q` (8 bytes each), 8 scale bytes at `64 + 16s + 4q`, `s < 16` (below 320), 8 min
    // bytes at `320 + 32k + 8q`, `k < 8` (below 576 = `quants_offset`) and 16 bytes of each
    // 64-byte chunk `4c + gi < 16` after it, which end at `pbb`; from the activation block
    // `qs[16s..][..16]` and the sixteen `bsums`; `store_quads` gets `q0 + QG <= 4`.
    unsafe {
        let fmt = PanelFormat::Q2K;
        let pbb = fmt.panel_block_bytes();
        let nb = x.iter().fold(w.len() / pbb, |n, r| n.min(r.len()));
        let three = vdupq_n_u8(3);
        let mut out = [[0f32; PANEL]; NR];
        for q0 in (0..4).step_by(QG) {
            let mut acc = [[vdupq_n_f32(0.0); QG]; NR];
            for b in 0..nb {
                let p = w.as_ptr().add(b * pbb);
                let qp = p.add(fmt.quants_offset());
                for qi in 0..QG {
                    let q = q0 + qi;
                    let mut tot = [vdupq_n_s32(0); NR];
                    // Chunks 4c..4c+4 hold the sub-blocks c, c+4, c+8, c+12 (bit pairs 0-3).
                    for c in 0..4 {
                        let v: [uint8x16_t; 4] =
                            std::array::from_fn(|gi| vld1q_u8(qp.add(64 * (4 * c + gi) + 16 * q)));
                        for level in 0..4 {
                            let s = 4 * level + c;
                            let shift = vdupq_n_s8(-2 * level as i8);
                            let u =
                                v.map(|v| vreinterpretq_s8_u8(vandq_u8(vshlq_u8(v, shift), three)));
                            let sc = u8x4(p.add(64 + 16 * s + 4 * q));
                            for (r, tr) in tot.iter_mut().enumerate() {
                                let a = x[r].get_unchecked(b).qs.as_ptr().add(16 * s);
                                let sum = dot_groups::<E, 4>(&u, &[vld1q_s8(a)]);
                                *tr = vmlaq_s32(*tr, sum, sc);
                            }
                        }
                    }
                    let (d, dmin) = (f16x4(p.add(8 * q)), f16x4(p.add(32 + 8 * q)));
                    for (r, acc_r) in acc.iter_mut().enumerate() {
                        let a = x[r].get_unchecked(b);
                        let bs = [
                            vld1q_s16(a.bsums.as_ptr()),
                            vld1q_s16(a.bsums.as_ptr().add(8)),
                        ];
                        let mins = min_sums::<8>(|k| p.add(320 + 32 * k + 8 * q), bs);
                        let scale = vmulq_n_f32(d, a.d);
                        acc_r[qi] = vfmaq_f32(acc_r[qi], vcvtq_f32_s32(tot[r]), scale);
                        let mscale = vmulq_n_f32(dmin, -a.d);
                        acc_r[qi] = vfmaq_f32(acc_r[qi], vcvtq_f32_s32(mins), mscale);
                    }
                }
            }
            store_quads(&mut out, &acc, q0);
        }
        out
    }
}
