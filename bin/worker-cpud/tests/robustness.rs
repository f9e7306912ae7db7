//! A bounded fault campaign against the real `worker-cpud serve` on 127.0.0.1, the one the
//! issue #12 campaign ran by hand: bad bodies, stalled connections, disconnect storms, cancel
//! storms, overload, SIGTERM under load, and corrupted model files. Throughout, every request
//! must get a 4xx/5xx JSON error or a complete stream with exactly one terminal event,
//! `/health` must answer within a second, and afterwards no slot may be busy and the log
//! must hold no panic.

mod http_support;
mod tiny_model;

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use http_support::{agent, parse_response, parse_sse, read_until_closed, Sse, SseReader, Worker};
use serde_json::{json, Value};
use worker_http::fuzzing::{arbitrary_request, FuzzRoute, CANARY};

/// A prompt of about 200 tokens: its prefill keeps a slot busy for a while.
fn long_prompt() -> String {
    "The quick brown fox jumps over the lazy dog. ".repeat(20)
}

/// Polls `/health` from its own thread; every answer must be a 200 within a second.
struct HealthWatch {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<(usize, Duration, Vec<String>)>,
}

impl HealthWatch {
    fn start(url: String) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let agent = agent();
            let (mut n, mut worst, mut bad) = (0, Duration::ZERO, Vec::new());
            while !flag.load(Ordering::Relaxed) {
                let t = Instant::now();
                let status = agent.get(&url).call().map(|r| r.status().as_u16());
                let took = t.elapsed();
                n += 1;
                worst = worst.max(took);
                if !matches!(status, Ok(200)) || took >= Duration::from_secs(1) {
                    bad.push(format!("{status:?} after {took:?}"));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            (n, worst, bad)
        });
        HealthWatch { stop, thread }
    }

    fn finish(self) -> (usize, Duration) {
        self.stop.store(true, Ordering::Relaxed);
        let (n, worst, bad) = self.thread.join().expect("health watcher");
        assert!(
            bad.is_empty(),
            "/health failed {} of {n} times: {bad:?}",
            bad.len()
        );
        (n, worst)
    }
}

/// An answer: a JSON error, or a whole stream (or document) with one terminal event.
#[derive(Debug)]
enum Answer {
    Error(u16, Value),
    Complete,
}

/// Checks one HTTP answer of `route` against the campaign's rule and says which it was.
fn judge(route: &str, status: u16, content_type: Option<&str>, text: &str) -> Answer {
    if status >= 400 {
        // An answer may name the job the client asked about; an error echoes nothing.
        assert!(
            !text.contains(CANARY),
            "{route} echoed request text: {text}"
        );
        let v: Value = serde_json::from_str(text)
            .unwrap_or_else(|_| panic!("{route}: {status} without a JSON body: {text:?}"));
        assert!(
            v["code"].is_string() || v["error"]["code"].is_string(),
            "{route}: {status} {v}"
        );
        return Answer::Error(status, v);
    }
    assert!(status == 200 || status == 202, "{route}: {status} {text}");
    if content_type.is_some_and(|c| c.starts_with("text/event-stream")) {
        check_stream(route, &parse_sse(text));
    } else {
        let _: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{route}: {e}"));
    }
    Answer::Complete
}

/// Exactly one terminal event, and it is the last: `end`/`error` on `/execute`, `[DONE]` on
/// the OpenAI routes (after a chunk with a finish reason, or an error object).
fn check_stream(route: &str, events: &[Sse]) {
    assert!(!events.is_empty(), "{route}: an empty stream");
    if route == "/execute" {
        let terminal = events
            .iter()
            .filter(|e| e.name == "end" || e.name == "error")
            .count();
        assert_eq!(terminal, 1, "{route}: {events:?}");
        let last = &events[events.len() - 1];
        assert!(
            last.name == "end" || last.name == "error",
            "{route}: {events:?}"
        );
    } else {
        let done = events.iter().filter(|e| e.data == "[DONE]").count();
        assert_eq!(done, 1, "{route}: {events:?}");
        assert_eq!(
            events[events.len() - 1].data,
            "[DONE]",
            "{route}: {events:?}"
        );
    }
}

#[derive(Debug, Default)]
struct Tally {
    errors: usize,
    complete: usize,
}

impl Tally {
    fn add(&mut self, a: &Answer) {
        match a {
            Answer::Error(..) => self.errors += 1,
            Answer::Complete => self.complete += 1,
        }
    }
}

fn post(w: &Worker, path: &str, body: &[u8], content_type: &str) -> Answer {
    let r = w.post_raw(path, body, &[("Content-Type", content_type)]);
    judge(path, r.status, r.content_type.as_deref(), &r.text)
}

/// Seeded bodies from the fuzz generator (JSON near each schema, raw bytes, canaries
/// everywhere), and a few hand-made ones.
fn bad_bodies(w: &Worker) -> Tally {
    let mut tally = Tally::default();
    for input in worker_testdata::seeded_inputs(0x0bad_b0d1, 300, 400) {
        let (route, body) = arbitrary_request(&input);
        tally.add(&post(w, route.path(), &body, "application/json"));
    }
    let deep = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
    let huge = format!(
        "{{\"job_id\":\"h\",\"prompt\":\"{}\"}}",
        "a".repeat(2 << 20)
    );
    let specials: Vec<(&str, Vec<u8>, &str)> = vec![
        ("/execute", Vec::new(), "application/json"),
        (
            "/execute",
            b"\xff\xfe\x00garbage".to_vec(),
            "application/json",
        ),
        ("/execute", deep.into_bytes(), "application/json"),
        (
            "/v1/completions",
            b"{\"prompt\": \"x\"}".to_vec(),
            "text/plain",
        ),
        ("/v1/chat/completions", b"null".to_vec(), "application/json"),
        ("/cancel", b"{\"job_id\": 5}".to_vec(), "application/json"),
    ];
    for (path, body, ct) in specials {
        tally.add(&post(w, path, &body, ct));
    }
    let (status, body) = w.post_oversized("/execute", huge.into_bytes());
    assert_eq!(
        (status, &body["code"]),
        (413, &json!("PAYLOAD_TOO_LARGE")),
        "{body}"
    );
    for path in ["/execute", "/v1/completions", "/tokenize", "/nope"] {
        let (status, body) = w.get(path);
        tally.add(&judge(path, status, None, &body));
    }
    tally
}

/// Eight each of: silent, slow headers, stalled body, idle keep-alive. All are closed.
fn stalled_connections(w: &Worker) -> usize {
    let stalled_body = b"POST /execute HTTP/1.1\r\nHost: w\r\nContent-Length: 500\r\n\r\n{\"job";
    let mut socks: Vec<(&str, std::net::TcpStream)> = Vec::new();
    for _ in 0..8 {
        socks.push(("silent", w.raw(b"")));
        socks.push(("slow", w.raw(b"GET /health HTTP/1.1\r\n")));
        socks.push(("body", w.raw(stalled_body)));
        socks.push(("idle", w.raw(b"GET /health HTTP/1.1\r\nHost: w\r\n\r\n")));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let mut slow: Vec<_> = socks
        .iter()
        .filter(|(k, _)| *k == "slow")
        .map(|(_, s)| s.try_clone().unwrap())
        .collect();
    let flag = stop.clone();
    let trickle = std::thread::spawn(move || {
        while !flag.load(Ordering::Relaxed) {
            for s in &mut slow {
                let _ = s.write_all(b"X");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    });
    for (kind, s) in &mut socks {
        let (bytes, closed) = read_until_closed(s, Duration::from_secs(20));
        assert!(closed, "a {kind} connection was not closed");
        if *kind == "body" {
            let (status, v) = parse_response(&bytes).expect("a response to the stalled body");
            assert_eq!(
                (status, &v["code"]),
                (408, &json!("REQUEST_TIMEOUT")),
                "{v}"
            );
        }
    }
    stop.store(true, Ordering::Relaxed);
    let _ = trickle.join();
    socks.len()
}

/// Opens an `/execute` stream; a refusal comes back as its status and JSON error.
fn open_execute(base: &str, body: &Value) -> Result<SseReader, (u16, Value)> {
    let agent = agent();
    let r = agent
        .post(&format!("{base}/execute"))
        .header("Content-Type", "application/json")
        .send(body.to_string().as_bytes())
        .expect("POST /execute");
    let status = r.status().as_u16();
    if status != 200 {
        let text = r.into_body().read_to_string().unwrap_or_default();
        let Answer::Error(s, v) = judge("/execute", status, None, &text) else {
            unreachable!("a non-200 answer judged complete")
        };
        return Err((s, v));
    }
    Ok(SseReader::new(Box::new(r.into_body().into_reader()), agent))
}

/// Reads a stream to its end and checks it has one terminal event.
fn read_stream(mut reader: SseReader) -> Vec<Sse> {
    let mut events = Vec::new();
    while let Some(e) = reader.next_event() {
        events.push(e);
    }
    check_stream("/execute", &events);
    events
}

/// An `/execute` stream's events (the first `read_events` only, if given: the client then
/// goes away), or the error that refused it.
fn execute(base: &str, body: &Value, read_events: Option<usize>) -> Result<Vec<Sse>, (u16, Value)> {
    let mut reader = open_execute(base, body)?;
    let Some(n) = read_events else {
        return Ok(read_stream(reader));
    };
    // The client goes away mid-stream (or at its end, if it is shorter).
    Ok(std::iter::from_fn(|| reader.next_event()).take(n).collect())
}

/// Runs `n` copies of `job` on their own threads and collects the results.
fn storm<T: Send + 'static>(n: usize, job: impl Fn(usize) -> T + Send + Sync + 'static) -> Vec<T> {
    let job = Arc::new(job);
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let job = job.clone();
            std::thread::spawn(move || job(i))
        })
        .collect();
    handles
        .into_iter()
        .map(|h| h.join().expect("storm thread"))
        .collect()
}

fn disconnect_storm(w: &Worker) -> usize {
    let base = w.base.clone();
    let results = storm(16, move |i| {
        let body = json!({"job_id": format!("d{i}"), "prompt": long_prompt(), "max_tokens": 8});
        execute(&base, &body, Some(1 + i % 3))
    });
    // And clients that send a request and close at once, without reading.
    for i in 0..8 {
        let body = json!({"job_id": format!("dd{i}"), "prompt": "Hi", "max_tokens": 8}).to_string();
        let head = format!(
            "POST /execute HTTP/1.1\r\nHost: w\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        drop(w.raw(head.as_bytes()));
    }
    results.len() + 8
}

/// Streams cancelled right after they start, and cancels of jobs that do not exist.
fn cancel_storm(w: &Worker) -> (usize, usize) {
    let base = w.base.clone();
    let results = storm(16, move |i| {
        let cancel = |id: &str| {
            let r = agent()
                .post(&format!("{base}/cancel"))
                .header("Content-Type", "application/json")
                .send(json!({ "job_id": id }).to_string().as_bytes())
                .expect("POST /cancel");
            assert_eq!(r.status().as_u16(), 202);
        };
        cancel(&format!("nobody-{i}"));
        let id = format!("c{i}");
        let body = json!({"job_id": id, "prompt": long_prompt(), "max_tokens": 8});
        let mut reader = match open_execute(&base, &body) {
            Ok(r) => r,
            Err((status, v)) => return Answer::Error(status, v),
        };
        let started = reader.next_event().expect("started");
        assert_eq!(started.name, "started");
        cancel(&id);
        let events = read_stream(reader);
        let last = events.last().expect("terminal").json();
        if last["code"] == "CANCELLED" {
            Answer::Error(499, last)
        } else {
            Answer::Complete
        }
    });
    let cancelled = results
        .iter()
        .filter(|r| matches!(r, Answer::Error(499, _)))
        .count();
    assert!(cancelled > 0, "{results:?}");
    (results.len(), cancelled)
}

fn overload(w: &Worker) -> (usize, usize) {
    let base = w.base.clone();
    let results = storm(16, move |i| {
        let body = json!({"job_id": format!("o{i}"), "prompt": long_prompt(), "max_tokens": 8});
        execute(&base, &body, None)
    });
    let full = results
        .iter()
        .filter(|r| matches!(r, Err((503, v)) if v["code"] == "QUEUE_FULL"))
        .count();
    let done = results.iter().filter(|r| r.is_ok()).count();
    assert!(
        full > 0 && done > 0,
        "{full} refused, {done} served: {results:?}"
    );
    (done, full)
}

/// Streams in flight, stalled connections open, then SIGTERM: every stream ends with one
/// terminal event, the process exits 0 and closed every connection before the grace period.
fn sigterm_under_load(mut w: Worker) -> usize {
    let streams: Vec<_> = (0..4)
        .map(|i| {
            let base = w.base.clone();
            let started = Arc::new(Mutex::new(false));
            let flag = started.clone();
            let handle = std::thread::spawn(move || {
                let body =
                    json!({"job_id": format!("t{i}"), "prompt": long_prompt(), "max_tokens": 8});
                let opened = open_execute(&base, &body);
                *flag.lock().unwrap() = true;
                opened.map(read_stream)
            });
            (started, handle)
        })
        .collect();
    let _stalled: Vec<_> = (0..4)
        .flat_map(|_| {
            [
                w.raw(b""),
                w.raw(b"POST /execute HTTP/1.1\r\nContent-Length: 99\r\n\r\n{"),
            ]
        })
        .collect();
    let t0 = Instant::now();
    while !streams.iter().all(|(s, _)| *s.lock().unwrap()) {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "streams did not start"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    w.sigterm();
    for (_, h) in streams {
        let events = h
            .join()
            .expect("stream thread")
            .expect("the stream was accepted");
        assert!(!events.is_empty());
    }
    let status = loop {
        if let Some(status) = w.child.try_wait().expect("wait") {
            break status;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "still running after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    std::thread::sleep(Duration::from_millis(100));
    let logs = w.logs();
    assert!(status.success(), "{status}: {logs}");
    assert!(!logs.contains("panicked"), "{logs}");
    assert!(
        !logs.contains("grace period"),
        "connections outlived the drain: {logs}"
    );
    4
}

/// Truncations and bit flips anywhere in a tiny model (header and weights): `serve` refuses
/// with one line or serves, and a served model answers a request with one terminal event.
fn corrupted_files() -> (usize, usize) {
    let dir = tiny_model::TempDir::new("robustness");
    let good = dir.path("good.gguf");
    tiny_model::tiny_llama().write(&good);
    let bytes = std::fs::read(&good).expect("read");
    let mut seed = 0xc0ff_ee00_1234_5678u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let (mut refused, mut served) = (0, 0);
    for i in 0..6 {
        let mut b = bytes.clone();
        if i % 3 == 0 {
            b.truncate((next() % b.len() as u64) as usize);
        } else {
            for _ in 0..8 {
                let at = (next() % b.len() as u64) as usize;
                b[at] ^= 1 << (next() % 8);
            }
        }
        let path = dir.path(&format!("bad-{i}.gguf"));
        std::fs::write(&path, &b).expect("write");
        match tiny_model::serve_model(&path) {
            tiny_model::Served::Listening { mut child, base } => {
                served += 1;
                let body = json!({"job_id": "x", "prompt": "Hello", "max_tokens": 4});
                let _ = execute(&base, &body, None);
                let _ = child.kill();
                let _ = child.wait();
            }
            tiny_model::Served::Exited { code, stderr } => {
                refused += 1;
                assert_eq!(code, Some(1), "{stderr}");
                assert!(!stderr.contains("panicked"), "{stderr}");
                assert!(
                    stderr
                        .lines()
                        .any(|l| l.starts_with("worker-cpud: cannot load model")),
                    "{stderr}"
                );
            }
        }
    }
    (refused, served)
}

#[test]
fn fault_campaign() {
    let t0 = Instant::now();
    let w = Worker::start(&[
        "--slots",
        "2",
        "--max-queue",
        "4",
        "--max-tokens-out",
        "8",
        "--ctx-size",
        "256",
        "--header-read-timeout-sec",
        "1",
        "--idle-timeout-sec",
        "1",
        "--body-read-timeout-sec",
        "1",
    ]);
    let health = HealthWatch::start(w.url("/health"));
    let bodies = bad_bodies(&w);
    let t_bodies = t0.elapsed();
    // After each phase every slot is free again (wait_idle fails after 10 s otherwise).
    w.wait_idle();
    let stalled = stalled_connections(&w);
    let disconnects = disconnect_storm(&w);
    w.wait_idle();
    let (cancels, cancelled) = cancel_storm(&w);
    w.wait_idle();
    let (served, queue_full) = overload(&w);
    let h = w.wait_idle();
    assert_eq!(
        (h["slots_busy"].as_u64(), h["queue_depth"].as_u64()),
        (Some(0), Some(0))
    );
    // Where /health reports a paged KV pool, no block is held by a request any more (blocks
    // kept for the prefix cache are not held).
    if let Some(used) = h["kv_cache"]["blocks_used"].as_u64() {
        assert_eq!(used, 0, "{h}");
    }
    let (polls, worst) = health.finish();
    let logs = w.logs();
    assert!(!logs.contains("panicked"), "{logs}");
    // Prompt text never reaches an info log line.
    assert!(!logs.contains("quick brown fox"), "{logs}");
    let terminated = sigterm_under_load(w);
    let (refused, loaded) = corrupted_files();
    eprintln!(
        "fault campaign in {:.1} s: {} bad bodies ({} errors, {} complete, {:.1} s), {stalled} \
         stalled connections closed, {disconnects} disconnects, {cancels} cancel races \
         ({cancelled} cancelled), overload {served} served / {queue_full} QUEUE_FULL, \
         /health {polls} polls (worst {worst:?}), {terminated} streams ended by SIGTERM, \
         corrupted files {refused} refused / {loaded} served",
        t0.elapsed().as_secs_f64(),
        bodies.errors + bodies.complete,
        bodies.errors,
        bodies.complete,
        t_bodies.as_secs_f64(),
    );
}

#[test]
fn every_fuzz_route_is_a_real_route() {
    // The campaign posts the fuzz generator's bodies to these paths; a renamed route would
    // turn the bad-body phase into 404s.
    let w = Worker::start(&["--slots", "1"]);
    for route in FuzzRoute::ALL {
        let r = w.post_raw(route.path(), b"{}", &[]);
        assert_eq!(r.status, 400, "{}: {}", route.path(), r.text);
    }
}
