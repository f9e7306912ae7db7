//! Writes the tiny random-weight models that the tests build in memory (`phi3`, `gpt2`,
//! `qwen3`, `gemma3`, `gpt-oss`) to `DIR/tiny-<arch>.gguf`, for
//! `scripts/goldens/make_tiny_model_goldens.py` to run through llama.cpp.
//!
//! ```text
//! cargo run -p worker-models --example write_tiny_models -- DIR
//! ```

#[path = "../tests/support/tiny_arch.rs"]
mod tiny_arch;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args()
        .nth(1)
        .ok_or("usage: write_tiny_models DIR")?;
    std::fs::create_dir_all(&dir)?;
    for arch in tiny_arch::ARCHS {
        let bytes =
            tiny_arch::tiny_model(arch, &tiny_arch::vocab(arch), &tiny_arch::Edit::default());
        let path = std::path::Path::new(&dir).join(format!("tiny-{arch}.gguf"));
        std::fs::write(&path, &bytes)?;
        println!("{}", path.display());
    }
    Ok(())
}
