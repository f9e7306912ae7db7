//! Writing GGUF v3 files: metadata plus tensors, laid out as llama.cpp and gguf-py expect.

use std::collections::HashSet;
use std::fs;
use std::io::{self, Write};
use std::path::Path;

use crate::error::GgufError;
use crate::reader::{align_up, DEFAULT_ALIGNMENT, GGUF_MAGIC, MAX_DIMS};
use crate::types::GgmlType;
use crate::value::{Array, Metadata, Value};

struct PendingTensor {
    name: String,
    ty: GgmlType,
    shape: Vec<u64>,
    data: Vec<u8>,
}

/// Builds a GGUF v3 file in memory and writes it out in one go.
///
/// The data section is aligned to `general.alignment` when that key is set (it must then be a
/// power of two), else to 32 bytes; tensors are stored in the order they were added.
#[derive(Default)]
pub struct GgufWriter {
    metadata: Metadata,
    tensors: Vec<PendingTensor>,
    names: HashSet<String>,
}

impl GgufWriter {
    /// An empty file.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets a metadata key (replacing an earlier value of the same key).
    pub fn set(&mut self, key: &str, value: Value) -> &mut Self {
        self.metadata.set(key, value);
        self
    }

    /// Copies every key of `metadata`, in its order.
    pub fn set_all(&mut self, metadata: &Metadata) -> &mut Self {
        for (k, v) in metadata.iter() {
            self.metadata.set(k, v.clone());
        }
        self
    }

    /// The metadata so far.
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// Adds a tensor whose `data` is already in `ty`'s storage format.
    pub fn add_tensor(
        &mut self,
        name: &str,
        ty: GgmlType,
        shape: &[u64],
        data: Vec<u8>,
    ) -> Result<&mut Self, GgufError> {
        let invalid = |msg: String| Err(GgufError::InvalidWrite(format!("tensor {name:?}: {msg}")));
        if self.names.contains(name) {
            return invalid("added twice".into());
        }
        if shape.len() > MAX_DIMS {
            return invalid(format!("{} dimensions, at most {MAX_DIMS}", shape.len()));
        }
        if shape.first().copied().unwrap_or(1) % ty.block_size() as u64 != 0 {
            return invalid(format!(
                "row length is not a multiple of the {ty} block size {}",
                ty.block_size()
            ));
        }
        let n: u64 = shape.iter().product();
        match ty.bytes_for(n) {
            Some(b) if b == data.len() as u64 => {}
            expected => {
                return invalid(format!(
                    "{} bytes given, {ty} {shape:?} takes {expected:?}",
                    data.len()
                ))
            }
        }
        self.names.insert(name.to_string());
        self.tensors.push(PendingTensor {
            name: name.to_string(),
            ty,
            shape: shape.to_vec(),
            data,
        });
        Ok(self)
    }

    fn alignment(&self) -> Result<u64, GgufError> {
        match self.metadata.get("general.alignment") {
            None => Ok(DEFAULT_ALIGNMENT),
            Some(v) => match v.to_u64() {
                Some(a) if a.is_power_of_two() => Ok(a),
                _ => Err(GgufError::BadAlignment {
                    alignment: v.to_u64().unwrap_or(0),
                }),
            },
        }
    }

    /// Writes the whole file to `out`; returns the bytes written.
    pub fn write_to(&self, out: &mut impl Write) -> Result<u64, GgufError> {
        let alignment = self.alignment()?;
        let mut w = CountingWriter { inner: out, n: 0 };
        let res: io::Result<()> = (|| {
            w.write_all(&GGUF_MAGIC)?;
            w.write_all(&3u32.to_le_bytes())?;
            w.write_all(&(self.tensors.len() as u64).to_le_bytes())?;
            w.write_all(&(self.metadata.len() as u64).to_le_bytes())?;
            for (k, v) in self.metadata.iter() {
                write_str(&mut w, k)?;
                w.write_all(&(v.value_type() as u32).to_le_bytes())?;
                write_value(&mut w, v)?;
            }
            let mut offset = 0u64;
            for t in &self.tensors {
                write_str(&mut w, &t.name)?;
                w.write_all(&(t.shape.len() as u32).to_le_bytes())?;
                for d in &t.shape {
                    w.write_all(&d.to_le_bytes())?;
                }
                w.write_all(&t.ty.id().to_le_bytes())?;
                w.write_all(&offset.to_le_bytes())?;
                offset = align_up(offset + t.data.len() as u64, alignment);
            }
            pad_to(&mut w, alignment)?;
            for t in &self.tensors {
                w.write_all(&t.data)?;
                pad_to(&mut w, alignment)?;
            }
            w.flush()
        })();
        res.map_err(GgufError::Write)?;
        Ok(w.n)
    }

    /// The whole file as bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>, GgufError> {
        let mut v = Vec::new();
        self.write_to(&mut v)?;
        Ok(v)
    }

    /// Writes the file to `path` through a temporary file in the same folder, renamed into
    /// place only once complete, so a failure never leaves a half-written model behind.
    pub fn write_file(&self, path: impl AsRef<Path>) -> Result<u64, GgufError> {
        let path = path.as_ref();
        let io_err = |error| GgufError::Io {
            path: path.to_path_buf(),
            error,
        };
        let mut tmp_name = path.as_os_str().to_owned();
        tmp_name.push(format!(".tmp-{}", std::process::id()));
        let tmp = Path::new(&tmp_name);
        let result = (|| {
            let file = fs::File::create(tmp).map_err(io_err)?;
            let mut buf = io::BufWriter::new(file);
            let n = self.write_to(&mut buf)?;
            let file = buf
                .into_inner()
                .map_err(|e| GgufError::Write(e.into_error()))?;
            file.sync_all().map_err(io_err)?;
            fs::rename(tmp, path).map_err(io_err)?;
            Ok(n)
        })();
        if result.is_err() {
            let _ = fs::remove_file(tmp);
        }
        result
    }
}

struct CountingWriter<'a, W: Write> {
    inner: &'a mut W,
    n: u64,
}

impl<W: Write> Write for CountingWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let k = self.inner.write(buf)?;
        self.n += k as u64;
        Ok(k)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn pad_to<W: Write>(w: &mut CountingWriter<'_, W>, alignment: u64) -> io::Result<()> {
    let pad = align_up(w.n, alignment) - w.n;
    w.write_all(&vec![0u8; pad as usize])
}

fn write_str(w: &mut impl Write, s: &str) -> io::Result<()> {
    w.write_all(&(s.len() as u64).to_le_bytes())?;
    w.write_all(s.as_bytes())
}

fn write_value(w: &mut impl Write, v: &Value) -> io::Result<()> {
    match v {
        Value::U8(x) => w.write_all(&x.to_le_bytes()),
        Value::I8(x) => w.write_all(&x.to_le_bytes()),
        Value::U16(x) => w.write_all(&x.to_le_bytes()),
        Value::I16(x) => w.write_all(&x.to_le_bytes()),
        Value::U32(x) => w.write_all(&x.to_le_bytes()),
        Value::I32(x) => w.write_all(&x.to_le_bytes()),
        Value::F32(x) => w.write_all(&x.to_le_bytes()),
        Value::U64(x) => w.write_all(&x.to_le_bytes()),
        Value::I64(x) => w.write_all(&x.to_le_bytes()),
        Value::F64(x) => w.write_all(&x.to_le_bytes()),
        Value::Bool(x) => w.write_all(&[u8::from(*x)]),
        Value::String(s) => write_str(w, s),
        Value::Array(a) => write_array(w, a),
    }
}

fn write_array(w: &mut impl Write, a: &Array) -> io::Result<()> {
    w.write_all(&(a.element_type() as u32).to_le_bytes())?;
    w.write_all(&(a.len() as u64).to_le_bytes())?;
    macro_rules! each {
        ($v:expr) => {{
            for x in $v {
                w.write_all(&x.to_le_bytes())?;
            }
            Ok(())
        }};
    }
    match a {
        Array::U8(v) => w.write_all(v),
        Array::I8(v) => each!(v),
        Array::U16(v) => each!(v),
        Array::I16(v) => each!(v),
        Array::U32(v) => each!(v),
        Array::I32(v) => each!(v),
        Array::F32(v) => each!(v),
        Array::U64(v) => each!(v),
        Array::I64(v) => each!(v),
        Array::F64(v) => each!(v),
        Array::Bool(v) => {
            for x in v {
                w.write_all(&[u8::from(*x)])?;
            }
            Ok(())
        }
        Array::String(v) => {
            for s in v {
                write_str(w, s)?;
            }
            Ok(())
        }
        Array::Array(v) => {
            for inner in v {
                write_array(w, inner)?;
            }
            Ok(())
        }
    }
}
