//! Initial values of a soft prompt (Lester et al. 2021, section 3): uniform random,
//! rows of the vocabulary, or the input embeddings of a text's tokens.

use rand::{Rng, SeedableRng};

use crate::compute::weight::Weight;
use crate::model::FrozenModel;
use crate::{Error, Result, Tensor};

/// `[p, d]` values uniform in `[-range, range)`, reproducible from `seed`
/// (Lester et al.'s random init uses range 0.5).
pub fn random_uniform(p: usize, d: usize, range: f32, seed: u64) -> Tensor {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let data = (0..p * d)
        .map(|_| rng.gen_range(-1.0f32..1.0) * range)
        .collect();
    Tensor {
        shape: vec![p, d],
        data,
    }
}

/// A `[ids.len(), D]` prompt whose rows are copies of the embedding-table rows `ids`
/// (init from class labels, a text, or sampled vocabulary). `embed` is `[vocab, D]`.
pub fn from_vocab_rows(embed: &Weight, ids: &[u32]) -> Result<Tensor> {
    let (vocab, d) = (embed.rows(), embed.cols());
    if ids.is_empty() {
        return Err(Error::Input(
            "no token ids to initialise the soft prompt from".into(),
        ));
    }
    let mut data = Vec::with_capacity(ids.len() * d);
    for &id in ids {
        let i = id as usize;
        if i >= vocab {
            return Err(Error::Input(format!(
                "token id {id} is outside the vocabulary (size {vocab})"
            )));
        }
        data.extend_from_slice(&embed.row(i));
    }
    Ok(Tensor {
        shape: vec![ids.len(), d],
        data,
    })
}

/// `p` ids for a text init, as PEFT's TEXT init does: the text's ids truncated to `p`, or
/// repeated until there are `p`. Empty input gives an empty list.
pub fn repeat_ids(ids: &[u32], p: usize) -> Vec<u32> {
    if ids.is_empty() {
        return Vec::new();
    }
    ids.iter().copied().cycle().take(p).collect()
}

/// `p` distinct ids drawn uniformly from `0..min(limit, vocab)` (Lester et al. sample from
/// the 5,000 most common tokens; with BPE vocabularies low ids are the frequent merges).
/// Draws with replacement only when `p` exceeds the range.
pub fn sample_vocab_ids(vocab: usize, limit: usize, p: usize, seed: u64) -> Vec<u32> {
    let n = vocab.min(limit);
    if n == 0 {
        return Vec::new();
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    if p <= n {
        rand::seq::index::sample(&mut rng, n, p)
            .into_iter()
            .map(|i| i as u32)
            .collect()
    } else {
        (0..p).map(|_| rng.gen_range(0..n) as u32).collect()
    }
}

/// A soft prompt `[ids.len(), D]` equal to the input embeddings of `ids` as `model` sees
/// them (embedding rows times the model's input scale: sqrt(hidden) for Gemma, 1 else).
pub fn from_tokens(model: &FrozenModel, ids: &[u32]) -> Result<Tensor> {
    let mut t = from_vocab_rows(&model.llama.embed, ids)?;
    let s = model.llama.embed_scale();
    if s != 1.0 {
        t.data.iter_mut().for_each(|x| *x *= s);
    }
    Ok(t)
}
