//! A backend that runs every op on the CPU backend and also records, for each `moe` call, the
//! experts each row's router logits choose: how the tests compare a model's routing with
//! llama.cpp's. The choice is recomputed from the logits the op receives by the rule the op
//! documents (the `used` largest, ties to the lower index), which `worker-compute`'s own tests
//! check the op follows.

use worker_compute::{
    AttentionParams, ComputeBackend, CpuBackend, ExpertWeights, IndexId, KvCacheConfig, KvCacheId,
    KvIndex, KvLayout, KvType, MoeParams, Result, RopeParams, TensorId, WeightDesc, WeightId,
};

/// [`CpuBackend`] plus the routing of every `moe` call: `calls[i][row]` is the experts row
/// `row` of the `i`-th call chose, highest logit first.
pub struct Recording {
    pub inner: CpuBackend,
    pub calls: Vec<Vec<Vec<u32>>>,
}

impl Recording {
    pub fn new(inner: CpuBackend) -> Self {
        Recording {
            inner,
            calls: Vec::new(),
        }
    }
}

impl ComputeBackend for Recording {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn upload_weight(&mut self, desc: WeightDesc<'_>) -> Result<WeightId> {
        self.inner.upload_weight(desc)
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
        self.inner.write_index(dst, data)
    }
    fn write_rows(&mut self, dst: TensorId, data: &[f32]) -> Result<()> {
        self.inner.write_rows(dst, data)
    }
    fn read_rows(&mut self, src: TensorId, rows: usize, out: &mut [f32]) -> Result<()> {
        self.inner.read_rows(src, rows, out)
    }
    fn embed(&mut self, out: TensorId, table: WeightId, ids: IndexId, rows: usize) -> Result<()> {
        self.inner.embed(out, table, ids, rows)
    }
    fn gather_rows(
        &mut self,
        out: TensorId,
        src: TensorId,
        index: IndexId,
        rows: usize,
    ) -> Result<()> {
        self.inner.gather_rows(out, src, index, rows)
    }
    fn rms_norm(
        &mut self,
        out: TensorId,
        x: TensorId,
        weight: WeightId,
        eps: f32,
        rows: usize,
    ) -> Result<()> {
        self.inner.rms_norm(out, x, weight, eps, rows)
    }
    fn rms_norm_heads(
        &mut self,
        x: TensorId,
        weight: WeightId,
        eps: f32,
        heads: usize,
        rows: usize,
    ) -> Result<()> {
        self.inner.rms_norm_heads(x, weight, eps, heads, rows)
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
        self.inner.layer_norm(out, x, weight, bias, eps, rows)
    }
    fn matmul(&mut self, out: TensorId, x: TensorId, w: WeightId, rows: usize) -> Result<()> {
        self.inner.matmul(out, x, w, rows)
    }
    fn matmul_group(
        &mut self,
        x: TensorId,
        outs: &[(TensorId, WeightId)],
        rows: usize,
    ) -> Result<()> {
        self.inner.matmul_group(x, outs, rows)
    }
    fn add(&mut self, dst: TensorId, src: TensorId, rows: usize) -> Result<()> {
        self.inner.add(dst, src, rows)
    }
    fn add_bias(&mut self, dst: TensorId, bias: WeightId, rows: usize) -> Result<()> {
        self.inner.add_bias(dst, bias, rows)
    }
    fn scale(&mut self, x: TensorId, factor: f32, rows: usize) -> Result<()> {
        self.inner.scale(x, factor, rows)
    }
    fn mul(&mut self, dst: TensorId, src: TensorId, rows: usize) -> Result<()> {
        self.inner.mul(dst, src, rows)
    }
    fn rope(&mut self, x: TensorId, positions: IndexId, p: &RopeParams, rows: usize) -> Result<()> {
        self.inner.rope(x, positions, p, rows)
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
        self.inner
            .attention(out, q, k, v, cache, index, params, rows)
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
        let n = experts.len();
        let mut logits = vec![0f32; rows * n];
        self.inner.read_rows(router_logits, rows, &mut logits)?;
        let chosen = logits
            .chunks_exact(n)
            .map(|row| {
                let mut order: Vec<u32> = (0..n as u32).collect();
                // Stable: equal logits keep the lower index first.
                order.sort_by(|&a, &b| row[b as usize].total_cmp(&row[a as usize]));
                order.truncate(params.used);
                order
            })
            .collect();
        self.calls.push(chosen);
        self.inner.moe(out, x, router_logits, experts, params, rows)
    }
    fn swiglu(&mut self, out: TensorId, gate: TensorId, up: TensorId, rows: usize) -> Result<()> {
        self.inner.swiglu(out, gate, up, rows)
    }
    fn gelu(&mut self, x: TensorId, rows: usize) -> Result<()> {
        self.inner.gelu(x, rows)
    }
}
