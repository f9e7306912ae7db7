//! Every tensor of both fixture models, dequantized by `worker_gguf::dequantize`, against
//! goldens made by gguf-py 0.19.0 (`scripts/goldens/make_dequant_goldens.py`).
//!
//! The check is bit-exact: gguf-py's numpy dequantizers evaluate the same f32 operations in
//! the same order as ggml's `dequantize_row_*` (`d * q`, `d * q + m`, `(d * sc) * q - dmin * m`,
//! with f16 scales widened exactly to f32), and so does this crate, so the sha256 of the f32
//! bytes must match for every tensor. Should a type ever legitimately differ, the test would
//! report the worst ulp distance over the sampled values; it allows none today.

use std::path::PathBuf;

use serde_json::Value;
use sha2::{Digest, Sha256};
use worker_gguf::{GgmlType, GgufFile};

fn golden_path(model_file: &str) -> PathBuf {
    let stem = model_file.trim_end_matches(".gguf");
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/golden/dequant")
        .join(format!("{stem}.json"))
}

/// Distance in representable f32 values between `a` and `b`.
fn ulps(a: f32, b: f32) -> u64 {
    let key = |x: f32| {
        let i = x.to_bits() as i32;
        // Map the sign-magnitude bit pattern onto a monotonic integer line.
        if i < 0 {
            i64::from(i32::MIN) - i64::from(i)
        } else {
            i64::from(i)
        }
    };
    (key(a) - key(b)).unsigned_abs()
}

struct Outcome {
    name: String,
    ty: GgmlType,
    bit_exact: bool,
    max_sample_ulps: u64,
}

fn check_tensor(file: &GgufFile, golden: &Value) -> Result<Outcome, String> {
    let name = golden["name"].as_str().ok_or("golden without name")?;
    let (info, bytes) = file.tensor(name).map_err(|e| e.to_string())?;
    let ty_name = golden["type"].as_str().ok_or("golden without type")?;
    if info.ty.name() != ty_name {
        return Err(format!(
            "{name}: type {} but golden says {ty_name}",
            info.ty
        ));
    }
    let n = golden["n_elements"]
        .as_u64()
        .ok_or("golden without n_elements")?;
    if info.n_elements() != n {
        return Err(format!(
            "{name}: {} elements, golden {n}",
            info.n_elements()
        ));
    }
    let mut out = vec![0f32; n as usize];
    worker_gguf::dequantize(info.ty, bytes, &mut out).map_err(|e| format!("{name}: {e}"))?;

    let mut hasher = Sha256::new();
    // Hash in chunks to avoid a second full-size copy of the tensor.
    let mut buf = Vec::with_capacity(1 << 16);
    for chunk in out.chunks(1 << 14) {
        buf.clear();
        for v in chunk {
            buf.extend_from_slice(&v.to_le_bytes());
        }
        hasher.update(&buf);
    }
    let sha: String = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let bit_exact = sha == golden["sha256"].as_str().unwrap_or_default();

    let mut max_sample_ulps = 0;
    for s in golden["samples"]
        .as_array()
        .ok_or("golden without samples")?
    {
        let idx = s[0].as_u64().ok_or("bad sample index")? as usize;
        let bits = u32::from_str_radix(s[1].as_str().ok_or("bad sample bits")?, 16)
            .map_err(|e| e.to_string())?;
        max_sample_ulps = max_sample_ulps.max(ulps(out[idx], f32::from_bits(bits)));
    }

    // Sums are numpy pairwise float64 sums, ours are sequential: equal up to rounding.
    let (mut sum, mut sum_abs, mut sum_sq) = (0f64, 0f64, 0f64);
    for &v in &out {
        let v = f64::from(v);
        sum += v;
        sum_abs += v.abs();
        sum_sq += v * v;
    }
    let close = |ours: f64, key: &str, scale: f64| {
        let theirs = golden[key].as_f64().unwrap_or(f64::NAN);
        (ours - theirs).abs() <= 1e-9 * scale.max(1e-30)
    };
    if !(close(sum, "sum", sum_abs)
        && close(sum_abs, "sum_abs", sum_abs)
        && close(sum_sq, "sum_sq", sum_sq))
    {
        return Err(format!(
            "{name}: sums ({sum}, {sum_abs}, {sum_sq}) differ from the golden's ({}, {}, {})",
            golden["sum"], golden["sum_abs"], golden["sum_sq"]
        ));
    }
    Ok(Outcome {
        name: name.to_string(),
        ty: info.ty,
        bit_exact,
        max_sample_ulps,
    })
}

fn check_model(model_file: &str) {
    let path = worker_testdata::model(model_file);
    let file = GgufFile::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let golden_file = golden_path(model_file);
    let text = std::fs::read_to_string(&golden_file)
        .unwrap_or_else(|e| panic!("{}: {e}", golden_file.display()));
    let golden: Value = serde_json::from_str(&text).expect("golden is JSON");
    let tensors = golden["tensors"].as_array().expect("golden has tensors");
    assert_eq!(
        tensors.len(),
        file.tensors().len(),
        "{model_file}: the golden lists a different number of tensors than the file"
    );

    // Two workers over the tensor list: the whole Qwen model is ~0.5 G elements.
    let results: Vec<Result<Outcome, String>> = std::thread::scope(|s| {
        let n_threads = std::thread::available_parallelism().map_or(2, |n| n.get().min(4));
        let handles: Vec<_> = (0..n_threads)
            .map(|t| {
                let file = &file;
                s.spawn(move || {
                    tensors
                        .iter()
                        .skip(t)
                        .step_by(n_threads)
                        .map(|g| check_tensor(file, g))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("worker thread"))
            .collect()
    });

    let mut failures = Vec::new();
    let mut exact = 0;
    let mut per_type = std::collections::BTreeMap::<String, (usize, usize)>::new();
    for r in results {
        match r {
            Ok(o) => {
                let e = per_type.entry(o.ty.name().to_string()).or_default();
                e.0 += 1;
                if o.bit_exact {
                    exact += 1;
                    e.1 += 1;
                } else {
                    // No type is expected to differ (see the module comment): a sha mismatch is
                    // a failure, reported with the worst sampled ulp distance to help diagnose.
                    failures.push(format!(
                        "{} ({}): sha256 differs, max sampled difference {} ulp",
                        o.name, o.ty, o.max_sample_ulps
                    ));
                }
            }
            Err(e) => failures.push(e),
        }
    }
    eprintln!(
        "{model_file}: {} tensors compared, {exact} bit-exact; per type (compared, exact): {per_type:?}",
        tensors.len()
    );
    assert!(
        failures.is_empty(),
        "{model_file}:\n{}",
        failures.join("\n")
    );
    assert_eq!(exact, tensors.len());
}

#[test]
fn smollm2_q4_1_every_tensor_matches_gguf_py() {
    check_model(worker_testdata::SMOLLM2);
}

#[test]
fn qwen25_q4_k_m_every_tensor_matches_gguf_py() {
    check_model(worker_testdata::QWEN25);
}
