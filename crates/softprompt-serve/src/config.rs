//! The server's settings: every limit is a flag of `softprompt serve`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

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
    /// Prompts in one `/v1/classify` ensemble.
    pub max_ensemble: usize,
    /// Per-request deadline.
    pub timeout: Duration,
    /// Rescan the prompt folder this often (None: scanned once at start).
    pub watch_interval: Option<Duration>,
    /// Largest admin upload body (`PUT /admin/prompts/{name}`).
    pub max_prompt_upload_bytes: usize,
    /// Playground uploads: largest file (bytes) and most rows.
    pub max_upload_bytes: usize,
    pub max_upload_rows: usize,
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
            max_ensemble: 8,
            timeout: Duration::from_secs(120),
            watch_interval: None,
            max_prompt_upload_bytes: 16 << 20,
            max_upload_bytes: 8 << 20,
            max_upload_rows: 50_000,
        }
    }
}
