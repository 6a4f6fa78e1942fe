//! The soft prompt next to its hard projection on labelled data.

use std::path::Path;

use super::{projected_embeddings, ProjectionEval};
use crate::data::{self, Items, TaskSpec};
use crate::model::input::PromptRef;
use crate::model::FrozenModel;
use crate::prompt::SoftPrompt;
use crate::train::eval::{self, Tokenized};
use crate::{Error, Result};

/// Labelled data, tokenized for evaluation.
pub struct EvalData {
    pub task: String,
    /// The file (or built-in split) it came from.
    pub name: String,
    pub tokenized: Tokenized,
    pub majority_baseline: Option<f64>,
}

/// Read `file` (a data file, `hf://datasets/...` or `builtin:demo/validation`) for `spec`,
/// keep at most `limit` examples, and tokenize them (texts cut to their last `max_len` tokens).
pub fn load_eval_data(
    model: &FrozenModel,
    spec: &TaskSpec,
    file: &str,
    data_root: Option<&Path>,
    max_len: usize,
    limit: Option<usize>,
) -> Result<EvalData> {
    let data::Split {
        mut items, name, ..
    } = data::load_items(spec, file, data_root, false)?;
    if let Some(n) = limit {
        items.truncate(n);
    }
    if items.is_empty() {
        return Err(Error::Input(format!("{name}: no examples to evaluate")));
    }
    let majority_baseline = match &items {
        Items::Class(v) => Some(data::majority_baseline(v).1),
        Items::Gen(_) => None,
    };
    let tokenized = eval::tokenize(model, &items, max_len)?;
    Ok(EvalData {
        task: spec.name.clone(),
        name,
        tokenized,
        majority_baseline,
    })
}

/// Evaluate the soft prompt and its hard projection (`hard_ids`, one token per virtual
/// token) on `data`.
pub fn evaluate_projection(
    model: &FrozenModel,
    prompt: &SoftPrompt,
    hard_ids: &[u32],
    data: &EvalData,
    batch_size: usize,
    length_norm: bool,
) -> Result<ProjectionEval> {
    if hard_ids.len() != prompt.num_virtual_tokens() {
        return Err(Error::Mismatch(format!(
            "the hard prompt has {} tokens, the soft prompt {}",
            hard_ids.len(),
            prompt.num_virtual_tokens()
        )));
    }
    let hard_emb = projected_embeddings(model, hard_ids)?;
    let soft = eval::evaluate(
        model,
        Some(prompt.view()?),
        &data.tokenized,
        batch_size,
        length_norm,
    )?;
    let hard = eval::evaluate(
        model,
        Some(PromptRef::from_tensor(&hard_emb)?),
        &data.tokenized,
        batch_size,
        length_norm,
    )?;
    Ok(ProjectionEval {
        task: data.task.clone(),
        data: data.name.clone(),
        metric: soft.metric.clone(),
        n: soft.n,
        retained: (soft.value > 0.0).then(|| hard.value / soft.value),
        majority_baseline: data.majority_baseline,
        soft,
        hard,
    })
}
