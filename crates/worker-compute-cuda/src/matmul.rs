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
//! launch, and added by `add_bias_f32` after the group's launches otherwise (the sequence the
//! default path has launched since `matmul_group` came in); the gate/up/SwiGLU is one
//! `matvec_glu_<type>` when both projections are mat-vecs of one type and shape.

use worker_compute::{ComputeError, Linear, Result, TensorId, WeightId};

use crate::backend::{check_cols, check_rows, grid, grid_1d, i32_of, shape, CudaBackend};
use crate::device::Device;
use crate::gemm::GEMM_MIN_ROWS;
use crate::queue::Arg;

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
    /// The weight's kernels: embed, matmul, matvec, matvec_glu, matvec_wide, matvec3, dequant.
    pub funcs: [usize; 7],
    /// Whether one row of it can run as a mat-vec (whole 32-element chunks, a staged
    /// segment the kernel's shared memory holds).
    pub matvec: bool,
}

impl Product {
    /// Whether `other` can share one `matvec3` launch with this product.
    fn merges_with(&self, other: &Product) -> bool {
        self.funcs[5] == other.funcs[5]
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
            funcs: wt.funcs,
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
            let func = p.funcs[if wide { 4 } else { 2 }];
            let args = [
                Arg::P(p.out),
                Arg::P(p.x),
                Arg::P(p.w),
                Arg::P(bias),
                Arg::I(i32_of(op, p.n)?),
                Arg::I(i32_of(op, p.k)?),
                Arg::L(p.row_bytes as i64),
                Arg::I(i32_of(op, p.seg_bytes)?),
            ];
            let blocks = if wide { p.n } else { p.n.div_ceil(MV_WARPS) };
            let dims = grid(blocks, 1, 32 * MV_WARPS as u32);
            return self.launch_func(op, func, dims, &args);
        }
        if rows >= GEMM_MIN_ROWS && self.dev.blas().is_some() {
            return self.matmul_gemm(p.out, p.x, p.weight, rows);
        }
        let blocks_y = rows.div_ceil(MM_ROWS);
        if blocks_y > 65_535 {
            return Err(shape(op, format!("{rows} rows in one matmul")));
        }
        let args = [
            Arg::P(p.out),
            Arg::P(p.x),
            Arg::P(p.w),
            Arg::I(i32_of(op, rows)?),
            Arg::I(i32_of(op, p.n)?),
            Arg::I(i32_of(op, p.k)?),
            Arg::L(p.row_bytes as i64),
        ];
        let dims = grid(p.n.div_ceil(MM_COLS), blocks_y, 32 * MM_COLS as u32);
        self.launch_func(op, p.funcs[1], dims, &args)
    }

    /// One `matvec3_<type>` launch of two or three one-row products with their biases.
    fn launch_matvec3(&mut self, op: &'static str, set: &[(Product, u64)]) -> Result<()> {
        let Some(&(first, _)) = set.first() else {
            return Ok(());
        };
        let mut args = vec![
            Arg::P(first.x),
            Arg::I(i32_of(op, first.k)?),
            Arg::L(first.row_bytes as i64),
            Arg::I(i32_of(op, first.seg_bytes)?),
        ];
        for i in 0..MATVEC3_SETS {
            match set.get(i) {
                Some(&(p, bias)) => args.extend([
                    Arg::P(p.out),
                    Arg::P(p.w),
                    Arg::P(bias),
                    Arg::I(i32_of(op, p.n)?),
                ]),
                None => args.extend([Arg::P(0), Arg::P(0), Arg::P(0), Arg::I(0)]),
            }
        }
        let rows: usize = set.iter().map(|(p, _)| p.n).sum();
        let dims = grid(rows.div_ceil(MV_WARPS), 1, 32 * MV_WARPS as u32);
        self.launch_func(op, first.funcs[5], dims, &args)
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
        for run in runs {
            let set = &products[run];
            match set {
                [(p, bias)] => {
                    let bias = if one_launch { *bias } else { 0 };
                    self.launch_product(op, *p, 1, bias)?;
                }
                _ if one_launch => self.launch_matvec3(op, set)?,
                _ => {
                    let unbiased: Vec<(Product, u64)> = set.iter().map(|&(p, _)| (p, 0)).collect();
                    self.launch_matvec3(op, &unbiased)?;
                }
            }
        }
        if one_launch {
            return Ok(());
        }
        self.add_biases(op, &products, rows)
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
                let args = [
                    Arg::P(p.out),
                    Arg::P(bias),
                    Arg::L(n as i64),
                    Arg::I(i32_of(op, p.n)?),
                ];
                self.launch(op, "add_bias_f32", grid_1d(n), &args)?;
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
            && g.funcs[3] == u.funcs[3]
            && (g.n, g.k, g.row_bytes, g.seg_bytes) == (u.n, u.k, u.row_bytes, u.seg_bytes)
            && op != g.x;
        if fused {
            let args = [
                Arg::P(op),
                Arg::P(g.out),
                Arg::P(u.out),
                Arg::P(g.x),
                Arg::P(g.w),
                Arg::P(u.w),
                Arg::I(i32_of(OP, g.n)?),
                Arg::I(i32_of(OP, g.k)?),
                Arg::L(g.row_bytes as i64),
                Arg::I(i32_of(OP, g.seg_bytes)?),
            ];
            let dims = grid(cols.div_ceil(MV_WARPS), 1, 32 * MV_WARPS as u32);
            return self.launch_func(OP, g.funcs[3], dims, &args);
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
