//! Opening the black box of a soft prompt (Lester et al. 2021, section 7): what each
//! virtual token is close to in the model's vocabulary, how large it is next to real token
//! embeddings, how far training moved it from its init, and how much of its skill survives
//! when every vector is replaced by its nearest real token (a "hard projection").
//!
//! - [`nearest::TokenIndex`]: the input-embedding table `[V, D]` with precomputed row norms; its
//!   [`nearest::TokenIndex::nearest`] finds the k nearest tokens of many vectors at once by cosine
//!   similarity and by L2 distance, from one matrix product `vectors @ embed^T`
//!   ([`crate::compute::kernels::linear`]); the few best candidates are then re-scored exactly (f64),
//!   so a vector equal to a token's row gets cosine 1 and distance 0.
//! - [`inspect`]: the whole [`InspectReport`] of a prompt on a model (no evaluation).
//! - [`eval::load_eval_data`] + [`eval::evaluate_projection`]: accuracy of the soft prompt and of its hard
//!   projection on labelled data, side by side.
//! - [`markdown::write_pictures`] and [`markdown::to_markdown`]: `prompt_similarity.png`, `nearest_tokens.png`
//!   and the Markdown report `inspect.md`.
//!
//! Nothing here prints; the report is serde-serializable.

pub mod eval;
pub mod markdown;
pub mod nearest;

use serde::Serialize;

use self::nearest::{dims, exact, row_norms, similarity_matrix, TokenIndex};
use crate::model::input::PromptKind;
use crate::model::FrozenModel;
use crate::prompt::SoftPrompt;
use crate::train::eval::EvalReport;
use crate::train::init::{self, Init};
use crate::train::trainer::TrainConfig;
use crate::{Error, Result, Tensor};

/// Nearest tokens reported per virtual token by default.
pub const DEFAULT_K: usize = 5;

/// File names written by [`markdown::write_pictures`] and [`markdown::write_markdown`].
pub const SIMILARITY_PNG: &str = "prompt_similarity.png";

pub const NEAREST_PNG: &str = "nearest_tokens.png";

pub const MARKDOWN_FILE: &str = "inspect.md";

/// One vocabulary token near a vector, with both measures.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Hit {
    pub id: u32,
    /// Cosine similarity to the vector, in [-1, 1] (0 when either norm is 0).
    pub cosine: f32,
    /// Euclidean distance to the vector.
    pub l2: f32,
}

/// The k nearest tokens of one vector, best first.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Nearest {
    /// By cosine similarity, highest first (ties: lower id first).
    pub by_cosine: Vec<Hit>,
    /// By L2 distance, smallest first (ties: lower id first).
    pub by_l2: Vec<Hit>,
}

/// A [`Hit`] with its decoded text.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Neighbor {
    pub id: u32,
    /// The token decoded on its own (`model.decode(&[id])`).
    pub piece: String,
    /// The vocabulary entry (e.g. `Ġthe` in a byte-level BPE), which tells apart pieces
    /// that decode to the same text, such as byte fragments shown as U+FFFD.
    pub token: Option<String>,
    pub cosine: f32,
    pub l2: f32,
}

/// The distribution of the L2 norms of the real token embeddings.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct NormStats {
    pub count: usize,
    pub min: f32,
    pub p05: f32,
    pub median: f32,
    pub mean: f32,
    pub p95: f32,
    pub max: f32,
}

/// How far training moved a vector from its (recomputed) init.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Drift {
    /// `||v - v_init||`.
    pub l2: f32,
    /// `cos(v, v_init)`.
    pub cosine: f32,
    /// `||v - v_init|| / ||v_init||` (None when the init vector is 0).
    pub relative: Option<f32>,
    /// The nearest token (by cosine) of the init vector: for a vocabulary, text or label
    /// init, the token it started as.
    pub init_nearest_id: u32,
}

/// Everything about one virtual token.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct VectorReport {
    pub index: usize,
    /// `v{index}`, as in the pictures.
    pub label: String,
    pub norm: f32,
    /// Percentage (0..=100) of real token embeddings whose norm is below this vector's
    /// (ties count half).
    pub norm_percentile: f32,
    pub nearest_cosine: Vec<Neighbor>,
    pub nearest_l2: Vec<Neighbor>,
    /// None when the prompt has no recorded init (e.g. written by PEFT).
    pub drift: Option<Drift>,
}

/// The prompt with each vector replaced by its nearest token (by cosine).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HardPrompt {
    pub ids: Vec<u32>,
    pub pieces: Vec<String>,
    /// `model.decode(ids)`.
    pub text: String,
    /// Cosine of each vector to its token.
    pub cosines: Vec<f32>,
    pub mean_cosine: f32,
}

/// The recorded init, recomputed.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct InitInfo {
    /// As the `--init` flag spells it: `vocab:5000`, `random:0.5`, `text:...`, `labels`, `file:DIR`.
    pub init: String,
    pub seed: u64,
    pub mean_drift_l2: f32,
    pub mean_drift_cosine: f32,
    /// Virtual tokens whose nearest token is still that of their init vector.
    pub same_nearest_token: usize,
}

/// The soft prompt and its hard projection evaluated on the same data.
#[derive(Clone, Debug, Serialize)]
pub struct ProjectionEval {
    pub task: String,
    pub data: String,
    /// "accuracy" or "exact_match".
    pub metric: String,
    pub n: usize,
    pub soft: EvalReport,
    pub hard: EvalReport,
    /// `hard.value / soft.value` (None when the soft prompt scores 0).
    pub retained: Option<f64>,
    /// Accuracy of always predicting the most frequent class (classification only).
    pub majority_baseline: Option<f64>,
}

/// The whole inspection of a prompt.
#[derive(Clone, Debug, Serialize)]
pub struct InspectReport {
    /// The prompt folder, when it was loaded from one.
    pub prompt: Option<String>,
    /// The model the prompt was inspected on (its source).
    pub model: String,
    pub num_virtual_tokens: usize,
    /// Width of the compared vectors: the hidden size, or `Hkv*hd` for a deep prompt.
    pub hidden_size: usize,
    /// What is compared with the vocabulary: "input embeddings" (a prompt-tuning prompt), or
    /// "layer-0 values (deep prompt)": each virtual position's value vector at the first
    /// layer against the value every token gets there.
    pub space: String,
    pub vocab_size: usize,
    pub k: usize,
    pub embedding_norms: NormStats,
    pub vectors: Vec<VectorReport>,
    /// `[P][P]` cosine similarity between the prompt vectors.
    pub prompt_similarity: Vec<Vec<f32>>,
    pub hard_prompt: HardPrompt,
    /// None when the prompt records no init (or it could not be recomputed: see `notes`).
    pub init: Option<InitInfo>,
    /// Filled by [`eval::evaluate_projection`] when there is labelled data.
    pub evaluation: Option<ProjectionEval>,
    /// What could not be done, and why.
    pub notes: Vec<String>,
}

/// The layer-0 value columns `[P, Hkv*hd]` of a deep prompt `[P, L*2*Hkv*hd]`.
fn layer0_columns(model: &FrozenModel, t: &Tensor) -> Result<Tensor> {
    let (p, w) = dims(t, "the deep prompt")?;
    let kvd = model.llama.dims.kvdim();
    if w != model.llama.prefix_width() {
        return Err(Error::Mismatch(format!(
            "the deep prompt has {w} values per virtual token, the model's prefix {}",
            model.llama.prefix_width()
        )));
    }
    let mut out = Vec::with_capacity(p * kvd);
    for i in 0..p {
        out.extend_from_slice(&t.data[i * w + kvd..i * w + 2 * kvd]); // layer 0: key, then value
    }
    Ok(Tensor::new(vec![p, kvd], out))
}

/// `init` as the `--init` flag spells it.
pub fn describe_init(init: &Init) -> String {
    match init {
        Init::Random { range } => format!("random:{range}"),
        Init::Vocab { top } => format!("vocab:{top}"),
        Init::Text(t) => format!("text:{t}"),
        Init::Labels => "labels".into(),
        Init::File(p) => format!("file:{}", p.display()),
    }
}

/// The training config recorded in the prompt's `softprompt.json` (None when there is none).
pub fn recorded_config(prompt: &SoftPrompt) -> Option<Result<TrainConfig>> {
    let t = prompt.meta.as_ref()?.training.clone()?;
    Some(serde_json::from_value(t).map_err(|e| {
        Error::Input(format!(
            "softprompt.json: unreadable training settings: {e}"
        ))
    }))
}

/// The prompt's init `[P, D]`, recomputed from its recorded training config on `model`.
/// None when the prompt records none (e.g. written by PEFT).
pub fn recorded_init(
    model: &FrozenModel,
    prompt: &SoftPrompt,
) -> Result<Option<(TrainConfig, Tensor)>> {
    let Some(cfg) = recorded_config(prompt) else {
        return Ok(None);
    };
    let cfg = cfg?;
    if cfg.num_virtual_tokens != prompt.num_virtual_tokens() {
        return Err(Error::Mismatch(format!(
            "the recorded training has {} virtual tokens, the prompt {}",
            cfg.num_virtual_tokens,
            prompt.num_virtual_tokens()
        )));
    }
    let t = init::init_prompt(model, &cfg)?;
    if t.shape != prompt.embeddings.shape {
        return Err(Error::Mismatch(format!(
            "the recomputed init is {:?}, the prompt {:?}",
            t.shape, prompt.embeddings.shape
        )));
    }
    Ok(Some((cfg, t)))
}

/// Inspect `prompt` against `model`'s input embeddings with the `k` nearest tokens per
/// virtual token. Drift is computed when the prompt records its init and was trained for
/// this model; what cannot be done is explained in `notes`. No evaluation (see
/// [`eval::evaluate_projection`]).
pub fn inspect(model: &FrozenModel, prompt: &SoftPrompt, k: usize) -> Result<InspectReport> {
    if k == 0 {
        return Err(Error::setting(
            "k",
            "k (nearest tokens per vector) must be at least 1",
        ));
    }
    let deep = prompt.kind() == PromptKind::Prefix;
    let table = if deep {
        // A deep prompt is read through its layer-0 values: the space where every token has
        // one vector whatever its position.
        std::borrow::Cow::Owned(model.llama.layer0_values()?)
    } else {
        // Compare in input space: Gemma scales token rows by sqrt(hidden) at the input
        // (prompt rows enter as stored), so its table is scaled the same way here.
        let scale = model.llama.embed_scale();
        let mut table = model.llama.embed.to_f32(); // [V, D]
        if scale != 1.0 {
            table.to_mut().data.iter_mut().for_each(|x| *x *= scale);
        }
        table
    };
    let index = TokenIndex::new(&table)?;
    let vectors_of = |t: &Tensor| -> Result<Tensor> {
        if deep {
            layer0_columns(model, t)
        } else {
            Ok(t.clone())
        }
    };
    let compared = vectors_of(&prompt.embeddings)?; // [P, D] or [P, Hkv*hd]
    let (p, d) = dims(&compared, "the soft prompt")?;
    if d != index.d {
        return Err(Error::Mismatch(format!(
            "the prompt's token dimension is {d}, the model's hidden size {}",
            index.d
        )));
    }
    if p == 0 {
        return Err(Error::Input("the soft prompt has no virtual tokens".into()));
    }
    let k = k.min(index.vocab);
    let mut notes = Vec::new();
    let emb = &compared.data;
    let nearest = index.nearest(emb, k)?;
    let norms = row_norms(emb, d);

    // Drift from the recorded init.
    let mut init_info = None;
    let mut drifts: Vec<Option<Drift>> = vec![None; p];
    if prompt.fingerprint_matches(&model.fingerprint) == Some(false) {
        if recorded_config(prompt).is_some() {
            notes.push("drift not computed: the prompt was trained for another model, so its init cannot be recomputed on this one".into());
        }
    } else {
        match recorded_init(model, prompt) {
            Ok(None) => {}
            Ok(Some((cfg, init))) => {
                let init = vectors_of(&init)?;
                let init_norms = row_norms(&init.data, d);
                let init_nearest = index.nearest(&init.data, 1)?;
                for (i, slot) in drifts.iter_mut().enumerate() {
                    let (cos, l2) = exact(compared.row(i), init.row(i));
                    let relative = (init_norms[i] > 0.0).then(|| l2 / init_norms[i]);
                    let init_nearest_id = init_nearest[i].by_cosine[0].id;
                    *slot = Some(Drift {
                        l2,
                        cosine: cos,
                        relative,
                        init_nearest_id,
                    });
                }
                let mean = |f: &dyn Fn(&Drift) -> f32| {
                    drifts.iter().flatten().map(f).sum::<f32>() / p as f32
                };
                init_info = Some(InitInfo {
                    init: describe_init(&cfg.init),
                    seed: cfg.seed,
                    mean_drift_l2: mean(&|x| x.l2),
                    mean_drift_cosine: mean(&|x| x.cosine),
                    same_nearest_token: nearest
                        .iter()
                        .zip(&drifts)
                        .filter(|(n, dr)| {
                            dr.is_some_and(|dr| dr.init_nearest_id == n.by_cosine[0].id)
                        })
                        .count(),
                });
            }
            Err(e) => notes.push(format!(
                "drift not computed: could not recompute the recorded init: {e}"
            )),
        }
    }

    // Decode every token that appears once.
    let mut pieces = std::collections::HashMap::new();
    for n in &nearest {
        for h in n.by_cosine.iter().chain(&n.by_l2) {
            if let std::collections::hash_map::Entry::Vacant(e) = pieces.entry(h.id) {
                e.insert(model.decode(&[h.id])?);
            }
        }
    }
    let neighbor = |h: &Hit| Neighbor {
        id: h.id,
        piece: pieces[&h.id].clone(),
        token: model.tokenizer.id_to_token(h.id),
        cosine: h.cosine,
        l2: h.l2,
    };

    let vectors: Vec<VectorReport> = nearest
        .iter()
        .enumerate()
        .map(|(i, n)| VectorReport {
            index: i,
            label: format!("v{i}"),
            norm: norms[i],
            norm_percentile: index.norm_percentile(norms[i]),
            nearest_cosine: n.by_cosine.iter().map(neighbor).collect(),
            nearest_l2: n.by_l2.iter().map(neighbor).collect(),
            drift: drifts[i],
        })
        .collect();

    let ids: Vec<u32> = nearest.iter().map(|n| n.by_cosine[0].id).collect();
    let cosines: Vec<f32> = nearest.iter().map(|n| n.by_cosine[0].cosine).collect();
    let hard_prompt = HardPrompt {
        pieces: ids.iter().map(|id| pieces[id].clone()).collect(),
        text: model.decode(&ids)?,
        mean_cosine: cosines.iter().sum::<f32>() / p as f32,
        ids,
        cosines,
    };

    Ok(InspectReport {
        prompt: prompt.source.as_ref().map(|s| s.display().to_string()),
        model: model.source.clone(),
        num_virtual_tokens: p,
        hidden_size: d,
        space: if deep {
            "layer-0 values (deep prompt)".into()
        } else {
            "input embeddings".into()
        },
        vocab_size: index.vocab,
        k,
        embedding_norms: index.norm_stats(),
        vectors,
        prompt_similarity: similarity_matrix(emb, d),
        hard_prompt,
        init: init_info,
        evaluation: None,
        notes,
    })
}

/// The hard-projected prompt as a soft prompt: exactly the embedding rows of `ids`.
pub fn projected_embeddings(model: &FrozenModel, ids: &[u32]) -> Result<Tensor> {
    crate::prompt::init::from_tokens(model, ids)
}
