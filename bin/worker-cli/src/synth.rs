//! `worker-cli synth DESC OUT`: a random-weight model from a description written by
//! `worker-cli describe`: the same metadata (tokenizer included) and every tensor in the
//! same type and shape, filled with seeded normal values scaled like trained weights
//! (std 0.02; norm weights near 1) and quantized with worker-gguf. For device checks and
//! benchmarks where the real weights cannot travel; its outputs mean nothing.

use std::path::PathBuf;

use anyhow::{bail, Context};
use worker_gguf::{Array, GgmlType, GgufFile, GgufWriter, Value};

use crate::describe::{NAMES_KEY, SHAPES_KEY, TYPES_KEY};

#[derive(clap::Args)]
pub struct Args {
    /// A description written by `worker-cli describe`.
    desc: PathBuf,
    /// The model to write.
    out: PathBuf,
    /// Seed of the weights.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Keep only the first N layers (`blk.N.*`), for a smaller model.
    #[arg(long)]
    layers: Option<u32>,
}

struct Spec {
    name: String,
    ty: GgmlType,
    shape: Vec<u64>,
}

fn specs(file: &GgufFile) -> anyhow::Result<Vec<Spec>> {
    let md = file.metadata();
    let names = md.get_str_array(NAMES_KEY).context("not a description")?;
    let Ok(Array::U32(types)) = md.get_array(TYPES_KEY) else {
        bail!("{TYPES_KEY} is missing or not a u32 array");
    };
    let Ok(Array::Array(shapes)) = md.get_array(SHAPES_KEY) else {
        bail!("{SHAPES_KEY} is missing or not an array of arrays");
    };
    if types.len() != names.len() || shapes.len() != names.len() {
        bail!("the description's tensor lists differ in length");
    }
    names
        .iter()
        .zip(types)
        .zip(shapes)
        .map(|((name, &ty), shape)| {
            let ty = GgmlType::from_u32(ty).with_context(|| format!("{name}: type {ty}"))?;
            let Array::U64(shape) = shape else {
                bail!("{name}: shape is not a u64 array");
            };
            Ok(Spec {
                name: name.clone(),
                ty,
                shape: shape.clone(),
            })
        })
        .collect()
}

/// The layer number of `blk.N.…`.
fn layer_of(name: &str) -> Option<u32> {
    name.strip_prefix("blk.")?.split('.').next()?.parse().ok()
}

/// Seeded normal values (xorshift + Box-Muller).
fn normals(n: usize, seed: u64, mean: f32, std: f32) -> Vec<f32> {
    let mut s = seed | 1;
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        ((s >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    };
    (0..n)
        .map(|_| {
            let (u, v) = (next(), next());
            mean + std * ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32
        })
        .collect()
}

fn fill(spec: &Spec, seed: u64) -> anyhow::Result<Vec<u8>> {
    let n = spec.shape.iter().product::<u64>() as usize;
    let h = spec.name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    let (mean, std) = if spec.name.ends_with("norm.weight") {
        (1.0, 0.02)
    } else {
        (0.0, 0.02)
    };
    let v = normals(n, seed ^ h, mean, std);
    Ok(match spec.ty {
        GgmlType::F32 => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        ty => worker_gguf::quantize(ty, &v).with_context(|| format!("{}: {ty}", spec.name))?,
    })
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    let file = GgufFile::open(&args.desc)
        .with_context(|| format!("cannot read {}", args.desc.display()))?;
    let mut specs = specs(&file)?;
    let mut w = GgufWriter::new();
    for (k, v) in file.metadata().iter() {
        if !k.starts_with("synth.") {
            w.set(k, v.clone());
        }
    }
    if let Some(n) = args.layers {
        specs.retain(|s| layer_of(&s.name).is_none_or(|l| l < n));
        let arch = file.metadata().get_str("general.architecture")?.to_string();
        w.set(&format!("{arch}.block_count"), Value::U32(n));
    }
    // Quantizing is the slow part: one tensor per thread at a time.
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let next = std::sync::atomic::AtomicUsize::new(0);
    let mut data: Vec<Option<anyhow::Result<Vec<u8>>>> = (0..specs.len()).map(|_| None).collect();
    let slots: Vec<std::sync::Mutex<&mut Option<anyhow::Result<Vec<u8>>>>> =
        data.iter_mut().map(std::sync::Mutex::new).collect();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(spec) = specs.get(i) else { break };
                let r = fill(spec, args.seed);
                if let Ok(mut slot) = slots[i].lock() {
                    **slot = Some(r);
                }
            });
        }
    });
    drop(slots);
    for (spec, d) in specs.iter().zip(data) {
        let d = d.with_context(|| format!("{}: not generated", spec.name))??;
        w.add_tensor(&spec.name, spec.ty, &spec.shape, d)?;
    }
    let bytes = w
        .write_file(&args.out)
        .with_context(|| format!("cannot write {}", args.out.display()))?;
    eprintln!(
        "{}: {} random tensors, {bytes} bytes",
        args.out.display(),
        specs.len()
    );
    Ok(())
}
