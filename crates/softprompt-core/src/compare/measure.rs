//! What `compare` measures besides accuracy: resident memory, perplexity on general text,
//! disk size of an artifact, and inference time per example.

use std::path::Path;
use std::time::Instant;

use super::hard::with_prefix;
use super::{best, CompareConfig, HardStage, SecondTask, TimingStage, TrainConfig};
use crate::data::{self, Items, TaskSpec};
use crate::model::input::{PromptRef, SeqInput, Target};
use crate::model::FrozenModel;
use crate::prompt::SoftPrompt;
use crate::train::eval::{self, Tokenized};
use crate::{Error, Result};

/// Perplexity windows: the text is cut into chunks of this many tokens.
pub(super) const PPL_WINDOW: usize = 256;

/// A `/proc/self/status` line (`VmHWM`, `VmRSS`, ...) in bytes (Linux).
pub(super) fn status_bytes(key: &str) -> Option<u64> {
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
pub(super) fn items(spec: &TaskSpec, file: &str, cfg: &TrainConfig) -> Result<Items> {
    Ok(data::load_items(spec, file, cfg.data_root.as_deref(), cfg.skip_bad_rows)?.items)
}

pub(super) fn mean_tokens(t: &Tokenized) -> f64 {
    let l = t.lengths();
    l.iter().sum::<usize>() as f64 / l.len().max(1) as f64
}

/// Accuracy of the model (no prompt) on the second task's validation split.
pub(super) fn second_task_accuracy(
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

/// Examples and rounds of the timing pass.
pub(super) const TIMING_EXAMPLES: usize = 200;
pub(super) const TIMING_ROUNDS: usize = 2;

pub(super) fn time_inference(
    model: &FrozenModel,
    cfg: &CompareConfig,
    hard: Option<&HardStage>,
    pt_dir: Option<&Path>,
    deep_dir: Option<&Path>,
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
    let zero = match hard.and_then(|h| best(&h.zero_shot)) {
        Some(r) => Some(tokens_for(index_of(&r.template), "")?),
        None => None,
    };
    let few = match hard.map(|h| (best(&h.few_shot), h.demo_prefixes.first())) {
        Some((Some(r), Some(p))) => Some(tokens_for(index_of(&r.template), p)?),
        _ => None,
    };
    let main = tokens_for(0, "")?;
    let load = |d: Option<&Path>| d.map(|d| SoftPrompt::load_for(model, d, true)).transpose();
    let (sp, deep) = (load(pt_dir)?, load(deep_dir)?);
    let time = |prompt: Option<PromptRef>, tok: &Tokenized| -> Result<f64> {
        let t = Instant::now();
        eval::evaluate(model, prompt, tok, pcfg.eval_batch_size, pcfg.length_norm)?;
        Ok(1000.0 * t.elapsed().as_secs_f64() / tok.len().max(1) as f64)
    };
    let mut best_ms = [f64::INFINITY; 5];
    for _ in 0..TIMING_ROUNDS {
        if let Some(z) = &zero {
            best_ms[0] = best_ms[0].min(time(None, z)?);
        }
        if let Some(f) = &few {
            best_ms[1] = best_ms[1].min(time(None, f)?);
        }
        if let Some(sp) = &sp {
            best_ms[2] = best_ms[2].min(time(Some(sp.view()?), &main)?);
        }
        best_ms[3] = best_ms[3].min(time(None, &main)?);
        if let Some(dp) = &deep {
            best_ms[4] = best_ms[4].min(time(Some(dp.view()?), &main)?);
        }
    }
    Ok(TimingStage {
        examples: main.len(),
        rounds: TIMING_ROUNDS,
        zero_shot_ms: zero.as_ref().map(|_| best_ms[0]),
        few_shot_ms: few.as_ref().map(|_| best_ms[1]),
        prompt_tuning_ms: sp.as_ref().map(|_| best_ms[2]),
        full_finetuning_ms: best_ms[3],
        deep_ms: deep.as_ref().map(|_| best_ms[4]),
    })
}

/// Mean training loss over the first and over the last `w` steps of a log
/// (`w` = a fifth of the steps, 1..=20): single-batch losses are too noisy to compare.
pub(super) fn first_last_loss(log: &Path) -> (Option<f64>, Option<f64>) {
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
