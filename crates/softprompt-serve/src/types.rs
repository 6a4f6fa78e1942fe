//! The JSON bodies the endpoints accept (answers are built with `json!` where they are made).

use serde::Deserialize;
use serde_json::Value;

/// `prompt`: a text, a list of token ids, or a one-element list of either.
#[derive(Deserialize)]
#[serde(untagged)]
pub enum PromptInput {
    Text(String),
    Ids(Vec<i64>),
    Texts(Vec<String>),
    IdLists(Vec<Vec<i64>>),
}

/// `stop`: one string or a list.
#[derive(Deserialize)]
#[serde(untagged)]
pub enum StopInput {
    One(String),
    Many(Vec<String>),
}

/// `POST /v1/completions` (OpenAI's fields; those not supported are refused when set).
#[derive(Deserialize)]
pub struct CompletionRequest {
    pub model: String,
    #[serde(default)]
    pub prompt: Option<PromptInput>,
    pub max_tokens: Option<i64>,
    pub min_tokens: Option<i64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<i64>,
    pub seed: Option<u64>,
    #[serde(default)]
    pub stream: bool,
    pub stop: Option<StopInput>,
    pub n: Option<i64>,
    pub best_of: Option<i64>,
    #[serde(default)]
    pub echo: bool,
    pub logprobs: Option<Value>,
    pub presence_penalty: Option<f64>,
    pub frequency_penalty: Option<f64>,
    #[serde(default)]
    pub ignore_eos: bool,
    /// Chat: without max_tokens, generate until EOS (up to --max-output-tokens and the context).
    #[serde(skip)]
    pub until_eos: bool,
}

/// `POST /v1/chat/completions`.
#[derive(Deserialize)]
pub struct ChatRequest {
    pub messages: Vec<Value>,
    /// OpenAI's newer name for `max_tokens`; wins when both are given.
    pub max_completion_tokens: Option<i64>,
    /// Every completion field (model, sampling, limits, stream, stop, ...); its `prompt` is
    /// replaced by the rendered messages.
    #[serde(flatten)]
    pub completion: CompletionRequest,
}

/// `POST /v1/classify`.
#[derive(Deserialize)]
pub struct ClassifyBody {
    /// A served prompt's name, or a list of names of one task: an ensemble whose class
    /// probabilities are averaged.
    pub model: OneOrMany,
    /// A text (fills the template's only field) or an object of the template's fields.
    pub input: Value,
    /// A built-in task name or a task spec; default: the task the prompt was trained on.
    pub task: Option<Value>,
    #[serde(default)]
    pub length_norm: Option<bool>,
}

/// `POST /admin/prompts`: load `DIR/NAME`.
#[derive(Deserialize)]
pub struct LoadBody {
    pub name: String,
}

/// `PUT /admin/prompts/{name}`: the prompt folder's files, base64.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UploadBody {
    pub files: std::collections::BTreeMap<String, String>,
}

/// A string, or a list of strings.
#[derive(Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn names(&self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s.clone()],
            OneOrMany::Many(v) => v.clone(),
        }
    }
}
