//! YaRN rotary angles against ggml's `rope_yarn` (ggml-cpu `ops.cpp`, with
//! `ggml_rope_yarn_corr_dims` from `ggml.c`) written out here in f64, and the rope op that
//! uses them against rotations by those angles.

use worker_compute::cpu::ops;
use worker_compute::{ComputeBackend, CpuBackend, CpuConfig, RopeMode, RopeParams, Yarn};

/// ggml's `ggml_rope_yarn_corr_dim`: the dimension pair at which `n_rot_turns` rotations fit
/// in the original context.
fn corr_dim(n_dims: usize, n_ctx_orig: u32, n_rot_turns: f64, base: f64) -> f64 {
    n_dims as f64 * (n_ctx_orig as f64 / (n_rot_turns * 2.0 * std::f64::consts::PI)).ln()
        / (2.0 * base.ln())
}

/// ggml's `rope_yarn` for pair `i` at position `pos`, in f64: `(cos, sin)` times the
/// magnitude factor.
fn ggml_rope_yarn(pos: u32, i: usize, p: &RopeParams, y: &Yarn) -> (f64, f64) {
    let n = p.n_rot;
    let base = p.base as f64;
    let low = corr_dim(n, y.original_context, y.beta_fast as f64, base)
        .floor()
        .max(0.0);
    let high = corr_dim(n, y.original_context, y.beta_slow as f64, base)
        .ceil()
        .min(n as f64 - 1.0);
    let theta_extrap = pos as f64 * base.powf(-2.0 * i as f64 / n as f64);
    let freq_scale = p.freq_scale as f64;
    let theta_interp = freq_scale * theta_extrap;
    let mut mscale = y.attn_factor as f64;
    let mut theta = theta_interp;
    if y.ext_factor != 0.0 {
        // rope_yarn_ramp(low, high, i0) with i0 = 2i, so i0 / 2 = i; in f32, as ggml.
        let (low, high) = (low as f32, high as f32);
        let ramp = 1.0 - ((i as f32 - low) / (high - low).max(0.001)).clamp(0.0, 1.0);
        let mix = (ramp * y.ext_factor) as f64;
        theta = theta_interp * (1.0 - mix) + theta_extrap * mix;
        mscale *= 1.0 + 0.1 * (1.0 / freq_scale).ln();
    }
    (theta.cos() * mscale, theta.sin() * mscale)
}

/// gpt-oss's rope: 64-wide heads, base 150000, YaRN factor 32 over an original context of
/// 4096, beta 32 and 1 (its GGUF keys and llama.cpp's defaults).
fn gpt_oss() -> RopeParams {
    RopeParams {
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
    }
}

#[test]
fn correction_dims_are_ggmls() {
    let p = gpt_oss();
    let y = p.yarn.unwrap();
    // By hand: 64 ln(4096 / (32·2π)) / (2 ln 150000) = 8.09, floored; the same with 1 turn
    // is 17.4, ceiled.
    assert_eq!(y.correction_dims(p.n_rot, p.base), [8.0, 18.0]);
    // Other contexts, turns, widths and bases against ggml's formula (its start is only
    // clamped at 0 and its end at n_rot - 1).
    for (ctx, fast, slow, n, base) in [
        (1u32 << 24, 1e-3f32, 1e6f32, 16usize, 10_000f32),
        (2, 32.0, 1.0, 16, 10_000.0),
        (8192, 16.0, 2.0, 128, 500_000.0),
        (512, 32.0, 1.0, 32, 10_000.0),
    ] {
        let y = Yarn {
            original_context: ctx,
            beta_fast: fast,
            beta_slow: slow,
            ..y
        };
        let want = [
            corr_dim(n, ctx, fast as f64, base as f64).floor().max(0.0),
            corr_dim(n, ctx, slow as f64, base as f64)
                .ceil()
                .min(n as f64 - 1.0),
        ];
        let got = y.correction_dims(n, base);
        assert_eq!(got.map(f64::from), want, "{y:?} n_rot {n} base {base}");
    }
}

/// `rope_angles` with YaRN against ggml's formula, at positions from 0 to past the original
/// context, for gpt-oss's parameters and for others (another factor, base, width, the
/// extrapolation weight and magnitude factor).
#[test]
fn yarn_angles_match_ggml() {
    let mut cases = vec![gpt_oss()];
    let base = gpt_oss();
    let y = base.yarn.unwrap();
    cases.push(RopeParams {
        n_rot: 32,
        head_dim: 48,
        base: 10_000.0,
        freq_scale: 0.25,
        yarn: Some(Yarn {
            original_context: 512,
            ext_factor: 0.5,
            attn_factor: 1.3,
            ..y
        }),
        ..base
    });
    // Extrapolation weight 0: plain interpolation times the magnitude factor, no log term.
    cases.push(RopeParams {
        yarn: Some(Yarn {
            ext_factor: 0.0,
            attn_factor: 0.8,
            ..y
        }),
        ..base
    });
    for p in &cases {
        let y = p.yarn.unwrap();
        let freqs = ops::rope_frequencies(p);
        let mut cs = vec![0f32; p.n_rot];
        for pos in [0u32, 1, 2, 7, 100, 1000, 4095, 4096, 5000, 20_000, 131_071] {
            ops::rope_angles(pos, p, &freqs, &mut cs);
            for i in 0..p.n_rot / 2 {
                let (c, s) = ggml_rope_yarn(pos, i, p, &y);
                // Both compute the angle in f64 and round cos and sin to f32; ggml's own f32
                // angle would be off by about 1e-7 of the angle, which is what this allows
                // beyond the rounding.
                let theta = pos as f64 * freqs[i];
                let tol = 2e-6 * (1.0 + y.attn_factor as f64 * 1.5) + 1e-7 * theta;
                assert!(
                    (cs[2 * i] as f64 - c).abs() <= tol && (cs[2 * i + 1] as f64 - s).abs() <= tol,
                    "{p:?} pos {pos} pair {i}: ({}, {}) vs ggml ({c}, {s})",
                    cs[2 * i],
                    cs[2 * i + 1]
                );
            }
        }
    }
    // The mixed pairs really mix: below the ramp pure extrapolation, above it pure
    // interpolation (gpt-oss: pairs 0..=8 extrapolate, 18.. interpolate).
    let p = gpt_oss();
    let freqs = ops::rope_frequencies(&p);
    let mut cs = vec![0f32; 64];
    ops::rope_angles(1000, &p, &freqs, &mut cs);
    let mscale = 1.0 + 0.1 * 32f64.ln();
    let angle = |i: usize| (cs[2 * i + 1] as f64).atan2(cs[2 * i] as f64);
    let wrap = |a: f64| (a + std::f64::consts::PI).rem_euclid(2.0 * std::f64::consts::PI);
    let extrap = 1000.0 * 150_000f64.powf(-2.0 * 5.0 / 64.0);
    assert!((wrap(angle(5)) - wrap(extrap)).abs() < 1e-4);
    let interp = 1000.0 / 32.0 * 150_000f64.powf(-2.0 * 25.0 / 64.0);
    assert!((wrap(angle(25)) - wrap(interp)).abs() < 1e-4);
    assert!(((cs[0] as f64).hypot(cs[1] as f64) - mscale).abs() < 1e-6);
}

/// The rope op with YaRN rotates each pair of each head by the angles of `rope_angles`.
#[test]
fn rope_op_rotates_by_the_yarn_angles() {
    let p = gpt_oss();
    let (rows, cols) = (5, p.heads * p.head_dim);
    let mut be = CpuBackend::new(CpuConfig {
        threads: 1,
        ..CpuConfig::default()
    });
    let x: Vec<f32> = (0..rows * cols)
        .map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0)
        .collect();
    let t = be.alloc_tensor(rows, cols).unwrap();
    be.write_rows(t, &x).unwrap();
    let positions = [0u32, 3, 4096, 9000, 70_000];
    let idx = be.alloc_index(rows).unwrap();
    be.write_index(idx, &positions).unwrap();
    be.rope(t, idx, &p, rows).unwrap();
    let mut got = vec![0f32; rows * cols];
    be.read_rows(t, rows, &mut got).unwrap();
    let y = p.yarn.unwrap();
    for (r, &pos) in positions.iter().enumerate() {
        for h in 0..p.heads {
            let head = &x[r * cols + h * p.head_dim..][..p.head_dim];
            let out = &got[r * cols + h * p.head_dim..][..p.head_dim];
            for i in 0..p.n_rot / 2 {
                let (c, s) = ggml_rope_yarn(pos, i, &p, &y);
                let (a, b) = (head[i] as f64, head[i + p.n_rot / 2] as f64);
                let (wa, wb) = (a * c - b * s, a * s + b * c);
                let tol = 1e-5 + 1e-7 * pos as f64;
                assert!(
                    (out[i] as f64 - wa).abs() < tol
                        && (out[i + p.n_rot / 2] as f64 - wb).abs() < tol,
                    "row {r} head {h} pair {i}: ({}, {}) vs ({wa}, {wb})",
                    out[i],
                    out[i + p.n_rot / 2]
                );
            }
        }
    }
}
