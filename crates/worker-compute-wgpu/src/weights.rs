//! Weights on the device in their GGUF types, and the ops that read them: `embed` and
//! `matmul` (a mat-vec kernel for a few rows, a tiled one for prefill).
//!
//! A weight larger than one storage binding of the adapter (lavapipe's is 128 MiB; Qwen2.5's
//! output matrix is 145 MB) is kept in parts of whole rows, one buffer each, and every op
//! on it runs once per part. Vectors (norm weights, biases: one row) are kept as f32, as the
//! other backends keep them.

use worker_compute::shape::{check_product, check_rows};
use worker_compute::{ComputeError, IndexId, Result, TensorId, WeightDesc, WeightId};
use worker_gguf::GgmlType;

use crate::backend::{shape, u32_of, WgpuBackend};
use crate::shaders::{weight_types, Kernel};
use crate::stream::{groups_for, BufId, WEIGHT_PAD};

/// Activation rows up to which a matmul runs the mat-vec kernel on a GPU; more take the
/// tiled one (see [`crate::WgpuConfig::tiled_min_rows`]).
pub const MATVEC_MAX_ROWS: usize = 8;
/// Largest part of a weight, in bytes, whatever the adapter allows: kernels address bytes
/// with u32.
const MAX_PART_BYTES: u64 = 1 << 31;

/// Rows `row0..row0 + rows` of a weight, in one buffer.
pub(crate) struct Part {
    pub buf: BufId,
    pub row0: usize,
    pub rows: usize,
}

pub(crate) struct Weight {
    pub name: String,
    /// The storage type (F32 for vectors, which are converted at upload).
    pub ty: GgmlType,
    pub rows: usize,
    pub cols: usize,
    pub row_bytes: usize,
    pub parts: Vec<Part>,
}

impl WgpuBackend {
    pub(crate) fn weight(&self, op: &'static str, id: WeightId) -> Result<&Weight> {
        id.lookup(&self.weights, op)
    }

    /// The buffer of weight `id` if it is a vector of `cols` elements.
    pub(crate) fn vector(&self, op: &'static str, id: WeightId, cols: usize) -> Result<BufId> {
        let w = self.weight(op, id)?;
        match w.parts.as_slice() {
            [p] if w.rows == 1 && w.cols == cols => Ok(p.buf),
            _ => Err(shape(
                op,
                format!(
                    "weight {:?} is [{} x {}], expected a vector of {cols}",
                    w.name, w.rows, w.cols
                ),
            )),
        }
    }

    pub(crate) fn upload(&mut self, d: WeightDesc<'_>) -> Result<WeightId> {
        let bad = |reason: String| ComputeError::BadWeight {
            name: d.name.to_string(),
            reason,
        };
        if !weight_types().any(|t| t == d.ty) {
            return Err(ComputeError::UnsupportedType {
                backend: "wgpu",
                name: d.name.to_string(),
                ty: d.ty,
            });
        }
        let row_bytes = d.row_bytes()?;
        let weight = if d.rows == 1 {
            let mut v = vec![0f32; d.cols];
            worker_gguf::dequantize(d.ty, d.bytes, &mut v).map_err(|e| bad(e.to_string()))?;
            let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
            let buf = self.stream.alloc_init("weight vector", &bytes)?;
            Weight {
                name: d.name.to_string(),
                ty: GgmlType::F32,
                rows: 1,
                cols: d.cols,
                row_bytes: d.cols * 4,
                parts: vec![Part {
                    buf,
                    row0: 0,
                    rows: 1,
                }],
            }
        } else {
            if !d.cols.is_multiple_of(4) {
                return Err(bad(format!(
                    "{} columns: the kernels read rows four elements at a time",
                    d.cols
                )));
            }
            let limit = self.max_part_bytes.unwrap_or(u64::MAX);
            let room = (self.stream.max_binding().min(MAX_PART_BYTES).min(limit))
                .saturating_sub(WEIGHT_PAD);
            let per_part = (room / row_bytes as u64) as usize;
            if per_part == 0 {
                return Err(bad(format!(
                    "one row of {row_bytes} bytes is larger than a storage binding ({room} bytes)"
                )));
            }
            let mut parts = Vec::new();
            for row0 in (0..d.rows).step_by(per_part) {
                let rows = per_part.min(d.rows - row0);
                let bytes = &d.bytes[row0 * row_bytes..(row0 + rows) * row_bytes];
                let buf = self.stream.alloc_init("weight", bytes)?;
                parts.push(Part { buf, row0, rows });
            }
            Weight {
                name: d.name.to_string(),
                ty: d.ty,
                rows: d.rows,
                cols: d.cols,
                row_bytes,
                parts,
            }
        };
        self.weights.push(weight);
        Ok(WeightId::from_raw(self.weights.len() as u32 - 1))
    }

    pub(crate) fn embed_rows(
        &mut self,
        out: TensorId,
        table: WeightId,
        ids: IndexId,
        rows: usize,
    ) -> Result<()> {
        const OP: &str = "embed";
        let (off, idx) = self.index(OP, ids, rows)?;
        let w = self.weight(OP, table)?;
        if let Some(&id) = idx.iter().find(|&&id| id as usize >= w.rows) {
            return Err(ComputeError::BadIndex {
                op: OP,
                reason: format!("token id {id} is outside {:?} ({} rows)", w.name, w.rows),
            });
        }
        if !w.cols.is_multiple_of(4) {
            return Err(shape(OP, format!("a table of {} columns", w.cols)));
        }
        let ob = self.tensor_shaped(OP, out, rows, w.cols, "output")?;
        let k4 = w.cols / 4;
        let kernel = Kernel::Embed(w.ty);
        let mut launches = Vec::new();
        for part in &w.parts {
            let params = [
                u32_of(OP, rows)?,
                u32_of(OP, k4)?,
                u32_of(OP, w.row_bytes)?,
                u32_of(OP, part.row0)?,
                u32_of(OP, part.rows)?,
                u32_of(OP, off)?,
            ];
            launches.push((params, part.buf));
        }
        let ib = self.stream.index_buf();
        for (params, buf) in launches {
            self.stream
                .dispatch(kernel, &params, &[ob, buf, ib], groups_for(rows * k4))?;
        }
        Ok(())
    }

    pub(crate) fn matmul_rows(
        &mut self,
        out: TensorId,
        x: TensorId,
        w: WeightId,
        rows: usize,
    ) -> Result<()> {
        const OP: &str = "matmul";
        if out == x {
            return Err(ComputeError::Aliased { op: OP });
        }
        let wt = self.weight(OP, w)?;
        let xt = self.tensor(OP, x)?;
        let o = self.tensor(OP, out)?;
        check_rows(OP, xt.rows, rows, "input")?;
        check_rows(OP, o.rows, rows, "output")?;
        check_product(OP, xt.cols, o.cols, (&wt.name, wt.rows, wt.cols))?;
        if !wt.cols.is_multiple_of(4) {
            return Err(ComputeError::Unsupported {
                op: OP,
                reason: format!(
                    "weight {:?} has {} columns (the kernels need a multiple of 4)",
                    wt.name, wt.cols
                ),
            });
        }
        let (xb, ob) = (xt.buf, o.buf);
        let k4 = wt.cols / 4;
        let tiled = rows >= self.tiled_min_rows;
        let kernel = if tiled {
            Kernel::Matmul(wt.ty)
        } else {
            Kernel::Matvec(wt.ty)
        };
        // Weight rows per mat-vec workgroup: one per subgroup, as many as the fewest
        // subgroups a workgroup can have; one without subgroups.
        let per_wg = match self.stream.gpu.summary.subgroup_sizes {
            Some((_, max)) if self.stream.gpu.subgroups => (64 / max.max(1)).max(1) as usize,
            _ => 1,
        };
        let mut launches = Vec::new();
        for part in &wt.parts {
            let params = [
                u32_of(OP, rows)?,
                u32_of(OP, wt.rows)?,
                u32_of(OP, part.rows)?,
                u32_of(OP, part.row0)?,
                u32_of(OP, k4)?,
                u32_of(OP, wt.row_bytes)?,
                u32_of(OP, per_wg)?,
            ];
            let groups = if tiled {
                part.rows.div_ceil(32) * rows.div_ceil(32)
            } else {
                part.rows.div_ceil(per_wg) * rows.div_ceil(4)
            };
            launches.push((params, part.buf, groups as u64));
        }
        for (params, buf, groups) in launches {
            self.stream
                .dispatch(kernel, &params, &[ob, xb, buf], groups)?;
        }
        Ok(())
    }
}
