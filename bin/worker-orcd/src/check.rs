//! Device checks: the CUDA backend against the CPU backend (f32 activations), on one model
//! (`compare`) and op by op on random inputs (`check-ops`, the cases of
//! `worker_compute::conformance`). Both print a line per case and fail (exit 1) when a case
//! is out of tolerance. A case the CUDA backend refuses by name (an experimental weight type
//! without `--cuda-experimental types`, a window, sink, YaRN, MXFP4 or `moe` case without
//! `--cuda-experimental models`, an op it has no kernel for) or the CPU cannot run is
//! reported as SKIP, not failed, as llama.cpp's test-backend-ops reports unsupported ops.

use std::path::PathBuf;

use anyhow::bail;
use clap::Args;
use worker_common::argmax;
use worker_compute::ComputeBackend;
use worker_models::{LoadOptions, SequenceBatch};

use crate::{cpu_backend, load_model, open_cuda, pseudo_prompt, BackendKind, Device};

/// Flags of `compare`.
#[derive(Args)]
pub struct CompareArgs {
    /// The GGUF model.
    #[arg(long, env = "WORKER_MODEL")]
    model: PathBuf,
    /// Prompt lengths, one comparison each.
    #[arg(long, value_delimiter = ',', default_value = "1,9,67")]
    prompt_lens: Vec<usize>,
    /// Greedy steps after each prompt (the CPU's token is fed to both backends).
    #[arg(long, default_value_t = 32)]
    steps: usize,
    /// Lowest acceptable cosine similarity of the logits.
    #[arg(long, default_value_t = 0.999)]
    min_cosine: f64,
}

/// Max abs difference, and cosine similarity, of `a` against the reference `r`.
fn diff(a: &[f32], r: &[f32]) -> (f64, f64) {
    let (mut max, mut dot, mut na, mut nr) = (0f64, 0f64, 0f64, 0f64);
    for (&x, &y) in a.iter().zip(r) {
        let (x, y) = (f64::from(x), f64::from(y));
        max = max.max((x - y).abs());
        dot += x * y;
        na += x * x;
        nr += y * y;
    }
    (max, dot / (na.sqrt() * nr.sqrt()).max(1e-30))
}

/// `compare`: prefill logits and teacher-forced greedy steps, CUDA against CPU.
pub fn compare(device: Device, a: &CompareArgs) -> anyhow::Result<()> {
    let longest = a.prompt_lens.iter().copied().max().unwrap_or(1).max(1);
    let opts = LoadOptions {
        max_batch: longest,
        max_positions: longest + a.steps + 1,
        ..LoadOptions::default()
    };
    let (mut gpu, mut gm) = load_model(BackendKind::Cuda, device, &a.model, opts)?;
    let (mut cpu, mut cm) = load_model(BackendKind::Cpu, device, &a.model, opts)?;
    let vocab = cm.hparams().vocab_size as usize;
    let (mut lc, mut lg) = (vec![0f32; vocab], vec![0f32; vocab]);
    let mut failed = false;
    for (i, &n) in a.prompt_lens.iter().enumerate() {
        let prompt = pseudo_prompt(n.max(1), vocab, 100 + i as u64);
        let b = SequenceBatch::new(&prompt, 0, 0, false);
        cm.forward(cpu.as_mut(), &b.batch(), &mut lc)?;
        gm.forward(gpu.as_mut(), &b.batch(), &mut lg)?;
        let (pmax, pcos) = diff(&lg, &lc);
        let (mut wmax, mut wcos, mut agree) = (pmax, pcos, 0usize);
        let mut toks = Vec::new();
        for s in 0..a.steps {
            let (tc, tg) = (argmax(&lc), argmax(&lg));
            agree += usize::from(tc == tg);
            if tc != tg {
                // A near-tie flips on rounding; a real bug shows a wide margin.
                eprintln!(
                    "  step {s}: cpu picks {tc} ({:.5}), cuda picks {tg} (cpu logit {:.5})",
                    lc[tc as usize], lc[tg as usize]
                );
            }
            toks.push(tc);
            let step = SequenceBatch::new(&[tc], (prompt.len() + s) as u32, 0, false);
            cm.forward(cpu.as_mut(), &step.batch(), &mut lc)?;
            gm.forward(gpu.as_mut(), &step.batch(), &mut lg)?;
            let (m, c) = diff(&lg, &lc);
            wmax = wmax.max(m);
            wcos = wcos.min(c);
        }
        let ok = wcos >= a.min_cosine && agree == a.steps;
        failed |= !ok;
        println!(
            "compare prompt_len={n}: prefill max_abs={pmax:.3e} cos={pcos:.6}; {} steps: greedy agree {agree}/{}, worst max_abs={wmax:.3e} min cos={wcos:.6} [{}]",
            a.steps,
            a.steps,
            if ok { "PASS" } else { "FAIL" }
        );
        eprintln!("  cpu greedy ids: {toks:?}");
    }
    if failed {
        bail!("CUDA logits or greedy tokens differ from the CPU backend");
    }
    Ok(())
}

/// `check-ops`: [`worker_compute::conformance::check_ops`] with the CUDA backend under test
/// and the CPU as reference, one line per case; then the device argmax (a CUDA-only op).
pub fn check_ops(device: Device) -> anyhow::Result<()> {
    let mut gpu = open_cuda(device)?;
    let mut cpu = cpu_backend();
    let results = worker_compute::conformance::check_ops(&mut gpu, &mut cpu);
    for r in &results {
        println!("check-ops {r}");
    }
    let failed = results.iter().filter(|r| r.failed()).count();
    let skipped = results.iter().filter(|r| r.skipped()).count();
    let values = (0..3 * 50_000)
        .map(|i| ((i as f32) * 0.618_034).sin() * (1.0 + (i % 7) as f32))
        .collect::<Vec<f32>>();
    let t = gpu.alloc_tensor(3, 50_000)?;
    gpu.write_rows(t, &values)?;
    let got = gpu.argmax(t, 3)?;
    let want: Vec<u32> = values.chunks(50_000).map(argmax).collect();
    let argmax_ok = got == want;
    println!(
        "check-ops {:<48} {got:?} vs {want:?} [{}]",
        "argmax (device)",
        if argmax_ok { "PASS" } else { "FAIL" }
    );
    let failed = failed + usize::from(!argmax_ok);
    let total = results.len() + 1;
    if failed > 0 {
        bail!("{failed} of {total} op checks failed ({skipped} skipped)");
    }
    println!(
        "check-ops: {} cases pass, {skipped} skipped (unsupported here, or no CPU reference)",
        total - skipped
    );
    Ok(())
}
