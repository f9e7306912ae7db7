//! A [`ComputeBackend`] that times every op of the backend it wraps, for the decode profile of
//! `cargo xtask bench --profile`: where a forward pass spends its time, op by op, and how many
//! weight bytes each product reads.
//!
//! Times are wall-clock times of each call, so they mean what they say only on a backend whose
//! ops finish before they return (the CPU); a queueing backend (CUDA) would show the time to
//! enqueue. Every op, the fused ones included, is forwarded to the wrapped backend's own
//! implementation, so the profile measures exactly what runs unwrapped.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::backend::{
    AttentionParams, ComputeBackend, ExpertWeights, IndexId, KvCacheConfig, KvCacheId, KvIndex,
    KvLayout, KvType, Linear, MoeParams, Result, RopeParams, TensorId, WeightDesc, WeightId,
};

/// What one kind of call cost: the op and, for products, the weights it read (their names with
/// the layer number left out, so the 30 layers' `blk.N.attn_q.weight` are one line).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct OpCost {
    /// Calls made.
    pub calls: u64,
    /// Wall time inside them.
    pub time: Duration,
    /// Weight bytes the calls read (products, embeddings); 0 for the others.
    pub weight_bytes: u64,
}

/// A backend whose ops are timed; see the module documentation.
pub struct Profiled<B> {
    inner: B,
    /// Names and sizes of the uploaded weights, by handle.
    weights: HashMap<WeightId, (String, u64)>,
    costs: HashMap<String, OpCost>,
    enabled: bool,
}

impl<B: ComputeBackend> Profiled<B> {
    /// Wraps `inner`; timing starts enabled.
    pub fn new(inner: B) -> Self {
        Self {
            inner,
            weights: HashMap::new(),
            costs: HashMap::new(),
            enabled: true,
        }
    }

    /// Turns timing on or off (a warm-up pass is left out of the profile this way).
    pub fn set_enabled(&mut self, on: bool) {
        self.enabled = on;
    }

    /// Forgets what was measured so far.
    pub fn reset(&mut self) {
        self.costs.clear();
    }

    /// What was measured, by line, most expensive first.
    pub fn costs(&self) -> Vec<(String, OpCost)> {
        let mut v: Vec<_> = self
            .costs
            .iter()
            .map(|(k, c)| (k.clone(), c.clone()))
            .collect();
        v.sort_by(|a, b| b.1.time.cmp(&a.1.time).then(a.0.cmp(&b.0)));
        v
    }

    /// The wrapped backend.
    pub fn inner(&self) -> &B {
        &self.inner
    }

    /// The wrapped backend, mutably.
    pub fn inner_mut(&mut self) -> &mut B {
        &mut self.inner
    }

    /// The weight's name without its layer (`blk.7.ffn_up.weight` → `ffn_up`) and its bytes.
    fn weight(&self, w: WeightId) -> (String, u64) {
        self.weights
            .get(&w)
            .map(|(n, b)| (short_name(n), *b))
            .unwrap_or_else(|| (format!("weight {}", w.0), 0))
    }

    /// Runs `f` on the wrapped backend, adding its time to the line `op` (with `weights`' names
    /// and bytes when the op reads weights).
    fn timed<T>(
        &mut self,
        op: &str,
        weights: &[WeightId],
        f: impl FnOnce(&mut B) -> Result<T>,
    ) -> Result<T> {
        if !self.enabled {
            return f(&mut self.inner);
        }
        let mut key = op.to_string();
        let mut bytes = 0;
        for (i, &w) in weights.iter().enumerate() {
            let (name, b) = self.weight(w);
            key.push_str(if i == 0 { " " } else { "+" });
            key.push_str(&name);
            bytes += b;
        }
        self.timed_as(key, bytes, f)
    }

    /// Runs `f` on the wrapped backend, adding its time and `bytes` of weights read to the
    /// line `key`; for callers that checked timing is enabled (and only then built `key`).
    fn timed_as<T>(
        &mut self,
        key: String,
        bytes: u64,
        f: impl FnOnce(&mut B) -> Result<T>,
    ) -> Result<T> {
        let start = Instant::now();
        let out = f(&mut self.inner);
        let time = start.elapsed();
        let cost = self.costs.entry(key).or_default();
        cost.calls += 1;
        cost.time += time;
        cost.weight_bytes += bytes;
        out
    }
}

/// `blk.12.attn_q.weight` → `attn_q`; other names lose a trailing `.weight` only.
fn short_name(name: &str) -> String {
    let name = name.strip_suffix(".weight").unwrap_or(name);
    match name.strip_prefix("blk.") {
        Some(rest) => rest
            .split_once('.')
            .map_or(rest, |(_, tail)| tail)
            .to_string(),
        None => name.to_string(),
    }
}

impl<B: ComputeBackend> ComputeBackend for Profiled<B> {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn allocated_bytes(&self) -> Option<u64> {
        self.inner.allocated_bytes()
    }
    fn upload_weight(&mut self, desc: WeightDesc<'_>) -> Result<WeightId> {
        let (name, bytes) = (desc.name.to_string(), desc.bytes.len() as u64);
        let id = self.inner.upload_weight(desc)?;
        self.weights.insert(id, (name, bytes));
        Ok(id)
    }
    fn alloc_tensor(&mut self, rows: usize, cols: usize) -> Result<TensorId> {
        self.inner.alloc_tensor(rows, cols)
    }
    fn alloc_index(&mut self, len: usize) -> Result<IndexId> {
        self.inner.alloc_index(len)
    }
    fn kv_layout(&self) -> KvLayout {
        self.inner.kv_layout()
    }
    fn kv_storage(&self, requested: KvType) -> KvType {
        self.inner.kv_storage(requested)
    }
    fn alloc_kv_cache(&mut self, config: KvCacheConfig) -> Result<KvCacheId> {
        self.inner.alloc_kv_cache(config)
    }
    fn write_index(&mut self, dst: IndexId, data: &[u32]) -> Result<()> {
        self.timed("write_index", &[], |b| b.write_index(dst, data))
    }
    fn write_rows(&mut self, dst: TensorId, data: &[f32]) -> Result<()> {
        self.timed("write_rows", &[], |b| b.write_rows(dst, data))
    }
    fn read_rows(&mut self, src: TensorId, rows: usize, out: &mut [f32]) -> Result<()> {
        self.timed("read_rows", &[], |b| b.read_rows(src, rows, out))
    }
    fn embed(&mut self, out: TensorId, table: WeightId, ids: IndexId, rows: usize) -> Result<()> {
        // One row of the table per token, not the table.
        self.timed("embed", &[], |b| b.embed(out, table, ids, rows))
    }
    fn gather_rows(
        &mut self,
        out: TensorId,
        src: TensorId,
        index: IndexId,
        rows: usize,
    ) -> Result<()> {
        self.timed("gather_rows", &[], |b| b.gather_rows(out, src, index, rows))
    }
    fn rms_norm(
        &mut self,
        out: TensorId,
        x: TensorId,
        weight: WeightId,
        eps: f32,
        rows: usize,
    ) -> Result<()> {
        self.timed("rms_norm", &[], |b| b.rms_norm(out, x, weight, eps, rows))
    }
    fn rms_norm_heads(
        &mut self,
        x: TensorId,
        weight: WeightId,
        eps: f32,
        heads: usize,
        rows: usize,
    ) -> Result<()> {
        self.timed("rms_norm_heads", &[], |b| {
            b.rms_norm_heads(x, weight, eps, heads, rows)
        })
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
        self.timed("layer_norm", &[], |b| {
            b.layer_norm(out, x, weight, bias, eps, rows)
        })
    }
    fn matmul(&mut self, out: TensorId, x: TensorId, w: WeightId, rows: usize) -> Result<()> {
        self.timed("matmul", &[w], |b| b.matmul(out, x, w, rows))
    }
    fn matmul_group(
        &mut self,
        x: TensorId,
        outs: &[(TensorId, WeightId)],
        rows: usize,
    ) -> Result<()> {
        let ws: Vec<_> = outs.iter().map(|&(_, w)| w).collect();
        self.timed("matmul_group", &ws, |b| b.matmul_group(x, outs, rows))
    }
    fn linear(&mut self, x: TensorId, outs: &[Linear], rows: usize) -> Result<()> {
        let ws: Vec<_> = outs.iter().map(|l| l.weight).collect();
        self.timed("linear", &ws, |b| b.linear(x, outs, rows))
    }
    fn matmul_swiglu(
        &mut self,
        out: TensorId,
        x: TensorId,
        gate: (TensorId, WeightId),
        up: (TensorId, WeightId),
        rows: usize,
    ) -> Result<()> {
        self.timed("matmul_swiglu", &[gate.1, up.1], |b| {
            b.matmul_swiglu(out, x, gate, up, rows)
        })
    }
    fn add(&mut self, dst: TensorId, src: TensorId, rows: usize) -> Result<()> {
        self.timed("add", &[], |b| b.add(dst, src, rows))
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
        self.timed("add_rms_norm", &[], |b| {
            b.add_rms_norm(out, x, y, weight, eps, rows)
        })
    }
    fn add_bias(&mut self, dst: TensorId, bias: WeightId, rows: usize) -> Result<()> {
        self.timed("add_bias", &[], |b| b.add_bias(dst, bias, rows))
    }
    fn scale(&mut self, x: TensorId, factor: f32, rows: usize) -> Result<()> {
        self.timed("scale", &[], |b| b.scale(x, factor, rows))
    }
    fn mul(&mut self, dst: TensorId, src: TensorId, rows: usize) -> Result<()> {
        self.timed("mul", &[], |b| b.mul(dst, src, rows))
    }
    fn rope(
        &mut self,
        x: TensorId,
        positions: IndexId,
        params: &RopeParams,
        rows: usize,
    ) -> Result<()> {
        self.timed("rope", &[], |b| b.rope(x, positions, params, rows))
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
        self.timed("rope_qk", &[], |b| {
            b.rope_qk(q, k, positions, q_params, k_params, rows)
        })
    }
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
        self.timed("attention", &[], |b| {
            b.attention(out, q, k, v, cache, index, params, rows)
        })
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
        if !self.enabled {
            return self.inner.moe(out, x, router_logits, experts, params, rows);
        }
        // The experts chosen are known only on the backend: count `used` experts a row (at
        // most all of them), each read once; a layer's experts all have the first's shape.
        let one: u64 = experts.first().map_or(0, |e| {
            [Some(e.gate), Some(e.up), Some(e.down)]
                .into_iter()
                .chain([e.gate_bias, e.up_bias, e.down_bias])
                .flatten()
                .filter_map(|w| self.weights.get(&w).map(|(_, bytes)| *bytes))
                .sum()
        });
        let read = (rows * params.used).min(experts.len());
        let key = format!("moe ({} experts of {})", params.used, experts.len());
        self.timed_as(key, one * read as u64, |b| {
            b.moe(out, x, router_logits, experts, params, rows)
        })
    }
    fn swiglu(&mut self, out: TensorId, gate: TensorId, up: TensorId, rows: usize) -> Result<()> {
        self.timed("swiglu", &[], |b| b.swiglu(out, gate, up, rows))
    }
    fn gelu(&mut self, x: TensorId, rows: usize) -> Result<()> {
        self.timed("gelu", &[], |b| b.gelu(x, rows))
    }
}

#[cfg(test)]
mod tests {
    use super::{short_name, Profiled};
    use crate::{
        ComputeBackend, CpuBackend, CpuConfig, ExpertActivation, ExpertWeights, MoeParams,
        WeightDesc, WeightId,
    };
    use worker_gguf::GgmlType;

    /// A mixture of experts reads the experts a row uses, not every expert of the layer:
    /// one row with 2 of 4 experts counts two experts' weights and biases.
    #[test]
    fn a_mixture_of_experts_counts_the_experts_it_uses() {
        let (d, ff) = (32, 64);
        let mut be = Profiled::new(CpuBackend::new(CpuConfig::default()));
        let mut weight = |rows: usize, cols: usize| -> WeightId {
            let bytes = vec![0u8; rows * cols * 4];
            let desc = WeightDesc {
                name: "blk.0.ffn_gate_exps.weight",
                ty: GgmlType::F32,
                rows,
                cols,
                bytes: &bytes,
            };
            be.upload_weight(desc).unwrap()
        };
        let experts: Vec<ExpertWeights> = (0..4)
            .map(|_| ExpertWeights {
                gate: weight(ff, d),
                up: weight(ff, d),
                down: weight(d, ff),
                gate_bias: Some(weight(1, ff)),
                up_bias: None,
                down_bias: Some(weight(1, d)),
            })
            .collect();
        let (x, out, logits) = (
            be.alloc_tensor(1, d).unwrap(),
            be.alloc_tensor(1, d).unwrap(),
            be.alloc_tensor(1, 4).unwrap(),
        );
        let params = MoeParams {
            used: 2,
            activation: ExpertActivation::Swiglu,
        };
        be.moe(out, x, logits, &experts, &params, 1).unwrap();
        let costs = be.costs();
        let (line, cost) = &costs[0];
        assert_eq!(line, "moe (2 experts of 4)");
        let one = (3 * ff * d + ff + d) * 4;
        assert_eq!(cost.weight_bytes, 2 * one as u64);
    }

    #[test]
    fn layer_numbers_are_left_out_of_names() {
        assert_eq!(short_name("blk.12.attn_q.weight"), "attn_q");
        assert_eq!(short_name("blk.0.ffn_down.weight"), "ffn_down");
        assert_eq!(short_name("output.weight"), "output");
        assert_eq!(short_name("token_embd.weight"), "token_embd");
    }
}
