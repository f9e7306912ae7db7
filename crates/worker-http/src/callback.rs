//! The ready callback: one JSON POST to the pool manager once the model is loaded and the
//! server answers.

use std::time::Duration;

use worker_common::{DeviceInfo, ReadyCallback};

use crate::HttpError;

/// The callback body.
pub(crate) fn payload(cb: &ReadyCallback) -> serde_json::Value {
    let mut body = serde_json::json!({
        "worker_id": cb.worker_id,
        "model_ref": cb.model_ref,
        "memory_bytes": cb.memory_bytes,
        "memory_architecture": cb.memory_architecture.as_str(),
        "worker_type": cb.worker_type,
        "capabilities": cb.capabilities,
        "uri": cb.uri,
    });
    if let Some(d) = &cb.device {
        body["device"] = device(d);
    }
    body
}

/// A device as `/health` and the ready callback show it.
pub(crate) fn device(d: &DeviceInfo) -> serde_json::Value {
    serde_json::json!({ "name": d.name, "backend": d.backend })
}

/// POSTs `cb` as JSON to `url` (plain `http://`), waiting at most `timeout`; any transport
/// failure or non-2xx status is an error.
pub async fn send_ready_callback(
    url: &str,
    cb: &ReadyCallback,
    timeout: Duration,
) -> Result<(), HttpError> {
    let body = payload(cb).to_string();
    let target = url.to_string();
    let fail = |reason: String| HttpError::Callback {
        url: url.to_string(),
        reason,
    };
    let result = tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .build()
            .into();
        agent
            .post(&target)
            .header("Content-Type", "application/json")
            .send(body.as_str())
            .map(|r| r.status().as_u16())
    })
    .await
    .map_err(|e| fail(e.to_string()))?;
    match result {
        Ok(status) => {
            tracing::info!(url, status, "ready callback delivered");
            Ok(())
        }
        Err(e) => Err(fail(e.to_string())),
    }
}
