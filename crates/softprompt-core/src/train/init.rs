//! How a run's prompt starts (Lester et al. 2021, section 3): [`Init`] (as the `init`
//! setting spells it: `random[:R]`, `vocab[:N]`, `text:T`, `labels`, `file:DIR`) and the
//! initial `[P, D]` values it gives on a model.

use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::trainer::TrainConfig;
use crate::data::TaskSpec;
use crate::model::input::{PromptKind, PromptRef};
use crate::model::FrozenModel;
use crate::prompt::{self, SoftPrompt};
use crate::{Error, Result, Tensor};

/// How the prompt starts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Init {
    /// Uniform in [-range, range].
    Random { range: f32 },
    /// Rows of random tokens among the `top` most frequent (lowest BPE ids ~ most frequent merges).
    Vocab { top: usize },
    /// The embeddings of a text's tokens, repeated to fill the prompt.
    Text(String),
    /// The embeddings of the class label words first, the rest sampled from the vocabulary.
    Labels,
    /// Another prompt folder.
    File(PathBuf),
}

impl FromStr for Init {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let (kind, arg) = s.split_once(':').map_or((s, None), |(a, b)| (a, Some(b)));
        let bad = |m: &str| Error::setting("init", format!("init {s}: {m}"));
        Ok(match kind {
            "random" => Init::Random {
                range: arg.map_or(Ok(0.5), |a| {
                    a.parse().map_err(|_| bad("range is not a number"))
                })?,
            },
            "vocab" => Init::Vocab {
                top: arg.map_or(Ok(5000), |a| {
                    a.parse().map_err(|_| bad("top is not a number"))
                })?,
            },
            "text" => Init::Text(
                arg.filter(|a| !a.is_empty())
                    .ok_or_else(|| bad("give the text: text:Classify the sentiment"))?
                    .to_string(),
            ),
            "labels" => Init::Labels,
            "file" => Init::File(PathBuf::from(
                arg.ok_or_else(|| bad("give the folder: file:DIR"))?,
            )),
            _ => {
                return Err(bad(
                    "expected random[:R], vocab[:N], text:T, labels or file:DIR",
                ))
            }
        })
    }
}

/// The initial prompt of a run: `[P, D]`, or for a deep prompt `[P, L*2*kvd]`, the keys and
/// values the `[P, D]` init rows leave at every layer (so a deep prompt starts exactly where
/// the input prompt of the same init starts: from the hard prompt of `text:`/`labels`/`vocab`
/// tokens, as Li & Liang's init from real words), or a prefix prompt folder as it is.
pub fn init_prompt(model: &FrozenModel, cfg: &TrainConfig) -> Result<Tensor> {
    let p = cfg.num_virtual_tokens;
    let to_prefix = |rows: &Tensor| prefix_of_rows(model, rows);
    // A prompt folder is read once: used as it is, or an input prompt made deep.
    if let Init::File(dir) = &cfg.init {
        let sp = SoftPrompt::load_for(model, dir, false)?;
        if (sp.kind(), cfg.prompt_kind) == (PromptKind::Prefix, PromptKind::Input) {
            return Err(Error::setting(
                "init",
                format!(
                    "{}: is a deep (prefix) prompt; it can start only a deep prompt run (--deep)",
                    dir.display()
                ),
            ));
        }
        check_len(dir, &sp, p)?;
        return match (sp.kind(), cfg.prompt_kind) {
            (PromptKind::Input, PromptKind::Prefix) => to_prefix(&sp.embeddings),
            _ => Ok(sp.embeddings),
        };
    }
    let rows = init_embeddings(model, &cfg.init, p, cfg.seed, &cfg.task)?;
    match cfg.prompt_kind {
        PromptKind::Input => Ok(rows),
        PromptKind::Prefix => to_prefix(&rows),
    }
}

/// The deep prompt `[P, L*2*kvd]` equivalent to the input rows `[P, D]`: the keys and values
/// they leave at every layer ([`crate::model::llama::Llama::prefix_of`]) as a tensor.
pub fn prefix_of_rows(model: &FrozenModel, rows: &Tensor) -> Result<Tensor> {
    let prefix = model.llama.prefix_of(PromptRef::from_tensor(rows)?)?;
    Ok(Tensor::new(
        vec![
            prefix.len() / model.llama.prefix_width(),
            model.llama.prefix_width(),
        ],
        prefix,
    ))
}

fn check_len(dir: &std::path::Path, sp: &SoftPrompt, p: usize) -> Result<()> {
    if sp.num_virtual_tokens() != p {
        return Err(Error::Mismatch(format!(
            "{}: has {} virtual tokens, the run asks for {p}",
            dir.display(),
            sp.num_virtual_tokens()
        )));
    }
    Ok(())
}

/// `p` prompt rows `[p, D]` made by `init` (`task` gives the label words of `Init::Labels`).
pub fn init_embeddings(
    model: &FrozenModel,
    init: &Init,
    p: usize,
    seed: u64,
    task: &TaskSpec,
) -> Result<Tensor> {
    let d = model.llama.dims.d;
    if p == 0 || p > prompt::MAX_VIRTUAL_TOKENS {
        return Err(Error::setting(
            "num_virtual_tokens",
            format!(
                "num_virtual_tokens must be in 1..={}, got {p}",
                prompt::MAX_VIRTUAL_TOKENS
            ),
        ));
    }
    let vocab = model.llama.dims.vocab;
    let specials: Vec<u32> = model
        .tokenizer
        .get_added_tokens_decoder()
        .keys()
        .copied()
        .collect();
    let sample = |n: usize, top: usize| -> Vec<u32> {
        let mut ids =
            prompt::init::sample_vocab_ids(vocab, top.min(vocab), n + specials.len(), seed);
        ids.retain(|i| !specials.contains(i));
        ids.truncate(n);
        ids
    };
    match init {
        Init::Random { range } => Ok(prompt::init::random_uniform(p, d, *range, seed)),
        Init::Vocab { top } => prompt::init::from_tokens(model, &sample(p, *top)),
        Init::Text(t) => {
            let ids = model.encode(t)?;
            if ids.is_empty() {
                return Err(Error::setting("init", "init text: the text has no tokens"));
            }
            prompt::init::from_tokens(model, &prompt::init::repeat_ids(&ids, p))
        }
        Init::Labels => {
            let mut ids: Vec<u32> = Vec::new();
            if let crate::data::TaskKind::Classification { labels, .. } = &task.kind {
                for l in labels {
                    // Only label texts without placeholders are words (COPA's are templates).
                    if !l.text.contains('{') {
                        ids.extend(model.encode(&l.text)?);
                    }
                }
            }
            if ids.is_empty() {
                return Err(Error::setting(
                    "init",
                    "init labels: the task has no fixed label words",
                ));
            }
            ids.truncate(p);
            let rest = p - ids.len();
            ids.extend(sample(rest, 5000));
            prompt::init::from_tokens(model, &ids)
        }
        Init::File(dir) => {
            let sp = SoftPrompt::load_for(model, dir, false)?;
            if sp.kind() != PromptKind::Input {
                return Err(Error::setting(
                    "init",
                    format!(
                        "{}: is a deep (prefix) prompt, not input embeddings",
                        dir.display()
                    ),
                ));
            }
            check_len(dir, &sp, p)?;
            Ok(sp.embeddings)
        }
    }
}
