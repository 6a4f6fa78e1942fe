//! `softprompt export`: a model (e.g. a GGUF) written as a Hugging Face folder.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use softprompt_core::model;

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
}

pub fn run(a: ExportArgs) -> Result<()> {
    let lw = model::load(&a.model).with_context(|| format!("loading model '{}'", a.model))?;
    model::load::hf::save_hf_folder(&a.out, &lw, a.shard_mb.map(|m| m << 20))?;
    eprintln!(
        "softprompt: wrote {} (Hugging Face folder, f32)",
        a.out.display()
    );
    Ok(())
}
