//! Compile check of every `.cu` kernel file with NVRTC, no GPU needed.
//!
//! NVRTC comes from the PyPI wheel `nvidia-cuda-nvrtc==13.0.88`, which `cargo xtask fetch`
//! installs into `~/.cache/llama-orch-worker/nvrtc` (or `$WORKER_FIXTURES_DIR/nvrtc`). When
//! the library is not already on the loader path, this test re-runs itself with that
//! folder's `nvidia/cu13/lib` on `LD_LIBRARY_PATH`. A missing library fails the test with
//! the command that fetches it; it never passes silently.

use std::path::PathBuf;
use std::process::Command;

use worker_compute_cuda::kernels;

/// Architectures checked: the oldest CUDA 13 supports, and the H100/H200 one.
const ARCHES: &[&str] = &["75", "90"];
const CHILD_ENV: &str = "WORKER_NVRTC_CHILD";

fn wheel_lib_dir() -> PathBuf {
    let cache = std::env::var_os("WORKER_FIXTURES_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                .join(".cache/llama-orch-worker")
        });
    cache.join("nvrtc/nvidia/cu13/lib")
}

#[test]
fn every_kernel_file_compiles() {
    if worker_compute_cuda::loader::probe("nvrtc").is_err() {
        let dir = wheel_lib_dir();
        assert!(
            std::env::var_os(CHILD_ENV).is_none() && dir.join("libnvrtc.so.13").exists(),
            "NVRTC not found (looked on the loader path and in {}). Fetch it with \
             `cargo xtask fetch` or `python3 -m pip install --no-deps --target \
             ~/.cache/llama-orch-worker/nvrtc nvidia-cuda-nvrtc==13.0.88`",
            dir.display()
        );
        let path = match std::env::var("LD_LIBRARY_PATH") {
            Ok(old) if !old.is_empty() => format!("{}:{old}", dir.display()),
            _ => dir.display().to_string(),
        };
        let exe = std::env::current_exe().expect("test binary path");
        let status = Command::new(exe)
            .args(["--exact", "every_kernel_file_compiles", "--nocapture"])
            .env("LD_LIBRARY_PATH", path)
            .env(CHILD_ENV, "1")
            .status()
            .expect("re-running the test binary");
        assert!(
            status.success(),
            "the NVRTC compile check failed (see above)"
        );
        return;
    }
    let names = kernels::names();
    for arch in ARCHES {
        for &(file, src) in kernels::FILES {
            match kernels::compile(file, src, arch) {
                Ok(ptx) => {
                    let text = ptx.to_src();
                    // Every kernel the backend looks up in this file is defined there.
                    let mut expected = 0;
                    for name in names.iter().filter(|n| kernels::file_of(n) == file) {
                        assert!(
                            text.contains(&format!(".entry {name}(")),
                            "compute_{arch}: kernel {name} is not defined in {file}"
                        );
                        expected += 1;
                    }
                    assert!(expected > 0, "{file}: the backend loads nothing from it");
                    eprintln!("{file} compute_{arch}: {} bytes of PTX", text.len());
                    // For `ptxas -v` (registers, spills) where a CUDA toolkit is at hand.
                    if let Some(dir) = std::env::var_os("WORKER_PTX_DIR") {
                        let path = PathBuf::from(dir).join(format!("{file}.{arch}.ptx"));
                        std::fs::write(&path, &text).expect("writing PTX");
                    }
                }
                Err(e) => panic!("compute_{arch}: {e}"),
            }
        }
    }
    // And the check can fail: a broken kernel is rejected with the compiler's log.
    let err = kernels::compile(
        "broken.cu",
        "extern \"C\" __global__ void k() { nope; }",
        "90",
    )
    .expect_err("a broken kernel must not compile");
    assert!(err.to_string().contains("nope"), "{err}");
}
