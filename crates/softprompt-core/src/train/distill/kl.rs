//! The student's loss: KL(teacher || student) over the teacher's top-`k` buckets plus the
//! rest, its gradient to the logits (then through the model to the prompt), the objective
//! the trainer runs, and token agreement with the teacher.

use super::teacher::{TeacherDist, TeacherExample};
use super::*;

/// What one pass of the KL head returns: per position KL and whether the argmax is the
/// teacher's token, and d loss / d hidden `[N, D]` when asked for.
pub struct KlOut {
    pub kl: Vec<f64>,
    pub agree: Vec<bool>,
    pub d_hidden: Vec<f32>,
}

/// KL(teacher || student) over the k+1 buckets at `rows` of the final hidden states
/// `hidden[N, D]` (teacher `dists[i]`, teacher token `tokens[i]` at `rows[i]`), and with
/// `weight > 0` the gradient of `weight * sum_i KL_i` w.r.t. `hidden`. See the module docs
/// for the formula and its gradient.
pub fn kl_head(
    m: &Llama,
    hidden: &[f32],
    rows: &[usize],
    dists: &[&TeacherDist],
    tokens: &[u32],
    weight: Option<f32>,
) -> KlOut {
    kernels::in_pool(|| {
        const CHUNK: usize = 128;
        let (d, v) = (m.dims.d, m.dims.vocab);
        let mut out = KlOut {
            kl: Vec::with_capacity(rows.len()),
            agree: Vec::with_capacity(rows.len()),
            d_hidden: if weight.is_some() {
                vec![0.0; hidden.len()]
            } else {
                Vec::new()
            },
        };
        for (c, rs) in rows.chunks(CHUNK).enumerate() {
            let base = c * CHUNK;
            let mut logits = m.logits(hidden, rs); // [r, V]
            let parts: Vec<(f64, bool)> = logits
                .par_chunks_mut(v)
                .enumerate()
                .map(|(i, z)| {
                    let (t, tok) = (dists[base + i], tokens[base + i]);
                    let agree = argmax_f32(z) == tok as usize;
                    let lse = kernels::logsumexp(z);
                    let saved: Vec<f32> = t.ids.iter().map(|&j| z[j as usize]).collect();
                    for &j in &t.ids {
                        z[j as usize] = f32::NEG_INFINITY;
                    }
                    let lse_rest = kernels::logsumexp(z);
                    let lq_rest = lse_rest - lse;
                    let mut kl = 0.0f64;
                    for (&p, &zj) in t.probs.iter().zip(&saved) {
                        if p > 0.0 {
                            kl += p as f64 * ((p as f64).ln() - (zj as f64 - lse));
                        }
                    }
                    let pr = t.rest as f64;
                    if pr > 0.0 {
                        kl += pr * (pr.ln() - lq_rest);
                    }
                    if let Some(w) = weight {
                        // j not in K: exp(z_j - lse_rest) (q_r - p_r); K entries are -inf -> 0.
                        let qr = lq_rest.exp();
                        if lse_rest.is_finite() {
                            kernels::exp_shift(z, lse_rest as f32, (w as f64 * (qr - pr)) as f32);
                        } else {
                            z.fill(0.0);
                        }
                        // j in K: q_j - p_j.
                        for ((&j, &p), &zj) in t.ids.iter().zip(&t.probs).zip(&saved) {
                            z[j as usize] = w * (((zj as f64 - lse).exp() - p as f64) as f32);
                        }
                    }
                    (kl, agree)
                })
                .collect();
            for (kl, a) in parts {
                out.kl.push(kl);
                out.agree.push(a);
            }
            if weight.is_some() {
                let mut dhs = vec![0.0; rs.len() * d]; // [r, D] = dlogits @ W
                m.lm_head().linear_dx(&logits, rs.len(), &mut dhs, false);
                for (i, &r) in rs.iter().enumerate() {
                    for (o, g) in out.d_hidden[r * d..(r + 1) * d]
                        .iter_mut()
                        .zip(&dhs[i * d..(i + 1) * d])
                    {
                        *o += g;
                    }
                }
            }
        }
        out
    })
}

pub(super) fn argmax_f32(z: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in z.iter().enumerate() {
        if x > z[best] {
            best = i;
        }
    }
    best
}

/// Mean KL, token agreement and (with `want_grad`) d mean-KL / d prompt `[P, D]` of a batch
/// of teacher examples under `prompt` (None: the bare model).
pub fn kl_batch(
    m: &Llama,
    prompt: Option<PromptRef>,
    batch: &[&TeacherExample],
    want_grad: bool,
) -> Result<(BatchResult, f64)> {
    let d = m.dims.d;
    let p = crate::model::input::prompt_len(prompt); // rows the prompt adds (0 for a prefix)
    if want_grad && prompt.is_none_or(|pr| pr.is_empty()) {
        return Err(Error::Input("a prompt gradient needs a soft prompt".into()));
    }
    let count: usize = batch.iter().map(|e| e.dists.len()).sum();
    if count == 0 {
        return Err(Error::Input("no teacher tokens in the batch".into()));
    }
    let mut seqs = Vec::with_capacity(batch.len()); // ids ++ cont[..T-1]
    let (mut rows, mut dists, mut toks) = (Vec::new(), Vec::new(), Vec::new());
    let mut r0 = 0;
    for ex in batch {
        let t = ex.dists.len();
        if ex.ids.is_empty() || ex.cont.len() != t {
            return Err(Error::Input(
                "teacher example without input or tokens".into(),
            ));
        }
        let mut ids = ex.ids.clone();
        ids.extend_from_slice(&ex.cont[..t.saturating_sub(1)]);
        for (j, dist) in ex.dists.iter().enumerate() {
            rows.push(r0 + p + ex.ids.len() - 1 + j);
            dists.push(dist);
            toks.push(ex.cont[j]);
        }
        r0 += p + ids.len();
        seqs.push(ids);
    }
    let inputs: Vec<SeqInput> = seqs.iter().map(|ids| SeqInput { prompt, ids }).collect();
    let (mut x, lens) = m.embed_batch(&inputs)?; // [N, D]
    let n = x.len() / d;
    let mut caches: Vec<KvCache> = m.caches_for(&inputs)?;
    let tape = m.forward(&mut x, &lens, &mut caches, want_grad)?;
    let hidden = tape.as_ref().map_or(&x, |t| &t.hidden);
    let w = want_grad.then_some(1.0 / count as f32);
    let k = kl_head(m, hidden, &rows, &dists, &toks, w);
    let loss = k.kl.iter().sum::<f64>() / count as f64;
    let agree = k.agree.iter().filter(|a| **a).count() as f64 / count as f64;
    let grad = match tape {
        Some(tape) if want_grad => {
            prompt.map(|pr| m.prompt_backward(pr, &tape, &caches, &k.d_hidden))
        }
        _ => None,
    };
    Ok((
        BatchResult {
            loss,
            scores: Vec::new(),
            grad,
            rows: n,
            weight: count as f64,
        },
        agree,
    ))
}

/// The teacher data as the trainer's objective.
pub(super) struct DistillObjective<'a> {
    pub(super) cfg: &'a TrainConfig,
    pub(super) dc: &'a DistillConfig,
    pub(super) hard_tokens: usize,
    pub(super) train: Vec<TeacherExample>,
    pub(super) heldout: Vec<TeacherExample>,
}

impl Objective for DistillObjective<'_> {
    fn train_len(&self) -> usize {
        self.train.len()
    }
    fn val_len(&self) -> usize {
        self.heldout.len()
    }
    fn lengths(&self) -> Vec<usize> {
        self.train
            .iter()
            .map(|e| e.ids.len() + e.cont.len())
            .collect()
    }
    fn batch(&self, model: &FrozenModel, prompt: PromptRef, idx: &[usize]) -> Result<BatchResult> {
        let b: Vec<&TeacherExample> = idx.iter().map(|&i| &self.train[i]).collect();
        Ok(kl_batch(&model.llama, Some(prompt), &b, true)?.0)
    }
    fn evaluate(&self, model: &FrozenModel, prompt: PromptRef) -> Result<EvalReport> {
        let (kl, _) = mean_kl(model, Some(prompt), &self.heldout, self.cfg.eval_batch_size)?;
        Ok(EvalReport {
            metric: "neg_kl".into(),
            value: -kl,
            n: self.heldout.len(),
            loss: kl,
            token_f1: None,
            confusion: None,
            predictions: Vec::new(),
        })
    }
    fn training_meta(&self, cfg: &TrainConfig) -> Option<serde_json::Value> {
        let mut v = serde_json::to_value(cfg).ok()?;
        v["distill"] = json!({
            "hard_prompt_sha256": sha256_hex(&self.dc.hard_prompt),
            "hard_prompt_tokens": self.hard_tokens,
            "teacher_tokens": self.dc.teacher_tokens,
            "top_k": self.dc.top_k,
            "temperature": self.dc.temperature,
            "train_inputs": self.train.len(),
            "heldout_inputs": self.heldout.len(),
        });
        Some(v)
    }
}

/// Mean KL per position and token agreement over `data`, in batches.
pub(super) fn mean_kl(
    model: &FrozenModel,
    prompt: Option<PromptRef>,
    data: &[TeacherExample],
    bs: usize,
) -> Result<(f64, f64)> {
    let (mut kl, mut agree, mut n) = (0.0, 0.0, 0usize);
    for chunk in data.chunks(bs.max(1)) {
        let b: Vec<&TeacherExample> = chunk.iter().collect();
        let c: usize = chunk.iter().map(|e| e.dists.len()).sum();
        let (r, a) = kl_batch(&model.llama, prompt, &b, false)?;
        kl += r.loss * c as f64;
        agree += a * c as f64;
        n += c;
    }
    Ok((kl / n.max(1) as f64, agree / n.max(1) as f64))
}

/// Greedy exact match with the teacher's continuations plus the mean KL (`mean_kl`).
pub fn agreement(
    model: &FrozenModel,
    prompt: Option<PromptRef>,
    data: &[TeacherExample],
    bs: usize,
) -> Result<Agreement> {
    let (mean_kl, token_agreement) = mean_kl(model, prompt, data, bs)?;
    let eos = model.eos_ids();
    let mut em = 0usize;
    for ex in data {
        let s = Sampling {
            max_new_tokens: ex.cont.len(),
            eos: eos.clone(),
            ..Default::default()
        };
        let out = infer::generate(&model.llama, prompt, &ex.ids, &s, |_| true)?;
        em += (out == ex.cont) as usize;
    }
    Ok(Agreement {
        exact_match: em as f64 / data.len().max(1) as f64,
        token_agreement,
        mean_kl,
    })
}
