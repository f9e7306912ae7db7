//! `worker-cli describe MODEL OUT`: a GGUF holding the model's metadata (tokenizer included)
//! and its tensor table as three `synth.*` keys, but no tensor data: a few MB that stand for
//! the model where the weights cannot travel. `worker-cli synth` expands it.

use std::path::PathBuf;

use anyhow::Context;
use worker_gguf::{Array, GgufFile, GgufWriter, Value};

/// Tensor names, in file order.
pub const NAMES_KEY: &str = "synth.tensor_names";
/// GGML type ids, one per tensor.
pub const TYPES_KEY: &str = "synth.tensor_types";
/// Shapes (ggml order), one u64 array per tensor.
pub const SHAPES_KEY: &str = "synth.tensor_shapes";

#[derive(clap::Args)]
pub struct Args {
    /// The model to describe.
    model: PathBuf,
    /// The description to write.
    out: PathBuf,
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    let file = GgufFile::open(&args.model)
        .with_context(|| format!("cannot read {}", args.model.display()))?;
    let mut w = GgufWriter::new();
    w.set_all(file.metadata());
    let t = file.tensors();
    w.set(
        NAMES_KEY,
        Value::Array(Array::String(t.iter().map(|t| t.name.clone()).collect())),
    );
    w.set(
        TYPES_KEY,
        Value::Array(Array::U32(t.iter().map(|t| t.ty.id()).collect())),
    );
    w.set(
        SHAPES_KEY,
        Value::Array(Array::Array(
            t.iter().map(|t| Array::U64(t.shape.clone())).collect(),
        )),
    );
    let bytes = w
        .write_file(&args.out)
        .with_context(|| format!("cannot write {}", args.out.display()))?;
    eprintln!(
        "{}: {} tensors described in {bytes} bytes",
        args.out.display(),
        t.len()
    );
    Ok(())
}
