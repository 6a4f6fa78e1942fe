//! `softprompt export`: a model (e.g. a GGUF) written as a Hugging Face folder.

use std::path::PathBuf;

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use softprompt_core::{fsio, model};

#[derive(Args)]
pub struct ExportArgs {
    /// Base model: alias, .gguf file, HF folder or hub id.
    #[arg(long, short, default_value = "smollm2-135m")]
    model: String,
    /// New folder (must not exist or be empty).
    #[arg(long)]
    out: PathBuf,
    /// Split the weights into shards of at most this many MB.
    #[arg(long)]
    shard_mb: Option<usize>,
    /// Write only `tokenizer.json` and a `tokenizer_config.json` naming the plain fast
    /// tokenizer (a few MB: what lm-evaluation-harness' `tokenizer=` loads), no weights.
    #[arg(long, conflicts_with = "shard_mb")]
    tokenizer_only: bool,
}

pub fn run(a: ExportArgs) -> Result<()> {
    let lw = model::load(&a.model).with_context(|| format!("loading model '{}'", a.model))?;
    if a.tokenizer_only {
        if std::fs::read_dir(&a.out).is_ok_and(|mut d| d.next().is_some()) {
            bail!("{}: folder exists and is not empty", a.out.display());
        }
        std::fs::create_dir_all(&a.out).with_context(|| a.out.display().to_string())?;
        let tok = lw
            .tokenizer
            .to_string(false)
            .map_err(|e| anyhow!("serializing the tokenizer: {e}"))?;
        fsio::atomic_write(&a.out.join("tokenizer.json"), tok.as_bytes())?;
        let cfg = serde_json::json!({ "tokenizer_class": "PreTrainedTokenizerFast" });
        fsio::atomic_write(
            &a.out.join("tokenizer_config.json"),
            cfg.to_string().as_bytes(),
        )?;
        eprintln!("softprompt: wrote {} (tokenizer only)", a.out.display());
        return Ok(());
    }
    model::load::hf::save_hf_folder(&a.out, &lw, a.shard_mb.map(|m| m << 20))?;
    eprintln!(
        "softprompt: wrote {} (Hugging Face folder, f32)",
        a.out.display()
    );
    Ok(())
}
