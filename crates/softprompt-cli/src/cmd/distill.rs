//! `softprompt distill`: a long hard prompt into a few virtual tokens, without labels
//! (softprompt_core::train::distill has the method and the loss).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use softprompt_core::train::distill::{self, DistillConfig};
use softprompt_core::train::{Init, TrainConfig};

use super::common::{load_model, stop_on_ctrl_c, Interrupted, ModelArgs, Progress};
use super::train::RunArgs;

#[derive(Args)]
pub struct DistillArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The hard prompt (the teacher's prefix): the text, or @FILE. End it with the separator
    /// that comes before an input (e.g. a newline).
    #[arg(long)]
    hard_prompt: String,
    /// Unlabelled inputs: .txt (one per line), or JSONL/CSV/TSV records rendered by --template.
    #[arg(long)]
    inputs: String,
    /// Held-out inputs (default: the last --holdout inputs of --inputs).
    #[arg(long)]
    validation: Option<String>,
    /// Inputs held out when there is no --validation file.
    #[arg(long, default_value_t = 200)]
    holdout: usize,
    /// How a record becomes the input text (`\n` escapes allowed); .txt lines fill {text}.
    #[arg(long, default_value = "{text}")]
    template: String,
    /// VALUE=WORD,...: the inputs carry labels (only for the accuracy report, never trained on).
    #[arg(long)]
    labels: Option<String>,
    /// Field of a record that holds its label (with --labels).
    #[arg(long, default_value = "label")]
    label_field: String,
    /// Output folder (prompt folder + teacher.json, hard_prompt/, distill.json/.md, log, curve).
    #[arg(long, short)]
    out: Option<PathBuf>,
    /// text (the hard prompt's first P tokens), vocab[:TOP], random[:R], text:TEXT, file:DIR.
    #[arg(long, default_value = "text")]
    init: String,
    /// Continuation tokens the teacher generates per input.
    #[arg(long, default_value_t = 16)]
    teacher_tokens: usize,
    /// Teacher probabilities kept per position (plus the rest's mass as one bucket).
    #[arg(long, default_value_t = 32)]
    top_k: usize,
    /// 0 = greedy teacher continuations; > 0 = sampled with --seed.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    #[command(flatten)]
    run: RunArgs,
    /// Folder that relative data files are resolved against.
    #[arg(long)]
    data_root: Option<PathBuf>,
}

pub fn run(a: DistillArgs) -> Result<()> {
    let hard_prompt = match a.hard_prompt.strip_prefix('@') {
        Some(f) => {
            std::fs::read_to_string(f).with_context(|| format!("reading --hard-prompt {f}"))?
        }
        None => a.hard_prompt.clone(),
    };
    let dc = DistillConfig {
        hard_prompt,
        teacher_tokens: a.teacher_tokens,
        top_k: a.top_k,
        temperature: a.temperature,
        holdout: a.holdout,
        template: a.template.clone(),
        labels: a.labels.clone(),
        label_field: a.label_field.clone(),
    };
    let init = if a.init == "text" {
        Init::Text(dc.hard_prompt.clone())
    } else {
        a.init.parse()?
    };
    let m = load_model(&a.model)?;
    let cfg = a.run.apply(TrainConfig {
        task: distill::task_spec(&dc)?,
        train_file: a.inputs.clone(),
        validation_file: a.validation.clone(),
        init,
        data_root: a.data_root.clone(),
        ..TrainConfig::default()
    });
    let out = a
        .out
        .clone()
        .unwrap_or_else(|| distill::default_out(a.run.resume));
    let stop = stop_on_ctrl_c("")?;
    let mut obs = Progress::new(cfg.steps, a.run.quiet);
    eprintln!(
        "softprompt: distilling a {}-character hard prompt into {} virtual tokens ({} teacher tokens, top-{} + rest; {} steps x batch {}) -> {}",
        dc.hard_prompt.chars().count(),
        cfg.num_virtual_tokens,
        dc.teacher_tokens,
        dc.top_k,
        cfg.steps,
        cfg.batch_size,
        out.display()
    );
    let (summary, r) = distill::distill(&m, &cfg, &dc, &out, a.run.resume, &stop, &mut obs)?;
    obs.finish();
    let Some(r) = r else {
        eprintln!(
            "softprompt: interrupted at step {}: continue with --resume (the teacher data is kept)",
            summary.steps_done
        );
        return Err(Interrupted.into());
    };
    let pct = |x: f64| format!("{:.2}%", 100.0 * x);
    println!(
        "hard prompt {} tokens -> {} virtual tokens ({:.1}x shorter); tokens per request {:.1} -> {:.1}",
        r.hard_prompt_tokens,
        r.virtual_tokens,
        r.prompt_length_ratio,
        r.tokens_per_request_hard,
        r.tokens_per_request_soft
    );
    println!(
        "held-out ({} inputs): greedy exact match with the teacher {} (no prompt {}), token agreement {} ({}), mean KL {:.4} ({:.4})",
        r.heldout_inputs,
        pct(r.student.exact_match),
        pct(r.no_prompt.exact_match),
        pct(r.student.token_agreement),
        pct(r.no_prompt.token_agreement),
        r.student.mean_kl,
        r.no_prompt.mean_kl
    );
    if let Some(acc) = &r.accuracy {
        println!(
            "task accuracy ({} labelled): hard prompt {}, soft prompt {}, no prompt {}",
            acc.n,
            pct(acc.hard_prompt),
            pct(acc.soft_prompt),
            pct(acc.no_prompt)
        );
    }
    eprintln!(
        "softprompt: {} steps in {:.0}s; prompt saved to {} (distill.json, distill.md, hard_prompt/, teacher.json beside it){}",
        summary.steps_done,
        summary.seconds,
        out.display(),
        if summary.interrupted {
            "; interrupted, continue with --resume"
        } else {
            ""
        }
    );
    Ok(())
}
