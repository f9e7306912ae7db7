//! The backend-agnostic op checks (`worker_compute::conformance`) on the CPU backend's
//! dispatched kernels (AVX2 / AVX-512 where the machine has them) against its scalar
//! reference kernels, so the cases themselves run in CI; a GPU backend runs the same cases
//! against the CPU (`worker-orcd check-ops`).

use worker_compute::conformance::{check_ops, Verdict};
use worker_compute::{Activations, CpuBackend, CpuConfig, KernelChoice};

#[test]
fn every_op_of_the_dispatched_cpu_kernels_matches_the_scalar_reference() {
    let config = |kernels| CpuConfig {
        kernels,
        activations: Activations::F32,
        ..CpuConfig::default()
    };
    let mut backend = CpuBackend::new(config(KernelChoice::Detect));
    let mut reference = CpuBackend::new(config(KernelChoice::Scalar));
    let results = check_ops(&mut backend, &mut reference);
    for r in &results {
        println!("{r}");
    }
    let failed: Vec<String> = results
        .iter()
        .filter(|r| r.failed() || r.skipped())
        .map(|r| r.to_string())
        .collect();
    // The CPU runs every op and weight type: nothing may be skipped either.
    assert!(failed.is_empty(), "{}", failed.join("\n"));
    let passed = results
        .iter()
        .filter(|r| matches!(r.verdict, Verdict::Pass { .. }))
        .count();
    assert!(passed > 100, "only {passed} cases ran");
}

#[test]
fn a_backend_that_rounds_activations_to_8_bits_fails_the_product_cases() {
    // The CPU's serving path quantizes activations to Q8 (nmse ~1e-5 on a product): the
    // checks must see that, or they could not see a wrong kernel either.
    let mut rounding = CpuBackend::new(CpuConfig {
        activations: Activations::Q8,
        ..CpuConfig::default()
    });
    let mut reference = CpuBackend::new(CpuConfig {
        kernels: KernelChoice::Scalar,
        activations: Activations::F32,
        ..CpuConfig::default()
    });
    let results = check_ops(&mut rounding, &mut reference);
    let failed = |prefix: &str| {
        results
            .iter()
            .filter(|r| r.name.starts_with(prefix) && r.failed())
            .count()
    };
    assert!(failed("matmul q4_0 ") >= 3, "q4_0 products passed");
    assert!(failed("linear q, k, v") > 0);
    assert_eq!(failed("rms_norm"), 0, "norms do not round");
    assert_eq!(failed("attention"), 0, "attention does not round");
}
