//! `softprompt serve`, `softprompt loadtest` and `softprompt init`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use softprompt_core::compute::weight::WeightFormat;
use softprompt_core::prompt::SoftPrompt;
use softprompt_core::train::{trainer, Init};
use softprompt_serve::loadtest::{self, LoadConfig};
use softprompt_serve::ServeConfig;

use crate::{load_model, ModelArgs, TaskArgs};

#[derive(Args)]
pub struct ServeArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Folder of soft-prompt folders; each `DIR/NAME` is served as model `NAME`.
    #[arg(long)]
    prompts: Option<PathBuf>,
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
    /// Largest request body (bytes); larger ones get 413.
    #[arg(long, default_value_t = 1 << 20)]
    max_body_bytes: usize,
    /// Most prompts loaded at once.
    #[arg(long, default_value_t = 1000)]
    max_prompts: usize,
    /// Per-request deadline in seconds (504 after it; a stream ends with finish_reason "timeout").
    #[arg(long, default_value_t = 120)]
    timeout_s: u64,
}

pub fn serve(a: ServeArgs) -> Result<()> {
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
    // a row-exact product, the bf16 tiles do not.
    anyhow::ensure!(
        a.model.weights != WeightFormat::Bf16,
        "serve: --weights bf16 is not batch-invariant; use f32 or quantized"
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
        timeout: Duration::from_secs(a.timeout_s),
    };
    softprompt_serve::serve_blocking(cfg, model, |addr, n, failed| {
        for (name, e) in failed {
            eprintln!("softprompt serve: skipped prompt '{name}': {e}");
        }
        eprintln!("softprompt serve: {n} prompts loaded");
        // Tests and scripts read this line for the address.
        eprintln!("softprompt serve: listening on http://{addr}");
    })?;
    eprintln!("softprompt serve: stopped");
    Ok(())
}

#[derive(Args)]
pub struct LoadtestArgs {
    /// Server root.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    #[arg(long, default_value_t = 32)]
    clients: usize,
    #[arg(long, default_value_t = 120)]
    duration_s: u64,
    /// Stop after this many requests (0 = until the duration ends).
    #[arg(long, default_value_t = 0)]
    max_requests: usize,
    /// Comma-separated prompt names, or "all" (every prompt the server lists, base excluded).
    #[arg(long, default_value = "all")]
    prompts: String,
    /// Use only the first N of those prompts.
    #[arg(long)]
    limit_prompts: Option<usize>,
    /// Inputs, one per line (default: 8 built-in English texts).
    #[arg(long)]
    inputs: Option<PathBuf>,
    #[arg(long, default_value_t = 16)]
    max_tokens: usize,
    /// Only greedy requests (default: half of them sample with a fixed seed).
    #[arg(long)]
    greedy_only: bool,
    /// Skip replaying each distinct request alone to compare answers.
    #[arg(long)]
    no_check: bool,
    #[arg(long)]
    json: bool,
}

pub fn loadtest(a: LoadtestArgs) -> Result<()> {
    let url = a.url.trim_end_matches('/').to_string();
    let mut prompts: Vec<String> = if a.prompts == "all" {
        let v: serde_json::Value = ureq::get(&format!("{url}/v1/models"))
            .call()
            .with_context(|| format!("{url}/v1/models"))?
            .into_json()?;
        let base = v["data"][0]["id"].as_str().unwrap_or("base").to_string();
        v["data"]
            .as_array()
            .map(|d| {
                d.iter()
                    .filter_map(|m| m["id"].as_str().map(String::from))
                    .filter(|n| *n != base || d.len() == 1)
                    .collect()
            })
            .unwrap_or_default()
    } else {
        a.prompts.split(',').map(|s| s.trim().to_string()).collect()
    };
    if let Some(n) = a.limit_prompts {
        prompts.truncate(n);
    }
    let inputs = match &a.inputs {
        Some(f) => std::fs::read_to_string(f)
            .with_context(|| format!("reading {}", f.display()))?
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(String::from)
            .collect(),
        None => loadtest::default_inputs(),
    };
    let cfg = LoadConfig {
        url,
        clients: a.clients,
        duration: Duration::from_secs(a.duration_s),
        max_requests: a.max_requests,
        prompts,
        inputs,
        max_tokens: a.max_tokens,
        mix_sampling: !a.greedy_only,
        check: !a.no_check,
    };
    eprintln!(
        "loadtest: {} clients, {} prompts, {} inputs, up to {} s",
        cfg.clients,
        cfg.prompts.len(),
        cfg.inputs.len(),
        a.duration_s
    );
    let rep = loadtest::run(&cfg, |m| eprintln!("loadtest: {m}")).map_err(anyhow::Error::msg)?;
    if a.json {
        let mut v = rep.to_json();
        v["clients"] = cfg.clients.into();
        v["prompts"] = cfg.prompts.len().into();
        println!("{v}");
    } else {
        println!("{}", rep.table());
        for e in &rep.error_samples {
            println!("error: {e}");
        }
    }
    anyhow::ensure!(
        rep.errors == 0 && rep.mismatches == 0,
        "{} errors, {} mismatches",
        rep.errors,
        rep.mismatches
    );
    Ok(())
}

#[derive(Args)]
pub struct InitArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Output prompt folder (with --count > 1: the parent folder of NAME000, NAME001, ...).
    #[arg(long, short)]
    out: PathBuf,
    /// random[:range], vocab[:top], text:<words>, labels (needs --task), file:<prompt folder>.
    #[arg(long, default_value = "vocab")]
    init: String,
    #[arg(long, default_value_t = 20)]
    virtual_tokens: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Make this many prompts (seeds seed, seed+1, ...).
    #[arg(long, default_value_t = 1)]
    count: usize,
    /// Name prefix with --count.
    #[arg(long, default_value = "p")]
    name: String,
    #[command(flatten)]
    task: TaskArgs,
}

/// A soft prompt without training: from vocabulary rows, a text (a hard prompt turned soft),
/// random values, or the task's label words.
pub fn init(a: InitArgs) -> Result<()> {
    let model = load_model(&a.model)?;
    let init: Init = a.init.parse()?;
    let spec = a.task.resolve(None, Some("demo"))?;
    anyhow::ensure!(a.count >= 1, "--count must be >= 1");
    for i in 0..a.count {
        let seed = a.seed + i as u64;
        let emb = trainer::init_embeddings(&model, &init, a.virtual_tokens, seed, &spec)?;
        let mut p = SoftPrompt::for_model(&model, emb);
        if let Some(m) = p.meta.as_mut() {
            m.training =
                Some(serde_json::json!({ "init": a.init, "seed": seed, "trained_steps": 0 }));
            if matches!(init, Init::Labels) {
                m.task = serde_json::to_value(&spec).ok();
            }
        }
        let dir = if a.count == 1 {
            a.out.clone()
        } else {
            a.out.join(format!("{}{i:03}", a.name))
        };
        p.save(&dir)?;
        if a.count == 1 || i + 1 == a.count {
            eprintln!("softprompt: wrote {}", dir.display());
        }
    }
    Ok(())
}
