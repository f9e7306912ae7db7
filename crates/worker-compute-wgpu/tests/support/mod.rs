//! What the wgpu tests share: the two backends, weights in any type, and the
//! comparison by normalized squared error (llama.cpp's test-backend-ops measure, from
//! `worker_compute::conformance`).

pub use worker_compute::conformance::nmse;
use worker_compute::{Activations, ComputeBackend, CpuBackend, CpuConfig};
use worker_compute_wgpu::{WgpuBackend, WgpuConfig};
use worker_gguf::GgmlType;

/// The backend under test, on the adapter `WORKER_WGPU_ADAPTER` names (else the best one).
/// Without an adapter the test fails, saying how to get lavapipe.
#[allow(dead_code)]
pub fn gpu_with(config: WgpuConfig) -> WgpuBackend {
    let config = WgpuConfig {
        adapter: std::env::var("WORKER_WGPU_ADAPTER").ok(),
        ..config
    };
    WgpuBackend::new(config).unwrap_or_else(|e| {
        panic!(
            "{e}\nthe wgpu tests need a GPU adapter; on Debian or Ubuntu, \
             `apt-get install mesa-vulkan-drivers libvulkan1` gives Mesa's lavapipe"
        )
    })
}

#[allow(dead_code)]
pub fn gpu() -> WgpuBackend {
    gpu_with(WgpuConfig::default())
}

/// The CPU backend as the reference: f32 activations (the wgpu kernels take f32 too).
#[allow(dead_code)]
pub fn cpu() -> CpuBackend {
    CpuBackend::new(CpuConfig {
        activations: Activations::F32,
        ..CpuConfig::default()
    })
}

/// `v` stored as `ty` (quantized by worker-gguf's reference quantizers).
#[allow(dead_code)]
pub fn weight_bytes(ty: GgmlType, v: &[f32]) -> Vec<u8> {
    match ty {
        GgmlType::F32 => f32_bytes(v),
        _ => worker_gguf::quantize(ty, v).expect("a type with a quantizer"),
    }
}

pub fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// An op test: builds its inputs on a backend, runs, returns what it read back.
#[allow(dead_code)]
pub type Case = Box<dyn Fn(&mut dyn ComputeBackend) -> worker_compute::Result<Vec<f32>>>;

/// Runs every case on the CPU and on `gpu`, failing with the list of cases whose normalized
/// squared error exceeds their tolerance.
#[allow(dead_code)]
pub fn run_cases(gpu: &mut dyn ComputeBackend, cases: Vec<(String, f64, Case)>) {
    let mut cpu = cpu();
    let mut failed = Vec::new();
    for (name, tol, case) in &cases {
        let want = case(&mut cpu).unwrap_or_else(|e| panic!("{name}: the CPU backend: {e}"));
        match case(gpu) {
            Ok(got) => {
                let e = nmse(&got, &want);
                eprintln!("{name:<48} nmse {e:.2e} (tolerance {tol:.0e})");
                if e > *tol {
                    failed.push(format!("{name}: nmse {e:.3e} > {tol:.0e}"));
                }
            }
            Err(e) => failed.push(format!("{name}: {e}")),
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}
