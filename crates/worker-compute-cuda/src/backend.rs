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
    KvLayout, KvType, Result, RopeMode, RopeParams, TensorId, WeightDesc, WeightId,
};
use worker_gguf::GgmlType;

use crate::config::{CudaConfig, Experimental};
use crate::device::{Buffer, Device, Gpu};
use crate::error::CudaError;
use crate::gemm::{MatmulDims, GEMM_MIN_ROWS, TILE_ELEMENTS};
use crate::kernels;
use crate::queue::{Arg, Args, Launch, LaunchStats, Tag};

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
/// Activation rows per matmul block row (`MM_ROWS` in quant.cu).
const MM_ROWS: usize = 8;
/// Output columns per matmul block (warps per block).
const MM_COLS: usize = 4;
/// Warps per mat-vec block, one output row each (`MV_WARPS` in matvec.cu).
const MV_WARPS: usize = 4;
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
    rows: usize,
    cols: usize,
    ptr: u64,
    buf: Buffer,
}

/// An index vector: its host mirror is `index_host[off..off + len]`; on the device it sits
/// at the same offset of the arena, or in `own` when the arena was full.
pub(crate) struct Index {
    off: usize,
    len: usize,
    ptr: u64,
    own: Option<Buffer>,
}

pub(crate) struct Weight {
    name: String,
    rows: usize,
    cols: usize,
    row_bytes: usize,
    /// Bytes of [`MATVEC_SEGMENT`] elements of a row (what a mat-vec warp stages at once).
    seg_bytes: usize,
    /// Stored as an f32 vector (norm weights, biases), dequantized at upload.
    vector: bool,
    /// The kernels of its storage type: embed, matmul, matvec, matvec_glu, matvec_wide,
    /// matvec3, dequant.
    funcs: [usize; 7],
    ptr: u64,
}

pub(crate) struct KvCache {
    cfg: KvCacheConfig,
    k: u64,
    v: u64,
    /// Partial results of the split decode attention: (buffer, floats).
    partials: Option<(Buffer, usize)>,
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

fn shape(op: &'static str, reason: String) -> ComputeError {
    ComputeError::Shape { op, reason }
}

fn i32_of(op: &'static str, v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| shape(op, format!("{v} does not fit a kernel's i32 argument")))
}

/// Grid and block of a launch.
#[derive(Clone, Copy)]
struct Dims {
    grid: (u32, u32, u32),
    block: (u32, u32, u32),
}

fn grid_1d(n: usize) -> Dims {
    Dims {
        grid: (n.div_ceil(256) as u32, 1, 1),
        block: (256, 1, 1),
    }
}

fn grid(x: usize, y: usize, threads: u32) -> Dims {
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
    fn launch(&mut self, op: &'static str, name: &str, dims: Dims, args: &[Arg]) -> Result<()> {
        self.launch_tagged(op, name, dims, args, Tag::Plain)
    }

    fn launch_tagged(
        &mut self,
        op: &'static str,
        name: &str,
        dims: Dims,
        args: &[Arg],
        tag: Tag,
    ) -> Result<()> {
        let func = self.func_id(op, name)?;
        self.launch_func(op, func, dims, args, tag)
    }

    /// Queues a launch of a function looked up before (the hot path: no name lookup).
    fn launch_func(
        &mut self,
        op: &'static str,
        func: usize,
        dims: Dims,
        args: &[Arg],
        tag: Tag,
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
            tag,
        });
        Ok(())
    }

    /// When the last two queued launches are the one-row mat-vecs writing `gate` and `up`
    /// (either order) with the same input, weight type and shape and no bias, the launch of
    /// the fused gate/up/SwiGLU kernel that replaces them.
    fn glu_fusion(&self, act: u64, gate: u64, up: u64, cols: usize) -> Option<Launch> {
        let (a, b) = last_two(&self.pending)?;
        let (Tag::Matvec { out: ao, glu }, Tag::Matvec { out: bo, .. }) = (a.tag, b.tag) else {
            return None;
        };
        let (g, u) = match (ao == gate && bo == up, ao == up && bo == gate) {
            (true, _) => (a, b),
            (_, true) => (b, a),
            _ => return None,
        };
        let (ga, ua) = (g.args.as_slice(), u.args.as_slice());
        // matvec args: out, x, w, bias, n, k, row_bytes, seg_bytes.
        let same = g.func == u.func
            && g.grid == u.grid
            && ga.len() == 8
            && ua.len() == 8
            && ga[1] == ua[1]
            && ga[3] == Arg::P(0)
            && ua[3] == Arg::P(0)
            && ga[4..] == ua[4..]
            && ga[4] == Arg::I(i32::try_from(cols).ok()?);
        if !same
            || [act, gate, up].contains(&match ga[1] {
                Arg::P(x) => x,
                _ => return None,
            })
        {
            return None;
        }
        let args = Args::new(&[
            Arg::P(act),
            Arg::P(gate),
            Arg::P(up),
            ga[1],
            ga[2],
            ua[2],
            ga[4],
            ga[5],
            ga[6],
            ga[7],
        ])?;
        Some(Launch {
            func: glu,
            grid: (cols.div_ceil(MV_WARPS) as u32, 1, 1),
            block: g.block,
            args,
            tag: Tag::Plain,
        })
    }

    /// Experimental: folds a one-row mat-vec (`args` as for matvec_<type>) into the launch
    /// before it when that is a mat-vec (or a two-set matvec3) of the same input, type and row
    /// length writing other tensors; true when it did.
    fn merge_matvec(&mut self, args: &[Arg; 8], matvec: usize, matvec3: usize) -> bool {
        let [out, x, w, _, n, k, row_bytes, seg] = *args;
        let n_of = |a: Arg| match a {
            Arg::I(v) => usize::try_from(v).ok(),
            _ => None,
        };
        let Some(last) = self.pending.last_mut() else {
            return false;
        };
        let a = last.args.as_slice();
        let merged = match last.tag {
            Tag::Matvec { out: prev, glu }
                if last.func == matvec
                    && a.len() == 8
                    && a[1] == x
                    && a[5] == k
                    && a[6] == row_bytes
                    && a[7] == seg
                    && Arg::P(prev) != out =>
            {
                let rows = n_of(a[4]).zip(n_of(n)).map(|(p, q)| p + q);
                let set = Args::new(&[
                    x,
                    k,
                    row_bytes,
                    seg,
                    a[0],
                    a[2],
                    a[3],
                    a[4],
                    out,
                    w,
                    Arg::P(0),
                    n,
                    Arg::P(0),
                    Arg::P(0),
                    Arg::P(0),
                    Arg::I(0),
                ]);
                rows.zip(set)
                    .map(|(r, s)| (r, s, Tag::Matvec3 { glu, sets: 2 }))
            }
            Tag::Matvec3 { glu, sets: 2 }
                if last.func == matvec3
                    && a.len() == 16
                    && a[0] == x
                    && a[1] == k
                    && a[2] == row_bytes
                    && a[3] == seg
                    && a[4] != out
                    && a[8] != out =>
            {
                let rows = [a[7], a[11], n]
                    .into_iter()
                    .map(n_of)
                    .sum::<Option<usize>>();
                let mut s = last.args;
                let m = s.as_mut_slice();
                m[12] = out;
                m[13] = w;
                m[14] = Arg::P(0);
                m[15] = n;
                rows.map(|r| (r, s, Tag::Matvec3 { glu, sets: 3 }))
            }
            _ => None,
        };
        let Some((rows, set, tag)) = merged else {
            return false;
        };
        last.func = matvec3;
        last.args = set;
        last.grid = (rows.div_ceil(MV_WARPS) as u32, 1, 1);
        last.tag = tag;
        true
    }

    /// Experimental: the fused gate/up/SwiGLU launch replacing a two-set matvec3 (the last
    /// launch) that writes `gate` and `up` from one input with no bias.
    fn glu_from_matvec3(&self, act: u64, gate: u64, up: u64, cols: usize) -> Option<Launch> {
        let l = self.pending.last()?;
        let Tag::Matvec3 { glu, sets: 2 } = l.tag else {
            return None;
        };
        let a = l.args.as_slice();
        let n = Arg::I(i32::try_from(cols).ok()?);
        if a.len() != 16 || a[6] != Arg::P(0) || a[10] != Arg::P(0) || a[7] != n || a[11] != n {
            return None;
        }
        let (wg, wu) = match (a[4], a[8]) {
            (Arg::P(o0), Arg::P(o1)) if o0 == gate && o1 == up => (a[5], a[9]),
            (Arg::P(o0), Arg::P(o1)) if o0 == up && o1 == gate => (a[9], a[5]),
            _ => return None,
        };
        if matches!(a[0], Arg::P(x) if [act, gate, up].contains(&x)) {
            return None;
        }
        let args = Args::new(&[
            Arg::P(act),
            Arg::P(gate),
            Arg::P(up),
            a[0],
            wg,
            wu,
            n,
            a[1],
            a[2],
            a[3],
        ])?;
        Some(Launch {
            func: glu,
            grid: (cols.div_ceil(MV_WARPS) as u32, 1, 1),
            block: l.block,
            args,
            tag: Tag::Plain,
        })
    }

    /// The prefill matmul through cuBLAS (see [`crate::gemm`]): each tile of weight rows is
    /// dequantized to f32, then multiplied into its columns of `out`. Launches queued before
    /// are flushed first, so everything stays in order on the one stream.
    fn matmul_gemm(&mut self, out: u64, x: u64, w: WeightId, rows: usize) -> Result<()> {
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
            self.launch_func(OP, dequant, grid(tn, 1, 256), &args, Tag::Plain)?;
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

    fn tensor(&self, op: &'static str, id: TensorId) -> Result<&Tensor> {
        self.tensors
            .get(id.raw() as usize)
            .ok_or(ComputeError::UnknownHandle {
                op,
                kind: "tensor",
                id: id.raw(),
            })
    }

    fn weight(&self, op: &'static str, id: WeightId) -> Result<&Weight> {
        self.weights
            .get(id.raw() as usize)
            .ok_or(ComputeError::UnknownHandle {
                op,
                kind: "weight",
                id: id.raw(),
            })
    }

    fn vector(&self, op: &'static str, id: WeightId, cols: usize) -> Result<u64> {
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

/// The last two recorded launches, for an op that fuses them.
fn last_two(pending: &[Launch]) -> Option<(&Launch, &Launch)> {
    match pending {
        [.., a, b] => Some((a, b)),
        _ => None,
    }
}

fn check_rows(op: &'static str, have: usize, rows: usize, what: &str) -> Result<()> {
    if rows > have {
        return Err(shape(op, format!("{what} holds {have} rows, {rows} asked")));
    }
    Ok(())
}

fn check_cols(op: &'static str, got: usize, want: usize, what: &str) -> Result<()> {
    if got != want {
        return Err(shape(
            op,
            format!("{what} has {got} columns, expected {want}"),
        ));
    }
    Ok(())
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
        self.launch_func(OP, func, grid(rows, 1, 256), &args, Tag::Plain)
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
        let cols_i = i32_of(OP, cols)?;
        // Fused: when the launch before is the residual add into `x` over the same rows, one
        // kernel adds and normalizes (each row's sum of squares is taken after the add).
        let fuse = self.func_id(OP, "add_rms_norm_f32")?;
        let fused_args = |src| {
            Args::new(&[
                Arg::P(op),
                Arg::P(xp),
                Arg::P(src),
                Arg::P(wp),
                Arg::F(eps),
                Arg::I(cols_i),
            ])
        };
        if let Some(last) = self.pending.last_mut() {
            if let Tag::Add {
                dst,
                src,
                rows: ar,
                cols: ac,
            } = last.tag
            {
                if let (true, Some(args)) = (dst == xp && ar == rows && ac == cols, fused_args(src))
                {
                    *last = Launch {
                        func: fuse,
                        grid: (rows as u32, 1, 1),
                        block: (256, 1, 1),
                        args,
                        tag: Tag::Plain,
                    };
                    return Ok(());
                }
            }
        }
        let args = [
            Arg::P(op),
            Arg::P(xp),
            Arg::P(wp),
            Arg::F(eps),
            Arg::I(cols_i),
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
        if out == x {
            return Err(ComputeError::Aliased { op: OP });
        }
        let wt = self.weight(OP, w)?;
        let xt = self.tensor(OP, x)?;
        let o = self.tensor(OP, out)?;
        check_rows(OP, xt.rows, rows, "input")?;
        check_rows(OP, o.rows, rows, "output")?;
        if xt.cols != wt.cols || o.cols != wt.rows {
            let what = if xt.cols != wt.cols {
                "input"
            } else {
                "output"
            };
            check_cols(OP, xt.cols, wt.cols, &format!("input of {:?}", wt.name))?;
            check_cols(OP, o.cols, wt.rows, &format!("{what} of {:?}", wt.name))?;
        }
        if rows == 0 {
            return Ok(());
        }
        if rows == 1 && wt.cols.is_multiple_of(32) && (1..=4096).contains(&wt.seg_bytes) {
            // Decode: one warp per output row (matvec.cu).
            // Rows of more than 64 chunks (experimental): a block per row, split over warps.
            let wide = self.experimental.matvec && wt.cols / 32 > 64;
            let func = wt.funcs[if wide { 4 } else { 2 }];
            let args = [
                Arg::P(o.ptr),
                Arg::P(xt.ptr),
                Arg::P(wt.ptr),
                Arg::P(0),
                Arg::I(i32_of(OP, wt.rows)?),
                Arg::I(i32_of(OP, wt.cols)?),
                Arg::L(wt.row_bytes as i64),
                Arg::I(i32_of(OP, wt.seg_bytes)?),
            ];
            let blocks = if wide {
                wt.rows
            } else {
                wt.rows.div_ceil(MV_WARPS)
            };
            let dims = grid(blocks, 1, 32 * MV_WARPS as u32);
            let tag = Tag::Matvec {
                out: o.ptr,
                glu: wt.funcs[3],
            };
            if self.experimental.matvec && !wide {
                let funcs = wt.funcs;
                if self.merge_matvec(&args, funcs[2], funcs[5]) {
                    return Ok(());
                }
            }
            return self.launch_func(OP, func, dims, &args, tag);
        }
        if rows >= GEMM_MIN_ROWS && self.dev.blas().is_some() {
            let (op, xp) = (o.ptr, xt.ptr);
            return self.matmul_gemm(op, xp, w, rows);
        }
        let blocks_y = rows.div_ceil(MM_ROWS);
        if blocks_y > 65_535 {
            return Err(shape(OP, format!("{rows} rows in one matmul")));
        }
        let func = wt.funcs[1];
        let args = [
            Arg::P(o.ptr),
            Arg::P(xt.ptr),
            Arg::P(wt.ptr),
            Arg::I(i32_of(OP, rows)?),
            Arg::I(i32_of(OP, wt.rows)?),
            Arg::I(i32_of(OP, wt.cols)?),
            Arg::L(wt.row_bytes as i64),
        ];
        let cfg = grid(wt.rows.div_ceil(MM_COLS), blocks_y, 32 * MM_COLS as u32);
        self.launch_func(OP, func, cfg, &args, Tag::Plain)
    }

    fn add(&mut self, dst: TensorId, src: TensorId, rows: usize) -> Result<()> {
        const OP: &str = "add";
        let (d, s, cols) = self.pair(OP, dst, src, rows)?;
        if rows * cols == 0 {
            return Ok(());
        }
        let args = [Arg::P(d), Arg::P(s), Arg::L((rows * cols) as i64)];
        let tag = Tag::Add {
            dst: d,
            src: s,
            rows,
            cols,
        };
        self.launch_tagged(OP, "add_f32", grid_1d(rows * cols), &args, tag)
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
        // Fused: the mat-vec that just wrote `dst` adds the bias as it stores.
        if let Some(last) = self.pending.last_mut() {
            if matches!(last.tag, Tag::Matvec { out, .. } if out == dp) && rows == 1 {
                if let Some(b @ Arg::P(0)) = last.args.as_mut_slice().get_mut(3) {
                    *b = Arg::P(bp);
                    return Ok(());
                }
            }
            // A set of a merged matvec3 (experimental): out at 4 + 4 i, bias at 6 + 4 i.
            if let (Tag::Matvec3 { sets, .. }, 1) = (last.tag, rows) {
                let a = last.args.as_mut_slice();
                for i in 0..sets.min(3) {
                    if a.len() == 16 && a[4 + 4 * i] == Arg::P(dp) && a[6 + 4 * i] == Arg::P(0) {
                        a[6 + 4 * i] = Arg::P(bp);
                        return Ok(());
                    }
                }
            }
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
        let (_, pp) = self.index(OP, positions, rows)?;
        let t = self.tensor(OP, x)?;
        check_rows(OP, t.rows, rows, "input")?;
        check_cols(OP, t.cols, p.heads * p.head_dim, "input")?;
        p.validate()?;
        if p.yarn.is_some() {
            return Err(ComputeError::Unsupported {
                op: OP,
                reason: "YaRN rope scaling has no CUDA kernel yet".into(),
            });
        }
        if rows == 0 || p.n_rot == 0 || p.heads == 0 {
            return Ok(());
        }
        if p.heads > 65_535 {
            return Err(shape(OP, format!("{} heads", p.heads)));
        }
        let (xp, cols) = (t.ptr, i32_of(OP, t.cols)?);
        let heads = i32_of(OP, p.heads)?;
        let args = [
            Arg::P(xp),
            Arg::P(pp),
            Arg::I(cols),
            Arg::I(i32_of(OP, p.head_dim)?),
            Arg::I(i32_of(OP, p.n_rot)?),
            Arg::F(p.base),
            Arg::F(p.freq_scale),
            Arg::I(i32::from(p.mode == RopeMode::Neox)),
            Arg::I(heads),
            Arg::P(0),
            Arg::I(0),
        ];
        // Fused: a rope of another tensor with the same positions and parameters just before
        // (q, then k) becomes one launch over both tensors' heads.
        if let Some(last) = self.pending.last_mut() {
            let prev = last.args.as_mut_slice();
            if last.tag == (Tag::Rope { rows })
                && prev.len() == args.len()
                && prev[0] != Arg::P(xp)
                && prev[1] == args[1]
                && prev[3..8] == args[3..8]
                && prev[9] == Arg::P(0)
                && last.grid.1 as usize + p.heads <= 65_535
            {
                prev[9] = Arg::P(xp);
                prev[10] = Arg::I(cols);
                last.grid.1 += p.heads as u32;
                last.tag = Tag::Plain;
                return Ok(());
            }
        }
        let dims = grid(rows, p.heads, 64);
        self.launch_tagged(OP, "rope_f32", dims, &args, Tag::Rope { rows })
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
        const OP: &str = "swiglu";
        if out == gate || out == up {
            return Err(ComputeError::Aliased { op: OP });
        }
        let (g, u, o) = (
            self.tensor(OP, gate)?,
            self.tensor(OP, up)?,
            self.tensor(OP, out)?,
        );
        for (t, what) in [(g, "gate"), (u, "up"), (o, "out")] {
            check_rows(OP, t.rows, rows, what)?;
            check_cols(OP, t.cols, g.cols, what)?;
        }
        let (gp, up_, op, cols) = (g.ptr, u.ptr, o.ptr, g.cols);
        if rows == 1 {
            if let Some(fused) = self.glu_fusion(op, gp, up_, cols) {
                self.pending.pop();
                if let Some(last) = self.pending.last_mut() {
                    *last = fused;
                }
                return Ok(());
            }
            if let Some(fused) = self.glu_from_matvec3(op, gp, up_, cols) {
                if let Some(last) = self.pending.last_mut() {
                    *last = fused;
                }
                return Ok(());
            }
        }
        let args = vec![Arg::P(op), Arg::P(gp), Arg::P(up_)];
        self.elementwise(OP, "swiglu_f32", rows * cols, args)
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
