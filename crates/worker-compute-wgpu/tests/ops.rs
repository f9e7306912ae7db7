//! What the shared op checks (`tests/conformance.rs`, `worker_compute::conformance`) do not
//! cover, on the wgpu backend against the CPU backend (f32 activations), on fresh random
//! inputs compared by normalized squared error (error energy over reference energy, as
//! llama.cpp's test-backend-ops): the switch from the mat-vec to the tiled matmul on a
//! partial tile, weights split over several buffers, rope of part of each head, attention
//! through scattered and shared blocks with two sequences in one call (f32 and f16 entries,
//! head sizes 32 to 256), one submission per step, and errors for bad calls. Runs on whatever
//! adapter wgpu finds: in CI, Mesa's lavapipe.
//!
//! Tolerances, by what can differ between the two backends:
//! - [`EXACT`] (1e-12): the same f32 operations in the same order (rows copied or
//!   dequantized, rope from the same host-computed angles). Only fused multiply-adds the
//!   shader compiler may form can differ.
//! - [`SUMS`] (1e-9): reductions in another order (dot products of a few hundred terms):
//!   each output is off by a few f32 roundings, about 1e-7 relative, so the error energy is
//!   around 1e-13 of the signal's; 1e-9 still catches a single wrong element of a thousand
//!   (about 1e-3).
//! - [`F16_KV`] (1e-6): attention over f16 cache entries on both sides; WGSL leaves the
//!   rounding of `pack2x16float` to the implementation, so an entry may differ by one f16
//!   step (2^-11 relative) from the CPU's round-to-nearest-even.

mod support;

use support::{f32_bytes, gpu, gpu_with, run_cases, weight_bytes, Case};
use worker_compute::{
    AttentionParams, ComputeBackend, ComputeError, KvCacheConfig, KvIndex, KvType, RopeMode,
    RopeParams, WeightDesc, Yarn, KV_BLOCK,
};
use worker_compute_wgpu::{WgpuConfig, MATVEC_MAX_ROWS, WEIGHT_TYPES};
use worker_gguf::GgmlType;
use worker_testdata::Rng;

const EXACT: f64 = 1e-12;
const SUMS: f64 = 1e-9;
const F16_KV: f64 = 1e-6;

fn upload(
    be: &mut dyn ComputeBackend,
    name: &str,
    ty: GgmlType,
    (rows, cols): (usize, usize),
    bytes: &[u8],
) -> worker_compute::Result<worker_compute::WeightId> {
    be.upload_weight(WeightDesc {
        name,
        ty,
        rows,
        cols,
        bytes,
    })
}

/// `rows` rows of `x` times the `n` x `k` weight `w` of type `ty`.
fn matmul_case(ty: GgmlType, (n, k, rows): (usize, usize, usize), w: Vec<u8>, x: Vec<f32>) -> Case {
    Box::new(move |be| {
        let wid = upload(be, "w", ty, (n, k), &w)?;
        let (xi, o) = (be.alloc_tensor(rows, k)?, be.alloc_tensor(rows, n)?);
        be.write_rows(xi, &x)?;
        be.matmul(o, xi, wid, rows)?;
        let mut r = vec![0f32; rows * n];
        be.read_rows(o, rows, &mut r)?;
        Ok(r)
    })
}

/// Rows `ids` of the `n` x `k` table `w` of type `ty`.
fn embed_case(ty: GgmlType, (n, k): (usize, usize), w: Vec<u8>, ids: Vec<u32>) -> Case {
    Box::new(move |be| {
        let wid = upload(be, "t", ty, (n, k), &w)?;
        let (ix, o) = (be.alloc_index(ids.len())?, be.alloc_tensor(ids.len(), k)?);
        be.write_index(ix, &ids)?;
        be.embed(o, wid, ix, ids.len())?;
        let mut r = vec![0f32; ids.len() * k];
        be.read_rows(o, ids.len(), &mut r)?;
        Ok(r)
    })
}

#[test]
fn matmul_of_every_weight_type_matches_the_cpu_across_the_tiled_switch() {
    // 72 output columns: two whole 32-column tiles and a partial one (the shared cases have
    // whole tiles), at the last row count of the mat-vec and the first of the tiled kernel,
    // which is taken from there whatever the adapter.
    let mut rng = Rng::new();
    let (n, k) = (72usize, 512usize);
    let mut cases: Vec<(String, f64, Case)> = Vec::new();
    for &(ty, _) in WEIGHT_TYPES {
        let w = weight_bytes(ty, &rng.normals(n * k));
        for rows in [MATVEC_MAX_ROWS, MATVEC_MAX_ROWS + 1] {
            let x = rng.normals(rows * k);
            cases.push((
                format!("matmul {ty} rows={rows}"),
                SUMS,
                matmul_case(ty, (n, k, rows), w.clone(), x),
            ));
        }
    }
    let mut gpu = gpu_with(WgpuConfig {
        tiled_min_rows: Some(MATVEC_MAX_ROWS + 1),
        ..WgpuConfig::default()
    });
    run_cases(&mut gpu, cases);
}

#[test]
fn a_weight_split_into_parts_matches_the_cpu() {
    // Parts of 3 rows of Q4_K (144 bytes a row here): 10 rows in 4 parts, as the adapter's
    // binding limit splits Qwen2.5's output matrix on lavapipe.
    let mut rng = Rng::new();
    let (n, k, ty) = (10usize, 256usize, GgmlType::Q4_K);
    let w = weight_bytes(ty, &rng.normals(n * k));
    let mut cases: Vec<(String, f64, Case)> = Vec::new();
    for rows in [1, 2 * MATVEC_MAX_ROWS] {
        let x = rng.normals(rows * k);
        cases.push((
            format!("matmul in parts rows={rows}"),
            SUMS,
            matmul_case(ty, (n, k, rows), w.clone(), x),
        ));
    }
    let ids = vec![9, 0, 4, 3, 5, 8];
    cases.push((
        "embed in parts".into(),
        EXACT,
        embed_case(ty, (n, k), w, ids),
    ));
    let mut gpu = gpu_with(WgpuConfig {
        max_part_bytes: Some(3 * 144 + 16),
        tiled_min_rows: Some(MATVEC_MAX_ROWS + 1),
        ..WgpuConfig::default()
    });
    run_cases(&mut gpu, cases);
}

fn rope_cases(rng: &mut Rng) -> Vec<(String, f64, Case)> {
    let mut out: Vec<(String, f64, Case)> = Vec::new();
    let yarn = Yarn {
        original_context: 4096,
        beta_fast: 32.0,
        beta_slow: 1.0,
        ext_factor: 1.0,
        attn_factor: 1.0,
    };
    let rows = 5usize;
    // Part of each head rotated (the shared cases rotate whole heads), a scaled frequency,
    // YaRN, and positions up to 31999.
    for (mode, n_rot, freq_scale, yarn) in [
        (RopeMode::Neox, 32, 0.25, None),
        (RopeMode::Normal, 48, 1.0, None),
        (RopeMode::Neox, 48, 0.125, Some(yarn)),
    ] {
        let (hq, hk, hd) = (6usize, 2usize, 64usize);
        let (q0, k0) = (rng.normals(rows * hq * hd), rng.normals(rows * hk * hd));
        out.push((
            format!(
                "rope {mode:?} n_rot={n_rot} freq_scale={freq_scale} yarn={}",
                yarn.is_some()
            ),
            EXACT,
            Box::new(move |be| {
                let (q, k) = (
                    be.alloc_tensor(rows, hq * hd)?,
                    be.alloc_tensor(rows, hk * hd)?,
                );
                be.write_rows(q, &q0)?;
                be.write_rows(k, &k0)?;
                let pos = be.alloc_index(rows)?;
                be.write_index(pos, &[3, 0, 9, 250, 31_999])?;
                let p = |heads| RopeParams {
                    heads,
                    head_dim: hd,
                    n_rot,
                    base: 1_000_000.0,
                    freq_scale,
                    mode,
                    yarn,
                };
                be.rope(q, pos, &p(hq), rows)?;
                be.rope(k, pos, &p(hk), rows)?;
                let mut r = vec![0f32; rows * (hq + hk) * hd];
                be.read_rows(q, rows, &mut r[..rows * hq * hd])?;
                be.read_rows(k, rows, &mut r[rows * hq * hd..])?;
                Ok(r)
            }),
        ));
    }
    out
}

#[test]
fn rope_of_part_of_each_head_matches_the_cpu() {
    let mut rng = Rng::new();
    run_cases(&mut gpu(), rope_cases(&mut rng));
}

/// The shape of an attention test.
#[derive(Clone, Copy)]
struct AttnShape {
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    window: Option<usize>,
    ty: KvType,
}

/// Two sequences in a paged cache whose blocks are scattered over the pool: sequence 0
/// prefills 40 positions in two chunks; sequence 1 shares its first two blocks (a cached
/// prefix of 32 positions) and prefills 32..50; then both decode three steps in one call per
/// step, and a last call mixes a chunk of each. Returns every output row.
fn attention_case(rng: &mut Rng, s: AttnShape) -> Case {
    let (heads, kvh, hd) = (s.heads, s.kv_heads, s.head_dim);
    // (sequence, first position, rows) of each call, in order.
    let calls: Vec<Vec<(u32, u32, usize)>> = vec![
        vec![(0, 0, 23)],
        vec![(0, 23, 17)],
        vec![(1, 32, 18)],
        vec![(0, 40, 1), (1, 50, 1)],
        vec![(1, 51, 1), (0, 41, 1)],
        vec![(0, 42, 1), (1, 52, 1)],
        vec![(0, 43, 5), (1, 53, 3)],
    ];
    let total: usize = calls.iter().flatten().map(|c| c.2).sum();
    let (q, k, v) = (
        rng.normals(total * heads * hd),
        rng.normals(total * kvh * hd),
        rng.normals(total * kvh * hd),
    );
    Box::new(move |be| {
        let seq_blocks = 5usize;
        let cfg = KvCacheConfig {
            layers: 2,
            blocks: 12,
            seqs: 2,
            seq_blocks,
            kv_heads: kvh,
            head_dim: hd,
            value_head_dim: hd,
            ty: be.kv_storage(s.ty),
        };
        let cache = be.alloc_kv_cache(cfg)?;
        let table = be.alloc_index(cfg.seqs * seq_blocks)?;
        // Sequence 1 starts with sequence 0's first two blocks.
        be.write_index(table, &[7, 2, 11, 0, 5, 7, 2, 9, 4, 1])?;
        let p = AttentionParams {
            heads,
            kv_heads: kvh,
            head_dim: hd,
            value_head_dim: hd,
            scale: 1.0 / (hd as f32).sqrt(),
            layer: 1,
            window: s.window,
            sinks: None,
        };
        let most = calls
            .iter()
            .map(|c| c.iter().map(|x| x.2).sum::<usize>())
            .max()
            .unwrap_or(1);
        let (qt, kt, vt, o) = (
            be.alloc_tensor(most, heads * hd)?,
            be.alloc_tensor(most, kvh * hd)?,
            be.alloc_tensor(most, kvh * hd)?,
            be.alloc_tensor(most, heads * hd)?,
        );
        let (pos, seq) = (be.alloc_index(most)?, be.alloc_index(most)?);
        let index = KvIndex {
            positions: pos,
            seqs: seq,
            block_table: table,
        };
        let mut res = Vec::new();
        let mut done = 0usize;
        for call in &calls {
            let nr: usize = call.iter().map(|c| c.2).sum();
            let positions: Vec<u32> = call
                .iter()
                .flat_map(|&(_, p0, n)| p0..p0 + n as u32)
                .collect();
            let seqs: Vec<u32> = call.iter().flat_map(|&(s, _, n)| vec![s; n]).collect();
            let range = done..done + nr;
            be.write_rows(qt, &q[range.start * heads * hd..range.end * heads * hd])?;
            be.write_rows(kt, &k[range.start * kvh * hd..range.end * kvh * hd])?;
            be.write_rows(vt, &v[range.start * kvh * hd..range.end * kvh * hd])?;
            be.write_index(pos, &positions)?;
            be.write_index(seq, &seqs)?;
            be.attention(o, qt, kt, vt, cache, &index, &p, nr)?;
            let mut r = vec![0f32; nr * heads * hd];
            be.read_rows(o, nr, &mut r)?;
            res.extend(r);
            done += nr;
        }
        Ok(res)
    })
}

fn attention_cases(rng: &mut Rng) -> Vec<(String, f64, Case)> {
    let mut out: Vec<(String, f64, Case)> = Vec::new();
    for (heads, kv_heads, head_dim, window) in [
        (8, 2, 64, None),
        (4, 4, 32, None),
        (4, 1, 256, Some(20)),
        (6, 3, 128, Some(7)),
    ] {
        for (ty, tol) in [(KvType::F32, SUMS), (KvType::F16, F16_KV)] {
            let s = AttnShape {
                heads,
                kv_heads,
                head_dim,
                window,
                ty,
            };
            out.push((
                format!(
                    "attention {heads}/{kv_heads} heads of {head_dim}, window {window:?}, {}",
                    ty.as_str()
                ),
                tol,
                attention_case(rng, s),
            ));
        }
    }
    out
}

#[test]
fn paged_attention_matches_the_cpu() {
    let mut rng = Rng::new();
    run_cases(&mut gpu(), attention_cases(&mut rng));
}

#[test]
fn a_step_is_one_submission() {
    let mut gpu = gpu();
    let mut rng = Rng::new();
    let (rows, k, n) = (3usize, 256usize, 64usize);
    let w = weight_bytes(GgmlType::Q8_0, &rng.normals(n * k));
    let wid = upload(&mut gpu, "w", GgmlType::Q8_0, (n, k), &w).unwrap();
    let norm = upload(
        &mut gpu,
        "n",
        GgmlType::F32,
        (1, k),
        &f32_bytes(&rng.normals(k)),
    )
    .unwrap();
    let (x, h, o) = (
        gpu.alloc_tensor(rows, k).unwrap(),
        gpu.alloc_tensor(rows, k).unwrap(),
        gpu.alloc_tensor(rows, n).unwrap(),
    );
    gpu.write_rows(x, &rng.normals(rows * k)).unwrap();
    let mut out = vec![0f32; rows * n];
    for _ in 0..2 {
        let (d0, s0) = gpu.counters();
        gpu.rms_norm(h, x, norm, 1e-5, rows).unwrap();
        gpu.matmul(o, h, wid, rows).unwrap();
        gpu.gelu(o, rows).unwrap();
        gpu.read_rows(o, rows, &mut out).unwrap();
        let (d1, s1) = gpu.counters();
        assert_eq!(
            (d1 - d0, s1 - s0),
            (3, 1),
            "three dispatches, one submission"
        );
    }
}

#[test]
fn bad_calls_are_errors() {
    let mut gpu = gpu();
    // A type without a kernel is refused at upload, naming the tensor and the type.
    let mxfp4 = vec![0u8; GgmlType::MXFP4.bytes_for(256).unwrap() as usize * 2];
    let e = upload(
        &mut gpu,
        "blk.0.ffn_down_exps.weight",
        GgmlType::MXFP4,
        (2, 256),
        &mxfp4,
    )
    .unwrap_err();
    assert!(
        matches!(
            e,
            ComputeError::UnsupportedType {
                ty: GgmlType::MXFP4,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("blk.0.ffn_down_exps.weight"), "{e}");
    assert!(e.to_string().contains("MXFP4"), "{e}");
    // Rows whose length is not a multiple of 4, rows of part of a block, too few bytes.
    let e = upload(&mut gpu, "odd", GgmlType::F32, (2, 6), &[0u8; 48]).unwrap_err();
    assert!(matches!(e, ComputeError::BadWeight { .. }), "{e}");
    let e = upload(&mut gpu, "part", GgmlType::Q4_0, (2, 48), &[0u8; 54]).unwrap_err();
    assert!(matches!(e, ComputeError::BadWeight { .. }), "{e}");
    let e = upload(&mut gpu, "short", GgmlType::Q4_0, (2, 32), &[0u8; 35]).unwrap_err();
    assert!(e.to_string().contains("35 bytes"), "{e}");
    let w = upload(&mut gpu, "t", GgmlType::F32, (4, 8), &[0u8; 128]).unwrap();
    let (ids, o) = (gpu.alloc_index(2).unwrap(), gpu.alloc_tensor(2, 8).unwrap());
    gpu.write_index(ids, &[1, 4]).unwrap();
    let e = gpu.embed(o, w, ids, 2).unwrap_err();
    assert!(matches!(e, ComputeError::BadIndex { .. }), "{e}");
    let x = gpu.alloc_tensor(2, 8).unwrap();
    assert!(matches!(
        gpu.matmul(x, x, w, 2),
        Err(ComputeError::Aliased { .. })
    ));
    assert!(matches!(
        gpu.matmul(o, x, w, 3),
        Err(ComputeError::Shape { .. })
    ));
    // A position past the table, and a block outside the pool.
    let cfg = KvCacheConfig {
        layers: 1,
        blocks: 2,
        seqs: 1,
        seq_blocks: 2,
        kv_heads: 1,
        head_dim: 8,
        value_head_dim: 8,
        ty: KvType::F16,
    };
    let cache = gpu.alloc_kv_cache(cfg).unwrap();
    let (pos, seq, table) = (
        gpu.alloc_index(1).unwrap(),
        gpu.alloc_index(1).unwrap(),
        gpu.alloc_index(2).unwrap(),
    );
    gpu.write_index(table, &[0, 1]).unwrap();
    let p = AttentionParams {
        heads: 1,
        kv_heads: 1,
        head_dim: 8,
        value_head_dim: 8,
        scale: 1.0,
        layer: 0,
        window: None,
        sinks: None,
    };
    let (q, k, v, out) = (
        gpu.alloc_tensor(1, 8).unwrap(),
        gpu.alloc_tensor(1, 8).unwrap(),
        gpu.alloc_tensor(1, 8).unwrap(),
        gpu.alloc_tensor(1, 8).unwrap(),
    );
    let index = KvIndex {
        positions: pos,
        seqs: seq,
        block_table: table,
    };
    gpu.write_index(pos, &[2 * KV_BLOCK as u32]).unwrap();
    let e = gpu
        .attention(out, q, k, v, cache, &index, &p, 1)
        .unwrap_err();
    assert!(matches!(e, ComputeError::BadIndex { .. }), "{e}");
    gpu.write_index(pos, &[KV_BLOCK as u32]).unwrap();
    gpu.write_index(table, &[0, 2]).unwrap();
    let e = gpu
        .attention(out, q, k, v, cache, &index, &p, 1)
        .unwrap_err();
    assert!(matches!(e, ComputeError::BadIndex { .. }), "{e}");
    // After all that, the device still works.
    gpu.write_rows(x, &[1.0; 16]).unwrap();
    gpu.scale(x, 2.0, 2).unwrap();
    let mut r = [0f32; 16];
    gpu.read_rows(x, 2, &mut r).unwrap();
    assert_eq!(r, [2.0; 16]);
}
