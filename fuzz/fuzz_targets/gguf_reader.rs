//! Feeds arbitrary bytes to the GGUF reader: any input must give `Ok` or a typed error, never a
//! panic, and a file that parses must round-trip through the writer.
#![no_main]

use libfuzzer_sys::fuzz_target;
use worker_gguf::{dequantize, GgufFile, GgufWriter};

fuzz_target!(|data: &[u8]| {
    let Ok(file) = GgufFile::from_bytes(data.to_vec()) else {
        return;
    };
    let mut writer = GgufWriter::new();
    writer.set_all(file.metadata());
    for t in file.tensors() {
        let bytes = file.tensor_bytes(t);
        // Dequantizing whatever the tensor holds must not panic either.
        if t.n_elements() <= 1 << 16 {
            let mut out = vec![0f32; t.n_elements() as usize];
            let _ = dequantize(t.ty, bytes, &mut out);
        }
        if writer.add_tensor(&t.name, t.ty, &t.shape, bytes.to_vec()).is_err() {
            return;
        }
    }
    // What the writer writes must read back and write again to the same bytes (compared as
    // bytes, since metadata may hold NaN floats).
    if let Ok(bytes) = writer.to_bytes() {
        let again = GgufFile::from_bytes(bytes.clone()).expect("writer output must parse");
        assert_eq!(again.tensors().len(), file.tensors().len());
        let mut rewriter = GgufWriter::new();
        rewriter.set_all(again.metadata());
        for t in again.tensors() {
            rewriter
                .add_tensor(&t.name, t.ty, &t.shape, again.tensor_bytes(t).to_vec())
                .expect("tensor read back from our own output");
        }
        assert_eq!(rewriter.to_bytes().expect("rewrite"), bytes);
    }
});
