//! `softprompt compare`: hard prompt vs prompt tuning vs LoRA vs full fine-tuning, measured
//! (softprompt_core::compare does the work; this file parses flags and draws progress).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use softprompt_core::compare::{self, CompareConfig};
use softprompt_core::data::{self, TaskKind, TaskSpec};
use softprompt_core::train::optim::{OptimizerKind, Schedule};
use softprompt_core::train::TrainConfig;

use super::common::{
    load_model, stop_on_ctrl_c, task_by_name, Interrupted, ModelArgs, Progress, TaskArgs,
};
use super::train::{parse_reparam, schedule_parser};
use softprompt_core::train::reparam::Reparam;

#[derive(Args)]
pub struct CompareArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    task: TaskArgs,
    /// Output folder: compare.md, compare.png, compare.json, stages/, prompt_tuning/,
    /// residual/, deep/, lora/, full_finetune/ (default runs/compare-TASK).
    #[arg(long, short)]
    out: Option<PathBuf>,
    /// Optimizer steps of each trained method (the same batches for all).
    #[arg(long, default_value_t = 300)]
    steps: u64,
    /// Examples per batch (every trained method).
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    /// Demonstrations in the few-shot hard prompt (0: zero-shot only).
    #[arg(long, default_value_t = 4)]
    shots: usize,
    /// Virtual tokens of the soft prompt.
    #[arg(long, default_value_t = 20)]
    virtual_tokens: usize,
    /// Prompt tuning's learning rate (AdamW).
    #[arg(long, default_value_t = 0.03)]
    pt_lr: f32,
    /// Full fine-tuning's learning rate (AdamW, weight decay 0.01).
    #[arg(long, default_value_t = 3e-5)]
    ft_lr: f32,
    /// The rows to run, comma-separated, from hard, prompt, residual, deep, ensemble (of the
    /// prompt methods that ran), lora, full.
    #[arg(long, value_delimiter = ',', default_value = "hard,prompt,full,lora")]
    methods: Vec<compare::Method>,
    /// The residual row's reparameterization: residual[:BOTTLENECK].
    #[arg(long, default_value = "residual", value_parser = parse_reparam)]
    residual: Reparam,
    /// The deep-prompt row's learning rate (AdamW).
    #[arg(long, default_value_t = compare::default_deep_lr())]
    deep_lr: f32,
    /// LoRA's rank (on the attention q/v projections).
    #[arg(long, default_value_t = 8)]
    lora_rank: usize,
    /// LoRA's alpha (the update is scaled by alpha / rank).
    #[arg(long, default_value_t = 16.0)]
    lora_alpha: f32,
    /// LoRA's learning rate (AdamW, weight decay 0.01).
    #[arg(long, default_value_t = 5e-4)]
    lora_lr: f32,
    /// Learning-rate schedule after warm-up (every trained method).
    #[arg(long, default_value = "linear", value_parser = schedule_parser())]
    schedule: Schedule,
    /// Warm-up steps (every trained method).
    #[arg(long, default_value_t = 10)]
    warmup: u64,
    /// Clip the gradient's L2 norm (0 = off).
    #[arg(long, default_value_t = 1.0)]
    max_grad_norm: f32,
    /// Seed of the init, the data order and the few-shot demonstrations.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Second, untouched task for the forgetting row (default copa, or cb when the task is
    /// copa; `none` to skip). Skipped with a note when its data is not found.
    #[arg(long)]
    second_task: Option<String>,
    /// Evaluate on at most N validation examples.
    #[arg(long)]
    eval_limit: Option<usize>,
    /// Use at most N training examples.
    #[arg(long)]
    train_limit: Option<usize>,
    /// Cut texts to their last N tokens.
    #[arg(long, default_value_t = 256)]
    max_len: usize,
    /// Examples per evaluation batch.
    #[arg(long, default_value_t = 32)]
    eval_batch_size: usize,
    /// Continue an interrupted comparison in --out (finished stages are skipped).
    #[arg(long)]
    resume: bool,
    /// Print compare.json to stdout instead of the Markdown table.
    #[arg(long)]
    json: bool,
    /// No progress bars (log lines instead).
    #[arg(long)]
    quiet: bool,
}

/// The second task: named, or the default; None when skipped or its data is missing.
fn second_task(a: &CompareArgs, main: &TaskSpec) -> Result<Option<TaskSpec>> {
    let name = match a.second_task.as_deref() {
        Some("none") => return Ok(None),
        Some(n) => n.to_string(),
        None if main.name == "copa" => "cb".into(),
        None => "copa".into(),
    };
    let spec = task_by_name(&name)?;
    if spec.name == main.name {
        anyhow::bail!("--second-task must differ from the compared task ({name})");
    }
    let Some(val) = spec.validation.clone() else {
        anyhow::bail!("second task {name} has no validation split");
    };
    if val.starts_with(data::BUILTIN_PREFIX) || val.starts_with(data::HF_PREFIX) {
        return Ok(Some(spec));
    }
    match data::resolve_data_file(&val, a.task.data_root.as_deref()) {
        Ok(_) => Ok(Some(spec)),
        Err(e) if a.second_task.is_none() => {
            tracing::warn!("no second task for the forgetting row ({e})");
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

pub fn run(a: CompareArgs) -> Result<()> {
    let t0 = std::time::Instant::now();
    let mut m = load_model(&a.model)?;
    let spec = a.task.resolve(None, Some("demo"))?;
    let train_file = spec
        .train
        .clone()
        .with_context(|| format!("task {} has no train split", spec.name))?;
    let has_label_words = matches!(&spec.kind, TaskKind::Classification { labels, .. }
        if labels.iter().any(|l| !l.text.contains('{')));
    let init = if has_label_words { "labels" } else { "vocab" };
    // The prompt is tuned as `softprompt train` tunes it (AdamW, weight decay 1e-5, ...).
    let prompt = TrainConfig {
        task: spec.clone(),
        train_file,
        validation_file: spec.validation.clone(),
        num_virtual_tokens: a.virtual_tokens,
        init: init.parse()?,
        lr: a.pt_lr,
        schedule: a.schedule,
        warmup_steps: a.warmup,
        steps: a.steps,
        batch_size: a.batch_size,
        max_grad_norm: a.max_grad_norm,
        seed: a.seed,
        eval_every: 0,
        eval_limit: a.eval_limit,
        max_len: a.max_len,
        train_limit: a.train_limit,
        eval_batch_size: a.eval_batch_size,
        data_root: a.task.data_root.clone(),
        ..TrainConfig::default()
    };
    let cfg = CompareConfig {
        model: a.model.model.clone(),
        prompt,
        ft_lr: a.ft_lr,
        ft_optimizer: OptimizerKind::adamw_default(),
        shots: a.shots,
        second_task: second_task(&a, &spec)?,
        methods: a.methods.clone(),
        residual: a.residual,
        deep_lr: a.deep_lr,
        lora: compare::LoraSettings {
            rank: a.lora_rank,
            alpha: a.lora_alpha,
            lr: a.lora_lr,
        },
    };
    let out = a
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("runs").join(format!("compare-{}", spec.name)));
    let stop = stop_on_ctrl_c("; --resume continues")?;
    let mut obs = Progress::new(a.steps, a.quiet);
    eprintln!(
        "softprompt: comparing on task '{}' ({} steps x batch {} per trained method, {}-shot hard prompt) -> {}",
        spec.name,
        a.steps,
        a.batch_size,
        a.shots,
        out.display()
    );
    let c = compare::run(&mut m, &cfg, &out, a.resume, &stop, &mut obs);
    obs.finish();
    // Stopped by Ctrl-C: the library says where (and how to continue); exit 130.
    let c = match c {
        Err(e) if stop.load(std::sync::atomic::Ordering::SeqCst) => {
            eprintln!("softprompt: {e}");
            return Err(Interrupted.into());
        }
        c => c?,
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&c)?);
    } else {
        println!("{}", compare::markdown::markdown(&c));
    }
    eprintln!(
        "softprompt: compare finished in {:.1} min; compare.md, compare.png, compare.json in {}",
        t0.elapsed().as_secs_f64() / 60.0,
        out.display()
    );
    Ok(())
}
