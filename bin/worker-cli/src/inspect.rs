//! `worker-cli inspect FILE`: the metadata and tensor table of a GGUF file, like gguf-dump.

use std::io::{self, Write};
use std::path::PathBuf;

use anyhow::Context;
use worker_gguf::{Array, GgufFile, Value};

/// Arrays longer than this are printed as their first elements and a count.
const ARRAY_PREVIEW: usize = 6;

#[derive(clap::Args)]
pub struct Args {
    /// The GGUF file.
    file: PathBuf,
    /// Print whole arrays instead of their first elements.
    #[arg(long)]
    full_arrays: bool,
    /// Skip the tensor table.
    #[arg(long)]
    no_tensors: bool,
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    let file = GgufFile::open(&args.file)
        .with_context(|| format!("cannot read {}", args.file.display()))?;
    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());
    print_file(&mut out, &file, args)?;
    out.flush()?;
    Ok(())
}

fn print_file(out: &mut impl Write, file: &GgufFile, args: &Args) -> io::Result<()> {
    let c = file.content();
    writeln!(out, "GGUF version {}", c.version)?;
    writeln!(
        out,
        "{} metadata keys, {} tensors, alignment {}, data at offset {}",
        c.metadata.len(),
        c.tensors.len(),
        c.alignment,
        c.data_offset
    )?;
    writeln!(out)?;
    writeln!(
        out,
        "{:>5}  {:<10} {:>8}  key = value",
        "#", "type", "count"
    )?;
    for (i, (key, value)) in c.metadata.iter().enumerate() {
        let (ty, count) = match value {
            Value::Array(a) => (format!("[{}]", a.element_type().name()), a.len()),
            v => (v.value_type().name().to_string(), 1),
        };
        write!(out, "{:>5}  {:<10} {:>8}  {key} = ", i + 1, ty, count)?;
        match value {
            Value::Array(a) => write_array(out, a, args.full_arrays)?,
            Value::String(s) => write!(out, "{}", quote(s, args.full_arrays))?,
            v => write!(out, "{v}")?,
        }
        writeln!(out)?;
    }
    if args.no_tensors {
        return Ok(());
    }
    writeln!(out)?;
    writeln!(
        out,
        "{:>5}  {:<8} {:>28} {:>12} {:>12}  name",
        "#", "type", "shape", "offset", "bytes"
    )?;
    for (i, t) in c.tensors.iter().enumerate() {
        let shape = t
            .shape
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join(" x ");
        writeln!(
            out,
            "{:>5}  {:<8} {:>28} {:>12} {:>12}  {}",
            i + 1,
            t.ty.name(),
            shape,
            t.offset,
            t.n_bytes,
            t.name
        )?;
    }
    Ok(())
}

/// A string as a quoted literal, cut to 60 characters unless `full`.
fn quote(s: &str, full: bool) -> String {
    const MAX: usize = 60;
    if full || s.chars().count() <= MAX {
        format!("{s:?}")
    } else {
        let head: String = s.chars().take(MAX).collect();
        format!("{head:?}... ({} bytes)", s.len())
    }
}

fn write_array(out: &mut impl Write, a: &Array, full: bool) -> io::Result<()> {
    let n = if full {
        a.len()
    } else {
        a.len().min(ARRAY_PREVIEW)
    };
    let items: Vec<String> = match a {
        Array::U8(v) => v.iter().take(n).map(|x| x.to_string()).collect(),
        Array::I8(v) => v.iter().take(n).map(|x| x.to_string()).collect(),
        Array::U16(v) => v.iter().take(n).map(|x| x.to_string()).collect(),
        Array::I16(v) => v.iter().take(n).map(|x| x.to_string()).collect(),
        Array::U32(v) => v.iter().take(n).map(|x| x.to_string()).collect(),
        Array::I32(v) => v.iter().take(n).map(|x| x.to_string()).collect(),
        Array::F32(v) => v.iter().take(n).map(|x| x.to_string()).collect(),
        Array::Bool(v) => v.iter().take(n).map(|x| x.to_string()).collect(),
        Array::String(v) => v.iter().take(n).map(|x| quote(x, full)).collect(),
        Array::Array(v) => v
            .iter()
            .take(n)
            .map(|x| format!("[{}; {}]", x.element_type().name(), x.len()))
            .collect(),
        Array::U64(v) => v.iter().take(n).map(|x| x.to_string()).collect(),
        Array::I64(v) => v.iter().take(n).map(|x| x.to_string()).collect(),
        Array::F64(v) => v.iter().take(n).map(|x| x.to_string()).collect(),
    };
    write!(out, "[{}", items.join(", "))?;
    if n < a.len() {
        write!(out, ", ... {} more", a.len() - n)?;
    }
    write!(out, "]")
}
