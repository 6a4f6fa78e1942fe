//! `softprompt compare`: hard prompt vs prompt tuning vs full fine-tuning on one task and
//! model, measured. Stages, in order, each saved to `OUT/stages/NAME.json` when finished
//! (so `--resume` skips it):
//!
//! 1. `base`: the untouched model's perplexity on [`GENERAL_TEXT`], its accuracy on a second
//!    task, and the weights' SHA-256;
//! 2. `hard`: every template of the task zero-shot, then the best of them with `k`
//!    demonstrations from the training split (fixed seed, balanced over classes);
//! 3. `prompt`: prompt tuning with the regular trainer (its own checkpoints make it
//!    resumable mid-run), then the base model's perplexity and second-task accuracy again and
//!    its digest (byte-identical by construction: the numbers are measured, not assumed);
//! 4. `full`: full fine-tuning ([`crate::train::finetune`]) on the same data, batches, seed
//!    and schedule, then the same measurements on the fine-tuned model (restarts when
//!    interrupted: no mid-run checkpoints).
//!
//! Peak memory is the process's resident high-water mark (`VmHWM`), reset at the start of
//! each stage through `/proc/self/clear_refs` (Linux); elsewhere it is not reported.
//! [`report`] renders `compare.md`, `compare.png` and `compare.json`.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::data::{self, Items, TaskSpec};
use crate::fsio::atomic_write;
use crate::model::input::{SeqInput, Target};
use crate::model::FrozenModel;
use crate::prompt::SoftPrompt;
use crate::train::eval::{self, Tokenized};
use crate::train::finetune;
use crate::train::plot;
use crate::train::trainer::{self, Observer, TrainConfig};
use crate::{Error, Result};

/// The general-text set for the forgetting measurement: original English paragraphs on
/// everyday and encyclopedic topics written for softprompt (see the README).
pub const GENERAL_TEXT: &str = include_str!("../data/general_text.txt");

/// Perplexity windows: the text is cut into chunks of this many tokens.
const PPL_WINDOW: usize = 256;

/// What a comparison runs.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CompareConfig {
    pub model: String,
    /// Prompt tuning's training config (also the data, batches, seed and schedule of full
    /// fine-tuning).
    pub prompt: TrainConfig,
    /// Full fine-tuning's learning rate and optimizer (AdamW).
    pub ft_lr: f32,
    pub ft_optimizer: crate::train::optim::OptimizerKind,
    /// Demonstrations in the few-shot hard prompt.
    pub shots: usize,
    /// Second, untouched task for the forgetting measurement (None: skipped).
    pub second_task: Option<TaskSpec>,
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
    /// tuning (main template + soft prompt), full fine-tuning (main template, no prompt).
    pub zero_shot_ms: f64,
    pub few_shot_ms: Option<f64>,
    pub prompt_tuning_ms: f64,
    pub full_finetuning_ms: f64,
}

/// Everything measured; what `compare.json` holds.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Comparison {
    pub config: CompareConfig,
    pub base: BaseStage,
    pub hard: HardStage,
    pub prompt_tuning: TrainedStage,
    pub full_finetuning: TrainedStage,
    pub timing: TimingStage,
    /// Wall time of the whole command, this invocation (resumed stages not counted).
    pub seconds: f64,
}

/// A `/proc/self/status` line (`VmHWM`, `VmRSS`, ...) in bytes (Linux).
fn status_bytes(key: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with(key))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Resident-set high-water mark of this process, in bytes (Linux).
pub fn peak_rss() -> Option<u64> {
    status_bytes("VmHWM:")
}

/// Current resident set, in bytes (Linux).
pub fn current_rss() -> Option<u64> {
    status_bytes("VmRSS:")
}

/// Reset the high-water mark to the current resident set (Linux `clear_refs` 5); false when
/// the system does not allow it.
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Perplexity of `model` (no prompt) on `text`: exp of the mean next-token NLL over
/// non-overlapping windows of [`PPL_WINDOW`] tokens. Returns `(ppl, predicted tokens)`.
pub fn perplexity(model: &FrozenModel, text: &str) -> Result<(f64, usize)> {
    let ids = model.encode_input(text)?;
    let windows: Vec<&[u32]> = ids.chunks(PPL_WINDOW).filter(|w| w.len() > 1).collect();
    let (mut nll, mut count) = (0.0f64, 0usize);
    for group in windows.chunks(4) {
        let seqs: Vec<SeqInput> = group
            .iter()
            .map(|ids| SeqInput { prompt: None, ids })
            .collect();
        let mut targets = Vec::new();
        let mut r0 = 0;
        for w in group {
            for t in 1..w.len() {
                targets.push(Target {
                    row: r0 + t - 1,
                    token: w[t],
                    weight: 1.0,
                });
            }
            r0 += w.len();
        }
        nll += model.llama.loss(&seqs, &targets)?;
        count += targets.len();
    }
    if count == 0 {
        return Err(Error::Input("the general text has no tokens".into()));
    }
    Ok(((nll / count as f64).exp(), count))
}

/// Prepared items of one split of `spec`.
fn items(spec: &TaskSpec, file: &str, cfg: &TrainConfig) -> Result<Items> {
    let (records, _, name) = data::load_split(file, cfg.data_root.as_deref(), cfg.skip_bad_rows)?;
    Ok(data::prepare(spec, &records, Path::new(&name), cfg.skip_bad_rows)?.0)
}

fn mean_tokens(t: &Tokenized) -> f64 {
    let l = t.lengths();
    l.iter().sum::<usize>() as f64 / l.len().max(1) as f64
}

/// Accuracy of the model (no prompt) on the second task's validation split.
fn second_task_accuracy(
    model: &FrozenModel,
    spec: &TaskSpec,
    cfg: &TrainConfig,
) -> Result<SecondTask> {
    let file = spec.validation.as_deref().ok_or_else(|| {
        Error::Input(format!("second task {} has no validation split", spec.name))
    })?;
    let it = items(spec, file, cfg)?;
    let tok = eval::tokenize(model, &it, cfg.max_len)?;
    let rep = eval::evaluate(model, None, &tok, cfg.eval_batch_size, cfg.length_norm)?;
    Ok(SecondTask {
        name: spec.name.clone(),
        accuracy: rep.value,
        n: rep.n,
    })
}

/// Total size of the files under `path` (a file or a folder).
pub fn disk_bytes(path: &Path) -> Result<u64> {
    let md = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if md.is_file() {
        return Ok(md.len());
    }
    let mut total = 0;
    for e in std::fs::read_dir(path).map_err(|e| Error::io(path, e))? {
        let e = e.map_err(|e| Error::io(path, e))?;
        total += disk_bytes(&e.path())?;
    }
    Ok(total)
}

fn save_stage<T: Serialize>(out: &Path, name: &str, v: &T) -> Result<()> {
    let dir = out.join("stages");
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let text = serde_json::to_string_pretty(v)
        .map_err(|e| Error::Input(format!("cannot serialize stage {name}: {e}")))?;
    atomic_write(&dir.join(format!("{name}.json")), text.as_bytes())
}

fn load_stage<T: for<'a> Deserialize<'a>>(out: &Path, name: &str) -> Result<Option<T>> {
    let path = out.join("stages").join(format!("{name}.json"));
    match std::fs::read_to_string(&path) {
        Ok(t) => serde_json::from_str(&t)
            .map(Some)
            .map_err(|e| Error::format(&path, format!("unreadable stage file: {e}"))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(&path, e)),
    }
}

/// The `k` demonstrations (fixed seed) rendered with the template `spec` holds, each
/// `text + gold candidate`, joined and followed by a blank line.
fn demo_prefix(train: &Items, k: usize, seed: u64) -> String {
    let Items::Class(v) = train else {
        return String::new();
    };
    let labelled: Vec<&data::ClassItem> = v.iter().filter(|i| i.label.is_some()).collect();
    if labelled.is_empty() || k == 0 {
        return String::new();
    }
    let mut idx: Vec<usize> = (0..labelled.len()).collect();
    data::SplitMix64::new(seed ^ 0x5eed_d3e0).shuffle(&mut idx);
    // Balanced over classes when possible: take the first example of each class in turn.
    let classes = labelled[0].candidates.len();
    let mut picked = Vec::new();
    let mut c = 0;
    let mut guard = 0;
    while picked.len() < k.min(labelled.len()) && guard < k * classes + labelled.len() {
        if let Some(&i) = idx
            .iter()
            .find(|&&i| labelled[i].label == Some(c % classes) && !picked.contains(&i))
        {
            picked.push(i);
        }
        c += 1;
        guard += 1;
    }
    let mut s = String::new();
    for i in picked {
        let it = labelled[i];
        s.push_str(&it.text);
        s.push_str(&it.candidates[it.label.unwrap_or(0)]);
        s.push_str("\n\n");
    }
    s
}

fn with_prefix(items: &Items, prefix: &str) -> Items {
    match items {
        Items::Class(v) => Items::Class(
            v.iter()
                .map(|i| {
                    let mut i = i.clone();
                    i.text = format!("{prefix}{}", i.text);
                    i
                })
                .collect(),
        ),
        Items::Gen(v) => Items::Gen(
            v.iter()
                .map(|i| {
                    let mut i = i.clone();
                    i.input = format!("{prefix}{}", i.input);
                    i
                })
                .collect(),
        ),
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
        return Err(Error::Input(format!(
            "{} holds an earlier comparison: continue it with --resume, or choose another --out",
            stages.display()
        )));
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
    let hard: HardStage = match load_stage(out, "hard")? {
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
    };

    // --- 3. prompt tuning ---
    let pt_dir = out.join("prompt_tuning");
    let prompt_tuning: TrainedStage = match load_stage(out, "prompt")? {
        Some(p) if resume => {
            obs.on_message("prompt tuning: done earlier (resumed)");
            p
        }
        _ => {
            reset_peak_rss();
            obs.on_message(&format!(
                "prompt tuning: {} virtual tokens, {} steps x batch {}",
                pcfg.num_virtual_tokens, pcfg.steps, pcfg.batch_size
            ));
            // Trained without evaluation (the last prompt is the result), evaluated below.
            let mut tcfg = pcfg.clone();
            tcfg.validation_file = None;
            let sum = trainer::train(model, &tcfg, &pt_dir, resume, stop, obs)?;
            if sum.interrupted {
                return Err(Error::Input(
                    "interrupted during prompt tuning: continue with --resume".into(),
                ));
            }
            let train_peak = peak_rss();
            let sp = SoftPrompt::load_for(model, &pt_dir, false)?;
            let val = items(&pcfg.task, &val_file, pcfg)?;
            let mut tok = eval::tokenize(model, &val, pcfg.max_len)?;
            if let Some(n) = pcfg.eval_limit {
                tok.truncate(n);
            }
            let te = Instant::now();
            let rep = eval::evaluate(
                model,
                Some(&sp.embeddings.data),
                &tok,
                pcfg.eval_batch_size,
                pcfg.length_norm,
            )?;
            let eval_seconds = te.elapsed().as_secs_f64();
            obs.on_message(&format!(
                "prompt tuning: validation accuracy {:.4} on {}",
                rep.value, rep.n
            ));
            let (general_ppl_after, _) = perplexity(model, GENERAL_TEXT)?;
            let second_task_after = match &cfg.second_task {
                Some(s) => Some(second_task_accuracy(model, s, pcfg)?),
                None => None,
            };
            let digest = model.weights_digest();
            obs.on_message(&format!(
                "prompt tuning: base weights sha256 before {} after {} ({})",
                &base.weights_digest[..16],
                &digest[..16],
                if digest == base.weights_digest {
                    "byte-identical"
                } else {
                    "CHANGED"
                }
            ));
            let artifact_bytes = ["adapter_model.safetensors", "adapter_config.json"]
                .iter()
                .map(|f| disk_bytes(&pt_dir.join(f)))
                .sum::<Result<u64>>()?;
            let (first_loss, last_loss) = first_last_loss(&pt_dir.join("train_log.jsonl"));
            let p = TrainedStage {
                trainable_parameters: sp.embeddings.data.len(),
                artifact: pt_dir.clone(),
                artifact_bytes,
                train_seconds: sum.seconds,
                steps: sum.steps_done,
                first_loss,
                last_loss,
                peak_rss_bytes: train_peak,
                accuracy: rep.value,
                n: rep.n,
                eval_seconds,
                tokens_per_example: mean_tokens(&tok) + pcfg.num_virtual_tokens as f64,
                general_ppl_after,
                second_task_after,
                weights_digest_after: digest,
            };
            save_stage(out, "prompt", &p)?;
            p
        }
    };

    // --- 4. full fine-tuning ---
    let ft_dir = out.join("full_finetune");
    let full_finetuning: TrainedStage = match load_stage(out, "full")? {
        Some(f) if resume => {
            obs.on_message("full fine-tuning: done earlier (resumed)");
            f
        }
        _ => {
            if model.weights_digest() != base.weights_digest {
                return Err(Error::Mismatch(
                    "the model is not the one the base stage measured".into(),
                ));
            }
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
                return Err(Error::Input(
                    "interrupted during full fine-tuning: --resume restarts this stage".into(),
                ));
            }
            let train_peak = peak_rss();
            let ft_losses = first_last_loss(&ft_dir.join("train_log.jsonl"));
            let val = items(&pcfg.task, &val_file, pcfg)?;
            let mut tok = eval::tokenize(model, &val, pcfg.max_len)?;
            if let Some(n) = pcfg.eval_limit {
                tok.truncate(n);
            }
            let te = Instant::now();
            let rep = eval::evaluate(model, None, &tok, pcfg.eval_batch_size, pcfg.length_norm)?;
            let eval_seconds = te.elapsed().as_secs_f64();
            obs.on_message(&format!(
                "full fine-tuning: validation accuracy {:.4} on {}",
                rep.value, rep.n
            ));
            let (general_ppl_after, _) = perplexity(model, GENERAL_TEXT)?;
            let second_task_after = match &cfg.second_task {
                Some(s) => Some(second_task_accuracy(model, s, pcfg)?),
                None => None,
            };
            let f = TrainedStage {
                trainable_parameters: sum.trainable_parameters,
                artifact: ft_dir.join("model"),
                artifact_bytes: disk_bytes(&ft_dir.join("model"))?,
                train_seconds: sum.seconds,
                steps: sum.steps_done,
                first_loss: ft_losses.0,
                last_loss: ft_losses.1,
                peak_rss_bytes: train_peak,
                accuracy: rep.value,
                n: rep.n,
                eval_seconds,
                tokens_per_example: mean_tokens(&tok),
                general_ppl_after,
                second_task_after,
                weights_digest_after: model.weights_digest(),
            };
            save_stage(out, "full", &f)?;
            f
        }
    };
    // --- 5. inference cost, back to back ---
    let timing: TimingStage = match load_stage(out, "timing")? {
        Some(t) if resume => t,
        _ => {
            let t = time_inference(model, cfg, &hard, &pt_dir, &val_file)?;
            obs.on_message(&format!(
                "inference per example: zero-shot {:.1} ms, few-shot {}, prompt tuning {:.1} ms, full fine-tuning {:.1} ms",
                t.zero_shot_ms,
                t.few_shot_ms.map_or("n/a".into(), |x| format!("{x:.1} ms")),
                t.prompt_tuning_ms,
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
        full_finetuning,
        timing,
        seconds: t0.elapsed().as_secs_f64(),
    };
    report(&c, out)?;
    Ok(c)
}

/// Mean training loss over the first and over the last `w` steps of a log
/// (`w` = a fifth of the steps, 1..=20): single-batch losses are too noisy to compare.
/// Examples and rounds of the timing pass.
const TIMING_EXAMPLES: usize = 200;
const TIMING_ROUNDS: usize = 2;

fn time_inference(
    model: &FrozenModel,
    cfg: &CompareConfig,
    hard: &HardStage,
    pt_dir: &Path,
    val_file: &str,
) -> Result<TimingStage> {
    let pcfg = &cfg.prompt;
    let templates = pcfg.task.templates();
    let index_of = |t: &str| templates.iter().position(|x| *x == t).unwrap_or(0);
    let tokens_for = |ti: usize, prefix: &str| -> Result<Tokenized> {
        let spec = pcfg
            .task
            .with_template(ti)
            .ok_or_else(|| Error::Input("template index out of range".into()))?;
        let mut val = items(&spec, val_file, pcfg)?;
        if let Items::Class(c) = &mut val {
            c.truncate(TIMING_EXAMPLES);
        }
        let mut tok = eval::tokenize(
            model,
            &with_prefix(&val, prefix),
            pcfg.max_len + prefix.len(),
        )?;
        tok.truncate(TIMING_EXAMPLES);
        Ok(tok)
    };
    let zero_t = best(&hard.zero_shot).map_or(0, |r| index_of(&r.template));
    let zero = tokens_for(zero_t, "")?;
    let few = match (best(&hard.few_shot), hard.demo_prefixes.first()) {
        (Some(r), Some(p)) => Some(tokens_for(index_of(&r.template), p)?),
        _ => None,
    };
    let main = tokens_for(0, "")?;
    let sp = SoftPrompt::load_for(model, pt_dir, true)?;
    let time = |prompt: Option<&[f32]>, tok: &Tokenized| -> Result<f64> {
        let t = Instant::now();
        eval::evaluate(model, prompt, tok, pcfg.eval_batch_size, pcfg.length_norm)?;
        Ok(1000.0 * t.elapsed().as_secs_f64() / tok.len().max(1) as f64)
    };
    let mut best_ms = [f64::INFINITY; 4];
    for _ in 0..TIMING_ROUNDS {
        best_ms[0] = best_ms[0].min(time(None, &zero)?);
        if let Some(f) = &few {
            best_ms[1] = best_ms[1].min(time(None, f)?);
        }
        best_ms[2] = best_ms[2].min(time(Some(&sp.embeddings.data), &main)?);
        best_ms[3] = best_ms[3].min(time(None, &main)?);
    }
    Ok(TimingStage {
        examples: zero.len(),
        rounds: TIMING_ROUNDS,
        zero_shot_ms: best_ms[0],
        few_shot_ms: few.as_ref().map(|_| best_ms[1]),
        prompt_tuning_ms: best_ms[2],
        full_finetuning_ms: best_ms[3],
    })
}

fn first_last_loss(log: &Path) -> (Option<f64>, Option<f64>) {
    let Ok(text) = std::fs::read_to_string(log) else {
        return (None, None);
    };
    let losses: Vec<f64> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["type"] == "step")
        .filter_map(|v| v["loss"].as_f64())
        .collect();
    if losses.is_empty() {
        return (None, None);
    }
    let w = (losses.len() / 5).clamp(1, 20);
    let mean = |x: &[f64]| x.iter().sum::<f64>() / x.len() as f64;
    (
        Some(mean(&losses[..w])),
        Some(mean(&losses[losses.len() - w..])),
    )
}

fn best(v: &[HardResult]) -> Option<&HardResult> {
    v.iter().fold(None, |b: Option<&HardResult>, r| match b {
        Some(b) if b.accuracy >= r.accuracy => Some(b),
        _ => Some(r),
    })
}

/// Human-readable bytes.
pub fn human_bytes(b: u64) -> String {
    let b = b as f64;
    if b >= 1e9 {
        format!("{:.2} GB", b / 1e9)
    } else if b >= 1e6 {
        format!("{:.1} MB", b / 1e6)
    } else if b >= 1e3 {
        format!("{:.1} KB", b / 1e3)
    } else {
        format!("{b:.0} B")
    }
}

fn human_count(n: usize) -> String {
    let x = n as f64;
    if x >= 1e9 {
        format!("{:.2} B", x / 1e9)
    } else if x >= 1e6 {
        format!("{:.1} M", x / 1e6)
    } else {
        let s = n.to_string();
        let mut out = String::new();
        for (i, ch) in s.chars().enumerate() {
            if i > 0 && (s.len() - i).is_multiple_of(3) {
                out.push(',');
            }
            out.push(ch);
        }
        out
    }
}

fn secs(s: f64) -> String {
    if s >= 120.0 {
        format!("{:.1} min", s / 60.0)
    } else {
        format!("{s:.1} s")
    }
}

/// The Markdown table: the seed's comparison, with measured numbers.
pub fn markdown(c: &Comparison) -> String {
    let b = &c.base;
    let (pt, ft) = (&c.prompt_tuning, &c.full_finetuning);
    let z = best(&c.hard.zero_shot);
    let f = best(&c.hard.few_shot);
    let pc = |x: f64| format!("{:.1}%", 100.0 * x);
    let mem = |m: Option<u64>| m.map_or("n/a".into(), human_bytes);
    let na = "n/a".to_string();
    let task = &c.config.prompt.task.name;
    let mut s = String::new();
    s.push_str(&format!(
        "## softprompt compare: {task} on {}\n\n",
        c.config.model
    ));
    s.push_str(&format!(
        "Same training data, batches ({} x {}), seed and schedule for both trained methods; \
         validation = the task's validation split ({} examples).\n\n",
        c.config.prompt.steps, c.config.prompt.batch_size, pt.n
    ));
    s.push_str(
        "| | hard prompt, zero-shot | hard prompt, few-shot | prompt tuning | full fine-tuning |\n",
    );
    s.push_str("|---|---:|---:|---:|---:|\n");
    let zs = |g: &dyn Fn(&HardResult) -> String| z.map_or(na.clone(), g);
    let fs = |g: &dyn Fn(&HardResult) -> String| f.map_or(na.clone(), g);
    let row = |s: &mut String, name: &str, cells: [String; 4]| {
        s.push_str(&format!("| {name} | {} |\n", cells.join(" | ")));
    };
    row(
        &mut s,
        "trainable parameters",
        [
            "0".into(),
            "0".into(),
            format!(
                "{} ({:.4}% of {})",
                human_count(pt.trainable_parameters),
                100.0 * pt.trainable_parameters as f64 / b.num_parameters as f64,
                human_count(b.num_parameters)
            ),
            human_count(ft.trainable_parameters),
        ],
    );
    row(
        &mut s,
        "artifact on disk",
        [
            zs(&|r| format!("{} B (template)", r.template.len())),
            fs(&|r| {
                let demos = c
                    .hard
                    .few_shot
                    .iter()
                    .position(|x| x.template == r.template)
                    .and_then(|i| c.hard.demo_prefixes.get(i))
                    .map_or(0, |p| p.len());
                format!("{} B (template + demos)", r.template.len() + demos)
            }),
            format!("{} (PEFT adapter)", human_bytes(pt.artifact_bytes)),
            format!("{} (f32 HF folder)", human_bytes(ft.artifact_bytes)),
        ],
    );
    row(
        &mut s,
        "training wall time",
        [
            format!("0 (template search {})", secs(c.hard.seconds)),
            "0 (same search)".into(),
            format!("{} ({} steps)", secs(pt.train_seconds), pt.steps),
            format!("{} ({} steps)", secs(ft.train_seconds), ft.steps),
        ],
    );
    row(
        &mut s,
        "peak memory (RSS, stage)",
        [
            mem(c.hard.peak_rss_bytes),
            "(same stage)".into(),
            mem(pt.peak_rss_bytes),
            mem(ft.peak_rss_bytes),
        ],
    );
    row(
        &mut s,
        "training loss (mean of first → last steps)",
        [
            na.clone(),
            na.clone(),
            match (pt.first_loss, pt.last_loss) {
                (Some(a), Some(b)) => format!("{a:.3} → {b:.3}"),
                _ => na.clone(),
            },
            match (ft.first_loss, ft.last_loss) {
                (Some(a), Some(b)) => format!("{a:.3} → {b:.3}"),
                _ => na.clone(),
            },
        ],
    );
    row(
        &mut s,
        &format!("**{task} validation accuracy**"),
        [
            zs(&|r| format!("{} (best of {})", pc(r.accuracy), c.hard.zero_shot.len())),
            fs(&|r| format!("{} ({}-shot, best template)", pc(r.accuracy), r.shots)),
            format!("**{}**", pc(pt.accuracy)),
            format!("**{}**", pc(ft.accuracy)),
        ],
    );
    let tm = &c.timing;
    row(
        &mut s,
        "inference per example (tokens in)",
        [
            zs(&|r| format!("{:.1} ms ({:.0})", tm.zero_shot_ms, r.tokens_per_example)),
            fs(&|r| {
                format!(
                    "{} ({:.0})",
                    tm.few_shot_ms.map_or(na.clone(), |x| format!("{x:.1} ms")),
                    r.tokens_per_example
                )
            }),
            format!(
                "{:.1} ms ({:.0})",
                tm.prompt_tuning_ms, pt.tokens_per_example
            ),
            format!(
                "{:.1} ms ({:.0})",
                tm.full_finetuning_ms, ft.tokens_per_example
            ),
        ],
    );
    let ppl = |after: f64| {
        let d = after - b.general_ppl;
        format!("{:.3} → {:.3} ({d:+.3})", b.general_ppl, after)
    };
    row(
        &mut s,
        "forgetting: general-text perplexity (before → after)",
        [
            "unchanged (no training)".into(),
            "unchanged (no training)".into(),
            format!("**{}**", ppl(pt.general_ppl_after)),
            format!("**{}**", ppl(ft.general_ppl_after)),
        ],
    );
    let st = |after: &Option<SecondTask>| match (&b.second_task, after) {
        (Some(x), Some(y)) => format!(
            "{} → {} ({:+.1} pt)",
            pc(x.accuracy),
            pc(y.accuracy),
            100.0 * (y.accuracy - x.accuracy)
        ),
        _ => na.clone(),
    };
    let second_name = b
        .second_task
        .as_ref()
        .map_or("second task".to_string(), |s| {
            format!("{} validation ({})", s.name, s.n)
        });
    row(
        &mut s,
        &format!("forgetting: {second_name} accuracy, no prompt"),
        [
            "unchanged (no training)".into(),
            "unchanged (no training)".into(),
            st(&pt.second_task_after),
            st(&ft.second_task_after),
        ],
    );
    let same = |d: &str| {
        if d == b.weights_digest {
            format!("byte-identical (sha256 {}…)", &d[..12])
        } else {
            format!("changed (sha256 {}…)", &d[..12])
        }
    };
    row(
        &mut s,
        "base model weights after training",
        [
            "untouched".into(),
            "untouched".into(),
            same(&pt.weights_digest_after),
            same(&ft.weights_digest_after),
        ],
    );
    s.push_str(&format!(
        "\nBase weights sha256 before training: `{}`. General text: {} tokens \
         (`crates/softprompt-core/data/general_text.txt`), perplexity over windows of {PPL_WINDOW} tokens. \
         Peak memory is the process's resident high-water mark reset at the start of each \
         stage (the loaded model alone: {}). Inference: rank classification of the first {} \
         validation examples, batches of {}, the four inputs timed back to back on one model \
         in {} interleaved rounds (best round), since the cost depends on the architecture \
         and the input length, not on the weights' values.\n",
        b.weights_digest,
        b.general_tokens,
        mem(b.rss_after_load_bytes),
        tm.examples,
        c.config.prompt.eval_batch_size,
        tm.rounds
    ));
    let hard_lines: Vec<String> = c
        .hard
        .zero_shot
        .iter()
        .chain(&c.hard.few_shot)
        .map(|r| {
            format!(
                "- `{}` ({}-shot): {}",
                r.template.replace('\n', "\\n"),
                r.shots,
                pc(r.accuracy)
            )
        })
        .collect();
    s.push_str(&format!(
        "\nHard prompts evaluated:\n{}\n",
        hard_lines.join("\n")
    ));
    s
}

/// Write `compare.md`, `compare.png` (validation accuracy and perplexity change per method)
/// and `compare.json` to `out`.
pub fn report(c: &Comparison, out: &Path) -> Result<()> {
    atomic_write(&out.join("compare.md"), markdown(c).as_bytes())?;
    let json = serde_json::to_string_pretty(c)
        .map_err(|e| Error::Input(format!("cannot serialize the comparison: {e}")))?;
    atomic_write(&out.join("compare.json"), json.as_bytes())?;
    let z = best(&c.hard.zero_shot).map_or(f64::NAN, |r| r.accuracy);
    let f = best(&c.hard.few_shot).map_or(f64::NAN, |r| r.accuracy);
    let (pt, ft) = (&c.prompt_tuning, &c.full_finetuning);
    let bars = vec![
        ("zero-shot: accuracy".to_string(), z),
        (format!("{}-shot: accuracy", c.config.shots), f),
        ("prompt tuning: accuracy".to_string(), pt.accuracy),
        ("full FT: accuracy".to_string(), ft.accuracy),
        (
            "prompt tuning: ppl change".to_string(),
            pt.general_ppl_after / c.base.general_ppl - 1.0,
        ),
        (
            "full FT: ppl change".to_string(),
            ft.general_ppl_after / c.base.general_ppl - 1.0,
        ),
    ];
    plot::bar_chart(
        &out.join("compare.png"),
        &format!(
            "{}: accuracy; relative change of general-text perplexity",
            c.config.prompt.task.name
        ),
        "fraction",
        &bars,
    )
}
