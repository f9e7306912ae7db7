//! The sampler: turns one vector of logits into one token id.
//!
//! # Order
//!
//! [`Sampler::sample`] runs these steps, in this order, on the logits of one position:
//!
//! 1. **Logit bias**: each `(id, bias)` of [`SamplingConfig::logit_bias`] is added to
//!    `logits[id]`.
//! 2. **Penalties** over the window: the last [`SamplingConfig::penalty_last_n`] ids of the
//!    history. For each distinct id seen `count` times in the window, with llama.cpp's
//!    semantics: the repetition penalty divides the logit if it is positive and multiplies it
//!    otherwise, then `count * frequency_penalty + presence_penalty` is subtracted. History
//!    ids outside the vocabulary are ignored.
//! 3. **Clean-up**: NaN logits become `-inf` (never chosen) and `+inf` becomes `f32::MAX`.
//!    Steps 1 to 3 write into the caller's slice; the later steps work on a copy.
//! 4. **Greedy** when the temperature is at or below [`GREEDY_TEMPERATURE`] or `top_k == 1`:
//!    the id of the largest logit, ties going to the lowest id. No random number is drawn.
//! 5. **Top-k**: keep the `top_k` largest logits (ties to the lowest ids); `0` keeps all.
//! 6. **Temperature**: divide the logits by it.
//! 7. **Softmax**.
//! 8. **Top-p**: keep the smallest set of most likely tokens whose probabilities sum to at
//!    least `top_p` (of the distribution after top-k); `1` keeps all.
//! 9. **Min-p**: keep tokens whose probability is at least `min_p` times the largest one.
//! 10. **Renormalize** the survivors and **draw** one with a uniform number from the seeded
//!     random number generator (xoshiro256**, seeded from [`SamplingConfig::seed`] through
//!     splitmix64). Each non-greedy call draws exactly one number.
//!
//! The most likely token always survives steps 5 to 9. Top-p and min-p both keep a prefix of
//! the tokens sorted by probability, so the sampler may run min-p first as a cheap pre-filter
//! without changing the result. If every logit is `-inf` (all banned), the lowest id is
//! returned.
//!
//! # Log-probabilities
//!
//! [`Sampler::sample_with_logprobs`] also reports log-probabilities (OpenAI `logprobs` and
//! `top_logprobs`). They come from one distribution: the log-softmax, over the **whole
//! vocabulary**, of the logits after steps 1 to 3 divided by the temperature (by `1` when
//! greedy by temperature). That is, after bias, penalties and temperature, and **before**
//! top-k, top-p and min-p: a token those filters removed still has its finite log-probability.
//!
//! # Reproducibility
//!
//! The same seed, configuration, logits and history give the same tokens, in every run and
//! whatever the number of threads (the sampler is single-threaded and its candidate orders
//! are fixed by `(logit desc, id asc)`, never by an unstable algorithm's choices). The random
//! stream is integer arithmetic and identical on every platform; probabilities use `exp`
//! from the platform's math library, whose last bit may differ between platforms.
//!
//! # Performance
//!
//! One call is O(vocabulary): top-k uses `select_nth_unstable_by` and sorts only the `k`
//! survivors; top-p without top-k sorts lazily, chunk by chunk, only as far as the nucleus
//! reaches. Buffers live in the sampler, so a call allocates nothing
//! (except the `top` list of [`Sampled`]).

use std::cmp::Ordering;

use crate::rng::Xoshiro256;
use crate::sampling_config::{SamplingConfig, SamplingError, GREEDY_TEMPERATURE};

/// One sampled token with its log-probability and the most likely alternatives.
#[derive(Debug, Clone, PartialEq)]
pub struct Sampled {
    /// The token chosen.
    pub id: u32,
    /// Its log-probability under the distribution described in the module documentation.
    pub logprob: f32,
    /// The `n_top` most likely tokens under the same distribution, most likely first (ties
    /// to the lowest id), as `(id, logprob)`; it may include [`Self::id`].
    pub top: Vec<(u32, f32)>,
}

/// Samples token ids from logits with one request's [`SamplingConfig`].
///
/// Owns its random number generator, so one sampler serves one sequence from start to end.
#[derive(Debug, Clone)]
pub struct Sampler {
    config: SamplingConfig,
    vocab_size: usize,
    greedy: bool,
    /// `0` when top-k keeps everything.
    top_k: usize,
    /// `1 / temperature`, or `1` when greedy by temperature; also scales the log-probability
    /// distribution.
    inv_temperature: f32,
    penalties: bool,
    rng: Xoshiro256,
    candidates: Vec<Candidate>,
    window: Vec<u32>,
}

#[derive(Debug, Clone, Copy)]
struct Candidate {
    id: u32,
    logit: f32,
    /// Unnormalized probability, `exp(logit - max)`, set by the softmax.
    p: f32,
}

/// The fixed total order of candidates: larger logit first, then lower id.
fn by_logit_desc(a: &Candidate, b: &Candidate) -> Ordering {
    b.logit.total_cmp(&a.logit).then(a.id.cmp(&b.id))
}

/// Multiplies by the inverse temperature without turning a finite logit infinite.
fn scale(logit: f32, inv_temperature: f32) -> f32 {
    let y = logit * inv_temperature;
    if y.is_infinite() && logit.is_finite() {
        f32::MAX.copysign(y)
    } else {
        y
    }
}

impl Sampler {
    /// Validates `config` (see [`SamplingConfig::validate`]), checks its logit-bias ids
    /// against `vocab_size`, and normalizes it: a temperature at or below
    /// [`GREEDY_TEMPERATURE`] or `top_k == 1` means greedy, a `top_k` at or above the
    /// vocabulary size means no top-k.
    pub fn new(config: SamplingConfig, vocab_size: usize) -> Result<Self, SamplingError> {
        config.validate()?;
        if vocab_size == 0 || u32::try_from(vocab_size).is_err() {
            return Err(SamplingError::VocabSize { vocab_size });
        }
        if let Some(&(token, _)) = config
            .logit_bias
            .iter()
            .find(|&&(token, _)| token as usize >= vocab_size)
        {
            return Err(SamplingError::LogitBiasToken { token, vocab_size });
        }
        let by_temperature = config.temperature <= GREEDY_TEMPERATURE;
        let top_k = match config.top_k as usize {
            k if k >= vocab_size => 0,
            k => k,
        };
        let penalties = config.penalty_last_n > 0
            && (config.repetition_penalty != 1.0
                || config.presence_penalty != 0.0
                || config.frequency_penalty != 0.0);
        Ok(Self {
            greedy: by_temperature || config.top_k == 1,
            top_k,
            inv_temperature: if by_temperature {
                1.0
            } else {
                1.0 / config.temperature
            },
            penalties,
            rng: Xoshiro256::seed_from_u64(config.seed),
            candidates: Vec::with_capacity(vocab_size),
            window: Vec::new(),
            vocab_size,
            config,
        })
    }

    /// The configuration this sampler was built from, as given.
    pub fn config(&self) -> &SamplingConfig {
        &self.config
    }

    /// Whether this sampler always takes the argmax.
    pub fn is_greedy(&self) -> bool {
        self.greedy
    }

    /// The vocabulary size the sampler expects `logits` to have.
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// Picks the next token in the order the module documentation gives.
    ///
    /// `logits` holds one value per vocabulary entry; on return it holds the logits after
    /// bias, penalties and clean-up (steps 1 to 3). `history` is every id of the sequence so
    /// far, prompt then generated; the penalties look at its tail. Fails only when `logits`
    /// does not have [`Self::vocab_size`] entries.
    pub fn sample(&mut self, logits: &mut [f32], history: &[u32]) -> Result<u32, SamplingError> {
        self.prepare(logits, history)?;
        Ok(self.choose(logits))
    }

    /// Like [`Self::sample`], and also reports the chosen token's log-probability and the
    /// `n_top` most likely tokens (clamped to the vocabulary size), from the distribution the
    /// module documentation describes.
    pub fn sample_with_logprobs(
        &mut self,
        logits: &mut [f32],
        history: &[u32],
        n_top: usize,
    ) -> Result<Sampled, SamplingError> {
        self.prepare(logits, history)?;
        let id = self.choose(logits);
        Ok(self.logprobs(logits, id, n_top))
    }

    /// Like [`Self::sample`], choosing only among the ids that `allowed` lets through
    /// (constrained decoding): bit `id % 32` of word `id / 32`, ids past its end banned.
    ///
    /// The mask is applied after steps 1 to 3 (a banned logit becomes `-inf`), so bias,
    /// penalties, greedy, top-k, temperature, top-p and min-p all work on the masked logits,
    /// and `logits` holds those on return. The result is always an allowed id when `allowed`
    /// allows any id of the vocabulary (even if every allowed logit is `-inf`: then the
    /// lowest allowed id); when it allows none, the lowest id.
    pub fn sample_masked(
        &mut self,
        logits: &mut [f32],
        history: &[u32],
        allowed: &[u32],
    ) -> Result<u32, SamplingError> {
        self.prepare(logits, history)?;
        let first = apply_mask(logits, allowed);
        let id = self.choose(logits);
        Ok(keep_allowed(id, allowed, first))
    }

    /// [`Self::sample_masked`] with the log-probabilities of [`Self::sample_with_logprobs`],
    /// taken from the masked distribution (banned ids have `-inf`).
    pub fn sample_with_logprobs_masked(
        &mut self,
        logits: &mut [f32],
        history: &[u32],
        n_top: usize,
        allowed: &[u32],
    ) -> Result<Sampled, SamplingError> {
        self.prepare(logits, history)?;
        let first = apply_mask(logits, allowed);
        let id = keep_allowed(self.choose(logits), allowed, first);
        Ok(self.logprobs(logits, id, n_top))
    }

    /// The log-probabilities of `id` and the `n_top` most likely tokens under the
    /// distribution the module documentation describes, for cleaned `logits`.
    fn logprobs(&self, logits: &[f32], id: u32, n_top: usize) -> Sampled {
        let scale_by = self.inv_temperature;
        let max = logits
            .iter()
            .map(|&x| scale(x, scale_by))
            .fold(f32::NEG_INFINITY, f32::max);
        let log_sum = if max == f32::NEG_INFINITY {
            // Everything is banned: every log-probability is -inf.
            f32::INFINITY
        } else {
            let sum: f64 = logits
                .iter()
                .map(|&x| f64::from((scale(x, scale_by) - max).exp()))
                .sum();
            max + sum.ln() as f32
        };
        let logprob = |x: f32| {
            if max == f32::NEG_INFINITY {
                f32::NEG_INFINITY
            } else {
                scale(x, scale_by) - log_sum
            }
        };
        let mut top: Vec<(u32, f32)> = Vec::with_capacity(n_top.min(logits.len()) + 1);
        if n_top > 0 {
            for (i, &x) in logits.iter().enumerate() {
                // Strictly greater, so among equal logits the earlier (lower) id stays.
                if top.len() < n_top || x > top[top.len() - 1].1 {
                    let at = top.partition_point(|&(_, y)| y >= x);
                    top.insert(at, (i as u32, x));
                    top.truncate(n_top);
                }
            }
        }
        for entry in &mut top {
            entry.1 = logprob(entry.1);
        }
        Sampled {
            id,
            logprob: logprob(logits[id as usize]),
            top,
        }
    }

    /// Steps 1 to 3: bias, penalties, clean-up, in place.
    fn prepare(&mut self, logits: &mut [f32], history: &[u32]) -> Result<(), SamplingError> {
        if logits.len() != self.vocab_size {
            return Err(SamplingError::LogitsLength {
                expected: self.vocab_size,
                got: logits.len(),
            });
        }
        for &(id, bias) in &self.config.logit_bias {
            logits[id as usize] += bias;
        }
        if self.penalties {
            self.apply_penalties(logits, history);
        }
        for x in logits.iter_mut() {
            if x.is_nan() {
                *x = f32::NEG_INFINITY;
            } else if *x == f32::INFINITY {
                *x = f32::MAX;
            }
        }
        Ok(())
    }

    fn apply_penalties(&mut self, logits: &mut [f32], history: &[u32]) {
        let start = history.len().saturating_sub(self.config.penalty_last_n);
        self.window.clear();
        self.window.extend_from_slice(&history[start..]);
        self.window.sort_unstable();
        let c = &self.config;
        for run in self.window.chunk_by(|a, b| a == b) {
            let Some(logit) = logits.get_mut(run[0] as usize) else {
                continue;
            };
            if *logit <= 0.0 {
                *logit *= c.repetition_penalty;
            } else {
                *logit /= c.repetition_penalty;
            }
            *logit -= run.len() as f32 * c.frequency_penalty + c.presence_penalty;
        }
    }

    /// Steps 4 to 10 on cleaned logits.
    fn choose(&mut self, logits: &[f32]) -> u32 {
        match self.filter(logits) {
            Some(id) => id,
            None => self.draw(),
        }
    }

    /// Steps 4 to 9. Returns the id when no draw is needed (greedy, or everything banned);
    /// otherwise leaves the survivors, with their unnormalized probabilities, in
    /// `self.candidates`.
    fn filter(&mut self, logits: &[f32]) -> Option<u32> {
        if self.greedy {
            return Some(argmax(logits));
        }
        let cands = &mut self.candidates;
        cands.clear();
        cands.extend(logits.iter().enumerate().map(|(i, &logit)| Candidate {
            id: i as u32,
            logit,
            p: 0.0,
        }));
        // Sorted by `by_logit_desc` once top-k or top-p has run; in id order before.
        let mut sorted = false;

        if self.top_k > 0 {
            cands.select_nth_unstable_by(self.top_k - 1, by_logit_desc);
            cands.truncate(self.top_k);
            cands.sort_unstable_by(by_logit_desc);
            sorted = true;
        }

        let inv_t = self.inv_temperature;
        let mut max = f32::NEG_INFINITY;
        for c in cands.iter_mut() {
            c.logit = scale(c.logit, inv_t);
            max = max.max(c.logit);
        }
        if max == f32::NEG_INFINITY {
            // Every token is banned; the lowest id is first in either order.
            return Some(cands[0].id);
        }
        let mut total = 0.0f64;
        for c in cands.iter_mut() {
            c.p = (c.logit - max).exp();
            total += f64::from(c.p);
        }

        // Min-p before top-p: the same survivors (see the module docs), fewer to sort.
        // The largest `p` is exactly 1, so the threshold is `min_p` itself.
        let min_p = self.config.min_p;
        if min_p > 0.0 {
            cands.retain(|c| c.p >= min_p);
        }
        if self.config.top_p < 1.0 {
            top_p(cands, f64::from(self.config.top_p) * total, sorted);
        }
        None
    }

    /// Step 10: renormalize the survivors and draw one.
    fn draw(&mut self) -> u32 {
        let cands = &self.candidates;
        let total: f64 = cands.iter().map(|c| f64::from(c.p)).sum();
        let target = self.rng.next_f64() * total;
        let mut cumulative = 0.0f64;
        for c in cands {
            cumulative += f64::from(c.p);
            if target < cumulative {
                return c.id;
            }
        }
        // Unreachable: `target < total`, and the loop sums the same terms in the same order.
        cands[cands.len() - 1].id
    }
}

/// Whether bit `id` of the mask words is set.
fn is_allowed(allowed: &[u32], id: u32) -> bool {
    allowed
        .get((id / 32) as usize)
        .is_some_and(|w| w >> (id % 32) & 1 == 1)
}

/// Sets every logit the mask bans to `-inf`; returns the lowest allowed id, if any.
fn apply_mask(logits: &mut [f32], allowed: &[u32]) -> Option<u32> {
    let mut first = None;
    for (w, chunk) in logits.chunks_mut(32).enumerate() {
        let word = allowed.get(w).copied().unwrap_or(0);
        if word == u32::MAX && chunk.len() == 32 {
            first = first.or(Some(w as u32 * 32));
            continue;
        }
        for (b, x) in chunk.iter_mut().enumerate() {
            if word >> b & 1 == 1 {
                first = first.or(Some((w * 32 + b) as u32));
            } else {
                *x = f32::NEG_INFINITY;
            }
        }
    }
    first
}

/// `id` if the mask allows it, else the lowest allowed id (every allowed logit was `-inf`).
fn keep_allowed(id: u32, allowed: &[u32], first: Option<u32>) -> u32 {
    if is_allowed(allowed, id) {
        id
    } else {
        first.unwrap_or(id)
    }
}

/// The id of the largest logit; ties go to the lowest id (greedy decoding). A NaN never
/// wins over the first logit.
///
/// Two passes: the largest value in sixteen lanes (a maximum is the same in any order, and
/// the lanes vectorize), then the first id holding it. The same id as one scan keeping the
/// first strictly larger logit (-0 and +0 compare equal in both), in less time: on this
/// week's Zen 3, pseudo-random logits, best of 200, 49,152 of them 74.1 -> 27.4 us, 151,936
/// 191.9 -> 128.0, 262,144 400.6 -> 142.4.
pub fn argmax(logits: &[f32]) -> u32 {
    let Some(&first) = logits.first() else {
        return 0;
    };
    let mut lanes = [first; 16];
    let chunks = logits.chunks_exact(lanes.len());
    let rest = chunks.remainder();
    for c in chunks {
        for (m, &x) in lanes.iter_mut().zip(c) {
            if x > *m {
                *m = x;
            }
        }
    }
    let larger = |m: f32, &x: &f32| if x > m { x } else { m };
    let max = rest.iter().fold(lanes.iter().fold(first, larger), larger);
    logits.iter().position(|&x| x == max).unwrap_or(0) as u32
}

/// Keeps the smallest prefix, in `by_logit_desc` order, whose mass reaches `threshold`
/// (everything if none does); leaves the survivors sorted.
///
/// Without a prior sort it sorts lazily: it selects the next chunk of most likely candidates
/// (64, then 256, 1024, …) out of the rest, sorts only that chunk, and stops as soon as the
/// running mass reaches the threshold. The result and the summation order are those of a full
/// sort.
fn top_p(cands: &mut Vec<Candidate>, threshold: f64, sorted: bool) {
    let n = cands.len();
    // `cands[..done]` is sorted, and nothing after it ranks before anything in it.
    let mut done = 0;
    let mut chunk = if sorted { n } else { 64 };
    let mut cumulative = 0.0f64;
    loop {
        let end = done + chunk.min(n - done);
        if !sorted {
            if end < n {
                cands[done..].select_nth_unstable_by(end - done - 1, by_logit_desc);
            }
            cands[done..end].sort_unstable_by(by_logit_desc);
        }
        for i in done..end {
            cumulative += f64::from(cands[i].p);
            if cumulative >= threshold {
                cands.truncate(i + 1);
                return;
            }
        }
        if end == n {
            // Rounding kept the sum just below the threshold: keep everything.
            return;
        }
        done = end;
        chunk = chunk.saturating_mul(4);
    }
}

#[cfg(test)]
mod tests;
