//! `cargo xtask bench --profile`: where a batch-1 decode step of the CPU backend spends its
//! time, against the floor it is measured by (weight bytes per token over the machine's read
//! bandwidth):
//!
//! 1. the read floor: the best of 8 streaming reads of 1 GiB by `--threads` threads;
//! 2. the thread pool: what one job costs that every thread joins (wake, join, wait);
//! 3. each kernel alone: 1-row products over 256 MiB of copies of each weight type's largest
//!    matrix in the model (beyond the L3 cache), in GB/s;
//! 4. the decode step itself, every op timed (`worker_compute::profile::Profiled`): time and
//!    calls per token by op and weights, each product's GB/s, and the time outside products.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use worker_compute::cpu::pool::ThreadPool;
use worker_compute::{ComputeBackend, CpuBackend, CpuConfig, WeightDesc};
use worker_gguf::GgufFile;

use crate::floor;

/// Bytes of copies each kernel runs over (well beyond a 32 MiB L3).
const KERNEL_BYTES: u64 = 256 << 20;

/// Runs the profile of `model` on `threads` threads, `tg` decode steps after a warm-up, from
/// a context of `depth` tokens.
pub fn run(model: &Path, threads: usize, tg: usize, depth: usize) -> anyhow::Result<()> {
    let file = GgufFile::open(model).with_context(|| format!("cannot open {}", model.display()))?;
    println!("{}, {threads} threads, depth {depth}", file_name(model));

    let read = floor::read_bandwidth(threads);
    println!(
        "read floor: {:.1} GB/s (best of 8 reads of 1 GiB)",
        read / 1e9
    );
    let job = pool_job_cost(threads);
    println!(
        "thread pool: {:.2} us per job all threads join (best of 5 x 20,000)",
        job.as_secs_f64() * 1e6
    );

    println!("\neach kernel alone, 1 row, over 256 MiB of copies:");
    println!("| type | matrix | GB/s | of the floor |");
    println!("| --- | --- | ---: | ---: |");
    for (ty, name, gbs) in kernels_alone(&file, threads)? {
        println!(
            "| {ty} | {name} | {:.1} | {:.0}% |",
            gbs,
            100.0 * gbs * 1e9 / read
        );
    }

    let (backend, t) = floor::profiled_decode(&file, threads, tg, depth)?;
    let costs = backend.costs();
    let step = t.step_s;
    let per_token = |d: Duration| d.as_secs_f64() / tg as f64;
    let bytes: u64 = costs.iter().map(|(_, c)| c.weight_bytes).sum::<u64>() / tg as u64;
    let floor = bytes as f64 / read;
    println!(
        "\ndecode: {:.1} tok/s, {:.3} ms a token; weights read {:.1} MB a token: floor {:.3} ms \
         ({:.1} tok/s), {:.0}% of it",
        1.0 / step,
        step * 1e3,
        bytes as f64 / 1e6,
        floor * 1e3,
        1.0 / floor,
        100.0 * floor / step
    );
    println!("| op (weights) | calls/token | us/token | share | GB/s |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    let mut in_products = 0.0;
    for (line, c) in &costs {
        let s = per_token(c.time);
        let gbs = if c.weight_bytes > 0 {
            in_products += s;
            format!("{:.1}", c.weight_bytes as f64 / c.time.as_secs_f64() / 1e9)
        } else {
            String::new()
        };
        println!(
            "| {line} | {} | {:.1} | {:.1}% | {gbs} |",
            c.calls / tg as u64,
            s * 1e6,
            100.0 * s / step
        );
    }
    let timed: f64 = costs.iter().map(|(_, c)| per_token(c.time)).sum();
    println!(
        "products {:.3} ms a token ({:.0}% of their floor {:.3} ms); other ops {:.3} ms; \
         between ops (engine, argmax, untimed) {:.3} ms",
        in_products * 1e3,
        100.0 * floor / in_products.max(1e-12),
        floor * 1e3,
        (timed - in_products) * 1e3,
        (step - timed).max(0.0) * 1e3
    );
    Ok(())
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map_or_else(|| p.display().to_string(), |n| n.to_string_lossy().into())
}

/// The cost of one job every thread takes part in (the wake-up, the join and the wait that
/// each pool job of a forward pass pays): best of 5 runs of 20,000 jobs, each a rendezvous
/// of `threads` threads (a thread that does not arrive within a millisecond is given up on,
/// and the job is not counted).
fn pool_job_cost(threads: usize) -> Duration {
    let pool = ThreadPool::new(threads);
    let threads = pool.n_threads() as u64;
    let arrived = AtomicU64::new(0);
    let mut best = Duration::MAX;
    for _ in 0..5 {
        let (mut jobs, mut time) = (0u32, Duration::ZERO);
        for _ in 0..20_000 {
            arrived.store(0, Ordering::SeqCst);
            let complete = AtomicU64::new(0);
            let job = || {
                if arrived.fetch_add(1, Ordering::AcqRel) + 1 > threads {
                    return;
                }
                let start = Instant::now();
                while arrived.load(Ordering::Acquire) < threads {
                    if start.elapsed() > Duration::from_millis(1) {
                        return;
                    }
                    std::hint::spin_loop();
                }
                complete.fetch_add(1, Ordering::Relaxed);
            };
            let start = Instant::now();
            pool.run(&job);
            if complete.load(Ordering::Relaxed) == threads {
                jobs += 1;
                time += start.elapsed();
            }
        }
        if jobs > 0 {
            best = best.min(time / jobs);
        }
    }
    best
}

/// For each weight type of the model's products, its largest matrix copied to 256 MiB and
/// multiplied by one row, each copy once per pass: (type, tensor, GB/s), best of 5 passes.
fn kernels_alone(file: &GgufFile, threads: usize) -> anyhow::Result<Vec<(String, String, f64)>> {
    let mut largest: Vec<(worker_gguf::GgmlType, &worker_gguf::TensorInfo)> = Vec::new();
    // The token embedding is a product only where it is also the output (tied).
    let tied = !file.tensors().iter().any(|t| t.name == "output.weight");
    for t in file.tensors() {
        let (Some(&cols), Some(&rows)) = (t.shape.first(), t.shape.get(1)) else {
            continue;
        };
        let product = tied || t.name != "token_embd.weight";
        if t.shape.len() != 2 || !product || rows < 16 || cols < 32 {
            continue;
        }
        match largest.iter_mut().find(|(ty, _)| *ty == t.ty) {
            Some(slot) if slot.1.n_bytes < t.n_bytes => slot.1 = t,
            Some(_) => {}
            None => largest.push((t.ty, t)),
        }
    }
    let mut out = Vec::new();
    for (ty, t) in largest {
        let (cols, rows) = (t.shape[0] as usize, t.shape[1] as usize);
        let (_, bytes) = file.tensor(&t.name)?;
        let copies = (KERNEL_BYTES / t.n_bytes.max(1)).max(1) as usize;
        let mut be = CpuBackend::new(CpuConfig {
            threads,
            ..CpuConfig::default()
        });
        let mut ws = Vec::with_capacity(copies);
        for _ in 0..copies {
            ws.push(be.upload_weight(WeightDesc {
                name: &t.name,
                ty,
                rows,
                cols,
                bytes,
            })?);
        }
        let x = be.alloc_tensor(1, cols)?;
        be.write_rows(x, &vec![0.5f32; cols])?;
        let y = be.alloc_tensor(1, rows)?;
        let mut best = 0f64;
        for pass in 0..6 {
            let start = Instant::now();
            for &w in &ws {
                be.matmul(y, x, w, 1)?;
            }
            let rate = (copies as u64 * t.n_bytes) as f64 / start.elapsed().as_secs_f64();
            if pass > 0 {
                best = best.max(rate);
            }
        }
        out.push((ty.to_string(), t.name.clone(), best / 1e9));
    }
    Ok(out)
}
