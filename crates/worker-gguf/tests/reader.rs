//! Reader and writer: round trips through every value type, GGUF v2, and a typed error for each
//! kind of bad input the issue lists (never a panic).

use worker_gguf::{Array, GgmlType, GgufContent, GgufError, GgufFile, GgufWriter, Value};

/// A small file exercising every metadata type, nested arrays and several tensor types.
fn sample_writer() -> GgufWriter {
    let mut w = GgufWriter::new();
    w.set("general.architecture", Value::String("llama".into()))
        .set("u8", Value::U8(200))
        .set("i8", Value::I8(-100))
        .set("u16", Value::U16(60_000))
        .set("i16", Value::I16(-30_000))
        .set("u32", Value::U32(4_000_000_000))
        .set("i32", Value::I32(-2_000_000_000))
        .set("f32", Value::F32(1.5e-5))
        .set("bool", Value::Bool(true))
        .set("string", Value::String("héllo ✓".into()))
        .set("u64", Value::U64(u64::MAX))
        .set("i64", Value::I64(i64::MIN))
        .set("f64", Value::F64(-2.5e300))
        .set("arr.u8", Value::Array(Array::U8(vec![1, 2, 3])))
        .set("arr.i32", Value::Array(Array::I32(vec![-1, 0, 1])))
        .set("arr.f32", Value::Array(Array::F32(vec![0.5, -0.25])))
        .set("arr.bool", Value::Array(Array::Bool(vec![true, false])))
        .set(
            "arr.str",
            Value::Array(Array::String(vec!["a".into(), "".into(), "日本".into()])),
        )
        .set(
            "arr.nested",
            Value::Array(Array::Array(vec![
                Array::U64(vec![7, 8]),
                Array::String(vec!["x".into()]),
                Array::Array(vec![Array::F64(vec![1.0])]),
            ])),
        )
        .set("arr.empty", Value::Array(Array::I64(vec![])));
    w.add_tensor("a", GgmlType::F32, &[3, 2], vec![7u8; 24])
        .unwrap();
    w.add_tensor("b", GgmlType::Q4_0, &[64], vec![1u8; 36])
        .unwrap();
    w.add_tensor("c", GgmlType::F16, &[5], vec![2u8; 10])
        .unwrap();
    w
}

fn sample_bytes() -> Vec<u8> {
    sample_writer().to_bytes().unwrap()
}

#[test]
fn round_trip_every_value_type() {
    let w = sample_writer();
    let bytes = w.to_bytes().unwrap();
    let f = GgufFile::from_bytes(bytes.clone()).unwrap();
    assert_eq!(f.content().version, 3);
    assert_eq!(f.metadata(), w.metadata());
    assert_eq!(f.content().alignment, 32);
    assert_eq!(f.content().data_offset % 32, 0);
    let names: Vec<_> = f.tensors().iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["a", "b", "c"]);
    let (a, a_bytes) = f.tensor("a").unwrap();
    assert_eq!(
        (a.ty, a.shape.as_slice(), a.n_bytes),
        (GgmlType::F32, &[3u64, 2][..], 24)
    );
    assert_eq!(a_bytes, &[7u8; 24]);
    assert_eq!(f.tensor("b").unwrap().1, &[1u8; 36]);
    assert_eq!(f.tensor("c").unwrap().1, &[2u8; 10]);
    assert!(f.tensors().iter().all(|t| t.offset % 32 == 0));

    // Writing what we read gives the same bytes.
    let mut w2 = GgufWriter::new();
    w2.set_all(f.metadata());
    for t in f.tensors() {
        w2.add_tensor(&t.name, t.ty, &t.shape, f.tensor_bytes(t).to_vec())
            .unwrap();
    }
    assert_eq!(w2.to_bytes().unwrap(), bytes);
}

#[test]
fn custom_alignment_is_honoured() {
    let mut w = sample_writer();
    w.set("general.alignment", Value::U32(64));
    let f = GgufFile::from_bytes(w.to_bytes().unwrap()).unwrap();
    assert_eq!(f.content().alignment, 64);
    assert_eq!(f.content().data_offset % 64, 0);
    assert!(f.tensors().iter().all(|t| t.offset % 64 == 0));

    let mut bad = sample_writer();
    bad.set("general.alignment", Value::U32(48));
    assert!(matches!(
        bad.to_bytes(),
        Err(GgufError::BadAlignment { alignment: 48 })
    ));
}

#[test]
fn reads_version_2() {
    let mut bytes = sample_bytes();
    bytes[4..8].copy_from_slice(&2u32.to_le_bytes());
    let c = GgufContent::parse(&bytes).unwrap();
    assert_eq!(c.version, 2);
    assert_eq!(c.tensors.len(), 3);
}

#[test]
fn writer_rejects_inconsistent_tensors() {
    let mut w = GgufWriter::new();
    assert!(w.add_tensor("x", GgmlType::F32, &[4], vec![0; 15]).is_err());
    assert!(w
        .add_tensor("x", GgmlType::Q4_0, &[16], vec![0; 9])
        .is_err());
    assert!(w
        .add_tensor("x", GgmlType::F32, &[1, 1, 1, 1, 1], vec![0; 4])
        .is_err());
    w.add_tensor("x", GgmlType::F32, &[1], vec![0; 4]).unwrap();
    assert!(w.add_tensor("x", GgmlType::F32, &[1], vec![0; 4]).is_err());
}

#[test]
fn write_file_is_atomic_and_readable() {
    let dir = std::env::temp_dir().join(format!("worker-gguf-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("m.gguf");
    sample_writer().write_file(&path).unwrap();
    let f = GgufFile::open(&path).unwrap();
    assert_eq!(f.tensors().len(), 3);
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        leftovers.len(),
        1,
        "temporary file left behind: {leftovers:?}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn open_missing_file_names_it() {
    let err = GgufFile::open("/nonexistent/model.gguf").err().unwrap();
    assert!(err.is_io());
    assert!(err.to_string().contains("/nonexistent/model.gguf"));
}

// ---- Hand-built bad inputs --------------------------------------------------------------

/// A raw GGUF builder for malformed files the writer refuses to produce.
struct Raw(Vec<u8>);

impl Raw {
    fn header(version: u32, n_tensors: u64, n_kv: u64) -> Raw {
        let mut v = b"GGUF".to_vec();
        v.extend(version.to_le_bytes());
        v.extend(n_tensors.to_le_bytes());
        v.extend(n_kv.to_le_bytes());
        Raw(v)
    }
    fn u32(mut self, x: u32) -> Self {
        self.0.extend(x.to_le_bytes());
        self
    }
    fn u64(mut self, x: u64) -> Self {
        self.0.extend(x.to_le_bytes());
        self
    }
    fn bytes(mut self, b: &[u8]) -> Self {
        self.0.extend(b);
        self
    }
    fn str(self, s: &[u8]) -> Self {
        self.u64(s.len() as u64).bytes(s)
    }
    fn kv_u32(self, key: &str, v: u32) -> Self {
        self.str(key.as_bytes()).u32(4).u32(v)
    }
    /// A tensor info: name, dims, type id, offset.
    fn tensor(self, name: &str, dims: &[u64], ty: u32, offset: u64) -> Self {
        let mut r = self.str(name.as_bytes()).u32(dims.len() as u32);
        for &d in dims {
            r = r.u64(d);
        }
        r.u32(ty).u64(offset)
    }
    /// Pads to 32 bytes and appends `n` data bytes.
    fn data(mut self, n: usize) -> Self {
        while !self.0.len().is_multiple_of(32) {
            self.0.push(0);
        }
        self.0.extend(std::iter::repeat_n(0u8, n));
        self
    }
    fn parse(&self) -> GgufError {
        match GgufContent::parse(&self.0) {
            Ok(_) => panic!("malformed file parsed"),
            Err(e) => e,
        }
    }
}

#[test]
fn bad_magic_and_version() {
    let e = Raw(b"GGML\x03\0\0\0".to_vec()).parse();
    assert!(matches!(e, GgufError::BadMagic { .. }), "{e}");
    let e = Raw::header(1, 0, 0).parse();
    assert!(
        matches!(e, GgufError::UnsupportedVersion { version: 1 }),
        "{e}"
    );
    // A big-endian v3 file reads as version 0x03000000.
    let e = Raw::header(3u32.swap_bytes(), 0, 0).parse();
    assert!(matches!(e, GgufError::UnsupportedVersion { .. }), "{e}");
}

#[test]
fn every_truncation_is_a_typed_error() {
    let bytes = sample_bytes();
    let data_offset = GgufContent::parse(&bytes).unwrap().data_offset as usize;
    for len in 0..data_offset {
        let err = GgufContent::parse(&bytes[..len]).expect_err("truncated file parsed");
        // Cut inside the header: the reader reports a truncation (or a count that no longer
        // fits); cut inside the padding: the tensors fall outside the data section.
        assert!(
            matches!(
                err,
                GgufError::Truncated { .. }
                    | GgufError::CountTooLarge { .. }
                    | GgufError::TensorOutOfBounds { .. }
            ),
            "cut at {len}: {err}"
        );
    }
    // Cut inside the last tensor's bytes (the file ends with its padding).
    let c = GgufContent::parse(&bytes).unwrap();
    let last = c
        .tensors
        .iter()
        .map(|t| t.offset + t.n_bytes)
        .max()
        .unwrap();
    let err = GgufContent::parse(&bytes[..(c.data_offset + last - 1) as usize]).unwrap_err();
    assert!(matches!(err, GgufError::TensorOutOfBounds { .. }), "{err}");
}

#[test]
fn absurd_counts_and_lengths_do_not_allocate() {
    // 10^12 tensors.
    let e = Raw::header(3, 1_000_000_000_000, 0).parse();
    assert!(
        matches!(
            e,
            GgufError::CountTooLarge {
                what: "tensor count",
                offset: 8,
                ..
            }
        ),
        "{e}"
    );
    // 2^60 metadata keys.
    let e = Raw::header(3, 0, 1 << 60).parse();
    assert!(
        matches!(e, GgufError::CountTooLarge { offset: 16, .. }),
        "{e}"
    );
    // A key whose string length is 2^63.
    let e = Raw::header(3, 0, 1).u64(1 << 63).bytes(&[b'a'; 40]).parse();
    assert!(
        matches!(
            e,
            GgufError::CountTooLarge {
                what: "string length",
                offset: 24,
                ..
            }
        ),
        "{e}"
    );
    // A string array of 2^62 elements.
    let e = Raw::header(3, 0, 1)
        .str(b"k")
        .u32(9)
        .u32(8)
        .u64(1 << 62)
        .bytes(&[0; 64])
        .parse();
    assert!(
        matches!(
            e,
            GgufError::CountTooLarge {
                what: "array length",
                ..
            }
        ),
        "{e}"
    );
    // A string value of length u64::MAX.
    let e = Raw::header(3, 0, 1).str(b"k").u32(8).u64(u64::MAX).parse();
    assert!(matches!(e, GgufError::CountTooLarge { .. }), "{e}");
}

#[test]
fn deeply_nested_arrays_are_refused() {
    let mut r = Raw::header(3, 0, 1).str(b"k").u32(9);
    for _ in 0..100 {
        r = r.u32(9).u64(1);
    }
    let e = r.u32(4).u64(0).parse();
    assert!(matches!(e, GgufError::NestingTooDeep { .. }), "{e}");
}

#[test]
fn unknown_types_and_bad_strings() {
    let e = Raw::header(3, 0, 1).str(b"k").u32(13).u32(0).parse();
    assert!(
        matches!(
            e,
            GgufError::UnknownValueType {
                tag: 13,
                offset: 33
            }
        ),
        "{e}"
    );
    let e = Raw::header(3, 0, 1).str(b"k\xff").u32(4).u32(0).parse();
    assert!(
        matches!(e, GgufError::InvalidUtf8 { offset: 24, .. }),
        "{e}"
    );
    let e = Raw::header(3, 0, 1).str(b"k").u32(7).bytes(&[2]).parse();
    assert!(matches!(e, GgufError::BadValue { .. }), "{e}");
    let e = Raw::header(3, 1, 0)
        .tensor("t", &[32], 4, 0)
        .data(32)
        .parse();
    assert!(
        matches!(&e, GgufError::UnknownTensorType { name, type_id: 4, offset: 24 } if name == "t"),
        "{e}"
    );
}

#[test]
fn duplicates_are_refused() {
    let e = Raw::header(3, 0, 2).kv_u32("a", 1).kv_u32("a", 2).parse();
    assert!(
        matches!(&e, GgufError::DuplicateKey { key, offset: 41 } if key == "a"),
        "{e}"
    );
    let e = Raw::header(3, 2, 0)
        .tensor("t", &[8], 0, 0)
        .tensor("t", &[8], 0, 32)
        .data(64)
        .parse();
    assert!(
        matches!(&e, GgufError::DuplicateTensor { name, .. } if name == "t"),
        "{e}"
    );
}

#[test]
fn tensor_placement_is_checked() {
    // Past the end.
    let e = Raw::header(3, 1, 0)
        .tensor("t", &[8], 0, 0)
        .data(31)
        .parse();
    assert!(
        matches!(
            e,
            GgufError::TensorOutOfBounds {
                end: 32,
                len: 31,
                ..
            }
        ),
        "{e}"
    );
    // An offset near u64::MAX does not overflow.
    let e = Raw::header(3, 1, 0)
        .tensor("t", &[8], 0, u64::MAX - 31)
        .data(32)
        .parse();
    assert!(matches!(e, GgufError::TensorOutOfBounds { .. }), "{e}");
    // An empty tensor in a file that ends before its data section (found by the fuzzer).
    let e = Raw::header(3, 1, 0)
        .tensor("", &[0], 0, 0)
        .bytes(b"gs\0")
        .parse();
    assert!(
        matches!(e, GgufError::TensorOutOfBounds { len: 0, .. }),
        "{e}"
    );
    // Misaligned.
    let e = Raw::header(3, 1, 0)
        .tensor("t", &[8], 0, 4)
        .data(64)
        .parse();
    assert!(
        matches!(e, GgufError::MisalignedTensor { offset: 4, .. }),
        "{e}"
    );
    // Overlapping.
    let e = Raw::header(3, 2, 0)
        .tensor("a", &[16], 0, 0)
        .tensor("b", &[8], 0, 32)
        .data(96)
        .parse();
    assert!(matches!(e, GgufError::TensorOverlap { at: 32, .. }), "{e}");
    // Bad shapes: too many dims, a row not a whole number of blocks, overflow.
    let e = Raw::header(3, 1, 0)
        .tensor("t", &[1, 1, 1, 1, 1], 0, 0)
        .data(32)
        .parse();
    assert!(matches!(e, GgufError::BadTensorShape { .. }), "{e}");
    let e = Raw::header(3, 1, 0)
        .tensor("t", &[33], 2, 0)
        .data(64)
        .parse();
    assert!(matches!(e, GgufError::BadTensorShape { .. }), "{e}");
    let e = Raw::header(3, 1, 0)
        .tensor("t", &[1 << 32, 1 << 32], 0, 0)
        .data(32)
        .parse();
    assert!(matches!(e, GgufError::BadTensorShape { .. }), "{e}");
}

#[test]
fn alignment_key_is_validated() {
    let e = Raw::header(3, 0, 1).kv_u32("general.alignment", 0).parse();
    assert!(matches!(e, GgufError::BadAlignment { alignment: 0 }), "{e}");
    let e = Raw::header(3, 0, 1).kv_u32("general.alignment", 24).parse();
    assert!(
        matches!(e, GgufError::BadAlignment { alignment: 24 }),
        "{e}"
    );
}

#[test]
fn typed_accessors_report_wrong_types() {
    let f = GgufFile::from_bytes(sample_bytes()).unwrap();
    let md = f.metadata();
    assert_eq!(md.get_u32("u8").unwrap(), 200);
    assert_eq!(md.get_i64("i32").unwrap(), -2_000_000_000);
    assert_eq!(md.get_u64("u64").unwrap(), u64::MAX);
    assert!(md.get_u32("u64").is_err(), "u64::MAX does not fit u32");
    assert!(md.get_u32("i8").is_err(), "negative");
    assert_eq!(md.get_f32("f32").unwrap(), 1.5e-5);
    assert_eq!(md.get_str("string").unwrap(), "héllo ✓");
    assert_eq!(md.get_str_array("arr.str").unwrap().len(), 3);
    assert_eq!(
        md.get_arch_u32("nope").unwrap_err().to_string(),
        "missing metadata key \"llama.nope\""
    );
    let e = md.get_str("u32").unwrap_err();
    assert!(matches!(e, GgufError::WrongType { .. }), "{e}");
    assert!(md.get_f32_array("arr.i32").is_err());
    assert!(f.tensor("missing").is_err());
}
