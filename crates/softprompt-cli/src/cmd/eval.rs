//! `softprompt eval`: a soft prompt (or the bare template) on a labelled file.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use serde_json::json;
use softprompt_core::data;
use softprompt_core::train;

use super::common::{load_model, prompt_views, ModelArgs, PromptOrTemplate, TaskArgs};

#[derive(Args)]
pub struct EvalArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    prompt: PromptOrTemplate,
    #[command(flatten)]
    task: TaskArgs,
    /// Labelled data (JSONL/CSV/TSV); default: the task's validation split.
    #[arg(long)]
    data: Option<String>,
    /// Use the task's alternative template number N (0 = the main one).
    #[arg(long, default_value_t = 0)]
    template_index: usize,
    /// Evaluate at most N examples.
    #[arg(long)]
    limit: Option<usize>,
    /// Examples per batch.
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    /// Cut texts to their last N tokens.
    #[arg(long, default_value_t = 256)]
    max_len: usize,
    /// Average multi-token candidates' log-probs over their tokens.
    #[arg(long)]
    length_norm: bool,
    /// Write the JSON report here too.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Print the JSON report instead of the summary line.
    #[arg(long)]
    json: bool,
}

pub fn run(a: EvalArgs) -> Result<()> {
    let m = load_model(&a.model)?;
    let sps = a.prompt.load(&m)?;
    anyhow::ensure!(
        a.prompt.no_prompt || !sps.is_empty(),
        "give --prompt DIR, or --no-prompt to evaluate the template alone"
    );
    let spec = a.task.resolve(sps.first(), None)?;
    let spec = spec.with_template(a.template_index).with_context(|| {
        format!(
            "task {} has no template number {}",
            spec.name, a.template_index
        )
    })?;
    let file = a
        .data
        .or_else(|| spec.validation.clone())
        .context("give --data FILE (the task has no validation split)")?;
    let data::Split { items, name, .. } =
        data::load_items(&spec, &file, a.task.data_root.as_deref(), false)?;
    let mut tok = train::tokenize(&m, &items, a.max_len)?;
    if let Some(n) = a.limit {
        tok.truncate(n);
    }
    let t = std::time::Instant::now();
    let views = prompt_views(&sps)?;
    let rep = train::evaluate_ensemble(&m, &views, &tok, a.batch_size, a.length_norm)?;
    let secs = t.elapsed().as_secs_f64();
    let mut v = serde_json::to_value(&rep)?;
    v["data"] = json!(name);
    v["task"] = json!(spec.name);
    v["template"] = json!(spec.templates().first().copied().unwrap_or(""));
    let dirs: Vec<String> = a
        .prompt
        .prompt
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    v["prompt"] = match dirs.len() {
        0 => json!(null),
        1 => json!(dirs[0]),
        _ => json!(dirs), // an ensemble
    };
    v["seconds"] = json!(secs);
    v["examples_per_second"] = json!(rep.n as f64 / secs);
    if let data::Items::Class(ci) = &items {
        let (cls, base) = data::majority_baseline(ci);
        v["majority_baseline"] = json!({ "class": cls, "accuracy": base });
    }
    if let Some(path) = &a.report {
        softprompt_core::fsio::atomic_write(path, serde_json::to_string_pretty(&v)?.as_bytes())?;
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!(
        "{}: {} = {:.4} on {} examples of {name} (loss {:.4}, {:.1} examples/s)",
        spec.name,
        rep.metric,
        rep.value,
        rep.n,
        rep.loss,
        rep.n as f64 / secs
    );
    if let Some(b) = v.get("majority_baseline") {
        println!(
            "majority-class baseline: {:.4}",
            b["accuracy"].as_f64().unwrap_or(0.0)
        );
    }
    Ok(())
}
