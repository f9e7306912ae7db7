//! Tokenization for the worker: GGUF byte-level BPE and SentencePiece vocabularies, HF
//! `tokenizer.json`, a streaming UTF-8 decoder, and chat templates.
//!
//! Empty until the tokenizer issue lands. It must not depend on any compute backend.
