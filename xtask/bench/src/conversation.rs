//! `cargo xtask bench --conversation`: what a chat or agent user feels, on our server and on
//! llama-server (built from the same llama.cpp sources as llama-bench), same model, same
//! threads and slots, in one run, with ratios.
//!
//! - **Cold / warm TTFT**: a turn behind a long system prompt, then the next turn of the same
//!   conversation (the whole history resent, as chat clients do). TTFT is the latency of a
//!   request for one token, so it is the prompt's prefill plus one step on both servers.
//! - **ITL under prefill**: the gaps between a stream's tokens (256 of them) while another
//!   request's long prompt is prefilled beside it: median, p99, max and p99 / median.
//! - **Idle memory**: resident bytes after loading with the bench's slot count, before any
//!   request, beside the model file's size.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};

/// What the conversation bench needs from `cargo xtask bench`'s flags.
pub struct Setup<'a> {
    pub model: &'a Path,
    pub threads: usize,
    pub slots: usize,
    pub worker: PathBuf,
    pub llama_server: Option<PathBuf>,
    /// Words of the system prompt (about 1.3 tokens each).
    pub system_words: usize,
    /// Words of the prompt prefilled beside the stream.
    pub prefill_words: usize,
    pub json: bool,
}

/// The figures of one server.
#[derive(Debug, Default)]
struct Figures {
    cold_ttft_s: f64,
    warm_ttft_s: f64,
    prompt_tokens: u64,
    itl_median_s: f64,
    itl_p99_s: f64,
    itl_max_s: f64,
    /// Gaps of the stream that overlapped the long prompt's request.
    itl_tokens: usize,
    prefill_tokens: u64,
    idle_rss_bytes: u64,
}

/// Runs the bench on our worker and, where it is built, on llama-server.
pub fn run(s: &Setup<'_>) -> anyhow::Result<()> {
    let ours = {
        let server = Server::start_ours(s)?;
        measure(&server, s).context("our server")?
    };
    let theirs = match &s.llama_server {
        Some(bin) => {
            let server = Server::start_llama(bin, s)?;
            Some(measure(&server, s).context("llama-server")?)
        }
        None => {
            eprintln!("no llama-server (build it with --build-llama-bench): our numbers only");
            None
        }
    };
    report(s, &ours, theirs.as_ref());
    Ok(())
}

/// A server process on a loopback port.
struct Server {
    name: &'static str,
    child: Child,
    base: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Server {
    fn start_ours(s: &Setup<'_>) -> anyhow::Result<Server> {
        let port = free_port()?;
        let child = Command::new(&s.worker)
            .arg("serve")
            .arg("--model")
            .arg(s.model)
            .args(["--port", &port.to_string()])
            .args(["--threads", &s.threads.to_string()])
            .args(["--slots", &s.slots.to_string()])
            .args(["--ctx-size", "8192"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", s.worker.display()))?;
        Server::ready("ours", child, port)
    }

    fn start_llama(bin: &Path, s: &Setup<'_>) -> anyhow::Result<Server> {
        let port = free_port()?;
        // -c is the whole KV cache, shared by the -np slots.
        let ctx = 8192 * s.slots;
        let child = Command::new(bin)
            .arg("-m")
            .arg(s.model)
            .args(["--port", &port.to_string(), "--host", "127.0.0.1"])
            .args(["-t", &s.threads.to_string(), "-tb", &s.threads.to_string()])
            .args(["-np", &s.slots.to_string(), "-c", &ctx.to_string()])
            .args(["--jinja", "--no-webui"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        Server::ready("llama-server", child, port)
    }

    /// Waits until `/health` answers 200 (both servers have it).
    fn ready(name: &'static str, mut child: Child, port: u16) -> anyhow::Result<Server> {
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(120);
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait()? {
                bail!("{name} exited with {status} before it was ready");
            }
            if ureq::get(&format!("{base}/health"))
                .call()
                .is_ok_and(|r| r.status() == 200)
            {
                return Ok(Server { name, child, base });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("{name} was not ready within 120 s")
    }

    fn rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()));
        status
            .ok()
            .and_then(|s| {
                s.lines().find_map(|l| {
                    let kb = l.strip_prefix("VmRSS:")?.trim().strip_suffix(" kB")?;
                    kb.trim().parse::<u64>().ok()
                })
            })
            .map_or(0, |kb| kb * 1024)
    }

    /// A non-streamed chat completion of one token: the seconds it took and its usage.
    fn one_token(&self, messages: &Value) -> anyhow::Result<(f64, Value)> {
        let body = json!({
            "messages": messages,
            "max_tokens": 1,
            "temperature": 0,
        });
        let t = Instant::now();
        let mut r = ureq::post(&format!("{}/v1/chat/completions", self.base))
            .header("Content-Type", "application/json")
            .send(body.to_string().as_str())
            .with_context(|| format!("{}: chat completion", self.name))?;
        let v: Value = serde_json::from_str(&r.body_mut().read_to_string()?)?;
        Ok((t.elapsed().as_secs_f64(), v["usage"].clone()))
    }

    /// Streams a completion of `prompt` of up to `max_tokens`; calls `on_token(i)` as token
    /// `i` arrives and returns every arrival time.
    fn stream(
        &self,
        prompt: &str,
        max_tokens: usize,
        mut on_token: impl FnMut(usize),
    ) -> anyhow::Result<Vec<Instant>> {
        let body = json!({
            "prompt": prompt,
            "max_tokens": max_tokens,
            "temperature": 0,
            "stream": true,
        });
        let r = ureq::post(&format!("{}/v1/completions", self.base))
            .header("Content-Type", "application/json")
            .send(body.to_string().as_str())
            .with_context(|| format!("{}: streamed chat completion", self.name))?;
        let reader = BufReader::new(r.into_body().into_reader());
        let mut arrivals = Vec::new();
        for line in reader.lines() {
            let line = line?;
            let Some(data) = line.strip_prefix("data: ") else {
                continue;
            };
            if data.trim() == "[DONE]" {
                break;
            }
            let v: Value = serde_json::from_str(data)?;
            let content = v["choices"][0]["text"].as_str().unwrap_or("");
            if !content.is_empty() {
                arrivals.push(Instant::now());
                on_token(arrivals.len());
            }
        }
        Ok(arrivals)
    }
}

/// Deterministic filler text of `words` words, different for each `seed`.
fn filler(words: usize, seed: u64) -> String {
    const W: [&str; 16] = [
        "parcel", "shelf", "route", "north", "window", "ledger", "copper", "valve", "signal",
        "harbor", "quiet", "seven", "orange", "engine", "market", "winter",
    ];
    let mut x = seed | 1;
    (0..words)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if i % 12 == 11 {
                format!("{}.", x % 1000)
            } else {
                W[(x % 16) as usize].to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn measure(server: &Server, s: &Setup<'_>) -> anyhow::Result<Figures> {
    let mut f = Figures {
        idle_rss_bytes: server.rss_bytes(),
        ..Figures::default()
    };
    let system = format!(
        "You are the dispatcher of a warehouse. These are the standing orders: {}",
        filler(s.system_words, 1)
    );
    let turn1 = json!([
        {"role": "system", "content": system},
        {"role": "user", "content": "Which shelf does parcel 17 go to?"},
    ]);
    let (cold, usage) = server.one_token(&turn1)?;
    let turn2 = json!([
        {"role": "system", "content": system},
        {"role": "user", "content": "Which shelf does parcel 17 go to?"},
        {"role": "assistant", "content": "Parcel 17 goes to the north shelf, row seven."},
        {"role": "user", "content": "And parcel 18?"},
    ]);
    let (warm, _) = server.one_token(&turn2)?;
    f.cold_ttft_s = cold;
    f.warm_ttft_s = warm;
    f.prompt_tokens = usage["prompt_tokens"].as_u64().unwrap_or(0);

    // A stream (counting goes on for as long as it is let), and once it runs, a long prompt
    // beside it.
    let stream: String = (1..=12).map(|i| format!("{i}, ")).collect();
    let long = json!([{"role": "user", "content": filler(s.prefill_words, 2)}]);
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    type Window = (Vec<Instant>, Instant, Instant);
    let window = std::thread::scope(|scope| -> anyhow::Result<Window> {
        let prefill = scope.spawn(move || -> anyhow::Result<(Instant, Instant, u64)> {
            rx.recv().ok();
            let t = Instant::now();
            let (_, usage) = server.one_token(&long)?;
            Ok((
                t,
                Instant::now(),
                usage["prompt_tokens"].as_u64().unwrap_or(0),
            ))
        });
        let mut tx = Some(tx);
        let arrivals = server.stream(&stream, 256, |i| {
            if i == 8 {
                if let Some(tx) = tx.take() {
                    let _ = tx.send(());
                }
            }
        })?;
        drop(tx);
        let (start, end, tokens) = prefill.join().expect("prefill thread")?;
        f.prefill_tokens = tokens;
        Ok((arrivals, start, end))
    })?;
    let (arrivals, start, end) = window;
    // Every gap of the stream; those that overlap the long prompt's request are counted (a
    // stream that stalls for the whole prefill shows one long gap: the max).
    let mut gaps: Vec<f64> = arrivals
        .windows(2)
        .map(|w| (w[1] - w[0]).as_secs_f64())
        .collect();
    f.itl_tokens = arrivals
        .windows(2)
        .filter(|w| w[1] >= start && w[0] <= end)
        .count();
    gaps.sort_by(f64::total_cmp);
    if !gaps.is_empty() {
        f.itl_median_s = gaps[gaps.len() / 2];
        f.itl_p99_s = gaps[((gaps.len() as f64 * 0.99).ceil() as usize).min(gaps.len()) - 1];
        f.itl_max_s = gaps[gaps.len() - 1];
    }
    Ok(f)
}

fn report(s: &Setup<'_>, ours: &Figures, theirs: Option<&Figures>) {
    let file = std::fs::metadata(s.model).map_or(0, |m| m.len());
    type Get = Box<dyn Fn(&Figures) -> f64>;
    let rows: Vec<(&str, Get)> = vec![
        ("cold TTFT (s)", Box::new(|f| f.cold_ttft_s)),
        ("warm TTFT (s)", Box::new(|f| f.warm_ttft_s)),
        (
            "cold / warm",
            Box::new(|f| f.cold_ttft_s / f.warm_ttft_s.max(1e-9)),
        ),
        ("stream ITL median (ms)", Box::new(|f| f.itl_median_s * 1e3)),
        ("stream ITL p99 (ms)", Box::new(|f| f.itl_p99_s * 1e3)),
        ("stream ITL max (ms)", Box::new(|f| f.itl_max_s * 1e3)),
        (
            "stream ITL p99 / median",
            Box::new(|f| f.itl_p99_s / f.itl_median_s.max(1e-9)),
        ),
        (
            "idle RSS / file",
            Box::new(move |f| f.idle_rss_bytes as f64 / file.max(1) as f64),
        ),
    ];
    if s.json {
        for (name, f) in [("ours", Some(ours)), ("llama-server", theirs)] {
            if let Some(f) = f {
                println!(
                    "{}",
                    json!({
                        "engine": name, "model": s.model.display().to_string(),
                        "threads": s.threads, "slots": s.slots,
                        "cold_ttft_s": f.cold_ttft_s, "warm_ttft_s": f.warm_ttft_s,
                        "prompt_tokens": f.prompt_tokens,
                        "itl_median_s": f.itl_median_s, "itl_p99_s": f.itl_p99_s,
                        "itl_max_s": f.itl_max_s,
                        "itl_tokens": f.itl_tokens, "prefill_tokens": f.prefill_tokens,
                        "idle_rss_bytes": f.idle_rss_bytes, "file_bytes": file,
                    })
                );
            }
        }
        return;
    }
    println!(
        "conversation bench: {} ({} prompt tokens behind the system prompt, {} beside the \
         stream), {} threads, {} slots",
        s.model.display(),
        ours.prompt_tokens,
        ours.prefill_tokens,
        s.threads,
        s.slots
    );
    println!("| figure | ours | llama-server | ours / theirs |");
    println!("| --- | ---: | ---: | ---: |");
    for (name, get) in &rows {
        let (o, t) = (get(ours), theirs.map(get));
        println!(
            "| {name} | {o:.3} | {} | {} |",
            t.map_or("-".into(), |t| format!("{t:.3}")),
            t.map_or("-".into(), |t| format!("{:.2}x", o / t.max(1e-12))),
        );
    }
    println!(
        "({} and {} gaps of the stream overlapped the long prompt; idle RSS {:.0} MiB ours, \
         file {:.0} MiB)",
        ours.itl_tokens,
        theirs.map_or(0, |f| f.itl_tokens),
        ours.idle_rss_bytes as f64 / 1048576.0,
        file as f64 / 1048576.0
    );
}
