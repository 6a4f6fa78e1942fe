//! `softprompt init`: soft prompts without training.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use softprompt_core::prompt::SoftPrompt;
use softprompt_core::train::init::{init_embeddings, prefix_of_rows, Init};

use super::common::{load_model, parse_init, ModelArgs, TaskArgs, INIT_HELP};

#[derive(Args)]
pub struct InitArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Output prompt folder (with --count > 1: the parent folder of NAME000, NAME001, ...).
    #[arg(long, short)]
    out: PathBuf,
    #[arg(long, default_value = "vocab", value_parser = parse_init, help = INIT_HELP)]
    init: String,
    /// Number of virtual tokens.
    #[arg(long, default_value_t = 20)]
    virtual_tokens: usize,
    /// Seed of the random rows (random and vocab inits).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Make this many prompts (seeds seed, seed+1, ...).
    #[arg(long, default_value_t = 1)]
    count: usize,
    /// Name prefix with --count.
    #[arg(long, default_value = "p")]
    name: String,
    /// Write a deep prompt (PEFT prefix tuning): the keys and values the init's rows leave at
    /// every layer. With `--init text:...` it is that hard prompt, precomputed: the same
    /// outputs with no prefill.
    #[arg(long)]
    deep: bool,
    #[command(flatten)]
    task: TaskArgs,
}

/// A soft prompt without training: from vocabulary rows, a text (a hard prompt turned soft),
/// random values, or the task's label words.
pub fn run(a: InitArgs) -> Result<()> {
    let model = load_model(&a.model)?;
    let init: Init = a.init.parse()?;
    let spec = a.task.resolve(None, Some("demo"))?;
    anyhow::ensure!(a.count >= 1, "--count must be >= 1");
    for i in 0..a.count {
        let seed = a.seed + i as u64;
        let emb = init_embeddings(&model, &init, a.virtual_tokens, seed, &spec)?;
        let mut p = if a.deep {
            SoftPrompt::for_model_prefix(&model, prefix_of_rows(&model, &emb)?)
        } else {
            SoftPrompt::for_model(&model, emb)
        };
        if let Some(m) = p.meta.as_mut() {
            m.training =
                Some(serde_json::json!({ "init": a.init, "seed": seed, "trained_steps": 0 }));
            // The task is the prompt's when it was named or shaped the init.
            if a.task.task.is_some() || a.task.template.is_some() || matches!(init, Init::Labels) {
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
