//! The one error type of this crate: what can go wrong before the backend runs an op. Op
//! failures are [`worker_compute::ComputeError`], the trait's error.

/// Start-up failures: no adapter, no device.
#[derive(Debug, thiserror::Error)]
pub enum WgpuError {
    /// wgpu found no adapter at all, or none matching `--adapter`: the message says which.
    #[error("no GPU adapter found: {0}")]
    NoAdapter(String),
    /// The adapter refused to open a device with the features and limits asked for.
    #[error("adapter {adapter:?} refused to open a device: {reason}")]
    RequestDevice {
        /// The adapter's name.
        adapter: String,
        /// wgpu's message.
        reason: String,
    },
}
