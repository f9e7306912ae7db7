//! Streaming detokenization: ids go in one at a time, text comes out only at whole UTF-8
//! characters.

use crate::error::Result;
use crate::{TokenId, Tokenizer};

/// Turns a stream of token ids into text without ever splitting a UTF-8 character.
///
/// Bytes of a character that spans several tokens (byte-fallback tokens, or byte-level BPE
/// pieces that cut a character) are held back until the character is complete. Bytes that can
/// never form a valid character come out as U+FFFD, so everything emitted is valid text and
/// nothing is lost; [`StreamDecoder::flush`] returns what is still held back.
pub struct StreamDecoder<'a, T: Tokenizer + ?Sized> {
    tok: &'a T,
    pending: Vec<u8>,
    render_special: bool,
    /// The text starts here: SentencePiece's added leading space is dropped, at the start and
    /// after each special token (the inverse of what encoding adds).
    from_start: bool,
    strip_next_space: bool,
}

impl<'a, T: Tokenizer + ?Sized> StreamDecoder<'a, T> {
    /// A decoder for tokens that continue a text (generated after a prompt): every token's
    /// text is kept, leading spaces included, as llama.cpp's `token_to_piece` does.
    pub fn new(tok: &'a T) -> Self {
        Self {
            tok,
            pending: Vec::new(),
            render_special: false,
            from_start: false,
            strip_next_space: false,
        }
    }

    /// A decoder for a whole text from its first token: for SentencePiece vocabularies with
    /// `add_space_prefix`, the space that encoding put in front is removed again.
    pub fn from_start(tok: &'a T) -> Self {
        let strip = tok.strips_leading_space();
        Self {
            tok,
            pending: Vec::new(),
            render_special: false,
            from_start: true,
            strip_next_space: strip,
        }
    }

    /// Also prints control tokens (`<|im_end|>`); by default they print as nothing.
    pub fn render_special(mut self, yes: bool) -> Self {
        self.render_special = yes;
        self
    }

    /// Adds one token; returns the text that is now complete (often empty).
    pub fn push(&mut self, id: TokenId) -> Result<String> {
        let bytes = self.tok.token_bytes(id, self.render_special)?;
        let mut bytes: &[u8] = &bytes;
        if self.strip_next_space && !bytes.is_empty() {
            if bytes[0] == b' ' {
                bytes = &bytes[1..];
            }
            self.strip_next_space = false;
        }
        self.pending.extend_from_slice(bytes);
        if self.from_start && self.tok.strips_leading_space() && self.tok.is_special(id) {
            self.strip_next_space = true;
        }
        Ok(self.take_complete())
    }

    /// Returns everything still held back; incomplete characters become U+FFFD.
    pub fn flush(&mut self) -> String {
        let out = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        out
    }

    fn take_complete(&mut self) -> String {
        let mut out = String::new();
        let mut rest: &[u8] = &self.pending;
        loop {
            match std::str::from_utf8(rest) {
                Ok(s) => {
                    out.push_str(s);
                    rest = &[];
                    break;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    // The prefix is valid UTF-8 by construction.
                    out.push_str(std::str::from_utf8(&rest[..valid]).unwrap_or_default());
                    match e.error_len() {
                        // An invalid sequence: it can never become valid.
                        Some(len) => {
                            out.push('\u{FFFD}');
                            rest = &rest[valid + len..];
                        }
                        // An incomplete character at the end: wait for more bytes.
                        None => {
                            rest = &rest[valid..];
                            break;
                        }
                    }
                }
            }
        }
        let keep = rest.len();
        let drain = self.pending.len() - keep;
        self.pending.drain(..drain);
        out
    }
}

/// Decodes a whole sequence as a [`StreamDecoder::from_start`] would.
pub(crate) fn decode_all<T: Tokenizer + ?Sized>(
    tok: &T,
    ids: &[TokenId],
    render_special: bool,
) -> Result<String> {
    let mut d = StreamDecoder::from_start(tok).render_special(render_special);
    let mut out = String::new();
    for &id in ids {
        out.push_str(&d.push(id)?);
    }
    out.push_str(&d.flush());
    Ok(out)
}
