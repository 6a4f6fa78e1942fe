//! The training loop: data order, gradient accumulation, clipping, schedule, evaluation with
//! early stopping, atomic checkpoints with exact resume, and the run's files.
//!
//! Output folder `OUT/`:
//! - `adapter_config.json`, `adapter_model.safetensors`, `softprompt.json`: the best prompt
//!   (by validation metric; the last one when there is no validation split), PEFT layout;
//! - `last/`: the prompt after the last step;
//! - `checkpoints/ckpt-*`: prompt + optimizer state + data position (see `checkpoint.rs`);
//! - `train_log.jsonl`: one JSON object per step and per evaluation;
//! - `curve.png`: loss and validation metric against the step.
//!
//! Data parallel ([`train_with`] and a [`Reducer`] of several ranks): every rank walks the
//! same data order, computes its [`parallel::share`] of each micro-batch, and the weighted
//! losses and gradients are summed over the ranks, so every rank applies the update of the
//! whole batch; evaluation runs on every rank (the same numbers, no exchange needed for early
//! stopping), and only rank 0 writes files.
//!
//! Exact resume: the data order of epoch `e` is a pure function of `(seed, e)`
//! ([`crate::data::EpochBatches`]), so the data position is `(epoch, batch index)`; the
//! prompt and the optimizer moments are restored bit for bit, and the kernels are
//! deterministic, so a resumed run reproduces the uninterrupted run's losses exactly.
//! With `reparam: residual` ([`super::reparam`]) the objective sees the folded `P'`, which is
//! what evaluations and saved prompts hold; the checkpoints add `P`, the MLP and its moments.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::checkpoint::{self, Checkpoint};
use super::eval::{self, EvalReport, Tokenized};
use super::init::{init_prompt, Init};
use super::optim::{self, Optimizer, OptimizerKind, Schedule};
use super::parallel::{self, Reducer, Single};
use super::reparam::{self, Reparam};
use crate::data::{self, EpochBatches, TaskSpec};
use crate::infer::objective;
use crate::model::input::{PromptKind, PromptRef};
use crate::model::FrozenModel;
use crate::prompt::SoftPrompt;
use crate::report::plot;
use crate::{Error, Result, Tensor};

/// Everything that defines a run (saved in the prompt's metadata and the checkpoints).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainConfig {
    pub task: TaskSpec,
    pub train_file: String,
    pub validation_file: Option<String>,
    pub num_virtual_tokens: usize,
    pub init: Init,
    pub optimizer: OptimizerKind,
    pub lr: f32,
    pub schedule: Schedule,
    pub warmup_steps: u64,
    /// Optimizer steps.
    pub steps: u64,
    pub batch_size: usize,
    pub grad_accum: usize,
    /// Clip the prompt gradient's L2 norm (0 = off).
    pub max_grad_norm: f32,
    pub seed: u64,
    /// Evaluate every N steps (0 = only at the end).
    pub eval_every: u64,
    /// Evaluate on at most this many validation examples (None = all).
    pub eval_limit: Option<usize>,
    /// Stop after this many evaluations without improvement (None = never).
    pub patience: Option<usize>,
    pub checkpoint_every: u64,
    pub keep_checkpoints: usize,
    /// Texts are cut to their last `max_len` tokens.
    pub max_len: usize,
    /// Average candidate log-probs over their tokens (multi-token candidates).
    pub length_norm: bool,
    /// Use at most this many training examples (None = all).
    pub train_limit: Option<usize>,
    pub skip_bad_rows: bool,
    pub eval_batch_size: usize,
    /// Folder that relative data files are resolved against.
    pub data_root: Option<PathBuf>,
    /// How the prompt is parameterized while training (the saved prompt is always the plain
    /// `[P, D]` the objective saw); absent in older configs = none.
    #[serde(default)]
    pub reparam: Reparam,
    /// Input embeddings (prompt tuning) or a deep prompt: keys and values at every layer
    /// (prefix tuning); absent in older configs = input.
    #[serde(default)]
    pub prompt_kind: PromptKind,
}

/// The defaults of `softprompt train`: the built-in demo task, 20 virtual tokens from the
/// vocabulary, AdamW (weight decay 1e-5) at its [`OptimizerKind::default_lr`], linear decay
/// after 10 warm-up steps, 150 steps of batch 8, evaluation and a checkpoint every 50 steps.
impl Default for TrainConfig {
    fn default() -> Self {
        // The built-in tasks are embedded and checked by a unit test of `data`.
        let task = data::builtin_task("demo").expect("the built-in demo task parses");
        let optimizer = OptimizerKind::adamw_default().with_weight_decay(1e-5);
        TrainConfig {
            train_file: task.train.clone().unwrap_or_default(),
            validation_file: task.validation.clone(),
            task,
            num_virtual_tokens: 20,
            init: Init::Vocab { top: 5000 },
            lr: optimizer.default_lr(),
            optimizer,
            schedule: Schedule::Linear,
            warmup_steps: 10,
            steps: 150,
            batch_size: 8,
            grad_accum: 1,
            max_grad_norm: 1.0,
            seed: 0,
            eval_every: 50,
            eval_limit: None,
            patience: None,
            checkpoint_every: 50,
            keep_checkpoints: 2,
            max_len: 256,
            length_norm: false,
            train_limit: None,
            skip_bad_rows: false,
            eval_batch_size: 32,
            data_root: None,
            reparam: Reparam::None,
            prompt_kind: PromptKind::Input,
        }
    }
}

impl TrainConfig {
    /// `batch_size`, `grad_accum` and `steps` are at least 1 (an error naming the first that
    /// is not).
    pub(crate) fn check_sizes(&self) -> Result<()> {
        for (name, v) in [
            ("batch_size", self.batch_size as u64),
            ("grad_accum", self.grad_accum as u64),
            ("steps", self.steps),
        ] {
            if v == 0 {
                return Err(Error::setting(name, format!("{name} must be at least 1")));
            }
        }
        Ok(())
    }
}

/// One optimizer step, as logged.
#[derive(Clone, Debug, Serialize)]
pub struct StepLog {
    pub step: u64,
    pub epoch: u64,
    pub loss: f64,
    pub lr: f32,
    pub grad_norm: f32,
    /// Rows (virtual + real tokens) processed this step (by all ranks).
    pub tokens: usize,
    pub seconds: f64,
    /// Of `seconds`, the time in all-reduces, waiting for the slowest rank included (0 in one
    /// process).
    pub reduce_seconds: f64,
}

/// An evaluation, as logged.
#[derive(Clone, Debug, Serialize)]
pub struct EvalLog {
    pub step: u64,
    pub report: EvalReport,
    pub best: bool,
}

/// Receives progress (the CLI draws a progress bar from it).
pub trait Observer {
    fn on_start(&mut self, _start_step: u64, _total_steps: u64) {}
    fn on_step(&mut self, _s: &StepLog) {}
    fn on_eval(&mut self, _e: &EvalLog) {}
    fn on_message(&mut self, _msg: &str) {}
}

/// A silent observer.
pub struct Quiet;
impl Observer for Quiet {}

#[derive(Clone, Debug, Serialize)]
pub struct TrainSummary {
    pub steps_done: u64,
    pub interrupted: bool,
    pub early_stopped: bool,
    pub best: Option<(u64, f64)>,
    pub final_eval: Option<EvalReport>,
    pub train_examples: usize,
    pub validation_examples: usize,
    pub seconds: f64,
    pub output: PathBuf,
}

/// Mutable run state that checkpoints carry (besides the prompt and optimizer).
#[derive(Clone, Debug, Serialize, Deserialize)]
struct RunState {
    step: u64,
    epoch: u64,
    batch_in_epoch: usize,
    best_step: Option<u64>,
    best_value: Option<f64>,
    evals_without_improvement: usize,
    seconds: f64,
}

/// Load and tokenize one split of the task ([`data::load_items`], then [`eval::tokenize`]
/// with the run's `max_len`). Returns the examples, the split's name and the bad rows skipped.
pub fn load_split(
    model: &FrozenModel,
    task: &TaskSpec,
    file: &str,
    cfg: &TrainConfig,
) -> Result<(Tokenized, String, usize)> {
    let split = data::load_items(task, file, cfg.data_root.as_deref(), cfg.skip_bad_rows)?;
    let tokens = eval::tokenize(model, &split.items, cfg.max_len)?;
    Ok((tokens, split.name, split.skipped))
}

/// The run's training split (cut to `train_limit`, never empty), its name, and the
/// validation split (cut to `eval_limit`) when there is one. Skipped bad rows are reported
/// to `obs`.
pub(crate) fn load_train_val(
    model: &FrozenModel,
    cfg: &TrainConfig,
    obs: &mut dyn Observer,
) -> Result<(Tokenized, String, Option<Tokenized>)> {
    let mut load = |file: &str, limit: Option<usize>| -> Result<(Tokenized, String)> {
        let (mut t, name, skipped) = load_split(model, &cfg.task, file, cfg)?;
        if skipped > 0 {
            obs.on_message(&format!("{name}: skipped {skipped} bad rows"));
        }
        if let Some(n) = limit {
            t.truncate(n);
        }
        Ok((t, name))
    };
    let (train_data, train_name) = load(&cfg.train_file, cfg.train_limit)?;
    if train_data.is_empty() {
        return Err(Error::Input(format!("{train_name}: no training examples")));
    }
    let val = match &cfg.validation_file {
        Some(f) => Some(load(f, cfg.eval_limit)?.0),
        None => None,
    };
    Ok((train_data, train_name, val))
}

/// The adapter to save: PEFT config + our metadata (fingerprints, task, config, metrics).
fn make_prompt(
    model: &FrozenModel,
    cfg: &TrainConfig,
    obj: &dyn Objective,
    emb: &Tensor,
    metrics: serde_json::Value,
) -> SoftPrompt {
    let mut p = match cfg.prompt_kind {
        PromptKind::Input => SoftPrompt::for_model(model, emb.clone()),
        PromptKind::Prefix => SoftPrompt::for_model_prefix(model, emb.clone()),
    };
    if let Some(meta) = p.meta.as_mut() {
        meta.task = serde_json::to_value(&cfg.task).ok();
        meta.training = obj.training_meta(cfg);
        meta.metrics = Some(metrics);
    }
    p
}

/// What the training loop optimises: training examples addressed by index (batched by
/// length) and an evaluation of the prompt (higher `value` is better). [`train`] uses a
/// task's labelled splits; `distill` the teacher's cached distributions.
pub trait Objective {
    /// Training examples.
    fn train_len(&self) -> usize;
    /// Validation examples (0: no evaluation, the last prompt is the result).
    fn val_len(&self) -> usize;
    /// Rows each training example puts through the model (without the prompt).
    fn lengths(&self) -> Vec<usize>;
    /// Loss and d loss / d prompt `[P, D]` of the training examples at `idx`.
    fn batch(
        &self,
        model: &FrozenModel,
        prompt: PromptRef,
        idx: &[usize],
    ) -> Result<objective::BatchResult>;
    /// The prompt on the validation examples.
    fn evaluate(&self, model: &FrozenModel, prompt: PromptRef) -> Result<EvalReport>;
    /// The saved prompt's `training` metadata.
    fn training_meta(&self, cfg: &TrainConfig) -> Option<serde_json::Value> {
        serde_json::to_value(cfg).ok()
    }
}

/// A task's labelled training split and optional validation split.
struct TaskObjective<'a> {
    cfg: &'a TrainConfig,
    train: Tokenized,
    val: Option<Tokenized>,
}

impl Objective for TaskObjective<'_> {
    fn train_len(&self) -> usize {
        self.train.len()
    }
    fn val_len(&self) -> usize {
        self.val.as_ref().map_or(0, |v| v.len())
    }
    fn lengths(&self) -> Vec<usize> {
        self.train.lengths()
    }
    fn batch(
        &self,
        model: &FrozenModel,
        prompt: PromptRef,
        idx: &[usize],
    ) -> Result<objective::BatchResult> {
        match &self.train.select(idx) {
            Tokenized::Class(b) => {
                objective::classify_batch(&model.llama, Some(prompt), b, self.cfg.length_norm, true)
            }
            Tokenized::Gen(b) => objective::lm_batch(&model.llama, Some(prompt), b, true),
        }
    }
    fn evaluate(&self, model: &FrozenModel, prompt: PromptRef) -> Result<EvalReport> {
        let v = self
            .val
            .as_ref()
            .ok_or_else(|| Error::Input("no validation split".into()))?;
        eval::evaluate(
            model,
            Some(prompt),
            v,
            self.cfg.eval_batch_size,
            self.cfg.length_norm,
        )
    }
}

/// Refuse settings the loop cannot run (before any data is loaded).
fn check_run(cfg: &TrainConfig) -> Result<()> {
    cfg.check_sizes()?;
    if !(cfg.lr > 0.0 && cfg.lr.is_finite()) {
        return Err(Error::setting(
            "lr",
            format!("lr must be positive, got {}", cfg.lr),
        ));
    }
    cfg.optimizer.validate()?;
    if cfg.prompt_kind == PromptKind::Prefix && cfg.reparam != Reparam::None {
        return Err(Error::setting(
            "reparam",
            "the residual reparameterization applies to input prompts, not to deep (prefix) prompts",
        ));
    }
    cfg.reparam.validate(&cfg.optimizer)
}

/// Train a prompt. `stop` is polled between steps (Ctrl-C): the run then checkpoints and
/// returns with `interrupted`. With `resume`, continues from `OUT/checkpoints`.
pub fn train(
    model: &FrozenModel,
    cfg: &TrainConfig,
    out: &Path,
    resume: bool,
    stop: &AtomicBool,
    obs: &mut dyn Observer,
) -> Result<TrainSummary> {
    train_with(model, cfg, out, resume, stop, obs, &Single)
}

/// [`train`], data parallel over the ranks of `red` (see the module doc).
pub fn train_with(
    model: &FrozenModel,
    cfg: &TrainConfig,
    out: &Path,
    resume: bool,
    stop: &AtomicBool,
    obs: &mut dyn Observer,
    red: &dyn Reducer,
) -> Result<TrainSummary> {
    check_run(cfg)?;
    let t_load = Instant::now();
    let (train_data, train_name, val) = load_train_val(model, cfg, obs)?;
    obs.on_message(&format!(
        "{} training examples from {train_name}, {} validation examples; tokenized in {:.1}s",
        train_data.len(),
        val.as_ref().map_or(0, |v| v.len()),
        t_load.elapsed().as_secs_f32()
    ));
    let obj = TaskObjective {
        cfg,
        train: train_data,
        val,
    };
    train_objective_with(model, cfg, &obj, out, resume, stop, obs, red)
}

/// The training loop of [`train`] on any [`Objective`] (`cfg`'s data fields are metadata
/// here; the objective holds the data).
pub fn train_objective(
    model: &FrozenModel,
    cfg: &TrainConfig,
    obj: &dyn Objective,
    out: &Path,
    resume: bool,
    stop: &AtomicBool,
    obs: &mut dyn Observer,
) -> Result<TrainSummary> {
    train_objective_with(model, cfg, obj, out, resume, stop, obs, &Single)
}

/// [`train_objective`], data parallel over the ranks of `red`.
#[allow(clippy::too_many_arguments)]
pub fn train_objective_with(
    model: &FrozenModel,
    cfg: &TrainConfig,
    obj: &dyn Objective,
    out: &Path,
    resume: bool,
    stop: &AtomicBool,
    obs: &mut dyn Observer,
    red: &dyn Reducer,
) -> Result<TrainSummary> {
    check_run(cfg)?;
    // Rank 0 writes the run's files; the others only compute.
    let writer = red.rank() == 0;
    if obj.train_len() == 0 {
        return Err(Error::Input("no training examples".into()));
    }
    let ckpt_dir = out.join("checkpoints");
    let log_path = out.join("train_log.jsonl");
    // A fresh run never writes over an earlier run's checkpoints (nothing a user had is lost).
    if !resume && std::fs::read_dir(&ckpt_dir).is_ok_and(|mut d| d.next().is_some()) {
        return Err(Error::setting(
            "resume",
            format!(
                "{} holds checkpoints of an earlier run: resume it, or choose another output folder",
                ckpt_dir.display()
            ),
        ));
    }
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;

    // d: values per virtual token (the hidden size, or layers x 2 x key/value width).
    let d = model.llama.prompt_width(cfg.prompt_kind);
    let p = cfg.num_virtual_tokens;
    let mut emb;
    let mut opt;
    let mut st;
    let resumed = if resume {
        checkpoint::load_latest(&ckpt_dir)?
    } else {
        None
    };
    match &resumed {
        Some(ck) => {
            let saved: TrainConfig = serde_json::from_value(ck.state["config"].clone())
                .map_err(|e| Error::format(&ckpt_dir, format!("checkpoint config: {e}")))?;
            if serde_json::to_value(&saved).ok() != serde_json::to_value(cfg).ok() {
                obs.on_message("note: the resumed run's settings differ from the checkpoint's; using the new ones");
            }
            st = serde_json::from_value::<RunState>(ck.state["run"].clone())
                .map_err(|e| Error::format(&ckpt_dir, format!("checkpoint state: {e}")))?;
            let pt = ck
                .tensors
                .iter()
                .find(|t| t.0 == "prompt")
                .ok_or_else(|| Error::format(&ckpt_dir, "checkpoint has no prompt tensor"))?;
            if pt.1 != [p, d] {
                return Err(Error::Mismatch(format!(
                    "checkpoint prompt is {:?}, the run is [{p}, {d}]",
                    pt.1
                )));
            }
            emb = Tensor::new(vec![p, d], pt.2.clone());
            let opt_tensors: Vec<_> = ck
                .tensors
                .iter()
                .filter(|t| t.0 != "prompt")
                .cloned()
                .collect();
            opt = Optimizer::from_state(&opt_tensors, &ck.state["optimizer"])?;
            if writer {
                truncate_log(&log_path, st.step)?;
            }
            obs.on_message(&format!(
                "resumed from step {} (epoch {}, batch {})",
                st.step, st.epoch, st.batch_in_epoch
            ));
        }
        None => {
            if resume {
                obs.on_message("no checkpoint found: starting from scratch");
            }
            emb = init_prompt(model, cfg)?;
            opt = Optimizer::new(cfg.optimizer, p, d);
            st = RunState {
                step: 0,
                epoch: 0,
                batch_in_epoch: 0,
                best_step: None,
                best_value: None,
                evals_without_improvement: 0,
                seconds: 0.0,
            };
            if writer {
                std::fs::write(&log_path, b"").map_err(|e| Error::io(&log_path, e))?;
            }
        }
    }
    // Ranks other than 0 log nowhere.
    let mut log: Box<dyn Write> = if writer {
        Box::new(
            std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .open(&log_path)
                .map_err(|e| Error::io(&log_path, e))?,
        )
    } else {
        Box::new(std::io::sink())
    };
    let mut order = EpochBatches::new(
        obj.lengths(),
        cfg.batch_size,
        cfg.seed,
        st.epoch,
        st.batch_in_epoch,
    );
    // With a reparameterization, `emb` is the P' the objective sees and `rp` holds P and the MLP.
    let ck_reparam = resumed
        .as_ref()
        .map(|c| (&c.tensors[..], &c.state["reparam"]));
    let mut rp = reparam::setup(cfg.reparam, cfg.optimizer, cfg.seed, &mut emb, ck_reparam)?;
    let t0 = Instant::now();
    let secs_before = st.seconds;
    let mut interrupted = false;
    let mut early_stopped = false;
    let mut last_eval = None;
    obs.on_start(st.step, cfg.steps);

    let save_ckpt = |emb: &Tensor,
                     opt: &Optimizer,
                     rp: Option<&reparam::Residual>,
                     st: &RunState|
     -> Result<()> {
        if !writer {
            return Ok(());
        }
        let (mut tensors, ostate) = opt.state();
        tensors.insert(0, ("prompt".to_string(), vec![p, d], emb.data.clone()));
        let mut state = json!({ "config": cfg, "run": st, "optimizer": ostate });
        if let Some(r) = rp {
            let (t, j) = r.state();
            tensors.extend(t);
            state["reparam"] = j;
        }
        let ck = Checkpoint {
            step: st.step,
            tensors,
            state,
        };
        checkpoint::save_checkpoint(&ckpt_dir, &ck, cfg.keep_checkpoints.max(1))?;
        Ok(())
    };

    while st.step < cfg.steps {
        let ts = Instant::now();
        let mut grad = vec![0.0f32; p * d]; // [P, D]
        let (mut loss, mut rows, mut reduce_seconds) = (0.0f64, 0usize, 0.0f64);
        for _ in 0..cfg.grad_accum {
            let idx = order
                .next()
                .ok_or_else(|| Error::Input("no training examples".into()))?;
            (st.epoch, st.batch_in_epoch) = order.position();
            if red.size() == 1 {
                let r = obj.batch(
                    model,
                    PromptRef::from_tensor_kind(&emb, cfg.prompt_kind)?,
                    &idx,
                )?;
                loss += r.loss / cfg.grad_accum as f64;
                rows += r.rows;
                if let Some(g) = r.grad {
                    for (a, b) in grad.iter_mut().zip(&g) {
                        *a += b / cfg.grad_accum as f32;
                    }
                }
                continue;
            }
            // This rank's share, weighted by its loss denominator: [w * grad (P*D), w * loss,
            // w, rows], summed over the ranks.
            let mine = parallel::share(&idx, red.rank(), red.size());
            let mut buf = vec![0.0f64; p * d + 3];
            if !mine.is_empty() {
                let r = obj.batch(
                    model,
                    PromptRef::from_tensor_kind(&emb, cfg.prompt_kind)?,
                    mine,
                )?;
                if let Some(g) = r.grad {
                    for (a, b) in buf.iter_mut().zip(&g) {
                        *a = r.weight * *b as f64;
                    }
                }
                buf[p * d] = r.weight * r.loss;
                buf[p * d + 1] = r.weight;
                buf[p * d + 2] = r.rows as f64;
            }
            let tr = Instant::now();
            red.all_reduce_sum(&mut buf)?;
            reduce_seconds += tr.elapsed().as_secs_f64();
            let w = buf[p * d + 1];
            if w > 0.0 {
                loss += buf[p * d] / w / cfg.grad_accum as f64;
                for (a, b) in grad.iter_mut().zip(&buf[..p * d]) {
                    *a += (b / w / cfg.grad_accum as f64) as f32;
                }
            }
            rows += buf[p * d + 2] as usize;
        }
        if !loss.is_finite() {
            return Err(Error::setting(
                "lr",
                format!("loss became {loss} at step {}: lower lr", st.step),
            ));
        }
        // With a reparameterization, dL/dP' becomes [dP ; dMLP], clipped as one vector.
        if let Some(r) = &rp {
            grad = r.backward(&grad);
        }
        let grad_norm = optim::clip_grad_norm(&mut grad, cfg.max_grad_norm);
        let lr = optim::lr_at(cfg.schedule, cfg.lr, st.step, cfg.steps, cfg.warmup_steps);
        match &mut rp {
            Some(r) => emb = r.step(&mut opt, &grad, lr),
            None => opt.step(&mut emb.data, &grad, lr),
        }
        st.step += 1;
        let s = StepLog {
            step: st.step,
            epoch: st.epoch,
            loss,
            lr,
            grad_norm,
            tokens: rows,
            seconds: ts.elapsed().as_secs_f64(),
            reduce_seconds,
        };
        let mut line = json!({"type": "step", "step": s.step, "epoch": s.epoch, "loss": s.loss, "lr": s.lr, "grad_norm": s.grad_norm, "tokens": s.tokens, "seconds": s.seconds});
        if red.size() > 1 {
            line["ranks"] = json!(red.size());
            line["reduce_seconds"] = json!(s.reduce_seconds);
        }
        writeln!(log, "{line}").map_err(|e| Error::io(&log_path, e))?;
        obs.on_step(&s);

        let last = st.step == cfg.steps;
        let mut stopping = stop.load(Ordering::SeqCst);
        if red.size() > 1 {
            // Stop together: a rank that left the loop alone would hang the others.
            let mut any = [stopping as u8 as f64];
            red.all_reduce_sum(&mut any)?;
            stopping = any[0] > 0.0;
        }
        if obj.val_len() > 0 {
            if (cfg.eval_every > 0 && st.step % cfg.eval_every == 0) || last {
                let rep =
                    obj.evaluate(model, PromptRef::from_tensor_kind(&emb, cfg.prompt_kind)?)?;
                let better = st.best_value.is_none_or(|b| rep.value > b);
                if better {
                    st.best_value = Some(rep.value);
                    st.best_step = Some(st.step);
                    st.evals_without_improvement = 0;
                    let metrics = json!({ rep.metric.clone(): rep.value, "step": st.step, "validation_examples": rep.n });
                    if writer {
                        make_prompt(model, cfg, obj, &emb, metrics).save(out)?;
                    }
                } else {
                    st.evals_without_improvement += 1;
                }
                writeln!(log, "{}", json!({"type": "eval", "step": st.step, "metric": rep.metric, "value": rep.value, "loss": rep.loss, "best": better}))
                    .map_err(|e| Error::io(&log_path, e))?;
                obs.on_eval(&EvalLog {
                    step: st.step,
                    report: rep.clone(),
                    best: better,
                });
                last_eval = Some(rep);
                if cfg
                    .patience
                    .is_some_and(|pat| st.evals_without_improvement >= pat)
                {
                    early_stopped = true;
                }
            }
        }
        st.seconds = secs_before + t0.elapsed().as_secs_f64();
        let periodic = cfg.checkpoint_every > 0 && st.step % cfg.checkpoint_every == 0;
        if periodic || stopping || early_stopped || last {
            save_ckpt(&emb, &opt, rp.as_ref(), &st)?;
        }
        if stopping {
            interrupted = true;
            obs.on_message(&format!(
                "interrupted: checkpoint saved at step {}; resume the run to continue",
                st.step
            ));
            break;
        }
        if early_stopped {
            obs.on_message(&format!(
                "early stop: no improvement in {} evaluations",
                cfg.patience.unwrap_or(0)
            ));
            break;
        }
    }
    log.flush().map_err(|e| Error::io(&log_path, e))?;
    let metrics_last = json!({ "step": st.step });
    if writer {
        make_prompt(model, cfg, obj, &emb, metrics_last.clone()).save(&out.join("last"))?;
        if obj.val_len() == 0 {
            make_prompt(model, cfg, obj, &emb, metrics_last).save(out)?;
        }
        if let Err(e) = plot_curve(&log_path, &out.join("curve.png"), &cfg.task.name) {
            obs.on_message(&format!("could not draw the curve: {e}"));
        }
    }
    Ok(TrainSummary {
        steps_done: st.step,
        interrupted,
        early_stopped,
        best: st.best_step.zip(st.best_value),
        final_eval: last_eval,
        train_examples: obj.train_len(),
        validation_examples: obj.val_len(),
        seconds: st.seconds,
        output: out.to_path_buf(),
    })
}

/// Drop log lines after `step` (a resumed run rewrites what came after its checkpoint).
fn truncate_log(path: &Path, step: u64) -> Result<()> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(path, e)),
    };
    let kept: String = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .and_then(|v| v["step"].as_u64())
                .is_some_and(|s| s <= step)
        })
        .map(|l| format!("{l}\n"))
        .collect();
    crate::fsio::atomic_write(path, kept.as_bytes())
}

/// Loss (and its moving average) and the validation metric against the step.
pub fn plot_curve(log_path: &Path, png: &Path, task: &str) -> Result<()> {
    let text = std::fs::read_to_string(log_path).map_err(|e| Error::io(log_path, e))?;
    let (mut loss, mut metric, mut metric_name) = (Vec::new(), Vec::new(), String::from("metric"));
    for l in text.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(l) else {
            continue;
        };
        let step = v["step"].as_f64().unwrap_or(f64::NAN);
        match v["type"].as_str() {
            Some("step") => loss.push((step, v["loss"].as_f64().unwrap_or(f64::NAN))),
            Some("eval") => {
                metric.push((step, v["value"].as_f64().unwrap_or(f64::NAN)));
                metric_name = v["metric"].as_str().unwrap_or("metric").to_string();
            }
            _ => {}
        }
    }
    // An exponential moving average makes the trend readable over noisy batches.
    let mut ema = Vec::with_capacity(loss.len());
    let mut acc = None;
    for &(s, l) in &loss {
        let a = acc.map_or(l, |a: f64| 0.95 * a + 0.05 * l);
        acc = Some(a);
        ema.push((s, a));
    }
    let mut series = vec![
        plot::Series::new("train loss", loss),
        plot::Series::new("train loss (EMA)", ema),
    ];
    if !metric.is_empty() {
        series.push(plot::Series::new(
            format!("validation {metric_name}"),
            metric,
        ));
    }
    plot::line_chart(
        png,
        &format!("softprompt training: {task}"),
        "step",
        "loss / metric",
        &series,
    )
}
