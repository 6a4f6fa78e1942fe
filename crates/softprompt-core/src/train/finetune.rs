//! Full fine-tuning, the baseline prompt tuning is compared against: every weight trainable,
//! AdamW (f32 moments) on all parameters, on the same data pipeline as [`super::train`]
//! (tokenization, length-bucketed batches from the same seed, gradient accumulation, the
//! same schedule, global-norm clipping), with the weight gradients of
//! [`crate::model::llama::grads`].
//!
//! The model is changed in place; the result is saved as a Hugging Face folder
//! (`config.json`, `model.safetensors`, `tokenizer.json`, written atomically), which is the
//! artifact a user would have to keep. There are no mid-run checkpoints (one would hold
//! three copies of the model); an interrupted run starts over.

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use rayon::prelude::*;
use serde::Serialize;
use serde_json::json;

use super::eval::{self, EvalReport, Tokenized};
use super::optim::{self, Optimizer};
use super::trainer::{load_train_val, EvalLog, Observer, StepLog, TrainConfig};
use crate::data::EpochBatches;
use crate::infer::objective;
use crate::model::llama::grads::Grads;
use crate::model::load::hf::save_hf_folder;
use crate::model::{FrozenModel, LoadedWeights};
use crate::{Error, Result};

#[derive(Clone, Debug, Serialize)]
pub struct FinetuneSummary {
    pub steps_done: u64,
    pub interrupted: bool,
    /// Loss of the first and last optimizer steps.
    pub first_loss: f64,
    pub last_loss: f64,
    pub final_eval: Option<EvalReport>,
    pub trainable_parameters: usize,
    pub train_examples: usize,
    /// Training time (steps and evaluations, not loading or saving).
    pub seconds: f64,
}

/// Fine-tune every weight of `model` on `cfg`'s task (`num_virtual_tokens` and `init` are
/// not used). Writes `OUT/train_log.jsonl` and, unless interrupted, the fine-tuned model to
/// `OUT/model/`. `stop` is polled between steps.
pub fn finetune(
    model: &mut FrozenModel,
    cfg: &TrainConfig,
    out: &Path,
    stop: &AtomicBool,
    obs: &mut dyn Observer,
) -> Result<FinetuneSummary> {
    check_lr(cfg, "fine-tuning", "ft_lr")?;
    // Refuses quantized matrices before any work.
    let sizes: Vec<usize> = model.llama.params()?.iter().map(|p| p.len()).collect();
    let trainable_parameters = sizes.iter().sum();
    let mut opts: Vec<Optimizer> = sizes
        .iter()
        .map(|&n| Optimizer::new(cfg.optimizer, n, 1))
        .collect();
    let run = WeightRun {
        name: "fine-tuning",
        lr_setting: "ft_lr",
        header: format!("full fine-tuning: {trainable_parameters} trainable parameters"),
        trainable_parameters,
        grad_params: None,
    };
    let summary = weight_loop(model, cfg, out, stop, obs, run, &mut |model, grads, lr| {
        if cfg.grad_accum > 1 {
            grads.scale(1.0 / cfg.grad_accum as f32);
        }
        // Global-norm clipping over all parameters (torch.nn.utils.clip_grad_norm_).
        let norm = grads.global_norm();
        if cfg.max_grad_norm > 0.0 && norm.is_finite() {
            let coef = cfg.max_grad_norm as f64 / (norm + 1e-6);
            if coef < 1.0 {
                grads.scale(coef as f32);
            }
        }
        let params = model.llama.params_mut()?;
        params
            .into_par_iter()
            .zip(grads.buffers_mut())
            .zip(opts.par_iter_mut())
            .for_each(|((p, g), o)| o.step(p, g, lr));
        Ok(norm)
    })?;
    if !summary.interrupted {
        save_model(model, &out.join("model"))?;
    }
    Ok(summary)
}

/// `cfg.lr` positive and finite (an error naming `setting` otherwise), sizes and optimizer valid.
pub(super) fn check_lr(cfg: &TrainConfig, name: &str, setting: &'static str) -> Result<()> {
    cfg.check_sizes()?;
    if !(cfg.lr > 0.0 && cfg.lr.is_finite()) {
        return Err(Error::setting(
            setting,
            format!(
                "the {name} learning rate ({setting}) must be positive, got {}",
                cfg.lr
            ),
        ));
    }
    cfg.optimizer.validate()
}

/// What a run of [`weight_loop`] is called in its messages and errors.
pub(super) struct WeightRun {
    /// "fine-tuning", "LoRA".
    pub name: &'static str,
    /// The setting an exploding loss blames.
    pub lr_setting: &'static str,
    /// The first message, before the data's size is appended.
    pub header: String,
    pub trainable_parameters: usize,
    /// The parameters whose gradients `update` reads (canonical indices; None = all).
    pub grad_params: Option<Vec<usize>>,
}

/// The training loop of the weight-training baselines (full fine-tuning, LoRA): the task's
/// data as [`super::train`] batches it, every weight's gradient summed into one [`Grads`] over
/// the micro-batches of a step, then `update(model, grads, lr)` (scaling, clipping, the
/// optimizer step; it returns the gradient norm it clipped) and the gradients zeroed; the log,
/// the evaluations with the model as `update` left it, and `stop` between steps. Saving the
/// result is the caller's.
pub(super) fn weight_loop(
    model: &mut FrozenModel,
    cfg: &TrainConfig,
    out: &Path,
    stop: &AtomicBool,
    obs: &mut dyn Observer,
    run: WeightRun,
    update: &mut dyn FnMut(&mut FrozenModel, &mut Grads, f32) -> Result<f64>,
) -> Result<FinetuneSummary> {
    let (train_data, train_name, val) = load_train_val(model, cfg, obs)?;
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let log_path = out.join("train_log.jsonl");
    let mut log = std::fs::File::create(&log_path).map_err(|e| Error::io(&log_path, e))?;
    obs.on_message(&format!(
        "{}, {} training examples from {train_name}",
        run.header,
        train_data.len()
    ));

    let mut grads = match &run.grad_params {
        Some(keep) => Grads::only(&model.llama, keep),
        None => Grads::new(&model.llama),
    };
    let mut order = EpochBatches::new(train_data.lengths(), cfg.batch_size, cfg.seed, 0, 0);
    let t0 = Instant::now();
    let (mut first_loss, mut last_loss) = (f64::NAN, f64::NAN);
    let mut final_eval = None;
    let mut step = 0u64;
    let mut interrupted = false;
    obs.on_start(0, cfg.steps);
    while step < cfg.steps {
        let ts = Instant::now();
        let (mut loss, mut rows) = (0.0f64, 0usize);
        for _ in 0..cfg.grad_accum {
            let idx = order
                .next()
                .ok_or_else(|| Error::Input("no training examples".into()))?;
            let batch = train_data.select(&idx);
            let r = match &batch {
                Tokenized::Class(b) => {
                    objective::classify_batch_weights(&model.llama, b, cfg.length_norm, &mut grads)?
                }
                Tokenized::Gen(b) => objective::lm_batch_weights(&model.llama, b, &mut grads)?,
            };
            loss += r.loss / cfg.grad_accum as f64;
            rows += r.rows;
        }
        if !loss.is_finite() {
            return Err(Error::setting(
                run.lr_setting,
                format!(
                    "{} loss became {loss} at step {step}: lower {}",
                    run.name, run.lr_setting
                ),
            ));
        }
        let lr = optim::lr_at(cfg.schedule, cfg.lr, step, cfg.steps, cfg.warmup_steps);
        let norm = update(model, &mut grads, lr)?;
        grads.zero();
        step += 1;
        if step == 1 {
            first_loss = loss;
        }
        last_loss = loss;
        let s = StepLog {
            reduce_seconds: 0.0,
            step,
            epoch: order.position().0,
            loss,
            lr,
            grad_norm: norm as f32,
            tokens: rows,
            seconds: ts.elapsed().as_secs_f64(),
        };
        writeln!(log, "{}", json!({"type": "step", "step": s.step, "epoch": s.epoch, "loss": s.loss, "lr": s.lr, "grad_norm": s.grad_norm, "tokens": s.tokens, "seconds": s.seconds}))
            .map_err(|e| Error::io(&log_path, e))?;
        obs.on_step(&s);
        let last = step == cfg.steps;
        if let Some(v) = &val {
            if (cfg.eval_every > 0 && step.is_multiple_of(cfg.eval_every)) || last {
                let rep = eval::evaluate(model, None, v, cfg.eval_batch_size, cfg.length_norm)?;
                writeln!(log, "{}", json!({"type": "eval", "step": step, "metric": rep.metric, "value": rep.value, "loss": rep.loss}))
                    .map_err(|e| Error::io(&log_path, e))?;
                obs.on_eval(&EvalLog {
                    step,
                    report: rep.clone(),
                    best: false,
                });
                final_eval = Some(rep);
            }
        }
        if stop.load(Ordering::SeqCst) && !last {
            interrupted = true;
            break;
        }
    }
    let seconds = t0.elapsed().as_secs_f64();
    log.flush().map_err(|e| Error::io(&log_path, e))?;
    Ok(FinetuneSummary {
        steps_done: step,
        interrupted,
        first_loss,
        last_loss,
        final_eval,
        trainable_parameters: run.trainable_parameters,
        train_examples: train_data.len(),
        seconds,
    })
}

/// Save `model` (f32 weights) as a Hugging Face folder at `dir` (replacing an earlier one).
pub fn save_model(model: &FrozenModel, dir: &Path) -> Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let lw = LoadedWeights {
        config: model.llama.cfg.clone(),
        weights: model.llama.hf_weights()?,
        matrices: Default::default(),
        tokenizer: model.tokenizer.clone(),
        source: model.source.clone(),
        stored_dtype: "f32".into(),
        chat_template: model.chat_template.clone(),
    };
    save_hf_folder(dir, &lw, None)
}
