//! Running the model with a soft prompt: score a text, generate a continuation (KV cache,
//! the prompt injected once at prefill), the task objectives over packed batches
//! ([`objective`]: rank classification and language modelling, with the prompt gradient
//! when training asks for it) and continuous batching for the server ([`scheduler`]).

pub mod objective;
pub mod scheduler;

use rand::{Rng, SeedableRng};

use crate::compute::kernels;
use crate::model::input::{prompt_len, PromptRef, SeqInput};
use crate::model::llama::Llama;
use crate::{Error, Result};

/// `log p(ids[t] | prompt, ids[<t])` for every t that has a predictor: t = 0..n-1 with an
/// input prompt, t = 1..n-1 without one or with a prefix prompt (no row precedes the text). Log-softmax is accumulated in f64.
pub fn score(model: &Llama, prompt: Option<PromptRef>, ids: &[u32]) -> Result<Vec<f64>> {
    Ok(score_top(model, prompt, ids, 0)?
        .into_iter()
        .map(|t| t.logprob)
        .collect())
}

/// One scored token: its log-prob and the `k` most likely tokens at its position.
#[derive(Clone, Debug)]
pub struct TokenScore {
    pub logprob: f64,
    /// `(id, log-prob)`, most likely first; ties by the smaller id.
    pub top: Vec<(u32, f64)>,
}

/// [`score`] with the top-`k` alternatives of every scored position, from the same logits
/// (so the log-probs are the same bits as `score`'s).
pub fn score_top(
    model: &Llama,
    prompt: Option<PromptRef>,
    ids: &[u32],
    k: usize,
) -> Result<Vec<TokenScore>> {
    let p = prompt_len(prompt);
    if ids.is_empty() || p + ids.len() < 2 {
        return Err(Error::Input(
            "scoring needs at least one predicted token (give a longer text or a prompt)".into(),
        ));
    }
    let (mut x, lens) = model.embed_batch(&[SeqInput { prompt, ids }])?;
    let mut caches = vec![model.cache_for(prompt)?];
    model.forward(&mut x, &lens, &mut caches, false)?;
    let first = if p == 0 { 1 } else { 0 };
    let rows: Vec<usize> = (first..ids.len()).map(|t| p + t - 1).collect();
    let v = model.dims.vocab;
    let mut out = Vec::with_capacity(rows.len());
    for chunk in rows.chunks(64) {
        let logits = model.logits(&x, chunk); // [chunk, V]
        for (lg, &r) in logits.chunks(v).zip(chunk) {
            let t = r + 1 - p;
            let lse = kernels::logsumexp(lg);
            let mut top: Vec<(u32, f64)> = Vec::new();
            if k > 0 {
                let mut order: Vec<u32> = (0..v as u32).collect();
                let by =
                    |a: &u32, b: &u32| lg[*b as usize].total_cmp(&lg[*a as usize]).then(a.cmp(b));
                let kk = k.min(v);
                order.select_nth_unstable_by(kk - 1, by);
                order.truncate(kk);
                order.sort_unstable_by(by);
                top = order
                    .into_iter()
                    .map(|j| (j, lg[j as usize] as f64 - lse))
                    .collect();
            }
            out.push(TokenScore {
                logprob: lg[ids[t] as usize] as f64 - lse,
                top,
            });
        }
    }
    Ok(out)
}

/// Raw logits `[V]` after the whole input (prompt + ids).
pub fn last_logits(model: &Llama, prompt: Option<PromptRef>, ids: &[u32]) -> Result<Vec<f32>> {
    if prompt_len(prompt) + ids.len() == 0 {
        return Err(Error::Input(
            "no input row to predict from: give a text (a prefix prompt adds no rows)".into(),
        ));
    }
    let (mut x, lens) = model.embed_batch(&[SeqInput { prompt, ids }])?;
    let mut caches = vec![model.cache_for(prompt)?];
    model.forward(&mut x, &lens, &mut caches, false)?;
    Ok(model.logits(&x, &[lens[0] - 1]))
}

#[derive(Clone, Debug)]
pub struct Sampling {
    pub max_new_tokens: usize,
    /// 0 = greedy (argmax).
    pub temperature: f32,
    /// 0 = no top-k filter.
    pub top_k: usize,
    /// 1.0 = no nucleus filter.
    pub top_p: f32,
    pub seed: u64,
    /// End-of-sequence ids stop generation, unless fewer than `min_new_tokens` were made
    /// (then they are masked, as transformers' `min_new_tokens` does).
    pub eos: Vec<u32>,
    pub min_new_tokens: usize,
    /// Recompute the whole sequence at every step instead of using the KV cache (reference mode).
    pub no_cache: bool,
}

impl Default for Sampling {
    fn default() -> Self {
        Sampling {
            max_new_tokens: 32,
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            seed: 0,
            eos: Vec::new(),
            min_new_tokens: 0,
            no_cache: false,
        }
    }
}

impl Sampling {
    pub fn validate(&self) -> Result<()> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return Err(Error::Input(format!(
                "temperature must be >= 0, got {}",
                self.temperature
            )));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(Error::Input(format!(
                "top_p must be in (0, 1], got {}",
                self.top_p
            )));
        }
        Ok(())
    }
}

/// Pick the next token from `logits[V]` (modified in place).
pub fn pick(logits: &mut [f32], s: &Sampling, n_generated: usize, rng: &mut impl Rng) -> u32 {
    if n_generated < s.min_new_tokens {
        for &e in &s.eos {
            if let Some(x) = logits.get_mut(e as usize) {
                *x = f32::NEG_INFINITY;
            }
        }
    }
    if s.temperature == 0.0 {
        return argmax(logits);
    }
    // Candidates sorted by logit, cut by top-k, then softmax at temperature, cut by top-p.
    let mut idx: Vec<u32> = (0..logits.len() as u32).collect();
    idx.sort_unstable_by(|&a, &b| logits[b as usize].total_cmp(&logits[a as usize]));
    if s.top_k > 0 {
        idx.truncate(s.top_k);
    }
    let m = logits[idx[0] as usize];
    let mut probs: Vec<f64> = idx
        .iter()
        .map(|&i| (((logits[i as usize] - m) / s.temperature) as f64).exp())
        .collect();
    let total: f64 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= total);
    if s.top_p < 1.0 {
        let mut acc = 0.0;
        let keep = probs
            .iter()
            .position(|p| {
                acc += p;
                acc >= s.top_p as f64
            })
            .map_or(probs.len(), |i| i + 1);
        probs.truncate(keep);
        idx.truncate(keep);
    }
    let total: f64 = probs.iter().sum();
    let mut r = rng.gen::<f64>() * total;
    for (p, &i) in probs.iter().zip(&idx) {
        r -= p;
        if r <= 0.0 {
            return i;
        }
    }
    idx[idx.len() - 1]
}

fn argmax(x: &[f32]) -> u32 {
    let mut best = 0;
    for (i, v) in x.iter().enumerate() {
        if *v > x[best] {
            best = i;
        }
    }
    best as u32
}

/// Generate up to `max_new_tokens` after `prompt + ids`; `on_token` sees each new id as it
/// is made and may return false to stop. Returns the new ids.
pub fn generate(
    model: &Llama,
    prompt: Option<PromptRef>,
    ids: &[u32],
    s: &Sampling,
    mut on_token: impl FnMut(u32) -> bool,
) -> Result<Vec<u32>> {
    s.validate()?;
    if prompt_len(prompt) + ids.len() == 0 {
        return Err(Error::Input(
            "nothing to generate from: empty text and no input prompt (a prefix prompt needs a text after it)".into(),
        ));
    }
    let p = prompt.map_or(0, |p| p.len()); // virtual positions
    if p + ids.len() + s.max_new_tokens > model.max_positions() {
        return Err(Error::Input(format!(
            "{} virtual + {} text + {} new tokens exceed the model's context of {}",
            p,
            ids.len(),
            s.max_new_tokens,
            model.max_positions()
        )));
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(s.seed);
    let mut out = Vec::with_capacity(s.max_new_tokens);
    let mut all: Vec<u32> = ids.to_vec();
    // Prefill: the prompt enters the cache once, here.
    let (mut x, lens) = model.embed_batch(&[SeqInput { prompt, ids }])?;
    let mut caches = vec![model.cache_for(prompt)?];
    model.forward(&mut x, &lens, &mut caches, false)?;
    let mut logits = model.logits(&x, &[lens[0] - 1]);
    while out.len() < s.max_new_tokens {
        let tok = pick(&mut logits, s, out.len(), &mut rng);
        out.push(tok);
        all.push(tok);
        if !on_token(tok)
            || (s.eos.contains(&tok) && out.len() >= s.min_new_tokens)
            || out.len() == s.max_new_tokens
        {
            break;
        }
        logits = if s.no_cache {
            last_logits(model, prompt, &all)?
        } else {
            let (mut x, lens) = model.embed_batch(&[SeqInput {
                prompt: None,
                ids: &[tok],
            }])?;
            model.forward(&mut x, &lens, &mut caches, false)?;
            model.logits(&x, &[0])
        };
    }
    Ok(out)
}
