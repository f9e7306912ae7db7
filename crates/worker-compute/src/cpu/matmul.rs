//! The CPU matmul: a batch of products of one activation matrix, by panel kernels (weights
//! repacked at load into 16-row panels, several activation rows per call) or row kernels, on
//! activations quantized once per 8-bit format the weights need; or, with
//! [`Activations::F32`], on f32 activations.

use std::sync::atomic::AtomicUsize;

use super::quant::panel::PANEL;
use super::quant::{
    BlockQ8, BlockQ8K, PanelDot, PanelDotMany, PanelDots, PanelKernels, TypeKernels, VecDot,
    PANEL_BATCH, QK, QK_K,
};
use super::ranges::{balanced_cuts, Ranges};
use super::{for_chunks, Activations, CpuBackend, SharedOut, Weight};
use crate::backend::Result;

/// Columns of a matmul computed together (weight rows that stay in L1 across the batch).
const COL_CHUNK: usize = 16;

/// One weight in panels of a [`CpuBackend::matmul_panels`] job, with its output.
struct PanelJob<'a> {
    wt: &'a Weight,
    pk: PanelKernels,
    out: SharedOut,
}

impl PanelJob<'_> {
    /// Blocks along a row of the weight, and bytes of one of its panels.
    fn shape(&self) -> (usize, usize) {
        let format = self.pk.format;
        let nb = self.wt.cols / format.block_elems();
        (nb, nb * format.panel_block_bytes())
    }

    /// Panel `p` against all `rows` activation rows (`x`: rows of blocks `A`),
    /// [`PANEL_BATCH`] rows per call where it can.
    fn run<A>(
        &self,
        p: usize,
        (dot, dot_many): (PanelDot<A>, PanelDotMany<A>),
        x: &[A],
        rows: usize,
    ) {
        let ((nb, panel_bytes), n) = (self.shape(), self.wt.rows);
        let x = |r: usize| &x[r * nb..(r + 1) * nb];
        let w = &self.wt.bytes[p * panel_bytes..][..panel_bytes];
        let (j0, width) = (p * PANEL, PANEL.min(n - p * PANEL));
        let store = |r: usize, v: &[f32; PANEL]| {
            // SAFETY: columns j0..j0+width of every row belong to panel p, which only this
            // call computes; r < rows <= the output's row capacity.
            let o = unsafe { self.out.slice(r * n + j0, width) };
            o.copy_from_slice(&v[..width]);
        };
        let mut r = 0;
        while r + PANEL_BATCH <= rows {
            let v = dot_many(w, std::array::from_fn(|i| x(r + i)));
            for (i, vi) in v.iter().enumerate() {
                store(r + i, vi);
            }
            r += PANEL_BATCH;
        }
        for r in r..rows {
            store(r, &dot(w, x(r)));
        }
    }
}

/// The block size of the 8-bit format a weight's kernel quantizes activations to (`QK` for
/// Q8, `QK_K` for Q8_K), or `None` when it reads f32: its panel kernel's if it has one
/// (Q3_K's row kernel takes f32, its panel kernel Q8_K), else its row kernel's.
fn activation_block(k: &TypeKernels) -> Option<usize> {
    match (k.panel.map(|p| p.dots), k.vec_dot) {
        (Some(PanelDots::Q8(..)), _) | (None, VecDot::Q8(_)) => Some(QK),
        (Some(PanelDots::Q8K(..)), _) | (None, VecDot::Q8K(_)) => Some(QK_K),
        (Some(PanelDots::F32(..)), _) => None,
        (None, VecDot::F32(_) | VecDot::Dequantized) => None,
    }
}

impl CpuBackend {
    /// The matmuls of `jobs` (shapes checked: each weight's columns are the width of the rows
    /// of `xs`, its output holds `rows` rows of its rows) on the `rows` rows of `xs`. With
    /// [`Activations::Q8`] the activations are quantized once per format the weights need,
    /// the weights in panels run as one pool job and the others one job each; with
    /// [`Activations::F32`] weights whose kernels would quantize the activations (row or
    /// panel kernels) take the f32 reference.
    pub(super) fn matmul_slices(
        &self,
        xs: &[f32],
        jobs: &[(&Weight, SharedOut)],
        rows: usize,
        q8: &mut Vec<BlockQ8>,
        q8k: &mut Vec<BlockQ8K>,
    ) -> Result<()> {
        if self.config.activations == Activations::F32 {
            for &(wt, out) in jobs {
                match activation_block(&wt.kernels) {
                    None => self.matmul_slices_q8(xs, &[(wt, out)], rows, q8, q8k)?,
                    Some(_) => self.matmul_f32_reference(xs, wt, out, rows)?,
                }
            }
            return Ok(());
        }
        self.matmul_slices_q8(xs, jobs, rows, q8, q8k)
    }

    /// [`Self::matmul_slices`] with 8-bit activations.
    fn matmul_slices_q8(
        &self,
        xs: &[f32],
        jobs: &[(&Weight, SharedOut)],
        rows: usize,
        q8: &mut Vec<BlockQ8>,
        q8k: &mut Vec<BlockQ8K>,
    ) -> Result<()> {
        let needs = |block| {
            jobs.iter()
                .any(|(w, _)| activation_block(&w.kernels) == Some(block))
        };
        if needs(QK) {
            let quantize = self.kernels.quantize_row_q8;
            self.quantize_rows(xs, rows, QK, q8, quantize)?;
        }
        if needs(QK_K) {
            let quantize = self.kernels.quantize_row_q8k;
            self.quantize_rows(xs, rows, QK_K, q8k, quantize)?;
        }
        let (q8, q8k) = (&q8[..], &q8k[..]);
        let mut panels = Vec::new();
        for &(wt, out) in jobs {
            match wt.kernels.panel {
                Some(pk) => panels.push(PanelJob { wt, pk, out }),
                None => self.matmul_rows(wt, xs, q8, q8k, rows, out)?,
            }
        }
        self.matmul_panels(&panels, xs, q8, q8k, rows)
    }

    /// Quantizes the `rows` rows of `xs` into `q` (resized) by blocks of `block` elements,
    /// rows split over the pool.
    fn quantize_rows<B: Clone + Default + Send>(
        &self,
        xs: &[f32],
        rows: usize,
        block: usize,
        q: &mut Vec<B>,
        quantize: fn(&[f32], &mut [B]),
    ) -> Result<()> {
        let k = xs.len() / rows.max(1);
        let nb = k / block;
        q.resize(rows * nb, B::default());
        let qptr = SharedOut(q.as_mut_ptr());
        self.for_rows("matmul", rows, |r0, r1| {
            for r in r0..r1 {
                // SAFETY: row r of `q` belongs to this range only; r < rows.
                quantize(&xs[r * k..(r + 1) * k], unsafe { qptr.slice(r * nb, nb) });
            }
        })
    }

    /// A matmul with the row kernels (a weight not in panels: a type without a panel layout,
    /// or a table without panel kernels), one pool job.
    fn matmul_rows(
        &self,
        wt: &Weight,
        xs: &[f32],
        q8: &[BlockQ8],
        q8k: &[BlockQ8K],
        rows: usize,
        optr: SharedOut,
    ) -> Result<()> {
        let (k, n, mode) = (wt.cols, wt.rows, wt.kernels.vec_dot);
        let (dequantize, dot) = (wt.kernels.dequantize_row, self.kernels.dot_f32);
        let next = AtomicUsize::new(0);
        let job = || {
            let mut wf = Vec::new();
            for_chunks(n, COL_CHUNK, &next, |j0, j1| {
                for j in j0..j1 {
                    let wrow = wt.row(j);
                    if let VecDot::Dequantized = mode {
                        // Once for every activation row.
                        wf.resize(k, 0f32);
                        dequantize(wrow, &mut wf);
                    }
                    for r in 0..rows {
                        let v = match mode {
                            VecDot::F32(f) => f(wrow, &xs[r * k..(r + 1) * k]),
                            VecDot::Q8(f) => f(wrow, &q8[r * (k / QK)..(r + 1) * (k / QK)]),
                            VecDot::Q8K(f) => f(wrow, &q8k[r * (k / QK_K)..(r + 1) * (k / QK_K)]),
                            VecDot::Dequantized => dot(&wf, &xs[r * k..(r + 1) * k]),
                        };
                        // SAFETY: element (r, j) belongs to this chunk only, and
                        // r < rows <= the output's row capacity (checked above).
                        let o = unsafe { optr.slice(r * n + j, 1) };
                        o[0] = v;
                    }
                }
            });
        };
        self.run("matmul", &job)
    }

    /// The matmuls of weights in panels as one pool job: the work items are the panels
    /// (sixteen output columns) of every weight, each through every activation row, cut into
    /// one contiguous range of about equal bytes per thread ([`Ranges`]).
    fn matmul_panels(
        &self,
        jobs: &[PanelJob<'_>],
        xs: &[f32],
        q8: &[BlockQ8],
        q8k: &[BlockQ8K],
        rows: usize,
    ) -> Result<()> {
        if jobs.is_empty() {
            return Ok(());
        }
        // The items are the panels of every weight, one after the other; each thread streams
        // one contiguous run of them, of about equal bytes (`Ranges`).
        let runs: Vec<(usize, u64)> = jobs
            .iter()
            .map(|job| (job.wt.rows.div_ceil(PANEL), job.shape().1 as u64))
            .collect();
        let ranges = Ranges::new(&balanced_cuts(&runs, self.pool.n_threads()));
        let work = || {
            ranges.run(|mut p| {
                let mut j = 0;
                while p >= runs[j].0 {
                    p -= runs[j].0;
                    j += 1;
                }
                let job = &jobs[j];
                match job.pk.dots {
                    PanelDots::Q8(f, f4) => job.run(p, (f, f4), q8, rows),
                    PanelDots::Q8K(f, f4) => job.run(p, (f, f4), q8k, rows),
                    PanelDots::F32(f, f4) => job.run(p, (f, f4), xs, rows),
                }
            });
        };
        self.run("matmul", &work)
    }

    /// The f32-activation matmul: each weight row dequantized, then an f32 dot product.
    fn matmul_f32_reference(
        &self,
        xs: &[f32],
        wt: &Weight,
        optr: SharedOut,
        rows: usize,
    ) -> Result<()> {
        let (k, n) = (wt.cols, wt.rows);
        let xs = &xs[..rows * k];
        let next = AtomicUsize::new(0);
        let dot = self.kernels.dot_f32;
        let job = || {
            let mut wrow = vec![0f32; k];
            let mut buf = Vec::new();
            for_chunks(n, COL_CHUNK, &next, |j0, j1| {
                for j in j0..j1 {
                    (wt.kernels.dequantize_row)(wt.gguf_row(j, &mut buf), &mut wrow);
                    for r in 0..rows {
                        // SAFETY: element (r, j) belongs to this chunk only.
                        let o = unsafe { optr.slice(r * n + j, 1) };
                        o[0] = dot(&wrow, &xs[r * k..(r + 1) * k]);
                    }
                }
            });
        };
        self.run("matmul", &job)
    }
}
