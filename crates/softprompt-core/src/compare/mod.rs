//! `softprompt compare`: hard prompt vs prompt tuning vs LoRA vs full fine-tuning on one
//! task and model, measured (`CompareConfig::methods` picks the rows). Stages, in order, each saved to `OUT/stages/NAME.json` when finished
//! (so `--resume` skips it):
//!
//! 1. `base`: the untouched model's perplexity on [`GENERAL_TEXT`], its accuracy on a second
//!    task, and the weights' SHA-256;
//! 2. `hard`: every template of the task zero-shot, then the best of them with `k`
//!    demonstrations from the training split (fixed seed, balanced over classes);
//! 3. `prompt`: prompt tuning with the regular trainer (its own checkpoints make it
//!    resumable mid-run), then the base model's perplexity and second-task accuracy again and
//!    its digest (byte-identical by construction: the numbers are measured, not assumed);
//! 4. `lora`: LoRA ([`crate::train::lora`], rank 8 on the attention q/v projections by
//!    default) on the same data, batches, seed and schedule, evaluated with the adapters
//!    merged into the weights (the base model's inference cost), then removed (the base
//!    weights' digest is checked);
//! 5. `full`: full fine-tuning ([`crate::train::finetune`]) on the same data, batches, seed
//!    and schedule, then the same measurements on the fine-tuned model (restarts when
//!    interrupted: no mid-run checkpoints).
//!
//! Peak memory is the process's resident high-water mark (`VmHWM`), reset at the start of
//! each stage through `/proc/self/clear_refs` (Linux); elsewhere it is not reported.
//! [`markdown::report`] renders `compare.md`, `compare.png` and `compare.json`.
//!
//! Files: `measure.rs` (memory, perplexity, disk size, inference timing), `hard.rs` (the
//! few-shot hard prompt), `markdown.rs` (the report).

mod hard;
pub mod markdown;
pub mod measure;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use self::hard::{demo_prefix, with_prefix};
use self::markdown::report;
use self::measure::*;
use crate::data::{Items, TaskSpec};
use crate::fsio::atomic_write;
use crate::model::FrozenModel;
use crate::prompt::SoftPrompt;
use crate::train::eval;
use crate::train::finetune;
use crate::train::lora::{self, Lora};
use crate::train::trainer::{self, Observer, TrainConfig};
use crate::{Error, Result};

/// The general-text set for the forgetting measurement: original English paragraphs on
/// everyday and encyclopedic topics written for softprompt (see the README).
pub const GENERAL_TEXT: &str = include_str!("../../data/general_text.txt");

/// What a comparison runs.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CompareConfig {
    pub model: String,
    /// Prompt tuning's training config (also the data, batches, seed and schedule of full
    /// fine-tuning and LoRA).
    pub prompt: TrainConfig,
    /// Full fine-tuning's learning rate and optimizer (AdamW; LoRA's optimizer too).
    pub ft_lr: f32,
    pub ft_optimizer: crate::train::optim::OptimizerKind,
    /// Demonstrations in the few-shot hard prompt.
    pub shots: usize,
    /// Second, untouched task for the forgetting measurement (None: skipped).
    pub second_task: Option<TaskSpec>,
    /// The rows to run (default: all of [`Method::ALL`]).
    #[serde(default = "all_methods")]
    pub methods: Vec<Method>,
    /// The residual row's reparameterization (`residual[:BOTTLENECK]`).
    #[serde(default = "default_residual")]
    pub residual: crate::train::reparam::Reparam,
    /// The deep-prompt row's learning rate (AdamW, as prompt tuning otherwise).
    #[serde(default = "default_deep_lr")]
    pub deep_lr: f32,
    /// LoRA's rank, alpha and learning rate (AdamW, `ft_optimizer`'s settings).
    #[serde(default)]
    pub lora: LoraSettings,
}

/// A row of the comparison (`--methods hard,prompt,residual,deep,ensemble,lora,full`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// Hard prompts, zero- and few-shot.
    Hard,
    /// Prompt tuning.
    Prompt,
    /// Full fine-tuning.
    Full,
    /// LoRA on the attention q/v projections (merged for inference).
    Lora,
    /// Prompt tuning with the residual reparameterization (folded into a plain prompt).
    Residual,
    /// Deep prompts (prefix tuning): keys and values at every layer.
    Deep,
    /// The class probabilities of the prompt methods that ran (prompt, residual, deep: at
    /// least two), averaged.
    Ensemble,
}

impl Method {
    pub const ALL: [Method; 4] = [Method::Hard, Method::Prompt, Method::Full, Method::Lora];
}

fn all_methods() -> Vec<Method> {
    Method::ALL.to_vec()
}

pub fn default_residual() -> crate::train::reparam::Reparam {
    crate::train::reparam::Reparam::Residual {
        bottleneck: crate::train::reparam::DEFAULT_BOTTLENECK,
    }
}

pub fn default_deep_lr() -> f32 {
    0.01
}

impl std::str::FromStr for Method {
    type Err = Error;
    fn from_str(s: &str) -> Result<Method> {
        match s.trim() {
            "hard" => Ok(Method::Hard),
            "prompt" => Ok(Method::Prompt),
            "full" => Ok(Method::Full),
            "lora" => Ok(Method::Lora),
            "residual" => Ok(Method::Residual),
            "deep" => Ok(Method::Deep),
            "ensemble" => Ok(Method::Ensemble),
            o => Err(Error::setting(
                "methods",
                format!("unknown method '{o}': choose from hard, prompt, residual, deep, ensemble, lora, full"),
            )),
        }
    }
}

/// LoRA's settings in a comparison.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LoraSettings {
    pub rank: usize,
    pub alpha: f32,
    pub lr: f32,
}

impl Default for LoraSettings {
    fn default() -> Self {
        LoraSettings {
            rank: lora::DEFAULT_RANK,
            alpha: lora::DEFAULT_ALPHA,
            lr: 5e-4,
        }
    }
}

/// Measurements of the untouched model.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BaseStage {
    pub general_ppl: f64,
    pub general_tokens: usize,
    pub second_task: Option<SecondTask>,
    pub weights_digest: String,
    pub num_parameters: usize,
    pub weight_bytes: usize,
    pub rss_after_load_bytes: Option<u64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SecondTask {
    pub name: String,
    pub accuracy: f64,
    pub n: usize,
}

/// One evaluated hard prompt.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HardResult {
    pub template: String,
    pub shots: usize,
    pub accuracy: f64,
    pub n: usize,
    pub seconds: f64,
    pub tokens_per_example: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HardStage {
    pub zero_shot: Vec<HardResult>,
    pub few_shot: Vec<HardResult>,
    /// The few-shot demonstrations' prefix (same for every template index's rendering).
    pub demo_prefixes: Vec<String>,
    pub seconds: f64,
    pub peak_rss_bytes: Option<u64>,
}

/// A trained method (prompt tuning or full fine-tuning).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainedStage {
    pub trainable_parameters: usize,
    pub artifact: PathBuf,
    pub artifact_bytes: u64,
    pub train_seconds: f64,
    pub steps: u64,
    pub first_loss: Option<f64>,
    pub last_loss: Option<f64>,
    pub peak_rss_bytes: Option<u64>,
    pub accuracy: f64,
    pub n: usize,
    pub eval_seconds: f64,
    pub tokens_per_example: f64,
    pub general_ppl_after: f64,
    pub second_task_after: Option<SecondTask>,
    pub weights_digest_after: String,
}

/// Inference cost, timed back to back on one model at the end (the cost of a forward depends
/// on the architecture and the input length, not on the weights' values), in interleaved
/// rounds so that a change of the machine's load hits every method alike; the best round
/// of each counts.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TimingStage {
    pub examples: usize,
    pub rounds: usize,
    /// Milliseconds per example: hard zero-shot (best template), hard k-shot, prompt
    /// tuning (main template + soft prompt), the main template with no prompt (the cost of
    /// full fine-tuning and of merged LoRA: the base model's architecture). None: the
    /// method was not run.
    pub zero_shot_ms: Option<f64>,
    pub few_shot_ms: Option<f64>,
    pub prompt_tuning_ms: Option<f64>,
    pub full_finetuning_ms: f64,
    /// The main template after a deep prompt (no prompt rows; P more keys per layer).
    #[serde(default)]
    pub deep_ms: Option<f64>,
}

/// Everything measured; what `compare.json` holds.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Comparison {
    pub config: CompareConfig,
    pub base: BaseStage,
    /// None: the method was not among `config.methods`.
    pub hard: Option<HardStage>,
    pub prompt_tuning: Option<TrainedStage>,
    #[serde(default)]
    pub residual: Option<TrainedStage>,
    #[serde(default)]
    pub deep: Option<TrainedStage>,
    #[serde(default)]
    pub ensemble: Option<TrainedStage>,
    pub full_finetuning: Option<TrainedStage>,
    pub lora: Option<TrainedStage>,
    pub timing: TimingStage,
    /// Wall time of the whole command, this invocation (resumed stages not counted).
    pub seconds: f64,
}

pub(super) fn save_stage<T: Serialize>(out: &Path, name: &str, v: &T) -> Result<()> {
    let dir = out.join("stages");
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let text = serde_json::to_string_pretty(v)
        .map_err(|e| Error::Input(format!("cannot serialize stage {name}: {e}")))?;
    atomic_write(&dir.join(format!("{name}.json")), text.as_bytes())
}

pub(super) fn load_stage<T: for<'a> Deserialize<'a>>(out: &Path, name: &str) -> Result<Option<T>> {
    let path = out.join("stages").join(format!("{name}.json"));
    match std::fs::read_to_string(&path) {
        Ok(t) => serde_json::from_str(&t)
            .map(Some)
            .map_err(|e| Error::format(&path, format!("unreadable stage file: {e}"))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(&path, e)),
    }
}

/// Run (or resume) the comparison into `out`. `model` is changed by the last stage (full
/// fine-tuning trains it in place).
pub fn run(
    model: &mut FrozenModel,
    cfg: &CompareConfig,
    out: &Path,
    resume: bool,
    stop: &AtomicBool,
    obs: &mut dyn Observer,
) -> Result<Comparison> {
    let t0 = Instant::now();
    let stages = out.join("stages");
    if !resume && std::fs::read_dir(&stages).is_ok_and(|mut d| d.next().is_some()) {
        return Err(Error::setting(
            "resume",
            format!(
                "{} holds an earlier comparison: resume it, or choose another output folder",
                stages.display()
            ),
        ));
    }
    if cfg.methods.is_empty() {
        return Err(Error::setting(
            "methods",
            "no method to compare: name at least one of hard, prompt, full, lora",
        ));
    }
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let pcfg = &cfg.prompt;
    let val_file = pcfg.validation_file.clone().ok_or_else(|| {
        Error::Input(format!(
            "task {} has no validation split: compare needs one",
            pcfg.task.name
        ))
    })?;

    // --- 1. the untouched model ---
    let base: BaseStage = match load_stage(out, "base")? {
        Some(b) if resume => {
            obs.on_message("base: done earlier (resumed)");
            b
        }
        _ => {
            obs.on_message("base: perplexity on the general text, second task, weights digest");
            let (general_ppl, general_tokens) = perplexity(model, GENERAL_TEXT)?;
            let second_task = match &cfg.second_task {
                Some(s) => Some(second_task_accuracy(model, s, pcfg)?),
                None => None,
            };
            let b = BaseStage {
                general_ppl,
                general_tokens,
                second_task,
                weights_digest: model.weights_digest(),
                num_parameters: model.llama.num_parameters(),
                weight_bytes: model.llama.weight_bytes(),
                rss_after_load_bytes: current_rss(),
            };
            save_stage(out, "base", &b)?;
            b
        }
    };
    obs.on_message(&format!(
        "base: general-text perplexity {:.3} over {} tokens{}",
        base.general_ppl,
        base.general_tokens,
        base.second_task
            .as_ref()
            .map(|s| format!(", {} accuracy {:.4}", s.name, s.accuracy))
            .unwrap_or_default()
    ));

    // --- 2. hard prompts ---
    let runs = |m: Method| cfg.methods.contains(&m);
    let hard: Option<HardStage> = if !runs(Method::Hard) {
        None
    } else {
        Some(match load_stage(out, "hard")? {
            Some(h) if resume => {
                obs.on_message("hard prompts: done earlier (resumed)");
                h
            }
            _ => {
                let ts = Instant::now();
                reset_peak_rss();
                let templates = pcfg.task.templates().len();
                let (mut zero, mut few, mut prefixes) = (Vec::new(), Vec::new(), Vec::new());
                // Every template zero-shot; then k-shot with the best zero-shot template (a
                // k-shot evaluation costs about k+1 times a zero-shot one).
                let mut plan: Vec<(usize, usize)> = (0..templates).map(|t| (t, 0)).collect();
                let mut i = 0;
                while i < plan.len() {
                    let (ti, k) = plan[i];
                    i += 1;
                    let spec = pcfg
                        .task
                        .with_template(ti)
                        .ok_or_else(|| Error::Input("template index out of range".into()))?;
                    let tpl = spec.templates()[0].to_string();
                    let mut val = items(&spec, &val_file, pcfg)?;
                    if let (Some(n), Items::Class(c)) = (pcfg.eval_limit, &mut val) {
                        c.truncate(n);
                    }
                    let prefix = if k == 0 {
                        String::new()
                    } else {
                        let train = items(&spec, &pcfg.train_file, pcfg)?;
                        demo_prefix(&train, k, pcfg.seed)
                    };
                    // The demonstrations need room: no clipping of the input.
                    let tok = eval::tokenize(
                        model,
                        &with_prefix(&val, &prefix),
                        pcfg.max_len + prefix.len(),
                    )?;
                    let te = Instant::now();
                    let rep =
                        eval::evaluate(model, None, &tok, pcfg.eval_batch_size, pcfg.length_norm)?;
                    let r = HardResult {
                        template: tpl.clone(),
                        shots: k,
                        accuracy: rep.value,
                        n: rep.n,
                        seconds: te.elapsed().as_secs_f64(),
                        tokens_per_example: mean_tokens(&tok),
                    };
                    obs.on_message(&format!(
                        "hard prompt, template {} ({k}-shot): accuracy {:.4} on {} ({:.1}s)",
                        ti + 1,
                        r.accuracy,
                        r.n,
                        r.seconds
                    ));
                    if k == 0 {
                        zero.push(r);
                        if zero.len() == templates && cfg.shots > 0 {
                            let best_t = (0..templates).fold(0, |b, t| {
                                if zero[t].accuracy > zero[b].accuracy {
                                    t
                                } else {
                                    b
                                }
                            });
                            plan.push((best_t, cfg.shots));
                        }
                    } else {
                        few.push(r);
                        prefixes.push(prefix);
                    }
                }
                let h = HardStage {
                    zero_shot: zero,
                    few_shot: few,
                    demo_prefixes: prefixes,
                    seconds: ts.elapsed().as_secs_f64(),
                    peak_rss_bytes: peak_rss(),
                };
                save_stage(out, "hard", &h)?;
                h
            }
        })
    };

    // --- 3. prompt methods: plain, residual, deep; then their ensemble ---
    let pt_dir = out.join("prompt_tuning");
    let mut prompt_stage =
        |m: Method, dir: &Path, tcfg: TrainConfig| -> Result<Option<TrainedStage>> {
            if !runs(m) {
                return Ok(None);
            }
            let (stage, name) = match m {
                Method::Residual => ("residual", "residual prompt tuning"),
                Method::Deep => ("deep", "deep prompt"),
                _ => ("prompt", "prompt tuning"),
            };
            if let Some(p) = load_stage(out, stage)?.filter(|_| resume) {
                obs.on_message(&format!("{name}: done earlier (resumed)"));
                return Ok(Some(p));
            }
            let p = train_prompt(model, cfg, &tcfg, dir, name, &val_file, resume, stop, obs)?;
            obs.on_message(&format!(
                "{name}: base weights sha256 before {} after {} ({})",
                &base.weights_digest[..16],
                &p.weights_digest_after[..16],
                if p.weights_digest_after == base.weights_digest {
                    "byte-identical"
                } else {
                    "CHANGED"
                }
            ));
            save_stage(out, stage, &p)?;
            Ok(Some(p))
        };
    let prompt_tuning = prompt_stage(Method::Prompt, &pt_dir, pcfg.clone())?;
    let residual_dir = out.join("residual");
    let residual = prompt_stage(
        Method::Residual,
        &residual_dir,
        TrainConfig {
            reparam: cfg.residual,
            ..pcfg.clone()
        },
    )?;
    let deep_dir = out.join("deep");
    let deep = prompt_stage(
        Method::Deep,
        &deep_dir,
        TrainConfig {
            prompt_kind: crate::model::input::PromptKind::Prefix,
            lr: cfg.deep_lr,
            ..pcfg.clone()
        },
    )?;
    let ensemble = if !runs(Method::Ensemble) {
        None
    } else {
        let members: Vec<(&Path, &TrainedStage)> = [
            (pt_dir.as_path(), &prompt_tuning),
            (residual_dir.as_path(), &residual),
            (deep_dir.as_path(), &deep),
        ]
        .into_iter()
        .filter_map(|(d, s)| s.as_ref().map(|s| (d, s)))
        .collect();
        if members.len() < 2 {
            return Err(Error::setting(
                "methods",
                "ensemble averages the prompt methods that ran: add at least two of prompt, residual, deep",
            ));
        }
        Some(ensemble_stage(model, cfg, &val_file, &members, obs)?)
    };

    // --- 4. LoRA (merged into the weights for training and evaluation, then removed) ---
    let lora_dir = out.join("lora");
    let lora: Option<TrainedStage> = match load_stage(out, "lora")? {
        _ if !runs(Method::Lora) => None,
        Some(l) if resume => {
            obs.on_message("LoRA: done earlier (resumed)");
            Some(l)
        }
        _ => {
            same_model(model, &base)?;
            reset_peak_rss();
            let mut lcfg = pcfg.clone();
            lcfg.lr = cfg.lora.lr;
            lcfg.optimizer = cfg.ft_optimizer;
            lcfg.validation_file = None;
            let mut ad = Lora::new(
                &model.llama,
                cfg.lora.rank,
                cfg.lora.alpha,
                &lora::DEFAULT_MODULES,
                pcfg.seed,
            )?;
            obs.on_message(&format!(
                "LoRA: rank {} alpha {} on q/v, AdamW lr {}, {} steps x batch {}",
                ad.rank, ad.alpha, lcfg.lr, lcfg.steps, lcfg.batch_size
            ));
            let run = (|| {
                let sum = lora::train_lora(model, &mut ad, &lcfg, &lora_dir, stop, obs)?;
                if sum.interrupted {
                    return Err(Error::setting(
                        "resume",
                        "interrupted during LoRA: resuming the comparison restarts this stage",
                    ));
                }
                let train_peak = peak_rss();
                let adapter = lora_dir.join("adapter");
                measure_trained(
                    model,
                    cfg,
                    &val_file,
                    None,
                    Trained {
                        name: "LoRA",
                        trainable_parameters: sum.trainable_parameters,
                        artifact_bytes: disk_bytes(&adapter)?,
                        artifact: adapter,
                        seconds: sum.seconds,
                        steps: sum.steps_done,
                        log: lora_dir.join("train_log.jsonl"),
                        peak: train_peak,
                    },
                    obs,
                )
            })();
            // The base weights back, whatever happened (they were kept aside).
            ad.restore(&mut model.llama)?;
            let l = run?;
            same_model(model, &base)?;
            save_stage(out, "lora", &l)?;
            Some(l)
        }
    };

    // --- 5. full fine-tuning ---
    let ft_dir = out.join("full_finetune");
    let full_finetuning: Option<TrainedStage> = match load_stage(out, "full")? {
        _ if !runs(Method::Full) => None,
        Some(f) if resume => {
            obs.on_message("full fine-tuning: done earlier (resumed)");
            Some(f)
        }
        _ => {
            same_model(model, &base)?;
            reset_peak_rss();
            let mut fcfg = pcfg.clone();
            fcfg.lr = cfg.ft_lr;
            fcfg.optimizer = cfg.ft_optimizer;
            fcfg.validation_file = None;
            obs.on_message(&format!(
                "full fine-tuning: every weight, AdamW lr {}, {} steps x batch {}",
                fcfg.lr, fcfg.steps, fcfg.batch_size
            ));
            let sum = finetune::finetune(model, &fcfg, &ft_dir, stop, obs)?;
            if sum.interrupted {
                return Err(Error::setting(
                    "resume",
                    "interrupted during full fine-tuning: resuming the comparison restarts this stage",
                ));
            }
            let train_peak = peak_rss();
            let f = measure_trained(
                model,
                cfg,
                &val_file,
                None,
                Trained {
                    name: "full fine-tuning",
                    trainable_parameters: sum.trainable_parameters,
                    artifact: ft_dir.join("model"),
                    artifact_bytes: disk_bytes(&ft_dir.join("model"))?,
                    seconds: sum.seconds,
                    steps: sum.steps_done,
                    log: ft_dir.join("train_log.jsonl"),
                    peak: train_peak,
                },
                obs,
            )?;
            save_stage(out, "full", &f)?;
            Some(f)
        }
    };
    // --- 6. inference cost, back to back ---
    let timing: TimingStage = match load_stage(out, "timing")? {
        Some(t) if resume => t,
        _ => {
            let pt = prompt_tuning.as_ref().map(|_| pt_dir.as_path());
            let dp = deep.as_ref().map(|_| deep_dir.as_path());
            let t = time_inference(model, cfg, hard.as_ref(), pt, dp, &val_file)?;
            let ms = |x: Option<f64>| x.map_or("n/a".into(), |x| format!("{x:.1} ms"));
            obs.on_message(&format!(
                "inference per example: zero-shot {}, few-shot {}, prompt tuning {}, no prompt (full fine-tuning, merged LoRA) {:.1} ms",
                ms(t.zero_shot_ms),
                ms(t.few_shot_ms),
                ms(t.prompt_tuning_ms),
                t.full_finetuning_ms
            ));
            save_stage(out, "timing", &t)?;
            t
        }
    };
    let c = Comparison {
        config: cfg.clone(),
        base,
        hard,
        prompt_tuning,
        residual,
        deep,
        ensemble,
        full_finetuning,
        lora,
        timing,
        seconds: t0.elapsed().as_secs_f64(),
    };
    report(&c, out)?;
    Ok(c)
}

/// The error when the model is not the untouched one the base stage measured.
fn same_model(model: &FrozenModel, base: &BaseStage) -> Result<()> {
    if model.weights_digest() != base.weights_digest {
        return Err(Error::Mismatch(
            "the model is not the one the base stage measured".into(),
        ));
    }
    Ok(())
}

/// Train one prompt method (plain, residual or deep) into `dir` with the regular trainer
/// (its checkpoints make it resumable mid-run), without evaluation (the last prompt is the
/// result), then measure it.
#[allow(clippy::too_many_arguments)]
fn train_prompt(
    model: &FrozenModel,
    cfg: &CompareConfig,
    tcfg: &TrainConfig,
    dir: &Path,
    name: &'static str,
    val_file: &str,
    resume: bool,
    stop: &AtomicBool,
    obs: &mut dyn Observer,
) -> Result<TrainedStage> {
    reset_peak_rss();
    obs.on_message(&format!(
        "{name}: {} virtual tokens, {} steps x batch {}, lr {}",
        tcfg.num_virtual_tokens, tcfg.steps, tcfg.batch_size, tcfg.lr
    ));
    let mut tcfg = tcfg.clone();
    tcfg.validation_file = None;
    let sum = trainer::train(model, &tcfg, dir, resume, stop, obs)?;
    if sum.interrupted {
        return Err(Error::setting(
            "resume",
            format!("interrupted during {name}: resume the comparison to continue"),
        ));
    }
    let train_peak = peak_rss();
    let sp = SoftPrompt::load_for(model, dir, false)?;
    let artifact_bytes = adapter_bytes(dir)?;
    measure_trained(
        model,
        cfg,
        val_file,
        Some(&sp),
        Trained {
            name,
            // The prompt's values, and a residual run's MLP (folded away on save).
            trainable_parameters: sp.embeddings.data.len()
                + tcfg.reparam.extra_parameters(model.llama.dims.d),
            artifact: dir.to_path_buf(),
            artifact_bytes,
            seconds: sum.seconds,
            steps: sum.steps_done,
            log: dir.join("train_log.jsonl"),
            peak: train_peak,
        },
        obs,
    )
}

/// Bytes of a PEFT prompt adapter's two files.
fn adapter_bytes(dir: &Path) -> Result<u64> {
    ["adapter_model.safetensors", "adapter_config.json"]
        .iter()
        .map(|f| disk_bytes(&dir.join(f)))
        .sum()
}

/// The ensemble row: the trained prompts' class probabilities averaged (Lester et al. §7),
/// on the validation set. Its cost is the members' together (the sum of their training
/// times, parameters and files); memory is the largest member's.
fn ensemble_stage(
    model: &FrozenModel,
    cfg: &CompareConfig,
    val_file: &str,
    members: &[(&Path, &TrainedStage)],
    obs: &mut dyn Observer,
) -> Result<TrainedStage> {
    let pcfg = &cfg.prompt;
    let prompts: Vec<SoftPrompt> = members
        .iter()
        .map(|(d, _)| SoftPrompt::load_for(model, d, false))
        .collect::<Result<_>>()?;
    let views = prompts
        .iter()
        .map(|p| p.view().map(Some))
        .collect::<Result<Vec<_>>>()?;
    let tok = validation_tokens(model, pcfg, val_file)?;
    let te = Instant::now();
    let rep = eval::evaluate_ensemble(model, &views, &tok, pcfg.eval_batch_size, pcfg.length_norm)?;
    obs.on_message(&format!(
        "ensemble of {} prompts: validation accuracy {:.4} on {}",
        members.len(),
        rep.value,
        rep.n
    ));
    let first = members[0].1;
    let stages = || members.iter().map(|(_, s)| *s);
    Ok(TrainedStage {
        trainable_parameters: stages().map(|s| s.trainable_parameters).sum(),
        artifact: members[0].0.parent().unwrap_or(members[0].0).to_path_buf(),
        artifact_bytes: stages().map(|s| s.artifact_bytes).sum(),
        train_seconds: stages().map(|s| s.train_seconds).sum(),
        steps: first.steps,
        first_loss: None,
        last_loss: None,
        peak_rss_bytes: members.iter().filter_map(|(_, s)| s.peak_rss_bytes).max(),
        accuracy: rep.value,
        n: rep.n,
        eval_seconds: te.elapsed().as_secs_f64(),
        tokens_per_example: stages().map(|s| s.tokens_per_example).sum(),
        // Averaging touches no weight: the members' measurements of the base stand.
        general_ppl_after: first.general_ppl_after,
        second_task_after: first.second_task_after.clone(),
        weights_digest_after: first.weights_digest_after.clone(),
    })
}

/// The validation set as the trained rows are evaluated: the task's items, tokenized and
/// cut to `eval_limit`.
fn validation_tokens(
    model: &FrozenModel,
    pcfg: &TrainConfig,
    val_file: &str,
) -> Result<eval::Tokenized> {
    let val = items(&pcfg.task, val_file, pcfg)?;
    let mut tok = eval::tokenize(model, &val, pcfg.max_len)?;
    if let Some(n) = pcfg.eval_limit {
        tok.truncate(n);
    }
    Ok(tok)
}

/// What a trained method's stage knows before its measurements.
struct Trained {
    name: &'static str,
    trainable_parameters: usize,
    artifact: PathBuf,
    artifact_bytes: u64,
    seconds: f64,
    steps: u64,
    log: PathBuf,
    peak: Option<u64>,
}

/// Validation accuracy (timed), general-text perplexity, second-task accuracy and the
/// weights' digest of `model` as it is now (with the soft prompt `sp`, if any, for the
/// validation accuracy only).
fn measure_trained(
    model: &FrozenModel,
    cfg: &CompareConfig,
    val_file: &str,
    sp: Option<&SoftPrompt>,
    t: Trained,
    obs: &mut dyn Observer,
) -> Result<TrainedStage> {
    let pcfg = &cfg.prompt;
    let tok = validation_tokens(model, pcfg, val_file)?;
    let te = Instant::now();
    let view = sp.map(|s| s.view()).transpose()?;
    let rep = eval::evaluate(model, view, &tok, pcfg.eval_batch_size, pcfg.length_norm)?;
    let eval_seconds = te.elapsed().as_secs_f64();
    obs.on_message(&format!(
        "{}: validation accuracy {:.4} on {}",
        t.name, rep.value, rep.n
    ));
    let (general_ppl_after, _) = perplexity(model, GENERAL_TEXT)?;
    let second_task_after = match &cfg.second_task {
        Some(s) => Some(second_task_accuracy(model, s, pcfg)?),
        None => None,
    };
    let (first_loss, last_loss) = first_last_loss(&t.log);
    Ok(TrainedStage {
        trainable_parameters: t.trainable_parameters,
        artifact: t.artifact,
        artifact_bytes: t.artifact_bytes,
        train_seconds: t.seconds,
        steps: t.steps,
        first_loss,
        last_loss,
        peak_rss_bytes: t.peak,
        accuracy: rep.value,
        n: rep.n,
        eval_seconds,
        // Rows in: an input prompt adds its virtual tokens, a deep prompt none.
        tokens_per_example: mean_tokens(&tok)
            + match sp.map(|s| s.kind()) {
                Some(crate::model::input::PromptKind::Input) => pcfg.num_virtual_tokens as f64,
                _ => 0.0,
            },
        general_ppl_after,
        second_task_after,
        weights_digest_after: model.weights_digest(),
    })
}

pub(super) fn best(v: &[HardResult]) -> Option<&HardResult> {
    v.iter().fold(None, |b: Option<&HardResult>, r| match b {
        Some(b) if b.accuracy >= r.accuracy => Some(b),
        _ => Some(r),
    })
}
