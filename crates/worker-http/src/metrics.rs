//! Prometheus counters and histograms, rendered by hand in the text exposition format.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use worker_common::ErrorCode;
use worker_engine::KvStats;

/// The generating routes, as metric labels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Route {
    Execute,
    ChatCompletions,
    Completions,
}

impl Route {
    pub fn as_str(self) -> &'static str {
        match self {
            Route::Execute => "execute",
            Route::ChatCompletions => "chat_completions",
            Route::Completions => "completions",
        }
    }
}

/// How a request ended, as a metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Outcome {
    Ok,
    Invalid,
    Rejected,
    Cancelled,
    Timeout,
    Disconnected,
    Error,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Invalid => "invalid",
            Outcome::Rejected => "rejected",
            Outcome::Cancelled => "cancelled",
            Outcome::Timeout => "timeout",
            Outcome::Disconnected => "disconnected",
            Outcome::Error => "error",
        }
    }

    pub fn from_code(code: ErrorCode) -> Self {
        match code {
            ErrorCode::Cancelled => Outcome::Cancelled,
            ErrorCode::Timeout => Outcome::Timeout,
            ErrorCode::InvalidRequest
            | ErrorCode::ContextFull
            | ErrorCode::PayloadTooLarge
            | ErrorCode::RequestTimeout => Outcome::Invalid,
            ErrorCode::QueueFull
            | ErrorCode::ShuttingDown
            | ErrorCode::Loading
            | ErrorCode::Unauthorized => Outcome::Rejected,
            ErrorCode::VramOom | ErrorCode::Internal => Outcome::Error,
        }
    }
}

/// Upper bounds (seconds) of the latency histogram buckets.
const TTFT_BOUNDS: [f64; 12] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
const ITL_BOUNDS: [f64; 11] = [
    0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.2, 0.5, 1.0, 2.5,
];

#[derive(Debug)]
struct Histogram {
    bounds: &'static [f64],
    counts: Vec<AtomicU64>,
    sum_micros: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        if let Some(i) = self.bounds.iter().position(|&b| s <= b) {
            self.counts[i].fetch_add(1, Ordering::Relaxed);
        }
        self.sum_micros
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            cumulative += c.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {cumulative}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {count}");
    }
}

/// The server's metrics.
#[derive(Debug)]
pub(crate) struct Metrics {
    requests: Mutex<std::collections::BTreeMap<(Route, Outcome), u64>>,
    prompt_tokens: AtomicU64,
    generated_tokens: AtomicU64,
    ttft: Histogram,
    itl: Histogram,
    connections_open: AtomicU64,
    connections_refused: AtomicU64,
    connections_timed_out: AtomicU64,
    ignored_fields: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests: Mutex::default(),
            prompt_tokens: AtomicU64::new(0),
            generated_tokens: AtomicU64::new(0),
            ttft: Histogram::new(&TTFT_BOUNDS),
            itl: Histogram::new(&ITL_BOUNDS),
            connections_open: AtomicU64::new(0),
            connections_refused: AtomicU64::new(0),
            connections_timed_out: AtomicU64::new(0),
            ignored_fields: AtomicU64::new(0),
        }
    }
}

/// Gauges read from the server state when rendering.
pub(crate) struct Gauges<'a> {
    /// The served model's id, the `model_name` label of the vLLM-named series.
    pub model: &'a str,
    pub queue_depth: usize,
    pub slots_busy: usize,
    pub slots_total: usize,
    pub uptime_seconds: f64,
    /// The engine's KV pool and prefix cache.
    pub kv: KvStats,
}

impl Metrics {
    pub fn count_request(&self, route: Route, outcome: Outcome) {
        if let Ok(mut map) = self.requests.lock() {
            *map.entry((route, outcome)).or_default() += 1;
        }
    }

    pub fn add_tokens(&self, prompt: usize, generated: usize) {
        self.prompt_tokens
            .fetch_add(prompt as u64, Ordering::Relaxed);
        self.generated_tokens
            .fetch_add(generated as u64, Ordering::Relaxed);
    }

    pub fn connection_opened(&self) {
        self.connections_open.fetch_add(1, Ordering::Relaxed);
    }

    pub fn connection_closed(&self) {
        self.connections_open.fetch_sub(1, Ordering::Relaxed);
    }

    /// A connection closed as it was accepted: the cap was reached.
    pub fn connection_refused(&self) {
        self.connections_refused.fetch_add(1, Ordering::Relaxed);
    }

    /// A connection closed for waiting too long for a request or its headers.
    pub fn connection_timed_out(&self) {
        self.connections_timed_out.fetch_add(1, Ordering::Relaxed);
    }

    /// Request body fields no schema reads, ignored.
    pub fn ignored_fields(&self, n: usize) {
        self.ignored_fields.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub fn observe_ttft(&self, d: Duration) {
        self.ttft.observe(d);
    }

    pub fn observe_itl(&self, d: Duration) {
        self.itl.observe(d);
    }

    /// The Prometheus text exposition.
    pub fn render(&self, gauges: &Gauges<'_>) -> String {
        let mut out = String::new();
        out.push_str(
            "# HELP worker_requests_total Generation requests by route and outcome.\n\
             # TYPE worker_requests_total counter\n",
        );
        if let Ok(map) = self.requests.lock() {
            for ((route, outcome), n) in map.iter() {
                let _ = writeln!(
                    out,
                    "worker_requests_total{{route=\"{}\",outcome=\"{}\"}} {n}",
                    route.as_str(),
                    outcome.as_str()
                );
            }
        }
        let kv = &gauges.kv;
        let counters = [
            (
                "worker_prompt_tokens_total",
                "Prompt tokens of finished requests.",
                self.prompt_tokens.load(Ordering::Relaxed),
            ),
            (
                "worker_generated_tokens_total",
                "Tokens generated.",
                self.generated_tokens.load(Ordering::Relaxed),
            ),
            (
                "worker_prefix_cache_queried_tokens_total",
                "Prompt tokens of started requests, looked up in the prefix cache.",
                kv.prompt_tokens,
            ),
            (
                "worker_prefix_cache_hit_tokens_total",
                "Prompt tokens whose KV entries came from the prefix cache.",
                kv.cached_prompt_tokens,
            ),
            (
                "worker_kv_cache_evictions_total",
                "Cached KV blocks reclaimed for new ones.",
                kv.evictions,
            ),
            (
                "worker_connections_refused_total",
                "Connections closed on accept because the connection cap was reached.",
                self.connections_refused.load(Ordering::Relaxed),
            ),
            (
                "worker_connections_timed_out_total",
                "Connections closed for waiting past the header read or idle timeout.",
                self.connections_timed_out.load(Ordering::Relaxed),
            ),
            (
                "worker_ignored_request_fields_total",
                "Request body fields this worker does not know, ignored.",
                self.ignored_fields.load(Ordering::Relaxed),
            ),
        ];
        for (name, help, v) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        }
        self.ttft.render(
            &mut out,
            "worker_time_to_first_token_seconds",
            "Time from accepting a request to its first token.",
        );
        self.itl.render(
            &mut out,
            "worker_inter_token_latency_seconds",
            "Time between consecutive tokens of a request.",
        );
        let series = [
            (
                "worker_queue_depth",
                "Requests waiting for a slot.",
                gauges.queue_depth as f64,
            ),
            (
                "worker_slots_busy",
                "Slots generating.",
                gauges.slots_busy as f64,
            ),
            (
                "worker_slots_total",
                "Slots (concurrent sequences).",
                gauges.slots_total as f64,
            ),
            (
                "worker_uptime_seconds",
                "Seconds since the server started.",
                gauges.uptime_seconds,
            ),
            (
                "worker_kv_cache_blocks_total",
                "Blocks in the KV pool.",
                kv.blocks_total as f64,
            ),
            (
                "worker_kv_cache_blocks_used",
                "KV blocks held by requests.",
                kv.blocks_used as f64,
            ),
            (
                "worker_kv_cache_blocks_cached",
                "KV blocks nobody holds, kept for the prefix cache.",
                kv.blocks_cached as f64,
            ),
            (
                "worker_kv_cache_usage_ratio",
                "Fraction of the KV pool held by requests (0-1).",
                kv.blocks_used as f64 / kv.blocks_total.max(1) as f64,
            ),
            (
                "worker_connections_open",
                "HTTP connections open.",
                self.connections_open.load(Ordering::Relaxed) as f64,
            ),
        ];
        for (name, help, v) in series {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        }
        render_vllm_names(&mut out, gauges);
        out
    }
}

/// The series under the names vLLM exports, which routers and the Gateway API Inference
/// Extension's model-server protocol read (`vllm:num_requests_waiting`, …), labelled with
/// the model as vLLM labels them.
fn render_vllm_names(out: &mut String, g: &Gauges<'_>) {
    let label = format!("{{model_name=\"{}\"}}", label_value(g.model));
    let kv = &g.kv;
    let series = [
        (
            "vllm:num_requests_running",
            "gauge",
            "Requests in a slot, generating (vLLM's name).",
            g.slots_busy as f64,
        ),
        (
            "vllm:num_requests_waiting",
            "gauge",
            "Requests waiting for a slot (vLLM's name).",
            g.queue_depth as f64,
        ),
        (
            "vllm:kv_cache_usage_perc",
            "gauge",
            "Fraction of the KV pool held by requests, 0-1 (vLLM's name).",
            kv.blocks_used as f64 / kv.blocks_total.max(1) as f64,
        ),
        (
            "vllm:prefix_cache_queries_total",
            "counter",
            "Prompt tokens looked up in the prefix cache (vLLM's name).",
            kv.prompt_tokens as f64,
        ),
        (
            "vllm:prefix_cache_hits_total",
            "counter",
            "Prompt tokens found in the prefix cache (vLLM's name).",
            kv.cached_prompt_tokens as f64,
        ),
    ];
    for (name, kind, help, v) in series {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name}{label} {v}"
        );
    }
}

/// `s` escaped for a Prometheus label value.
fn label_value(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative() {
        let m = Metrics::default();
        m.observe_ttft(Duration::from_millis(20));
        m.observe_ttft(Duration::from_millis(700));
        m.observe_ttft(Duration::from_secs(100));
        m.count_request(Route::Execute, Outcome::Ok);
        m.ignored_fields(3);
        let text = m.render(&Gauges {
            model: "smol\"lm",
            queue_depth: 0,
            slots_busy: 1,
            slots_total: 4,
            uptime_seconds: 1.5,
            kv: KvStats {
                blocks_total: 10,
                blocks_used: 4,
                ..KvStats::default()
            },
        });
        assert!(text.contains("worker_kv_cache_usage_ratio 0.4\n"), "{text}");
        assert!(text.contains("worker_time_to_first_token_seconds_bucket{le=\"0.025\"} 1"));
        assert!(text.contains("worker_time_to_first_token_seconds_bucket{le=\"1\"} 2"));
        assert!(text.contains("worker_time_to_first_token_seconds_bucket{le=\"+Inf\"} 3"));
        assert!(text.contains("worker_requests_total{route=\"execute\",outcome=\"ok\"} 1"));
        assert!(text.contains("worker_slots_total 4"));
        assert!(
            text.contains("worker_ignored_request_fields_total 3\n"),
            "{text}"
        );
        // The names routers read, labelled as vLLM labels them.
        let label = "{model_name=\"smol\\\"lm\"}";
        assert!(
            text.contains(&format!("vllm:num_requests_running{label} 1\n")),
            "{text}"
        );
        assert!(
            text.contains(&format!("vllm:num_requests_waiting{label} 0\n")),
            "{text}"
        );
        assert!(
            text.contains(&format!("vllm:kv_cache_usage_perc{label} 0.4\n")),
            "{text}"
        );
        assert!(
            text.contains("# TYPE vllm:prefix_cache_hits_total counter\n"),
            "{text}"
        );
    }
}
