//! Without any GPU adapter (here: the Vulkan loader pointed at no driver, and only Vulkan
//! searched), every subcommand exits 1 with one line saying so, before loading anything and
//! without panicking.

use std::process::Command;

#[test]
fn every_subcommand_exits_1_with_one_line_without_an_adapter() {
    let model = worker_testdata::model(worker_testdata::SMOLLM2);
    let model = model.to_str().unwrap();
    for args in [
        vec!["adapters"],
        vec!["check", "--model", model],
        vec!["generate", "--model", model, "--prompt", "hi"],
        vec!["serve", "--model", model, "--port", "0"],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_worker-aarmd"))
            .args(&args)
            .env("WGPU_BACKEND", "vulkan")
            .env("VK_ICD_FILENAMES", "/nonexistent/icd.json")
            .env("VK_DRIVER_FILES", "/nonexistent/icd.json")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        let ours: Vec<&str> = stderr
            .lines()
            .filter(|l| l.starts_with("worker-aarmd:"))
            .collect();
        assert_eq!(ours.len(), 1, "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(
            ours[0].starts_with("worker-aarmd: no GPU adapter found"),
            "{args:?}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?}");
    }
}
