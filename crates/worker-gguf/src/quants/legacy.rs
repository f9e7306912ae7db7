//! The legacy 32-element formats: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 and Q8_1.
//!
//! Layouts as in ggml's `ggml-common.h`; quantizers follow `quantize_row_*_ref` in
//! `ggml-quants.c` (which gguf-py's numpy quantizers reproduce bit for bit).

use half::f16;

use super::{BlockFormat, Fields, Out, QuantizeBlock};
use crate::types::GgmlType;

/// Elements per legacy block.
pub const QK: usize = 32;

/// The value of largest magnitude (keeping its sign), or 0 for an all-zero block; the first
/// one wins a tie, as in ggml.
fn signed_absmax(x: &[f32]) -> f32 {
    let mut amax = 0.0f32;
    let mut max = 0.0f32;
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    max
}

/// Minimum and maximum of `x`, starting from `FLT_MAX` / `-FLT_MAX` as ggml does.
fn min_max(x: &[f32]) -> (f32, f32) {
    let mut min = f32::MAX;
    let mut max = -f32::MAX;
    for &v in x {
        if v < min {
            min = v;
        }
        if v > max {
            max = v;
        }
    }
    (min, max)
}

fn inverse(d: f32) -> f32 {
    if d != 0.0 {
        1.0 / d
    } else {
        0.0
    }
}

/// Splits 32 five-bit values into the low nibbles (`qs`, element j and j+16 in byte j) and
/// the fifth bits (`qh`, bit j for element j).
fn pack5(q: &[u8; QK]) -> ([u8; 4], [u8; QK / 2]) {
    let mut qs = [0u8; QK / 2];
    let mut qh = 0u32;
    for j in 0..QK / 2 {
        let (a, b) = (q[j], q[j + QK / 2]);
        qs[j] = (a & 0x0f) | ((b & 0x0f) << 4);
        qh |= u32::from((a & 0x10) >> 4) << j;
        qh |= u32::from((b & 0x10) >> 4) << (j + QK / 2);
    }
    (qh.to_le_bytes(), qs)
}

/// The five-bit value of element `j` (0..16) and `j + 16`.
fn unpack5(qh: u32, qs: &[u8; QK / 2], j: usize) -> (u8, u8) {
    let h0 = (((qh >> j) << 4) & 0x10) as u8;
    let h1 = ((qh >> (j + 12)) & 0x10) as u8;
    ((qs[j] & 0x0f) | h0, (qs[j] >> 4) | h1)
}

/// Q4_0: 4-bit values `q` with one scale, `x = (q - 8) * d`. 18 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockQ4_0 {
    /// Scale.
    pub d: f16,
    /// Element j in the low nibble of byte j, element j + 16 in its high nibble.
    pub qs: [u8; QK / 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ4_0>() == 18);

impl BlockFormat for BlockQ4_0 {
    const TYPE: GgmlType = GgmlType::Q4_0;
    const BLOCK_SIZE: usize = QK;

    fn read(bytes: &[u8]) -> Self {
        let mut f = Fields::new(bytes);
        BlockQ4_0 {
            d: f.f16(),
            qs: f.bytes(),
        }
    }

    fn write(&self, out: &mut [u8]) {
        let mut o = Out::new(out);
        o.f16(self.d);
        o.put(&self.qs);
    }

    fn to_float(&self, y: &mut [f32]) {
        let d = self.d.to_f32();
        for j in 0..QK / 2 {
            let x0 = i32::from(self.qs[j] & 0x0f) - 8;
            let x1 = i32::from(self.qs[j] >> 4) - 8;
            y[j] = x0 as f32 * d;
            y[j + QK / 2] = x1 as f32 * d;
        }
    }
}

impl QuantizeBlock for BlockQ4_0 {
    fn from_float(x: &[f32]) -> Self {
        assert_eq!(x.len(), QK);
        let d = signed_absmax(x) / -8.0;
        let id = inverse(d);
        let mut qs = [0u8; QK / 2];
        for j in 0..QK / 2 {
            let xi0 = ((x[j] * id + 8.5) as i8).min(15) as u8;
            let xi1 = ((x[j + QK / 2] * id + 8.5) as i8).min(15) as u8;
            qs[j] = xi0 | (xi1 << 4);
        }
        BlockQ4_0 {
            d: f16::from_f32(d),
            qs,
        }
    }
}

/// Q4_1: 4-bit values with a scale and an offset, `x = q * d + m`. 20 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockQ4_1 {
    /// Scale.
    pub d: f16,
    /// Offset (the block minimum).
    pub m: f16,
    /// Element j in the low nibble of byte j, element j + 16 in its high nibble.
    pub qs: [u8; QK / 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ4_1>() == 20);

impl BlockFormat for BlockQ4_1 {
    const TYPE: GgmlType = GgmlType::Q4_1;
    const BLOCK_SIZE: usize = QK;

    fn read(bytes: &[u8]) -> Self {
        let mut f = Fields::new(bytes);
        BlockQ4_1 {
            d: f.f16(),
            m: f.f16(),
            qs: f.bytes(),
        }
    }

    fn write(&self, out: &mut [u8]) {
        let mut o = Out::new(out);
        o.f16(self.d);
        o.f16(self.m);
        o.put(&self.qs);
    }

    fn to_float(&self, y: &mut [f32]) {
        let d = self.d.to_f32();
        let m = self.m.to_f32();
        for j in 0..QK / 2 {
            y[j] = f32::from(self.qs[j] & 0x0f) * d + m;
            y[j + QK / 2] = f32::from(self.qs[j] >> 4) * d + m;
        }
    }
}

impl QuantizeBlock for BlockQ4_1 {
    fn from_float(x: &[f32]) -> Self {
        assert_eq!(x.len(), QK);
        let (min, max) = min_max(x);
        let d = (max - min) / 15.0;
        let id = inverse(d);
        let mut qs = [0u8; QK / 2];
        for j in 0..QK / 2 {
            let xi0 = (((x[j] - min) * id + 0.5) as i8).min(15) as u8;
            let xi1 = (((x[j + QK / 2] - min) * id + 0.5) as i8).min(15) as u8;
            qs[j] = xi0 | (xi1 << 4);
        }
        BlockQ4_1 {
            d: f16::from_f32(d),
            m: f16::from_f32(min),
            qs,
        }
    }
}

/// Q5_0: 5-bit values with one scale, `x = (q - 16) * d`. 22 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockQ5_0 {
    /// Scale.
    pub d: f16,
    /// Fifth bits, a little-endian u32: bit j belongs to element j.
    pub qh: [u8; 4],
    /// Low four bits: element j in the low nibble of byte j, element j + 16 in the high one.
    pub qs: [u8; QK / 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ5_0>() == 22);

impl BlockFormat for BlockQ5_0 {
    const TYPE: GgmlType = GgmlType::Q5_0;
    const BLOCK_SIZE: usize = QK;

    fn read(bytes: &[u8]) -> Self {
        let mut f = Fields::new(bytes);
        BlockQ5_0 {
            d: f.f16(),
            qh: f.bytes(),
            qs: f.bytes(),
        }
    }

    fn write(&self, out: &mut [u8]) {
        let mut o = Out::new(out);
        o.f16(self.d);
        o.put(&self.qh);
        o.put(&self.qs);
    }

    fn to_float(&self, y: &mut [f32]) {
        let d = self.d.to_f32();
        let qh = u32::from_le_bytes(self.qh);
        for j in 0..QK / 2 {
            let (a, b) = unpack5(qh, &self.qs, j);
            y[j] = (i32::from(a) - 16) as f32 * d;
            y[j + QK / 2] = (i32::from(b) - 16) as f32 * d;
        }
    }
}

impl QuantizeBlock for BlockQ5_0 {
    fn from_float(x: &[f32]) -> Self {
        assert_eq!(x.len(), QK);
        let d = signed_absmax(x) / -16.0;
        let id = inverse(d);
        let mut q = [0u8; QK];
        for (qj, &v) in q.iter_mut().zip(x) {
            *qj = ((v * id + 16.5) as i8).min(31) as u8;
        }
        let (qh, qs) = pack5(&q);
        BlockQ5_0 {
            d: f16::from_f32(d),
            qh,
            qs,
        }
    }
}

/// Q5_1: 5-bit values with a scale and an offset, `x = q * d + m`. 24 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockQ5_1 {
    /// Scale.
    pub d: f16,
    /// Offset (the block minimum).
    pub m: f16,
    /// Fifth bits, a little-endian u32: bit j belongs to element j.
    pub qh: [u8; 4],
    /// Low four bits: element j in the low nibble of byte j, element j + 16 in the high one.
    pub qs: [u8; QK / 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ5_1>() == 24);

impl BlockFormat for BlockQ5_1 {
    const TYPE: GgmlType = GgmlType::Q5_1;
    const BLOCK_SIZE: usize = QK;

    fn read(bytes: &[u8]) -> Self {
        let mut f = Fields::new(bytes);
        BlockQ5_1 {
            d: f.f16(),
            m: f.f16(),
            qh: f.bytes(),
            qs: f.bytes(),
        }
    }

    fn write(&self, out: &mut [u8]) {
        let mut o = Out::new(out);
        o.f16(self.d);
        o.f16(self.m);
        o.put(&self.qh);
        o.put(&self.qs);
    }

    fn to_float(&self, y: &mut [f32]) {
        let d = self.d.to_f32();
        let m = self.m.to_f32();
        let qh = u32::from_le_bytes(self.qh);
        for j in 0..QK / 2 {
            let (a, b) = unpack5(qh, &self.qs, j);
            y[j] = f32::from(a) * d + m;
            y[j + QK / 2] = f32::from(b) * d + m;
        }
    }
}

impl QuantizeBlock for BlockQ5_1 {
    fn from_float(x: &[f32]) -> Self {
        assert_eq!(x.len(), QK);
        let (min, max) = min_max(x);
        let d = (max - min) / 31.0;
        let id = inverse(d);
        let mut q = [0u8; QK];
        for (qj, &v) in q.iter_mut().zip(x) {
            // ggml casts straight to uint8_t; gguf-py clips to 31. They agree on every input
            // whose rounding keeps (x - min) * id within [0, 31.5).
            *qj = (((v - min) * id + 0.5) as u8).min(31);
        }
        let (qh, qs) = pack5(&q);
        BlockQ5_1 {
            d: f16::from_f32(d),
            m: f16::from_f32(min),
            qh,
            qs,
        }
    }
}

/// Q8_0: 8-bit values with one scale, `x = q * d`. 34 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockQ8_0 {
    /// Scale.
    pub d: f16,
    /// The values.
    pub qs: [i8; QK],
}
const _: () = assert!(std::mem::size_of::<BlockQ8_0>() == 34);

/// Scale and values of a Q8_0/Q8_1 block: `d = amax / 127`, `q = round(x / d)` (half away
/// from zero).
fn quantize_q8(x: &[f32]) -> (f32, [i8; QK]) {
    assert_eq!(x.len(), QK);
    let mut amax = 0.0f32;
    for &v in x {
        amax = if amax > v.abs() { amax } else { v.abs() };
    }
    let d = amax / 127.0;
    let id = inverse(d);
    let mut qs = [0i8; QK];
    for (q, &v) in qs.iter_mut().zip(x) {
        *q = (v * id).round() as i8;
    }
    (d, qs)
}

impl BlockFormat for BlockQ8_0 {
    const TYPE: GgmlType = GgmlType::Q8_0;
    const BLOCK_SIZE: usize = QK;

    fn read(bytes: &[u8]) -> Self {
        let mut f = Fields::new(bytes);
        BlockQ8_0 {
            d: f.f16(),
            qs: f.i8s(),
        }
    }

    fn write(&self, out: &mut [u8]) {
        let mut o = Out::new(out);
        o.f16(self.d);
        o.i8s(&self.qs);
    }

    fn to_float(&self, y: &mut [f32]) {
        let d = self.d.to_f32();
        for (y, &q) in y.iter_mut().zip(&self.qs) {
            *y = f32::from(q) * d;
        }
    }
}

impl QuantizeBlock for BlockQ8_0 {
    fn from_float(x: &[f32]) -> Self {
        let (d, qs) = quantize_q8(x);
        BlockQ8_0 {
            d: f16::from_f32(d),
            qs,
        }
    }
}

/// Q8_1: Q8_0 plus `s = d * sum(q)`, the format activations take for Q4_1/Q5_1 dot
/// products. 36 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockQ8_1 {
    /// Scale.
    pub d: f16,
    /// `d * sum(qs)`.
    pub s: f16,
    /// The values.
    pub qs: [i8; QK],
}
const _: () = assert!(std::mem::size_of::<BlockQ8_1>() == 36);

impl BlockFormat for BlockQ8_1 {
    const TYPE: GgmlType = GgmlType::Q8_1;
    const BLOCK_SIZE: usize = QK;

    fn read(bytes: &[u8]) -> Self {
        let mut f = Fields::new(bytes);
        BlockQ8_1 {
            d: f.f16(),
            s: f.f16(),
            qs: f.i8s(),
        }
    }

    fn write(&self, out: &mut [u8]) {
        let mut o = Out::new(out);
        o.f16(self.d);
        o.f16(self.s);
        o.i8s(&self.qs);
    }

    fn to_float(&self, y: &mut [f32]) {
        let d = self.d.to_f32();
        for (y, &q) in y.iter_mut().zip(&self.qs) {
            *y = f32::from(q) * d;
        }
    }
}

impl QuantizeBlock for BlockQ8_1 {
    fn from_float(x: &[f32]) -> Self {
        let (d, qs) = quantize_q8(x);
        let sum: i32 = qs.iter().map(|&q| i32::from(q)).sum();
        BlockQ8_1 {
            d: f16::from_f32(d),
            s: f16::from_f32(sum as f32 * d),
            qs,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_made_q4_0_block() {
        let mut bytes = [0u8; 18];
        bytes[..2].copy_from_slice(&f16::from_f32(0.5).to_bits().to_le_bytes());
        bytes[2] = 0xf0; // element 0 -> 0 - 8, element 16 -> 15 - 8
        bytes[3] = 0x98; // element 1 -> 8 - 8, element 17 -> 9 - 8
        let mut y = [0f32; 32];
        BlockQ4_0::read(&bytes).to_float(&mut y);
        assert_eq!((y[0], y[16], y[1], y[17]), (-4.0, 3.5, 0.0, 0.5));
        let mut back = [0u8; 18];
        BlockQ4_0::read(&bytes).write(&mut back);
        assert_eq!(back, bytes);
    }

    #[test]
    fn hand_made_q5_1_and_q8_1_blocks() {
        let mut bytes = [0u8; 24];
        bytes[0..2].copy_from_slice(&f16::from_f32(2.0).to_bits().to_le_bytes());
        bytes[2..4].copy_from_slice(&f16::from_f32(-1.0).to_bits().to_le_bytes());
        bytes[4..8].copy_from_slice(&(1u32 | (1 << 16) | (1 << 31)).to_le_bytes());
        bytes[8] = 0x3f; // element 0: 0xf | 0x10 = 31; element 16: 3 | 0x10 = 19
        let mut y = [0f32; 32];
        BlockQ5_1::read(&bytes).to_float(&mut y);
        assert_eq!((y[0], y[16], y[1], y[31]), (61.0, 37.0, -1.0, 31.0));

        let x: Vec<f32> = (0..32).map(|i| i as f32 - 16.0).collect();
        let b = BlockQ8_1::from_float(&x);
        assert_eq!(b.qs[0], -127);
        let sum: i32 = b.qs.iter().map(|&q| i32::from(q)).sum();
        assert_eq!(b.s, f16::from_f32(sum as f32 * (16.0 / 127.0)));
        let mut y = [0f32; 32];
        b.to_float(&mut y);
        for (a, b) in x.iter().zip(&y) {
            assert!((a - b).abs() < 0.08, "{a} {b}");
        }
    }
}
