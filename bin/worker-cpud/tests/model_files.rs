//! `check` and `serve` on broken model files: both refuse the same files, with one clear
//! line (the cause said once), exit code 1, no panic and no allocation sized by a bad count.

mod tiny_model;

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use tiny_model::{serve_model, tiny_llama, Parts, Served, TempDir};
use worker_gguf::{Array, Value};

fn worker() -> Command {
    Command::new(env!("CARGO_BIN_EXE_worker-cpud"))
}

/// What a subcommand made of a file: `None` if it accepted it, else its stderr.
type Verdict = Option<String>;

fn check(path: &Path) -> Verdict {
    let out = worker()
        .arg("check")
        .arg("--model")
        .arg(path)
        .output()
        .expect("run check");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if out.status.success() {
        return None;
    }
    assert_eq!(out.status.code(), Some(1), "check: {stderr}");
    Some(stderr)
}

/// `serve` until it listens (accepted; then stopped) or exits (refused).
fn serve(path: &Path) -> Verdict {
    match serve_model(path) {
        Served::Listening { mut child, .. } => {
            let _ = child.kill();
            let _ = child.wait();
            None
        }
        Served::Exited { code, stderr } => {
            assert_eq!(code, Some(1), "serve: {stderr}");
            Some(stderr)
        }
    }
}

/// The refusal line: starts with the binary's name, says its cause once, no panic.
fn assert_clear(stderr: &str, needle: &str) {
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!stderr.contains("memory allocation"), "{stderr}");
    let line = stderr
        .lines()
        .find(|l| l.starts_with("worker-cpud: "))
        .unwrap_or_else(|| panic!("no error line: {stderr}"));
    assert!(line.contains(needle), "{needle:?} not in {line}");
    let parts: Vec<&str> = line.split(": ").filter(|p| p.len() > 12).collect();
    for (i, p) in parts.iter().enumerate() {
        assert!(!parts[i + 1..].contains(p), "repeats {p:?}: {line}");
    }
}

#[test]
fn check_and_serve_refuse_the_same_broken_files_with_one_clear_line() {
    let dir = TempDir::new("model-files");
    let good = dir.path("good.gguf");
    tiny_llama().write(&good);
    assert_eq!(check(&good), None, "the tiny model is valid");
    assert_eq!(serve(&good), None, "serve takes the tiny model");

    type Edit = fn(&mut Parts);
    let cases: &[(&str, Edit, &str)] = &[
        (
            "huge-block-count",
            |p| p.set("llama.block_count", Value::U32(u32::MAX)),
            "llama.block_count",
        ),
        (
            "too-few-blocks",
            |p| p.set("llama.block_count", Value::U32(1)),
            "1 but the file has tensors for 2 blocks",
        ),
        ("no-tensors", |p| p.tensors.clear(), "no blk.N tensors"),
        (
            "zero-dimension",
            |p| p.tensors[3].1 = vec![64, 0],
            "zero dimension",
        ),
        (
            "duplicate-token",
            |p| {
                let tokens = p
                    .metadata
                    .iter_mut()
                    .find(|(k, _)| k == "tokenizer.ggml.tokens")
                    .map(|(_, v)| v)
                    .expect("tokens");
                if let Value::Array(Array::String(t)) = tokens {
                    t[1001] = t[1000].clone();
                }
            },
            "duplicate token",
        ),
        (
            "unsupported-architecture",
            |p| {
                for (k, v) in &mut p.metadata {
                    if let Some(rest) = k.strip_prefix("llama.") {
                        *k = format!("mamba.{rest}");
                    }
                    if k == "general.architecture" {
                        *v = Value::String("mamba".into());
                    }
                }
            },
            "unsupported architecture \"mamba\"",
        ),
        (
            "missing-key",
            |p| p.remove("llama.embedding_length"),
            "missing metadata key \"llama.embedding_length\"",
        ),
        (
            "bad-chat-template",
            |p| p.set("tokenizer.chat_template", Value::String("{% for %}".into())),
            "chat template",
        ),
    ];
    for &(name, edit, needle) in cases {
        let path = dir.path(&format!("{name}.gguf"));
        let mut parts = tiny_llama();
        edit(&mut parts);
        parts.write(&path);
        let t0 = Instant::now();
        let c = check(&path).unwrap_or_else(|| panic!("{name}: check accepted it"));
        let s = serve(&path).unwrap_or_else(|| panic!("{name}: serve accepted it"));
        assert_clear(&c, needle);
        assert_clear(&s, needle);
        eprintln!(
            "{name}: refused in {:.0} ms",
            t0.elapsed().as_secs_f64() * 1e3
        );
    }

    // Seeded bit flips in the header (metadata and tensor table): whatever they do, check and
    // serve agree, and a refusal is one clear line.
    let bytes = std::fs::read(&good).expect("read model");
    let header = worker_gguf::GgufFile::from_bytes(bytes.clone())
        .expect("parse")
        .content()
        .data_offset as usize;
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let (mut refused, n) = (0, 12);
    for i in 0..n {
        let mut flipped = bytes.clone();
        for _ in 0..1 + next() % 4 {
            let at = (next() % header as u64) as usize;
            flipped[at] ^= 1 << (next() % 8);
        }
        let path = dir.path(&format!("flip-{i}.gguf"));
        std::fs::write(&path, &flipped).expect("write");
        let (c, s) = (check(&path), serve(&path));
        assert_eq!(
            c.is_none(),
            s.is_none(),
            "flip {i}: check {c:?}, serve {s:?}"
        );
        if let (Some(c), Some(s)) = (c, s) {
            refused += 1;
            assert_clear(&c, "cannot load model");
            assert_clear(&s, "cannot load model");
        }
    }
    eprintln!("{refused} of {n} bit-flipped headers refused by both, the rest taken by both");
}
