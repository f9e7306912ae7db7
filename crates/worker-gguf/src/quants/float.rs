//! The plain types: F32, F16, BF16 (with quantizers), and F64, I8, I16, I32 (read only).
//!
//! They have blocks of one element, so instead of block structs they convert whole slices.
//! Every function here takes lengths that [`super::dequantize`] / [`super::quantize`] checked:
//! `src` holds exactly `dst.len()` elements.

use half::{bf16, f16};

/// F32: the bytes are the values, little-endian.
pub fn f32_to_float(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(4).zip(dst) {
        *y = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    }
}

/// F32 to its little-endian bytes.
pub fn f32_from_float(src: &[f32], dst: &mut [u8]) {
    for (x, b) in src.iter().zip(dst.chunks_exact_mut(4)) {
        b.copy_from_slice(&x.to_le_bytes());
    }
}

/// F16 (IEEE binary16) to f32; exact.
pub fn f16_to_float(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(2).zip(dst) {
        *y = f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32();
    }
}

/// f32 to F16, rounding to nearest even as `GGML_FP32_TO_FP16` and numpy's
/// `astype(float16)` do (overflow gives infinity).
pub fn f16_from_float(src: &[f32], dst: &mut [u8]) {
    for (x, b) in src.iter().zip(dst.chunks_exact_mut(2)) {
        b.copy_from_slice(&f16::from_f32(*x).to_bits().to_le_bytes());
    }
}

/// BF16 to f32: the 16 bits are the top half of an f32; exact.
pub fn bf16_to_float(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(2).zip(dst) {
        *y = f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16);
    }
}

/// f32 to BF16 bits as ggml's `ggml_compute_fp32_to_bf16`: NaN becomes a quiet NaN with the
/// same sign and top payload bits, everything else rounds to nearest even.
pub fn bf16_from_f32(x: f32) -> bf16 {
    let u = x.to_bits();
    if (u & 0x7fff_ffff) > 0x7f80_0000 {
        return bf16::from_bits(((u >> 16) | 64) as u16);
    }
    // u + 0x7fff + lsb never overflows: the largest finite |x| is below 0xff80_0000.
    bf16::from_bits(((u + (0x7fff + ((u >> 16) & 1))) >> 16) as u16)
}

/// f32 to BF16 (see [`bf16_from_f32`]).
pub fn bf16_from_float(src: &[f32], dst: &mut [u8]) {
    for (x, b) in src.iter().zip(dst.chunks_exact_mut(2)) {
        b.copy_from_slice(&bf16_from_f32(*x).to_bits().to_le_bytes());
    }
}

/// F64 to f32, rounding to nearest.
pub fn f64_to_float(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(8).zip(dst) {
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        *y = f64::from_le_bytes(a) as f32;
    }
}

/// I8 to f32; exact.
pub fn i8_to_float(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.iter().zip(dst) {
        *y = f32::from(*b as i8);
    }
}

/// I16 to f32; exact.
pub fn i16_to_float(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(2).zip(dst) {
        *y = f32::from(i16::from_le_bytes([b[0], b[1]]));
    }
}

/// I32 to f32, rounding to nearest beyond 2^24.
pub fn i32_to_float(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(4).zip(dst) {
        *y = i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f32;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_rounds_to_nearest_even_and_keeps_nan_quiet() {
        assert_eq!(bf16_from_f32(1.0).to_bits(), 0x3f80);
        // 1 + 2^-8 is exactly half way between two bf16 values: ties go to even (down).
        assert_eq!(bf16_from_f32(f32::from_bits(0x3f80_8000)).to_bits(), 0x3f80);
        assert_eq!(bf16_from_f32(f32::from_bits(0x3f81_8000)).to_bits(), 0x3f82);
        assert_eq!(bf16_from_f32(f32::from_bits(0x3f80_8001)).to_bits(), 0x3f81);
        assert_eq!(bf16_from_f32(f32::INFINITY).to_bits(), 0x7f80);
        assert_eq!(bf16_from_f32(f32::from_bits(0x7f80_0001)).to_bits(), 0x7fc0);
        assert_eq!(bf16_from_f32(f32::MAX).to_bits(), 0x7f80);
    }

    #[test]
    fn integer_and_f64_types_read_little_endian() {
        let mut y = [0f32; 2];
        i8_to_float(&[0xff, 0x7f], &mut y);
        assert_eq!(y, [-1.0, 127.0]);
        i16_to_float(&[0x00, 0x80, 0x10, 0x00], &mut y);
        assert_eq!(y, [-32768.0, 16.0]);
        i32_to_float(&[0xfe, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x01], &mut y);
        assert_eq!(y, [-2.0, 16_777_216.0]);
        let mut b = Vec::new();
        b.extend_from_slice(&0.1f64.to_le_bytes());
        b.extend_from_slice(&(-3.5f64).to_le_bytes());
        f64_to_float(&b, &mut y);
        assert_eq!(y, [0.1f32, -3.5]);
    }
}
