//! `softprompt transfer`: pick the source prompt to start a new task's prompt from (SPoT):
//! probe, rank by similarity, and check the pick against the usual init
//! (softprompt_core::train::transfer does the work).

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use softprompt_core::train::transfer;

use super::common::{load_model, stop_on_ctrl_c, Progress};
use super::train::TrainArgs;

#[derive(Args)]
pub struct TransferArgs {
    /// The target run: task, data and every training flag (its --steps is the budget of each
    /// full run; --out holds probe/, top/, bottom/, baseline/ and transfer.json).
    #[command(flatten)]
    target: Box<TrainArgs>,
    /// A trained prompt folder to rank as a source (repeat the flag; input prompts with the
    /// run's number of virtual tokens).
    #[arg(long = "source", required = true)]
    sources: Vec<PathBuf>,
    /// Steps of the probe prompt that stands for the target task.
    #[arg(long, default_value_t = 30)]
    probe_steps: u64,
}

pub fn run(a: TransferArgs) -> Result<()> {
    anyhow::ensure!(
        !a.target.run.resume,
        "transfer has no --resume: it trains each of its runs from the start"
    );
    let m = load_model(&a.target.model)?;
    let cfg = a.target.config()?;
    let out = a
        .target
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("runs").join(format!("transfer-{}", cfg.task.name)));
    let stop = stop_on_ctrl_c("")?;
    let mut progress = Progress::new(cfg.steps, a.target.run.quiet);
    eprintln!(
        "softprompt: ranking {} source prompts for task '{}' with a {}-step probe, then {} steps from the top and bottom source and from the {:?} init -> {}",
        a.sources.len(),
        cfg.task.name,
        a.probe_steps,
        cfg.steps,
        cfg.init,
        out.display()
    );
    let r = transfer::run(
        &m,
        &cfg,
        a.probe_steps,
        &a.sources,
        &out,
        &stop,
        &mut progress,
    )?;
    progress.finish();
    println!("| rank | source | task | average-token cosine | token-wise cosine |");
    println!("|---:|---|---|---:|---:|");
    for (i, s) in r.ranking.iter().enumerate() {
        println!(
            "| {} | {} | {} | {:.4} | {:.4} |",
            i + 1,
            s.source.display(),
            s.task.as_deref().unwrap_or("?"),
            s.avg_cosine,
            s.max_token_cosine
        );
    }
    for (d, why) in &r.skipped {
        println!("skipped {}: {why}", d.display());
    }
    println!();
    println!(
        "| {} after {} steps, starting from | {} | n |",
        r.target, r.steps, r.runs[0].metric
    );
    println!("|---|---:|---:|");
    for run in &r.runs {
        let from = match &run.init {
            softprompt_core::train::Init::File(d) => format!("{} ({})", run.start, d.display()),
            i => format!("{} ({i:?})", run.start),
        };
        println!("| {from} | {:.4} | {} |", run.value, run.n);
    }
    if let Some(d) = r.top_minus_baseline {
        println!(
            "\nThe top-ranked source {} by {:+.1} points.",
            if d > 0.0 { "helps" } else { "does not help" },
            100.0 * d
        );
    }
    Ok(())
}
