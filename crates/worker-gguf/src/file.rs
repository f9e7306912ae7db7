//! A GGUF file opened for reading: parsed content plus zero-copy access to tensor bytes.

use std::fs::File;
use std::ops::Deref;
use std::path::Path;

use memmap2::Mmap;

use crate::error::GgufError;
use crate::reader::{GgufContent, TensorInfo};

/// The bytes behind a [`GgufFile`]: a memory map for files, a vector for in-memory data.
enum Backing {
    Mmap(Mmap),
    Owned(Vec<u8>),
}

impl Deref for Backing {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Backing::Mmap(m) => m,
            Backing::Owned(v) => v,
        }
    }
}

/// A parsed GGUF file. Tensor bytes are slices of the memory map; nothing is copied.
pub struct GgufFile {
    content: GgufContent,
    bytes: Backing,
}

impl GgufFile {
    /// Maps `path` and parses it.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, GgufError> {
        let path = path.as_ref();
        let io_err = |error| GgufError::Io {
            path: path.to_path_buf(),
            error,
        };
        let file = File::open(path).map_err(io_err)?;
        // SAFETY: the map is read-only and lives as long as `self`. Another process truncating
        // or rewriting the file while it is mapped is outside what we can guard against; like
        // llama.cpp, we accept that model files are not modified while in use.
        let map = unsafe { Mmap::map(&file) }.map_err(io_err)?;
        let content = GgufContent::parse(&map)?;
        Ok(GgufFile {
            content,
            bytes: Backing::Mmap(map),
        })
    }

    /// Parses a GGUF file held in memory.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self, GgufError> {
        let content = GgufContent::parse(&bytes)?;
        Ok(GgufFile {
            content,
            bytes: Backing::Owned(bytes),
        })
    }

    /// Header, metadata and tensor infos.
    pub fn content(&self) -> &GgufContent {
        &self.content
    }

    /// The metadata.
    pub fn metadata(&self) -> &crate::Metadata {
        &self.content.metadata
    }

    /// Tensor infos in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.content.tensors
    }

    /// The info of the tensor named `name`, or an error naming it.
    pub fn tensor_info(&self, name: &str) -> Result<&TensorInfo, GgufError> {
        self.content
            .tensor(name)
            .ok_or_else(|| GgufError::MissingTensor {
                name: name.to_string(),
            })
    }

    /// The bytes of `info`, which must come from this file (the parser checked its bounds).
    pub fn tensor_bytes(&self, info: &TensorInfo) -> &[u8] {
        let start = (self.content.data_offset + info.offset) as usize;
        &self.bytes[start..start + info.n_bytes as usize]
    }

    /// Takes the pages holding the bytes of `info` out of this process's resident memory, for
    /// a caller that has copied them (a backend that owns its weights) and will not read them
    /// again soon. The bytes stay readable: a later read maps them back from the file (usually
    /// from the page cache). Without this, every mapped page a load touched stays resident as
    /// long as the file is open, beside the backend's copy. Does nothing for in-memory files,
    /// off Unix, or when the system refuses the advice (memory is then only released later).
    pub fn release_tensor_pages(&self, info: &TensorInfo) {
        #[cfg(unix)]
        if let Backing::Mmap(map) = &self.bytes {
            let start = (self.content.data_offset + info.offset) as usize;
            // SAFETY: the map is read-only and shared with the file, so MADV_DONTNEED only
            // drops page-table entries: the next read of these bytes (through any slice still
            // borrowed from the map) faults in the same contents from the file, on the
            // assumption `open` already makes that the file is not modified while mapped.
            // The advice is only a hint, so an error leaves nothing to undo.
            let _ = unsafe {
                map.unchecked_advise_range(
                    memmap2::UncheckedAdvice::DontNeed,
                    start,
                    info.n_bytes as usize,
                )
            };
        }
        #[cfg(not(unix))]
        let _ = info;
    }

    /// The info and bytes of the tensor named `name`.
    pub fn tensor(&self, name: &str) -> Result<(&TensorInfo, &[u8]), GgufError> {
        let info = self.tensor_info(name)?;
        Ok((info, self.tensor_bytes(info)))
    }

    /// The whole file.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }
}
