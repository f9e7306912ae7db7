//! The backend-agnostic op checks (`worker_compute::conformance::check_ops`, llama.cpp's
//! test-backend-ops in our terms) on the wgpu backend against the CPU backend, on whatever
//! adapter wgpu finds (in CI, Mesa's lavapipe). The tolerances are the cases' own; the cases
//! that run a weight type without a wgpu kernel, attention sinks or `moe` must be refused by
//! name (reported, not failed), and nothing else may be.
//!
//! Twice: with the tiled matmul from `MATVEC_MAX_ROWS + 1` rows and subgroup reductions (as
//! on a GPU), then with the adapter's own choice of kernel (on lavapipe, the mat-vec at every
//! row count) and shared-memory reductions.

mod support;

use support::{cpu, gpu_with};
use worker_compute::conformance::{check_ops, Verdict};
use worker_compute_wgpu::{WgpuConfig, MATVEC_MAX_ROWS, WEIGHT_TYPES};
use worker_gguf::GgmlType;

/// Whether the wgpu backend must refuse the case `name`: a weight type without a kernel
/// (named in the case as a word, `matmul q2_k rows=1`), attention sinks, or `moe`.
fn refused(name: &str) -> bool {
    let no_kernel = |word: &str| {
        GgmlType::all().any(|ty| {
            ty.name().eq_ignore_ascii_case(word) && !WEIGHT_TYPES.iter().any(|w| w.0 == ty)
        })
    };
    name.starts_with("moe ") || name.ends_with(" sinks") || name.split(' ').any(no_kernel)
}

fn check(config: WgpuConfig) {
    let mut gpu = gpu_with(config);
    let results = check_ops(&mut gpu, &mut cpu());
    let mut wrong = Vec::new();
    for r in &results {
        eprintln!("{r}");
        let ok = match r.verdict {
            Verdict::Unsupported(_) => refused(&r.name),
            Verdict::Pass { .. } => !refused(&r.name),
            _ => false,
        };
        if !ok {
            wrong.push(r.to_string());
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    let passed = results.iter().filter(|r| !r.skipped()).count();
    eprintln!(
        "{passed} cases pass, {} refused by name",
        results.len() - passed
    );
    assert!(passed > 80, "only {passed} cases ran");
}

#[test]
fn every_op_matches_the_cpu_with_the_tiled_matmul_and_subgroups() {
    check(WgpuConfig {
        tiled_min_rows: Some(MATVEC_MAX_ROWS + 1),
        ..WgpuConfig::default()
    });
}

#[test]
fn every_op_matches_the_cpu_with_the_adapters_matmul_and_shared_memory_reductions() {
    let config = WgpuConfig {
        subgroups: false,
        ..WgpuConfig::default()
    };
    assert!(!gpu_with(config.clone()).uses_subgroups());
    check(config);
}
