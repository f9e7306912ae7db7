//! aarch64 kernels: activation quantization, f32 helpers, attention and SwiGLU with NEON, and
//! the tables that add the panel kernels of `aarch64_panel`.
//!
//! NEON (Advanced SIMD) is in every aarch64 CPU; the dot product extension (`dotprod`:
//! Cortex-A76 and later, Neoverse N1, Apple M1) and the 8-bit matrix multiply extension (`i8mm`:
//! Neoverse V1/N2, Graviton 3, Apple M2 and later) are detected at run time, each giving a
//! table of its own: [`neon_kernels`], [`dotprod_kernels`], [`i8mm_kernels`]. They share these
//! row kernels and differ in their panel kernels only.
//!
//! Each kernel is an `unsafe fn` with `#[target_feature]`; the safe wrappers of the same name
//! as in `generic.rs` are private and reachable only through a [`Kernels`] table built after
//! checking the CPU features at run time.

use std::arch::aarch64::*;
use std::arch::is_aarch64_feature_detected;

use super::aarch64_attention::{attend_f16_neon, attend_neon};
use super::aarch64_panel;
use super::generic::F16Block;
use super::{BlockQ8, BlockQ8K, Isa, Kernels, RowKernels, QK, QK_K};

/// The NEON table, or `None` on a CPU without NEON: these row kernels, and panel kernels
/// for every type with a panel layout whose integer dot products widen bytes to 16 bits
/// (`smull` + `sadalp`).
pub fn neon_kernels() -> Option<Kernels> {
    if !is_aarch64_feature_detected!("neon") {
        return None;
    }
    let mut k = Kernels::with_row_kernels(
        Isa::Neon,
        RowKernels {
            quantize_row_q8,
            quantize_row_q8k,
            dot_f32,
            attend,
            attend_f16: Some(attend_f16),
            swiglu,
            gelu,
            vec_dot_f32,
            dequantize_row_f16,
        },
    );
    k.set_panels(aarch64_panel::kernels_neon);
    Some(k)
}

/// The dotprod table, or `None` when the CPU lacks it: the NEON table with panel kernels on
/// `sdot` (four byte products a lane in one instruction).
pub fn dotprod_kernels() -> Option<Kernels> {
    if !is_aarch64_feature_detected!("dotprod") {
        return None;
    }
    let mut k = neon_kernels()?;
    k.isa = Isa::Dotprod;
    k.set_panels(aarch64_panel::kernels_dotprod);
    Some(k)
}

/// The i8mm table, or `None` when the CPU lacks dotprod or i8mm: the dotprod table whose
/// many-row kernels of the 32-element types multiply two weight rows by two activation rows
/// per `usmmla` (MXFP4's signed levels: `smmla`).
pub fn i8mm_kernels() -> Option<Kernels> {
    if !is_aarch64_feature_detected!("i8mm") {
        return None;
    }
    let mut k = dotprod_kernels()?;
    k.isa = Isa::I8mm;
    k.set_panels(aarch64_panel::kernels_i8mm);
    Some(k)
}

// ---------------------------------------------------------------------------------------
// Safe wrappers. Each is only stored in a table built after its features were detected.

wrap!(quantize_row_q8, quantize_row_q8_neon, (x: &[f32], out: &mut [BlockQ8]) -> ());
wrap!(quantize_row_q8k, quantize_row_q8k_neon, (x: &[f32], out: &mut [BlockQ8K]) -> ());
wrap!(dot_f32, dot_f32_neon, (a: &[f32], b: &[f32]) -> f32);
wrap!(dequantize_row_f16, dequantize_row_f16_neon, (w: &[u8], out: &mut [f32]) -> ());
wrap!(swiglu, swiglu_neon, (out: &mut [f32], gate: &[f32], up: &[f32]) -> ());
wrap!(gelu, gelu_neon, (x: &mut [f32]) -> ());
wrap!(attend, attend_neon, (q: &[f32], keys: &[f32], values: &[f32], first: usize, n: usize, scale: f32, sinks: &[f32], out: &mut [f32], scores: &mut Vec<f32>, heads: usize) -> ());
wrap!(attend_f16, attend_f16_neon, (q: &[f32], blocks: &[F16Block<'_>], first: usize, n: usize, scale: f32, sinks: &[f32], out: &mut [f32], scores: &mut Vec<f32>, heads: usize) -> ());
wrap!(vec_dot_f32, vec_dot_f32_neon, (w: &[u8], x: &[f32]) -> f32);

// ---------------------------------------------------------------------------------------
// Activation quantization.

/// The largest `|x|`, as `generic::quantize_row_q8` folds it (`maxnm` ignores NaN, as
/// `f32::max` does; the maximum does not depend on the order).
///
/// # Safety
/// The CPU must support NEON. Any length of `x` is fine.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn amax(x: &[f32]) -> f32 {
    let mut m = vdupq_n_f32(0.0);
    let chunks = x.chunks_exact(4);
    let tail = chunks.remainder();
    for c in chunks {
        // SAFETY: `c` is four floats, what the load reads.
        m = vmaxnmq_f32(m, vabsq_f32(unsafe { vld1q_f32(c.as_ptr()) }));
    }
    tail.iter().fold(vmaxnmvq_f32(m), |r, v| r.max(v.abs()))
}

/// Rounds 32 floats times `id` to nearest-even i8 (saturating as `as i32` does, then clamped
/// to ±127), as `generic::quantize_row_q8`, and returns the two 16-byte halves.
///
/// # Safety
/// The CPU must support NEON. `x` must be valid for reading 32 `f32`s.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn quantize_32(x: *const f32, id: f32) -> [int8x16_t; 2] {
    // SAFETY: the caller guarantees NEON and `x[..32]`; the loads read `x[4i..4i + 4]`, `i < 8`.
    unsafe {
        let q = |i: usize| {
            let v = vcvtnq_s32_f32(vmulq_n_f32(vld1q_f32(x.add(4 * i)), id));
            vmaxq_s32(vminq_s32(v, vdupq_n_s32(127)), vdupq_n_s32(-127))
        };
        let half = |i: usize| {
            let lo = vcombine_s16(vqmovn_s32(q(i)), vqmovn_s32(q(i + 1)));
            let hi = vcombine_s16(vqmovn_s32(q(i + 2)), vqmovn_s32(q(i + 3)));
            vcombine_s8(vqmovn_s16(lo), vqmovn_s16(hi))
        };
        [half(0), half(4)]
    }
}

/// # Safety
/// The CPU must support NEON. Any lengths are fine: the whole blocks of `x` are quantized into as
/// many blocks of `out` as both hold.
#[target_feature(enable = "neon")]
unsafe fn quantize_row_q8_neon(x: &[f32], out: &mut [BlockQ8]) {
    for (xb, ob) in x.chunks_exact(QK).zip(out.iter_mut()) {
        // SAFETY: the caller guarantees NEON; `xb` is 32 floats, what `quantize_32` reads, and
        // the stores write the 32 bytes of `ob.qs`.
        unsafe {
            let d = amax(xb) / 127.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            let [lo, hi] = quantize_32(xb.as_ptr(), id);
            vst1q_s8(ob.qs.as_mut_ptr(), lo);
            vst1q_s8(ob.qs.as_mut_ptr().add(16), hi);
            let sum = i32::from(vaddlvq_s8(lo)) + i32::from(vaddlvq_s8(hi));
            ob.d = d;
            ob.s = d * sum as f32;
        }
    }
}

/// # Safety
/// The CPU must support NEON. Any lengths are fine: the whole super-blocks of `x` are quantized
/// into as many blocks of `out` as both hold.
#[target_feature(enable = "neon")]
unsafe fn quantize_row_q8k_neon(x: &[f32], out: &mut [BlockQ8K]) {
    for (xb, ob) in x.chunks_exact(QK_K).zip(out.iter_mut()) {
        // SAFETY: the caller guarantees NEON; for `j < 8`, `xb[32j..32j + 32]` is what
        // `quantize_32` reads and `ob.qs[32j..32j + 32]` what the stores write.
        unsafe {
            let d = amax(xb) / 127.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            for j in 0..QK_K / 32 {
                let [lo, hi] = quantize_32(xb.as_ptr().add(32 * j), id);
                vst1q_s8(ob.qs.as_mut_ptr().add(32 * j), lo);
                vst1q_s8(ob.qs.as_mut_ptr().add(32 * j + 16), hi);
                // The sums of each 16 values, exact in 16 bits (at most 16 x 127).
                ob.bsums[2 * j] = vaddlvq_s8(lo);
                ob.bsums[2 * j + 1] = vaddlvq_s8(hi);
            }
            ob.d = d;
        }
    }
}

// ---------------------------------------------------------------------------------------
// f32 helpers.

/// # Safety
/// The CPU must support NEON. Any lengths are fine: the dot product runs over the first
/// `min(a.len(), b.len())` elements.
#[target_feature(enable = "neon")]
unsafe fn dot_f32_neon(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut s = [vdupq_n_f32(0.0); 4];
    let mut i = 0;
    // SAFETY: the caller guarantees NEON; every load reads `[i + 4j, i + 4j + 4)` of `a` and `b`
    // with that end at most `n`, the shorter length.
    unsafe {
        while i + 16 <= n {
            for (j, sj) in s.iter_mut().enumerate() {
                *sj = vfmaq_f32(
                    *sj,
                    vld1q_f32(pa.add(i + 4 * j)),
                    vld1q_f32(pb.add(i + 4 * j)),
                );
            }
            i += 16;
        }
        while i + 4 <= n {
            s[0] = vfmaq_f32(s[0], vld1q_f32(pa.add(i)), vld1q_f32(pb.add(i)));
            i += 4;
        }
    }
    let s = vaddq_f32(vaddq_f32(s[0], s[1]), vaddq_f32(s[2], s[3]));
    (i..n).fold(vaddvq_f32(s), |r, j| r + a[j] * b[j])
}

/// # Safety
/// The CPU must support NEON. Any lengths are fine: the dot product runs over the first
/// `min(x.len(), w.len() / 4)` elements, `w` holding little-endian `f32`s at any alignment.
#[target_feature(enable = "neon")]
unsafe fn vec_dot_f32_neon(w: &[u8], x: &[f32]) -> f32 {
    let n = x.len().min(w.len() / 4);
    let (pw, px) = (w.as_ptr(), x.as_ptr());
    let (mut s0, mut s1) = (vdupq_n_f32(0.0), vdupq_n_f32(0.0));
    let mut i = 0;
    // SAFETY: the caller guarantees NEON; with `i + 8 <= n` the loads read `x[i..i + 8]` and
    // bytes `[4i, 4i + 32)` of `w` (as bytes: no alignment needed).
    unsafe {
        let wv = |i: usize| vreinterpretq_f32_u8(vld1q_u8(pw.add(4 * i)));
        while i + 8 <= n {
            s0 = vfmaq_f32(s0, wv(i), vld1q_f32(px.add(i)));
            s1 = vfmaq_f32(s1, wv(i + 4), vld1q_f32(px.add(i + 4)));
            i += 8;
        }
    }
    let tail = w[4 * i..4 * n].chunks_exact(4).zip(&x[i..n]);
    tail.fold(vaddvq_f32(vaddq_f32(s0, s1)), |r, (b, v)| {
        r + f32::from_le_bytes([b[0], b[1], b[2], b[3]]) * v
    })
}

/// [`super::generic::dequantize_row_f16`] eight elements at a time (`fcvtl`; the conversion
/// is exact, so the result is the same bits).
///
/// # Safety
/// The CPU must support NEON. Any lengths are fine: `min(out.len(), w.len() / 2)` elements are
/// converted; `w` needs no alignment.
#[target_feature(enable = "neon")]
unsafe fn dequantize_row_f16_neon(w: &[u8], out: &mut [f32]) {
    let n = out.len().min(w.len() / 2);
    let (wp, op) = (w.as_ptr(), out.as_mut_ptr());
    let mut i = 0;
    // SAFETY: the caller guarantees NEON; with `i + 8 <= n` the load reads bytes `[2i, 2i + 16)`
    // of `w` and the stores write `out[i..i + 8]`.
    unsafe {
        while i + 8 <= n {
            let h = vreinterpretq_f16_u8(vld1q_u8(wp.add(2 * i)));
            vst1q_f32(op.add(i), vcvt_f32_f16(vget_low_f16(h)));
            vst1q_f32(op.add(i + 4), vcvt_high_f32_f16(h));
            i += 8;
        }
    }
    super::generic::dequantize_row_f16(&w[2 * i..2 * n], &mut out[i..n]);
}

/// `exp(x)` for `x <= 0` (Cephes' polynomial, within 2 ulp, the AVX2 kernel's steps); exactly 0
/// below -87.3, where the result would leave the normal range (and for `-inf`, the masked
/// scores).
///
/// # Safety
/// The CPU must support NEON.
#[inline]
#[target_feature(enable = "neon")]
pub(super) unsafe fn exp_nonpositive(x: float32x4_t) -> float32x4_t {
    let tiny = vcltq_f32(x, vdupq_n_f32(-87.3));
    let x = vmaxq_f32(x, vdupq_n_f32(-87.3));
    let n = vrndnq_f32(vmulq_n_f32(x, std::f32::consts::LOG2_E));
    let r = vfmsq_f32(x, n, vdupq_n_f32(0.693_359_4));
    let r = vfmsq_f32(r, n, vdupq_n_f32(-2.121_944_4e-4));
    let mut p = vdupq_n_f32(1.987_569_1e-4);
    for c in [
        1.398_199_9e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        0.166_666_65,
        0.5,
    ] {
        p = vfmaq_f32(vdupq_n_f32(c), p, r);
    }
    let p = vfmaq_f32(vaddq_f32(r, vdupq_n_f32(1.0)), vmulq_f32(p, r), r);
    // Times 2^n: n + 127 in the exponent field (n >= -126 here, so the result is normal).
    let e = vshlq_n_s32::<23>(vaddq_s32(vcvtnq_s32_f32(n), vdupq_n_s32(127)));
    let v = vmulq_f32(p, vreinterpretq_f32_s32(e));
    vreinterpretq_f32_u32(vbicq_u32(vreinterpretq_u32_f32(v), tiny))
}

/// `sigmoid(z)`, as `1 / (1 + e)` for `z >= 0` and `e / (1 + e)` below, `e = exp(-|z|)` (so
/// `exp` never overflows).
///
/// # Safety
/// The CPU must support NEON.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn sigmoid_neon(z: float32x4_t) -> float32x4_t {
    let one = vdupq_n_f32(1.0);
    let minus_abs = vreinterpretq_f32_u32(vorrq_u32(
        vreinterpretq_u32_f32(z),
        vdupq_n_u32(0x8000_0000),
    ));
    // SAFETY: register-only intrinsics; the caller guarantees NEON.
    let e = unsafe { exp_nonpositive(minus_abs) };
    vdivq_f32(vbslq_f32(vcltzq_f32(z), e, one), vaddq_f32(one, e))
}

/// `out = silu(gate) * up` ([`crate::cpu::ops::swiglu_row`]), four lanes at a time, with
/// [`sigmoid_neon`].
///
/// # Safety
/// The CPU must support NEON. Any lengths are fine: the first
/// `min(out.len(), gate.len(), up.len())` elements are computed.
#[target_feature(enable = "neon")]
unsafe fn swiglu_neon(out: &mut [f32], gate: &[f32], up: &[f32]) {
    let n = out.len().min(gate.len()).min(up.len());
    let mut i = 0;
    // SAFETY: the caller guarantees NEON; the loads of `gate` and `up` and the store to `out`
    // touch `[i, i + 4)` with `i + 4 <= n`, the shortest of the three lengths.
    unsafe {
        while i + 4 <= n {
            let g = vld1q_f32(gate.as_ptr().add(i));
            let sig = sigmoid_neon(g);
            let r = vmulq_f32(vmulq_f32(g, sig), vld1q_f32(up.as_ptr().add(i)));
            vst1q_f32(out.as_mut_ptr().add(i), r);
            i += 4;
        }
    }
    crate::cpu::ops::swiglu_row(&mut out[i..n], &gate[i..n], &up[i..n]);
}

/// `x = gelu(x)` ([`crate::cpu::ops::gelu_row`]), four lanes at a time, as `a·sigmoid(2y)`
/// with `y = sqrt(2/pi)·(a + 0.044715·a³)` (`(1 + tanh y) / 2 = sigmoid(2y)`), by
/// [`sigmoid_neon`].
///
/// # Safety
/// The CPU must support NEON. Any length is fine.
#[target_feature(enable = "neon")]
unsafe fn gelu_neon(x: &mut [f32]) {
    let n = x.len();
    let mut i = 0;
    // SAFETY: the caller guarantees NEON; each load and store touches `[i, i + 4)` with
    // `i + 4 <= n`.
    unsafe {
        while i + 4 <= n {
            let a = vld1q_f32(x.as_ptr().add(i));
            let cube = vmulq_n_f32(vmulq_f32(a, a), 0.044_715);
            let z = vmulq_n_f32(vfmaq_f32(a, cube, a), 2.0 * 0.797_884_6);
            vst1q_f32(x.as_mut_ptr().add(i), vmulq_f32(a, sigmoid_neon(z)));
            i += 4;
        }
    }
    crate::cpu::ops::gelu_row(&mut x[i..n]);
}
