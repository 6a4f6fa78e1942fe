//! Prompt transfer with source selection (SPoT, Vu et al. 2022): which of a set of prompts
//! trained on other tasks should start a prompt for a new task?
//!
//! 1. **Probe**: a prompt trained briefly (`probe_steps`) on the target task from the run's
//!    usual init: a cheap "task embedding".
//! 2. **Rank** every source prompt by its similarity to the probe, as SPoT does: the cosine of
//!    the average virtual tokens (`avg_cosine`, the ranking key), and, reported beside it, the
//!    mean over virtual tokens of each probe token's best cosine to the source's tokens
//!    (`max_token_cosine`, SPoT's token-wise variant, which ignores order).
//! 3. **Check**: train the target for the full budget from the top-ranked source (`init
//!    file:`), from the lowest-ranked one, and from the usual init, same data, batches and
//!    seed, and report each one's validation score: whether the ranking's pick helps, and
//!    whether the ranking matters.
//!
//! Sources must be input prompts of the run's shape (`[P, D]`); others are listed as skipped
//! with the reason.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use serde::{Deserialize, Serialize};

use super::trainer::{self, Observer, TrainConfig};
use super::Init;
use crate::fsio::atomic_write;
use crate::inspect::nearest::cosine;
use crate::model::input::PromptKind;
use crate::model::FrozenModel;
use crate::prompt::SoftPrompt;
use crate::{Error, Result};

/// A source prompt's similarity to the probe.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Ranked {
    pub source: PathBuf,
    /// The task it was trained on (from its metadata), when recorded.
    pub task: Option<String>,
    pub avg_cosine: f64,
    pub max_token_cosine: f64,
}

/// One training of the target for the full budget.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TargetRun {
    /// "top-ranked source", "lowest-ranked source" or the init's name.
    pub start: String,
    pub init: Init,
    pub value: f64,
    pub metric: String,
    pub n: usize,
    pub seconds: f64,
}

/// What [`run`] measured (also `transfer.json`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TransferReport {
    pub target: String,
    pub probe_steps: u64,
    pub steps: u64,
    pub ranking: Vec<Ranked>,
    pub skipped: Vec<(PathBuf, String)>,
    pub runs: Vec<TargetRun>,
    /// Top-ranked source's score minus the usual init's (None when not trained).
    pub top_minus_baseline: Option<f64>,
}

/// The mean of the rows of a `[P, D]` prompt.
fn mean_row(p: &SoftPrompt) -> Vec<f32> {
    let (n, d) = (p.num_virtual_tokens(), p.hidden_size());
    let mut m = vec![0.0f32; d];
    for i in 0..n {
        m.iter_mut()
            .zip(p.row(i))
            .for_each(|(a, b)| *a += b / n as f32);
    }
    m
}

/// SPoT's two similarities of `source` to `probe` (both `[*, D]` input prompts).
pub fn similarity(probe: &SoftPrompt, source: &SoftPrompt) -> (f64, f64) {
    let avg = cosine(&mean_row(probe), &mean_row(source)) as f64;
    let n = probe.num_virtual_tokens().max(1);
    let tok = (0..probe.num_virtual_tokens())
        .map(|i| {
            (0..source.num_virtual_tokens())
                .map(|j| cosine(probe.row(i), source.row(j)) as f64)
                .fold(f64::NEG_INFINITY, f64::max)
        })
        .sum::<f64>()
        / n as f64;
    (avg, tok)
}

/// Rank `sources` by their average-token cosine to `probe`, highest first; sources that are
/// not input prompts of the probe's width are returned as skipped, with the reason.
pub fn rank(
    probe: &SoftPrompt,
    sources: &[(PathBuf, SoftPrompt)],
) -> (Vec<Ranked>, Vec<(PathBuf, String)>) {
    let (mut ranked, mut skipped) = (Vec::new(), Vec::new());
    for (dir, sp) in sources {
        if sp.kind() != PromptKind::Input {
            skipped.push((
                dir.clone(),
                "a deep (prefix) prompt: it cannot start an input prompt".into(),
            ));
            continue;
        }
        if sp.hidden_size() != probe.hidden_size() {
            skipped.push((
                dir.clone(),
                format!(
                    "width {} (the target's is {})",
                    sp.hidden_size(),
                    probe.hidden_size()
                ),
            ));
            continue;
        }
        let (avg_cosine, max_token_cosine) = similarity(probe, sp);
        let task = sp
            .meta
            .as_ref()
            .and_then(|m| m.task.as_ref())
            .and_then(|t| t.get("name"))
            .and_then(|n| n.as_str())
            .map(str::to_string);
        ranked.push(Ranked {
            source: dir.clone(),
            task,
            avg_cosine,
            max_token_cosine,
        });
    }
    ranked.sort_by(|a, b| b.avg_cosine.total_cmp(&a.avg_cosine));
    (ranked, skipped)
}

/// Probe, rank `sources`, then train the target from the top and the bottom source and from
/// `cfg.init` (`probe_steps` and `cfg.steps` steps), into `out/{probe,top,bottom,baseline}`;
/// writes `out/transfer.json`. A source with another number of virtual tokens than the run
/// is refused by the init (its error names the folder).
pub fn run(
    model: &FrozenModel,
    cfg: &TrainConfig,
    probe_steps: u64,
    sources: &[PathBuf],
    out: &Path,
    stop: &AtomicBool,
    obs: &mut dyn Observer,
) -> Result<TransferReport> {
    if sources.is_empty() {
        return Err(Error::setting(
            "sources",
            "give at least one source prompt folder",
        ));
    }
    if cfg.prompt_kind != PromptKind::Input {
        return Err(Error::setting(
            "deep",
            "prompt transfer starts input prompts (not --deep)",
        ));
    }
    let loaded: Vec<(PathBuf, SoftPrompt)> = sources
        .iter()
        .map(|d| SoftPrompt::load_for(model, d, false).map(|p| (d.clone(), p)))
        .collect::<Result<_>>()?;
    let train = |name: &str,
                 init: Init,
                 steps: u64,
                 obs: &mut dyn Observer|
     -> Result<(SoftPrompt, TargetRun)> {
        let c = TrainConfig {
            init: init.clone(),
            steps,
            eval_every: 0,
            ..cfg.clone()
        };
        let dir = out.join(name);
        obs.on_message(&format!("transfer: {name}: {steps} steps from {init:?}"));
        let s = trainer::train(model, &c, &dir, false, stop, obs)?;
        if s.interrupted {
            return Err(Error::Input(format!(
                "interrupted while training {}",
                dir.display()
            )));
        }
        let rep = s.final_eval.ok_or_else(|| {
            Error::Input(format!(
                "{}: the target task has no validation split",
                dir.display()
            ))
        })?;
        let sp = SoftPrompt::load(&dir.join("last"))?;
        Ok((
            sp,
            TargetRun {
                start: name.to_string(),
                init,
                value: rep.value,
                metric: rep.metric,
                n: rep.n,
                seconds: s.seconds,
            },
        ))
    };
    let (probe, _) = train("probe", cfg.init.clone(), probe_steps, obs)?;
    let (ranking, skipped) = rank(&probe, &loaded);
    let (Some(top), Some(bottom)) = (ranking.first().cloned(), ranking.last().cloned()) else {
        return Err(Error::setting(
            "sources",
            "no source prompt fits the target run (see the skipped list)",
        ));
    };
    for r in &ranking {
        obs.on_message(&format!(
            "transfer: {} ({}): average-token cosine {:.4}, token-wise {:.4}",
            r.source.display(),
            r.task.as_deref().unwrap_or("?"),
            r.avg_cosine,
            r.max_token_cosine
        ));
    }
    let mut runs = vec![train("top", Init::File(top.source.clone()), cfg.steps, obs)?.1];
    if bottom.source != top.source {
        runs.push(train("bottom", Init::File(bottom.source.clone()), cfg.steps, obs)?.1);
    }
    runs.push(train("baseline", cfg.init.clone(), cfg.steps, obs)?.1);
    let top_minus_baseline = Some(runs[0].value - runs[runs.len() - 1].value);
    let rep = TransferReport {
        target: cfg.task.name.clone(),
        probe_steps,
        steps: cfg.steps,
        ranking,
        skipped,
        runs,
        top_minus_baseline,
    };
    let json = serde_json::to_string_pretty(&rep)
        .map_err(|e| Error::Input(format!("cannot serialize the transfer report: {e}")))?;
    atomic_write(&out.join("transfer.json"), json.as_bytes())?;
    Ok(rep)
}
