//! The mixture-of-experts op through the CPU backend: against the same computation made of the
//! unfused ops (a matmul per chosen expert and row, the bias adds, the activation, the
//! weighted sum in rank order: bit for bit), against an f64 reference over the dequantized
//! weights, each row of a batch bit for bit as alone, routing ties, and bad shapes.

use worker_compute::cpu::ops;
use worker_compute::{
    Activations, ComputeBackend, ComputeError, CpuBackend, CpuConfig, ExpertActivation,
    ExpertWeights, KernelChoice, MoeParams, TensorId, WeightDesc, WeightId,
};
use worker_gguf::quants::{dequantize, quantize};
use worker_gguf::GgmlType;
use worker_testdata::Rng;

/// gpt-oss's activation constants (llama.cpp's `LLM_FFN_SWIGLU_OAI_MOE`).
const OAI: ExpertActivation = ExpertActivation::SwigluOai {
    alpha: 1.702,
    limit: 7.0,
};

/// A weight on the backend and its dequantized values (row-major, `rows x cols`).
struct Matrix {
    id: WeightId,
    rows: usize,
    cols: usize,
    values: Vec<f64>,
}

fn upload(be: &mut CpuBackend, ty: GgmlType, rows: usize, cols: usize, v: &[f32]) -> Matrix {
    let bytes = match ty {
        GgmlType::F32 => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        _ => quantize(ty, v).unwrap(),
    };
    let mut values = vec![0f32; rows * cols];
    dequantize(ty, &bytes, &mut values).unwrap();
    let id = be
        .upload_weight(WeightDesc {
            name: "expert",
            ty,
            rows,
            cols,
            bytes: &bytes,
        })
        .unwrap();
    Matrix {
        id,
        rows,
        cols,
        values: values.iter().map(|&x| x as f64).collect(),
    }
}

/// One expert: gate, up, down and their biases (all present or all absent).
struct Expert {
    gate: Matrix,
    up: Matrix,
    down: Matrix,
    biases: Option<[Matrix; 3]>,
}

impl Expert {
    fn weights(&self) -> ExpertWeights {
        let b = |i: usize| self.biases.as_ref().map(|b| b[i].id);
        ExpertWeights {
            gate: self.gate.id,
            up: self.up.id,
            down: self.down.id,
            gate_bias: b(0),
            up_bias: b(1),
            down_bias: b(2),
        }
    }
}

/// `n` experts `d -> ff -> d` with weights of type `ty` (scaled so that the projections keep
/// unit-size activations) and, when `biases`, F32 biases.
fn experts(
    be: &mut CpuBackend,
    rng: &mut Rng,
    n: usize,
    (d, ff): (usize, usize),
    ty: GgmlType,
    biases: bool,
) -> Vec<Expert> {
    let mut m = |be: &mut CpuBackend, rows: usize, cols: usize, scale: f32, ty| {
        let v: Vec<f32> = (0..rows * cols).map(|_| rng.f32() * scale).collect();
        upload(be, ty, rows, cols, &v)
    };
    (0..n)
        .map(|_| {
            let (sd, sf) = (2.0 / (d as f32).sqrt(), 2.0 / (ff as f32).sqrt());
            let gate = m(be, ff, d, 3.0 * sd, ty);
            let up = m(be, ff, d, 3.0 * sd, ty);
            let down = m(be, d, ff, sf, ty);
            let biases = biases.then(|| {
                [
                    m(be, 1, ff, 1.0, GgmlType::F32),
                    m(be, 1, ff, 1.0, GgmlType::F32),
                    m(be, 1, d, 0.5, GgmlType::F32),
                ]
            });
            Expert {
                gate,
                up,
                down,
                biases,
            }
        })
        .collect()
}

fn tensor(be: &mut CpuBackend, rows: usize, cols: usize, data: &[f32]) -> TensorId {
    let t = be.alloc_tensor(rows, cols).unwrap();
    if !data.is_empty() {
        be.write_rows(t, data).unwrap();
    }
    t
}

fn read(be: &mut CpuBackend, t: TensorId, rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0f32; rows * cols];
    be.read_rows(t, rows, &mut out).unwrap();
    out
}

/// The `used` largest logits, ties to the lower index, and their softmax as the op
/// documents it (f32: `exp(l - max)`, summed in rank order, each divided by the sum).
fn route_f32(logits: &[f32], used: usize) -> Vec<(usize, f32)> {
    let mut order: Vec<usize> = (0..logits.len()).collect();
    // A stable sort by descending logit keeps lower indices first among equals.
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    let chosen = &order[..used];
    let max = chosen
        .iter()
        .fold(f32::NEG_INFINITY, |m, &e| m.max(logits[e]));
    let exps: Vec<f32> = chosen.iter().map(|&e| (logits[e] - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    chosen
        .iter()
        .zip(exps)
        .map(|(&e, x)| (e, x / sum))
        .collect()
}

/// Row `r` of the op computed from the unfused ops: per chosen expert, matmuls of the row
/// alone, bias adds, the activation (the op's own row kernel), then the weighted sum in
/// rank order.
fn unfused_row(
    be: &mut CpuBackend,
    ex: &[Expert],
    x: &[f32],
    logits: &[f32],
    used: usize,
    act: ExpertActivation,
) -> Vec<f32> {
    let (d, ff) = (ex[0].gate.cols, ex[0].gate.rows);
    let xt = tensor(be, 1, d, x);
    let (gt, ut, at, yt) = (
        tensor(be, 1, ff, &[]),
        tensor(be, 1, ff, &[]),
        tensor(be, 1, ff, &[]),
        tensor(be, 1, d, &[]),
    );
    let mut out = vec![0f32; d];
    for (rank, (e, w)) in route_f32(logits, used).into_iter().enumerate() {
        let e = &ex[e];
        be.matmul(gt, xt, e.gate.id, 1).unwrap();
        be.matmul(ut, xt, e.up.id, 1).unwrap();
        if let Some(b) = &e.biases {
            be.add_bias(gt, b[0].id, 1).unwrap();
            be.add_bias(ut, b[1].id, 1).unwrap();
        }
        let a = match act {
            ExpertActivation::Swiglu => {
                be.swiglu(at, gt, ut, 1).unwrap();
                read(be, at, 1, ff)
            }
            ExpertActivation::SwigluOai { alpha, limit } => {
                let mut g = read(be, gt, 1, ff);
                ops::swiglu_oai_row(&mut g, &read(be, ut, 1, ff), alpha, limit);
                g
            }
        };
        be.write_rows(at, &a).unwrap();
        be.matmul(yt, at, e.down.id, 1).unwrap();
        if let Some(b) = &e.biases {
            be.add_bias(yt, b[2].id, 1).unwrap();
        }
        let y = read(be, yt, 1, d);
        for (o, y) in out.iter_mut().zip(y) {
            if rank == 0 {
                *o = y * w;
            } else {
                *o += y * w;
            }
        }
    }
    out
}

fn matvec(m: &Matrix, x: &[f64], bias: Option<&Matrix>) -> Vec<f64> {
    (0..m.rows)
        .map(|j| {
            let w = &m.values[j * m.cols..(j + 1) * m.cols];
            let dot: f64 = w.iter().zip(x).map(|(a, b)| a * b).sum();
            dot + bias.map_or(0.0, |b| b.values[j])
        })
        .collect()
}

/// Row `r` of the op in f64 over the dequantized weights, and the size of its terms.
fn f64_row(
    ex: &[Expert],
    x: &[f32],
    logits: &[f32],
    used: usize,
    act: ExpertActivation,
) -> (Vec<f64>, f64) {
    let x: Vec<f64> = x.iter().map(|&v| v as f64).collect();
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    let chosen = &order[..used];
    let max = chosen
        .iter()
        .map(|&e| logits[e] as f64)
        .fold(f64::MIN, f64::max);
    let sum: f64 = chosen.iter().map(|&e| (logits[e] as f64 - max).exp()).sum();
    let mut out = vec![0f64; ex[0].down.rows];
    let mut size = 0f64;
    for &e in chosen {
        let w = (logits[e] as f64 - max).exp() / sum;
        let e = &ex[e];
        let b = |i: usize| e.biases.as_ref().map(|b| &b[i]);
        let g = matvec(&e.gate, &x, b(0));
        let u = matvec(&e.up, &x, b(1));
        let a: Vec<f64> = g
            .iter()
            .zip(&u)
            .map(|(&g, &u)| match act {
                ExpertActivation::Swiglu => g / (1.0 + (-g).exp()) * u,
                ExpertActivation::SwigluOai { alpha, limit } => {
                    let (alpha, limit) = (alpha as f64, limit as f64);
                    let g = g.min(limit);
                    let u = u.clamp(-limit, limit);
                    g / (1.0 + (-alpha * g).exp()) * (u + 1.0)
                }
            })
            .collect();
        let y = matvec(&e.down, &a, b(2));
        for (o, y) in out.iter_mut().zip(&y) {
            *o += w * y;
            size += (w * y).abs();
        }
    }
    (out, size)
}

/// A backend with `threads` threads, SIMD kernels, and activations as `act`.
fn backend(threads: usize, activations: Activations) -> CpuBackend {
    CpuBackend::new(CpuConfig {
        threads,
        kernels: KernelChoice::Detect,
        activations,
    })
}

/// The op against the unfused ops (bit for bit) and against f64, for MXFP4 experts with
/// biases and gpt-oss's clamped SwiGLU, and Q8_0 experts with plain SwiGLU and no biases; on
/// 8-bit activations (the fast path) and on f32 activations (the accuracy reference).
#[test]
fn moe_matches_the_unfused_ops_and_f64() {
    let mut rng = Rng::new();
    let (d, ff, n_exp, used, rows) = (64, 96, 6, 3, 11);
    for activations in [Activations::Q8, Activations::F32] {
        for (ty, biases, act) in [
            (GgmlType::MXFP4, true, OAI),
            (GgmlType::Q8_0, false, ExpertActivation::Swiglu),
        ] {
            let mut be = backend(2, activations);
            let ex = experts(&mut be, &mut rng, n_exp, (d, ff), ty, biases);
            let weights: Vec<ExpertWeights> = ex.iter().map(Expert::weights).collect();
            let xs: Vec<f32> = (0..rows * d).map(|_| rng.f32() * 2.0).collect();
            let logits: Vec<f32> = (0..rows * n_exp).map(|_| rng.f32() * 3.0).collect();
            let (x, lt, out) = (
                tensor(&mut be, rows, d, &xs),
                tensor(&mut be, rows, n_exp, &logits),
                tensor(&mut be, rows, d, &[]),
            );
            let params = MoeParams {
                used,
                activation: act,
            };
            be.moe(out, x, lt, &weights, &params, rows).unwrap();
            let got = read(&mut be, out, rows, d);
            for r in 0..rows {
                let (xr, lr) = (&xs[r * d..(r + 1) * d], &logits[r * n_exp..(r + 1) * n_exp]);
                let g = &got[r * d..(r + 1) * d];
                let want = unfused_row(&mut be, &ex, xr, lr, used, act);
                let what = format!("{ty} {activations:?} row {r}");
                assert_eq!(
                    g.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    want.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    "{what}: moe vs the unfused ops"
                );
                let (exact, size) = f64_row(&ex, xr, lr, used, act);
                // 8-bit activations cost about 1/254 of the size of the terms per projection;
                // f32 activations only f32 rounding.
                let tol = match activations {
                    Activations::Q8 => 0.03 * size + 1e-3,
                    Activations::F32 => 1e-5 * size + 1e-6,
                };
                for (c, (a, b)) in g.iter().zip(&exact).enumerate() {
                    assert!(
                        (*a as f64 - b).abs() <= tol,
                        "{what} col {c}: {a} vs f64 {b} (terms {size})"
                    );
                }
            }
        }
    }
}

/// Each row's output is the same bits alone as in a batch, whatever its neighbours chose
/// (the experts run once over all the rows that chose them).
#[test]
fn moe_rows_are_batch_invariant() {
    let mut rng = Rng::new();
    let (d, ff, n_exp, used, rows) = (64, 64, 8, 4, 13);
    let mut be = backend(2, Activations::Q8);
    let ex = experts(&mut be, &mut rng, n_exp, (d, ff), GgmlType::MXFP4, true);
    let weights: Vec<ExpertWeights> = ex.iter().map(Expert::weights).collect();
    let xs: Vec<f32> = (0..rows * d).map(|_| rng.f32() * 2.0).collect();
    let logits: Vec<f32> = (0..rows * n_exp).map(|_| rng.f32() * 3.0).collect();
    let params = MoeParams {
        used,
        activation: OAI,
    };
    let (x, lt, out) = (
        tensor(&mut be, rows, d, &xs),
        tensor(&mut be, rows, n_exp, &logits),
        tensor(&mut be, rows, d, &[]),
    );
    be.moe(out, x, lt, &weights, &params, rows).unwrap();
    let batch = read(&mut be, out, rows, d);
    let (x1, l1, o1) = (
        tensor(&mut be, 1, d, &[]),
        tensor(&mut be, 1, n_exp, &[]),
        tensor(&mut be, 1, d, &[]),
    );
    for r in 0..rows {
        be.write_rows(x1, &xs[r * d..(r + 1) * d]).unwrap();
        be.write_rows(l1, &logits[r * n_exp..(r + 1) * n_exp])
            .unwrap();
        be.moe(o1, x1, l1, &weights, &params, 1).unwrap();
        let alone = read(&mut be, o1, 1, d);
        assert_eq!(
            alone.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            batch[r * d..(r + 1) * d]
                .iter()
                .map(|v| v.to_bits())
                .collect::<Vec<_>>(),
            "row {r}: alone vs in a batch of {rows}"
        );
    }
}

/// Equal logits go to the lower expert index, as the op documents; every expert used is
/// allowed; no expert, more experts than there are, and experts of different shapes are
/// shape errors, not panics.
#[test]
fn moe_routing_ties_and_bad_shapes() {
    let mut rng = Rng::new();
    let (d, ff, n_exp) = (32, 32, 4);
    let mut be = backend(1, Activations::Q8);
    let ex = experts(&mut be, &mut rng, n_exp, (d, ff), GgmlType::Q8_0, true);
    let weights: Vec<ExpertWeights> = ex.iter().map(Expert::weights).collect();
    let xs: Vec<f32> = (0..d).map(|_| rng.f32()).collect();
    let (x, lt, out) = (
        tensor(&mut be, 1, d, &xs),
        tensor(&mut be, 1, n_exp, &[]),
        tensor(&mut be, 1, d, &[]),
    );
    // One expert of the tied pair 1 and 3 (both above the rest): expert 1.
    for (logits, used, experts) in [
        ([0.0, 2.0, -1.0, 2.0], 1, vec![1]),
        ([0.0, 2.0, -1.0, 2.0], 2, vec![1, 3]),
        ([5.0, 5.0, 5.0, 5.0], 3, vec![0, 1, 2]),
        ([1.0, 2.0, 3.0, 4.0], 4, vec![3, 2, 1, 0]),
    ] {
        be.write_rows(lt, &logits).unwrap();
        let act = ExpertActivation::Swiglu;
        let params = MoeParams {
            used,
            activation: act,
        };
        be.moe(out, x, lt, &weights, &params, 1).unwrap();
        let got = read(&mut be, out, 1, d);
        let chosen: Vec<usize> = route_f32(&logits, used).iter().map(|&(e, _)| e).collect();
        assert_eq!(chosen, experts, "the reference's routing of {logits:?}");
        let want = unfused_row(&mut be, &ex, &xs, &logits, used, act);
        assert_eq!(
            got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            want.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            "logits {logits:?}, {used} used: experts {experts:?}"
        );
    }

    let shape = |e: ComputeError| assert!(matches!(e, ComputeError::Shape { .. }), "{e}");
    for used in [0, n_exp + 1] {
        let params = MoeParams {
            used,
            activation: OAI,
        };
        shape(be.moe(out, x, lt, &weights, &params, 1).unwrap_err());
    }
    let params = MoeParams {
        used: 2,
        activation: OAI,
    };
    // An expert whose down projection is the transpose of the others'.
    let odd = experts(&mut be, &mut rng, 1, (d, 2 * ff), GgmlType::Q8_0, false);
    let mut mixed = weights.clone();
    mixed[2] = odd[0].weights();
    mixed[2].down = weights[2].down;
    shape(be.moe(out, x, lt, &mixed, &params, 1).unwrap_err());
    // Router logits with a column per expert, not fewer; an output of the wrong width.
    shape(be.moe(out, x, lt, &weights[..3], &params, 1).unwrap_err());
    let narrow = tensor(&mut be, 1, d / 2, &[]);
    shape(be.moe(narrow, x, lt, &weights, &params, 1).unwrap_err());
    // More rows than the tensors hold.
    shape(be.moe(out, x, lt, &weights, &params, 2).unwrap_err());
}

/// gpt-oss's clamped SwiGLU row kernel against the ggml formula in f64, over the clamps'
/// edges and where the exponential overflows.
#[test]
fn swiglu_oai_matches_f64() {
    let mut rng = Rng::new();
    let (alpha, limit) = (1.702f32, 7.0f32);
    let mut g: Vec<f32> = (0..4096).map(|_| rng.f32() * 20.0).collect();
    let mut u: Vec<f32> = (0..4096).map(|_| rng.f32() * 20.0).collect();
    // The edges: the limits themselves, just past them, zero, and far out.
    for (i, v) in [-100.0f32, -7.0, -6.999, 0.0, 6.999, 7.0, 7.001, 100.0]
        .into_iter()
        .enumerate()
    {
        g[i] = v;
        u[i + 8] = v;
        g[i + 8] = 1.0;
    }
    let mut out = g.clone();
    ops::swiglu_oai_row(&mut out, &u, alpha, limit);
    for ((o, &a), &b) in out.iter().zip(&g).zip(&u) {
        let x = (a as f64).min(limit as f64);
        let y = (b as f64).clamp(-(limit as f64), limit as f64);
        let want = x / (1.0 + (-(alpha as f64) * x).exp()) * (y + 1.0);
        assert!(
            (*o as f64 - want).abs() <= 1e-6 * (1.0 + want.abs()),
            "swiglu_oai({a}, {b}) = {o}, f64 {want}"
        );
    }
}
