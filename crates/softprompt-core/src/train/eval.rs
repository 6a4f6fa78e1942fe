//! Tokenizing prepared items and evaluating a prompt (or no prompt: a hard prompt) on them.

use serde::Serialize;

use crate::data::{ClassItem, GenItem, Items};
use crate::infer::objective::{self, ClassExample, GenExample};
use crate::infer::{self, Sampling};
use crate::model::input::PromptRef;
use crate::model::FrozenModel;
use crate::{Error, Result};

/// A split tokenized for the model.
#[derive(Clone, Debug)]
pub enum Tokenized {
    Class(Vec<ClassExample>),
    Gen(Vec<GenExample>),
}

impl Tokenized {
    pub fn len(&self) -> usize {
        match self {
            Tokenized::Class(v) => v.len(),
            Tokenized::Gen(v) => v.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Rows each example puts through the model (without the prompt), for bucketing.
    pub fn lengths(&self) -> Vec<usize> {
        match self {
            Tokenized::Class(v) => v
                .iter()
                .map(|e| {
                    if e.cands.iter().all(|c| c.len() == 1) {
                        e.ids.len()
                    } else {
                        e.cands.iter().map(|c| e.ids.len() + c.len() - 1).sum()
                    }
                })
                .collect(),
            Tokenized::Gen(v) => v.iter().map(|e| e.ids.len() + e.target.len()).collect(),
        }
    }
    /// The examples at `idx`, as a new batch.
    pub fn select(&self, idx: &[usize]) -> Tokenized {
        match self {
            Tokenized::Class(v) => Tokenized::Class(idx.iter().map(|&i| v[i].clone()).collect()),
            Tokenized::Gen(v) => Tokenized::Gen(idx.iter().map(|&i| v[i].clone()).collect()),
        }
    }
    pub fn truncate(&mut self, n: usize) {
        match self {
            Tokenized::Class(v) => v.truncate(n),
            Tokenized::Gen(v) => v.truncate(n),
        }
    }
}

/// Keep the last `max_len` tokens (the end of a template holds the question), after the
/// tokenizer's input prefix (Gemma's `<bos>`), which is always kept.
fn clip(mut ids: Vec<u32>, max_len: usize, prefix: &[u32]) -> Vec<u32> {
    if ids.len() > max_len {
        let keep = if ids.starts_with(prefix) && prefix.len() < max_len {
            prefix.len()
        } else {
            0
        };
        ids.drain(keep..keep + ids.len() - max_len);
    }
    ids
}

/// Tokenize items; texts longer than `max_len` tokens keep their last `max_len` tokens.
/// Generation targets get the end-of-sequence token appended so the prompt learns to stop.
pub fn tokenize(model: &FrozenModel, items: &Items, max_len: usize) -> Result<Tokenized> {
    // Inputs start with the tokenizer's prefix (`<bos>` for Gemma, as transformers encodes
    // them); candidates and targets are continuations and get none.
    let prefix = model.input_prefix()?;
    Ok(match items {
        Items::Class(v) => Tokenized::Class(
            v.iter()
                .map(|it: &ClassItem| {
                    let cands = it
                        .candidates
                        .iter()
                        .map(|c| model.encode(c))
                        .collect::<Result<Vec<_>>>()?;
                    if let Some(i) = cands.iter().position(|c| c.is_empty()) {
                        return Err(Error::Input(format!(
                            "line {}: candidate {:?} has no tokens",
                            it.line, it.candidates[i]
                        )));
                    }
                    Ok(ClassExample {
                        ids: clip(model.encode_input(&it.text)?, max_len, &prefix),
                        cands,
                        label: it.label,
                    })
                })
                .collect::<Result<Vec<_>>>()?,
        ),
        Items::Gen(v) => {
            let eos = model.eos_ids().first().copied();
            Tokenized::Gen(
                v.iter()
                    .map(|it: &GenItem| {
                        let mut target = match &it.target {
                            Some(t) => model.encode(t)?,
                            None => Vec::new(),
                        };
                        if it.target.is_some() {
                            target.extend(eos);
                        }
                        Ok(GenExample {
                            ids: clip(model.encode_input(&it.input)?, max_len, &prefix),
                            target,
                        })
                    })
                    .collect::<Result<Vec<_>>>()?,
            )
        }
    })
}

/// One input of a classification task made ready to score: `fields` fill the template (a bare
/// text fills a template's only field). Returns the example and the candidate texts.
pub fn class_example(
    model: &FrozenModel,
    spec: &crate::data::TaskSpec,
    input: serde_json::Value,
) -> Result<(ClassExample, Vec<String>)> {
    let fields = match input {
        serde_json::Value::Object(m) => m,
        serde_json::Value::String(t) => {
            let names = spec.template_fields();
            if names.len() != 1 {
                return Err(Error::Input(format!(
                    "task {} has template fields {names:?}: give an object with them",
                    spec.name
                )));
            }
            let mut m = serde_json::Map::new();
            m.insert(names[0].clone(), serde_json::Value::String(t));
            m
        }
        _ => {
            return Err(Error::Input(
                "the input must be a text or an object of fields".into(),
            ))
        }
    };
    let rec = crate::data::Record { line: 1, fields };
    let (items, _) = crate::data::prepare(spec, &[rec], std::path::Path::new("<input>"), false)?;
    let Items::Class(ci) = &items else {
        return Err(Error::Input(format!(
            "task {} is not a classification task",
            spec.name
        )));
    };
    let cands = ci[0].candidates.clone();
    match tokenize(model, &items, usize::MAX)? {
        Tokenized::Class(mut ex) => Ok((ex.remove(0), cands)),
        Tokenized::Gen(_) => Err(Error::Input(format!(
            "task {} is not a classification task",
            spec.name
        ))),
    }
}

/// Evaluation result: the main metric and its companions.
#[derive(Clone, Debug, Serialize)]
pub struct EvalReport {
    /// "accuracy" (classification) or "exact_match" (generation).
    pub metric: String,
    pub value: f64,
    pub n: usize,
    /// Mean loss over labelled examples (rank-classification CE, or target NLL per token).
    pub loss: f64,
    /// Generation only: mean token F1 over whitespace tokens.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_f1: Option<f64>,
    /// Classification only: confusion[gold][predicted].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub confusion: Option<Vec<Vec<usize>>>,
    /// Predicted class (classification) per example, in order.
    #[serde(skip)]
    pub predictions: Vec<usize>,
}

/// Evaluate `prompt` (None: the bare model, i.e. the hard prompt in the template alone).
pub fn evaluate(
    model: &FrozenModel,
    prompt: Option<PromptRef>,
    data: &Tokenized,
    batch_size: usize,
    length_norm: bool,
) -> Result<EvalReport> {
    evaluate_ensemble(model, &[prompt], data, batch_size, length_norm)
}

/// Evaluate an ensemble of prompts of one classification task: class probabilities averaged
/// over the prompts ([`objective::classify_ensemble`]). One prompt is [`evaluate`]; a
/// generation task takes exactly one.
pub fn evaluate_ensemble(
    model: &FrozenModel,
    prompts: &[Option<PromptRef>],
    data: &Tokenized,
    batch_size: usize,
    length_norm: bool,
) -> Result<EvalReport> {
    let bs = batch_size.max(1);
    match data {
        Tokenized::Class(v) => {
            let k = v.iter().map(|e| e.cands.len()).max().unwrap_or(0);
            let mut confusion = vec![vec![0usize; k]; k];
            let (mut correct, mut labelled, mut loss) = (0usize, 0usize, 0.0f64);
            let mut predictions = Vec::with_capacity(v.len());
            for chunk in v.chunks(bs) {
                let r = objective::classify_ensemble(&model.llama, prompts, chunk, length_norm)?;
                let nl = chunk.iter().filter(|e| e.label.is_some()).count();
                loss += r.loss * nl as f64;
                for (ex, s) in chunk.iter().zip(&r.scores) {
                    let pred = objective::argmax(s);
                    predictions.push(pred);
                    if let Some(y) = ex.label {
                        labelled += 1;
                        correct += (pred == y) as usize;
                        confusion[y][pred] += 1;
                    }
                }
            }
            if labelled == 0 {
                return Err(Error::Input("evaluation data has no labels".into()));
            }
            Ok(EvalReport {
                metric: "accuracy".into(),
                value: correct as f64 / labelled as f64,
                n: labelled,
                loss: loss / labelled as f64,
                token_f1: None,
                confusion: Some(confusion),
                predictions,
            })
        }
        Tokenized::Gen(v) => {
            let &[prompt] = prompts else {
                return Err(Error::Input(format!(
                    "a generation task is evaluated with one prompt, not an ensemble of {}",
                    prompts.len()
                )));
            };
            let eos = model.eos_ids();
            let (mut em, mut f1, mut loss, mut n) = (0.0, 0.0, 0.0, 0usize);
            for ex in v.iter().filter(|e| !e.target.is_empty()) {
                let r = objective::lm_batch(&model.llama, prompt, std::slice::from_ref(ex), false)?;
                loss += r.loss;
                let s = Sampling {
                    max_new_tokens: ex.target.len() + 8,
                    eos: eos.clone(),
                    ..Default::default()
                };
                let out = infer::generate(&model.llama, prompt, &ex.ids, &s, |_| true)?;
                let strip = |ids: &[u32]| -> Vec<u32> {
                    ids.iter().copied().filter(|t| !eos.contains(t)).collect()
                };
                let pred = model.decode(&strip(&out))?;
                let gold = model.decode(&strip(&ex.target))?;
                em += (normalize(&pred) == normalize(&gold)) as usize as f64;
                f1 += token_f1(&pred, &gold);
                n += 1;
            }
            if n == 0 {
                return Err(Error::Input("evaluation data has no targets".into()));
            }
            Ok(EvalReport {
                metric: "exact_match".into(),
                value: em / n as f64,
                n,
                loss: loss / n as f64,
                token_f1: Some(f1 / n as f64),
                confusion: None,
                predictions: Vec::new(),
            })
        }
    }
}

fn normalize(s: &str) -> String {
    s.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

/// SQuAD-style token F1 over lower-cased whitespace tokens.
pub fn token_f1(pred: &str, gold: &str) -> f64 {
    let p: Vec<String> = normalize(pred)
        .split(' ')
        .filter(|t| !t.is_empty())
        .map(String::from)
        .collect();
    let g: Vec<String> = normalize(gold)
        .split(' ')
        .filter(|t| !t.is_empty())
        .map(String::from)
        .collect();
    if p.is_empty() || g.is_empty() {
        return (p.is_empty() && g.is_empty()) as usize as f64;
    }
    let mut counts = std::collections::HashMap::new();
    for t in &g {
        *counts.entry(t.as_str()).or_insert(0i32) += 1;
    }
    let mut common = 0;
    for t in &p {
        if let Some(c) = counts.get_mut(t.as_str()) {
            if *c > 0 {
                *c -= 1;
                common += 1;
            }
        }
    }
    if common == 0 {
        return 0.0;
    }
    let (pr, rc) = (
        common as f64 / p.len() as f64,
        common as f64 / g.len() as f64,
    );
    2.0 * pr * rc / (pr + rc)
}
