//! Every op of a backend against the CPU reference, on random inputs: llama.cpp's
//! `test-backend-ops` in this workspace's terms, for any [`ComputeBackend`].
//!
//! ```no_run
//! use worker_compute::conformance::check_ops;
//! use worker_compute::{Activations, CpuBackend, CpuConfig, KernelChoice};
//! # fn new_backend() -> CpuBackend { CpuBackend::new(CpuConfig::default()) }
//! let mut backend = new_backend(); // the backend under test
//! let mut reference = CpuBackend::new(CpuConfig {
//!     kernels: KernelChoice::Scalar,
//!     activations: Activations::F32,
//!     ..CpuConfig::default()
//! });
//! let results = check_ops(&mut backend, &mut reference);
//! for r in &results {
//!     println!("{r}");
//! }
//! assert!(results.iter().all(|r| !r.failed()));
//! ```
//!
//! Each case builds its inputs (weights quantized to every type the CPU reference has
//! kernels for, activations from a fixed seed), runs one op or one short sequence of ops on
//! a backend, and reads the result back; the same case runs on the reference, and the two are
//! compared by normalized squared error (error energy over reference energy) against the
//! case's tolerance (tighter for exact ops, looser where a backend may round: 1e-6 for
//! products of 32 rows or more, which a GPU may run in TF32). A case the backend refuses by
//! name ([`ComputeError::Unsupported`] or [`ComputeError::UnsupportedType`]) is reported,
//! not failed, as test-backend-ops reports unsupported ops; a case the reference cannot run
//! is skipped.
//!
//! The cases cover every trait op, each fused op (`linear` with biases, `matmul_swiglu`,
//! `add_rms_norm`, `rope_qk`) at the shapes its fused kernels take, the paged attention in
//! chunks and decode steps with GQA, sliding windows and sinks (apart and together, over a
//! window longer than a GPU decode split), YaRN rope (alone and in `rope_qk`) and `moe` (Q8_0
//! and MXFP4 experts, both activations, router ties, decode and prefill rows). The
//! CPU backend's own tests run them against its scalar kernels; `worker-orcd check-ops`
//! runs them on a GPU.

mod cases;

use std::fmt;

use crate::{ComputeBackend, ComputeError, CpuBackend};

/// How one case came out.
#[derive(Debug)]
pub enum Verdict {
    /// Within tolerance.
    Pass {
        /// Normalized squared error against the reference.
        nmse: f64,
        /// The case's bound.
        tolerance: f64,
    },
    /// Out of tolerance.
    Fail {
        /// Normalized squared error against the reference.
        nmse: f64,
        /// The case's bound.
        tolerance: f64,
    },
    /// The backend failed where the reference ran.
    Error(ComputeError),
    /// The backend refuses the case by name (an op or weight type it has no kernel for).
    Unsupported(ComputeError),
    /// The reference cannot run the case (no CPU kernel), so it is not checked.
    NoReference(ComputeError),
}

/// One case and how it came out.
#[derive(Debug)]
pub struct CaseResult {
    /// What the case runs (`"matmul q4_k rows=19"`).
    pub name: String,
    /// The outcome.
    pub verdict: Verdict,
}

impl CaseResult {
    /// Whether the backend got this case wrong (out of tolerance, or an error the reference
    /// did not have); unsupported and unreferenced cases are not failures.
    pub fn failed(&self) -> bool {
        matches!(self.verdict, Verdict::Fail { .. } | Verdict::Error(_))
    }

    /// Whether the case was not checked (unsupported by the backend, or no reference).
    pub fn skipped(&self) -> bool {
        matches!(
            self.verdict,
            Verdict::Unsupported(_) | Verdict::NoReference(_)
        )
    }
}

impl fmt::Display for CaseResult {
    /// One line: the case, the measure, and `[PASS]`, `[FAIL]` or `[SKIP]`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = &self.name;
        match &self.verdict {
            Verdict::Pass { nmse, tolerance } => {
                write!(
                    f,
                    "{name:<48} nmse {nmse:.2e} (tolerance {tolerance:.0e}) [PASS]"
                )
            }
            Verdict::Fail { nmse, tolerance } => {
                write!(
                    f,
                    "{name:<48} nmse {nmse:.2e} (tolerance {tolerance:.0e}) [FAIL]"
                )
            }
            Verdict::Error(e) => write!(f, "{name:<48} error: {e} [FAIL]"),
            Verdict::Unsupported(e) => write!(f, "{name:<48} not supported: {e} [SKIP]"),
            Verdict::NoReference(e) => write!(f, "{name:<48} no CPU reference: {e} [SKIP]"),
        }
    }
}

/// Runs every case on `backend` and on `reference`, and compares.
pub fn check_ops(backend: &mut dyn ComputeBackend, reference: &mut CpuBackend) -> Vec<CaseResult> {
    cases::all()
        .into_iter()
        .map(|case| {
            let verdict = match (case.run)(reference) {
                Err(e) => Verdict::NoReference(e),
                Ok(want) => match (case.run)(backend) {
                    Ok(got) => {
                        let e = nmse(&got, &want);
                        if e <= case.tolerance {
                            Verdict::Pass {
                                nmse: e,
                                tolerance: case.tolerance,
                            }
                        } else {
                            Verdict::Fail {
                                nmse: e,
                                tolerance: case.tolerance,
                            }
                        }
                    }
                    Err(
                        e @ (ComputeError::Unsupported { .. }
                        | ComputeError::UnsupportedType { .. }),
                    ) => Verdict::Unsupported(e),
                    Err(e) => Verdict::Error(e),
                },
            };
            CaseResult {
                name: case.name,
                verdict,
            }
        })
        .collect()
}

/// Error energy over reference energy, `Σ(got - want)² / Σ want²` (llama.cpp's measure);
/// infinite when the lengths differ or a value is not finite.
pub fn nmse(got: &[f32], want: &[f32]) -> f64 {
    if got.len() != want.len() {
        return f64::INFINITY;
    }
    let (mut e, mut n) = (0f64, 0f64);
    for (&g, &w) in got.iter().zip(want) {
        e += (f64::from(g) - f64::from(w)).powi(2);
        n += f64::from(w).powi(2);
    }
    let r = e / n.max(1e-30);
    if r.is_nan() {
        f64::INFINITY
    } else {
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nmse_is_relative_and_refuses_what_cannot_compare() {
        assert_eq!(nmse(&[1.0, 2.0], &[1.0, 2.0]), 0.0);
        assert!((nmse(&[1.1, 0.0], &[1.0, 0.0]) - 0.01).abs() < 1e-6);
        assert_eq!(nmse(&[1.0], &[1.0, 2.0]), f64::INFINITY);
        assert_eq!(nmse(&[f32::NAN], &[1.0]), f64::INFINITY);
    }
}
