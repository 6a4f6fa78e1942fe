//! `softprompt distill`: a long hard prompt into a few virtual tokens, without labels
//! (softprompt_core::train::distill has the method and the loss).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use softprompt_core::train::distill::{self, DistillConfig};
use softprompt_core::train::{optim, trainer, Init};

use super::common::{load_model, stop_on_ctrl_c, Interrupted, ModelArgs, Progress};

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
    /// Virtual tokens of the distilled prompt (P).
    #[arg(long, default_value_t = 20)]
    virtual_tokens: usize,
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
    /// adamw or adafactor.
    #[arg(long, default_value = "adamw")]
    optimizer: String,
    /// Peak learning rate.
    #[arg(long, default_value_t = 0.03)]
    lr: f32,
    /// constant, linear or cosine (after warm-up).
    #[arg(long, default_value = "linear")]
    schedule: String,
    /// Linear warm-up steps.
    #[arg(long, default_value_t = 10)]
    warmup: u64,
    /// Optimizer steps.
    #[arg(long, default_value_t = 200)]
    steps: u64,
    /// Inputs per step.
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    /// Micro-batches whose gradients are summed per step.
    #[arg(long, default_value_t = 1)]
    grad_accum: usize,
    /// Clip the prompt gradient to this L2 norm (0 = no clipping).
    #[arg(long, default_value_t = 1.0)]
    max_grad_norm: f32,
    /// Seed of the data order, the init and sampled teacher continuations.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Held-out KL every N steps (0 = at the end only).
    #[arg(long, default_value_t = 50)]
    eval_every: u64,
    /// Use at most N held-out inputs.
    #[arg(long)]
    eval_limit: Option<usize>,
    /// Use at most N training inputs.
    #[arg(long)]
    train_limit: Option<usize>,
    /// Write a checkpoint every N steps.
    #[arg(long, default_value_t = 50)]
    checkpoint_every: u64,
    /// Checkpoints kept (older ones are removed).
    #[arg(long, default_value_t = 2)]
    keep_checkpoints: usize,
    /// Cut inputs to their last N tokens.
    #[arg(long, default_value_t = 256)]
    max_len: usize,
    /// Held-out inputs per evaluation batch.
    #[arg(long, default_value_t = 16)]
    eval_batch_size: usize,
    /// Folder that relative data files are resolved against.
    #[arg(long)]
    data_root: Option<PathBuf>,
    /// Continue from OUT/checkpoints (the teacher data in OUT/teacher.json is reused).
    #[arg(long)]
    resume: bool,
    /// No progress bar (log lines instead).
    #[arg(long)]
    quiet: bool,
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
    let optimizer = match a.optimizer.as_str() {
        "adamw" => optim::OptimizerKind::adamw_default(),
        "adafactor" => optim::OptimizerKind::adafactor_lester(),
        other => anyhow::bail!("--optimizer {other}: expected adamw or adafactor"),
    };
    let m = load_model(&a.model)?;
    let cfg = trainer::TrainConfig {
        task: distill::task_spec(&dc)?,
        train_file: a.inputs.clone(),
        validation_file: a.validation.clone(),
        num_virtual_tokens: a.virtual_tokens,
        init,
        optimizer,
        lr: a.lr,
        schedule: a.schedule.parse()?,
        warmup_steps: a.warmup,
        steps: a.steps,
        batch_size: a.batch_size,
        grad_accum: a.grad_accum,
        max_grad_norm: a.max_grad_norm,
        seed: a.seed,
        eval_every: a.eval_every,
        eval_limit: a.eval_limit,
        patience: None,
        checkpoint_every: a.checkpoint_every,
        keep_checkpoints: a.keep_checkpoints,
        max_len: a.max_len,
        length_norm: false,
        train_limit: a.train_limit,
        skip_bad_rows: false,
        eval_batch_size: a.eval_batch_size,
        data_root: a.data_root.clone(),
    };
    let out = a
        .out
        .clone()
        .unwrap_or_else(|| distill::default_out(a.resume));
    let stop = stop_on_ctrl_c("")?;
    let mut obs = Progress::new(cfg.steps, a.quiet);
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
    let (summary, r) = distill::distill(&m, &cfg, &dc, &out, a.resume, &stop, &mut obs)?;
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
