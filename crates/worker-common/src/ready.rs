//! What a worker tells its pool manager once it is ready: the ready-callback payload. The
//! wire form (JSON) is written by `worker-http`; this is the plain type.

/// How a worker's model memory is laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemoryArchitecture {
    /// Weights and KV cache in host RAM (the CPU worker).
    Host,
    /// Weights, KV cache and activations in device memory only (the CUDA worker).
    VramOnly,
    /// One memory shared by CPU and GPU (Apple silicon).
    Unified,
}

impl MemoryArchitecture {
    /// The stable string: `host`, `vram-only`, `unified`.
    pub fn as_str(self) -> &'static str {
        match self {
            MemoryArchitecture::Host => "host",
            MemoryArchitecture::VramOnly => "vram-only",
            MemoryArchitecture::Unified => "unified",
        }
    }
}

/// The device a worker computes on, where it picks one among several.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceInfo {
    /// The device's name (`"Apple M2"`, `"llvmpipe (LLVM 15.0.6, 256 bits)"`).
    pub name: String,
    /// The API it is driven through (`metal`, `vulkan`, `dx12`).
    pub backend: String,
}

/// The body of the ready callback a worker POSTs to `--callback-url` after loading its model
/// and binding its server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadyCallback {
    /// The worker's id, as given by `--worker-id`.
    pub worker_id: String,
    /// The model reference, as given by `--model`.
    pub model_ref: String,
    /// Bytes of memory the loaded model holds (weights and KV cache).
    pub memory_bytes: u64,
    /// Where that memory lives.
    pub memory_architecture: MemoryArchitecture,
    /// The worker binary's kind: `cpu`, `cuda`, `wgpu`, …
    pub worker_type: String,
    /// The device it computes on, for a worker that picks one (`worker-aarmd`'s adapter).
    pub device: Option<DeviceInfo>,
    /// What the worker serves: `execute`, `openai`, …
    pub capabilities: Vec<String>,
    /// The base URI the worker answers on (`http://127.0.0.1:8080`).
    pub uri: String,
}
