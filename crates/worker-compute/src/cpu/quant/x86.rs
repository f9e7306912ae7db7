//! x86-64 kernels: AVX2 (+FMA, F16C) for every supported type, AVX-512 for the hottest ones.
//!
//! Each kernel is an `unsafe fn` with `#[target_feature]`; the safe wrappers of the same name
//! as in `generic.rs` are private and reachable only through a [`Kernels`] table that
//! [`avx2_kernels`] / [`avx512_kernels`] build after checking the CPU features at run time.

use std::arch::x86_64::*;

use super::generic::{
    scale_min_k4, Q4_0_BYTES, Q4_1_BYTES, Q4_K_BYTES, Q5_0_BYTES, Q6_K_BYTES, Q8_0_BYTES,
};
use super::panel::PanelFormat;
use super::{
    BlockQ8, BlockQ8K, Isa, Kernels, TypeKernels, VecDot, VecDotQ8Kx4, VecDotQ8x4, QK, QK_K,
    SUPPORTED_TYPES,
};
use worker_gguf::GgmlType;

fn has_avx2() -> bool {
    is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c")
}

// Four activation rows per weight row with AVX-512: each row is summed exactly as the one-row
// AVX-512 kernel sums it (pairs of blocks in one 512-bit accumulator, an odd last block by the
// AVX2 kernel), so the results are bit-identical to four one-row calls.

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")]
unsafe fn vec_dot_q8_0_x4_avx512(w: &[u8], x: [&[BlockQ8]; 4]) -> [f32; 4] {
    vec_dot_q8_0_x4_avx512_body(w, x)
}

/// The body of `vec_dot_q8_0_x4_avx512`, inlined into it so it gets its features.
#[inline(always)]
unsafe fn vec_dot_q8_0_x4_avx512_body(w: &[u8], x: [&[BlockQ8]; 4]) -> [f32; 4] {
    let nb = blocks_x4(w.len() / Q8_0_BYTES, &x);
    let mut acc = [_mm512_setzero_ps(); 4];
    let mut i = 0;
    while i + 2 <= nb {
        let b = w.as_ptr().add(i * Q8_0_BYTES);
        let b1 = b.add(Q8_0_BYTES);
        let q = join(
            _mm256_loadu_si256(b.add(2) as *const __m256i),
            _mm256_loadu_si256(b1.add(2) as *const __m256i),
        );
        let (d0, d1) = (f16_at(b), f16_at(b1));
        for r in 0..4 {
            let (a0, a1) = (x[r].get_unchecked(i), x[r].get_unchecked(i + 1));
            let av = join(load_q8(a0), load_q8(a1));
            let d = scales_512(d0 * a0.d, d1 * a1.d);
            acc[r] = _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(dot_i8_512(q, av)), acc[r]);
        }
        i += 2;
    }
    let mut out = [0f32; 4];
    for r in 0..4 {
        out[r] = _mm512_reduce_add_ps(acc[r]);
        if i < nb {
            out[r] += vec_dot_q8_0_avx2(&w[i * Q8_0_BYTES..], &x[r][i..nb]);
        }
    }
    out
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")]
unsafe fn vec_dot_q4_1_x4_avx512(w: &[u8], x: [&[BlockQ8]; 4]) -> [f32; 4] {
    vec_dot_q4_1_x4_avx512_body(w, x)
}

/// The body of `vec_dot_q4_1_x4_avx512`, inlined into it so it gets its features.
#[inline(always)]
unsafe fn vec_dot_q4_1_x4_avx512_body(w: &[u8], x: [&[BlockQ8]; 4]) -> [f32; 4] {
    let nb = blocks_x4(w.len() / Q4_1_BYTES, &x);
    let mut acc = [_mm512_setzero_ps(); 4];
    let mut mins = [0f32; 4];
    let mut i = 0;
    while i + 2 <= nb {
        let b = w.as_ptr().add(i * Q4_1_BYTES);
        let b1 = b.add(Q4_1_BYTES);
        let q = join(nibbles_32(b.add(4)), nibbles_32(b1.add(4)));
        let (d0, d1) = (f16_at(b), f16_at(b1));
        let (m0, m1) = (f16_at(b.add(2)), f16_at(b1.add(2)));
        for r in 0..4 {
            let (a0, a1) = (x[r].get_unchecked(i), x[r].get_unchecked(i + 1));
            let av = join(load_q8(a0), load_q8(a1));
            let d = scales_512(d0 * a0.d, d1 * a1.d);
            mins[r] += m0 * a0.s + m1 * a1.s;
            let s = dot_u8i8_512(q, av);
            acc[r] = _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(s), acc[r]);
        }
        i += 2;
    }
    let mut out = [0f32; 4];
    for r in 0..4 {
        out[r] = _mm512_reduce_add_ps(acc[r]) + mins[r];
        if i < nb {
            out[r] += vec_dot_q4_1_avx2(&w[i * Q4_1_BYTES..], &x[r][i..nb]);
        }
    }
    out
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")]
unsafe fn vec_dot_q5_0_x4_avx512(w: &[u8], x: [&[BlockQ8]; 4]) -> [f32; 4] {
    vec_dot_q5_0_x4_avx512_body(w, x)
}

/// The body of `vec_dot_q5_0_x4_avx512`, inlined into it so it gets its features.
#[inline(always)]
unsafe fn vec_dot_q5_0_x4_avx512_body(w: &[u8], x: [&[BlockQ8]; 4]) -> [f32; 4] {
    let nb = blocks_x4(w.len() / Q5_0_BYTES, &x);
    let mut acc = [_mm512_setzero_ps(); 4];
    let (bit4, sixteen) = (_mm512_set1_epi8(0x10), _mm512_set1_epi8(16));
    let mut i = 0;
    while i + 2 <= nb {
        let b = w.as_ptr().add(i * Q5_0_BYTES);
        let b1 = b.add(Q5_0_BYTES);
        let qh0 = std::ptr::read_unaligned(b.add(2) as *const u32) as u64;
        let qh1 = std::ptr::read_unaligned(b1.add(2) as *const u32) as u64;
        let hi = _mm512_maskz_mov_epi8(qh0 | (qh1 << 32), bit4);
        let q = join(nibbles_32(b.add(6)), nibbles_32(b1.add(6)));
        let q = _mm512_sub_epi8(_mm512_or_si512(q, hi), sixteen);
        let (d0, d1) = (f16_at(b), f16_at(b1));
        for r in 0..4 {
            let (a0, a1) = (x[r].get_unchecked(i), x[r].get_unchecked(i + 1));
            let av = join(load_q8(a0), load_q8(a1));
            let d = scales_512(d0 * a0.d, d1 * a1.d);
            acc[r] = _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(dot_i8_512(q, av)), acc[r]);
        }
        i += 2;
    }
    let mut out = [0f32; 4];
    for r in 0..4 {
        out[r] = _mm512_reduce_add_ps(acc[r]);
        if i < nb {
            out[r] += vec_dot_q5_0_avx2(&w[i * Q5_0_BYTES..], &x[r][i..nb]);
        }
    }
    out
}

fn has_avx512() -> bool {
    has_avx2()
        && is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("avx512dq")
}

/// The AVX2 table, or `None` when the CPU lacks AVX2, FMA or F16C.
pub fn avx2_kernels() -> Option<Kernels> {
    if !has_avx2() {
        return None;
    }
    let mut k = Kernels::scalar();
    k.isa = Isa::Avx2;
    k.quantize_row_q8 = quantize_row_q8;
    k.quantize_row_q8k = quantize_row_q8k;
    k.dot_f32 = dot_f32;
    k.attend = attend;
    k.swiglu = swiglu;
    let scalar = Kernels::scalar();
    let mut set = |ty: GgmlType, vec_dot: VecDot| {
        if let Some(s) = scalar.for_type(ty) {
            let vec_dot_q8_x4 = match ty {
                GgmlType::Q4_1 => Some(vec_dot_q4_1_x4 as VecDotQ8x4),
                GgmlType::Q5_0 => Some(vec_dot_q5_0_x4 as VecDotQ8x4),
                GgmlType::Q8_0 => Some(vec_dot_q8_0_x4 as VecDotQ8x4),
                _ => None,
            };
            let vec_dot_q8k_x4 = match ty {
                GgmlType::Q4_K => Some(vec_dot_q4_k_x4 as VecDotQ8Kx4),
                GgmlType::Q6_K => Some(vec_dot_q6_k_x4 as VecDotQ8Kx4),
                _ => None,
            };
            k.set(
                ty,
                TypeKernels {
                    vec_dot,
                    vec_dot_q8_x4,
                    vec_dot_q8k_x4,
                    dequantize_row: s.dequantize_row,
                    panel: None,
                },
            );
        }
    };
    set(GgmlType::F32, VecDot::F32(vec_dot_f32));
    set(GgmlType::F16, VecDot::F32(vec_dot_f16));
    set(GgmlType::Q4_0, VecDot::Q8(vec_dot_q4_0));
    set(GgmlType::Q4_1, VecDot::Q8(vec_dot_q4_1));
    set(GgmlType::Q5_0, VecDot::Q8(vec_dot_q5_0));
    set(GgmlType::Q8_0, VecDot::Q8(vec_dot_q8_0));
    set(GgmlType::Q4_K, VecDot::Q8K(vec_dot_q4_k));
    set(GgmlType::Q6_K, VecDot::Q8K(vec_dot_q6_k));
    // The matmuls of the types with a panel layout run on repacked weights.
    for ty in SUPPORTED_TYPES {
        if let (Some(s), Some(format)) = (k.for_type(ty).copied(), PanelFormat::of(ty)) {
            let panel = Some(super::x86_panel::kernels_avx2(format));
            k.set(ty, TypeKernels { panel, ..s });
        }
    }
    Some(k)
}

/// The AVX-512 table (AVX2 kernels where no 512-bit one exists), with the panel kernels
/// (`vpdpbusd`) where the CPU has VNNI, or `None` when the CPU lacks AVX-512 F/BW/VL.
pub fn avx512_kernels() -> Option<Kernels> {
    avx512_table(is_x86_feature_detected!("avx512vnni"))
}

/// The AVX-512 table without VNNI, as a CPU without `avx512vnni` gets it (for tests).
pub fn avx512_kernels_without_vnni() -> Option<Kernels> {
    avx512_table(false)
}

type Q8Kernels = (GgmlType, fn(&[u8], &[BlockQ8]) -> f32, VecDotQ8x4);

fn avx512_table(vnni: bool) -> Option<Kernels> {
    if !has_avx512() {
        return None;
    }
    let mut k = avx2_kernels()?;
    k.isa = Isa::Avx512;
    // Each one-row kernel comes with a four-row kernel that sums in exactly the same order, so
    // a row's result does not depend on how many other rows share its matmul (a sequence
    // decoded alone and in a batch of several gives the same tokens).
    let row_kernels: [Q8Kernels; 3] = [
        (GgmlType::Q8_0, vec_dot_q8_0_512, vec_dot_q8_0_x4_512),
        (GgmlType::Q4_1, vec_dot_q4_1_512, vec_dot_q4_1_x4_512),
        (GgmlType::Q5_0, vec_dot_q5_0_512, vec_dot_q5_0_x4_512),
    ];
    for (ty, f, f4) in row_kernels {
        if let Some(s) = k.for_type(ty).copied() {
            k.set(
                ty,
                TypeKernels {
                    vec_dot: VecDot::Q8(f),
                    vec_dot_q8_x4: Some(f4),
                    ..s
                },
            );
        }
    }
    // With VNNI the matmuls of the types with a panel layout run on repacked weights.
    if vnni {
        for ty in SUPPORTED_TYPES {
            if let (Some(s), Some(format)) = (k.for_type(ty).copied(), PanelFormat::of(ty)) {
                let panel = Some(super::x86_panel::kernels(format));
                k.set(ty, TypeKernels { panel, ..s });
            }
        }
    }
    Some(k)
}

// ---------------------------------------------------------------------------------------
// Safe wrappers. Each is only stored in a table built after its features were detected.

macro_rules! wrap {
    ($name:ident, $imp:ident, ($($a:ident: $t:ty),*) -> $r:ty) => {
        fn $name($($a: $t),*) -> $r {
            // SAFETY: this wrapper is only reachable through a `Kernels` table built by
            // `avx2_kernels`/`avx512_table`, which checked the features `$imp` enables.
            unsafe { $imp($($a),*) }
        }
    };
}

wrap!(quantize_row_q8, quantize_row_q8_avx2, (x: &[f32], out: &mut [BlockQ8]) -> ());
wrap!(quantize_row_q8k, quantize_row_q8k_avx2, (x: &[f32], out: &mut [BlockQ8K]) -> ());
wrap!(dot_f32, dot_f32_avx2, (a: &[f32], b: &[f32]) -> f32);
wrap!(swiglu, swiglu_avx2, (out: &mut [f32], gate: &[f32], up: &[f32]) -> ());
wrap!(attend, attend_avx2, (q: &[f32], keys: &[f32], values: &[f32], n: usize, scale: f32, out: &mut [f32], scores: &mut Vec<f32>) -> ());
wrap!(vec_dot_f32, vec_dot_f32_avx2, (w: &[u8], x: &[f32]) -> f32);
wrap!(vec_dot_f16, vec_dot_f16_avx2, (w: &[u8], x: &[f32]) -> f32);
wrap!(vec_dot_q4_0, vec_dot_q4_0_avx2, (w: &[u8], x: &[BlockQ8]) -> f32);
wrap!(vec_dot_q4_1, vec_dot_q4_1_avx2, (w: &[u8], x: &[BlockQ8]) -> f32);
wrap!(vec_dot_q5_0, vec_dot_q5_0_avx2, (w: &[u8], x: &[BlockQ8]) -> f32);
wrap!(vec_dot_q8_0, vec_dot_q8_0_avx2, (w: &[u8], x: &[BlockQ8]) -> f32);
wrap!(vec_dot_q4_k, vec_dot_q4_k_avx2, (w: &[u8], x: &[BlockQ8K]) -> f32);
wrap!(vec_dot_q6_k, vec_dot_q6_k_avx2, (w: &[u8], x: &[BlockQ8K]) -> f32);
wrap!(vec_dot_q4_1_x4, vec_dot_q4_1_x4_avx2, (w: &[u8], x: [&[BlockQ8]; 4]) -> [f32; 4]);
wrap!(vec_dot_q5_0_x4, vec_dot_q5_0_x4_avx2, (w: &[u8], x: [&[BlockQ8]; 4]) -> [f32; 4]);
wrap!(vec_dot_q8_0_x4, vec_dot_q8_0_x4_avx2, (w: &[u8], x: [&[BlockQ8]; 4]) -> [f32; 4]);
wrap!(vec_dot_q4_k_x4, vec_dot_q4_k_x4_avx2, (w: &[u8], x: [&[BlockQ8K]; 4]) -> [f32; 4]);
wrap!(vec_dot_q6_k_x4, vec_dot_q6_k_x4_avx2, (w: &[u8], x: [&[BlockQ8K]; 4]) -> [f32; 4]);
wrap!(vec_dot_q4_1_x4_512, vec_dot_q4_1_x4_avx512, (w: &[u8], x: [&[BlockQ8]; 4]) -> [f32; 4]);
wrap!(vec_dot_q5_0_x4_512, vec_dot_q5_0_x4_avx512, (w: &[u8], x: [&[BlockQ8]; 4]) -> [f32; 4]);
wrap!(vec_dot_q8_0_x4_512, vec_dot_q8_0_x4_avx512, (w: &[u8], x: [&[BlockQ8]; 4]) -> [f32; 4]);
wrap!(vec_dot_q8_0_512, vec_dot_q8_0_avx512, (w: &[u8], x: &[BlockQ8]) -> f32);
wrap!(vec_dot_q4_1_512, vec_dot_q4_1_avx512, (w: &[u8], x: &[BlockQ8]) -> f32);
wrap!(vec_dot_q5_0_512, vec_dot_q5_0_avx512, (w: &[u8], x: &[BlockQ8]) -> f32);

// ---------------------------------------------------------------------------------------
// Helpers. The kernels below read a weight block at `p` only for block indices below
// `min(x.len(), w.len() / BYTES)`, so every read stays inside `w`.

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn f16_at(p: *const u8) -> f32 {
    let bits = std::ptr::read_unaligned(p as *const u16);
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
}

#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn hsum_ps(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// Eight i32 sums of products of signed bytes `x * y`.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn dot_i8(x: __m256i, y: __m256i) -> __m256i {
    let ax = _mm256_sign_epi8(x, x);
    let sy = _mm256_sign_epi8(y, x);
    _mm256_madd_epi16(_mm256_maddubs_epi16(ax, sy), _mm256_set1_epi16(1))
}

/// Eight i32 sums of products of unsigned bytes `u` (< 128) and signed bytes `y`.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn dot_u8i8(u: __m256i, y: __m256i) -> __m256i {
    _mm256_madd_epi16(_mm256_maddubs_epi16(u, y), _mm256_set1_epi16(1))
}

/// 16 packed bytes to 32 nibbles: low nibbles in bytes 0..16, high nibbles in 16..32.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn nibbles_32(p: *const u8) -> __m256i {
    let q = _mm_loadu_si128(p as *const __m128i);
    let hi = _mm_srli_epi16(q, 4);
    _mm256_and_si256(_mm256_set_m128i(hi, q), _mm256_set1_epi8(0x0f))
}

/// Byte `i` is 0xff where bit `i` of `bits` is set, else 0.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn bytes_from_bits_32(bits: u32) -> __m256i {
    let v = _mm256_set1_epi32(bits as i32);
    let shuf = _mm256_setr_epi8(
        0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3,
        3, 3,
    );
    let v = _mm256_shuffle_epi8(v, shuf);
    let mask = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
    _mm256_cmpeq_epi8(_mm256_and_si256(v, mask), mask)
}

#[inline]
unsafe fn load_q8(a: &BlockQ8) -> __m256i {
    _mm256_loadu_si256(a.qs.as_ptr() as *const __m256i)
}

// ---------------------------------------------------------------------------------------
// Activation quantization.

/// Rounds 32 floats times `id` to nearest-even i8, as `generic::quantize_row_q8`.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn quantize_32(x: *const f32, id: f32, out: *mut i8) {
    let m = _mm256_set1_ps(id);
    let i0 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x), m));
    let i1 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x.add(8)), m));
    let i2 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x.add(16)), m));
    let i3 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x.add(24)), m));
    let s01 = _mm256_packs_epi32(clamp127(i0), clamp127(i1));
    let s23 = _mm256_packs_epi32(clamp127(i2), clamp127(i3));
    let b = _mm256_packs_epi16(s01, s23);
    let b = _mm256_permutevar8x32_epi32(b, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256(out as *mut __m256i, b);
}

#[inline]
#[target_feature(enable = "avx2")]
unsafe fn clamp127(v: __m256i) -> __m256i {
    _mm256_max_epi32(
        _mm256_min_epi32(v, _mm256_set1_epi32(127)),
        _mm256_set1_epi32(-127),
    )
}

#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn amax(x: &[f32]) -> f32 {
    let sign = _mm256_set1_ps(-0.0);
    let mut m = _mm256_setzero_ps();
    let mut i = 0;
    while i + 8 <= x.len() {
        m = _mm256_max_ps(
            m,
            _mm256_andnot_ps(sign, _mm256_loadu_ps(x.as_ptr().add(i))),
        );
        i += 8;
    }
    let s = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    let s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_max_ss(s, _mm_movehdup_ps(s));
    let mut r = _mm_cvtss_f32(s);
    for v in &x[i..] {
        r = r.max(v.abs());
    }
    r
}

#[target_feature(enable = "avx2,fma")]
unsafe fn quantize_row_q8_avx2(x: &[f32], out: &mut [BlockQ8]) {
    for (xb, ob) in x.chunks_exact(QK).zip(out.iter_mut()) {
        let d = amax(xb) / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        quantize_32(xb.as_ptr(), id, ob.qs.as_mut_ptr());
        let sum: i32 = ob.qs.iter().map(|&q| q as i32).sum();
        ob.d = d;
        ob.s = d * sum as f32;
    }
}

#[target_feature(enable = "avx2,fma")]
unsafe fn quantize_row_q8k_avx2(x: &[f32], out: &mut [BlockQ8K]) {
    for (xb, ob) in x.chunks_exact(QK_K).zip(out.iter_mut()) {
        let d = amax(xb) / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        for j in 0..QK_K / 32 {
            quantize_32(xb.as_ptr().add(32 * j), id, ob.qs.as_mut_ptr().add(32 * j));
        }
        for (s, g) in ob.bsums.iter_mut().zip(ob.qs.chunks_exact(16)) {
            *s = g.iter().map(|&q| q as i16).sum();
        }
        ob.d = d;
    }
}

// ---------------------------------------------------------------------------------------
// f32 helpers.

#[target_feature(enable = "avx2,fma")]
unsafe fn dot_f32_avx2(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let (mut s0, mut s1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    let mut i = 0;
    while i + 16 <= n {
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), s0);
        s1 = _mm256_fmadd_ps(
            _mm256_loadu_ps(pa.add(i + 8)),
            _mm256_loadu_ps(pb.add(i + 8)),
            s1,
        );
        i += 16;
    }
    while i + 8 <= n {
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), s0);
        i += 8;
    }
    let mut r = hsum_ps(_mm256_add_ps(s0, s1));
    while i < n {
        r += a[i] * b[i];
        i += 1;
    }
    r
}

/// `exp(x)` for `x <= 0` (Cephes' polynomial, within 2 ulp); exactly 0 below -87.3, where
/// the result would leave the normal range (and for `-inf`, the masked scores).
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn exp_nonpositive_avx2(x: __m256) -> __m256 {
    let tiny = _mm256_cmp_ps(x, _mm256_set1_ps(-87.3), _CMP_LT_OQ);
    let x = _mm256_max_ps(x, _mm256_set1_ps(-87.3));
    let n = _mm256_round_ps(
        _mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E)),
        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC,
    );
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_359_4), x);
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.121_944_4e-4), r);
    let mut p = _mm256_set1_ps(1.987_569_1e-4);
    for c in [
        1.398_199_9e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        0.166_666_65,
        0.5,
    ] {
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
    }
    let p = _mm256_fmadd_ps(
        _mm256_mul_ps(p, r),
        r,
        _mm256_add_ps(r, _mm256_set1_ps(1.0)),
    );
    // Times 2^n: n + 127 in the exponent field (n >= -126 here, so the result is normal).
    let e = _mm256_slli_epi32(
        _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)),
        23,
    );
    _mm256_andnot_ps(tiny, _mm256_mul_ps(p, _mm256_castsi256_ps(e)))
}

/// `out = silu(gate) * up` ([`crate::cpu::ops::swiglu_row`]), eight lanes at a time, with
/// `sigmoid(g) = 1 / (1 + e)` for `g >= 0` and `e / (1 + e)` below, `e = exp(-|g|)`.
#[target_feature(enable = "avx2,fma")]
unsafe fn swiglu_avx2(out: &mut [f32], gate: &[f32], up: &[f32]) {
    let n = out.len().min(gate.len()).min(up.len());
    let (one, sign) = (_mm256_set1_ps(1.0), _mm256_set1_ps(-0.0));
    let mut i = 0;
    while i + 8 <= n {
        let g = _mm256_loadu_ps(gate.as_ptr().add(i));
        let e = exp_nonpositive_avx2(_mm256_or_ps(g, sign));
        let neg = _mm256_cmp_ps(g, _mm256_setzero_ps(), _CMP_LT_OQ);
        let num = _mm256_blendv_ps(one, e, neg);
        let sig = _mm256_div_ps(num, _mm256_add_ps(one, e));
        let r = _mm256_mul_ps(_mm256_mul_ps(g, sig), _mm256_loadu_ps(up.as_ptr().add(i)));
        _mm256_storeu_ps(out.as_mut_ptr().add(i), r);
        i += 8;
    }
    crate::cpu::ops::swiglu_row(&mut out[i..n], &gate[i..n], &up[i..n]);
}

/// [`super::generic::attend`] with sixteen positions per pair of vectors: scores four key
/// blocks at a time (eight FMA chains), a vector exponential, and the weighted sum of
/// values with 64 output columns held in registers.
#[target_feature(enable = "avx2,fma")]
unsafe fn attend_avx2(
    q: &[f32],
    keys: &[f32],
    values: &[f32],
    n: usize,
    scale: f32,
    out: &mut [f32],
    scores: &mut Vec<f32>,
) {
    use super::generic::KEY_BLOCK as KB;
    let (hd, vhd) = (q.len(), out.len());
    let blocks = n.div_ceil(KB);
    if !vhd.is_multiple_of(8) || keys.len() < blocks * KB * hd || values.len() < n * vhd {
        return super::generic::attend(q, keys, values, n, scale, out, scores);
    }
    scores.clear();
    scores.resize(blocks * KB, 0.0);
    let sp = scores.as_mut_ptr();
    let kp = keys.as_ptr();
    let vscale = _mm256_set1_ps(scale);
    // Scores, four blocks at a time; each position's sum runs over d in order either way.
    let mut b = 0;
    while b + 4 <= blocks {
        score_blocks::<4>(q, kp.add(b * hd * KB), vscale, sp.add(b * KB));
        b += 4;
    }
    while b < blocks {
        score_blocks::<1>(q, kp.add(b * hd * KB), vscale, sp.add(b * KB));
        b += 1;
    }
    for s in &mut scores[n..] {
        *s = f32::NEG_INFINITY;
    }
    let max = scores.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s));
    let (vmax, mut vsum) = (_mm256_set1_ps(max), _mm256_setzero_ps());
    for i in (0..blocks * KB).step_by(8) {
        let e = exp_nonpositive_avx2(_mm256_sub_ps(_mm256_loadu_ps(sp.add(i)), vmax));
        _mm256_storeu_ps(sp.add(i), e);
        vsum = _mm256_add_ps(vsum, e);
    }
    let inv = _mm256_set1_ps(1.0 / hsum_ps(vsum));
    // Values: 64 columns per pass over the positions, in registers.
    let (vp, op) = (values.as_ptr(), out.as_mut_ptr());
    let mut c = 0;
    while c + 64 <= vhd {
        weighted_values::<8>(sp, n, vp.add(c), vhd, inv, op.add(c));
        c += 64;
    }
    while c < vhd {
        weighted_values::<1>(sp, n, vp.add(c), vhd, inv, op.add(c));
        c += 8;
    }
}

/// Scores of `N` consecutive key blocks at `k` against `q`, times `scale`, into `out`.
///
/// No `target_feature` of its own: inlined into `attend_avx2`.
#[inline(always)]
unsafe fn score_blocks<const N: usize>(q: &[f32], k: *const f32, scale: __m256, out: *mut f32) {
    use super::generic::KEY_BLOCK as KB;
    let hd = q.len();
    let mut acc = [[_mm256_setzero_ps(); 2]; N];
    for (d, &qd) in q.iter().enumerate() {
        let qd = _mm256_set1_ps(qd);
        for (i, a) in acc.iter_mut().enumerate() {
            let k = k.add((i * hd + d) * KB);
            a[0] = _mm256_fmadd_ps(qd, _mm256_loadu_ps(k), a[0]);
            a[1] = _mm256_fmadd_ps(qd, _mm256_loadu_ps(k.add(8)), a[1]);
        }
    }
    for (i, a) in acc.iter().enumerate() {
        _mm256_storeu_ps(out.add(i * KB), _mm256_mul_ps(a[0], scale));
        _mm256_storeu_ps(out.add(i * KB + 8), _mm256_mul_ps(a[1], scale));
    }
}

/// `out[..8C] = inv · Σ_t w[t] · v[t·stride..][..8C]` over `n` positions.
///
/// No `target_feature` of its own: inlined into `attend_avx2`.
#[inline(always)]
unsafe fn weighted_values<const C: usize>(
    w: *const f32,
    n: usize,
    v: *const f32,
    stride: usize,
    inv: __m256,
    out: *mut f32,
) {
    let mut acc = [_mm256_setzero_ps(); C];
    for t in 0..n {
        let wt = _mm256_set1_ps(*w.add(t));
        let vt = v.add(t * stride);
        for (c, a) in acc.iter_mut().enumerate() {
            *a = _mm256_fmadd_ps(wt, _mm256_loadu_ps(vt.add(8 * c)), *a);
        }
    }
    for (c, a) in acc.iter().enumerate() {
        _mm256_storeu_ps(out.add(8 * c), _mm256_mul_ps(*a, inv));
    }
}

#[target_feature(enable = "avx2,fma")]
unsafe fn vec_dot_f32_avx2(w: &[u8], x: &[f32]) -> f32 {
    let n = x.len().min(w.len() / 4);
    let pw = w.as_ptr() as *const f32;
    let mut s = _mm256_setzero_ps();
    let mut i = 0;
    while i + 8 <= n {
        s = _mm256_fmadd_ps(
            _mm256_loadu_ps(pw.add(i)),
            _mm256_loadu_ps(x.as_ptr().add(i)),
            s,
        );
        i += 8;
    }
    let mut r = hsum_ps(s);
    while i < n {
        r += std::ptr::read_unaligned(pw.add(i)) * x[i];
        i += 1;
    }
    r
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn vec_dot_f16_avx2(w: &[u8], x: &[f32]) -> f32 {
    let n = x.len().min(w.len() / 2);
    let pw = w.as_ptr();
    let mut s = _mm256_setzero_ps();
    let mut i = 0;
    while i + 8 <= n {
        let h = _mm_loadu_si128(pw.add(2 * i) as *const __m128i);
        s = _mm256_fmadd_ps(_mm256_cvtph_ps(h), _mm256_loadu_ps(x.as_ptr().add(i)), s);
        i += 8;
    }
    let mut r = hsum_ps(s);
    while i < n {
        r += f16_at(pw.add(2 * i)) * x[i];
        i += 1;
    }
    r
}

// ---------------------------------------------------------------------------------------
// 32-element types (AVX2).

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn vec_dot_q8_0_avx2(w: &[u8], x: &[BlockQ8]) -> f32 {
    let nb = x.len().min(w.len() / Q8_0_BYTES);
    let mut acc = _mm256_setzero_ps();
    for (i, a) in x.iter().enumerate().take(nb) {
        let b = w.as_ptr().add(i * Q8_0_BYTES);
        let d = _mm256_set1_ps(f16_at(b) * a.d);
        let q = _mm256_loadu_si256(b.add(2) as *const __m256i);
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(dot_i8(q, load_q8(a))), acc);
    }
    hsum_ps(acc)
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn vec_dot_q4_0_avx2(w: &[u8], x: &[BlockQ8]) -> f32 {
    let nb = x.len().min(w.len() / Q4_0_BYTES);
    let mut acc = _mm256_setzero_ps();
    let eight = _mm256_set1_epi8(8);
    for (i, a) in x.iter().enumerate().take(nb) {
        let b = w.as_ptr().add(i * Q4_0_BYTES);
        let d = _mm256_set1_ps(f16_at(b) * a.d);
        let q = _mm256_sub_epi8(nibbles_32(b.add(2)), eight);
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(dot_i8(q, load_q8(a))), acc);
    }
    hsum_ps(acc)
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn vec_dot_q4_1_avx2(w: &[u8], x: &[BlockQ8]) -> f32 {
    let nb = x.len().min(w.len() / Q4_1_BYTES);
    let mut acc = _mm256_setzero_ps();
    let mut mins = 0f32;
    for (i, a) in x.iter().enumerate().take(nb) {
        let b = w.as_ptr().add(i * Q4_1_BYTES);
        let d = _mm256_set1_ps(f16_at(b) * a.d);
        mins += f16_at(b.add(2)) * a.s;
        let q = nibbles_32(b.add(4));
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(dot_u8i8(q, load_q8(a))), acc);
    }
    hsum_ps(acc) + mins
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn vec_dot_q5_0_avx2(w: &[u8], x: &[BlockQ8]) -> f32 {
    let nb = x.len().min(w.len() / Q5_0_BYTES);
    let mut acc = _mm256_setzero_ps();
    let (bit4, sixteen) = (_mm256_set1_epi8(0x10), _mm256_set1_epi8(16));
    for (i, a) in x.iter().enumerate().take(nb) {
        let b = w.as_ptr().add(i * Q5_0_BYTES);
        let d = _mm256_set1_ps(f16_at(b) * a.d);
        let qh = std::ptr::read_unaligned(b.add(2) as *const u32);
        let hi = _mm256_and_si256(bytes_from_bits_32(qh), bit4);
        let q = _mm256_sub_epi8(_mm256_or_si256(nibbles_32(b.add(6)), hi), sixteen);
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(dot_i8(q, load_q8(a))), acc);
    }
    hsum_ps(acc)
}

// ---------------------------------------------------------------------------------------
// Four activation rows per weight row (prefill): each weight block is unpacked once.

#[inline]
fn blocks_x4(w_blocks: usize, x: &[&[BlockQ8]; 4]) -> usize {
    x.iter().fold(w_blocks, |n, r| n.min(r.len()))
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn vec_dot_q4_1_x4_avx2(w: &[u8], x: [&[BlockQ8]; 4]) -> [f32; 4] {
    let nb = blocks_x4(w.len() / Q4_1_BYTES, &x);
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut mins = [0f32; 4];
    for i in 0..nb {
        let b = w.as_ptr().add(i * Q4_1_BYTES);
        let (d, m) = (f16_at(b), f16_at(b.add(2)));
        let q = nibbles_32(b.add(4));
        for r in 0..4 {
            let a = x[r].get_unchecked(i);
            let s = _mm256_cvtepi32_ps(dot_u8i8(q, load_q8(a)));
            acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(d * a.d), s, acc[r]);
            mins[r] += m * a.s;
        }
    }
    [
        hsum_ps(acc[0]) + mins[0],
        hsum_ps(acc[1]) + mins[1],
        hsum_ps(acc[2]) + mins[2],
        hsum_ps(acc[3]) + mins[3],
    ]
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn vec_dot_q5_0_x4_avx2(w: &[u8], x: [&[BlockQ8]; 4]) -> [f32; 4] {
    let nb = blocks_x4(w.len() / Q5_0_BYTES, &x);
    let mut acc = [_mm256_setzero_ps(); 4];
    let (bit4, sixteen) = (_mm256_set1_epi8(0x10), _mm256_set1_epi8(16));
    for i in 0..nb {
        let b = w.as_ptr().add(i * Q5_0_BYTES);
        let d = f16_at(b);
        let qh = std::ptr::read_unaligned(b.add(2) as *const u32);
        let hi = _mm256_and_si256(bytes_from_bits_32(qh), bit4);
        let q = _mm256_sub_epi8(_mm256_or_si256(nibbles_32(b.add(6)), hi), sixteen);
        // Sign trick once for the four rows: |q| unsigned, the sign moved to the activations.
        let aq = _mm256_sign_epi8(q, q);
        for r in 0..4 {
            let a = x[r].get_unchecked(i);
            let sy = _mm256_sign_epi8(load_q8(a), q);
            let s = _mm256_madd_epi16(_mm256_maddubs_epi16(aq, sy), _mm256_set1_epi16(1));
            acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(d * a.d), _mm256_cvtepi32_ps(s), acc[r]);
        }
    }
    [
        hsum_ps(acc[0]),
        hsum_ps(acc[1]),
        hsum_ps(acc[2]),
        hsum_ps(acc[3]),
    ]
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn vec_dot_q8_0_x4_avx2(w: &[u8], x: [&[BlockQ8]; 4]) -> [f32; 4] {
    let nb = blocks_x4(w.len() / Q8_0_BYTES, &x);
    let mut acc = [_mm256_setzero_ps(); 4];
    for i in 0..nb {
        let b = w.as_ptr().add(i * Q8_0_BYTES);
        let d = f16_at(b);
        let q = _mm256_loadu_si256(b.add(2) as *const __m256i);
        let aq = _mm256_sign_epi8(q, q);
        for r in 0..4 {
            let a = x[r].get_unchecked(i);
            let sy = _mm256_sign_epi8(load_q8(a), q);
            let s = _mm256_madd_epi16(_mm256_maddubs_epi16(aq, sy), _mm256_set1_epi16(1));
            acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(d * a.d), _mm256_cvtepi32_ps(s), acc[r]);
        }
    }
    [
        hsum_ps(acc[0]),
        hsum_ps(acc[1]),
        hsum_ps(acc[2]),
        hsum_ps(acc[3]),
    ]
}

// ---------------------------------------------------------------------------------------
// k-quants (AVX2).

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn vec_dot_q4_k_avx2(w: &[u8], x: &[BlockQ8K]) -> f32 {
    let nb = x.len().min(w.len() / Q4_K_BYTES);
    let mut acc = _mm256_setzero_ps();
    let mut mins = 0f32;
    let low = _mm256_set1_epi8(0x0f);
    for (i, a) in x.iter().enumerate().take(nb) {
        let blk = &w[i * Q4_K_BYTES..(i + 1) * Q4_K_BYTES];
        let b = blk.as_ptr();
        let (d, dmin) = (f16_at(b) * a.d, f16_at(b.add(2)) * a.d);
        let scales = &blk[4..16];
        let mut summ = 0i32;
        let mut sumi = _mm256_setzero_si256();
        for p in 0..4 {
            let (sc0, m0) = scale_min_k4(2 * p, scales);
            let (sc1, m1) = scale_min_k4(2 * p + 1, scales);
            summ += m0 as i32 * (a.bsums[4 * p] as i32 + a.bsums[4 * p + 1] as i32);
            summ += m1 as i32 * (a.bsums[4 * p + 2] as i32 + a.bsums[4 * p + 3] as i32);
            let q = _mm256_loadu_si256(b.add(16 + 32 * p) as *const __m256i);
            let lo = _mm256_and_si256(q, low);
            let hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), low);
            let a0 = _mm256_loadu_si256(a.qs.as_ptr().add(64 * p) as *const __m256i);
            let a1 = _mm256_loadu_si256(a.qs.as_ptr().add(64 * p + 32) as *const __m256i);
            let p0 = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, a0), _mm256_set1_epi16(sc0 as i16));
            let p1 = _mm256_madd_epi16(_mm256_maddubs_epi16(hi, a1), _mm256_set1_epi16(sc1 as i16));
            sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(p0, p1));
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
        mins += dmin * summ as f32;
    }
    hsum_ps(acc) - mins
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn vec_dot_q6_k_avx2(w: &[u8], x: &[BlockQ8K]) -> f32 {
    let nb = x.len().min(w.len() / Q6_K_BYTES);
    let mut acc = _mm256_setzero_ps();
    let mut offs = 0f32;
    let (m4, m3) = (_mm256_set1_epi8(0x0f), _mm256_set1_epi8(3));
    for (i, a) in x.iter().enumerate().take(nb) {
        let blk = &w[i * Q6_K_BYTES..(i + 1) * Q6_K_BYTES];
        let b = blk.as_ptr();
        let d = f16_at(b.add(208)) * a.d;
        let sc = &blk[192..208];
        let off: i32 = sc
            .iter()
            .zip(&a.bsums)
            .map(|(s, bs)| (*s as i8) as i32 * *bs as i32)
            .sum();
        let mut sumi = _mm256_setzero_si256();
        for n in 0..2 {
            let ql0 = _mm256_loadu_si256(b.add(64 * n) as *const __m256i);
            let ql1 = _mm256_loadu_si256(b.add(64 * n + 32) as *const __m256i);
            let qh = _mm256_loadu_si256(b.add(128 + 32 * n) as *const __m256i);
            let h0 = _mm256_slli_epi16(_mm256_and_si256(qh, m3), 4);
            let h2 = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2), m3), 4);
            let h4 = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 4), m3), 4);
            let h6 = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 6), m3), 4);
            let q = [
                _mm256_or_si256(_mm256_and_si256(ql0, m4), h0),
                _mm256_or_si256(_mm256_and_si256(ql1, m4), h2),
                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql0, 4), m4), h4),
                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql1, 4), m4), h6),
            ];
            for (k, qk) in q.iter().enumerate() {
                let s0 = (sc[8 * n + 2 * k] as i8) as i16;
                let s1 = (sc[8 * n + 2 * k + 1] as i8) as i16;
                let scale = _mm256_set_m128i(_mm_set1_epi16(s1), _mm_set1_epi16(s0));
                let av = _mm256_loadu_si256(a.qs.as_ptr().add(128 * n + 32 * k) as *const __m256i);
                let prod = _mm256_maddubs_epi16(*qk, av);
                sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(prod, scale));
            }
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
        offs += d * (32 * off) as f32;
    }
    hsum_ps(acc) - offs
}

// ---------------------------------------------------------------------------------------
// k-quants, four activation rows per weight row (prefill). Each row's f32 operations are
// those of the one-row kernel above, in the same order (the integer sums are exact in any
// order), so each result is bit-identical to `vec_dot_q4_k_avx2` / `vec_dot_q6_k_avx2`.

#[inline]
fn blocks_k_x4(w_blocks: usize, x: &[&[BlockQ8K]; 4]) -> usize {
    x.iter().fold(w_blocks, |n, r| n.min(r.len()))
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn vec_dot_q4_k_x4_avx2(w: &[u8], x: [&[BlockQ8K]; 4]) -> [f32; 4] {
    let nb = blocks_k_x4(w.len() / Q4_K_BYTES, &x);
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut mins = [0f32; 4];
    let low = _mm256_set1_epi8(0x0f);
    for i in 0..nb {
        let blk = &w[i * Q4_K_BYTES..(i + 1) * Q4_K_BYTES];
        let b = blk.as_ptr();
        let (wd, wdmin) = (f16_at(b), f16_at(b.add(2)));
        let scales = &blk[4..16];
        let mut sc = [0i16; 8];
        let mut mn = [0i32; 8];
        for (j, (s, m)) in sc.iter_mut().zip(mn.iter_mut()).enumerate() {
            let (sj, mj) = scale_min_k4(j, scales);
            (*s, *m) = (sj as i16, mj as i32);
        }
        let mut sumi = [_mm256_setzero_si256(); 4];
        for p in 0..4 {
            let q = _mm256_loadu_si256(b.add(16 + 32 * p) as *const __m256i);
            let lo = _mm256_and_si256(q, low);
            let hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), low);
            let (s0, s1) = (
                _mm256_set1_epi16(sc[2 * p]),
                _mm256_set1_epi16(sc[2 * p + 1]),
            );
            for r in 0..4 {
                let a = x[r].get_unchecked(i);
                let a0 = _mm256_loadu_si256(a.qs.as_ptr().add(64 * p) as *const __m256i);
                let a1 = _mm256_loadu_si256(a.qs.as_ptr().add(64 * p + 32) as *const __m256i);
                let p0 = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, a0), s0);
                let p1 = _mm256_madd_epi16(_mm256_maddubs_epi16(hi, a1), s1);
                sumi[r] = _mm256_add_epi32(sumi[r], _mm256_add_epi32(p0, p1));
            }
        }
        for r in 0..4 {
            let a = x[r].get_unchecked(i);
            let mut summ = 0i32;
            for (m, bs) in mn.iter().zip(a.bsums.chunks_exact(2)) {
                summ += m * (bs[0] as i32 + bs[1] as i32);
            }
            let (d, dmin) = (wd * a.d, wdmin * a.d);
            acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi[r]), acc[r]);
            mins[r] += dmin * summ as f32;
        }
    }
    [
        hsum_ps(acc[0]) - mins[0],
        hsum_ps(acc[1]) - mins[1],
        hsum_ps(acc[2]) - mins[2],
        hsum_ps(acc[3]) - mins[3],
    ]
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn vec_dot_q6_k_x4_avx2(w: &[u8], x: [&[BlockQ8K]; 4]) -> [f32; 4] {
    let nb = blocks_k_x4(w.len() / Q6_K_BYTES, &x);
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut offs = [0f32; 4];
    let (m4, m3) = (_mm256_set1_epi8(0x0f), _mm256_set1_epi8(3));
    for i in 0..nb {
        let blk = &w[i * Q6_K_BYTES..(i + 1) * Q6_K_BYTES];
        let b = blk.as_ptr();
        let wd = f16_at(b.add(208));
        let sc = &blk[192..208];
        let mut sumi = [_mm256_setzero_si256(); 4];
        for n in 0..2 {
            let ql0 = _mm256_loadu_si256(b.add(64 * n) as *const __m256i);
            let ql1 = _mm256_loadu_si256(b.add(64 * n + 32) as *const __m256i);
            let qh = _mm256_loadu_si256(b.add(128 + 32 * n) as *const __m256i);
            let h0 = _mm256_slli_epi16(_mm256_and_si256(qh, m3), 4);
            let h2 = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2), m3), 4);
            let h4 = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 4), m3), 4);
            let h6 = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 6), m3), 4);
            let q = [
                _mm256_or_si256(_mm256_and_si256(ql0, m4), h0),
                _mm256_or_si256(_mm256_and_si256(ql1, m4), h2),
                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql0, 4), m4), h4),
                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql1, 4), m4), h6),
            ];
            for (k, qk) in q.iter().enumerate() {
                let s0 = (sc[8 * n + 2 * k] as i8) as i16;
                let s1 = (sc[8 * n + 2 * k + 1] as i8) as i16;
                let scale = _mm256_set_m128i(_mm_set1_epi16(s1), _mm_set1_epi16(s0));
                for r in 0..4 {
                    let a = x[r].get_unchecked(i);
                    let av =
                        _mm256_loadu_si256(a.qs.as_ptr().add(128 * n + 32 * k) as *const __m256i);
                    let prod = _mm256_maddubs_epi16(*qk, av);
                    sumi[r] = _mm256_add_epi32(sumi[r], _mm256_madd_epi16(prod, scale));
                }
            }
        }
        for r in 0..4 {
            let a = x[r].get_unchecked(i);
            let off: i32 = sc
                .iter()
                .zip(&a.bsums)
                .map(|(s, bs)| (*s as i8) as i32 * *bs as i32)
                .sum();
            let d = wd * a.d;
            acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi[r]), acc[r]);
            offs[r] += d * (32 * off) as f32;
        }
    }
    [
        hsum_ps(acc[0]) - offs[0],
        hsum_ps(acc[1]) - offs[1],
        hsum_ps(acc[2]) - offs[2],
        hsum_ps(acc[3]) - offs[3],
    ]
}

// ---------------------------------------------------------------------------------------
// AVX-512: two 32-element blocks per 512-bit register.

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")]
unsafe fn join(lo: __m256i, hi: __m256i) -> __m512i {
    _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1)
}

/// 16 i32 sums of signed bytes `x * y` (no pair of products reaches the i16 saturation of
/// `vpmaddubsw`: |x| <= 128, |y| <= 127).
///
/// No `target_feature` of its own: inlined into kernels that enable AVX-512.
#[inline(always)]
unsafe fn dot_i8_512(x: __m512i, y: __m512i) -> __m512i {
    let ax = _mm512_abs_epi8(x);
    let neg = _mm512_movepi8_mask(x);
    let sy = _mm512_mask_sub_epi8(y, neg, _mm512_setzero_si512(), y);
    dot_u8i8_512(ax, sy)
}

/// 16 i32 sums of unsigned bytes `u` (<= 128) times signed bytes `y`; exact.
#[inline(always)]
unsafe fn dot_u8i8_512(u: __m512i, y: __m512i) -> __m512i {
    _mm512_madd_epi16(_mm512_maddubs_epi16(u, y), _mm512_set1_epi16(1))
}

/// A vector holding `d0` in the low 8 lanes and `d1` in the high 8.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")]
unsafe fn scales_512(d0: f32, d1: f32) -> __m512 {
    _mm512_insertf32x8(_mm512_set1_ps(d0), _mm256_set1_ps(d1), 1)
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")]
unsafe fn vec_dot_q8_0_avx512(w: &[u8], x: &[BlockQ8]) -> f32 {
    vec_dot_q8_0_avx512_body(w, x)
}

/// The body of `vec_dot_q8_0_avx512`, inlined into it so it gets its features.
#[inline(always)]
unsafe fn vec_dot_q8_0_avx512_body(w: &[u8], x: &[BlockQ8]) -> f32 {
    let nb = x.len().min(w.len() / Q8_0_BYTES);
    let mut acc = _mm512_setzero_ps();
    let mut i = 0;
    while i + 2 <= nb {
        let b = w.as_ptr().add(i * Q8_0_BYTES);
        let b1 = b.add(Q8_0_BYTES);
        let q = join(
            _mm256_loadu_si256(b.add(2) as *const __m256i),
            _mm256_loadu_si256(b1.add(2) as *const __m256i),
        );
        let av = join(load_q8(&x[i]), load_q8(&x[i + 1]));
        let d = scales_512(f16_at(b) * x[i].d, f16_at(b1) * x[i + 1].d);
        acc = _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(dot_i8_512(q, av)), acc);
        i += 2;
    }
    let mut r = _mm512_reduce_add_ps(acc);
    if i < nb {
        r += vec_dot_q8_0_avx2(&w[i * Q8_0_BYTES..], &x[i..nb]);
    }
    r
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")]
unsafe fn vec_dot_q4_1_avx512(w: &[u8], x: &[BlockQ8]) -> f32 {
    vec_dot_q4_1_avx512_body(w, x)
}

/// The body of `vec_dot_q4_1_avx512`, inlined into it so it gets its features.
#[inline(always)]
unsafe fn vec_dot_q4_1_avx512_body(w: &[u8], x: &[BlockQ8]) -> f32 {
    let nb = x.len().min(w.len() / Q4_1_BYTES);
    let mut acc = _mm512_setzero_ps();
    let mut mins = 0f32;
    let mut i = 0;
    while i + 2 <= nb {
        let b = w.as_ptr().add(i * Q4_1_BYTES);
        let b1 = b.add(Q4_1_BYTES);
        let q = join(nibbles_32(b.add(4)), nibbles_32(b1.add(4)));
        let av = join(load_q8(&x[i]), load_q8(&x[i + 1]));
        let d = scales_512(f16_at(b) * x[i].d, f16_at(b1) * x[i + 1].d);
        mins += f16_at(b.add(2)) * x[i].s + f16_at(b1.add(2)) * x[i + 1].s;
        let s = dot_u8i8_512(q, av);
        acc = _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(s), acc);
        i += 2;
    }
    let mut r = _mm512_reduce_add_ps(acc) + mins;
    if i < nb {
        r += vec_dot_q4_1_avx2(&w[i * Q4_1_BYTES..], &x[i..nb]);
    }
    r
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")]
unsafe fn vec_dot_q5_0_avx512(w: &[u8], x: &[BlockQ8]) -> f32 {
    vec_dot_q5_0_avx512_body(w, x)
}

/// The body of `vec_dot_q5_0_avx512`, inlined into it so it gets its features.
#[inline(always)]
unsafe fn vec_dot_q5_0_avx512_body(w: &[u8], x: &[BlockQ8]) -> f32 {
    let nb = x.len().min(w.len() / Q5_0_BYTES);
    let mut acc = _mm512_setzero_ps();
    let (bit4, sixteen) = (_mm512_set1_epi8(0x10), _mm512_set1_epi8(16));
    let mut i = 0;
    while i + 2 <= nb {
        let b = w.as_ptr().add(i * Q5_0_BYTES);
        let b1 = b.add(Q5_0_BYTES);
        let qh0 = std::ptr::read_unaligned(b.add(2) as *const u32) as u64;
        let qh1 = std::ptr::read_unaligned(b1.add(2) as *const u32) as u64;
        let hi = _mm512_maskz_mov_epi8(qh0 | (qh1 << 32), bit4);
        let q = join(nibbles_32(b.add(6)), nibbles_32(b1.add(6)));
        let q = _mm512_sub_epi8(_mm512_or_si512(q, hi), sixteen);
        let av = join(load_q8(&x[i]), load_q8(&x[i + 1]));
        let d = scales_512(f16_at(b) * x[i].d, f16_at(b1) * x[i + 1].d);
        acc = _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(dot_i8_512(q, av)), acc);
        i += 2;
    }
    let mut r = _mm512_reduce_add_ps(acc);
    if i < nb {
        r += vec_dot_q5_0_avx2(&w[i * Q5_0_BYTES..], &x[i..nb]);
    }
    r
}
