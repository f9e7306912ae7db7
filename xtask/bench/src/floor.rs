//! The batch-1 decode floor: the weight bytes one decode step reads, over the machine's read
//! bandwidth. Both the bench (`tg128`'s fraction of it) and the profile print it.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use anyhow::Context;
use worker_compute::profile::Profiled;
use worker_compute::{CpuBackend, CpuConfig};
use worker_gguf::GgufFile;
use worker_models::bench::{self, BenchSpec, Mark, Throughput};
use worker_models::load;

/// Bytes of one streaming read of the floor measurement.
const READ_BYTES: usize = 1 << 30;

/// Decode steps whose weight reads are counted (the count is the same every step).
const COUNTED_STEPS: usize = 2;

/// Best of 8 streaming reads of [`READ_BYTES`], split over `threads` threads, in bytes/s.
pub fn read_bandwidth(threads: usize) -> f64 {
    let threads = threads.max(1);
    let words = READ_BYTES / 8;
    // Distinct non-zero pages, so the reads come from memory and not the zero page.
    let buf: Vec<u64> = (0..words as u64)
        .map(|i| i.wrapping_mul(0x9e37_79b9))
        .collect();
    let sink = AtomicU64::new(0);
    let mut best = 0f64;
    for _ in 0..8 {
        let start = Instant::now();
        std::thread::scope(|s| {
            for part in buf.chunks(words.div_ceil(threads)) {
                let sink = &sink;
                s.spawn(move || {
                    // Eight independent lanes, so the sum is not one long dependency chain.
                    let mut acc = [0u64; 8];
                    for c in part.chunks_exact(8) {
                        for (a, v) in acc.iter_mut().zip(c) {
                            *a ^= v;
                        }
                    }
                    sink.fetch_xor(acc.iter().fold(0, |x, y| x ^ y), Ordering::Relaxed);
                });
            }
        });
        best = best.max(READ_BYTES as f64 / start.elapsed().as_secs_f64());
    }
    std::hint::black_box(sink.load(Ordering::Relaxed));
    best
}

/// The weight bytes one batch-1 decode step of `model` reads: every product's matrix (a
/// mixture of experts' only for the experts a row uses), as the profile counts them.
pub fn decode_weight_bytes(model: &Path) -> anyhow::Result<u64> {
    let file = GgufFile::open(model).with_context(|| format!("cannot open {}", model.display()))?;
    let (backend, _) = profiled_decode(&file, CpuConfig::default().threads, COUNTED_STEPS, 0)?;
    let bytes: u64 = backend.costs().iter().map(|(_, c)| c.weight_bytes).sum();
    Ok(bytes / COUNTED_STEPS as u64)
}

/// `file` loaded on a profiled CPU backend of `threads` threads and decoded `tg` steps at
/// batch 1 after `depth` tokens of context, every op of the timed steps (only those) profiled.
pub fn profiled_decode(
    file: &GgufFile,
    threads: usize,
    tg: usize,
    depth: usize,
) -> anyhow::Result<(Profiled<CpuBackend>, Throughput)> {
    let mut backend = Profiled::new(CpuBackend::new(CpuConfig {
        threads,
        ..CpuConfig::default()
    }));
    let spec = BenchSpec {
        pp: 0,
        tg,
        reps: 1,
        depth,
        batch_seqs: 0,
    };
    let mut m = load(file, &mut backend, spec.load_options())?;
    backend.set_enabled(false);
    let t = bench::run(
        m.as_mut(),
        &mut backend,
        &spec,
        |mark, b: &mut Profiled<CpuBackend>| match mark {
            Mark::DecodeStart => {
                b.reset();
                b.set_enabled(true);
            }
            Mark::DecodeEnd => b.set_enabled(false),
        },
    )?;
    Ok((backend, t))
}
