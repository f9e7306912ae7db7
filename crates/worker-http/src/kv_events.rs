//! Publishes the engine's prefix-cache changes as vLLM's KV events over ZeroMQ, so that a
//! router can send each request to the worker that already holds its prefix (vllm-router's
//! `kv_aware` policy, `--kv-event-source WORKER_URL=tcp://HOST:PORT`).
//!
//! The wire format is what vllm-router 0.1.17 decodes (vLLM's `KVEventBatch`, msgspec):
//!
//! - a PUB socket sends each engine turn's events as one multipart message
//!   `[topic, seq, payload]`: the topic is empty, `seq` counts batches from 0 as an 8-byte
//!   big-endian integer (a subscriber that sees it go back knows the worker restarted, one
//!   that sees it skip knows it missed some), and `payload` is the MessagePack array
//!   `[ts, events, data_parallel_rank]` (seconds since the epoch, the events, 0);
//! - each event is a map tagged by `type`: `BlockStored` (`block_hashes`,
//!   `parent_block_hash`, `token_ids`, `block_size`, `lora_id`, `medium`, `lora_name`),
//!   `BlockRemoved` (`block_hashes`, `medium`) or `AllBlocksCleared`;
//! - the block hashes are the engine's 64-bit chain keys, as unsigned integers (vLLM's
//!   `VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES` form). The router hashes the token ids itself to
//!   match a request's prompt, and uses these keys only to chain a block to its parent and
//!   to find what a removal names, so they need not be vLLM's hashes;
//! - `medium` is `"GPU"`: in vLLM it names the tier attention reads without a transfer (as
//!   opposed to `"CPU"`, blocks offloaded to host memory, which the router credits less).
//!   The worker's KV pool is that tier on every backend, host RAM included;
//! - with a replay endpoint, a ROUTER socket answers a request whose last frame is a start
//!   sequence number (8 bytes, big-endian) with every kept batch from there on, each as
//!   `[envelope.., topic, seq, payload]`, then `[envelope.., topic, -1, ""]`; the last
//!   [`REPLAY_BATCHES`] batches are kept. A router uses it to fill a gap, or to learn what
//!   was cached before it started.
//!
//! The worker binds both sockets (`tcp://*:PORT` listens on every interface, as in vLLM);
//! the router connects. A slow subscriber loses messages rather than slowing the worker
//! (ZeroMQ PUB semantics); the router notices the gap in `seq`.

use std::collections::VecDeque;
use std::sync::mpsc::TrySendError;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use serde::Serialize;
use tokio::sync::mpsc;
use worker_engine::{Engine, KvEvent, KvEventSink, KV_BLOCK};
use zeromq::{PubSocket, RouterSocket, Socket, SocketRecv, SocketSend, ZmqMessage};

use crate::HttpError;

/// Batches kept for replay (vLLM keeps as many).
const REPLAY_BATCHES: usize = 10_000;

/// Engine turns that may wait for the socket before the engine drops one.
const QUEUED_TURNS: usize = 1024;

/// The storage tier the events name (see the module documentation).
const MEDIUM: &str = "GPU";

/// The sequence number that ends a replay.
const END_SEQ: i64 = -1;

/// Where to publish.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvEventsConfig {
    /// The PUB socket's address, `tcp://HOST:PORT` (`*` for every interface, port 0 for a
    /// free one).
    pub endpoint: String,
    /// The replay ROUTER socket's address, if any.
    pub replay_endpoint: Option<String>,
}

/// The bound sockets of a publisher that has not started yet.
pub struct KvEventPublisher {
    publish: PubSocket,
    replay: Option<RouterSocket>,
    endpoint: String,
    replay_endpoint: Option<String>,
}

impl KvEventPublisher {
    /// Binds the sockets `config` names; a bad address or a port in use is an error here,
    /// before anything is served.
    pub async fn bind(config: &KvEventsConfig) -> Result<Self, HttpError> {
        let mut publish = PubSocket::new();
        let endpoint = bind(&mut publish, &config.endpoint).await?;
        let (replay, replay_endpoint) = match &config.replay_endpoint {
            Some(address) => {
                let mut socket = RouterSocket::new();
                let bound = bind(&mut socket, address).await?;
                (Some(socket), Some(bound))
            }
            None => (None, None),
        };
        Ok(KvEventPublisher {
            publish,
            replay,
            endpoint,
            replay_endpoint,
        })
    }

    /// The address the PUB socket listens on (with the port it got).
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The address the replay socket listens on, if there is one.
    pub fn replay_endpoint(&self) -> Option<&str> {
        self.replay_endpoint.as_deref()
    }

    /// Subscribes to `engine`'s prefix-cache changes and publishes them from tasks on the
    /// current runtime until the engine stops; fails when the engine has no prefix cache.
    pub fn start(self, engine: &Engine) -> Result<(), HttpError> {
        let (tx, rx) = mpsc::channel(QUEUED_TURNS);
        engine
            .report_kv_events(Box::new(TurnSink(tx)))
            .map_err(|e| HttpError::KvEvents(e.to_string()))?;
        tracing::info!(
            endpoint = %self.endpoint,
            replay = self.replay_endpoint.as_deref().unwrap_or("none"),
            "publishing KV events"
        );
        let kept = Arc::new(Mutex::new(VecDeque::new()));
        if let Some(replay) = self.replay {
            tokio::spawn(serve_replay(replay, kept.clone()));
        }
        tokio::spawn(publish(self.publish, rx, kept));
        Ok(())
    }
}

/// Binds `socket` to `address` (`*` as the host means every interface); returns the bound
/// address.
async fn bind(socket: &mut impl Socket, address: &str) -> Result<String, HttpError> {
    let wanted = address.replacen("tcp://*:", "tcp://0.0.0.0:", 1);
    socket
        .bind(&wanted)
        .await
        .map(|bound| bound.to_string())
        .map_err(|e| HttpError::KvEvents(format!("cannot bind {address}: {e}")))
}

/// The engine's sink: one engine turn per message, never blocking the engine thread.
struct TurnSink(mpsc::Sender<Vec<KvEvent>>);

impl KvEventSink for TurnSink {
    fn send(&mut self, events: Vec<KvEvent>) -> Result<(), TrySendError<Vec<KvEvent>>> {
        self.0.try_send(events).map_err(|e| match e {
            mpsc::error::TrySendError::Full(v) => TrySendError::Full(v),
            mpsc::error::TrySendError::Closed(v) => TrySendError::Disconnected(v),
        })
    }
}

/// Batches already sent, by sequence number, for replay.
type Kept = Arc<Mutex<VecDeque<(u64, Bytes)>>>;

/// Sends every turn's events until the engine is gone.
async fn publish(mut socket: PubSocket, mut turns: mpsc::Receiver<Vec<KvEvent>>, kept: Kept) {
    let mut seq: u64 = 0;
    while let Some(events) = turns.recv().await {
        let payload = match encode_batch(&events, unix_seconds()) {
            Ok(p) => Bytes::from(p),
            Err(e) => {
                tracing::error!(error = %e, "cannot encode KV events; publishing stops");
                return;
            }
        };
        let message = frames(Bytes::new(), [seq_bytes(seq as i64), payload.clone()]);
        if let Err(e) = socket.send(message).await {
            tracing::warn!(error = %e, seq, "KV event batch not sent");
        }
        if let Ok(mut kept) = kept.lock() {
            if kept.len() == REPLAY_BATCHES {
                kept.pop_front();
            }
            kept.push_back((seq, payload));
        }
        seq += 1;
    }
}

/// Answers replay requests until the socket fails.
async fn serve_replay(mut socket: RouterSocket, kept: Kept) {
    loop {
        let request = match socket.recv().await {
            Ok(r) => r.into_vec(),
            Err(e) => {
                tracing::warn!(error = %e, "KV event replay socket closed");
                return;
            }
        };
        // [identity, (empty delimiter), start]: the reply goes back in the same envelope.
        let Some((start, envelope)) = request.split_last() else {
            continue;
        };
        let Some((identity, delimiters)) = envelope.split_first() else {
            continue;
        };
        let Ok(start) = <[u8; 8]>::try_from(start.as_ref()) else {
            tracing::debug!("KV event replay request without an 8-byte start; ignored");
            continue;
        };
        let start = u64::from_be_bytes(start);
        let batches: Vec<(u64, Bytes)> = match kept.lock() {
            Ok(kept) => kept.iter().filter(|(s, _)| *s >= start).cloned().collect(),
            Err(_) => Vec::new(),
        };
        tracing::debug!(start, batches = batches.len(), "KV event replay");
        let replies = batches
            .into_iter()
            .map(|(seq, payload)| (seq_bytes(seq as i64), payload))
            .chain([(seq_bytes(END_SEQ), Bytes::new())]);
        for (seq, payload) in replies {
            let rest = delimiters
                .iter()
                .cloned()
                .chain([Bytes::new(), seq, payload]);
            if let Err(e) = socket.send(frames(identity.clone(), rest)).await {
                tracing::debug!(error = %e, "KV event replay reply not sent");
                break;
            }
        }
    }
}

fn seq_bytes(seq: i64) -> Bytes {
    Bytes::copy_from_slice(&seq.to_be_bytes())
}

/// A multipart message of `first` and `rest`.
fn frames(first: Bytes, rest: impl IntoIterator<Item = Bytes>) -> ZmqMessage {
    let mut message = ZmqMessage::from(first);
    for part in rest {
        message.push_back(part);
    }
    message
}

fn unix_seconds() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// One event as vLLM's msgspec writes it: a map whose `type` names the event.
#[derive(Serialize)]
#[serde(tag = "type")]
enum WireEvent<'a> {
    BlockStored {
        block_hashes: &'a [u64],
        parent_block_hash: Option<u64>,
        token_ids: &'a [u32],
        block_size: usize,
        lora_id: Option<u32>,
        medium: &'static str,
        lora_name: Option<&'static str>,
    },
    BlockRemoved {
        block_hashes: &'a [u64],
        medium: &'static str,
    },
    AllBlocksCleared,
}

impl<'a> From<&'a KvEvent> for WireEvent<'a> {
    fn from(event: &'a KvEvent) -> Self {
        match event {
            KvEvent::Stored {
                hashes,
                parent,
                token_ids,
            } => WireEvent::BlockStored {
                block_hashes: hashes,
                parent_block_hash: *parent,
                token_ids,
                block_size: KV_BLOCK,
                lora_id: None,
                medium: MEDIUM,
                lora_name: None,
            },
            KvEvent::Removed { hashes } => WireEvent::BlockRemoved {
                block_hashes: hashes,
                medium: MEDIUM,
            },
            KvEvent::Cleared => WireEvent::AllBlocksCleared,
        }
    }
}

/// The MessagePack payload of one batch: `[ts, [event, ..], 0]`.
fn encode_batch(events: &[KvEvent], ts: f64) -> Result<Vec<u8>, rmp_serde::encode::Error> {
    let wire: Vec<WireEvent<'_>> = events.iter().map(WireEvent::from).collect();
    rmp_serde::to_vec_named(&(ts, wire, 0u32))
}

#[cfg(test)]
mod tests;
