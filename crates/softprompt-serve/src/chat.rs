//! `POST /v1/chat/completions`: the model's chat template (Jinja, from the model file)
//! renders the messages; the rest is a completion.

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::response::Response;
use axum::{Extension, Json};
use serde_json::{json, Value};

use crate::completions::run_job;
use crate::error::ServeError;
use crate::router::RequestLog;
use crate::state::{body, invalid, AppState, St};
use crate::types::{ChatRequest, PromptInput};

/// A Jinja environment holding the model's chat template as "chat", with the helpers HF
/// templates use (`raise_exception`, Python string methods).
pub fn chat_env(template: &str) -> Result<minijinja::Environment<'static>, minijinja::Error> {
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

impl AppState {
    /// Render the messages with the chat template and tokenize them.
    pub fn render_chat(&self, messages: &[Value]) -> Result<Vec<i64>, ServeError> {
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

/// `POST /v1/chat/completions`: the messages rendered with the model's chat template, then
/// answered as a completion (JSON or SSE) in the chat format.
pub async fn chat_completions(
    State(s): St,
    Extension(log): Extension<Arc<RequestLog>>,
    b: Result<Json<ChatRequest>, JsonRejection>,
) -> Response {
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
    s.finish_response(match r {
        Ok((slot, job)) => run_job(s.clone(), slot, job, log).await,
        Err(e) => Err(e),
    })
}
