//! Finding the CUDA libraries before cudarc touches them. cudarc's dynamic loader panics
//! when a library is missing; here the same file names are tried with `dlopen` first, so a
//! machine without a driver gets an error value instead.

use crate::error::CudaError;

/// Tries cudarc's candidate file names for `lib` (`"cuda"`, `"nvrtc"`, …); returns the first
/// that loads, or every name tried.
pub fn probe(lib: &str) -> Result<String, String> {
    let mut names = cudarc::get_lib_name_candidates(lib);
    let mut seen = std::collections::HashSet::new();
    names.retain(|n| seen.insert(n.clone()));
    for name in &names {
        // SAFETY: loading a CUDA library runs its initializers, which is what cudarc itself
        // does next with the same name; the handle is dropped (dlclose) right away.
        if unsafe { libloading::Library::new(name) }.is_ok() {
            return Ok(name.clone());
        }
    }
    Err(names.join(", "))
}

/// The driver library (`libcuda`), or [`CudaError::NoDevice`] naming what was searched.
pub fn require_driver() -> Result<String, CudaError> {
    probe("cuda").map_err(|searched| {
        CudaError::NoDevice(format!(
            "the NVIDIA driver library (libcuda) is not installed (searched {searched})"
        ))
    })
}

/// The NVRTC library, or [`CudaError::MissingLibrary`].
pub fn require_nvrtc() -> Result<String, CudaError> {
    probe("nvrtc").map_err(|searched| CudaError::MissingLibrary {
        name: "nvrtc",
        searched,
    })
}

/// Runs `f`, turning a panic inside cudarc (a library that vanished between the probe and
/// the call) into an error. The default panic message is still printed by the hook.
pub fn no_panic<T>(what: &'static str, f: impl FnOnce() -> T) -> Result<T, CudaError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|p| {
        let reason = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "panic in cudarc".to_string());
        CudaError::Driver { what, reason }
    })
}
