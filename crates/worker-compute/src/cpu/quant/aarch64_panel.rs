//! aarch64 kernels for weights in the panel layout ([`super::panel`]): sixteen weight rows
//! against one or [`PANEL_BATCH`] activation rows, four rows per 128-bit vector.
//!
//! A panel block's 64-byte chunk is four vectors of four rows each (a *quad*): lane `i` of
//! quad `q` holds row `4q + i`'s four bytes of the chunk. Per quad and group of four
//! elements, a [`Dots`] engine adds each lane's four byte products against the group's four
//! activation bytes: one `sdot` by element with the dot product extension ([`Dotprod`]), a
//! widening multiply and a pairwise add without it ([`Widening`]). With i8mm ([`I8mm`]) the
//! many-row kernels of the 32-element types multiply two weight rows by two activation rows,
//! eight bytes each, per `usmmla`, after zipping the lanes of two groups (the layout already
//! holds a row's eight bytes of two groups at the same lane of two chunks).
//!
//! Every kernel computes the integer sums and the f32 steps, in order, that [`super::panel`]
//! documents and the x86 kernels compute, so it gives the same bits: integer sums are exact in
//! any order, and where a kernel multiplies other bytes than the documented unsigned quants
//! (signed Q8_0 quants, IQ4_NL levels, Q6_K quants minus 32) it adds back the integer the
//! offset took away, or the offset cancels in the documented sum itself. MXFP4's documented
//! sums are of its signed levels, which `sdot` and `smmla` multiply as they are.
//!
//! `sdot`, `usmmla` and `smmla` are written as inline assembly: their intrinsics are not
//! stable Rust (1.95). The k-quant kernels are in `aarch64_panel_k.rs`.

use std::arch::aarch64::*;
use std::arch::asm;

use worker_gguf::quants::iq::{KVALUES_IQ4NL, KVALUES_MXFP4};

use super::aarch64_panel_k::{panel_dot_iq4_xs, panel_dot_q2_k, panel_dot_q4_k, panel_dot_q6_k};
use super::panel::kernel_ids::*;
use super::panel::{PanelFormat, PANEL};
use super::{BlockQ8, BlockQ8K, PanelDots, PanelKernels, PANEL_BATCH};

/// Defines, for an engine, a module per kernel holding its `target_feature` functions for one
/// and [`PANEL_BATCH`] rows and their safe wrappers `one` and `many` (only the table built
/// after detecting the features reaches them), and the table function mapping a panel format
/// to its kernels. In a kernel's const parameters `E` is the engine.
macro_rules! panel_kernels {
    ($table:ident, $isa:ident, $engine:ty, $features:literal) => {
        panel_kernels!(@list $table, $isa, $engine, $features;
            PanelFormat::Q4_0 => Q8, q4_0: panel_dot [E, Q4_0,], BlockQ8;
            PanelFormat::Q4_1 => Q8, q4_1: panel_dot [E, Q4_1,], BlockQ8;
            PanelFormat::Q5_0 => Q8, q5_0: panel_dot [E, Q5_0,], BlockQ8;
            PanelFormat::Q5_1 => Q8, q5_1: panel_dot [E, Q5_1,], BlockQ8;
            PanelFormat::Q8_0 => Q8, q8_0: panel_dot [E, Q8_0,], BlockQ8;
            PanelFormat::IQ4NL => Q8, iq4_nl: panel_dot [E, IQ4_NL,], BlockQ8;
            PanelFormat::MXFP4 => Q8, mxfp4: panel_dot [E, MXFP4,], BlockQ8;
            PanelFormat::Q4K => Q8K, q4_k: panel_dot_q4_k [E, false,], BlockQ8K;
            PanelFormat::Q5K => Q8K, q5_k: panel_dot_q4_k [E, true,], BlockQ8K;
            // Q3_K is repacked into the Q6_K layout.
            PanelFormat::Q6K | PanelFormat::Q3K => Q8K, q6_k: panel_dot_q6_k [E,], BlockQ8K;
            PanelFormat::IQ4XS => Q8K, iq4_xs: panel_dot_iq4_xs [E,], BlockQ8K;
            PanelFormat::Q2K => Q8K, q2_k: panel_dot_q2_k [E,], BlockQ8K;
            PanelFormat::F16 => F32, f16: panel_dot_half [false,], f32;
            PanelFormat::BF16 => F32, bf16: panel_dot_half [true,], f32;
        );
    };
    (@list $table:ident, $isa:ident, $engine:ty, $features:literal;
        $($format:pat => $dots:ident, $name:ident: $body:ident [$($g:tt)*], $a:ty;)*) => {
        #[doc = concat!("The panel kernels of `format` on the ", stringify!($engine),
            " engine. The caller must have detected ", $features, ".")]
        pub(super) fn $table(format: PanelFormat) -> PanelKernels {
            let dots = match format {
                $($format => PanelDots::$dots($isa::$name::one, $isa::$name::many),)*
            };
            PanelKernels { format, dots }
        }

        mod $isa {$(
            pub(super) mod $name {
                use super::super::*;
                // The engine, named `E` in the kernel list (the F16/BF16 kernels have none).
                #[allow(dead_code)]
                type E = $engine;

                /// # Safety
                /// The CPU must support every feature this function enables. Any lengths
                /// are fine.
                #[target_feature(enable = $features)]
                unsafe fn imp(w: &[u8], x: [&[$a]; 1]) -> [[f32; PANEL]; 1] {
                    // SAFETY: the caller guarantees the features, which are those of the
                    // engine (enabled here, so the body inlines with them); the body bounds
                    // its reads by `w.len()` and the lengths of `x`.
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

panel_kernels!(kernels_neon, neon, Widening, "neon");
panel_kernels!(kernels_dotprod, dotprod, Dotprod, "neon,dotprod");
panel_kernels!(kernels_i8mm, i8mm, I8mm, "neon,dotprod,i8mm");

// ---------------------------------------------------------------------------------------
// Engines.

/// How a kernel forms the integer dot products of a quad: each lane's four signed weight
/// bytes against four activation bytes.
pub(super) trait Dots {
    /// Partial sums as the instruction leaves them.
    type Acc: Copy;
    /// Whether the many-row kernels of the 32-element types use `usmmla` / `smmla` (i8mm).
    const MMLA: bool;
    /// An accumulator of zeros.
    ///
    /// # Safety
    /// The CPU must support the engine's features.
    unsafe fn zero() -> Self::Acc;
    /// `acc` plus, in lane `i`, `Σ_t w[4i + t] · x[4L + t]` over `t < 4`, all bytes signed.
    ///
    /// # Safety
    /// The CPU must support the engine's features.
    unsafe fn dot<const L: i32>(acc: Self::Acc, w: int8x16_t, x: int8x16_t) -> Self::Acc;
    /// The four lanes' sums.
    ///
    /// # Safety
    /// The CPU must support the engine's features.
    unsafe fn sum(acc: Self::Acc) -> int32x4_t;
}

/// Plain NEON: `smull`/`smull2` of the weight bytes by the group's four bytes repeated (each
/// product fits 16 bits: at most 128 · 127), `sadalp` into pairs of 32-bit sums, one `addp`
/// at the end.
pub(super) enum Widening {}

impl Dots for Widening {
    type Acc = [int32x4_t; 2];
    const MMLA: bool = false;

    #[inline(always)]
    unsafe fn zero() -> Self::Acc {
        // SAFETY: a register-only NEON intrinsic; the caller guarantees NEON.
        unsafe { [vdupq_n_s32(0); 2] }
    }

    #[inline(always)]
    unsafe fn dot<const L: i32>(acc: Self::Acc, w: int8x16_t, x: int8x16_t) -> Self::Acc {
        // SAFETY: register-only NEON intrinsics; the caller guarantees NEON.
        unsafe {
            let xb = vreinterpretq_s8_s32(vdupq_laneq_s32::<L>(vreinterpretq_s32_s8(x)));
            let lo = vmull_s8(vget_low_s8(w), vget_low_s8(xb));
            let hi = vmull_high_s8(w, xb);
            [vpadalq_s16(acc[0], lo), vpadalq_s16(acc[1], hi)]
        }
    }

    #[inline(always)]
    unsafe fn sum(acc: Self::Acc) -> int32x4_t {
        // SAFETY: a register-only NEON intrinsic; the caller guarantees NEON.
        unsafe { vpaddq_s32(acc[0], acc[1]) }
    }
}

/// The dot product extension: one `sdot` by element.
pub(super) enum Dotprod {}

impl Dots for Dotprod {
    type Acc = int32x4_t;
    const MMLA: bool = false;

    #[inline(always)]
    unsafe fn zero() -> Self::Acc {
        // SAFETY: a register-only NEON intrinsic; the caller guarantees NEON.
        unsafe { vdupq_n_s32(0) }
    }

    #[inline(always)]
    unsafe fn dot<const L: i32>(acc: Self::Acc, w: int8x16_t, x: int8x16_t) -> Self::Acc {
        let mut acc = acc;
        // SAFETY: `sdot` needs dotprod, which the caller guarantees; it reads `w` and `x` and
        // updates `acc`, registers only.
        unsafe {
            asm!(
                ".arch_extension dotprod",
                "sdot {acc:v}.4s, {w:v}.16b, {x:v}.4b[{l}]",
                acc = inout(vreg) acc,
                w = in(vreg) w,
                x = in(vreg) x,
                l = const L,
                options(pure, nomem, nostack, preserves_flags),
            );
        }
        acc
    }

    #[inline(always)]
    unsafe fn sum(acc: Self::Acc) -> int32x4_t {
        acc
    }
}

/// i8mm: [`Dotprod`]'s dot products, and `usmmla` in the many-row kernels of the 32-element
/// types ([`panel_dot_mmla`]).
pub(super) enum I8mm {}

impl Dots for I8mm {
    type Acc = int32x4_t;
    const MMLA: bool = true;

    #[inline(always)]
    unsafe fn zero() -> Self::Acc {
        // SAFETY: the caller guarantees i8mm's table features, dotprod's included.
        unsafe { Dotprod::zero() }
    }

    #[inline(always)]
    unsafe fn dot<const L: i32>(acc: Self::Acc, w: int8x16_t, x: int8x16_t) -> Self::Acc {
        // SAFETY: as in `zero`.
        unsafe { Dotprod::dot::<L>(acc, w, x) }
    }

    #[inline(always)]
    unsafe fn sum(acc: Self::Acc) -> int32x4_t {
        acc
    }
}

/// `acc + w · x` as 2x2 matrices: `w` two rows of eight bytes, unsigned (`usmmla`) or with
/// `SIGNED` signed (`smmla`), `x` two rows of eight signed bytes (one per column of the
/// product), `acc` the four sums `[w0·x0, w0·x1, w1·x0, w1·x1]`.
///
/// # Safety
/// The CPU must support i8mm.
#[inline(always)]
unsafe fn mmla<const SIGNED: bool>(acc: int32x4_t, w: uint8x16_t, x: int8x16_t) -> int32x4_t {
    let mut acc = acc;
    // SAFETY: `usmmla` and `smmla` need i8mm, which the caller guarantees; registers only.
    unsafe {
        if SIGNED {
            asm!(
                ".arch_extension i8mm",
                "smmla {acc:v}.4s, {w:v}.16b, {x:v}.16b",
                acc = inout(vreg) acc,
                w = in(vreg) w,
                x = in(vreg) x,
                options(pure, nomem, nostack, preserves_flags),
            );
        } else {
            asm!(
                ".arch_extension i8mm",
                "usmmla {acc:v}.4s, {w:v}.16b, {x:v}.16b",
                acc = inout(vreg) acc,
                w = in(vreg) w,
                x = in(vreg) x,
                options(pure, nomem, nostack, preserves_flags),
            );
        }
    }
    acc
}

// ---------------------------------------------------------------------------------------
// Helpers shared with the k-quant kernels.

/// Calls the kernel `$f` with its leading generic arguments, `$nr` activation rows and the
/// quads per pass: all four for one row, one for several (so that every row's sums stay in
/// registers).
macro_rules! by_quads {
    ($f:ident [$($g:tt)*] $nr:ident ($w:expr, $x:expr)) => {
        if $nr == 1 {
            $f::<$($g)* $nr, 4>($w, $x)
        } else {
            $f::<$($g)* $nr, 1>($w, $x)
        }
    };
}
pub(super) use by_quads;

/// Four f16 at `p` (unaligned) as f32.
///
/// # Safety
/// The CPU must support NEON; `p` must be valid for reading 8 bytes.
#[inline(always)]
pub(super) unsafe fn f16x4(p: *const u8) -> float32x4_t {
    // SAFETY: the caller guarantees NEON and the 8 bytes; the load is of bytes.
    unsafe { vcvt_f32_f16(vreinterpret_f16_u8(vld1_u8(p))) }
}

/// `Σ_g u[g] · x[g]` per lane over the `N` groups of four elements in `u` (`N` = 4 or 8)
/// against the activation bytes in `x` (group `g` is bytes `4g..4g+4` of `x[g / 4]`).
///
/// # Safety
/// The CPU must support the engine's features.
#[inline(always)]
pub(super) unsafe fn dot_groups<E: Dots, const N: usize>(
    u: &[int8x16_t; N],
    x: &[int8x16_t],
) -> int32x4_t {
    // SAFETY: the caller guarantees the engine's features; `N / 4` vectors of `x` are read.
    unsafe {
        let (mut a0, mut a1) = (E::zero(), E::zero());
        for h in 0..N / 4 {
            a0 = E::dot::<0>(a0, u[4 * h], x[h]);
            a1 = E::dot::<1>(a1, u[4 * h + 1], x[h]);
            a0 = E::dot::<2>(a0, u[4 * h + 2], x[h]);
            a1 = E::dot::<3>(a1, u[4 * h + 3], x[h]);
        }
        vaddq_s32(E::sum(a0), E::sum(a1))
    }
}

/// `u` with 16 added to each byte whose bit is set in the two bytes at `m` (byte `l` of `u`
/// takes bit `l % 8` of `m[l / 8]`): the high bits of one quad and group, from a Q5 mask.
/// `u`'s bytes must be below 16.
///
/// # Safety
/// The CPU must support NEON; `m` must be valid for reading 2 bytes.
#[inline(always)]
pub(super) unsafe fn with_high_bits(u: uint8x16_t, m: *const u8) -> uint8x16_t {
    // SAFETY: the caller guarantees NEON and the two bytes, read unaligned.
    unsafe {
        let pair = vreinterpretq_u8_u16(vdupq_n_u16(std::ptr::read_unaligned(m as *const u16)));
        let spread = vqtbl1q_u8(pair, vcombine_u8(vdup_n_u8(0), vdup_n_u8(1)));
        let bits = vreinterpretq_u8_u64(vdupq_n_u64(0x8040_2010_0804_0201));
        vbslq_u8(vdupq_n_u8(16), vtstq_u8(spread, bits), u)
    }
}

/// Stores `acc` (per activation row, the quads `q0..q0 + QG`) into `out`.
///
/// # Safety
/// The CPU must support NEON, and `q0 + QG <= 4`.
#[inline(always)]
pub(super) unsafe fn store_quads<const NR: usize, const QG: usize>(
    out: &mut [[f32; PANEL]; NR],
    acc: &[[float32x4_t; QG]; NR],
    q0: usize,
) {
    // SAFETY: the caller guarantees NEON and `q0 + QG <= 4`, so each store writes
    // `o[4q..4q + 4]`, `q < 4`, inside the sixteen floats of one row of `out`.
    unsafe {
        for (o, a) in out.iter_mut().zip(acc) {
            for (qi, v) in a.iter().enumerate() {
                vst1q_f32(o.as_mut_ptr().add(4 * (q0 + qi)), *v);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// The 32-element types.

/// The eight vectors of quad `q` (rows `4q..4q+4`) of panel block `p`: vector `g` holds
/// elements `4g..4g+4` of the four rows, row `4q + i` in lane `i`. With `SIGNED`, as `sdot`
/// multiplies them: the 4- and 5-bit quants as they are, Q8_0's quants and IQ4_NL's levels
/// (the unsigned values minus 128, which the caller adds back as `128·Σx`); without, the
/// unsigned values of the panel module doc, as `usmmla` multiplies them. MXFP4's are its
/// signed levels either way (as `sdot` and `smmla` multiply them).
///
/// # Safety
/// The CPU must support NEON. `p` must be valid for reading one panel block of format `F`
/// (`format(F).panel_block_bytes()` bytes), at any alignment, and `q` must be below 4.
#[inline(always)]
unsafe fn unpack<const F: u8, const SIGNED: bool>(p: *const u8, q: usize) -> [uint8x16_t; 8] {
    // SAFETY: the caller guarantees NEON, the block and `q < 4`: the 16-byte loads read quad `q`
    // of the 64-byte chunks `0..8` (Q8_0) or `0..4` past `quants_offset`, which end at the
    // block's end; the two mask bytes at `high_offset + 8 * g + 2 * q` (Q5_0, Q5_1) lie before
    // the quants; the level tables are 16-byte arrays.
    unsafe {
        let qp = p.add(format(F).quants_offset() + 16 * q);
        if F == Q8_0 {
            let flip = vdupq_n_u8(0x80);
            return std::array::from_fn(|g| {
                let v = vld1q_u8(qp.add(64 * g));
                if SIGNED {
                    veorq_u8(v, flip)
                } else {
                    v
                }
            });
        }
        let mut u = [vdupq_n_u8(0); 8];
        for c in 0..4 {
            let v = vld1q_u8(qp.add(64 * c));
            u[c] = vandq_u8(v, vdupq_n_u8(0x0F));
            u[c + 4] = vshrq_n_u8::<4>(v);
        }
        if F == IQ4_NL || F == MXFP4 {
            let table = if F == MXFP4 {
                vreinterpretq_u8_s8(vld1q_s8(KVALUES_MXFP4.as_ptr()))
            } else if SIGNED {
                vreinterpretq_u8_s8(vld1q_s8(KVALUES_IQ4NL.as_ptr()))
            } else {
                vld1q_u8(IQ4_NL_U8.as_ptr())
            };
            for v in u.iter_mut() {
                *v = vqtbl1q_u8(table, *v);
            }
        }
        if F == Q5_0 || F == Q5_1 {
            let high = p.add(format(F).high_offset() + 2 * q);
            for (g, v) in u.iter_mut().enumerate() {
                *v = with_high_bits(*v, high.add(8 * g));
            }
        }
        u
    }
}

/// The scales of quad `q` (f16; MXFP4's e8m0 exponents as `2^(e - 128)`) and its biases (`m`
/// for Q4_1 and Q5_1, else `d` times minus the offset that made the quants unsigned; MXFP4
/// has none: see [`has_bias`]), as the panel module doc defines them.
///
/// # Safety
/// The CPU must support NEON; `p` must be valid for reading one panel block of format `F`, and
/// `q` must be below 4.
#[inline(always)]
unsafe fn scales<const F: u8>(p: *const u8, q: usize) -> (float32x4_t, float32x4_t) {
    // SAFETY: the caller guarantees NEON, the block and `q < 4`: `d` at `8q..8q + 8` (MXFP4's
    // exponents at `4q..4q + 4`) and `m` at `32 + 8q..` lie in the block's first 64 bytes.
    unsafe {
        if F == MXFP4 {
            return (e8m0_half(p.add(4 * q)), vdupq_n_f32(0.0));
        }
        let d = f16x4(p.add(8 * q));
        let bias = match F {
            Q4_1 | Q5_1 => f16x4(p.add(32 + 8 * q)),
            Q4_0 => vmulq_n_f32(d, -8.0),
            Q5_0 => vmulq_n_f32(d, -16.0),
            // Q8_0, IQ4_NL.
            _ => vmulq_n_f32(d, -128.0),
        };
        (d, bias)
    }
}

/// Whether format `F`'s documented steps add `bias · s` per block (all but MXFP4).
const fn has_bias(f: u8) -> bool {
    f != MXFP4
}

/// `2^(e - 128)` for the four e8m0 exponents at `e`, one per lane, from bits as
/// [`worker_gguf::quants::iq::e8m0_to_f32_half`]: `(e - 1) << 23` from 2 up, the subnormals
/// `0x200000 << e` below.
///
/// # Safety
/// The CPU must support NEON; `e` must be valid for reading 4 bytes, at any alignment.
#[inline(always)]
unsafe fn e8m0_half(e: *const u8) -> float32x4_t {
    // SAFETY: the caller guarantees NEON and the 4 bytes at `e` (one unaligned u32 read).
    unsafe {
        let bytes = vreinterpret_u8_u32(vdup_n_u32(std::ptr::read_unaligned(e as *const u32)));
        let e = vmovl_u16(vget_low_u16(vmovl_u8(bytes)));
        let normal = vshlq_n_u32::<23>(vsubq_u32(e, vdupq_n_u32(1)));
        let tiny = vshlq_u32(vdupq_n_u32(0x0020_0000), vreinterpretq_s32_u32(e));
        let is_normal = vcgtq_u32(e, vdupq_n_u32(1));
        vreinterpretq_f32_u32(vbslq_u32(is_normal, normal, tiny))
    }
}

/// Sixteen rows of `w` (a panel: a whole number of panel blocks) against `NR` activation
/// rows: see the module documentation of [`super::panel`] for the sums. One quad at a time
/// over the whole panel for several rows (few registers), all four per block for one row.
///
/// # Safety
/// The CPU must support the engine's features (NEON, and dotprod and i8mm as `E` needs): this
/// function has no `target_feature` of its own and is inlined into one that enables them. Any
/// lengths are fine: the kernel runs over the panel blocks of `w` for which every row of `x` has
/// a block.
#[inline(always)]
unsafe fn panel_dot<E: Dots, const F: u8, const NR: usize>(
    w: &[u8],
    x: [&[BlockQ8]; NR],
) -> [[f32; PANEL]; NR] {
    // SAFETY: the caller guarantees the engine's features, which `panel_dot_mmla` (i8mm) and
    // `panel_dot_quads` need; both bound their reads by `w.len()` and `x`.
    unsafe {
        if E::MMLA && NR.is_multiple_of(2) {
            return panel_dot_mmla::<F, NR>(w, x);
        }
        by_quads!(panel_dot_quads [E, F,] NR (w, x))
    }
}

/// [`panel_dot`] in passes of `QG` quads.
///
/// # Safety
/// As for [`panel_dot`]; `QG` must divide 4.
#[inline(always)]
unsafe fn panel_dot_quads<E: Dots, const F: u8, const NR: usize, const QG: usize>(
    w: &[u8],
    x: [&[BlockQ8]; NR],
) -> [[f32; PANEL]; NR] {
    // SAFETY: the caller guarantees the engine's features. `b < nb <= w.len() / pbb` puts the
    // panel block `p` (`pbb` bytes) inside `w`, and `nb <= x[r].len()` for every row makes
    // `get_unchecked(b)` in bounds; `q = q0 + qi < 4`, so `scales` and `unpack` read inside the
    // block; the activation loads read the 32 bytes of `a.qs`; `store_quads` gets `q0 + QG <= 4`.
    unsafe {
        let pbb = format(F).panel_block_bytes();
        let nb = x.iter().fold(w.len() / pbb, |n, r| n.min(r.len()));
        let offset = F == Q8_0 || F == IQ4_NL;
        let mut out = [[0f32; PANEL]; NR];
        for q0 in (0..4).step_by(QG) {
            let mut acc = [[vdupq_n_f32(0.0); QG]; NR];
            for b in 0..nb {
                let p = w.as_ptr().add(b * pbb);
                for qi in 0..QG {
                    let q = q0 + qi;
                    let (d, bias) = scales::<F>(p, q);
                    let u = unpack::<F, true>(p, q).map(|v| vreinterpretq_s8_u8(v));
                    for (r, acc_r) in acc.iter_mut().enumerate() {
                        let a = x[r].get_unchecked(b);
                        let xv = [vld1q_s8(a.qs.as_ptr()), vld1q_s8(a.qs.as_ptr().add(16))];
                        let mut s = dot_groups::<E, 8>(&u, &xv);
                        if offset {
                            // The values multiplied were the unsigned ones minus 128.
                            let sum = i32::from(vaddlvq_s8(xv[0])) + i32::from(vaddlvq_s8(xv[1]));
                            s = vaddq_s32(s, vdupq_n_s32(sum << 7));
                        }
                        let scale = vmulq_n_f32(d, a.d);
                        acc_r[qi] = vfmaq_f32(acc_r[qi], vcvtq_f32_s32(s), scale);
                        if has_bias(F) {
                            acc_r[qi] = vfmaq_n_f32(acc_r[qi], bias, a.s);
                        }
                    }
                }
            }
            store_quads(&mut out, &acc, q0);
        }
        out
    }
}

/// [`panel_dot`] for an even number of rows with i8mm: per quad and pair of activation rows,
/// eight `usmmla` (two weight rows by the two activation rows, eight elements, four steps per
/// block, in two chains) on the unsigned quants (`smmla` on MXFP4's signed levels). The f32
/// steps run on the 2x2 tiles of
/// `[row i · act a, row i · act b, row i+1 · act a, row i+1 · act b]`, with the scales
/// arranged the same way, so every output gets the same operations as in [`panel_dot_quads`];
/// the tiles are sorted into rows at the end. Two passes of two quads.
///
/// # Safety
/// The CPU must support NEON and i8mm: this function has no `target_feature` of its own and is
/// inlined into one that enables them. `NR` must be even. Any lengths are fine: the kernel runs
/// over the panel blocks of `w` for which every row of `x` has a block.
#[inline(always)]
unsafe fn panel_dot_mmla<const F: u8, const NR: usize>(
    w: &[u8],
    x: [&[BlockQ8]; NR],
) -> [[f32; PANEL]; NR] {
    // SAFETY: the caller guarantees NEON and i8mm. `b < nb <= w.len() / pbb` puts the panel block
    // `p` inside `w`, and `nb <= x[r].len()` for every row makes `get_unchecked(b)` in bounds;
    // `q = q0 + qi < 4`, so `scales` and `unpack` read inside the block; the activation loads read
    // the 32 bytes of `qs` of rows `2 * pr` and `2 * pr + 1 < NR`.
    unsafe {
        let pbb = format(F).panel_block_bytes();
        let nb = x.iter().fold(w.len() / pbb, |n, r| n.min(r.len()));
        let mut out = [[0f32; PANEL]; NR];
        for q0 in [0, 2] {
            // Tiles of the pair of rows (2pr, 2pr + 1) at acc[2pr] (acc[2pr + 1] unused), per
            // quad of the pass and half (rows 4q, 4q+1; rows 4q+2, 4q+3).
            let mut acc = [[[vdupq_n_f32(0.0); 2]; 2]; NR];
            for b in 0..nb {
                let p = w.as_ptr().add(b * pbb);
                for (qi, q) in (q0..q0 + 2).enumerate() {
                    let (d, bias) = scales::<F>(p, q);
                    let dt = [vzip1q_f32(d, d), vzip2q_f32(d, d)];
                    let bt = [vzip1q_f32(bias, bias), vzip2q_f32(bias, bias)];
                    let u = unpack::<F, false>(p, q).map(|v| vreinterpretq_u32_u8(v));
                    // Step s: elements 8s..8s+8 of rows (4q, 4q+1) and (4q+2, 4q+3).
                    let wz: [[uint8x16_t; 2]; 4] = std::array::from_fn(|s| {
                        [
                            vreinterpretq_u8_u32(vzip1q_u32(u[2 * s], u[2 * s + 1])),
                            vreinterpretq_u8_u32(vzip2q_u32(u[2 * s], u[2 * s + 1])),
                        ]
                    });
                    for pr in 0..NR / 2 {
                        let (xa, xb) = (x[2 * pr].get_unchecked(b), x[2 * pr + 1].get_unchecked(b));
                        let load = |a: &BlockQ8, h: usize| {
                            vreinterpretq_s64_s8(vld1q_s8(a.qs.as_ptr().add(16 * h)))
                        };
                        let (a0, a1, b0, b1) = (load(xa, 0), load(xa, 1), load(xb, 0), load(xb, 1));
                        let xs = [
                            vzip1q_s64(a0, b0),
                            vzip2q_s64(a0, b0),
                            vzip1q_s64(a1, b1),
                            vzip2q_s64(a1, b1),
                        ]
                        .map(|v| vreinterpretq_s8_s64(v));
                        let mut t = [vdupq_n_s32(0); 2];
                        for (s, xs) in xs.iter().enumerate() {
                            for (th, wh) in t.iter_mut().zip(&wz[s]) {
                                // MXFP4's levels are signed (`unpack` gives them either way).
                                *th = if F == MXFP4 {
                                    mmla::<true>(*th, *wh, *xs)
                                } else {
                                    mmla::<false>(*th, *wh, *xs)
                                };
                            }
                        }
                        let pair = |u: f32, v: f32| {
                            let h = vset_lane_f32::<1>(v, vdup_n_f32(u));
                            vcombine_f32(h, h)
                        };
                        let (dx, sx) = (pair(xa.d, xb.d), pair(xa.s, xb.s));
                        for h in 0..2 {
                            let a = &mut acc[2 * pr][qi][h];
                            *a = vfmaq_f32(*a, vcvtq_f32_s32(t[h]), vmulq_f32(dt[h], dx));
                            if has_bias(F) {
                                *a = vfmaq_f32(*a, bt[h], sx);
                            }
                        }
                    }
                }
            }
            for pr in 0..NR / 2 {
                for (qi, tiles) in acc[2 * pr].iter().enumerate() {
                    let q = q0 + qi;
                    let rows = [
                        vuzp1q_f32(tiles[0], tiles[1]),
                        vuzp2q_f32(tiles[0], tiles[1]),
                    ];
                    for (i, v) in rows.iter().enumerate() {
                        vst1q_f32(out[2 * pr + i].as_mut_ptr().add(4 * q), *v);
                    }
                }
            }
        }
        out
    }
}

// ---------------------------------------------------------------------------------------
// F16 and BF16.

/// F16 (with `BF16`: BF16) panels against `NR` f32 activation rows: per row and weight row,
/// four f32 accumulators, element `e` times `x[e]` added to accumulator `e % 4` by fma, the
/// result `(acc0 + acc1) + (acc2 + acc3)`, as the x86 kernels. All four quads per pass for one
/// row, one for several.
///
/// # Safety
/// The CPU must support NEON: this function has no `target_feature` of its own and is inlined
/// into one that enables it. Any lengths are fine: the kernel runs over the first
/// `min(w.len() / 32, x[r].len())` elements of every row.
#[inline(always)]
unsafe fn panel_dot_half<const BF16: bool, const NR: usize>(
    w: &[u8],
    x: [&[f32]; NR],
) -> [[f32; PANEL]; NR] {
    // SAFETY: the caller guarantees NEON; `half_quads` bounds its reads.
    unsafe { by_quads!(half_quads [BF16,] NR (w, x)) }
}

/// [`panel_dot_half`] in passes of `QG` quads.
///
/// # Safety
/// As for [`panel_dot_half`]; `QG` must divide 4.
#[inline(always)]
unsafe fn half_quads<const BF16: bool, const NR: usize, const QG: usize>(
    w: &[u8],
    x: [&[f32]; NR],
) -> [[f32; PANEL]; NR] {
    // SAFETY: the caller guarantees NEON. `e < k <= w.len() / 32` makes the 8-byte load at
    // `32 * e + 8 * q`, `q < 4`, lie inside `w`, and `k <= x[r].len()` makes the loads of
    // `x[r][e0..e0 + 4]` (`e0 + 4 <= k4 <= k`) and `get_unchecked(e)` in bounds; `store_quads`
    // gets `q0 + QG <= 4`.
    unsafe {
        let k = x.iter().fold(w.len() / 32, |n, r| n.min(r.len()));
        let k4 = k / 4 * 4;
        let mut out = [[0f32; PANEL]; NR];
        for q0 in (0..4).step_by(QG) {
            let load = |e: usize, q: usize| {
                let h = vld1_u8(w.as_ptr().add(32 * e + 8 * q));
                if BF16 {
                    vreinterpretq_f32_u32(vshll_n_u16::<16>(vreinterpret_u16_u8(h)))
                } else {
                    vcvt_f32_f16(vreinterpret_f16_u8(h))
                }
            };
            let mut acc = [[[vdupq_n_f32(0.0); 4]; QG]; NR];
            for e0 in (0..k4).step_by(4) {
                let xv: [float32x4_t; NR] =
                    std::array::from_fn(|r| vld1q_f32(x[r].as_ptr().add(e0)));
                for qi in 0..QG {
                    let wv: [float32x4_t; 4] = std::array::from_fn(|t| load(e0 + t, q0 + qi));
                    for (a, xr) in acc.iter_mut().zip(&xv) {
                        let a = &mut a[qi];
                        a[0] = vfmaq_laneq_f32::<0>(a[0], wv[0], *xr);
                        a[1] = vfmaq_laneq_f32::<1>(a[1], wv[1], *xr);
                        a[2] = vfmaq_laneq_f32::<2>(a[2], wv[2], *xr);
                        a[3] = vfmaq_laneq_f32::<3>(a[3], wv[3], *xr);
                    }
                }
            }
            for e in k4..k {
                for qi in 0..QG {
                    let wv = load(e, q0 + qi);
                    for (r, a) in acc.iter_mut().enumerate() {
                        let xe = *x[r].get_unchecked(e);
                        a[qi][e % 4] = vfmaq_n_f32(a[qi][e % 4], wv, xe);
                    }
                }
            }
            let sums =
                acc.map(|a| a.map(|a| vaddq_f32(vaddq_f32(a[0], a[1]), vaddq_f32(a[2], a[3]))));
            store_quads(&mut out, &sums, q0);
        }
        out
    }
}
