//! The routes, and the access log: one line per request at info (target
//! `softprompt_serve::access`) with its method, path, status, prompt, input and output tokens
//! and latency, written when the answer ends (a stream's last event, or its client leaving).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{delete, get, post};
use axum::Router;
use futures_util::StreamExt;

use crate::error::ServeError;
use crate::metrics::Metrics;
use crate::state::AppState;
use crate::{admin, chat, classify, completions, health, metrics, playground};

pub fn router(state: Arc<AppState>) -> Router {
    let limit = state.cfg.max_body_bytes;
    Router::new()
        .route("/health", get(health::health))
        .route("/health/live", get(health::live))
        .route("/health/ready", get(health::ready))
        .route("/metrics", get(metrics::metrics))
        .route("/v1/models", get(health::models))
        .route("/v1/completions", post(completions::completions))
        .route("/v1/chat/completions", post(chat::chat_completions))
        .route("/v1/classify", post(classify::classify))
        .route("/admin/prompts", get(admin::list).post(admin::load))
        .route(
            "/admin/prompts/{name}",
            delete(admin::unload)
                .put(admin::upload)
                .layer(DefaultBodyLimit::max(state.cfg.max_prompt_upload_bytes)),
        )
        .merge(playground::routes(&state))
        .fallback(|| async { ServeError::NotFound("no such endpoint".into()) })
        .layer(DefaultBodyLimit::max(limit))
        .layer(middleware::from_fn_with_state(state.clone(), gate))
        .layer(middleware::from_fn_with_state(state.clone(), access_log))
        .with_state(state)
}

/// Before the first store scan (and while draining) only the health and metrics endpoints
/// answer; the rest get 503, which a load balancer retries on another replica.
async fn gate(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    if state.ready.load(Ordering::Acquire)
        || matches!(
            req.uri().path(),
            "/health" | "/health/live" | "/health/ready" | "/metrics"
        )
    {
        return next.run(req).await;
    }
    axum::response::IntoResponse::into_response(ServeError::Unavailable(
        "the server is not ready (loading its prompts, or shutting down); retry".into(),
    ))
}

/// What the access line and the latency histograms need to know of one request: put in the
/// request's extensions by [`access_log`], filled in by the handlers.
pub struct RequestLog {
    start: Instant,
    prompt: OnceLock<String>,
    input_tokens: AtomicUsize,
    output_tokens: AtomicUsize,
    /// When the last token arrived (inter-token latency).
    last_token: Mutex<Option<Instant>>,
}

impl RequestLog {
    fn new() -> Self {
        RequestLog {
            start: Instant::now(),
            prompt: OnceLock::new(),
            input_tokens: AtomicUsize::new(0),
            output_tokens: AtomicUsize::new(0),
            last_token: Mutex::new(None),
        }
    }

    /// The prompt serving the request and its input tokens (soft-prompt rows not counted).
    pub fn set_prompt(&self, name: &str, input_tokens: usize) {
        let _ = self.prompt.set(name.to_string());
        self.input_tokens.store(input_tokens, Ordering::Relaxed);
    }

    /// A generated token arrived: its time to first token or inter-token latency is observed.
    pub fn token(&self, m: &Metrics) {
        let now = Instant::now();
        self.output_tokens.fetch_add(1, Ordering::Relaxed);
        let mut last = self.last_token.lock().unwrap_or_else(|e| e.into_inner());
        match *last {
            None => m.ttft.observe(now - self.start),
            Some(t) => m.itl.observe(now - t),
        }
        *last = Some(now);
    }
}

/// Logs its request when dropped: after the handler for a JSON answer, at the end of the body
/// for a stream.
struct AccessLine {
    state: Arc<AppState>,
    log: Arc<RequestLog>,
    method: Method,
    path: String,
    status: StatusCode,
}

impl Drop for AccessLine {
    fn drop(&mut self) {
        let elapsed = self.log.start.elapsed();
        if matches!(
            self.path.as_str(),
            "/v1/completions" | "/v1/chat/completions" | "/v1/classify"
        ) {
            self.state.metrics.latency.observe(elapsed);
        }
        tracing::info!(
            target: "softprompt_serve::access",
            method = %self.method,
            path = %self.path,
            status = self.status.as_u16(),
            prompt = %self.log.prompt.get().map_or("-", String::as_str),
            input_tokens = self.log.input_tokens.load(Ordering::Relaxed),
            output_tokens = self.log.output_tokens.load(Ordering::Relaxed),
            latency_ms = format_args!("{:.1}", elapsed.as_secs_f64() * 1e3),
        );
    }
}

async fn access_log(State(state): State<Arc<AppState>>, mut req: Request, next: Next) -> Response {
    let log = Arc::new(RequestLog::new());
    req.extensions_mut().insert(log.clone());
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let resp = next.run(req).await;
    let line = AccessLine {
        state,
        log,
        method,
        path,
        status: resp.status(),
    };
    let streaming = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    if !streaming {
        return resp; // `line` logs now
    }
    // The stream owns the line: it logs when the last event is sent or the client leaves.
    let (parts, body) = resp.into_parts();
    let body = body.into_data_stream().map(move |chunk| {
        let _keep = &line;
        chunk
    });
    Response::from_parts(parts, Body::from_stream(body))
}
