//! Compile check of every `.cu` kernel file with NVRTC, no GPU needed: every kernel the
//! backend loads is an entry of its file, and each entry's parameters are the ones the
//! backend's argument struct for it passes (count, and each one's PTX type: `.u64` for an
//! address or a `long long`, `.u32` for an `int`, `.f32` for a `float`).
//!
//! NVRTC comes from the PyPI wheel `nvidia-cuda-nvrtc==13.0.88`, which `cargo xtask fetch`
//! installs into `~/.cache/llama-orch-worker/nvrtc` (or `$WORKER_FIXTURES_DIR/nvrtc`). When
//! the library is not already on the loader path, this test re-runs itself with that
//! folder's `nvidia/cu13/lib` on `LD_LIBRARY_PATH`. A missing library fails the test with
//! the command that fetches it; it never passes silently.

use std::path::PathBuf;
use std::process::Command;

use worker_compute_cuda::kernels::{self, Param};

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
    let signatures = kernels::signatures();
    for arch in ARCHES {
        for &(file, src) in kernels::FILES {
            match kernels::compile(file, src, arch) {
                Ok(ptx) => {
                    let text = ptx.to_src();
                    // Every kernel the backend looks up in this file is defined there, with the
                    // parameters the backend passes it.
                    let mut expected = 0;
                    for (name, params) in signatures
                        .iter()
                        .filter(|(n, _)| kernels::file_of(n) == Some(file))
                    {
                        let Some(declared) = entry_params(&text, name) else {
                            panic!("compute_{arch}: kernel {name} is not defined in {file}");
                        };
                        assert_eq!(
                            declared,
                            ptx_types(params),
                            "compute_{arch}: the parameters of {name} in {file} (left) are not \
                             what the backend passes (right)"
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
    // And the checks can fail: a parameter list that differs from the entry's does not
    // match it, and a broken kernel is rejected with the compiler's log.
    let ptx = kernels::compile(
        "one.cu",
        "extern \"C\" __global__ void k(float* x, int n, float s) { x[n] = s; }",
        "90",
    )
    .expect("a one-line kernel compiles")
    .to_src();
    let declared = entry_params(&ptx, "k").expect("the entry k");
    assert_eq!(
        declared,
        ptx_types(&[Param::Pointer, Param::Int, Param::Float])
    );
    assert_ne!(
        declared,
        ptx_types(&[Param::Pointer, Param::Float, Param::Int])
    );
    assert_ne!(declared, ptx_types(&[Param::Pointer, Param::Int]));
    let err = kernels::compile(
        "broken.cu",
        "extern \"C\" __global__ void k() { nope; }",
        "90",
    )
    .expect_err("a broken kernel must not compile");
    assert!(err.to_string().contains("nope"), "{err}");
}

/// The PTX types of the parameters of `.entry name(...)` in `ptx`, in order.
fn entry_params(ptx: &str, name: &str) -> Option<Vec<String>> {
    let start = ptx.find(&format!(".entry {name}("))?;
    let list = &ptx[start..];
    let list = &list[list.find('(')? + 1..list.find(')')?];
    Some(
        list.split(',')
            .filter_map(|p| {
                let mut words = p.split_whitespace();
                (words.next() == Some(".param")).then(|| words.next().unwrap_or("").to_string())
            })
            .collect(),
    )
}

fn ptx_types(params: &[Param]) -> Vec<String> {
    params.iter().map(|p| p.ptx_type().to_string()).collect()
}
