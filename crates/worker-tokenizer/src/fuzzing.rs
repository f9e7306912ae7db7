//! Entry points for the fuzz targets in `fuzz/` and for the seeded tests that stand in for
//! them in CI (which has no nightly): tokenizers on arbitrary text and arbitrary id
//! sequences, chat templates on arbitrary message lists, each with the invariants it must
//! keep. A broken invariant panics, as a fuzzer wants. Not used by the worker itself.

use std::path::Path;

use crate::error::{Result, TokenizerError};
use crate::{from_gguf, ChatContext, ChatMessage, ChatTemplate, EncodeOptions};
use crate::{StreamDecoder, TokenId, Tokenizer};

/// The tokenizer in `path`: a GGUF file's vocabulary, or an HF `tokenizer.json` (which
/// needs the `hf` feature; without it that is an error).
pub fn load_tokenizer(path: &Path) -> Result<Box<dyn Tokenizer>> {
    if path.extension().is_some_and(|e| e == "gguf") {
        let file = worker_gguf::GgufFile::open(path)?;
        from_gguf(file.metadata())
    } else {
        load_hf(path)
    }
}

#[cfg(feature = "hf")]
fn load_hf(path: &Path) -> Result<Box<dyn Tokenizer>> {
    Ok(Box::new(crate::HfTokenizer::from_file(path)?))
}

#[cfg(not(feature = "hf"))]
fn load_hf(path: &Path) -> Result<Box<dyn Tokenizer>> {
    Err(TokenizerError::Hf(format!(
        "{}: worker-tokenizer was built without the `hf` feature",
        path.display()
    )))
}

/// The chat template of `path`: a GGUF file's `tokenizer.chat_template`, or the
/// `chat_template` of an HF `tokenizer_config.json`.
pub fn load_chat_template(path: &Path) -> Result<Option<ChatTemplate>> {
    if path.extension().is_some_and(|e| e == "gguf") {
        let file = worker_gguf::GgufFile::open(path)?;
        return ChatTemplate::from_gguf(file.metadata());
    }
    let bytes = std::fs::read(path).map_err(|error| TokenizerError::Io {
        path: path.display().to_string(),
        error,
    })?;
    let config: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| TokenizerError::Hf(e.to_string()))?;
    config
        .get("chat_template")
        .and_then(|v| v.as_str())
        .map(ChatTemplate::new)
        .transpose()
}

/// Pieces of text that tokenizers treat specially: words, spaces, digits, scripts, emoji,
/// combining marks, control tokens of several families, and the vocabulary markers.
const PIECES: &[&str] = &[
    "Hello",
    " world",
    "\n",
    "\n\n",
    "\t",
    "   ",
    "123",
    "4567",
    "3.14",
    "é",
    "e\u{301}",
    "日本語",
    "한국어",
    "Ελληνικά",
    "עברית",
    "🙂",
    "👩‍👩‍👧",
    "\u{200b}",
    "\u{feff}",
    "\r\n",
    "<|im_start|>",
    "<|im_end|>",
    "<|endoftext|>",
    "<s>",
    "</s>",
    "[INST]",
    "<unk>",
    "<pad>",
    "<|begin_of_text|>",
    "<|eot_id|>",
    "<start_of_turn>",
    "'s",
    "'LL",
    "n't",
    "ǅ",
    "!!!",
    "a",
    "<0x0A>",
    "▁",
    "Ġ",
    "\u{0}",
    "\u{7f}",
    "\u{10ffff}",
    "ﬁ",
    "Ⅻ",
    "İ",
    "ß",
    " ",
    "  ",
    "?",
];

/// Text made of [`PIECES`] picked by `bytes`.
fn assembled(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|&b| PIECES[b as usize % PIECES.len()])
        .collect()
}

/// Runs `tok` on `data`: the first byte picks the operation (encode raw or assembled text,
/// decode ids, look ids up), the second its options, the rest is the input. Checks that
/// encoded ids are in the vocabulary and decode, that decoding refuses out-of-range ids,
/// that streaming decode gives exactly the lossy UTF-8 of the tokens' bytes, and that id
/// lookups succeed in range and fail out of it.
pub fn check_tokenizer(tok: &dyn Tokenizer, data: &[u8]) {
    let (op, flags) = (
        data.first().copied().unwrap_or(0),
        data.get(1).copied().unwrap_or(0),
    );
    let rest = data.get(2..).unwrap_or_default();
    let vocab = tok.vocab_size();
    let render = flags & 4 != 0;
    match op % 4 {
        0 | 1 => {
            let text = if op % 4 == 0 {
                String::from_utf8_lossy(rest).into_owned()
            } else {
                assembled(rest)
            };
            let options = EncodeOptions {
                add_special: flags & 1 != 0,
                parse_special: flags & 2 != 0,
            };
            let Ok(ids) = tok.encode(&text, options) else {
                return;
            };
            assert!(
                ids.iter().all(|&id| (id as usize) < vocab),
                "an id outside the vocabulary"
            );
            tok.decode(&ids, render)
                .unwrap_or_else(|e| panic!("encoded ids do not decode: {e}"));
            check_stream(tok, &ids, render);
        }
        2 => {
            let ids: Vec<TokenId> = rest
                .chunks(3)
                .map(|c| {
                    let v = c.iter().rev().fold(0u32, |acc, &b| acc << 8 | u32::from(b));
                    v % (vocab as u32).saturating_add(8)
                })
                .collect();
            let decoded = tok.decode(&ids, render);
            if ids.iter().any(|&id| id as usize >= vocab) {
                assert!(decoded.is_err(), "an out-of-range id decoded");
            } else {
                decoded.unwrap_or_else(|e| panic!("in-range ids do not decode: {e}"));
                check_stream(tok, &ids, render);
            }
        }
        _ => {
            for c in rest.chunks(3) {
                let id = c.iter().fold(0u32, |acc, &b| acc << 8 | u32::from(b))
                    % (vocab as u32).saturating_add(8);
                let in_range = (id as usize) < vocab;
                assert_eq!(
                    tok.token_bytes(id, render).is_ok(),
                    in_range,
                    "token_bytes({id})"
                );
                assert_eq!(tok.token_text(id).is_ok(), in_range, "token_text({id})");
                assert_eq!(
                    tok.token_to_piece(id).is_ok(),
                    in_range,
                    "token_to_piece({id})"
                );
                let _ = (tok.is_special(id), tok.is_eog(id));
            }
        }
    }
}

/// Streaming `ids` one at a time gives the lossy UTF-8 of all their bytes at once.
fn check_stream(tok: &dyn Tokenizer, ids: &[TokenId], render: bool) {
    let mut all = Vec::new();
    let mut streamed = String::new();
    let mut d = StreamDecoder::new(tok).render_special(render);
    for &id in ids {
        all.extend_from_slice(&tok.token_bytes(id, render).expect("in range"));
        streamed.push_str(&d.push(id).expect("in range"));
    }
    streamed.push_str(&d.flush());
    assert_eq!(
        streamed,
        String::from_utf8_lossy(&all),
        "streamed text differs"
    );
}

/// Renders `template` on a message list built from `data` (roles, contents, flags); any
/// result is fine but a panic or an error that is not a template error.
pub fn check_template(template: &ChatTemplate, data: &[u8]) {
    const ROLES: &[&str] = &[
        "system",
        "user",
        "assistant",
        "tool",
        "developer",
        "ipython",
        "",
    ];
    let mut bytes = data.iter().copied();
    let mut next = || bytes.next().unwrap_or(0);
    let flags = next();
    let count = next() % 12;
    let mut messages = Vec::new();
    for _ in 0..count {
        let role = ROLES[next() as usize % ROLES.len()];
        let len = next() % 24;
        let raw: Vec<u8> = (0..len).map(|_| next()).collect();
        let content = if next() % 2 == 0 {
            assembled(&raw)
        } else {
            String::from_utf8_lossy(&raw).into_owned()
        };
        messages.push(ChatMessage::new(role, content));
    }
    let ctx = ChatContext {
        add_generation_prompt: flags & 1 != 0,
        bos_token: if flags & 2 != 0 {
            "<s>".into()
        } else {
            String::new()
        },
        eos_token: if flags & 4 != 0 {
            "</s>".into()
        } else {
            String::new()
        },
        now: None,
        variables: Default::default(),
    };
    if let Err(e) = template.render(&messages, &ctx) {
        assert!(matches!(e, TokenizerError::Template(_)), "{e}");
    }
}
