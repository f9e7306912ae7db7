//! Prefill and decode throughput of a model on the CPU backend.
//!
//! ```text
//! cargo run --release -p worker-models --example bench -- [model.gguf] [threads] [prompt] [decode]
//! ```
//!
//! Defaults: SmolLM2 from the fixture cache, 2 threads, a 512-token prompt (fixed
//! pseudo-random ids), 128 greedy decode steps. Timings belong here, never in tests.

use std::time::Instant;

use worker_compute::{ComputeBackend, CpuBackend, CpuConfig};
use worker_models::{load, LoadOptions, SequenceBatch};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let path = args
        .first()
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| worker_testdata::model(worker_testdata::SMOLLM2));
    let threads: usize = args.get(1).map_or(Ok(2), |s| s.parse())?;
    let n_prompt: usize = args.get(2).map_or(Ok(512), |s| s.parse())?;
    let n_decode: usize = args.get(3).map_or(Ok(128), |s| s.parse())?;

    let file = worker_gguf::GgufFile::open(&path)?;
    let mut backend = CpuBackend::new(CpuConfig {
        threads,
        ..CpuConfig::default()
    });
    let t = Instant::now();
    let mut model = load(
        &file,
        &mut backend,
        LoadOptions {
            max_batch: n_prompt.max(1),
            max_logit_rows: 1,
            slots: 1,
            max_positions: n_prompt + n_decode + 1,
        },
    )?;
    let vocab = model.hparams().vocab_size as usize;
    println!(
        "{}: {} threads, {:?} kernels, loaded in {:.2}s",
        path.display(),
        threads,
        backend.isa(),
        t.elapsed().as_secs_f64()
    );

    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let prompt: Vec<u32> = (0..n_prompt)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % vocab as u64) as u32
        })
        .collect();
    let mut logits = vec![0f32; vocab];
    let batch = SequenceBatch::new(&prompt, 0, 0, false);
    let t = Instant::now();
    model.forward(&mut backend, &batch.batch(), &mut logits)?;
    let prefill = t.elapsed().as_secs_f64();
    println!(
        "prefill: {n_prompt} tokens in {prefill:.3}s = {:.1} tok/s",
        n_prompt as f64 / prefill
    );

    let t = Instant::now();
    for i in 0..n_decode {
        let next = argmax(&logits);
        let step = SequenceBatch::new(&[next], (n_prompt + i) as u32, 0, false);
        model.forward(&mut backend, &step.batch(), &mut logits)?;
    }
    let decode = t.elapsed().as_secs_f64();
    println!(
        "decode: {n_decode} tokens in {decode:.3}s = {:.1} tok/s (context {}..{})",
        n_decode as f64 / decode,
        n_prompt,
        n_prompt + n_decode
    );
    let _ = backend.name();
    Ok(())
}

fn argmax(v: &[f32]) -> u32 {
    v.iter()
        .enumerate()
        .fold(
            (0, f32::NEG_INFINITY),
            |b, (i, &x)| if x > b.1 { (i, x) } else { b },
        )
        .0 as u32
}
