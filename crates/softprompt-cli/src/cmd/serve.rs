//! `softprompt serve`: the server's flags, and its start-up lines.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use softprompt_core::compute::weight::WeightFormat;
use softprompt_serve::ServeConfig;

use super::common::{load_model, ModelArgs};

#[derive(Args)]
pub struct ServeArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Folder of soft-prompt folders (the store); each `DIR/NAME` is served as model `NAME`.
    #[arg(long)]
    prompts: Option<PathBuf>,
    /// Rescan --prompts every this many ms, loading added or changed prompt folders and
    /// unloading removed ones (0: scan once at start). Polling, not file events: it works on
    /// shared storage (NFS) where another host's writes raise no event here.
    #[arg(long, default_value_t = 0)]
    watch_interval_ms: u64,
    /// Largest admin prompt upload (PUT /admin/prompts/NAME) body, bytes.
    #[arg(long, default_value_t = 16 << 20)]
    max_prompt_upload_bytes: usize,
    /// Address to listen on (port 0: any free port; the address is printed).
    #[arg(long, default_value = "127.0.0.1:8080")]
    bind: std::net::SocketAddr,
    /// Model name that addresses the base model without a soft prompt.
    #[arg(long, default_value = "base")]
    base_name: String,
    /// File holding the bearer key of the admin endpoints (or set SOFTPROMPT_ADMIN_KEY).
    /// Without a key the admin endpoints answer 403.
    #[arg(long)]
    admin_key_file: Option<PathBuf>,
    /// Requests in flight beyond which new ones get 429 immediately.
    #[arg(long, default_value_t = 64)]
    max_concurrent: usize,
    /// Sequences decoded together in one batch (others wait in the queue).
    #[arg(long, default_value_t = 64)]
    max_batch: usize,
    /// Input tokens per request, soft-prompt virtual tokens included.
    #[arg(long, default_value_t = 2048)]
    max_input_tokens: usize,
    /// Largest `max_tokens` a request may ask for.
    #[arg(long, default_value_t = 512)]
    max_output_tokens: usize,
    /// Most prompts in one /v1/classify ensemble ("model": [NAME, ...]).
    #[arg(long, default_value_t = 8)]
    max_ensemble: usize,
    /// Largest request body (bytes); larger ones get 413.
    #[arg(long, default_value_t = 1 << 20)]
    max_body_bytes: usize,
    /// Most prompts loaded at once.
    #[arg(long, default_value_t = 1000)]
    max_prompts: usize,
    /// Per-request deadline in seconds (504 after it; a stream ends with finish_reason "timeout").
    #[arg(long, default_value_t = 120)]
    timeout_s: u64,
    /// Largest file (bytes) the playground at `/` accepts for training.
    #[arg(long, default_value_t = 8 << 20)]
    max_upload_bytes: usize,
    /// Most rows of a file the playground accepts for training.
    #[arg(long, default_value_t = 50_000)]
    max_upload_rows: usize,
}

pub fn run(a: ServeArgs) -> Result<()> {
    let admin_key = match (&a.admin_key_file, std::env::var("SOFTPROMPT_ADMIN_KEY")) {
        (Some(f), _) => Some(
            std::fs::read_to_string(f)
                .with_context(|| format!("reading --admin-key-file {}", f.display()))?
                .trim()
                .to_string(),
        ),
        (None, Ok(k)) => Some(k.trim().to_string()),
        (None, Err(_)) => None,
    };
    if admin_key.as_ref().is_some_and(|k| k.len() < 16) {
        anyhow::bail!("the admin key must be at least 16 characters");
    }
    anyhow::ensure!(
        a.max_concurrent > 0 && a.max_batch > 0,
        "--max-concurrent and --max-batch must be > 0"
    );
    // The server promises answers independent of batch mates: f32 and quantized weights have
    // a row-exact product, and so have the bf16 kernels on AMX and AVX512-BF16 (not the
    // portable bf16 path).
    anyhow::ensure!(
        a.model.weights != WeightFormat::Bf16 || softprompt_core::compute::bf16::batch_invariant(),
        "serve: --weights bf16 is batch-invariant only on CPUs with AMX or AVX512-BF16, and \
         this one has neither; use f32 or quantized"
    );
    let model = load_model(&a.model)?;
    let cfg = ServeConfig {
        bind: a.bind,
        prompts: a.prompts.clone(),
        base_name: a.base_name,
        admin_key,
        max_concurrent: a.max_concurrent,
        max_batch: a.max_batch,
        max_input_tokens: a.max_input_tokens,
        max_output_tokens: a.max_output_tokens,
        max_body_bytes: a.max_body_bytes,
        max_prompts: a.max_prompts,
        max_ensemble: a.max_ensemble,
        timeout: Duration::from_secs(a.timeout_s),
        watch_interval: (a.watch_interval_ms > 0)
            .then(|| Duration::from_millis(a.watch_interval_ms)),
        max_prompt_upload_bytes: a.max_prompt_upload_bytes,
        max_upload_bytes: a.max_upload_bytes,
        max_upload_rows: a.max_upload_rows,
    };
    softprompt_serve::serve_blocking(cfg, model, |addr, n, failed| {
        for (name, e) in failed {
            tracing::warn!(prompt = %name, "skipped prompt: {e}");
        }
        eprintln!("softprompt serve: {n} prompts loaded");
        // Tests and scripts read this line for the address.
        eprintln!("softprompt serve: listening on http://{addr}");
        eprintln!("softprompt serve: playground at http://{addr}/");
    })?;
    tracing::info!("stopped");
    Ok(())
}
