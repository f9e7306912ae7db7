//! Device memory behind the trait's handles: activation tensors, weights (in their GGUF
//! types, padded for the mat-vec's aligned reads), the index arena with its host mirror, and
//! the f16 KV caches; the copies between host and device; and the checks every op makes on
//! the handles and shapes it is given.
//!
//! Index vectors (token ids, positions, slots) live in one device arena with a host mirror:
//! `write_index` only writes the mirror, and the next flush uploads the changed range with
//! one copy before the step's kernels.

use worker_compute::shape::{check_cols, check_rows};
use worker_compute::{
    ComputeError, IndexId, KvCacheConfig, KvCacheId, KvType, Result, TensorId, WeightDesc, WeightId,
};

use crate::backend::{op_err, CudaBackend};
use crate::device::{Buffer, Device};
use crate::types::TypeKernels;

/// Elements of a row a mat-vec warp stages in shared memory at once (32 chunks of 32);
/// at most `MV_SEG_MAX` bytes in matvec.cu (4096: f32).
const MATVEC_SEGMENT: usize = 1024;
/// Zero bytes after every weight's data (the mat-vec's aligned reads may run 15 past it).
const WEIGHT_PAD: usize = 16;
/// Entries of the index arena (one device allocation, uploaded with one copy per step);
/// index vectors beyond it get their own allocation.
const INDEX_ARENA: usize = 1 << 20;

/// An f32 activation matrix.
pub(crate) struct Tensor {
    pub rows: usize,
    pub cols: usize,
    pub ptr: u64,
    pub buf: Buffer,
}

/// An index vector: its host mirror is `index_host[off..off + len]`; on the device it sits
/// at the same offset of the arena, or in `own` when the arena was full.
pub(crate) struct Index {
    pub off: usize,
    pub len: usize,
    pub ptr: u64,
    pub own: Option<Buffer>,
}

/// A weight in its storage type.
pub(crate) struct Weight {
    pub name: String,
    pub rows: usize,
    pub cols: usize,
    pub row_bytes: usize,
    /// Bytes of [`MATVEC_SEGMENT`] elements of a row (what a mat-vec warp stages at once).
    pub seg_bytes: usize,
    /// Stored as an f32 vector (norm weights, biases), dequantized at upload.
    pub vector: bool,
    /// The kernels of its storage type.
    pub kernels: TypeKernels,
    pub ptr: u64,
}

/// A KV cache: f16 keys and values, one region of `max_positions` per slot.
pub(crate) struct KvCache {
    pub cfg: KvCacheConfig,
    pub k: u64,
    pub v: u64,
    /// Partial results of the split decode attention: (buffer, floats).
    pub partials: Option<(Buffer, usize)>,
}

pub(crate) fn shape(op: &'static str, reason: String) -> ComputeError {
    ComputeError::Shape { op, reason }
}

/// `v` as a kernel's `int` argument.
pub(crate) fn i32_of(op: &'static str, v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| shape(op, format!("{v} does not fit a kernel's i32 argument")))
}

impl<D: Device> CudaBackend<D> {
    /// A zeroed device allocation of `n` elements of `T` (at least one).
    pub(crate) fn alloc<T>(&mut self, what: &'static str, n: usize) -> Result<Buffer> {
        let size = std::mem::size_of::<T>();
        let bytes = n as u128 * size as u128;
        let oom = |reason: String| {
            tracing::error!(what, bytes = bytes as u64, error = %reason, "VRAM_OOM: device allocation failed");
            ComputeError::Alloc { what, bytes }
        };
        let len = usize::try_from(bytes).map_err(|_| oom("too large".into()))?;
        let buf = self
            .dev
            .alloc(what, len.max(size))
            .map_err(|e| oom(e.to_string()))?;
        self.allocated += bytes as u64;
        Ok(buf)
    }

    pub(crate) fn tensor(&self, op: &'static str, id: TensorId) -> Result<&Tensor> {
        self.tensors
            .get(id.raw() as usize)
            .ok_or(ComputeError::UnknownHandle {
                op,
                kind: "tensor",
                id: id.raw(),
            })
    }

    pub(crate) fn weight(&self, op: &'static str, id: WeightId) -> Result<&Weight> {
        self.weights
            .get(id.raw() as usize)
            .ok_or(ComputeError::UnknownHandle {
                op,
                kind: "weight",
                id: id.raw(),
            })
    }

    /// The address of weight `id`, which must be a vector of `cols` elements.
    pub(crate) fn vector(&self, op: &'static str, id: WeightId, cols: usize) -> Result<u64> {
        let w = self.weight(op, id)?;
        if w.vector && w.cols == cols {
            Ok(w.ptr)
        } else {
            Err(shape(
                op,
                format!(
                    "weight {:?} is [{} x {}], expected a vector of {cols}",
                    w.name, w.rows, w.cols
                ),
            ))
        }
    }

    /// The first `rows` entries of index `id` as last written, and its device address.
    pub(crate) fn index(
        &self,
        op: &'static str,
        id: IndexId,
        rows: usize,
    ) -> Result<(&[u32], u64)> {
        let v = self
            .indices
            .get(id.raw() as usize)
            .ok_or(ComputeError::UnknownHandle {
                op,
                kind: "index",
                id: id.raw(),
            })?;
        if rows > v.len {
            return Err(shape(
                op,
                format!(
                    "index {} has {} entries, {rows} rows asked",
                    id.raw(),
                    v.len
                ),
            ));
        }
        let host = self
            .index_host
            .get(v.off..v.off + rows)
            .ok_or_else(|| shape(op, format!("index {} is out of its mirror", id.raw())))?;
        Ok((host, v.ptr))
    }

    /// Output and input tensors of an element-wise op: same shape, `rows` live, distinct.
    /// Returns their addresses and the width.
    pub(crate) fn pair(
        &self,
        op: &'static str,
        dst: TensorId,
        src: TensorId,
        rows: usize,
    ) -> Result<(u64, u64, usize)> {
        if dst == src {
            return Err(ComputeError::Aliased { op });
        }
        let (d, s) = (self.tensor(op, dst)?, self.tensor(op, src)?);
        check_rows(op, s.rows, rows, "source")?;
        check_rows(op, d.rows, rows, "destination")?;
        check_cols(op, s.cols, d.cols, "source")?;
        Ok((d.ptr, s.ptr, d.cols))
    }

    /// [`worker_compute::ComputeBackend::upload_weight`].
    pub(crate) fn upload(&mut self, d: WeightDesc<'_>) -> Result<WeightId> {
        const OP: &str = "upload_weight";
        let bad = |reason: String| ComputeError::BadWeight {
            name: d.name.to_string(),
            reason,
        };
        let unsupported = || ComputeError::UnsupportedType {
            backend: "cuda",
            name: d.name.to_string(),
            ty: d.ty,
        };
        if !self.supports(d.ty) {
            return Err(unsupported());
        }
        let row_bytes = d.row_bytes()?;
        i32_of(OP, d.cols)?;
        i32_of(OP, d.rows)?;
        self.flush(OP)?;
        // The mat-vec reads rows in 16-byte aligned pieces, up to 15 bytes past the last
        // row's end: every weight allocation has WEIGHT_PAD zero bytes after its data.
        let (buf, ty, row_bytes, vector, seg_bytes) = if d.rows == 1 {
            // Vectors (norm weights, biases) are tiny and read by every row: keep f32.
            let mut v = vec![0f32; d.cols];
            worker_gguf::dequantize(d.ty, d.bytes, &mut v).map_err(|e| bad(e.to_string()))?;
            let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
            let buf = self.alloc::<u8>("weight", bytes.len() + WEIGHT_PAD)?;
            self.dev.upload(buf, 0, &bytes).map_err(op_err(OP))?;
            let f32 = worker_gguf::GgmlType::F32;
            (buf, f32, d.cols * 4, true, MATVEC_SEGMENT * 4)
        } else {
            let buf = self.alloc::<u8>("weight", d.bytes.len() + WEIGHT_PAD)?;
            self.dev.upload(buf, 0, d.bytes).map_err(op_err(OP))?;
            let seg = d.ty.bytes_for(MATVEC_SEGMENT as u64).unwrap_or(0) as usize;
            (buf, d.ty, row_bytes, false, seg)
        };
        let kernels = TypeKernels::of(ty).ok_or_else(unsupported)?;
        self.weights.push(Weight {
            kernels,
            name: d.name.to_string(),
            rows: d.rows,
            cols: d.cols,
            row_bytes,
            seg_bytes,
            vector,
            ptr: buf.ptr,
        });
        Ok(WeightId::from_raw(self.weights.len() as u32 - 1))
    }

    /// [`worker_compute::ComputeBackend::alloc_tensor`].
    pub(crate) fn new_tensor(&mut self, rows: usize, cols: usize) -> Result<TensorId> {
        let n = rows.checked_mul(cols).ok_or(ComputeError::Alloc {
            what: "tensor",
            bytes: rows as u128 * cols as u128 * 4,
        })?;
        let buf = self.alloc::<f32>("tensor", n)?;
        self.tensors.push(Tensor {
            rows,
            cols,
            ptr: buf.ptr,
            buf,
        });
        Ok(TensorId::from_raw(self.tensors.len() as u32 - 1))
    }

    /// [`worker_compute::ComputeBackend::alloc_index`]: room in the arena, else an
    /// allocation of its own.
    pub(crate) fn new_index(&mut self, len: usize) -> Result<IndexId> {
        let off = self.index_host.len();
        let end = off.checked_add(len).ok_or(ComputeError::Alloc {
            what: "index",
            bytes: len as u128 * 4,
        })?;
        if self.index_arena.is_none() {
            let arena = self.alloc::<u32>("index arena", INDEX_ARENA)?;
            self.index_arena = Some(arena);
        }
        let (ptr, own) = match self.index_arena {
            Some(arena) if end <= INDEX_ARENA => (arena.ptr + off as u64 * 4, None),
            _ => {
                let buf = self.alloc::<u32>("index", len)?;
                (buf.ptr, Some(buf))
            }
        };
        self.index_host.resize(end, 0);
        self.indices.push(Index { off, len, ptr, own });
        Ok(IndexId::from_raw(self.indices.len() as u32 - 1))
    }

    /// [`worker_compute::ComputeBackend::alloc_kv_cache`]: f16 entries, one region of
    /// `seq_blocks` blocks per sequence.
    pub(crate) fn new_kv_cache(&mut self, cfg: KvCacheConfig) -> Result<KvCacheId> {
        cfg.validate()?;
        if cfg.ty != KvType::F16 || cfg.blocks != cfg.seqs.saturating_mul(cfg.seq_blocks) {
            return Err(ComputeError::Unsupported {
                op: "alloc_kv_cache",
                reason: format!(
                    "{cfg:?}: this backend stores f16 entries in one region of seq_blocks \
                     blocks per sequence (the paged layout has not run on a GPU yet)"
                ),
            });
        }
        let per = |hd: usize| {
            [cfg.layers, cfg.seqs, cfg.max_positions(), cfg.kv_heads, hd]
                .iter()
                .try_fold(1usize, |a, &b| a.checked_mul(b))
        };
        let (Some(nk), Some(nv)) = (per(cfg.head_dim), per(cfg.value_head_dim)) else {
            return Err(ComputeError::Alloc {
                what: "kv cache",
                bytes: u128::MAX,
            });
        };
        let k = self.alloc::<u16>("kv cache keys", nk)?;
        let v = self.alloc::<u16>("kv cache values", nv)?;
        self.caches.push(KvCache {
            cfg,
            k: k.ptr,
            v: v.ptr,
            partials: None,
        });
        Ok(KvCacheId::from_raw(self.caches.len() as u32 - 1))
    }

    /// The cache `id`.
    pub(crate) fn cache(&self, op: &'static str, id: KvCacheId) -> Result<&KvCache> {
        self.caches
            .get(id.raw() as usize)
            .ok_or(ComputeError::UnknownHandle {
                op,
                kind: "kv cache",
                id: id.raw(),
            })
    }

    /// [`worker_compute::ComputeBackend::write_index`]: into the mirror (the next flush
    /// uploads it), or straight to an index outside the arena.
    pub(crate) fn set_index(&mut self, dst: IndexId, data: &[u32]) -> Result<()> {
        const OP: &str = "write_index";
        let (off, len) = {
            let v = self
                .indices
                .get(dst.raw() as usize)
                .ok_or(ComputeError::UnknownHandle {
                    op: OP,
                    kind: "index",
                    id: dst.raw(),
                })?;
            (v.off, v.len)
        };
        if data.len() > len {
            return Err(shape(
                OP,
                format!("{} entries into an index of {len}", data.len()),
            ));
        }
        if data.is_empty() {
            return Ok(());
        }
        // Launches queued before this write must see the old values.
        if !self.pending.is_empty() {
            self.flush(OP)?;
        }
        let end = off + data.len();
        self.index_host[off..end].copy_from_slice(data);
        let i = dst.raw() as usize;
        match self.indices.get(i).and_then(|v| v.own) {
            Some(buf) => self
                .dev
                .upload(buf, 0, bytemuck::cast_slice(data))
                .map_err(op_err(OP)),
            None => {
                self.index_dirty = Some(match self.index_dirty {
                    Some((lo, hi)) => (lo.min(off), hi.max(end)),
                    None => (off, end),
                });
                Ok(())
            }
        }
    }

    /// Uploads the index range written since the last upload (before the launches that read
    /// it).
    pub(crate) fn upload_indices(&mut self, op: &'static str) -> Result<()> {
        if let (Some((lo, hi)), Some(arena)) = (self.index_dirty, self.index_arena) {
            self.index_dirty = None;
            let bytes = bytemuck::cast_slice(&self.index_host[lo..hi]);
            self.dev.upload(arena, lo * 4, bytes).map_err(op_err(op))?;
        }
        Ok(())
    }

    /// [`worker_compute::ComputeBackend::write_rows`].
    pub(crate) fn set_rows(&mut self, dst: TensorId, data: &[f32]) -> Result<()> {
        const OP: &str = "write_rows";
        let t = self.tensor(OP, dst)?;
        if !data.len().is_multiple_of(t.cols) || data.len() > t.rows * t.cols {
            return Err(shape(
                OP,
                format!(
                    "{} values into a [{} x {}] tensor",
                    data.len(),
                    t.rows,
                    t.cols
                ),
            ));
        }
        if data.is_empty() {
            return Ok(());
        }
        let buf = t.buf;
        self.flush(OP)?;
        self.dev
            .upload(buf, 0, bytemuck::cast_slice(data))
            .map_err(op_err(OP))
    }

    /// [`worker_compute::ComputeBackend::read_rows`]: flushes the step, copies, waits.
    pub(crate) fn read_out(&mut self, src: TensorId, rows: usize, out: &mut [f32]) -> Result<()> {
        const OP: &str = "read_rows";
        let t = self.tensor(OP, src)?;
        check_rows(OP, t.rows, rows, "source")?;
        let n = rows * t.cols;
        if out.len() != n {
            return Err(shape(
                OP,
                format!("output holds {} values, {rows} rows need {n}", out.len()),
            ));
        }
        if n == 0 {
            return Ok(());
        }
        let buf = t.buf;
        let entered = std::time::Instant::now();
        self.dev.begin_read_out().map_err(op_err(OP))?;
        self.flush(OP)?;
        self.dev
            .download(buf, bytemuck::cast_slice_mut(out))
            .map_err(op_err(OP))?;
        self.dev.finish_read_out(entered).map_err(op_err(OP))
    }
}
