//! Products of activations by weights, and the fusions among them that the trait's ops name:
//! a group of products of one input (`matmul_group`, `linear`) with their biases, and the
//! gate/up projections with the SwiGLU after them (`matmul_swiglu`).
//!
//! One row (a decode step) runs the mat-vec kernels of `matvec.cu`: one warp per output row
//! (`matvec_<type>`), or with the experimental `matvec` path a block per row for rows
//! longer than 2048 elements (`matvec_wide_<type>`) and up to three products of one input,
//! type and row length in one launch (`matvec3_<type>`). More rows run `matmul_<type>`, or
//! with the experimental `gemm` path cuBLAS from 32 rows on (see [`crate::gemm`]).
//!
//! Which launches a group makes is decided here, from the group, never by reading launches
//! already queued: a bias is stored by its product's launch when the whole group is that one
//! launch (or, with the experimental `bias` path, whenever its product is a mat-vec), and
//! added by `add_bias_f32` after the group's launches otherwise (the sequence the default
//! path has launched since `matmul_group` came in); the gate/up/SwiGLU is one
//! `matvec_glu_<type>` when both projections are mat-vecs of one type and shape.

use worker_compute::{ComputeError, Linear, Result, TensorId, WeightId};

use worker_compute::shape::{check_cols, check_rows};

use crate::backend::CudaBackend;
use crate::device::Device;
use crate::gemm::GEMM_MIN_ROWS;
use crate::launch::{grid, grid_1d, AddBias, Matmul, Matvec, Matvec3, MatvecGlu};
use crate::memory::{i32_of, shape};
use crate::types::TypeKernels;

/// Activation rows per matmul block row (`MM_ROWS` in quant.cu).
const MM_ROWS: usize = 8;
/// Output columns per matmul block (warps per block).
const MM_COLS: usize = 4;
/// Warps per mat-vec block, one output row each (`MV_WARPS` in matvec.cu).
const MV_WARPS: usize = 4;
/// Products one `matvec3_<type>` launch computes at most.
const MATVEC3_SETS: usize = 3;

/// One validated product `out = x · wᵀ`, with what its launch needs.
#[derive(Clone, Copy)]
pub(crate) struct Product {
    pub out: u64,
    pub x: u64,
    pub weight: WeightId,
    pub w: u64,
    /// Weight rows (output columns) and row length.
    pub n: usize,
    pub k: usize,
    pub row_bytes: usize,
    pub seg_bytes: usize,
    /// The kernels of the weight's storage type.
    pub kernels: TypeKernels,
    /// Whether one row of it can run as a mat-vec (whole 32-element chunks, a staged
    /// segment the kernel's shared memory holds).
    pub matvec: bool,
}

impl Product {
    /// Whether `other` can share one `matvec3` launch with this product.
    fn merges_with(&self, other: &Product) -> bool {
        self.kernels.matvec3 == other.kernels.matvec3
            && self.x == other.x
            && self.k == other.k
            && self.row_bytes == other.row_bytes
            && self.seg_bytes == other.seg_bytes
    }
}

impl<D: Device> CudaBackend<D> {
    /// Checks `out = x · wᵀ` over `rows` rows: distinct tensors, rows that fit, columns that
    /// match the weight.
    pub(crate) fn product(
        &self,
        op: &'static str,
        out: TensorId,
        x: TensorId,
        w: WeightId,
        rows: usize,
    ) -> Result<Product> {
        if out == x {
            return Err(ComputeError::Aliased { op });
        }
        let wt = self.weight(op, w)?;
        let xt = self.tensor(op, x)?;
        let o = self.tensor(op, out)?;
        check_rows(op, xt.rows, rows, "input")?;
        check_rows(op, o.rows, rows, "output")?;
        if xt.cols != wt.cols || o.cols != wt.rows {
            let what = if xt.cols != wt.cols {
                "input"
            } else {
                "output"
            };
            check_cols(op, xt.cols, wt.cols, &format!("input of {:?}", wt.name))?;
            check_cols(op, o.cols, wt.rows, &format!("{what} of {:?}", wt.name))?;
        }
        Ok(Product {
            out: o.ptr,
            x: xt.ptr,
            weight: w,
            w: wt.ptr,
            n: wt.rows,
            k: wt.cols,
            row_bytes: wt.row_bytes,
            seg_bytes: wt.seg_bytes,
            kernels: wt.kernels,
            matvec: wt.cols.is_multiple_of(32) && (1..=4096).contains(&wt.seg_bytes),
        })
    }

    /// Whether a one-row `p` runs as the split-row mat-vec (experimental: rows of more than
    /// 64 chunks get a block each, split over its warps).
    fn wide(&self, p: &Product) -> bool {
        self.experimental.matvec && p.k / 32 > 64
    }

    /// Queues the launch of `p` over `rows` rows; a one-row mat-vec adds `bias` (0: none)
    /// as it stores.
    pub(crate) fn launch_product(
        &mut self,
        op: &'static str,
        p: Product,
        rows: usize,
        bias: u64,
    ) -> Result<()> {
        if rows == 1 && p.matvec {
            let wide = self.wide(&p);
            let args = Matvec {
                out: p.out,
                x: p.x,
                w: p.w,
                bias,
                n: i32_of(op, p.n)?,
                k: i32_of(op, p.k)?,
                row_bytes: p.row_bytes as i64,
                seg_bytes: i32_of(op, p.seg_bytes)?,
            };
            let dims = grid(
                if wide { p.n } else { p.n.div_ceil(MV_WARPS) },
                1,
                32 * MV_WARPS as u32,
            );
            let kernel = if wide {
                p.kernels.matvec_wide
            } else {
                p.kernels.matvec
            };
            self.launch(kernel, dims, args);
            return Ok(());
        }
        if rows >= GEMM_MIN_ROWS && self.dev.blas().is_some() {
            return self.matmul_gemm(p.out, p.x, p.weight, rows);
        }
        let blocks_y = rows.div_ceil(MM_ROWS);
        if blocks_y > 65_535 {
            return Err(shape(op, format!("{rows} rows in one matmul")));
        }
        let args = Matmul {
            out: p.out,
            x: p.x,
            w: p.w,
            rows: i32_of(op, rows)?,
            n: i32_of(op, p.n)?,
            k: i32_of(op, p.k)?,
            row_bytes: p.row_bytes as i64,
        };
        let dims = grid(p.n.div_ceil(MM_COLS), blocks_y, 32 * MM_COLS as u32);
        self.launch(p.kernels.matmul, dims, args);
        Ok(())
    }

    /// One `matvec3_<type>` launch of two or three one-row products with their biases.
    fn launch_matvec3(&mut self, op: &'static str, set: &[(Product, u64)]) -> Result<()> {
        let Some(&(first, _)) = set.first() else {
            return Ok(());
        };
        let slot = |i: usize| -> Result<(u64, u64, u64, i32)> {
            match set.get(i) {
                Some(&(p, bias)) => Ok((p.out, p.w, bias, i32_of(op, p.n)?)),
                None => Ok((0, 0, 0, 0)),
            }
        };
        let [(out0, w0, bias0, n0), (out1, w1, bias1, n1), (out2, w2, bias2, n2)] =
            [slot(0)?, slot(1)?, slot(2)?];
        let args = Matvec3 {
            x: first.x,
            k: i32_of(op, first.k)?,
            row_bytes: first.row_bytes as i64,
            seg_bytes: i32_of(op, first.seg_bytes)?,
            out0,
            w0,
            bias0,
            n0,
            out1,
            w1,
            bias1,
            n1,
            out2,
            w2,
            bias2,
            n2,
        };
        let rows: usize = set.iter().map(|(p, _)| p.n).sum();
        let dims = grid(rows.div_ceil(MV_WARPS), 1, 32 * MV_WARPS as u32);
        self.launch(first.kernels.matvec3, dims, args);
        Ok(())
    }

    /// The products of a group, in order, split into the launches one row of them takes:
    /// with the experimental `matvec` path, runs of up to three mat-vecs that merge (same
    /// input, type and row length, distinct outputs); otherwise one launch each.
    fn one_row_launches(&self, products: &[(Product, u64)]) -> Vec<std::ops::Range<usize>> {
        let mut runs: Vec<std::ops::Range<usize>> = Vec::new();
        for (i, (p, _)) in products.iter().enumerate() {
            let joins = self.experimental.matvec
                && p.matvec
                && !self.wide(p)
                && runs.last().is_some_and(|run| {
                    let members = &products[run.clone()];
                    let (head, _) = members[0];
                    run.len() < MATVEC3_SETS
                        && head.matvec
                        && !self.wide(&head)
                        && head.merges_with(p)
                        && members.iter().all(|(m, _)| m.out != p.out)
                });
            match runs.last_mut() {
                Some(run) if joins => run.end = i + 1,
                _ => runs.push(i..i + 1),
            }
        }
        runs
    }

    /// `outs[i].out = x · outs[i].weightᵀ + outs[i].bias` over `rows` rows (see the module
    /// doc for which launches that takes).
    pub(crate) fn linear_group(
        &mut self,
        op: &'static str,
        x: TensorId,
        outs: &[Linear],
        rows: usize,
    ) -> Result<()> {
        let mut products = Vec::with_capacity(outs.len());
        for l in outs {
            let p = self.product(op, l.out, x, l.weight, rows)?;
            let bias = match l.bias {
                Some(b) => self.vector(op, b, p.n)?,
                None => 0,
            };
            products.push((p, bias));
        }
        if rows == 0 {
            return Ok(());
        }
        if rows > 1 {
            for &(p, _) in &products {
                self.launch_product(op, p, rows, 0)?;
            }
            return self.add_biases(op, &products, rows);
        }
        let runs = self.one_row_launches(&products);
        let one_launch = runs.len() == 1 && products.first().is_some_and(|(p, _)| p.matvec);
        // Whether each mat-vec stores its own bias; what it does not store is added after.
        let fold = one_launch || self.experimental.bias;
        let mut after = Vec::new();
        for run in runs {
            let set = &products[run];
            match set {
                [(p, bias)] if fold && p.matvec => self.launch_product(op, *p, 1, *bias)?,
                [(p, bias)] => {
                    self.launch_product(op, *p, 1, 0)?;
                    after.push((*p, *bias));
                }
                _ if fold => self.launch_matvec3(op, set)?,
                _ => {
                    let unbiased: Vec<(Product, u64)> = set.iter().map(|&(p, _)| (p, 0)).collect();
                    self.launch_matvec3(op, &unbiased)?;
                    after.extend_from_slice(set);
                }
            }
        }
        self.add_biases(op, &after, rows)
    }

    /// `add_bias_f32` for every product of a group that has a bias, in order.
    fn add_biases(
        &mut self,
        op: &'static str,
        products: &[(Product, u64)],
        rows: usize,
    ) -> Result<()> {
        for &(p, bias) in products {
            if bias != 0 {
                let n = rows * p.n;
                let args = AddBias {
                    dst: p.out,
                    bias,
                    n: n as i64,
                    cols: i32_of(op, p.n)?,
                };
                self.launch(self.kernels.add_bias, grid_1d(n), args);
            }
        }
        Ok(())
    }

    /// `gate.0 = x · gate.1ᵀ`, `up.0 = x · up.1ᵀ`, `out = silu(gate.0) * up.0`: one
    /// `matvec_glu_<type>` for one row of two mat-vecs of one type and shape, else the two
    /// products as a group and `swiglu_f32`.
    pub(crate) fn gate_up_swiglu(
        &mut self,
        out: TensorId,
        x: TensorId,
        gate: (TensorId, WeightId),
        up: (TensorId, WeightId),
        rows: usize,
    ) -> Result<()> {
        const OP: &str = "matmul_swiglu";
        let g = self.product(OP, gate.0, x, gate.1, rows)?;
        let u = self.product(OP, up.0, x, up.1, rows)?;
        let (op, _, _, cols) = self.swiglu_operands(OP, out, gate.0, up.0, rows)?;
        if rows == 0 {
            return Ok(());
        }
        let fused = rows == 1
            && g.matvec
            && u.matvec
            && g.kernels.matvec_glu == u.kernels.matvec_glu
            && (g.n, g.k, g.row_bytes, g.seg_bytes) == (u.n, u.k, u.row_bytes, u.seg_bytes)
            && op != g.x;
        if fused {
            let args = MatvecGlu {
                act: op,
                gate: g.out,
                up: u.out,
                x: g.x,
                w_gate: g.w,
                w_up: u.w,
                n: i32_of(OP, g.n)?,
                k: i32_of(OP, g.k)?,
                row_bytes: g.row_bytes as i64,
                seg_bytes: i32_of(OP, g.seg_bytes)?,
            };
            let dims = grid(cols.div_ceil(MV_WARPS), 1, 32 * MV_WARPS as u32);
            self.launch(g.kernels.matvec_glu, dims, args);
            return Ok(());
        }
        let group = [
            Linear {
                out: gate.0,
                weight: gate.1,
                bias: None,
            },
            Linear {
                out: up.0,
                weight: up.1,
                bias: None,
            },
        ];
        self.linear_group(OP, x, &group, rows)?;
        self.launch_swiglu(OP, out, gate.0, up.0, rows)
    }
}
