//! Scalar reference kernels, written from the ggml block formats. Every SIMD kernel in
//! `x86.rs` has a function of the same name here and is tested against it.
//!
//! Weight rows are raw GGUF bytes, parsed field by field (no alignment assumptions).
//! Activations are quantized to [`BlockQ8`] (32-element types) or [`BlockQ8K`] (k-quants),
//! and the dot products accumulate exact integer sums per block, as llama.cpp's `vec_dot`.
// Index loops mirror the block layouts as ggml documents them; iterator chains would hide
// which byte feeds which element.
#![allow(clippy::needless_range_loop)]

use worker_gguf::quants::iq::{e8m0_to_f32_half, KVALUES_MXFP4};
use worker_gguf::GgmlType;

use super::{BlockQ8, BlockQ8K, QK, QK_K};
use half::f16;

#[inline]
fn f16_at(b: &[u8], off: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[off], b[off + 1]])).to_f32()
}

/// Block sizes in bytes, as ggml.
pub(crate) const Q4_0_BYTES: usize = 18;
pub(crate) const Q4_1_BYTES: usize = 20;
pub(crate) const Q5_0_BYTES: usize = 22;
pub(crate) const Q5_1_BYTES: usize = 24;
pub(crate) const Q8_0_BYTES: usize = 34;
pub(crate) const Q4_K_BYTES: usize = 144;
pub(crate) const Q5_K_BYTES: usize = 176;
pub(crate) const Q6_K_BYTES: usize = 210;
pub(crate) const MXFP4_BYTES: usize = 17;

// ---------------------------------------------------------------------------------------
// Activation quantization.

/// Quantizes `x` (a multiple of 32 long) to 8-bit blocks with one f32 scale each.
pub fn quantize_row_q8(x: &[f32], out: &mut [BlockQ8]) {
    for (xb, ob) in x.chunks_exact(QK).zip(out.iter_mut()) {
        let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let mut sum = 0i32;
        for (q, v) in ob.qs.iter_mut().zip(xb) {
            let r = (v * id).round_ties_even() as i32;
            *q = r.clamp(-127, 127) as i8;
            sum += *q as i32;
        }
        ob.d = d;
        ob.s = d * sum as f32;
    }
}

/// Quantizes `x` (a multiple of 256 long) to 8-bit super-blocks with sums per 16.
pub fn quantize_row_q8k(x: &[f32], out: &mut [BlockQ8K]) {
    for (xb, ob) in x.chunks_exact(QK_K).zip(out.iter_mut()) {
        let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        for (q, v) in ob.qs.iter_mut().zip(xb) {
            *q = ((v * id).round_ties_even() as i32).clamp(-127, 127) as i8;
        }
        for (s, g) in ob.bsums.iter_mut().zip(ob.qs.chunks_exact(16)) {
            *s = g.iter().map(|&q| q as i16).sum();
        }
        ob.d = d;
    }
}

// ---------------------------------------------------------------------------------------
// Dequantization of weight rows (embeddings and the f32-activation reference path).

/// F32 row to f32.
pub fn dequantize_row_f32(w: &[u8], out: &mut [f32]) {
    for (o, b) in out.iter_mut().zip(w.chunks_exact(4)) {
        *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    }
}

/// F16 row to f32.
pub fn dequantize_row_f16(w: &[u8], out: &mut [f32]) {
    for (i, o) in out.iter_mut().enumerate() {
        *o = f16_at(w, 2 * i);
    }
}

/// Q4_0: `{d: f16, qs: [u8; 16]}`, `x = (nibble - 8) * d`, low nibbles first.
pub fn dequantize_row_q4_0(w: &[u8], out: &mut [f32]) {
    for (b, o) in w.chunks_exact(Q4_0_BYTES).zip(out.chunks_exact_mut(QK)) {
        let d = f16_at(b, 0);
        for j in 0..16 {
            o[j] = ((b[2 + j] & 0xf) as i32 - 8) as f32 * d;
            o[j + 16] = ((b[2 + j] >> 4) as i32 - 8) as f32 * d;
        }
    }
}

/// Q4_1: `{d: f16, m: f16, qs: [u8; 16]}`, `x = nibble * d + m`.
pub fn dequantize_row_q4_1(w: &[u8], out: &mut [f32]) {
    for (b, o) in w.chunks_exact(Q4_1_BYTES).zip(out.chunks_exact_mut(QK)) {
        let (d, m) = (f16_at(b, 0), f16_at(b, 2));
        for j in 0..16 {
            o[j] = (b[4 + j] & 0xf) as f32 * d + m;
            o[j + 16] = (b[4 + j] >> 4) as f32 * d + m;
        }
    }
}

#[inline]
fn q5_values(qh: u32, qs: &[u8], j: usize) -> (i32, i32) {
    let h0 = ((qh >> j) & 1) << 4;
    let h1 = ((qh >> (j + 16)) & 1) << 4;
    (
        ((qs[j] & 0xf) as u32 | h0) as i32,
        ((qs[j] >> 4) as u32 | h1) as i32,
    )
}

/// Q5_0: `{d: f16, qh: u32, qs: [u8; 16]}`, `x = (nibble | high bit << 4) - 16) * d`.
pub fn dequantize_row_q5_0(w: &[u8], out: &mut [f32]) {
    for (b, o) in w.chunks_exact(Q5_0_BYTES).zip(out.chunks_exact_mut(QK)) {
        let d = f16_at(b, 0);
        let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
        for j in 0..16 {
            let (a, c) = q5_values(qh, &b[6..], j);
            o[j] = (a - 16) as f32 * d;
            o[j + 16] = (c - 16) as f32 * d;
        }
    }
}

/// Q5_1: `{d: f16, m: f16, qh: u32, qs: [u8; 16]}`, `x = q5 * d + m`.
pub fn dequantize_row_q5_1(w: &[u8], out: &mut [f32]) {
    for (b, o) in w.chunks_exact(Q5_1_BYTES).zip(out.chunks_exact_mut(QK)) {
        let (d, m) = (f16_at(b, 0), f16_at(b, 2));
        let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
        for j in 0..16 {
            let (a, c) = q5_values(qh, &b[8..], j);
            o[j] = a as f32 * d + m;
            o[j + 16] = c as f32 * d + m;
        }
    }
}

/// Q8_0: `{d: f16, qs: [i8; 32]}`, `x = q * d`.
pub fn dequantize_row_q8_0(w: &[u8], out: &mut [f32]) {
    for (b, o) in w.chunks_exact(Q8_0_BYTES).zip(out.chunks_exact_mut(QK)) {
        let d = f16_at(b, 0);
        for j in 0..QK {
            o[j] = (b[2 + j] as i8) as f32 * d;
        }
    }
}

/// MXFP4: `{e: u8, qs: [u8; 16]}`, `x = k[nibble] * 2^(e - 128)` with `k` ggml's
/// `kvalues_mxfp4` (the e2m1 values doubled), low nibbles first.
pub fn dequantize_row_mxfp4(w: &[u8], out: &mut [f32]) {
    for (b, o) in w.chunks_exact(MXFP4_BYTES).zip(out.chunks_exact_mut(QK)) {
        let d = e8m0_to_f32_half(b[0]);
        for j in 0..16 {
            o[j] = KVALUES_MXFP4[(b[1 + j] & 0xf) as usize] as f32 * d;
            o[j + 16] = KVALUES_MXFP4[(b[1 + j] >> 4) as usize] as f32 * d;
        }
    }
}

/// The 6-bit scale and min of sub-block `j` of a Q4_K/Q5_K super-block (`scales`: 12 bytes).
#[inline]
pub(crate) fn scale_min_k4(j: usize, s: &[u8]) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        (
            (s[j + 4] & 0xf) | ((s[j - 4] >> 6) << 4),
            (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
        )
    }
}

/// Q4_K: `{d: f16, dmin: f16, scales: [u8; 12], qs: [u8; 128]}`; 8 sub-blocks of 32,
/// `x = d * sc * nibble - dmin * m`; each 32 bytes of `qs` hold two sub-blocks (low, high).
pub fn dequantize_row_q4_k(w: &[u8], out: &mut [f32]) {
    for (b, o) in w.chunks_exact(Q4_K_BYTES).zip(out.chunks_exact_mut(QK_K)) {
        let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
        let (scales, qs) = (&b[4..16], &b[16..144]);
        for p in 0..4 {
            let (sc0, m0) = scale_min_k4(2 * p, scales);
            let (sc1, m1) = scale_min_k4(2 * p + 1, scales);
            let q = &qs[32 * p..32 * p + 32];
            for l in 0..32 {
                o[64 * p + l] = d * sc0 as f32 * (q[l] & 0xf) as f32 - dmin * m0 as f32;
                o[64 * p + 32 + l] = d * sc1 as f32 * (q[l] >> 4) as f32 - dmin * m1 as f32;
            }
        }
    }
}

/// Q5_K: `{d, dmin: f16, scales: [u8; 12], qh: [u8; 32], qs: [u8; 128]}`.
pub fn dequantize_row_q5_k(w: &[u8], out: &mut [f32]) {
    for (b, o) in w.chunks_exact(Q5_K_BYTES).zip(out.chunks_exact_mut(QK_K)) {
        let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
        let (scales, qh, qs) = (&b[4..16], &b[16..48], &b[48..176]);
        for p in 0..4 {
            let (sc0, m0) = scale_min_k4(2 * p, scales);
            let (sc1, m1) = scale_min_k4(2 * p + 1, scales);
            let q = &qs[32 * p..32 * p + 32];
            for l in 0..32 {
                let h0 = ((qh[l] >> (2 * p)) & 1) << 4;
                let h1 = ((qh[l] >> (2 * p + 1)) & 1) << 4;
                o[64 * p + l] = d * sc0 as f32 * ((q[l] & 0xf) | h0) as f32 - dmin * m0 as f32;
                o[64 * p + 32 + l] = d * sc1 as f32 * ((q[l] >> 4) | h1) as f32 - dmin * m1 as f32;
            }
        }
    }
}

/// The four 6-bit values (minus 32) at `l` of half `n` of a Q6_K block, for elements
/// `l`, `l + 32`, `l + 64`, `l + 96` of that half.
#[inline]
fn q6_values(ql: &[u8], qh: &[u8], l: usize) -> [i32; 4] {
    [
        ((ql[l] & 0xf) | ((qh[l] & 3) << 4)) as i32 - 32,
        ((ql[l + 32] & 0xf) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32,
        ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32,
        ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32,
    ]
}

/// Q6_K: `{ql: [u8; 128], qh: [u8; 64], scales: [i8; 16], d: f16}`; 16 groups of 16 with an
/// 8-bit scale each, `x = d * sc * (q6 - 32)`.
pub fn dequantize_row_q6_k(w: &[u8], out: &mut [f32]) {
    for (b, o) in w.chunks_exact(Q6_K_BYTES).zip(out.chunks_exact_mut(QK_K)) {
        let d = f16_at(b, 208);
        for n in 0..2 {
            let ql = &b[64 * n..64 * n + 64];
            let qh = &b[128 + 32 * n..128 + 32 * n + 32];
            let sc = &b[192 + 8 * n..192 + 8 * n + 8];
            for l in 0..32 {
                let q = q6_values(ql, qh, l);
                for (k, qk) in q.iter().enumerate() {
                    let s = sc[l / 16 + 2 * k] as i8 as f32;
                    o[128 * n + 32 * k + l] = d * s * *qk as f32;
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Dot products of one weight row with one activation row.

/// F32 weights times f32 activations.
pub fn vec_dot_f32(w: &[u8], x: &[f32]) -> f32 {
    w.chunks_exact(4)
        .zip(x)
        .map(|(b, v)| f32::from_le_bytes([b[0], b[1], b[2], b[3]]) * v)
        .sum()
}

/// F16 weights times f32 activations.
pub fn vec_dot_f16(w: &[u8], x: &[f32]) -> f32 {
    x.iter()
        .enumerate()
        .map(|(i, v)| f16_at(w, 2 * i) * v)
        .sum()
}

/// Q4_0 weights times Q8 activations.
pub fn vec_dot_q4_0(w: &[u8], x: &[BlockQ8]) -> f32 {
    let mut acc = 0f32;
    for (b, a) in w.chunks_exact(Q4_0_BYTES).zip(x) {
        let mut s = 0i32;
        for j in 0..16 {
            s += ((b[2 + j] & 0xf) as i32 - 8) * a.qs[j] as i32;
            s += ((b[2 + j] >> 4) as i32 - 8) * a.qs[j + 16] as i32;
        }
        acc += f16_at(b, 0) * a.d * s as f32;
    }
    acc
}

/// Q4_1 weights times Q8 activations (the min term uses the activation block sum).
pub fn vec_dot_q4_1(w: &[u8], x: &[BlockQ8]) -> f32 {
    let mut acc = 0f32;
    for (b, a) in w.chunks_exact(Q4_1_BYTES).zip(x) {
        let mut s = 0i32;
        for j in 0..16 {
            s += (b[4 + j] & 0xf) as i32 * a.qs[j] as i32;
            s += (b[4 + j] >> 4) as i32 * a.qs[j + 16] as i32;
        }
        acc += f16_at(b, 0) * a.d * s as f32 + f16_at(b, 2) * a.s;
    }
    acc
}

/// Q5_0 weights times Q8 activations.
pub fn vec_dot_q5_0(w: &[u8], x: &[BlockQ8]) -> f32 {
    let mut acc = 0f32;
    for (b, a) in w.chunks_exact(Q5_0_BYTES).zip(x) {
        let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
        let mut s = 0i32;
        for j in 0..16 {
            let (q0, q1) = q5_values(qh, &b[6..], j);
            s += (q0 - 16) * a.qs[j] as i32 + (q1 - 16) * a.qs[j + 16] as i32;
        }
        acc += f16_at(b, 0) * a.d * s as f32;
    }
    acc
}

/// Q5_1 weights times Q8 activations.
pub fn vec_dot_q5_1(w: &[u8], x: &[BlockQ8]) -> f32 {
    let mut acc = 0f32;
    for (b, a) in w.chunks_exact(Q5_1_BYTES).zip(x) {
        let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
        let mut s = 0i32;
        for j in 0..16 {
            let (q0, q1) = q5_values(qh, &b[8..], j);
            s += q0 * a.qs[j] as i32 + q1 * a.qs[j + 16] as i32;
        }
        acc += f16_at(b, 0) * a.d * s as f32 + f16_at(b, 2) * a.s;
    }
    acc
}

/// Q8_0 weights times Q8 activations.
pub fn vec_dot_q8_0(w: &[u8], x: &[BlockQ8]) -> f32 {
    let mut acc = 0f32;
    for (b, a) in w.chunks_exact(Q8_0_BYTES).zip(x) {
        let mut s = 0i32;
        for j in 0..QK {
            s += (b[2 + j] as i8) as i32 * a.qs[j] as i32;
        }
        acc += f16_at(b, 0) * a.d * s as f32;
    }
    acc
}

/// MXFP4 weights times Q8 activations, as llama.cpp's `ggml_vec_dot_mxfp4_q8_0`: per block
/// the exact integer sum `s` of levels times activation bytes, then
/// `acc = fma(s, 2^(e - 128) * dx, acc)`. The panel kernels compute the same steps per row,
/// so they give these bits.
pub fn vec_dot_mxfp4(w: &[u8], x: &[BlockQ8]) -> f32 {
    let mut acc = 0f32;
    for (b, a) in w.chunks_exact(MXFP4_BYTES).zip(x) {
        let mut s = 0i32;
        for j in 0..16 {
            s += KVALUES_MXFP4[(b[1 + j] & 0xf) as usize] as i32 * a.qs[j] as i32;
            s += KVALUES_MXFP4[(b[1 + j] >> 4) as usize] as i32 * a.qs[j + 16] as i32;
        }
        acc = (s as f32).mul_add(e8m0_to_f32_half(b[0]) * a.d, acc);
    }
    acc
}

/// Q4_K weights times Q8_K activations.
pub fn vec_dot_q4_k(w: &[u8], x: &[BlockQ8K]) -> f32 {
    let mut acc = 0f32;
    for (b, a) in w.chunks_exact(Q4_K_BYTES).zip(x) {
        let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
        let (scales, qs) = (&b[4..16], &b[16..144]);
        let (mut sumi, mut summ) = (0i32, 0i32);
        for p in 0..4 {
            let (sc0, m0) = scale_min_k4(2 * p, scales);
            let (sc1, m1) = scale_min_k4(2 * p + 1, scales);
            let q = &qs[32 * p..32 * p + 32];
            let (mut s0, mut s1) = (0i32, 0i32);
            for l in 0..32 {
                s0 += (q[l] & 0xf) as i32 * a.qs[64 * p + l] as i32;
                s1 += (q[l] >> 4) as i32 * a.qs[64 * p + 32 + l] as i32;
            }
            sumi += sc0 as i32 * s0 + sc1 as i32 * s1;
            let bs0 = a.bsums[4 * p] as i32 + a.bsums[4 * p + 1] as i32;
            let bs1 = a.bsums[4 * p + 2] as i32 + a.bsums[4 * p + 3] as i32;
            summ += m0 as i32 * bs0 + m1 as i32 * bs1;
        }
        acc += a.d * (d * sumi as f32 - dmin * summ as f32);
    }
    acc
}

/// Q5_K weights times Q8_K activations.
pub fn vec_dot_q5_k(w: &[u8], x: &[BlockQ8K]) -> f32 {
    let mut acc = 0f32;
    for (b, a) in w.chunks_exact(Q5_K_BYTES).zip(x) {
        let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
        let (scales, qh, qs) = (&b[4..16], &b[16..48], &b[48..176]);
        let (mut sumi, mut summ) = (0i32, 0i32);
        for p in 0..4 {
            let (sc0, m0) = scale_min_k4(2 * p, scales);
            let (sc1, m1) = scale_min_k4(2 * p + 1, scales);
            let q = &qs[32 * p..32 * p + 32];
            let (mut s0, mut s1) = (0i32, 0i32);
            for l in 0..32 {
                let h0 = ((qh[l] >> (2 * p)) & 1) << 4;
                let h1 = ((qh[l] >> (2 * p + 1)) & 1) << 4;
                s0 += ((q[l] & 0xf) | h0) as i32 * a.qs[64 * p + l] as i32;
                s1 += ((q[l] >> 4) | h1) as i32 * a.qs[64 * p + 32 + l] as i32;
            }
            sumi += sc0 as i32 * s0 + sc1 as i32 * s1;
            let bs0 = a.bsums[4 * p] as i32 + a.bsums[4 * p + 1] as i32;
            let bs1 = a.bsums[4 * p + 2] as i32 + a.bsums[4 * p + 3] as i32;
            summ += m0 as i32 * bs0 + m1 as i32 * bs1;
        }
        acc += a.d * (d * sumi as f32 - dmin * summ as f32);
    }
    acc
}

/// Q6_K weights times Q8_K activations.
pub fn vec_dot_q6_k(w: &[u8], x: &[BlockQ8K]) -> f32 {
    let mut acc = 0f32;
    for (b, a) in w.chunks_exact(Q6_K_BYTES).zip(x) {
        let d = f16_at(b, 208);
        let mut sumi = 0i32;
        for n in 0..2 {
            let ql = &b[64 * n..64 * n + 64];
            let qh = &b[128 + 32 * n..128 + 32 * n + 32];
            let sc = &b[192 + 8 * n..192 + 8 * n + 8];
            let mut group = [0i32; 8];
            for l in 0..32 {
                let q = q6_values(ql, qh, l);
                for (k, qk) in q.iter().enumerate() {
                    group[l / 16 + 2 * k] += qk * a.qs[128 * n + 32 * k + l] as i32;
                }
            }
            for (g, s) in group.iter().zip(sc) {
                sumi += g * (*s as i8) as i32;
            }
        }
        acc += d * a.d * sumi as f32;
    }
    acc
}

// ---------------------------------------------------------------------------------------
// Types without row kernels of their own (`VecDot::Dequantized`): worker-gguf dequantizes.

/// A row of `ty` to f32 by worker-gguf's dequantizer.
fn dequantize_with_gguf(ty: GgmlType, w: &[u8], out: &mut [f32]) {
    // Rows are whole blocks of a dequantizable type: checked when the weight was uploaded.
    worker_gguf::dequantize(ty, w, out).expect("a row of whole blocks of a supported type");
}

macro_rules! dequantized_type {
    ($($ty:ident, $dequantize:ident;)*) => {$(
        #[doc = concat!("A ", stringify!($ty), " row to f32.")]
        pub fn $dequantize(w: &[u8], out: &mut [f32]) {
            dequantize_with_gguf(GgmlType::$ty, w, out)
        }
    )*};
}

dequantized_type! {
    BF16, dequantize_row_bf16;
    Q2_K, dequantize_row_q2_k;
    Q3_K, dequantize_row_q3_k;
    IQ4_NL, dequantize_row_iq4_nl;
    IQ4_XS, dequantize_row_iq4_xs;
}

// ---------------------------------------------------------------------------------------
// f32 vector helpers used by attention.

/// `sum(a[i] * b[i])`.
pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Positions per key block of the attention kernels' key layout (see [`attend`]).
pub const KEY_BLOCK: usize = 16;

/// The attention of `heads` query heads that share one KV head (a GQA group) over cached
/// positions `first..n` (a sliding window starts past 0; the positions before `first` in the
/// buffers are ignored): for each head `h`, `out[h] = softmax(scale · K q[h]) · V`, with `q` the
/// heads' queries one after the other and `out` their outputs likewise. Each head's result
/// is the same as alone ([`attend_head`]); the SIMD kernels read each key and value once for
/// the whole group. `sinks` is empty, or one sink logit per head (see [`attend_head`]).
#[allow(clippy::too_many_arguments)]
pub fn attend(
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
    for (h, (qh, oh)) in q
        .chunks_exact(hd)
        .zip(out.chunks_exact_mut(vhd))
        .enumerate()
    {
        let sink = sinks.get(h).copied();
        attend_head(qh, keys, values, first, n, scale, sink, oh, scores);
    }
}

/// One block of [`KEY_BLOCK`] cached positions of one KV head, f16 as a KV cache stores
/// them: `keys` transposed (`[head_dim][KEY_BLOCK]`, the layout [`attend`] reads), `values`
/// one row per position.
#[derive(Clone, Copy, Debug)]
pub struct F16Block<'a> {
    /// `2 * head_dim * KEY_BLOCK` bytes.
    pub keys: &'a [u8],
    /// `2 * KEY_BLOCK * value_head_dim` bytes.
    pub values: &'a [u8],
}

/// [`attend`] over f16 blocks (block `b` holds positions `16b..16b + 16`): the blocks
/// converted to f32, then [`attend`]. The SIMD kernels read the blocks where they lie.
#[allow(clippy::too_many_arguments)]
pub fn attend_f16(
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
    let mut keys = vec![0f32; blocks.len() * KEY_BLOCK * hd];
    let mut values = vec![0f32; blocks.len() * KEY_BLOCK * vhd];
    let key_blocks = keys.chunks_exact_mut(KEY_BLOCK * hd);
    let value_blocks = values.chunks_exact_mut(KEY_BLOCK * vhd);
    for ((b, k), v) in blocks.iter().zip(key_blocks).zip(value_blocks) {
        dequantize_row_f16(b.keys, k);
        dequantize_row_f16(b.values, v);
    }
    attend(
        q, &keys, &values, first, n, scale, sinks, out, scores, heads,
    );
}

/// One query head's attention over cached positions `first..n`:
/// `out = softmax(scale · K q) · V`.
///
/// `keys` holds the keys in blocks of [`KEY_BLOCK`] positions, each block transposed
/// (`[head_dim][KEY_BLOCK]`), so that a SIMD kernel scores sixteen positions per vector with
/// no horizontal sums; `values` holds one row of `out.len()` per position. `scores` is
/// scratch space. A `sink` logit joins the softmax's maximum and denominator, not its sum of
/// values (gpt-oss's attention sinks).
#[allow(clippy::too_many_arguments)]
pub fn attend_head(
    q: &[f32],
    keys: &[f32],
    values: &[f32],
    first: usize,
    n: usize,
    scale: f32,
    sink: Option<f32>,
    out: &mut [f32],
    scores: &mut Vec<f32>,
) {
    let (hd, vhd) = (q.len(), out.len());
    scores.clear();
    let mut max = f32::NEG_INFINITY;
    for t in first..n {
        let block = &keys[(t / KEY_BLOCK) * hd * KEY_BLOCK..][..hd * KEY_BLOCK];
        let mut s = 0f32;
        for (d, qd) in q.iter().enumerate() {
            s = qd.mul_add(block[d * KEY_BLOCK + t % KEY_BLOCK], s);
        }
        let s = s * scale;
        max = max.max(s);
        scores.push(s);
    }
    if let Some(sink) = sink {
        max = max.max(sink);
    }
    let mut sum = 0f32;
    for s in scores.iter_mut() {
        *s = (*s - max).exp();
        sum += *s;
    }
    if let Some(sink) = sink {
        sum += (sink - max).exp();
    }
    out.fill(0.0);
    for (t, w) in (first..n).zip(scores.iter()) {
        for (o, v) in out.iter_mut().zip(&values[t * vhd..][..vhd]) {
            *o = w.mul_add(*v, *o);
        }
    }
    let inv = 1.0 / sum;
    for o in out.iter_mut() {
        *o *= inv;
    }
}
