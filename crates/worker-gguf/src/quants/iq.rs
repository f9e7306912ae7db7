//! Formats whose 4-bit codes index a fixed non-linear table: IQ4_NL, IQ4_XS and MXFP4.
//!
//! Layouts as in ggml's `ggml-common.h`. Only MXFP4 has a quantizer here (ggml's
//! `quantize_row_mxfp4_ref`); IQ4_NL/IQ4_XS quantizers search scales with importance
//! weights and are not needed by the worker.

use half::f16;

use super::{BlockFormat, Fields, Out, QuantizeBlock, QK_K};
use crate::types::GgmlType;

/// The 16 IQ4_NL/IQ4_XS levels (`kvalues_iq4nl` in ggml).
pub const KVALUES_IQ4NL: [i8; 16] = [
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
];

/// The 16 MXFP4 levels: the e2m1 values doubled (`kvalues_mxfp4` in ggml), so a block's
/// scale is half its e8m0 exponent's power of two.
pub const KVALUES_MXFP4: [i8; 16] = [0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12];

/// Elements per IQ4_NL / MXFP4 block.
pub const QK: usize = 32;

/// IQ4_NL: 4-bit indices into [`KVALUES_IQ4NL`] with one scale, `x = d * k[q]`. 18 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockIQ4NL {
    /// Scale.
    pub d: f16,
    /// Element j in the low nibble of byte j, element j + 16 in its high nibble.
    pub qs: [u8; QK / 2],
}
const _: () = assert!(std::mem::size_of::<BlockIQ4NL>() == 18);

impl BlockFormat for BlockIQ4NL {
    const TYPE: GgmlType = GgmlType::IQ4_NL;
    const BLOCK_SIZE: usize = QK;

    fn read(bytes: &[u8]) -> Self {
        let mut f = Fields::new(bytes);
        BlockIQ4NL {
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
            y[j] = d * f32::from(KVALUES_IQ4NL[usize::from(self.qs[j] & 0x0f)]);
            y[j + QK / 2] = d * f32::from(KVALUES_IQ4NL[usize::from(self.qs[j] >> 4)]);
        }
    }
}

/// IQ4_XS: [`KVALUES_IQ4NL`] indices in sub-blocks of 32 with 6-bit scales,
/// `x = d * (ls - 32) * k[q]`. 136 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockIQ4XS {
    /// Super-block scale.
    pub d: f16,
    /// High two bits of the eight sub-block scales (bits 2j, 2j+1 for sub-block j).
    pub scales_h: u16,
    /// Low four bits of the sub-block scales: sub-block j in nibble j % 2 of byte j / 2.
    pub scales_l: [u8; QK_K / 64],
    /// Per sub-block 16 bytes: element l in the low nibble of byte l, l + 16 in the high.
    pub qs: [u8; QK_K / 2],
}
const _: () = assert!(std::mem::size_of::<BlockIQ4XS>() == 136);

impl BlockFormat for BlockIQ4XS {
    const TYPE: GgmlType = GgmlType::IQ4_XS;
    const BLOCK_SIZE: usize = QK_K;

    fn read(bytes: &[u8]) -> Self {
        let mut f = Fields::new(bytes);
        BlockIQ4XS {
            d: f.f16(),
            scales_h: f.u16(),
            scales_l: f.bytes(),
            qs: f.bytes(),
        }
    }

    fn write(&self, out: &mut [u8]) {
        let mut o = Out::new(out);
        o.f16(self.d);
        o.u16(self.scales_h);
        o.put(&self.scales_l);
        o.put(&self.qs);
    }

    fn to_float(&self, y: &mut [f32]) {
        let d = self.d.to_f32();
        for ib in 0..QK_K / 32 {
            let low = (self.scales_l[ib / 2] >> (4 * (ib % 2))) & 0x0f;
            let high = ((self.scales_h >> (2 * ib)) & 3) as u8;
            let ls = i32::from(low | (high << 4));
            let dl = d * (ls - 32) as f32;
            let qs = &self.qs[ib * 16..ib * 16 + 16];
            let y = &mut y[ib * 32..ib * 32 + 32];
            for j in 0..16 {
                y[j] = dl * f32::from(KVALUES_IQ4NL[usize::from(qs[j] & 0x0f)]);
                y[j + 16] = dl * f32::from(KVALUES_IQ4NL[usize::from(qs[j] >> 4)]);
            }
        }
    }
}

/// MXFP4 (OCP microscaling): e2m1 codes with a shared e8m0 exponent,
/// `x = 2^(e - 128) * k[q]` with `k` = [`KVALUES_MXFP4`]. 17 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockMXFP4 {
    /// Shared exponent (e8m0, bias 127).
    pub e: u8,
    /// Element j in the low nibble of byte j, element j + 16 in its high nibble.
    pub qs: [u8; QK / 2],
}
const _: () = assert!(std::mem::size_of::<BlockMXFP4>() == 17);

/// Half the value of e8m0 exponent `e`, i.e. `2^(e - 128)`, built from bits so that it is
/// exact for every `e` (subnormal for e < 2), as ggml's `GGML_E8M0_TO_FP32_HALF`.
pub fn e8m0_to_f32_half(e: u8) -> f32 {
    let bits = if e < 2 {
        0x0020_0000u32 << e
    } else {
        u32::from(e - 1) << 23
    };
    f32::from_bits(bits)
}

/// Index of the level of [`KVALUES_MXFP4`] times `d` nearest to `x` (first wins ties).
fn best_index_mxfp4(x: f32, d: f32) -> u8 {
    let mut best = 0u8;
    let mut best_err = (f32::from(KVALUES_MXFP4[0]) * d - x).abs();
    for (i, &k) in KVALUES_MXFP4.iter().enumerate().skip(1) {
        let err = (f32::from(k) * d - x).abs();
        if err < best_err {
            best = i as u8;
            best_err = err;
        }
    }
    best
}

impl BlockFormat for BlockMXFP4 {
    const TYPE: GgmlType = GgmlType::MXFP4;
    const BLOCK_SIZE: usize = QK;

    fn read(bytes: &[u8]) -> Self {
        let mut f = Fields::new(bytes);
        BlockMXFP4 {
            e: f.u8(),
            qs: f.bytes(),
        }
    }

    fn write(&self, out: &mut [u8]) {
        let mut o = Out::new(out);
        o.put(&[self.e]);
        o.put(&self.qs);
    }

    fn to_float(&self, y: &mut [f32]) {
        let d = e8m0_to_f32_half(self.e);
        for j in 0..QK / 2 {
            y[j] = f32::from(KVALUES_MXFP4[usize::from(self.qs[j] & 0x0f)]) * d;
            y[j + QK / 2] = f32::from(KVALUES_MXFP4[usize::from(self.qs[j] >> 4)]) * d;
        }
    }
}

impl QuantizeBlock for BlockMXFP4 {
    fn from_float(x: &[f32]) -> Self {
        assert_eq!(x.len(), QK);
        let mut amax = 0.0f32;
        for &v in x {
            if amax < v.abs() {
                amax = v.abs();
            }
        }
        // The exponent puts amax's power of two at level 4 (e2m1 value 2, doubled). ggml
        // casts to uint8_t; `as` saturates, which only matters below 2^-125.
        let e = if amax > 0.0 {
            (amax.log2().floor() - 2.0 + 127.0) as u8
        } else {
            0
        };
        let d = e8m0_to_f32_half(e);
        let mut qs = [0u8; QK / 2];
        for j in 0..QK / 2 {
            qs[j] = best_index_mxfp4(x[j], d) | (best_index_mxfp4(x[j + QK / 2], d) << 4);
        }
        BlockMXFP4 { e, qs }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e8m0_half_is_exact() {
        assert_eq!(e8m0_to_f32_half(128), 1.0);
        assert_eq!(e8m0_to_f32_half(127), 0.5);
        assert_eq!(e8m0_to_f32_half(1), 2f32.powi(-127));
        assert_eq!(e8m0_to_f32_half(0), 2f32.powi(-128));
        assert_eq!(e8m0_to_f32_half(254), 2f32.powi(126));
    }

    #[test]
    fn hand_made_iq4_xs_block() {
        let mut b = BlockIQ4XS {
            d: f16::from_f32(0.5),
            scales_h: 0b10 << 6, // sub-block 3: high bits 2
            scales_l: [0; 4],
            qs: [0; 128],
        };
        b.scales_l[1] = 0x1 << 4; // sub-block 3: low nibble 1 -> ls = 33, dl = 0.5
        b.qs[3 * 16 + 2] = 0xf8; // element 96+2 -> k[8] = 1, element 96+18 -> k[15] = 113
        let mut y = [0f32; QK_K];
        b.to_float(&mut y);
        assert_eq!(y[98], 0.5);
        assert_eq!(y[114], 56.5);
        // Sub-block 0 has ls = 0 -> dl = -16, code 0 -> -127.
        assert_eq!(y[0], 0.5 * -32.0 * -127.0);
    }

    #[test]
    fn hand_made_iq4_nl_block() {
        let mut bytes = [0u8; 18];
        bytes[..2].copy_from_slice(&f16::from_f32(0.25).to_bits().to_le_bytes());
        bytes[2] = 0x7f;
        let mut y = [0f32; 32];
        BlockIQ4NL::read(&bytes).to_float(&mut y);
        assert_eq!(
            (y[0], y[16], y[1]),
            (113.0 * 0.25, -10.0 * 0.25, -127.0 * 0.25)
        );
    }
}
