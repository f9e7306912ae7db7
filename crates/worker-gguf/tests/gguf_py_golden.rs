//! A file written by gguf-py (the reference writer llama.cpp's converters use; made by
//! `scripts/goldens/make_gguf_writer_golden.py`): we read every value it holds, and our writer
//! reproduces it byte for byte.

use std::path::PathBuf;

use serde_json::Value as Json;
use worker_gguf::{dequantize, Array, GgmlType, GgufFile, GgufWriter, Value};

fn golden(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/golden/gguf")
        .join(name)
}

/// Our value rendered as the (type name, JSON value) pair the script wrote.
fn as_json(v: &Value) -> (String, Json) {
    let j = |x: Json| x;
    match v {
        Value::U8(x) => ("uint8".into(), j((*x).into())),
        Value::I8(x) => ("int8".into(), j((*x).into())),
        Value::U16(x) => ("uint16".into(), j((*x).into())),
        Value::I16(x) => ("int16".into(), j((*x).into())),
        Value::U32(x) => ("uint32".into(), j((*x).into())),
        Value::I32(x) => ("int32".into(), j((*x).into())),
        Value::U64(x) => ("uint64".into(), j((*x).into())),
        Value::I64(x) => ("int64".into(), j((*x).into())),
        Value::F32(x) => ("float32".into(), j(f64::from(*x).into())),
        Value::F64(x) => ("float64".into(), j((*x).into())),
        Value::Bool(x) => ("bool".into(), j((*x).into())),
        Value::String(s) => ("string".into(), j(s.clone().into())),
        Value::Array(a) => {
            let items: Json = match a {
                Array::String(v) => v.clone().into(),
                Array::I32(v) => v.clone().into(),
                Array::F32(v) => v.iter().map(|&x| f64::from(x)).collect::<Vec<_>>().into(),
                Array::Bool(v) => v.clone().into(),
                other => panic!("unexpected array type {:?}", other.element_type()),
            };
            (format!("[{}]", a.element_type().name()), items)
        }
    }
}

#[test]
fn reads_gguf_py_output_exactly() {
    let expected: Json =
        serde_json::from_str(&std::fs::read_to_string(golden("gguf_py_written.json")).unwrap())
            .unwrap();
    let f = GgufFile::open(golden("gguf_py_written.gguf")).unwrap();

    let md = expected["metadata"].as_object().unwrap();
    // gguf-py adds nothing we did not ask for but the architecture key.
    assert_eq!(f.metadata().len(), md.len());
    for (key, want) in md {
        let got = f
            .metadata()
            .get(key)
            .unwrap_or_else(|| panic!("missing {key}"));
        let (ty, value) = as_json(got);
        assert_eq!(ty, want[0].as_str().unwrap(), "{key}");
        assert_eq!(value, want[1], "{key}");
    }

    let tensors = expected["tensors"].as_array().unwrap();
    assert_eq!(f.tensors().len(), tensors.len());
    for (info, want) in f.tensors().iter().zip(tensors) {
        assert_eq!(info.name, want["name"].as_str().unwrap());
        assert_eq!(
            Some(info.ty),
            GgmlType::from_name(want["type"].as_str().unwrap())
        );
        let shape: Vec<u64> = want["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap())
            .collect();
        assert_eq!(info.shape, shape);
        let mut values = vec![0f32; info.n_elements() as usize];
        dequantize(info.ty, f.tensor_bytes(info), &mut values).unwrap();
        let want: Vec<f32> = want["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect();
        assert_eq!(values, want, "{}", info.name);
    }
}

#[test]
fn rewrites_gguf_py_output_byte_for_byte() {
    let original = std::fs::read(golden("gguf_py_written.gguf")).unwrap();
    let f = GgufFile::from_bytes(original.clone()).unwrap();
    let mut w = GgufWriter::new();
    w.set_all(f.metadata());
    for t in f.tensors() {
        w.add_tensor(&t.name, t.ty, &t.shape, f.tensor_bytes(t).to_vec())
            .unwrap();
    }
    assert_eq!(w.to_bytes().unwrap(), original);
}
