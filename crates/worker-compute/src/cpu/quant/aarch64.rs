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

use super::aarch64_panel;
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
            attend_f16: None,
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
unsafe fn exp_nonpositive(x: float32x4_t) -> float32x4_t {
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

// ---------------------------------------------------------------------------------------
// Attention.

/// [`super::generic::attend`] with sixteen positions per four vectors: a vector exponential,
/// and per group of up to four heads one pass over the keys and one over the values (each key
/// and value read once for the group). Alone, a head's keys are scored four blocks at a time
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
unsafe fn attend_neon(
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
    use super::generic::KEY_BLOCK as KB;
    let heads = heads.max(1);
    let (hd, vhd) = (q.len() / heads, out.len() / heads);
    let blocks = n.div_ceil(KB);
    if !vhd.is_multiple_of(4)
        || q.len() != heads * hd
        || out.len() != heads * vhd
        || keys.len() < blocks * KB * hd
        || values.len() < n * vhd
        || first >= n
        || !(sinks.is_empty() || sinks.len() == heads)
    {
        return super::generic::attend(q, keys, values, first, n, scale, sinks, out, scores, heads);
    }
    // Per head `blocks * KB` scores, then one inverse sum per head.
    let stride = blocks * KB;
    scores.clear();
    scores.resize(heads * stride + heads, 0.0);
    // SAFETY: the caller guarantees NEON. Past the check, `q.len() == heads * hd`,
    // `out.len() == heads * vhd` with `vhd` a multiple of 4, `keys.len() >= blocks * KB * hd`,
    // `values.len() >= n * vhd` and `first < n <= stride`, and `scores` holds
    // `heads * stride + heads` floats. So scoring reads the query rows `h0..h0 + g` of `q` and key
    // blocks below `blocks` and writes `KB` scores per head and block inside that head's `stride`;
    // the softmax reads and writes `[i, i + 4)` of each head's `stride` scores (`stride` is a
    // multiple of `KB` = 16) and one inverse sum at `heads * stride + h`; the value pass reads `n`
    // weights per head and `n * vhd` values and writes each head's `vhd` outputs: the ranges
    // `score_blocks`, `score_heads` and `values_heads` require.
    unsafe {
        let sp = scores.as_mut_ptr();
        let (kp, qp) = (keys.as_ptr(), q.as_ptr());
        let mut h0 = 0;
        while h0 < heads {
            let g = (heads - h0).min(4);
            let (qh, sh) = (qp.add(h0 * hd), sp.add(h0 * stride));
            match g {
                1 => {
                    // Four blocks at a time, for more FMA chains.
                    let mut b = 0;
                    while b + 4 <= blocks {
                        score_blocks::<4>(qh, hd, kp.add(b * hd * KB), scale, sh.add(b * KB));
                        b += 4;
                    }
                    while b < blocks {
                        score_blocks::<1>(qh, hd, kp.add(b * hd * KB), scale, sh.add(b * KB));
                        b += 1;
                    }
                }
                2 => score_heads::<2>(qh, hd, kp, blocks, scale, sh, stride),
                3 => score_heads::<3>(qh, hd, kp, blocks, scale, sh, stride),
                _ => score_heads::<4>(qh, hd, kp, blocks, scale, sh, stride),
            }
            h0 += g;
        }
        for h in 0..heads {
            let s = std::slice::from_raw_parts_mut(sp.add(h * stride), stride);
            s[..first].fill(f32::NEG_INFINITY);
            s[n..].fill(f32::NEG_INFINITY);
            let sink = sinks.get(h).copied();
            let max = s.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
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
        let (vp, op) = (values.as_ptr(), out.as_mut_ptr());
        let mut h0 = 0;
        while h0 < heads {
            let g = (heads - h0).min(4);
            let w = |i: usize| sp.add((h0 + i) * stride) as *const f32;
            let inv = |i: usize| *sp.add(heads * stride + h0 + i);
            let o = |i: usize| op.add((h0 + i) * vhd);
            match g {
                1 => values_heads::<1, 8>(&[w(0)], n, vp, vhd, &[inv(0)], &[o(0)]),
                2 => values_heads::<2, 4>(
                    &[w(0), w(1)],
                    n,
                    vp,
                    vhd,
                    &[inv(0), inv(1)],
                    &[o(0), o(1)],
                ),
                3 => values_heads::<3, 4>(
                    &[w(0), w(1), w(2)],
                    n,
                    vp,
                    vhd,
                    &[inv(0), inv(1), inv(2)],
                    &[o(0), o(1), o(2)],
                ),
                _ => values_heads::<4, 4>(
                    &[w(0), w(1), w(2), w(3)],
                    n,
                    vp,
                    vhd,
                    &[inv(0), inv(1), inv(2), inv(3)],
                    &[o(0), o(1), o(2), o(3)],
                ),
            }
            h0 += g;
        }
    }
}

/// Scores of `N` consecutive key blocks at `k` against the query at `q` (`hd` floats), times
/// `scale`, into `out`.
///
/// No `target_feature` of its own: inlined into `attend_neon`.
///
/// # Safety
/// The CPU must support NEON. `q` must be valid for reading `hd` floats, `k` for reading
/// `N * hd * KEY_BLOCK` floats (`N` transposed key blocks) and `out` for writing
/// `N * KEY_BLOCK` floats. No alignment beyond `f32`'s is needed.
#[inline(always)]
unsafe fn score_blocks<const N: usize>(
    q: *const f32,
    hd: usize,
    k: *const f32,
    scale: f32,
    out: *mut f32,
) {
    use super::generic::KEY_BLOCK as KB;
    // SAFETY: the caller guarantees NEON and the ranges; the loads read `q[d]` and
    // `k[(i * hd + d) * KB..][..16]` for `i < N`, `d < hd`, the stores `out[i * KB..][..16]`.
    unsafe {
        let mut acc = [[vdupq_n_f32(0.0); 4]; N];
        for d in 0..hd {
            let qd = vdupq_n_f32(*q.add(d));
            for (i, a) in acc.iter_mut().enumerate() {
                let kd = k.add((i * hd + d) * KB);
                for (j, aj) in a.iter_mut().enumerate() {
                    *aj = vfmaq_f32(*aj, qd, vld1q_f32(kd.add(4 * j)));
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

/// Scores of `G` heads (queries at `q`, `hd` apart) against every key block at `k`, each
/// key vector loaded once for the heads; head `i`'s scores go to `out + i * stride`.
///
/// No `target_feature` of its own: inlined into `attend_neon`.
///
/// # Safety
/// The CPU must support NEON. For every head `i < G`, element `d < hd` and block
/// `b < blocks`: `q` must be valid for reading `q[i * hd + d]`, `k` for reading
/// `blocks * hd * KEY_BLOCK` floats (transposed key blocks), and `out` for writing `KEY_BLOCK`
/// floats at `i * stride + b * KEY_BLOCK`.
#[inline(always)]
unsafe fn score_heads<const G: usize>(
    q: *const f32,
    hd: usize,
    k: *const f32,
    blocks: usize,
    scale: f32,
    out: *mut f32,
    stride: usize,
) {
    use super::generic::KEY_BLOCK as KB;
    // SAFETY: the caller guarantees NEON and the ranges; the reads are `k` at
    // `b * hd * KB + d * KB` plus `0..16` and `q` at `i * hd + d`, the writes `out` at
    // `i * stride + b * KB` plus `0..16`, all inside them.
    unsafe {
        for b in 0..blocks {
            let kb = k.add(b * hd * KB);
            let mut acc = [[vdupq_n_f32(0.0); 4]; G];
            for d in 0..hd {
                let kv: [float32x4_t; 4] =
                    std::array::from_fn(|j| vld1q_f32(kb.add(d * KB + 4 * j)));
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

/// For `G` heads, `out[i] = inv[i] · Σ_t w[i][t] · v[t]` over `n` positions and all `vhd`
/// columns (a multiple of 4): `4C` columns per pass over the positions, each value vector
/// loaded once for the heads.
///
/// No `target_feature` of its own: inlined into `attend_neon`.
///
/// # Safety
/// The CPU must support NEON, and `vhd` must be a multiple of 4. For each head `i < G`, `w[i]`
/// must be valid for reading `n` floats and `out[i]` for writing `vhd`; `v` must be valid for
/// reading `n * vhd` floats (position `t`'s values at `t * vhd`).
#[inline(always)]
unsafe fn values_heads<const G: usize, const C: usize>(
    w: &[*const f32; G],
    n: usize,
    v: *const f32,
    vhd: usize,
    inv: &[f32; G],
    out: &[*mut f32; G],
) {
    // SAFETY: the caller guarantees NEON and the ranges; each call covers columns
    // `c..c + 4 * C` (then `c..c + 4`) with that end at most `vhd`, since `vhd` is a multiple of 4,
    // which is what `weighted_values` needs of `v.add(c)` and of `out` at column `c`.
    unsafe {
        let mut c = 0;
        while c + 4 * C <= vhd {
            weighted_values::<G, C>(w, n, v.add(c), vhd, inv, out, c);
            c += 4 * C;
        }
        while c < vhd {
            weighted_values::<G, 1>(w, n, v.add(c), vhd, inv, out, c);
            c += 4;
        }
    }
}

/// For `G` heads, `out[i][c..c + 4C] = inv[i] · Σ_t w[i][t] · v[t·stride..][..4C]` over `n`
/// positions (`v` already at column `c`); each head's sum runs over `t` in order.
///
/// No `target_feature` of its own: inlined into `attend_neon`.
///
/// # Safety
/// The CPU must support NEON. For every `t < n`, `v` must be valid for reading `4 * C` floats at
/// `t * stride`; for each head `i < G`, `w[i]` must be valid for reading `n` floats and `out[i]`
/// for writing `4 * C` floats at `c`.
#[inline(always)]
unsafe fn weighted_values<const G: usize, const C: usize>(
    w: &[*const f32; G],
    n: usize,
    v: *const f32,
    stride: usize,
    inv: &[f32; G],
    out: &[*mut f32; G],
    c: usize,
) {
    // SAFETY: the caller guarantees NEON and the ranges; the loads read
    // `v[t * stride + 4 * j..][..4]` for `j < C` and `w[i][t]`, the stores write
    // `out[i][c + 4 * j..][..4]`, all inside them.
    unsafe {
        let mut acc = [[vdupq_n_f32(0.0); C]; G];
        for t in 0..n {
            let vt = v.add(t * stride);
            let vs: [float32x4_t; C] = std::array::from_fn(|j| vld1q_f32(vt.add(4 * j)));
            for (i, a) in acc.iter_mut().enumerate() {
                let wt = vdupq_n_f32(*w[i].add(t));
                for (aj, vj) in a.iter_mut().zip(&vs) {
                    *aj = vfmaq_f32(*aj, wt, *vj);
                }
            }
        }
        for (i, a) in acc.iter().enumerate() {
            for (j, aj) in a.iter().enumerate() {
                vst1q_f32(out[i].add(c + 4 * j), vmulq_n_f32(*aj, inv[i]));
            }
        }
    }
}
