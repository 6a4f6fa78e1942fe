//! Opening the black box of a soft prompt (Lester et al. 2021, section 7): what each
//! virtual token is close to in the model's vocabulary, how large it is next to real token
//! embeddings, how far training moved it from its init, and how much of its skill survives
//! when every vector is replaced by its nearest real token (a "hard projection").
//!
//! - [`TokenIndex`]: the input-embedding table `[V, D]` with precomputed row norms; its
//!   [`TokenIndex::nearest`] finds the k nearest tokens of many vectors at once by cosine
//!   similarity and by L2 distance, from one matrix product `vectors @ embed^T`
//!   ([`crate::compute::kernels::linear`]); the few best candidates are then re-scored exactly (f64),
//!   so a vector equal to a token's row gets cosine 1 and distance 0.
//! - [`inspect`]: the whole [`InspectReport`] of a prompt on a model (no evaluation).
//! - [`load_eval_data`] + [`evaluate_projection`]: accuracy of the soft prompt and of its hard
//!   projection on labelled data, side by side.
//! - [`write_pictures`] and [`to_markdown`]: `prompt_similarity.png`, `nearest_tokens.png`
//!   and the Markdown report `inspect.md`.
//!
//! Nothing here prints; the report is serde-serializable.

use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::Serialize;

use crate::compute::kernels;
use crate::data::{self, Items, TaskSpec};
use crate::model::FrozenModel;
use crate::prompt::SoftPrompt;
use crate::train::eval::{self, EvalReport, Tokenized};
use crate::train::plot;
use crate::train::trainer::{self, Init, TrainConfig};
use crate::{Error, Result, Tensor};

/// Nearest tokens reported per virtual token by default.
pub const DEFAULT_K: usize = 5;
/// File names written by [`write_pictures`] and [`write_markdown`].
pub const SIMILARITY_PNG: &str = "prompt_similarity.png";
pub const NEAREST_PNG: &str = "nearest_tokens.png";
pub const MARKDOWN_FILE: &str = "inspect.md";
/// Candidates beyond k that are re-scored exactly (guards against f32 rounding in the
/// matrix product reordering near-ties).
const RESCORE_EXTRA: usize = 8;
/// Vectors per matrix product: bounds the `[rows, V]` score buffer.
const ROW_CHUNK: usize = 64;

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
    pub hidden_size: usize,
    pub vocab_size: usize,
    pub k: usize,
    pub embedding_norms: NormStats,
    pub vectors: Vec<VectorReport>,
    /// `[P][P]` cosine similarity between the prompt vectors.
    pub prompt_similarity: Vec<Vec<f32>>,
    pub hard_prompt: HardPrompt,
    /// None when the prompt records no init (or it could not be recomputed: see `notes`).
    pub init: Option<InitInfo>,
    /// Filled by [`evaluate_projection`] when there is labelled data.
    pub evaluation: Option<ProjectionEval>,
    /// What could not be done, and why.
    pub notes: Vec<String>,
}

/// L2 norm of each row of `m[rows, d]`.
pub fn row_norms(m: &[f32], d: usize) -> Vec<f32> {
    if d == 0 {
        return Vec::new();
    }
    m.par_chunks(d)
        .map(|r| {
            r.iter()
                .map(|&x| (x as f64) * (x as f64))
                .sum::<f64>()
                .sqrt() as f32
        })
        .collect()
}

fn dims(t: &Tensor, what: &str) -> Result<(usize, usize)> {
    match t.shape.as_slice() {
        [r, c] => Ok((*r, *c)),
        s => Err(Error::Input(format!("{what} must be 2-D, got shape {s:?}"))),
    }
}

/// Exact (f64) cosine and distance of two vectors.
fn exact(a: &[f32], b: &[f32]) -> (f32, f32) {
    let (mut ab, mut aa, mut bb, mut dd) = (0.0f64, 0.0f64, 0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (x as f64, y as f64);
        ab += x * y;
        aa += x * x;
        bb += y * y;
        dd += (x - y) * (x - y);
    }
    let cos = if aa > 0.0 && bb > 0.0 {
        (ab / (aa.sqrt() * bb.sqrt())).clamp(-1.0, 1.0)
    } else {
        0.0
    };
    (cos as f32, dd.sqrt() as f32)
}

/// Cosine similarity of two vectors (0 when either is 0).
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    exact(a, b).0
}

/// The input-embedding table with what nearest-token search needs precomputed.
pub struct TokenIndex<'a> {
    /// `[V, D]` row-major.
    pub embed: &'a [f32],
    pub vocab: usize,
    pub d: usize,
    /// L2 norm of each row, `[V]`.
    pub norms: Vec<f32>,
    /// The same norms, sorted ascending.
    pub sorted_norms: Vec<f32>,
}

impl<'a> TokenIndex<'a> {
    pub fn new(embed: &'a Tensor) -> Result<Self> {
        let (vocab, d) = dims(embed, "the embedding table")?;
        if vocab == 0 || d == 0 {
            return Err(Error::Input("the embedding table is empty".into()));
        }
        let norms = row_norms(&embed.data, d);
        let mut sorted_norms = norms.clone();
        sorted_norms.sort_by(|a, b| a.total_cmp(b));
        Ok(TokenIndex {
            embed: &embed.data,
            vocab,
            d,
            norms,
            sorted_norms,
        })
    }

    /// Row `id` of the table.
    pub fn row(&self, id: u32) -> &[f32] {
        let i = id as usize;
        &self.embed[i * self.d..(i + 1) * self.d]
    }

    /// The k nearest tokens (k capped at the vocabulary size) of each row of
    /// `vectors[n, D]`, by cosine and by L2.
    pub fn nearest(&self, vectors: &[f32], k: usize) -> Result<Vec<Nearest>> {
        let d = self.d;
        if !vectors.len().is_multiple_of(d) {
            return Err(Error::Input(format!(
                "{} values are not rows of {d}",
                vectors.len()
            )));
        }
        let k = k.min(self.vocab);
        let keep = (k + RESCORE_EXTRA).min(self.vocab);
        let v = self.vocab;
        let mut out = Vec::with_capacity(vectors.len() / d);
        for chunk in vectors.chunks(ROW_CHUNK * d) {
            let m = chunk.len() / d;
            // dots[m, V] = chunk[m, D] @ embed[V, D]^T
            let mut dots = vec![0.0f32; m * v];
            kernels::linear(chunk, self.embed, m, v, d, &mut dots, false);
            let xn = row_norms(chunk, d);
            let res: Vec<Nearest> = dots
                .par_chunks(v)
                .zip(chunk.par_chunks(d))
                .zip(xn.par_iter())
                .map(|((dot, x), &xn)| {
                    let cos: Vec<f32> = dot
                        .iter()
                        .zip(&self.norms)
                        .map(|(&p, &en)| {
                            if xn > 0.0 && en > 0.0 {
                                p / (xn * en)
                            } else {
                                0.0
                            }
                        })
                        .collect();
                    let l2sq: Vec<f32> = dot
                        .iter()
                        .zip(&self.norms)
                        .map(|(&p, &en)| xn * xn + en * en - 2.0 * p)
                        .collect();
                    let by_cosine = self.best(x, &cos, keep, k, true);
                    let by_l2 = self.best(x, &l2sq, keep, k, false);
                    Nearest { by_cosine, by_l2 }
                })
                .collect();
            out.extend(res);
        }
        Ok(out)
    }

    /// The `keep` best ids by the approximate `score` (descending when `high`), re-scored
    /// exactly against `x`, best `k`.
    fn best(&self, x: &[f32], score: &[f32], keep: usize, k: usize, high: bool) -> Vec<Hit> {
        let mut idx: Vec<u32> = (0..self.vocab as u32).collect();
        let key = |i: &u32| {
            let s = score[*i as usize];
            if s.is_nan() {
                f32::INFINITY
            } else if high {
                -s
            } else {
                s
            }
        };
        if keep < idx.len() {
            idx.select_nth_unstable_by(keep - 1, |a, b| key(a).total_cmp(&key(b)).then(a.cmp(b)));
            idx.truncate(keep);
        }
        let mut hits: Vec<Hit> = idx
            .into_iter()
            .map(|id| {
                let (cosine, l2) = exact(x, self.row(id));
                Hit { id, cosine, l2 }
            })
            .collect();
        if high {
            hits.sort_by(|a, b| b.cosine.total_cmp(&a.cosine).then(a.id.cmp(&b.id)));
        } else {
            hits.sort_by(|a, b| a.l2.total_cmp(&b.l2).then(a.id.cmp(&b.id)));
        }
        hits.truncate(k);
        hits
    }

    /// Percentage (0..=100) of token norms below `norm`; equal norms count half.
    pub fn norm_percentile(&self, norm: f32) -> f32 {
        let s = &self.sorted_norms;
        let below = s.partition_point(|&n| n < norm);
        let upto = s.partition_point(|&n| n <= norm);
        (100.0 * (below + upto) as f64 / 2.0 / s.len() as f64) as f32
    }

    /// Min, 5th percentile, median, mean, 95th percentile and max of the token norms.
    pub fn norm_stats(&self) -> NormStats {
        let s = &self.sorted_norms;
        let q = |p: f64| {
            let pos = p * (s.len() - 1) as f64;
            let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
            let t = (pos - lo as f64) as f32;
            s[lo] + (s[hi] - s[lo]) * t
        };
        NormStats {
            count: s.len(),
            min: s[0],
            p05: q(0.05),
            median: q(0.5),
            mean: (s.iter().map(|&x| x as f64).sum::<f64>() / s.len() as f64) as f32,
            p95: q(0.95),
            max: s[s.len() - 1],
        }
    }
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
    let t = trainer::init_prompt(model, &cfg)?;
    if t.shape != prompt.embeddings.shape {
        return Err(Error::Mismatch(format!(
            "the recomputed init is {:?}, the prompt {:?}",
            t.shape, prompt.embeddings.shape
        )));
    }
    Ok(Some((cfg, t)))
}

/// `[n][n]` cosine similarity between the rows of `m[n, d]`.
pub fn similarity_matrix(m: &[f32], d: usize) -> Vec<Vec<f32>> {
    let n = m.len() / d.max(1);
    let mut g = vec![0.0f32; n * n];
    kernels::linear(m, m, n, n, d, &mut g, false);
    let norms = row_norms(m, d);
    (0..n)
        .map(|i| {
            (0..n)
                .map(|j| {
                    if i == j && norms[i] > 0.0 {
                        1.0
                    } else if norms[i] > 0.0 && norms[j] > 0.0 {
                        (g[i * n + j] / (norms[i] * norms[j])).clamp(-1.0, 1.0)
                    } else {
                        0.0
                    }
                })
                .collect()
        })
        .collect()
}

/// Inspect `prompt` against `model`'s input embeddings with the `k` nearest tokens per
/// virtual token. Drift is computed when the prompt records its init and was trained for
/// this model; what cannot be done is explained in `notes`. No evaluation (see
/// [`evaluate_projection`]).
pub fn inspect(model: &FrozenModel, prompt: &SoftPrompt, k: usize) -> Result<InspectReport> {
    if k == 0 {
        return Err(Error::Input("--k must be at least 1".into()));
    }
    // Compare in input space: Gemma scales token rows by sqrt(hidden) at the input (prompt
    // rows enter as stored), so its table is scaled the same way here.
    let scale = model.llama.embed_scale();
    let mut table = model.llama.embed.to_f32(); // [V, D]
    if scale != 1.0 {
        table.to_mut().data.iter_mut().for_each(|x| *x *= scale);
    }
    let index = TokenIndex::new(&table)?;
    let (p, d) = dims(&prompt.embeddings, "the soft prompt")?;
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
    let emb = &prompt.embeddings.data;
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
                let init_norms = row_norms(&init.data, d);
                let init_nearest = index.nearest(&init.data, 1)?;
                for (i, slot) in drifts.iter_mut().enumerate() {
                    let (cos, l2) = exact(prompt.row(i), init.row(i));
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
    let (records, _, name) = data::load_split(file, data_root, false)?;
    let (mut items, _) = data::prepare(spec, &records, Path::new(&name), false)?;
    if let Some(n) = limit {
        match &mut items {
            Items::Class(v) => v.truncate(n),
            Items::Gen(v) => v.truncate(n),
        }
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
        Some(&prompt.embeddings.data),
        &data.tokenized,
        batch_size,
        length_norm,
    )?;
    let hard = eval::evaluate(
        model,
        Some(&hard_emb.data),
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

/// A token as a short ASCII label for the pictures (the bitmap font draws ASCII only):
/// its trimmed piece in quotes, or `#id` when that is not printable ASCII.
fn picture_piece(n: &Neighbor) -> String {
    let t = n.piece.trim();
    if !t.is_empty() && t.chars().all(|c| c.is_ascii_graphic() || c == ' ') {
        format!("{t:?}")
    } else {
        format!("#{}", n.id)
    }
}

/// Write `prompt_similarity.png` (P×P cosine between the prompt vectors) and
/// `nearest_tokens.png` (P×k cosine of each vector's nearest tokens) into `dir`.
pub fn write_pictures(report: &InspectReport, dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let p = report.num_virtual_tokens;
    let labels: Vec<String> = report.vectors.iter().map(|v| v.label.clone()).collect();
    let sim: Vec<f32> = report.prompt_similarity.iter().flatten().copied().collect();
    let sim_png = dir.join(SIMILARITY_PNG);
    plot::heatmap(
        &sim_png,
        &format!("cosine similarity between the {p} prompt vectors"),
        &labels,
        &labels,
        &sim,
        -1.0,
        1.0,
    )?;

    let k = report
        .vectors
        .iter()
        .map(|v| v.nearest_cosine.len())
        .max()
        .unwrap_or(0);
    let mut vals = vec![f32::NAN; p * k];
    for (i, v) in report.vectors.iter().enumerate() {
        for (j, n) in v.nearest_cosine.iter().enumerate() {
            vals[i * k + j] = n.cosine;
        }
    }
    let rows: Vec<String> = report
        .vectors
        .iter()
        .map(|v| match v.nearest_cosine.first() {
            Some(n) => format!("{} {}", v.label, picture_piece(n)),
            None => v.label.clone(),
        })
        .collect();
    let cols: Vec<String> = (1..=k).map(|j| format!("#{j}")).collect();
    let lo = vals
        .iter()
        .copied()
        .filter(|x| x.is_finite())
        .fold(0.0f32, f32::min);
    let vmin = if lo < 0.0 { -1.0 } else { 0.0 };
    let near_png = dir.join(NEAREST_PNG);
    plot::heatmap(
        &near_png,
        &format!("cosine to the {k} nearest tokens"),
        &rows,
        &cols,
        &vals,
        vmin,
        1.0,
    )?;
    Ok(vec![sim_png, near_png])
}

/// Markdown inline code for table cells.
fn md_code(text: &str) -> String {
    let s = format!("{text:?}").replace('|', "\\|");
    if s.contains('`') {
        format!("`` {s} ``")
    } else {
        format!("`{s}`")
    }
}

/// A token's piece as Markdown, with its vocabulary entry when the piece is a byte fragment.
fn md_piece(n: &Neighbor) -> String {
    match &n.token {
        Some(t) if n.piece.contains('\u{FFFD}') => {
            format!("{} ({})", md_code(&n.piece), md_code(t))
        }
        _ => md_code(&n.piece),
    }
}

fn pct(x: f64) -> String {
    format!("{:.1}%", 100.0 * x)
}

/// The report as Markdown (`inspect.md`); the pictures are linked by their file names.
pub fn to_markdown(r: &InspectReport) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(s, "# Soft prompt inspection\n");
    if let Some(p) = &r.prompt {
        let _ = writeln!(s, "- Prompt: `{p}`");
    }
    let _ = writeln!(s, "- Model: `{}`", r.model);
    let _ = writeln!(
        s,
        "- {} virtual tokens × {} dimensions, against a vocabulary of {} token embeddings; k = {}",
        r.num_virtual_tokens, r.hidden_size, r.vocab_size, r.k
    );
    let n = &r.embedding_norms;
    let _ = writeln!(
        s,
        "- Token-embedding norms: min {:.3}, 5% {:.3}, median {:.3}, mean {:.3}, 95% {:.3}, max {:.3}",
        n.min, n.p05, n.median, n.mean, n.p95, n.max
    );
    let mean_norm = r.vectors.iter().map(|v| v.norm).sum::<f32>() / r.vectors.len().max(1) as f32;
    let _ = writeln!(s, "- Prompt-vector norms: mean {mean_norm:.3}");
    match &r.init {
        Some(i) => {
            let _ = writeln!(
                s,
                "- Init `{}` (seed {}): mean drift L2 {:.3}, mean cosine to init {:.3}; \
                 {} of {} vectors still have their init's nearest token",
                i.init,
                i.seed,
                i.mean_drift_l2,
                i.mean_drift_cosine,
                i.same_nearest_token,
                r.num_virtual_tokens
            );
        }
        None => {
            let _ = writeln!(s, "- Init: not recorded (no drift)");
        }
    }
    for note in &r.notes {
        let _ = writeln!(s, "- Note: {note}");
    }

    let h = &r.hard_prompt;
    let _ = writeln!(s, "\n## Hard projection\n");
    let _ = writeln!(
        s,
        "Each vector replaced by its nearest token by cosine (mean cosine {:.3}).\n",
        h.mean_cosine
    );
    let _ = writeln!(s, "Token ids: `{:?}`\n", h.ids);
    // A fence longer than any run of backticks in the text.
    let run = h.text.split(|c| c != '`').map(str::len).max().unwrap_or(0);
    let fence = "`".repeat(run.max(2) + 1);
    let _ = writeln!(s, "Text:\n\n{fence}text\n{}\n{fence}", h.text);

    let _ = writeln!(s, "\n## Evaluation\n");
    match &r.evaluation {
        Some(e) => {
            let _ = writeln!(
                s,
                "Task `{}`, data `{}`, {} examples.\n",
                e.task, e.data, e.n
            );
            let _ = writeln!(s, "| prompt | {} | loss |", e.metric);
            let _ = writeln!(s, "|---|---:|---:|");
            let _ = writeln!(s, "| soft | {} | {:.4} |", pct(e.soft.value), e.soft.loss);
            let _ = writeln!(
                s,
                "| hard projection | {} | {:.4} |",
                pct(e.hard.value),
                e.hard.loss
            );
            if let Some(b) = e.majority_baseline {
                let _ = writeln!(s, "| majority class | {} | |", pct(b));
            }
            if let Some(x) = e.retained {
                let _ = writeln!(
                    s,
                    "\nThe hard projection keeps {} of the soft prompt's {}.",
                    pct(x),
                    e.metric
                );
            }
        }
        None => {
            let _ = writeln!(
                s,
                "Not evaluated (no labelled data: give `--data FILE` or `--task NAME`)."
            );
        }
    }

    let _ = writeln!(s, "\n## Pictures\n");
    let _ = writeln!(
        s,
        "![cosine similarity between the prompt vectors]({SIMILARITY_PNG})\n"
    );
    let _ = writeln!(s, "![cosine to the nearest tokens]({NEAREST_PNG})");

    let _ = writeln!(s, "\n## Virtual tokens");
    for v in &r.vectors {
        let _ = writeln!(s, "\n### {}\n", v.label);
        let _ = write!(
            s,
            "Norm {:.3} (percentile {:.1} of token norms)",
            v.norm, v.norm_percentile
        );
        if let Some(d) = &v.drift {
            let _ = write!(
                s,
                "; drift from init: L2 {:.3}, cosine {:.3}",
                d.l2, d.cosine
            );
            if let Some(rel) = d.relative {
                let _ = write!(s, " (relative {:.3})", rel);
            }
            let _ = write!(s, "; the init's nearest token was id {}", d.init_nearest_id);
        }
        let _ = writeln!(s, ".\n");
        let _ = writeln!(
            s,
            "| # | nearest by cosine | id | cosine | nearest by L2 | id | L2 |"
        );
        let _ = writeln!(s, "|---:|---|---:|---:|---|---:|---:|");
        for j in 0..v.nearest_cosine.len().max(v.nearest_l2.len()) {
            let c = v.nearest_cosine.get(j);
            let l = v.nearest_l2.get(j);
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} |",
                j + 1,
                c.map_or(String::new(), md_piece),
                c.map_or(String::new(), |c| c.id.to_string()),
                c.map_or(String::new(), |c| format!("{:.3}", c.cosine)),
                l.map_or(String::new(), md_piece),
                l.map_or(String::new(), |l| l.id.to_string()),
                l.map_or(String::new(), |l| format!("{:.3}", l.l2)),
            );
        }
    }
    s
}

/// Write [`to_markdown`] to `dir/inspect.md` (atomically).
pub fn write_markdown(report: &InspectReport, dir: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let path = dir.join(MARKDOWN_FILE);
    crate::fsio::atomic_write(&path, to_markdown(report).as_bytes())?;
    Ok(path)
}
