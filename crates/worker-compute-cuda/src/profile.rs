//! Where a step's time goes on the GPU, for `worker-orcd bench`: launch counters, step timing
//! (device time between events around each read-out, host time inside it and between
//! steps), and a per-kernel profile (an event after every launch, graphs off).

use std::sync::Arc;
use std::time::Instant;

use cudarc::driver::{sys, CudaContext, CudaEvent, CudaStream, DriverError};
use worker_compute::Result;

use crate::backend::{op_err, CudaBackend};
use crate::queue::LaunchStats;

/// Events and a clock for [`CudaBackend::set_step_timing`].
pub(crate) struct StepTiming {
    start: CudaEvent,
    end: CudaEvent,
    last_readout: Option<Instant>,
}

impl StepTiming {
    /// Fresh events on `ctx`.
    pub(crate) fn new(ctx: &Arc<CudaContext>) -> std::result::Result<Self, DriverError> {
        let ev = || ctx.new_event(Some(sys::CUevent_flags::CU_EVENT_DEFAULT));
        Ok(StepTiming {
            start: ev()?,
            end: ev()?,
            last_readout: None,
        })
    }

    /// A read-out begins: the start event goes on the stream before its flush.
    pub(crate) fn begin(&self, stream: &CudaStream) -> std::result::Result<(), DriverError> {
        self.start.record(stream)
    }

    /// The read-out's copy is queued: the end event goes on the stream; after the caller's
    /// synchronize, [`StepTiming::add_to`] reads both.
    pub(crate) fn end(&self, stream: &CudaStream) -> std::result::Result<(), DriverError> {
        self.end.record(stream)
    }

    /// Adds the finished read-out (asked for at `entered`) to `stats`.
    pub(crate) fn add_to(
        &mut self,
        stats: &mut LaunchStats,
        entered: Instant,
    ) -> std::result::Result<(), DriverError> {
        let ms = self.start.elapsed_ms(&self.end)?;
        stats.device_ns += (f64::from(ms) * 1e6) as u64;
        stats.readout_ns += entered.elapsed().as_nanos() as u64;
        if let Some(prev) = self.last_readout {
            stats.record_ns += entered.duration_since(prev).as_nanos() as u64;
        }
        self.last_readout = Some(Instant::now());
        Ok(())
    }
}

impl CudaBackend {
    /// Kernel launch counters since start-up (the benchmark prints them per decode step).
    pub fn launch_stats(&self) -> LaunchStats {
        self.dev.queue.stats
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
        let names = crate::kernels::names();
        let mut v: Vec<(String, u64, f64)> = self
            .dev
            .queue
            .profile()
            .iter()
            .enumerate()
            .filter(|(_, &(n, _))| n > 0)
            .map(|(i, &(n, ms))| (names.get(i).cloned().unwrap_or_default(), n, ms))
            .collect();
        v.sort_by(|a, b| b.2.total_cmp(&a.2));
        v
    }
}
