//! On a machine without an NVIDIA driver (every development and CI machine here), each
//! subcommand that needs the GPU exits 1 with one line saying no CUDA device was found,
//! before touching the network or panicking.

use std::process::Command;

#[test]
fn serve_and_generate_exit_1_with_one_line_without_a_gpu() {
    let model = worker_testdata::model(worker_testdata::SMOLLM2);
    for args in [
        vec!["serve", "--port", "0"],
        vec!["generate", "--prompt-len", "4", "--max-tokens", "2"],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_worker-orcd"))
            .args(&args)
            .arg("--model")
            .arg(&model)
            .env("RUST_LOG", "off")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
        assert_eq!(errors.len(), 1, "{args:?}: {stderr}");
        assert!(
            errors[0].starts_with("error: no CUDA device found: "),
            "{args:?}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}
