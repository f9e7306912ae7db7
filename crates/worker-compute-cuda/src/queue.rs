//! The launch queue: ops record their kernel launches in a list that the backend holds, and
//! that list is flushed here at the next host interaction (an upload, a read-out, a sync).
//!
//! Two things follow from holding the launches back until the step's end:
//! - A flushed launch list that was seen before (a decode step: same kernels, same device
//!   addresses, the changing token ids and positions live in device index buffers) is
//!   captured once as a CUDA graph and from then on replayed with one `cuGraphLaunch`, which
//!   removes the per-launch host cost (a few µs each, ~300-500 launches per step).
//! - Nothing of a step runs before the host needs a result, so the host records the next
//!   step while the device runs this one.
//!
//! With programmatic dependent launch on (experimental), every launch carries the
//! programmatic-stream-serialization attribute, so a kernel's launch and ramp-up overlap the
//! end of the kernel before it; each kernel waits for its predecessor before its first read
//! (`pdl_start` in common.cuh).

use std::sync::Arc;

use cudarc::driver::PushKernelArg;
use cudarc::driver::{sys, CudaFunction, CudaGraph, CudaStream, DriverError, LaunchConfig};

use crate::launch::{Arg, Args, MAX_ARGS};

/// One recorded kernel launch.
#[derive(Clone, Debug, PartialEq)]
pub struct Launch {
    pub func: usize,
    pub grid: (u32, u32, u32),
    pub block: (u32, u32, u32),
    pub args: Args,
}

/// Counters for the benchmark: how much work went to the device and how.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LaunchStats {
    /// Kernels executed (each node of a replayed graph counts).
    pub kernels: u64,
    /// Kernels submitted one by one with `cuLaunchKernel`.
    pub direct_launches: u64,
    /// Graph replays (one `cuGraphLaunch` each).
    pub graph_launches: u64,
    /// Graphs captured and instantiated.
    pub graphs_captured: u64,
    /// Queue flushes (host interactions that had launches pending).
    pub flushes: u64,
    /// With step timing on ([`crate::CudaBackend::set_step_timing`]), per `read_rows`:
    /// nanoseconds of device work from the flush to the end of the read-out (events),
    pub device_ns: u64,
    /// nanoseconds spent inside `read_rows` on the host (flush, copy, wait),
    pub readout_ns: u64,
    /// and nanoseconds on the host between one `read_rows` and the next (recording ops).
    pub record_ns: u64,
}

impl LaunchStats {
    /// Each field combined with `other`'s by `f`.
    fn zip(&self, other: &LaunchStats, f: impl Fn(u64, u64) -> u64) -> LaunchStats {
        LaunchStats {
            kernels: f(self.kernels, other.kernels),
            direct_launches: f(self.direct_launches, other.direct_launches),
            graph_launches: f(self.graph_launches, other.graph_launches),
            graphs_captured: f(self.graphs_captured, other.graphs_captured),
            flushes: f(self.flushes, other.flushes),
            device_ns: f(self.device_ns, other.device_ns),
            readout_ns: f(self.readout_ns, other.readout_ns),
            record_ns: f(self.record_ns, other.record_ns),
        }
    }

    /// What was counted since `earlier` (a snapshot of the same counters).
    pub fn since(&self, earlier: &LaunchStats) -> LaunchStats {
        self.zip(earlier, u64::saturating_sub)
    }

    /// Both counts together.
    pub fn plus(&self, other: &LaunchStats) -> LaunchStats {
        self.zip(other, u64::saturating_add)
    }
}

/// Launch lists shorter than this are submitted directly (a graph would not pay off).
const GRAPH_MIN_LAUNCHES: usize = 16;
/// Launch lists remembered as capture candidates, and graphs kept.
const MAX_SEEN: usize = 8;
const MAX_GRAPHS: usize = 16;

/// A graph the queue owns.
struct OwnedGraph(CudaGraph);

// SAFETY: a CUDA graph and its executable may be used from any thread as long as calls on
// them are serialized; the queue is only reached through `&mut CudaBackend`, so it is used
// by one thread at a time, and the graph is launched on the stream it was captured from.
unsafe impl Send for OwnedGraph {}

struct Captured {
    hash: u64,
    launches: Vec<Launch>,
    graph: OwnedGraph,
}

/// The graph cache of one stream, and its counters.
pub(crate) struct Queue {
    graphs_enabled: bool,
    /// Launch with programmatic stream serialization (see the module doc).
    programmatic: bool,
    seen: Vec<(u64, Vec<Launch>)>,
    graphs: Vec<Captured>,
    profile: Option<Profile>,
    pub stats: LaunchStats,
}

/// A cheap multiplicative hash of a launch list (a few ns per launch; SipHash would cost tens
/// of µs per decode step). Candidates are compared in full after a hash match.
fn hash_of(launches: &[Launch]) -> u64 {
    const K: u64 = 0x517c_c1b7_2722_0a95;
    let mut h = 0u64;
    let mut add = |v: u64| h = (h.rotate_left(5) ^ v).wrapping_mul(K);
    for l in launches {
        add(l.func as u64);
        add(u64::from(l.grid.0) | u64::from(l.grid.1) << 32);
        add(u64::from(l.grid.2) | u64::from(l.block.0) << 32);
        for a in l.args.as_slice() {
            add(a.bits());
        }
    }
    h
}

fn submit(
    stream: &CudaStream,
    funcs: &[CudaFunction],
    l: &Launch,
    pdl: bool,
) -> Result<(), DriverError> {
    let Some(f) = funcs.get(l.func) else {
        return Err(DriverError(sys::cudaError_enum::CUDA_ERROR_NOT_FOUND));
    };
    if pdl {
        return submit_programmatic(stream, f, l);
    }
    let mut b = stream.launch_builder(f);
    for a in l.args.as_slice() {
        match a {
            Arg::P(v) => b.arg(v),
            Arg::I(v) => b.arg(v),
            Arg::L(v) => b.arg(v),
            Arg::F(v) => b.arg(v),
        };
    }
    let cfg = LaunchConfig {
        grid_dim: l.grid,
        block_dim: l.block,
        shared_mem_bytes: 0,
    };
    // SAFETY: each op builds its argument list to match its kernel's C signature (checked by
    // hand per call site against the .cu file); every address points into an allocation this
    // backend owns until it is dropped; the op validated shapes and indices so that every
    // access the kernel makes is in bounds.
    unsafe { b.launch(cfg) }.map(|_| ())
}

/// Submits `launches` in order ([`submit`]); with `pdl`, binds the stream's context once
/// for the raw `cuLaunchKernelEx` calls.
fn submit_all(
    stream: &CudaStream,
    funcs: &[CudaFunction],
    launches: &[Launch],
    pdl: bool,
) -> Result<(), DriverError> {
    if pdl {
        stream.context().bind_to_thread()?;
    }
    launches
        .iter()
        .try_for_each(|l| submit(stream, funcs, l, pdl))
}

/// Launches `l` with `cuLaunchKernelEx` and programmatic stream serialization allowed: the
/// kernel may begin launching before the one before it on the stream has finished. The
/// stream's context must be current on this thread ([`submit_all`] makes it so).
fn submit_programmatic(
    stream: &CudaStream,
    f: &CudaFunction,
    l: &Launch,
) -> Result<(), DriverError> {
    let mut params = [std::ptr::null_mut::<std::ffi::c_void>(); MAX_ARGS];
    for (p, a) in params.iter_mut().zip(l.args.as_slice()) {
        *p = match a {
            Arg::P(v) => v as *const u64 as *mut std::ffi::c_void,
            Arg::I(v) => v as *const i32 as *mut std::ffi::c_void,
            Arg::L(v) => v as *const i64 as *mut std::ffi::c_void,
            Arg::F(v) => v as *const f32 as *mut std::ffi::c_void,
        };
    }
    // SAFETY: an all-zero launch attribute is valid plain data; id and value are set next.
    let mut attr: sys::CUlaunchAttribute = unsafe { std::mem::zeroed() };
    attr.id = sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION;
    attr.value.programmaticStreamSerializationAllowed = 1;
    let cfg = sys::CUlaunchConfig {
        gridDimX: l.grid.0,
        gridDimY: l.grid.1,
        gridDimZ: l.grid.2,
        blockDimX: l.block.0,
        blockDimY: l.block.1,
        blockDimZ: l.block.2,
        sharedMemBytes: 0,
        hStream: stream.cu_stream(),
        attrs: &mut attr,
        numAttrs: 1,
    };
    // SAFETY: `params` points at one value per kernel parameter, of the C types the kernel
    // declares (the same contract as `submit`), alive for the duration of the call, which
    // copies them.
    unsafe {
        sys::cuLaunchKernelEx(
            &cfg,
            f.cu_function(),
            params.as_mut_ptr(),
            std::ptr::null_mut(),
        )
    }
    .result()
}

impl Queue {
    pub fn new(graphs_enabled: bool, programmatic: bool) -> Self {
        Queue {
            graphs_enabled,
            programmatic,
            seen: Vec::new(),
            graphs: Vec::new(),
            profile: None,
            stats: LaunchStats::default(),
        }
    }

    /// Submits `launches`, in order: by graph replay when this exact list was captured,
    /// else launch by launch (capturing it the second time it is seen).
    pub fn flush(
        &mut self,
        stream: &Arc<CudaStream>,
        funcs: &[CudaFunction],
        launches: Vec<Launch>,
    ) -> Result<(), DriverError> {
        if launches.is_empty() {
            return Ok(());
        }
        self.stats.flushes += 1;
        self.stats.kernels += launches.len() as u64;
        if !self.graphs_enabled || launches.len() < GRAPH_MIN_LAUNCHES {
            return self.direct(stream, funcs, &launches);
        }
        let hash = hash_of(&launches);
        if let Some(c) = self
            .graphs
            .iter()
            .find(|c| c.hash == hash && c.launches == launches)
        {
            self.stats.graph_launches += 1;
            return c.graph.0.launch();
        }
        let seen_at = self
            .seen
            .iter()
            .position(|(h, l)| *h == hash && *l == launches);
        let Some(i) = seen_at else {
            if self.seen.len() >= MAX_SEEN {
                self.seen.remove(0);
            }
            self.direct(stream, funcs, &launches)?;
            self.seen.push((hash, launches));
            return Ok(());
        };
        self.seen.remove(i);
        match capture(stream, funcs, &launches, self.programmatic) {
            Ok(graph) => {
                graph.launch()?;
                self.stats.graphs_captured += 1;
                self.stats.graph_launches += 1;
                if self.graphs.len() >= MAX_GRAPHS {
                    self.graphs.remove(0);
                }
                self.graphs.push(Captured {
                    hash,
                    launches,
                    graph: OwnedGraph(graph),
                });
                Ok(())
            }
            Err(e) => {
                // Nothing ran during the failed capture; run the list directly and stop
                // trying (the reason is logged once).
                tracing::warn!(error = %e, "CUDA graph capture failed; launching kernels one by one from now on");
                self.graphs_enabled = false;
                self.direct(stream, funcs, &launches)
            }
        }
    }

    fn direct(
        &mut self,
        stream: &CudaStream,
        funcs: &[CudaFunction],
        launches: &[Launch],
    ) -> Result<(), DriverError> {
        self.stats.direct_launches += launches.len() as u64;
        if self.profile.is_some() {
            return self.direct_timed(stream, funcs, launches);
        }
        let pdl = self.programmatic;
        submit_all(stream, funcs, launches, pdl)
    }

    /// Profiling (graphs off): an event after every launch, then the stream is drained and
    /// each kernel's time (event to event) is added to its function's total.
    fn direct_timed(
        &mut self,
        stream: &CudaStream,
        funcs: &[CudaFunction],
        launches: &[Launch],
    ) -> Result<(), DriverError> {
        let ctx = stream.context();
        let Some(prof) = self.profile.as_mut() else {
            return Ok(());
        };
        while prof.events.len() < launches.len() + 1 {
            prof.events
                .push(ctx.new_event(Some(sys::CUevent_flags::CU_EVENT_DEFAULT))?);
        }
        prof.events[0].record(stream)?;
        for (i, l) in launches.iter().enumerate() {
            submit(stream, funcs, l, false)?;
            prof.events[i + 1].record(stream)?;
        }
        for (i, l) in launches.iter().enumerate() {
            let ms = prof.events[i].elapsed_ms(&prof.events[i + 1])?;
            if prof.per_func.len() <= l.func {
                prof.per_func.resize(l.func + 1, (0, 0.0));
            }
            prof.per_func[l.func].0 += 1;
            prof.per_func[l.func].1 += f64::from(ms);
        }
        Ok(())
    }

    /// Starts (or restarts) per-kernel timing; launches are then submitted one by one.
    pub fn start_profile(&mut self) {
        self.graphs_enabled = false;
        self.profile = Some(Profile::default());
    }

    /// Per function index: (launches, total ms) since [`Queue::start_profile`].
    pub fn profile(&self) -> &[(u64, f64)] {
        self.profile.as_ref().map_or(&[], |p| &p.per_func)
    }
}

/// Per-kernel timing state.
#[derive(Default)]
struct Profile {
    events: Vec<cudarc::driver::CudaEvent>,
    per_func: Vec<(u64, f64)>,
}

/// Records `launches` into a graph (nothing runs while the stream captures).
fn capture(
    stream: &Arc<CudaStream>,
    funcs: &[CudaFunction],
    launches: &[Launch],
    pdl: bool,
) -> Result<CudaGraph, DriverError> {
    stream.begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)?;
    let recorded = submit_all(stream, funcs, launches, pdl);
    // End the capture whatever happened, so the stream is usable again.
    let graph = stream.end_capture(sys::CUgraphInstantiate_flags(0));
    recorded?;
    graph?.ok_or(DriverError(
        sys::cudaError_enum::CUDA_ERROR_STREAM_CAPTURE_INVALIDATED,
    ))
}
