//! Losses over packed batches and the gradient with respect to a shared soft prompt.

use super::cache::{KvCache, Tape};
use super::Llama;
use crate::model::input::{Example, PromptKind, PromptRef, SeqInput, Target};
use crate::{Error, Result};

impl Llama {
    /// Loss and gradient w.r.t. the input embeddings of a packed batch.
    /// Returns `(loss, dx[N, D], lens)`.
    pub fn loss_and_input_grad(
        &self,
        seqs: &[SeqInput],
        targets: &[Target],
    ) -> Result<(f64, Vec<f32>, Vec<usize>)> {
        let (loss, tape, caches, dh) = self.loss_and_tape(seqs, targets)?;
        Ok((loss, self.backward(&tape, &caches, &dh), tape.lens.clone()))
    }

    /// The recording forward and the loss head of a packed batch: `(loss, tape, caches,
    /// d loss / d hidden)`, what a backward needs.
    fn loss_and_tape(
        &self,
        seqs: &[SeqInput],
        targets: &[Target],
    ) -> Result<(f64, Tape, Vec<KvCache>, Vec<f32>)> {
        let (mut x, lens) = self.embed_batch(seqs)?;
        let n = x.len() / self.dims.d;
        check_targets(targets, n, self.dims.vocab)?;
        let mut caches: Vec<KvCache> = self.caches_for(seqs)?;
        let tape = self
            .forward(&mut x, &lens, &mut caches, true)?
            .ok_or_else(|| Error::Input("no tape".into()))?;
        let (nll, dh) = self.loss_head(&tape.hidden, targets, true);
        Ok((weighted(&nll, targets), tape, caches, dh))
    }

    /// The backward of a packed batch whose sequences all start with `prompt`, to d loss /
    /// d prompt in the prompt's shape, summed over the sequences: for an input prompt `[P, D]`,
    /// the input gradient at its rows; for a prefix `[P, L*2*kvd]`, the gradient w.r.t. its
    /// keys and values at every layer.
    pub fn prompt_backward(
        &self,
        prompt: PromptRef,
        tape: &Tape,
        caches: &[KvCache],
        d_hidden: &[f32],
    ) -> Vec<f32> {
        match prompt.kind() {
            PromptKind::Input => {
                let dx = self.backward(tape, caches, d_hidden);
                prompt_grad(&dx, &tape.lens, prompt.len(), self.dims.d)
            }
            PromptKind::Prefix => {
                let mut grad = vec![0.0f32; prompt.data().len()]; // [P, L*2*kvd]
                self.backward_prefix(tape, caches, d_hidden, &mut grad);
                grad
            }
        }
    }

    /// Packed targets for examples that share one soft prompt adding `p` rows to each.
    pub(super) fn prompt_targets(batch: &[Example], p: usize) -> Result<Vec<Target>> {
        let mut targets = Vec::new();
        let mut r0 = 0;
        for ex in batch {
            for &(t, weight) in &ex.targets {
                if t >= ex.ids.len() || p + t == 0 {
                    return Err(Error::Input(format!(
                        "target index {t} invalid for {} tokens and {p} virtual tokens",
                        ex.ids.len()
                    )));
                }
                targets.push(Target {
                    row: r0 + p + t - 1,
                    token: ex.ids[t],
                    weight,
                });
            }
            r0 += p + ex.ids.len();
        }
        Ok(targets)
    }

    /// Loss and d loss / d prompt for a batch sharing the soft prompt `prompt`, a gradient
    /// of the prompt's shape: for an input prompt `[P, D]`, the input-embedding gradient at
    /// positions 0..P-1; for a prefix `[P, L*2*kvd]`, the gradient w.r.t. its keys and
    /// values at every layer; summed over the batch.
    pub fn prompt_loss_and_grad(
        &self,
        prompt: PromptRef,
        batch: &[Example],
    ) -> Result<(f64, Vec<f32>)> {
        let targets = Self::prompt_targets(batch, prompt.rows())?;
        let seqs: Vec<SeqInput> = batch
            .iter()
            .map(|e| SeqInput {
                prompt: Some(prompt),
                ids: &e.ids,
            })
            .collect();
        let (loss, tape, caches, dh) = self.loss_and_tape(&seqs, &targets)?;
        Ok((loss, self.prompt_backward(prompt, &tape, &caches, &dh)))
    }

    /// Loss of a batch sharing the soft prompt (no backward).
    pub fn prompt_loss(&self, prompt: PromptRef, batch: &[Example]) -> Result<f64> {
        let targets = Self::prompt_targets(batch, prompt.rows())?;
        let seqs: Vec<SeqInput> = batch
            .iter()
            .map(|e| SeqInput {
                prompt: Some(prompt),
                ids: &e.ids,
            })
            .collect();
        self.loss(&seqs, &targets)
    }

    /// Loss only (no tape, no backward).
    pub fn loss(&self, seqs: &[SeqInput], targets: &[Target]) -> Result<f64> {
        let (mut x, lens) = self.embed_batch(seqs)?;
        check_targets(targets, x.len() / self.dims.d, self.dims.vocab)?;
        let mut caches: Vec<KvCache> = self.caches_for(seqs)?;
        self.forward(&mut x, &lens, &mut caches, false)?;
        Ok(weighted(&self.loss_head(&x, targets, false).0, targets))
    }
}

/// d loss / d prompt `[P, D]` from the input gradient `dx[N, D]` of a packed batch whose
/// sequences (`lens` rows each) all start with the same `p`-row prompt: the sum over sequences.
pub fn prompt_grad(dx: &[f32], lens: &[usize], p: usize, d: usize) -> Vec<f32> {
    let mut grad = vec![0.0f32; p * d]; // [P, D]
    let mut r0 = 0;
    for len in lens {
        for (g, x) in grad.iter_mut().zip(&dx[r0 * d..(r0 + p) * d]) {
            *g += x;
        }
        r0 += len;
    }
    grad
}

pub(super) fn weighted(nll: &[f64], targets: &[Target]) -> f64 {
    nll.iter()
        .zip(targets)
        .map(|(l, t)| l * t.weight as f64)
        .sum()
}

pub(super) fn check_targets(targets: &[Target], n: usize, vocab: usize) -> Result<()> {
    for t in targets {
        if t.row >= n || t.token as usize >= vocab {
            return Err(Error::Input(format!(
                "loss target row {} / token {} out of range ({n} rows, vocab {vocab})",
                t.row, t.token
            )));
        }
    }
    Ok(())
}
