//! Row-wise ops added for the newer architectures, through the CPU backend, against the
//! scalar row kernels they are built from and against f64 arithmetic.

use worker_compute::cpu::ops;
use worker_compute::{ComputeBackend, ComputeError, CpuBackend, CpuConfig, WeightDesc};
use worker_gguf::GgmlType;

fn values(n: usize, seed: u32) -> Vec<f32> {
    (0..n)
        .map(|i| ((i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) >> 8) as f32)
        .map(|v| v / (1u32 << 24) as f32 * 4.0 - 2.0)
        .collect()
}

fn vector(be: &mut CpuBackend, v: &[f32]) -> worker_compute::WeightId {
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    be.upload_weight(WeightDesc {
        name: "w",
        ty: GgmlType::F32,
        rows: 1,
        cols: v.len(),
        bytes: &bytes,
    })
    .unwrap()
}

/// Each head of each row normalized on its own: the same bits as the whole-row RMS norm
/// kernel on that head, within f32 rounding of f64, on enough rows to run on the pool.
#[test]
fn rms_norm_heads_normalizes_each_head() {
    let (rows, heads, hd, eps) = (13, 4, 32, 1e-6f32);
    let mut be = CpuBackend::new(CpuConfig {
        threads: 2,
        ..CpuConfig::default()
    });
    let x = values(rows * heads * hd, 7);
    let w = values(hd, 99);
    let t = be.alloc_tensor(rows, heads * hd).unwrap();
    be.write_rows(t, &x).unwrap();
    let wid = vector(&mut be, &w);
    be.rms_norm_heads(t, wid, eps, heads, rows).unwrap();
    let mut got = vec![0f32; rows * heads * hd];
    be.read_rows(t, rows, &mut got).unwrap();
    for (h, (xs, gs)) in x.chunks(hd).zip(got.chunks(hd)).enumerate() {
        let mut want = vec![0f32; hd];
        ops::rms_norm_row(&mut want, xs, &w, eps);
        assert_eq!(gs, &want[..], "head {h}");
        let ms = xs.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / hd as f64;
        for ((&g, &v), &s) in gs.iter().zip(xs).zip(&w) {
            let r = v as f64 / (ms + eps as f64).sqrt() * s as f64;
            assert!((g as f64 - r).abs() < 1e-5 * (1.0 + r.abs()), "head {h}");
        }
    }
    // Heads that do not divide the row, or a weight of another width, are errors.
    let e = be.rms_norm_heads(t, wid, eps, 3, rows).unwrap_err();
    assert!(matches!(e, ComputeError::Shape { .. }), "{e}");
    let e = be.rms_norm_heads(t, wid, eps, 2, rows).unwrap_err();
    assert!(matches!(e, ComputeError::Shape { .. }), "{e}");
    let e = be.rms_norm_heads(t, wid, eps, heads, rows + 1).unwrap_err();
    assert!(matches!(e, ComputeError::Shape { .. }), "{e}");
}

/// A read of a vocabulary's worth of values (copied by every thread of the pool) returns each
/// value where it was written, for one row and for several, and a wrong length is an error.
#[test]
fn large_reads_come_back_whole() {
    let mut be = CpuBackend::new(CpuConfig {
        threads: 2,
        ..CpuConfig::default()
    });
    let (rows, cols) = (3, 100_003);
    let x = values(rows * cols, 5);
    let t = be.alloc_tensor(rows, cols).unwrap();
    be.write_rows(t, &x).unwrap();
    for n in [1, rows] {
        let mut got = vec![0f32; n * cols];
        be.read_rows(t, n, &mut got).unwrap();
        assert!(got == x[..n * cols], "{n} rows");
    }
    let mut short = vec![0f32; cols - 1];
    let e = be.read_rows(t, 1, &mut short).unwrap_err();
    assert!(matches!(e, ComputeError::Shape { .. }), "{e}");
}
