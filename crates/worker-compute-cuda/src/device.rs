//! The device under the backend: allocations, copies, and running a recorded launch list.
//!
//! [`crate::CudaBackend`] validates every op and records its kernel launches without touching
//! the GPU; what needs the GPU goes through [`Device`], implemented here for a real one by
//! [`Gpu`] (cudarc: one context, one stream, the NVRTC modules, the launch queue's graphs,
//! cuBLAS). Keeping that boundary narrow is what lets a test run a model's forward pass
//! through the backend's op code on a device that only records the launches (see
//! `crate::launches`), so a change to what a step launches shows up without a GPU.

use std::sync::Arc;
use std::time::Instant;

use cudarc::driver::{
    sys, CudaContext, CudaFunction, CudaSlice, CudaStream, DevicePtr, DriverError,
};

use crate::config::CudaConfig;
use crate::error::CudaError;
use crate::gemm::Blas;
use crate::profile::StepTiming;
use crate::queue::{Launch, Queue};
use crate::{kernels, loader, types};

/// One device allocation: the handle copies name it by, and the address kernels get.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Buffer {
    /// The device's own id of the allocation.
    pub id: usize,
    /// Its device address.
    pub ptr: u64,
}

/// What the backend asks of a device. Every call is ordered after the ones before it.
pub trait Device: Send {
    /// A zeroed allocation of `bytes` bytes (at least one), alive until [`Device::free`];
    /// `what` names it (`"tensor"`, `"weight"`, …) for the device's own records.
    fn alloc(&mut self, what: &'static str, bytes: usize) -> Result<Buffer, DriverError>;
    /// Releases `buf`, which nothing queued or recorded uses any more.
    fn free(&mut self, buf: Buffer);
    /// Copies `src` to the device, `offset` bytes into `dst`.
    fn upload(&mut self, dst: Buffer, offset: usize, src: &[u8]) -> Result<(), DriverError>;
    /// Starts copying `dst.len()` bytes from the start of `src` to the host; complete after
    /// [`Device::synchronize`].
    fn download(&mut self, src: Buffer, dst: &mut [u8]) -> Result<(), DriverError>;
    /// Submits `launches` in order (kernel ids are positions in [`kernels::names`]).
    fn run(&mut self, launches: Vec<Launch>) -> Result<(), DriverError>;
    /// Waits for everything submitted.
    fn synchronize(&mut self) -> Result<(), DriverError>;
    /// A model step's read-out begins (before its launches are flushed): where step timing
    /// starts its clock.
    fn begin_read_out(&mut self) -> Result<(), DriverError> {
        Ok(())
    }
    /// The read-out that [`Device::begin_read_out`] began has its copy queued: waits for it
    /// (and stops the step clock). `entered` is when the read-out was asked for.
    fn finish_read_out(&mut self, entered: Instant) -> Result<(), DriverError> {
        let _ = entered;
        self.synchronize()
    }
    /// cuBLAS on this device, when it is loaded (the experimental `gemm` path).
    fn blas(&self) -> Option<&Blas>;
    /// Makes this device's context current on the calling thread (cuBLAS runs on it).
    fn bind(&self) -> Result<(), DriverError>;
}

/// A CUDA device through cudarc: its context and one stream (its own: the legacy default
/// stream cannot be captured into a graph), the compiled kernels, every allocation the
/// backend made, the graph cache of the launch queue, and cuBLAS when asked for.
pub struct Gpu {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    /// Every kernel of [`kernels::names`], in that order.
    funcs: Vec<CudaFunction>,
    buffers: Vec<Option<CudaSlice<u8>>>,
    pub(crate) queue: Queue,
    pub(crate) ordinal: usize,
    pub(crate) arch: String,
    blas: Option<Blas>,
    step_timing: Option<StepTiming>,
}

fn driver(what: &'static str) -> impl FnOnce(DriverError) -> CudaError {
    move |e| CudaError::Driver {
        what,
        reason: e.to_string(),
    }
}

impl Gpu {
    /// Opens device `config.device`, compiles the kernels with NVRTC and loads them.
    /// Without a driver or a device this is [`CudaError::NoDevice`], never a panic.
    pub(crate) fn open(config: &CudaConfig) -> Result<Gpu, CudaError> {
        loader::require_driver()?;
        let count = loader::no_panic("cuDeviceGetCount", CudaContext::device_count)?
            .map_err(|e| CudaError::NoDevice(format!("the driver reports: {e}")))?;
        if count <= 0 {
            return Err(CudaError::NoDevice("the driver sees no devices".into()));
        }
        if config.device >= count as usize {
            return Err(CudaError::NoDevice(format!(
                "device {} asked for, {count} present",
                config.device
            )));
        }
        let ctx = loader::no_panic("cuCtxCreate", || CudaContext::new(config.device))?
            .map_err(driver("context creation"))?;
        // SAFETY: every op of this backend runs on one stream in program order, so cudarc's
        // cross-stream event tracking is not needed; kernels get raw addresses anyway.
        unsafe { ctx.disable_event_tracking() };
        // A stream of our own: the legacy default stream cannot be captured into a graph.
        let stream = ctx.new_stream().map_err(driver("stream creation"))?;
        let (major, minor) = ctx
            .compute_capability()
            .map_err(driver("compute capability"))?;
        let arch = format!("{major}{minor}");
        let list = types::kernel_list();
        let mut funcs: Vec<Option<CudaFunction>> = vec![None; list.len()];
        for (file, ptx) in kernels::compile_all(&arch)? {
            let module = ctx.load_module(ptx).map_err(driver("module load"))?;
            for (i, (name, _, _)) in list.iter().enumerate().filter(|(_, k)| k.1 == file) {
                let f = module.load_function(name).map_err(|e| CudaError::Driver {
                    what: "kernel lookup",
                    reason: format!("{name} in {file}: {e}"),
                })?;
                funcs[i] = Some(f);
            }
        }
        let funcs = funcs
            .into_iter()
            .zip(&list)
            .map(|(f, (name, _, _))| {
                f.ok_or_else(|| CudaError::Driver {
                    what: "kernel lookup",
                    reason: format!("{name} is in no kernel file"),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let blas = if config.experimental.gemm {
            Blas::new(stream.clone())
                .inspect_err(
                    |e| tracing::warn!(error = %e, "no cuBLAS: prefill uses the matmul kernels"),
                )
                .ok()
        } else {
            None
        };
        Ok(Gpu {
            ctx,
            stream,
            funcs,
            buffers: Vec::new(),
            // Programmatic dependent launch needs sm_90.
            queue: Queue::new(config.graphs, config.experimental.pdl && major >= 9),
            ordinal: config.device,
            arch,
            blas,
            step_timing: None,
        })
    }

    /// The device's name, e.g. `"NVIDIA H200"`.
    pub(crate) fn name(&self) -> String {
        self.ctx.name().unwrap_or_else(|_| "unknown".into())
    }

    /// Free and total device memory in bytes.
    pub(crate) fn mem_info(&self) -> Result<(u64, u64), CudaError> {
        let (free, total) = self.ctx.mem_get_info().map_err(driver("cuMemGetInfo"))?;
        Ok((free as u64, total as u64))
    }

    /// Turns step timing on (fresh events) or off.
    pub(crate) fn set_step_timing(&mut self, on: bool) -> Result<(), DriverError> {
        self.step_timing = if on {
            Some(StepTiming::new(&self.ctx)?)
        } else {
            None
        };
        Ok(())
    }

    fn buffer(&mut self, b: Buffer) -> Result<&mut CudaSlice<u8>, DriverError> {
        self.buffers
            .get_mut(b.id)
            .and_then(Option::as_mut)
            .ok_or(DriverError(sys::cudaError_enum::CUDA_ERROR_INVALID_VALUE))
    }
}

impl Device for Gpu {
    fn alloc(&mut self, _what: &'static str, bytes: usize) -> Result<Buffer, DriverError> {
        let buf = self.stream.alloc_zeros::<u8>(bytes.max(1))?;
        let ptr = {
            let (ptr, _guard) = buf.device_ptr(&self.stream);
            ptr
        };
        self.buffers.push(Some(buf));
        Ok(Buffer {
            id: self.buffers.len() - 1,
            ptr,
        })
    }

    fn free(&mut self, buf: Buffer) {
        if let Some(slot) = self.buffers.get_mut(buf.id) {
            *slot = None;
        }
    }

    fn upload(&mut self, dst: Buffer, offset: usize, src: &[u8]) -> Result<(), DriverError> {
        let stream = self.stream.clone();
        let buf = self.buffer(dst)?;
        let end = offset + src.len();
        if end > buf.len() {
            return Err(DriverError(sys::cudaError_enum::CUDA_ERROR_INVALID_VALUE));
        }
        stream.memcpy_htod(src, &mut buf.slice_mut(offset..end))
    }

    fn download(&mut self, src: Buffer, dst: &mut [u8]) -> Result<(), DriverError> {
        let stream = self.stream.clone();
        let buf = self.buffer(src)?;
        if dst.len() > buf.len() {
            return Err(DriverError(sys::cudaError_enum::CUDA_ERROR_INVALID_VALUE));
        }
        stream.memcpy_dtoh(&buf.slice(..dst.len()), dst)
    }

    fn run(&mut self, launches: Vec<Launch>) -> Result<(), DriverError> {
        self.queue.flush(&self.stream, &self.funcs, launches)
    }

    fn synchronize(&mut self) -> Result<(), DriverError> {
        self.stream.synchronize()
    }

    fn begin_read_out(&mut self) -> Result<(), DriverError> {
        match &self.step_timing {
            Some(st) => st.begin(&self.stream),
            None => Ok(()),
        }
    }

    fn finish_read_out(&mut self, entered: Instant) -> Result<(), DriverError> {
        if let Some(st) = &self.step_timing {
            st.end(&self.stream)?;
        }
        self.stream.synchronize()?;
        match &mut self.step_timing {
            Some(st) => st.add_to(&mut self.queue.stats, entered),
            None => Ok(()),
        }
    }

    fn blas(&self) -> Option<&Blas> {
        self.blas.as_ref()
    }

    fn bind(&self) -> Result<(), DriverError> {
        self.ctx.bind_to_thread()
    }
}
