//! What the server reports about its model: name, quantization, tokenizer, memory, and the
//! chat template the chat route renders with.

use std::collections::HashMap;

use worker_engine::{EngineInfo, KvStats};
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
    /// Bytes the model takes once loaded: what the backend allocated on its device where it
    /// counts that (VRAM: weights, the whole KV pool, buffers), else the weights (a host KV
    /// pool costs memory only as its blocks are written: see [`Self::memory_in_use`]).
    pub memory_bytes: u64,
    /// Whether the KV pool is counted in `memory_bytes` already (device accounting).
    kv_counted: bool,
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
        HyperParams::from_file(file).map_err(|e| HttpError::Model(e.to_string()))?;
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
        let memory_bytes = info.device_bytes.unwrap_or(weights);
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
            kv_counted: info.device_bytes.is_some(),
            chat_template,
            bos_text: token_text("tokenizer.ggml.bos_token_id"),
            eos_text: token_text("tokenizer.ggml.eos_token_id"),
        })
    }
}

impl ModelCard {
    /// Bytes the model takes now: [`Self::memory_bytes`] plus, where the device does not
    /// count it, the KV blocks written so far (held by requests or kept for the prefix
    /// cache). What `/health` and the ready callback report.
    pub fn memory_in_use(&self, kv: &KvStats) -> u64 {
        if self.kv_counted {
            return self.memory_bytes;
        }
        let blocks = (kv.blocks_used + kv.blocks_cached) as u64;
        self.memory_bytes
            .saturating_add(blocks.saturating_mul(kv.block_bytes))
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
            kv_type: worker_engine::KvType::F16,
            kv_pool_bytes: 1 << 30,
            prefix_cache: true,
            device_bytes: None,
        };
        let kv = KvStats {
            blocks_used: 3,
            blocks_cached: 2,
            block_bytes: 1000,
            ..KvStats::default()
        };
        let host = ModelCard::from_gguf("m", &file, &info).unwrap();
        assert_eq!(host.memory_bytes, weights, "host: the weights once loaded");
        assert_eq!(
            host.memory_in_use(&kv),
            weights + 5000,
            "host: plus the KV blocks written"
        );
        info.device_bytes = Some(123_456_789);
        let device = ModelCard::from_gguf("m", &file, &info).unwrap();
        assert_eq!(device.memory_bytes, 123_456_789);
        assert_eq!(device.memory_in_use(&kv), 123_456_789);
    }
}
