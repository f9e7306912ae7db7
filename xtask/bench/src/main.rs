//! `cargo xtask bench`: prefill (pp512) and decode (tg128) throughput of our CPU path, and of
//! llama.cpp's `llama-bench` on the same file and thread count in the same run, with ratios.
//!
//! Our numbers follow llama-bench's definitions (the driver is `worker_models::bench`, which
//! `worker-orcd bench` runs too): pp512 is one batched forward pass over 512 tokens from an
//! empty context; tg128 is 128 single-token forward passes from an empty context; with
//! `--depth N` both start after N tokens of context (llama-bench's `-d`). Ours alone, without
//! a depth: `tg128 x8`, 8 sequences decoding together, beside our pp rate. Each is run once
//! to warm up, then `--reps` times; the mean is reported.
//!
//! Before each round the read bandwidth is measured, and tg128 is reported as a fraction of
//! its floor (the weight bytes of a decode step over that bandwidth), ours and llama.cpp's.
//! With `--rounds N` the engines take turns N times (a shared machine's bandwidth drifts
//! over minutes) and the medians are reported, each round's ratios beside them.
//!
//! A crate of its own, which `cargo xtask bench` runs with `cargo run --release`, so that
//! `cargo xtask fetch` (CI's first step) builds only the download code, not the engine.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{bail, Context};
use clap::Parser;
use worker_compute::{CpuBackend, CpuConfig};
use worker_models::bench::{self, BenchSpec};
use worker_models::load;

use xtask::fetch;

mod constrained;
mod conversation;
mod floor;
mod profile;

/// Flags of `cargo xtask bench`.
#[derive(clap::Parser)]
#[command(
    about = "Prefill and decode throughput, ours and llama.cpp's (llama-bench) side by side; with \
             `--conversation`, chat-turn latency beside llama-server; with `--constrained`, \
             JSON-constrained decode beside free decode"
)]
struct Args {
    /// The GGUF model (default: the SmolLM2 fixture).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Threads for both engines.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Repetitions of each test (after one warm-up).
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Prompt length of the prefill test.
    #[arg(long, default_value_t = 512)]
    pp: usize,
    /// Tokens generated in the decode test.
    #[arg(long, default_value_t = 128)]
    tg: usize,
    /// Tokens already in the context when each test starts (llama-bench's `-d`): decode
    /// and prefill at a long context.
    #[arg(long, default_value_t = 0)]
    depth: usize,
    /// Sequences of our batched decode test (`tg` tokens each, one forward pass per step for
    /// all, from an empty context: a server's continuous batch), reported beside our pp rate;
    /// 0 or 1 skips it, as does a depth. llama-bench has no such test.
    #[arg(long, default_value_t = 8)]
    batch_seqs: usize,
    /// Rounds of the comparison: each measures the read floor, then runs our tests and
    /// llama-bench's; medians are reported.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// A llama-bench binary to compare against (else $LLAMA_BENCH, else the one
    /// `--build-llama-bench` puts in the fixture cache, if present).
    #[arg(long, env = "LLAMA_BENCH")]
    llama_bench: Option<PathBuf>,
    /// Build llama-bench from the llama.cpp sources vendored in the llama-cpp-python sdist
    /// (a few minutes), into the fixture cache, before benchmarking.
    #[arg(long)]
    build_llama_bench: bool,
    /// One JSON line per engine and test, then one line of ratios.
    #[arg(long)]
    json: bool,
    /// Run the conversation bench instead (cold and warm chat-turn TTFT, inter-token latency
    /// beside a long prefill, idle memory), on `worker-cpud serve` and llama-server.
    #[arg(long)]
    conversation: bool,
    /// Run the structured-output bench instead: decode tokens/s of JSON-constrained streams
    /// beside free ones, at 1 and `--slots` streams, `--tg` tokens each.
    #[arg(long, conflicts_with = "conversation")]
    constrained: bool,
    /// Run the decode profile instead: the read floor, the thread pool's cost per job, each
    /// kernel's bandwidth alone, and a batch-1 decode step op by op (`--tg` steps).
    #[arg(long, conflicts_with_all = ["conversation", "constrained"])]
    profile: bool,
    /// Slots of both servers in the conversation bench; streams of the constrained bench.
    #[arg(long, default_value_t = 8)]
    slots: usize,
    /// Words of the conversation bench's system prompt (about 1,800 tokens on SmolLM2).
    #[arg(long, default_value_t = 1400)]
    system_words: usize,
    /// Words of the prompt prefilled beside a stream (about 3,000 tokens on SmolLM2).
    #[arg(long, default_value_t = 2300)]
    prefill_words: usize,
}

/// One measured throughput.
struct Measure {
    engine: &'static str,
    test: String,
    tokens_per_s: f64,
}

/// One round of the comparison: the read bandwidth measured before it, and what both engines
/// measured.
struct Round {
    read_bytes_per_s: f64,
    results: Vec<Measure>,
}

/// The median of `values` (the mean of the middle two for an even count); 0 for none.
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => 0.0,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

fn main() -> ExitCode {
    match run(&Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `cargo xtask bench`.
fn run(args: &Args) -> anyhow::Result<()> {
    let model = match &args.model {
        Some(m) => m.clone(),
        None => fetch::ensure_default_model()?,
    };
    if args.build_llama_bench {
        build_llama_bench()?;
    }
    if args.conversation {
        return conversation::run(&conversation::Setup {
            model: &model,
            threads: args.threads,
            slots: args.slots,
            worker: build_worker()?,
            llama_server: Some(cached_llama_server()?).filter(|p| p.exists()),
            system_words: args.system_words,
            prefill_words: args.prefill_words,
            json: args.json,
        });
    }
    if args.profile {
        return profile::run(&model, args.threads, args.tg, args.depth);
    }
    if args.constrained {
        return constrained::run(
            &model,
            args.threads,
            args.slots,
            args.tg,
            args.reps,
            args.json,
        );
    }
    let llama_bench = args
        .llama_bench
        .clone()
        .or_else(|| Some(cached_llama_bench().ok()?).filter(|p| p.exists()));

    if llama_bench.is_none() {
        eprintln!(
            "no llama-bench (pass --llama-bench PATH, set LLAMA_BENCH, or --build-llama-bench): \
             printing our numbers only"
        );
    }
    let weight_bytes = floor::decode_weight_bytes(&model)?;
    let mut rounds = Vec::new();
    for _ in 0..args.rounds.max(1) {
        let read_bytes_per_s = floor::read_bandwidth(args.threads);
        let mut results = ours(&model, args)?;
        if let Some(bin) = &llama_bench {
            results.extend(llama_cpp(bin, &model, args)?);
        }
        rounds.push(Round {
            read_bytes_per_s,
            results,
        });
    }
    report(&rounds, weight_bytes, &model, args);
    Ok(())
}

fn test_names(args: &Args) -> [String; 2] {
    [
        test_name("pp", args.pp as u64, args.depth as u64),
        test_name("tg", args.tg as u64, args.depth as u64),
    ]
}

/// llama-bench's name of a test: `pp512`, or `tg128 @ d2048` at a depth.
fn test_name(kind: &str, tokens: u64, depth: u64) -> String {
    match depth {
        0 => format!("{kind}{tokens}"),
        d => format!("{kind}{tokens} @ d{d}"),
    }
}

fn ours(model: &Path, args: &Args) -> anyhow::Result<Vec<Measure>> {
    let file = worker_gguf::GgufFile::open(model)?;
    let mut backend = CpuBackend::new(CpuConfig {
        threads: args.threads,
        ..CpuConfig::default()
    });
    let spec = BenchSpec {
        pp: args.pp,
        tg: args.tg,
        reps: args.reps,
        depth: args.depth,
        batch_seqs: args.batch_seqs,
    };
    let mut m = load(&file, &mut backend, spec.load_options())?;
    let t = bench::run(m.as_mut(), &mut backend, &spec, |_, _| {})?;
    let [pp_name, tg_name] = test_names(args);
    let mut measures = Vec::new();
    // `--pp 0` (or `--tg 0`) skips that test, as llama-bench does.
    for (test, tokens, tokens_per_s) in [
        (pp_name, args.pp, t.pp_tokens_per_s),
        (tg_name, args.tg, t.tg_tokens_per_s),
    ] {
        if tokens > 0 {
            measures.push(Measure {
                engine: "ours",
                test,
                tokens_per_s,
            });
        }
    }
    if t.batched_tokens_per_s > 0.0 {
        measures.push(Measure {
            engine: "ours",
            test: batched_name(args),
            tokens_per_s: t.batched_tokens_per_s,
        });
    }
    Ok(measures)
}

/// The batched decode test's name: `tg128 x8`.
fn batched_name(args: &Args) -> String {
    format!("tg{} x{}", args.tg, args.batch_seqs)
}

fn llama_cpp(bin: &Path, model: &Path, args: &Args) -> anyhow::Result<Vec<Measure>> {
    let out = Command::new(bin)
        .arg("-m")
        .arg(model)
        .args(["-p", &args.pp.to_string(), "-n", &args.tg.to_string()])
        .args(["-d", &args.depth.to_string()])
        .args([
            "-t",
            &args.threads.to_string(),
            "-r",
            &args.reps.to_string(),
        ])
        .args(["-o", "json"])
        .output()
        .with_context(|| format!("cannot run {}", bin.display()))?;
    if !out.status.success() {
        bail!(
            "{} failed: {}",
            bin.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let rows: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("llama-bench printed no JSON")?;
    let mut results = Vec::new();
    for row in rows
        .as_array()
        .context("llama-bench JSON is not an array")?
    {
        let n_prompt = row["n_prompt"].as_u64().unwrap_or(0);
        let n_gen = row["n_gen"].as_u64().unwrap_or(0);
        let depth = row["n_depth"].as_u64().unwrap_or(0);
        let test = match n_gen {
            0 => test_name("pp", n_prompt, depth),
            n => test_name("tg", n, depth),
        };
        let tokens_per_s = row["avg_ts"]
            .as_f64()
            .context("llama-bench row without avg_ts")?;
        results.push(Measure {
            engine: "llama.cpp",
            test,
            tokens_per_s,
        });
    }
    Ok(results)
}

/// Prints the medians over `rounds` of every engine's tests, the ratios (each round's beside
/// their median), the batched test against our prefill, and tg's fraction of the read floor
/// of `weight_bytes` a token.
fn report(rounds: &[Round], weight_bytes: u64, model: &Path, args: &Args) {
    let model_name = model.file_name().map_or_else(
        || model.display().to_string(),
        |n| n.to_string_lossy().into(),
    );
    let find = |round: &Round, engine: &str, test: &str| {
        round
            .results
            .iter()
            .find(|m| m.engine == engine && m.test == test)
            .map(|m| m.tokens_per_s)
    };
    // Per test, each round's value of `f` (rounds where it has none left out).
    let per_round =
        |f: &dyn Fn(&Round) -> Option<f64>| -> Vec<f64> { rounds.iter().filter_map(f).collect() };
    let table: Vec<(&'static str, String, f64)> = rounds[0]
        .results
        .iter()
        .map(|m| {
            let values = per_round(&|r| find(r, m.engine, &m.test));
            (m.engine, m.test.clone(), median(values))
        })
        .collect();
    let ratios: Vec<(String, Vec<f64>)> = test_names(args)
        .into_iter()
        .map(|t| {
            let values = per_round(&|r| Some(find(r, "ours", &t)? / find(r, "llama.cpp", &t)?));
            (t, values)
        })
        .filter(|(_, v)| !v.is_empty())
        .collect();
    // The batched decode against our own prefill: how much of the batched matmul's rate a
    // continuous batch of single-token steps reaches.
    let [pp_name, tg_name] = test_names(args);
    let batched =
        per_round(&|r| Some(find(r, "ours", &batched_name(args))? / find(r, "ours", &pp_name)?));
    // tg's fraction of the floor (weights only, so only without a depth, where the KV cache
    // adds little to a step's reads).
    let read = median(per_round(&|r| Some(r.read_bytes_per_s)));
    let floor_tokens_per_s = |r: &Round| r.read_bytes_per_s / weight_bytes.max(1) as f64;
    let fraction = |engine: &str| {
        median(per_round(&|r| {
            Some(find(r, engine, &tg_name)? / floor_tokens_per_s(r))
        }))
    };
    let fractions: Vec<(&str, f64)> = match args.depth {
        0 => ["ours", "llama.cpp"]
            .into_iter()
            .map(|e| (e, fraction(e)))
            .filter(|(_, f)| *f > 0.0)
            .collect(),
        _ => Vec::new(),
    };
    if args.json {
        for (engine, test, tokens_per_s) in &table {
            println!(
                "{}",
                serde_json::json!({
                    "engine": engine,
                    "model": model_name,
                    "test": test,
                    "threads": args.threads,
                    "tokens_per_s": tokens_per_s,
                    "rounds": rounds.len(),
                })
            );
        }
        let ratios: serde_json::Map<String, serde_json::Value> = ratios
            .into_iter()
            .map(|(t, r)| (t, serde_json::json!(median(r))))
            .collect();
        println!("{}", serde_json::json!({ "ratios": ratios }));
        if !batched.is_empty() {
            println!(
                "{}",
                serde_json::json!({ "of_ours": {
                    "test": batched_name(args), "of": pp_name, "fraction": median(batched)
                } })
            );
        }
        if !fractions.is_empty() {
            let of: serde_json::Map<String, serde_json::Value> = fractions
                .iter()
                .map(|(e, f)| (e.to_string(), serde_json::json!(f)))
                .collect();
            println!(
                "{}",
                serde_json::json!({ "read_floor": {
                    "test": tg_name,
                    "read_gb_per_s": read / 1e9,
                    "weight_mb_per_token": weight_bytes as f64 / 1e6,
                    "fraction": of,
                } })
            );
        }
        return;
    }
    match rounds.len() {
        1 => println!("{model_name}, {} threads", args.threads),
        n => println!(
            "{model_name}, {} threads, medians of {n} rounds",
            args.threads
        ),
    }
    let width = table.iter().map(|m| m.1.len()).max().unwrap_or(0).max(4);
    println!("| engine    | {:<width$} |   tokens/s |", "test");
    println!("| --------- | {:-<width$} | ---------: |", "");
    for (engine, test, tokens_per_s) in &table {
        println!("| {engine:<9} | {test:<width$} | {tokens_per_s:>10.1} |");
    }
    for (t, r) in ratios {
        let each: Vec<String> = r.iter().map(|x| format!("{x:.2}x")).collect();
        match r.len() {
            1 => println!("ours / llama.cpp {t}: {:.2}x", r[0]),
            _ => println!(
                "ours / llama.cpp {t}: {:.2}x (rounds: {})",
                median(r.clone()),
                each.join(", ")
            ),
        }
    }
    if !batched.is_empty() {
        println!(
            "ours {} / ours {pp_name}: {:.0}%",
            batched_name(args),
            100.0 * median(batched)
        );
    }
    if !fractions.is_empty() {
        let of: Vec<String> = fractions
            .iter()
            .map(|(e, f)| format!("{e} {:.0}%", 100.0 * f))
            .collect();
        println!(
            "{tg_name} of the read floor ({:.1} GB/s read, {:.1} MB of weights a token: {:.1} \
             tok/s): {}",
            read / 1e9,
            weight_bytes as f64 / 1e6,
            read / weight_bytes.max(1) as f64,
            of.join(", ")
        );
    }
}

/// Where `--build-llama-bench` puts the binary.
fn cached_llama_bench() -> anyhow::Result<PathBuf> {
    Ok(fetch::cache_dir()?.join("llama.cpp-build/bin/llama-bench"))
}

/// Where `--build-llama-bench` puts llama-server.
fn cached_llama_server() -> anyhow::Result<PathBuf> {
    Ok(fetch::cache_dir()?.join("llama.cpp-build/bin/llama-server"))
}

/// Builds `worker-cpud` (release) and returns its path.
fn build_worker() -> anyhow::Result<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    fetch::run_cmd(Command::new(cargo).args([
        "build",
        "--release",
        "--quiet",
        "--bin",
        "worker-cpud",
    ]))?;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    Ok(root.join("target/release/worker-cpud"))
}

/// Builds llama-bench and llama-server (CMake, Release, native CPU) from the sources
/// vendored in the llama-cpp-python sdist that `cargo xtask fetch` downloads; skipped when
/// both are built.
fn build_llama_bench() -> anyhow::Result<()> {
    let bin = cached_llama_bench()?;
    if bin.exists() && cached_llama_server()?.exists() {
        return Ok(());
    }
    let cache = fetch::cache_dir()?;
    let src = cache.join("llama.cpp-src");
    if !src.join("CMakeLists.txt").exists() {
        let sdist = fetch::llama_cpp_sdist(&cache)?;
        std::fs::create_dir_all(&src)?;
        fetch::run_cmd(
            Command::new("tar")
                .arg("-xzf")
                .arg(&sdist)
                .arg("-C")
                .arg(&src)
                .arg("--strip-components=3")
                .arg("llama_cpp_python-0.3.36/vendor/llama.cpp"),
        )?;
    }
    let cmake = fetch::build_venv(&cache)?.join("bin").join("cmake");
    let build = cache.join("llama.cpp-build");
    fetch::run_cmd(
        Command::new(&cmake)
            .arg("-S")
            .arg(&src)
            .arg("-B")
            .arg(&build)
            .args([
                "-G",
                "Ninja",
                "-DCMAKE_BUILD_TYPE=Release",
                "-DGGML_NATIVE=ON",
                "-DLLAMA_CURL=OFF",
                "-DLLAMA_BUILD_TESTS=OFF",
                "-DLLAMA_BUILD_EXAMPLES=OFF",
                "-DLLAMA_BUILD_SERVER=ON",
                "-DBUILD_SHARED_LIBS=OFF",
            ])
            .env("PATH", path_with(&cmake)),
    )?;
    fetch::run_cmd(
        Command::new(&cmake)
            .arg("--build")
            .arg(&build)
            .args(["--target", "llama-bench", "llama-server", "-j", "2"])
            .env("PATH", path_with(&cmake)),
    )?;
    if !bin.exists() {
        bail!("the build finished but {} is missing", bin.display());
    }
    Ok(())
}

/// `$PATH` with the venv's bin folder (for ninja) in front.
fn path_with(tool: &Path) -> std::ffi::OsString {
    let mut paths = vec![tool.parent().map(Path::to_path_buf).unwrap_or_default()];
    paths.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    std::env::join_paths(paths).unwrap_or_default()
}
