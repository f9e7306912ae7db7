//! What the wgpu tests share: the two backends, a seeded generator of fresh inputs, and the
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

/// xorshift64*: fresh inputs from a seed taken from the clock, printed so that a failure can
/// be replayed with `WORKER_TEST_SEED`.
pub struct Rng(pub u64);

#[allow(dead_code)]
impl Rng {
    pub fn new() -> Self {
        let seed = std::env::var("WORKER_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64)
            })
            | 1;
        eprintln!("test seed {seed}");
        Rng(seed)
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// Uniform in [-1, 1).
    pub fn f32(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
    /// `n` roughly normal values of standard deviation 0.58 (a sum of four uniforms).
    pub fn normals(&mut self, n: usize) -> Vec<f32> {
        (0..n)
            .map(|_| (0..4).map(|_| self.f32()).sum::<f32>() * 0.5)
            .collect()
    }
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
