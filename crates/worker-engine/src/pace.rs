//! How many prompt tokens a turn may carry beside generating sequences (chunked prefill).
//!
//! On a CPU a prompt token costs compute time in the step that carries it, so a fixed
//! chunk either stalls the streams (a large one) or slows the prompt (a small one) by
//! different amounts on different models and machines. The pace measures both instead: the
//! time of a turn that only decodes, and the extra time each prompt token adds to a turn,
//! and sizes the chunk so that a mixed turn takes about [`ITL_TARGET`] times a decode-only
//! one. The chunk never exceeds the configured one; the outputs never depend on it.

use std::time::Duration;

/// A mixed turn's time over a decode-only turn's that the chunk aims at.
pub(crate) const ITL_TARGET: f64 = 2.5;
/// Fewest prompt tokens a mixed turn carries, so a prompt always advances.
const MIN_CHUNK: usize = 4;
/// The chunk before anything is measured.
const FIRST_CHUNK: usize = 16;
/// Weight of a new sample in the moving averages.
const ALPHA: f64 = 0.25;

/// Moving averages of turn times, and the chunk they imply.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Pace {
    max_chunk: usize,
    /// Seconds of a turn that only decodes.
    decode_s: Option<f64>,
    /// Seconds one prompt token adds to a turn that also decodes.
    token_s: Option<f64>,
}

impl Pace {
    /// A pace whose chunk is at most `max_chunk`.
    pub(crate) fn new(max_chunk: usize) -> Self {
        Pace {
            max_chunk: max_chunk.max(1),
            decode_s: None,
            token_s: None,
        }
    }

    /// Prompt tokens the next turn that also decodes may carry.
    pub(crate) fn chunk(&self) -> usize {
        let (Some(d), Some(t)) = (self.decode_s, self.token_s) else {
            // Nothing measured yet: a small first chunk, measured in turn.
            return FIRST_CHUNK.min(self.max_chunk);
        };
        let fit = (ITL_TARGET - 1.0) * d / t.max(1e-12);
        (fit as usize).clamp(MIN_CHUNK.min(self.max_chunk), self.max_chunk)
    }

    /// Records a turn of `decode_rows` generated tokens and `prompt_tokens` prompt tokens
    /// that took `elapsed`.
    pub(crate) fn record(&mut self, decode_rows: usize, prompt_tokens: usize, elapsed: Duration) {
        let s = elapsed.as_secs_f64();
        match (decode_rows, prompt_tokens) {
            (0, _) => {}
            (_, 0) => self.decode_s = Some(average(self.decode_s, s)),
            (_, n) => {
                if let Some(d) = self.decode_s {
                    let per = (s - d).max(0.0) / n as f64;
                    self.token_s = Some(average(self.token_s, per));
                }
            }
        }
    }
}

fn average(old: Option<f64>, new: f64) -> f64 {
    old.map_or(new, |o| o + ALPHA * (new - o))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: f64) -> Duration {
        Duration::from_secs_f64(v / 1e3)
    }

    #[test]
    fn the_chunk_keeps_a_mixed_turn_near_the_target() {
        let mut p = Pace::new(512);
        assert_eq!(p.chunk(), 16, "unmeasured: a small chunk");
        // Decode turns of 10 ms; each prompt token adds 0.5 ms.
        for _ in 0..20 {
            p.record(3, 0, ms(10.0));
            p.record(3, 16, ms(18.0));
        }
        // 1.5 x 10 ms of room at 0.5 ms a token.
        assert_eq!(p.chunk(), 30);
        // Prompt-only turns say nothing about either.
        p.record(0, 512, ms(900.0));
        assert_eq!(p.chunk(), 30);
    }

    #[test]
    fn the_chunk_stays_within_its_bounds() {
        let mut p = Pace::new(8);
        p.record(1, 0, ms(10.0));
        p.record(1, 8, ms(10.0)); // free prompt tokens: as many as allowed
        assert_eq!(p.chunk(), 8);
        let mut p = Pace::new(512);
        p.record(1, 0, ms(1.0));
        p.record(1, 4, ms(401.0)); // 100 ms a token: still a few, so the prompt advances
        assert_eq!(p.chunk(), MIN_CHUNK);
    }
}
