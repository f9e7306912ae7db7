//! Device checks: the CUDA backend against the CPU backend (f32 activations), on one model
//! (`compare`) and op by op on random inputs (`check-ops`). Both print a line per case and
//! fail (exit 1) when a case is out of tolerance. A case the CPU backend cannot run (a weight
//! type it has no kernel for) is reported as SKIP, not failed, as llama.cpp's
//! test-backend-ops reports unsupported ops.

use std::path::PathBuf;

use anyhow::bail;
use clap::Args;
use worker_compute::{
    AttentionParams, ComputeBackend, ComputeError, KvCacheConfig, KvIndex, KvType, Linear,
    RopeMode, RopeParams, WeightDesc, KV_BLOCK,
};
use worker_compute_cuda::WEIGHT_TYPES;
use worker_gguf::GgmlType;
use worker_models::{LoadOptions, SequenceBatch};

use worker_common::argmax;

use crate::{cpu_backend, load_model, open_cuda, pseudo_prompt, BackendKind, Device};

/// Flags of `compare`.
#[derive(Args)]
pub struct CompareArgs {
    /// The GGUF model.
    #[arg(long, env = "WORKER_MODEL")]
    model: PathBuf,
    /// Prompt lengths, one comparison each.
    #[arg(long, value_delimiter = ',', default_value = "1,9,67")]
    prompt_lens: Vec<usize>,
    /// Greedy steps after each prompt (the CPU's token is fed to both backends).
    #[arg(long, default_value_t = 32)]
    steps: usize,
    /// Lowest acceptable cosine similarity of the logits.
    #[arg(long, default_value_t = 0.999)]
    min_cosine: f64,
}

/// Max abs difference, and cosine similarity, of `a` against the reference `r`.
fn diff(a: &[f32], r: &[f32]) -> (f64, f64) {
    let (mut max, mut dot, mut na, mut nr) = (0f64, 0f64, 0f64, 0f64);
    for (&x, &y) in a.iter().zip(r) {
        let (x, y) = (f64::from(x), f64::from(y));
        max = max.max((x - y).abs());
        dot += x * y;
        na += x * x;
        nr += y * y;
    }
    (max, dot / (na.sqrt() * nr.sqrt()).max(1e-30))
}

/// Error energy over reference energy (llama.cpp's test-backend-ops measure).
fn nmse(a: &[f32], r: &[f32]) -> f64 {
    let (mut e, mut n) = (0f64, 0f64);
    for (&x, &y) in a.iter().zip(r) {
        e += (f64::from(x) - f64::from(y)).powi(2);
        n += f64::from(y).powi(2);
    }
    if a.len() != r.len() {
        return f64::INFINITY;
    }
    e / n.max(1e-30)
}

/// `compare`: prefill logits and teacher-forced greedy steps, CUDA against CPU.
pub fn compare(device: Device, a: &CompareArgs) -> anyhow::Result<()> {
    let longest = a.prompt_lens.iter().copied().max().unwrap_or(1).max(1);
    let opts = LoadOptions {
        max_batch: longest,
        max_positions: longest + a.steps + 1,
        ..LoadOptions::default()
    };
    let (mut gpu, mut gm) = load_model(BackendKind::Cuda, device, &a.model, opts)?;
    let (mut cpu, mut cm) = load_model(BackendKind::Cpu, device, &a.model, opts)?;
    let vocab = cm.hparams().vocab_size as usize;
    let (mut lc, mut lg) = (vec![0f32; vocab], vec![0f32; vocab]);
    let mut failed = false;
    for (i, &n) in a.prompt_lens.iter().enumerate() {
        let prompt = pseudo_prompt(n.max(1), vocab, 100 + i as u64);
        let b = SequenceBatch::new(&prompt, 0, 0, false);
        cm.forward(cpu.as_mut(), &b.batch(), &mut lc)?;
        gm.forward(gpu.as_mut(), &b.batch(), &mut lg)?;
        let (pmax, pcos) = diff(&lg, &lc);
        let (mut wmax, mut wcos, mut agree) = (pmax, pcos, 0usize);
        let mut toks = Vec::new();
        for s in 0..a.steps {
            let (tc, tg) = (argmax(&lc), argmax(&lg));
            agree += usize::from(tc == tg);
            if tc != tg {
                // A near-tie flips on rounding; a real bug shows a wide margin.
                eprintln!(
                    "  step {s}: cpu picks {tc} ({:.5}), cuda picks {tg} (cpu logit {:.5})",
                    lc[tc as usize], lc[tg as usize]
                );
            }
            toks.push(tc);
            let step = SequenceBatch::new(&[tc], (prompt.len() + s) as u32, 0, false);
            cm.forward(cpu.as_mut(), &step.batch(), &mut lc)?;
            gm.forward(gpu.as_mut(), &step.batch(), &mut lg)?;
            let (m, c) = diff(&lg, &lc);
            wmax = wmax.max(m);
            wcos = wcos.min(c);
        }
        let ok = wcos >= a.min_cosine && agree == a.steps;
        failed |= !ok;
        println!(
            "compare prompt_len={n}: prefill max_abs={pmax:.3e} cos={pcos:.6}; {} steps: greedy agree {agree}/{}, worst max_abs={wmax:.3e} min cos={wcos:.6} [{}]",
            a.steps,
            a.steps,
            if ok { "PASS" } else { "FAIL" }
        );
        eprintln!("  cpu greedy ids: {toks:?}");
    }
    if failed {
        bail!("CUDA logits or greedy tokens differ from the CPU backend");
    }
    Ok(())
}

/// Normal random numbers (xorshift + Box-Muller), reproducible.
struct Rng(u64);

impl Rng {
    fn uniform(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        ((self.0 >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }
    fn normals(&mut self, n: usize, std: f32) -> Vec<f32> {
        (0..n)
            .map(|_| {
                let (u, v) = (self.uniform(), self.uniform());
                ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32 * std
            })
            .collect()
    }
}

fn weight_bytes(ty: GgmlType, v: &[f32]) -> anyhow::Result<Vec<u8>> {
    Ok(match ty {
        GgmlType::F32 => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        GgmlType::IQ4_NL | GgmlType::IQ4_XS => iq4_bytes(ty, v)?,
        _ => worker_gguf::quantize(ty, v)?,
    })
}

/// IQ4 blocks (worker-gguf has no IQ4 quantizer) for `v.len()` elements: codes and IQ4_XS
/// sub-block scales taken from the bits of `v`, the f16 scale of each block fixed so that
/// values stay within about ±1.
fn iq4_bytes(ty: GgmlType, v: &[f32]) -> anyhow::Result<Vec<u8>> {
    let n = ty
        .bytes_for(v.len() as u64)
        .ok_or_else(|| anyhow::anyhow!("{} values are not whole {ty} blocks", v.len()))?;
    let mut b: Vec<u8> = (0..n as usize)
        .map(|i| (v[i % v.len()].to_bits() >> (i % 13)) as u8)
        .collect();
    let d = if ty == GgmlType::IQ4_NL {
        0.004
    } else {
        0.0002
    };
    for blk in b.chunks_exact_mut(ty.type_size()) {
        blk[..2].copy_from_slice(&half::f16::from_f32(d).to_le_bytes());
    }
    Ok(b)
}

type Case = Box<dyn Fn(&mut dyn ComputeBackend) -> worker_compute::Result<Vec<f32>>>;

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// GQA attention (8 query heads over 2 kv heads): `pre` rows in chunks of `chunk` rows, then
/// `steps` single rows; returns every output row.
fn attention_case(rng: &mut Rng, pre: usize, chunk: usize, steps: usize) -> Case {
    let (heads, kvh, hd) = (8usize, 2usize, 64usize);
    let total = pre + steps;
    let (q, k2, v) = (
        rng.normals(total * heads * hd, 1.0),
        rng.normals(total * kvh * hd, 1.0),
        rng.normals(total * kvh * hd, 1.0),
    );
    Box::new(move |be| {
        // Two sequences of whole regions (the layout every backend takes), the second used.
        let seq_blocks = (total + 4).div_ceil(KV_BLOCK);
        let cfg = KvCacheConfig {
            layers: 2,
            blocks: 2 * seq_blocks,
            seqs: 2,
            seq_blocks,
            kv_heads: kvh,
            head_dim: hd,
            value_head_dim: hd,
            ty: be.kv_storage(KvType::F16),
        };
        let cache = be.alloc_kv_cache(cfg)?;
        let table = be.alloc_index(cfg.blocks)?;
        be.write_index(table, &(0..cfg.blocks as u32).collect::<Vec<_>>())?;
        let p = AttentionParams {
            heads,
            kv_heads: kvh,
            head_dim: hd,
            value_head_dim: hd,
            scale: 0.125,
            layer: 1,
            window: None,
            sinks: None,
        };
        let (qt, kt, vt, o) = (
            be.alloc_tensor(pre, heads * hd)?,
            be.alloc_tensor(pre, kvh * hd)?,
            be.alloc_tensor(pre, kvh * hd)?,
            be.alloc_tensor(pre, heads * hd)?,
        );
        let (pos, slot) = (be.alloc_index(pre)?, be.alloc_index(pre)?);
        let mut res = Vec::new();
        let chunks = (0..pre).step_by(chunk).map(|t| t..(t + chunk).min(pre));
        let ranges = chunks.chain((pre..total).map(|t| t..t + 1));
        for range in ranges {
            let nr = range.len();
            let positions: Vec<u32> = range.clone().map(|t| t as u32).collect();
            be.write_rows(qt, &q[range.start * heads * hd..range.end * heads * hd])?;
            be.write_rows(kt, &k2[range.start * kvh * hd..range.end * kvh * hd])?;
            be.write_rows(vt, &v[range.start * kvh * hd..range.end * kvh * hd])?;
            be.write_index(pos, &positions)?;
            be.write_index(slot, &vec![1; nr])?;
            let index = KvIndex {
                positions: pos,
                seqs: slot,
                block_table: table,
            };
            be.attention(o, qt, kt, vt, cache, &index, &p, nr)?;
            let mut r = vec![0f32; nr * heads * hd];
            be.read_rows(o, nr, &mut r)?;
            res.extend(r);
        }
        Ok(res)
    })
}

/// `rows` rows of `x` times the `n` x `k` weight `w` of type `ty`, plus `bias` (an f32
/// vector of `n`) when given.
fn matmul_case(
    ty: GgmlType,
    (n, k, rows): (usize, usize, usize),
    w: Vec<u8>,
    x: Vec<f32>,
    bias: Option<Vec<f32>>,
) -> Case {
    Box::new(move |be| {
        let wid = be.upload_weight(WeightDesc {
            name: "w",
            ty,
            rows: n,
            cols: k,
            bytes: &w,
        })?;
        let bid = match &bias {
            Some(b) => Some(be.upload_weight(WeightDesc {
                name: "b",
                ty: GgmlType::F32,
                rows: 1,
                cols: n,
                bytes: &f32_bytes(b),
            })?),
            None => None,
        };
        let (xi, o) = (be.alloc_tensor(rows, k)?, be.alloc_tensor(rows, n)?);
        be.write_rows(xi, &x)?;
        let l = Linear {
            out: o,
            weight: wid,
            bias: bid,
        };
        be.linear(xi, &[l], rows)?;
        let mut r = vec![0f32; rows * n];
        be.read_rows(o, rows, &mut r)?;
        Ok(r)
    })
}

fn cases() -> anyhow::Result<Vec<(String, f64, Case)>> {
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let mut out: Vec<(String, f64, Case)> = Vec::new();
    let (k, n) = (512usize, 96usize);
    for &(ty, name) in WEIGHT_TYPES {
        let w = weight_bytes(ty, &rng.normals(n * k, 0.5))?;
        // 67 rows: the prefill path (with --cuda-experimental gemm, cuBLAS in TF32: products of
        // inputs rounded to 10 mantissa bits, so a looser tolerance).
        for rows in [1usize, 19, 67] {
            let x = rng.normals(rows * k, 1.0);
            let w = w.clone();
            out.push((
                format!("matmul {name} rows={rows}"),
                if rows >= 32 { 1e-6 } else { 1e-8 },
                matmul_case(ty, (n, k, rows), w, x, None),
            ));
        }
        if ty == GgmlType::Q4_0 {
            // More weights than one dequantized tile holds (TILE_ELEMENTS), so the cuBLAS
            // prefill multiplies the matrix in two tiles, the second a partial one.
            let (rows, n) = (67usize, 40_000usize);
            let w = weight_bytes(ty, &rng.normals(n * k, 0.5))?;
            let x = rng.normals(rows * k, 1.0);
            out.push((
                format!("matmul {name} rows={rows} n={n}"),
                1e-6,
                matmul_case(ty, (n, k, rows), w, x, None),
            ));
        }
        out.push((
            format!("embed {name}"),
            1e-10,
            Box::new(move |be| {
                let wid = be.upload_weight(WeightDesc {
                    name: "t",
                    ty,
                    rows: n,
                    cols: k,
                    bytes: &w,
                })?;
                let (ids, o) = (be.alloc_index(4)?, be.alloc_tensor(4, k)?);
                be.write_index(ids, &[0, 5, 95, 17])?;
                be.embed(o, wid, ids, 4)?;
                let mut r = vec![0f32; 4 * k];
                be.read_rows(o, 4, &mut r)?;
                Ok(r)
            }),
        ));
    }
    let (rows, cols) = (5usize, 320usize);
    let (x, y, wv, bv) = (
        rng.normals(rows * cols, 1.0),
        rng.normals(rows * cols, 1.0),
        rng.normals(cols, 1.0),
        rng.normals(cols, 1.0),
    );
    let vec_bytes = |v: &[f32]| -> Vec<u8> { v.iter().flat_map(|x| x.to_le_bytes()).collect() };
    let (wb, bb) = (vec_bytes(&wv), vec_bytes(&bv));
    for op in [
        "rms_norm",
        "layer_norm",
        "add",
        "add_bias",
        "mul",
        "swiglu",
        "gelu",
        "gather_rows",
    ] {
        let (x, y, wb, bb) = (x.clone(), y.clone(), wb.clone(), bb.clone());
        out.push((
            op.to_string(),
            1e-10,
            Box::new(move |be| {
                let w = be.upload_weight(WeightDesc {
                    name: "w",
                    ty: GgmlType::F32,
                    rows: 1,
                    cols,
                    bytes: &wb,
                })?;
                let b = be.upload_weight(WeightDesc {
                    name: "b",
                    ty: GgmlType::F32,
                    rows: 1,
                    cols,
                    bytes: &bb,
                })?;
                let (a, c, o) = (
                    be.alloc_tensor(rows, cols)?,
                    be.alloc_tensor(rows, cols)?,
                    be.alloc_tensor(rows, cols)?,
                );
                be.write_rows(a, &x)?;
                be.write_rows(c, &y)?;
                let idx = be.alloc_index(3)?;
                be.write_index(idx, &[4, 0, 2])?;
                let res = match op {
                    "rms_norm" => {
                        be.rms_norm(o, a, w, 1e-6, rows)?;
                        o
                    }
                    "layer_norm" => {
                        be.layer_norm(o, a, w, b, 1e-5, rows)?;
                        o
                    }
                    "add" => {
                        be.add(a, c, rows)?;
                        a
                    }
                    "add_bias" => {
                        be.add_bias(a, b, rows)?;
                        a
                    }
                    "mul" => {
                        be.mul(a, c, rows)?;
                        a
                    }
                    "swiglu" => {
                        be.swiglu(o, a, c, rows)?;
                        o
                    }
                    "gelu" => {
                        be.gelu(a, rows)?;
                        a
                    }
                    _ => {
                        be.gather_rows(o, a, idx, 3)?;
                        o
                    }
                };
                let mut r = vec![0f32; rows * cols];
                be.read_rows(res, rows, &mut r)?;
                Ok(r)
            }),
        ));
    }
    for mode in [RopeMode::Normal, RopeMode::Neox] {
        let (heads, hd) = (4usize, 64usize);
        let x = rng.normals(rows * heads * hd, 1.0);
        out.push((
            format!("rope {mode:?}"),
            1e-10,
            Box::new(move |be| {
                let t = be.alloc_tensor(rows, heads * hd)?;
                be.write_rows(t, &x)?;
                let pos = be.alloc_index(rows)?;
                be.write_index(pos, &[0, 1, 7, 300, 4095])?;
                let p = RopeParams {
                    heads,
                    head_dim: hd,
                    n_rot: hd,
                    base: 10000.0,
                    freq_scale: 1.0,
                    mode,
                    yarn: None,
                };
                be.rope(t, pos, &p, rows)?;
                let mut r = vec![0f32; rows * heads * hd];
                be.read_rows(t, rows, &mut r)?;
                Ok(r)
            }),
        ));
    }
    // Attention: a prefill (the batched kernels), then decode steps one row at a time (the
    // fused store + attention kernel), reading what both stored. 600 positions span more
    // than one round of the decode kernel's warps (16 warps x 32 positions). The chunked
    // prefill's second chunk starts at position 40 and reads what the first one stored.
    for (pre, chunk, steps) in [
        (6usize, 6usize, 1usize),
        (70, 70, 3),
        (70, 40, 1),
        (600, 600, 2),
    ] {
        out.push((
            format!("attention gqa 8/2 prefill {pre} in chunks of {chunk} + decode {steps}"),
            1e-5,
            attention_case(&mut rng, pre, chunk, steps),
        ));
    }
    // Decode mat-vec over rows longer than one pass of a warp's lanes, with a bias (the
    // bias is fused into the mat-vec), and an odd number of output rows.
    let n = 71usize;
    for &(ty, name) in WEIGHT_TYPES {
        let k = if ty.block_size() == 256 { 2304 } else { 2400 };
        let w = weight_bytes(ty, &rng.normals(n * k, 0.5))?;
        let (x, bias) = (rng.normals(k, 1.0), rng.normals(n, 1.0));
        out.push((
            format!("matvec {name} k={k} + bias"),
            1e-8,
            matmul_case(ty, (n, k, 1), w, x, Some(bias)),
        ));
    }
    // The attention projections at one row: three mat-vecs of one input and their biases, as
    // one `linear` (with --cuda-experimental matvec, one matvec3 launch with the biases
    // folded in).
    let d = 512usize;
    let ns = [96usize, 32, 32];
    for &(ty, name) in WEIGHT_TYPES {
        let mut ws = Vec::new();
        for &n in &ns {
            ws.push((
                weight_bytes(ty, &rng.normals(n * d, 0.5))?,
                rng.normals(n, 1.0),
            ));
        }
        let x = rng.normals(d, 1.0);
        out.push((
            format!("q, k, v mat-vecs + biases {name}"),
            1e-8,
            Box::new(move |be| {
                let xi = be.alloc_tensor(1, d)?;
                be.write_rows(xi, &x)?;
                let mut outs = Vec::new();
                let mut ids = Vec::new();
                for (&n, (w, bias)) in ns.iter().zip(&ws) {
                    let wid = be.upload_weight(WeightDesc {
                        name: "w",
                        ty,
                        rows: n,
                        cols: d,
                        bytes: w,
                    })?;
                    let bid = be.upload_weight(WeightDesc {
                        name: "b",
                        ty: GgmlType::F32,
                        rows: 1,
                        cols: n,
                        bytes: &f32_bytes(bias),
                    })?;
                    ids.push((wid, bid, be.alloc_tensor(1, n)?));
                }
                let group: Vec<Linear> = ids
                    .iter()
                    .map(|&(weight, bias, out)| Linear {
                        out,
                        weight,
                        bias: Some(bias),
                    })
                    .collect();
                be.linear(xi, &group, 1)?;
                for (&(_, _, o), &n) in ids.iter().zip(&ns) {
                    let mut r = vec![0f32; n];
                    be.read_rows(o, 1, &mut r)?;
                    outs.extend(r);
                }
                Ok(outs)
            }),
        ));
    }
    // The MLP at one row: gate and up mat-vecs, then SwiGLU (`matmul_swiglu`: one fused
    // kernel on CUDA).
    let (ff, d) = (90usize, 512usize);
    for &(ty, name) in WEIGHT_TYPES {
        let (wg, wu) = (
            weight_bytes(ty, &rng.normals(ff * d, 0.5))?,
            weight_bytes(ty, &rng.normals(ff * d, 0.5))?,
        );
        let x = rng.normals(d, 1.0);
        out.push((
            format!("gate, up, swiglu {name}"),
            1e-8,
            Box::new(move |be| {
                let w = |be: &mut dyn ComputeBackend, name, bytes: &[u8]| {
                    be.upload_weight(WeightDesc {
                        name,
                        ty,
                        rows: ff,
                        cols: d,
                        bytes,
                    })
                };
                let (g, u) = (w(be, "gate", &wg)?, w(be, "up", &wu)?);
                let xi = be.alloc_tensor(1, d)?;
                let (gt, ut, at) = (
                    be.alloc_tensor(1, ff)?,
                    be.alloc_tensor(1, ff)?,
                    be.alloc_tensor(1, ff)?,
                );
                be.write_rows(xi, &x)?;
                be.matmul_swiglu(at, xi, (gt, g), (ut, u), 1)?;
                let mut r = vec![0f32; 3 * ff];
                be.read_rows(at, 1, &mut r[..ff])?;
                be.read_rows(gt, 1, &mut r[ff..2 * ff])?;
                be.read_rows(ut, 1, &mut r[2 * ff..])?;
                Ok(r)
            }),
        ));
    }
    // The residual add followed by the RMS norm of its result (`add_rms_norm`: fused on
    // CUDA).
    let (a0, c0, w0) = (
        rng.normals(rows * cols, 1.0),
        rng.normals(rows * cols, 1.0),
        rng.normals(cols, 1.0),
    );
    out.push((
        "add then rms_norm".into(),
        1e-10,
        Box::new(move |be| {
            let w = be.upload_weight(WeightDesc {
                name: "w",
                ty: GgmlType::F32,
                rows: 1,
                cols,
                bytes: &f32_bytes(&w0),
            })?;
            let (a, c, o) = (
                be.alloc_tensor(rows, cols)?,
                be.alloc_tensor(rows, cols)?,
                be.alloc_tensor(rows, cols)?,
            );
            be.write_rows(a, &a0)?;
            be.write_rows(c, &c0)?;
            be.add_rms_norm(o, a, c, w, 1e-6, rows)?;
            let mut r = vec![0f32; 2 * rows * cols];
            be.read_rows(a, rows, &mut r[..rows * cols])?;
            be.read_rows(o, rows, &mut r[rows * cols..])?;
            Ok(r)
        }),
    ));
    // Rope of q then k at the same positions (`rope_qk`: one launch on CUDA).
    for mode in [RopeMode::Normal, RopeMode::Neox] {
        let (hq, hk, hd) = (6usize, 2usize, 64usize);
        let (q0, k0) = (
            rng.normals(rows * hq * hd, 1.0),
            rng.normals(rows * hk * hd, 1.0),
        );
        out.push((
            format!("rope q then k {mode:?}"),
            1e-10,
            Box::new(move |be| {
                let (q, k) = (
                    be.alloc_tensor(rows, hq * hd)?,
                    be.alloc_tensor(rows, hk * hd)?,
                );
                be.write_rows(q, &q0)?;
                be.write_rows(k, &k0)?;
                let pos = be.alloc_index(rows)?;
                be.write_index(pos, &[3, 1, 9, 250, 2047])?;
                let p = |heads| RopeParams {
                    heads,
                    head_dim: hd,
                    n_rot: hd,
                    base: 1_000_000.0,
                    freq_scale: 1.0,
                    mode,
                    yarn: None,
                };
                be.rope_qk(q, k, pos, &p(hq), &p(hk), rows)?;
                let mut r = vec![0f32; rows * (hq + hk) * hd];
                be.read_rows(q, rows, &mut r[..rows * hq * hd])?;
                be.read_rows(k, rows, &mut r[rows * hq * hd..])?;
                Ok(r)
            }),
        ));
    }
    Ok(out)
}

/// `check-ops`: every case on both backends; also the device argmax.
pub fn check_ops(device: Device) -> anyhow::Result<()> {
    let mut gpu = open_cuda(device)?;
    let mut cpu = cpu_backend();
    let (mut failed, mut skipped) = (0, 0);
    let all = cases()?;
    for (name, tol, case) in &all {
        let r = match case(&mut cpu) {
            Ok(r) => r,
            Err(e) => {
                skipped += 1;
                println!("check-ops {name:<40} no CPU reference: {e} [SKIP]");
                continue;
            }
        };
        let (ok, msg) = match case(&mut gpu) {
            Ok(g) => {
                let e = nmse(&g, &r);
                (e <= *tol, format!("nmse {e:.2e} (tolerance {tol:.0e})"))
            }
            Err(ComputeError::UnsupportedType { ty, .. }) if !gpu.supports(ty) => {
                skipped += 1;
                println!("check-ops {name:<40} {ty} needs --cuda-experimental types [SKIP]");
                continue;
            }
            Err(e) => (false, format!("error: {e}")),
        };
        failed += usize::from(!ok);
        println!(
            "check-ops {name:<40} {msg} [{}]",
            if ok { "PASS" } else { "FAIL" }
        );
    }
    let vals = Rng(99).normals(3 * 50_000, 1.0);
    let t = gpu.alloc_tensor(3, 50_000)?;
    gpu.write_rows(t, &vals)?;
    let got = gpu.argmax(t, 3)?;
    let want: Vec<u32> = vals.chunks(50_000).map(argmax).collect();
    let ok = got == want;
    failed += usize::from(!ok);
    println!(
        "check-ops {:<40} {got:?} vs {want:?} [{}]",
        "argmax (device)",
        if ok { "PASS" } else { "FAIL" }
    );
    if failed > 0 {
        bail!(
            "{failed} of {} op checks failed ({skipped} skipped)",
            all.len() + 1
        );
    }
    println!(
        "check-ops: {} cases pass, {skipped} skipped (no CPU reference)",
        all.len() + 1 - skipped
    );
    Ok(())
}
