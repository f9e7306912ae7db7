//! Stop strings matched on generated text, also when one is split across tokens.
//!
//! Text is held back while its end could still be the start of a stop string (the longest
//! suffix of the held text that is a prefix of some stop string), so a stop string is never
//! streamed out, not even in part.

/// The result of feeding text to a [`StopMatcher`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StopCheck {
    /// No stop string yet; `emit` is text that can no longer be part of one.
    Continue {
        /// Text safe to stream now.
        emit: String,
    },
    /// A stop string matched; `emit` is the text before it, and the rest is dropped.
    Stopped {
        /// Text before the stop string, not yet streamed.
        emit: String,
        /// The stop string that matched.
        stop: String,
    },
}

/// Finds stop strings in a stream of text pieces.
#[derive(Clone, Debug, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    held: String,
}

impl StopMatcher {
    /// A matcher for `stops`; empty strings are ignored (they would match everywhere).
    pub fn new(stops: &[String]) -> Self {
        StopMatcher {
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            held: String::new(),
        }
    }

    /// Adds the next piece of generated text.
    ///
    /// The match that starts earliest wins; at the same start, the stop string listed first.
    pub fn push(&mut self, text: &str) -> StopCheck {
        self.held.push_str(text);
        if self.stops.is_empty() {
            return StopCheck::Continue {
                emit: std::mem::take(&mut self.held),
            };
        }
        let first = self
            .stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()).map(|at| (at, s)))
            .min_by_key(|&(at, _)| at);
        if let Some((at, stop)) = first {
            let stop = stop.clone();
            self.held.truncate(at);
            return StopCheck::Stopped {
                emit: std::mem::take(&mut self.held),
                stop,
            };
        }
        let keep = self.partial_len();
        let emit = self.held[..self.held.len() - keep].to_string();
        self.held.drain(..self.held.len() - keep);
        StopCheck::Continue { emit }
    }

    /// Releases the text still held back (the generation ended without a match).
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }

    /// Length of the longest suffix of the held text that is a proper prefix of a stop
    /// string.
    fn partial_len(&self) -> usize {
        let longest = self.stops.iter().map(String::len).max().unwrap_or(0);
        let max = self.held.len().min(longest.saturating_sub(1));
        (1..=max)
            .rev()
            .find(|&k| {
                let start = self.held.len() - k;
                self.held.is_char_boundary(start)
                    && self
                        .stops
                        .iter()
                        .any(|s| s.starts_with(&self.held[start..]))
            })
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `pieces` to a matcher for `stops`; returns what was streamed and the stop string
    /// (or `None` when the pieces ran out, in which case the streamed text includes the
    /// released tail).
    fn check(stops: &[&str], pieces: &[&str]) -> (Vec<String>, Option<String>) {
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let mut m = StopMatcher::new(&stops);
        let mut out = Vec::new();
        for p in pieces {
            match m.push(p) {
                StopCheck::Continue { emit } => out.push(emit),
                StopCheck::Stopped { emit, stop } => {
                    out.push(emit);
                    return (out, Some(stop));
                }
            }
        }
        out.push(m.finish());
        (out, None)
    }

    #[test]
    fn no_stop_strings_streams_everything_at_once() {
        assert_eq!(
            check(&[], &["a", "b"]),
            (vec!["a".into(), "b".into(), "".into()], None)
        );
    }

    #[test]
    fn stop_inside_one_piece_cuts_it() {
        assert_eq!(
            check(&["END"], &["abcENDxyz"]),
            (vec!["abc".into()], Some("END".into()))
        );
    }

    #[test]
    fn stop_split_across_pieces_is_never_emitted() {
        let (out, stop) = check(&["</s>"], &["Hello <", "/", "s", "> tail"]);
        assert_eq!(stop.as_deref(), Some("</s>"));
        assert_eq!(out, vec!["Hello ", "", "", ""]);
        assert!(!out.concat().contains('<'));
    }

    #[test]
    fn held_text_is_released_when_the_match_fails() {
        let (out, stop) = check(&["</s>"], &["a <", "/", "x"]);
        assert_eq!(stop, None);
        assert_eq!(out, vec!["a ", "", "</x", ""]);
    }

    #[test]
    fn overlapping_partial_matches() {
        // "aab" with stop "ab": the first "a" is released once a second "a" shows it cannot
        // start the match; the second is held and then dropped with the stop string.
        assert_eq!(
            check(&["ab"], &["a", "a", "b"]),
            (vec!["".into(), "a".into(), "".into()], Some("ab".into()))
        );
        // Self-overlapping stop string: "ababc" inside "abababc".
        let (out, stop) = check(&["ababc"], &["ab", "ab", "ab", "c"]);
        assert_eq!(stop.as_deref(), Some("ababc"));
        assert_eq!(out.concat(), "ab");
    }

    #[test]
    fn the_earliest_match_wins() {
        let (out, stop) = check(&["world", "lo w"], &["hello world"]);
        assert_eq!(stop.as_deref(), Some("lo w"));
        assert_eq!(out.concat(), "hel");
    }

    #[test]
    fn a_prefix_of_another_stop_string_is_held() {
        let (out, stop) = check(&["\n\n", "\nUser:"], &["x\n", "U", "ser:"]);
        assert_eq!(stop.as_deref(), Some("\nUser:"));
        assert_eq!(out.concat(), "x");
    }

    #[test]
    fn multibyte_text_is_cut_at_character_boundaries() {
        let (out, stop) = check(&["é!"], &["café", " ok"]);
        assert_eq!(stop, None);
        assert_eq!(out, vec!["caf", "é ok", ""]);
        let (out, stop) = check(&["é!"], &["café", "!"]);
        assert_eq!(stop.as_deref(), Some("é!"));
        assert_eq!(out.concat(), "caf");
    }

    #[test]
    fn empty_stop_strings_are_ignored() {
        assert_eq!(check(&[""], &["abc"]).0.concat(), "abc");
    }

    #[test]
    fn streamed_text_never_contains_a_stop_string() {
        // Every split of a text into pieces of 1..=3 bytes.
        let text = "one two three stop four";
        for size in 1..=3 {
            let pieces: Vec<&str> = text
                .as_bytes()
                .chunks(size)
                .map(|c| std::str::from_utf8(c).unwrap())
                .collect();
            let (out, stop) = check(&["stop", "three s"], &pieces);
            assert_eq!(stop.as_deref(), Some("three s"), "size {size}");
            assert_eq!(out.concat(), "one two ", "size {size}");
        }
    }
}
