//! [`CudaBackend`]: the `ComputeBackend` ops as NVRTC-compiled kernels on one CUDA stream.
//!
//! Every buffer is a plain device allocation (no managed memory, no host copies of weights).
//! Kernels receive raw device addresses, so one op may read and write different handles of
//! the same kind without borrow juggling; the allocations live as long as the backend. All
//! work is ordered on the one stream; only [`ComputeBackend::read_rows`] (and
//! [`CudaBackend::argmax`], [`CudaBackend::synchronize`]) wait for it.
//!
//! Ops do not launch their kernels at once: they validate their operands, then record their
//! launches (see [`crate::launch`]), which the device runs at the next host interaction, so
//! that a repeated step (a decode step) is replayed as a CUDA graph (see [`crate::queue`]).
//! Where the module doc of an op's file says so, one op is one fused kernel.
//!
//! The code is split by job: [`crate::types`] (which weight types have kernels, the typed
//! kernel ids), [`crate::memory`] (handles, arenas, copies, shape checks), [`crate::launch`]
//! (argument structs, recording), [`crate::matmul`] (products and their fusions),
//! [`crate::attention`], [`crate::moe`] (mixture of experts), [`crate::gemm`] (cuBLAS prefill), [`crate::profile`], and
//! [`crate::ops`] (the trait impl); [`crate::device`] is all that touches the GPU.

use cudarc::driver::DriverError;
use worker_compute::{ComputeError, ExpertWeights, Result, TensorId};
use worker_gguf::GgmlType;

use worker_compute::shape::check_rows;

use crate::config::{CudaConfig, Experimental};
use crate::device::{Buffer, Device, Gpu};
use crate::error::CudaError;
use crate::launch::{grid, Argmax};
use crate::memory::{i32_of, Index, KvCache, Tensor, Weight};
use crate::queue::Launch;
use crate::types::{Kernels, EXPERIMENTAL_TYPES, MODEL_TYPES, WEIGHT_TYPES};

/// The CUDA implementation of [`worker_compute::ComputeBackend`], on a GPU.
///
/// The device is a type parameter only so that the crate's tests can run the same op code
/// on a device that records launches instead of running them; outside them it is the GPU.
pub struct CudaBackend<D = Gpu> {
    pub(crate) dev: D,
    /// The kernels not stamped out per weight type.
    pub(crate) kernels: Kernels,
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
    argmax_out: Option<(Buffer, usize)>,
    /// The f32 tile a prefill matmul dequantizes its weights into: (buffer, floats).
    pub(crate) gemm_tile: Option<(Buffer, usize)>,
    /// Per expert list of `moe` (one per layer), its table of weight addresses.
    pub(crate) expert_tables: Vec<(Vec<ExpertWeights>, Buffer)>,
    /// The scratch of `moe` (expert ids, weights, activations, slot outputs): (buffer, floats).
    pub(crate) moe_scratch: Option<(Buffer, usize)>,
}

/// A failed launch or copy, as the trait's error.
pub(crate) fn op_err(op: &'static str) -> impl FnOnce(DriverError) -> ComputeError {
    move |e| ComputeError::Device {
        op,
        source: Box::new(e),
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
}

impl<D: Device> CudaBackend<D> {
    /// The backend on `dev`, whose kernels are [`crate::kernels::names`] by position.
    pub(crate) fn on(dev: D, experimental: Experimental) -> Self {
        CudaBackend {
            dev,
            kernels: Kernels::new(),
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
            expert_tables: Vec::new(),
            moe_scratch: None,
        }
    }

    /// Whether weights of type `ty` can be uploaded (its kernels exist and, for the types
    /// whose kernels have not run on a device, [`Experimental::types`] is on, or
    /// [`Experimental::models`] for MXFP4).
    pub fn supports(&self, ty: GgmlType) -> bool {
        WEIGHT_TYPES.iter().any(|(t, _)| *t == ty)
            && (self.experimental.types || !EXPERIMENTAL_TYPES.contains(&ty))
            && (self.experimental.models || !MODEL_TYPES.contains(&ty))
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

    /// Uploads the index range written since the last flush, then has the device run the
    /// recorded launches in order. Called before every host interaction.
    pub(crate) fn flush(&mut self, op: &'static str) -> Result<()> {
        self.upload_indices(op)?;
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
        let out = match self.argmax_out {
            Some((buf, n)) if n >= rows => buf,
            old => {
                if let Some((buf, _)) = old {
                    self.argmax_out = None;
                    self.dev.free(buf);
                }
                let buf = self.alloc::<u32>("argmax output", rows)?;
                self.argmax_out = Some((buf, rows));
                buf
            }
        };
        let args = Argmax {
            out: out.ptr,
            x: sp,
            cols: i32_of(OP, cols)?,
        };
        self.launch(self.kernels.argmax, grid(rows, 1, 256), args);
        self.flush(OP)?;
        let mut ids = vec![0u32; rows];
        self.dev
            .download(out, bytemuck::cast_slice_mut(&mut ids[..]))
            .map_err(op_err(OP))?;
        self.dev.synchronize().map_err(op_err(OP))?;
        Ok(ids)
    }
}
