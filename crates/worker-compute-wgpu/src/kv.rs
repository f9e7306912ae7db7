//! The paged KV cache and the attention op that reads it through the block table.
//!
//! One buffer of keys and one of values per layer, each `[block][kv head][16 positions]
//! [head width]`, entries f32 or f16 (two to a word, through WGSL's core pack/unpack, so any
//! adapter can store f16; Q8_0 is stored as f16, as on CUDA). Any block may hold any
//! positions of any sequence ([`worker_compute::KvLayout::Paged`]): the engine shares blocks
//! by prefix. Attention first stores the call's keys and values (one dispatch), then attends
//! (a second), so rows of one sequence read what the earlier rows of the call stored.

use worker_compute::{
    AttentionParams, ComputeError, KvCacheConfig, KvCacheId, KvIndex, KvType, Result, TensorId,
    KV_BLOCK,
};

use crate::backend::{u32_of, WgpuBackend};
use crate::shaders::{Kernel, KvEntry};
use crate::stream::{groups_for, BufId};

/// Widest key or value head the attention kernel holds (4 dimensions per invocation).
pub const MAX_HEAD_DIM: usize = 256;

pub(crate) struct KvCache {
    cfg: KvCacheConfig,
    entry: KvEntry,
    /// Keys and values of each layer.
    layers: Vec<(BufId, BufId)>,
}

/// The entry type stored for `requested`: f32 as asked, f16 otherwise.
pub(crate) fn storage(requested: KvType) -> KvType {
    match requested {
        KvType::F32 => KvType::F32,
        KvType::F16 | KvType::Q8_0 => KvType::F16,
    }
}

impl WgpuBackend {
    pub(crate) fn alloc_kv(&mut self, cfg: KvCacheConfig) -> Result<KvCacheId> {
        cfg.validate()?;
        let entry = match cfg.ty {
            KvType::F32 => KvEntry::F32,
            KvType::F16 => KvEntry::F16,
            KvType::Q8_0 => {
                return Err(ComputeError::Unsupported {
                    op: "kv cache",
                    reason: "q8_0 entries (ask kv_storage: this backend stores f16)".into(),
                })
            }
        };
        if entry == KvEntry::F16
            && !(cfg.head_dim.is_multiple_of(2) && cfg.value_head_dim.is_multiple_of(2))
        {
            return Err(ComputeError::Unsupported {
                op: "kv cache",
                reason: format!(
                    "f16 entries with odd head widths {} and {}",
                    cfg.head_dim, cfg.value_head_dim
                ),
            });
        }
        let bytes = |width: usize| {
            [cfg.blocks, cfg.kv_heads, KV_BLOCK, width]
                .iter()
                .try_fold(1u64, |a, &b| a.checked_mul(b as u64))
                .map(|n| cfg.ty.bytes_for(n))
                .ok_or(ComputeError::Alloc {
                    what: "kv cache",
                    bytes: u128::MAX,
                })
        };
        let (kb, vb) = (bytes(cfg.head_dim)?, bytes(cfg.value_head_dim)?);
        let mut layers = Vec::with_capacity(cfg.layers);
        for _ in 0..cfg.layers {
            let k = self.stream.alloc("kv cache keys", kb)?;
            let v = self.stream.alloc("kv cache values", vb)?;
            layers.push((k, v));
        }
        self.caches.push(KvCache { cfg, entry, layers });
        Ok(KvCacheId::from_raw(self.caches.len() as u32 - 1))
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn attend(
        &mut self,
        out: TensorId,
        q: TensorId,
        k: TensorId,
        v: TensorId,
        cache: KvCacheId,
        index: &KvIndex,
        p: &AttentionParams,
        rows: usize,
    ) -> Result<()> {
        const OP: &str = "attention";
        let kv = cache.lookup(&self.caches, OP)?;
        let (cfg, entry) = (kv.cfg, kv.entry);
        p.validate(&cfg)?;
        if p.sinks.is_some() {
            return Err(ComputeError::Unsupported {
                op: OP,
                reason: "attention sinks have no wgpu kernel yet".into(),
            });
        }
        let (hd, vhd) = (p.head_dim, p.value_head_dim);
        if hd > MAX_HEAD_DIM
            || vhd > MAX_HEAD_DIM
            || !hd.is_multiple_of(2)
            || !vhd.is_multiple_of(2)
        {
            return Err(ComputeError::Unsupported {
                op: OP,
                reason: format!(
                    "head widths {hd} and {vhd} (the kernels take even widths up to {MAX_HEAD_DIM})"
                ),
            });
        }
        if [q, k, v].contains(&out) {
            return Err(ComputeError::Aliased { op: OP });
        }
        let (pos_off, positions) = self.index(OP, index.positions, rows)?;
        let (seq_off, seqs) = self.index(OP, index.seqs, rows)?;
        let (table_off, table) = self.index(OP, index.block_table, cfg.seqs * cfg.seq_blocks)?;
        check_index(&cfg, positions, seqs, table)?;
        let (kc, vc) = kv.layers[p.layer];
        let qb = self.tensor_shaped(OP, q, rows, p.heads * hd, "q")?;
        let kb = self.tensor_shaped(OP, k, rows, p.kv_heads * hd, "k")?;
        let vb = self.tensor_shaped(OP, v, rows, p.kv_heads * vhd, "v")?;
        let ob = self.tensor_shaped(OP, out, rows, p.heads * vhd, "out")?;
        if rows == 0 {
            return Ok(());
        }
        let u = |v: usize| u32_of(OP, v);
        let ib = self.stream.index_buf();
        let pairs = hd.max(vhd) / 2;
        let store = [
            u(rows)?,
            u(p.kv_heads)?,
            u(hd)?,
            u(vhd)?,
            u(pairs)?,
            u(pos_off)?,
            u(seq_off)?,
            u(table_off)?,
            u(cfg.seq_blocks)?,
        ];
        let n = rows * p.kv_heads * pairs;
        self.stream.dispatch(
            Kernel::KvStore(entry),
            &store,
            &[kc, vc, kb, vb, ib],
            groups_for(n),
        )?;
        let attend = [
            u(rows)?,
            u(p.heads)?,
            u(p.kv_heads)?,
            u(hd)?,
            u(vhd)?,
            u(p.heads / p.kv_heads)?,
            p.scale.to_bits(),
            u(p.window.unwrap_or(0))?,
            u(pos_off)?,
            u(seq_off)?,
            u(table_off)?,
            u(cfg.seq_blocks)?,
        ];
        self.stream.dispatch(
            Kernel::Attention(entry),
            &attend,
            &[ob, qb, kc, vc, ib],
            (rows * p.heads) as u64,
        )
    }
}

/// Every row's sequence, position and the blocks it reads must lie inside the pool.
fn check_index(cfg: &KvCacheConfig, positions: &[u32], seqs: &[u32], table: &[u32]) -> Result<()> {
    let bad = |reason: String| {
        Err(ComputeError::BadIndex {
            op: "attention",
            reason,
        })
    };
    for (&pos, &seq) in positions.iter().zip(seqs) {
        if seq as usize >= cfg.seqs || pos as usize >= cfg.max_positions() {
            return bad(format!(
                "position {pos} of sequence {seq}; the table has {} sequences of {} positions",
                cfg.seqs,
                cfg.max_positions()
            ));
        }
        let row = &table[seq as usize * cfg.seq_blocks..][..=pos as usize / KV_BLOCK];
        if let Some(&block) = row.iter().find(|&&b| b as usize >= cfg.blocks) {
            return bad(format!("block {block}; the pool has {}", cfg.blocks));
        }
    }
    Ok(())
}
