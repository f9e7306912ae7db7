//! The [`ComputeBackend`] impl: memory ops hand over to [`crate::memory`], products to
//! [`crate::matmul`], attention to [`crate::attention`], `moe` to [`crate::moe`]; the row and element-wise ops
//! (`elementwise.cu`) are here. Each op checks its handles and shapes, then records its
//! launch; nothing fuses across ops.

use worker_compute::{
    AttentionParams, ComputeBackend, ComputeError, ExpertWeights, IndexId, KvCacheConfig,
    KvCacheId, KvIndex, KvLayout, KvType, Linear, MoeParams, Result, RopeMode, RopeParams,
    TensorId, WeightDesc, WeightId,
};

use worker_compute::shape::{check_cols, check_rows};

use crate::backend::CudaBackend;
use crate::device::Device;
use crate::launch::*;
use crate::memory::{i32_of, shape};

impl<D: Device> ComputeBackend for CudaBackend<D> {
    fn name(&self) -> &'static str {
        "cuda"
    }

    fn allocated_bytes(&self) -> Option<u64> {
        Some(self.allocated)
    }

    fn upload_weight(&mut self, desc: WeightDesc<'_>) -> Result<WeightId> {
        self.upload(desc)
    }

    fn alloc_tensor(&mut self, rows: usize, cols: usize) -> Result<TensorId> {
        self.new_tensor(rows, cols)
    }

    fn alloc_index(&mut self, len: usize) -> Result<IndexId> {
        self.new_index(len)
    }

    fn kv_layout(&self) -> KvLayout {
        KvLayout::Slots
    }

    fn kv_storage(&self, _requested: KvType) -> KvType {
        // The attention kernels read f16 entries and nothing else.
        KvType::F16
    }

    fn alloc_kv_cache(&mut self, config: KvCacheConfig) -> Result<KvCacheId> {
        self.new_kv_cache(config)
    }

    fn write_index(&mut self, dst: IndexId, data: &[u32]) -> Result<()> {
        self.set_index(dst, data)
    }

    fn write_rows(&mut self, dst: TensorId, data: &[f32]) -> Result<()> {
        self.set_rows(dst, data)
    }

    fn read_rows(&mut self, src: TensorId, rows: usize, out: &mut [f32]) -> Result<()> {
        self.read_out(src, rows, out)
    }

    fn embed(&mut self, out: TensorId, table: WeightId, ids: IndexId, rows: usize) -> Result<()> {
        const OP: &str = "embed";
        let w = self.weight(OP, table)?;
        let (host, ip) = self.index(OP, ids, rows)?;
        let o = self.tensor(OP, out)?;
        check_rows(OP, o.rows, rows, "output")?;
        check_cols(OP, o.cols, w.cols, "output")?;
        if let Some(&id) = host.iter().find(|&&id| id as usize >= w.rows) {
            return Err(ComputeError::BadIndex {
                op: OP,
                reason: format!("token id {id} is outside {:?} ({} rows)", w.name, w.rows),
            });
        }
        if rows == 0 {
            return Ok(());
        }
        let args = Embed {
            out: o.ptr,
            table: w.ptr,
            ids: ip,
            cols: i32_of(OP, w.cols)?,
            row_bytes: w.row_bytes as i64,
        };
        self.launch(w.kernels.embed, grid(rows, 1, 256), args);
        Ok(())
    }

    fn gather_rows(
        &mut self,
        out: TensorId,
        src: TensorId,
        index: IndexId,
        rows: usize,
    ) -> Result<()> {
        const OP: &str = "gather_rows";
        if out == src {
            return Err(ComputeError::Aliased { op: OP });
        }
        let (host, ip) = self.index(OP, index, rows)?;
        let s = self.tensor(OP, src)?;
        let o = self.tensor(OP, out)?;
        check_rows(OP, o.rows, rows, "output")?;
        check_cols(OP, o.cols, s.cols, "output")?;
        if let Some(&i) = host.iter().find(|&&i| i as usize >= s.rows) {
            return Err(ComputeError::BadIndex {
                op: OP,
                reason: format!("row {i} of a {}-row tensor", s.rows),
            });
        }
        if rows == 0 {
            return Ok(());
        }
        let args = GatherRows {
            out: o.ptr,
            src: s.ptr,
            index: ip,
            cols: i32_of(OP, s.cols)?,
        };
        self.launch(self.kernels.gather_rows, grid(rows, 1, 256), args);
        Ok(())
    }

    fn rms_norm(
        &mut self,
        out: TensorId,
        x: TensorId,
        weight: WeightId,
        eps: f32,
        rows: usize,
    ) -> Result<()> {
        const OP: &str = "rms_norm";
        let (op, xp, cols) = self.pair(OP, out, x, rows)?;
        let wp = self.vector(OP, weight, cols)?;
        if rows == 0 {
            return Ok(());
        }
        let args = RmsNorm {
            out: op,
            x: xp,
            w: wp,
            eps,
            cols: i32_of(OP, cols)?,
        };
        self.launch(self.kernels.rms_norm, grid(rows, 1, 256), args);
        Ok(())
    }

    fn rms_norm_heads(
        &mut self,
        x: TensorId,
        weight: WeightId,
        eps: f32,
        heads: usize,
        rows: usize,
    ) -> Result<()> {
        const OP: &str = "rms_norm_heads";
        let t = self.tensor(OP, x)?;
        check_rows(OP, t.rows, rows, "input")?;
        if heads == 0 || !t.cols.is_multiple_of(heads) {
            return Err(shape(
                OP,
                format!("{} columns are not {heads} whole heads", t.cols),
            ));
        }
        let (xp, hd) = (t.ptr, t.cols / heads);
        let wp = self.vector(OP, weight, hd)?;
        if rows == 0 {
            return Ok(());
        }
        // The row kernel over `rows * heads` rows of one head each, in place: every thread
        // reads back only the elements it writes.
        let args = RmsNorm {
            out: xp,
            x: xp,
            w: wp,
            eps,
            cols: i32_of(OP, hd)?,
        };
        self.launch(self.kernels.rms_norm, grid(rows * heads, 1, 256), args);
        Ok(())
    }

    fn layer_norm(
        &mut self,
        out: TensorId,
        x: TensorId,
        weight: WeightId,
        bias: WeightId,
        eps: f32,
        rows: usize,
    ) -> Result<()> {
        const OP: &str = "layer_norm";
        let (op, xp, cols) = self.pair(OP, out, x, rows)?;
        let wp = self.vector(OP, weight, cols)?;
        let bp = self.vector(OP, bias, cols)?;
        if rows == 0 {
            return Ok(());
        }
        let args = LayerNorm {
            out: op,
            x: xp,
            w: wp,
            b: bp,
            eps,
            cols: i32_of(OP, cols)?,
        };
        self.launch(self.kernels.layer_norm, grid(rows, 1, 256), args);
        Ok(())
    }

    fn matmul(&mut self, out: TensorId, x: TensorId, w: WeightId, rows: usize) -> Result<()> {
        const OP: &str = "matmul";
        let p = self.product(OP, out, x, w, rows)?;
        if rows == 0 {
            return Ok(());
        }
        self.launch_product(OP, p, rows, 0)
    }

    fn matmul_group(
        &mut self,
        x: TensorId,
        outs: &[(TensorId, WeightId)],
        rows: usize,
    ) -> Result<()> {
        let group: Vec<Linear> = outs
            .iter()
            .map(|&(out, weight)| Linear {
                out,
                weight,
                bias: None,
            })
            .collect();
        self.linear_group("matmul_group", x, &group, rows)
    }

    fn linear(&mut self, x: TensorId, outs: &[Linear], rows: usize) -> Result<()> {
        self.linear_group("linear", x, outs, rows)
    }

    fn matmul_swiglu(
        &mut self,
        out: TensorId,
        x: TensorId,
        gate: (TensorId, WeightId),
        up: (TensorId, WeightId),
        rows: usize,
    ) -> Result<()> {
        self.gate_up_swiglu(out, x, gate, up, rows)
    }

    fn add(&mut self, dst: TensorId, src: TensorId, rows: usize) -> Result<()> {
        self.binary("add", self.kernels.add, dst, src, rows)
    }

    fn add_rms_norm(
        &mut self,
        out: TensorId,
        x: TensorId,
        y: TensorId,
        weight: WeightId,
        eps: f32,
        rows: usize,
    ) -> Result<()> {
        // One kernel adds and normalizes (each row's sum of squares is taken after the add).
        const OP: &str = "add_rms_norm";
        let (xp, yp, _) = self.pair(OP, x, y, rows)?;
        let (op, _, cols) = self.pair(OP, out, x, rows)?;
        let wp = self.vector(OP, weight, cols)?;
        if rows == 0 {
            return Ok(());
        }
        let args = AddRmsNorm {
            out: op,
            x: xp,
            y: yp,
            w: wp,
            eps,
            cols: i32_of(OP, cols)?,
        };
        self.launch(self.kernels.add_rms_norm, grid(rows, 1, 256), args);
        Ok(())
    }

    fn add_bias(&mut self, dst: TensorId, bias: WeightId, rows: usize) -> Result<()> {
        const OP: &str = "add_bias";
        let d = self.tensor(OP, dst)?;
        check_rows(OP, d.rows, rows, "destination")?;
        let (dp, cols) = (d.ptr, d.cols);
        let bp = self.vector(OP, bias, cols)?;
        let n = rows * cols;
        if n > 0 {
            let args = AddBias {
                dst: dp,
                bias: bp,
                n: n as i64,
                cols: i32_of(OP, cols)?,
            };
            self.launch(self.kernels.add_bias, grid_1d(n), args);
        }
        Ok(())
    }

    fn mul(&mut self, dst: TensorId, src: TensorId, rows: usize) -> Result<()> {
        self.binary("mul", self.kernels.mul, dst, src, rows)
    }

    fn rope(&mut self, x: TensorId, positions: IndexId, p: &RopeParams, rows: usize) -> Result<()> {
        let r = self.rope_operand("rope", x, positions, p, rows)?;
        self.launch_rope("rope", &r, None)
    }

    fn rope_qk(
        &mut self,
        q: TensorId,
        k: TensorId,
        positions: IndexId,
        q_params: &RopeParams,
        k_params: &RopeParams,
        rows: usize,
    ) -> Result<()> {
        const OP: &str = "rope_qk";
        let rq = self.rope_operand(OP, q, positions, q_params, rows)?;
        let rk = self.rope_operand(OP, k, positions, k_params, rows)?;
        // One launch over both tensors' heads when they are rotated alike.
        let alike = |a: &RopeParams, b: &RopeParams| {
            (a.head_dim, a.n_rot, a.base, a.freq_scale, a.mode, a.yarn)
                == (b.head_dim, b.n_rot, b.base, b.freq_scale, b.mode, b.yarn)
        };
        if rq.live
            && rk.live
            && rq.x != rk.x
            && alike(q_params, k_params)
            && q_params.heads + k_params.heads <= 65_535
        {
            return self.launch_rope(OP, &rq, Some(&rk));
        }
        self.launch_rope(OP, &rq, None)?;
        self.launch_rope(OP, &rk, None)
    }

    #[allow(clippy::too_many_arguments)]
    fn attention(
        &mut self,
        out: TensorId,
        q: TensorId,
        k: TensorId,
        v: TensorId,
        cache: KvCacheId,
        index: &KvIndex,
        params: &AttentionParams,
        rows: usize,
    ) -> Result<()> {
        self.attend(out, q, k, v, cache, index, params, rows)
    }

    fn moe(
        &mut self,
        out: TensorId,
        x: TensorId,
        router_logits: TensorId,
        experts: &[ExpertWeights],
        params: &MoeParams,
        rows: usize,
    ) -> Result<()> {
        self.mixture(out, x, router_logits, experts, params, rows)
    }

    fn swiglu(&mut self, out: TensorId, gate: TensorId, up: TensorId, rows: usize) -> Result<()> {
        self.launch_swiglu("swiglu", out, gate, up, rows)
    }

    fn scale(&mut self, x: TensorId, factor: f32, rows: usize) -> Result<()> {
        const OP: &str = "scale";
        let t = self.tensor(OP, x)?;
        check_rows(OP, t.rows, rows, "input")?;
        let n = rows * t.cols;
        if n > 0 {
            let args = Scale {
                x: t.ptr,
                s: factor,
                n: n as i64,
            };
            self.launch(self.kernels.scale, grid_1d(n), args);
        }
        Ok(())
    }

    fn gelu(&mut self, x: TensorId, rows: usize) -> Result<()> {
        const OP: &str = "gelu";
        let t = self.tensor(OP, x)?;
        check_rows(OP, t.rows, rows, "input")?;
        let n = rows * t.cols;
        if n > 0 {
            let args = Gelu {
                x: t.ptr,
                n: n as i64,
            };
            self.launch(self.kernels.gelu, grid_1d(n), args);
        }
        Ok(())
    }
}

/// A checked operand of a rope launch.
#[derive(Clone, Copy)]
struct RopeOperand {
    x: u64,
    positions: u64,
    cols: i32,
    p: RopeParams,
    rows: usize,
    /// Whether there is anything to rotate.
    live: bool,
}

impl<D: Device> CudaBackend<D> {
    /// `dst[i] op= src[i]` over `rows` rows by `kernel` (`add_f32`, `mul_f32`).
    fn binary(
        &mut self,
        op: &'static str,
        kernel: Func<Binary>,
        dst: TensorId,
        src: TensorId,
        rows: usize,
    ) -> Result<()> {
        let (d, s, cols) = self.pair(op, dst, src, rows)?;
        let n = rows * cols;
        if n > 0 {
            let args = Binary {
                dst: d,
                src: s,
                n: n as i64,
            };
            self.launch(kernel, grid_1d(n), args);
        }
        Ok(())
    }

    /// Checks `swiglu(out, gate, up)` over `rows` rows: `out` apart from both inputs, all three
    /// of one shape. Returns the addresses (out, gate, up) and the width.
    pub(crate) fn swiglu_operands(
        &self,
        op: &'static str,
        out: TensorId,
        gate: TensorId,
        up: TensorId,
        rows: usize,
    ) -> Result<(u64, u64, u64, usize)> {
        if out == gate || out == up {
            return Err(ComputeError::Aliased { op });
        }
        let (g, u, o) = (
            self.tensor(op, gate)?,
            self.tensor(op, up)?,
            self.tensor(op, out)?,
        );
        for (t, what) in [(g, "gate"), (u, "up"), (o, "out")] {
            check_rows(op, t.rows, rows, what)?;
            check_cols(op, t.cols, g.cols, what)?;
        }
        Ok((o.ptr, g.ptr, u.ptr, g.cols))
    }

    /// `out = silu(gate) * up` element-wise (`swiglu_f32`).
    pub(crate) fn launch_swiglu(
        &mut self,
        op: &'static str,
        out: TensorId,
        gate: TensorId,
        up: TensorId,
        rows: usize,
    ) -> Result<()> {
        let (o, g, u, cols) = self.swiglu_operands(op, out, gate, up, rows)?;
        let n = rows * cols;
        if n > 0 {
            let args = Swiglu {
                out: o,
                gate: g,
                up: u,
                n: n as i64,
            };
            self.launch(self.kernels.swiglu, grid_1d(n), args);
        }
        Ok(())
    }

    /// Checks a rope of `x` over `rows` rows with `p`.
    fn rope_operand(
        &self,
        op: &'static str,
        x: TensorId,
        positions: IndexId,
        p: &RopeParams,
        rows: usize,
    ) -> Result<RopeOperand> {
        let (_, pp) = self.index(op, positions, rows)?;
        let t = self.tensor(op, x)?;
        check_rows(op, t.rows, rows, "input")?;
        check_cols(op, t.cols, p.heads * p.head_dim, "input")?;
        p.validate()?;
        if p.yarn.is_some() && !self.experimental.models {
            return Err(ComputeError::Unsupported {
                op,
                reason: "YaRN rope scaling has no CUDA kernel yet".into(),
            });
        }
        let live = !(rows == 0 || p.n_rot == 0 || p.heads == 0);
        if live && p.heads > 65_535 {
            return Err(shape(op, format!("{} heads", p.heads)));
        }
        Ok(RopeOperand {
            x: t.ptr,
            positions: pp,
            cols: i32_of(op, t.cols)?,
            p: *p,
            rows,
            live,
        })
    }

    /// One `rope_f32` launch over `a`'s heads and, when given, `b`'s (at `a`'s positions);
    /// nothing when `a` has nothing to rotate.
    fn launch_rope(
        &mut self,
        op: &'static str,
        a: &RopeOperand,
        b: Option<&RopeOperand>,
    ) -> Result<()> {
        if !a.live {
            return Ok(());
        }
        let p = &a.p;
        let (x2, cols2, heads2) = b.map_or((0, 0, 0), |b| (b.x, b.cols, b.p.heads));
        let dims = grid(a.rows, p.heads + heads2, 64);
        let args = Rope {
            x: a.x,
            pos: a.positions,
            cols: a.cols,
            head_dim: i32_of(op, p.head_dim)?,
            n_rot: i32_of(op, p.n_rot)?,
            base: p.base,
            freq_scale: p.freq_scale,
            neox: i32::from(p.mode == RopeMode::Neox),
            heads: i32_of(op, p.heads)?,
            x2,
            cols2,
        };
        if let Some(y) = p.yarn {
            // The CPU's rope_angles: the ramp's ends and the magnitude factor in f32.
            let [low, high] = y.correction_dims(p.n_rot, p.base);
            let mscale = if y.ext_factor != 0.0 {
                y.attn_factor * (1.0 + 0.1 * (1.0 / p.freq_scale).ln())
            } else {
                y.attn_factor
            };
            let args = RopeYarn {
                base: args,
                ext_factor: y.ext_factor,
                low,
                high,
                mscale,
            };
            self.launch(self.kernels.rope_yarn, dims, args);
            return Ok(());
        }
        self.launch(self.kernels.rope, dims, args);
        Ok(())
    }
}
