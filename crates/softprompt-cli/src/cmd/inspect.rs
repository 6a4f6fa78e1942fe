//! `softprompt inspect`: the nearest vocabulary tokens of each virtual token, its norm next to
//! real token embeddings, its drift from the recorded init, and the hard projection (each
//! vector replaced by its nearest token) evaluated next to the soft prompt.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use serde_json::json;
use softprompt_core::inspect::{self, InspectReport};
use softprompt_core::prompt::SoftPrompt;

use super::common::{load_model, ModelArgs, TaskArgs};

#[derive(Args)]
pub struct InspectArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Soft prompt folder (written by softprompt or by PEFT).
    #[arg(long, short)]
    prompt: PathBuf,
    /// Use the prompt even if it was trained for a different base model (same hidden size).
    #[arg(long)]
    force: bool,
    /// Nearest vocabulary tokens to report per virtual token.
    #[arg(long, short, default_value_t = inspect::DEFAULT_K)]
    k: usize,
    #[command(flatten)]
    task: TaskArgs,
    /// Labelled data (JSONL/CSV/TSV) to evaluate the soft prompt and its hard projection on;
    /// default: the validation split of --task or of the prompt's recorded task.
    #[arg(long)]
    data: Option<String>,
    /// Evaluate at most N examples.
    #[arg(long, default_value_t = 300)]
    limit: usize,
    /// Do not evaluate (geometry only).
    #[arg(long)]
    no_eval: bool,
    /// Examples per evaluation batch.
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    /// Cut texts to their last N tokens (default: the prompt's training setting, else 256).
    #[arg(long)]
    max_len: Option<usize>,
    /// Average multi-token candidates' log-probs over their tokens (default: as trained).
    #[arg(long)]
    length_norm: bool,
    /// Folder for inspect.md, prompt_similarity.png and nearest_tokens.png (default: PROMPT/inspect).
    #[arg(long, short)]
    out: Option<PathBuf>,
    /// Print the whole report as JSON instead of the summary.
    #[arg(long)]
    json: bool,
}

pub fn run(a: InspectArgs) -> Result<()> {
    let m = load_model(&a.model)?;
    let sp = SoftPrompt::load_for(&m, &a.prompt, a.force)?;
    let t = std::time::Instant::now();
    let mut report = inspect::inspect(&m, &sp, a.k)?;
    eprintln!(
        "softprompt: nearest tokens of {} vectors in {:.2}s",
        report.num_virtual_tokens,
        t.elapsed().as_secs_f32()
    );

    let cfg = inspect::recorded_config(&sp).and_then(|c| c.ok());
    let asked = a.data.is_some() || a.task.task.is_some() || a.task.template.is_some();
    let recorded_task = sp.meta.as_ref().is_some_and(|meta| meta.task.is_some());
    if !a.no_eval && (asked || recorded_task) {
        let spec = a.task.resolve(Some(&sp), None)?;
        match a.data.clone().or_else(|| spec.validation.clone()) {
            Some(file) => {
                let data_root = a
                    .task
                    .data_root
                    .clone()
                    .or_else(|| cfg.as_ref().and_then(|c| c.data_root.clone()));
                let max_len = a.max_len.or(cfg.as_ref().map(|c| c.max_len)).unwrap_or(256);
                let length_norm = a.length_norm || cfg.as_ref().is_some_and(|c| c.length_norm);
                let data = inspect::eval::load_eval_data(
                    &m,
                    &spec,
                    &file,
                    data_root.as_deref(),
                    max_len,
                    Some(a.limit),
                )
                .with_context(|| format!("loading evaluation data {file}"))?;
                eprintln!(
                    "softprompt: evaluating the soft prompt and its hard projection on {} examples of {}",
                    data.tokenized.len(),
                    data.name
                );
                let t = std::time::Instant::now();
                report.evaluation = Some(inspect::eval::evaluate_projection(
                    &m,
                    &sp,
                    &report.hard_prompt.ids,
                    &data,
                    a.batch_size,
                    length_norm,
                )?);
                eprintln!("softprompt: evaluated in {:.1}s", t.elapsed().as_secs_f32());
            }
            None if asked => anyhow::bail!(
                "task {} has no validation split: give --data FILE",
                spec.name
            ),
            None => report.notes.push(format!(
                "not evaluated: task {} has no validation split (give --data FILE)",
                spec.name
            )),
        }
    }

    let out = a.out.clone().unwrap_or_else(|| a.prompt.join("inspect"));
    let pictures = inspect::markdown::write_pictures(&report, &out)
        .with_context(|| format!("writing the pictures to {}", out.display()))?;
    let markdown = inspect::markdown::write_markdown(&report, &out)?;
    if a.json {
        let mut v = serde_json::to_value(&report)?;
        v["files"] = json!({ "markdown": markdown, "pictures": pictures });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print_summary(&report);
        let files: Vec<String> = std::iter::once(&markdown)
            .chain(&pictures)
            .map(|p| p.display().to_string())
            .collect();
        println!("wrote {}", files.join(", "));
    }
    Ok(())
}

fn print_summary(r: &InspectReport) {
    let n = &r.embedding_norms;
    println!(
        "{}: {} virtual tokens x {}, against {} token embeddings (norms min {:.3}, median {:.3}, max {:.3})",
        r.prompt.as_deref().unwrap_or("prompt"),
        r.num_virtual_tokens,
        r.hidden_size,
        r.vocab_size,
        n.min,
        n.median,
        n.max
    );
    match &r.init {
        Some(i) => println!(
            "init {} (seed {}): mean drift L2 {:.3}, mean cosine to init {:.3}; {} of {} vectors keep their init's nearest token",
            i.init, i.seed, i.mean_drift_l2, i.mean_drift_cosine, i.same_nearest_token, r.num_virtual_tokens
        ),
        None => println!("no recorded init: no drift"),
    }
    for note in &r.notes {
        println!("note: {note}");
    }
    println!(
        "{:>5} {:>8} {:>6} {:>8}  nearest tokens by cosine",
        "", "norm", "pctl", "drift"
    );
    for v in &r.vectors {
        let near: Vec<String> = v
            .nearest_cosine
            .iter()
            .map(|n| format!("{:?} {:.2}", n.piece, n.cosine))
            .collect();
        let drift = v.drift.map_or("-".to_string(), |d| format!("{:.3}", d.l2));
        println!(
            "{:>5} {:>8.3} {:>6.1} {:>8}  {}",
            v.label,
            v.norm,
            v.norm_percentile,
            drift,
            near.join(", ")
        );
    }
    let h = &r.hard_prompt;
    println!(
        "hard projection (mean cosine {:.3}): {:?}",
        h.mean_cosine, h.text
    );
    if let Some(e) = &r.evaluation {
        let pct = |x: f64| format!("{:.1}%", 100.0 * x);
        let mut line = format!(
            "{} on {} ({} examples): {} soft {}, hard projection {}",
            e.task,
            e.data,
            e.n,
            e.metric,
            pct(e.soft.value),
            pct(e.hard.value)
        );
        if let Some(x) = e.retained {
            line += &format!(" (keeps {})", pct(x));
        }
        if let Some(b) = e.majority_baseline {
            line += &format!(", majority class {}", pct(b));
        }
        println!("{line}");
    }
}
