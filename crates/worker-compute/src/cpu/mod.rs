//! The CPU backend: host memory, a persistent thread pool, and kernels picked at start-up
//! from a table of function pointers (scalar reference, AVX2 or AVX-512).

mod kv;
mod matmul;
mod moe;
pub mod ops;
pub mod pool;
pub mod quant;
mod ranges;
mod slab;

use std::cell::{Ref, RefCell, RefMut};
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::backend::{
    AttentionParams, ComputeBackend, ExpertWeights, IndexId, KvCacheConfig, KvCacheId, KvIndex,
    MoeParams, Result, RopeParams, TensorId, WeightDesc, WeightId, Yarn,
};
use crate::error::ComputeError;
use crate::shape::{check_cols, check_product, check_rows};
use pool::ThreadPool;

use quant::panel::PANEL;
use quant::{BlockQ8, BlockQ8K, Isa, Kernels, TypeKernels};

/// How the matmul treats activations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activations {
    /// Each activation row is quantized once to 8 bits (per 32 or 256 elements) and dotted
    /// with the weights in integers, as llama.cpp does. The fast path.
    Q8,
    /// Weight rows are dequantized and dotted with f32 activations: the accuracy reference
    /// that measures what [`Activations::Q8`] costs.
    F32,
}

/// Which kernels to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelChoice {
    /// The best the CPU supports (run-time detection).
    Detect,
    /// The scalar reference kernels only.
    Scalar,
}

/// Settings of a [`CpuBackend`].
#[derive(Clone, Copy, Debug)]
pub struct CpuConfig {
    /// Threads per op, the calling thread included.
    pub threads: usize,
    /// Kernel table.
    pub kernels: KernelChoice,
    /// Activation precision of the matmul.
    pub activations: Activations,
}

impl Default for CpuConfig {
    fn default() -> Self {
        CpuConfig {
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            kernels: KernelChoice::Detect,
            activations: Activations::Q8,
        }
    }
}

struct Tensor {
    rows: usize,
    cols: usize,
    data: Vec<f32>,
}

struct Weight {
    name: String,
    rows: usize,
    cols: usize,
    row_bytes: usize,
    /// The GGUF rows, or the panels when `kernels.panel` is set.
    bytes: slab::WeightBytes,
    kernels: TypeKernels,
    /// f32 copy of a vector (norm weights, biases): tiny, read by every row.
    vector: Option<Vec<f32>>,
}

impl Weight {
    /// Row `r` of a weight kept in GGUF layout (no panels).
    fn row(&self, r: usize) -> &[u8] {
        &self.bytes[r * self.row_bytes..(r + 1) * self.row_bytes]
    }

    /// Row `r` in GGUF bytes: a slice of the weight, or rebuilt into `buf` from the panels.
    fn gguf_row<'a>(&'a self, r: usize, buf: &'a mut Vec<u8>) -> &'a [u8] {
        match self.kernels.panel {
            None => self.row(r),
            Some(pk) => {
                buf.resize(self.row_bytes, 0);
                pk.format.gguf_row(self.cols, &self.bytes, r, buf);
                buf
            }
        }
    }
}

/// The rope angles of the last `rope` call: its positions and parameters, and their
/// cosines and sines, `n_rot` per position.
#[derive(Default)]
struct RopeAngles {
    positions: Vec<u32>,
    params: Option<AngleParams>,
    cos_sin: Vec<f32>,
}

/// What the angles of a position depend on: base, position scale, rotated width, YaRN.
type AngleParams = (f32, f32, usize, Option<Yarn>);

fn angle_params(p: &RopeParams) -> AngleParams {
    (p.base, p.freq_scale, p.n_rot, p.yarn)
}

impl RopeAngles {
    fn holds(&self, positions: &[u32], p: &RopeParams) -> bool {
        self.params == Some(angle_params(p)) && self.positions == positions
    }
}

/// A raw output pointer shared by the threads of one op, each writing a disjoint range.
struct SharedOut<T = f32>(*mut T);
// SAFETY: every op that shares a `SharedOut` has its threads write disjoint element ranges,
// and the owning buffer outlives the pool job (`ThreadPool::run` blocks until it ends).
unsafe impl<T: Send> Send for SharedOut<T> {}
// SAFETY: as above.
unsafe impl<T: Send> Sync for SharedOut<T> {}

impl<T> Clone for SharedOut<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for SharedOut<T> {}

impl<T> SharedOut<T> {
    /// # Safety
    /// `off + len` must lie inside the buffer and no other thread may touch that range.
    #[allow(clippy::mut_from_ref)]
    unsafe fn slice(&self, off: usize, len: usize) -> &mut [T] {
        // SAFETY: the caller guarantees that `off..off + len` lies inside the buffer `self.0`
        // points into (so the offset pointer and the slice stay in it) and that no other
        // reference to that range exists while the slice lives.
        unsafe { std::slice::from_raw_parts_mut(self.0.add(off), len) }
    }
}

/// The CPU implementation of [`ComputeBackend`].
pub struct CpuBackend {
    config: CpuConfig,
    kernels: Kernels,
    pool: ThreadPool,
    tensors: Vec<RefCell<Tensor>>,
    indices: Vec<Vec<u32>>,
    weights: Vec<Weight>,
    /// Where the weights' bytes are carved from.
    weight_memory: slab::Slabs,
    caches: Vec<RefCell<kv::KvPool>>,
    q8: Vec<BlockQ8>,
    q8k: Vec<BlockQ8K>,
    rope_angles: RefCell<RopeAngles>,
    moe_scratch: moe::MoeScratch,
}

impl CpuBackend {
    /// A backend with its thread pool started and its kernel table filled. A compute thread
    /// the OS refuses to start is logged and left out: the pool runs on the threads it got.
    pub fn new(config: CpuConfig) -> Self {
        let kernels = match config.kernels {
            KernelChoice::Detect => Kernels::detect(),
            KernelChoice::Scalar => Kernels::scalar(),
        };
        CpuBackend {
            config,
            kernels,
            pool: ThreadPool::new(config.threads),
            tensors: Vec::new(),
            indices: Vec::new(),
            weights: Vec::new(),
            weight_memory: slab::Slabs::default(),
            caches: Vec::new(),
            q8: Vec::new(),
            q8k: Vec::new(),
            rope_angles: RefCell::default(),
            moe_scratch: moe::MoeScratch::default(),
        }
    }

    /// The instruction set of the kernel table in use.
    pub fn isa(&self) -> Isa {
        self.kernels.isa
    }

    /// The settings it was made with.
    pub fn config(&self) -> &CpuConfig {
        &self.config
    }

    fn tensor(&self, op: &'static str, id: TensorId) -> Result<Ref<'_, Tensor>> {
        self.tensors
            .get(id.0 as usize)
            .ok_or(ComputeError::UnknownHandle {
                op,
                kind: "tensor",
                id: id.0,
            })?
            .try_borrow()
            .map_err(|_| ComputeError::Aliased { op })
    }

    fn tensor_mut(&self, op: &'static str, id: TensorId) -> Result<RefMut<'_, Tensor>> {
        self.tensors
            .get(id.0 as usize)
            .ok_or(ComputeError::UnknownHandle {
                op,
                kind: "tensor",
                id: id.0,
            })?
            .try_borrow_mut()
            .map_err(|_| ComputeError::Aliased { op })
    }

    fn weight(&self, op: &'static str, id: WeightId) -> Result<&Weight> {
        self.weights
            .get(id.0 as usize)
            .ok_or(ComputeError::UnknownHandle {
                op,
                kind: "weight",
                id: id.0,
            })
    }

    fn vector(&self, op: &'static str, id: WeightId, cols: usize) -> Result<&[f32]> {
        let w = self.weight(op, id)?;
        match &w.vector {
            Some(v) if v.len() == cols => Ok(v),
            _ => Err(ComputeError::Shape {
                op,
                reason: format!(
                    "weight {:?} is [{} x {}], expected a vector of {cols}",
                    w.name, w.rows, w.cols
                ),
            }),
        }
    }

    fn index(&self, op: &'static str, id: IndexId, rows: usize) -> Result<&[u32]> {
        let v = self
            .indices
            .get(id.0 as usize)
            .ok_or(ComputeError::UnknownHandle {
                op,
                kind: "index",
                id: id.0,
            })?;
        v.get(..rows).ok_or_else(|| ComputeError::Shape {
            op,
            reason: format!("index {} has {} entries, {rows} rows asked", id.0, v.len()),
        })
    }

    fn run(&self, op: &'static str, f: &(dyn Fn() + Sync)) -> Result<()> {
        if self.pool.run(f) {
            Ok(())
        } else {
            Err(ComputeError::WorkerPanicked { op })
        }
    }

    /// Calls `f(r0, r1)` over disjoint ranges covering `0..rows`: on the pool when there are
    /// enough rows to share (prefill), on this thread otherwise (decode, where a pool run
    /// would cost more than the op).
    fn for_rows(
        &self,
        op: &'static str,
        rows: usize,
        f: impl Fn(usize, usize) + Sync,
    ) -> Result<()> {
        if rows < PARALLEL_ROWS || self.pool.n_threads() == 1 {
            f(0, rows);
            return Ok(());
        }
        let chunk = rows.div_ceil(self.pool.n_threads() * 4);
        let next = AtomicUsize::new(0);
        self.run(op, &|| for_chunks(rows, chunk, &next, &f))
    }
}

/// Rows from which the row-wise ops (norms, rope, activations, activation quantization) run
/// on the pool.
const PARALLEL_ROWS: usize = 8;

/// Values from which `read_rows` copies on the pool, and the pieces it copies them in.
const PARALLEL_COPY: usize = 1 << 14;
const COPY_CHUNK: usize = 1 << 13;

/// Splits `0..n` into chunks of `chunk` handed out through an atomic counter.
fn for_chunks(n: usize, chunk: usize, next: &AtomicUsize, mut f: impl FnMut(usize, usize)) {
    loop {
        let c = next.fetch_add(1, Ordering::Relaxed);
        let start = c * chunk;
        if start >= n {
            break;
        }
        f(start, (start + chunk).min(n));
    }
}

/// `n` zeros, allocated zeroed: the system hands out untouched pages that cost no resident
/// memory and no time until written (a KV cache for the whole context is mostly unused).
fn alloc_f32(what: &'static str, n: usize) -> Result<Vec<f32>> {
    alloc_zeroed(what, n)
}

/// A vector of `n` zero values of a type whose all-zero bit pattern is zero (`u8`, `f32`),
/// from `alloc_zeroed`, so its pages stay untouched until written.
fn alloc_zeroed<T: Zeroed>(what: &'static str, n: usize) -> Result<Vec<T>> {
    let err = || ComputeError::Alloc {
        what,
        bytes: n as u128 * std::mem::size_of::<T>() as u128,
    };
    let layout = std::alloc::Layout::array::<T>(n).map_err(|_| err())?;
    if layout.size() == 0 {
        return Ok(Vec::new());
    }
    // SAFETY: the layout has a non-zero size.
    let ptr = unsafe { std::alloc::alloc_zeroed(layout) } as *mut T;
    if ptr.is_null() {
        return Err(err());
    }
    // SAFETY: allocated by the global allocator with the layout of `n` `T`s, all bits zero,
    // which `Zeroed` promises is a valid `T`: a vector of length and capacity `n`.
    Ok(unsafe { Vec::from_raw_parts(ptr, n, n) })
}

/// Types for which all-zero bits are a valid value.
trait Zeroed: Copy {}
impl Zeroed for u8 {}
impl Zeroed for f32 {}

impl ComputeBackend for CpuBackend {
    fn name(&self) -> &'static str {
        "cpu"
    }

    fn upload_weight(&mut self, d: WeightDesc<'_>) -> Result<WeightId> {
        let kernels =
            *self
                .kernels
                .for_type(d.ty)
                .ok_or_else(|| ComputeError::UnsupportedType {
                    backend: "cpu",
                    name: d.name.to_string(),
                    ty: d.ty,
                })?;
        let row_bytes = d.row_bytes()?;
        let vector = if d.rows == 1 {
            let mut v = alloc_f32("weight vector", d.cols)?;
            (kernels.dequantize_row)(d.bytes, &mut v);
            Some(v)
        } else {
            None
        };
        // Matrices of a type with panel kernels are repacked; the rest is copied as it is.
        let panel = kernels.panel.filter(|_| vector.is_none());
        let len = panel.map_or(d.bytes.len(), |pk| pk.format.bytes(d.rows, d.cols));
        // Zeroed, untouched pages (on huge pages where Linux has them), written by the pool.
        let mut bytes = self.weight_memory.alloc(len)?;
        let (out, src) = (SharedOut(bytes.as_mut_ptr()), d.bytes);
        match panel {
            Some(pk) => {
                let (f, rows, cols) = (pk.format, d.rows, d.cols);
                let panel_bytes = len / rows.div_ceil(PANEL);
                self.for_rows("upload_weight", rows.div_ceil(PANEL), |p0, p1| {
                    let raw = &src[p0 * PANEL * row_bytes..(p1 * PANEL).min(rows) * row_bytes];
                    // SAFETY: panels p0..p1 belong to this range only, inside `bytes`.
                    let out = unsafe { out.slice(p0 * panel_bytes, (p1 - p0) * panel_bytes) };
                    f.repack(cols, raw, out);
                })?;
            }
            None => self.for_rows("upload_weight", d.rows, |r0, r1| {
                let n = (r1 - r0) * row_bytes;
                // SAFETY: rows r0..r1 belong to this range only, inside `bytes`.
                let out = unsafe { out.slice(r0 * row_bytes, n) };
                out.copy_from_slice(&src[r0 * row_bytes..][..n]);
            })?,
        }
        let kernels = TypeKernels { panel, ..kernels };
        self.weights.push(Weight {
            name: d.name.to_string(),
            rows: d.rows,
            cols: d.cols,
            row_bytes,
            bytes,
            kernels,
            vector,
        });
        Ok(WeightId(self.weights.len() as u32 - 1))
    }

    fn alloc_tensor(&mut self, rows: usize, cols: usize) -> Result<TensorId> {
        let n = rows.checked_mul(cols).ok_or(ComputeError::Alloc {
            what: "tensor",
            bytes: rows as u128 * cols as u128 * 4,
        })?;
        let data = alloc_f32("tensor", n)?;
        self.tensors.push(RefCell::new(Tensor { rows, cols, data }));
        Ok(TensorId(self.tensors.len() as u32 - 1))
    }

    fn alloc_index(&mut self, len: usize) -> Result<IndexId> {
        self.indices.push(vec![0; len]);
        Ok(IndexId(self.indices.len() as u32 - 1))
    }

    fn alloc_kv_cache(&mut self, cfg: KvCacheConfig) -> Result<KvCacheId> {
        self.alloc_kv_pool(cfg)
    }

    fn write_index(&mut self, dst: IndexId, data: &[u32]) -> Result<()> {
        let v = self
            .indices
            .get_mut(dst.0 as usize)
            .ok_or(ComputeError::UnknownHandle {
                op: "write_index",
                kind: "index",
                id: dst.0,
            })?;
        let n = v.len();
        v.get_mut(..data.len())
            .ok_or_else(|| ComputeError::Shape {
                op: "write_index",
                reason: format!("{} entries into an index of {n}", data.len()),
            })?
            .copy_from_slice(data);
        Ok(())
    }

    fn write_rows(&mut self, dst: TensorId, data: &[f32]) -> Result<()> {
        let mut t = self.tensor_mut("write_rows", dst)?;
        if !data.len().is_multiple_of(t.cols) || data.len() > t.data.len() {
            return Err(ComputeError::Shape {
                op: "write_rows",
                reason: format!(
                    "{} values into a [{} x {}] tensor",
                    data.len(),
                    t.rows,
                    t.cols
                ),
            });
        }
        t.data[..data.len()].copy_from_slice(data);
        Ok(())
    }

    fn read_rows(&mut self, src: TensorId, rows: usize, out: &mut [f32]) -> Result<()> {
        let t = self.tensor("read_rows", src)?;
        check_rows("read_rows", t.rows, rows, "source")?;
        let n = rows * t.cols;
        if out.len() != n {
            return Err(ComputeError::Shape {
                op: "read_rows",
                reason: format!("output holds {} values, {rows} rows need {n}", out.len()),
            });
        }
        // A large read (a vocabulary of logits) is copied by every thread: one copied Gemma 3's
        // 262k logits in 92-108 us, two in 60-67 us; SmolLM2's 49k, which every thread of the
        // LM head wrote a part of, 73-80 us on one, 57-68 us on two.
        if n < PARALLEL_COPY || self.pool.n_threads() == 1 {
            out.copy_from_slice(&t.data[..n]);
            return Ok(());
        }
        let (src, dst) = (&t.data[..n], SharedOut(out.as_mut_ptr()));
        let next = AtomicUsize::new(0);
        self.run("read_rows", &|| {
            for_chunks(n, COPY_CHUNK, &next, |i0, i1| {
                // SAFETY: elements i0..i1 of `out` (n long) belong to this chunk only.
                unsafe { dst.slice(i0, i1 - i0) }.copy_from_slice(&src[i0..i1]);
            })
        })
    }

    fn embed(&mut self, out: TensorId, table: WeightId, ids: IndexId, rows: usize) -> Result<()> {
        const OP: &str = "embed";
        let w = self.weight(OP, table)?;
        let ids = self.index(OP, ids, rows)?;
        let mut o = self.tensor_mut(OP, out)?;
        check_rows(OP, o.rows, rows, "output")?;
        check_cols(OP, o.cols, w.cols, "output")?;
        let cols = o.cols;
        let mut buf = Vec::new();
        for (r, &id) in ids.iter().enumerate() {
            if id as usize >= w.rows {
                return Err(ComputeError::BadIndex {
                    op: OP,
                    reason: format!("token id {id} is outside {:?} ({} rows)", w.name, w.rows),
                });
            }
            let row = w.gguf_row(id as usize, &mut buf);
            (w.kernels.dequantize_row)(row, &mut o.data[r * cols..(r + 1) * cols]);
        }
        Ok(())
    }

    fn gather_rows(
        &mut self,
        out: TensorId,
        src: TensorId,
        index: IndexId,
        rows: usize,
    ) -> Result<()> {
        const OP: &str = "gather_rows";
        let idx = self.index(OP, index, rows)?;
        let s = self.tensor(OP, src)?;
        let mut o = self.tensor_mut(OP, out)?;
        check_rows(OP, o.rows, rows, "output")?;
        check_cols(OP, o.cols, s.cols, "output")?;
        let c = s.cols;
        for (r, &i) in idx.iter().enumerate() {
            let i = i as usize;
            if i >= s.rows {
                return Err(ComputeError::BadIndex {
                    op: OP,
                    reason: format!("row {i} of a {}-row tensor", s.rows),
                });
            }
            o.data[r * c..(r + 1) * c].copy_from_slice(&s.data[i * c..(i + 1) * c]);
        }
        Ok(())
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
        let xt = self.tensor(OP, x)?;
        let mut o = self.tensor_mut(OP, out)?;
        check_rows(OP, xt.rows, rows, "input")?;
        check_rows(OP, o.rows, rows, "output")?;
        check_cols(OP, o.cols, xt.cols, "output")?;
        let c = xt.cols;
        let w = self.vector(OP, weight, c)?;
        let (optr, xs) = (SharedOut(o.data.as_mut_ptr()), &xt.data);
        self.for_rows(OP, rows, |r0, r1| {
            for r in r0..r1 {
                // SAFETY: output row r belongs to this range only, and r < rows <= its rows.
                let orow = unsafe { optr.slice(r * c, c) };
                ops::rms_norm_row(orow, &xs[r * c..(r + 1) * c], w, eps);
            }
        })
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
        let mut t = self.tensor_mut(OP, x)?;
        check_rows(OP, t.rows, rows, "input")?;
        let c = t.cols;
        if heads == 0 || !c.is_multiple_of(heads) {
            return Err(ComputeError::Shape {
                op: OP,
                reason: format!("{c} columns are not {heads} whole heads"),
            });
        }
        let w = self.vector(OP, weight, c / heads)?;
        let tptr = SharedOut(t.data.as_mut_ptr());
        self.for_rows(OP, rows, |r0, r1| {
            // SAFETY: rows r0..r1 belong to this range only, within the tensor's rows.
            let rs = unsafe { tptr.slice(r0 * c, (r1 - r0) * c) };
            ops::rms_norm_heads_row(rs, w, eps);
        })
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
        let xt = self.tensor(OP, x)?;
        let mut o = self.tensor_mut(OP, out)?;
        check_rows(OP, xt.rows, rows, "input")?;
        check_rows(OP, o.rows, rows, "output")?;
        check_cols(OP, o.cols, xt.cols, "output")?;
        let c = xt.cols;
        let (w, b) = (self.vector(OP, weight, c)?, self.vector(OP, bias, c)?);
        let (optr, xs) = (SharedOut(o.data.as_mut_ptr()), &xt.data);
        self.for_rows(OP, rows, |r0, r1| {
            for r in r0..r1 {
                // SAFETY: output row r belongs to this range only, and r < rows <= its rows.
                let orow = unsafe { optr.slice(r * c, c) };
                ops::layer_norm_row(orow, &xs[r * c..(r + 1) * c], w, b, eps);
            }
        })
    }

    fn matmul(&mut self, out: TensorId, x: TensorId, w: WeightId, rows: usize) -> Result<()> {
        self.matmul_group(x, &[(out, w)], rows)
    }

    fn matmul_group(
        &mut self,
        x: TensorId,
        outs: &[(TensorId, WeightId)],
        rows: usize,
    ) -> Result<()> {
        const OP: &str = "matmul";
        for &(out, w) in outs {
            let wt = self.weight(OP, w)?;
            let xt = self.tensor(OP, x)?;
            let o = self.tensor_mut(OP, out)?;
            check_rows(OP, xt.rows, rows, "input")?;
            check_rows(OP, o.rows, rows, "output")?;
            check_product(OP, xt.cols, o.cols, (&wt.name, wt.rows, wt.cols))?;
        }
        let mut q8 = std::mem::take(&mut self.q8);
        let mut q8k = std::mem::take(&mut self.q8k);
        let result = (|| {
            let xt = self.tensor(OP, x)?;
            let mut targets = Vec::with_capacity(outs.len());
            for &(out, w) in outs {
                targets.push((self.weight(OP, w)?, self.tensor_mut(OP, out)?));
            }
            let jobs: Vec<_> = targets
                .iter_mut()
                .map(|(w, o)| (*w, SharedOut(o.data.as_mut_ptr())))
                .collect();
            self.matmul_slices(&xt.data[..rows * xt.cols], &jobs, rows, &mut q8, &mut q8k)
        })();
        self.q8 = q8;
        self.q8k = q8k;
        result
    }

    fn add(&mut self, dst: TensorId, src: TensorId, rows: usize) -> Result<()> {
        const OP: &str = "add";
        let s = self.tensor(OP, src)?;
        let mut d = self.tensor_mut(OP, dst)?;
        check_rows(OP, s.rows, rows, "source")?;
        check_rows(OP, d.rows, rows, "destination")?;
        check_cols(OP, s.cols, d.cols, "source")?;
        let n = rows * d.cols;
        for (a, b) in d.data[..n].iter_mut().zip(&s.data[..n]) {
            *a += b;
        }
        Ok(())
    }

    fn add_bias(&mut self, dst: TensorId, bias: WeightId, rows: usize) -> Result<()> {
        const OP: &str = "add_bias";
        let mut d = self.tensor_mut(OP, dst)?;
        check_rows(OP, d.rows, rows, "destination")?;
        let c = d.cols;
        let b = self.vector(OP, bias, c)?;
        for row in d.data.chunks_exact_mut(c).take(rows) {
            for (a, v) in row.iter_mut().zip(b) {
                *a += v;
            }
        }
        Ok(())
    }

    fn mul(&mut self, dst: TensorId, src: TensorId, rows: usize) -> Result<()> {
        const OP: &str = "mul";
        let s = self.tensor(OP, src)?;
        let mut d = self.tensor_mut(OP, dst)?;
        check_rows(OP, s.rows, rows, "source")?;
        check_rows(OP, d.rows, rows, "destination")?;
        check_cols(OP, s.cols, d.cols, "source")?;
        let n = rows * d.cols;
        for (a, b) in d.data[..n].iter_mut().zip(&s.data[..n]) {
            *a *= b;
        }
        Ok(())
    }

    fn scale(&mut self, x: TensorId, factor: f32, rows: usize) -> Result<()> {
        const OP: &str = "scale";
        let mut t = self.tensor_mut(OP, x)?;
        check_rows(OP, t.rows, rows, "input")?;
        let n = rows * t.cols;
        for v in &mut t.data[..n] {
            *v *= factor;
        }
        Ok(())
    }

    fn rope(&mut self, x: TensorId, positions: IndexId, p: &RopeParams, rows: usize) -> Result<()> {
        const OP: &str = "rope";
        let pos = self.index(OP, positions, rows)?;
        let mut t = self.tensor_mut(OP, x)?;
        check_rows(OP, t.rows, rows, "input")?;
        check_cols(OP, t.cols, p.heads * p.head_dim, "input")?;
        p.validate()?;
        let c = t.cols;
        // The angles depend only on the positions: every layer's q and k reuse them.
        let mut angles = self.rope_angles.borrow_mut();
        let n = p.n_rot;
        if !angles.holds(pos, p) {
            let freqs = ops::rope_frequencies(p);
            angles.params = None;
            angles.positions.clear();
            angles.positions.extend_from_slice(pos);
            angles.cos_sin.resize(rows * n, 0.0);
            let aptr = SharedOut(angles.cos_sin.as_mut_ptr());
            self.for_rows(OP, rows, |r0, r1| {
                for (r, &ps) in pos.iter().enumerate().take(r1).skip(r0) {
                    // SAFETY: row r of the table belongs to this range only; r < rows.
                    ops::rope_angles(ps, p, &freqs, unsafe { aptr.slice(r * n, n) });
                }
            })?;
            angles.params = Some(angle_params(p));
        }
        let tptr = SharedOut(t.data.as_mut_ptr());
        let cos_sin = &angles.cos_sin;
        self.for_rows(OP, rows, |r0, r1| {
            for r in r0..r1 {
                // SAFETY: row r belongs to this range only, and r < rows <= its rows.
                let row = unsafe { tptr.slice(r * c, c) };
                ops::rope_row(row, p, &cos_sin[r * n..(r + 1) * n]);
            }
        })
    }

    fn attention(
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
        self.attention_paged(out, q, k, v, cache, index, p, rows)
    }

    fn moe(
        &mut self,
        out: TensorId,
        x: TensorId,
        router_logits: TensorId,
        experts: &[ExpertWeights],
        params: &MoeParams,
        rows: usize,
    ) -> Result<()> {
        self.moe_ffn(out, x, router_logits, experts, params, rows)
    }

    fn swiglu(&mut self, out: TensorId, gate: TensorId, up: TensorId, rows: usize) -> Result<()> {
        const OP: &str = "swiglu";
        let g = self.tensor(OP, gate)?;
        let u = self.tensor(OP, up)?;
        let mut o = self.tensor_mut(OP, out)?;
        for (t, what) in [(&*g, "gate"), (&*u, "up"), (&*o, "out")] {
            check_rows(OP, t.rows, rows, what)?;
            check_cols(OP, t.cols, g.cols, what)?;
        }
        let (c, swiglu) = (g.cols, self.kernels.swiglu);
        let (optr, gs, us) = (SharedOut(o.data.as_mut_ptr()), &g.data, &u.data);
        self.for_rows(OP, rows, |r0, r1| {
            let n = (r1 - r0) * c;
            // SAFETY: rows r0..r1 of the output belong to this range only, within its rows.
            let orows = unsafe { optr.slice(r0 * c, n) };
            swiglu(orows, &gs[r0 * c..][..n], &us[r0 * c..][..n]);
        })
    }

    fn gelu(&mut self, x: TensorId, rows: usize) -> Result<()> {
        const OP: &str = "gelu";
        let mut t = self.tensor_mut(OP, x)?;
        check_rows(OP, t.rows, rows, "input")?;
        let (c, gelu) = (t.cols, self.kernels.gelu);
        let tptr = SharedOut(t.data.as_mut_ptr());
        self.for_rows(OP, rows, |r0, r1| {
            // SAFETY: rows r0..r1 belong to this range only, within the tensor's rows.
            gelu(unsafe { tptr.slice(r0 * c, (r1 - r0) * c) });
        })
    }
}
