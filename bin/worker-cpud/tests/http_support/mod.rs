//! Shared by the `http_*` end-to-end tests: start the real `worker-cpud serve` on 127.0.0.1
//! with an ephemeral port, talk to it with a real HTTP client, parse Server-Sent Events.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

/// A running worker; killed on drop.
pub struct Worker {
    pub child: Child,
    pub base: String,
    pub stderr: Arc<Mutex<String>>,
    agent: ureq::Agent,
}

/// The binary under test.
pub fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_worker-cpud"))
}

pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(120)))
        .build()
        .into()
}

impl Worker {
    /// `serve` on SmolLM2 with `extra` flags, and small test sizes for the flags `extra` does
    /// not name.
    pub fn start(extra: &[&str]) -> Worker {
        Self::start_cmd(extra, |_| {})
    }

    pub fn start_cmd(extra: &[&str], edit: impl FnOnce(&mut Command)) -> Worker {
        let model = worker_testdata::model(worker_testdata::SMOLLM2);
        Self::start_model(&model, extra, edit)
    }

    /// `serve` on the model file `model`, as [`Worker::start_cmd`].
    pub fn start_model(
        model: &std::path::Path,
        extra: &[&str],
        edit: impl FnOnce(&mut Command),
    ) -> Worker {
        let mut cmd = bin();
        cmd.arg("serve")
            .arg("--model")
            .arg(model)
            .args(extra)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (flag, value) in [("--port", "0"), ("--threads", "1"), ("--ctx-size", "512")] {
            if !extra.contains(&flag) {
                cmd.args([flag, value]);
            }
        }
        edit(&mut cmd);
        let mut child = cmd.spawn().expect("spawn worker-cpud serve");
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut err_pipe = child.stderr.take().expect("stderr");
        let sink = stderr.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err_pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(uri) = line.strip_prefix("listening on ") {
                    let _ = tx.send(uri.to_string());
                }
            }
        });
        let base = match rx.recv_timeout(Duration::from_secs(120)) {
            Ok(base) => base,
            Err(_) => {
                let _ = child.kill();
                panic!("worker did not start: {}", stderr.lock().unwrap().as_str());
            }
        };
        Worker {
            child,
            base,
            stderr,
            agent: agent(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn get(&self, path: &str) -> (u16, String) {
        let mut r = self.agent.get(&self.url(path)).call().expect("GET");
        let status = r.status().as_u16();
        (status, r.body_mut().read_to_string().expect("body"))
    }

    pub fn get_json(&self, path: &str) -> (u16, Value) {
        let (status, body) = self.get(path);
        (status, serde_json::from_str(&body).expect("JSON body"))
    }

    /// POSTs raw bytes; returns status, headers of interest and the body.
    pub fn post_raw(&self, path: &str, body: &[u8], headers: &[(&str, &str)]) -> Response {
        let mut req = self
            .agent
            .post(&self.url(path))
            .header("Content-Type", "application/json");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let mut r = req.send(body).expect("POST");
        let header = |name: &str| {
            r.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let retry_after = header("retry-after");
        let correlation_id = header("x-correlation-id");
        let content_type = header("content-type");
        let status = r.status().as_u16();
        let text = r.body_mut().read_to_string().expect("body");
        Response {
            status,
            json: serde_json::from_str(&text).unwrap_or(Value::Null),
            text,
            retry_after,
            correlation_id,
            content_type,
        }
    }

    /// POSTs a body the server may refuse before reading it all, over a raw socket: the
    /// body is written from another thread (write errors ignored) while this one reads the
    /// answer. Returns the status and the JSON body.
    pub fn post_oversized(&self, path: &str, body: Vec<u8>) -> (u16, Value) {
        use std::io::Write;
        let addr = self.base.trim_start_matches("http://").to_string();
        let stream = std::net::TcpStream::connect(&addr).expect("connect");
        let mut writer = stream.try_clone().expect("clone socket");
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        std::thread::spawn(move || {
            let _ = writer.write_all(head.as_bytes());
            let _ = writer.write_all(&body);
        });
        let mut reader = BufReader::new(stream);
        let mut status_line = String::new();
        reader.read_line(&mut status_line).expect("status line");
        let status: u16 = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).expect("header");
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    length = v.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut buf = vec![0u8; length];
        reader.read_exact(&mut buf).expect("body");
        (status, serde_json::from_slice(&buf).unwrap_or(Value::Null))
    }

    pub fn post(&self, path: &str, body: &Value) -> Response {
        self.post_raw(path, body.to_string().as_bytes(), &[])
    }

    /// Runs an `/execute` request to the end and returns its events.
    pub fn execute(&self, body: &Value) -> Vec<Sse> {
        let r = self.post(path_execute(), body);
        assert_eq!(r.status, 200, "{}", r.text);
        assert!(
            r.content_type
                .as_deref()
                .is_some_and(|c| c.starts_with("text/event-stream")),
            "{:?}",
            r.content_type
        );
        parse_sse(&r.text)
    }

    /// Opens an `/execute` stream and returns a reader of its events as they come.
    pub fn execute_stream(&self, body: &Value) -> SseReader {
        let agent = agent();
        let r = agent
            .post(&self.url("/execute"))
            .header("Content-Type", "application/json")
            .send(body.to_string().as_bytes())
            .expect("POST /execute");
        assert_eq!(r.status().as_u16(), 200);
        SseReader {
            reader: BufReader::new(Box::new(r.into_body().into_reader())),
            _agent: agent,
        }
    }

    pub fn health(&self) -> Value {
        let (status, v) = self.get_json("/health");
        assert_eq!(status, 200, "{v}");
        v
    }

    /// Waits until /health reports no busy slot and an empty queue.
    pub fn wait_idle(&self) -> Value {
        let start = Instant::now();
        loop {
            let h = self.health();
            if h["slots_busy"] == 0 && h["queue_depth"] == 0 {
                return h;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "slots still busy: {h}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn metrics(&self) -> String {
        let (status, text) = self.get("/metrics");
        assert_eq!(status, 200);
        text
    }

    /// The value of an unlabelled metric.
    pub fn metric(&self, name: &str) -> f64 {
        let text = self.metrics();
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no metric {name} in {text}"))
    }

    pub fn logs(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }
}

fn path_execute() -> &'static str {
    "/execute"
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct Response {
    pub status: u16,
    pub json: Value,
    pub text: String,
    pub retry_after: Option<String>,
    pub correlation_id: Option<String>,
    pub content_type: Option<String>,
}

/// One Server-Sent Event.
#[derive(Clone, Debug)]
pub struct Sse {
    /// The `event:` name (`message` when none).
    pub name: String,
    /// The `data:` lines, joined.
    pub data: String,
}

impl Sse {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data).unwrap_or_else(|e| panic!("{e}: {}", self.data))
    }
}

/// Parses a whole SSE body.
pub fn parse_sse(body: &str) -> Vec<Sse> {
    let mut reader = SseReader {
        reader: BufReader::new(Box::new(std::io::Cursor::new(body.as_bytes().to_vec()))),
        _agent: agent(),
    };
    std::iter::from_fn(|| reader.next_event()).collect()
}

pub struct SseReader {
    reader: BufReader<Box<dyn Read + Send>>,
    _agent: ureq::Agent,
}

impl SseReader {
    /// Events read from `reader`, a response body of `agent` (kept alive with it).
    pub fn new(reader: Box<dyn Read + Send>, agent: ureq::Agent) -> SseReader {
        SseReader {
            reader: BufReader::new(reader),
            _agent: agent,
        }
    }

    /// The next event, or `None` at the end of the stream.
    pub fn next_event(&mut self) -> Option<Sse> {
        let mut name = String::new();
        let mut data: Vec<String> = Vec::new();
        loop {
            let mut line = String::new();
            match self.reader.read_line(&mut line) {
                Ok(0) | Err(_) => {
                    return (!data.is_empty()).then(|| Sse {
                        name: if name.is_empty() {
                            "message".into()
                        } else {
                            name
                        },
                        data: data.join("\n"),
                    })
                }
                Ok(_) => {}
            }
            let line = line.trim_end_matches(['\r', '\n']);
            if line.is_empty() {
                if data.is_empty() && name.is_empty() {
                    continue;
                }
                return Some(Sse {
                    name: if name.is_empty() {
                        "message".into()
                    } else {
                        name
                    },
                    data: data.join("\n"),
                });
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "event" => name = value.to_string(),
                "data" => data.push(value.to_string()),
                _ => {}
            }
        }
    }
}

/// Checks the llama-orch event grammar: `started`, then `token`/`metrics`, then exactly one
/// terminal event, last. Returns the concatenated token text and the terminal event.
pub fn check_order(events: &[Sse]) -> (String, Sse) {
    assert!(!events.is_empty());
    assert_eq!(events[0].name, "started", "{events:?}");
    let last = events.last().unwrap().clone();
    assert!(
        last.name == "end" || last.name == "error",
        "terminal event last: {events:?}"
    );
    let mut text = String::new();
    for e in &events[1..events.len() - 1] {
        match e.name.as_str() {
            "token" => text.push_str(e.json()["t"].as_str().unwrap()),
            "metrics" => {}
            other => panic!("unexpected {other} mid-stream: {events:?}"),
        }
    }
    (text, last)
}

/// `worker-cpud generate --json` at temperature 0: the reference text.
pub fn generate_text(prompt: &str, max_tokens: usize) -> Value {
    let model = worker_testdata::model(worker_testdata::SMOLLM2);
    let out = bin()
        .args(["generate", "--json", "--temperature", "0", "--threads", "1"])
        .args(["--max-tokens", &max_tokens.to_string(), "--prompt", prompt])
        .arg("--model")
        .arg(&model)
        .output()
        .expect("run generate");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON line")
}

/// Raw connections to the worker, for clients that misbehave on purpose.
impl Worker {
    /// The `host:port` the worker listens on.
    pub fn addr(&self) -> String {
        self.base.trim_start_matches("http://").to_string()
    }

    /// A new TCP connection that has sent `bytes` (possibly nothing, or half a request).
    pub fn raw(&self, bytes: &[u8]) -> std::net::TcpStream {
        use std::io::Write;
        let mut s = std::net::TcpStream::connect(self.addr()).expect("connect");
        s.write_all(bytes).expect("write");
        s
    }

    /// Sends SIGTERM.
    pub fn sigterm(&self) {
        let killed = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(killed.success());
    }
}

/// Reads what the server sends until it closes the connection or `timeout` passes; returns
/// the bytes and whether it was closed.
pub fn read_until_closed(s: &mut std::net::TcpStream, timeout: Duration) -> (Vec<u8>, bool) {
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return (out, false);
        }
        let _ = s.set_read_timeout(Some(left.min(Duration::from_millis(200))));
        match s.read(&mut buf) {
            Ok(0) => return (out, true),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return (out, true),
        }
    }
}

/// The status and JSON body of a raw HTTP/1.1 response (`Content-Length` framed).
pub fn parse_response(bytes: &[u8]) -> Option<(u16, Value)> {
    let text = std::str::from_utf8(bytes).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, serde_json::from_str(body).unwrap_or(Value::Null)))
}
