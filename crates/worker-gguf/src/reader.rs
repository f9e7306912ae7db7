//! Parsing GGUF v2/v3: header, metadata, tensor infos, and validation of the data section.
//!
//! Every count and length read from the file is checked against the bytes that remain before
//! anything is allocated for it, so a hostile header cannot make the reader allocate more than
//! a small multiple of the file's own size.

use std::collections::HashMap;

use crate::error::GgufError;
use crate::types::GgmlType;
use crate::value::{Array, Metadata, Value, ValueType};

/// The four bytes every GGUF file starts with.
pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";
/// The alignment of the data section when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// The most dimensions a ggml tensor has (`GGML_MAX_DIMS`).
pub const MAX_DIMS: usize = 4;
/// How deep arrays of arrays may nest before the reader gives up.
pub const MAX_ARRAY_NESTING: usize = 8;

/// Where one tensor lives and what it holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    /// The tensor's name (`blk.0.attn_q.weight`).
    pub name: String,
    /// Dimensions in ggml order: `shape[0]` is the contiguous (row) dimension.
    pub shape: Vec<u64>,
    /// Storage type.
    pub ty: GgmlType,
    /// Offset of the first byte, relative to the start of the data section.
    pub offset: u64,
    /// Bytes the tensor takes.
    pub n_bytes: u64,
}

impl TensorInfo {
    /// Number of elements (the product of the shape).
    pub fn n_elements(&self) -> u64 {
        self.shape.iter().product()
    }

    /// Length of one row (`shape[0]`).
    pub fn row_len(&self) -> u64 {
        self.shape.first().copied().unwrap_or(1)
    }

    /// Number of rows (the product of every dimension but the first).
    pub fn n_rows(&self) -> u64 {
        self.shape.iter().skip(1).product()
    }
}

/// Everything in a GGUF file but the tensor bytes.
#[derive(Clone, Debug, PartialEq)]
pub struct GgufContent {
    /// Format version (2 or 3).
    pub version: u32,
    /// Metadata in file order.
    pub metadata: Metadata,
    /// Tensor infos in file order.
    pub tensors: Vec<TensorInfo>,
    /// Alignment of the data section and of every tensor in it.
    pub alignment: u64,
    /// File offset where the data section starts.
    pub data_offset: u64,
    tensor_index: HashMap<String, usize>,
}

impl GgufContent {
    /// Parses and validates a whole GGUF file held in `bytes`.
    pub fn parse(bytes: &[u8]) -> Result<Self, GgufError> {
        let mut r = Cursor { buf: bytes, pos: 0 };

        let magic = r.take(4, "magic")?;
        if magic != GGUF_MAGIC {
            let mut found = [0u8; 4];
            found.copy_from_slice(magic);
            return Err(GgufError::BadMagic { found });
        }
        let version = r.u32("version")?;
        if version != 2 && version != 3 {
            return Err(GgufError::UnsupportedVersion { version });
        }

        let n_tensors_offset = r.pos as u64;
        let n_tensors = r.u64("tensor count")?;
        let n_kv_offset = r.pos as u64;
        let n_kv = r.u64("metadata count")?;
        // A key needs at least an 8-byte length, a 4-byte type and a 1-byte value.
        r.check_count(n_kv, 13, "metadata count", n_kv_offset)?;

        let mut metadata = Metadata::new();
        for _ in 0..n_kv {
            let key_offset = r.pos as u64;
            let key = r.string("metadata key")?;
            let value = r.value(0)?;
            if let Err(_value) = metadata.insert(key.clone(), value) {
                return Err(GgufError::DuplicateKey {
                    key,
                    offset: key_offset,
                });
            }
        }

        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(v) => {
                let a = v.to_u64().unwrap_or(0);
                if a == 0 || !a.is_power_of_two() {
                    return Err(GgufError::BadAlignment { alignment: a });
                }
                a
            }
        };

        // A tensor info needs at least a name length, a dimension count, a type and an offset.
        r.check_count(n_tensors, 24, "tensor count", n_tensors_offset)?;
        let mut tensors = Vec::with_capacity(n_tensors as usize);
        let mut tensor_index = HashMap::with_capacity(n_tensors as usize);
        for i in 0..n_tensors as usize {
            let info_offset = r.pos as u64;
            let info = r.tensor_info(info_offset)?;
            if tensor_index.insert(info.name.clone(), i).is_some() {
                return Err(GgufError::DuplicateTensor {
                    name: info.name,
                    offset: info_offset,
                });
            }
            tensors.push(info);
        }

        let data_offset = align_up(r.pos as u64, alignment);
        let content = GgufContent {
            version,
            metadata,
            tensors,
            alignment,
            data_offset,
            tensor_index,
        };
        content.validate_data_section(bytes.len() as u64)?;
        Ok(content)
    }

    /// The info of the tensor named `name`.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }

    /// Checks that every tensor is aligned, inside the file and apart from every other.
    fn validate_data_section(&self, file_len: u64) -> Result<(), GgufError> {
        // A file whose tensor table ends right at its last byte has no data section; then even
        // an empty tensor lies outside the file.
        let data_len = file_len.checked_sub(self.data_offset);
        let mut spans: Vec<(u64, u64, &str)> = Vec::with_capacity(self.tensors.len());
        for t in &self.tensors {
            if t.offset % self.alignment != 0 {
                return Err(GgufError::MisalignedTensor {
                    name: t.name.clone(),
                    offset: t.offset,
                    alignment: self.alignment,
                });
            }
            let end = t.offset.saturating_add(t.n_bytes);
            if data_len.is_none_or(|len| end > len) {
                return Err(GgufError::TensorOutOfBounds {
                    name: t.name.clone(),
                    start: t.offset,
                    end,
                    len: data_len.unwrap_or(0),
                    data_offset: self.data_offset,
                });
            }
            if t.n_bytes > 0 {
                spans.push((t.offset, end, &t.name));
            }
        }
        spans.sort_unstable();
        for w in spans.windows(2) {
            if w[1].0 < w[0].1 {
                return Err(GgufError::TensorOverlap {
                    first: w[0].2.to_string(),
                    second: w[1].2.to_string(),
                    at: w[1].0,
                });
            }
        }
        Ok(())
    }
}

/// Rounds `x` up to a multiple of `align` (a power of two), saturating at `u64::MAX`.
pub(crate) fn align_up(x: u64, align: u64) -> u64 {
    x.checked_add(align - 1)
        .map_or(u64::MAX, |v| v & !(align - 1))
}

/// A bounds-checked little-endian reader over the file bytes.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> u64 {
        (self.buf.len() - self.pos) as u64
    }

    fn take(&mut self, n: u64, what: &'static str) -> Result<&'a [u8], GgufError> {
        if n > self.remaining() {
            return Err(GgufError::Truncated {
                offset: self.pos as u64,
                what,
                needed: n,
                available: self.remaining(),
            });
        }
        let start = self.pos;
        self.pos += n as usize;
        Ok(&self.buf[start..self.pos])
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], GgufError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N as u64, what)?);
        Ok(out)
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// Fails unless `count` items of at least `min_size` bytes each fit in what is left.
    fn check_count(
        &self,
        count: u64,
        min_size: u64,
        what: &'static str,
        offset: u64,
    ) -> Result<(), GgufError> {
        if count.saturating_mul(min_size) > self.remaining() {
            return Err(GgufError::CountTooLarge {
                offset,
                what,
                count,
                available: self.remaining(),
            });
        }
        Ok(())
    }

    fn string(&mut self, what: &'static str) -> Result<String, GgufError> {
        let offset = self.pos as u64;
        let len = self.u64(what)?;
        if len > self.remaining() {
            return Err(GgufError::CountTooLarge {
                offset,
                what: "string length",
                count: len,
                available: self.remaining(),
            });
        }
        let bytes = self.take(len, what)?;
        match std::str::from_utf8(bytes) {
            Ok(s) => Ok(s.to_owned()),
            Err(e) => Err(GgufError::InvalidUtf8 {
                offset,
                valid_up_to: e.valid_up_to(),
            }),
        }
    }

    fn value_type(&mut self) -> Result<ValueType, GgufError> {
        let offset = self.pos as u64;
        let tag = self.u32("value type")?;
        ValueType::from_u32(tag).ok_or(GgufError::UnknownValueType { offset, tag })
    }

    fn value(&mut self, depth: usize) -> Result<Value, GgufError> {
        let ty = self.value_type()?;
        self.value_of(ty, depth)
    }

    fn value_of(&mut self, ty: ValueType, depth: usize) -> Result<Value, GgufError> {
        Ok(match ty {
            ValueType::U8 => Value::U8(self.array::<1>("uint8")?[0]),
            ValueType::I8 => Value::I8(i8::from_le_bytes(self.array("int8")?)),
            ValueType::U16 => Value::U16(u16::from_le_bytes(self.array("uint16")?)),
            ValueType::I16 => Value::I16(i16::from_le_bytes(self.array("int16")?)),
            ValueType::U32 => Value::U32(self.u32("uint32")?),
            ValueType::I32 => Value::I32(i32::from_le_bytes(self.array("int32")?)),
            ValueType::F32 => Value::F32(f32::from_le_bytes(self.array("float32")?)),
            ValueType::U64 => Value::U64(self.u64("uint64")?),
            ValueType::I64 => Value::I64(i64::from_le_bytes(self.array("int64")?)),
            ValueType::F64 => Value::F64(f64::from_le_bytes(self.array("float64")?)),
            ValueType::Bool => Value::Bool(self.bool()?),
            ValueType::String => Value::String(self.string("string value")?),
            ValueType::Array => Value::Array(self.array_value(depth + 1)?),
        })
    }

    fn bool(&mut self) -> Result<bool, GgufError> {
        let offset = self.pos as u64;
        match self.array::<1>("bool")?[0] {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(GgufError::BadValue {
                key: format!("<bool at offset {offset}>"),
                reason: format!("byte {other} is neither 0 nor 1"),
            }),
        }
    }

    fn array_value(&mut self, depth: usize) -> Result<Array, GgufError> {
        let offset = self.pos as u64;
        if depth > MAX_ARRAY_NESTING {
            return Err(GgufError::NestingTooDeep {
                offset,
                max: MAX_ARRAY_NESTING,
            });
        }
        let ty = self.value_type()?;
        let count_offset = self.pos as u64;
        let count = self.u64("array length")?;
        self.check_count(
            count,
            ty.min_encoded_size() as u64,
            "array length",
            count_offset,
        )?;
        let n = count as usize;

        macro_rules! fixed {
            ($variant:ident, $t:ty) => {{
                let size = std::mem::size_of::<$t>();
                let bytes = self.take((n * size) as u64, ty.name())?;
                Array::$variant(
                    bytes
                        .chunks_exact(size)
                        .map(|c| <$t>::from_le_bytes(c.try_into().expect("chunk size")))
                        .collect(),
                )
            }};
        }

        Ok(match ty {
            ValueType::U8 => Array::U8(self.take(count, "uint8 array")?.to_vec()),
            ValueType::I8 => fixed!(I8, i8),
            ValueType::U16 => fixed!(U16, u16),
            ValueType::I16 => fixed!(I16, i16),
            ValueType::U32 => fixed!(U32, u32),
            ValueType::I32 => fixed!(I32, i32),
            ValueType::F32 => fixed!(F32, f32),
            ValueType::U64 => fixed!(U64, u64),
            ValueType::I64 => fixed!(I64, i64),
            ValueType::F64 => fixed!(F64, f64),
            ValueType::Bool => {
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(self.bool()?);
                }
                Array::Bool(v)
            }
            ValueType::String => {
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(self.string("string array element")?);
                }
                Array::String(v)
            }
            ValueType::Array => {
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(self.array_value(depth + 1)?);
                }
                Array::Array(v)
            }
        })
    }

    fn tensor_info(&mut self, info_offset: u64) -> Result<TensorInfo, GgufError> {
        let name = self.string("tensor name")?;
        let bad_shape = |reason: String| GgufError::BadTensorShape {
            name: name.clone(),
            offset: info_offset,
            reason,
        };
        let n_dims = self.u32("tensor dimension count")?;
        if n_dims as usize > MAX_DIMS {
            return Err(bad_shape(format!(
                "{n_dims} dimensions, ggml allows at most {MAX_DIMS}"
            )));
        }
        let mut shape = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            shape.push(self.u64("tensor dimension")?);
        }
        let type_id = self.u32("tensor type")?;
        let ty = GgmlType::from_u32(type_id).ok_or_else(|| GgufError::UnknownTensorType {
            name: name.clone(),
            offset: info_offset,
            type_id,
        })?;
        let offset = self.u64("tensor offset")?;

        // ggml stores element counts as int64_t.
        let n_elements = shape
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .filter(|&n| n <= i64::MAX as u64)
            .ok_or_else(|| bad_shape(format!("shape {shape:?} overflows the element count")))?;
        let row = shape.first().copied().unwrap_or(1);
        if row % ty.block_size() as u64 != 0 {
            return Err(bad_shape(format!(
                "row length {row} is not a multiple of the {ty} block size {}",
                ty.block_size()
            )));
        }
        let n_bytes = ty
            .bytes_for(n_elements)
            .ok_or_else(|| bad_shape(format!("{n_elements} elements of {ty} overflow")))?;
        Ok(TensorInfo {
            name,
            shape,
            ty,
            offset,
            n_bytes,
        })
    }
}
