//! The mixture-of-experts MLP ([`worker_compute::ComputeBackend::moe`]), on the experimental
//! `models` path (without it the op is refused by name, as the trait's default does), with no
//! host readback: `moe_route` writes each row's expert ids and weights on the device,
//! `moe_glu_<type>` and `moe_down_<type>` (`matvec.cu`) run each (row, rank) slot's products
//! as mat-vecs of the expert found by its id (llama.cpp's `mul_mat_id`), and `moe_combine`
//! sums each row's slots with their weights in rank order.
//!
//! The experts' weights stay the separate uploads the adapter made; a table of their device
//! addresses is uploaded once per expert list (one per layer), at the list's first use, and
//! the scratch is sized by the input's row capacity, so a decode step launches the same list
//! from step to step (graph replay). Every slot reads its expert's rows: a prefill reads an
//! expert once per row that chose it, where the CPU gathers those rows into one matmul; the
//! sums are the same either way (a row's result depends only on the row).

use worker_compute::{
    ComputeError, ExpertActivation, ExpertWeights, MoeParams, Result, TensorId, WeightId,
};

use worker_compute::shape::{check_cols, check_rows};

use crate::backend::{op_err, CudaBackend};
use crate::device::Device;
use crate::launch::{grid, MoeCombine, MoeDown, MoeGlu, MoeRoute};
use crate::memory::{i32_of, shape};
use crate::types::TypeKernels;

const OP: &str = "moe";
/// Warps per mat-vec block, one output row each (`MV_WARPS` in matvec.cu).
const MV_WARPS: usize = 4;
/// Rows `moe_route` takes per block (one thread each).
const ROUTE_THREADS: usize = 64;

/// The experts' weights of one kind (all gates, all ups or all downs): checked to share a
/// type and a shape, so one kernel serves them all.
#[derive(Clone, Copy)]
struct Stack {
    kernels: TypeKernels,
    rows: usize,
    cols: usize,
    row_bytes: usize,
    seg_bytes: usize,
}

/// Where the scratch of one call lies (addresses): each slot's expert id and weight, the
/// activations between the projections and the slots' outputs.
struct Scratch {
    ids: u64,
    weights: u64,
    act: u64,
    ranked: u64,
}

impl<D: Device> CudaBackend<D> {
    /// [`worker_compute::ComputeBackend::moe`].
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn mixture(
        &mut self,
        out: TensorId,
        x: TensorId,
        router_logits: TensorId,
        experts: &[ExpertWeights],
        p: &MoeParams,
        rows: usize,
    ) -> Result<()> {
        if !self.experimental.models {
            return Err(ComputeError::Unsupported {
                op: OP,
                reason: "the cuda backend has no mixture-of-experts op".into(),
            });
        }
        if p.used == 0 || p.used > experts.len() {
            return Err(shape(
                OP,
                format!("{} experts used of {}", p.used, experts.len()),
            ));
        }
        if out == x || out == router_logits {
            return Err(ComputeError::Aliased { op: OP });
        }
        let gate = self.stack(experts.iter().map(|e| e.gate), "gate")?;
        let up = self.stack(experts.iter().map(|e| e.up), "up")?;
        let down = self.stack(experts.iter().map(|e| e.down), "down")?;
        let (d, ff, dout) = (gate.cols, gate.rows, down.rows);
        if (up.rows, up.cols) != (ff, d) || down.cols != ff {
            return Err(shape(
                OP,
                format!(
                    "experts' gate [{ff} x {d}], up [{} x {}] and down [{dout} x {}] do not \
                     chain",
                    up.rows, up.cols, down.cols
                ),
            ));
        }
        if gate.kernels != up.kernels || gate.row_bytes != up.row_bytes {
            return Err(ComputeError::Unsupported {
                op: OP,
                reason: "gate and up projections of different weight types".into(),
            });
        }
        for s in [&gate, &down] {
            if !s.cols.is_multiple_of(32) || !(1..=4096).contains(&s.seg_bytes) {
                return Err(ComputeError::Unsupported {
                    op: OP,
                    reason: format!(
                        "expert rows of {} elements (the mat-vec takes whole 32-element chunks)",
                        s.cols
                    ),
                });
            }
        }
        for e in experts {
            for (b, n) in [(e.gate_bias, ff), (e.up_bias, ff), (e.down_bias, dout)] {
                if let Some(b) = b {
                    self.vector(OP, b, n)?;
                }
            }
        }
        let (xp, capacity) = {
            let t = self.tensor(OP, x)?;
            check_rows(OP, t.rows, rows, "input")?;
            check_cols(OP, t.cols, d, "input")?;
            (t.ptr, t.rows)
        };
        let lp = {
            let t = self.tensor(OP, router_logits)?;
            check_rows(OP, t.rows, rows, "router logits")?;
            check_cols(OP, t.cols, experts.len(), "router logits")?;
            t.ptr
        };
        let op = {
            let t = self.tensor(OP, out)?;
            check_rows(OP, t.rows, rows, "output")?;
            check_cols(OP, t.cols, dout, "output")?;
            t.ptr
        };
        let slots = rows * p.used;
        if slots > 65_535 {
            return Err(shape(
                OP,
                format!("{rows} rows x {} experts in one call", p.used),
            ));
        }
        let (n_experts, used) = (i32_of(OP, experts.len())?, i32_of(OP, p.used)?);
        let (d_i, ff_i, dout_i) = (i32_of(OP, d)?, i32_of(OP, ff)?, i32_of(OP, dout)?);
        if rows == 0 {
            return Ok(());
        }
        let table = self.expert_table(experts)?;
        let s = self.moe_scratch(capacity * p.used, ff, dout)?;
        let (oai, alpha, limit) = match p.activation {
            ExpertActivation::Swiglu => (0, 0.0, 0.0),
            ExpertActivation::SwigluOai { alpha, limit } => (1, alpha, limit),
        };
        let route = MoeRoute {
            ids: s.ids,
            weights: s.weights,
            logits: lp,
            rows: i32_of(OP, rows)?,
            experts: n_experts,
            used,
        };
        let blocks = rows.div_ceil(ROUTE_THREADS);
        self.launch(
            self.kernels.moe_route,
            grid(blocks, 1, ROUTE_THREADS as u32),
            route,
        );
        // The address tables: gates, ups, downs, then their biases, one entry per expert.
        let at = |i: usize| table + (i * experts.len() * 8) as u64;
        let glu = MoeGlu {
            act: s.act,
            x: xp,
            ids: s.ids,
            wg: at(0),
            wu: at(1),
            bg: at(3),
            bu: at(4),
            used,
            n: ff_i,
            k: d_i,
            row_bytes: gate.row_bytes as i64,
            seg_bytes: i32_of(OP, gate.seg_bytes)?,
            oai,
            alpha,
            limit,
        };
        let dims = grid(ff.div_ceil(MV_WARPS), slots, 32 * MV_WARPS as u32);
        self.launch(gate.kernels.moe_glu, dims, glu);
        let down_args = MoeDown {
            out: s.ranked,
            act: s.act,
            ids: s.ids,
            wd: at(2),
            bd: at(5),
            n: dout_i,
            k: ff_i,
            row_bytes: down.row_bytes as i64,
            seg_bytes: i32_of(OP, down.seg_bytes)?,
        };
        let dims = grid(dout.div_ceil(MV_WARPS), slots, 32 * MV_WARPS as u32);
        self.launch(down.kernels.moe_down, dims, down_args);
        let combine = MoeCombine {
            out: op,
            ranked: s.ranked,
            weights: s.weights,
            used,
            cols: dout_i,
        };
        self.launch(self.kernels.moe_combine, grid(rows, 1, 256), combine);
        Ok(())
    }

    /// The experts' weights of one kind, checked to share type and shape.
    fn stack(&self, ids: impl Iterator<Item = WeightId>, what: &str) -> Result<Stack> {
        let mut first: Option<(Stack, &str)> = None;
        for id in ids {
            let w = self.weight(OP, id)?;
            let s = Stack {
                kernels: w.kernels,
                rows: w.rows,
                cols: w.cols,
                row_bytes: w.row_bytes,
                seg_bytes: w.seg_bytes,
            };
            match first {
                None => first = Some((s, &w.name)),
                Some((f, name)) => {
                    if (f.rows, f.cols) != (s.rows, s.cols) {
                        return Err(shape(
                            OP,
                            format!(
                                "expert {what} {:?} is [{} x {}], {name:?} [{} x {}]",
                                w.name, s.rows, s.cols, f.rows, f.cols
                            ),
                        ));
                    }
                    if f.kernels != s.kernels || f.row_bytes != s.row_bytes {
                        return Err(ComputeError::Unsupported {
                            op: OP,
                            reason: format!("expert {what} weights of different types"),
                        });
                    }
                }
            }
        }
        first
            .map(|(s, _)| s)
            .ok_or_else(|| shape(OP, "no experts".into()))
    }

    /// The device address of the table of `experts`' weight and bias addresses (gates,
    /// ups, downs, gate biases, up biases, down biases; 0 for no bias), uploaded at the
    /// list's first use.
    fn expert_table(&mut self, experts: &[ExpertWeights]) -> Result<u64> {
        if let Some((_, buf)) = self.expert_tables.iter().find(|(e, _)| e == experts) {
            return Ok(buf.ptr);
        }
        let mut table = Vec::with_capacity(6 * experts.len());
        for pick in [
            |e: &ExpertWeights| Some(e.gate),
            |e: &ExpertWeights| Some(e.up),
            |e: &ExpertWeights| Some(e.down),
            |e: &ExpertWeights| e.gate_bias,
            |e: &ExpertWeights| e.up_bias,
            |e: &ExpertWeights| e.down_bias,
        ] {
            for e in experts {
                table.push(match pick(e) {
                    Some(id) => self.weight(OP, id)?.ptr,
                    None => 0,
                });
            }
        }
        let buf = self.alloc::<u64>("moe expert table", table.len())?;
        self.dev
            .upload(buf, 0, bytemuck::cast_slice(&table))
            .map_err(op_err(OP))?;
        self.expert_tables.push((experts.to_vec(), buf));
        Ok(buf.ptr)
    }

    /// The scratch for `slots` (row, rank) slots of `ff` activations and `dout` outputs,
    /// grown (after the queued launches that use the old one have run) when short.
    fn moe_scratch(&mut self, slots: usize, ff: usize, dout: usize) -> Result<Scratch> {
        // Each part starts on a 256-byte boundary (the mat-vec reads activations as float4).
        let part = |n: usize| n.div_ceil(64) * 64;
        let (weights, act) = (part(slots), 2 * part(slots));
        let ranked = act + part(slots * ff);
        let need = ranked + slots * dout;
        let buf = match self.moe_scratch {
            Some((buf, have)) if have >= need => buf,
            old => {
                if let Some((buf, _)) = old {
                    self.flush(OP)?;
                    self.moe_scratch = None;
                    self.dev.free(buf);
                }
                let buf = self.alloc::<f32>("moe scratch", need)?;
                self.moe_scratch = Some((buf, need));
                buf
            }
        };
        let at = |floats: usize| buf.ptr + floats as u64 * 4;
        Ok(Scratch {
            ids: buf.ptr,
            weights: at(weights),
            act: at(act),
            ranked: at(ranked),
        })
    }
}
