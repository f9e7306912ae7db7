//! The accept loop and the life of one connection: the cap on open connections, the header
//! read and idle keep-alive timeouts, the body read deadline, and closing on shutdown.
//!
//! HTTP/1.1 is served by hyper's connection builder, as `axum::serve` does, but `axum::serve`
//! sets no timeout at all, and hyper's `header_read_timeout` starts whenever hyper begins
//! waiting for a request head, so it also cuts an idle kept-alive connection at the header
//! timeout: one knob for two jobs. Here a watchdog per connection keeps them apart, with the
//! semantics of Go's `net/http` server: the first request's headers must be in within
//! `header_read_timeout` of the accept; after a response the connection may wait
//! `idle_timeout` for the next request, whose headers then have `header_read_timeout` from
//! its first byte. While a request is in flight only the body deadline ([`TimedBody`])
//! applies, so a long stream is never cut.

use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes, HttpBody};
use axum::Router;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tower::ServiceExt;

use crate::limits::{ConnectionLimits, TimedBody};
use crate::state::AppState;

/// Marks "no byte yet" in [`Activity::first_byte`].
const NONE: u64 = u64::MAX;

/// What one connection is doing, shared by its socket, its requests and its watchdog.
struct Activity {
    epoch: Instant,
    /// Requests whose response has not finished (or been dropped).
    in_flight: AtomicUsize,
    /// When (ms after `epoch`) the connection began waiting for its next request.
    waiting_since: AtomicU64,
    /// When the first byte of that request arrived, or [`NONE`].
    first_byte: AtomicU64,
    /// Whether a response has finished: the wait for the next request is keep-alive idle.
    served: AtomicBool,
}

impl Activity {
    fn new() -> Self {
        Activity {
            epoch: Instant::now(),
            in_flight: AtomicUsize::new(0),
            waiting_since: AtomicU64::new(0),
            first_byte: AtomicU64::new(NONE),
            served: AtomicBool::new(false),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn on_read(&self, now: u64) {
        if self.in_flight.load(Ordering::Acquire) == 0 {
            let _ =
                self.first_byte
                    .compare_exchange(NONE, now, Ordering::AcqRel, Ordering::Acquire);
        }
    }

    fn begin_request(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.first_byte.store(NONE, Ordering::Release);
        InFlight(self.clone())
    }

    /// Whether no request has started on the connection: nothing is owed to its client.
    fn unstarted(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) == 0 && !self.served.load(Ordering::Acquire)
    }

    /// Whether the connection, at `now`, has waited too long for a request (or its headers).
    fn expired(&self, now: u64, limits: &ConnectionLimits) -> bool {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return false;
        }
        let ms = |d: Duration| d.as_millis() as u64;
        let first_byte = self.first_byte.load(Ordering::Acquire);
        let deadline = if !self.served.load(Ordering::Acquire) {
            self.waiting_since.load(Ordering::Acquire) + ms(limits.header_read_timeout)
        } else if first_byte != NONE {
            first_byte + ms(limits.header_read_timeout)
        } else {
            self.waiting_since.load(Ordering::Acquire) + ms(limits.idle_timeout)
        };
        now >= deadline
    }
}

/// A request in flight; dropped with its response body (sent or abandoned).
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let a = &self.0;
        a.waiting_since.store(a.now_ms(), Ordering::Release);
        a.first_byte.store(NONE, Ordering::Release);
        a.served.store(true, Ordering::Release);
        a.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that holds its request's [`InFlight`] until it is done.
struct Tracked {
    inner: Body,
    _in_flight: InFlight,
}

impl HttpBody for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The socket, noting when bytes arrive.
struct Watched {
    stream: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.stream).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            let now = self.activity.now_ms();
            self.activity.on_read(now);
        }
        result
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// How often a connection's watchdog looks: an eighth of the shorter timeout, within
/// 50 ms..=1 s.
fn tick(limits: &ConnectionLimits) -> Duration {
    (limits.header_read_timeout.min(limits.idle_timeout) / 8)
        .clamp(Duration::from_millis(50), Duration::from_secs(1))
}

/// Accepts connections on `listener` and serves `router` on each until `stop` turns true;
/// then stops accepting, closes every connection that is idle or has not sent a whole
/// request yet, lets busy ones finish their response, and returns when all are closed.
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    state: Arc<AppState>,
    mut stop: watch::Receiver<bool>,
) {
    let limits = state.config.limits;
    let max = limits.max_connections.clamp(1, Semaphore::MAX_PERMITS) as u32;
    let permits = Arc::new(Semaphore::new(max as usize));
    loop {
        let accepted = tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors and the like: wait for connections to close.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            state.metrics.connection_refused();
            tracing::debug!(max, "connection limit reached; closing a new connection");
            continue;
        };
        // Tokens go out as they come: no Nagle delay on small SSE writes.
        let _ = stream.set_nodelay(true);
        let (router, state, stop) = (router.clone(), state.clone(), stop.clone());
        tokio::spawn(async move {
            state.metrics.connection_opened();
            connection(stream, router, &state, stop).await;
            state.metrics.connection_closed();
            drop(permit);
        });
    }
    drop(listener);
    // Every connection holds a permit until it is closed.
    let _ = permits.acquire_many(max).await;
}

/// Serves one connection until the client closes it, a timeout cuts it, or it has shut down
/// gracefully after `stop`.
async fn connection(
    stream: TcpStream,
    router: Router,
    state: &Arc<AppState>,
    mut stop: watch::Receiver<bool>,
) {
    let limits = state.config.limits;
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Watched {
        stream,
        activity: activity.clone(),
    });
    let per_request = activity.clone();
    let drain = stop.clone();
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let in_flight = per_request.begin_request();
        let mut drain = drain.clone();
        let drained = async move {
            let _ = drain.wait_for(|s| *s).await;
        };
        let req = req.map(|body| Body::new(TimedBody::new(Body::new(body), &limits, drained)));
        let router = router.clone();
        async move {
            let response = match router.oneshot(req).await {
                Ok(r) => r,
                Err(never) => match never {},
            };
            Ok::<_, Infallible>(response.map(|inner| {
                Body::new(Tracked {
                    inner,
                    _in_flight: in_flight,
                })
            }))
        }
    });
    let conn = hyper::server::conn::http1::Builder::new().serve_connection(io, service);
    tokio::pin!(conn);
    let mut watchdog = tokio::time::interval(tick(&limits));
    let mut stopping = false;
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            _ = watchdog.tick() => {
                if activity.expired(activity.now_ms(), &limits) {
                    state.metrics.connection_timed_out();
                    tracing::debug!("closing a connection idle or slow past its timeout");
                    return;
                }
            }
            _ = stop.wait_for(|s| *s), if !stopping => {
                // hyper closes a kept-alive idle connection at once and a busy one after its
                // response is flushed, but waits for the first request of a fresh one.
                if activity.unstarted() {
                    return;
                }
                stopping = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> ConnectionLimits {
        ConnectionLimits {
            header_read_timeout: Duration::from_millis(100),
            idle_timeout: Duration::from_millis(300),
            ..ConnectionLimits::default()
        }
    }

    #[test]
    fn the_watchdog_keeps_header_and_idle_timeouts_apart() {
        let l = limits();
        // A fresh connection: headers due 100 ms after the accept, bytes or not.
        let a = Arc::new(Activity::new());
        assert!(!a.expired(50, &l));
        a.on_read(40);
        assert!(!a.expired(99, &l));
        assert!(a.expired(100, &l));
        // A request in flight is never cut by the watchdog.
        let req = a.begin_request();
        assert!(!a.expired(10_000, &l));
        drop(req);
        // Served once: it may wait 300 ms idle for the next request...
        let done = a.waiting_since.load(Ordering::Acquire);
        assert!(!a.expired(done + 299, &l));
        assert!(a.expired(done + 300, &l));
        // ...whose headers are due 100 ms after its first byte.
        a.on_read(done + 150);
        assert!(!a.expired(done + 249, &l));
        assert!(a.expired(done + 250, &l));
    }
}
