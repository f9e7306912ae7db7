//! The one error type of this crate (start-up and kernel compilation; op failures are
//! reported through [`worker_compute::ComputeError`], the trait's error).

/// What can go wrong before the backend runs a single op.
#[derive(Debug, thiserror::Error)]
pub enum CudaError {
    /// No driver library or no device: the message says which.
    #[error("no CUDA device found: {0}")]
    NoDevice(String),
    /// A CUDA library other than the driver (NVRTC, cuBLAS) could not be loaded.
    #[error("the CUDA library {name} could not be loaded (searched {searched}); put it on LD_LIBRARY_PATH")]
    MissingLibrary {
        /// Library base name (`nvrtc`).
        name: &'static str,
        /// The file names tried.
        searched: String,
    },
    /// A driver call failed.
    #[error("CUDA driver error in {what}: {reason}")]
    Driver {
        /// What was being done.
        what: &'static str,
        /// The driver's message.
        reason: String,
    },
    /// NVRTC rejected a kernel file; `log` is the compiler's output.
    #[error("kernel file {file} failed to compile:\n{log}")]
    Compile {
        /// The `.cu` file.
        file: &'static str,
        /// The compiler log or error.
        log: String,
    },
    /// Not enough free VRAM for what the caller asked to hold (INSUFFICIENT_VRAM).
    #[error("INSUFFICIENT_VRAM: {required} bytes required, {available} bytes available on device {device}")]
    InsufficientVram {
        /// Bytes asked for.
        required: u64,
        /// Free bytes reported by the driver.
        available: u64,
        /// Device ordinal.
        device: usize,
    },
}
