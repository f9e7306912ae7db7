//! Code point classes for the pre-tokenizers, and GPT-2's byte ↔ character map.
//!
//! The classes come from `regex-syntax`'s Unicode tables (the same tables the `fancy-regex`
//! pre-tokenizers use), so the hand-written splitters and the regex ones agree on what
//! `\p{L}`, `\p{N}` and `\s` mean.

use std::sync::OnceLock;

/// `\p{L}`.
pub(crate) const LETTER: u8 = 1;
/// `\p{N}`.
pub(crate) const NUMBER: u8 = 2;
/// `\s` (Unicode White_Space).
pub(crate) const WHITESPACE: u8 = 4;

const MAX_CODEPOINT: usize = 0x11_0000;

fn class_ranges(pattern: &str) -> Vec<(u32, u32)> {
    use regex_syntax::hir::{Class, HirKind};
    let Ok(hir) = regex_syntax::Parser::new().parse(pattern) else {
        return Vec::new();
    };
    match hir.kind() {
        HirKind::Class(Class::Unicode(c)) => c
            .ranges()
            .iter()
            .map(|r| (r.start() as u32, r.end() as u32))
            .collect(),
        _ => Vec::new(),
    }
}

fn table() -> &'static [u8] {
    static TABLE: OnceLock<Vec<u8>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut t = vec![0u8; MAX_CODEPOINT];
        for (pattern, flag) in [(r"\p{L}", LETTER), (r"\p{N}", NUMBER), (r"\s", WHITESPACE)] {
            for (lo, hi) in class_ranges(pattern) {
                for cp in lo..=hi.min(MAX_CODEPOINT as u32 - 1) {
                    t[cp as usize] |= flag;
                }
            }
        }
        t
    })
}

/// The class flags of `c` (a combination of [`LETTER`], [`NUMBER`], [`WHITESPACE`]).
#[inline]
pub(crate) fn flags(c: char) -> u8 {
    // `char` is at most 0x10FFFF, so the index is always in range.
    table().get(c as usize).copied().unwrap_or(0)
}

/// The character GPT-2's byte-level BPE writes for byte `b`.
pub(crate) fn byte_to_char(b: u8) -> char {
    byte_maps().0[b as usize]
}

/// The byte that GPT-2's byte-level character `c` stands for, if it is one.
pub(crate) fn char_to_byte(c: char) -> Option<u8> {
    let cp = c as u32;
    if cp < 324 {
        let b = byte_maps().1[cp as usize];
        (b >= 0).then_some(b as u8)
    } else {
        None
    }
}

fn byte_maps() -> &'static ([char; 256], [i16; 324]) {
    static MAPS: OnceLock<([char; 256], [i16; 324])> = OnceLock::new();
    MAPS.get_or_init(|| {
        let mut to_char = ['\0'; 256];
        let mut to_byte = [-1i16; 324];
        let printable = |b: u32| {
            (0x21..=0x7E).contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b)
        };
        let mut n = 0u32;
        for b in 0..256u32 {
            let cp = if printable(b) {
                b
            } else {
                n += 1;
                255 + n
            };
            // cp < 324 by construction (68 non-printable bytes map to 256..=323).
            to_char[b as usize] = char::from_u32(cp).unwrap_or('\u{FFFD}');
            to_byte[cp as usize] = b as i16;
        }
        (to_char, to_byte)
    })
}

/// Decodes a GPT-2 byte-level string into the bytes it stands for; `None` when a character
/// is not one of the 256 byte characters.
pub(crate) fn decode_byte_level(s: &str) -> Option<Vec<u8>> {
    s.chars().map(char_to_byte).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_map_is_a_bijection() {
        for b in 0..=255u8 {
            assert_eq!(char_to_byte(byte_to_char(b)), Some(b));
        }
        assert_eq!(byte_to_char(b' '), 'Ġ');
        assert_eq!(byte_to_char(b'\n'), 'Ċ');
    }

    #[test]
    fn classes() {
        assert_eq!(flags('a'), LETTER);
        assert_eq!(flags('中'), LETTER);
        assert_eq!(flags('٣'), NUMBER);
        assert_eq!(flags('\u{3000}'), WHITESPACE);
        assert_eq!(flags('\u{0301}'), 0);
        assert_eq!(flags('!'), 0);
    }
}
