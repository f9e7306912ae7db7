//! What the server reports about its model: name, quantization, tokenizer, memory, and the
//! chat template the chat route renders with.

use std::collections::HashMap;

use worker_engine::EngineInfo;
use worker_gguf::{GgufFile, HyperParams};
use worker_tokenizer::ChatTemplate;

use crate::HttpError;

/// Facts about the served model, read once from its GGUF file.
#[derive(Debug)]
pub struct ModelCard {
    /// The model id clients see (`model` in responses, `/v1/models`).
    pub id: String,
    /// The storage type most weight bytes are in (`Q4_1`, `Q4_K`, `F16`, …).
    pub quant_kind: String,
    /// The GGUF tokenizer model (`gpt2`, `llama`).
    pub tokenizer_kind: String,
    /// Bytes the model takes: what the backend allocated on its device where it counts that
    /// (VRAM: weights, KV cache, buffers), else the weights plus an f32 KV cache.
    pub memory_bytes: u64,
    /// The chat template in the file, if any.
    pub chat_template: Option<ChatTemplate>,
    /// Text of the BOS token, for templates that print it.
    pub bos_text: String,
    /// Text of the EOS token, for templates that print it.
    pub eos_text: String,
}

impl ModelCard {
    /// Reads the card of `file`, served by an engine of shape `info` under the name `id`.
    pub fn from_gguf(
        id: impl Into<String>,
        file: &GgufFile,
        info: &EngineInfo,
    ) -> Result<ModelCard, HttpError> {
        let md = file.metadata();
        let hp = HyperParams::from_file(file).map_err(|e| HttpError::Model(e.to_string()))?;
        let mut by_type: HashMap<&'static str, u64> = HashMap::new();
        let mut weights = 0u64;
        for t in file.tensors() {
            weights += t.n_bytes;
            if t.shape.len() >= 2 {
                *by_type.entry(t.ty.name()).or_default() += t.n_bytes;
            }
        }
        let quant_kind = by_type
            .into_iter()
            .max_by_key(|&(name, bytes)| (bytes, name))
            .map_or_else(|| "unknown".to_string(), |(name, _)| name.to_string());
        // The CPU KV cache holds f32 keys and values for every layer, slot and position.
        let kv = hp
            .kv_cache_entries(info.slots, info.context)
            .saturating_mul(4);
        let memory_bytes = info
            .device_bytes
            .unwrap_or_else(|| weights.saturating_add(kv));
        let token_text = |key: &str| -> String {
            let Ok(id) = md.get_u32(key) else {
                return String::new();
            };
            md.get_str_array("tokenizer.ggml.tokens")
                .ok()
                .and_then(|tokens| tokens.get(id as usize).cloned())
                .unwrap_or_default()
        };
        let chat_template =
            ChatTemplate::from_gguf(md).map_err(|e| HttpError::Model(e.to_string()))?;
        Ok(ModelCard {
            id: id.into(),
            quant_kind,
            tokenizer_kind: md
                .get_str("tokenizer.ggml.model")
                .unwrap_or("unknown")
                .to_string(),
            memory_bytes,
            chat_template,
            bos_text: token_text("tokenizer.ggml.bos_token_id"),
            eos_text: token_text("tokenizer.ggml.eos_token_id"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_is_what_the_device_holds_where_the_backend_counts_it() {
        let file = GgufFile::open(worker_testdata::model(worker_testdata::SMOLLM2)).unwrap();
        let weights: u64 = file.tensors().iter().map(|t| t.n_bytes).sum();
        let mut info = EngineInfo {
            vocab_size: 49152,
            context: 256,
            slots: 2,
            device_bytes: None,
        };
        let hp = HyperParams::from_metadata(file.metadata()).unwrap();
        let host = ModelCard::from_gguf("m", &file, &info).unwrap();
        assert_eq!(
            host.memory_bytes,
            weights + hp.kv_cache_entries(2, 256) * 4,
            "host: weights plus an f32 KV cache"
        );
        info.device_bytes = Some(123_456_789);
        let device = ModelCard::from_gguf("m", &file, &info).unwrap();
        assert_eq!(device.memory_bytes, 123_456_789);
    }
}
