//! Server state: the engine, the job registry (job id → cancel signal), slot and queue
//! accounting, and [`Running`], the driver every route reads a generation through.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, Notify};
use worker_common::ErrorCode;
use worker_engine::{
    CancelHandle, Completion, Engine, EngineInfo, Event, EventSink, GenerationRequest, StopReason,
    TokenEvent,
};

use crate::error::ApiError;
use crate::limits::ConnectionLimits;
use crate::metrics::{Metrics, Outcome, Route};
use crate::model::ModelCard;
use crate::validate::Rules;
use crate::WorkerKind;

/// Limits and options of the server.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// When set, every route but `/health` needs `Authorization: Bearer <key>`.
    pub api_key: Option<String>,
    /// Most tokens one request may generate (and the default when it names none).
    pub max_tokens_out: usize,
    /// A generation running longer than this ends with a `TIMEOUT` error.
    pub inference_timeout: Duration,
    /// Requests that may wait for a slot; more are refused with 503 and `Retry-After`.
    pub max_queue: usize,
    /// Largest request body, in bytes.
    pub body_limit: usize,
    /// A `metrics` event goes out every this many tokens of an `/execute` stream.
    pub metrics_every: usize,
    /// What `/health` says the worker is (type, where its memory lives), when known.
    pub worker: Option<WorkerKind>,
    /// Timeouts and the connection cap.
    pub limits: ConnectionLimits,
    /// After a shutdown signal, open generations get this long to finish before they are
    /// ended with `SHUTTING_DOWN`.
    pub drain_timeout: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            api_key: None,
            max_tokens_out: 2048,
            inference_timeout: Duration::from_secs(300),
            max_queue: 64,
            body_limit: 1 << 20,
            metrics_every: 16,
            worker: None,
            limits: ConnectionLimits::default(),
            drain_timeout: Duration::from_secs(3),
        }
    }
}

/// Why a job's signal fired.
const SIGNAL_CANCEL: u8 = 1;
const SIGNAL_SHUTDOWN: u8 = 2;

/// Wakes a running stream from outside: `/cancel` or shutdown.
#[derive(Debug, Default)]
pub(crate) struct JobSignal {
    notify: Notify,
    reason: AtomicU8,
    cancel: Mutex<Option<CancelHandle>>,
}

impl JobSignal {
    fn fire(&self, reason: u8) {
        let _ = self
            .reason
            .compare_exchange(0, reason, Ordering::AcqRel, Ordering::Acquire);
        if let Ok(guard) = self.cancel.lock() {
            if let Some(c) = guard.as_ref() {
                c.cancel();
            }
        }
        self.notify.notify_one();
    }
}

/// Everything the handlers share.
pub(crate) struct AppState {
    pub engine: Arc<Engine>,
    pub info: EngineInfo,
    pub card: ModelCard,
    pub config: ServerConfig,
    pub started: Instant,
    pub metrics: Metrics,
    jobs: Mutex<HashMap<String, Arc<JobSignal>>>,
    /// Accepted requests whose engine job still exists (queued or in a slot).
    inflight: Arc<AtomicUsize>,
    draining: AtomicBool,
}

impl AppState {
    pub fn new(engine: Arc<Engine>, card: ModelCard, config: ServerConfig) -> Self {
        AppState {
            info: engine.info(),
            engine,
            card,
            config,
            started: Instant::now(),
            metrics: Metrics::default(),
            jobs: Mutex::new(HashMap::new()),
            inflight: Arc::new(AtomicUsize::new(0)),
            draining: AtomicBool::new(false),
        }
    }

    /// What the request parsers need to know of this server and its model.
    pub fn rules(&self) -> Rules<'_> {
        Rules {
            max_tokens_out: self.config.max_tokens_out,
            vocab_size: self.info.vocab_size,
            chat_template: self.card.chat_template.as_ref(),
            bos_text: &self.card.bos_text,
            adds_bos: self.engine.tokenizer().adds_bos(),
            eos_text: &self.card.eos_text,
        }
    }

    /// Slots holding a sequence. The engine fills slots first-come, first-served, so this is
    /// the number of live jobs capped at the slot count.
    pub fn slots_busy(&self) -> usize {
        self.inflight.load(Ordering::Acquire).min(self.info.slots)
    }

    /// Jobs waiting for a slot.
    pub fn queue_depth(&self) -> usize {
        self.inflight
            .load(Ordering::Acquire)
            .saturating_sub(self.info.slots)
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Stops taking work: `/health` says "draining" and new generations get 503 with
    /// `Retry-After`, while the running ones go on.
    pub fn begin_drain(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// Generations running or waiting for a slot.
    pub fn open_jobs(&self) -> usize {
        self.inflight.load(Ordering::Acquire)
    }

    /// Ends every open job with `SHUTTING_DOWN` (after [`Self::begin_drain`]).
    pub fn end_open_jobs(&self) {
        let jobs: Vec<_> = match self.jobs.lock() {
            Ok(jobs) => jobs.values().cloned().collect(),
            Err(_) => Vec::new(),
        };
        tracing::info!(
            open_jobs = jobs.len(),
            "ending open jobs with SHUTTING_DOWN"
        );
        for job in jobs {
            job.fire(SIGNAL_SHUTDOWN);
        }
    }

    /// Cancels job `job_id` if it runs; true if it did.
    pub fn cancel(&self, job_id: &str) -> bool {
        let job = self.jobs.lock().ok().and_then(|j| j.get(job_id).cloned());
        match job {
            Some(job) => {
                job.fire(SIGNAL_CANCEL);
                true
            }
            None => false,
        }
    }

    /// Validates, queues and registers a generation. Refuses with `QUEUE_FULL` when every
    /// slot and queue place is taken, and with `INVALID_REQUEST` for a job id in use.
    pub async fn start(
        self: &Arc<Self>,
        job_id: String,
        route: Route,
        correlation_id: String,
        request: GenerationRequest,
    ) -> Result<Running, ApiError> {
        if self.is_draining() {
            return Err(ApiError::new(
                ErrorCode::ShuttingDown,
                "the worker is shutting down",
            ));
        }
        let capacity = self.info.slots + self.config.max_queue;
        let reserved = self
            .inflight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < capacity).then_some(n + 1)
            });
        if reserved.is_err() {
            return Err(ApiError::new(
                ErrorCode::QueueFull,
                format!(
                    "all {} slots are busy and {} requests wait; retry later",
                    self.info.slots, self.config.max_queue
                ),
            ));
        }
        let guard = InflightGuard(self.inflight.clone());
        let signal = Arc::new(JobSignal::default());
        {
            let Ok(mut jobs) = self.jobs.lock() else {
                return Err(ApiError::new(ErrorCode::Internal, "job registry poisoned"));
            };
            if jobs.contains_key(&job_id) {
                return Err(ApiError::field(
                    "job_id",
                    "unique among running jobs",
                    "a job with this id is running",
                ));
            }
            jobs.insert(job_id.clone(), signal.clone());
        }
        let registration = Registration {
            state: self.clone(),
            job_id: job_id.clone(),
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let sink = Box::new(ChannelSink { tx, _guard: guard });
        // Tokenizing a long prompt is CPU work: keep it off the async worker threads.
        let engine = self.engine.clone();
        let submitted = tokio::task::spawn_blocking(move || engine.submit_to(request, sink))
            .await
            .map_err(|_| ApiError::new(ErrorCode::Internal, "the submitting task failed"))?;
        let cancel = submitted.map_err(|e| ApiError::from_engine(&e))?;
        if let Ok(mut slot) = signal.cancel.lock() {
            *slot = Some(cancel.clone());
        }
        tracing::info!(
            job_id = %crate::middleware::loggable(&job_id),
            correlation_id,
            route = route.as_str(),
            "job accepted"
        );
        Ok(Running {
            state: self.clone(),
            rx,
            cancel,
            signal,
            _registration: registration,
            route,
            correlation_id,
            deadline: tokio::time::Instant::now() + self.config.inference_timeout,
            accepted: Instant::now(),
            first_token: None,
            last_token: None,
            tokens: 0,
            done: false,
        })
    }
}

/// Counts a live engine job; the engine drops the sink (and this) when the job leaves its
/// slot or the queue, so the count is exact.
struct InflightGuard(Arc<AtomicUsize>);

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

struct ChannelSink {
    tx: mpsc::UnboundedSender<Event>,
    _guard: InflightGuard,
}

impl EventSink for ChannelSink {
    fn send(&mut self, event: Event) -> bool {
        self.tx.send(event).is_ok()
    }
}

/// Removes a job from the registry when its stream ends or is dropped.
struct Registration {
    state: Arc<AppState>,
    job_id: String,
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Ok(mut jobs) = self.state.jobs.lock() {
            jobs.remove(&self.job_id);
        }
    }
}

/// One step of a running generation, as routes see it.
pub(crate) enum Step {
    Token(TokenEvent),
    End(Completion),
    Failed(ApiError),
}

/// A generation being read by a route. Dropping it before the end (the client went away)
/// cancels the job.
pub(crate) struct Running {
    pub state: Arc<AppState>,
    rx: mpsc::UnboundedReceiver<Event>,
    cancel: CancelHandle,
    signal: Arc<JobSignal>,
    _registration: Registration,
    route: Route,
    pub correlation_id: String,
    deadline: tokio::time::Instant,
    accepted: Instant,
    first_token: Option<Instant>,
    last_token: Option<Instant>,
    /// Token events seen.
    pub tokens: usize,
    done: bool,
}

impl Running {
    /// Time from the first token to the last one seen so far.
    pub fn decode_time(&self) -> Duration {
        match (self.first_token, self.last_token) {
            (Some(a), Some(b)) => b - a,
            _ => Duration::ZERO,
        }
    }

    /// The next step; `None` after the terminal one.
    pub async fn next(&mut self) -> Option<Step> {
        if self.done {
            return None;
        }
        let step = tokio::select! {
            biased;
            _ = self.signal.notify.notified() => {
                let (code, message) = match self.signal.reason.load(Ordering::Acquire) {
                    SIGNAL_SHUTDOWN => (ErrorCode::ShuttingDown, "the worker is shutting down"),
                    _ => (ErrorCode::Cancelled, "the job was cancelled"),
                };
                Step::Failed(ApiError::new(code, message))
            }
            _ = tokio::time::sleep_until(self.deadline) => Step::Failed(ApiError::new(
                ErrorCode::Timeout,
                format!(
                    "the job ran longer than the inference timeout of {} s",
                    self.state.config.inference_timeout.as_secs_f64()
                ),
            )),
            event = self.rx.recv() => match event {
                Some(Event::Token(t)) => Step::Token(t),
                Some(Event::End(c)) if c.stop_reason == StopReason::Cancelled => {
                    Step::Failed(ApiError::new(ErrorCode::Cancelled, "the job was cancelled"))
                }
                Some(Event::End(c)) => Step::End(c),
                Some(Event::Error(e)) => Step::Failed(ApiError::from_engine(&e)),
                None => Step::Failed(ApiError::new(
                    ErrorCode::Internal,
                    "the engine ended the job without a result",
                )),
            },
        };
        let now = Instant::now();
        let state = self.state.clone();
        let metrics = &state.metrics;
        match &step {
            Step::Token(_) => {
                self.tokens += 1;
                match self.last_token {
                    None => metrics.observe_ttft(now - self.accepted),
                    Some(last) => metrics.observe_itl(now - last),
                }
                self.first_token.get_or_insert(now);
                self.last_token = Some(now);
            }
            Step::End(c) => {
                self.finish(Outcome::Ok);
                metrics.add_tokens(c.prompt_ids.len(), c.ids.len());
            }
            Step::Failed(e) => {
                self.finish(Outcome::from_code(e.code));
                metrics.add_tokens(0, self.tokens);
            }
        }
        Some(step)
    }

    fn finish(&mut self, outcome: Outcome) {
        self.done = true;
        // Frees the slot if the engine has not ended the job itself.
        self.cancel.cancel();
        self.state.metrics.count_request(self.route, outcome);
        tracing::info!(
            correlation_id = self.correlation_id,
            outcome = outcome.as_str(),
            tokens = self.tokens,
            "job finished"
        );
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if !self.done {
            self.cancel.cancel();
            self.state
                .metrics
                .count_request(self.route, Outcome::Disconnected);
            self.state.metrics.add_tokens(0, self.tokens);
            tracing::info!(
                correlation_id = self.correlation_id,
                tokens = self.tokens,
                "client went away; job cancelled"
            );
        }
    }
}
