//! [`CudaBackend`]: the `ComputeBackend` ops as NVRTC-compiled kernels on one CUDA stream.
//!
//! Every buffer is a plain device allocation (no managed memory, no host copies of weights).
//! Kernels receive raw device addresses, so one op may read and write different handles of
//! the same kind without borrow juggling; the handles' owners ([`CudaSlice`]s) live in this
//! struct for as long as the backend does. All work is ordered on the one stream; only
//! [`ComputeBackend::read_rows`] (and [`CudaBackend::argmax`], [`CudaBackend::synchronize`])
//! wait for it.
//!
//! Ops do not launch their kernels at once: they queue them (see [`crate::queue`]), so that
//! an op can fuse into the launch before it and a repeated step (a decode step) is replayed
//! as a CUDA graph. The queue is flushed, in order, before every copy between host and
//! device. Index vectors (token ids, positions, slots) live in one device arena with a host
//! mirror: `write_index` only writes the mirror, and the flush uploads the changed range with
//! one copy before the step's kernels.

use std::collections::HashMap;

use cudarc::driver::DriverError;
use worker_compute::{
    AttentionParams, ComputeBackend, ComputeError, IndexId, KvCacheConfig, KvCacheId, KvIndex,
    KvLayout, KvType, Linear, Result, RopeMode, RopeParams, TensorId, WeightDesc, WeightId,
};
use worker_gguf::GgmlType;

use crate::config::{CudaConfig, Experimental};
use crate::device::{Buffer, Device, Gpu};
use crate::error::CudaError;
use crate::gemm::{MatmulDims, TILE_ELEMENTS};
use crate::kernels;
use crate::queue::{Arg, Args, Launch, LaunchStats};

/// Weight types with embedding and matmul kernels, and the kernel-name suffix of each.
pub const WEIGHT_TYPES: &[(GgmlType, &str)] = &[
    (GgmlType::F32, "f32"),
    (GgmlType::F16, "f16"),
    (GgmlType::BF16, "bf16"),
    (GgmlType::Q4_0, "q4_0"),
    (GgmlType::Q4_1, "q4_1"),
    (GgmlType::Q5_0, "q5_0"),
    (GgmlType::Q5_1, "q5_1"),
    (GgmlType::Q8_0, "q8_0"),
    (GgmlType::Q4_K, "q4_k"),
    (GgmlType::Q5_K, "q5_k"),
    (GgmlType::Q6_K, "q6_k"),
    (GgmlType::IQ4_NL, "iq4_nl"),
    (GgmlType::IQ4_XS, "iq4_xs"),
    (GgmlType::Q2_K, "q2_k"),
    (GgmlType::Q3_K, "q3_k"),
];

/// Weight types whose kernels have not run on a device yet: uploaded only with
/// [`Experimental::types`].
const EXPERIMENTAL_TYPES: &[GgmlType] = &[
    GgmlType::IQ4_NL,
    GgmlType::IQ4_XS,
    GgmlType::Q2_K,
    GgmlType::Q3_K,
];

/// Largest head width the attention kernel handles (`ATT_MAX_DIM` in attention.cu).
const MAX_HEAD_DIM: usize = 256;
/// Elements of a row a mat-vec warp stages in shared memory at once (32 chunks of 32);
/// at most `MV_SEG_MAX` bytes in matvec.cu (4096: f32).
const MATVEC_SEGMENT: usize = 1024;
/// Zero bytes after every weight's data (the mat-vec's aligned reads may run 15 past it).
const WEIGHT_PAD: usize = 16;
/// Threads of a decode attention block (`AD_WARPS` warps in attention.cu).
const AD_THREADS: u32 = 4 * 32;
/// Positions of a decode attention block (`AD_SPAN` in attention.cu).
const AD_SPAN: usize = 128;
/// Query rows of a tiled prefill attention block (`AP_BLOCK_ROWS` in attention.cu).
const AP_BLOCK_ROWS: usize = 16;
/// Widest head of the tiled prefill attention (`AP_MAX_DIM` in attention.cu).
const AP_MAX_DIM: usize = 128;
/// Entries of the index arena (one device allocation, uploaded with one copy per step);
/// index vectors beyond it get their own allocation.
const INDEX_ARENA: usize = 1 << 20;

pub(crate) struct Tensor {
    pub(crate) rows: usize,
    pub(crate) cols: usize,
    pub(crate) ptr: u64,
    pub(crate) buf: Buffer,
}

/// An index vector: its host mirror is `index_host[off..off + len]`; on the device it sits
/// at the same offset of the arena, or in `own` when the arena was full.
pub(crate) struct Index {
    pub(crate) off: usize,
    pub(crate) len: usize,
    pub(crate) ptr: u64,
    pub(crate) own: Option<Buffer>,
}

pub(crate) struct Weight {
    pub(crate) name: String,
    pub(crate) rows: usize,
    pub(crate) cols: usize,
    pub(crate) row_bytes: usize,
    /// Bytes of [`MATVEC_SEGMENT`] elements of a row (what a mat-vec warp stages at once).
    pub(crate) seg_bytes: usize,
    /// Stored as an f32 vector (norm weights, biases), dequantized at upload.
    pub(crate) vector: bool,
    /// The kernels of its storage type: embed, matmul, matvec, matvec_glu, matvec_wide,
    /// matvec3, dequant.
    pub(crate) funcs: [usize; 7],
    pub(crate) ptr: u64,
}

pub(crate) struct KvCache {
    pub(crate) cfg: KvCacheConfig,
    pub(crate) k: u64,
    pub(crate) v: u64,
    /// Partial results of the split decode attention: (buffer, floats).
    pub(crate) partials: Option<(Buffer, usize)>,
}

/// The CUDA implementation of [`ComputeBackend`], on a [`Gpu`].
///
/// The device is a type parameter only so that the crate's tests can run the same op code
/// on a device that records launches instead of running them; outside them it is the GPU.
pub struct CudaBackend<D = Gpu> {
    pub(crate) dev: D,
    /// Every kernel's name, by kernel id.
    pub(crate) names: Vec<String>,
    pub(crate) func_ids: HashMap<String, usize>,
    /// Launches recorded since the last flush.
    pub(crate) pending: Vec<Launch>,
    pub(crate) experimental: Experimental,
    pub(crate) allocated: u64,
    pub(crate) tensors: Vec<Tensor>,
    pub(crate) indices: Vec<Index>,
    pub(crate) index_host: Vec<u32>,
    pub(crate) index_arena: Option<Buffer>,
    /// The arena range written since the last upload.
    pub(crate) index_dirty: Option<(usize, usize)>,
    pub(crate) weights: Vec<Weight>,
    pub(crate) caches: Vec<KvCache>,
    /// The device argmax's output: (buffer, entries).
    pub(crate) argmax_out: Option<(Buffer, usize)>,
    /// The f32 tile a prefill matmul dequantizes its weights into: (buffer, floats).
    pub(crate) gemm_tile: Option<(Buffer, usize)>,
}

/// A failed launch or copy, as the trait's error.
fn op_err(op: &'static str) -> impl FnOnce(DriverError) -> ComputeError {
    move |e| ComputeError::Device {
        op,
        source: Box::new(e),
    }
}

pub(crate) fn shape(op: &'static str, reason: String) -> ComputeError {
    ComputeError::Shape { op, reason }
}

pub(crate) fn i32_of(op: &'static str, v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| shape(op, format!("{v} does not fit a kernel's i32 argument")))
}

/// Grid and block of a launch.
#[derive(Clone, Copy)]
pub(crate) struct Dims {
    grid: (u32, u32, u32),
    block: (u32, u32, u32),
}

pub(crate) fn grid_1d(n: usize) -> Dims {
    Dims {
        grid: (n.div_ceil(256) as u32, 1, 1),
        block: (256, 1, 1),
    }
}

pub(crate) fn grid(x: usize, y: usize, threads: u32) -> Dims {
    Dims {
        grid: (x as u32, y as u32, 1),
        block: (threads, 1, 1),
    }
}

impl CudaBackend {
    /// Opens device `config.device`, compiles the kernels with NVRTC and loads them.
    /// Without a driver or a device this is [`CudaError::NoDevice`], never a panic.
    pub fn new(config: CudaConfig) -> std::result::Result<Self, CudaError> {
        let gpu = Gpu::open(&config)?;
        Ok(CudaBackend::on(gpu, config.experimental))
    }

    /// The device's name, e.g. `"NVIDIA H200"`.
    pub fn device_name(&self) -> String {
        self.dev.name()
    }

    /// The `compute_XY` architecture the kernels were compiled for (`"90"`).
    pub fn arch(&self) -> &str {
        &self.dev.arch
    }

    /// Free and total device memory in bytes.
    pub fn vram(&self) -> std::result::Result<(u64, u64), CudaError> {
        self.dev.mem_info()
    }

    /// [`CudaError::InsufficientVram`] unless `required` more bytes fit in free VRAM.
    pub fn check_vram(&self, required: u64) -> std::result::Result<(), CudaError> {
        let (free, _) = self.vram()?;
        if required > free {
            return Err(CudaError::InsufficientVram {
                required,
                available: free,
                device: self.dev.ordinal,
            });
        }
        Ok(())
    }

    /// Kernel launch counters since start-up (the benchmark prints them per decode step).
    pub fn launch_stats(&self) -> LaunchStats {
        self.dev.stats()
    }

    /// Times every `read_rows` (a model step's end): device time between events around the
    /// flush and read-out, host time inside it, host time between steps. See [`LaunchStats`].
    pub fn set_step_timing(&mut self, on: bool) -> Result<()> {
        self.dev
            .set_step_timing(on)
            .map_err(op_err("set_step_timing"))
    }

    /// Starts timing every kernel with events (launches go one by one from now on, no
    /// graphs); [`CudaBackend::kernel_profile`] reads the totals. For `bench --profile`.
    pub fn start_profile(&mut self) -> Result<()> {
        self.flush("start_profile")?;
        self.dev.queue.start_profile();
        Ok(())
    }

    /// Per kernel name: (launches, total milliseconds) since [`CudaBackend::start_profile`],
    /// the most expensive first.
    pub fn kernel_profile(&self) -> Vec<(String, u64, f64)> {
        let mut v: Vec<(String, u64, f64)> = self
            .dev
            .queue
            .profile()
            .iter()
            .enumerate()
            .filter(|(_, &(n, _))| n > 0)
            .map(|(i, &(n, ms))| (self.names.get(i).cloned().unwrap_or_default(), n, ms))
            .collect();
        v.sort_by(|a, b| b.2.total_cmp(&a.2));
        v
    }
}

impl<D: Device> CudaBackend<D> {
    /// The backend on `dev`, whose kernels are [`kernels::names`] by position.
    pub(crate) fn on(dev: D, experimental: Experimental) -> Self {
        let names = kernels::names();
        let func_ids = names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.clone(), i))
            .collect();
        CudaBackend {
            dev,
            names,
            func_ids,
            pending: Vec::new(),
            experimental,
            allocated: 0,
            tensors: Vec::new(),
            indices: Vec::new(),
            index_host: Vec::new(),
            index_arena: None,
            index_dirty: None,
            weights: Vec::new(),
            caches: Vec::new(),
            argmax_out: None,
            gemm_tile: None,
        }
    }

    /// Whether weights of type `ty` can be uploaded (its kernels exist and, for the types in
    /// [`EXPERIMENTAL_TYPES`], [`Experimental::types`] is on).
    pub fn supports(&self, ty: GgmlType) -> bool {
        WEIGHT_TYPES.iter().any(|(t, _)| *t == ty)
            && (self.experimental.types || !EXPERIMENTAL_TYPES.contains(&ty))
    }

    /// Bytes this backend has allocated on the device.
    pub fn allocated_bytes(&self) -> u64 {
        self.allocated
    }

    /// Waits for all queued work (for timings).
    pub fn synchronize(&mut self) -> Result<()> {
        self.flush("synchronize")?;
        self.dev.synchronize().map_err(op_err("synchronize"))
    }

    /// Uploads the index range written since the last flush, then submits the queued
    /// launches in order. Called before every host interaction.
    fn flush(&mut self, op: &'static str) -> Result<()> {
        if let (Some((lo, hi)), Some(arena)) = (self.index_dirty, self.index_arena) {
            self.index_dirty = None;
            let bytes = bytemuck::cast_slice(&self.index_host[lo..hi]);
            self.dev.upload(arena, lo * 4, bytes).map_err(op_err(op))?;
        }
        let launches = std::mem::take(&mut self.pending);
        self.dev.run(launches).map_err(op_err(op))
    }

    /// The index of the largest value of each of the first `rows` rows of `src`, computed on
    /// the device, so that only token ids cross the bus.
    pub fn argmax(&mut self, src: TensorId, rows: usize) -> Result<Vec<u32>> {
        const OP: &str = "argmax";
        let (sp, cols, srows) = {
            let t = self.tensor(OP, src)?;
            (t.ptr, t.cols, t.rows)
        };
        check_rows(OP, srows, rows, "source")?;
        if rows == 0 {
            return Ok(Vec::new());
        }
        let need = match &self.argmax_out {
            Some((_, n)) => *n < rows,
            None => true,
        };
        if need {
            if let Some((old, _)) = self.argmax_out.take() {
                self.dev.free(old);
            }
            let buf = self.alloc::<u32>("argmax output", rows)?;
            self.argmax_out = Some((buf, rows));
        }
        let Some(op) = self.argmax_out.as_ref().map(|(b, _)| b.ptr) else {
            return Err(ComputeError::Alloc {
                what: "argmax output",
                bytes: rows as u128 * 4,
            });
        };
        let cfg = grid(rows, 1, 256);
        let args = [Arg::P(op), Arg::P(sp), Arg::I(i32_of(OP, cols)?)];
        self.launch(OP, "argmax_f32", cfg, &args)?;
        self.flush(OP)?;
        let Some((buf, _)) = self.argmax_out else {
            return Err(ComputeError::Alloc {
                what: "argmax output",
                bytes: rows as u128 * 4,
            });
        };
        let mut out = vec![0u32; rows];
        self.dev
            .download(buf, bytemuck::cast_slice_mut(&mut out[..]))
            .map_err(op_err(OP))?;
        self.dev.synchronize().map_err(op_err(OP))?;
        Ok(out)
    }

    /// A zeroed device allocation of `n` elements of `T` (at least one).
    fn alloc<T>(&mut self, what: &'static str, n: usize) -> Result<Buffer> {
        let size = std::mem::size_of::<T>();
        let bytes = n as u128 * size as u128;
        let oom = |e: Option<DriverError>| {
            let reason = e.map_or_else(|| "too large".to_string(), |e| e.to_string());
            tracing::error!(what, bytes = bytes as u64, error = %reason, "VRAM_OOM: device allocation failed");
            ComputeError::Alloc { what, bytes }
        };
        let len = usize::try_from(bytes).map_err(|_| oom(None))?;
        let buf = self
            .dev
            .alloc(what, len.max(size))
            .map_err(|e| oom(Some(e)))?;
        self.allocated += bytes as u64;
        Ok(buf)
    }

    fn func_id(&self, op: &'static str, name: &str) -> Result<usize> {
        self.func_ids
            .get(name)
            .copied()
            .ok_or_else(|| ComputeError::Unsupported {
                op,
                reason: format!("kernel {name} is not loaded"),
            })
    }

    /// Queues a launch (the argument list must match the kernel's C signature).
    pub(crate) fn launch(
        &mut self,
        op: &'static str,
        name: &str,
        dims: Dims,
        args: &[Arg],
    ) -> Result<()> {
        let func = self.func_id(op, name)?;
        self.launch_func(op, func, dims, args)
    }

    /// Queues a launch of a function looked up before (the hot path: no name lookup).
    pub(crate) fn launch_func(
        &mut self,
        op: &'static str,
        func: usize,
        dims: Dims,
        args: &[Arg],
    ) -> Result<()> {
        let args = Args::new(args).ok_or_else(|| ComputeError::Unsupported {
            op,
            reason: format!("kernel {func} takes more arguments than the launch queue holds"),
        })?;
        self.pending.push(Launch {
            func,
            grid: dims.grid,
            block: dims.block,
            args,
        });
        Ok(())
    }

    /// The prefill matmul through cuBLAS (see [`crate::gemm`]): each tile of weight rows is
    /// dequantized to f32, then multiplied into its columns of `out`. Launches queued before
    /// are flushed first, so everything stays in order on the one stream.
    pub(crate) fn matmul_gemm(&mut self, out: u64, x: u64, w: WeightId, rows: usize) -> Result<()> {
        const OP: &str = "matmul";
        let (wp, n, k, row_bytes, dequant) = {
            let wt = self.weight(OP, w)?;
            (wt.ptr, wt.rows, wt.cols, wt.row_bytes, wt.funcs[6])
        };
        let tile_floats = |n: usize, k: usize| (TILE_ELEMENTS / k).clamp(1, n) * k;
        let tile_rows = tile_floats(n, k) / k;
        if self.gemm_tile.as_ref().is_none_or(|t| t.1 < tile_rows * k) {
            // Sized once for the largest tile of any weight uploaded so far.
            let floats = self
                .weights
                .iter()
                .filter(|w| !w.vector)
                .map(|w| tile_floats(w.rows, w.cols))
                .fold(tile_rows * k, usize::max);
            if let Some((old, _)) = self.gemm_tile.take() {
                self.dev.free(old);
            }
            let buf = self.alloc::<f32>("matmul weight tile", floats)?;
            self.gemm_tile = Some((buf, floats));
        }
        let tile = self.gemm_tile.as_ref().map_or(0, |t| t.0.ptr);
        let (rows_i, n_i, k_i) = (i32_of(OP, rows)?, i32_of(OP, n)?, i32_of(OP, k)?);
        // cuBLAS runs on this thread's current context.
        self.dev.bind().map_err(op_err(OP))?;
        for start in (0..n).step_by(tile_rows) {
            let tn = tile_rows.min(n - start);
            let args = [
                Arg::P(tile),
                Arg::P(wp + (start * row_bytes) as u64),
                Arg::I(k_i),
                Arg::L(row_bytes as i64),
            ];
            self.launch_func(OP, dequant, grid(tn, 1, 256), &args)?;
            self.flush(OP)?;
            let Some(blas) = self.dev.blas() else {
                return Err(ComputeError::Unsupported {
                    op: OP,
                    reason: "cuBLAS is not loaded".into(),
                });
            };
            // SAFETY: `tile` holds tn x k floats, `x` rows x k, `out` rows x n, all live
            // allocations of this backend, used in order on the stream the handle is bound to.
            unsafe {
                blas.matmul_tf32(
                    out + start as u64 * 4,
                    x,
                    tile,
                    MatmulDims {
                        rows: rows_i,
                        n: i32_of(OP, tn)?,
                        k: k_i,
                        ldo: n_i,
                    },
                )
            }
            .map_err(|e| ComputeError::Device {
                op: OP,
                source: Box::new(e),
            })?;
        }
        Ok(())
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

    fn index(&self, op: &'static str, id: IndexId, rows: usize) -> Result<(&[u32], u64)> {
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
    fn pair(
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

    /// Checks `swiglu(out, gate, up)` over `rows` rows: `out` apart from both inputs, all three
    /// of one shape. Returns the addresses (out, gate, up) and the width.
    pub(crate) fn swiglu_operands(
        &self,
        op: &'static str,
        out: TensorId,
        gate: TensorId,
        up: TensorId,
        rows: usize,
    ) -> Result<(u64, u64, u64, usize)> {
        if out == gate || out == up {
            return Err(ComputeError::Aliased { op });
        }
        let (g, u, o) = (
            self.tensor(op, gate)?,
            self.tensor(op, up)?,
            self.tensor(op, out)?,
        );
        for (t, what) in [(g, "gate"), (u, "up"), (o, "out")] {
            check_rows(op, t.rows, rows, what)?;
            check_cols(op, t.cols, g.cols, what)?;
        }
        Ok((o.ptr, g.ptr, u.ptr, g.cols))
    }

    /// `out = silu(gate) * up` element-wise (`swiglu_f32`).
    pub(crate) fn launch_swiglu(
        &mut self,
        op: &'static str,
        out: TensorId,
        gate: TensorId,
        up: TensorId,
        rows: usize,
    ) -> Result<()> {
        let (o, g, u, cols) = self.swiglu_operands(op, out, gate, up, rows)?;
        self.elementwise(
            op,
            "swiglu_f32",
            rows * cols,
            vec![Arg::P(o), Arg::P(g), Arg::P(u)],
        )
    }

    /// Checks a rope of `x` over `rows` rows with `p`.
    fn rope_operand(
        &self,
        op: &'static str,
        x: TensorId,
        positions: IndexId,
        p: &RopeParams,
        rows: usize,
    ) -> Result<RopeOperand> {
        let (_, pp) = self.index(op, positions, rows)?;
        let t = self.tensor(op, x)?;
        check_rows(op, t.rows, rows, "input")?;
        check_cols(op, t.cols, p.heads * p.head_dim, "input")?;
        p.validate()?;
        if p.yarn.is_some() {
            return Err(ComputeError::Unsupported {
                op,
                reason: "YaRN rope scaling has no CUDA kernel yet".into(),
            });
        }
        let live = !(rows == 0 || p.n_rot == 0 || p.heads == 0);
        if live && p.heads > 65_535 {
            return Err(shape(op, format!("{} heads", p.heads)));
        }
        Ok(RopeOperand {
            x: t.ptr,
            positions: pp,
            cols: i32_of(op, t.cols)?,
            p: *p,
            rows,
            live,
        })
    }

    /// One `rope_f32` launch over `a`'s heads and, when given, `b`'s (at `a`'s positions).
    fn launch_rope(
        &mut self,
        op: &'static str,
        a: &RopeOperand,
        b: Option<&RopeOperand>,
    ) -> Result<()> {
        let p = &a.p;
        let (x2, cols2, heads2) = b.map_or((0, 0, 0), |b| (b.x, b.cols, b.p.heads));
        let args = [
            Arg::P(a.x),
            Arg::P(a.positions),
            Arg::I(a.cols),
            Arg::I(i32_of(op, p.head_dim)?),
            Arg::I(i32_of(op, p.n_rot)?),
            Arg::F(p.base),
            Arg::F(p.freq_scale),
            Arg::I(i32::from(p.mode == RopeMode::Neox)),
            Arg::I(i32_of(op, p.heads)?),
            Arg::P(x2),
            Arg::I(cols2),
        ];
        self.launch(op, "rope_f32", grid(a.rows, p.heads + heads2, 64), &args)
    }

    fn elementwise(
        &mut self,
        op: &'static str,
        name: &str,
        n: usize,
        args: Vec<Arg>,
    ) -> Result<()> {
        if n == 0 {
            return Ok(());
        }
        let mut args = args;
        args.push(Arg::L(n as i64));
        self.launch(op, name, grid_1d(n), &args)
    }
}

pub(crate) fn check_rows(op: &'static str, have: usize, rows: usize, what: &str) -> Result<()> {
    if rows > have {
        return Err(shape(op, format!("{what} holds {have} rows, {rows} asked")));
    }
    Ok(())
}

pub(crate) fn check_cols(op: &'static str, got: usize, want: usize, what: &str) -> Result<()> {
    if got != want {
        return Err(shape(
            op,
            format!("{what} has {got} columns, expected {want}"),
        ));
    }
    Ok(())
}

/// A validated operand of a rope launch.
#[derive(Clone, Copy)]
struct RopeOperand {
    x: u64,
    positions: u64,
    cols: i32,
    p: RopeParams,
    rows: usize,
    /// Whether there is anything to rotate.
    live: bool,
}

impl<D: Device> ComputeBackend for CudaBackend<D> {
    fn name(&self) -> &'static str {
        "cuda"
    }

    fn allocated_bytes(&self) -> Option<u64> {
        Some(self.allocated)
    }

    fn upload_weight(&mut self, d: WeightDesc<'_>) -> Result<WeightId> {
        let bad = |reason: String| ComputeError::BadWeight {
            name: d.name.to_string(),
            reason,
        };
        let suffix = WEIGHT_TYPES
            .iter()
            .find(|(t, _)| *t == d.ty)
            .filter(|_| self.supports(d.ty))
            .map(|&(_, s)| s)
            .ok_or_else(|| ComputeError::UnsupportedType {
                backend: "cuda",
                name: d.name.to_string(),
                ty: d.ty,
            })?;
        if d.rows == 0 || d.cols == 0 {
            return Err(bad(format!("empty shape [{} x {}]", d.rows, d.cols)));
        }
        let row_bytes = d.ty.bytes_for(d.cols as u64).ok_or_else(|| {
            bad(format!(
                "row length {} is not a multiple of the {} block size {}",
                d.cols,
                d.ty,
                d.ty.block_size()
            ))
        })? as usize;
        let want = row_bytes.checked_mul(d.rows);
        if want != Some(d.bytes.len()) {
            return Err(bad(format!(
                "{} bytes for [{} x {}] {}, expected {want:?}",
                d.bytes.len(),
                d.rows,
                d.cols,
                d.ty
            )));
        }
        i32_of("upload_weight", d.cols)?;
        i32_of("upload_weight", d.rows)?;
        self.flush("upload_weight")?;
        // The mat-vec reads rows in 16-byte aligned pieces, up to 15 bytes past the last
        // row's end: every weight allocation has WEIGHT_PAD zero bytes after its data.
        let (buf, suffix, row_bytes, vector, seg_bytes) = if d.rows == 1 {
            // Vectors (norm weights, biases) are tiny and read by every row: keep f32.
            let mut v = vec![0f32; d.cols];
            worker_gguf::dequantize(d.ty, d.bytes, &mut v).map_err(|e| bad(e.to_string()))?;
            let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
            let buf = self.alloc::<u8>("weight", bytes.len() + WEIGHT_PAD)?;
            self.dev
                .upload(buf, 0, &bytes)
                .map_err(op_err("upload_weight"))?;
            (buf, "f32", d.cols * 4, true, MATVEC_SEGMENT * 4)
        } else {
            let buf = self.alloc::<u8>("weight", d.bytes.len() + WEIGHT_PAD)?;
            self.dev
                .upload(buf, 0, d.bytes)
                .map_err(op_err("upload_weight"))?;
            let seg = d.ty.bytes_for(MATVEC_SEGMENT as u64).unwrap_or(0) as usize;
            (buf, suffix, row_bytes, false, seg)
        };
        let ptr = buf.ptr;
        let mut funcs = [0; 7];
        let kinds = [
            "embed",
            "matmul",
            "matvec",
            "matvec_glu",
            "matvec_wide",
            "matvec3",
            "dequant",
        ];
        for (f, kind) in funcs.iter_mut().zip(kinds) {
            *f = self.func_id("upload_weight", &format!("{kind}_{suffix}"))?;
        }
        self.weights.push(Weight {
            funcs,
            name: d.name.to_string(),
            rows: d.rows,
            cols: d.cols,
            row_bytes,
            seg_bytes,
            vector,
            ptr,
        });
        Ok(WeightId::from_raw(self.weights.len() as u32 - 1))
    }

    fn alloc_tensor(&mut self, rows: usize, cols: usize) -> Result<TensorId> {
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

    fn alloc_index(&mut self, len: usize) -> Result<IndexId> {
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

    fn kv_layout(&self) -> KvLayout {
        KvLayout::Slots
    }

    fn kv_storage(&self, _requested: KvType) -> KvType {
        // The attention kernels read f16 entries and nothing else.
        KvType::F16
    }

    fn alloc_kv_cache(&mut self, cfg: KvCacheConfig) -> Result<KvCacheId> {
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

    fn write_index(&mut self, dst: IndexId, data: &[u32]) -> Result<()> {
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

    fn write_rows(&mut self, dst: TensorId, data: &[f32]) -> Result<()> {
        const OP: &str = "write_rows";
        let t = self
            .tensors
            .get_mut(dst.raw() as usize)
            .ok_or(ComputeError::UnknownHandle {
                op: OP,
                kind: "tensor",
                id: dst.raw(),
            })?;
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

    fn read_rows(&mut self, src: TensorId, rows: usize, out: &mut [f32]) -> Result<()> {
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

    fn embed(&mut self, out: TensorId, table: WeightId, ids: IndexId, rows: usize) -> Result<()> {
        const OP: &str = "embed";
        let w = self.weight(OP, table)?;
        let (host, ip) = self.index(OP, ids, rows)?;
        let o = self.tensor(OP, out)?;
        check_rows(OP, o.rows, rows, "output")?;
        check_cols(OP, o.cols, w.cols, "output")?;
        if let Some(&id) = host.iter().find(|&&id| id as usize >= w.rows) {
            return Err(ComputeError::BadIndex {
                op: OP,
                reason: format!("token id {id} is outside {:?} ({} rows)", w.name, w.rows),
            });
        }
        if rows == 0 {
            return Ok(());
        }
        let func = w.funcs[0];
        let args = [
            Arg::P(o.ptr),
            Arg::P(w.ptr),
            Arg::P(ip),
            Arg::I(i32_of(OP, w.cols)?),
            Arg::L(w.row_bytes as i64),
        ];
        self.launch_func(OP, func, grid(rows, 1, 256), &args)
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
        let (host, ip) = self.index(OP, index, rows)?;
        let s = self.tensor(OP, src)?;
        let o = self.tensor(OP, out)?;
        check_rows(OP, o.rows, rows, "output")?;
        check_cols(OP, o.cols, s.cols, "output")?;
        if let Some(&i) = host.iter().find(|&&i| i as usize >= s.rows) {
            return Err(ComputeError::BadIndex {
                op: OP,
                reason: format!("row {i} of a {}-row tensor", s.rows),
            });
        }
        if rows == 0 {
            return Ok(());
        }
        let args = [
            Arg::P(o.ptr),
            Arg::P(s.ptr),
            Arg::P(ip),
            Arg::I(i32_of(OP, s.cols)?),
        ];
        self.launch(OP, "gather_rows_f32", grid(rows, 1, 256), &args)
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
        let (op, xp, cols) = self.pair(OP, out, x, rows)?;
        let wp = self.vector(OP, weight, cols)?;
        if rows == 0 {
            return Ok(());
        }
        let args = [
            Arg::P(op),
            Arg::P(xp),
            Arg::P(wp),
            Arg::F(eps),
            Arg::I(i32_of(OP, cols)?),
        ];
        self.launch(OP, "rms_norm_f32", grid(rows, 1, 256), &args)
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
        if heads == 0 || !t.cols.is_multiple_of(heads) {
            return Err(shape(
                OP,
                format!("{} columns are not {heads} whole heads", t.cols),
            ));
        }
        let (xp, hd) = (t.ptr, t.cols / heads);
        let wp = self.vector(OP, weight, hd)?;
        if rows == 0 {
            return Ok(());
        }
        // The row kernel over `rows * heads` rows of one head each, in place: every thread
        // reads back only the elements it writes.
        let args = [
            Arg::P(xp),
            Arg::P(xp),
            Arg::P(wp),
            Arg::F(eps),
            Arg::I(i32_of(OP, hd)?),
        ];
        self.launch(OP, "rms_norm_f32", grid(rows * heads, 1, 256), &args)
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
        let (op, xp, cols) = self.pair(OP, out, x, rows)?;
        let wp = self.vector(OP, weight, cols)?;
        let bp = self.vector(OP, bias, cols)?;
        if rows == 0 {
            return Ok(());
        }
        let args = [
            Arg::P(op),
            Arg::P(xp),
            Arg::P(wp),
            Arg::P(bp),
            Arg::F(eps),
            Arg::I(i32_of(OP, cols)?),
        ];
        self.launch(OP, "layer_norm_f32", grid(rows, 1, 256), &args)
    }

    fn matmul(&mut self, out: TensorId, x: TensorId, w: WeightId, rows: usize) -> Result<()> {
        const OP: &str = "matmul";
        let p = self.product(OP, out, x, w, rows)?;
        if rows == 0 {
            return Ok(());
        }
        self.launch_product(OP, p, rows, 0)
    }

    fn matmul_group(
        &mut self,
        x: TensorId,
        outs: &[(TensorId, WeightId)],
        rows: usize,
    ) -> Result<()> {
        let group: Vec<Linear> = outs
            .iter()
            .map(|&(out, weight)| Linear {
                out,
                weight,
                bias: None,
            })
            .collect();
        self.linear_group("matmul_group", x, &group, rows)
    }

    fn linear(&mut self, x: TensorId, outs: &[Linear], rows: usize) -> Result<()> {
        self.linear_group("linear", x, outs, rows)
    }

    fn matmul_swiglu(
        &mut self,
        out: TensorId,
        x: TensorId,
        gate: (TensorId, WeightId),
        up: (TensorId, WeightId),
        rows: usize,
    ) -> Result<()> {
        self.gate_up_swiglu(out, x, gate, up, rows)
    }

    fn add(&mut self, dst: TensorId, src: TensorId, rows: usize) -> Result<()> {
        const OP: &str = "add";
        let (d, s, cols) = self.pair(OP, dst, src, rows)?;
        if rows * cols == 0 {
            return Ok(());
        }
        let args = [Arg::P(d), Arg::P(s), Arg::L((rows * cols) as i64)];
        self.launch(OP, "add_f32", grid_1d(rows * cols), &args)
    }

    fn add_rms_norm(
        &mut self,
        out: TensorId,
        x: TensorId,
        y: TensorId,
        weight: WeightId,
        eps: f32,
        rows: usize,
    ) -> Result<()> {
        // One kernel adds and normalizes (each row's sum of squares is taken after the add).
        const OP: &str = "add_rms_norm";
        let (xp, yp, _) = self.pair(OP, x, y, rows)?;
        let (op, _, cols) = self.pair(OP, out, x, rows)?;
        let wp = self.vector(OP, weight, cols)?;
        if rows == 0 {
            return Ok(());
        }
        let args = [
            Arg::P(op),
            Arg::P(xp),
            Arg::P(yp),
            Arg::P(wp),
            Arg::F(eps),
            Arg::I(i32_of(OP, cols)?),
        ];
        self.launch(OP, "add_rms_norm_f32", grid(rows, 1, 256), &args)
    }

    fn add_bias(&mut self, dst: TensorId, bias: WeightId, rows: usize) -> Result<()> {
        const OP: &str = "add_bias";
        let d = self.tensor(OP, dst)?;
        check_rows(OP, d.rows, rows, "destination")?;
        let (dp, cols) = (d.ptr, d.cols);
        let bp = self.vector(OP, bias, cols)?;
        let n = rows * cols;
        if n == 0 {
            return Ok(());
        }
        let args = [
            Arg::P(dp),
            Arg::P(bp),
            Arg::L(n as i64),
            Arg::I(i32_of(OP, cols)?),
        ];
        self.launch(OP, "add_bias_f32", grid_1d(n), &args)
    }

    fn mul(&mut self, dst: TensorId, src: TensorId, rows: usize) -> Result<()> {
        const OP: &str = "mul";
        let (d, s, cols) = self.pair(OP, dst, src, rows)?;
        self.elementwise(OP, "mul_f32", rows * cols, vec![Arg::P(d), Arg::P(s)])
    }

    fn rope(&mut self, x: TensorId, positions: IndexId, p: &RopeParams, rows: usize) -> Result<()> {
        const OP: &str = "rope";
        let r = self.rope_operand(OP, x, positions, p, rows)?;
        if r.live {
            self.launch_rope(OP, &r, None)?;
        }
        Ok(())
    }

    fn rope_qk(
        &mut self,
        q: TensorId,
        k: TensorId,
        positions: IndexId,
        q_params: &RopeParams,
        k_params: &RopeParams,
        rows: usize,
    ) -> Result<()> {
        const OP: &str = "rope_qk";
        let rq = self.rope_operand(OP, q, positions, q_params, rows)?;
        let rk = self.rope_operand(OP, k, positions, k_params, rows)?;
        // One launch over both tensors' heads when they are rotated alike.
        let alike = |a: &RopeParams, b: &RopeParams| {
            (a.head_dim, a.n_rot, a.base, a.freq_scale, a.mode)
                == (b.head_dim, b.n_rot, b.base, b.freq_scale, b.mode)
        };
        if rq.live
            && rk.live
            && rq.x != rk.x
            && alike(q_params, k_params)
            && q_params.heads + k_params.heads <= 65_535
        {
            return self.launch_rope(OP, &rq, Some(&rk));
        }
        for r in [rq, rk] {
            if r.live {
                self.launch_rope(OP, &r, None)?;
            }
        }
        Ok(())
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
        const OP: &str = "attention";
        if p.sinks.is_some() {
            return Err(ComputeError::Unsupported {
                op: OP,
                reason: "attention sinks have no CUDA kernel yet".into(),
            });
        }
        // The cache is laid out by slot (`KvLayout::Slots`): a sequence's table row is its
        // slot, and the block table is not read.
        let (pos, pp) = self.index(OP, index.positions, rows)?;
        let (slot, sp) = self.index(OP, index.seqs, rows)?;
        let kv = self
            .caches
            .get(cache.raw() as usize)
            .ok_or(ComputeError::UnknownHandle {
                op: OP,
                kind: "kv cache",
                id: cache.raw(),
            })?;
        let cfg = kv.cfg;
        let (slots, max_positions) = (cfg.seqs, cfg.max_positions());
        let (hd, vhd) = (p.head_dim, p.value_head_dim);
        p.validate(&cfg)?;
        if let Some(w) = p.window {
            // No kernel masks a window yet: refuse rather than attend to every position.
            return Err(ComputeError::Unsupported {
                op: OP,
                reason: format!("a sliding window ({w} positions)"),
            });
        }
        if hd > MAX_HEAD_DIM || vhd > MAX_HEAD_DIM || p.heads > 65_535 {
            return Err(ComputeError::Unsupported {
                op: OP,
                reason: format!(
                    "head widths {hd}/{vhd} or {} heads (the kernel handles widths up to {MAX_HEAD_DIM})",
                    p.heads
                ),
            });
        }
        for (&ps, &sl) in pos.iter().zip(slot) {
            if ps as usize >= max_positions || sl as usize >= slots {
                return Err(ComputeError::BadIndex {
                    op: OP,
                    reason: format!(
                        "position {ps} in slot {sl}; the cache holds {} positions x {} slots",
                        max_positions, slots
                    ),
                });
            }
        }
        let ids = [q, k, v];
        if ids.contains(&out) {
            return Err(ComputeError::Aliased { op: OP });
        }
        let mut ptrs = [0u64; 4];
        for (i, (id, what, cols)) in [
            (q, "q", p.heads * hd),
            (k, "k", p.kv_heads * hd),
            (v, "v", p.kv_heads * vhd),
            (out, "out", p.heads * vhd),
        ]
        .into_iter()
        .enumerate()
        {
            let t = self.tensor(OP, id)?;
            check_rows(OP, t.rows, rows, what)?;
            check_cols(OP, t.cols, cols, what)?;
            ptrs[i] = t.ptr;
        }
        if rows == 0 {
            return Ok(());
        }
        let [qp, kp, vp, op] = ptrs;
        let (kc, vc) = (kv.k, kv.v);
        let common = |v: usize| i32_of(OP, v);
        if rows == 1 && hd.is_multiple_of(8) && vhd.is_multiple_of(2) {
            // Decode: one kernel stores this row's key/value and attends over splits of the
            // positions, a second merges the splits (attention.cu).
            let nsplit = max_positions.div_ceil(AD_SPAN);
            let need = p.heads * nsplit * (vhd + 2);
            let have = kv.partials.as_ref().map_or(0, |(_, n)| *n);
            if have < need {
                let buf = self.alloc::<f32>("attention partials", need)?;
                if let Some(kv) = self.caches.get_mut(cache.raw() as usize) {
                    if let Some((old, _)) = kv.partials.replace((buf, need)) {
                        self.dev.free(old);
                    }
                }
            }
            let Some(part) = self
                .caches
                .get(cache.raw() as usize)
                .and_then(|kv| kv.partials.as_ref().map(|(b, _)| b.ptr))
            else {
                return Err(ComputeError::Alloc {
                    what: "attention partials",
                    bytes: need as u128 * 4,
                });
            };
            let args = [
                Arg::P(qp),
                Arg::P(kp),
                Arg::P(vp),
                Arg::P(kc),
                Arg::P(vc),
                Arg::P(pp),
                Arg::P(sp),
                Arg::I(common(p.heads)?),
                Arg::I(common(p.kv_heads)?),
                Arg::I(common(hd)?),
                Arg::I(common(vhd)?),
                Arg::F(p.scale),
                Arg::I(common(p.layer)?),
                Arg::I(common(slots)?),
                Arg::I(common(max_positions)?),
                Arg::P(part),
                Arg::I(common(nsplit)?),
            ];
            if nsplit > 65_535 {
                return Err(shape(
                    OP,
                    format!("{} positions in the cache", max_positions),
                ));
            }
            let dims = grid(p.heads, nsplit, AD_THREADS);
            self.launch(OP, "attention_decode_f16", dims, &args)?;
            let combine = [
                Arg::P(op),
                Arg::P(part),
                Arg::P(pp),
                Arg::I(common(nsplit)?),
                Arg::I(common(vhd)?),
            ];
            return self.launch(OP, "attention_combine", grid(p.heads, 1, 128), &combine);
        }
        let one_slot = slot.iter().all(|&s| Some(&s) == slot.first());
        let tiled = self.experimental.attn && one_slot && hd <= AP_MAX_DIM && vhd <= AP_MAX_DIM;
        let store = [
            Arg::P(kc),
            Arg::P(vc),
            Arg::P(kp),
            Arg::P(vp),
            Arg::P(pp),
            Arg::P(sp),
            Arg::I(common(p.layer)?),
            Arg::I(common(slots)?),
            Arg::I(common(max_positions)?),
            Arg::I(common(p.kv_heads)?),
            Arg::I(common(hd)?),
            Arg::I(common(vhd)?),
        ];
        self.launch(OP, "kv_store", grid(rows, p.kv_heads, 128), &store)?;
        if tiled {
            let args = [
                Arg::P(op),
                Arg::P(qp),
                Arg::P(kc),
                Arg::P(vc),
                Arg::P(pp),
                Arg::P(sp),
                Arg::I(common(rows)?),
                Arg::I(common(p.heads)?),
                Arg::I(common(p.kv_heads)?),
                Arg::I(common(hd)?),
                Arg::I(common(vhd)?),
                Arg::F(p.scale),
                Arg::I(common(p.layer)?),
                Arg::I(common(slots)?),
                Arg::I(common(max_positions)?),
            ];
            let dims = grid(rows.div_ceil(AP_BLOCK_ROWS), p.heads, 128);
            return self.launch(OP, "attention_prefill_f16", dims, &args);
        }
        let attend = [
            Arg::P(op),
            Arg::P(qp),
            Arg::P(kc),
            Arg::P(vc),
            Arg::P(pp),
            Arg::P(sp),
            Arg::I(common(p.heads)?),
            Arg::I(common(p.kv_heads)?),
            Arg::I(common(hd)?),
            Arg::I(common(vhd)?),
            Arg::F(p.scale),
            Arg::I(common(p.layer)?),
            Arg::I(common(slots)?),
            Arg::I(common(max_positions)?),
        ];
        self.launch(OP, "attention_f16", grid(rows, p.heads, 128), &attend)
    }

    fn swiglu(&mut self, out: TensorId, gate: TensorId, up: TensorId, rows: usize) -> Result<()> {
        self.launch_swiglu("swiglu", out, gate, up, rows)
    }

    fn scale(&mut self, x: TensorId, factor: f32, rows: usize) -> Result<()> {
        const OP: &str = "scale";
        let t = self.tensor(OP, x)?;
        check_rows(OP, t.rows, rows, "input")?;
        let args = vec![Arg::P(t.ptr), Arg::F(factor)];
        self.elementwise(OP, "scale_f32", rows * t.cols, args)
    }

    fn gelu(&mut self, x: TensorId, rows: usize) -> Result<()> {
        const OP: &str = "gelu";
        let t = self.tensor(OP, x)?;
        check_rows(OP, t.rows, rows, "input")?;
        self.elementwise(OP, "gelu_f32", rows * t.cols, vec![Arg::P(t.ptr)])
    }
}
