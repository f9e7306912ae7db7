//! Scalar kernels of the element-wise and row-wise ops (norms, rope, activations). They are
//! cheap next to the matmuls and attention; only SwiGLU, with its exponential, has a SIMD
//! twin (in the kernel table).

use crate::backend::{RopeMode, RopeParams};

/// `1 / sqrt(mean(x^2) + eps)`.
fn inv_rms(x: &[f32], eps: f32) -> f32 {
    let ss: f32 = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    1.0 / (ss + eps).sqrt()
}

/// `out = x / sqrt(mean(x^2) + eps) * w`.
pub fn rms_norm_row(out: &mut [f32], x: &[f32], w: &[f32], eps: f32) {
    let r = inv_rms(x, eps);
    for ((o, v), g) in out.iter_mut().zip(x).zip(w) {
        *o = v * r * g;
    }
}

/// [`rms_norm_row`] in place on each `w.len()`-wide head of `x`.
pub fn rms_norm_heads_row(x: &mut [f32], w: &[f32], eps: f32) {
    for head in x.chunks_exact_mut(w.len()) {
        let r = inv_rms(head, eps);
        for (v, g) in head.iter_mut().zip(w) {
            *v = *v * r * g;
        }
    }
}

/// `out = (x - mean) / sqrt(var + eps) * w + b`.
pub fn layer_norm_row(out: &mut [f32], x: &[f32], w: &[f32], b: &[f32], eps: f32) {
    let n = x.len() as f32;
    let mean = x.iter().sum::<f32>() / n;
    let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n;
    let r = 1.0 / (var + eps).sqrt();
    for (((o, v), g), c) in out.iter_mut().zip(x).zip(w).zip(b) {
        *o = (v - mean) * r * g + c;
    }
}

/// `silu(g) * u`.
pub fn swiglu_row(out: &mut [f32], g: &[f32], u: &[f32]) {
    for ((o, a), b) in out.iter_mut().zip(g).zip(u) {
        *o = a / (1.0 + (-a).exp()) * b;
    }
}

/// GELU, tanh approximation (ggml `gelu`, GPT-2 `gelu_new`).
pub fn gelu_row(x: &mut [f32]) {
    const C: f32 = 0.797_884_6; // sqrt(2/pi)
    for v in x.iter_mut() {
        let a = *v;
        *v = 0.5 * a * (1.0 + (C * (a + 0.044_715 * a * a * a)).tanh());
    }
}

/// The rotation frequencies `base^(-2i/n_rot)`, `i < n_rot/2`, for [`rope_angles`].
pub fn rope_frequencies(p: &RopeParams) -> Vec<f64> {
    (0..p.n_rot / 2)
        .map(|i| (p.base as f64).powf(-2.0 * i as f64 / p.n_rot as f64))
        .collect()
}

/// The cosines and sines (interleaved, `n_rot` floats) of the rotation at position `pos`;
/// `freqs` from [`rope_frequencies`]. With [`RopeParams::yarn`], ggml's `rope_yarn`.
pub fn rope_angles(pos: u32, p: &RopeParams, freqs: &[f64], cos_sin: &mut [f32]) {
    let Some(yarn) = p.yarn.filter(|y| y.ext_factor != 0.0) else {
        let (t, m) = (
            pos as f64 * p.freq_scale as f64,
            p.yarn.map_or(1.0, |y| y.attn_factor),
        );
        for (f, cs) in freqs.iter().zip(cos_sin.chunks_exact_mut(2)) {
            let (s, c) = (t * f).sin_cos();
            cs[0] = c as f32 * m;
            cs[1] = s as f32 * m;
        }
        return;
    };
    let [low, high] = yarn.correction_dims(p.n_rot, p.base);
    let mscale = (yarn.attn_factor * (1.0 + 0.1 * (1.0 / p.freq_scale).ln())) as f64;
    for (i, (f, cs)) in freqs.iter().zip(cos_sin.chunks_exact_mut(2)).enumerate() {
        let extrap = pos as f64 * f;
        let interp = p.freq_scale as f64 * extrap;
        let y = (i as f32 - low) / (high - low).max(0.001);
        let ramp = ((1.0 - y.clamp(0.0, 1.0)) * yarn.ext_factor) as f64;
        let (s, c) = (interp * (1.0 - ramp) + extrap * ramp).sin_cos();
        cs[0] = (c * mscale) as f32;
        cs[1] = (s * mscale) as f32;
    }
}

/// gpt-oss's clamped SwiGLU (ggml `swiglu_oai`), in place in `g`:
/// `x = min(g, limit)`, `y = clamp(u, -limit, limit)`, `g = x·sigmoid(alpha·x)·(y + 1)`.
pub fn swiglu_oai_row(g: &mut [f32], u: &[f32], alpha: f32, limit: f32) {
    for (a, b) in g.iter_mut().zip(u) {
        let x = a.min(limit);
        let y = b.clamp(-limit, limit);
        *a = x / (1.0 + (alpha * -x).exp()) * (y + 1.0);
    }
}

/// Rotates the heads of one row by the angles of [`rope_angles`].
pub fn rope_row(x: &mut [f32], p: &RopeParams, cos_sin: &[f32]) {
    let half = p.n_rot / 2;
    for head in x.chunks_exact_mut(p.head_dim).take(p.heads) {
        for i in 0..half {
            let (c, s) = (cos_sin[2 * i], cos_sin[2 * i + 1]);
            let (a, b) = match p.mode {
                RopeMode::Normal => (2 * i, 2 * i + 1),
                RopeMode::Neox => (i, i + half),
            };
            let (x0, x1) = (head[a], head[b]);
            head[a] = x0 * c - x1 * s;
            head[b] = x0 * s + x1 * c;
        }
    }
}
