//! `POST /v1/completions`: validation against the limits, the job handed to the scheduler,
//! and the answer as one JSON object or as an SSE stream (`data: {...}` chunks, then
//! `data: [DONE]`). Chat completions (`chat.rs`) end here too.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde_json::json;
use softprompt_core::infer::scheduler::{Cancel, Event, Finish, GenRequest};
use softprompt_core::infer::Sampling;
use tokio::sync::mpsc;

use crate::detok::Detok;
use crate::error::ServeError;
use crate::registry::Entry;
use crate::router::RequestLog;
use crate::state::{body, invalid, now_unix, AppState, CancelOnDrop, Slot, St};
use crate::types::{CompletionRequest, PromptInput, StopInput};

/// A validated completion request.
pub struct Job {
    pub entry: Arc<Entry>,
    pub ids: Vec<u32>,
    pub sampling: Sampling,
    pub stop: Vec<String>,
    pub stream: bool,
    /// Answer in the chat format (`chat.completion`, `message`/`delta`).
    pub chat: bool,
}

impl AppState {
    /// Check a completion request against the limits and the model: a job, or a 404/422.
    pub fn validate(&self, r: CompletionRequest) -> Result<Job, ServeError> {
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

    /// Hand the job to the scheduler; events arrive on the returned channel.
    pub fn submit(
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

/// `POST /v1/completions`.
pub async fn completions(
    State(s): St,
    Extension(log): Extension<Arc<RequestLog>>,
    b: Result<Json<CompletionRequest>, JsonRejection>,
) -> Response {
    let r = body(b).and_then(|r| {
        let slot = s.admit()?;
        Ok((slot, s.validate(r)?))
    });
    s.finish_response(match r {
        Ok((slot, job)) => run_job(s.clone(), slot, job, log).await,
        Err(e) => Err(e),
    })
}

/// Run an admitted, validated job: a JSON answer or an SSE stream.
pub async fn run_job(
    s: Arc<AppState>,
    slot: Slot,
    job: Job,
    log: Arc<RequestLog>,
) -> Result<Response, ServeError> {
    log.set_prompt(&job.entry.served.name, job.ids.len());
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
            s, job, id, created, rx, cancel, slot, deadline, log,
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
                log.token(&s.metrics);
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
    log: Arc<RequestLog>,
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
    log: Arc<RequestLog>,
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
        log,
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
                    st.s.metrics.timeouts.fetch_add(1, Ordering::Relaxed);
                    st.done = true;
                    let e = chunk(&st, "", Some("timeout"));
                    return Some((Ok(e), st));
                }
                Ok(ev) => ev,
            };
            match ev {
                Some(Event::Token(t)) => {
                    st.log.token(&st.s.metrics);
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
