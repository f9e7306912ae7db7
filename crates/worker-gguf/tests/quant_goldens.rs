//! The block formats against gguf-py 0.19.0 (`scripts/goldens/make_quant_goldens.py`), both
//! ways, for the types the fixture models do not contain; and round-trip error bounds for the
//! quantizers gguf-py does not have (the k-quants, Q8_1).

use std::path::PathBuf;

use serde_json::Value;
use worker_gguf::quants::{supports_dequantize, supports_quantize};
use worker_gguf::{dequantize, quantize, GgmlType};

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/golden/quants")
}

fn unhex(s: &str) -> Vec<u8> {
    assert!(s.len().is_multiple_of(2), "odd hex length");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// Index and the two values of the first bitwise difference, if any.
fn first_bit_difference(ours: &[f32], theirs: &[f32]) -> Option<(usize, f32, f32)> {
    ours.iter()
        .zip(theirs)
        .position(|(a, b)| a.to_bits() != b.to_bits())
        .map(|i| (i, ours[i], theirs[i]))
}

fn load_goldens() -> Vec<Value> {
    let mut goldens: Vec<(String, Value)> = std::fs::read_dir(golden_dir())
        .expect("tests/golden/quants exists")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .map(|p| {
            let text = std::fs::read_to_string(&p).expect("readable golden");
            (
                p.display().to_string(),
                serde_json::from_str(&text).expect("golden is JSON"),
            )
        })
        .collect();
    goldens.sort_by(|a, b| a.0.cmp(&b.0));
    goldens.into_iter().map(|(_, v)| v).collect()
}

#[test]
fn gguf_py_goldens_both_ways() {
    let goldens = load_goldens();
    assert!(
        goldens.len() >= 15,
        "expected the goldens of every type, found {}",
        goldens.len()
    );
    let (mut quantized, mut dequantized, mut unsupported) = (vec![], vec![], vec![]);
    let mut failures = vec![];
    for g in &goldens {
        let name = g["type"].as_str().expect("type");
        let ty = GgmlType::from_name(name).unwrap_or_else(|| panic!("unknown type {name}"));
        let bytes = unhex(g["bytes"].as_str().expect("bytes"));
        let want = f32s(&unhex(g["dequant_f32"].as_str().expect("dequant_f32")));
        let n = g["n_elements"].as_u64().expect("n_elements") as usize;
        assert_eq!(want.len(), n, "{name}");

        if supports_dequantize(ty) {
            let mut ours = vec![0f32; n];
            dequantize(ty, &bytes, &mut ours).unwrap();
            match first_bit_difference(&ours, &want) {
                None => dequantized.push(name),
                Some((i, a, b)) => failures.push(format!(
                    "{name}: dequantized element {i} is {a:e}, gguf-py says {b:e}"
                )),
            }
        } else {
            let mut out = vec![0f32; n];
            assert!(dequantize(ty, &bytes, &mut out).is_err(), "{name}");
        }

        if g["mode"] == "quantize" {
            let input = f32s(&unhex(g["input_f32"].as_str().expect("input_f32")));
            if supports_quantize(ty) {
                let ours = quantize(ty, &input).unwrap();
                match ours.iter().zip(&bytes).position(|(a, b)| a != b) {
                    None if ours.len() == bytes.len() => quantized.push(name),
                    None => failures.push(format!(
                        "{name}: {} bytes, gguf-py {}",
                        ours.len(),
                        bytes.len()
                    )),
                    Some(i) => failures.push(format!(
                        "{name}: byte {i} (block {}) is {:#04x}, gguf-py wrote {:#04x}",
                        i / ty.type_size(),
                        ours[i],
                        bytes[i]
                    )),
                }
            } else {
                assert!(quantize(ty, &input).is_err(), "{name}");
            }
        }
        if !supports_dequantize(ty) {
            unsupported.push(name);
        }
    }
    eprintln!("quantize matches gguf-py bytes: {quantized:?}");
    eprintln!("dequantize matches gguf-py floats bit for bit: {dequantized:?}");
    eprintln!("in gguf-py but not supported here (checked to be errors): {unsupported:?}");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    for must in [
        "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "MXFP4",
    ] {
        assert!(
            quantized.contains(&must),
            "{must} was not checked against gguf-py bytes"
        );
    }
    for must in ["Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_NL", "IQ4_XS"] {
        assert!(
            dequantized.contains(&must),
            "{must} was not checked against gguf-py floats"
        );
    }
}

/// A small deterministic Gaussian generator (xorshift64* and Box-Muller), so the test needs
/// no extra dependency.
struct Gauss(u64);

impl Gauss {
    fn uniform(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        ((self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    fn next(&mut self) -> f32 {
        let (u, v) = (self.uniform(), self.uniform());
        ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32
    }
}

/// Root mean square error of the round trip relative to the RMS of the input.
fn round_trip_error(ty: GgmlType, x: &[f32]) -> f64 {
    let q = quantize(ty, x).unwrap();
    assert_eq!(q.len() as u64, ty.bytes_for(x.len() as u64).unwrap());
    let mut y = vec![0f32; x.len()];
    dequantize(ty, &q, &mut y).unwrap();
    let (mut err, mut energy) = (0f64, 0f64);
    for (&a, &b) in x.iter().zip(&y) {
        err += f64::from(a - b).powi(2);
        energy += f64::from(a).powi(2);
    }
    (err / energy).sqrt()
}

#[test]
fn round_trip_error_bounds_per_type() {
    // Bounds sit about 1.3x above what the reference quantizers reach on Gaussian data (the
    // measured value is printed); a broken layout or scale gives errors near or above 100%.
    let bounds: &[(GgmlType, f64)] = &[
        (GgmlType::F16, 0.0005),
        (GgmlType::BF16, 0.004),
        (GgmlType::Q8_0, 0.01),
        (GgmlType::Q8_1, 0.01),
        (GgmlType::Q8_K, 0.012),
        (GgmlType::Q6_K, 0.03),
        (GgmlType::Q5_0, 0.06),
        (GgmlType::Q5_1, 0.05),
        (GgmlType::Q5_K, 0.05),
        (GgmlType::Q4_0, 0.12),
        (GgmlType::Q4_1, 0.10),
        (GgmlType::Q4_K, 0.10),
        (GgmlType::MXFP4, 0.20),
        (GgmlType::Q3_K, 0.25),
        (GgmlType::Q2_K, 0.45),
    ];
    let mut rng = Gauss(0x9e37_79b9_7f4a_7c15);
    // 16 super-blocks with scales spread over four decades, as weight rows are.
    let x: Vec<f32> = (0..16 * 256)
        .map(|i| {
            let scale = 10f32.powf(-3.0 + 4.0 * (i / 256) as f32 / 15.0);
            rng.next() * scale
        })
        .collect();
    let mut failures = vec![];
    for &(ty, bound) in bounds {
        // Relative error per super-block, so that large blocks do not hide small ones.
        let worst = x
            .chunks_exact(256)
            .map(|c| round_trip_error(ty, c))
            .fold(0f64, f64::max);
        eprintln!("{ty}: worst relative RMSE {worst:.5} (bound {bound})");
        if worst >= bound {
            failures.push(format!("{ty}: {worst:.5} >= {bound}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn quantizers_keep_zero_blocks_zero() {
    for ty in GgmlType::all().filter(|&t| supports_quantize(t)) {
        let x = vec![0f32; 256.max(ty.block_size())];
        let q = quantize(ty, &x).unwrap();
        let mut y = vec![1f32; x.len()];
        dequantize(ty, &q, &mut y).unwrap();
        assert!(
            y.iter().all(|&v| v == 0.0),
            "{ty}: zeros came back as {:?}",
            &y[..4]
        );
    }
}
