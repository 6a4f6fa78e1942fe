//! The admin API (bearer key): list, load, upload and unload prompts at run time.

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::Json;
use serde_json::{json, Value};

use crate::error::ServeError;
use crate::health::prompt_json;
use crate::state::{blocking, body, AppState, St};
use crate::types::{LoadBody, UploadBody};

/// The bearer key, compared in constant time.
pub(crate) fn authorize(s: &AppState, h: &HeaderMap) -> Result<(), ServeError> {
    let Some(key) = &s.cfg.admin_key else {
        return Err(ServeError::Forbidden(
            "admin endpoints are disabled (start the server with an admin key)".into(),
        ));
    };
    let given = h
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    // Constant-time comparison: no early exit on the first differing byte.
    let (a, b) = (given.as_bytes(), key.as_bytes());
    let mut diff = (a.len() != b.len()) as u8;
    for i in 0..a.len().max(b.len()) {
        diff |= a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0);
    }
    if diff != 0 {
        return Err(ServeError::Unauthorized(
            "missing or wrong admin key".into(),
        ));
    }
    Ok(())
}

/// `GET /admin/prompts`.
pub async fn list(State(s): St, h: HeaderMap) -> Result<Json<Value>, ServeError> {
    authorize(&s, &h)?;
    let data: Vec<Value> = s
        .registry
        .list()
        .iter()
        .map(|(n, e)| prompt_json(n, e))
        .collect();
    Ok(Json(json!({ "object": "list", "data": data })))
}

/// `POST /admin/prompts {"name": NAME}`: load (or reload) `DIR/NAME`.
pub async fn load(
    State(s): St,
    h: HeaderMap,
    b: Result<Json<LoadBody>, JsonRejection>,
) -> Result<Json<Value>, ServeError> {
    authorize(&s, &h)?;
    let name = body(b)?.name;
    let s2 = s.clone();
    let n2 = name.clone();
    let e = blocking(move || s2.registry.load(&n2)).await??;
    Ok(Json(prompt_json(&name, &e)))
}

/// `PUT /admin/prompts/{name} {"files": {"adapter_config.json": BASE64, ...}}`: write the
/// prompt into the store atomically (every replica sharing it sees it) and load it here.
pub async fn upload(
    State(s): St,
    h: HeaderMap,
    Path(name): Path<String>,
    b: Result<Json<UploadBody>, JsonRejection>,
) -> Result<Json<Value>, ServeError> {
    use base64::Engine;
    authorize(&s, &h)?;
    let files = body(b)?
        .files
        .into_iter()
        .map(|(f, b64)| {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b64.as_bytes())
                .map_err(|e| ServeError::Invalid(format!("files.{f}: not base64: {e}")))?;
            Ok((f, bytes))
        })
        .collect::<Result<Vec<_>, ServeError>>()?;
    let s2 = s.clone();
    let n2 = name.clone();
    let e = blocking(move || s2.registry.install(&n2, &files)).await??;
    Ok(Json(prompt_json(&name, &e)))
}

/// `DELETE /admin/prompts/{name}`: requests in flight keep the prompt they started with. A
/// server that watches its store also removes the folder from it (else the next scan would
/// load it again), so every replica drops the prompt.
pub async fn unload(
    State(s): St,
    h: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<Value>, ServeError> {
    authorize(&s, &h)?;
    let e = if s.cfg.watch_interval.is_some() {
        let s2 = s.clone();
        let n2 = name.clone();
        blocking(move || s2.registry.remove(&n2)).await??
    } else {
        s.registry.unload(&name)?
    };
    Ok(Json(
        json!({ "id": name, "unloaded": true, "sha256": e.served.sha256 }),
    ))
}
