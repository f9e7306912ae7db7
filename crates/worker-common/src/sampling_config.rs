//! The sampling configuration of one request, and the error every invalid value becomes.

/// How to pick the next token from a vector of logits.
///
/// The defaults follow llama.cpp's server where they make sense. Every field is checked by
/// [`SamplingConfig::validate`]; [`crate::Sampler::new`] calls it, so a sampler never holds
/// an out-of-range value.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingConfig {
    /// Divides the logits before the softmax. Must be finite and `>= 0`; a value at or below
    /// [`GREEDY_TEMPERATURE`] means greedy decoding. Default `0.8`.
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens; `0` keeps all of them and `1` means greedy.
    /// Default `40`.
    pub top_k: u32,
    /// Nucleus sampling: keep the smallest set of most likely tokens whose probability sums
    /// to at least `top_p`. Must be in `(0, 1]`; `1` disables it. Default `0.95`.
    pub top_p: f32,
    /// Keep only tokens whose probability is at least `min_p` times that of the most likely
    /// token. Must be in `[0, 1]`; `0` disables it. Default `0.05`.
    pub min_p: f32,
    /// llama.cpp's repetition penalty: a positive logit of a token seen in the window is
    /// divided by it, a negative one multiplied. Must be finite and `> 0`; `1` disables it.
    /// Default `1.0`.
    pub repetition_penalty: f32,
    /// Subtracted once from the logit of every token present in the window (OpenAI's
    /// `presence_penalty`). Must be finite. Default `0.0`.
    pub presence_penalty: f32,
    /// Subtracted `count` times from the logit of a token seen `count` times in the window
    /// (OpenAI's `frequency_penalty`). Must be finite. Default `0.0`.
    pub frequency_penalty: f32,
    /// How many of the most recent history tokens the three penalties look at; `0` disables
    /// the penalties and `usize::MAX` looks at the whole history. Default `64`.
    pub penalty_last_n: usize,
    /// `(token id, bias)` pairs added to the logits before anything else; `f32::NEG_INFINITY`
    /// bans a token. A bias must not be NaN or `+inf`; the token id must be below the
    /// vocabulary size, checked by [`crate::Sampler::new`]. Repeated ids add up. Default empty.
    pub logit_bias: Vec<(u32, f32)>,
    /// Seeds the sampler's random number generator: the same seed, configuration, logits and
    /// history give the same tokens. Default `0`; the caller picks a fresh seed per request
    /// when the client gives none.
    pub seed: u64,
}

/// A temperature at or below this value means greedy decoding (argmax).
pub const GREEDY_TEMPERATURE: f32 = 1e-5;

impl Default for SamplingConfig {
    fn default() -> Self {
        Self {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            penalty_last_n: 64,
            logit_bias: Vec::new(),
            seed: 0,
        }
    }
}

impl SamplingConfig {
    /// A configuration that always picks the most likely token (ties go to the lowest id).
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            ..Self::default()
        }
    }

    /// Checks every field against its documented range. The vocabulary-dependent check (logit
    /// bias token ids) happens in [`crate::Sampler::new`].
    pub fn validate(&self) -> Result<(), SamplingError> {
        check(
            "temperature",
            ">= 0 and finite",
            self.temperature,
            self.temperature.is_finite() && self.temperature >= 0.0,
        )?;
        check(
            "top_p",
            "in (0, 1]",
            self.top_p,
            self.top_p > 0.0 && self.top_p <= 1.0,
        )?;
        check(
            "min_p",
            "in [0, 1]",
            self.min_p,
            (0.0..=1.0).contains(&self.min_p),
        )?;
        check(
            "repetition_penalty",
            "> 0 and finite",
            self.repetition_penalty,
            self.repetition_penalty.is_finite() && self.repetition_penalty > 0.0,
        )?;
        check(
            "presence_penalty",
            "finite",
            self.presence_penalty,
            self.presence_penalty.is_finite(),
        )?;
        check(
            "frequency_penalty",
            "finite",
            self.frequency_penalty,
            self.frequency_penalty.is_finite(),
        )?;
        for &(_, bias) in &self.logit_bias {
            check(
                "logit_bias",
                "finite or -inf",
                bias,
                !bias.is_nan() && bias != f32::INFINITY,
            )?;
        }
        Ok(())
    }
}

fn check(
    field: &'static str,
    constraint: &'static str,
    value: f32,
    ok: bool,
) -> Result<(), SamplingError> {
    if ok {
        Ok(())
    } else {
        Err(SamplingError::OutOfRange {
            field,
            constraint,
            value,
        })
    }
}

/// Why a sampling configuration or a call to the sampler was refused.
///
/// The first two variants come from a request and become HTTP 400s; [`Self::field`] names the
/// offending request parameter.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SamplingError {
    /// A parameter is outside its documented range.
    #[error("{field} must be {constraint}, got {value}")]
    OutOfRange {
        /// The parameter's name, as in [`SamplingConfig`].
        field: &'static str,
        /// The range it must be in, in words.
        constraint: &'static str,
        /// The value given.
        value: f32,
    },
    /// A logit bias names a token the vocabulary does not have.
    #[error("logit_bias token id {token} must be < vocabulary size {vocab_size}")]
    LogitBiasToken {
        /// The token id given.
        token: u32,
        /// The model's vocabulary size.
        vocab_size: usize,
    },
    /// The sampler was asked for a vocabulary it cannot index with `u32` ids (or an empty one).
    #[error("vocabulary size must be in 1..=4294967295, got {vocab_size}")]
    VocabSize {
        /// The vocabulary size given.
        vocab_size: usize,
    },
    /// The logits passed to the sampler do not match the vocabulary size it was built for
    /// (a bug in the caller, never a request error).
    #[error("logits have {got} entries, the sampler was built for a vocabulary of {expected}")]
    LogitsLength {
        /// The vocabulary size the sampler was built for.
        expected: usize,
        /// The length of the logits slice passed in.
        got: usize,
    },
}

impl SamplingError {
    /// The request parameter at fault, when a request parameter is at fault.
    pub fn field(&self) -> Option<&'static str> {
        match self {
            Self::OutOfRange { field, .. } => Some(field),
            Self::LogitBiasToken { .. } => Some("logit_bias"),
            Self::VocabSize { .. } | Self::LogitsLength { .. } => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(config: SamplingConfig) -> Option<&'static str> {
        config.validate().err().and_then(|e| e.field())
    }

    #[test]
    fn default_is_valid() {
        assert_eq!(SamplingConfig::default().validate(), Ok(()));
        assert_eq!(SamplingConfig::greedy().validate(), Ok(()));
    }

    #[test]
    fn each_out_of_range_value_names_its_field() {
        let base = SamplingConfig::default;
        let cases: Vec<(SamplingConfig, &str)> = vec![
            (
                SamplingConfig {
                    temperature: -0.1,
                    ..base()
                },
                "temperature",
            ),
            (
                SamplingConfig {
                    temperature: f32::NAN,
                    ..base()
                },
                "temperature",
            ),
            (
                SamplingConfig {
                    temperature: f32::INFINITY,
                    ..base()
                },
                "temperature",
            ),
            (
                SamplingConfig {
                    top_p: 0.0,
                    ..base()
                },
                "top_p",
            ),
            (
                SamplingConfig {
                    top_p: 1.01,
                    ..base()
                },
                "top_p",
            ),
            (
                SamplingConfig {
                    top_p: f32::NAN,
                    ..base()
                },
                "top_p",
            ),
            (
                SamplingConfig {
                    min_p: -0.01,
                    ..base()
                },
                "min_p",
            ),
            (
                SamplingConfig {
                    min_p: 1.5,
                    ..base()
                },
                "min_p",
            ),
            (
                SamplingConfig {
                    min_p: f32::NAN,
                    ..base()
                },
                "min_p",
            ),
            (
                SamplingConfig {
                    repetition_penalty: 0.0,
                    ..base()
                },
                "repetition_penalty",
            ),
            (
                SamplingConfig {
                    repetition_penalty: f32::NAN,
                    ..base()
                },
                "repetition_penalty",
            ),
            (
                SamplingConfig {
                    presence_penalty: f32::INFINITY,
                    ..base()
                },
                "presence_penalty",
            ),
            (
                SamplingConfig {
                    frequency_penalty: f32::NAN,
                    ..base()
                },
                "frequency_penalty",
            ),
            (
                SamplingConfig {
                    logit_bias: vec![(1, f32::NAN)],
                    ..base()
                },
                "logit_bias",
            ),
            (
                SamplingConfig {
                    logit_bias: vec![(1, f32::INFINITY)],
                    ..base()
                },
                "logit_bias",
            ),
        ];
        for (config, field) in cases {
            assert_eq!(field_of(config.clone()), Some(field), "{config:?}");
        }
    }

    #[test]
    fn boundary_values_are_accepted() {
        let ok = [
            SamplingConfig {
                temperature: 0.0,
                ..Default::default()
            },
            SamplingConfig {
                top_p: 1.0,
                min_p: 0.0,
                ..Default::default()
            },
            SamplingConfig {
                min_p: 1.0,
                ..Default::default()
            },
            SamplingConfig {
                presence_penalty: -2.0,
                frequency_penalty: 2.0,
                ..Default::default()
            },
            SamplingConfig {
                logit_bias: vec![(3, f32::NEG_INFINITY), (4, -100.0)],
                ..Default::default()
            },
        ];
        for config in ok {
            assert_eq!(config.validate(), Ok(()), "{config:?}");
        }
    }

    #[test]
    fn error_message_names_field_and_constraint() {
        let err = SamplingConfig {
            top_p: 2.0,
            ..Default::default()
        }
        .validate()
        .unwrap_err();
        assert_eq!(err.to_string(), "top_p must be in (0, 1], got 2");
    }
}
