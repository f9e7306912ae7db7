use super::*;

/// A configuration with every filter and penalty off: plain softmax sampling at `temperature`.
fn plain(temperature: f32) -> SamplingConfig {
    SamplingConfig {
        temperature,
        top_k: 0,
        top_p: 1.0,
        min_p: 0.0,
        ..SamplingConfig::default()
    }
}

fn sampler(config: SamplingConfig, vocab_size: usize) -> Sampler {
    Sampler::new(config, vocab_size).expect("valid config")
}

/// Logits whose softmax is exactly proportional to `probs`.
fn logits_of(probs: &[f64]) -> Vec<f32> {
    probs.iter().map(|p| p.ln() as f32).collect()
}

/// Runs steps 1 to 9 and returns the sorted ids that survive the filters.
fn survivors(config: SamplingConfig, logits: &[f32]) -> Vec<u32> {
    let mut s = sampler(config, logits.len());
    let mut logits = logits.to_vec();
    s.prepare(&mut logits, &[]).unwrap();
    if let Some(id) = s.filter(&logits) {
        return vec![id];
    }
    let mut ids: Vec<u32> = s.candidates.iter().map(|c| c.id).collect();
    ids.sort_unstable();
    ids
}

fn random_logits(rng: &mut Xoshiro256, n: usize) -> Vec<f32> {
    (0..n)
        .map(|_| (rng.next_f64() * 20.0 - 10.0) as f32)
        .collect()
}

#[test]
fn greedy_is_argmax() {
    let mut rng = Xoshiro256::seed_from_u64(1);
    for _ in 0..50 {
        let logits = random_logits(&mut rng, 1000);
        let expected = (0..logits.len())
            .max_by(|&a, &b| logits[a].total_cmp(&logits[b]))
            .unwrap() as u32;
        let mut s = sampler(SamplingConfig::greedy(), logits.len());
        assert_eq!(s.sample(&mut logits.clone(), &[]).unwrap(), expected);
    }
}

#[test]
fn argmax_is_the_first_strictly_larger_logit_of_one_scan() {
    let scan = |logits: &[f32]| {
        let mut best = 0;
        for (i, &x) in logits.iter().enumerate() {
            if x > logits[best] {
                best = i;
            }
        }
        best as u32
    };
    let mut rng = Xoshiro256::seed_from_u64(7);
    let awkward = [
        f32::NAN,
        0.0,
        -0.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        1.0,
        -1.0,
    ];
    for n in [0, 1, 2, 15, 16, 17, 33, 1000] {
        for _ in 0..200 {
            // Few distinct values, so ties, zeros of both signs and NaNs meet in every lane.
            let logits: Vec<f32> = (0..n)
                .map(|_| awkward[(rng.next_f64() * awkward.len() as f64) as usize])
                .collect();
            assert_eq!(argmax(&logits), scan(&logits), "{logits:?}");
        }
    }
}

#[test]
fn greedy_ties_go_to_the_lowest_id() {
    let mut s = sampler(SamplingConfig::greedy(), 5);
    assert_eq!(s.sample(&mut [0.0, 3.0, 1.0, 3.0, 3.0], &[]).unwrap(), 1);
    assert_eq!(s.sample(&mut [2.0; 5], &[]).unwrap(), 0);
}

#[test]
fn tiny_temperature_and_top_k_one_are_greedy() {
    let near_zero = SamplingConfig {
        temperature: 1e-6,
        ..plain(1.0)
    };
    let top_k_one = SamplingConfig {
        top_k: 1,
        ..plain(5.0)
    };
    for config in [near_zero, top_k_one] {
        let mut s = sampler(config, 4);
        assert!(s.is_greedy());
        for _ in 0..100 {
            assert_eq!(s.sample(&mut [1.0, 1.2, 1.1, -3.0], &[]).unwrap(), 1);
        }
    }
    assert!(!sampler(plain(1e-4), 4).is_greedy());
}

#[test]
fn top_k_keeps_the_k_largest_with_ties_to_low_ids() {
    let logits = [1.0, 5.0, 3.0, 5.0, 2.0, 0.0, 3.0];
    let top_k = |k| SamplingConfig {
        top_k: k,
        ..plain(1.0)
    };
    assert_eq!(survivors(top_k(2), &logits), [1, 3]);
    assert_eq!(survivors(top_k(3), &logits), [1, 2, 3]);
    assert_eq!(survivors(top_k(4), &logits), [1, 2, 3, 6]);
    // k at or above the vocabulary keeps everything.
    assert_eq!(survivors(top_k(7), &logits), [0, 1, 2, 3, 4, 5, 6]);
    assert_eq!(survivors(top_k(100), &logits), [0, 1, 2, 3, 4, 5, 6]);
}

#[test]
fn top_p_keeps_the_smallest_prefix_reaching_p() {
    let logits = logits_of(&[0.125, 0.5, 0.125, 0.25]);
    let top_p = |p| SamplingConfig {
        top_p: p,
        ..plain(1.0)
    };
    assert_eq!(survivors(top_p(0.4), &logits), [1]);
    assert_eq!(survivors(top_p(0.6), &logits), [1, 3]);
    // 0.5 + 0.25 + 0.125 (id 0 wins the tie with id 2).
    assert_eq!(survivors(top_p(0.8), &logits), [0, 1, 3]);
    assert_eq!(survivors(top_p(0.9), &logits), [0, 1, 2, 3]);
    assert_eq!(survivors(top_p(1.0), &logits), [0, 1, 2, 3]);
}

#[test]
fn min_p_keeps_tokens_near_the_most_likely() {
    let logits = logits_of(&[0.125, 0.5, 0.125, 0.25]);
    let min_p = |p| SamplingConfig {
        min_p: p,
        ..plain(1.0)
    };
    // Thresholds relative to 0.5: 0.3 -> 0.15, 0.6 -> 0.3, 0.2 -> 0.1.
    assert_eq!(survivors(min_p(0.3), &logits), [1, 3]);
    assert_eq!(survivors(min_p(0.6), &logits), [1]);
    assert_eq!(survivors(min_p(0.2), &logits), [0, 1, 2, 3]);
    assert_eq!(survivors(min_p(1.0), &logits), [1]);
}

#[test]
fn top_p_sees_the_distribution_after_top_k() {
    // Renormalized over the top 2, id 0 has 4/7 > 0.5; over all four it has only 0.4.
    let logits = logits_of(&[0.4, 0.3, 0.2, 0.1]);
    let config = SamplingConfig {
        top_k: 2,
        top_p: 0.5,
        ..plain(1.0)
    };
    assert_eq!(survivors(config, &logits), [0]);
    let no_top_k = SamplingConfig {
        top_p: 0.5,
        ..plain(1.0)
    };
    assert_eq!(survivors(no_top_k, &logits), [0, 1]);
}

#[test]
fn top_p_and_min_p_see_the_distribution_after_temperature() {
    // Probabilities 0.5, 0.25, 0.25; at temperature 0.5 they become 4/6, 1/6, 1/6.
    let logits = logits_of(&[0.5, 0.25, 0.25]);
    let top_p = |t| SamplingConfig {
        top_p: 0.6,
        ..plain(t)
    };
    assert_eq!(survivors(top_p(1.0), &logits), [0, 1]);
    assert_eq!(survivors(top_p(0.5), &logits), [0]);
    let min_p = |t| SamplingConfig {
        min_p: 0.4,
        ..plain(t)
    };
    assert_eq!(survivors(min_p(1.0), &logits), [0, 1, 2]);
    assert_eq!(survivors(min_p(0.5), &logits), [0]);
}

/// The reference top-p: sort the whole vocabulary, keep the smallest prefix reaching p.
fn reference_top_p(logits: &[f32], p: f64) -> Vec<u32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut order: Vec<u32> = (0..logits.len() as u32).collect();
    order.sort_by(|&a, &b| {
        logits[b as usize]
            .total_cmp(&logits[a as usize])
            .then(a.cmp(&b))
    });
    let probs: Vec<f64> = order
        .iter()
        .map(|&i| f64::from((logits[i as usize] - max).exp()))
        .collect();
    let total: f64 = probs.iter().sum();
    let mut cumulative = 0.0;
    let mut keep = order.len();
    for (i, q) in probs.iter().enumerate() {
        cumulative += q;
        if cumulative >= p * total {
            keep = i + 1;
            break;
        }
    }
    let mut ids = order[..keep].to_vec();
    ids.sort_unstable();
    ids
}

#[test]
fn top_p_on_a_large_vocabulary_matches_a_full_sort() {
    let mut rng = Xoshiro256::seed_from_u64(2);
    for (i, top_p) in [0.05f32, 0.3, 0.9, 0.99, 0.999].into_iter().enumerate() {
        // Peaked and flat vocabularies, so the growing prefix needs one or several rounds.
        let spread = if i % 2 == 0 { 1.0 } else { 0.05 };
        let logits: Vec<f32> = random_logits(&mut rng, 50_000)
            .into_iter()
            .map(|x| x * spread)
            .collect();
        let config = SamplingConfig {
            top_p,
            ..plain(1.0)
        };
        assert_eq!(
            survivors(config, &logits),
            reference_top_p(&logits, f64::from(top_p)),
            "top_p {top_p}"
        );
    }
}

#[test]
fn min_p_then_top_p_equals_top_p_then_min_p() {
    let mut rng = Xoshiro256::seed_from_u64(3);
    for _ in 0..20 {
        let logits = random_logits(&mut rng, 2000);
        let top_p = 0.2 + 0.79 * rng.next_f64() as f32;
        let min_p = (rng.next_f64() * 0.01) as f32;
        let both = SamplingConfig {
            top_p,
            min_p,
            ..plain(1.0)
        };
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let expected: Vec<u32> = reference_top_p(&logits, f64::from(top_p))
            .into_iter()
            .filter(|&i| (logits[i as usize] - max).exp() >= min_p)
            .collect();
        assert_eq!(survivors(both, &logits), expected);
    }
}

#[test]
fn penalties_follow_llama_cpp_arithmetic() {
    let config = SamplingConfig {
        repetition_penalty: 2.0,
        presence_penalty: 0.5,
        frequency_penalty: 0.25,
        penalty_last_n: 4,
        ..SamplingConfig::greedy()
    };
    let mut s = sampler(config, 4);
    let mut logits = [2.0, -2.0, 1.0, 0.5];
    // The window is the last 4 ids: 0 twice, 1 once, and 9, which is outside the vocabulary.
    let id = s.sample(&mut logits, &[2, 0, 1, 0, 9]).unwrap();
    assert_eq!(
        logits,
        [
            2.0 / 2.0 - (2.0 * 0.25 + 0.5),
            -2.0 * 2.0 - (0.25 + 0.5),
            1.0,
            0.5
        ]
    );
    assert_eq!(logits, [0.0, -4.75, 1.0, 0.5]);
    assert_eq!(id, 2);
}

#[test]
fn penalty_window_zero_or_empty_history_changes_nothing() {
    let config = SamplingConfig {
        repetition_penalty: 1.3,
        presence_penalty: 1.0,
        frequency_penalty: 1.0,
        ..SamplingConfig::greedy()
    };
    let off = SamplingConfig {
        penalty_last_n: 0,
        ..config.clone()
    };
    let mut logits = [1.0, 2.0, 3.0];
    sampler(off, 3).sample(&mut logits, &[0, 1, 2]).unwrap();
    assert_eq!(logits, [1.0, 2.0, 3.0]);
    sampler(config.clone(), 3).sample(&mut logits, &[]).unwrap();
    assert_eq!(logits, [1.0, 2.0, 3.0]);
    let whole = SamplingConfig {
        penalty_last_n: usize::MAX,
        ..config
    };
    sampler(whole, 3).sample(&mut logits, &[2, 2]).unwrap();
    assert_eq!(logits, [1.0, 2.0, 3.0 / 1.3 - 3.0]);
}

#[test]
fn logit_bias_is_added_first_and_neg_inf_bans() {
    let config = SamplingConfig {
        logit_bias: vec![(2, 10.0), (0, -1.0), (2, 0.5)],
        ..SamplingConfig::greedy()
    };
    let mut logits = [1.0, 5.0, 0.0];
    assert_eq!(sampler(config, 3).sample(&mut logits, &[]).unwrap(), 2);
    assert_eq!(logits, [0.0, 5.0, 10.5]);

    let banned = SamplingConfig {
        logit_bias: vec![(1, f32::NEG_INFINITY)],
        ..plain(1.0)
    };
    let mut s = sampler(banned, 3);
    for _ in 0..1000 {
        assert_ne!(s.sample(&mut [0.0, 9.0, 0.0], &[]).unwrap(), 1);
    }
}

#[test]
fn logit_bias_outside_the_vocabulary_is_refused() {
    let config = SamplingConfig {
        logit_bias: vec![(1, 1.0), (3, 1.0)],
        ..SamplingConfig::default()
    };
    let err = Sampler::new(config, 3).unwrap_err();
    assert_eq!(
        err,
        SamplingError::LogitBiasToken {
            token: 3,
            vocab_size: 3
        }
    );
    assert_eq!(err.field(), Some("logit_bias"));
}

#[test]
fn invalid_config_and_sizes_are_errors() {
    let bad = SamplingConfig {
        temperature: -1.0,
        ..SamplingConfig::default()
    };
    assert_eq!(
        Sampler::new(bad, 3).unwrap_err().field(),
        Some("temperature")
    );
    assert_eq!(
        Sampler::new(SamplingConfig::default(), 0).unwrap_err(),
        SamplingError::VocabSize { vocab_size: 0 }
    );
    let mut s = sampler(SamplingConfig::default(), 3);
    assert_eq!(
        s.sample(&mut [0.0; 4], &[]).unwrap_err(),
        SamplingError::LogitsLength {
            expected: 3,
            got: 4
        }
    );
    assert!(s.sample(&mut [], &[]).is_err());
}

fn draws(seed: u64, n: usize) -> Vec<u32> {
    let config = SamplingConfig {
        seed,
        ..SamplingConfig::default()
    };
    let logits: Vec<f32> = (0..100).map(|i| (i % 7) as f32 * 0.1).collect();
    let mut s = sampler(config, logits.len());
    let mut history = Vec::new();
    for _ in 0..n {
        let id = s.sample(&mut logits.clone(), &history).unwrap();
        history.push(id);
    }
    history
}

#[test]
fn same_seed_same_tokens_different_seed_different_tokens() {
    assert_eq!(draws(42, 200), draws(42, 200));
    assert_ne!(draws(42, 200), draws(43, 200));
    // These ids pin the stream (seeding, xoshiro256**, candidate order, the draw) so that a
    // change which would give users different tokens for the same seed fails here.
    assert_eq!(draws(42, 8), [20, 90, 75, 46, 67, 96, 82, 25]);
}

/// Draws `n` tokens and returns the count of each id.
fn histogram(config: SamplingConfig, logits: &[f32], n: usize) -> Vec<usize> {
    let mut s = sampler(config, logits.len());
    let mut counts = vec![0; logits.len()];
    for _ in 0..n {
        counts[s.sample(&mut logits.to_vec(), &[]).unwrap() as usize] += 1;
    }
    counts
}

/// Checks `counts` against `expected` probabilities: Pearson's chi-square below the 0.999
/// quantile for `critical`'s degrees of freedom, and each bucket within five standard
/// deviations of its binomial mean. Deterministic, since the sampler is seeded.
fn check_distribution(counts: &[usize], expected: &[f64], critical: f64) {
    let n: usize = counts.iter().sum();
    let n = n as f64;
    let mut chi2 = 0.0;
    for (&count, &p) in counts.iter().zip(expected) {
        let mean = n * p;
        if p == 0.0 {
            assert_eq!(count, 0, "a filtered token was drawn: {counts:?}");
            continue;
        }
        let sd = (n * p * (1.0 - p)).sqrt();
        let diff = count as f64 - mean;
        assert!(
            diff.abs() <= 5.0 * sd,
            "count {count} vs mean {mean} (sd {sd}): {counts:?}"
        );
        chi2 += diff * diff / mean;
    }
    assert!(
        chi2 < critical,
        "chi-square {chi2} >= {critical}: {counts:?}"
    );
}

#[test]
fn draws_follow_the_softmax() {
    let probs = [0.4, 0.3, 0.15, 0.1, 0.05];
    let counts = histogram(plain(1.0), &logits_of(&probs), 20_000);
    // Chi-square with 4 degrees of freedom: 0.999 quantile 18.47.
    check_distribution(&counts, &probs, 18.47);
}

#[test]
fn draws_follow_the_tempered_and_truncated_softmax() {
    // Temperature 2 turns p into sqrt(p) (renormalized); top-k 3 drops the last two.
    let probs = [0.4, 0.3, 0.15, 0.1, 0.05];
    let config = SamplingConfig {
        top_k: 3,
        seed: 7,
        ..plain(2.0)
    };
    let roots: Vec<f64> = probs[..3].iter().map(|p: &f64| p.sqrt()).collect();
    let sum: f64 = roots.iter().sum();
    let mut expected: Vec<f64> = roots.iter().map(|r| r / sum).collect();
    expected.extend([0.0, 0.0]);
    let counts = histogram(config, &logits_of(&probs), 20_000);
    // Chi-square with 2 degrees of freedom: 0.999 quantile 13.82.
    check_distribution(&counts, &expected, 13.82);
}

#[test]
fn logprobs_come_from_the_tempered_distribution_before_filters() {
    let probs = [0.5, 0.25, 0.125, 0.125];
    let config = SamplingConfig {
        top_k: 1,
        ..plain(1.0)
    };
    let mut s = sampler(config, 4);
    let out = s
        .sample_with_logprobs(&mut logits_of(&probs), &[], 3)
        .unwrap();
    assert_eq!(out.id, 0);
    assert!((out.logprob - 0.5f32.ln()).abs() < 1e-6);
    let ids: Vec<u32> = out.top.iter().map(|&(id, _)| id).collect();
    assert_eq!(ids, [0, 1, 2]);
    for (&(id, lp), p) in out.top.iter().zip(probs) {
        assert!((lp - (p as f32).ln()).abs() < 1e-6, "{id}: {lp}");
    }

    // At temperature 0.5 the distribution is p^2 renormalized, top-k or not.
    let config = SamplingConfig {
        top_k: 1,
        ..plain(0.5)
    };
    let mut s = sampler(config, 4);
    let out = s
        .sample_with_logprobs(&mut logits_of(&probs), &[], 10)
        .unwrap();
    let sum: f64 = probs.iter().map(|p| p * p).sum();
    assert_eq!(out.top.len(), 4);
    for &(id, lp) in &out.top {
        let expected = (probs[id as usize].powi(2) / sum).ln() as f32;
        assert!((lp - expected).abs() < 1e-5, "{id}: {lp} vs {expected}");
    }
}

#[test]
fn logprobs_when_greedy_by_temperature_use_temperature_one() {
    let probs = [0.25, 0.75];
    let mut s = sampler(SamplingConfig::greedy(), 2);
    let out = s
        .sample_with_logprobs(&mut logits_of(&probs), &[], 0)
        .unwrap();
    assert_eq!(out.id, 1);
    assert!((out.logprob - 0.75f32.ln()).abs() < 1e-6);
    assert!(out.top.is_empty());
}

#[test]
fn sample_and_sample_with_logprobs_pick_the_same_tokens() {
    let mut a = sampler(SamplingConfig::default(), 300);
    let mut b = sampler(SamplingConfig::default(), 300);
    let mut rng = Xoshiro256::seed_from_u64(4);
    for _ in 0..200 {
        let logits = random_logits(&mut rng, 300);
        let id = a.sample(&mut logits.clone(), &[]).unwrap();
        let out = b.sample_with_logprobs(&mut logits.clone(), &[], 5).unwrap();
        assert_eq!(id, out.id);
    }
}

#[test]
fn nan_and_infinite_logits_never_panic() {
    let nan = f32::NAN;
    let inf = f32::INFINITY;
    let cases: [&[f32]; 6] = [
        &[nan, 1.0, nan],
        &[nan, nan, nan],
        &[-inf, -inf, -inf],
        &[inf, 0.0, nan],
        &[inf, inf, -inf],
        &[f32::MAX, -f32::MAX, nan],
    ];
    for config in [
        SamplingConfig::greedy(),
        SamplingConfig::default(),
        plain(0.01),
        plain(100.0),
        SamplingConfig {
            repetition_penalty: 1.5,
            presence_penalty: 1.0,
            frequency_penalty: 1.0,
            top_p: 0.5,
            ..SamplingConfig::default()
        },
    ] {
        let mut s = sampler(config, 3);
        for logits in cases {
            let id = s.sample(&mut logits.to_vec(), &[0, 1, 2, 0]).unwrap();
            assert!(id < 3);
            let out = s
                .sample_with_logprobs(&mut logits.to_vec(), &[0, 1, 2, 0], 3)
                .unwrap();
            assert!(!out.logprob.is_nan());
            assert!(out.top.iter().all(|&(_, lp)| !lp.is_nan()));
        }
        // A NaN is never chosen while a real value exists; +inf always is.
        assert_eq!(s.sample(&mut [nan, -50.0, nan], &[]).unwrap(), 1);
        assert_eq!(s.sample(&mut [0.0, 50.0, inf], &[]).unwrap(), 2);
    }
    // All banned: the lowest id.
    let mut s = sampler(SamplingConfig::default(), 3);
    assert_eq!(s.sample(&mut [nan, -inf, nan], &[]).unwrap(), 0);
}

#[test]
fn random_configs_and_logits_always_give_a_valid_id() {
    let mut rng = Xoshiro256::seed_from_u64(5);
    let specials = [
        f32::NAN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::MAX,
        -f32::MAX,
    ];
    for round in 0..3000 {
        let vocab = 1 + (rng.next_u64() % 300) as usize;
        let pick = |rng: &mut Xoshiro256, n: u64| rng.next_u64() % n;
        let config = SamplingConfig {
            temperature: [0.0, 1e-6, 0.1, 0.7, 1.0, 3.0, 1e6][pick(&mut rng, 7) as usize],
            top_k: pick(&mut rng, 400) as u32 * (pick(&mut rng, 2) as u32),
            top_p: [1.0, 0.999, 0.9, 0.5, 1e-6][pick(&mut rng, 5) as usize],
            min_p: [0.0, 0.05, 0.5, 1.0][pick(&mut rng, 4) as usize],
            repetition_penalty: [1.0, 1.1, 0.5, 1e6][pick(&mut rng, 4) as usize],
            presence_penalty: [0.0, 2.0, -2.0, 1e30][pick(&mut rng, 4) as usize],
            frequency_penalty: [0.0, 2.0, -2.0][pick(&mut rng, 3) as usize],
            penalty_last_n: [0, 1, 64, usize::MAX][pick(&mut rng, 4) as usize],
            logit_bias: (0..pick(&mut rng, 4))
                .map(|_| {
                    let id = pick(&mut rng, vocab as u64) as u32;
                    (
                        id,
                        [-100.0, 100.0, f32::NEG_INFINITY][pick(&mut rng, 3) as usize],
                    )
                })
                .collect(),
            seed: rng.next_u64(),
        };
        let mut s = sampler(config.clone(), vocab);
        let history: Vec<u32> = (0..pick(&mut rng, 100))
            .map(|_| pick(&mut rng, vocab as u64 + 5) as u32)
            .collect();
        for _ in 0..3 {
            let mut logits = random_logits(&mut rng, vocab);
            for x in logits.iter_mut() {
                if pick(&mut rng, 20) == 0 {
                    *x = specials[pick(&mut rng, specials.len() as u64) as usize];
                }
            }
            let n_top = pick(&mut rng, 25) as usize;
            let out = s
                .sample_with_logprobs(&mut logits, &history, n_top)
                .unwrap();
            assert!((out.id as usize) < vocab, "round {round}: {config:?}");
            assert!(!out.logprob.is_nan() && out.logprob <= 1e-5, "{out:?}");
            assert_eq!(out.top.len(), n_top.min(vocab));
            assert!(out.top.windows(2).all(|w| w[0].1 >= w[1].1), "{out:?}");
            let id = s.sample(&mut logits, &history).unwrap();
            assert!((id as usize) < vocab);
        }
    }
}

/// A mask allowing exactly `ids` in a vocabulary of `n`.
fn mask_of(ids: &[u32], n: usize) -> Vec<u32> {
    let mut words = vec![0u32; n.div_ceil(32)];
    for &id in ids {
        words[(id / 32) as usize] |= 1 << (id % 32);
    }
    words
}

#[test]
fn masked_sampling_only_draws_allowed_ids() {
    let mut rng = Xoshiro256::seed_from_u64(7);
    let n = 100;
    let allowed = [3u32, 40, 41, 77, 99];
    let mask = mask_of(&allowed, n);
    let configs = [
        SamplingConfig::default(),
        plain(0.0),
        plain(1.5),
        SamplingConfig {
            temperature: 1.0,
            top_k: 2,
            top_p: 0.5,
            min_p: 0.05,
            repetition_penalty: 1.3,
            presence_penalty: 0.5,
            frequency_penalty: 0.5,
            ..SamplingConfig::default()
        },
    ];
    for config in configs {
        let mut s = sampler(config, n);
        for _ in 0..200 {
            let mut logits = random_logits(&mut rng, n);
            let id = s.sample_masked(&mut logits, &[40, 40, 3], &mask).unwrap();
            assert!(allowed.contains(&id), "{id} is not allowed");
            assert!(logits[5].is_infinite() && logits[5] < 0.0);
            let mut logits = random_logits(&mut rng, n);
            let got = s
                .sample_with_logprobs_masked(&mut logits, &[], 3, &mask)
                .unwrap();
            assert!(allowed.contains(&got.id));
            assert!(got.top.iter().all(|(id, _)| allowed.contains(id)));
        }
    }
}

#[test]
fn masked_greedy_takes_the_best_allowed_logit() {
    let logits = [5.0f32, 1.0, 4.0, 2.0, 9.0];
    let mut s = sampler(plain(0.0), logits.len());
    let got = s
        .sample_masked(&mut logits.to_vec(), &[], &mask_of(&[1, 2, 3], 5))
        .unwrap();
    assert_eq!(got, 2);
}

#[test]
fn masked_sampling_keeps_an_allowed_id_when_its_logits_are_all_banned() {
    let mut s = sampler(plain(1.0), 40);
    let mut logits = vec![f32::NEG_INFINITY; 40];
    logits[0] = 3.0;
    let got = s
        .sample_masked(&mut logits, &[], &mask_of(&[33, 35], 40))
        .unwrap();
    assert_eq!(got, 33);
}

#[test]
fn a_full_mask_changes_nothing() {
    let mut rng = Xoshiro256::seed_from_u64(11);
    let n: usize = 70;
    let full = vec![u32::MAX; n.div_ceil(32)];
    let mut a = sampler(SamplingConfig::default(), n);
    let mut b = sampler(SamplingConfig::default(), n);
    for _ in 0..100 {
        let logits = random_logits(&mut rng, n);
        let x = a.sample(&mut logits.clone(), &[]).unwrap();
        let y = b.sample_masked(&mut logits.clone(), &[], &full).unwrap();
        assert_eq!(x, y);
    }
}
