//! `POST /v1/classify`: rank classification over the label words of the prompt's task (or
//! of a task given in the request), batched by the scheduler with the other requests.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde_json::{json, Value};
use softprompt_core::data::TaskSpec;
use softprompt_core::infer::objective;
use softprompt_core::infer::scheduler::ClassifyRequest;

use crate::error::ServeError;
use crate::router::RequestLog;
use crate::state::{blocking, body, invalid, AppState, St};
use crate::types::ClassifyBody;

/// `POST /v1/classify`: rank the task's label words after the rendered template.
pub async fn classify(
    State(s): St,
    Extension(log): Extension<Arc<RequestLog>>,
    b: Result<Json<ClassifyBody>, JsonRejection>,
) -> Response {
    let r = classify_inner(s.clone(), b, &log).await;
    s.finish_response(r)
}

async fn classify_inner(
    s: Arc<AppState>,
    b: Result<Json<ClassifyBody>, JsonRejection>,
    log: &RequestLog,
) -> Result<Response, ServeError> {
    let slot = s.admit()?;
    let r = body(b)?;
    let names = r.model.names();
    if names.is_empty() || names.len() > s.cfg.max_ensemble {
        return Err(invalid(format!(
            "\"model\": give 1 to {} prompt names (--max-ensemble)",
            s.cfg.max_ensemble
        )));
    }
    let entries = names
        .iter()
        .map(|n| s.registry.get(n))
        .collect::<Result<Vec<_>, _>>()?;
    // The task a prompt was trained on (its softprompt.json), by name.
    let stored_task = |i: usize| {
        entries[i]
            .served
            .prompt
            .as_ref()
            .and_then(|p| p.meta.as_ref())
            .and_then(|m| m.task.clone())
    };
    let spec: TaskSpec = match &r.task {
        Some(Value::String(name)) => softprompt_core::data::builtin_task(name)
            .ok_or_else(|| invalid(format!("no built-in task '{name}'")))?,
        Some(v) => serde_json::from_value(v.clone()).map_err(|e| invalid(format!("task: {e}")))?,
        None => {
            for i in 1..entries.len() {
                let name = |t: Option<Value>| t.and_then(|t| t.get("name").cloned());
                if name(stored_task(i)) != name(stored_task(0)) {
                    return Err(invalid(format!(
                        "'{}' and '{}' were trained for different tasks: an ensemble's prompts share one (or give \"task\")",
                        names[i], names[0]
                    )));
                }
            }
            stored_task(0)
                .ok_or_else(|| {
                    invalid(format!("'{}' has no trained task: give \"task\"", names[0]))
                })
                .and_then(|t| {
                    serde_json::from_value(t).map_err(|e| invalid(format!("stored task: {e}")))
                })?
        }
    };
    spec.validate().map_err(invalid)?;
    let length_norm = r.length_norm.unwrap_or(false);
    let model = s.model.clone();
    let input = r.input;
    let spec2 = spec.clone();
    let (example, cands) =
        blocking(move || softprompt_core::train::eval::class_example(&model, &spec2, input))
            .await?
            .map_err(ServeError::from_core)?;
    log.set_prompt(&names.join("+"), example.ids.len());
    let cand_len = example.cands.iter().map(Vec::len).max().unwrap_or(0);
    let mut replies = Vec::with_capacity(entries.len());
    for entry in &entries {
        let n = entry.served.num_virtual_tokens() + example.ids.len() + cand_len;
        if n > s.cfg.max_input_tokens {
            return Err(invalid(format!(
                "{n} tokens exceed --max-input-tokens {}",
                s.cfg.max_input_tokens
            )));
        }
    }
    // One request per prompt: the scheduler batches them with each other and with the
    // other requests over the one frozen model.
    for entry in &entries {
        entry.requests.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = tokio::sync::oneshot::channel();
        s.scheduler
            .classify(ClassifyRequest {
                prompt: entry.served.clone(),
                example: example.clone(),
                length_norm,
                reply: Box::new(move |r| {
                    let _ = tx.send(r);
                }),
            })
            .map_err(|_| ServeError::Unavailable("the server is shutting down".into()))?;
        replies.push(rx);
    }
    let mut all_scores = Vec::with_capacity(replies.len());
    for rx in replies {
        let scores = tokio::time::timeout(s.cfg.timeout, rx)
            .await
            .map_err(|_| ServeError::Timeout("no answer within --timeout-s".into()))?
            .map_err(|_| ServeError::Internal("the scheduler dropped the request".into()))?
            .map_err(ServeError::from_core)?;
        all_scores.push(scores);
    }
    drop(slot);
    // An ensemble's scores: log of the averaged class probabilities, as the CLI's.
    let scores =
        objective::ensemble_scores(&all_scores.iter().map(Vec::as_slice).collect::<Vec<_>>());
    let probs = objective::softmax(&scores);
    let best = objective::argmax(&scores);
    let labels = spec.label_values();
    let info: Vec<Value> = entries
        .iter()
        .map(|e| {
            let sp = &e.served;
            json!({ "prompt": sp.name, "sha256": sp.sha256, "virtual_tokens": sp.num_virtual_tokens() })
        })
        .collect();
    let one = entries.len() == 1;
    Ok(Json(json!({
        "object": "classification",
        "model": if one { json!(names[0]) } else { json!(names) },
        "task": spec.name,
        "label": labels.get(best),
        "candidate": cands.get(best),
        "probabilities": labels.iter().zip(&probs).map(|(l, p)| (l.clone(), json!(p))).collect::<serde_json::Map<_, _>>(),
        "candidates": labels.iter().zip(&cands).map(|(l, c)| (l.clone(), json!(c))).collect::<serde_json::Map<_, _>>(),
        "scores": scores,
        "softprompt": if one { info[0].clone() } else { json!(info) },
    }))
    .into_response())
}
