//! `worker-cli inspect FILE`: the metadata and tensor table of a GGUF file, like gguf-dump.

use std::io::{self, Write};
use std::path::PathBuf;

use anyhow::Context;
use serde_json::{json, Value as Json};
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
    /// Print one JSON document instead of tables (arrays as their length and both ends).
    #[arg(long)]
    json: bool,
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    let file = GgufFile::open(&args.file)
        .with_context(|| format!("cannot read {}", args.file.display()))?;
    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());
    let written = if args.json {
        serde_json::to_writer_pretty(&mut out, &to_json(&file, args))
            .map_err(io::Error::from)
            .and_then(|()| writeln!(out))
    } else {
        print_file(&mut out, &file, args)
    };
    match written.and_then(|()| out.flush()) {
        // A closed pipe (`| head`) is the reader's choice, not an error.
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
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

/// Elements kept from each end of an array in JSON output.
const JSON_ARRAY_ENDS: usize = 3;

/// The file as JSON: the same fields as `scripts/goldens/make_inspect_goldens.py` takes from
/// gguf-py, so the two can be compared key by key.
fn to_json(file: &GgufFile, args: &Args) -> Json {
    let c = file.content();
    let metadata: Vec<Json> = c
        .metadata
        .iter()
        .map(|(key, value)| match value {
            Value::Array(a) => {
                let all = array_json(a);
                let n = all.len();
                let ends = if args.full_arrays { n } else { JSON_ARRAY_ENDS };
                let tail = if n > ends {
                    all[n - ends..].to_vec()
                } else {
                    vec![]
                };
                json!({
                    "key": key,
                    "type": "array",
                    "element_type": a.element_type().name(),
                    "count": n,
                    "head": all[..n.min(ends)].to_vec(),
                    "tail": tail,
                })
            }
            v => json!({ "key": key, "type": v.value_type().name(), "value": scalar_json(v) }),
        })
        .collect();
    let tensors: Vec<Json> = if args.no_tensors {
        vec![]
    } else {
        c.tensors
            .iter()
            .map(|t| {
                json!({
                    "name": t.name,
                    "type": t.ty.name(),
                    "shape": t.shape,
                    "offset": t.offset,
                    "bytes": t.n_bytes,
                })
            })
            .collect()
    };
    json!({
        "version": c.version,
        "data_offset": c.data_offset,
        "metadata": metadata,
        "tensors": tensors,
    })
}

fn scalar_json(v: &Value) -> Json {
    match v {
        Value::U8(x) => json!(x),
        Value::I8(x) => json!(x),
        Value::U16(x) => json!(x),
        Value::I16(x) => json!(x),
        Value::U32(x) => json!(x),
        Value::I32(x) => json!(x),
        Value::U64(x) => json!(x),
        Value::I64(x) => json!(x),
        Value::F32(x) => json!(f64::from(*x)),
        Value::F64(x) => json!(x),
        Value::Bool(x) => json!(x),
        Value::String(s) => json!(s),
        Value::Array(a) => Json::Array(array_json(a)),
    }
}

fn array_json(a: &Array) -> Vec<Json> {
    fn each<T: Copy>(v: &[T], f: impl Fn(T) -> Json) -> Vec<Json> {
        v.iter().map(|&x| f(x)).collect()
    }
    match a {
        Array::U8(v) => each(v, |x| json!(x)),
        Array::I8(v) => each(v, |x| json!(x)),
        Array::U16(v) => each(v, |x| json!(x)),
        Array::I16(v) => each(v, |x| json!(x)),
        Array::U32(v) => each(v, |x| json!(x)),
        Array::I32(v) => each(v, |x| json!(x)),
        Array::U64(v) => each(v, |x| json!(x)),
        Array::I64(v) => each(v, |x| json!(x)),
        Array::F32(v) => each(v, |x| json!(f64::from(x))),
        Array::F64(v) => each(v, |x| json!(x)),
        Array::Bool(v) => each(v, |x| json!(x)),
        Array::String(v) => v.iter().map(|s| json!(s)).collect(),
        Array::Array(v) => v
            .iter()
            .map(|inner| Json::Array(array_json(inner)))
            .collect(),
    }
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
