//! What every handler shares: the model, the prompts, the scheduler, the limits and the
//! counters; admission (429 beyond --max-concurrent), JSON bodies, tokenizing, error answers.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use softprompt_core::infer::scheduler::{Cancel, Scheduler};
use softprompt_core::model::FrozenModel;

use crate::config::ServeConfig;
use crate::error::ServeError;
use crate::metrics::Metrics;
use crate::registry::Registry;

pub struct AppState {
    pub cfg: ServeConfig,
    /// The model's chat template, compiled; `None`: no /v1/chat/completions.
    pub chat: Option<minijinja::Environment<'static>>,
    pub model: Arc<FrozenModel>,
    pub registry: Registry,
    pub scheduler: Scheduler,
    pub in_flight: Arc<AtomicUsize>,
    pub next_id: AtomicU64,
    pub metrics: Metrics,
    /// Model loaded and store scanned (`/health/ready`); false again while draining.
    pub ready: AtomicBool,
    /// Playground training jobs.
    pub jobs: crate::playground::jobs::Jobs,
}

pub type St = State<Arc<AppState>>;

/// One admitted request: releases its slot when dropped (end of response or stream).
pub struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl AppState {
    pub fn admit(&self) -> Result<Slot, ServeError> {
        self.metrics.requests.fetch_add(1, Ordering::Relaxed);
        let prev = self.in_flight.fetch_add(1, Ordering::AcqRel);
        if prev >= self.cfg.max_concurrent {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            self.metrics.rejected.fetch_add(1, Ordering::Relaxed);
            return Err(ServeError::Overloaded(format!(
                "{} requests in flight (--max-concurrent); retry later",
                self.cfg.max_concurrent
            )));
        }
        Ok(Slot(self.in_flight.clone()))
    }

    /// Token ids of a text. `input`: it starts a sequence, so it gets the tokenizer's start
    /// tokens (Gemma's `<bos>`) like a PEFT input would; a rendered chat template already
    /// holds them.
    pub fn encode(&self, t: &str, input: bool) -> Result<Vec<u32>, ServeError> {
        // Refuse absurd texts before tokenizing them (the token limit applies after).
        if t.len() > self.cfg.max_input_tokens.saturating_mul(64) {
            return Err(invalid(
                "prompt text is longer than --max-input-tokens allows",
            ));
        }
        if input {
            self.model.encode_input(t)
        } else {
            self.model.encode(t)
        }
        .map_err(ServeError::from_core)
    }

    /// The answer, or the error's, counted (5xx, timeouts).
    pub fn finish_response(&self, r: Result<Response, ServeError>) -> Response {
        match r {
            Ok(r) => r,
            Err(e) => {
                if e.status().is_server_error() {
                    self.metrics.errors.fetch_add(1, Ordering::Relaxed);
                }
                if matches!(e, ServeError::Timeout(_)) {
                    self.metrics.timeouts.fetch_add(1, Ordering::Relaxed);
                }
                e.into_response()
            }
        }
    }
}

/// Cancels its request when dropped: a client that goes away stops its generation.
pub struct CancelOnDrop(pub Cancel);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

/// The JSON body, or a 400/413/422 in our error format.
/// `f` on tokio's blocking pool (model work, file I/O), so the runtime's threads never wait on
/// it; a panic inside becomes a 500.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ServeError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ServeError::Internal(e.to_string()))
}

pub fn body<T>(b: Result<Json<T>, JsonRejection>) -> Result<T, ServeError> {
    match b {
        Ok(Json(v)) => Ok(v),
        Err(r) => {
            let msg = r.body_text();
            Err(match r.status() {
                StatusCode::PAYLOAD_TOO_LARGE => ServeError::TooLarge(msg),
                StatusCode::UNPROCESSABLE_ENTITY => ServeError::Invalid(msg),
                _ => ServeError::Malformed(msg),
            })
        }
    }
}

pub fn invalid(msg: impl Into<String>) -> ServeError {
    ServeError::Invalid(msg.into())
}

pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
