//! The port while the model loads: bound before the load starts, so that a prober (a router's
//! health check, a Kubernetes readiness probe) gets `/health` 503 `"loading"` and every other
//! request 503 `LOADING` with `Retry-After`, instead of a refused connection it cannot tell
//! from a dead worker. Once the model is loaded the same socket is handed to the server.

use std::convert::Infallible;
use std::net::TcpListener;
use std::thread::JoinHandle;
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::sync::oneshot;
use worker_common::ErrorCode;

use crate::error::ApiError;
use crate::HttpError;

/// How long answers under way at the hand-over get to finish.
const HANDOVER_GRACE: Duration = Duration::from_millis(200);

/// A bound port answering "loading" on a thread of its own until [`Self::into_listener`].
pub struct LoadingPort {
    listener: TcpListener,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl LoadingPort {
    /// Binds `host:port` and starts answering.
    pub fn bind(host: &str, port: u16) -> Result<Self, HttpError> {
        let listener = TcpListener::bind((host, port))?;
        listener.set_nonblocking(true)?;
        let answering = listener.try_clone()?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (stop, stopped) = oneshot::channel();
        let thread = std::thread::Builder::new()
            .name("loading-port".into())
            .spawn(move || runtime.block_on(answer_until(answering, stopped)))?;
        Ok(LoadingPort {
            listener,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// The address it is bound to.
    pub fn local_addr(&self) -> Result<std::net::SocketAddr, HttpError> {
        Ok(self.listener.local_addr()?)
    }

    /// Stops answering "loading" and returns the socket, still bound, for the server.
    pub fn into_listener(mut self) -> Result<TcpListener, HttpError> {
        self.halt();
        self.listener.try_clone().map_err(HttpError::from)
    }

    fn halt(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for LoadingPort {
    fn drop(&mut self) {
        self.halt();
    }
}

/// Accepts on `listener` and answers every request with [`loading_response`] until `stopped`,
/// then gives the answers under way [`HANDOVER_GRACE`].
async fn answer_until(listener: TcpListener, mut stopped: oneshot::Receiver<()>) {
    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
        return;
    };
    let mut answers = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut stopped => break,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                answers.spawn(async move {
                    let service = hyper::service::service_fn(|req: hyper::Request<Incoming>| async move {
                        Ok::<_, Infallible>(loading_response(req.uri().path()))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .keep_alive(false)
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        }
    }
    let _ = tokio::time::timeout(HANDOVER_GRACE, async {
        while answers.join_next().await.is_some() {}
    })
    .await;
}

/// `/health`: 503 `{"status": "loading"}`; anything else: 503 `LOADING` (in OpenAI's error
/// shape under `/v1/`) with `Retry-After`.
fn loading_response(path: &str) -> Response {
    if path == "/health" {
        let body = serde_json::json!({"status": "loading"});
        return (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response();
    }
    let e = ApiError::new(ErrorCode::Loading, "the worker is loading its model");
    if path.starts_with("/v1/") {
        e.openai().into_response()
    } else {
        e.into_response()
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use super::*;

    fn get(addr: std::net::SocketAddr, request: &str) -> String {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.write_all(request.as_bytes()).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    #[test]
    fn answers_loading_then_hands_the_socket_over() {
        let port = LoadingPort::bind("127.0.0.1", 0).unwrap();
        let addr = port.local_addr().unwrap();
        let health = get(addr, "GET /health HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(health.starts_with("HTTP/1.1 503"), "{health}");
        assert!(health.ends_with(r#"{"status":"loading"}"#), "{health}");
        let body = r#"{"prompt":"x"}"#;
        let post = format!(
            "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let openai = get(addr, &post);
        assert!(openai.starts_with("HTTP/1.1 503"), "{openai}");
        assert!(
            openai.to_ascii_lowercase().contains("retry-after: 1"),
            "{openai}"
        );
        assert!(openai.contains(r#""code":"loading""#), "{openai}");
        let execute = get(
            addr,
            "POST /execute HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
        );
        assert!(execute.contains(r#""code":"LOADING""#), "{execute}");

        // After the hand-over the same socket accepts for its new owner.
        let listener = port.into_listener().unwrap();
        let client = std::thread::spawn(move || std::net::TcpStream::connect(addr).unwrap());
        listener.set_nonblocking(false).unwrap();
        let (mut accepted, _) = listener.accept().unwrap();
        let mut sent = client.join().unwrap();
        sent.write_all(b"ping").unwrap();
        let mut got = [0; 4];
        accepted.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"ping");
    }
}
