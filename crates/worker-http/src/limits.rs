//! The limits on a connection and on reading a request body, and [`TimedBody`], the request
//! body that enforces the second.
//!
//! A body must arrive at a minimum rate: its deadline starts at `body_read_timeout` after the
//! request head and moves out by one second for every `body_min_rate` bytes received, the
//! rule of Apache's `mod_reqtimeout` (`body=10,MinRate=…`). A client that stops sending,
//! or trickles, gets `408 REQUEST_TIMEOUT`; a fast upload of any size is never cut. Neither
//! hyper nor tower-http has a minimum rate (tower-http's `RequestBodyTimeout` restarts its
//! clock on every frame, so one byte every few seconds holds it open forever), hence this
//! small wrapper.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::rejection::BytesRejection;
use hyper::body::{Frame, SizeHint};
use tokio::time::{Instant, Sleep};

/// Connection and body-read limits (the `serve` flags of the same names).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Time a client has to send a request's headers: from the accept for a connection's
    /// first request, from its first byte for a later one. Then the connection is closed.
    pub header_read_timeout: Duration,
    /// Time a kept-alive connection may wait, with no request in flight, for the next one.
    pub idle_timeout: Duration,
    /// Time a request body may take, before the credit of [`Self::body_min_rate`].
    pub body_read_timeout: Duration,
    /// Bytes per second of body that earn one more second to read the rest.
    pub body_min_rate: u64,
    /// Most connections open at once; a connection beyond it is closed as soon as it is
    /// accepted.
    pub max_connections: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            body_read_timeout: Duration::from_secs(10),
            body_min_rate: 4096,
            max_connections: 512,
        }
    }
}

/// The error a [`TimedBody`] ends with when its deadline passes.
#[derive(Debug)]
pub(crate) struct BodyTimedOut;

impl std::fmt::Display for BodyTimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the request body did not arrive at the minimum rate")
    }
}

impl std::error::Error for BodyTimedOut {}

/// The error a [`TimedBody`] ends with when the server starts draining.
#[derive(Debug)]
pub(crate) struct BodyCutByShutdown;

impl std::fmt::Display for BodyCutByShutdown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the server is shutting down")
    }
}

impl std::error::Error for BodyCutByShutdown {}

/// Whether an error of type `E` is somewhere in the cause chain of `rejection`.
pub(crate) fn caused_by<E: std::error::Error + 'static>(rejection: &BytesRejection) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(rejection);
    while let Some(e) = cause {
        if e.is::<E>() {
            return true;
        }
        cause = e.source();
    }
    false
}

/// A request body with a read deadline that moves out as bytes arrive, and that ends at once
/// when the server starts draining.
pub(crate) struct TimedBody {
    inner: Body,
    deadline: Instant,
    sleep: Pin<Box<Sleep>>,
    /// Seconds of credit per byte received.
    per_byte: f64,
    drained: Pin<Box<dyn Future<Output = ()> + Send>>,
}

impl TimedBody {
    /// `inner`, to be read within `limits`; `drained` completes when the server drains.
    pub fn new(
        inner: Body,
        limits: &ConnectionLimits,
        drained: impl Future<Output = ()> + Send + 'static,
    ) -> Self {
        let deadline = Instant::now() + limits.body_read_timeout;
        TimedBody {
            inner,
            deadline,
            sleep: Box::pin(tokio::time::sleep_until(deadline)),
            per_byte: 1.0 / limits.body_min_rate.max(1) as f64,
            drained: Box::pin(drained),
        }
    }
}

impl HttpBody for TimedBody {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let credit = Duration::from_secs_f64(data.len() as f64 * this.per_byte);
                    this.deadline += credit;
                    let deadline = this.deadline;
                    this.sleep.as_mut().reset(deadline);
                }
                return Poll::Ready(Some(Ok(frame)));
            }
            Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Pending => {}
        }
        if this.drained.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err(Box::new(BodyCutByShutdown))));
        }
        if this.sleep.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err(Box::new(BodyTimedOut))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::extract::FromRequest;
    use futures_util::StreamExt;

    fn limits(secs: u64, rate: u64) -> ConnectionLimits {
        ConnectionLimits {
            body_read_timeout: Duration::from_secs(secs),
            body_min_rate: rate,
            ..ConnectionLimits::default()
        }
    }

    /// Reads `chunks` sent `gap` apart through a [`TimedBody`] as axum's `Bytes` extractor does.
    async fn read(
        chunks: Vec<&'static [u8]>,
        gap: Duration,
        l: ConnectionLimits,
    ) -> Result<Bytes, BytesRejection> {
        let stream = futures_util::stream::iter(chunks).then(move |c| async move {
            tokio::time::sleep(gap).await;
            Ok::<_, std::io::Error>(Bytes::from_static(c))
        });
        let body = Body::new(TimedBody::new(
            Body::from_stream(stream),
            &l,
            std::future::pending(),
        ));
        let req = axum::http::Request::new(body);
        Bytes::from_request(req, &()).await
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_slower_than_the_minimum_rate_times_out() {
        // 10 bytes then silence: 2 s plus 10 bytes of credit, then the deadline.
        let r = read(
            vec![b"0123456789", b"x"],
            Duration::from_secs(3),
            limits(2, 100),
        )
        .await;
        let e = r.expect_err("should time out");
        assert!(caused_by::<BodyTimedOut>(&e), "{e:?}");
        // A trickle above the rate is never cut, however long it takes: 60 chunks of 100
        // bytes, one a second, at a minimum rate of 50 bytes/s.
        let chunks = vec![&[b'a'; 100][..]; 60];
        let r = read(chunks, Duration::from_secs(1), limits(2, 50)).await;
        assert_eq!(r.expect("read").len(), 6000);
    }

    #[tokio::test(start_paused = true)]
    async fn draining_ends_a_body_read_at_once() {
        let stream = futures_util::stream::pending::<Result<Bytes, std::io::Error>>();
        let body = TimedBody::new(
            Body::from_stream(stream),
            &limits(100, 1),
            tokio::time::sleep(Duration::from_millis(10)),
        );
        let req = axum::http::Request::new(Body::new(body));
        let e = Bytes::from_request(req, &()).await.expect_err("cut");
        assert!(caused_by::<BodyCutByShutdown>(&e), "{e:?}");
        assert!(!caused_by::<BodyTimedOut>(&e));
    }
}
