//! The argument checks of the experimental `models` path on the recording device of
//! [`crate::launches`]: without the path each new op is refused by name as before; with it a
//! bad call is a typed error (never a panic), and a good one records the kernels it should.

use worker_compute::{
    AttentionParams, ComputeBackend, ComputeError, ExpertActivation, ExpertWeights, KvCacheConfig,
    KvIndex, KvType, MoeParams, RopeMode, RopeParams, TensorId, WeightDesc, WeightId, Yarn,
};
use worker_gguf::GgmlType;

use crate::launches::Recorder;
use crate::{CudaBackend, Experimental};

fn backend(models: bool) -> CudaBackend<Recorder> {
    CudaBackend::on(
        Recorder::default(),
        Experimental {
            models,
            ..Experimental::default()
        },
    )
}

/// A `[rows x cols]` weight of `ty` (zero bytes: the recorder never reads them).
fn weight(be: &mut CudaBackend<Recorder>, ty: GgmlType, rows: usize, cols: usize) -> WeightId {
    let n = ty.bytes_for((rows * cols) as u64).expect("whole blocks") as usize;
    be.upload_weight(WeightDesc {
        name: "w",
        ty,
        rows,
        cols,
        bytes: &vec![0u8; n],
    })
    .expect("the upload")
}

/// `n` experts of `[ff x d]` gates and ups and `[d x ff]` downs of `ty`, with biases.
fn experts(be: &mut CudaBackend<Recorder>, ty: GgmlType, n: usize) -> Vec<ExpertWeights> {
    let (d, ff) = (64, 32);
    (0..n)
        .map(|_| ExpertWeights {
            gate: weight(be, ty, ff, d),
            up: weight(be, ty, ff, d),
            down: weight(be, ty, d, ff),
            gate_bias: Some(weight(be, GgmlType::F32, 1, ff)),
            up_bias: Some(weight(be, GgmlType::F32, 1, ff)),
            down_bias: Some(weight(be, GgmlType::F32, 1, d)),
        })
        .collect()
}

const OAI: MoeParams = MoeParams {
    used: 2,
    activation: ExpertActivation::SwigluOai {
        alpha: 1.702,
        limit: 7.0,
    },
};

/// Output, input and router logits for `rows` rows of 64 over `n` experts.
fn moe_tensors(be: &mut CudaBackend<Recorder>, rows: usize, n: usize) -> [TensorId; 3] {
    [
        be.alloc_tensor(rows, 64).expect("out"),
        be.alloc_tensor(rows, 64).expect("x"),
        be.alloc_tensor(rows, n).expect("logits"),
    ]
}

#[test]
fn moe_is_refused_by_name_without_the_path_and_records_four_kernels_with_it() {
    let mut be = backend(false);
    let ex = experts(&mut be, GgmlType::Q8_0, 4);
    let [o, x, l] = moe_tensors(&mut be, 3, 4);
    let err = be.moe(o, x, l, &ex, &OAI, 3).unwrap_err();
    assert!(
        matches!(err, ComputeError::Unsupported { op: "moe", .. }),
        "{err}"
    );

    let mut be = backend(true);
    let ex = experts(&mut be, GgmlType::Q8_0, 4);
    let [o, x, l] = moe_tensors(&mut be, 3, 4);
    be.take();
    be.moe(o, x, l, &ex, &OAI, 3).expect("the moe op");
    be.flush("test").expect("the flush");
    let kernels: Vec<String> = be
        .take()
        .lines()
        .map(|l| l.split(' ').next().unwrap_or_default().to_string())
        .collect();
    assert_eq!(
        kernels,
        ["moe_route", "moe_glu_q8_0", "moe_down_q8_0", "moe_combine"]
    );
}

#[test]
fn bad_moe_calls_are_typed_errors() {
    let mut be = backend(true);
    let ex = experts(&mut be, GgmlType::Q8_0, 4);
    let [o, x, l] = moe_tensors(&mut be, 3, 4);
    let shape = |e: ComputeError| matches!(e, ComputeError::Shape { op: "moe", .. });
    for used in [0, 5] {
        let p = MoeParams { used, ..OAI };
        assert!(shape(be.moe(o, x, l, &ex, &p, 3).unwrap_err()));
    }
    assert!(shape(be.moe(o, x, l, &[], &OAI, 3).unwrap_err()));
    // Router logits for 5 experts, 4 given; more rows than the tensors hold.
    let wide = be.alloc_tensor(3, 5).expect("logits");
    assert!(shape(be.moe(o, x, wide, &ex, &OAI, 3).unwrap_err()));
    assert!(shape(be.moe(o, x, l, &ex, &OAI, 4).unwrap_err()));
    let err = be.moe(x, x, l, &ex, &OAI, 3).unwrap_err();
    assert!(matches!(err, ComputeError::Aliased { op: "moe" }), "{err}");
    // An expert of another shape, a down projection of another type, a bias too short.
    let mut odd = ex.clone();
    odd[1].gate = weight(&mut be, GgmlType::Q8_0, 64, 64);
    assert!(shape(be.moe(o, x, l, &odd, &OAI, 3).unwrap_err()));
    let mut mixed = ex.clone();
    mixed[2].down = weight(&mut be, GgmlType::Q4_0, 64, 32);
    let err = be.moe(o, x, l, &mixed, &OAI, 3).unwrap_err();
    assert!(
        matches!(err, ComputeError::Unsupported { op: "moe", .. }),
        "{err}"
    );
    let mut short = ex.clone();
    short[0].down_bias = Some(weight(&mut be, GgmlType::F32, 1, 32));
    assert!(shape(be.moe(o, x, l, &short, &OAI, 3).unwrap_err()));
    let mut unknown = ex;
    unknown[3].up = WeightId::from_raw(9999);
    let err = be.moe(o, x, l, &unknown, &OAI, 3).unwrap_err();
    assert!(matches!(err, ComputeError::UnknownHandle { .. }), "{err}");
}

#[test]
fn mxfp4_weights_load_only_with_the_path() {
    let bytes = vec![0u8; 17 * 4];
    let desc = WeightDesc {
        name: "blk.0.ffn_up_exps.weight",
        ty: GgmlType::MXFP4,
        rows: 2,
        cols: 64,
        bytes: &bytes,
    };
    let err = backend(false).upload_weight(desc).unwrap_err();
    assert!(
        matches!(
            err,
            ComputeError::UnsupportedType {
                ty: GgmlType::MXFP4,
                ..
            }
        ),
        "{err}"
    );
    backend(true)
        .upload_weight(desc)
        .expect("MXFP4 with models");
}

/// One row of attention with `window` and `sinks` (a vector of `sink_len`) over a 2-layer
/// cache of 4 heads over 2 of width 64.
fn attend(
    be: &mut CudaBackend<Recorder>,
    window: Option<usize>,
    sink_len: Option<usize>,
) -> Result<(), ComputeError> {
    let (heads, kvh, hd) = (4usize, 2usize, 64usize);
    let cfg = KvCacheConfig {
        layers: 2,
        blocks: 2,
        seqs: 1,
        seq_blocks: 2,
        kv_heads: kvh,
        head_dim: hd,
        value_head_dim: hd,
        ty: KvType::F16,
    };
    let cache = be.alloc_kv_cache(cfg)?;
    let sinks = match sink_len {
        Some(n) => Some(be.upload_weight(WeightDesc {
            name: "sinks",
            ty: GgmlType::F32,
            rows: 1,
            cols: n,
            bytes: &vec![0u8; 4 * n],
        })?),
        None => None,
    };
    let (q, k, v, o) = (
        be.alloc_tensor(1, heads * hd)?,
        be.alloc_tensor(1, kvh * hd)?,
        be.alloc_tensor(1, kvh * hd)?,
        be.alloc_tensor(1, heads * hd)?,
    );
    let (pos, seq, table) = (be.alloc_index(1)?, be.alloc_index(1)?, be.alloc_index(2)?);
    be.write_index(pos, &[5])?;
    let index = KvIndex {
        positions: pos,
        seqs: seq,
        block_table: table,
    };
    let p = AttentionParams {
        heads,
        kv_heads: kvh,
        head_dim: hd,
        value_head_dim: hd,
        scale: 0.125,
        layer: 1,
        window,
        sinks,
    };
    be.attention(o, q, k, v, cache, &index, &p, 1)
}

#[test]
fn windows_and_sinks_are_refused_by_name_without_the_path_and_checked_with_it() {
    let unsupported = |r: Result<(), ComputeError>, what: &str| match r {
        Err(ComputeError::Unsupported {
            op: "attention",
            reason,
        }) => {
            assert!(reason.contains(what), "{reason}")
        }
        other => panic!("{other:?}"),
    };
    unsupported(attend(&mut backend(false), Some(4), None), "sliding window");
    unsupported(attend(&mut backend(false), None, Some(4)), "sinks");

    let mut be = backend(true);
    attend(&mut be, Some(4), Some(4)).expect("window and sinks");
    be.flush("test").expect("the flush");
    let launched = be.take();
    assert!(
        launched.contains("attention_decode_window_f16"),
        "{launched}"
    );
    assert!(launched.contains("attention_combine_window"), "{launched}");
    // A sink vector that is not one logit per head, and an empty window.
    let err = attend(&mut be, None, Some(3)).unwrap_err();
    assert!(matches!(err, ComputeError::Shape { .. }), "{err}");
    let err = attend(&mut be, Some(0), None).unwrap_err();
    assert!(matches!(err, ComputeError::Shape { .. }), "{err}");
}

#[test]
fn yarn_is_refused_by_name_without_the_path_and_runs_its_kernel_with_it() {
    let p = RopeParams {
        heads: 2,
        head_dim: 64,
        n_rot: 64,
        base: 150_000.0,
        freq_scale: 1.0 / 32.0,
        mode: RopeMode::Neox,
        yarn: Some(Yarn {
            original_context: 4096,
            beta_fast: 32.0,
            beta_slow: 1.0,
            ext_factor: 1.0,
            attn_factor: 1.0,
        }),
    };
    for models in [false, true] {
        let mut be = backend(models);
        let x = be.alloc_tensor(1, 128).expect("x");
        let pos = be.alloc_index(1).expect("positions");
        be.take();
        let r = be.rope(x, pos, &p, 1);
        if models {
            r.expect("YaRN rope");
            be.flush("test").expect("the flush");
            assert!(be.take().starts_with("rope_yarn_f32 "));
        } else {
            let err = r.unwrap_err();
            assert!(err.to_string().contains("YaRN"), "{err}");
        }
    }
}
