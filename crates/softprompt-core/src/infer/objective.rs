//! Task objectives over packed batches, shared by training, evaluation and serving:
//! rank classification over candidate texts, and language modelling on target tokens.
//! Each returns the loss, per-example results and (optionally) d loss / d prompt.

use crate::model::input::{prompt_len, PromptRef, SeqInput, Target};
use crate::model::llama::grads::Grads;
use crate::model::llama::{KvCache, Llama};
use crate::{Error, Result};

/// A tokenized classification example: the rendered text, one candidate continuation per
/// class (e.g. " positive"), and the gold class when known.
#[derive(Clone, Debug)]
pub struct ClassExample {
    pub ids: Vec<u32>,
    pub cands: Vec<Vec<u32>>,
    pub label: Option<usize>,
}

/// A tokenized generation example: input ids and target ids (loss on the target only).
#[derive(Clone, Debug)]
pub struct GenExample {
    pub ids: Vec<u32>,
    pub target: Vec<u32>,
}

pub struct BatchResult {
    /// Mean loss over the labelled examples of the batch (0 when none is labelled).
    pub loss: f64,
    /// Per example: the class scores (classification: log p(candidate), summed or averaged
    /// over its tokens) or the target's summed log-likelihood (generation, one value).
    pub scores: Vec<Vec<f64>>,
    /// d loss / d prompt `[P, D]`, when asked for.
    pub grad: Option<Vec<f32>>,
    /// Rows (virtual + real tokens) that went through the model (a soft prompt shared by an
    /// evaluation batch goes through once).
    pub rows: usize,
    /// The loss's denominator (labelled examples, or target tokens): a batch computed in
    /// parts recombines as sum(weight * loss) / sum(weight), its gradient alike.
    pub weight: f64,
}

/// What a batch pass returns: per-target NLLs, d loss / d prompt `[P, D]` when asked for, and
/// the rows that went through the model.
type RunOut = (Vec<f64>, Option<Vec<f32>>, usize);

/// Sets each target's weight from the per-target NLLs.
type WeightsOf<'a> = Box<dyn FnOnce(&[f64], &mut [Target]) + 'a>;

/// Which gradient a batch computes.
enum Want<'g> {
    /// None (evaluation).
    Nothing,
    /// d loss / d prompt (prompt tuning).
    Prompt,
    /// Every weight's gradient, accumulated into the buffers (full fine-tuning).
    Weights(&'g mut Grads),
}

/// Run the packed forward, the loss head at `targets`, and the backward when `want_grad`.
/// With `weights_of`, the targets' weights are set from their NLLs (a first, gradient-free
/// pass); without, the weights given are used in a single pass.
fn run(
    model: &Llama,
    prompt: Option<PromptRef>,
    seqs: &[Vec<u32>],
    targets: &mut [Target],
    want: Want,
    weights_of: Option<WeightsOf>,
) -> Result<RunOut> {
    let d = model.dims.d;
    let p = prompt_len(prompt);
    if matches!(want, Want::Prompt) && prompt.is_none_or(|pr| pr.is_empty()) {
        return Err(Error::Input("a prompt gradient needs a soft prompt".into()));
    }
    let want_grad = !matches!(want, Want::Nothing);
    if let Some(prompt) = prompt.filter(|_| !want_grad && p > 0) {
        if let Some(out) = run_prefixed(model, prompt, seqs, targets)? {
            return Ok(out);
        }
    }
    let inputs: Vec<SeqInput> = seqs.iter().map(|ids| SeqInput { prompt, ids }).collect();
    let (mut x, lens) = model.embed_batch(&inputs)?;
    let n = x.len() / d;
    let mut caches: Vec<KvCache> = model.caches_for(&inputs)?;
    let tape = match want {
        Want::Weights(_) => Some(model.forward_full(&mut x, &lens, &mut caches)?),
        _ => model.forward(&mut x, &lens, &mut caches, want_grad)?,
    };
    let hidden = tape.as_ref().map_or(&x, |t| &t.hidden);
    let mut want = want;
    // The loss head with its gradient (and the output projection's, for full fine-tuning).
    let mut head = |targets: &[Target]| match &mut want {
        Want::Weights(g) => model.loss_head_grads(hidden, targets, g.head_mut()),
        _ => model.loss_head(hidden, targets, true),
    };
    let (nll, dh) = match weights_of {
        // Weights that depend on the NLLs need a first pass without gradient.
        Some(weights_of) if want_grad => {
            let (nll, _) = model.loss_head(hidden, targets, false);
            weights_of(&nll, targets);
            (nll, head(targets).1)
        }
        _ if want_grad => head(targets),
        _ => model.loss_head(hidden, targets, false),
    };
    if !want_grad {
        return Ok((nll, None, n));
    }
    let tape = tape.ok_or_else(|| Error::Input("no tape recorded".into()))?;
    match want {
        Want::Weights(g) => {
            let dx = model.backward_grads(&tape, &caches, &dh, g)?;
            g.scatter_embed(model, &dx, &inputs);
            Ok((nll, None, n))
        }
        _ => {
            let prompt = prompt.ok_or_else(|| Error::Input("no prompt to differentiate".into()))?;
            Ok((
                nll,
                Some(model.prompt_backward(prompt, &tape, &caches, &dh)),
                n,
            ))
        }
    }
}

/// [`run`] without gradients for a batch that shares one soft prompt `[P, D]`: the prompt's
/// keys and values do not depend on the text after it, so they are computed once and every
/// sequence starts from a copy (P fewer rows per sequence through the model). `targets`
/// count the prompt rows in each sequence, as in [`run`]. `None` (nothing computed) when a
/// target is read at a prompt row (a sequence without text) or a sequence is empty.
fn run_prefixed(
    model: &Llama,
    prompt: PromptRef,
    seqs: &[Vec<u32>],
    targets: &[Target],
) -> Result<Option<RunOut>> {
    let (d, p) = (model.dims.d, prompt.len());
    if prompt.dim() != d || seqs.is_empty() || seqs.iter().any(|s| s.is_empty()) {
        return Ok(None); // the full path reports what is wrong, or has nothing to do
    }
    // First row of every sequence in the batch with prompts: [B].
    let starts: Vec<usize> = seqs
        .iter()
        .scan(0, |r0, ids| {
            let s = *r0;
            *r0 += p + ids.len();
            Some(s)
        })
        .collect();
    let mut shifted = targets.to_vec();
    for t in &mut shifted {
        let s = starts.partition_point(|&r0| r0 <= t.row).saturating_sub(1);
        if t.row < starts[s] + p {
            return Ok(None);
        }
        t.row -= p * (s + 1);
    }
    let mut prefix = vec![KvCache::new(model.n_layers())];
    let mut xp = prompt.data().to_vec(); // [P, D]
    model.forward(&mut xp, &[p], &mut prefix, false)?;
    let inputs: Vec<SeqInput> = seqs
        .iter()
        .map(|ids| SeqInput { prompt: None, ids })
        .collect();
    let (mut x, lens) = model.embed_batch(&inputs)?; // [N - P * B, D]
    let mut caches = vec![prefix[0].clone(); lens.len()];
    model.forward(&mut x, &lens, &mut caches, false)?;
    let (nll, _) = model.loss_head(&x, &shifted, false);
    Ok(Some((nll, None, p + x.len() / d)))
}

/// Rank classification: score every candidate by its log-likelihood after the text, and
/// (for labelled examples) the cross-entropy of the gold class over the candidates' scores.
/// Candidates of one token share one sequence (one forward per example); longer candidates
/// get a sequence each. `length_norm` averages a candidate's log-probs over its tokens.
pub fn classify_batch(
    model: &Llama,
    prompt: Option<PromptRef>,
    batch: &[ClassExample],
    length_norm: bool,
    want_grad: bool,
) -> Result<BatchResult> {
    let want = if want_grad {
        Want::Prompt
    } else {
        Want::Nothing
    };
    classify_impl(model, prompt, batch, length_norm, want)
}

/// [`classify_batch`] without a prompt, accumulating every weight's gradient into `grads`
/// (full fine-tuning).
pub fn classify_batch_weights(
    model: &Llama,
    batch: &[ClassExample],
    length_norm: bool,
    grads: &mut Grads,
) -> Result<BatchResult> {
    classify_impl(model, None, batch, length_norm, Want::Weights(grads))
}

fn classify_impl(
    model: &Llama,
    prompt: Option<PromptRef>,
    batch: &[ClassExample],
    length_norm: bool,
    want: Want,
) -> Result<BatchResult> {
    let p = prompt_len(prompt);
    let mut seqs: Vec<Vec<u32>> = Vec::new();
    let mut targets = Vec::new();
    // owner[t] = (example, candidate) of each target.
    let mut owner = Vec::new();
    let mut r0 = 0;
    for (e, ex) in batch.iter().enumerate() {
        if ex.cands.is_empty() || ex.cands.iter().any(|c| c.is_empty()) {
            return Err(Error::Input(format!(
                "example {e}: every class needs a non-empty candidate"
            )));
        }
        if p + ex.ids.len() == 0 {
            return Err(Error::Input(format!(
                "example {e}: empty text and no prompt"
            )));
        }
        if ex.cands.iter().all(|c| c.len() == 1) {
            let row = r0 + p + ex.ids.len() - 1;
            for (c, cand) in ex.cands.iter().enumerate() {
                targets.push(Target {
                    row,
                    token: cand[0],
                    weight: 0.0,
                });
                owner.push((e, c));
            }
            r0 += p + ex.ids.len();
            seqs.push(ex.ids.clone());
        } else {
            for (c, cand) in ex.cands.iter().enumerate() {
                let mut ids = ex.ids.clone();
                ids.extend_from_slice(&cand[..cand.len() - 1]);
                for (t, &tok) in cand.iter().enumerate() {
                    targets.push(Target {
                        row: r0 + p + ex.ids.len() - 1 + t,
                        token: tok,
                        weight: 0.0,
                    });
                    owner.push((e, c));
                }
                r0 += p + ids.len();
                seqs.push(ids);
            }
        }
    }
    let norm = |e: usize, c: usize| {
        if length_norm {
            batch[e].cands[c].len() as f64
        } else {
            1.0
        }
    };
    let scores_of = |nll: &[f64]| {
        let mut s: Vec<Vec<f64>> = batch.iter().map(|ex| vec![0.0; ex.cands.len()]).collect();
        for (l, &(e, c)) in nll.iter().zip(&owner) {
            s[e][c] -= l / norm(e, c);
        }
        s
    };
    let n_labelled = batch.iter().filter(|e| e.label.is_some()).count();
    let weights_of: WeightsOf = Box::new(|nll: &[f64], targets: &mut [Target]| {
        // d loss / d nll_t = (y_c - p_c) / (B * norm): see the derivation in the README.
        let s = scores_of(nll);
        let probs: Vec<Vec<f64>> = s.iter().map(|row| softmax(row)).collect();
        for (t, &(e, c)) in targets.iter_mut().zip(&owner) {
            t.weight = match batch[e].label {
                Some(y) => {
                    let yc = if y == c { 1.0 } else { 0.0 };
                    ((yc - probs[e][c]) / (n_labelled as f64 * norm(e, c))) as f32
                }
                None => 0.0,
            };
        }
    });
    let (nll, grad, rows) = run(model, prompt, &seqs, &mut targets, want, Some(weights_of))?;
    let scores = scores_of(&nll);
    let mut loss = 0.0;
    for (ex, s) in batch.iter().zip(&scores) {
        if let Some(y) = ex.label {
            if y >= s.len() {
                return Err(Error::Input(format!(
                    "label {y} out of range for {} classes",
                    s.len()
                )));
            }
            loss += logsumexp(s) - s[y];
        }
    }
    if n_labelled > 0 {
        loss /= n_labelled as f64;
    }
    Ok(BatchResult {
        loss,
        scores,
        grad,
        rows,
        weight: n_labelled as f64,
    })
}

/// A prompt ensemble (Lester et al. 2021, §7): every prompt of `prompts` (`None`: the bare
/// model) ranks the batch's candidates, and an example's class scores are the logs of the class
/// probabilities averaged over the prompts, `log (1/K) sum_k softmax(s_k)`; `loss` is their
/// mean NLL of the label. Each prompt's pass computes its prefix once for the whole batch
/// (K prefixes + K x B inputs go through the shared frozen model, against K x B x (P + T) rows
/// for one batch mixing the prompts per row). One prompt gives [`classify_batch`]'s result.
pub fn classify_ensemble(
    model: &Llama,
    prompts: &[Option<PromptRef>],
    batch: &[ClassExample],
    length_norm: bool,
) -> Result<BatchResult> {
    match prompts {
        [] => Err(Error::Input("an ensemble needs at least one prompt".into())),
        [p] => classify_batch(model, *p, batch, length_norm, false),
        _ => {
            let mut per_prompt = Vec::with_capacity(prompts.len()); // [K][B][classes]
            let mut rows = 0;
            for &p in prompts {
                let r = classify_batch(model, p, batch, length_norm, false)?;
                rows += r.rows;
                per_prompt.push(r.scores);
            }
            let scores: Vec<Vec<f64>> = (0..batch.len())
                .map(|e| ensemble_scores(&per_prompt.iter().map(|s| &s[e][..]).collect::<Vec<_>>()))
                .collect();
            let labelled: Vec<f64> = batch
                .iter()
                .zip(&scores)
                .filter_map(|(e, s)| e.label.map(|y| -s[y]))
                .collect();
            let loss = if labelled.is_empty() {
                0.0
            } else {
                labelled.iter().sum::<f64>() / labelled.len() as f64
            };
            Ok(BatchResult {
                weight: labelled.len() as f64,
                loss,
                scores,
                grad: None,
                rows,
            })
        }
    }
}

/// One example's ensemble scores from each prompt's class scores: the logs of the class
/// probabilities averaged over the prompts, `log (1/K) sum_k softmax(s_k)`; one prompt's
/// scores are returned as they are.
pub fn ensemble_scores(per_prompt: &[&[f64]]) -> Vec<f64> {
    match per_prompt {
        [one] => one.to_vec(),
        many => {
            let k = many.len() as f64;
            let mut p = vec![0.0; many.first().map_or(0, |s| s.len())];
            for s in many {
                for (a, q) in p.iter_mut().zip(softmax(s)) {
                    *a += q / k;
                }
            }
            p.iter().map(|q| q.ln()).collect()
        }
    }
}

/// Language modelling on target tokens only: mean NLL over all target tokens of the batch.
pub fn lm_batch(
    model: &Llama,
    prompt: Option<PromptRef>,
    batch: &[GenExample],
    want_grad: bool,
) -> Result<BatchResult> {
    let want = if want_grad {
        Want::Prompt
    } else {
        Want::Nothing
    };
    lm_impl(model, prompt, batch, want)
}

/// [`lm_batch`] without a prompt, accumulating every weight's gradient into `grads`.
pub fn lm_batch_weights(
    model: &Llama,
    batch: &[GenExample],
    grads: &mut Grads,
) -> Result<BatchResult> {
    lm_impl(model, None, batch, Want::Weights(grads))
}

fn lm_impl(
    model: &Llama,
    prompt: Option<PromptRef>,
    batch: &[GenExample],
    want: Want,
) -> Result<BatchResult> {
    let p = prompt_len(prompt);
    let mut seqs = Vec::with_capacity(batch.len());
    let mut targets = Vec::new();
    let mut owner = Vec::new();
    let mut r0 = 0;
    let count: usize = batch.iter().map(|e| e.target.len()).sum();
    if count == 0 {
        return Err(Error::Input("no target tokens in the batch".into()));
    }
    for (e, ex) in batch.iter().enumerate() {
        if p + ex.ids.len() == 0 {
            return Err(Error::Input(format!(
                "example {e}: empty input and no prompt"
            )));
        }
        let mut ids = ex.ids.clone();
        ids.extend_from_slice(&ex.target);
        for (t, &tok) in ex.target.iter().enumerate() {
            targets.push(Target {
                row: r0 + p + ex.ids.len() - 1 + t,
                token: tok,
                weight: 1.0 / count as f32,
            });
            owner.push(e);
        }
        r0 += p + ids.len();
        seqs.push(ids);
    }
    let (nll, grad, rows) = run(model, prompt, &seqs, &mut targets, want, None)?;
    let mut scores = vec![vec![0.0]; batch.len()];
    for (l, &e) in nll.iter().zip(&owner) {
        scores[e][0] -= l;
    }
    let loss = nll.iter().sum::<f64>() / count as f64;
    Ok(BatchResult {
        loss,
        scores,
        grad,
        rows,
        weight: count as f64,
    })
}

pub fn logsumexp(x: &[f64]) -> f64 {
    let m = x.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    m + x.iter().map(|v| (v - m).exp()).sum::<f64>().ln()
}

pub fn softmax(x: &[f64]) -> Vec<f64> {
    let l = logsumexp(x);
    x.iter().map(|v| (v - l).exp()).collect()
}

/// Index of the largest score (first on ties).
pub fn argmax(x: &[f64]) -> usize {
    let mut best = 0;
    for (i, v) in x.iter().enumerate() {
        if *v > x[best] {
            best = i;
        }
    }
    best
}
