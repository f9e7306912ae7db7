//! The `serve` flags every worker binary shares, and the start-up sequence every binary's
//! `serve` runs through [`serve_model`]: bind (answering "loading" while the model loads),
//! open the file, make the binary's backend, load the engine, then announce, call back,
//! serve until SIGTERM/SIGINT.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use worker_common::{DeviceInfo, MemoryArchitecture, ReadyCallback};
use worker_engine::{ComputeBackend, Engine, EngineConfig, KvType};
use worker_gguf::GgufFile;
use worker_tokenizer::ChatTemplate;

use crate::{
    send_ready_callback, shutdown_signal, ConnectionLimits, HttpError, KvEventPublisher,
    KvEventsConfig, LoadingPort, ModelCard, Server, ServerConfig,
};

/// Flags of `serve` (llama-orch's worker contract). Every flag is also read from the
/// environment variable named beside it.
#[derive(clap::Args, Clone, Debug)]
pub struct ServeArgs {
    /// This worker's id, echoed in the ready callback.
    #[arg(long, env = "WORKER_ID", default_value = "worker-0")]
    pub worker_id: String,
    /// The GGUF model to load.
    #[arg(long, env = "WORKER_MODEL")]
    pub model: PathBuf,
    /// Port to listen on (0 picks a free one; the address is printed).
    #[arg(long, env = "WORKER_PORT", default_value_t = 8080)]
    pub port: u16,
    /// Address to listen on.
    #[arg(long, env = "WORKER_HOST", default_value = "127.0.0.1")]
    pub host: String,
    /// Where to POST the ready callback once serving (plain http).
    #[arg(long, env = "WORKER_CALLBACK_URL")]
    pub callback_url: Option<String>,
    /// Most tokens one request may generate.
    #[arg(long, env = "WORKER_MAX_TOKENS_OUT", default_value_t = 2048)]
    pub max_tokens_out: usize,
    /// A request generating longer than this ends with a TIMEOUT error.
    #[arg(long, env = "WORKER_INFERENCE_TIMEOUT_SEC", default_value_t = 300)]
    pub inference_timeout_sec: u64,
    /// Sequences generated concurrently (KV cache slots).
    #[arg(long, env = "WORKER_SLOTS", default_value_t = 4)]
    pub slots: usize,
    /// Requests that may wait for a slot; beyond that, 503 with Retry-After.
    #[arg(long, env = "WORKER_MAX_QUEUE", default_value_t = 64)]
    pub max_queue: usize,
    /// Bearer token required on every route but /health.
    #[arg(long, env = "WORKER_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Positions per sequence, prompt included (capped at the model's context length).
    #[arg(long, env = "WORKER_CTX_SIZE", default_value_t = 4096)]
    pub ctx_size: usize,
    /// KV cache entry type: f16, q8_0, or f32 (the exact reference).
    #[arg(long, env = "WORKER_KV_TYPE", default_value = "f16", value_parser = parse_kv_type)]
    pub kv_type: KvType,
    /// Bytes of the KV block pool (default: every slot at full context; pages are touched
    /// only as blocks are written).
    #[arg(long, env = "WORKER_KV_CACHE_BYTES")]
    pub kv_cache_bytes: Option<u64>,
    /// Share full KV blocks between requests by prefix (automatic prefix caching).
    #[arg(long, env = "WORKER_PREFIX_CACHE", default_value_t = true, action = clap::ArgAction::Set)]
    pub prefix_cache: bool,
    /// Most prompt tokens in a step that also decodes other streams (chunked prefill).
    #[arg(long, env = "WORKER_PREFILL_CHUNK", default_value_t = EngineConfig::default().prefill_chunk)]
    pub prefill_chunk: usize,
    /// Largest request body in bytes.
    #[arg(long, env = "WORKER_BODY_LIMIT", default_value_t = 1 << 20)]
    pub body_limit: usize,
    /// The model name clients see (default: the file name without `.gguf`).
    #[arg(long, env = "WORKER_MODEL_NAME")]
    pub model_name: Option<String>,
    /// Seconds a client has to send a request's headers, from the accept (or, on a kept-alive
    /// connection, from the request's first byte); then the connection is closed.
    #[arg(long, env = "WORKER_HEADER_READ_TIMEOUT_SEC",
          default_value_t = ConnectionLimits::default().header_read_timeout.as_secs())]
    pub header_read_timeout_sec: u64,
    /// Seconds a kept-alive connection may wait for its next request; then it is closed.
    #[arg(long, env = "WORKER_IDLE_TIMEOUT_SEC",
          default_value_t = ConnectionLimits::default().idle_timeout.as_secs())]
    pub idle_timeout_sec: u64,
    /// Seconds a request body may take, plus one for every --body-min-rate bytes received;
    /// a slower body gets 408.
    #[arg(long, env = "WORKER_BODY_READ_TIMEOUT_SEC",
          default_value_t = ConnectionLimits::default().body_read_timeout.as_secs())]
    pub body_read_timeout_sec: u64,
    /// The minimum upload rate of a request body, in bytes per second.
    #[arg(long, env = "WORKER_BODY_MIN_RATE",
          default_value_t = ConnectionLimits::default().body_min_rate)]
    pub body_min_rate: u64,
    /// Most HTTP connections open at once; a connection beyond it is closed on accept.
    #[arg(long, env = "WORKER_MAX_CONNECTIONS",
          default_value_t = ConnectionLimits::default().max_connections)]
    pub max_connections: usize,
    /// Seconds that open generations get to finish after SIGTERM, while /health says
    /// "draining" and new requests get 503; then the rest end with SHUTTING_DOWN. The
    /// llama-orch contract gives a worker 5 s from SIGTERM to exit, so at most 3.
    #[arg(long, env = "WORKER_DRAIN_TIMEOUT_SEC", default_value_t = 3.0,
          value_parser = parse_drain_timeout)]
    pub drain_timeout_sec: f64,
    /// Publish the prefix cache's changes as vLLM KV events on a ZeroMQ PUB socket bound
    /// here, e.g. `tcp://*:5557`, for vllm-router's `kv_aware` policy
    /// (`--kv-event-source WORKER_URL=tcp://HOST:5557`). Needs the prefix cache.
    #[arg(long, env = "WORKER_KV_EVENTS_ENDPOINT")]
    pub kv_events_endpoint: Option<String>,
    /// Also answer replay requests (the last 10000 batches of KV events) on a ZeroMQ ROUTER
    /// socket bound here, e.g. `tcp://*:5558` (the router's `--kv-event-replay-source`).
    #[arg(
        long,
        env = "WORKER_KV_EVENTS_REPLAY_ENDPOINT",
        requires = "kv_events_endpoint"
    )]
    pub kv_events_replay_endpoint: Option<String>,
    /// The chat template `/v1/chat/completions` renders with, instead of the file's
    /// `tokenizer.chat_template` (a base model has none): a Jinja file, or the template
    /// itself, as vLLM's flag of the same name.
    #[arg(long, env = "WORKER_CHAT_TEMPLATE")]
    pub chat_template: Option<String>,
}

/// `--drain-timeout-sec`: a number of seconds in [0, 3].
fn parse_drain_timeout(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..=3.0).contains(&v) => Ok(v),
        _ => Err("expected seconds between 0 and 3".into()),
    }
}

/// A timeout flag: whole seconds, at least one.
fn secs(s: u64) -> Duration {
    Duration::from_secs(s.max(1))
}

fn parse_kv_type(s: &str) -> Result<KvType, String> {
    KvType::parse(s).ok_or_else(|| {
        let names: Vec<_> = KvType::ALL.iter().map(|t| t.as_str()).collect();
        format!("expected one of {}", names.join(", "))
    })
}

impl ServeArgs {
    /// The engine these flags ask for.
    pub fn engine_config(&self) -> EngineConfig {
        EngineConfig {
            slots: self.slots,
            context: self.ctx_size,
            prefill_chunk: self.prefill_chunk,
            kv_type: self.kv_type,
            kv_cache_bytes: self.kv_cache_bytes,
            prefix_cache: self.prefix_cache,
            ..EngineConfig::default()
        }
    }

    /// The server limits these flags ask for.
    pub fn server_config(&self) -> ServerConfig {
        ServerConfig {
            api_key: self.api_key.clone().filter(|k| !k.is_empty()),
            max_tokens_out: self.max_tokens_out.max(1),
            inference_timeout: Duration::from_secs(self.inference_timeout_sec.max(1)),
            max_queue: self.max_queue,
            body_limit: self.body_limit,
            limits: ConnectionLimits {
                header_read_timeout: secs(self.header_read_timeout_sec),
                idle_timeout: secs(self.idle_timeout_sec),
                body_read_timeout: secs(self.body_read_timeout_sec),
                body_min_rate: self.body_min_rate.max(1),
                max_connections: self.max_connections.max(1),
            },
            drain_timeout: Duration::from_secs_f64(self.drain_timeout_sec),
            ..ServerConfig::default()
        }
    }

    /// Where to publish KV events, if anywhere.
    pub fn kv_events(&self) -> Option<KvEventsConfig> {
        self.kv_events_endpoint
            .as_ref()
            .map(|endpoint| KvEventsConfig {
                endpoint: endpoint.clone(),
                replay_endpoint: self.kv_events_replay_endpoint.clone(),
            })
    }

    /// The template `--chat-template` names, compiled: the file's contents if it names a
    /// file, else the value itself if it holds Jinja markup (as vLLM reads the flag); `None`
    /// without the flag. An unreadable file or a template that does not compile is an error.
    pub fn chat_template(&self) -> Result<Option<ChatTemplate>, HttpError> {
        let Some(value) = &self.chat_template else {
            return Ok(None);
        };
        let path = Path::new(value);
        let source = if path.is_file() {
            std::fs::read_to_string(path).map_err(|e| {
                HttpError::Flags(format!("--chat-template: cannot read {value}: {e}"))
            })?
        } else if ["{{", "{%"].iter().any(|m| value.contains(m)) {
            value.clone()
        } else {
            return Err(HttpError::Flags(format!(
                "--chat-template: {value} is neither a file nor a Jinja template"
            )));
        };
        ChatTemplate::new(&source)
            .map(Some)
            .map_err(|e| HttpError::Flags(format!("--chat-template: {e}")))
    }

    /// The model id clients see.
    pub fn model_id(&self) -> String {
        self.model_name.clone().unwrap_or_else(|| {
            self.model
                .file_stem()
                .map_or_else(|| "model".into(), |s| s.to_string_lossy().into_owned())
        })
    }
}

/// What the binary tells the pool manager about itself.
#[derive(Clone, Debug)]
pub struct WorkerKind {
    /// `cpu`, `cuda`, …
    pub worker_type: String,
    /// Where the model's memory lives.
    pub memory_architecture: MemoryArchitecture,
    /// The device it computes on, where the worker picks one (a GPU adapter).
    pub device: Option<DeviceInfo>,
}

/// A backend for a model: what a binary gives [`serve_model`].
pub type BackendResult = Result<Box<dyn ComputeBackend>, Box<dyn std::error::Error + Send + Sync>>;

/// A worker binary's `serve`: logging on stderr (`RUST_LOG`, `info` by default), the port
/// bound at once (answering 503 "loading", so probes can tell loading from dead), the model
/// file mapped, `backend(file, config)` called for the backend (a GPU binary checks free
/// memory against the model there), the engine and card loaded by [`load_model`], the file
/// unmapped, then [`run_blocking`] until SIGTERM/SIGINT.
pub fn serve_model(
    args: &ServeArgs,
    kind: WorkerKind,
    backend: impl FnOnce(&GgufFile, &EngineConfig) -> BackendResult,
) -> Result<(), HttpError> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    if args.slots == 0 {
        return Err(HttpError::Flags("--slots must be at least 1".into()));
    }
    let port = LoadingPort::bind(&args.host, args.port).map_err(|e| HttpError::Listen {
        addr: format!("{}:{}", args.host, args.port),
        source: Box::new(e),
    })?;
    // Checked before the model loads: a bad template should not cost a load.
    let chat_template = args.chat_template()?;
    let start = Instant::now();
    let worker_type = kind.worker_type.as_str();
    tracing::info!(model = %args.model.display(), slots = args.slots, worker_type, "loading model");
    let file = GgufFile::open(&args.model).map_err(|e| load_error(&args.model, e))?;
    tracing::info!(
        tensors = file.tensors().len(),
        ms = start.elapsed().as_millis() as u64,
        "model file mapped; uploading weights"
    );
    let config = args.engine_config();
    let be = backend(&file, &config).map_err(HttpError::Backend)?;
    let (engine, mut card) = load_model(&file, &args.model, be, config, args.model_id())?;
    if chat_template.is_some() {
        card.chat_template = chat_template;
    }
    // The backend holds its own copy of the weights and the card everything else the server
    // needs: unmap the file, so its pages do not stay resident beside that copy.
    drop(file);
    let info = engine.info();
    tracing::info!(
        ms = start.elapsed().as_millis() as u64,
        memory_bytes = card.memory_bytes,
        kv_type = info.kv_type.as_str(),
        kv_pool_bytes = info.kv_pool_bytes,
        quant = card.quant_kind,
        "model loaded"
    );
    run_blocking(args, port, Arc::new(engine), card, kind)?;
    tracing::info!("stopped");
    Ok(())
}

/// Everything [`serve_model`] builds from the file before it serves: the engine on
/// `backend` (hyper-parameters checked against the tensors, tokenizer, every weight
/// uploaded after its shape is checked) and the model card (chat template). A binary's
/// `check` runs this same function, so the two accept and refuse the same files.
pub fn load_model(
    file: &GgufFile,
    path: &Path,
    backend: Box<dyn ComputeBackend>,
    config: EngineConfig,
    model_id: String,
) -> Result<(Engine, ModelCard), HttpError> {
    let engine = Engine::load(file, backend, config).map_err(|e| load_error(path, e))?;
    let card =
        ModelCard::from_gguf(model_id, file, &engine.info()).map_err(|e| load_error(path, e))?;
    Ok((engine, card))
}

fn load_error(path: &Path, e: impl std::error::Error + Send + Sync + 'static) -> HttpError {
    HttpError::Load {
        model: path.display().to_string(),
        source: Box::new(e),
    }
}

/// [`run`] on a two-thread async runtime of its own, for a worker binary's `serve`: returns
/// when the server has stopped, after giving open connections half a second to close.
pub fn run_blocking(
    args: &ServeArgs,
    port: LoadingPort,
    engine: Arc<Engine>,
    card: ModelCard,
    kind: WorkerKind,
) -> Result<(), HttpError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let result = runtime.block_on(run(args, port, engine, card, kind));
    runtime.shutdown_timeout(std::time::Duration::from_millis(500));
    result
}

/// Takes the socket over from `port` (bound before the model loaded, answering "loading"),
/// starts publishing KV events (if asked; before any request, so that the subscribers see
/// every cached block), prints `listening on http://ADDR` on stdout, sends the ready
/// callback (if asked), then serves until SIGTERM/SIGINT. A failed callback stops the server
/// and is returned.
pub async fn run(
    args: &ServeArgs,
    port: LoadingPort,
    engine: Arc<Engine>,
    card: ModelCard,
    kind: WorkerKind,
) -> Result<(), HttpError> {
    let memory_bytes = card.memory_in_use(&engine.kv_stats());
    if let Some(kv_events) = args.kv_events() {
        KvEventPublisher::bind(&kv_events).await?.start(&engine)?;
    }
    let listener = tokio::net::TcpListener::from_std(port.into_listener()?)?;
    let addr = listener.local_addr()?;
    let uri = format!("http://{addr}");
    let config = ServerConfig {
        worker: Some(kind.clone()),
        ..args.server_config()
    };
    let server = Server::new(engine, card, config);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let shutdown = async move {
        tokio::select! {
            () = shutdown_signal() => {}
            _ = stop_rx => {}
        }
    };
    let serving = tokio::spawn(server.serve(listener, shutdown));
    tracing::info!(%uri, "listening");
    println!("listening on {uri}");
    if let Some(url) = &args.callback_url {
        let cb = ReadyCallback {
            worker_id: args.worker_id.clone(),
            model_ref: args.model.display().to_string(),
            memory_bytes,
            memory_architecture: kind.memory_architecture,
            worker_type: kind.worker_type.clone(),
            device: kind.device.clone(),
            capabilities: ["execute", "cancel", "openai", "tokenize", "metrics"]
                .map(String::from)
                .to_vec(),
            uri,
        };
        if let Err(e) = send_ready_callback(url, &cb, Duration::from_secs(10)).await {
            tracing::error!(error = %e, "ready callback failed; exiting");
            let _ = stop_tx.send(());
            let _ = serving.await;
            return Err(e);
        }
    }
    match serving.await {
        Ok(result) => result,
        Err(e) => Err(HttpError::Io(std::io::Error::other(e.to_string()))),
    }
}
