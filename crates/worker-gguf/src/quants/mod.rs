//! The ggml block formats: reference (scalar) conversion between f32 and each storage type.
//!
//! Every quantized type stores its elements in blocks; each block is a `#[repr(C)]` struct
//! whose size is checked at compile time against ggml's (`BlockQ4_0` is 18 bytes, as in
//! `ggml-common.h`). A block is parsed from little-endian bytes with [`BlockFormat::read`]
//! (no transmutes, so any byte pattern is accepted), expanded with
//! [`BlockFormat::to_float`], and, for types with a reference quantizer, made from f32 with
//! [`QuantizeBlock::from_float`], which follows ggml's `quantize_row_*_ref` operation by
//! operation so the bytes are the ones ggml and gguf-py write.
//!
//! The families live in their own modules: [`float`] (F32, F16, BF16, F64 and the integer
//! types, which have no blocks), [`legacy`] (Q4_0 … Q8_1), [`k_quants`] (Q2_K … Q8_K) and
//! [`iq`] (the codebook formats IQ4_NL, IQ4_XS and MXFP4). [`dequantize`] and [`quantize`]
//! go through one table of function pointers keyed by type.
//!
//! These are the scalar reference every SIMD or GPU kernel in `worker-compute` is tested
//! against, so they favour matching ggml's order of operations over speed.

pub mod float;
pub mod iq;
pub mod k_quants;
pub mod legacy;

use half::f16;

use crate::error::GgufError;
use crate::types::GgmlType;

/// Elements in a k-quant super-block (`QK_K` in ggml).
pub const QK_K: usize = 256;

/// One block of a ggml storage type: its geometry, how to parse it from and write it to the
/// file's little-endian bytes, and how to expand it to f32.
pub trait BlockFormat: Copy {
    /// The ggml type this block stores.
    const TYPE: GgmlType;
    /// Elements per block.
    const BLOCK_SIZE: usize;
    /// Bytes per block; equal to `size_of::<Self>()`.
    const TYPE_SIZE: usize = std::mem::size_of::<Self>();

    /// Parses one block from `bytes`, which must be exactly [`Self::TYPE_SIZE`] long (it
    /// panics otherwise). Every byte pattern is a valid block.
    fn read(bytes: &[u8]) -> Self;

    /// Writes the block into `out`, which must be exactly [`Self::TYPE_SIZE`] long.
    fn write(&self, out: &mut [u8]);

    /// Expands the block into `out`, which must hold exactly [`Self::BLOCK_SIZE`] values.
    fn to_float(&self, out: &mut [f32]);
}

/// A block format with a reference quantizer.
pub trait QuantizeBlock: BlockFormat {
    /// Quantizes [`BlockFormat::BLOCK_SIZE`] values (the length of `x`, else it panics) as
    /// ggml's `quantize_row_*_ref` does, bit for bit.
    fn from_float(x: &[f32]) -> Self;
}

/// Converts whole blocks of bytes to f32; the caller has checked that `src` holds exactly
/// `dst.len() / block_size` blocks.
type DequantFn = fn(src: &[u8], dst: &mut [f32]);
/// Converts f32 to whole blocks; the caller has checked that the lengths agree.
type QuantFn = fn(src: &[f32], dst: &mut [u8]);

/// What this crate can do with one type.
struct Traits {
    ty: GgmlType,
    to_float: Option<DequantFn>,
    from_float: Option<QuantFn>,
}

/// Dequantizes every block of `src` into `dst` through `B`.
fn dequant_blocks<B: BlockFormat>(src: &[u8], dst: &mut [f32]) {
    for (bytes, out) in src
        .chunks_exact(B::TYPE_SIZE)
        .zip(dst.chunks_exact_mut(B::BLOCK_SIZE))
    {
        B::read(bytes).to_float(out);
    }
}

/// Quantizes every block of `src` into `dst` through `B`.
fn quant_blocks<B: QuantizeBlock>(src: &[f32], dst: &mut [u8]) {
    for (x, out) in src
        .chunks_exact(B::BLOCK_SIZE)
        .zip(dst.chunks_exact_mut(B::TYPE_SIZE))
    {
        B::from_float(x).write(out);
    }
}

/// The one dispatch table: every type with a dequantizer and, where one exists, a quantizer.
/// Types missing here (the IQ1/IQ2/IQ3 grids, the ternary TQ types) are reported as
/// unsupported.
const TABLE: &[Traits] = &[
    Traits {
        ty: GgmlType::F32,
        to_float: Some(float::f32_to_float),
        from_float: Some(float::f32_from_float),
    },
    Traits {
        ty: GgmlType::F16,
        to_float: Some(float::f16_to_float),
        from_float: Some(float::f16_from_float),
    },
    Traits {
        ty: GgmlType::BF16,
        to_float: Some(float::bf16_to_float),
        from_float: Some(float::bf16_from_float),
    },
    Traits {
        ty: GgmlType::F64,
        to_float: Some(float::f64_to_float),
        from_float: None,
    },
    Traits {
        ty: GgmlType::I8,
        to_float: Some(float::i8_to_float),
        from_float: None,
    },
    Traits {
        ty: GgmlType::I16,
        to_float: Some(float::i16_to_float),
        from_float: None,
    },
    Traits {
        ty: GgmlType::I32,
        to_float: Some(float::i32_to_float),
        from_float: None,
    },
    Traits {
        ty: GgmlType::Q4_0,
        to_float: Some(dequant_blocks::<legacy::BlockQ4_0>),
        from_float: Some(quant_blocks::<legacy::BlockQ4_0>),
    },
    Traits {
        ty: GgmlType::Q4_1,
        to_float: Some(dequant_blocks::<legacy::BlockQ4_1>),
        from_float: Some(quant_blocks::<legacy::BlockQ4_1>),
    },
    Traits {
        ty: GgmlType::Q5_0,
        to_float: Some(dequant_blocks::<legacy::BlockQ5_0>),
        from_float: Some(quant_blocks::<legacy::BlockQ5_0>),
    },
    Traits {
        ty: GgmlType::Q5_1,
        to_float: Some(dequant_blocks::<legacy::BlockQ5_1>),
        from_float: Some(quant_blocks::<legacy::BlockQ5_1>),
    },
    Traits {
        ty: GgmlType::Q8_0,
        to_float: Some(dequant_blocks::<legacy::BlockQ8_0>),
        from_float: Some(quant_blocks::<legacy::BlockQ8_0>),
    },
    Traits {
        ty: GgmlType::Q8_1,
        to_float: Some(dequant_blocks::<legacy::BlockQ8_1>),
        from_float: Some(quant_blocks::<legacy::BlockQ8_1>),
    },
    Traits {
        ty: GgmlType::Q2_K,
        to_float: Some(dequant_blocks::<k_quants::BlockQ2K>),
        from_float: Some(quant_blocks::<k_quants::BlockQ2K>),
    },
    Traits {
        ty: GgmlType::Q3_K,
        to_float: Some(dequant_blocks::<k_quants::BlockQ3K>),
        from_float: Some(quant_blocks::<k_quants::BlockQ3K>),
    },
    Traits {
        ty: GgmlType::Q4_K,
        to_float: Some(dequant_blocks::<k_quants::BlockQ4K>),
        from_float: Some(quant_blocks::<k_quants::BlockQ4K>),
    },
    Traits {
        ty: GgmlType::Q5_K,
        to_float: Some(dequant_blocks::<k_quants::BlockQ5K>),
        from_float: Some(quant_blocks::<k_quants::BlockQ5K>),
    },
    Traits {
        ty: GgmlType::Q6_K,
        to_float: Some(dequant_blocks::<k_quants::BlockQ6K>),
        from_float: Some(quant_blocks::<k_quants::BlockQ6K>),
    },
    Traits {
        ty: GgmlType::Q8_K,
        to_float: Some(dequant_blocks::<k_quants::BlockQ8K>),
        from_float: Some(quant_blocks::<k_quants::BlockQ8K>),
    },
    Traits {
        ty: GgmlType::IQ4_NL,
        to_float: Some(dequant_blocks::<iq::BlockIQ4NL>),
        from_float: None,
    },
    Traits {
        ty: GgmlType::IQ4_XS,
        to_float: Some(dequant_blocks::<iq::BlockIQ4XS>),
        from_float: None,
    },
    Traits {
        ty: GgmlType::MXFP4,
        to_float: Some(dequant_blocks::<iq::BlockMXFP4>),
        from_float: Some(quant_blocks::<iq::BlockMXFP4>),
    },
];

fn traits(ty: GgmlType) -> Option<&'static Traits> {
    TABLE.iter().find(|t| t.ty == ty)
}

/// Whether [`dequantize`] supports `ty`.
pub fn supports_dequantize(ty: GgmlType) -> bool {
    traits(ty).is_some_and(|t| t.to_float.is_some())
}

/// Whether [`quantize`] supports `ty`.
pub fn supports_quantize(ty: GgmlType) -> bool {
    traits(ty).is_some_and(|t| t.from_float.is_some())
}

/// Number of whole blocks of `ty` in `n_bytes`, or an error when it is not whole blocks.
fn blocks_in_bytes(ty: GgmlType, n_bytes: usize) -> Result<usize, GgufError> {
    // (Not `is_multiple_of`: the workspace's minimum Rust is 1.85.)
    let n_blocks = n_bytes / ty.type_size();
    if n_blocks * ty.type_size() != n_bytes {
        return Err(GgufError::Quant {
            ty,
            reason: format!(
                "{n_bytes} bytes are not a whole number of {}-byte blocks",
                ty.type_size()
            ),
        });
    }
    Ok(n_blocks)
}

/// Converts `src`, whole blocks of `ty`, to f32 in `dst` (which must hold exactly the
/// elements `src` encodes).
///
/// Fails, naming the type, when `src` is not whole blocks, when `dst` has the wrong length, or
/// when this crate has no dequantizer for `ty` (see [`supports_dequantize`]).
pub fn dequantize(ty: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<(), GgufError> {
    let to_float = traits(ty)
        .and_then(|t| t.to_float)
        .ok_or_else(|| GgufError::Quant {
            ty,
            reason: "no dequantizer for this type".to_string(),
        })?;
    let n_blocks = blocks_in_bytes(ty, src.len())?;
    let expected = n_blocks.checked_mul(ty.block_size());
    if expected != Some(dst.len()) {
        return Err(GgufError::Quant {
            ty,
            reason: format!(
                "{} bytes hold {n_blocks} blocks of {} elements, but the output holds {}",
                src.len(),
                ty.block_size(),
                dst.len()
            ),
        });
    }
    to_float(src, dst);
    Ok(())
}

/// Encodes `src` (a whole number of blocks of `ty`) in `ty`'s storage format.
///
/// Fails, naming the type, when `src.len()` is not a multiple of the block size or when this
/// crate has no quantizer for `ty` (see [`supports_quantize`]).
pub fn quantize(ty: GgmlType, src: &[f32]) -> Result<Vec<u8>, GgufError> {
    let from_float = traits(ty)
        .and_then(|t| t.from_float)
        .ok_or_else(|| GgufError::Quant {
            ty,
            reason: "no quantizer for this type".to_string(),
        })?;
    if (src.len() / ty.block_size()) * ty.block_size() != src.len() {
        return Err(GgufError::Quant {
            ty,
            reason: format!(
                "{} values are not a whole number of {}-element blocks",
                src.len(),
                ty.block_size()
            ),
        });
    }
    let n_bytes = (src.len() / ty.block_size())
        .checked_mul(ty.type_size())
        .ok_or_else(|| GgufError::Quant {
            ty,
            reason: format!("{} values overflow the output size", src.len()),
        })?;
    let mut out = vec![0u8; n_bytes];
    from_float(src, &mut out);
    Ok(out)
}

/// Rounds to the nearest integer, ties to even, as ggml's `nearest_int` does (it adds
/// 1.5 * 2^23 and reads the low mantissa bits). Exact for |x| < 2^22; like ggml, garbage but
/// no panic beyond that.
#[inline]
pub fn nearest_int(x: f32) -> i32 {
    let v = x + 12_582_912.0;
    ((v.to_bits() & 0x007f_ffff) as i32) - 0x0040_0000
}

/// Little-endian field reader over one block's bytes. Panics when a field runs past the end,
/// which the block-size checks in [`dequantize`] rule out.
pub(crate) struct Fields<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Fields<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Fields { bytes, pos: 0 }
    }

    fn take(&mut self, n: usize) -> &'a [u8] {
        let s = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        s
    }

    pub(crate) fn u8(&mut self) -> u8 {
        self.take(1)[0]
    }

    pub(crate) fn u16(&mut self) -> u16 {
        let b = self.take(2);
        u16::from_le_bytes([b[0], b[1]])
    }

    pub(crate) fn f16(&mut self) -> f16 {
        f16::from_bits(self.u16())
    }

    pub(crate) fn f32(&mut self) -> f32 {
        let b = self.take(4);
        f32::from_le_bytes([b[0], b[1], b[2], b[3]])
    }

    pub(crate) fn bytes<const N: usize>(&mut self) -> [u8; N] {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N));
        a
    }

    pub(crate) fn i8s<const N: usize>(&mut self) -> [i8; N] {
        self.bytes::<N>().map(|b| b as i8)
    }

    pub(crate) fn i16s<const N: usize>(&mut self) -> [i16; N] {
        let mut a = [0i16; N];
        for v in &mut a {
            *v = self.u16() as i16;
        }
        a
    }
}

/// Little-endian field writer into one block's bytes.
pub(crate) struct Out<'a> {
    bytes: &'a mut [u8],
    pos: usize,
}

impl<'a> Out<'a> {
    pub(crate) fn new(bytes: &'a mut [u8]) -> Self {
        Out { bytes, pos: 0 }
    }

    pub(crate) fn put(&mut self, b: &[u8]) {
        self.bytes[self.pos..self.pos + b.len()].copy_from_slice(b);
        self.pos += b.len();
    }

    pub(crate) fn u16(&mut self, v: u16) {
        self.put(&v.to_le_bytes());
    }

    pub(crate) fn f16(&mut self, v: f16) {
        self.u16(v.to_bits());
    }

    pub(crate) fn i8s(&mut self, v: &[i8]) {
        for &x in v {
            self.put(&[x as u8]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_lists_each_type_once_and_geometry_matches_types_rs() {
        for (i, t) in TABLE.iter().enumerate() {
            assert!(
                TABLE[i + 1..].iter().all(|u| u.ty != t.ty),
                "{} listed twice",
                t.ty
            );
        }
        fn check<B: BlockFormat>() {
            assert_eq!(B::TYPE_SIZE, B::TYPE.type_size(), "{}", B::TYPE);
            assert_eq!(B::BLOCK_SIZE, B::TYPE.block_size(), "{}", B::TYPE);
        }
        check::<legacy::BlockQ4_0>();
        check::<legacy::BlockQ4_1>();
        check::<legacy::BlockQ5_0>();
        check::<legacy::BlockQ5_1>();
        check::<legacy::BlockQ8_0>();
        check::<legacy::BlockQ8_1>();
        check::<k_quants::BlockQ2K>();
        check::<k_quants::BlockQ3K>();
        check::<k_quants::BlockQ4K>();
        check::<k_quants::BlockQ5K>();
        check::<k_quants::BlockQ6K>();
        check::<k_quants::BlockQ8K>();
        check::<iq::BlockIQ4NL>();
        check::<iq::BlockIQ4XS>();
        check::<iq::BlockMXFP4>();
    }

    #[test]
    fn supported_sets() {
        for ty in [
            GgmlType::F32,
            GgmlType::F16,
            GgmlType::BF16,
            GgmlType::Q4_0,
            GgmlType::Q4_1,
            GgmlType::Q5_0,
            GgmlType::Q5_1,
            GgmlType::Q8_0,
            GgmlType::Q2_K,
            GgmlType::Q3_K,
            GgmlType::Q4_K,
            GgmlType::Q5_K,
            GgmlType::Q6_K,
            GgmlType::Q8_K,
            GgmlType::IQ4_NL,
            GgmlType::IQ4_XS,
            GgmlType::MXFP4,
        ] {
            assert!(supports_dequantize(ty), "{ty}");
        }
        for ty in [
            GgmlType::F16,
            GgmlType::BF16,
            GgmlType::Q8_0,
            GgmlType::Q4_0,
            GgmlType::Q4_1,
            GgmlType::Q5_0,
            GgmlType::Q4_K,
            GgmlType::Q6_K,
        ] {
            assert!(supports_quantize(ty), "{ty}");
        }
        assert!(!supports_dequantize(GgmlType::IQ2_XXS));
        assert!(!supports_quantize(GgmlType::IQ4_XS));
    }

    fn reason(e: GgufError) -> (GgmlType, String) {
        match e {
            GgufError::Quant { ty, reason } => (ty, reason),
            other => panic!("unexpected error {other}"),
        }
    }

    #[test]
    fn dequantize_rejects_partial_blocks_and_wrong_output_length() {
        let src = vec![0u8; 18 * 2 + 5];
        let mut dst = vec![0f32; 64];
        let (ty, why) = reason(dequantize(GgmlType::Q4_0, &src, &mut dst).unwrap_err());
        assert_eq!(ty, GgmlType::Q4_0);
        assert!(why.contains("41 bytes"), "{why}");

        let src = vec![0u8; 18 * 2];
        let mut short = vec![0f32; 63];
        let (_, why) = reason(dequantize(GgmlType::Q4_0, &src, &mut short).unwrap_err());
        assert!(why.contains("63"), "{why}");
        let mut long = vec![0f32; 96];
        assert!(dequantize(GgmlType::Q4_0, &src, &mut long).is_err());
        assert!(dequantize(GgmlType::F32, &[0u8; 7], &mut [0f32; 2]).is_err());
        assert!(dequantize(GgmlType::F16, &[0u8; 4], &mut [0f32; 3]).is_err());
        // Empty input with empty output is zero blocks, which is fine.
        dequantize(GgmlType::Q6_K, &[], &mut []).unwrap();
    }

    #[test]
    fn unsupported_types_are_errors_naming_the_type() {
        let e = dequantize(GgmlType::IQ2_XXS, &[0u8; 66], &mut [0f32; 256]).unwrap_err();
        assert!(e.to_string().contains("IQ2_XXS"), "{e}");
        let e = quantize(GgmlType::IQ1_S, &[0f32; 256]).unwrap_err();
        assert!(e.to_string().contains("IQ1_S"), "{e}");
        for ty in GgmlType::all() {
            if !supports_dequantize(ty) {
                let bytes = vec![0u8; ty.type_size()];
                let mut out = vec![0f32; ty.block_size()];
                assert!(dequantize(ty, &bytes, &mut out).is_err(), "{ty}");
            }
            if !supports_quantize(ty) {
                assert!(quantize(ty, &vec![0f32; ty.block_size()]).is_err(), "{ty}");
            }
        }
    }

    #[test]
    fn quantize_rejects_partial_blocks() {
        let (ty, why) = reason(quantize(GgmlType::Q4_K, &[1.0; 300]).unwrap_err());
        assert_eq!(ty, GgmlType::Q4_K);
        assert!(why.contains("300"), "{why}");
        assert!(quantize(GgmlType::Q8_0, &[1.0; 33]).is_err());
        assert_eq!(quantize(GgmlType::Q8_0, &[]).unwrap(), Vec::<u8>::new());
    }

    #[test]
    fn every_supported_type_survives_any_bytes() {
        // Arbitrary bytes (NaN and infinite scales included) must never panic.
        let mut state = 0x1234_5678u32;
        for ty in GgmlType::all().filter(|&t| supports_dequantize(t)) {
            let mut bytes = vec![0u8; ty.type_size() * 3];
            for b in &mut bytes {
                state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                *b = (state >> 24) as u8;
            }
            let mut out = vec![0f32; ty.block_size() * 3];
            dequantize(ty, &bytes, &mut out).unwrap();
        }
    }

    #[test]
    fn quantizers_survive_extreme_inputs() {
        let inputs: [f32; 6] = [0.0, -0.0, f32::MAX, f32::MIN_POSITIVE, 1e-30, -65504.0];
        for ty in GgmlType::all().filter(|&t| supports_quantize(t)) {
            for &v in &inputs {
                let x = vec![v; ty.block_size()];
                let q = quantize(ty, &x).unwrap();
                assert_eq!(q.len(), ty.type_size());
            }
            let x: Vec<f32> = (0..ty.block_size())
                .map(|i| if i % 7 == 0 { f32::NAN } else { i as f32 })
                .collect();
            quantize(ty, &x).unwrap();
        }
    }

    #[test]
    fn nearest_int_rounds_half_to_even() {
        assert_eq!(nearest_int(0.5), 0);
        assert_eq!(nearest_int(1.5), 2);
        assert_eq!(nearest_int(-2.5), -2);
        assert_eq!(nearest_int(2.4999), 2);
        assert_eq!(nearest_int(-7.6), -8);
    }
}
