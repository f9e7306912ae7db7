//! The `.cu` kernel files, embedded at build time and compiled by NVRTC at start-up.

use cudarc::nvrtc::{compile_ptx_with_opts, CompileError, CompileOptions, Ptx};

use crate::error::CudaError;
use crate::{loader, WEIGHT_TYPES};

/// Helpers prepended to every kernel file (NVRTC gets no include paths).
pub const COMMON: &str = include_str!("../kernels/common.cuh");

/// Every kernel file: (file name, source).
pub const FILES: &[(&str, &str)] = &[
    ("elementwise.cu", include_str!("../kernels/elementwise.cu")),
    ("quant.cu", include_str!("../kernels/quant.cu")),
    ("matvec.cu", include_str!("../kernels/matvec.cu")),
    ("attention.cu", include_str!("../kernels/attention.cu")),
];

/// The element-wise, norm, rope, attention and argmax kernels.
const OTHER_KERNELS: &[&str] = &[
    "add_f32",
    "mul_f32",
    "scale_f32",
    "add_bias_f32",
    "swiglu_f32",
    "gelu_f32",
    "gather_rows_f32",
    "rms_norm_f32",
    "add_rms_norm_f32",
    "layer_norm_f32",
    "rope_f32",
    "argmax_f32",
    "kv_store",
    "attention_f16",
    "attention_decode_f16",
    "attention_combine",
    "attention_prefill_f16",
];

/// The kernels stamped out per weight type (`<kind>_<type suffix>`), and their file.
const PER_TYPE_KERNELS: &[(&str, &str)] = &[
    ("embed", "quant.cu"),
    ("matmul", "quant.cu"),
    ("dequant", "quant.cu"),
    ("matvec", "matvec.cu"),
    ("matvec_glu", "matvec.cu"),
    ("matvec_wide", "matvec.cu"),
    ("matvec3", "matvec.cu"),
];

/// Every kernel the backend loads.
pub fn names() -> Vec<String> {
    let mut v: Vec<String> = OTHER_KERNELS.iter().map(|s| s.to_string()).collect();
    for (_, ty) in WEIGHT_TYPES {
        v.extend(
            PER_TYPE_KERNELS
                .iter()
                .map(|(kind, _)| format!("{kind}_{ty}")),
        );
    }
    v
}

/// The file that defines kernel `name` (one of [`names`]).
pub fn file_of(name: &str) -> &'static str {
    let per_type = PER_TYPE_KERNELS.iter().find(|(kind, _)| {
        WEIGHT_TYPES
            .iter()
            .any(|(_, ty)| name.strip_prefix(kind).and_then(|r| r.strip_prefix('_')) == Some(ty))
    });
    match per_type {
        Some(&(_, file)) => file,
        None if name == "kv_store" || name.starts_with("attention_") => "attention.cu",
        None => "elementwise.cu",
    }
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
