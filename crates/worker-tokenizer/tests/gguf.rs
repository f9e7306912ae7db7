//! Behaviour of the GGUF tokenizers that llama.cpp defines and users notice: special-token
//! parsing, end-of-generation tokens, BOS, and the streaming decoder.

mod common;

use common::{gguf_vocab, qwen25};
use worker_tokenizer::{EncodeOptions, StreamDecoder, Tokenizer};

#[test]
fn control_tokens_are_parsed_only_when_asked() {
    let tok = qwen25();
    let im_start = tok.token_id("<|im_start|>").unwrap();
    let plain = tok
        .encode("<|im_start|>user", EncodeOptions::PLAIN)
        .unwrap();
    assert!(!plain.contains(&im_start), "{plain:?}");
    let parsed = tok
        .encode("<|im_start|>user", EncodeOptions::PROMPT)
        .unwrap();
    assert_eq!(parsed[0], im_start);
    // Qwen2.5 asks for no BOS.
    assert!(!tok.adds_bos());
}

/// llama.cpp parses user-defined tokens (Qwen2.5's `<tool_call>`) even when special parsing
/// is off; we match it.
#[test]
fn user_defined_tokens_are_always_parsed() {
    let tok = qwen25();
    let id = tok.token_id("<tool_call>").unwrap();
    assert_eq!(
        tok.encode("<tool_call>", EncodeOptions::PLAIN).unwrap(),
        vec![id]
    );
    assert_eq!(tok.decode(&[id], false).unwrap(), "<tool_call>");
}

/// llama.cpp treats Qwen2.5's ordinary token `</s>` as end-of-generation (and as a control
/// token, so it prints as nothing); we match it.
#[test]
fn eog_tokens_follow_llama_cpp() {
    let tok = qwen25();
    let s = tok.token_id("</s>").unwrap();
    assert!(tok.is_eog(s));
    assert_eq!(tok.decode(&[s], false).unwrap(), "");
    for t in [
        "<|endoftext|>",
        "<|im_end|>",
        "<|fim_pad|>",
        "<|repo_name|>",
        "<|file_sep|>",
    ] {
        assert!(tok.is_eog(tok.token_id(t).unwrap()), "{t}");
    }
    assert!(!tok.is_eog(tok.token_id("<|im_start|>").unwrap()));
    assert_eq!(tok.eos(), tok.token_id("<|im_end|>"));
}

#[test]
fn bos_follows_metadata() {
    let llama3 = gguf_vocab("llama-bpe");
    assert!(llama3.adds_bos());
    let ids = llama3.encode("Hello", EncodeOptions::PROMPT).unwrap();
    assert_eq!(ids[0], 128000);
    assert_eq!(
        llama3.encode("Hello", EncodeOptions::PLAIN).unwrap(),
        vec![9906]
    );
    let spm = gguf_vocab("llama-spm");
    assert_eq!(spm.encode("", EncodeOptions::PROMPT).unwrap(), vec![1]);
    assert!(spm.encode("", EncodeOptions::PLAIN).unwrap().is_empty());
}

fn stream(tok: &dyn Tokenizer, ids: &[u32]) -> Vec<String> {
    let mut d = StreamDecoder::from_start(tok);
    let mut out: Vec<String> = ids.iter().map(|&id| d.push(id).unwrap()).collect();
    out.push(d.flush());
    out
}

#[test]
fn stream_decoder_emits_whole_characters_only() {
    for name in ["llama-spm", "gpt-2", "qwen2"] {
        let tok = gguf_vocab(name);
        let text = "Hi 🦙 中文 Ä e\u{301} 😶\u{200d}🌫\u{fe0f}!";
        let ids = tok.encode(text, EncodeOptions::PLAIN).unwrap();
        let parts = stream(tok.as_ref(), &ids);
        // Every piece is valid on its own (it is a String), nothing is lost.
        assert_eq!(parts.concat(), text, "{name}");
        assert!(
            parts.iter().all(|p| !p.contains('\u{FFFD}')),
            "{name}: {parts:?}"
        );
    }
}

#[test]
fn stream_decoder_byte_tokens_and_leftovers() {
    let spm = gguf_vocab("llama-spm");
    let byte = |b: u8| spm.token_id(&format!("<0x{b:02X}>")).unwrap();
    // 🦙 is F0 9F A6 99: nothing comes out until the last byte.
    let mut d = StreamDecoder::new(spm.as_ref());
    assert_eq!(d.push(byte(0xF0)).unwrap(), "");
    assert_eq!(d.push(byte(0x9F)).unwrap(), "");
    assert_eq!(d.push(byte(0xA6)).unwrap(), "");
    assert_eq!(d.push(byte(0x99)).unwrap(), "🦙");
    // An invalid byte comes out as U+FFFD at once; an unfinished character at the flush.
    assert_eq!(d.push(byte(0xFF)).unwrap(), "\u{FFFD}");
    assert_eq!(d.push(byte(0xE4)).unwrap(), "");
    assert_eq!(d.flush(), "\u{FFFD}");
    // SentencePiece's space marker: kept when continuing a text, dropped at the start.
    let hello = spm.encode("Hello", EncodeOptions::PLAIN).unwrap();
    let mut d = StreamDecoder::new(spm.as_ref());
    assert_eq!(d.push(hello[0]).unwrap(), " Hello");
    let mut d = StreamDecoder::from_start(spm.as_ref());
    assert_eq!(d.push(hello[0]).unwrap(), "Hello");
}

#[test]
fn bad_ids_are_errors_not_panics() {
    let tok = gguf_vocab("gpt-2");
    assert!(tok.decode(&[u32::MAX], false).is_err());
    assert!(tok.token_text(60_000).is_err());
    let mut d = StreamDecoder::new(tok.as_ref());
    assert!(d.push(1_000_000).is_err());
}
