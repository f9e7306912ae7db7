//! `cargo xtask bench --constrained`: decode throughput of JSON-constrained streams beside
//! free ones, at 1 and 8 concurrent streams, through the engine (the server's path minus
//! HTTP), with the ratio the structured-output issue bounds (constrained ≥ 0.9 × free).
//!
//! Both kinds generate exactly `--tg` tokens, so the batch never shrinks mid-run: every
//! stream has its end-of-generation tokens banned (a logit bias of −∞), and a constrained
//! stream follows an unclosed JSON array of objects described by a schema, so its token mask
//! is recomputed every step, as in a real structured answer (the grammar accepts after each
//! element, where the ban leaves the model only `,` to go on).

use std::path::Path;
use std::sync::Arc;
use std::thread;
use std::time::Instant;

use anyhow::{bail, Context};
use worker_compute::{CpuBackend, CpuConfig};
use worker_engine::{Constraint, Engine, EngineConfig, Event, GenerationRequest, SamplingConfig};

/// The schema of each array element; the grammar is `[` element (`,` element)* with no
/// closing bracket.
const ITEM_SCHEMA: &str = r#"{"type":"object","properties":{"name":{"type":"string","maxLength":40},"age":{"type":"integer","minimum":0,"maximum":150},"tags":{"type":"array","items":{"enum":["red","green","blue"]}}},"required":["name","age","tags"],"additionalProperties":false}"#;

/// What one run measured.
struct Run {
    streams: usize,
    constrained: bool,
    /// Generated tokens over the span from the first stream's first token to the last
    /// stream's last token.
    aggregate_tokens_per_s: f64,
    /// Mean over streams of each stream's own decode rate.
    per_stream_tokens_per_s: f64,
}

/// Runs the four measurements (free and constrained, 1 and `max_streams` streams) and prints
/// them with ratios; `reps` repetitions of each after one warm-up, the best kept.
pub fn run(
    model: &Path,
    threads: usize,
    max_streams: usize,
    tg: usize,
    reps: usize,
    json: bool,
) -> anyhow::Result<()> {
    if tg == 0 || max_streams == 0 {
        bail!("--tg and --slots must be positive");
    }
    let file = worker_gguf::GgufFile::open(model)?;
    let backend = Box::new(CpuBackend::new(CpuConfig {
        threads,
        ..CpuConfig::default()
    }));
    let engine = Arc::new(Engine::load(
        &file,
        backend,
        EngineConfig {
            slots: max_streams,
            context: 512.max(tg + 128),
            ..EngineConfig::default()
        },
    )?);
    let tokenizer = engine.tokenizer().clone();
    let ban_eog: Vec<(u32, f32)> = (0..tokenizer.vocab_size() as u32)
        .filter(|&id| tokenizer.is_eog(id))
        .map(|id| (id, f32::NEG_INFINITY))
        .collect();
    let grammar = format!("start: \"[\" item (\",\" item)*\nitem: %json {ITEM_SCHEMA}\n");
    let constraint = Constraint::Lark(grammar);
    engine
        .check_constraint(&constraint)
        .context("the bench grammar does not compile")?;

    let mut runs = Vec::new();
    let mut stream_counts = vec![1];
    if max_streams > 1 {
        stream_counts.push(max_streams);
    }
    for &streams in &stream_counts {
        for constrained in [false, true] {
            let mut best: Option<Run> = None;
            for rep in 0..=reps {
                let run = measure(&engine, streams, constrained, &constraint, &ban_eog, tg)?;
                if rep > 0
                    && best
                        .as_ref()
                        .is_none_or(|b| b.aggregate_tokens_per_s < run.aggregate_tokens_per_s)
                {
                    best = Some(run);
                }
            }
            runs.extend(best);
        }
    }
    report(&runs, model, threads, tg, json);
    Ok(())
}

/// One run: `streams` requests submitted together, each generating exactly `tg` tokens.
fn measure(
    engine: &Arc<Engine>,
    streams: usize,
    constrained: bool,
    constraint: &Constraint,
    ban_eog: &[(u32, f32)],
    tg: usize,
) -> anyhow::Result<Run> {
    let handles: Vec<_> = (0..streams)
        .map(|i| {
            let mut request = GenerationRequest::new(format!(
                "A list of people with their age and favourite colours, as JSON (list {i}):"
            ));
            request.max_tokens = Some(tg);
            request.sampling = SamplingConfig {
                temperature: 0.7,
                seed: 1000 + i as u64,
                ..SamplingConfig::default()
            };
            // The grammar accepts after every element, so the constrained streams need the
            // ban too to run their full length.
            request.sampling.logit_bias = ban_eog.to_vec();
            if constrained {
                request.constraint = Some(constraint.clone());
            }
            let engine = engine.clone();
            thread::spawn(move || -> anyhow::Result<(Instant, Instant, usize, f64)> {
                let mut generation = engine.submit(request)?;
                let (mut first, mut last, mut tokens) = (None, Instant::now(), 0);
                while let Some(event) = generation.next_event() {
                    match event {
                        Event::Token(_) => {
                            last = Instant::now();
                            first.get_or_insert(last);
                            tokens += 1;
                        }
                        Event::End(end) => {
                            let rate = end.timings.decode_tokens_per_s().unwrap_or(0.0);
                            let first = first.context("a stream generated no token")?;
                            return Ok((first, last, tokens, rate));
                        }
                        Event::Error(e) => return Err(e.into()),
                    }
                }
                bail!("the stream ended without a terminal event")
            })
        })
        .collect();
    let mut results = Vec::new();
    for h in handles {
        results.push(
            h.join()
                .map_err(|_| anyhow::anyhow!("a stream panicked"))??,
        );
    }
    for (_, _, tokens, _) in &results {
        if *tokens != tg {
            bail!("a stream generated {tokens} of {tg} tokens: the run would not compare");
        }
    }
    let start = results.iter().map(|r| r.0).min().expect("streams > 0");
    let end = results.iter().map(|r| r.1).max().expect("streams > 0");
    // The first token of each stream comes from its prefill; the span counts the rest.
    let decoded = streams * (tg - 1);
    let span = end.duration_since(start).as_secs_f64();
    Ok(Run {
        streams,
        constrained,
        aggregate_tokens_per_s: if span > 0.0 {
            decoded as f64 / span
        } else {
            0.0
        },
        per_stream_tokens_per_s: results.iter().map(|r| r.3).sum::<f64>() / streams as f64,
    })
}

fn report(runs: &[Run], model: &Path, threads: usize, tg: usize, json: bool) {
    let name = model.file_name().map_or_else(
        || model.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    let find = |streams: usize, constrained: bool| {
        runs.iter()
            .find(|r| r.streams == streams && r.constrained == constrained)
    };
    let mut stream_counts: Vec<usize> = runs.iter().map(|r| r.streams).collect();
    stream_counts.dedup();
    if json {
        for r in runs {
            println!(
                "{}",
                serde_json::json!({
                    "engine": "ours",
                    "test": format!("tg{tg}"),
                    "streams": r.streams,
                    "constrained": r.constrained,
                    "aggregate_tokens_per_s": r.aggregate_tokens_per_s,
                    "per_stream_tokens_per_s": r.per_stream_tokens_per_s,
                })
            );
        }
        return;
    }
    println!("model: {name}, {threads} threads, {tg} tokens per stream");
    println!("| streams | free tok/s | constrained tok/s | constrained/free |");
    println!("|---------|-----------:|------------------:|-----------------:|");
    for streams in stream_counts {
        if let (Some(free), Some(con)) = (find(streams, false), find(streams, true)) {
            println!(
                "| {streams:>7} | {:>10.1} | {:>17.1} | {:>16.3} |",
                free.aggregate_tokens_per_s,
                con.aggregate_tokens_per_s,
                con.aggregate_tokens_per_s / free.aggregate_tokens_per_s
            );
        }
    }
    println!(
        "(aggregate decode tokens/s over all streams; constrained streams follow an unclosed \
         JSON array of schema-described objects; every stream has end-of-generation banned)"
    );
}
