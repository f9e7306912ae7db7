//! The `.cu` kernel files, embedded at build time and compiled by NVRTC at start-up.

use cudarc::nvrtc::{compile_ptx_with_opts, CompileError, CompileOptions, Ptx};

use crate::error::CudaError;
use crate::{loader, types};

/// Helpers prepended to every kernel file (NVRTC gets no include paths).
pub const COMMON: &str = include_str!("../kernels/common.cuh");

/// Every kernel file: (file name, source).
pub const FILES: &[(&str, &str)] = &[
    ("elementwise.cu", include_str!("../kernels/elementwise.cu")),
    ("quant.cu", include_str!("../kernels/quant.cu")),
    ("matvec.cu", include_str!("../kernels/matvec.cu")),
    ("attention.cu", include_str!("../kernels/attention.cu")),
    ("moe.cu", include_str!("../kernels/moe.cu")),
];

/// The C type of a kernel parameter, as the backend passes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Param {
    /// A device address (`float*`, `const u8*`, …).
    Pointer,
    /// `int`.
    Int,
    /// `long long`.
    LongLong,
    /// `float`.
    Float,
}

impl Param {
    /// The type of the parameter in a PTX `.entry` (`.u64` for addresses and `long long`,
    /// `.u32` for `int`, `.f32` for `float`).
    pub fn ptx_type(self) -> &'static str {
        match self {
            Param::Pointer | Param::LongLong => ".u64",
            Param::Int => ".u32",
            Param::Float => ".f32",
        }
    }
}

/// Every kernel the backend loads, in the order the device loads them.
pub fn names() -> Vec<String> {
    types::kernel_list()
        .into_iter()
        .map(|(n, _, _)| n)
        .collect()
}

/// The file that defines kernel `name` (one of [`names`]).
pub fn file_of(name: &str) -> Option<&'static str> {
    types::kernel_list()
        .into_iter()
        .find(|(n, _, _)| n == name)
        .map(|(_, file, _)| file)
}

/// Every kernel the backend loads with the parameters it passes it, in order (what the
/// kernel's C signature must declare).
pub fn signatures() -> Vec<(String, &'static [Param])> {
    types::kernel_list()
        .into_iter()
        .map(|(n, _, params)| (n, params))
        .collect()
}

/// The full text NVRTC compiles for one file.
pub fn source(file_src: &str) -> String {
    format!("{COMMON}\n{file_src}")
}

/// Compiles one kernel file to PTX for `compute_<arch>` (e.g. `"90"`).
pub fn compile(file: &'static str, src: &str, arch: &str) -> Result<Ptx, CudaError> {
    loader::require_nvrtc()?;
    let opts = CompileOptions {
        name: Some(file.to_string()),
        options: vec![
            format!("--gpu-architecture=compute_{arch}"),
            "--std=c++17".into(),
        ],
        ..Default::default()
    };
    let src = source(src);
    loader::no_panic("nvrtc", || compile_ptx_with_opts(&src, opts))?.map_err(|e| {
        let log = match e {
            CompileError::CompileError { log, .. } => log.to_string_lossy().into_owned(),
            other => format!("{other:?}"),
        };
        CudaError::Compile { file, log }
    })
}

/// Compiles every kernel file; used at start-up and by the GPU-free compile check.
pub fn compile_all(arch: &str) -> Result<Vec<(&'static str, Ptx)>, CudaError> {
    FILES
        .iter()
        .map(|&(file, src)| Ok((file, compile(file, src, arch)?)))
        .collect()
}
