//! A forward pass that cannot allocate device memory ends its request with
//! `EngineError::OutOfMemory` (the HTTP worker's `VRAM_OOM`), and the engine goes on serving.
//! The CPU backend preallocates everything, so the failure is injected: `ScarceMemory` wraps
//! it and refuses, as a GPU out of VRAM would, the scratch that a matmul of many rows needs.

use worker_compute::{
    AttentionParams, ComputeBackend, ComputeError, CpuBackend, CpuConfig, IndexId, KvCacheConfig,
    KvCacheId, KvIndex, Result, RopeParams, TensorId, WeightDesc, WeightId,
};
use worker_engine::{Engine, EngineConfig, EngineError, Event, GenerationRequest};

/// The CPU backend, except that matmuls of more than `max_rows` rows fail to allocate.
struct ScarceMemory {
    inner: CpuBackend,
    max_rows: usize,
}

impl ScarceMemory {
    fn check(&self, rows: usize) -> Result<()> {
        if rows > self.max_rows {
            return Err(ComputeError::Alloc {
                what: "matmul scratch",
                bytes: rows as u128 * (64 << 20),
            });
        }
        Ok(())
    }
}

impl ComputeBackend for ScarceMemory {
    fn name(&self) -> &'static str {
        "scarce"
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
        w: WeightId,
        eps: f32,
        rows: usize,
    ) -> Result<()> {
        self.inner.rms_norm(out, x, w, eps, rows)
    }
    fn layer_norm(
        &mut self,
        out: TensorId,
        x: TensorId,
        w: WeightId,
        b: WeightId,
        eps: f32,
        rows: usize,
    ) -> Result<()> {
        self.inner.layer_norm(out, x, w, b, eps, rows)
    }
    fn matmul(&mut self, out: TensorId, x: TensorId, w: WeightId, rows: usize) -> Result<()> {
        self.check(rows)?;
        self.inner.matmul(out, x, w, rows)
    }
    fn matmul_group(
        &mut self,
        x: TensorId,
        outs: &[(TensorId, WeightId)],
        rows: usize,
    ) -> Result<()> {
        self.check(rows)?;
        self.inner.matmul_group(x, outs, rows)
    }
    fn add(&mut self, dst: TensorId, src: TensorId, rows: usize) -> Result<()> {
        self.inner.add(dst, src, rows)
    }
    fn add_bias(&mut self, dst: TensorId, bias: WeightId, rows: usize) -> Result<()> {
        self.inner.add_bias(dst, bias, rows)
    }
    fn mul(&mut self, dst: TensorId, src: TensorId, rows: usize) -> Result<()> {
        self.inner.mul(dst, src, rows)
    }
    fn rope(&mut self, x: TensorId, pos: IndexId, p: &RopeParams, rows: usize) -> Result<()> {
        self.inner.rope(x, pos, p, rows)
    }
    fn attention(
        &mut self,
        out: TensorId,
        q: TensorId,
        k: TensorId,
        v: TensorId,
        cache: KvCacheId,
        index: &KvIndex,
        p: &AttentionParams,
        rows: usize,
    ) -> Result<()> {
        self.inner.attention(out, q, k, v, cache, index, p, rows)
    }
    fn swiglu(&mut self, out: TensorId, gate: TensorId, up: TensorId, rows: usize) -> Result<()> {
        self.inner.swiglu(out, gate, up, rows)
    }
    fn gelu(&mut self, x: TensorId, rows: usize) -> Result<()> {
        self.inner.gelu(x, rows)
    }
}

/// Runs `prompt` greedily for 4 tokens: the generated ids, or the engine's error.
fn generate(engine: &Engine, prompt: &str) -> std::result::Result<Vec<u32>, EngineError> {
    let mut req = GenerationRequest::new(prompt);
    req.sampling.temperature = 0.0;
    req.max_tokens = Some(4);
    let mut ids = Vec::new();
    for event in engine.submit(req)? {
        match event {
            Event::Token(t) => ids.push(t.id),
            Event::End(c) => return Ok(c.ids),
            Event::Error(e) => return Err(e),
        }
    }
    Ok(ids)
}

#[test]
fn an_allocation_failure_ends_only_its_request() {
    let path = worker_testdata::model(worker_testdata::SMOLLM2);
    let file = worker_gguf::GgufFile::open(&path).expect("open SmolLM2");
    let backend = ScarceMemory {
        inner: CpuBackend::new(CpuConfig {
            threads: 2,
            ..CpuConfig::default()
        }),
        max_rows: 16,
    };
    let config = EngineConfig {
        slots: 1,
        context: 256,
        max_batch: 64,
        ..EngineConfig::default()
    };
    let engine = Engine::load(&file, Box::new(backend), config).expect("load SmolLM2");
    let short = "The capital of France is";
    let before = generate(&engine, short).expect("a 5-token prompt fits");
    // 40 tokens prefill in one batch of 40 rows: more than the backend can allocate for.
    let long = "one two three four five six seven eight nine ten ".repeat(4);
    match generate(&engine, &long) {
        Err(EngineError::OutOfMemory(cause)) => {
            assert!(cause.is_oom(), "{cause:?}");
            assert!(cause.to_string().contains("matmul scratch"), "{cause}");
        }
        other => panic!("expected OutOfMemory, got {other:?}"),
    }
    // The engine (one slot) serves the next request as before.
    assert_eq!(
        generate(&engine, short).expect("served after the failure"),
        before
    );
}
