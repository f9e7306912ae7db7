//! The prefill matmul through cuBLAS: a weight matrix is dequantized to f32 a tile of rows at
//! a time (`dequant_<type>` in quant.cu) and multiplied on the tensor cores in TF32 (f32
//! inputs and outputs, products rounded to 10 mantissa bits like f16, accumulation in f32).
//!
//! Only batches of at least [`GEMM_MIN_ROWS`] rows take this path: a dequantized tile costs
//! writing and reading 4 bytes per weight, which pays off only when many rows share it.

use std::sync::Arc;

use cudarc::cublas::{result as cublas, sys, CudaBlas};
use cudarc::driver::CudaStream;

use crate::error::CudaError;
use crate::loader;

/// Activation rows from which a matmul dequantizes its weights and calls cuBLAS.
pub const GEMM_MIN_ROWS: usize = 32;
/// Weights dequantized at once (f32 elements): 64 MiB of scratch.
pub const TILE_ELEMENTS: usize = 16 << 20;

/// The sizes of one [`Blas::matmul_tf32`].
#[derive(Clone, Copy, Debug)]
pub struct MatmulDims {
    /// Activation rows.
    pub rows: i32,
    /// Weight rows (output columns written).
    pub n: i32,
    /// Row length of weights and activations.
    pub k: i32,
    /// Floats per output row.
    pub ldo: i32,
}

/// A cuBLAS handle bound to the backend's stream.
pub struct Blas(CudaBlas);

impl Blas {
    /// Loads cuBLAS (looked for first: cudarc panics when it is missing) and binds a handle
    /// to `stream`.
    pub fn new(stream: Arc<CudaStream>) -> Result<Blas, CudaError> {
        loader::probe("cublas").map_err(|searched| CudaError::MissingLibrary {
            name: "cublas",
            searched,
        })?;
        let handle = loader::no_panic("cublasCreate", || CudaBlas::new(stream))?.map_err(|e| {
            CudaError::Driver {
                what: "cublasCreate",
                reason: e.to_string(),
            }
        })?;
        Ok(Blas(handle))
    }

    /// `out[r][j] = dot(x[r], w[j])` for `r < d.rows`, `j < d.n`: `w` is `d.n` f32 rows of
    /// `d.k`, `x` `d.rows` rows of `d.k`, and `out` rows of `d.ldo` floats (`d.n` of them
    /// written), all device addresses on the handle's stream.
    ///
    /// # Safety
    /// The addresses must be live device allocations of at least those sizes.
    pub unsafe fn matmul_tf32(
        &self,
        out: u64,
        x: u64,
        w: u64,
        d: MatmulDims,
    ) -> Result<(), cublas::CublasError> {
        let MatmulDims { rows, n, k, ldo } = d;
        let (alpha, beta) = (1.0f32, 0.0f32);
        // Column-major view: out^T (n x rows, leading dim ldo) = w (stored k x n, transposed)
        // times x^T (k x rows).
        // SAFETY: the caller guarantees that the three addresses are live device allocations
        // of the sizes above, which are the sizes these dimensions and leading dimensions make
        // cuBLAS read and write; `alpha` and `beta` are host f32s that outlive the call, as
        // the handle's default host pointer mode expects.
        unsafe {
            cublas::gemm_ex(
                *self.0.handle(),
                sys::cublasOperation_t::CUBLAS_OP_T,
                sys::cublasOperation_t::CUBLAS_OP_N,
                n,
                rows,
                k,
                (&alpha as *const f32).cast(),
                w as *const std::ffi::c_void,
                sys::cudaDataType::CUDA_R_32F,
                k,
                x as *const std::ffi::c_void,
                sys::cudaDataType::CUDA_R_32F,
                k,
                (&beta as *const f32).cast(),
                out as *mut std::ffi::c_void,
                sys::cudaDataType::CUDA_R_32F,
                ldo,
                sys::cublasComputeType_t::CUBLAS_COMPUTE_32F_FAST_TF32,
                sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
    }
}
