//! `softprompt serve`: many soft prompts over one frozen model, behind an OpenAI-compatible
//! HTTP API. A thin router over [`softprompt_core::infer::scheduler`]: requests for any prompts
//! share decode batches there; this crate parses, validates, limits and streams.
//!
//! Endpoints: `POST /v1/completions` (`model` names a prompt, or the base model), `GET
//! /v1/models`, `POST /v1/classify` (rank over the label words the prompt was trained
//! with), `GET /health`, `GET /metrics` (Prometheus), and the admin API `GET/POST
//! /admin/prompts`, `DELETE /admin/prompts/{name}` (bearer key).

pub mod error;
pub mod loadtest;
pub mod registry;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use softprompt_core::data::TaskSpec;
use softprompt_core::infer::objective;
use softprompt_core::infer::scheduler::{
    Cancel, ClassifyRequest, Event, Finish, GenRequest, Scheduler, SchedulerConfig,
};
use softprompt_core::infer::Sampling;
use softprompt_core::model::FrozenModel;
use tokio::sync::mpsc;

pub use error::ServeError;
use registry::{Entry, Registry};

/// Every limit is a flag of `softprompt serve`.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    pub bind: SocketAddr,
    /// Folder of prompt folders (`DIR/NAME/adapter_config.json`, ...).
    pub prompts: Option<PathBuf>,
    /// Name that addresses the bare base model.
    pub base_name: String,
    /// Bearer key of the admin endpoints; `None` disables them.
    pub admin_key: Option<String>,
    /// Requests in flight (completions + classify) beyond which new ones get 429 at once.
    pub max_concurrent: usize,
    /// Sequences decoded together in one batch (the rest wait in the queue).
    pub max_batch: usize,
    /// Input tokens per request, soft-prompt virtual tokens included.
    pub max_input_tokens: usize,
    /// `max_tokens` ceiling per request.
    pub max_output_tokens: usize,
    pub max_body_bytes: usize,
    pub max_prompts: usize,
    /// Per-request deadline.
    pub timeout: Duration,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            bind: SocketAddr::from(([127, 0, 0, 1], 8080)),
            prompts: None,
            base_name: "base".into(),
            admin_key: None,
            max_concurrent: 64,
            max_batch: 64,
            max_input_tokens: 2048,
            max_output_tokens: 512,
            max_body_bytes: 1 << 20,
            max_prompts: 1000,
            timeout: Duration::from_secs(120),
        }
    }
}

struct AppState {
    cfg: ServeConfig,
    /// The model's chat template, compiled; `None`: no /v1/chat/completions.
    chat: Option<minijinja::Environment<'static>>,
    model: Arc<FrozenModel>,
    registry: Registry,
    scheduler: Scheduler,
    in_flight: Arc<AtomicUsize>,
    next_id: AtomicU64,
    started: Instant,
    rejected: AtomicU64,
    requests: AtomicU64,
    errors: AtomicU64,
    timeouts: AtomicU64,
}

type St = State<Arc<AppState>>;

/// One admitted request: releases its slot when dropped (end of response or stream).
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl AppState {
    fn admit(&self) -> Result<Slot, ServeError> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let prev = self.in_flight.fetch_add(1, Ordering::AcqRel);
        if prev >= self.cfg.max_concurrent {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            self.rejected.fetch_add(1, Ordering::Relaxed);
            return Err(ServeError::Overloaded(format!(
                "{} requests in flight (--max-concurrent); retry later",
                self.cfg.max_concurrent
            )));
        }
        Ok(Slot(self.in_flight.clone()))
    }
}

/// Cancels its request when dropped: a client that goes away stops its generation.
struct CancelOnDrop(Cancel);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

/// A loaded server, ready to run.
pub struct Server {
    state: Arc<AppState>,
    listener: tokio::net::TcpListener,
}

impl Server {
    /// Load the prompts, start the scheduler, bind. Prompts that fail to load are reported
    /// (name, reason) and skipped.
    pub async fn bind(
        cfg: ServeConfig,
        mut model: FrozenModel,
    ) -> Result<(Server, Vec<(String, ServeError)>), ServeError> {
        // Batch-invariant kernels: a request's output never depends on its batch mates.
        model.llama.exact = true;
        let model = Arc::new(model);
        let m2 = model.clone();
        let c2 = cfg.clone();
        let (registry, failed) = tokio::task::spawn_blocking(move || {
            let r = Registry::new(m2, c2.prompts.as_deref(), &c2.base_name, c2.max_prompts)?;
            let failed = r.load_all();
            Ok::<_, ServeError>((r, failed))
        })
        .await
        .map_err(|e| ServeError::Internal(e.to_string()))??;
        let scheduler = Scheduler::start(
            model.clone(),
            SchedulerConfig {
                max_batch: cfg.max_batch,
                ..SchedulerConfig::default()
            },
        );
        let listener = tokio::net::TcpListener::bind(cfg.bind)
            .await
            .map_err(|e| ServeError::Internal(format!("bind {}: {e}", cfg.bind)))?;
        let chat = match &model.chat_template {
            Some(t) => Some(chat_env(t).map_err(|e| {
                ServeError::Internal(format!("the model's chat template does not compile: {e}"))
            })?),
            None => None,
        };
        let state = Arc::new(AppState {
            chat,
            cfg,
            model,
            registry,
            scheduler,
            in_flight: Arc::new(AtomicUsize::new(0)),
            next_id: AtomicU64::new(1),
            started: Instant::now(),
            rejected: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            timeouts: AtomicU64::new(0),
        });
        Ok((Server { state, listener }, failed))
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn prompts_loaded(&self) -> usize {
        self.state.registry.len()
    }

    /// Serve until `shutdown` resolves, then stop accepting and drain in-flight requests.
    pub async fn run(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let app = router(self.state.clone());
        axum::serve(self.listener, app)
            .with_graceful_shutdown(shutdown)
            .await
    }
}

fn router(state: Arc<AppState>) -> Router {
    let limit = state.cfg.max_body_bytes;
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/v1/models", get(models))
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/classify", post(classify))
        .route("/admin/prompts", get(admin_list).post(admin_load))
        .route("/admin/prompts/{name}", delete(admin_unload))
        .fallback(|| async { ServeError::NotFound("no such endpoint".into()) })
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

/// The JSON body, or a 400/413/422 in our error format.
fn body<T>(b: Result<Json<T>, JsonRejection>) -> Result<T, ServeError> {
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

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

async fn health(State(s): St) -> Json<Value> {
    Json(json!({
        "status": "ok",
        "model": s.model.source,
        "prompts": s.registry.len(),
        "in_flight": s.in_flight.load(Ordering::Relaxed),
    }))
}

fn prompt_json(name: &str, e: &Entry) -> Value {
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
            "task": task,
            "requests": e.requests.load(Ordering::Relaxed),
        }
    })
}

async fn models(State(s): St) -> Json<Value> {
    let data: Vec<Value> = s
        .registry
        .list()
        .iter()
        .map(|(n, e)| prompt_json(n, e))
        .collect();
    Json(json!({ "object": "list", "data": data }))
}

// ---------------------------------------------------------------- completions

/// `prompt`: a text, a list of token ids, or a one-element list of either.
#[derive(Deserialize)]
#[serde(untagged)]
enum PromptInput {
    Text(String),
    Ids(Vec<i64>),
    Texts(Vec<String>),
    IdLists(Vec<Vec<i64>>),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum StopInput {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
struct CompletionRequest {
    model: String,
    #[serde(default)]
    prompt: Option<PromptInput>,
    max_tokens: Option<i64>,
    min_tokens: Option<i64>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    top_k: Option<i64>,
    seed: Option<u64>,
    #[serde(default)]
    stream: bool,
    stop: Option<StopInput>,
    n: Option<i64>,
    best_of: Option<i64>,
    #[serde(default)]
    echo: bool,
    logprobs: Option<Value>,
    presence_penalty: Option<f64>,
    frequency_penalty: Option<f64>,
    #[serde(default)]
    ignore_eos: bool,
    /// Chat: without max_tokens, generate until EOS (up to --max-output-tokens and the context).
    #[serde(skip)]
    until_eos: bool,
}

/// A validated completion request.
struct Job {
    entry: Arc<Entry>,
    ids: Vec<u32>,
    sampling: Sampling,
    stop: Vec<String>,
    stream: bool,
    /// Answer in the chat format (`chat.completion`, `message`/`delta`).
    chat: bool,
}

fn invalid(msg: impl Into<String>) -> ServeError {
    ServeError::Invalid(msg.into())
}

impl AppState {
    fn validate(&self, r: CompletionRequest) -> Result<Job, ServeError> {
        let entry = self.registry.get(&r.model)?;
        if r.n.is_some_and(|n| n != 1) || r.best_of.is_some_and(|n| n != 1) {
            return Err(invalid("only n = 1 (and best_of = 1) is supported"));
        }
        if r.echo || r.logprobs.as_ref().is_some_and(|v| !v.is_null()) {
            return Err(invalid("echo and logprobs are not supported"));
        }
        if r.presence_penalty.unwrap_or(0.0) != 0.0 || r.frequency_penalty.unwrap_or(0.0) != 0.0 {
            return Err(invalid("presence/frequency penalties are not supported"));
        }
        let vocab = self.model.llama.dims.vocab;
        let check_ids = |v: Vec<i64>| -> Result<Vec<u32>, ServeError> {
            v.into_iter()
                .map(|t| {
                    if t < 0 || t as u64 >= vocab as u64 {
                        Err(invalid(format!(
                            "token id {t} is outside the vocabulary (0..{vocab})"
                        )))
                    } else {
                        Ok(t as u32)
                    }
                })
                .collect()
        };
        let one = |n: usize| {
            if n == 1 {
                Ok(())
            } else {
                Err(invalid("one prompt per request (a list of exactly one)"))
            }
        };
        let ids = match r.prompt {
            None => Vec::new(),
            Some(PromptInput::Text(t)) => self.encode(&t, true)?,
            Some(PromptInput::Ids(v)) => check_ids(v)?,
            Some(PromptInput::Texts(mut v)) => {
                one(v.len())?;
                self.encode(&v.remove(0), true)?
            }
            Some(PromptInput::IdLists(mut v)) => {
                one(v.len())?;
                check_ids(v.remove(0))?
            }
        };
        let p = entry.served.num_virtual_tokens();
        if ids.is_empty() && p == 0 {
            return Err(invalid(
                "empty prompt: the base model needs some input text",
            ));
        }
        let input = p + ids.len();
        if input > self.cfg.max_input_tokens {
            return Err(invalid(format!(
                "{input} input tokens ({p} virtual + {} text) exceed --max-input-tokens {}",
                ids.len(),
                self.cfg.max_input_tokens
            )));
        }
        let ctx = self.model.llama.max_positions();
        let max_tokens = r.max_tokens.unwrap_or(if r.until_eos {
            self.cfg
                .max_output_tokens
                .min(ctx.saturating_sub(input))
                .max(1) as i64
        } else {
            16
        });
        if max_tokens < 1 || max_tokens as u64 > self.cfg.max_output_tokens as u64 {
            return Err(invalid(format!(
                "max_tokens must be in 1..={} (--max-output-tokens), got {max_tokens}",
                self.cfg.max_output_tokens
            )));
        }
        let max_tokens = max_tokens as usize;
        if input + max_tokens > ctx {
            return Err(invalid(format!(
                "{input} input + {max_tokens} new tokens exceed the model's context of {ctx}"
            )));
        }
        let min_tokens = r.min_tokens.unwrap_or(0);
        if min_tokens < 0 || min_tokens > max_tokens as i64 {
            return Err(invalid(format!(
                "min_tokens must be in 0..=max_tokens, got {min_tokens}"
            )));
        }
        let temperature = r.temperature.unwrap_or(1.0);
        if !(temperature.is_finite() && (0.0..=100.0).contains(&temperature)) {
            return Err(invalid(format!(
                "temperature must be in [0, 100], got {temperature}"
            )));
        }
        let top_p = r.top_p.unwrap_or(1.0);
        let top_k = r.top_k.unwrap_or(0);
        if top_k < 0 {
            return Err(invalid(format!("top_k must be >= 0, got {top_k}")));
        }
        let stop = match r.stop {
            None => Vec::new(),
            Some(StopInput::One(s)) => vec![s],
            Some(StopInput::Many(v)) => v,
        };
        if stop.len() > 4 || stop.iter().any(|s| s.is_empty() || s.len() > 256) {
            return Err(invalid(
                "stop: at most 4 non-empty strings of at most 256 bytes",
            ));
        }
        let seed = r
            .seed
            .unwrap_or_else(|| self.next_id.load(Ordering::Relaxed) ^ now_unix());
        let sampling = Sampling {
            max_new_tokens: max_tokens,
            temperature: temperature as f32,
            top_k: top_k as usize,
            top_p: top_p as f32,
            seed,
            eos: if r.ignore_eos {
                Vec::new()
            } else {
                self.model.eos_ids()
            },
            min_new_tokens: min_tokens as usize,
            no_cache: false,
        };
        // top_p's range (and temperature's lower bound) as every sampler checks them.
        sampling.validate().map_err(ServeError::from_core)?;
        Ok(Job {
            entry,
            ids,
            sampling,
            stop,
            stream: r.stream,
            chat: false,
        })
    }

    /// Token ids of a text. `input`: it starts a sequence, so it gets the tokenizer's start
    /// tokens (Gemma's `<bos>`) like a PEFT input would; a rendered chat template already
    /// holds them.
    fn encode(&self, t: &str, input: bool) -> Result<Vec<u32>, ServeError> {
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

    /// Hand the job to the scheduler; events arrive on the returned channel.
    fn submit(
        &self,
        job: &Job,
    ) -> Result<(mpsc::UnboundedReceiver<Event>, CancelOnDrop), ServeError> {
        let (tx, rx) = mpsc::unbounded_channel();
        let cancel = Cancel::default();
        job.entry.requests.fetch_add(1, Ordering::Relaxed);
        self.scheduler
            .generate(GenRequest {
                prompt: job.entry.served.clone(),
                ids: job.ids.clone(),
                sampling: job.sampling.clone(),
                cancel: cancel.clone(),
                sink: Box::new(move |e| tx.send(e).is_ok()),
            })
            .map_err(|_| ServeError::Unavailable("the server is shutting down".into()))?;
        Ok((rx, CancelOnDrop(cancel)))
    }
}

/// Turns generated ids into text: holds back an incomplete UTF-8 tail, drops the EOS token,
/// and cuts at the first stop string.
struct Detok {
    ids: Vec<u32>,
    /// Bytes of text already handed out.
    sent: usize,
    stop: Vec<String>,
    stopped: bool,
}

impl Detok {
    fn new(stop: Vec<String>) -> Self {
        Detok {
            ids: Vec::new(),
            sent: 0,
            stop,
            stopped: false,
        }
    }

    /// Add a token; returns the new text that is safe to send.
    fn push(&mut self, model: &FrozenModel, tok: u32, eos: &[u32]) -> String {
        if self.stopped || eos.contains(&tok) {
            return String::new();
        }
        self.ids.push(tok);
        let text = model.decode(&self.ids).unwrap_or_default();
        // Stop strings: cut at the earliest match not already sent.
        if let Some(cut) = self.stop.iter().filter_map(|s| text.find(s.as_str())).min() {
            self.stopped = true;
            let out = text
                .get(self.sent..cut.max(self.sent))
                .unwrap_or("")
                .to_string();
            self.sent = cut.max(self.sent);
            return out;
        }
        let mut end = text.len();
        if text.ends_with('\u{FFFD}') {
            end -= '\u{FFFD}'.len_utf8();
        }
        // Keep back a tail that could be the start of a stop string.
        let hold = self
            .stop
            .iter()
            .map(|s| {
                (1..s.len())
                    .rev()
                    .find(|&k| s.is_char_boundary(k) && text.ends_with(&s[..k]))
                    .unwrap_or(0)
            })
            .max()
            .unwrap_or(0);
        end = end.min(text.len() - hold);
        if end <= self.sent || !text.is_char_boundary(end) {
            return String::new();
        }
        let out = text[self.sent..end].to_string();
        self.sent = end;
        out
    }

    /// What is left when the generation ends.
    fn finish(&mut self, model: &FrozenModel) -> String {
        if self.stopped {
            return String::new();
        }
        let text = model.decode(&self.ids).unwrap_or_default();
        let out = text.get(self.sent..).unwrap_or("").to_string();
        self.sent = text.len();
        out
    }
}

async fn completions(State(s): St, b: Result<Json<CompletionRequest>, JsonRejection>) -> Response {
    let r = body(b).and_then(|r| {
        let slot = s.admit()?;
        Ok((slot, s.validate(r)?))
    });
    finish_response(
        &s,
        match r {
            Ok((slot, job)) => run_job(s.clone(), slot, job).await,
            Err(e) => Err(e),
        },
    )
}

fn finish_response(s: &AppState, r: Result<Response, ServeError>) -> Response {
    match r {
        Ok(r) => r,
        Err(e) => {
            if e.status().is_server_error() {
                s.errors.fetch_add(1, Ordering::Relaxed);
            }
            if matches!(e, ServeError::Timeout(_)) {
                s.timeouts.fetch_add(1, Ordering::Relaxed);
            }
            e.into_response()
        }
    }
}

/// Run an admitted, validated job: a JSON answer or an SSE stream.
async fn run_job(s: Arc<AppState>, slot: Slot, job: Job) -> Result<Response, ServeError> {
    let id = format!(
        "{}-{}",
        if job.chat { "chatcmpl" } else { "cmpl" },
        s.next_id.fetch_add(1, Ordering::Relaxed)
    );
    let created = now_unix();
    let (rx, cancel) = s.submit(&job)?;
    let deadline = tokio::time::Instant::now() + s.cfg.timeout;
    if job.stream {
        return Ok(stream_response(
            s, job, id, created, rx, cancel, slot, deadline,
        ));
    }
    let mut rx = rx;
    let eos = s.model.eos_ids();
    let mut detok = Detok::new(job.stop.clone());
    let mut text = String::new();
    let mut ids = Vec::new();
    let finish = loop {
        let ev = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .map_err(|_| {
                ServeError::Timeout(format!(
                    "no answer within --timeout-s {}",
                    s.cfg.timeout.as_secs()
                ))
            })?;
        match ev {
            Some(Event::Token(t)) => {
                ids.push(t);
                text.push_str(&detok.push(&s.model, t, &eos));
                if detok.stopped {
                    cancel.0.cancel();
                    break "stop";
                }
            }
            Some(Event::Done(f)) => {
                text.push_str(&detok.finish(&s.model));
                break f.as_str();
            }
            Some(Event::Error(e)) => return Err(ServeError::Invalid(e)),
            None => {
                return Err(ServeError::Internal(
                    "the scheduler dropped the request".into(),
                ))
            }
        }
    };
    job.entry
        .tokens
        .fetch_add(ids.len() as u64, Ordering::Relaxed);
    drop(slot);
    let sp = &job.entry.served;
    let choice = if job.chat {
        json!({ "index": 0, "message": { "role": "assistant", "content": text }, "finish_reason": finish, "logprobs": null })
    } else {
        json!({ "index": 0, "text": text, "finish_reason": finish, "logprobs": null })
    };
    Ok(Json(json!({
        "id": id,
        "object": if job.chat { "chat.completion" } else { "text_completion" },
        "created": created,
        "model": sp.name,
        "choices": [choice],
        "usage": {
            "prompt_tokens": job.ids.len(),
            "completion_tokens": ids.len(),
            "total_tokens": job.ids.len() + ids.len(),
        },
        "softprompt": {
            "prompt": sp.name,
            "sha256": sp.sha256,
            "virtual_tokens": sp.num_virtual_tokens(),
            "token_ids": ids,
        }
    }))
    .into_response())
}

struct StreamState {
    s: Arc<AppState>,
    job: Job,
    id: String,
    created: u64,
    rx: mpsc::UnboundedReceiver<Event>,
    _cancel: CancelOnDrop,
    _slot: Slot,
    deadline: tokio::time::Instant,
    detok: Detok,
    n: usize,
    done: bool,
    sent_done: bool,
}

#[allow(clippy::too_many_arguments)]
fn stream_response(
    s: Arc<AppState>,
    job: Job,
    id: String,
    created: u64,
    rx: mpsc::UnboundedReceiver<Event>,
    cancel: CancelOnDrop,
    slot: Slot,
    deadline: tokio::time::Instant,
) -> Response {
    let detok = Detok::new(job.stop.clone());
    let st = StreamState {
        s,
        job,
        id,
        created,
        rx,
        _cancel: cancel,
        _slot: slot,
        deadline,
        detok,
        n: 0,
        done: false,
        sent_done: false,
    };
    let stream = futures_util::stream::unfold(st, |mut st| async move {
        if st.sent_done {
            return None;
        }
        if st.done {
            st.sent_done = true;
            return Some((
                Ok::<_, std::convert::Infallible>(SseEvent::default().data("[DONE]")),
                st,
            ));
        }
        let chunk = |st: &StreamState, text: &str, finish: Option<&str>| {
            let sp = &st.job.entry.served;
            let choice = if st.job.chat {
                json!({ "index": 0, "delta": { "content": text }, "finish_reason": finish, "logprobs": null })
            } else {
                json!({ "index": 0, "text": text, "finish_reason": finish, "logprobs": null })
            };
            let mut v = json!({
                "id": st.id,
                "object": if st.job.chat { "chat.completion.chunk" } else { "text_completion" },
                "created": st.created,
                "model": sp.name,
                "choices": [choice],
            });
            if finish.is_some() {
                v["usage"] = json!({
                    "prompt_tokens": st.job.ids.len(),
                    "completion_tokens": st.n,
                    "total_tokens": st.job.ids.len() + st.n,
                });
                v["softprompt"] = json!({ "prompt": sp.name, "sha256": sp.sha256, "virtual_tokens": sp.num_virtual_tokens() });
            }
            SseEvent::default().data(v.to_string())
        };
        let eos = st.s.model.eos_ids();
        loop {
            let ev = tokio::time::timeout_at(st.deadline, st.rx.recv()).await;
            let ev = match ev {
                Err(_) => {
                    st.s.timeouts.fetch_add(1, Ordering::Relaxed);
                    st.done = true;
                    let e = chunk(&st, "", Some("timeout"));
                    return Some((Ok(e), st));
                }
                Ok(ev) => ev,
            };
            match ev {
                Some(Event::Token(t)) => {
                    st.n += 1;
                    st.job.entry.tokens.fetch_add(1, Ordering::Relaxed);
                    let delta = st.detok.push(&st.s.model, t, &eos);
                    if st.detok.stopped {
                        st._cancel.0.cancel();
                        st.done = true;
                        let e = chunk(&st, &delta, Some("stop"));
                        return Some((Ok(e), st));
                    }
                    if !delta.is_empty() {
                        let e = chunk(&st, &delta, None);
                        return Some((Ok(e), st));
                    }
                }
                Some(Event::Done(f)) => {
                    let rest = st.detok.finish(&st.s.model);
                    st.done = true;
                    let e = chunk(&st, &rest, Some(f.as_str()));
                    return Some((Ok(e), st));
                }
                Some(Event::Error(msg)) => {
                    st.done = true;
                    let e = SseEvent::default()
                        .data(json!({ "error": { "message": msg } }).to_string());
                    return Some((Ok(e), st));
                }
                None => {
                    st.done = true;
                    let e = chunk(&st, "", Some(Finish::Cancelled.as_str()));
                    return Some((Ok(e), st));
                }
            }
        }
    });
    Sse::new(stream).into_response()
}

// ---------------------------------------------------------------- chat

/// A Jinja environment holding the model's chat template as "chat", with the helpers HF
/// templates use (`raise_exception`, Python string methods).
fn chat_env(template: &str) -> Result<minijinja::Environment<'static>, minijinja::Error> {
    let mut env = minijinja::Environment::new();
    // The template comes from the model file: bound its work (a chat template needs a few
    // thousand instructions per message).
    env.set_fuel(Some(1_000_000));
    env.set_recursion_limit(64);
    minijinja_contrib::add_to_environment(&mut env);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function(
        "raise_exception",
        |msg: String| -> Result<String, minijinja::Error> {
            Err(minijinja::Error::new(
                minijinja::ErrorKind::InvalidOperation,
                msg,
            ))
        },
    );
    env.add_template_owned("chat", template.to_string())?;
    Ok(env)
}

#[derive(Deserialize)]
struct ChatRequest {
    messages: Vec<Value>,
    /// OpenAI's newer name for `max_tokens`; wins when both are given.
    max_completion_tokens: Option<i64>,
    /// Every completion field (model, sampling, limits, stream, stop, ...); its `prompt` is
    /// replaced by the rendered messages.
    #[serde(flatten)]
    completion: CompletionRequest,
}

impl AppState {
    /// Render the messages with the chat template and tokenize them.
    fn render_chat(&self, messages: &[Value]) -> Result<Vec<i64>, ServeError> {
        let env = self.chat.as_ref().ok_or_else(|| {
            ServeError::NotFound("this model has no chat template: use /v1/completions".into())
        })?;
        if messages.is_empty() {
            return Err(invalid("messages must not be empty"));
        }
        // Normalise content: a string, or a list of {type: text, text} parts joined.
        let mut msgs = Vec::with_capacity(messages.len());
        for (i, m) in messages.iter().enumerate() {
            let role = m["role"]
                .as_str()
                .ok_or_else(|| invalid(format!("messages[{i}].role must be a string")))?;
            let content = match &m["content"] {
                Value::String(c) => c.clone(),
                Value::Array(parts) => parts
                    .iter()
                    .map(|p| p["text"].as_str().map(String::from))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| {
                        invalid(format!(
                            "messages[{i}].content: only text parts are supported"
                        ))
                    })?
                    .join(""),
                _ => return Err(invalid(format!("messages[{i}].content must be a string"))),
            };
            msgs.push(json!({ "role": role, "content": content }));
        }
        let tok = |id: Option<u32>| {
            id.and_then(|i| self.model.tokenizer.id_to_token(i))
                .unwrap_or_default()
        };
        let text = env
            .get_template("chat")
            .and_then(|t| {
                t.render(minijinja::context! {
                    messages => msgs,
                    add_generation_prompt => true,
                    bos_token => tok(self.model.llama.cfg.bos_token_id),
                    eos_token => tok(self.model.eos_ids().first().copied()),
                })
            })
            .map_err(|e| invalid(format!("chat template: {e}")))?;
        Ok(self
            .encode(&text, false)?
            .into_iter()
            .map(i64::from)
            .collect())
    }
}

async fn chat_completions(State(s): St, b: Result<Json<ChatRequest>, JsonRejection>) -> Response {
    let r = body(b).and_then(|r| {
        let slot = s.admit()?;
        let ids = s.render_chat(&r.messages)?;
        let mut c = r.completion;
        c.prompt = Some(PromptInput::Ids(ids));
        c.max_tokens = r.max_completion_tokens.or(c.max_tokens);
        c.until_eos = true;
        let mut job = s.validate(c)?;
        job.chat = true;
        Ok((slot, job))
    });
    finish_response(
        &s,
        match r {
            Ok((slot, job)) => run_job(s.clone(), slot, job).await,
            Err(e) => Err(e),
        },
    )
}

// ---------------------------------------------------------------- classify

#[derive(Deserialize)]
struct ClassifyBody {
    model: String,
    /// A text (fills the template's only field) or an object of the template's fields.
    input: Value,
    /// A built-in task name or a task spec; default: the task the prompt was trained on.
    task: Option<Value>,
    #[serde(default)]
    length_norm: Option<bool>,
}

async fn classify(State(s): St, b: Result<Json<ClassifyBody>, JsonRejection>) -> Response {
    let r = classify_inner(s.clone(), b).await;
    finish_response(&s, r)
}

async fn classify_inner(
    s: Arc<AppState>,
    b: Result<Json<ClassifyBody>, JsonRejection>,
) -> Result<Response, ServeError> {
    let slot = s.admit()?;
    let r = body(b)?;
    let entry = s.registry.get(&r.model)?;
    let spec: TaskSpec = match &r.task {
        Some(Value::String(name)) => softprompt_core::data::builtin_task(name)
            .ok_or_else(|| invalid(format!("no built-in task '{name}'")))?,
        Some(v) => serde_json::from_value(v.clone()).map_err(|e| invalid(format!("task: {e}")))?,
        None => entry
            .served
            .prompt
            .as_ref()
            .and_then(|p| p.meta.as_ref())
            .and_then(|m| m.task.clone())
            .ok_or_else(|| invalid(format!("'{}' has no trained task: give \"task\"", r.model)))
            .and_then(|t| {
                serde_json::from_value(t).map_err(|e| invalid(format!("stored task: {e}")))
            })?,
    };
    spec.validate().map_err(invalid)?;
    let length_norm = r.length_norm.unwrap_or(false);
    let model = s.model.clone();
    let input = r.input;
    let spec2 = spec.clone();
    let (example, cands) = tokio::task::spawn_blocking(move || {
        softprompt_core::train::eval::class_example(&model, &spec2, input)
    })
    .await
    .map_err(|e| ServeError::Internal(e.to_string()))?
    .map_err(ServeError::from_core)?;
    let n = entry.served.num_virtual_tokens()
        + example.ids.len()
        + example.cands.iter().map(Vec::len).max().unwrap_or(0);
    if n > s.cfg.max_input_tokens {
        return Err(invalid(format!(
            "{n} tokens exceed --max-input-tokens {}",
            s.cfg.max_input_tokens
        )));
    }
    entry.requests.fetch_add(1, Ordering::Relaxed);
    let (tx, rx) = tokio::sync::oneshot::channel();
    s.scheduler
        .classify(ClassifyRequest {
            prompt: entry.served.clone(),
            example,
            length_norm,
            reply: Box::new(move |r| {
                let _ = tx.send(r);
            }),
        })
        .map_err(|_| ServeError::Unavailable("the server is shutting down".into()))?;
    let scores = tokio::time::timeout(s.cfg.timeout, rx)
        .await
        .map_err(|_| ServeError::Timeout("no answer within --timeout-s".into()))?
        .map_err(|_| ServeError::Internal("the scheduler dropped the request".into()))?
        .map_err(ServeError::from_core)?;
    drop(slot);
    let probs = objective::softmax(&scores);
    let best = objective::argmax(&scores);
    let labels = spec.label_values();
    let sp = &entry.served;
    Ok(Json(json!({
        "object": "classification",
        "model": sp.name,
        "task": spec.name,
        "label": labels.get(best),
        "candidate": cands.get(best),
        "probabilities": labels.iter().zip(&probs).map(|(l, p)| (l.clone(), json!(p))).collect::<serde_json::Map<_, _>>(),
        "scores": scores,
        "softprompt": { "prompt": sp.name, "sha256": sp.sha256, "virtual_tokens": sp.num_virtual_tokens() },
    }))
    .into_response())
}

// ---------------------------------------------------------------- admin

fn authorize(s: &AppState, h: &HeaderMap) -> Result<(), ServeError> {
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

async fn admin_list(State(s): St, h: HeaderMap) -> Result<Json<Value>, ServeError> {
    authorize(&s, &h)?;
    let data: Vec<Value> = s
        .registry
        .list()
        .iter()
        .map(|(n, e)| prompt_json(n, e))
        .collect();
    Ok(Json(json!({ "object": "list", "data": data })))
}

#[derive(Deserialize)]
struct LoadBody {
    name: String,
}

async fn admin_load(
    State(s): St,
    h: HeaderMap,
    b: Result<Json<LoadBody>, JsonRejection>,
) -> Result<Json<Value>, ServeError> {
    authorize(&s, &h)?;
    let name = body(b)?.name;
    let s2 = s.clone();
    let n2 = name.clone();
    let e = tokio::task::spawn_blocking(move || s2.registry.load(&n2))
        .await
        .map_err(|e| ServeError::Internal(e.to_string()))??;
    Ok(Json(prompt_json(&name, &e)))
}

async fn admin_unload(
    State(s): St,
    h: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<Value>, ServeError> {
    authorize(&s, &h)?;
    let e = s.registry.unload(&name)?;
    Ok(Json(
        json!({ "id": name, "unloaded": true, "sha256": e.served.sha256 }),
    ))
}

// ---------------------------------------------------------------- metrics

async fn metrics(State(s): St) -> Response {
    use std::fmt::Write;
    let st = &s.scheduler.stats;
    let g = |a: &AtomicUsize| a.load(Ordering::Relaxed);
    let c = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let busy = c(&st.busy_us) as f64 / 1e6;
    let uptime = s.started.elapsed().as_secs_f64();
    let mut o = String::new();
    let mut m = |name: &str, kind: &str, help: &str, v: f64| {
        let _ = writeln!(o, "# HELP softprompt_{name} {help}\n# TYPE softprompt_{name} {kind}\nsoftprompt_{name} {v}");
    };
    m(
        "requests_total",
        "counter",
        "Requests to completions and classify.",
        c(&s.requests) as f64,
    );
    m(
        "rejected_total",
        "counter",
        "Requests refused with 429 (--max-concurrent).",
        c(&s.rejected) as f64,
    );
    m(
        "errors_total",
        "counter",
        "Requests failed with a 5xx.",
        c(&s.errors) as f64,
    );
    m(
        "timeouts_total",
        "counter",
        "Requests past --timeout-s.",
        c(&s.timeouts) as f64,
    );
    m(
        "in_flight",
        "gauge",
        "Admitted requests not yet answered.",
        g(&s.in_flight) as f64,
    );
    m(
        "queue_depth",
        "gauge",
        "Requests waiting for the scheduler.",
        g(&st.queued) as f64,
    );
    m(
        "active_sequences",
        "gauge",
        "Sequences decoding.",
        g(&st.active) as f64,
    );
    m(
        "batch_size",
        "gauge",
        "Rows in the last decode step.",
        g(&st.last_batch) as f64,
    );
    m(
        "decode_steps_total",
        "counter",
        "Decode steps.",
        c(&st.decode_steps) as f64,
    );
    m(
        "decode_rows_total",
        "counter",
        "Rows over all decode steps (mean batch = rows / steps).",
        c(&st.decode_rows) as f64,
    );
    m(
        "prefill_tokens_total",
        "counter",
        "Text tokens prefilled.",
        c(&st.prefill_tokens) as f64,
    );
    m(
        "generated_tokens_total",
        "counter",
        "Tokens generated.",
        c(&st.generated_tokens) as f64,
    );
    m(
        "classified_total",
        "counter",
        "Classification requests scored.",
        c(&st.classified) as f64,
    );
    m(
        "cancelled_total",
        "counter",
        "Generations cancelled (client gone, stop string, timeout).",
        c(&st.cancelled) as f64,
    );
    m(
        "busy_seconds_total",
        "counter",
        "Seconds the scheduler spent computing.",
        busy,
    );
    m(
        "tokens_per_second",
        "gauge",
        "Generated tokens per busy second since start.",
        if busy > 0.0 {
            c(&st.generated_tokens) as f64 / busy
        } else {
            0.0
        },
    );
    m("uptime_seconds", "gauge", "Seconds since start.", uptime);
    m(
        "prompts_loaded",
        "gauge",
        "Soft prompts loaded.",
        s.registry.len() as f64,
    );
    let _ = writeln!(o, "# HELP softprompt_prompt_requests_total Requests per prompt.\n# TYPE softprompt_prompt_requests_total counter");
    let list = s.registry.list();
    for (n, e) in &list {
        let _ = writeln!(
            o,
            "softprompt_prompt_requests_total{{prompt=\"{n}\"}} {}",
            c(&e.requests)
        );
    }
    let _ = writeln!(o, "# HELP softprompt_prompt_tokens_total Tokens generated per prompt.\n# TYPE softprompt_prompt_tokens_total counter");
    for (n, e) in &list {
        let _ = writeln!(
            o,
            "softprompt_prompt_tokens_total{{prompt=\"{n}\"}} {}",
            c(&e.tokens)
        );
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        o,
    )
        .into_response()
}

/// Run a server to completion on its own runtime: bind, report through `on_ready` (address,
/// prompts loaded, prompts that failed), serve until SIGTERM or Ctrl-C, then stop accepting
/// and drain the requests in flight.
pub fn serve_blocking(
    cfg: ServeConfig,
    model: FrozenModel,
    on_ready: impl FnOnce(SocketAddr, usize, &[(String, ServeError)]),
) -> Result<(), ServeError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("softprompt-http")
        .build()
        .map_err(|e| ServeError::Internal(format!("tokio runtime: {e}")))?;
    rt.block_on(async move {
        let (server, failed) = Server::bind(cfg, model).await?;
        let addr = server
            .local_addr()
            .map_err(|e| ServeError::Internal(e.to_string()))?;
        on_ready(addr, server.prompts_loaded(), &failed);
        server
            .run(shutdown_signal())
            .await
            .map_err(|e| ServeError::Internal(e.to_string()))
    })
}

/// SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    eprintln!("softprompt serve: shutting down, draining requests in flight");
}
