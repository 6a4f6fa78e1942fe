//! `POST /v1/completions`: validation against the limits, the job handed to the scheduler,
//! and the answer as one JSON object or as an SSE stream (`data: {...}` chunks, then
//! `data: [DONE]`). Chat completions (`chat.rs`) end here too.
//!
//! Scoring for evaluation harnesses: `logprobs: k` (0..=[`MAX_LOGPROBS`]) and `echo` answer
//! in OpenAI's legacy shape (`tokens`, `token_logprobs`, `top_logprobs`, `text_offset`). The
//! log-probs come from one exact forward pass over prompt + generated tokens
//! ([`infer::score_top`], the computation behind `softprompt score`), so they are the same bits
//! as `softprompt score --json` on the same text and prompt. Without a soft prompt the first
//! token has no predictor (`null`); with one it is predicted from the last virtual token.
//! `prompt` may be a list of up to [`MAX_BATCH`] texts or id lists (one choice each, by
//! `index`), without streaming. `max_tokens: 0` with `echo` scores the prompt alone.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde_json::json;
use softprompt_core::infer::scheduler::{Cancel, Event, Finish, GenRequest};
use softprompt_core::infer::{self, Sampling};
use tokio::sync::mpsc;

use crate::detok::Detok;
use crate::error::ServeError;
use crate::registry::Entry;
use crate::router::RequestLog;
use crate::state::{blocking, body, invalid, now_unix, AppState, CancelOnDrop, Slot, St};
use crate::types::{CompletionRequest, PromptInput, StopInput};

/// A validated completion request.
/// Most alternatives per token that `logprobs` may ask for.
pub const MAX_LOGPROBS: i64 = 20;
/// Most prompts in one request (`prompt` as a list).
pub const MAX_BATCH: usize = 64;

pub struct Job {
    pub entry: Arc<Entry>,
    pub ids: Vec<u32>,
    /// Further prompts of a list (choices 1..), answered one after the other.
    pub more: Vec<Vec<u32>>,
    /// `logprobs: k`: the log-probs of the answer's tokens and the k best at each.
    pub logprobs: Option<usize>,
    /// The prompt's tokens come first in the answer (text and log-probs).
    pub echo: bool,
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
        let logprobs = match &r.logprobs {
            None | Some(serde_json::Value::Null) => None,
            Some(v) => match v.as_i64() {
                Some(k) if (0..=MAX_LOGPROBS).contains(&k) => Some(k as usize),
                _ => {
                    return Err(invalid(format!(
                        "logprobs must be an integer in 0..={MAX_LOGPROBS}, got {v}"
                    )))
                }
            },
        };
        if r.stream && (r.echo || logprobs.is_some()) {
            return Err(invalid(
                "echo and logprobs are not supported with stream: send stream: false",
            ));
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
        let mut prompts = match r.prompt {
            None => vec![Vec::new()],
            Some(PromptInput::Text(t)) => vec![self.encode(&t, true)?],
            Some(PromptInput::Ids(v)) => vec![check_ids(v)?],
            Some(PromptInput::Texts(v)) => v
                .iter()
                .map(|t| self.encode(t, true))
                .collect::<Result<_, _>>()?,
            Some(PromptInput::IdLists(v)) => {
                v.into_iter().map(check_ids).collect::<Result<_, _>>()?
            }
        };
        if prompts.is_empty() || prompts.len() > MAX_BATCH {
            return Err(invalid(format!(
                "prompt: a list of 1..={MAX_BATCH} prompts, got {}",
                prompts.len()
            )));
        }
        if prompts.len() > 1 && r.stream {
            return Err(invalid("a list of prompts cannot be streamed"));
        }
        let p = entry.served.num_virtual_tokens();
        let mut input = 0;
        for ids in &prompts {
            if ids.is_empty() && p == 0 {
                return Err(invalid(
                    "empty prompt: the base model needs some input text",
                ));
            }
            input = input.max(p + ids.len());
            if p + ids.len() > self.cfg.max_input_tokens {
                return Err(invalid(format!(
                    "{} input tokens ({p} virtual + {} text) exceed --max-input-tokens {}",
                    p + ids.len(),
                    ids.len(),
                    self.cfg.max_input_tokens
                )));
            }
        }
        let ids = prompts.remove(0);
        let ctx = self.model.llama.max_positions();
        let max_tokens = r.max_tokens.unwrap_or(if r.until_eos {
            self.cfg
                .max_output_tokens
                .min(ctx.saturating_sub(input))
                .max(1) as i64
        } else {
            16
        });
        let least = if r.echo { 0 } else { 1 };
        if max_tokens < least || max_tokens as u64 > self.cfg.max_output_tokens as u64 {
            return Err(invalid(format!(
                "max_tokens must be in {least}..={} (--max-output-tokens; 0 only with echo), got {max_tokens}",
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
        if min_tokens < 0 || min_tokens > max_tokens.max(1) as i64 {
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
        if max_tokens > 0 {
            sampling.validate().map_err(ServeError::from_core)?;
        }
        Ok(Job {
            entry,
            ids,
            more: prompts,
            logprobs,
            echo: r.echo,
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
        ids: &[u32],
    ) -> Result<(mpsc::UnboundedReceiver<Event>, CancelOnDrop), ServeError> {
        let (tx, rx) = mpsc::unbounded_channel();
        let cancel = Cancel::default();
        job.entry.requests.fetch_add(1, Ordering::Relaxed);
        self.scheduler
            .generate(GenRequest {
                prompt: job.entry.served.clone(),
                ids: ids.to_vec(),
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
        Ok((slot, job)) if job.echo || job.logprobs.is_some() || !job.more.is_empty() => {
            run_scored(s.clone(), slot, job, log).await
        }
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
    let (rx, cancel) = s.submit(&job, &job.ids)?;
    let deadline = tokio::time::Instant::now() + s.cfg.timeout;
    if job.stream {
        return Ok(stream_response(
            s, job, id, created, rx, cancel, slot, deadline, log,
        ));
    }
    let (text, ids, finish) = collect(&s, &job, rx, cancel, deadline, &log).await?;
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

/// The generated text, ids and finish reason of one submitted generation.
async fn collect(
    s: &AppState,
    job: &Job,
    mut rx: mpsc::UnboundedReceiver<Event>,
    cancel: CancelOnDrop,
    deadline: tokio::time::Instant,
    log: &RequestLog,
) -> Result<(String, Vec<u32>, &'static str), ServeError> {
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
    Ok((text, ids, finish))
}

/// A non-streamed answer with `logprobs`/`echo`, or for a list of prompts: each prompt is
/// generated (unless `max_tokens` is 0), then prompt + generated tokens are scored exactly.
async fn run_scored(
    s: Arc<AppState>,
    slot: Slot,
    job: Job,
    log: Arc<RequestLog>,
) -> Result<Response, ServeError> {
    log.set_prompt(&job.entry.served.name, job.ids.len());
    let id = format!("cmpl-{}", s.next_id.fetch_add(1, Ordering::Relaxed));
    let created = now_unix();
    let deadline = tokio::time::Instant::now() + s.cfg.timeout;
    let sp = job.entry.served.clone();
    let p = sp.num_virtual_tokens();
    let (mut choices, mut n_prompt, mut n_gen) = (Vec::new(), 0, 0);
    let prompts: Vec<&Vec<u32>> = std::iter::once(&job.ids).chain(&job.more).collect();
    for (index, ids) in prompts.into_iter().enumerate() {
        let (mut text, gen, finish) = if job.sampling.max_new_tokens == 0 {
            (String::new(), Vec::new(), "length")
        } else {
            let (rx, cancel) = s.submit(&job, ids)?;
            collect(&s, &job, rx, cancel, deadline, &log).await?
        };
        job.entry
            .tokens
            .fetch_add(gen.len() as u64, Ordering::Relaxed);
        n_prompt += ids.len();
        n_gen += gen.len();
        let start = if job.echo { 0 } else { ids.len() };
        if job.echo {
            text = s.model.decode(ids).map_err(ServeError::from_core)? + &text;
        }
        let logprobs = match job.logprobs {
            None => serde_json::Value::Null,
            Some(k) => {
                let full: Vec<u32> = ids.iter().chain(&gen).copied().collect();
                let scores = if p + full.len() < 2 {
                    Vec::new() // one token, no predictor
                } else {
                    let (model, sp, full) = (s.model.clone(), sp.clone(), full.clone());
                    blocking(move || infer::score_top(&model.llama, sp.view()?, &full, k))
                        .await?
                        .map_err(ServeError::from_core)?
                };
                let first = full.len() - scores.len(); // 1 without a soft prompt, else 0
                let piece = |t: u32| s.model.decode(&[t]).map_err(ServeError::from_core);
                let (mut tokens, mut lps, mut tops, mut offsets) =
                    (Vec::new(), Vec::new(), Vec::new(), Vec::new());
                for i in start..full.len() {
                    tokens.push(piece(full[i])?);
                    let before = s
                        .model
                        .decode(&full[start..i])
                        .map_err(ServeError::from_core)?;
                    offsets.push(before.chars().count());
                    match i.checked_sub(first).map(|j| &scores[j]) {
                        None => {
                            lps.push(serde_json::Value::Null);
                            tops.push(serde_json::Value::Null);
                        }
                        Some(ts) => {
                            lps.push(json!(ts.logprob));
                            let mut m = serde_json::Map::new();
                            for &(t, l) in &ts.top {
                                m.entry(piece(t)?).or_insert(json!(l));
                            }
                            tops.push(serde_json::Value::Object(m));
                        }
                    }
                }
                json!({ "tokens": tokens, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets })
            }
        };
        choices.push(
            json!({ "index": index, "text": text, "finish_reason": finish, "logprobs": logprobs }),
        );
    }
    drop(slot);
    Ok(Json(json!({
        "id": id,
        "object": "text_completion",
        "created": created,
        "model": sp.name,
        "choices": choices,
        "usage": { "prompt_tokens": n_prompt, "completion_tokens": n_gen, "total_tokens": n_prompt + n_gen },
        "softprompt": { "prompt": sp.name, "sha256": sp.sha256, "virtual_tokens": p },
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
