//! Every SIMD kernel against the scalar reference, on fresh random inputs, for every type.

use worker_compute::cpu::quant::{
    generic, BlockQ8, BlockQ8K, Isa, Kernels, PanelDot, PanelDotMany, PanelDots, VecDot,
    PANEL_BATCH, SUPPORTED_TYPES,
};
use worker_gguf::quants::iq::{e8m0_to_f32_half, KVALUES_IQ4NL, KVALUES_MXFP4};
use worker_gguf::GgmlType;

use worker_testdata::Rng;

/// Offsets of the f16 scale fields in one block of `ty`.
fn f16_fields(ty: GgmlType) -> &'static [usize] {
    match ty {
        GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 => &[0],
        GgmlType::IQ4_NL | GgmlType::IQ4_XS => &[0],
        GgmlType::Q2_K => &[80, 82],
        GgmlType::Q3_K => &[108],
        GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q4_K | GgmlType::Q5_K => &[0, 2],
        GgmlType::Q6_K => &[208],
        _ => &[],
    }
}

/// A random row of `n` elements of `ty`: random payload bits, sane scales.
fn random_row(rng: &mut Rng, ty: GgmlType, n: usize) -> Vec<u8> {
    let nbytes = ty.bytes_for(n as u64).unwrap() as usize;
    match ty {
        GgmlType::F32 => (0..n).flat_map(|_| rng.f32().to_le_bytes()).collect(),
        GgmlType::F16 => (0..n)
            .flat_map(|_| half::f16::from_f32(rng.f32()).to_le_bytes())
            .collect(),
        GgmlType::BF16 => (0..n)
            .flat_map(|_| half::bf16::from_f32(rng.f32()).to_le_bytes())
            .collect(),
        _ => {
            let mut b = rng.bytes(nbytes);
            for blk in b.chunks_exact_mut(ty.type_size()) {
                for &off in f16_fields(ty) {
                    let v = half::f16::from_f32(rng.f32() * 0.01);
                    blk[off..off + 2].copy_from_slice(&v.to_le_bytes());
                }
                if ty == GgmlType::MXFP4 {
                    // The shared exponent (E8M0): scales from 2^-9 to 2^-2, and now and then
                    // one of the subnormal scales (exponents 0 and 1) or the smallest normal.
                    blk[0] = match rng.next() % 16 {
                        0 => (rng.next() % 3) as u8,
                        _ => 119 + (rng.next() % 8) as u8,
                    };
                }
            }
            b
        }
    }
}

/// Whether this CPU must get SIMD tables, panel kernels for every type with a panel layout
/// included: an x86-64 CPU with AVX2, any aarch64 CPU (NEON).
fn has_simd() -> bool {
    #[cfg(target_arch = "x86_64")]
    return std::is_x86_feature_detected!("avx2");
    #[cfg(target_arch = "aarch64")]
    return std::arch::is_aarch64_feature_detected!("neon");
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    false
}

/// Every SIMD table this CPU supports (none on other architectures: the scalar kernels run
/// there).
fn simd_tables() -> Vec<Kernels> {
    #[cfg(target_arch = "x86_64")]
    let v: Vec<Kernels> = {
        use worker_compute::cpu::quant::x86;
        x86::avx2_kernels()
            .into_iter()
            .chain(x86::avx512_kernels())
            .collect()
    };
    #[cfg(target_arch = "aarch64")]
    let v: Vec<Kernels> = {
        use worker_compute::cpu::quant::aarch64;
        aarch64::neon_kernels()
            .into_iter()
            .chain(aarch64::dotprod_kernels())
            .chain(aarch64::i8mm_kernels())
            .collect()
    };
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    let v: Vec<Kernels> = Vec::new();
    assert!(
        !v.is_empty() || !has_simd(),
        "an AVX2 or aarch64 machine must get a SIMD table"
    );
    v
}

/// `Kernels::detect` picks the best table this CPU supports (the last of [`simd_tables`]),
/// the scalar one where there is none.
#[test]
fn detect_picks_the_best_table() {
    let best = simd_tables().last().map_or(Isa::Scalar, |k| k.isa);
    assert_eq!(Kernels::detect().isa, best);
}

#[test]
fn quantize_rows_match_scalar() {
    let mut rng = Rng::new();
    let scalar = Kernels::scalar();
    for simd in simd_tables() {
        for n in [256, 512, 2048] {
            let x: Vec<f32> = (0..n).map(|_| rng.f32() * 3.0).collect();
            let (mut a, mut b) = (
                vec![BlockQ8::default(); n / 32],
                vec![BlockQ8::default(); n / 32],
            );
            (scalar.quantize_row_q8)(&x, &mut a);
            (simd.quantize_row_q8)(&x, &mut b);
            for (p, q) in a.iter().zip(&b) {
                assert_eq!((p.d, p.s, p.qs), (q.d, q.s, q.qs), "{:?} q8", simd.isa);
            }
            let (mut a, mut b) = (
                vec![BlockQ8K::default(); n / 256],
                vec![BlockQ8K::default(); n / 256],
            );
            (scalar.quantize_row_q8k)(&x, &mut a);
            (simd.quantize_row_q8k)(&x, &mut b);
            for (p, q) in a.iter().zip(&b) {
                assert_eq!(
                    (p.d, p.qs, p.bsums),
                    (q.d, q.qs, q.bsums),
                    "{:?} q8k",
                    simd.isa
                );
            }
        }
    }
}

#[test]
fn f32_helpers_match_scalar() {
    let mut rng = Rng::new();
    for simd in simd_tables() {
        for n in [1, 7, 64, 100, 128] {
            let a: Vec<f32> = (0..n).map(|_| rng.f32()).collect();
            let b: Vec<f32> = (0..n).map(|_| rng.f32()).collect();
            let (r, s) = (generic::dot_f32(&a, &b), (simd.dot_f32)(&a, &b));
            assert!(
                (r - s).abs() <= 1e-5 * n as f32,
                "{:?} dot_f32 n={n}: {r} vs {s}",
                simd.isa
            );
            // SwiGLU over the whole range where exp over- and underflows.
            let g: Vec<f32> = (0..n).map(|_| rng.f32() * 120.0).collect();
            let (mut want, mut got) = (vec![0f32; n], vec![0f32; n]);
            worker_compute::cpu::ops::swiglu_row(&mut want, &g, &b);
            (simd.swiglu)(&mut got, &g, &b);
            for ((w, o), gi) in want.iter().zip(&got).zip(&g) {
                let tol = 4e-7 * (gi * gi).max(1.0).sqrt();
                assert!(
                    (w - o).abs() <= tol,
                    "{:?} swiglu({gi}): {o} vs {w}",
                    simd.isa
                );
            }
            // GELU from far below zero (where it vanishes) to far above (where it is x).
            let x: Vec<f32> = (0..n).map(|_| rng.f32() * 24.0).collect();
            let (mut want, mut got) = (x.clone(), x.clone());
            worker_compute::cpu::ops::gelu_row(&mut want);
            (simd.gelu)(&mut got);
            for ((w, o), xi) in want.iter().zip(&got).zip(&x) {
                let tol = 4e-7 * xi.abs().max(1.0);
                assert!(
                    (w - o).abs() <= tol,
                    "{:?} gelu({xi}): {o} vs {w}",
                    simd.isa
                );
            }
        }
    }
}

/// The attention kernel of every table against the scalar one, and the scalar one against
/// softmax(K q) V computed in f64 from plain (untransposed) keys.
#[test]
fn attention_kernels_match_scalar_and_f64() {
    use generic::KEY_BLOCK as KB;
    let mut rng = Rng::new();
    for (hd, vhd) in [(64, 64), (128, 128), (64, 72), (40, 8)] {
        for (first, n) in [
            (0usize, 1usize),
            (0, 5),
            (0, 16),
            (0, 17),
            (0, 64),
            (0, 200),
            (3, 17),
            (16, 64),
            (37, 200),
            (199, 200),
            // Past one tile of the value pass (256 positions), starting inside the second.
            (0, 600),
            (300, 600),
        ] {
            let q: Vec<f32> = (0..hd).map(|_| rng.f32()).collect();
            let plain: Vec<f32> = (0..n * hd).map(|_| rng.f32() * 3.0).collect();
            let values: Vec<f32> = (0..n * vhd).map(|_| rng.f32()).collect();
            // Stale data past position n in the last key block must not matter.
            let mut keys: Vec<f32> = (0..n.div_ceil(KB) * KB * hd)
                .map(|_| rng.f32() * 1e3)
                .collect();
            for t in 0..n {
                for d in 0..hd {
                    keys[(t / KB * hd + d) * KB + t % KB] = plain[t * hd + d];
                }
            }
            let scale = 1.0 / (hd as f32).sqrt();
            // Without a sink, and with one (gpt-oss): a logit that joins the softmax's
            // maximum and denominator only; one above every score checks the maximum.
            for sink in [None, Some(rng.f32()), Some(40.0)] {
                let sinks: Vec<f32> = sink.into_iter().collect();
                // The window first..n only: the keys and values before it must not matter.
                let s: Vec<f64> = (first..n)
                    .map(|t| {
                        let dot: f64 = (0..hd)
                            .map(|d| q[d] as f64 * plain[t * hd + d] as f64)
                            .sum();
                        dot * scale as f64
                    })
                    .collect();
                let max = s
                    .iter()
                    .cloned()
                    .chain(sink.map(f64::from))
                    .fold(f64::MIN, f64::max);
                let e: Vec<f64> = s.iter().map(|x| (x - max).exp()).collect();
                let sum: f64 = e.iter().sum::<f64>() + sink.map_or(0.0, |k| (k as f64 - max).exp());
                let want: Vec<f64> = (0..vhd)
                    .map(|c| {
                        (first..n)
                            .map(|t| e[t - first] * values[t * vhd + c] as f64)
                            .sum::<f64>()
                            / sum
                    })
                    .collect();
                let mut scores = Vec::new();
                let mut reference = vec![0f32; vhd];
                generic::attend(
                    &q,
                    &keys,
                    &values,
                    first,
                    n,
                    scale,
                    &sinks,
                    &mut reference,
                    &mut scores,
                    1,
                );
                for (c, (r, w)) in reference.iter().zip(&want).enumerate() {
                    assert!(
                        (*r as f64 - w).abs() < 1e-5,
                        "scalar attend hd={hd} first={first} n={n} sink={sink:?} col {c}: \
                         {r} vs {w}"
                    );
                }
                for simd in simd_tables() {
                    let mut got = vec![0f32; vhd];
                    (simd.attend)(
                        &q,
                        &keys,
                        &values,
                        first,
                        n,
                        scale,
                        &sinks,
                        &mut got,
                        &mut scores,
                        1,
                    );
                    for (c, (g, r)) in got.iter().zip(&reference).enumerate() {
                        assert!(
                            (g - r).abs() <= 2e-6,
                            "{:?} attend hd={hd} vhd={vhd} first={first} n={n} sink={sink:?} \
                             col {c}: {g} vs scalar {r}",
                            simd.isa
                        );
                    }
                    // A GQA group of heads in one call: each head bit for bit as alone
                    // (with its own sink).
                    for heads in [2usize, 3, 4, 5, 7] {
                        let qs: Vec<f32> = (0..heads * hd).map(|_| rng.f32()).collect();
                        let group_sinks: Vec<f32> = match sink {
                            Some(_) => (0..heads).map(|_| rng.f32() * 2.0).collect(),
                            None => Vec::new(),
                        };
                        let mut together = vec![0f32; heads * vhd];
                        (simd.attend)(
                            &qs,
                            &keys,
                            &values,
                            first,
                            n,
                            scale,
                            &group_sinks,
                            &mut together,
                            &mut scores,
                            heads,
                        );
                        for h in 0..heads {
                            let mut alone = vec![0f32; vhd];
                            let qh = &qs[h * hd..(h + 1) * hd];
                            (simd.attend)(
                                qh,
                                &keys,
                                &values,
                                first,
                                n,
                                scale,
                                group_sinks.get(h..h + 1).unwrap_or_default(),
                                &mut alone,
                                &mut scores,
                                1,
                            );
                            let got = &together[h * vhd..(h + 1) * vhd];
                            assert_eq!(
                                got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                                alone.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                                "{:?} attend hd={hd} vhd={vhd} n={n}: head {h} of {heads} vs \
                                 alone",
                                simd.isa
                            );
                        }
                    }
                }
            }
        }
    }
}

/// The f16 attention kernels read a KV cache's blocks where they lie (each block its own
/// allocation here, as scattered pages are in a cache) with the bits of the same table's
/// f32 kernel over the entries converted: f16 to f32 is exact, and the sums run in the same
/// order. Shapes the vector body cannot take fall back alike.
#[test]
fn f16_attention_in_place_gives_the_bits_of_the_f32_kernel() {
    use generic::{F16Block, KEY_BLOCK as KB};
    let mut rng = Rng::new();
    let f16s = |rng: &mut Rng, n: usize, scale: f32| -> Vec<u8> {
        (0..n)
            .flat_map(|_| half::f16::from_f32(rng.f32() * scale).to_le_bytes())
            .collect()
    };
    let mut checked = 0;
    for (hd, vhd) in [(64, 64), (256, 256), (64, 72), (40, 12)] {
        for (first, n) in [
            (0usize, 1usize),
            (0, 16),
            (0, 17),
            (5, 40),
            (39, 40),
            (0, 100),
            (270, 600),
        ] {
            let nb = n.div_ceil(KB);
            // Stale entries past position n in the last block must not matter.
            let keys: Vec<Vec<u8>> = (0..nb).map(|_| f16s(&mut rng, hd * KB, 3.0)).collect();
            let values: Vec<Vec<u8>> = (0..nb).map(|_| f16s(&mut rng, KB * vhd, 1.0)).collect();
            let blocks: Vec<F16Block<'_>> = keys
                .iter()
                .zip(&values)
                .map(|(k, v)| F16Block { keys: k, values: v })
                .collect();
            let widen = |b: &[Vec<u8>]| -> Vec<f32> {
                b.iter()
                    .flat_map(|e| e.chunks_exact(2))
                    .map(|h| half::f16::from_le_bytes([h[0], h[1]]).to_f32())
                    .collect()
            };
            let (kf, vf) = (widen(&keys), widen(&values));
            let scale = 1.0 / (hd as f32).sqrt();
            for heads in [1usize, 2, 3, 4, 5] {
                let q: Vec<f32> = (0..heads * hd).map(|_| rng.f32()).collect();
                for sinks in [Vec::new(), (0..heads).map(|_| rng.f32()).collect()] {
                    for simd in simd_tables() {
                        let Some(attend_f16) = simd.attend_f16 else {
                            continue;
                        };
                        let (mut want, mut got) =
                            (vec![0f32; heads * vhd], vec![1f32; heads * vhd]);
                        let mut scores = Vec::new();
                        (simd.attend)(
                            &q,
                            &kf,
                            &vf,
                            first,
                            n,
                            scale,
                            &sinks,
                            &mut want,
                            &mut scores,
                            heads,
                        );
                        attend_f16(
                            &q,
                            &blocks,
                            first,
                            n,
                            scale,
                            &sinks,
                            &mut got,
                            &mut scores,
                            heads,
                        );
                        assert_eq!(
                            got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                            want.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                            "{:?} hd={hd} vhd={vhd} first={first} n={n} heads={heads} \
                             sinks={}",
                            simd.isa,
                            sinks.len()
                        );
                        checked += 1;
                    }
                }
            }
        }
    }
    eprintln!("{checked} cases");
}

/// The dot product of every type, SIMD against scalar. Integer sums are exact in both, so
/// the only difference is the order of the f32 sums: the tolerance is relative to the sum of
/// absolute products.
#[test]
fn vec_dots_match_scalar_for_every_type() {
    let mut rng = Rng::new();
    let scalar = Kernels::scalar();
    let tables = simd_tables();
    for ty in SUPPORTED_TYPES {
        let sk = scalar
            .for_type(ty)
            .expect("scalar kernel for every supported type");
        for n in [256, 768, 4864] {
            for _ in 0..20 {
                let w = random_row(&mut rng, ty, n);
                let x: Vec<f32> = (0..n).map(|_| rng.f32() * 2.0).collect();
                let mut wf = vec![0f32; n];
                (sk.dequantize_row)(&w, &mut wf);
                let mut q8 = vec![BlockQ8::default(); n / 32];
                let mut q8k = vec![BlockQ8K::default(); n / 256];
                generic::quantize_row_q8(&x, &mut q8);
                generic::quantize_row_q8k(&x, &mut q8k);
                let magnitude: f32 = wf.iter().zip(&x).map(|(a, b)| (a * b).abs()).sum();
                let eval = |v: VecDot| match v {
                    VecDot::F32(f) => f(&w, &x),
                    VecDot::Q8(f) => f(&w, &q8),
                    VecDot::Q8K(f) => f(&w, &q8k),
                    // No kernel of its own: what the matmul computes.
                    VecDot::Dequantized => generic::dot_f32(&wf, &x),
                };
                let reference = eval(sk.vec_dot);
                // The scalar quantized dot itself is close to the f32 dot of dequantized rows.
                let exact: f32 = wf.iter().zip(&x).map(|(a, b)| a * b).sum();
                assert!(
                    (reference - exact).abs() <= 0.02 * magnitude + 1e-6,
                    "{ty} n={n}: scalar quantized dot {reference} vs f32 {exact}"
                );
                for simd in &tables {
                    let k = simd.for_type(ty).expect("simd table covers every type");
                    let got = eval(k.vec_dot);
                    assert!(
                        (got - reference).abs() <= 1e-5 * magnitude + 1e-6,
                        "{:?} {ty} n={n}: {got} vs scalar {reference}",
                        simd.isa
                    );
                }
            }
        }
    }
}

/// Our dequantizers (scalar and SIMD tables) against worker-gguf's independent reference, for
/// every type.
#[test]
fn dequantizers_match_worker_gguf() {
    let mut rng = Rng::new();
    for table in [Kernels::scalar(), Kernels::detect()] {
        for ty in SUPPORTED_TYPES {
            let k = table.for_type(ty).unwrap();
            // F16 rows of any length (the SIMD kernel has a tail); whole blocks otherwise.
            let lens: &[usize] = if ty == GgmlType::F16 {
                &[256, 1024, 37, 7]
            } else {
                &[256, 1024]
            };
            for &n in lens {
                let w = random_row(&mut rng, ty, n);
                let (mut ours, mut theirs) = (vec![0f32; n], vec![0f32; n]);
                (k.dequantize_row)(&w, &mut ours);
                worker_gguf::dequantize(ty, &w, &mut theirs)
                    .unwrap_or_else(|e| panic!("worker-gguf cannot dequantize {ty}: {e}"));
                for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
                    assert!(
                        (a - b).abs() <= 1e-6 * (1.0 + b.abs()),
                        "{:?} {ty} element {i}: {a} vs worker-gguf {b}",
                        table.isa
                    );
                    if ty == GgmlType::F16 {
                        assert_eq!(a.to_bits(), b.to_bits(), "f16 converts exactly");
                    }
                }
            }
        }
    }
}

/// The quants, the scale and the bias of GGUF block `b` (see `quant::panel`): what a panel
/// kernel multiplies, computed from the GGUF bytes without the panel layout. The quants are
/// unsigned where there is a bias; MXFP4's are its signed levels, with no bias.
fn panel_block_terms(ty: GgmlType, b: &[u8]) -> ([i32; 32], f32, Option<f32>) {
    let f16 = |o: usize| half::f16::from_le_bytes([b[o], b[o + 1]]).to_f32();
    let d = f16(0);
    let nibbles = |qs: &[u8]| {
        let mut u = [0i32; 32];
        for j in 0..16 {
            u[j] = (qs[j] & 0xF) as i32;
            u[j + 16] = (qs[j] >> 4) as i32;
        }
        u
    };
    match ty {
        GgmlType::Q4_0 => (nibbles(&b[2..18]), d, Some(d * -8.0)),
        GgmlType::Q4_1 => (nibbles(&b[4..20]), d, Some(f16(2))),
        GgmlType::Q5_0 | GgmlType::Q5_1 => {
            // Q5_1: the minimum at 2 moves the high bits to 4 and the quants to 8.
            let o = if ty == GgmlType::Q5_1 { 2 } else { 0 };
            let qh = u32::from_le_bytes([b[2 + o], b[3 + o], b[4 + o], b[5 + o]]);
            let mut u = nibbles(&b[6 + o..22 + o]);
            for (j, v) in u.iter_mut().enumerate() {
                *v |= (((qh >> j) & 1) << 4) as i32;
            }
            (u, d, Some(if o == 0 { d * -16.0 } else { f16(2) }))
        }
        GgmlType::Q8_0 => (
            std::array::from_fn(|j| b[2 + j] as i8 as i32 + 128),
            d,
            Some(d * -128.0),
        ),
        GgmlType::IQ4_NL => (
            nibbles(&b[2..18]).map(|q| KVALUES_IQ4NL[q as usize] as i32 + 128),
            d,
            Some(d * -128.0),
        ),
        GgmlType::MXFP4 => (
            nibbles(&b[1..17]).map(|q| KVALUES_MXFP4[q as usize] as i32),
            e8m0_to_f32_half(b[0]),
            None,
        ),
        _ => unreachable!("{ty} has no panel layout"),
    }
}

/// One panel of random `ty` rows of `n` elements against [`PANEL_BATCH`] activation rows:
/// each output bit for bit as `block` (one block's documented f32 steps, returning the new
/// sum and the size of its terms) accumulates it, the many-row call bit for bit as the
/// one-row call, and close to the scalar reference dot product.
#[allow(clippy::too_many_arguments)]
fn check_panel<A>(
    rng: &mut Rng,
    what: &str,
    ty: GgmlType,
    n: usize,
    format: worker_compute::cpu::quant::panel::PanelFormat,
    (dot, dot_many): (PanelDot<A>, PanelDotMany<A>),
    reference: impl Fn(&[u8], &[A]) -> (f32, f32),
    quantize: impl Fn(&[f32]) -> Vec<A>,
    block: impl Fn(&[u8], &A, f32) -> (f32, f32),
) {
    use worker_compute::cpu::quant::panel::PANEL;
    let w: Vec<Vec<u8>> = (0..PANEL).map(|_| random_row(rng, ty, n)).collect();
    let mut panel = vec![0; format.bytes(PANEL, n)];
    format.repack(n, &w.concat(), &mut panel);
    // The last row is all +1: every activation byte 127, the largest sums a kernel can meet
    // (an overflow of 16-bit partial sums shows there and almost never with random signs).
    let xs: Vec<Vec<A>> = (0..PANEL_BATCH)
        .map(|r| {
            let x: Vec<f32> = if r + 1 == PANEL_BATCH {
                vec![1.0; n]
            } else {
                (0..n).map(|_| rng.f32() * 2.0).collect()
            };
            quantize(&x)
        })
        .collect();
    let many = dot_many(&panel, std::array::from_fn(|i| &xs[i][..]));
    for (x, got_many) in xs.iter().zip(many) {
        let got = dot(&panel, x);
        for (i, row) in w.iter().enumerate() {
            let (mut want, mut size) = (0f32, 0f32);
            for (b, a) in row.chunks_exact(ty.type_size()).zip(x) {
                let (acc, s) = block(b, a, want);
                want = acc;
                size += s;
            }
            let what = format!("{what} {ty} panel n={n} row {i}");
            assert_eq!(
                got[i].to_bits(),
                want.to_bits(),
                "{what}: {} vs {want}",
                got[i]
            );
            assert_eq!(
                got_many[i].to_bits(),
                got[i].to_bits(),
                "{what}: many vs one"
            );
            let (r, r_size) = reference(row, x);
            // Both round differently (f32 block sums in other orders, or f32 dequantized
            // weights): relative to the size of the terms each adds up.
            let tol = 2e-6 * (size + r_size) + 1e-7;
            assert!(
                (got[i] - r).abs() <= tol,
                "{what}: {} vs scalar {r}",
                got[i]
            );
        }
    }
}

/// The panel kernels of the 32-element types against their documented per-block sums
/// (computed here in scalar code from the GGUF rows), the scalar dot, and one row.
#[test]
fn panel_kernels_match_their_definition_and_the_scalar_dot() {
    let mut rng = Rng::new();
    let scalar = Kernels::scalar();
    let mut checked = 0;
    for simd in simd_tables() {
        for ty in SUPPORTED_TYPES {
            let Some(pk) = simd.for_type(ty).and_then(|k| k.panel) else {
                continue;
            };
            let PanelDots::Q8(dot, dot_many) = pk.dots else {
                continue;
            };
            let sk = scalar.for_type(ty).unwrap();
            let dequantize = sk.dequantize_row;
            let reference = |row: &[u8], x: &[BlockQ8]| match sk.vec_dot {
                VecDot::Q8(scalar_dot) => (scalar_dot(row, x), 0.0),
                // No scalar row kernel (IQ4_NL): the dequantized row against the activations'
                // values, in f64.
                _ => {
                    let mut w = vec![0f32; x.len() * 32];
                    dequantize(row, &mut w);
                    let (mut dot, mut size) = (0f64, 0f64);
                    for (wb, a) in w.chunks_exact(32).zip(x) {
                        for (w, q) in wb.iter().zip(a.qs) {
                            let term = *w as f64 * q as f64 * a.d as f64;
                            dot += term;
                            size += term.abs();
                        }
                    }
                    (dot as f32, size as f32)
                }
            };
            let quantize = |x: &[f32]| {
                let mut q = vec![BlockQ8::default(); x.len() / 32];
                generic::quantize_row_q8(x, &mut q);
                q
            };
            let block = |b: &[u8], a: &BlockQ8, acc: f32| {
                let (u, d, bias) = panel_block_terms(ty, b);
                let isum: i32 = u.iter().zip(a.qs).map(|(u, q)| u * q as i32).sum();
                let acc = (isum as f32).mul_add(d * a.d, acc);
                let size = (isum as f32 * d * a.d).abs();
                match bias {
                    Some(bias) => (bias.mul_add(a.s, acc), size + (bias * a.s).abs()),
                    None => (acc, size),
                }
            };
            for n in [32, 96, 896] {
                let what = format!("{:?}", simd.isa);
                let dots = (dot, dot_many);
                check_panel(
                    &mut rng, &what, ty, n, pk.format, dots, reference, quantize, block,
                );
                checked += 1;
            }
        }
    }
    assert!(
        checked > 0 || !has_simd(),
        "an AVX2 or aarch64 machine must get panel kernels"
    );
}

/// MXFP4's panel kernels compute exactly the scalar row kernel's steps: the same bits, for
/// one activation row and for [`PANEL_BATCH`], on rows with subnormal scales too.
#[test]
fn mxfp4_panel_kernels_give_the_scalar_row_kernels_bits() {
    use worker_compute::cpu::quant::panel::PANEL;
    let mut rng = Rng::new();
    let mut checked = 0;
    for simd in simd_tables() {
        let Some(pk) = simd.for_type(GgmlType::MXFP4).and_then(|k| k.panel) else {
            continue;
        };
        let PanelDots::Q8(dot, dot_many) = pk.dots else {
            panic!("MXFP4 panel kernels that do not take Q8 activations");
        };
        for n in [32, 64, 2880] {
            // A partial last panel: rows beyond the weight's are zeros in the panels.
            let rows = PANEL + 5;
            let w: Vec<Vec<u8>> = (0..rows)
                .map(|_| random_row(&mut rng, GgmlType::MXFP4, n))
                .collect();
            let mut panels = vec![0; pk.format.bytes(rows, n)];
            pk.format.repack(n, &w.concat(), &mut panels);
            let panel_bytes = panels.len() / rows.div_ceil(PANEL);
            let xs: Vec<Vec<BlockQ8>> = (0..PANEL_BATCH)
                .map(|_| {
                    let x: Vec<f32> = (0..n).map(|_| rng.f32() * 2.0).collect();
                    let mut q = vec![BlockQ8::default(); n / 32];
                    generic::quantize_row_q8(&x, &mut q);
                    q
                })
                .collect();
            for (p, panel) in panels.chunks_exact(panel_bytes).enumerate() {
                let many = dot_many(panel, std::array::from_fn(|i| &xs[i][..]));
                for (x, got_many) in xs.iter().zip(many) {
                    let got = dot(panel, x);
                    for i in 0..PANEL.min(rows - p * PANEL) {
                        let want = generic::vec_dot_mxfp4(&w[p * PANEL + i], x);
                        let what = format!("{:?} n={n} row {}", simd.isa, p * PANEL + i);
                        assert_eq!(
                            got[i].to_bits(),
                            want.to_bits(),
                            "{what}: {} vs {want}",
                            got[i]
                        );
                        assert_eq!(got_many[i].to_bits(), want.to_bits(), "{what}: many");
                    }
                }
            }
            checked += 1;
        }
    }
    assert!(
        checked > 0 || !has_simd(),
        "an AVX2 or aarch64 machine must get MXFP4 panel kernels"
    );
}

/// The documented integer sums of a k-quant panel kernel for one GGUF super-block `b` and
/// activation block `a`: `(tot, mins)` (see `quant::x86_panel`).
fn k_panel_sums(ty: GgmlType, b: &[u8], a: &BlockQ8K) -> (i32, i32) {
    let x = |e: usize| a.qs[e] as i32;
    match ty {
        GgmlType::Q4_K | GgmlType::Q5_K => {
            let s = &b[4..16];
            // Q5_K: the high bit of element l of sub-block j is bit j of qh[l], the quants
            // follow at 48.
            let (qs, qh) = if ty == GgmlType::Q5_K {
                (48, Some(&b[16..48]))
            } else {
                (16, None)
            };
            let scale_min = |j: usize| -> (i32, i32) {
                if j < 4 {
                    ((s[j] & 63) as i32, (s[j + 4] & 63) as i32)
                } else {
                    (
                        ((s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4)) as i32,
                        ((s[j + 4] >> 4) | ((s[j] >> 6) << 4)) as i32,
                    )
                }
            };
            let (mut tot, mut mins) = (0, 0);
            for j in 0..8 {
                let (sc, m) = scale_min(j);
                let (p, hi) = (j / 2, j % 2);
                let u = |l: usize| {
                    let high = qh.map_or(0, |qh| ((qh[l] >> j) & 1) << 4);
                    (((b[qs + 32 * p + l] >> (4 * hi)) & 0xF) | high) as i32
                };
                let dot: i32 = (0..32).map(|l| u(l) * x(32 * j + l)).sum();
                tot += sc * dot;
                mins += m * (a.bsums[2 * j] as i32 + a.bsums[2 * j + 1] as i32);
            }
            (tot, mins)
        }
        GgmlType::Q6_K => {
            let mut tot = 0;
            for e in 0..256 {
                let (n, r) = (e / 128, e % 128);
                let (quarter, l) = (r / 32, r % 32);
                let ql = b[64 * n + l + 32 * (quarter % 2)] >> (4 * (quarter / 2)) & 0xF;
                let qh = (b[128 + 32 * n + l] >> (2 * quarter)) & 3;
                let u = (ql | qh << 4) as i32;
                tot += (b[192 + e / 16] as i8) as i32 * u * x(e);
            }
            for s in 0..16 {
                tot -= 32 * (b[192 + s] as i8) as i32 * a.bsums[s] as i32;
            }
            (tot, 0)
        }
        GgmlType::Q2_K => {
            // Sub-block s = elements 16s..16s+16: scale and min in the nibbles of byte s; the
            // quant of element e in byte 16 + 32 (e / 128) + e % 32 at bit pair (e % 128) / 32.
            let (mut tot, mut mins) = (0, 0);
            for e in 0..256 {
                let u = (b[16 + 32 * (e / 128) + e % 32] >> (2 * ((e % 128) / 32))) & 3;
                tot += (b[e / 16] & 0xF) as i32 * u as i32 * x(e);
            }
            for (sc, bs) in b[..16].iter().zip(a.bsums) {
                mins += (sc >> 4) as i32 * bs as i32;
            }
            (tot, mins)
        }
        GgmlType::IQ4_XS => {
            // tot = Σ_j (ls_j - 32) · Σ level·x over the sub-blocks of 32.
            let scales_h = u16::from_le_bytes([b[2], b[3]]);
            let mut tot = 0;
            for j in 0..8 {
                let ls = ((b[4 + j / 2] >> (4 * (j % 2))) & 0xF) as i32
                    | (((scales_h >> (2 * j)) & 3) as i32) << 4;
                let qs = &b[8 + 16 * j..24 + 16 * j];
                let dot: i32 = (0..32)
                    .map(|e| {
                        let code = (qs[e % 16] >> (4 * (e / 16))) & 0xF;
                        KVALUES_IQ4NL[code as usize] as i32 * x(32 * j + e)
                    })
                    .sum();
                tot += (ls - 32) * dot;
            }
            (tot, 0)
        }
        GgmlType::Q3_K => {
            // The Q6_K kernel's sums over Q3_K repacked: quants plus 32, scales minus 32.
            let scale = |k: usize| {
                let low = (b[96 + k % 8] >> (4 * (k / 8))) & 0xF;
                (low | ((b[104 + k % 4] >> (2 * (k / 4))) & 3) << 4) as i32 - 32
            };
            let mut tot = 0;
            for e in 0..256 {
                let (n, r) = (e / 128, e % 128);
                let (j, half, l) = (r / 32, (r % 32) / 16, r % 16);
                let low = (b[32 + 32 * n + 16 * half + l] >> (2 * j)) & 3;
                let high = (b[16 * half + l] >> (4 * n + j)) & 1;
                let u = low as i32 - if high == 1 { 0 } else { 4 } + 32;
                tot += scale(e / 16) * u * x(e);
            }
            for s in 0..16 {
                tot -= 32 * scale(s) * a.bsums[s] as i32;
            }
            (tot, 0)
        }
        _ => unreachable!("{ty} is not a k-quant with a panel layout"),
    }
}

/// The k-quant panel kernels against their documented sums, the scalar dot, and one row.
#[test]
fn k_quant_panel_kernels_match_their_definition_and_the_scalar_dot() {
    let mut rng = Rng::new();
    let scalar = Kernels::scalar();
    let mut checked = 0;
    for simd in simd_tables() {
        for ty in SUPPORTED_TYPES {
            let Some(pk) = simd.for_type(ty).and_then(|k| k.panel) else {
                continue;
            };
            let PanelDots::Q8K(dot, dot_many) = pk.dots else {
                continue;
            };
            // The dequantized row against the activations' values (Q3_K's scalar row kernel
            // takes f32 activations, so it cannot be the reference here).
            let dequantize = scalar.for_type(ty).unwrap().dequantize_row;
            let reference = |row: &[u8], x: &[BlockQ8K]| {
                let mut w = vec![0f32; x.len() * 256];
                dequantize(row, &mut w);
                let (mut dot, mut size) = (0f64, 0f64);
                for (wb, a) in w.chunks_exact(256).zip(x) {
                    for (w, q) in wb.iter().zip(a.qs) {
                        let term = *w as f64 * q as f64 * a.d as f64;
                        dot += term;
                        size += term.abs();
                    }
                }
                (dot as f32, size as f32)
            };
            let quantize = |x: &[f32]| {
                let mut q = vec![BlockQ8K::default(); x.len() / 256];
                generic::quantize_row_q8k(x, &mut q);
                q
            };
            let block = |b: &[u8], a: &BlockQ8K, acc: f32| {
                let f16 = |o: usize| half::f16::from_le_bytes([b[o], b[o + 1]]).to_f32();
                let (tot, mins) = k_panel_sums(ty, b, a);
                if ty == GgmlType::Q3_K {
                    let acc = (tot as f32).mul_add(f16(108) * a.d, acc);
                    (acc, (tot as f32 * f16(108) * a.d).abs())
                } else if ty == GgmlType::Q2_K {
                    let acc = (tot as f32).mul_add(f16(80) * a.d, acc);
                    let acc = (mins as f32).mul_add(f16(82) * -a.d, acc);
                    let size =
                        (tot as f32 * f16(80) * a.d).abs() + (mins as f32 * f16(82) * a.d).abs();
                    (acc, size)
                } else if ty == GgmlType::IQ4_XS {
                    let acc = (tot as f32).mul_add(f16(0) * a.d, acc);
                    (acc, (tot as f32 * f16(0) * a.d).abs())
                } else if ty != GgmlType::Q6_K {
                    let acc = (tot as f32).mul_add(f16(0) * a.d, acc);
                    let acc = (mins as f32).mul_add(f16(2) * -a.d, acc);
                    let size =
                        (tot as f32 * f16(0) * a.d).abs() + (mins as f32 * f16(2) * a.d).abs();
                    (acc, size)
                } else {
                    let acc = (tot as f32).mul_add(f16(208) * a.d, acc);
                    (acc, (tot as f32 * f16(208) * a.d).abs())
                }
            };
            for n in [256, 1024] {
                let what = format!("{:?}", simd.isa);
                let dots = (dot, dot_many);
                check_panel(
                    &mut rng, &what, ty, n, pk.format, dots, reference, quantize, block,
                );
                checked += 1;
            }
        }
    }
    assert!(
        checked > 0 || !has_simd(),
        "an AVX2 or aarch64 machine must get k-quant panel kernels"
    );
}

/// The F16 and BF16 panel kernels (f32 activations) against their documented f32 steps
/// (four accumulators, element `e` into `e % 4` by fma, then `(a0 + a1) + (a2 + a3)`), one
/// activation row against many, and an f64 dot product of the weights.
#[test]
fn half_panel_kernels_match_their_definition() {
    use worker_compute::cpu::quant::panel::PANEL;
    let mut rng = Rng::new();
    let mut checked = 0;
    for simd in simd_tables() {
        for ty in [GgmlType::F16, GgmlType::BF16] {
            let Some(pk) = simd.for_type(ty).and_then(|k| k.panel) else {
                continue;
            };
            let PanelDots::F32(dot, dot_many) = pk.dots else {
                panic!("{ty}: panel kernels that do not take f32 activations");
            };
            let value = |b: &[u8]| match ty {
                GgmlType::F16 => half::f16::from_le_bytes([b[0], b[1]]).to_f32(),
                _ => half::bf16::from_le_bytes([b[0], b[1]]).to_f32(),
            };
            for n in [1usize, 6, 96, 577] {
                let w: Vec<Vec<u8>> = (0..PANEL).map(|_| random_row(&mut rng, ty, n)).collect();
                let mut panel = vec![0; pk.format.bytes(PANEL, n)];
                pk.format.repack(n, &w.concat(), &mut panel);
                let xs: Vec<Vec<f32>> = (0..PANEL_BATCH)
                    .map(|_| (0..n).map(|_| rng.f32() * 2.0).collect())
                    .collect();
                let many = dot_many(&panel, std::array::from_fn(|i| &xs[i][..]));
                for (x, got_many) in xs.iter().zip(many) {
                    let got = dot(&panel, x);
                    for (i, row) in w.iter().enumerate() {
                        let wf: Vec<f32> = row.chunks_exact(2).map(value).collect();
                        let mut acc = [0f32; 4];
                        for (e, (a, b)) in wf.iter().zip(x).enumerate() {
                            acc[e % 4] = a.mul_add(*b, acc[e % 4]);
                        }
                        let want = (acc[0] + acc[1]) + (acc[2] + acc[3]);
                        let what = format!("{:?} {ty} panel n={n} row {i}", simd.isa);
                        assert_eq!(
                            got[i].to_bits(),
                            want.to_bits(),
                            "{what}: {} vs {want}",
                            got[i]
                        );
                        assert_eq!(
                            got_many[i].to_bits(),
                            got[i].to_bits(),
                            "{what}: many vs one"
                        );
                        let exact: f64 = wf.iter().zip(x).map(|(a, b)| *a as f64 * *b as f64).sum();
                        let size: f64 = wf
                            .iter()
                            .zip(x)
                            .map(|(a, b)| (*a as f64 * *b as f64).abs())
                            .sum();
                        assert!(
                            (got[i] as f64 - exact).abs() <= 1e-6 * size + 1e-9,
                            "{what}: {} vs f64 {exact}",
                            got[i]
                        );
                    }
                }
                checked += 1;
            }
        }
    }
    assert!(
        checked > 0 || !has_simd(),
        "an AVX2 or aarch64 machine must get F16/BF16 panel kernels"
    );
}
