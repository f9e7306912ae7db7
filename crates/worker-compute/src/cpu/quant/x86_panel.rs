//! AVX-512 VNNI kernels for weights in the panel layout ([`super::panel`]): sixteen weight
//! rows against one or [`PANEL_BATCH`] activation rows, one weight row per 32-bit lane.
//!
//! Per block the sixteen rows' quants unpack once into eight vectors of unsigned bytes (one
//! per group of four elements); each activation row then costs eight `vpdpbusd` against its
//! broadcast bytes, one conversion and two `fmadd`s, whatever the number of rows.

use std::arch::x86_64::*;

use worker_gguf::quants::iq::KVALUES_MXFP4;

use super::panel::kernel_ids::*;
use super::panel::{PanelFormat, PANEL};
use super::{BlockQ8, BlockQ8K, PanelDots, PanelKernels, PANEL_BATCH};

mod avx2_bodies;
use avx2_bodies::*;

/// Defines, for each kernel, a module per instruction set holding its `target_feature`
/// functions for one and [`PANEL_BATCH`] rows and their safe wrappers `one` and `many`
/// (only the tables built after detecting the features reach them), and the two table
/// functions mapping a panel format to its kernels.
macro_rules! panel_tables {
    ($($format:pat => $dots:ident, $name:ident: $avx512:ident, $avx2:ident [$($g:tt)*], $a:ty;)*) => {
        panel_tables!(@isa avx512, "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c";
            $($name: $avx512 [$($g)*], $a;)*);
        panel_tables!(@isa avx2, "avx2,fma,f16c"; $($name: $avx2 [$($g)*], $a;)*);

        /// The AVX-512 VNNI panel kernels of `format`. The caller must have detected AVX-512
        /// F/BW/VL/DQ, VNNI, FMA and F16C.
        pub(super) fn kernels(format: PanelFormat) -> PanelKernels {
            let dots = match format {
                $($format => PanelDots::$dots(avx512::$name::one, avx512::$name::many),)*
            };
            PanelKernels { format, dots }
        }

        /// The AVX2 panel kernels of `format`. The caller must have detected AVX2, FMA and
        /// F16C.
        pub(super) fn kernels_avx2(format: PanelFormat) -> PanelKernels {
            let dots = match format {
                $($format => PanelDots::$dots(avx2::$name::one, avx2::$name::many),)*
            };
            PanelKernels { format, dots }
        }
    };
    (@isa $isa:ident, $features:literal; $($name:ident: $body:ident [$($g:tt)*], $a:ty;)*) => {
        mod $isa {$(
            pub(super) mod $name {
                use super::super::*;

                /// # Safety
                /// The CPU must support every feature this function enables. Any lengths
                /// are fine.
                #[target_feature(enable = $features)]
                unsafe fn imp(w: &[u8], x: [&[$a]; 1]) -> [[f32; PANEL]; 1] {
                    // SAFETY: the caller guarantees the features, which are those of the
                    // body's table (enabled here, so the body inlines with them); the body
                    // bounds its reads by `w.len()` and the lengths of `x`.
                    unsafe { $body::<$($g)* 1>(w, x) }
                }
                /// # Safety
                /// As for `imp`.
                #[target_feature(enable = $features)]
                unsafe fn imp_many(
                    w: &[u8],
                    x: [&[$a]; PANEL_BATCH],
                ) -> [[f32; PANEL]; PANEL_BATCH] {
                    // SAFETY: as in `imp`.
                    unsafe { $body::<$($g)* PANEL_BATCH>(w, x) }
                }
                pub(in super::super) fn one(w: &[u8], x: &[$a]) -> [f32; PANEL] {
                    // SAFETY: only reachable through a table whose builder detected the
                    // features.
                    unsafe { imp(w, [x])[0] }
                }
                pub(in super::super) fn many(
                    w: &[u8],
                    x: [&[$a]; PANEL_BATCH],
                ) -> [[f32; PANEL]; PANEL_BATCH] {
                    // SAFETY: as above.
                    unsafe { imp_many(w, x) }
                }
            }
        )*}
    };
}

// Each panel format's kernel: the activation format, the name of its modules, its AVX-512
// and AVX2 bodies and their leading const parameters, and the activation block type.
panel_tables! {
    PanelFormat::Q4_0 => Q8, q4_0: panel_dot, panel_dot_avx2 [Q4_0,], BlockQ8;
    PanelFormat::Q4_1 => Q8, q4_1: panel_dot, panel_dot_avx2 [Q4_1,], BlockQ8;
    PanelFormat::Q5_0 => Q8, q5_0: panel_dot, panel_dot_avx2 [Q5_0,], BlockQ8;
    PanelFormat::Q5_1 => Q8, q5_1: panel_dot, panel_dot_avx2 [Q5_1,], BlockQ8;
    PanelFormat::Q8_0 => Q8, q8_0: panel_dot, panel_dot_avx2 [Q8_0,], BlockQ8;
    PanelFormat::IQ4NL => Q8, iq4_nl: panel_dot, panel_dot_avx2 [IQ4_NL,], BlockQ8;
    // No 512-bit MXFP4 kernel yet: the AVX-512 table runs the AVX2 body (compiled with its
    // features), which the AVX2 machines that run the tests check.
    PanelFormat::MXFP4 => Q8, mxfp4: panel_dot_mxfp4_avx2, panel_dot_mxfp4_avx2 [], BlockQ8;
    PanelFormat::Q4K => Q8K, q4_k: panel_dot_q4_k, panel_dot_q4_k_avx2 [false,], BlockQ8K;
    PanelFormat::Q5K => Q8K, q5_k: panel_dot_q4_k, panel_dot_q4_k_avx2 [true,], BlockQ8K;
    // Q3_K is repacked into the Q6_K layout.
    PanelFormat::Q6K | PanelFormat::Q3K => Q8K, q6_k: panel_dot_q6_k, panel_dot_q6_k_avx2 [], BlockQ8K;
    PanelFormat::IQ4XS => Q8K, iq4_xs: panel_dot_iq4_xs, panel_dot_iq4_xs_avx2 [], BlockQ8K;
    PanelFormat::Q2K => Q8K, q2_k: panel_dot_q2_k, panel_dot_q2_k_avx2 [], BlockQ8K;
    PanelFormat::F16 => F32, f16: panel_dot_half, panel_dot_half_avx2 [false,], f32;
    PanelFormat::BF16 => F32, bf16: panel_dot_half, panel_dot_half_avx2 [true,], f32;
}

/// The eight vectors of unsigned quants of panel block `p`: vector `g` holds elements
/// `4g..4g+4` of the sixteen rows, row `i` in lane `i`.
///
/// No `target_feature` of its own: inlined into kernels that enable AVX-512 and VNNI.
///
/// # Safety
/// The CPU must support the features the AVX-512 panel table is built for (AVX-512 F/BW/VL/DQ and
/// VNNI, AVX2, FMA, F16C). `p` must be valid for reading one panel block of format `F`
/// (`format(F).panel_block_bytes()` bytes), at any alignment.
#[inline(always)]
unsafe fn unpack<const F: u8>(p: *const u8) -> [__m512i; 8] {
    // SAFETY: the caller guarantees the AVX-512 table's features and the block;
    // the 64-byte chunk loads read chunks `0..8` (Q8_0) or `0..4` past `quants_offset`, which end
    // at the block's end, the masks `8 * g..8 * g + 8` past `high_offset` (Q5_0, Q5_1) lie before
    // the quants, and the IQ4_NL table is a 16-byte array.
    unsafe {
        let q = p.add(format(F).quants_offset());
        let mut u = [_mm512_setzero_si512(); 8];
        if F == Q8_0 {
            for (g, v) in u.iter_mut().enumerate() {
                *v = _mm512_loadu_si512(q.add(64 * g) as *const _);
            }
            return u;
        }
        let low = _mm512_set1_epi8(0x0F);
        for c in 0..4 {
            let v = _mm512_loadu_si512(q.add(64 * c) as *const _);
            u[c] = _mm512_and_si512(v, low);
            u[c + 4] = _mm512_and_si512(_mm512_srli_epi16(v, 4), low);
        }
        if F == IQ4_NL {
            let table =
                _mm512_broadcast_i32x4(_mm_loadu_si128(IQ4_NL_U8.as_ptr() as *const __m128i));
            for v in u.iter_mut() {
                *v = _mm512_shuffle_epi8(table, *v);
            }
        }
        if F == Q5_0 || F == Q5_1 {
            let (sixteen, high) = (_mm512_set1_epi8(16), p.add(format(F).high_offset()));
            for (g, v) in u.iter_mut().enumerate() {
                let bits = std::ptr::read_unaligned(high.add(8 * g) as *const u64);
                *v = _mm512_mask_add_epi8(*v, bits, *v, sixteen);
            }
        }
        u
    }
}

/// Sixteen rows of `w` (a panel: a whole number of panel blocks) against `NR` activation
/// rows: see the module documentation of [`super::panel`] for the sums.
///
/// # Safety
/// The CPU must support the features the AVX-512 panel table is built for (AVX-512 F/BW/VL/DQ and
/// VNNI, AVX2, FMA, F16C): this function has no `target_feature` of its own and is inlined into one
/// that enables them. Any lengths are fine: the kernel runs over the panel blocks of `w` for which
/// every row of `x` has a block.
#[inline(always)]
unsafe fn panel_dot<const F: u8, const NR: usize>(
    w: &[u8],
    x: [&[BlockQ8]; NR],
) -> [[f32; PANEL]; NR] {
    // SAFETY: the caller guarantees the AVX-512 table's features. `b < nb <= w.len() / pbb` puts
    // the panel block `p` (`pbb` bytes) inside `w`, and `nb <= x[r].len()` for every row makes
    // `get_unchecked(b)` in bounds. From `p` it reads `d` at 0..32, `m` at 32..64 (Q4_1, Q5_1) and
    // what `unpack` reads, all inside the block (the layout table in panel.rs); `dot_groups` reads
    // the 32 bytes of `a.qs`.
    unsafe {
        let pbb = format(F).panel_block_bytes();
        let nb = x.iter().fold(w.len() / pbb, |n, r| n.min(r.len()));
        let mut acc = [_mm512_setzero_ps(); NR];
        for b in 0..nb {
            let p = w.as_ptr().add(b * pbb);
            let d = _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i));
            let bias = match F {
                Q4_1 | Q5_1 => _mm512_cvtph_ps(_mm256_loadu_si256(p.add(32) as *const __m256i)),
                Q4_0 => _mm512_mul_ps(d, _mm512_set1_ps(-8.0)),
                Q5_0 => _mm512_mul_ps(d, _mm512_set1_ps(-16.0)),
                // Q8_0, IQ4_NL.
                _ => _mm512_mul_ps(d, _mm512_set1_ps(-128.0)),
            };
            let u = unpack::<F>(p);
            for j in 0..NR {
                let a = x[j].get_unchecked(b);
                let s = _mm512_cvtepi32_ps(dot_groups(&u, a.qs.as_ptr()));
                let scale = _mm512_mul_ps(d, _mm512_set1_ps(a.d));
                acc[j] = _mm512_fmadd_ps(s, scale, acc[j]);
                acc[j] = _mm512_fmadd_ps(bias, _mm512_set1_ps(a.s), acc[j]);
            }
        }
        store(acc)
    }
}

/// Eight `vpdpbusd` of `u[g]` against the broadcast activation bytes `q[4g..4g+4]`, in two
/// chains (the integer sum is exact in any order).
///
/// # Safety
/// The CPU must support the features the AVX-512 panel table is built for (AVX-512 F/BW/VL/DQ and
/// VNNI, AVX2, FMA, F16C): this function has no `target_feature` of its own and is inlined into one
/// that enables them. `q` must be valid for reading 32 bytes, at any alignment.
#[inline(always)]
unsafe fn dot_groups(u: &[__m512i; 8], q: *const i8) -> __m512i {
    // SAFETY: the caller guarantees the AVX-512 table's features. The reads are the unaligned
    // `i32`s at bytes `4 * g`, `g < 8`: bytes 0..32 of `q`.
    unsafe {
        let q = q as *const i32;
        let bcast = |g: usize| _mm512_set1_epi32(std::ptr::read_unaligned(q.add(g)));
        let mut s0 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), u[0], bcast(0));
        let mut s1 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), u[1], bcast(1));
        for g in (2..8).step_by(2) {
            s0 = _mm512_dpbusd_epi32(s0, u[g], bcast(g));
            s1 = _mm512_dpbusd_epi32(s1, u[g + 1], bcast(g + 1));
        }
        _mm512_add_epi32(s0, s1)
    }
}

/// Q4_K (or, with `HIGH`, Q5_K: 16 added to each quant whose high bit is set) panels against
/// `NR` rows of [`BlockQ8K`]. Per row and super-block, in integers: `tot = Σ_j sc_j · Σ u·x`
/// over the eight sub-blocks and `mins = Σ_j m_j · Σ x`; then
/// `acc = fma(float(tot), d·dx, acc)` and `acc = fma(float(mins), dmin·(-dx), acc)`.
///
/// # Safety
/// The CPU must support the features the AVX-512 panel table is built for (AVX-512 F/BW/VL/DQ and
/// VNNI, AVX2, FMA, F16C): this function has no `target_feature` of its own and is inlined into one
/// that enables them. Any lengths are fine: the kernel runs over the panel blocks of `w` for which
/// every row of `x` has a block.
#[inline(always)]
unsafe fn panel_dot_q4_k<const HIGH: bool, const NR: usize>(
    w: &[u8],
    x: [&[BlockQ8K]; NR],
) -> [[f32; PANEL]; NR] {
    // SAFETY: the caller guarantees the AVX-512 table's features. `b < nb <= w.len() / pbb` puts
    // the panel block `p` (`pbb` bytes) inside `w`, and `nb <= x[r].len()` for every row makes
    // `get_unchecked(b)` in bounds. From `p` it reads `d` at 0..32, `dmin` at 32..64, the scales at
    // `64 + 16 * j` (64..192), the mins at `192 + 32 * k` (192..320), Q5_K's masks at
    // `320 + 8 * (8 * j + g)` (320..832) and the 64-byte chunks `8 * k + g < 32` past
    // `quants_offset`, which end at `pbb`; `dot_groups` reads `qs[32 * j..][..32]` of the
    // activation block, `j < 8`.
    unsafe {
        let fmt = if HIGH {
            PanelFormat::Q5K
        } else {
            PanelFormat::Q4K
        };
        let pbb = fmt.panel_block_bytes();
        let nb = x.iter().fold(w.len() / pbb, |n, r| n.min(r.len()));
        let low = _mm512_set1_epi8(0x0F);
        let mut acc = [_mm512_setzero_ps(); NR];
        for b in 0..nb {
            let p = w.as_ptr().add(b * pbb);
            let q = p.add(fmt.quants_offset());
            let mut tot = [_mm512_setzero_si512(); NR];
            for j in 0..8 {
                let (k, t) = (j / 2, j % 2);
                let mut u = [_mm512_setzero_si512(); 8];
                for (g, v) in u.iter_mut().enumerate() {
                    let c = _mm512_loadu_si512(q.add(64 * (8 * k + g)) as *const _);
                    let c = if t == 0 { c } else { _mm512_srli_epi16(c, 4) };
                    *v = _mm512_and_si512(c, low);
                    if HIGH {
                        let bits =
                            std::ptr::read_unaligned(p.add(320 + 8 * (8 * j + g)) as *const u64);
                        *v = _mm512_mask_add_epi8(*v, bits, *v, _mm512_set1_epi8(16));
                    }
                }
                let sc =
                    _mm512_cvtepu8_epi32(_mm_loadu_si128(p.add(64 + 16 * j) as *const __m128i));
                for r in 0..NR {
                    let s = dot_groups(&u, x[r].get_unchecked(b).qs.as_ptr().add(32 * j));
                    tot[r] = _mm512_add_epi32(tot[r], _mm512_mullo_epi32(s, sc));
                }
            }
            let d = _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i));
            let dmin = _mm512_cvtph_ps(_mm256_loadu_si256(p.add(32) as *const __m256i));
            let m: [__m512i; 4] = std::array::from_fn(|k| {
                _mm512_cvtepu8_epi16(_mm256_loadu_si256(p.add(192 + 32 * k) as *const __m256i))
            });
            for r in 0..NR {
                let a = x[r].get_unchecked(b);
                let mut mins = _mm512_setzero_si512();
                for (k, mk) in m.iter().enumerate() {
                    let bs = &a.bsums[4 * k..4 * k + 4];
                    let pair =
                        (bs[0] + bs[1]) as u16 as u32 | ((bs[2] + bs[3]) as u16 as u32) << 16;
                    mins = _mm512_dpwssd_epi32(mins, *mk, _mm512_set1_epi32(pair as i32));
                }
                let scale = _mm512_mul_ps(d, _mm512_set1_ps(a.d));
                acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(tot[r]), scale, acc[r]);
                let mscale = _mm512_mul_ps(dmin, _mm512_set1_ps(-a.d));
                acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(mins), mscale, acc[r]);
            }
        }
        store(acc)
    }
}

/// Q6_K panels against `NR` rows of [`BlockQ8K`]. Per row and super-block, in integers:
/// `tot = Σ_s sc_s · Σ u·x - 32 · Σ_s sc_s · Σ x` over the sixteen sub-blocks (`u` = the
/// 6-bit quant, unsigned); then `acc = fma(float(tot), d·dx, acc)`.
///
/// # Safety
/// The CPU must support the features the AVX-512 panel table is built for (AVX-512 F/BW/VL/DQ and
/// VNNI, AVX2, FMA, F16C): this function has no `target_feature` of its own and is inlined into one
/// that enables them. Any lengths are fine: the kernel runs over the panel blocks of `w` for which
/// every row of `x` has a block.
#[inline(always)]
unsafe fn panel_dot_q6_k<const NR: usize>(w: &[u8], x: [&[BlockQ8K]; NR]) -> [[f32; PANEL]; NR] {
    // SAFETY: the caller guarantees the AVX-512 table's features. `b < nb <= w.len() / pbb` puts
    // the panel block `p` (`pbb` bytes) inside `w`, and `nb <= x[r].len()` for every row makes
    // `get_unchecked(b)` in bounds. From `p` it reads `d` at 0..32, the scale pairs at
    // `32 + 32 * k`, `k < 8` (32..288 = `quants_offset`), the 64-byte low chunks `c < 32` (2048
    // bytes) and high chunks `c % 16` (1024 bytes) after it, which end at `pbb`; from the
    // activation block the `i32` (two sums) at `bsums[2 * k]`, `k < 8`, and through
    // `dot_group_halves` `qs[16 * s..][..16]` and `qs[128 + 16 * s..][..16]`, `s < 8`.
    unsafe {
        let fmt = PanelFormat::Q6K;
        let pbb = fmt.panel_block_bytes();
        let nb = x.iter().fold(w.len() / pbb, |n, r| n.min(r.len()));
        let (low, two) = (_mm512_set1_epi8(0x0F), _mm512_set1_epi8(0x30));
        let mut acc = [_mm512_setzero_ps(); NR];
        for b in 0..nb {
            let p = w.as_ptr().add(b * pbb);
            let q = p.add(fmt.quants_offset());
            let high = q.add(2048);
            // The scales of sub-blocks 2k and 2k+1 as an i16 pair per lane.
            let pair = |k: usize| {
                _mm512_cvtepi8_epi16(_mm256_loadu_si256(p.add(32 + 32 * k) as *const __m256i))
            };
            let scale = |s: usize| {
                let v = pair(s / 2);
                if s.is_multiple_of(2) {
                    _mm512_srai_epi32(_mm512_slli_epi32(v, 16), 16)
                } else {
                    _mm512_srai_epi32(v, 16)
                }
            };
            // Σ_s sc_s · Σx, from the activation's sums per 16.
            let mut tot = [_mm512_setzero_si512(); NR];
            for k in 0..8 {
                let v = pair(k);
                for r in 0..NR {
                    let bs = x[r].get_unchecked(b).bsums.as_ptr().add(2 * k) as *const i32;
                    let bs = _mm512_set1_epi32(std::ptr::read_unaligned(bs));
                    tot[r] = _mm512_dpwssd_epi32(tot[r], v, bs);
                }
            }
            for t in tot.iter_mut() {
                *t = _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_slli_epi32(*t, 5));
            }
            // Sub-block s (elements 16s..16s+16: the low nibbles of chunks 4s..4s+4) and s + 8
            // (elements 128+16s..: their high nibbles).
            for s in 0..8 {
                let mut u = [_mm512_setzero_si512(); 8];
                for gi in 0..4 {
                    let c = 4 * s + gi;
                    let v = _mm512_loadu_si512(q.add(64 * c) as *const _);
                    let h = _mm512_loadu_si512(high.add(64 * (c % 16)) as *const _);
                    // Bit pairs of group c at bits 2(c/16), of group c+32 at 2(c/16)+4, moved to
                    // bits 4-5.
                    let (h_lo, h_hi) = if c < 16 {
                        (_mm512_slli_epi16(h, 4), h)
                    } else {
                        (_mm512_slli_epi16(h, 2), _mm512_srli_epi16(h, 2))
                    };
                    u[gi] = _mm512_or_si512(_mm512_and_si512(v, low), _mm512_and_si512(h_lo, two));
                    let v_hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), low);
                    u[4 + gi] = _mm512_or_si512(v_hi, _mm512_and_si512(h_hi, two));
                }
                let (sc_lo, sc_hi) = (scale(s), scale(s + 8));
                for r in 0..NR {
                    let a = x[r].get_unchecked(b).qs.as_ptr();
                    let (s_lo, s_hi) = dot_group_halves(&u, a.add(16 * s), a.add(128 + 16 * s));
                    tot[r] = _mm512_add_epi32(tot[r], _mm512_mullo_epi32(s_lo, sc_lo));
                    tot[r] = _mm512_add_epi32(tot[r], _mm512_mullo_epi32(s_hi, sc_hi));
                }
            }
            let d = _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i));
            for r in 0..NR {
                let scale = _mm512_mul_ps(d, _mm512_set1_ps(x[r].get_unchecked(b).d));
                acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(tot[r]), scale, acc[r]);
            }
        }
        store(acc)
    }
}

/// IQ4_XS panels against `NR` rows of [`BlockQ8K`]. Per row and super-block, in integers:
/// `tot = Σ_j sc_j · Σ level·x` over the eight sub-blocks of 32, where `Σ level·x` is taken
/// as `Σ u·x - 128·Σx` (`u` = the level plus 128, unsigned for `vpdpbusd`); then
/// `acc = fma(float(tot), d·dx, acc)`.
///
/// # Safety
/// The CPU must support the features the AVX-512 panel table is built for (AVX-512 F/BW/VL/DQ and
/// VNNI, AVX2, FMA, F16C): this function has no `target_feature` of its own and is inlined into one
/// that enables them. Any lengths are fine: the kernel runs over the panel blocks of `w` for which
/// every row of `x` has a block.
#[inline(always)]
unsafe fn panel_dot_iq4_xs<const NR: usize>(w: &[u8], x: [&[BlockQ8K]; NR]) -> [[f32; PANEL]; NR] {
    // SAFETY: the caller guarantees the AVX-512 table's features. `b < nb <= w.len() / pbb` puts
    // the panel block `p` (`pbb` bytes) inside `w`, and `nb <= x[r].len()` for every row makes
    // `get_unchecked(b)` in bounds. From `p` it reads `d` at 0..32, the scales at `32 + 16 * j`
    // (32..160 = `quants_offset`) and the 64-byte chunks `8 * k + g < 32` after it, which end at
    // `pbb`; `dot_groups` reads `qs[32 * j..][..32]` of the activation block, `j < 8`; the IQ4_NL
    // table is a 16-byte array.
    unsafe {
        let fmt = PanelFormat::IQ4XS;
        let pbb = fmt.panel_block_bytes();
        let nb = x.iter().fold(w.len() / pbb, |n, r| n.min(r.len()));
        let low = _mm512_set1_epi8(0x0F);
        let table = _mm512_broadcast_i32x4(_mm_loadu_si128(IQ4_NL_U8.as_ptr() as *const __m128i));
        let mut acc = [_mm512_setzero_ps(); NR];
        for b in 0..nb {
            let p = w.as_ptr().add(b * pbb);
            let q = p.add(fmt.quants_offset());
            let mut tot = [_mm512_setzero_si512(); NR];
            for j in 0..8 {
                let (k, t) = (j / 2, j % 2);
                let mut u = [_mm512_setzero_si512(); 8];
                for (g, v) in u.iter_mut().enumerate() {
                    let c = _mm512_loadu_si512(q.add(64 * (8 * k + g)) as *const _);
                    let c = if t == 0 { c } else { _mm512_srli_epi16(c, 4) };
                    *v = _mm512_shuffle_epi8(table, _mm512_and_si512(c, low));
                }
                let sc =
                    _mm512_cvtepi8_epi32(_mm_loadu_si128(p.add(32 + 16 * j) as *const __m128i));
                for r in 0..NR {
                    let a = x[r].get_unchecked(b);
                    let xsum = i32::from(a.bsums[2 * j]) + i32::from(a.bsums[2 * j + 1]);
                    let s = dot_groups(&u, a.qs.as_ptr().add(32 * j));
                    let s = _mm512_sub_epi32(s, _mm512_set1_epi32(128 * xsum));
                    tot[r] = _mm512_add_epi32(tot[r], _mm512_mullo_epi32(s, sc));
                }
            }
            let d = _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i));
            for r in 0..NR {
                let scale = _mm512_mul_ps(d, _mm512_set1_ps(x[r].get_unchecked(b).d));
                acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(tot[r]), scale, acc[r]);
            }
        }
        store(acc)
    }
}

/// Q2_K panels against `NR` rows of [`BlockQ8K`]. Per row and super-block, in integers:
/// `tot = Σ_s sc_s · Σ u·x` over the sixteen sub-blocks of 16 and `mins = Σ_s m_s · Σx`;
/// then `acc = fma(float(tot), d·dx, acc)` and `acc = fma(float(mins), dmin·(-dx), acc)`.
///
/// # Safety
/// The CPU must support the features the AVX-512 panel table is built for (AVX-512 F/BW/VL/DQ and
/// VNNI, AVX2, FMA, F16C): this function has no `target_feature` of its own and is inlined into one
/// that enables them. Any lengths are fine: the kernel runs over the panel blocks of `w` for which
/// every row of `x` has a block.
#[inline(always)]
unsafe fn panel_dot_q2_k<const NR: usize>(w: &[u8], x: [&[BlockQ8K]; NR]) -> [[f32; PANEL]; NR] {
    // SAFETY: the caller guarantees the AVX-512 table's features. `b < nb <= w.len() / pbb` puts
    // the panel block `p` (`pbb` bytes) inside `w`, and `nb <= x[r].len()` for every row makes
    // `get_unchecked(b)` in bounds. From `p` it reads `d` at 0..32, `dmin` at 32..64, the scales at
    // `64 + 16 * s`, `s < 16` (64..320), the mins at `320 + 32 * k`, `k < 8` (320..576 =
    // `quants_offset`) and the 64-byte chunks `4 * c + gi < 16` after it, which end at `pbb`; from
    // the activation block the `i32` at `bsums[2 * k]`, `k < 8`, and through `dot_group_halves`
    // `qs[16 * s..][..16]`, `s < 16`.
    unsafe {
        let fmt = PanelFormat::Q2K;
        let pbb = fmt.panel_block_bytes();
        let nb = x.iter().fold(w.len() / pbb, |n, r| n.min(r.len()));
        let three = _mm512_set1_epi8(3);
        let mut acc = [_mm512_setzero_ps(); NR];
        for b in 0..nb {
            let p = w.as_ptr().add(b * pbb);
            let q = p.add(fmt.quants_offset());
            let scale = |s: usize| {
                _mm512_cvtepu8_epi32(_mm_loadu_si128(p.add(64 + 16 * s) as *const __m128i))
            };
            let mut tot = [_mm512_setzero_si512(); NR];
            // Chunks 4c..4c+4 hold the sub-blocks c, c+4, c+8, c+12 (bit pairs 0, 1, 2, 3).
            for c in 0..4 {
                let v: [__m512i; 4] = std::array::from_fn(|gi| {
                    _mm512_loadu_si512(q.add(64 * (4 * c + gi)) as *const _)
                });
                for pair in [0, 2] {
                    let (sa, sb) = (4 * pair + c, 4 * (pair + 1) + c);
                    let mut u = [_mm512_setzero_si512(); 8];
                    for gi in 0..4 {
                        let lo = _mm512_srl_epi16(v[gi], _mm_cvtsi32_si128(2 * pair as i32));
                        let hi = _mm512_srl_epi16(v[gi], _mm_cvtsi32_si128(2 * pair as i32 + 2));
                        u[gi] = _mm512_and_si512(lo, three);
                        u[4 + gi] = _mm512_and_si512(hi, three);
                    }
                    let (sc_a, sc_b) = (scale(sa), scale(sb));
                    for r in 0..NR {
                        let a = x[r].get_unchecked(b).qs.as_ptr();
                        let (s_a, s_b) = dot_group_halves(&u, a.add(16 * sa), a.add(16 * sb));
                        tot[r] = _mm512_add_epi32(tot[r], _mm512_mullo_epi32(s_a, sc_a));
                        tot[r] = _mm512_add_epi32(tot[r], _mm512_mullo_epi32(s_b, sc_b));
                    }
                }
            }
            let d = _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i));
            let dmin = _mm512_cvtph_ps(_mm256_loadu_si256(p.add(32) as *const __m256i));
            let m: [__m512i; 8] = std::array::from_fn(|k| {
                _mm512_cvtepu8_epi16(_mm256_loadu_si256(p.add(320 + 32 * k) as *const __m256i))
            });
            for r in 0..NR {
                let a = x[r].get_unchecked(b);
                let mut mins = _mm512_setzero_si512();
                for (k, mk) in m.iter().enumerate() {
                    let bs = std::ptr::read_unaligned(a.bsums.as_ptr().add(2 * k) as *const i32);
                    mins = _mm512_dpwssd_epi32(mins, *mk, _mm512_set1_epi32(bs));
                }
                let scale = _mm512_mul_ps(d, _mm512_set1_ps(a.d));
                acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(tot[r]), scale, acc[r]);
                let mscale = _mm512_mul_ps(dmin, _mm512_set1_ps(-a.d));
                acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(mins), mscale, acc[r]);
            }
        }
        store(acc)
    }
}

/// F16 (with `BF16`: BF16) panels against `NR` f32 activation rows. Per row, four f32
/// accumulators: element `e` of the sixteen weight rows (as f32) times `x[e]` is added to
/// accumulator `e % 4` with one fma; the result is `(acc0 + acc1) + (acc2 + acc3)`.
///
/// # Safety
/// The CPU must support the features the AVX-512 panel table is built for (AVX-512 F/BW/VL/DQ and
/// VNNI, AVX2, FMA, F16C): this function has no `target_feature` of its own and is inlined into one
/// that enables them. Any lengths are fine: the kernel runs over the first
/// `min(w.len() / 32, x[r].len())` elements of every row.
#[inline(always)]
unsafe fn panel_dot_half<const BF16: bool, const NR: usize>(
    w: &[u8],
    x: [&[f32]; NR],
) -> [[f32; PANEL]; NR] {
    // SAFETY: the caller guarantees the AVX-512 table's features. `e < k <= w.len() / 32` makes the
    // 32-byte load at `32 * e` lie inside `w`, and `k <= x[r].len()` makes `get_unchecked(e)` in
    // bounds; the stores go to the local `out`.
    unsafe {
        let k = x.iter().fold(w.len() / 32, |n, r| n.min(r.len()));
        let load = |e: usize| {
            let h = _mm256_loadu_si256(w.as_ptr().add(32 * e) as *const __m256i);
            if BF16 {
                _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16))
            } else {
                _mm512_cvtph_ps(h)
            }
        };
        let mut acc = [[_mm512_setzero_ps(); 4]; NR];
        let k4 = k / 4 * 4;
        for e0 in (0..k4).step_by(4) {
            for (a, e) in (e0..e0 + 4).enumerate() {
                let wv = load(e);
                for r in 0..NR {
                    let xv = _mm512_set1_ps(*x[r].get_unchecked(e));
                    acc[r][a] = _mm512_fmadd_ps(wv, xv, acc[r][a]);
                }
            }
        }
        for e in k4..k {
            let wv = load(e);
            for r in 0..NR {
                let xv = _mm512_set1_ps(*x[r].get_unchecked(e));
                acc[r][e % 4] = _mm512_fmadd_ps(wv, xv, acc[r][e % 4]);
            }
        }
        let mut out = [[0f32; PANEL]; NR];
        for (o, a) in out.iter_mut().zip(acc) {
            let s = _mm512_add_ps(_mm512_add_ps(a[0], a[1]), _mm512_add_ps(a[2], a[3]));
            _mm512_storeu_ps(o.as_mut_ptr(), s);
        }
        out
    }
}

/// `u[0..4]` against the broadcast bytes at `lo` and `u[4..8]` against those at `hi` (four
/// groups of four each): the two sums.
///
/// # Safety
/// The CPU must support the features the AVX-512 panel table is built for (AVX-512 F/BW/VL/DQ and
/// VNNI, AVX2, FMA, F16C): this function has no `target_feature` of its own and is inlined into one
/// that enables them. `lo` and `hi` must each be valid for reading 16 bytes, at any alignment.
#[inline(always)]
unsafe fn dot_group_halves(u: &[__m512i; 8], lo: *const i8, hi: *const i8) -> (__m512i, __m512i) {
    // SAFETY: the caller guarantees the AVX-512 table's features. The reads are the unaligned
    // `i32`s at bytes `4 * g`, `g < 4`, of `lo` and of `hi`: their bytes 0..16.
    unsafe {
        let (lo, hi) = (lo as *const i32, hi as *const i32);
        let bcast = |p: *const i32, g: usize| _mm512_set1_epi32(std::ptr::read_unaligned(p.add(g)));
        let mut s0 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), u[0], bcast(lo, 0));
        let mut s1 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), u[4], bcast(hi, 0));
        for g in 1..4 {
            s0 = _mm512_dpbusd_epi32(s0, u[g], bcast(lo, g));
            s1 = _mm512_dpbusd_epi32(s1, u[4 + g], bcast(hi, g));
        }
        (s0, s1)
    }
}

/// The accumulators as arrays.
///
/// # Safety
/// The CPU must support the features the AVX-512 panel table is built for (AVX-512 F/BW/VL/DQ and
/// VNNI, AVX2, FMA, F16C): this function has no `target_feature` of its own and is inlined into one
/// that enables them.
#[inline(always)]
unsafe fn store<const NR: usize>(acc: [__m512; NR]) -> [[f32; PANEL]; NR] {
    // SAFETY: the caller guarantees the AVX-512 table's features. Each store writes the sixteen
    // floats of one local `[f32; PANEL]` row.
    unsafe {
        let mut out = [[0f32; PANEL]; NR];
        for (o, a) in out.iter_mut().zip(acc) {
            _mm512_storeu_ps(o.as_mut_ptr(), a);
        }
        out
    }
}
