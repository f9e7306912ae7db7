//! The CPU KV cache: one pool of blocks of [`KV_BLOCK`] positions in the entry type asked
//! for (f32, f16 or Q8_0 bytes, as in a GGUF file), and the attention op that reads it
//! through a block table.
//!
//! Per (layer, block, KV head) a block holds its keys and its values. Values are rows, one
//! per position. Keys of f32 and f16 blocks are stored transposed (`[head_dim][KV_BLOCK]`),
//! the layout the attention kernels score sixteen positions at a time from, so reading a
//! block is one conversion; Q8_0 keys are rows (its blocks run along the head) and are
//! transposed when read.
//!
//! Attention reads an f16 cache's blocks where they lie when the kernel table has a kernel
//! for that (`attend_f16`: AVX2 and NEON); otherwise it gathers the blocks a group of rows
//! reads into per-thread f32 scratch, then runs the table's kernel over it. With a sliding
//! window only the blocks that hold some row's window are gathered (or read), and the kernel
//! skips the positions before each row's window. A row's result depends only on its query,
//! the cached entries and its position, never on which other rows or sequences share the
//! call.

use std::cell::RefCell;
use std::sync::atomic::AtomicUsize;

use half::f16;
use half::slice::HalfFloatSliceExt;
use worker_gguf::quants::legacy::BlockQ8_0;
use worker_gguf::quants::{BlockFormat, QuantizeBlock};
use worker_gguf::GgmlType;

use super::quant::generic::{self, F16Block};
use super::{alloc_zeroed, for_chunks, CpuBackend, SharedOut};
use crate::backend::{
    AttentionParams, KvCacheConfig, KvCacheId, KvIndex, KvType, Result, TensorId, KV_BLOCK,
};
use crate::error::ComputeError;
use crate::shape::{check_cols, check_rows};

const _: () = assert!(KV_BLOCK == generic::KEY_BLOCK);

/// Cached positions from which a call's GQA groups are cut into two work items per thread,
/// not one (when the entries are read in place). Decode at 2,048 positions on 2 threads,
/// alternating: SmolLM2 (3 KV heads) attention 5.3-6.1 -> 4.1-5.7 ms a token (medians 5.4,
/// 4.6 over six pairs), Qwen (2) 4.1-4.2 -> 3.8; at up to 128 positions the extra items cost
/// more than they balance (SmolLM2 0.22-0.24 -> 0.36-0.40 ms).
const LONG_CONTEXT: usize = 512;

/// Rows of one sequence that share a gather of its blocks.
const ROW_CHUNK: usize = 16;

/// One KV cache (one `alloc_kv_cache`): the keys and the values of every (layer, block, KV
/// head) region, regions in that order, each laid out as the module doc says.
pub(super) struct KvPool {
    pub(super) cfg: KvCacheConfig,
    /// Bytes of one region's keys.
    key_bytes: usize,
    /// Bytes of one region's values.
    value_bytes: usize,
    keys: Vec<u8>,
    values: Vec<u8>,
}

/// The GGUF type whose bytes a KV entry type stores.
fn ggml_type(ty: KvType) -> GgmlType {
    match ty {
        KvType::F32 => GgmlType::F32,
        KvType::F16 => GgmlType::F16,
        KvType::Q8_0 => GgmlType::Q8_0,
    }
}

impl KvPool {
    /// A zeroed pool (untouched pages: memory follows the blocks written).
    pub(super) fn new(cfg: KvCacheConfig) -> Result<KvPool> {
        cfg.validate()?;
        let region = |width: usize| cfg.ty.bytes_for((width * KV_BLOCK) as u64) as usize;
        let (key_bytes, value_bytes) = (region(cfg.head_dim), region(cfg.value_head_dim));
        let total = |per: usize| {
            [cfg.layers, cfg.blocks, cfg.kv_heads, per]
                .iter()
                .try_fold(1usize, |a, &b| a.checked_mul(b))
                .ok_or(ComputeError::Alloc {
                    what: "kv cache",
                    bytes: u128::MAX,
                })
        };
        let keys = alloc_zeroed("kv cache keys", total(key_bytes)?)?;
        let values = alloc_zeroed("kv cache values", total(value_bytes)?)?;
        Ok(KvPool {
            cfg,
            key_bytes,
            value_bytes,
            keys,
            values,
        })
    }

    /// Index of the (layer, block, head) region.
    fn region(&self, layer: usize, block: usize, head: usize) -> usize {
        (layer * self.cfg.blocks + block) * self.cfg.kv_heads + head
    }

    /// Stores one position's key and value of one head.
    fn store(&mut self, region: usize, offset: usize, key: &[f32], value: &[f32]) {
        let ty = self.cfg.ty;
        let k = &mut self.keys[region * self.key_bytes..][..self.key_bytes];
        match ty {
            KvType::F32 => {
                for (d, x) in key.iter().enumerate() {
                    let at = 4 * (d * KV_BLOCK + offset);
                    k[at..at + 4].copy_from_slice(&x.to_le_bytes());
                }
            }
            KvType::F16 => f16_chunks(key, |d0, chunk| {
                for (d, x) in (d0..).zip(chunk) {
                    let at = 2 * (d * KV_BLOCK + offset);
                    k[at..at + 2].copy_from_slice(&x.to_le_bytes());
                }
            }),
            KvType::Q8_0 => {
                let row = ty.bytes_for(key.len() as u64) as usize;
                write_row(ty, &mut k[offset * row..][..row], key);
            }
        }
        let row = ty.bytes_for(value.len() as u64) as usize;
        let v = &mut self.values[region * self.value_bytes..][..self.value_bytes];
        write_row(ty, &mut v[offset * row..][..row], value);
    }
}

/// Writes `x` as one row of entries of type `ty`.
fn write_row(ty: KvType, out: &mut [u8], x: &[f32]) {
    match ty {
        KvType::F32 => {
            for (o, v) in out.chunks_exact_mut(4).zip(x) {
                o.copy_from_slice(&v.to_le_bytes());
            }
        }
        KvType::F16 => f16_chunks(x, |i0, chunk| {
            for (o, v) in out[2 * i0..].chunks_exact_mut(2).zip(chunk) {
                o.copy_from_slice(&v.to_le_bytes());
            }
        }),
        KvType::Q8_0 => {
            for (o, v) in out
                .chunks_exact_mut(BlockQ8_0::TYPE_SIZE)
                .zip(x.chunks_exact(BlockQ8_0::BLOCK_SIZE))
            {
                BlockQ8_0::from_float(v).write(o);
            }
        }
    }
}

/// Entries [`f16_chunks`] converts at a time.
const F16_CHUNK: usize = 64;

/// `x` converted to f16 (rounded to nearest, as `f16::from_f32`), handed to `f` a chunk at a
/// time with the index of its first entry. A slice conversion uses F16C where the CPU has it;
/// one `from_f32` call per entry was most of a decode step's attention op at short contexts.
fn f16_chunks(x: &[f32], mut f: impl FnMut(usize, &[f16])) {
    let mut buf = [f16::ZERO; F16_CHUNK];
    for (i, c) in x.chunks(F16_CHUNK).enumerate() {
        let converted = &mut buf[..c.len()];
        converted.convert_from_f32_slice(c);
        f(i * F16_CHUNK, converted);
    }
}

/// Gathered keys and values, a row of keys being transposed, and attention scores.
#[derive(Default)]
struct Scratch {
    keys: Vec<f32>,
    values: Vec<f32>,
    row: Vec<f32>,
    scores: Vec<f32>,
}

thread_local! {
    /// Kept per thread (the pool's threads live as long as the process) so that no op
    /// allocates it afresh.
    static SCRATCH: RefCell<Scratch> = RefCell::default();
}

/// The index vectors of an attention call, checked against the pool.
struct Rows<'a> {
    positions: &'a [u32],
    seqs: &'a [u32],
    table: &'a [u32],
}

impl Rows<'_> {
    /// Block holding position `pos` of the sequence of row `r`.
    fn block(&self, cfg: &KvCacheConfig, r: usize, pos: usize) -> usize {
        self.table[self.seqs[r] as usize * cfg.seq_blocks + pos / KV_BLOCK] as usize
    }
}

impl CpuBackend {
    pub(super) fn alloc_kv_pool(&mut self, cfg: KvCacheConfig) -> Result<KvCacheId> {
        self.caches.push(RefCell::new(KvPool::new(cfg)?));
        Ok(KvCacheId(self.caches.len() as u32 - 1))
    }

    /// [`crate::ComputeBackend::attention`] on the CPU.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn attention_paged(
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
        let cid = cache.0 as usize;
        let cfg = self
            .caches
            .get(cid)
            .ok_or(ComputeError::UnknownHandle {
                op: OP,
                kind: "kv cache",
                id: cache.0,
            })?
            .borrow()
            .cfg;
        p.validate(&cfg)?;
        let idx = Rows {
            positions: self.index(OP, index.positions, rows)?,
            seqs: self.index(OP, index.seqs, rows)?,
            table: self.index(OP, index.block_table, cfg.seqs * cfg.seq_blocks)?,
        };
        check_index(&cfg, &idx)?;
        let (hd, vhd) = (p.head_dim, p.value_head_dim);
        let qt = self.tensor(OP, q)?;
        let kt = self.tensor(OP, k)?;
        let vt = self.tensor(OP, v)?;
        let mut o = self.tensor_mut(OP, out)?;
        for (t, what, cols) in [
            (&*qt, "q", p.heads * hd),
            (&*kt, "k", p.kv_heads * hd),
            (&*vt, "v", p.kv_heads * vhd),
            (&*o, "out", p.heads * vhd),
        ] {
            check_rows(OP, t.rows, rows, what)?;
            check_cols(OP, t.cols, cols, what)?;
        }
        // Store this call's keys and values.
        let mut kv = self.caches[cid].borrow_mut();
        for r in 0..rows {
            let pos = idx.positions[r] as usize;
            let block = idx.block(&cfg, r, pos);
            for h in 0..p.kv_heads {
                let region = kv.region(p.layer, block, h);
                let key = &kt.data[r * kt.cols + h * hd..][..hd];
                let value = &vt.data[r * vt.cols + h * vhd..][..vhd];
                kv.store(region, pos % KV_BLOCK, key, value);
            }
        }
        drop(kv);
        let kv = self.caches[cid].borrow();
        let kv = &*kv;

        // Work items: chunks of consecutive rows of one sequence, times KV heads, times parts
        // of its GQA group. Where the kernels read an f16 cache in place, a group is cut into
        // parts when there are fewer items than wanted (a lone sequence with few KV heads):
        // each part reads the entries again, but converts nothing. Otherwise a group is one
        // item, whose blocks are converted to f32 once for all its query heads. A head's
        // result is the same bits in any part.
        let chunks = row_chunks(idx.seqs);
        let group = p.heads / p.kv_heads;
        let attend = self.kernels.attend;
        let in_place = match cfg.ty {
            KvType::F16 => self.kernels.attend_f16,
            _ => None,
        };
        let groups = chunks.len() * p.kv_heads;
        // Items wanted: one per thread; two per thread from LONG_CONTEXT positions, where the
        // balance is worth a part's extra pass over the entries.
        let longest = idx.positions.iter().max().map_or(0, |&p| p as usize + 1);
        let threads = self.pool.n_threads();
        let wanted = if longest >= LONG_CONTEXT {
            2 * threads
        } else {
            threads
        };
        let per_part = match in_place {
            Some(_) => group.div_ceil(wanted.div_ceil(groups).min(group)),
            None => group,
        };
        let parts = group.div_ceil(per_part);
        let read_keys = self
            .kernels
            .for_type(ggml_type(cfg.ty))
            .map(|t| t.dequantize_row);
        let Some(read) = read_keys else {
            return Err(ComputeError::Unsupported {
                op: OP,
                reason: format!("kv cache entries of type {}", cfg.ty.as_str()),
            });
        };
        let sinks = match p.sinks {
            Some(w) => self.vector(OP, w, p.heads)?,
            None => &[],
        };
        let optr = SharedOut(o.data.as_mut_ptr());
        let (ocols, qcols, qs) = (o.cols, qt.cols, &qt.data[..]);
        let next = AtomicUsize::new(0);
        let job = || {
            SCRATCH.with_borrow_mut(|scratch| {
                let Scratch {
                    keys,
                    values,
                    row,
                    scores,
                } = scratch;
                let mut blocks = Vec::new();
                for_chunks(groups * parts, 1, &next, |item, _| {
                    let c = item / (p.kv_heads * parts);
                    let (kv_head, part) = ((item / parts) % p.kv_heads, item % parts);
                    // Query heads h..h + n_heads.
                    let h = kv_head * group + part * per_part;
                    let n_heads = per_part.min(group - part * per_part);
                    let (r0, r1) = chunks[c];
                    let n_max = (r0..r1).map(|r| idx.positions[r] as usize + 1).max();
                    let n_max = n_max.unwrap_or(0);
                    // The first position each row reads, and the first block any does.
                    let first = |r: usize| {
                        let n = idx.positions[r] as usize + 1;
                        p.window.map_or(0, |w| n.saturating_sub(w))
                    };
                    let b0 = (r0..r1).map(first).min().unwrap_or(0) / KV_BLOCK;
                    let skip = b0 * KV_BLOCK;
                    let ctx = Gather {
                        kv,
                        idx: &idx,
                        read,
                        layer: p.layer,
                        head: kv_head,
                    };
                    if in_place.is_some() {
                        ctx.f16_blocks(r0, b0, n_max, &mut blocks);
                    } else {
                        ctx.run(r0, b0, n_max, hd, vhd, keys, values, row);
                    }
                    for r in r0..r1 {
                        let (f, n) = (first(r) - skip, idx.positions[r] as usize + 1 - skip);
                        let qrow = &qs[r * qcols + h * hd..][..n_heads * hd];
                        // SAFETY: item (chunk, KV head, part) owns rows r0..r1 of the output,
                        // columns h*vhd..(h+n_heads)*vhd.
                        let orow = unsafe { optr.slice(r * ocols + h * vhd, n_heads * vhd) };
                        let sinks = sinks.get(h..h + n_heads).unwrap_or_default();
                        match in_place {
                            Some(attend_f16) => attend_f16(
                                qrow, &blocks, f, n, p.scale, sinks, orow, scores, n_heads,
                            ),
                            None => attend(
                                qrow, keys, values, f, n, p.scale, sinks, orow, scores, n_heads,
                            ),
                        }
                    }
                });
            })
        };
        self.run(OP, &job)?;
        drop(o);
        Ok(())
    }
}

/// Every row's sequence, position and the blocks it reads must lie inside the pool.
fn check_index(cfg: &KvCacheConfig, idx: &Rows<'_>) -> Result<()> {
    let bad = |reason: String| {
        Err(ComputeError::BadIndex {
            op: "attention",
            reason,
        })
    };
    for (r, (&pos, &seq)) in idx.positions.iter().zip(idx.seqs).enumerate() {
        if seq as usize >= cfg.seqs || pos as usize >= cfg.max_positions() {
            return bad(format!(
                "position {pos} of sequence {seq}; the table has {} sequences of {} positions",
                cfg.seqs,
                cfg.max_positions()
            ));
        }
        for b in 0..=pos as usize / KV_BLOCK {
            let block = idx.block(cfg, r, b * KV_BLOCK);
            if block >= cfg.blocks {
                return bad(format!("block {block}; the pool has {}", cfg.blocks));
            }
        }
    }
    Ok(())
}

/// Runs of consecutive rows of one sequence, cut into pieces of at most [`ROW_CHUNK`].
fn row_chunks(seqs: &[u32]) -> Vec<(usize, usize)> {
    let mut chunks = Vec::new();
    let mut r0 = 0;
    for r in 1..=seqs.len() {
        if r == seqs.len() || seqs[r] != seqs[r0] || r - r0 == ROW_CHUNK {
            chunks.push((r0, r));
            r0 = r;
        }
    }
    chunks
}

/// What one work item reads: the pool, the rows' index, how to convert entries to f32, and
/// which layer and KV head.
struct Gather<'a> {
    kv: &'a KvPool,
    idx: &'a Rows<'a>,
    read: fn(&[u8], &mut [f32]),
    layer: usize,
    head: usize,
}

impl<'a> Gather<'a> {
    /// The stored keys and values of block `b` of the sequence of row `r`.
    fn entries(&self, r: usize, b: usize) -> (&'a [u8], &'a [u8]) {
        let kv = self.kv;
        let block = self.idx.block(&kv.cfg, r, b * KV_BLOCK);
        let region = kv.region(self.layer, block, self.head);
        (
            &kv.keys[region * kv.key_bytes..][..kv.key_bytes],
            &kv.values[region * kv.value_bytes..][..kv.value_bytes],
        )
    }

    /// The f16 blocks from `b0` holding positions up to `n` of the sequence of row `r`, where
    /// they lie, into `out`.
    fn f16_blocks(&self, r: usize, b0: usize, n: usize, out: &mut Vec<F16Block<'a>>) {
        out.clear();
        out.extend((b0..n.div_ceil(KV_BLOCK).max(b0)).map(|b| {
            let (keys, values) = self.entries(r, b);
            F16Block { keys, values }
        }));
    }

    /// Converts the blocks from `b0` holding positions up to `n` of the sequence of row `r`
    /// to f32: keys into `keys` in the kernels' transposed blocks, values into `values` one
    /// row per position (block `b0` first).
    #[allow(clippy::too_many_arguments)]
    fn run(
        &self,
        r: usize,
        b0: usize,
        n: usize,
        hd: usize,
        vhd: usize,
        keys: &mut Vec<f32>,
        values: &mut Vec<f32>,
        row: &mut Vec<f32>,
    ) {
        let kv = self.kv;
        let blocks = n.div_ceil(KV_BLOCK).saturating_sub(b0);
        keys.resize(blocks * KV_BLOCK * hd, 0.0);
        values.resize(blocks * KV_BLOCK * vhd, 0.0);
        for b in 0..blocks {
            let (kb, vb) = self.entries(r, b0 + b);
            let kout = &mut keys[b * KV_BLOCK * hd..][..KV_BLOCK * hd];
            if kv.cfg.ty == KvType::Q8_0 {
                row.resize(KV_BLOCK * hd, 0.0);
                (self.read)(kb, row);
                for (t, key) in row.chunks_exact(hd).enumerate() {
                    for (d, x) in key.iter().enumerate() {
                        kout[d * KV_BLOCK + t] = *x;
                    }
                }
            } else {
                (self.read)(kb, kout);
            }
            (self.read)(vb, &mut values[b * KV_BLOCK * vhd..][..KV_BLOCK * vhd]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The slice conversion stores what one `f16::from_f32` per entry stored: ties to even,
    /// subnormals, overflow to infinity, at every length around a chunk.
    #[test]
    fn f16_chunks_round_as_from_f32() {
        let specials = [
            0.0,
            -0.0,
            65504.0,
            65520.0,
            1e6,
            -1e6,
            6e-8,
            3e-8,
            1.0 + 1.0 / 2048.0,
        ];
        for n in [0, 1, 63, 64, 65, 130] {
            let x: Vec<f32> = (0..n)
                .map(|i| match specials.get(i) {
                    Some(&v) => v,
                    None => (i as f32 * 0.7311).sin() * 10f32.powi(i as i32 % 9 - 4),
                })
                .collect();
            let mut got = vec![f16::ZERO; n];
            f16_chunks(&x, |i0, chunk| {
                got[i0..i0 + chunk.len()].copy_from_slice(chunk)
            });
            for (g, v) in got.iter().zip(&x) {
                assert_eq!(g.to_bits(), f16::from_f32(*v).to_bits(), "{v} (n = {n})");
            }
        }
    }

    #[test]
    fn rows_are_chunked_by_sequence_and_size() {
        let seqs = [0, 0, 0, 2, 2, 1];
        assert_eq!(row_chunks(&seqs), vec![(0, 3), (3, 5), (5, 6)]);
        let long = [7u32; 40];
        assert_eq!(row_chunks(&long), vec![(0, 16), (16, 32), (32, 40)]);
        assert!(row_chunks(&[]).is_empty());
    }
}
