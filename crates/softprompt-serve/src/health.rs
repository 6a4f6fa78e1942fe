//! `GET /health`, `/health/live`, `/health/ready` and `GET /v1/models`.

use std::sync::atomic::Ordering;
use std::time::UNIX_EPOCH;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};

use crate::registry::Entry;
use crate::state::St;

/// `GET /health`.
pub async fn health(State(s): St) -> Json<Value> {
    Json(json!({
        "status": "ok",
        "model": s.model.source,
        "prompts": s.registry.len(),
        "in_flight": s.in_flight.load(Ordering::Relaxed),
    }))
}

/// `GET /health/live`: the process answers (a load balancer restarts it when this fails).
pub async fn live() -> Json<Value> {
    Json(json!({ "status": "live" }))
}

/// `GET /health/ready`: 200 once the model is loaded and the first store scan is done, 503
/// before and while draining.
pub async fn ready(State(s): St) -> (StatusCode, Json<Value>) {
    let ready = s.ready.load(Ordering::Acquire);
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        code,
        Json(
            json!({ "status": if ready { "ready" } else { "not ready" }, "prompts": s.registry.len() }),
        ),
    )
}

/// A prompt as `/v1/models` and the admin API list it.
pub fn prompt_json(name: &str, e: &Entry) -> Value {
    let sp = &e.served;
    let task = sp
        .prompt
        .as_ref()
        .and_then(|p| p.meta.as_ref())
        .and_then(|m| m.task.as_ref())
        .and_then(|t| t.get("name"))
        .cloned();
    json!({
        "id": name,
        "object": "model",
        "created": e.loaded_at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        "owned_by": "softprompt",
        "softprompt": {
            "sha256": sp.sha256,
            "virtual_tokens": sp.num_virtual_tokens(),
            // "input" (prompt tuning) or "prefix" (a deep prompt: keys and values per layer)
            "kind": sp.prompt.as_ref().map(|p| p.kind()),
            "task": task,
            "requests": e.requests.load(Ordering::Relaxed),
        }
    })
}

/// `GET /v1/models`: the base model first, then the prompts.
pub async fn models(State(s): St) -> Json<Value> {
    let data: Vec<Value> = s
        .registry
        .list()
        .iter()
        .map(|(n, e)| prompt_json(n, e))
        .collect();
    Json(json!({ "object": "list", "data": data }))
}
