//! The prefill matmul through cuBLAS: a weight matrix is dequantized to f32 a tile of rows at
//! a time (`dequant_<type>` in quant.cu) and multiplied on the tensor cores in TF32 (f32
//! inputs and outputs, products rounded to 10 mantissa bits like f16, accumulation in f32).
//!
//! Only batches of at least [`GEMM_MIN_ROWS`] rows take this path: a dequantized tile costs
//! writing and reading 4 bytes per weight, which pays off only when many rows share it. The
//! tile is one allocation, sized for the largest weight's tile and grown when a larger one
//! comes.

use std::sync::Arc;

use cudarc::cublas::{result as cublas, sys, CudaBlas};
use cudarc::driver::CudaStream;
use worker_compute::{ComputeError, Result, WeightId};

use crate::backend::{op_err, CudaBackend};
use crate::device::Device;
use crate::error::CudaError;
use crate::launch::{grid, Dequant};
use crate::loader;
use crate::memory::i32_of;

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
    pub fn new(stream: Arc<CudaStream>) -> std::result::Result<Blas, CudaError> {
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
    ) -> std::result::Result<(), cublas::CublasError> {
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

impl<D: Device> CudaBackend<D> {
    /// `out = x · wᵀ` over `rows` rows through cuBLAS: each tile of weight rows is
    /// dequantized to f32, then multiplied into its columns of `out`. Launches queued before
    /// are flushed first, so everything stays in order on the one stream.
    pub(crate) fn matmul_gemm(&mut self, out: u64, x: u64, w: WeightId, rows: usize) -> Result<()> {
        const OP: &str = "matmul";
        let (wp, n, k, row_bytes, dequant) = {
            let wt = self.weight(OP, w)?;
            (wt.ptr, wt.rows, wt.cols, wt.row_bytes, wt.kernels.dequant)
        };
        let tile_floats = |n: usize, k: usize| (TILE_ELEMENTS / k).clamp(1, n) * k;
        let tile_rows = tile_floats(n, k) / k;
        if self.gemm_tile.as_ref().is_none_or(|t| t.1 < tile_rows * k) {
            // Sized once for the largest tile of any weight uploaded so far.
            let floats = self
                .weights
                .iter()
                .filter(|w| !w.vector)
                .map(|w| tile_floats(w.rows, w.cols))
                .fold(tile_rows * k, usize::max);
            if let Some((old, _)) = self.gemm_tile.take() {
                self.dev.free(old);
            }
            let buf = self.alloc::<f32>("matmul weight tile", floats)?;
            self.gemm_tile = Some((buf, floats));
        }
        let tile = self.gemm_tile.as_ref().map_or(0, |t| t.0.ptr);
        let (rows_i, n_i, k_i) = (i32_of(OP, rows)?, i32_of(OP, n)?, i32_of(OP, k)?);
        // cuBLAS runs on this thread's current context.
        self.dev.bind().map_err(op_err(OP))?;
        for start in (0..n).step_by(tile_rows) {
            let tn = tile_rows.min(n - start);
            let args = Dequant {
                out: tile,
                w: wp + (start * row_bytes) as u64,
                cols: k_i,
                row_bytes: row_bytes as i64,
            };
            self.launch(dequant, grid(tn, 1, 256), args);
            self.flush(OP)?;
            let Some(blas) = self.dev.blas() else {
                return Err(ComputeError::Unsupported {
                    op: OP,
                    reason: "cuBLAS is not loaded".into(),
                });
            };
            // SAFETY: `tile` holds tn x k floats, `x` rows x k, `out` rows x n, all live
            // allocations of this backend, used in order on the stream the handle is bound to.
            unsafe {
                blas.matmul_tf32(
                    out + start as u64 * 4,
                    x,
                    tile,
                    MatmulDims {
                        rows: rows_i,
                        n: i32_of(OP, tn)?,
                        k: k_i,
                        ldo: n_i,
                    },
                )
            }
            .map_err(|e| ComputeError::Device {
                op: OP,
                source: Box::new(e),
            })?;
        }
        Ok(())
    }
}
