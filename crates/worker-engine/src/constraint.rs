//! Constrained decoding with llguidance: a [`Constraint`] (JSON schema, Lark grammar,
//! regular expression) is compiled at submit time against a token trie built once per model;
//! while the sequence generates, a worker thread per constrained sequence advances the
//! grammar by each sampled token and computes the next token mask while the batch's forward
//! pass runs.
//!
//! The trie holds every token's bytes as it prints (byte-level BPE tokens decoded, SPM
//! `▁` as a space and byte-fallback tokens as their byte). Special tokens are stored behind
//! llguidance's `0xff` marker, which no grammar over text can produce, so they are never
//! allowed inside constrained text; the end-of-generation tokens are the trie's EOS set and
//! become allowed exactly when the grammar accepts.

use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;

use llguidance::api::{ParserLimits, TopLevelGrammar};
use llguidance::toktrie::{SimpleVob, TokEnv, TokRxInfo, TokTrie, TokenizerEnv};
use llguidance::{Matcher, ParserFactory};
use worker_tokenizer::{EncodeOptions, Tokenizer};

use crate::EngineError;

/// Most bytes of a schema or grammar; larger ones are refused before compiling.
pub const MAX_CONSTRAINT_BYTES: usize = 256 * 1024;

/// What a constrained generation must produce. The text is passed to llguidance as given;
/// the engine does not interpret it beyond that.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Constraint {
    /// Any JSON object (OpenAI `response_format: {"type": "json_object"}`).
    JsonObject,
    /// JSON text that validates against this JSON schema (the schema's JSON text). Keywords
    /// that cannot be enforced are an error, never ignored.
    JsonSchema(String),
    /// Text in the language of this grammar, in llguidance's Lark dialect (which may embed
    /// JSON schemas with `%json`).
    Lark(String),
    /// Text that matches this regular expression as a whole (Rust `regex` syntax).
    Regex(String),
}

/// The parser factory of one model: its token trie (built once) and compile limits.
pub(crate) struct Grammars {
    factory: ParserFactory,
}

impl Grammars {
    /// Builds the token trie of `tok`'s vocabulary, padded with empty (never allowed) tokens
    /// to `vocab_size`, the number of logits per row.
    pub(crate) fn new(tok: Arc<dyn Tokenizer>, vocab_size: usize) -> Result<Self, EngineError> {
        let env = TrieEnv::new(tok, vocab_size)?;
        let env: TokEnv = Arc::new(env);
        let mut factory = ParserFactory::new_simple(&env)
            .map_err(|e| EngineError::Config(format!("cannot build the token trie: {e}")))?;
        factory.quiet();
        let limits = factory.limits_mut();
        *limits = ParserLimits {
            // Errors name the keyword and place, not the tokens or grammar text.
            verbose_errors: false,
            ..ParserLimits::default()
        };
        Ok(Grammars { factory })
    }

    /// Compiles `constraint` into a matcher at its start state, with its first mask
    /// computable. Fails with [`EngineError::Constraint`] on a constraint that does not
    /// compile, is too large, or exceeds llguidance's compile limits.
    pub(crate) fn compile(&self, constraint: &Constraint) -> Result<Matcher, EngineError> {
        let grammar = match constraint {
            Constraint::JsonObject => json_grammar(r#"{"type":"object"}"#)?,
            Constraint::JsonSchema(text) => {
                check_size(text)?;
                json_grammar(text)?
            }
            Constraint::Lark(text) => {
                check_size(text)?;
                TopLevelGrammar::from_lark(text.clone())
            }
            Constraint::Regex(text) => {
                check_size(text)?;
                TopLevelGrammar::from_regex(text)
            }
        };
        let parser = self
            .factory
            .create_parser(grammar)
            .map_err(|e| constraint_error(&e.to_string()))?;
        let mut matcher = Matcher::new(Ok(parser));
        if let Some(e) = matcher.get_error() {
            return Err(constraint_error(&e));
        }
        // Fail here, not in the middle of generation, when even the first mask is beyond
        // the limits.
        match matcher.compute_mask() {
            Ok(mask) if mask.is_zero() => Err(constraint_error("the grammar allows no output")),
            Ok(_) => Ok(matcher),
            Err(e) => Err(constraint_error(&e.to_string())),
        }
    }
}

fn check_size(text: &str) -> Result<(), EngineError> {
    if text.len() > MAX_CONSTRAINT_BYTES {
        return Err(EngineError::Constraint(format!(
            "the schema or grammar has {} bytes, more than the limit of {MAX_CONSTRAINT_BYTES}",
            text.len()
        )));
    }
    Ok(())
}

/// A JSON-schema grammar whose JSON is compact (`", "` and `": "` separators, no free
/// whitespace), so a model cannot wander into endless whitespace.
fn json_grammar(text: &str) -> Result<TopLevelGrammar, EngineError> {
    let mut schema: serde_json::Value = serde_json::from_str(text).map_err(|e| {
        EngineError::Constraint(format!(
            "the schema is not JSON (line {}, column {})",
            e.line(),
            e.column()
        ))
    })?;
    if let Some(map) = schema.as_object_mut() {
        map.entry("x-guidance").or_insert_with(|| {
            serde_json::json!({
                "whitespace_flexible": false,
                "item_separator": ", ",
                "key_separator": ": ",
            })
        });
    } else if !schema.is_boolean() {
        return Err(EngineError::Constraint(
            "the schema must be a JSON object or boolean".into(),
        ));
    }
    Ok(TopLevelGrammar::from_json_schema(schema))
}

/// llguidance's messages name the keyword and where it is; cut them to a sane length.
fn constraint_error(msg: &str) -> EngineError {
    const MAX: usize = 400;
    let mut msg = msg.trim().to_string();
    if msg.len() > MAX {
        let mut end = MAX;
        while !msg.is_char_boundary(end) {
            end -= 1;
        }
        msg.truncate(end);
        msg.push('…');
    }
    EngineError::Constraint(msg)
}

/// The token trie of a model's vocabulary, for llguidance.
struct TrieEnv {
    trie: TokTrie,
    tok: Arc<dyn Tokenizer>,
}

impl TrieEnv {
    fn new(tok: Arc<dyn Tokenizer>, vocab_size: usize) -> Result<Self, EngineError> {
        let n = u32::try_from(vocab_size)
            .map_err(|_| EngineError::Config(format!("vocabulary of {vocab_size} tokens")))?;
        let mut words = Vec::with_capacity(vocab_size);
        let mut eog = Vec::new();
        for id in 0..n {
            if id as usize >= tok.vocab_size() {
                words.push(Vec::new());
                continue;
            }
            if tok.is_eog(id) {
                eog.push(id);
            }
            if tok.is_special(id) {
                // Special tokens print as nothing in text: give them the marker, never
                // reachable from text, and their name, so they stay out of every mask
                // except as EOS.
                let mut word = vec![TokTrie::SPECIAL_TOKEN_MARKER];
                word.extend_from_slice(tok.token_text(id).unwrap_or("").as_bytes());
                words.push(word);
                continue;
            }
            words.push(
                tok.token_bytes(id, false)
                    .map(|b| b.into_owned())
                    .unwrap_or_default(),
            );
        }
        if eog.is_empty() {
            eog.extend(tok.eos());
        }
        let Some(&first_eog) = eog.first() else {
            return Err(EngineError::Config(
                "the vocabulary has no end-of-generation token: constrained decoding needs one"
                    .into(),
            ));
        };
        let mut info = TokRxInfo::new(n, first_eog);
        info.tok_bos = tok.bos();
        info.tok_end_of_turn = tok.eot();
        let trie = TokTrie::from(&info, &words).with_eos_tokens(&eog);
        Ok(TrieEnv { trie, tok })
    }
}

impl TokenizerEnv for TrieEnv {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<u32> {
        if self.tok.strips_leading_space() {
            // SentencePiece would put a space in front of the text: tokenize it as bytes.
            return self.trie.greedy_tokenize(s);
        }
        match std::str::from_utf8(s) {
            Ok(text) => self
                .tok
                .encode(text, EncodeOptions::PLAIN)
                .unwrap_or_else(|_| self.trie.greedy_tokenize(s)),
            Err(_) => self.trie.greedy_tokenize(s),
        }
    }

    fn tokenize_is_canonical(&self) -> bool {
        !self.tok.strips_leading_space()
    }
}

/// What the mask thread says after each token it was given.
enum Reply {
    /// The token was consumed; `stopped` when the grammar is complete and allows nothing more.
    Consumed { stopped: bool },
    /// The mask for the next token.
    Mask(SimpleVob),
    /// The grammar failed (a limit hit); the message names why.
    Failed(String),
}

/// The grammar state of one generating sequence, on its own thread: after each token it
/// answers at once whether the grammar is complete, then computes the next mask while the
/// caller runs the next forward pass.
///
/// Dropping it closes the token channel; the thread ends after the mask it is computing.
pub(crate) struct MaskWorker {
    tokens: Sender<u32>,
    replies: Receiver<Reply>,
}

impl MaskWorker {
    /// Starts the thread; it computes the first mask at once (while the prompt prefills).
    pub(crate) fn start(mut matcher: Matcher) -> Result<Self, EngineError> {
        let (tokens, token_rx) = mpsc::channel::<u32>();
        let (reply_tx, replies) = mpsc::channel();
        std::thread::Builder::new()
            .name("worker-grammar".into())
            .spawn(move || {
                let mask = |m: &mut Matcher| match m.compute_mask() {
                    Ok(v) => Reply::Mask(v),
                    Err(e) => Reply::Failed(e.to_string()),
                };
                if reply_tx.send(mask(&mut matcher)).is_err() {
                    return;
                }
                while let Ok(token) = token_rx.recv() {
                    let reply = match matcher.consume_token(token) {
                        Ok(()) => Reply::Consumed {
                            stopped: matcher.is_stopped(),
                        },
                        Err(e) => Reply::Failed(e.to_string()),
                    };
                    let go_on = matches!(reply, Reply::Consumed { stopped: false });
                    if reply_tx.send(reply).is_err() || !go_on {
                        return;
                    }
                    if reply_tx.send(mask(&mut matcher)).is_err() {
                        return;
                    }
                }
            })
            .map_err(|e| EngineError::Config(format!("cannot start a grammar thread: {e}")))?;
        Ok(MaskWorker { tokens, replies })
    }

    /// Waits for the mask of the next token (as `u32` words, bit `id % 32` of word
    /// `id / 32`). A mask that allows nothing is an error: the grammar is stuck.
    pub(crate) fn mask(&mut self) -> Result<SimpleVob, EngineError> {
        match self.replies.recv() {
            Ok(Reply::Mask(v)) if v.is_zero() => Err(EngineError::Constraint(
                "the grammar allows no further token".into(),
            )),
            Ok(Reply::Mask(v)) => Ok(v),
            Ok(Reply::Failed(e)) => Err(constraint_error(&e)),
            Ok(Reply::Consumed { .. }) | Err(_) => Err(EngineError::Constraint(
                "the grammar thread is out of step".into(),
            )),
        }
    }

    /// Advances the grammar by `token` (which its last mask allowed); returns whether the
    /// grammar is now complete. The next mask is then computed in the background.
    pub(crate) fn accept(&mut self, token: u32) -> Result<bool, EngineError> {
        if self.tokens.send(token).is_err() {
            return Err(EngineError::Constraint("the grammar thread is gone".into()));
        }
        match self.replies.recv() {
            Ok(Reply::Consumed { stopped }) => Ok(stopped),
            Ok(Reply::Failed(e)) => Err(constraint_error(&e)),
            Ok(Reply::Mask(_)) | Err(_) => Err(EngineError::Constraint(
                "the grammar thread is out of step".into(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokenizer(path: &std::path::Path) -> Arc<dyn Tokenizer> {
        let file = worker_gguf::GgufFile::open(path).expect("open the vocabulary");
        worker_tokenizer::from_gguf(file.metadata())
            .expect("tokenizer")
            .into()
    }

    fn smollm2() -> Arc<dyn Tokenizer> {
        tokenizer(&worker_testdata::model(worker_testdata::SMOLLM2))
    }

    #[test]
    fn special_tokens_are_never_allowed_but_eos_is_when_the_grammar_accepts() {
        let tok = smollm2();
        let n = tok.vocab_size();
        let grammars = Grammars::new(tok.clone(), n).unwrap();
        // Any text at all, and the empty text: EOS must be allowed at once.
        let mut m = grammars
            .compile(&Constraint::Regex("(.|\n)*".into()))
            .unwrap();
        let mask = m.compute_mask().unwrap();
        let special: Vec<u32> = (0..n as u32).filter(|&id| tok.is_special(id)).collect();
        assert!(special.len() > 2, "SmolLM2 has special tokens");
        for id in special {
            assert_eq!(mask.is_allowed(id), tok.is_eog(id), "special token {id}");
        }
        let hello = tok.token_id("Hello").unwrap();
        assert!(mask.is_allowed(hello));
    }

    #[test]
    fn eos_is_banned_until_the_grammar_accepts() {
        let tok = smollm2();
        let grammars = Grammars::new(tok.clone(), tok.vocab_size()).unwrap();
        let eos = tok.eos().unwrap();
        let mut m = grammars.compile(&Constraint::Regex("ab".into())).unwrap();
        assert!(!m.compute_mask().unwrap().is_allowed(eos));
        let a = tok.token_id("a").unwrap();
        let b = tok.token_id("b").unwrap();
        m.consume_token(a).unwrap();
        let mask = m.compute_mask().unwrap();
        assert!(mask.is_allowed(b) && !mask.is_allowed(a) && !mask.is_allowed(eos));
        m.consume_token(b).unwrap();
        assert!(m.is_stopped(), "nothing may follow a whole match");
    }

    #[test]
    fn spm_byte_fallback_and_word_boundaries_print_as_bytes() {
        let tok = tokenizer(&worker_testdata::vocab("llama-spm"));
        let n = tok.vocab_size();
        let env = TrieEnv::new(tok.clone(), n + 5).unwrap();
        let trie = env.tok_trie();
        assert_eq!(trie.vocab_size(), n + 5);
        let newline = tok.token_id("<0x0A>").unwrap();
        assert_eq!(trie.token(newline), b"\n");
        let the = tok.token_id("\u{2581}the").unwrap();
        assert_eq!(trie.token(the), b" the");
        // Padding ids past the tokenizer's vocabulary are empty, never allowed.
        assert!(trie.token(n as u32 + 2).is_empty());
        let grammars = Grammars::new(tok.clone(), n).unwrap();
        let mut m = grammars
            .compile(&Constraint::Regex("\n[a-z]+".into()))
            .unwrap();
        let mask = m.compute_mask().unwrap();
        assert!(mask.is_allowed(newline));
        assert!(!mask.is_allowed(the));
    }

    #[test]
    fn bad_constraints_are_refused_with_a_reason() {
        let tok = smollm2();
        let grammars = Grammars::new(tok.clone(), tok.vocab_size()).unwrap();
        let cases = [
            Constraint::JsonSchema("{\"type\": ".into()),
            Constraint::JsonSchema("[1, 2]".into()),
            Constraint::JsonSchema(r##"{"$ref": "#/$defs/missing"}"##.into()),
            Constraint::JsonSchema(r#"{"type": "array", "uniqueItems": true}"#.into()),
            Constraint::JsonSchema(r#"{"type": "wobble"}"#.into()),
            Constraint::Regex("(unclosed".into()),
            Constraint::Lark("start: undefined_rule".into()),
            Constraint::Lark(format!("start: \"{}\"", "a".repeat(MAX_CONSTRAINT_BYTES))),
        ];
        for c in cases {
            match grammars.compile(&c) {
                Err(EngineError::Constraint(msg)) => {
                    assert!(!msg.is_empty() && msg.len() < 420, "{msg}")
                }
                Err(e) => panic!("{c:?}: wrong error {e}"),
                Ok(_) => panic!("{c:?} compiled"),
            }
        }
    }

    #[test]
    fn unenforceable_keywords_are_named() {
        let tok = smollm2();
        let grammars = Grammars::new(tok.clone(), tok.vocab_size()).unwrap();
        let c = Constraint::JsonSchema(r#"{"type": "array", "uniqueItems": true}"#.into());
        let Err(EngineError::Constraint(msg)) = grammars.compile(&c) else {
            panic!("compiled");
        };
        assert!(msg.contains("uniqueItems"), "{msg}");
    }

    /// Feeds `text`'s tokens to a matcher of `grammar`: `Ok(stopped)` when every token was
    /// allowed (whether the grammar is then complete), `Err(prefix)` with the text accepted
    /// before the first refused token.
    fn feed(
        grammars: &Grammars,
        tok: &Arc<dyn Tokenizer>,
        grammar: &str,
        text: &str,
    ) -> Result<bool, String> {
        let mut m = grammars.compile(&Constraint::Lark(grammar.into())).unwrap();
        let options = EncodeOptions {
            add_special: false,
            parse_special: true,
        };
        let mut accepted = String::new();
        for id in tok.encode(text, options).unwrap() {
            if m.is_stopped() || !m.compute_mask().unwrap().is_allowed(id) {
                return Err(accepted);
            }
            m.consume_token(id).unwrap();
            accepted.push_str(&tok.decode(&[id], true).unwrap());
        }
        Ok(m.is_stopped())
    }

    #[test]
    fn lazy_grammars_leave_text_free_until_a_marker_then_constrain() {
        // The shapes of worker-http's `auto` tool-call grammars on Qwen2.5's vocabulary, where
        // `<tool_call>` and `</tool_call>` are special tokens, and with a plain-text marker.
        let tok = tokenizer(&worker_testdata::model(worker_testdata::QWEN25));
        let open = tok.token_id("<tool_call>").unwrap();
        let close = tok.token_id("</tool_call>").unwrap();
        assert!(tok.is_special(open) && tok.is_special(close));
        let grammars = Grammars::new(tok.clone(), tok.vocab_size()).unwrap();
        let schema = r#"{"type":"object","properties":{"name":{"const":"f"},"arguments":{"type":"object"}},"required":["name","arguments"],"additionalProperties":false}"#;
        let special = format!(
            "start: TEXT? (<[{open}]> body)?\nTEXT: /(?s:.+)/\nbody: \"\\n\" %json {schema} \"\\n\" <[{close}]>\n"
        );
        let plain = format!(
            "start: TEXT? | prefix body\nTEXT: /(?s:.+)/ & ~/(?s:.*)<call>(?s:.*)/\n\
             prefix[lazy]: /(?s:.*)/ \"<call>\"\nbody: \"\\n\" %json {schema} \"\\n\" \"</call>\"\n"
        );
        let call = "\n{\"name\": \"f\", \"arguments\": {}}\n";
        for (grammar, o, c) in [
            (&special, "<tool_call>", "</tool_call>"),
            (&plain, "<call>", "</call>"),
        ] {
            assert_eq!(
                feed(&grammars, &tok, grammar, "Just text, no call."),
                Ok(false)
            );
            assert_eq!(
                feed(
                    &grammars,
                    &tok,
                    grammar,
                    &format!("Let me look.\n{o}{call}{c}")
                ),
                Ok(true)
            );
            assert_eq!(
                feed(&grammars, &tok, grammar, &format!("{o}{call}{c}")),
                Ok(true)
            );
            let bad = feed(
                &grammars,
                &tok,
                grammar,
                &format!("{o}\n{{\"name\": \"g\"}}"),
            );
            assert_eq!(
                bad,
                Err(format!("{o}\n{{\"name\": \"")),
                "a call of an unknown function"
            );
            assert_eq!(
                feed(&grammars, &tok, grammar, &format!("{o}\nnot json")),
                Err(format!("{o}\n"))
            );
        }
    }
}
