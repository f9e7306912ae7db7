//! The bounds every route puts on a request's sampling and stop fields, in one table, so the
//! llama-orch `/execute` route and the OpenAI routes accept and refuse the same values with
//! the same words. [`crate::SamplingConfig::validate`] checks what the sampler itself needs
//! (finite, in range for the arithmetic); these are the tighter bounds of the API, OpenAI's
//! where it has one.

/// A closed or half-open range a numeric request field must be in, with its rule in words.
#[derive(Clone, Copy, Debug)]
pub struct Bound {
    /// The request field.
    pub field: &'static str,
    /// The rule as clients read it: `a number in [0, 2]`.
    pub rule: &'static str,
    ok: fn(f64) -> bool,
}

impl Bound {
    /// Whether `x` is finite and inside the bound.
    pub fn accepts(&self, x: f64) -> bool {
        x.is_finite() && (self.ok)(x)
    }
}

/// `temperature`: OpenAI's range.
pub const TEMPERATURE: Bound = Bound {
    field: "temperature",
    rule: "a number in [0, 2]",
    ok: |x| (0.0..=2.0).contains(&x),
};
/// `top_p`.
pub const TOP_P: Bound = Bound {
    field: "top_p",
    rule: "a number in (0, 1]",
    ok: |x| x > 0.0 && x <= 1.0,
};
/// `min_p`.
pub const MIN_P: Bound = Bound {
    field: "min_p",
    rule: "a number in [0, 1]",
    ok: |x| (0.0..=1.0).contains(&x),
};
/// `repetition_penalty` (llama.cpp's and vLLM's; 1 disables it).
pub const REPETITION_PENALTY: Bound = Bound {
    field: "repetition_penalty",
    rule: "a number in (0, 10]",
    ok: |x| x > 0.0 && x <= 10.0,
};
/// `presence_penalty`: OpenAI's range.
pub const PRESENCE_PENALTY: Bound = Bound {
    field: "presence_penalty",
    rule: "a number in [-2, 2]",
    ok: |x| (-2.0..=2.0).contains(&x),
};
/// `frequency_penalty`: OpenAI's range.
pub const FREQUENCY_PENALTY: Bound = Bound {
    field: "frequency_penalty",
    rule: "a number in [-2, 2]",
    ok: |x| (-2.0..=2.0).contains(&x),
};
/// A `logit_bias` value: OpenAI's range.
pub const LOGIT_BIAS: Bound = Bound {
    field: "logit_bias",
    rule: "token ids mapped to numbers in [-100, 100]",
    ok: |x| (-100.0..=100.0).contains(&x),
};

/// Most stop strings one request may give.
pub const MAX_STOPS: usize = 4;
/// Longest stop string, in bytes.
pub const MAX_STOP_BYTES: usize = 256;
/// The stop rule in words.
pub const STOP_RULE: &str =
    "a string or an array of at most 4 non-empty strings of at most 256 bytes each";
/// Most `stop_token_ids` one request may give.
pub const MAX_STOP_TOKEN_IDS: usize = 64;

/// Whether `stops` keep to [`MAX_STOPS`] and [`MAX_STOP_BYTES`] (and none is empty).
pub fn stops_ok(stops: &[String]) -> bool {
    stops.len() <= MAX_STOPS
        && stops
            .iter()
            .all(|s| !s.is_empty() && s.len() <= MAX_STOP_BYTES)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rules_in_words_are_the_rules() {
        assert!(STOP_RULE.contains(&format!("at most {MAX_STOPS} ")));
        assert!(STOP_RULE.contains(&format!("at most {MAX_STOP_BYTES} bytes")));
        for (b, inside, outside) in [
            (TEMPERATURE, [0.0, 2.0], [-0.01, 2.01]),
            (TOP_P, [1e-6, 1.0], [0.0, 1.01]),
            (MIN_P, [0.0, 1.0], [-0.01, 1.01]),
            (REPETITION_PENALTY, [1e-6, 10.0], [0.0, 10.01]),
            (PRESENCE_PENALTY, [-2.0, 2.0], [-2.01, 2.01]),
            (FREQUENCY_PENALTY, [-2.0, 2.0], [-2.01, 2.01]),
            (LOGIT_BIAS, [-100.0, 100.0], [-100.5, 100.5]),
        ] {
            for x in inside {
                assert!(b.accepts(x), "{} {x}", b.field);
            }
            for x in outside.into_iter().chain([f64::NAN, f64::INFINITY]) {
                assert!(!b.accepts(x), "{} {x}", b.field);
            }
            // The rule names both ends of the range it checks.
            let ends: Vec<String> = inside.iter().map(|x| format!("{}", x.round())).collect();
            assert!(
                ends.iter().all(|e| b.rule.contains(e.as_str())),
                "{}: {} vs {ends:?}",
                b.field,
                b.rule
            );
        }
        assert!(stops_ok(&vec!["a".to_string(); MAX_STOPS]));
        assert!(!stops_ok(&vec!["a".to_string(); MAX_STOPS + 1]));
        assert!(!stops_ok(&[String::new()]));
        assert!(!stops_ok(&["x".repeat(MAX_STOP_BYTES + 1)]));
    }
}
