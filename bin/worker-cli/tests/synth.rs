//! `describe` then `synth` of SmolLM2 gives a model with the original's types and shapes
//! (the tokenizer metadata included) that loads and runs on the CPU backend.

use std::process::Command;

use worker_compute::{CpuBackend, CpuConfig};
use worker_gguf::GgufFile;
use worker_models::{load, LoadOptions, SequenceBatch};
use worker_testdata::{model, SMOLLM2};

fn cli(args: &[&std::ffi::OsStr]) {
    let out = Command::new(env!("CARGO_BIN_EXE_worker-cli"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn synth_of_a_description_matches_and_runs() {
    let dir = std::env::temp_dir().join(format!("worker-cli-synth-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (desc, out) = (dir.join("desc.gguf"), dir.join("synth.gguf"));
    let orig_path = model(SMOLLM2);
    cli(&["describe".as_ref(), orig_path.as_ref(), desc.as_ref()]);
    assert!(std::fs::metadata(&desc).unwrap().len() < 8 << 20);
    cli(&[
        "synth".as_ref(),
        desc.as_ref(),
        out.as_ref(),
        "--seed".as_ref(),
        "3".as_ref(),
    ]);

    let (orig, syn) = (
        GgufFile::open(&orig_path).unwrap(),
        GgufFile::open(&out).unwrap(),
    );
    assert_eq!(orig.tensors().len(), syn.tensors().len());
    for (a, b) in orig.tensors().iter().zip(syn.tensors()) {
        assert_eq!((&a.name, a.ty, &a.shape), (&b.name, b.ty, &b.shape));
    }
    assert_eq!(
        orig.metadata()
            .get_str_array("tokenizer.ggml.tokens")
            .unwrap(),
        syn.metadata()
            .get_str_array("tokenizer.ggml.tokens")
            .unwrap()
    );
    assert!(syn.metadata().get("synth.tensor_names").is_none());

    let mut cpu = CpuBackend::new(CpuConfig::default());
    let mut m = load(&syn, &mut cpu, LoadOptions::default()).unwrap();
    let vocab = m.hparams().vocab_size as usize;
    let mut logits = vec![0f32; vocab];
    let b = SequenceBatch::new(&[1, 2, 3], 0, 0, false);
    m.forward(&mut cpu, &b.batch(), &mut logits).unwrap();
    assert!(logits.iter().all(|x| x.is_finite()));
    let _ = std::fs::remove_dir_all(&dir);
}
