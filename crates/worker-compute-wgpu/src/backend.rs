//! [`WgpuBackend`]: the `ComputeBackend` ops as WGSL kernels recorded on one [`Stream`].
//!
//! Each op checks its handles, shapes and (through the host mirror of the index arena) its
//! indices before it records anything, so a bad call is an error and never reaches the
//! device. Weights and the KV cache are in [`crate::weights`] and [`crate::kv`].

use worker_compute::{
    AttentionParams, ComputeBackend, ComputeError, IndexId, KvCacheConfig, KvCacheId, KvIndex,
    KvType, Result, RopeMode, RopeParams, TensorId, WeightDesc, WeightId,
};

use worker_compute::shape::{check_cols, check_rows};

use crate::device::{self, AdapterSummary};
use crate::error::WgpuError;
use crate::kv::KvCache;
use crate::shaders::Kernel;
use crate::stream::{groups_for, BufId, Stream};
use crate::weights::{Weight, MATVEC_MAX_ROWS};

/// Settings of a [`WgpuBackend`].
#[derive(Clone, Debug)]
pub struct WgpuConfig {
    /// The adapter: its index in [`crate::list_adapters`] or part of its name; `None` for
    /// the best one found (discrete, then integrated, then software).
    pub adapter: Option<String>,
    /// Use subgroup operations in reductions where the adapter has them.
    pub subgroups: bool,
    /// Activation rows from which a matmul takes the tiled kernel instead of the mat-vec;
    /// `None` for [`crate::MATVEC_MAX_ROWS`] + 1 on a GPU and never on a software adapter
    /// (lavapipe), where shared memory and barriers cost more than re-reading the weights
    /// once per four rows. Tests set it to run the tiled kernel there.
    pub tiled_min_rows: Option<usize>,
    /// The most bytes of a weight one buffer holds (a larger weight is split by rows); the
    /// adapter's storage binding limit when `None`. Tests set it to exercise the split.
    pub max_part_bytes: Option<u64>,
}

impl Default for WgpuConfig {
    fn default() -> Self {
        WgpuConfig {
            adapter: None,
            subgroups: true,
            tiled_min_rows: None,
            max_part_bytes: None,
        }
    }
}

pub(crate) struct Tensor {
    pub rows: usize,
    pub cols: usize,
    pub buf: BufId,
}

/// An index vector: entries `off..off + len` of the stream's index arena.
pub(crate) struct Index {
    pub off: usize,
    pub len: usize,
}

/// The rope table written for some positions and parameters during the current step.
struct RopeTable {
    generation: u64,
    positions: Vec<u32>,
    key: (f32, f32, usize, Option<worker_compute::Yarn>),
    off: usize,
}

/// The wgpu implementation of [`ComputeBackend`].
pub struct WgpuBackend {
    pub(crate) stream: Stream,
    pub(crate) tensors: Vec<Tensor>,
    pub(crate) indices: Vec<Index>,
    pub(crate) weights: Vec<Weight>,
    pub(crate) caches: Vec<KvCache>,
    rope_tables: Vec<RopeTable>,
    pub(crate) max_part_bytes: Option<u64>,
    pub(crate) tiled_min_rows: usize,
}

pub(crate) fn shape(op: &'static str, reason: String) -> ComputeError {
    ComputeError::Shape { op, reason }
}

/// A value as a kernel's u32 parameter.
pub(crate) fn u32_of(op: &'static str, v: usize) -> Result<u32> {
    u32::try_from(v).map_err(|_| shape(op, format!("{v} does not fit a kernel's u32")))
}

impl WgpuBackend {
    /// Opens the adapter `config.adapter` names (or the best one) and its device. Without an
    /// adapter this is [`WgpuError::NoAdapter`], never a panic.
    pub fn new(config: WgpuConfig) -> std::result::Result<Self, WgpuError> {
        let gpu = device::open(config.adapter.as_deref(), config.subgroups)?;
        let tiled_min_rows = config
            .tiled_min_rows
            .unwrap_or(match gpu.summary.device_type {
                "cpu" => usize::MAX,
                _ => MATVEC_MAX_ROWS + 1,
            });
        let stream = Stream::new(gpu).map_err(|e| WgpuError::RequestDevice {
            adapter: String::new(),
            reason: e.to_string(),
        })?;
        Ok(WgpuBackend {
            stream,
            tensors: Vec::new(),
            indices: Vec::new(),
            weights: Vec::new(),
            caches: Vec::new(),
            rope_tables: Vec::new(),
            max_part_bytes: config.max_part_bytes,
            tiled_min_rows,
        })
    }

    /// What the adapter in use is and offers.
    pub fn adapter(&self) -> &AdapterSummary {
        &self.stream.gpu.summary
    }

    /// Whether the reductions use subgroup operations.
    pub fn uses_subgroups(&self) -> bool {
        self.stream.gpu.subgroups
    }

    /// Compiles every kernel now (they are otherwise compiled on first use), so that a
    /// driver that rejects one fails at start-up.
    pub fn compile_all(&mut self) -> Result<()> {
        for kernel in Kernel::all() {
            self.stream.pipeline(kernel)?;
        }
        Ok(())
    }

    /// Dispatches and submissions since start-up (a forward pass should be one submission).
    pub fn counters(&self) -> (u64, u64) {
        (self.stream.dispatches, self.stream.submissions)
    }

    pub(crate) fn tensor(&self, op: &'static str, id: TensorId) -> Result<&Tensor> {
        id.lookup(&self.tensors, op)
    }

    /// Tensor `id` with at least `rows` rows and exactly `cols` columns: its buffer.
    pub(crate) fn tensor_shaped(
        &self,
        op: &'static str,
        id: TensorId,
        rows: usize,
        cols: usize,
        what: &str,
    ) -> Result<BufId> {
        let t = self.tensor(op, id)?;
        check_rows(op, t.rows, rows, what)?;
        check_cols(op, t.cols, cols, what)?;
        Ok(t.buf)
    }

    /// The first `rows` entries of index `id`: their arena offset and host values.
    pub(crate) fn index(
        &self,
        op: &'static str,
        id: IndexId,
        rows: usize,
    ) -> Result<(usize, &[u32])> {
        let ix = id.lookup(&self.indices, op)?;
        if rows > ix.len {
            return Err(shape(
                op,
                format!("index {} has {} entries, {rows} asked", id.raw(), ix.len),
            ));
        }
        Ok((ix.off, self.stream.index(ix.off, rows)))
    }

    /// Element-wise `dst op= src` over `rows` rows.
    fn binary(
        &mut self,
        op: &'static str,
        kernel: Kernel,
        dst: TensorId,
        src: TensorId,
        rows: usize,
    ) -> Result<()> {
        if dst == src {
            return Err(ComputeError::Aliased { op });
        }
        let d = self.tensor(op, dst)?;
        let (db, cols) = (d.buf, d.cols);
        check_rows(op, d.rows, rows, "destination")?;
        let sb = self.tensor_shaped(op, src, rows, cols, "source")?;
        let n = rows * cols;
        let params = [u32_of(op, n)?, u32_of(op, cols)?, 0];
        self.stream
            .dispatch(kernel, &params, &[db, sb], groups_for(n))
    }

    /// An in-place unary op over `rows` rows with the scalar `f`.
    fn unary(
        &mut self,
        op: &'static str,
        kernel: Kernel,
        x: TensorId,
        f: f32,
        rows: usize,
    ) -> Result<()> {
        let t = self.tensor(op, x)?;
        check_rows(op, t.rows, rows, "input")?;
        let (buf, n) = (t.buf, rows * t.cols);
        let params = [u32_of(op, n)?, f.to_bits()];
        self.stream.dispatch(kernel, &params, &[buf], groups_for(n))
    }

    /// `out = x` for the first `rows` rows (a norm's input, before it runs in place on `out`).
    fn copy_rows(
        &mut self,
        op: &'static str,
        out: TensorId,
        x: TensorId,
        rows: usize,
    ) -> Result<(BufId, usize)> {
        if out == x {
            return Err(ComputeError::Aliased { op });
        }
        let t = self.tensor(op, x)?;
        check_rows(op, t.rows, rows, "input")?;
        let (xb, cols) = (t.buf, t.cols);
        let ob = self.tensor_shaped(op, out, rows, cols, "output")?;
        self.stream.copy(xb, ob, (rows * cols * 4) as u64)?;
        Ok((ob, cols))
    }

    /// RMS norm in place over `segs` segments of `seg` elements of `buf`.
    fn rms_segments(
        &mut self,
        op: &'static str,
        buf: BufId,
        weight: WeightId,
        eps: f32,
        segs: usize,
        seg: usize,
    ) -> Result<()> {
        let wb = self.vector(op, weight, seg)?;
        let params = [u32_of(op, segs)?, u32_of(op, seg)?, eps.to_bits()];
        self.stream
            .dispatch(Kernel::RmsNorm, &params, &[buf, wb], segs as u64)
    }

    /// The rope table (cos, sin per rotated pair) of `positions` under `p`, written once per
    /// step for every call with the same positions and angle parameters (q, then k, of every
    /// layer). Computed on the host in f64 by the CPU backend's own functions: the GPU's
    /// `sin` and `cos` are only specified near zero, and positions reach tens of thousands.
    fn rope_table(&mut self, positions: Vec<u32>, p: &RopeParams) -> Result<usize> {
        let key = (p.base, p.freq_scale, p.n_rot, p.yarn);
        let generation = self.stream.table_generation();
        self.rope_tables.retain(|t| t.generation == generation);
        if let Some(t) = self
            .rope_tables
            .iter()
            .find(|t| t.key == key && t.positions == positions)
        {
            return Ok(t.off);
        }
        let freqs = worker_compute::cpu::ops::rope_frequencies(p);
        let mut table = vec![0f32; positions.len() * p.n_rot];
        for (&pos, cs) in positions.iter().zip(table.chunks_exact_mut(p.n_rot)) {
            worker_compute::cpu::ops::rope_angles(pos, p, &freqs, cs);
        }
        let off = self.stream.push_table(&table)?;
        self.rope_tables.push(RopeTable {
            generation: self.stream.table_generation(),
            positions,
            key,
            off,
        });
        Ok(off)
    }
}

impl ComputeBackend for WgpuBackend {
    fn name(&self) -> &'static str {
        "wgpu"
    }

    fn allocated_bytes(&self) -> Option<u64> {
        Some(self.stream.allocated())
    }

    fn upload_weight(&mut self, desc: WeightDesc<'_>) -> Result<WeightId> {
        self.upload(desc)
    }

    fn alloc_tensor(&mut self, rows: usize, cols: usize) -> Result<TensorId> {
        let bytes = rows
            .checked_mul(cols)
            .and_then(|n| n.checked_mul(4))
            .ok_or(ComputeError::Alloc {
                what: "tensor",
                bytes: rows as u128 * cols as u128 * 4,
            })?;
        let buf = self.stream.alloc("tensor", bytes as u64)?;
        self.tensors.push(Tensor { rows, cols, buf });
        Ok(TensorId::from_raw(self.tensors.len() as u32 - 1))
    }

    fn alloc_index(&mut self, len: usize) -> Result<IndexId> {
        let off = self.stream.alloc_index(len)?;
        self.indices.push(Index { off, len });
        Ok(IndexId::from_raw(self.indices.len() as u32 - 1))
    }

    fn kv_storage(&self, requested: KvType) -> KvType {
        crate::kv::storage(requested)
    }

    fn alloc_kv_cache(&mut self, config: KvCacheConfig) -> Result<KvCacheId> {
        self.alloc_kv(config)
    }

    fn write_index(&mut self, dst: IndexId, data: &[u32]) -> Result<()> {
        let ix = dst.lookup(&self.indices, "write_index")?;
        if data.len() > ix.len {
            return Err(shape(
                "write_index",
                format!("{} entries into an index of {}", data.len(), ix.len),
            ));
        }
        let off = ix.off;
        self.stream.write_index(off, data)
    }

    fn write_rows(&mut self, dst: TensorId, data: &[f32]) -> Result<()> {
        let t = self.tensor("write_rows", dst)?;
        if !data.len().is_multiple_of(t.cols.max(1)) || data.len() > t.rows * t.cols {
            return Err(shape(
                "write_rows",
                format!(
                    "{} values into a [{} x {}] tensor",
                    data.len(),
                    t.rows,
                    t.cols
                ),
            ));
        }
        let buf = t.buf;
        let bytes: Vec<u8> = data.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.stream.write(buf, &bytes)
    }

    fn read_rows(&mut self, src: TensorId, rows: usize, out: &mut [f32]) -> Result<()> {
        let t = self.tensor("read_rows", src)?;
        check_rows("read_rows", t.rows, rows, "source")?;
        let n = rows * t.cols;
        if out.len() != n {
            return Err(shape(
                "read_rows",
                format!("output holds {} values, {rows} rows need {n}", out.len()),
            ));
        }
        let buf = t.buf;
        self.stream.read(buf, out)
    }

    fn embed(&mut self, out: TensorId, table: WeightId, ids: IndexId, rows: usize) -> Result<()> {
        self.embed_rows(out, table, ids, rows)
    }

    fn gather_rows(
        &mut self,
        out: TensorId,
        src: TensorId,
        index: IndexId,
        rows: usize,
    ) -> Result<()> {
        const OP: &str = "gather_rows";
        if out == src {
            return Err(ComputeError::Aliased { op: OP });
        }
        let (off, idx) = self.index(OP, index, rows)?;
        let s = self.tensor(OP, src)?;
        let (sb, srows, cols) = (s.buf, s.rows, s.cols);
        if let Some(&i) = idx.iter().find(|&&i| i as usize >= srows) {
            return Err(ComputeError::BadIndex {
                op: OP,
                reason: format!("row {i} of a {srows}-row tensor"),
            });
        }
        let ob = self.tensor_shaped(OP, out, rows, cols, "output")?;
        let n = rows * cols;
        let params = [u32_of(OP, rows)?, u32_of(OP, cols)?, u32_of(OP, off)?];
        let ib = self.stream.index_buf();
        self.stream
            .dispatch(Kernel::Gather, &params, &[ob, sb, ib], groups_for(n))
    }

    fn rms_norm(
        &mut self,
        out: TensorId,
        x: TensorId,
        weight: WeightId,
        eps: f32,
        rows: usize,
    ) -> Result<()> {
        const OP: &str = "rms_norm";
        let (ob, cols) = self.copy_rows(OP, out, x, rows)?;
        self.rms_segments(OP, ob, weight, eps, rows, cols)
    }

    fn rms_norm_heads(
        &mut self,
        x: TensorId,
        weight: WeightId,
        eps: f32,
        heads: usize,
        rows: usize,
    ) -> Result<()> {
        const OP: &str = "rms_norm_heads";
        let t = self.tensor(OP, x)?;
        check_rows(OP, t.rows, rows, "input")?;
        let (buf, cols) = (t.buf, t.cols);
        if heads == 0 || !cols.is_multiple_of(heads) {
            return Err(shape(
                OP,
                format!("{cols} columns are not {heads} whole heads"),
            ));
        }
        self.rms_segments(OP, buf, weight, eps, rows * heads, cols / heads)
    }

    fn layer_norm(
        &mut self,
        out: TensorId,
        x: TensorId,
        weight: WeightId,
        bias: WeightId,
        eps: f32,
        rows: usize,
    ) -> Result<()> {
        const OP: &str = "layer_norm";
        let (ob, cols) = self.copy_rows(OP, out, x, rows)?;
        let wb = self.vector(OP, weight, cols)?;
        let bb = self.vector(OP, bias, cols)?;
        let params = [u32_of(OP, rows)?, u32_of(OP, cols)?, eps.to_bits()];
        self.stream
            .dispatch(Kernel::LayerNorm, &params, &[ob, wb, bb], rows as u64)
    }

    fn matmul(&mut self, out: TensorId, x: TensorId, w: WeightId, rows: usize) -> Result<()> {
        self.matmul_rows(out, x, w, rows)
    }

    fn add(&mut self, dst: TensorId, src: TensorId, rows: usize) -> Result<()> {
        self.binary("add", Kernel::Add, dst, src, rows)
    }

    fn add_bias(&mut self, dst: TensorId, bias: WeightId, rows: usize) -> Result<()> {
        const OP: &str = "add_bias";
        let d = self.tensor(OP, dst)?;
        check_rows(OP, d.rows, rows, "destination")?;
        let (db, cols) = (d.buf, d.cols);
        let bb = self.vector(OP, bias, cols)?;
        let n = rows * cols;
        let params = [u32_of(OP, n)?, u32_of(OP, cols)?, 0];
        self.stream
            .dispatch(Kernel::AddBias, &params, &[db, bb], groups_for(n))
    }

    fn scale(&mut self, x: TensorId, factor: f32, rows: usize) -> Result<()> {
        self.unary("scale", Kernel::Scale, x, factor, rows)
    }

    fn mul(&mut self, dst: TensorId, src: TensorId, rows: usize) -> Result<()> {
        self.binary("mul", Kernel::Mul, dst, src, rows)
    }

    fn rope(&mut self, x: TensorId, positions: IndexId, p: &RopeParams, rows: usize) -> Result<()> {
        const OP: &str = "rope";
        let (_, pos) = self.index(OP, positions, rows)?;
        let pos = pos.to_vec();
        let t = self.tensor(OP, x)?;
        check_rows(OP, t.rows, rows, "input")?;
        check_cols(OP, t.cols, p.heads * p.head_dim, "input")?;
        p.validate()?;
        let (buf, cols) = (t.buf, t.cols);
        let half = p.n_rot / 2;
        if rows == 0 || half == 0 || p.heads == 0 {
            return Ok(());
        }
        let off = self.rope_table(pos, p)?;
        let params = [
            u32_of(OP, rows)?,
            u32_of(OP, p.heads)?,
            u32_of(OP, p.head_dim)?,
            u32_of(OP, half)?,
            u32_of(OP, cols)?,
            u32::from(p.mode == RopeMode::Neox),
            u32_of(OP, off)?,
        ];
        let tb = self.stream.table_buf();
        let n = rows * p.heads * half;
        self.stream
            .dispatch(Kernel::Rope, &params, &[buf, tb], groups_for(n))
    }

    fn attention(
        &mut self,
        out: TensorId,
        q: TensorId,
        k: TensorId,
        v: TensorId,
        cache: KvCacheId,
        index: &KvIndex,
        params: &AttentionParams,
        rows: usize,
    ) -> Result<()> {
        self.attend(out, q, k, v, cache, index, params, rows)
    }

    fn swiglu(&mut self, out: TensorId, gate: TensorId, up: TensorId, rows: usize) -> Result<()> {
        const OP: &str = "swiglu";
        if out == gate || out == up {
            return Err(ComputeError::Aliased { op: OP });
        }
        let g = self.tensor(OP, gate)?;
        check_rows(OP, g.rows, rows, "gate")?;
        let (gb, cols) = (g.buf, g.cols);
        let ub = self.tensor_shaped(OP, up, rows, cols, "up")?;
        let ob = self.tensor_shaped(OP, out, rows, cols, "out")?;
        let n = rows * cols;
        self.stream.dispatch(
            Kernel::Swiglu,
            &[u32_of(OP, n)?],
            &[ob, gb, ub],
            groups_for(n),
        )
    }

    fn gelu(&mut self, x: TensorId, rows: usize) -> Result<()> {
        self.unary("gelu", Kernel::Gelu, x, 0.0, rows)
    }
}
