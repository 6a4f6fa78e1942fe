//! `softprompt train`: the flags of a run (defaults: core's `TrainConfig::default()`), its
//! progress, and exit 130 when Ctrl-C stops it after its checkpoint.

use std::path::PathBuf;
use std::sync::LazyLock;

use anyhow::{Context, Result};
use clap::builder::PossibleValue;
use clap::Args;
use softprompt_core::model::input::PromptKind;
use softprompt_core::train::optim::{OptimizerKind, Schedule};
use softprompt_core::train::reparam::Reparam;
use softprompt_core::train::{trainer, TrainConfig};

use super::common::{
    load_model, parse_init, stop_on_ctrl_c, Choices, Interrupted, ModelArgs, Progress, TaskArgs,
    INIT_HELP,
};

/// The library's defaults, shown in `--help`.
static D: LazyLock<TrainConfig> = LazyLock::new(TrainConfig::default);

fn optimizer_parser() -> Choices<OptimizerKind> {
    Choices::new(
        [
            PossibleValue::new("adamw").help("AdamW, torch's betas and eps; default lr 0.03"),
            PossibleValue::new("adafactor")
                .help("Adafactor as Lester et al. (2021) tuned prompts; default lr 0.3"),
        ],
        |s| s.parse().ok(),
    )
}

pub fn schedule_parser() -> Choices<Schedule> {
    Choices::new(
        [
            PossibleValue::new("constant").help("the peak rate after warm-up"),
            PossibleValue::new("linear").help("linear decay to 0 at the last step"),
            PossibleValue::new("cosine").help("half-cosine decay to 0 at the last step"),
        ],
        |s| s.parse().ok(),
    )
}

pub fn parse_reparam(s: &str) -> std::result::Result<Reparam, String> {
    s.parse().map_err(|e: softprompt_core::Error| e.to_string())
}

/// The flags of the optimization loop, shared by `train` and `distill` (defaults: core's
/// `TrainConfig::default()`).
#[derive(Args)]
pub struct RunArgs {
    /// Number of virtual tokens.
    #[arg(long, default_value_t = D.num_virtual_tokens)]
    pub virtual_tokens: usize,
    /// Optimizer.
    #[arg(long, default_value = D.optimizer.name(), value_parser = optimizer_parser())]
    optimizer: OptimizerKind,
    /// Learning rate (default: the optimizer's, 0.03 for adamw, 0.3 for adafactor).
    #[arg(long)]
    lr: Option<f32>,
    /// Weight decay of either optimizer.
    #[arg(long, default_value_t = D.optimizer.weight_decay())]
    weight_decay: f32,
    /// Prompt parameterization while training: none, or residual[:BOTTLENECK] (residual
    /// prompt tuning: P + LayerNorm(MLP(P)), bottleneck 128 by default, adamw only); the saved
    /// prompt is always a plain one.
    #[arg(long, default_value = "none", value_parser = parse_reparam)]
    reparam: Reparam,
    /// Train a deep prompt (prefix tuning, P-tuning v2): keys and values of the virtual
    /// tokens at every layer instead of input embeddings, saved as a PEFT PREFIX_TUNING
    /// adapter. It starts from the keys and values of the init's rows.
    #[arg(long)]
    deep: bool,
    /// Learning-rate schedule after warm-up.
    #[arg(long, default_value = D.schedule.as_str(), value_parser = schedule_parser())]
    schedule: Schedule,
    /// Warm-up steps (the rate rises linearly from 0).
    #[arg(long, default_value_t = D.warmup_steps)]
    warmup: u64,
    /// Optimizer steps.
    #[arg(long, default_value_t = D.steps)]
    steps: u64,
    /// Examples per micro-batch.
    #[arg(long, default_value_t = D.batch_size)]
    batch_size: usize,
    /// Micro-batches per optimizer step (the effective batch is batch-size x grad-accum).
    #[arg(long, default_value_t = D.grad_accum)]
    grad_accum: usize,
    /// Clip the gradient's L2 norm (0 = off).
    #[arg(long, default_value_t = D.max_grad_norm)]
    max_grad_norm: f32,
    /// Seed of the init and of the data order.
    #[arg(long, default_value_t = D.seed)]
    seed: u64,
    /// Evaluate every N steps (0 = at the end only).
    #[arg(long, default_value_t = D.eval_every)]
    eval_every: u64,
    /// Evaluate on at most N validation examples.
    #[arg(long)]
    eval_limit: Option<usize>,
    /// Save a checkpoint (prompt, optimizer, data position) every N steps, and at Ctrl-C.
    #[arg(long, default_value_t = D.checkpoint_every)]
    checkpoint_every: u64,
    /// Checkpoints kept (older ones are deleted).
    #[arg(long, default_value_t = D.keep_checkpoints)]
    keep_checkpoints: usize,
    /// Cut texts to their last N tokens.
    #[arg(long, default_value_t = D.max_len)]
    max_len: usize,
    /// Use at most N training examples.
    #[arg(long)]
    train_limit: Option<usize>,
    /// Examples per evaluation batch.
    #[arg(long, default_value_t = D.eval_batch_size)]
    eval_batch_size: usize,
    /// Continue from OUT/checkpoints.
    #[arg(long)]
    pub resume: bool,
    /// No progress bar (log lines instead).
    #[arg(long)]
    pub quiet: bool,
}

impl RunArgs {
    /// `base` with this run's optimization settings.
    pub fn apply(&self, base: TrainConfig) -> TrainConfig {
        let optimizer = self.optimizer.with_weight_decay(self.weight_decay);
        TrainConfig {
            num_virtual_tokens: self.virtual_tokens,
            optimizer,
            lr: self.lr.unwrap_or(optimizer.default_lr()),
            schedule: self.schedule,
            warmup_steps: self.warmup,
            steps: self.steps,
            batch_size: self.batch_size,
            grad_accum: self.grad_accum,
            max_grad_norm: self.max_grad_norm,
            seed: self.seed,
            eval_every: self.eval_every,
            eval_limit: self.eval_limit,
            checkpoint_every: self.checkpoint_every,
            keep_checkpoints: self.keep_checkpoints,
            max_len: self.max_len,
            train_limit: self.train_limit,
            eval_batch_size: self.eval_batch_size,
            reparam: self.reparam,
            prompt_kind: if self.deep {
                PromptKind::Prefix
            } else {
                PromptKind::Input
            },
            ..base
        }
    }
}

#[derive(Args)]
pub struct TrainArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    task: TaskArgs,
    /// Training data (default: the task's train split).
    #[arg(long)]
    train: Option<String>,
    /// Validation data (default: the task's validation split).
    #[arg(long)]
    validation: Option<String>,
    /// Output folder (PEFT adapter + softprompt.json, checkpoints, log, curve); default
    /// runs/TASK, or runs/TASK-2, -3... if taken (with --resume: runs/TASK).
    #[arg(long, short)]
    pub out: Option<PathBuf>,
    #[arg(long, default_value = "vocab", value_parser = parse_init, help = INIT_HELP)]
    init: String,
    #[command(flatten)]
    pub run: RunArgs,
    /// Stop after N evaluations without improvement.
    #[arg(long)]
    patience: Option<usize>,
    /// Average multi-token candidates' log-probs over their tokens.
    #[arg(long)]
    length_norm: bool,
    /// Skip malformed rows (counted) instead of stopping at the first.
    #[arg(long)]
    skip_bad_rows: bool,
}

impl TrainArgs {
    /// The run's settings: the task (default `demo`) and its splits, and every flag.
    pub fn config(&self) -> Result<TrainConfig> {
        let spec = self.task.resolve(None, Some("demo"))?;
        let train_file = self
            .train
            .clone()
            .or_else(|| spec.train.clone())
            .with_context(|| format!("task {} has no train split: give --train FILE", spec.name))?;
        Ok(self.run.apply(TrainConfig {
            task: spec.clone(),
            train_file,
            validation_file: self.validation.clone().or_else(|| spec.validation.clone()),
            init: self.init.parse()?,
            patience: self.patience,
            length_norm: self.length_norm,
            skip_bad_rows: self.skip_bad_rows,
            data_root: self.task.data_root.clone(),
            ..TrainConfig::default()
        }))
    }
}

pub fn run(a: TrainArgs) -> Result<()> {
    // Under `mpirun -np N` (feature `mpi`): data parallel, rank 0 writes and reports.
    let red = super::ranks::reducer()?;
    let root = red.rank() == 0;
    anyhow::ensure!(
        red.size() == 1 || a.out.is_some(),
        "with several MPI ranks give --out DIR (every rank must write to, and resume from, the same folder)"
    );
    let m = load_model(&a.model)?;
    let cfg = a.config()?;
    let spec = &cfg.task;
    // Default output: runs/TASK, or runs/TASK-2, -3... so a second run never meets the first
    // one's checkpoints (with --resume: runs/TASK itself).
    let out = a.out.clone().unwrap_or_else(|| {
        let base = PathBuf::from("runs").join(&spec.name);
        if a.run.resume {
            return base;
        }
        std::iter::once(base.clone())
            .chain((2..).map(|i| PathBuf::from("runs").join(format!("{}-{i}", spec.name))))
            .find(|p| !p.exists())
            .unwrap_or(base)
    });
    let stop = stop_on_ctrl_c("")?;
    let mut progress = Progress::new(cfg.steps, a.run.quiet || !root);
    let mut quiet = trainer::Quiet;
    let obs: &mut dyn trainer::Observer = if root { &mut progress } else { &mut quiet };
    if !root {
        return finish(trainer::train_with(
            &m,
            &cfg,
            &out,
            a.run.resume,
            &stop,
            obs,
            &*red,
        )?);
    }
    if red.size() > 1 {
        eprintln!(
            "softprompt: data parallel over {} MPI ranks: each takes 1/{} of every batch",
            red.size(),
            red.size()
        );
    }
    eprintln!(
        "softprompt: training {} {}virtual tokens on task '{}' ({} init{}, {} lr {}, {} steps x batch {} x accum {}) -> {}",
        cfg.num_virtual_tokens,
        if cfg.prompt_kind == PromptKind::Prefix {
            "deep (per-layer key/value) "
        } else {
            ""
        },
        spec.name,
        a.init,
        match cfg.reparam {
            Reparam::None => String::new(),
            r => format!(", reparam {r}"),
        },
        cfg.optimizer.name(),
        cfg.lr,
        cfg.steps,
        cfg.batch_size,
        cfg.grad_accum,
        out.display()
    );
    let summary = trainer::train_with(&m, &cfg, &out, a.run.resume, &stop, obs, &*red)?;
    progress.finish();
    if let Some(s) = red.summary() {
        eprintln!("softprompt: {s}");
    }
    let best = summary
        .best
        .map(|(s, v)| format!("best validation {:.4} at step {s}", v))
        .unwrap_or_else(|| "no validation split".into());
    eprintln!(
        "softprompt: {} steps in {:.0}s; {best}; prompt saved to {} (curve.png, train_log.jsonl beside it){}",
        summary.steps_done,
        summary.seconds,
        out.display(),
        if summary.interrupted { "; interrupted, continue with --resume" } else { "" }
    );
    finish(summary)
}

fn finish(summary: softprompt_core::train::TrainSummary) -> Result<()> {
    if summary.interrupted {
        return Err(Interrupted.into());
    }
    Ok(())
}
