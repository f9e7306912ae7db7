//! The cases of [`super::check_ops`]: each builds its inputs on the backend it is given, runs
//! the op, and returns what it read back.

use worker_gguf::GgmlType;

use crate::cpu::quant::SUPPORTED_TYPES;
use crate::{
    AttentionParams, ComputeBackend, ComputeError, ExpertActivation, ExpertWeights, KvCacheConfig,
    KvIndex, KvType, Linear, MoeParams, Result, RopeMode, RopeParams, WeightDesc, WeightId, Yarn,
    KV_BLOCK,
};

/// One case: its name, its tolerance, and the run that returns what the op computed.
pub(super) struct Case {
    pub name: String,
    pub tolerance: f64,
    #[allow(clippy::type_complexity)]
    pub run: Box<dyn Fn(&mut dyn ComputeBackend) -> Result<Vec<f32>>>,
}

fn case(
    name: impl Into<String>,
    tolerance: f64,
    run: impl Fn(&mut dyn ComputeBackend) -> Result<Vec<f32>> + 'static,
) -> Case {
    Case {
        name: name.into(),
        tolerance,
        run: Box::new(run),
    }
}

/// Exact ops: the same arithmetic in another order at most.
const EXACT: f64 = 1e-10;
/// Products of a few rows (f32 accumulation in another order).
const PRODUCT: f64 = 1e-8;
/// Products of 32 rows or more, which a GPU may run on tensor cores in TF32.
const PRODUCT_TF32: f64 = 1e-6;
/// Attention (a softmax over many positions, f16 cache entries).
const ATTENTION: f64 = 1e-5;

/// Normal random numbers (xorshift + Box-Muller), from a fixed seed.
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

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// `v` stored as `ty`: quantized where worker-gguf has a quantizer; IQ4 blocks (which it
/// has not) take their codes and IQ4_XS sub-block scales from the bits of `v`, with the f16
/// scale of each block fixed so that values stay within about ±1.
fn weight_bytes(ty: GgmlType, v: &[f32]) -> std::result::Result<Vec<u8>, String> {
    match ty {
        GgmlType::IQ4_NL | GgmlType::IQ4_XS => {
            let n = ty
                .bytes_for(v.len() as u64)
                .ok_or_else(|| format!("{} values are not whole {ty} blocks", v.len()))?;
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
        _ => worker_gguf::quantize(ty, v).map_err(|e| e.to_string()),
    }
}

/// Uploads `rows` x `cols` of `bytes` in `ty`; bytes that could not be made are a
/// [`ComputeError::BadWeight`] on both backends, so the case reports no reference.
fn upload(
    be: &mut dyn ComputeBackend,
    name: &str,
    ty: GgmlType,
    (rows, cols): (usize, usize),
    bytes: &std::result::Result<Vec<u8>, String>,
) -> Result<WeightId> {
    let bytes = bytes.as_ref().map_err(|reason| ComputeError::BadWeight {
        name: name.to_string(),
        reason: reason.clone(),
    })?;
    be.upload_weight(WeightDesc {
        name,
        ty,
        rows,
        cols,
        bytes,
    })
}

/// An f32 vector weight.
fn upload_vector(be: &mut dyn ComputeBackend, name: &str, v: &[f32]) -> Result<WeightId> {
    be.upload_weight(WeightDesc {
        name,
        ty: GgmlType::F32,
        rows: 1,
        cols: v.len(),
        bytes: &f32_bytes(v),
    })
}

/// A fresh tensor holding `data` (`rows` rows).
fn input(be: &mut dyn ComputeBackend, rows: usize, data: &[f32]) -> Result<crate::TensorId> {
    let t = be.alloc_tensor(rows, data.len() / rows.max(1))?;
    be.write_rows(t, data)?;
    Ok(t)
}

/// Reads `rows` rows of `cols` of each tensor, in order.
fn read(
    be: &mut dyn ComputeBackend,
    rows: usize,
    tensors: &[(crate::TensorId, usize)],
) -> Result<Vec<f32>> {
    let mut out = Vec::new();
    for &(t, cols) in tensors {
        let mut r = vec![0f32; rows * cols];
        be.read_rows(t, rows, &mut r)?;
        out.extend(r);
    }
    Ok(out)
}

/// Every case, in a fixed order with fixed inputs.
pub(super) fn all() -> Vec<Case> {
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let mut out = Vec::new();
    products(&mut rng, &mut out);
    row_ops(&mut rng, &mut out);
    ropes(&mut rng, &mut out);
    attentions(&mut rng, &mut out);
    fused(&mut rng, &mut out);
    out.push(moe_case(&mut rng));
    models(&mut rng, &mut out);
    out
}

/// Every weight type: matmuls of 1, 19 and 67 rows, one weight larger than a GPU's
/// dequantized tile, embedding rows, and a one-row product with its bias over rows longer
/// than one pass of a warp's lanes.
fn products(rng: &mut Rng, out: &mut Vec<Case>) {
    let (k, n) = (512usize, 96usize);
    for ty in SUPPORTED_TYPES {
        let name = ty.name().to_lowercase();
        let w = weight_bytes(ty, &rng.normals(n * k, 0.5));
        for rows in [1usize, 19, 67] {
            let (x, w) = (rng.normals(rows * k, 1.0), w.clone());
            let tol = if rows >= 32 { PRODUCT_TF32 } else { PRODUCT };
            out.push(case(format!("matmul {name} rows={rows}"), tol, move |be| {
                let wid = upload(be, "w", ty, (n, k), &w)?;
                let (xi, o) = (input(be, rows, &x)?, be.alloc_tensor(rows, n)?);
                be.matmul(o, xi, wid, rows)?;
                read(be, rows, &[(o, n)])
            }));
        }
        if ty == GgmlType::Q4_0 {
            // More weights than a 16M-element tile, so a GPU's tiled prefill multiplies the
            // matrix in two tiles, the second a partial one.
            let (rows, n) = (67usize, 40_000usize);
            let w = weight_bytes(ty, &rng.normals(n * k, 0.5));
            let x = rng.normals(rows * k, 1.0);
            out.push(case(
                format!("matmul {name} rows={rows} n={n}"),
                PRODUCT_TF32,
                move |be| {
                    let wid = upload(be, "w", ty, (n, k), &w)?;
                    let (xi, o) = (input(be, rows, &x)?, be.alloc_tensor(rows, n)?);
                    be.matmul(o, xi, wid, rows)?;
                    read(be, rows, &[(o, n)])
                },
            ));
        }
        out.push(case(format!("embed {name}"), EXACT, move |be| {
            let wid = upload(be, "t", ty, (n, k), &w)?;
            let (ids, o) = (be.alloc_index(4)?, be.alloc_tensor(4, k)?);
            be.write_index(ids, &[0, 5, 95, 17])?;
            be.embed(o, wid, ids, 4)?;
            read(be, 4, &[(o, k)])
        }));
        let n = 71usize;
        let k = if ty.block_size() == 256 { 2304 } else { 2400 };
        let w = weight_bytes(ty, &rng.normals(n * k, 0.5));
        let (x, bias) = (rng.normals(k, 1.0), rng.normals(n, 1.0));
        out.push(case(
            format!("linear {name} k={k} rows=1 + bias"),
            PRODUCT,
            move |be| {
                let weight = upload(be, "w", ty, (n, k), &w)?;
                let bias = Some(upload_vector(be, "b", &bias)?);
                let (xi, o) = (input(be, 1, &x)?, be.alloc_tensor(1, n)?);
                be.linear(
                    xi,
                    &[Linear {
                        out: o,
                        weight,
                        bias,
                    }],
                    1,
                )?;
                read(be, 1, &[(o, n)])
            },
        ));
    }
}

/// The row ops on 5 rows of 320 (and 5 heads of 64).
fn row_ops(rng: &mut Rng, out: &mut Vec<Case>) {
    let (rows, cols) = (5usize, 320usize);
    for op in [
        "rms_norm",
        "rms_norm_heads",
        "layer_norm",
        "add",
        "add_bias",
        "mul",
        "scale",
        "swiglu",
        "gelu",
        "gather_rows",
    ] {
        let (x, y) = (rng.normals(rows * cols, 1.0), rng.normals(rows * cols, 1.0));
        let (wv, bv, hv) = (
            rng.normals(cols, 1.0),
            rng.normals(cols, 1.0),
            rng.normals(64, 1.0),
        );
        out.push(case(op, EXACT, move |be| {
            let (w, b, hw) = (
                upload_vector(be, "w", &wv)?,
                upload_vector(be, "b", &bv)?,
                upload_vector(be, "h", &hv)?,
            );
            let (a, c) = (input(be, rows, &x)?, input(be, rows, &y)?);
            let o = be.alloc_tensor(rows, cols)?;
            let idx = be.alloc_index(3)?;
            be.write_index(idx, &[4, 0, 2])?;
            let res = match op {
                "rms_norm" => {
                    be.rms_norm(o, a, w, 1e-6, rows)?;
                    o
                }
                "rms_norm_heads" => {
                    be.rms_norm_heads(a, hw, 1e-6, cols / 64, rows)?;
                    a
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
                "scale" => {
                    be.scale(a, 0.37, rows)?;
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
                    return read(be, 3, &[(o, cols)]);
                }
            };
            read(be, rows, &[(res, cols)])
        }));
    }
}

fn rope_params(heads: usize, mode: RopeMode, base: f32, yarn: Option<Yarn>) -> RopeParams {
    RopeParams {
        heads,
        head_dim: 64,
        n_rot: 64,
        base,
        freq_scale: if yarn.is_some() { 0.25 } else { 1.0 },
        mode,
        yarn,
    }
}

/// Rope in both pair layouts at positions up to 4095, and YaRN.
fn ropes(rng: &mut Rng, out: &mut Vec<Case>) {
    let rows = 5usize;
    let yarn = Yarn {
        original_context: 4096,
        beta_fast: 32.0,
        beta_slow: 1.0,
        ext_factor: 1.0,
        attn_factor: 1.0,
    };
    for (name, mode, yarn) in [
        ("rope Normal", RopeMode::Normal, None),
        ("rope Neox", RopeMode::Neox, None),
        ("rope Neox yarn", RopeMode::Neox, Some(yarn)),
    ] {
        let heads = 4usize;
        let x = rng.normals(rows * heads * 64, 1.0);
        out.push(case(name, EXACT, move |be| {
            let t = input(be, rows, &x)?;
            let pos = be.alloc_index(rows)?;
            be.write_index(pos, &[0, 1, 7, 300, 4095])?;
            be.rope(t, pos, &rope_params(heads, mode, 10_000.0, yarn), rows)?;
            read(be, rows, &[(t, heads * 64)])
        }));
    }
}

/// What an attention case varies.
#[derive(Clone, Copy)]
struct AttentionShape {
    /// Rows stored before the decode steps, and the chunk they come in.
    pre: usize,
    chunk: usize,
    /// Single rows after them.
    steps: usize,
    window: Option<usize>,
    sinks: bool,
}

/// GQA attention (8 query heads over 2 kv heads of 64): `pre` rows in chunks of `chunk`,
/// then `steps` single rows, in the second of two sequences; returns every output row.
fn attention_case(rng: &mut Rng, s: AttentionShape) -> Case {
    let (heads, kvh, hd) = (8usize, 2usize, 64usize);
    let total = s.pre + s.steps;
    let (q, k, v) = (
        rng.normals(total * heads * hd, 1.0),
        rng.normals(total * kvh * hd, 1.0),
        rng.normals(total * kvh * hd, 1.0),
    );
    let sink_logits = rng.normals(heads, 1.0);
    let mut name = format!(
        "attention gqa 8/2 prefill {} in chunks of {} + decode {}",
        s.pre, s.chunk, s.steps
    );
    if let Some(w) = s.window {
        name.push_str(&format!(" window {w}"));
    }
    if s.sinks {
        name.push_str(" sinks");
    }
    case(name, ATTENTION, move |be| {
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
        let sinks = match s.sinks {
            true => Some(upload_vector(be, "sinks", &sink_logits)?),
            false => None,
        };
        let p = AttentionParams {
            heads,
            kv_heads: kvh,
            head_dim: hd,
            value_head_dim: hd,
            scale: 0.125,
            layer: 1,
            window: s.window,
            sinks,
        };
        let (qt, kt, vt, o) = (
            be.alloc_tensor(s.pre, heads * hd)?,
            be.alloc_tensor(s.pre, kvh * hd)?,
            be.alloc_tensor(s.pre, kvh * hd)?,
            be.alloc_tensor(s.pre, heads * hd)?,
        );
        let (pos, slot) = (be.alloc_index(s.pre)?, be.alloc_index(s.pre)?);
        let mut res = Vec::new();
        let chunks = (0..s.pre)
            .step_by(s.chunk)
            .map(|t| t..(t + s.chunk).min(s.pre));
        for range in chunks.chain((s.pre..total).map(|t| t..t + 1)) {
            let nr = range.len();
            be.write_rows(qt, &q[range.start * heads * hd..range.end * heads * hd])?;
            be.write_rows(kt, &k[range.start * kvh * hd..range.end * kvh * hd])?;
            be.write_rows(vt, &v[range.start * kvh * hd..range.end * kvh * hd])?;
            be.write_index(pos, &range.clone().map(|t| t as u32).collect::<Vec<_>>())?;
            be.write_index(slot, &vec![1; nr])?;
            let index = KvIndex {
                positions: pos,
                seqs: slot,
                block_table: table,
            };
            be.attention(o, qt, kt, vt, cache, &index, &p, nr)?;
            res.extend(read(be, nr, &[(o, heads * hd)])?);
        }
        Ok(res)
    })
}

/// A prefill (the batched kernels), then decode steps one row at a time, reading what both
/// stored. 600 positions span more than one round of a decode kernel's warps; a chunked
/// prefill's second chunk starts at position 40 and reads what the first one stored.
fn attentions(rng: &mut Rng, out: &mut Vec<Case>) {
    let plain = AttentionShape {
        pre: 6,
        chunk: 6,
        steps: 1,
        window: None,
        sinks: false,
    };
    for s in [
        plain,
        AttentionShape {
            pre: 70,
            chunk: 70,
            steps: 3,
            ..plain
        },
        AttentionShape {
            pre: 70,
            chunk: 40,
            steps: 1,
            ..plain
        },
        AttentionShape {
            pre: 600,
            chunk: 600,
            steps: 2,
            ..plain
        },
        AttentionShape {
            pre: 40,
            chunk: 24,
            steps: 2,
            window: Some(16),
            ..plain
        },
        AttentionShape {
            pre: 40,
            chunk: 24,
            steps: 2,
            sinks: true,
            ..plain
        },
    ] {
        out.push(attention_case(rng, s));
    }
}

/// The fused ops at the shapes their fused kernels take: q, k and v of one input with their
/// biases (one and seven rows), the gate and up projections with SwiGLU, the residual add
/// with the RMS norm of its result, and the q and k ropes at the same positions.
fn fused(rng: &mut Rng, out: &mut Vec<Case>) {
    let d = 512usize;
    let ns = [96usize, 32, 32];
    for ty in SUPPORTED_TYPES {
        let name = ty.name().to_lowercase();
        let ws: Vec<_> = ns
            .iter()
            .map(|&n| {
                (
                    weight_bytes(ty, &rng.normals(n * d, 0.5)),
                    rng.normals(n, 1.0),
                )
            })
            .collect();
        for rows in [1usize, 7] {
            let (x, ws) = (rng.normals(rows * d, 1.0), ws.clone());
            out.push(case(
                format!("linear q, k, v + biases {name} rows={rows}"),
                PRODUCT,
                move |be| {
                    let xi = input(be, rows, &x)?;
                    let mut group = Vec::new();
                    for (&n, (w, bias)) in ns.iter().zip(&ws) {
                        group.push(Linear {
                            weight: upload(be, "w", ty, (n, d), w)?,
                            bias: Some(upload_vector(be, "b", bias)?),
                            out: be.alloc_tensor(rows, n)?,
                        });
                    }
                    be.linear(xi, &group, rows)?;
                    let outs: Vec<_> = group.iter().zip(ns).map(|(l, n)| (l.out, n)).collect();
                    read(be, rows, &outs)
                },
            ));
        }
        let ff = 90usize;
        let (wg, wu) = (
            weight_bytes(ty, &rng.normals(ff * d, 0.5)),
            weight_bytes(ty, &rng.normals(ff * d, 0.5)),
        );
        let x = rng.normals(d, 1.0);
        out.push(case(format!("matmul_swiglu {name}"), PRODUCT, move |be| {
            let (g, u) = (
                upload(be, "gate", ty, (ff, d), &wg)?,
                upload(be, "up", ty, (ff, d), &wu)?,
            );
            let xi = input(be, 1, &x)?;
            let (gt, ut, at) = (
                be.alloc_tensor(1, ff)?,
                be.alloc_tensor(1, ff)?,
                be.alloc_tensor(1, ff)?,
            );
            be.matmul_swiglu(at, xi, (gt, g), (ut, u), 1)?;
            read(be, 1, &[(at, ff), (gt, ff), (ut, ff)])
        }));
    }
    let (rows, cols) = (5usize, 320usize);
    let (a0, c0, w0) = (
        rng.normals(rows * cols, 1.0),
        rng.normals(rows * cols, 1.0),
        rng.normals(cols, 1.0),
    );
    out.push(case("add_rms_norm", EXACT, move |be| {
        let w = upload_vector(be, "w", &w0)?;
        let (a, c) = (input(be, rows, &a0)?, input(be, rows, &c0)?);
        let o = be.alloc_tensor(rows, cols)?;
        be.add_rms_norm(o, a, c, w, 1e-6, rows)?;
        read(be, rows, &[(a, cols), (o, cols)])
    }));
    for mode in [RopeMode::Normal, RopeMode::Neox] {
        let (hq, hk) = (6usize, 2usize);
        let (q0, k0) = (
            rng.normals(rows * hq * 64, 1.0),
            rng.normals(rows * hk * 64, 1.0),
        );
        out.push(case(format!("rope_qk {mode:?}"), EXACT, move |be| {
            let (q, k) = (input(be, rows, &q0)?, input(be, rows, &k0)?);
            let pos = be.alloc_index(rows)?;
            be.write_index(pos, &[3, 1, 9, 250, 2047])?;
            let p = |heads| rope_params(heads, mode, 1_000_000.0, None);
            be.rope_qk(q, k, pos, &p(hq), &p(hk), rows)?;
            read(be, rows, &[(q, hq * 64), (k, hk * 64)])
        }));
    }
}

/// What a `moe` case varies.
#[derive(Clone, Copy)]
struct MoeShape {
    rows: usize,
    d: usize,
    ff: usize,
    experts: usize,
    used: usize,
    ty: GgmlType,
    activation: ExpertActivation,
    biases: bool,
    /// Router logits rounded to halves, so that rows hold ties between experts.
    ties: bool,
}

/// A mixture of 4 experts (2 used per row, gpt-oss's clamped SwiGLU, biases) over 3 rows.
fn moe_case(rng: &mut Rng) -> Case {
    moe_shaped(
        rng,
        MoeShape {
            rows: 3,
            d: 64,
            ff: 32,
            experts: 4,
            used: 2,
            ty: GgmlType::Q8_0,
            activation: ExpertActivation::SwigluOai {
                alpha: 1.702,
                limit: 7.0,
            },
            biases: true,
            ties: false,
        },
    )
}

fn moe_shaped(rng: &mut Rng, s: MoeShape) -> Case {
    let MoeShape {
        rows, d, ff, ty, ..
    } = s;
    let experts: Vec<_> = (0..s.experts)
        .map(|_| {
            (
                weight_bytes(ty, &rng.normals(ff * d, 0.3)),
                weight_bytes(ty, &rng.normals(ff * d, 0.3)),
                weight_bytes(ty, &rng.normals(d * ff, 0.3)),
                rng.normals(ff, 0.1),
                rng.normals(ff, 0.1),
                rng.normals(d, 0.1),
            )
        })
        .collect();
    let x = rng.normals(rows * d, 1.0);
    let mut logits = rng.normals(rows * s.experts, 1.0);
    if s.ties {
        logits
            .iter_mut()
            .for_each(|l| *l = (*l * 2.0).round() / 2.0);
    }
    let act = match s.activation {
        ExpertActivation::Swiglu => "swiglu",
        ExpertActivation::SwigluOai { .. } => "swiglu_oai",
    };
    let mut name = format!("moe {} experts, {} used, {act}", s.experts, s.used);
    if ty != GgmlType::Q8_0 || rows != 3 {
        name.push_str(&format!(" {} rows={rows}", ty.name().to_lowercase()));
    }
    if !s.biases {
        name.push_str(" no biases");
    }
    if s.ties {
        name.push_str(" tied logits");
    }
    case(name, PRODUCT, move |be| {
        let mut ews = Vec::new();
        for (g, u, dn, bg, bu, bd) in &experts {
            let bias = |be: &mut dyn ComputeBackend, name, v: &[f32]| match s.biases {
                true => upload_vector(be, name, v).map(Some),
                false => Ok(None),
            };
            ews.push(ExpertWeights {
                gate: upload(be, "gate", ty, (ff, d), g)?,
                up: upload(be, "up", ty, (ff, d), u)?,
                down: upload(be, "down", ty, (d, ff), dn)?,
                gate_bias: bias(be, "gate_bias", bg)?,
                up_bias: bias(be, "up_bias", bu)?,
                down_bias: bias(be, "down_bias", bd)?,
            });
        }
        let (xi, li) = (input(be, rows, &x)?, input(be, rows, &logits)?);
        let o = be.alloc_tensor(rows, d)?;
        let p = MoeParams {
            used: s.used,
            activation: s.activation,
        };
        be.moe(o, xi, li, &ews, &p, rows)?;
        read(be, rows, &[(o, d)])
    })
}

/// What gemma3, qwen3 and gpt-oss add beyond the cases above: gpt-oss's window and sinks
/// together over a window longer than a GPU decode split (positions 0..303, window 128),
/// the fused q and k rope with YaRN, YaRN without its ramp (only the magnitude factor), and
/// mixtures of MXFP4 experts (gpt-oss's 32, 4 used, a prefill's 19 rows) with router ties,
/// and of experts with plain SwiGLU and no biases.
fn models(rng: &mut Rng, out: &mut Vec<Case>) {
    out.push(attention_case(
        rng,
        AttentionShape {
            pre: 300,
            chunk: 100,
            steps: 3,
            window: Some(128),
            sinks: true,
        },
    ));
    let yarn = Yarn {
        original_context: 4096,
        beta_fast: 32.0,
        beta_slow: 1.0,
        ext_factor: 1.0,
        attn_factor: 1.0,
    };
    let rows = 5usize;
    let (hq, hk) = (8usize, 1usize);
    let (q0, k0) = (
        rng.normals(rows * hq * 64, 1.0),
        rng.normals(rows * hk * 64, 1.0),
    );
    out.push(case("rope_qk Neox yarn", EXACT, move |be| {
        let (q, k) = (input(be, rows, &q0)?, input(be, rows, &k0)?);
        let pos = be.alloc_index(rows)?;
        be.write_index(pos, &[0, 2, 127, 128, 4095])?;
        let p = |heads| rope_params(heads, RopeMode::Neox, 150_000.0, Some(yarn));
        be.rope_qk(q, k, pos, &p(hq), &p(hk), rows)?;
        read(be, rows, &[(q, hq * 64), (k, hk * 64)])
    }));
    let x = rng.normals(rows * 4 * 64, 1.0);
    let flat = Yarn {
        ext_factor: 0.0,
        attn_factor: 1.25,
        ..yarn
    };
    out.push(case("rope Normal yarn ext_factor 0", EXACT, move |be| {
        let t = input(be, rows, &x)?;
        let pos = be.alloc_index(rows)?;
        be.write_index(pos, &[0, 1, 7, 300, 4095])?;
        be.rope(
            t,
            pos,
            &rope_params(4, RopeMode::Normal, 10_000.0, Some(flat)),
            rows,
        )?;
        read(be, rows, &[(t, 4 * 64)])
    }));
    let oai = ExpertActivation::SwigluOai {
        alpha: 1.702,
        limit: 7.0,
    };
    for rows in [1usize, 19] {
        let shape = MoeShape {
            rows,
            d: 128,
            ff: 64,
            experts: 32,
            used: 4,
            ty: GgmlType::MXFP4,
            activation: oai,
            biases: true,
            ties: true,
        };
        out.push(moe_shaped(rng, shape));
    }
    out.push(moe_shaped(
        rng,
        MoeShape {
            rows: 5,
            d: 64,
            ff: 96,
            experts: 6,
            used: 3,
            ty: GgmlType::Q8_0,
            activation: ExpertActivation::Swiglu,
            biases: false,
            ties: false,
        },
    ));
}
