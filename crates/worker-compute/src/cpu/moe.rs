//! The mixture-of-experts MLP on the CPU ([`crate::ComputeBackend::moe`]): route each row to
//! its top experts, run every chosen expert once over the rows that chose it (three matmuls
//! on the usual kernels), and sum each row's expert outputs in rank order.
//!
//! A row's result depends only on the row: its experts' matmuls give the same values for any
//! set of rows (the kernels' sums do not depend on the batch), and its sum runs over its own
//! ranks in a fixed order. So a sequence gets the same tokens alone or in a batch.

use super::{ops, BlockQ8, BlockQ8K, CpuBackend, SharedOut, Weight};
use crate::backend::{ExpertActivation, ExpertWeights, MoeParams, Result, TensorId};
use crate::error::ComputeError;
use crate::shape::{check_cols, check_rows};

/// Buffers reused across calls: gathered rows, projections, and every (row, rank) output.
#[derive(Default)]
pub(super) struct MoeScratch {
    x: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    act: Vec<f32>,
    down: Vec<f32>,
    ranked: Vec<f32>,
}

/// The `used` largest of `logits` (ties to the lower index), with the softmax of their values.
pub(crate) fn route(logits: &[f32], used: usize, out: &mut Vec<(usize, f32)>) {
    out.clear();
    for _ in 0..used {
        let best = (0..logits.len())
            .filter(|e| !out.iter().any(|&(c, _)| c == *e))
            .fold(None, |b: Option<usize>, e| match b {
                Some(b) if logits[b] >= logits[e] => Some(b),
                _ => Some(e),
            });
        match best {
            Some(e) => out.push((e, logits[e])),
            None => break,
        }
    }
    let max = out.iter().fold(f32::NEG_INFINITY, |m, &(_, v)| m.max(v));
    let mut sum = 0f32;
    for (_, v) in out.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    for (_, v) in out.iter_mut() {
        *v /= sum;
    }
}

/// One expert's weights, looked up and checked.
struct Expert<'a> {
    gate: &'a Weight,
    up: &'a Weight,
    down: &'a Weight,
    gate_bias: Option<&'a [f32]>,
    up_bias: Option<&'a [f32]>,
    down_bias: Option<&'a [f32]>,
}

impl CpuBackend {
    /// [`crate::ComputeBackend::moe`] on the CPU.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn moe_ffn(
        &mut self,
        out: TensorId,
        x: TensorId,
        router_logits: TensorId,
        experts: &[ExpertWeights],
        p: &MoeParams,
        rows: usize,
    ) -> Result<()> {
        let mut s = std::mem::take(&mut self.moe_scratch);
        let mut q8 = std::mem::take(&mut self.q8);
        let mut q8k = std::mem::take(&mut self.q8k);
        let bufs = (&mut s, &mut q8, &mut q8k);
        let result = self.moe_run(out, x, router_logits, experts, p, rows, bufs);
        self.moe_scratch = s;
        self.q8 = q8;
        self.q8k = q8k;
        result
    }

    #[allow(clippy::too_many_arguments, clippy::type_complexity)]
    fn moe_run(
        &self,
        out: TensorId,
        x: TensorId,
        router_logits: TensorId,
        experts: &[ExpertWeights],
        p: &MoeParams,
        rows: usize,
        (s, q8, q8k): (&mut MoeScratch, &mut Vec<BlockQ8>, &mut Vec<BlockQ8K>),
    ) -> Result<()> {
        const OP: &str = "moe";
        let shape = |reason: String| ComputeError::Shape { op: OP, reason };
        if p.used == 0 || p.used > experts.len() {
            return Err(shape(format!(
                "{} experts used of {}",
                p.used,
                experts.len()
            )));
        }
        let experts = experts
            .iter()
            .map(|e| self.expert(OP, e))
            .collect::<Result<Vec<_>>>()?;
        let (d, dout) = (experts[0].gate.cols, experts[0].down.rows);
        for e in &experts {
            let ff = e.gate.rows;
            let ok = e.gate.cols == d
                && (e.up.rows, e.up.cols) == (ff, d)
                && (e.down.rows, e.down.cols) == (dout, ff)
                && e.gate_bias.is_none_or(|b| b.len() == ff)
                && e.up_bias.is_none_or(|b| b.len() == ff)
                && e.down_bias.is_none_or(|b| b.len() == dout);
            if !ok {
                return Err(shape(format!(
                    "expert {:?}, {:?}, {:?} do not share one [{d} -> ff -> {dout}] shape",
                    e.gate.name, e.up.name, e.down.name
                )));
            }
        }

        // Route: each row's experts by rank, and each expert's (row, rank) list.
        let mut choices = Vec::with_capacity(rows * p.used);
        let mut chosen_by: Vec<Vec<(usize, usize)>> = vec![Vec::new(); experts.len()];
        {
            let lt = self.tensor(OP, router_logits)?;
            check_rows(OP, lt.rows, rows, "router logits")?;
            check_cols(OP, lt.cols, experts.len(), "router logits")?;
            let mut ranked = Vec::with_capacity(p.used);
            for r in 0..rows {
                route(&lt.data[r * lt.cols..][..lt.cols], p.used, &mut ranked);
                for (rank, &(e, w)) in ranked.iter().enumerate() {
                    chosen_by[e].push((r, rank));
                    choices.push(w);
                }
            }
        }

        {
            let xt = self.tensor(OP, x)?;
            check_rows(OP, xt.rows, rows, "input")?;
            check_cols(OP, xt.cols, d, "input")?;
            s.ranked.clear();
            s.ranked.resize(rows * p.used * dout, 0.0);
            for (e, picks) in experts.iter().zip(&chosen_by) {
                let m = picks.len();
                if m == 0 {
                    continue;
                }
                let ff = e.gate.rows;
                s.x.clear();
                for &(r, _) in picks {
                    s.x.extend_from_slice(&xt.data[r * d..(r + 1) * d]);
                }
                // Exactly `m` rows each: the activation and bias passes run over whole buffers.
                s.gate.resize(m * ff, 0.0);
                s.up.resize(m * ff, 0.0);
                s.down.resize(m * dout, 0.0);
                let jobs = [
                    (e.gate, SharedOut(s.gate.as_mut_ptr())),
                    (e.up, SharedOut(s.up.as_mut_ptr())),
                ];
                self.matmul_slices(&s.x, &jobs, m, q8, q8k)?;
                add_rows(&mut s.gate, e.gate_bias);
                add_rows(&mut s.up, e.up_bias);
                let act: &[f32] = match p.activation {
                    ExpertActivation::Swiglu => {
                        s.act.resize(m * ff, 0.0);
                        (self.kernels.swiglu)(&mut s.act, &s.gate, &s.up);
                        &s.act
                    }
                    ExpertActivation::SwigluOai { alpha, limit } => {
                        ops::swiglu_oai_row(&mut s.gate, &s.up, alpha, limit);
                        &s.gate
                    }
                };
                let jobs = [(e.down, SharedOut(s.down.as_mut_ptr()))];
                self.matmul_slices(act, &jobs, m, q8, q8k)?;
                add_rows(&mut s.down, e.down_bias);
                for (i, &(r, rank)) in picks.iter().enumerate() {
                    let at = (r * p.used + rank) * dout;
                    s.ranked[at..at + dout].copy_from_slice(&s.down[i * dout..(i + 1) * dout]);
                }
            }
            let mut o = self.tensor_mut(OP, out)?;
            check_rows(OP, o.rows, rows, "output")?;
            check_cols(OP, o.cols, dout, "output")?;
            for r in 0..rows {
                let orow = &mut o.data[r * dout..(r + 1) * dout];
                for rank in 0..p.used {
                    let w = choices[r * p.used + rank];
                    let y = &s.ranked[(r * p.used + rank) * dout..][..dout];
                    if rank == 0 {
                        orow.iter_mut().zip(y).for_each(|(o, y)| *o = y * w);
                    } else {
                        orow.iter_mut().zip(y).for_each(|(o, y)| *o += y * w);
                    }
                }
            }
        }
        Ok(())
    }

    fn expert(&self, op: &'static str, e: &ExpertWeights) -> Result<Expert<'_>> {
        let (gate, up, down) = (
            self.weight(op, e.gate)?,
            self.weight(op, e.up)?,
            self.weight(op, e.down)?,
        );
        let bias = |b: Option<_>, n: usize| b.map(|b| self.vector(op, b, n)).transpose();
        Ok(Expert {
            gate_bias: bias(e.gate_bias, gate.rows)?,
            up_bias: bias(e.up_bias, up.rows)?,
            down_bias: bias(e.down_bias, down.rows)?,
            gate,
            up,
            down,
        })
    }
}

/// `x[r] += bias` for every row of `x` (rows of `bias.len()`), when there is a bias.
fn add_rows(x: &mut [f32], bias: Option<&[f32]>) {
    if let Some(b) = bias {
        for row in x.chunks_exact_mut(b.len()) {
            row.iter_mut().zip(b).for_each(|(v, b)| *v += b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::route;

    #[test]
    fn routing_takes_the_largest_logits_ties_to_the_lower_index() {
        let mut out = Vec::new();
        route(&[0.5, 2.0, -1.0, 2.0, 1.0], 3, &mut out);
        let ids: Vec<_> = out.iter().map(|&(e, _)| e).collect();
        assert_eq!(ids, [1, 3, 4]);
        let (a, b) = ((2.0f32 - 2.0).exp(), (1.0f32 - 2.0).exp());
        let want = [a / (2.0 * a + b), a / (2.0 * a + b), b / (2.0 * a + b)];
        for ((_, w), want) in out.iter().zip(want) {
            assert!((w - want).abs() < 1e-7, "{w} vs {want}");
        }
    }
}
