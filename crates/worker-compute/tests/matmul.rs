//! The CPU matmul through the backend: grouped against single matmuls, every row of a batch
//! against the same row alone, and all of them against f32 products of the dequantized
//! weights, for weights in panels (with a partial last panel) and weights that are not.

use worker_compute::{ComputeBackend, CpuBackend, CpuConfig, TensorId, WeightDesc, WeightId};
use worker_gguf::quants::{dequantize, quantize};
use worker_gguf::GgmlType;

/// Deterministic inputs in [-1, 1).
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

struct Case {
    id: WeightId,
    rows: usize,
    dequantized: Vec<f32>,
}

/// Blocks of `ty` (a type with one f16 scale at the start of a block) with random codes and
/// sub-block scales: for the types worker-gguf has no quantizer for (IQ4_NL, IQ4_XS).
fn random_blocks(ty: GgmlType, n: usize, seed: u64) -> Vec<u8> {
    let bytes = ty.bytes_for(n as u64).unwrap() as usize;
    let mut b: Vec<u8> = values(bytes, seed)
        .iter()
        .map(|v| (v.to_bits() >> 7) as u8)
        .collect();
    for (i, blk) in b.chunks_exact_mut(ty.type_size()).enumerate() {
        let d = half::f16::from_f32(0.002 + 0.0001 * (i % 7) as f32);
        blk[..2].copy_from_slice(&d.to_le_bytes());
    }
    b
}

fn upload(be: &mut CpuBackend, ty: GgmlType, rows: usize, cols: usize, seed: u64) -> Case {
    let bytes = match ty {
        GgmlType::IQ4_NL | GgmlType::IQ4_XS => random_blocks(ty, rows * cols, seed),
        _ => quantize(ty, &values(rows * cols, seed)).unwrap(),
    };
    let mut dequantized = vec![0f32; rows * cols];
    dequantize(ty, &bytes, &mut dequantized).unwrap();
    let id = be
        .upload_weight(WeightDesc {
            name: "w",
            ty,
            rows,
            cols,
            bytes: &bytes,
        })
        .unwrap();
    Case {
        id,
        rows,
        dequantized,
    }
}

fn read(be: &mut CpuBackend, t: TensorId, rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0f32; rows * cols];
    be.read_rows(t, rows, &mut out).unwrap();
    out
}

#[test]
fn grouped_batched_and_single_row_matmuls_agree() {
    let cols = 512;
    let mut be = CpuBackend::new(CpuConfig {
        threads: 2,
        ..CpuConfig::default()
    });
    let cases = [
        upload(&mut be, GgmlType::Q5_0, 40, cols, 1),
        upload(&mut be, GgmlType::Q6_K, 48, cols, 2),
        upload(&mut be, GgmlType::F16, 24, cols, 3),
        upload(&mut be, GgmlType::Q4_1, 64, cols, 4),
        upload(&mut be, GgmlType::Q8_0, 17, cols, 5),
        upload(&mut be, GgmlType::Q4_K, 32, cols, 6),
        upload(&mut be, GgmlType::Q5_K, 33, cols, 8),
        upload(&mut be, GgmlType::Q5_1, 20, cols, 10),
        upload(&mut be, GgmlType::Q2_K, 16, cols, 11),
        upload(&mut be, GgmlType::Q3_K, 24, cols, 12),
        upload(&mut be, GgmlType::BF16, 8, cols, 13),
        upload(&mut be, GgmlType::MXFP4, 9, cols, 14),
        upload(&mut be, GgmlType::IQ4_NL, 19, cols, 15),
        upload(&mut be, GgmlType::IQ4_XS, 21, cols, 16),
    ];
    let rows = 7;
    let xs = values(rows * cols, 7);
    let x = be.alloc_tensor(rows, cols).unwrap();
    be.write_rows(x, &xs).unwrap();
    let grouped: Vec<TensorId> = cases
        .iter()
        .map(|c| be.alloc_tensor(rows, c.rows).unwrap())
        .collect();
    let outs: Vec<(TensorId, WeightId)> = grouped
        .iter()
        .zip(&cases)
        .map(|(t, c)| (*t, c.id))
        .collect();
    be.matmul_group(x, &outs, rows).unwrap();

    let x1 = be.alloc_tensor(1, cols).unwrap();
    for (c, &g) in cases.iter().zip(&grouped) {
        let single = be.alloc_tensor(rows, c.rows).unwrap();
        be.matmul(single, x, c.id, rows).unwrap();
        let (got, alone) = (
            read(&mut be, g, rows, c.rows),
            read(&mut be, single, rows, c.rows),
        );
        assert_eq!(
            got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            alone.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            "grouped and single matmuls differ"
        );
        let one = be.alloc_tensor(1, c.rows).unwrap();
        for r in 0..rows {
            be.write_rows(x1, &xs[r * cols..(r + 1) * cols]).unwrap();
            be.matmul(one, x1, c.id, 1).unwrap();
            let row = read(&mut be, one, 1, c.rows);
            for (j, (a, b)) in row
                .iter()
                .zip(&got[r * c.rows..(r + 1) * c.rows])
                .enumerate()
            {
                assert_eq!(
                    a.to_bits(),
                    b.to_bits(),
                    "row {r} col {j}: alone {a}, in a batch {b}"
                );
            }
            for (j, g) in row.iter().enumerate() {
                let w = &c.dequantized[j * cols..(j + 1) * cols];
                let want: f32 = w.iter().zip(&xs[r * cols..]).map(|(a, b)| a * b).sum();
                let scale: f32 = w
                    .iter()
                    .zip(&xs[r * cols..])
                    .map(|(a, b)| (a * b).abs())
                    .sum();
                // 8-bit activations: about 1/254 of the magnitude of the terms.
                assert!(
                    (g - want).abs() <= 0.01 * scale + 1e-4,
                    "row {r} col {j}: {g} vs f32 {want}"
                );
            }
        }
    }
}

#[test]
fn a_group_with_an_output_twice_is_an_error() {
    let mut be = CpuBackend::new(CpuConfig::default());
    let c = upload(&mut be, GgmlType::Q8_0, 16, 64, 9);
    let x = be.alloc_tensor(1, 64).unwrap();
    let o = be.alloc_tensor(1, 16).unwrap();
    assert!(be.matmul_group(x, &[(o, c.id), (o, c.id)], 1).is_err());
    assert!(be.matmul_group(x, &[(x, c.id)], 1).is_err());
}
