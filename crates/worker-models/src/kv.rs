//! The KV cache every adapter shares: the pool's shape from the hyper-parameters and the
//! load options, and the index vectors that tell the backend where each row of a batch
//! reads and writes.

use worker_compute::{ComputeBackend, KvCacheConfig, KvCacheId, KvIndex, KvLayout};
use worker_compute::{KvType, KV_BLOCK};
use worker_gguf::HyperParams;

use crate::{Batch, LoadOptions, ModelError};

impl LoadOptions {
    /// The KV pool a model with `hp` allocates under these options on a backend that stores
    /// entries of type `stored` and lays them out as `layout`: room for `max_positions`
    /// (capped at the context length) per sequence, and [`LoadOptions::kv_cache_bytes`]
    /// worth of blocks (at least one block; at most every sequence at full length). A
    /// [`KvLayout::Slots`] backend always gets every sequence at full length.
    pub fn kv_cache_config(
        &self,
        hp: &HyperParams,
        stored: KvType,
        layout: KvLayout,
    ) -> KvCacheConfig {
        let positions = self.max_positions.min(hp.context_length as usize).max(1);
        let seq_blocks = positions.div_ceil(KV_BLOCK);
        let mut cfg = KvCacheConfig {
            layers: hp.block_count as usize,
            blocks: self.seqs.saturating_mul(seq_blocks),
            seqs: self.seqs,
            seq_blocks,
            kv_heads: hp.head_count_kv as usize,
            head_dim: hp.head_dim as usize,
            value_head_dim: hp.value_head_dim as usize,
            ty: stored,
        };
        if let (Some(bytes), KvLayout::Paged) = (self.kv_cache_bytes, layout) {
            let fit = bytes / cfg.block_bytes().max(1);
            cfg.blocks = cfg.blocks.min(fit.try_into().unwrap_or(usize::MAX)).max(1);
        }
        cfg
    }
}

/// A model's KV pool on the backend and the index vectors of its batches.
pub(crate) struct KvBinding {
    pub cache: KvCacheId,
    pub config: KvCacheConfig,
    index: KvIndex,
    /// The table that gives table row `s` blocks `s * seq_blocks ..`, for batches that pass
    /// none.
    identity: Vec<u32>,
}

impl KvBinding {
    /// Allocates the pool and the index vectors for batches of up to `max_batch` rows.
    pub fn alloc(
        backend: &mut dyn ComputeBackend,
        hp: &HyperParams,
        opts: &LoadOptions,
    ) -> Result<KvBinding, ModelError> {
        if opts.max_batch == 0 || opts.max_logit_rows == 0 || opts.seqs == 0 {
            return Err(ModelError::Unsupported(format!(
                "load options {opts:?}: batch, logit rows and sequences must be positive"
            )));
        }
        let stored = backend.kv_storage(opts.kv_type);
        let config = opts.kv_cache_config(hp, stored, backend.kv_layout());
        let cache = backend.alloc_kv_cache(config)?;
        let table_len = config.seqs * config.seq_blocks;
        let [positions, seqs, block_table] = KvBinding::index_lens(opts, &config);
        let index = KvIndex {
            positions: backend.alloc_index(positions)?,
            seqs: backend.alloc_index(seqs)?,
            block_table: backend.alloc_index(block_table)?,
        };
        Ok(KvBinding {
            cache,
            config,
            index,
            identity: (0..table_len as u32).collect(),
        })
    }

    /// Entries of the positions, sequences and block-table index vectors for a pool shaped
    /// `config` under `opts`.
    pub fn index_lens(opts: &LoadOptions, config: &KvCacheConfig) -> [usize; 3] {
        [
            opts.max_batch,
            opts.max_batch,
            config.seqs.saturating_mul(config.seq_blocks),
        ]
    }

    /// Checks the batch's table against the pool and writes the batch's positions,
    /// sequences and block table to the backend.
    pub fn write(
        &self,
        be: &mut dyn ComputeBackend,
        batch: &Batch<'_>,
    ) -> Result<KvIndex, ModelError> {
        let table = if batch.block_table.is_empty() {
            &self.identity
        } else {
            batch.block_table
        };
        if table.len() != self.identity.len() {
            return Err(ModelError::BadBatch(format!(
                "a block table of {} entries, expected {} sequences x {} blocks",
                table.len(),
                self.config.seqs,
                self.config.seq_blocks
            )));
        }
        be.write_index(self.index.positions, batch.positions)?;
        be.write_index(self.index.seqs, batch.seqs)?;
        be.write_index(self.index.block_table, table)?;
        Ok(self.index)
    }
}
