//! The k-quants: 256-element super-blocks with 6- or 8-bit sub-block scales (Q2_K … Q6_K),
//! and Q8_K, the format activations take for k-quant dot products.
//!
//! Layouts as in ggml's `ggml-common.h`. The quantizers follow `quantize_row_*_ref` (and
//! its helpers `make_qx_quants`, `make_q3_quants`, `make_qkx2_quants`) in `ggml-quants.c`
//! operation by operation, evaluated in strict IEEE order; a ggml built with FMA
//! contraction may round a few scale searches differently. gguf-py has no k-quant
//! quantizers, so these are checked by round-trip error bounds, not against its bytes.

use half::f16;

use super::{nearest_int, BlockFormat, Fields, Out, QuantizeBlock, QK_K};
use crate::types::GgmlType;

/// Below this magnitude a group is treated as all zero (`GROUP_MAX_EPS` in ggml).
const GROUP_MAX_EPS: f32 = 1e-15;

/// Scale `d` and min `m` of sub-block `j` (0..8) from the packed 6-bit fields of Q4_K/Q5_K
/// (`get_scale_min_k4` in ggml).
pub fn scale_min_k4(j: usize, q: &[u8; 12]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// Packs eight 6-bit scales and mins the way [`scale_min_k4`] reads them.
fn pack_scale_min_k4(ls: &[u8; 8], lm: &[u8; 8]) -> [u8; 12] {
    let mut s = [0u8; 12];
    for j in 0..8 {
        if j < 4 {
            s[j] = ls[j];
            s[j + 4] = lm[j];
        } else {
            s[j + 4] = (ls[j] & 0x0f) | ((lm[j] & 0x0f) << 4);
            s[j - 4] |= (ls[j] >> 4) << 6;
            s[j] |= (lm[j] >> 4) << 6;
        }
    }
    s
}

/// Signed 6-bit scale `j` (0..16) of a Q3_K block, already offset by -32.
pub fn scale_q3k(j: usize, s: &[u8; 12]) -> i8 {
    let low = if j < 8 { s[j] & 0x0f } else { s[j - 8] >> 4 };
    let high = (s[8 + j % 4] >> (2 * (j / 4))) & 3;
    ((low | (high << 4)) as i8).wrapping_sub(32)
}

/// Index and signed value of the largest-magnitude element (first wins ties).
fn signed_absmax(x: &[f32]) -> (f32, f32) {
    let mut amax = 0.0f32;
    let mut max = 0.0f32;
    for &v in x {
        let ax = v.abs();
        if ax > amax {
            amax = ax;
            max = v;
        }
    }
    (amax, max)
}

/// Symmetric quantization of `x` to `-nmax..nmax-1` (stored in `l` offset by `nmax`),
/// searching 18 scales around `nmax / max` for the best weighted fit (weights `x²`);
/// returns the scale (`make_qx_quants` with `rmse_type = 1`, no quant weights).
fn make_qx_quants(nmax: i32, x: &[f32], l_out: &mut [i8]) -> f32 {
    let (amax, max) = signed_absmax(x);
    if amax < GROUP_MAX_EPS {
        l_out.iter_mut().for_each(|l| *l = 0);
        return 0.0;
    }
    let fit = |iscale: f32, store: Option<&mut [i8]>| {
        let (mut sumlx, mut suml2) = (0.0f32, 0.0f32);
        let mut store = store;
        for (i, &xi) in x.iter().enumerate() {
            let l = nearest_int(iscale * xi).clamp(-nmax, nmax - 1);
            if let Some(s) = store.as_deref_mut() {
                s[i] = (l + nmax) as i8;
            }
            let w = xi * xi;
            let lf = l as f32;
            sumlx += w * xi * lf;
            suml2 += w * lf * lf;
        }
        (sumlx, suml2)
    };
    let nmaxf = nmax as f32;
    let (sumlx, suml2) = fit(-nmaxf / max, Some(l_out));
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for is in -9..=9 {
        if is == 0 {
            continue;
        }
        let iscale = -(nmaxf + 0.1 * is as f32) / max;
        let (sumlx, suml2) = fit(iscale, None);
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            fit(iscale, Some(l_out));
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// Symmetric 3-bit quantization with iterative refinement (`make_q3_quants` with
/// `do_rmse`); values in `l_out` are offset by `nmax`.
fn make_q3_quants(nmax: i32, x: &[f32], l_out: &mut [i8]) -> f32 {
    let (amax, max) = signed_absmax(x);
    if amax < GROUP_MAX_EPS {
        l_out.iter_mut().for_each(|l| *l = 0);
        return 0.0;
    }
    let iscale = -(nmax as f32) / max;
    let (mut sumlx, mut suml2) = (0.0f32, 0.0f32);
    for (i, &xi) in x.iter().enumerate() {
        let l = nearest_int(iscale * xi).clamp(-nmax, nmax - 1);
        l_out[i] = l as i8;
        let w = xi * xi;
        sumlx += w * xi * l as f32;
        suml2 += w * l as f32 * l as f32;
    }
    for _ in 0..5 {
        let mut n_changed = 0;
        for (i, &xi) in x.iter().enumerate() {
            let w = xi * xi;
            let li = f32::from(l_out[i]);
            let mut slx = sumlx - w * xi * li;
            if slx > 0.0 {
                let mut sl2 = suml2 - w * li * li;
                let new_l = nearest_int(xi * sl2 / slx).clamp(-nmax, nmax - 1);
                if new_l != i32::from(l_out[i]) {
                    slx += w * xi * new_l as f32;
                    sl2 += w * new_l as f32 * new_l as f32;
                    if sl2 > 0.0 && slx * slx * suml2 > sumlx * sumlx * sl2 {
                        l_out[i] = new_l as i8;
                        sumlx = slx;
                        suml2 = sl2;
                        n_changed += 1;
                    }
                }
            }
        }
        if n_changed == 0 {
            break;
        }
    }
    for l in l_out.iter_mut() {
        *l += nmax as i8;
    }
    if suml2 > 0.0 {
        sumlx / suml2
    } else {
        0.0
    }
}

/// Parameters of the scale search in [`make_qkx2_quants`].
struct Search {
    rmin: f32,
    rdelta: f32,
    nstep: i32,
    use_mad: bool,
}

/// Asymmetric quantization `x ≈ scale * l - min` with `l` in `0..=nmax`, fitting scale and
/// min by weighted least squares over `nstep + 1` candidate scales (`make_qkx2_quants`).
/// Returns `(scale, min)`, min as a positive offset.
fn make_qkx2_quants(
    nmax: i32,
    x: &[f32],
    weights: &[f32],
    l_out: &mut [u8],
    p: Search,
) -> (f32, f32) {
    let n = x.len();
    let mut min = x[0];
    let mut max = x[0];
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..n {
        if x[i] < min {
            min = x[i];
        }
        if x[i] > max {
            max = x[i];
        }
        let w = weights[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        l_out.iter_mut().for_each(|l| *l = 0);
        return (0.0, -min);
    }
    let nmaxf = nmax as f32;
    let mut iscale = nmaxf / (max - min);
    let mut scale = 1.0 / iscale;
    let err = |diff: f32| if p.use_mad { diff.abs() } else { diff * diff };
    let mut best_error = 0.0f32;
    for i in 0..n {
        let l = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
        l_out[i] = l as u8;
        let diff = scale * l as f32 + min - x[i];
        best_error += weights[i] * err(diff);
    }
    if p.nstep < 1 {
        return (scale, -min);
    }
    let mut laux = [0u8; 32];
    let laux = &mut laux[..n];
    for is in 0..=p.nstep {
        iscale = (p.rmin + p.rdelta * is as f32 + nmaxf) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0.0f32, 0.0f32, 0.0f32);
        for i in 0..n {
            let l = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
            laux[i] = l as u8;
            let w = weights[i];
            let lf = l as f32;
            sum_l += w * lf;
            sum_l2 += w * lf * lf;
            sum_xl += w * lf * x[i];
        }
        let d = sum_w * sum_l2 - sum_l * sum_l;
        if d > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / d;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / d;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut cur_error = 0.0f32;
            for i in 0..n {
                let diff = this_scale * f32::from(laux[i]) + this_min - x[i];
                cur_error += weights[i] * err(diff);
            }
            if cur_error < best_error {
                l_out.copy_from_slice(laux);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// Packs 256 2-bit values: byte `j/4 + l` of each 128-half holds elements l, l+32, l+64,
/// l+96 in bits 0-1, 2-3, 4-5, 6-7.
fn pack_2bit(l: &[u8; QK_K]) -> [u8; QK_K / 4] {
    let mut qs = [0u8; QK_K / 4];
    for j in (0..QK_K).step_by(128) {
        for i in 0..32 {
            qs[j / 4 + i] =
                l[j + i] | (l[j + i + 32] << 2) | (l[j + i + 64] << 4) | (l[j + i + 96] << 6);
        }
    }
    qs
}

/// Q2_K: 2-bit values in sub-blocks of 16 with 4-bit scales and mins,
/// `x = d * sc * q - dmin * m`. 84 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockQ2K {
    /// Per sub-block of 16: scale in the low nibble, min in the high nibble.
    pub scales: [u8; QK_K / 16],
    /// 2-bit values (see the layout in [`BlockQ2K::to_float`]).
    pub qs: [u8; QK_K / 4],
    /// Super-block scale of the scales.
    pub d: f16,
    /// Super-block scale of the mins.
    pub dmin: f16,
}
const _: () = assert!(std::mem::size_of::<BlockQ2K>() == 84);

impl BlockFormat for BlockQ2K {
    const TYPE: GgmlType = GgmlType::Q2_K;
    const BLOCK_SIZE: usize = QK_K;

    fn read(bytes: &[u8]) -> Self {
        let mut f = Fields::new(bytes);
        BlockQ2K {
            scales: f.bytes(),
            qs: f.bytes(),
            d: f.f16(),
            dmin: f.f16(),
        }
    }

    fn write(&self, out: &mut [u8]) {
        let mut o = Out::new(out);
        o.put(&self.scales);
        o.put(&self.qs);
        o.f16(self.d);
        o.f16(self.dmin);
    }

    /// Each 128-element half uses 32 bytes of `qs`; its four 32-element quarters take bit
    /// pairs 0, 2, 4, 6, and each quarter is two sub-blocks of 16 with their own scales.
    fn to_float(&self, y: &mut [f32]) {
        let d = self.d.to_f32();
        let min = self.dmin.to_f32();
        let mut is = 0;
        let mut out = 0;
        for half in 0..2 {
            let q = &self.qs[half * 32..half * 32 + 32];
            for shift in [0, 2, 4, 6] {
                for part in 0..2 {
                    let sc = self.scales[is];
                    is += 1;
                    let dl = d * f32::from(sc & 0x0f);
                    let ml = min * f32::from(sc >> 4);
                    for &b in &q[part * 16..part * 16 + 16] {
                        y[out] = dl * f32::from((b >> shift) & 3) - ml;
                        out += 1;
                    }
                }
            }
        }
    }
}

impl QuantizeBlock for BlockQ2K {
    fn from_float(x: &[f32]) -> Self {
        assert_eq!(x.len(), QK_K);
        let mut l = [0u8; QK_K];
        let mut scales = [0f32; QK_K / 16];
        let mut mins = [0f32; QK_K / 16];
        let (mut max_scale, mut max_min) = (0.0f32, 0.0f32);
        for j in 0..QK_K / 16 {
            let xs = &x[16 * j..16 * j + 16];
            let mut weights = [0f32; 16];
            for (w, &v) in weights.iter_mut().zip(xs) {
                *w = v.abs();
            }
            let search = Search {
                rmin: -0.5,
                rdelta: 0.1,
                nstep: 15,
                use_mad: true,
            };
            let (s, m) = make_qkx2_quants(3, xs, &weights, &mut l[16 * j..16 * j + 16], search);
            scales[j] = s;
            mins[j] = m;
            if s > max_scale {
                max_scale = s;
            }
            if m > max_min {
                max_min = m;
            }
        }
        let q4scale = 15.0f32;
        let mut sc = [0u8; QK_K / 16];
        let d = if max_scale > 0.0 {
            let iscale = q4scale / max_scale;
            for j in 0..QK_K / 16 {
                sc[j] = nearest_int(iscale * scales[j]) as u8;
            }
            f16::from_f32(max_scale / q4scale)
        } else {
            f16::from_f32(0.0)
        };
        let dmin = if max_min > 0.0 {
            let iscale = q4scale / max_min;
            for j in 0..QK_K / 16 {
                sc[j] |= (nearest_int(iscale * mins[j]) << 4) as u8;
            }
            f16::from_f32(max_min / q4scale)
        } else {
            f16::from_f32(0.0)
        };
        for j in 0..QK_K / 16 {
            let dl = d.to_f32() * f32::from(sc[j] & 0x0f);
            if dl == 0.0 {
                continue;
            }
            let dm = dmin.to_f32() * f32::from(sc[j] >> 4);
            for ii in 0..16 {
                l[16 * j + ii] = nearest_int((x[16 * j + ii] + dm) / dl).clamp(0, 3) as u8;
            }
        }
        BlockQ2K {
            scales: sc,
            qs: pack_2bit(&l),
            d,
            dmin,
        }
    }
}

/// Q3_K: 3-bit values (2 low bits plus a high-bit mask) in sub-blocks of 16 with signed
/// 6-bit scales, `x = d * (sc - 32) * (q - 4)`. 110 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockQ3K {
    /// High bits: bit k of byte l is element `32k + l`'s third bit (set means no -4).
    pub hmask: [u8; QK_K / 8],
    /// Low 2 bits, laid out as in Q2_K.
    pub qs: [u8; QK_K / 4],
    /// Sixteen 6-bit scales: low nibbles in bytes 0..8, high bit pairs in bytes 8..12.
    pub scales: [u8; 12],
    /// Super-block scale.
    pub d: f16,
}
const _: () = assert!(std::mem::size_of::<BlockQ3K>() == 110);

impl BlockFormat for BlockQ3K {
    const TYPE: GgmlType = GgmlType::Q3_K;
    const BLOCK_SIZE: usize = QK_K;

    fn read(bytes: &[u8]) -> Self {
        let mut f = Fields::new(bytes);
        BlockQ3K {
            hmask: f.bytes(),
            qs: f.bytes(),
            scales: f.bytes(),
            d: f.f16(),
        }
    }

    fn write(&self, out: &mut [u8]) {
        let mut o = Out::new(out);
        o.put(&self.hmask);
        o.put(&self.qs);
        o.put(&self.scales);
        o.f16(self.d);
    }

    fn to_float(&self, y: &mut [f32]) {
        let d_all = self.d.to_f32();
        let mut is = 0;
        let mut out = 0;
        let mut m = 1u8;
        for half in 0..2 {
            let q = &self.qs[half * 32..half * 32 + 32];
            for shift in [0, 2, 4, 6] {
                for part in 0..2 {
                    let dl = d_all * f32::from(scale_q3k(is, &self.scales));
                    is += 1;
                    let range = part * 16..part * 16 + 16;
                    for (&ql, &hm) in q[range.clone()].iter().zip(&self.hmask[range]) {
                        let low = ((ql >> shift) & 3) as i8;
                        let v = low - if hm & m != 0 { 0 } else { 4 };
                        y[out] = dl * f32::from(v);
                        out += 1;
                    }
                }
                m = m.wrapping_shl(1);
            }
        }
    }
}

impl QuantizeBlock for BlockQ3K {
    fn from_float(x: &[f32]) -> Self {
        assert_eq!(x.len(), QK_K);
        let mut l = [0i8; QK_K];
        let mut scales = [0f32; QK_K / 16];
        let (mut amax, mut max_scale) = (0.0f32, 0.0f32);
        for j in 0..QK_K / 16 {
            scales[j] = make_q3_quants(4, &x[16 * j..16 * j + 16], &mut l[16 * j..16 * j + 16]);
            let s = scales[j].abs();
            if s > amax {
                amax = s;
                max_scale = scales[j];
            }
        }
        let mut sc = [0u8; 12];
        let d = if max_scale != 0.0 {
            let iscale = -32.0 / max_scale;
            for j in 0..QK_K / 16 {
                let v = (nearest_int(iscale * scales[j]) as i8).clamp(-32, 31) + 32;
                let v = v as u8;
                if j < 8 {
                    sc[j] = v & 0x0f;
                } else {
                    sc[j - 8] |= (v & 0x0f) << 4;
                }
                sc[j % 4 + 8] |= (v >> 4) << (2 * (j / 4));
            }
            f16::from_f32(1.0 / iscale)
        } else {
            f16::from_f32(0.0)
        };
        for j in 0..QK_K / 16 {
            let dl = d.to_f32() * f32::from(scale_q3k(j, &sc));
            if dl == 0.0 {
                continue;
            }
            for ii in 0..16 {
                let q = nearest_int(x[16 * j + ii] / dl).clamp(-4, 3);
                l[16 * j + ii] = (q + 4) as i8;
            }
        }
        let mut hmask = [0u8; QK_K / 8];
        let mut low = [0u8; QK_K];
        for j in 0..QK_K {
            let mut v = l[j] as u8;
            if v > 3 {
                hmask[j % 32] |= 1 << (j / 32);
                v -= 4;
            }
            low[j] = v;
        }
        BlockQ3K {
            hmask,
            qs: pack_2bit(&low),
            scales: sc,
            d,
        }
    }
}

/// Q4_K: 4-bit values in sub-blocks of 32 with 6-bit scales and mins,
/// `x = d * sc * q - dmin * m`. 144 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockQ4K {
    /// Super-block scale of the scales.
    pub d: f16,
    /// Super-block scale of the mins.
    pub dmin: f16,
    /// Eight 6-bit scales and mins (see [`scale_min_k4`]).
    pub scales: [u8; 12],
    /// Each 64 elements take 32 bytes: the first 32 in the low nibbles, the next in the high.
    pub qs: [u8; QK_K / 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ4K>() == 144);

/// Shared by Q4_K and Q5_K's reference quantizers: per sub-block of 32, fit `scale * l -
/// min` with weights `rms + |x|`, then quantize scales and mins to 6 bits. Returns
/// `(d, dmin, packed scales)` and leaves the first-pass values in `l`.
fn quantize_scales_k4(
    x: &[f32],
    nmax: i32,
    search: fn() -> Search,
    l: &mut [u8; QK_K],
) -> (f16, f16, [u8; 12]) {
    let mut scales = [0f32; QK_K / 32];
    let mut mins = [0f32; QK_K / 32];
    let (mut max_scale, mut max_min) = (0.0f32, 0.0f32);
    for j in 0..QK_K / 32 {
        let xs = &x[32 * j..32 * j + 32];
        let mut sum_x2 = 0.0f32;
        for &v in xs {
            sum_x2 += v * v;
        }
        let av_x = (sum_x2 / 32.0).sqrt();
        let mut weights = [0f32; 32];
        for (w, &v) in weights.iter_mut().zip(xs) {
            *w = av_x + v.abs();
        }
        let (s, m) = make_qkx2_quants(nmax, xs, &weights, &mut l[32 * j..32 * j + 32], search());
        scales[j] = s;
        mins[j] = m;
        if s > max_scale {
            max_scale = s;
        }
        if m > max_min {
            max_min = m;
        }
    }
    let inv_scale = if max_scale > 0.0 {
        63.0 / max_scale
    } else {
        0.0
    };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let mut ls = [0u8; 8];
    let mut lm = [0u8; 8];
    for j in 0..QK_K / 32 {
        ls[j] = (nearest_int(inv_scale * scales[j]) as u8).min(63);
        lm[j] = (nearest_int(inv_min * mins[j]) as u8).min(63);
    }
    (
        f16::from_f32(max_scale / 63.0),
        f16::from_f32(max_min / 63.0),
        pack_scale_min_k4(&ls, &lm),
    )
}

/// Requantizes each sub-block of 32 with its rounded scale and min (kept values where the
/// scale is zero), as the last step of ggml's Q4_K/Q5_K reference quantizers.
fn requantize_k4(x: &[f32], nmax: i32, d: f16, dmin: f16, scales: &[u8; 12], l: &mut [u8; QK_K]) {
    for j in 0..QK_K / 32 {
        let (sc, m) = scale_min_k4(j, scales);
        let dl = d.to_f32() * f32::from(sc);
        if dl == 0.0 {
            continue;
        }
        let dm = dmin.to_f32() * f32::from(m);
        for ii in 0..32 {
            l[32 * j + ii] = nearest_int((x[32 * j + ii] + dm) / dl).clamp(0, nmax) as u8;
        }
    }
}

impl BlockFormat for BlockQ4K {
    const TYPE: GgmlType = GgmlType::Q4_K;
    const BLOCK_SIZE: usize = QK_K;

    fn read(bytes: &[u8]) -> Self {
        let mut f = Fields::new(bytes);
        BlockQ4K {
            d: f.f16(),
            dmin: f.f16(),
            scales: f.bytes(),
            qs: f.bytes(),
        }
    }

    fn write(&self, out: &mut [u8]) {
        let mut o = Out::new(out);
        o.f16(self.d);
        o.f16(self.dmin);
        o.put(&self.scales);
        o.put(&self.qs);
    }

    fn to_float(&self, y: &mut [f32]) {
        let d = self.d.to_f32();
        let min = self.dmin.to_f32();
        for c in 0..4 {
            let q = &self.qs[c * 32..c * 32 + 32];
            let (s1, m1) = scale_min_k4(2 * c, &self.scales);
            let (s2, m2) = scale_min_k4(2 * c + 1, &self.scales);
            let (d1, m1) = (d * f32::from(s1), min * f32::from(m1));
            let (d2, m2) = (d * f32::from(s2), min * f32::from(m2));
            let y = &mut y[c * 64..c * 64 + 64];
            for l in 0..32 {
                y[l] = d1 * f32::from(q[l] & 0x0f) - m1;
                y[l + 32] = d2 * f32::from(q[l] >> 4) - m2;
            }
        }
    }
}

impl QuantizeBlock for BlockQ4K {
    fn from_float(x: &[f32]) -> Self {
        assert_eq!(x.len(), QK_K);
        let mut l = [0u8; QK_K];
        let search = || Search {
            rmin: -1.0,
            rdelta: 0.1,
            nstep: 20,
            use_mad: false,
        };
        let (d, dmin, scales) = quantize_scales_k4(x, 15, search, &mut l);
        requantize_k4(x, 15, d, dmin, &scales, &mut l);
        let mut qs = [0u8; QK_K / 2];
        for c in 0..4 {
            for i in 0..32 {
                qs[c * 32 + i] = l[c * 64 + i] | (l[c * 64 + i + 32] << 4);
            }
        }
        BlockQ4K {
            d,
            dmin,
            scales,
            qs,
        }
    }
}

/// Q5_K: Q4_K plus a fifth bit per value, `x = d * sc * q - dmin * m`. 176 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockQ5K {
    /// Super-block scale of the scales.
    pub d: f16,
    /// Super-block scale of the mins.
    pub dmin: f16,
    /// Eight 6-bit scales and mins (see [`scale_min_k4`]).
    pub scales: [u8; 12],
    /// Fifth bits: bit `2c` of byte l for element `64c + l`, bit `2c + 1` for `64c + 32 + l`.
    pub qh: [u8; QK_K / 8],
    /// Low four bits, laid out as in Q4_K.
    pub qs: [u8; QK_K / 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ5K>() == 176);

impl BlockFormat for BlockQ5K {
    const TYPE: GgmlType = GgmlType::Q5_K;
    const BLOCK_SIZE: usize = QK_K;

    fn read(bytes: &[u8]) -> Self {
        let mut f = Fields::new(bytes);
        BlockQ5K {
            d: f.f16(),
            dmin: f.f16(),
            scales: f.bytes(),
            qh: f.bytes(),
            qs: f.bytes(),
        }
    }

    fn write(&self, out: &mut [u8]) {
        let mut o = Out::new(out);
        o.f16(self.d);
        o.f16(self.dmin);
        o.put(&self.scales);
        o.put(&self.qh);
        o.put(&self.qs);
    }

    fn to_float(&self, y: &mut [f32]) {
        let d = self.d.to_f32();
        let min = self.dmin.to_f32();
        for c in 0..4 {
            let ql = &self.qs[c * 32..c * 32 + 32];
            let (u1, u2) = (1u8 << (2 * c), 2u8 << (2 * c));
            let (s1, m1) = scale_min_k4(2 * c, &self.scales);
            let (s2, m2) = scale_min_k4(2 * c + 1, &self.scales);
            let (d1, m1) = (d * f32::from(s1), min * f32::from(m1));
            let (d2, m2) = (d * f32::from(s2), min * f32::from(m2));
            let y = &mut y[c * 64..c * 64 + 64];
            for l in 0..32 {
                let h1 = if self.qh[l] & u1 != 0 { 16 } else { 0 };
                let h2 = if self.qh[l] & u2 != 0 { 16 } else { 0 };
                y[l] = d1 * f32::from((ql[l] & 0x0f) + h1) - m1;
                y[l + 32] = d2 * f32::from((ql[l] >> 4) + h2) - m2;
            }
        }
    }
}

impl QuantizeBlock for BlockQ5K {
    fn from_float(x: &[f32]) -> Self {
        assert_eq!(x.len(), QK_K);
        let mut l = [0u8; QK_K];
        let search = || Search {
            rmin: -0.5,
            rdelta: 0.1,
            nstep: 15,
            use_mad: false,
        };
        let (d, dmin, scales) = quantize_scales_k4(x, 31, search, &mut l);
        requantize_k4(x, 31, d, dmin, &scales, &mut l);
        let mut qh = [0u8; QK_K / 8];
        let mut qs = [0u8; QK_K / 2];
        for c in 0..4 {
            let (m1, m2) = (1u8 << (2 * c), 2u8 << (2 * c));
            for j in 0..32 {
                let mut l1 = l[c * 64 + j];
                if l1 > 15 {
                    l1 -= 16;
                    qh[j] |= m1;
                }
                let mut l2 = l[c * 64 + j + 32];
                if l2 > 15 {
                    l2 -= 16;
                    qh[j] |= m2;
                }
                qs[c * 32 + j] = l1 | (l2 << 4);
            }
        }
        BlockQ5K {
            d,
            dmin,
            scales,
            qh,
            qs,
        }
    }
}

/// Q6_K: 6-bit values in sub-blocks of 16 with signed 8-bit scales,
/// `x = d * sc * (q - 32)`. 210 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockQ6K {
    /// Low four bits: per 128 elements 64 bytes; byte l holds elements l (low) and l+64
    /// (high), byte l+32 holds l+32 and l+96.
    pub ql: [u8; QK_K / 2],
    /// High two bits: per 128 elements 32 bytes; byte l holds elements l, l+32, l+64, l+96
    /// in bit pairs 0, 2, 4, 6.
    pub qh: [u8; QK_K / 4],
    /// Per sub-block of 16.
    pub scales: [i8; QK_K / 16],
    /// Super-block scale.
    pub d: f16,
}
const _: () = assert!(std::mem::size_of::<BlockQ6K>() == 210);

impl BlockFormat for BlockQ6K {
    const TYPE: GgmlType = GgmlType::Q6_K;
    const BLOCK_SIZE: usize = QK_K;

    fn read(bytes: &[u8]) -> Self {
        let mut f = Fields::new(bytes);
        BlockQ6K {
            ql: f.bytes(),
            qh: f.bytes(),
            scales: f.i8s(),
            d: f.f16(),
        }
    }

    fn write(&self, out: &mut [u8]) {
        let mut o = Out::new(out);
        o.put(&self.ql);
        o.put(&self.qh);
        o.i8s(&self.scales);
        o.f16(self.d);
    }

    fn to_float(&self, y: &mut [f32]) {
        let d = self.d.to_f32();
        for half in 0..2 {
            let ql = &self.ql[half * 64..half * 64 + 64];
            let qh = &self.qh[half * 32..half * 32 + 32];
            let sc = &self.scales[half * 8..half * 8 + 8];
            let y = &mut y[half * 128..half * 128 + 128];
            for l in 0..32 {
                let is = l / 16;
                let q1 = ((ql[l] & 0x0f) | ((qh[l] & 3) << 4)) as i8 - 32;
                let q2 = ((ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4)) as i8 - 32;
                let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i8 - 32;
                let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i8 - 32;
                y[l] = d * f32::from(sc[is]) * f32::from(q1);
                y[l + 32] = d * f32::from(sc[is + 2]) * f32::from(q2);
                y[l + 64] = d * f32::from(sc[is + 4]) * f32::from(q3);
                y[l + 96] = d * f32::from(sc[is + 6]) * f32::from(q4);
            }
        }
    }
}

impl QuantizeBlock for BlockQ6K {
    fn from_float(x: &[f32]) -> Self {
        assert_eq!(x.len(), QK_K);
        let mut l = [0i8; QK_K];
        let mut scales = [0f32; QK_K / 16];
        let (mut max_scale, mut max_abs_scale) = (0.0f32, 0.0f32);
        for ib in 0..QK_K / 16 {
            let s = make_qx_quants(32, &x[16 * ib..16 * ib + 16], &mut l[16 * ib..16 * ib + 16]);
            scales[ib] = s;
            if s.abs() > max_abs_scale {
                max_abs_scale = s.abs();
                max_scale = s;
            }
        }
        if max_abs_scale < GROUP_MAX_EPS {
            return BlockQ6K {
                ql: [0; QK_K / 2],
                qh: [0; QK_K / 4],
                scales: [0; QK_K / 16],
                d: f16::from_f32(0.0),
            };
        }
        let iscale = -128.0 / max_scale;
        let d = f16::from_f32(1.0 / iscale);
        let mut sc = [0i8; QK_K / 16];
        for ib in 0..QK_K / 16 {
            sc[ib] = nearest_int(iscale * scales[ib]).min(127) as i8;
        }
        for j in 0..QK_K / 16 {
            let dl = d.to_f32() * f32::from(sc[j]);
            if dl == 0.0 {
                continue;
            }
            for ii in 0..16 {
                let q = nearest_int(x[16 * j + ii] / dl).clamp(-32, 31);
                l[16 * j + ii] = (q + 32) as i8;
            }
        }
        let l = l.map(|v| v as u8);
        let mut ql = [0u8; QK_K / 2];
        let mut qh = [0u8; QK_K / 4];
        for half in 0..2 {
            let (j, o, h) = (half * 128, half * 64, half * 32);
            for i in 0..32 {
                let q1 = l[j + i] & 0x0f;
                let q2 = l[j + i + 32] & 0x0f;
                let q3 = l[j + i + 64] & 0x0f;
                let q4 = l[j + i + 96] & 0x0f;
                ql[o + i] = q1 | (q3 << 4);
                ql[o + i + 32] = q2 | (q4 << 4);
                qh[h + i] = (l[j + i] >> 4)
                    | ((l[j + i + 32] >> 4) << 2)
                    | ((l[j + i + 64] >> 4) << 4)
                    | ((l[j + i + 96] >> 4) << 6);
            }
        }
        BlockQ6K {
            ql,
            qh,
            scales: sc,
            d,
        }
    }
}

/// Q8_K: 8-bit values with an f32 scale and sums of each 16 values, `x = d * q`; the
/// activation format of k-quant dot products. 292 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockQ8K {
    /// Scale.
    pub d: f32,
    /// The values.
    pub qs: [i8; QK_K],
    /// Sum of each group of 16 values.
    pub bsums: [i16; QK_K / 16],
}
const _: () = assert!(std::mem::size_of::<BlockQ8K>() == 292);

impl BlockFormat for BlockQ8K {
    const TYPE: GgmlType = GgmlType::Q8_K;
    const BLOCK_SIZE: usize = QK_K;

    fn read(bytes: &[u8]) -> Self {
        let mut f = Fields::new(bytes);
        BlockQ8K {
            d: f.f32(),
            qs: f.i8s(),
            bsums: f.i16s(),
        }
    }

    fn write(&self, out: &mut [u8]) {
        let mut o = Out::new(out);
        o.put(&self.d.to_le_bytes());
        o.i8s(&self.qs);
        for s in self.bsums {
            o.u16(s as u16);
        }
    }

    fn to_float(&self, y: &mut [f32]) {
        for (y, &q) in y.iter_mut().zip(&self.qs) {
            *y = self.d * f32::from(q);
        }
    }
}

impl QuantizeBlock for BlockQ8K {
    fn from_float(x: &[f32]) -> Self {
        assert_eq!(x.len(), QK_K);
        let (amax, max) = signed_absmax(x);
        let mut b = BlockQ8K {
            d: 0.0,
            qs: [0; QK_K],
            bsums: [0; QK_K / 16],
        };
        if amax == 0.0 {
            return b;
        }
        let iscale = -127.0 / max;
        for (q, &v) in b.qs.iter_mut().zip(x) {
            *q = nearest_int(iscale * v).min(127) as i8;
        }
        for (s, group) in b.bsums.iter_mut().zip(b.qs.chunks_exact(16)) {
            *s = group.iter().map(|&q| i16::from(q)).sum();
        }
        b.d = 1.0 / iscale;
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_min_k4_round_trips_six_bit_fields() {
        let ls = [0, 1, 17, 63, 32, 5, 48, 63];
        let lm = [63, 2, 0, 31, 16, 62, 1, 33];
        let packed = pack_scale_min_k4(&ls, &lm);
        for j in 0..8 {
            assert_eq!(scale_min_k4(j, &packed), (ls[j], lm[j]), "sub-block {j}");
        }
    }

    #[test]
    fn hand_made_q8_k_block() {
        let mut b = BlockQ8K {
            d: 0.25,
            qs: [0; QK_K],
            bsums: [0; QK_K / 16],
        };
        b.qs[0] = -128;
        b.qs[255] = 127;
        b.qs[17] = 3;
        let mut bytes = [0u8; 292];
        b.write(&mut bytes);
        assert_eq!(&bytes[..4], &0.25f32.to_le_bytes());
        assert_eq!(bytes[4], 0x80);
        let mut y = [0f32; QK_K];
        BlockQ8K::read(&bytes).to_float(&mut y);
        assert_eq!((y[0], y[17], y[255], y[1]), (-32.0, 0.75, 31.75, 0.0));
    }

    #[test]
    fn hand_made_q3_k_block() {
        // Scale 5 is (0x3 | 0x2 << 4) - 32 = 3; everything else is -32.
        let mut b = BlockQ3K {
            hmask: [0; 32],
            qs: [0; 64],
            scales: [0; 12],
            d: f16::from_f32(0.5),
        };
        b.scales[5] = 0x03;
        b.scales[9] = 0x02 << 2;
        assert_eq!(scale_q3k(5, &b.scales), 3);
        assert_eq!(scale_q3k(0, &b.scales), -32);
        // Element 80 = quarter 2 (bits 4-5 of qs[16..32]), second sub-block -> scale 5.
        b.qs[16] = 0b11 << 4;
        b.hmask[16] = 1 << 2; // third bit set: no -4
        let mut y = [0f32; QK_K];
        b.to_float(&mut y);
        assert_eq!(y[80], 0.5 * 3.0 * 3.0);
        assert_eq!(y[81], 0.5 * 3.0 * -4.0);
        assert_eq!(y[0], 0.5 * -32.0 * -4.0);
    }
}
