//! Weight gradients for full fine-tuning (the `compare` command's third method), llm.c style:
//! the backward of [`Llama`] read in reverse, adding `dW += dy^T @ x` beside every input
//! gradient `dx = dy @ W`, `dw += Σ_rows dy ⊙ x̂` for every RMSNorm weight, column sums for
//! biases, and a scatter-add of the input gradient into the embedding rows of the tokens.
//! With tied embeddings the output projection's gradient and the embedding scatter go into
//! the same table.
//!
//! Prompt tuning never comes here: its forward keeps no linear input and its backward takes
//! no [`Grads`] (see [`Llama::backward`]).
//!
//! Parameters are listed in one canonical order ([`Llama::param_specs`]): the embedding
//! table, the untied output projection, the final norm, then per block its attention norm,
//! q/k/v (and their biases), o, MLP norm, gate/up/down, QK-norms and sandwich norms. The
//! optimizer pairs [`Llama::params_mut`] with [`Grads::buffers_mut`] in that order.

use std::collections::HashMap;

use rayon::prelude::*;

use super::loss::{check_targets, weighted};
use super::{Block, KvCache, Llama};
use crate::compute::kernels::{gemm, View};
use crate::compute::weight::Weight;
use crate::model::input::{prompt_len, SeqInput, Target};
use crate::{Error, Result, Tensor};

/// `dw[out, in] += dy[m, out]^T @ x[m, in]` (a linear layer's weight gradient).
/// An empty `dw` is a gradient not wanted ([`Grads::only`]): nothing is computed.
pub(crate) fn dw_acc(dy: &[f32], x: &[f32], m: usize, dw: &mut [f32]) {
    if m == 0 || dw.is_empty() {
        return;
    }
    let out = dy.len() / m;
    let inp = x.len() / m;
    assert_eq!(out * inp, dw.len(), "dw_acc: dW is not [out, in]");
    gemm(
        out,
        inp,
        m,
        View::t(&dy[..m * out], out), // [out, m]
        View::rm(&x[..m * inp], inp), // [m, in]
        dw,
        inp,
        true,
        true,
    );
}

/// RMSNorm weight gradient: `dw[d] += Σ_r dy[r] ⊙ x[r] · rstd[r]` over rows of length
/// `d = dw.len()` (`y = w ⊙ x · rstd`). Rows may be (position, head) pairs (QK-norm).
pub(crate) fn rmsnorm_dw(x: &[f32], rstd: &[f32], dy: &[f32], dw: &mut [f32]) {
    let d = dw.len();
    if d == 0 {
        return; // not wanted
    }
    let part = x
        .par_chunks(d * 64)
        .zip(dy.par_chunks(d * 64))
        .zip(rstd.par_chunks(64))
        .map(|((xs, dys), rs)| {
            let mut acc = vec![0.0f32; d]; // [d]
            for ((xr, dyr), &s) in xs.chunks(d).zip(dys.chunks(d)).zip(rs) {
                for ((a, xi), gi) in acc.iter_mut().zip(xr).zip(dyr) {
                    *a += gi * xi * s;
                }
            }
            acc
        })
        .reduce(
            || vec![0.0f32; d],
            |mut a, b| {
                a.iter_mut().zip(&b).for_each(|(x, y)| *x += y);
                a
            },
        );
    dw.iter_mut().zip(&part).for_each(|(w, p)| *w += p);
}

/// Bias gradient: `db[out] += Σ_r dy[r, :]`.
pub(crate) fn bias_acc(dy: &[f32], db: &mut [f32]) {
    if db.is_empty() {
        return; // not wanted
    }
    for row in dy.chunks(db.len()) {
        db.iter_mut().zip(row).for_each(|(b, g)| *b += g);
    }
}

/// Gradients of one block's parameters, shapes as the weights (`None` where the block has
/// no such parameter).
pub struct BlockGrads {
    pub attn_norm: Vec<f32>,              // [D]
    pub wq: Vec<f32>,                     // [Hq*hd, D]
    pub wk: Vec<f32>,                     // [Hkv*hd, D]
    pub wv: Vec<f32>,                     // [Hkv*hd, D]
    pub bq: Option<Vec<f32>>,             // [Hq*hd]
    pub bk: Option<Vec<f32>>,             // [Hkv*hd]
    pub bv: Option<Vec<f32>>,             // [Hkv*hd]
    pub wo: Vec<f32>,                     // [D, Hq*hd]
    pub mlp_norm: Vec<f32>,               // [D]
    pub wg: Vec<f32>,                     // [F, D]
    pub wu: Vec<f32>,                     // [F, D]
    pub wd: Vec<f32>,                     // [D, F]
    pub q_norm: Option<Vec<f32>>,         // [hd]
    pub k_norm: Option<Vec<f32>>,         // [hd]
    pub post_attn_norm: Option<Vec<f32>>, // [D]
    pub post_mlp_norm: Option<Vec<f32>>,  // [D]
}

/// Gradient accumulator for every parameter of a [`Llama`] (f32, same shapes).
pub struct Grads {
    pub embed: Vec<f32>,           // [V, D] (also the output projection's when tied)
    pub lm_head: Option<Vec<f32>>, // [V, D] untied output projection
    pub norm: Vec<f32>,            // [D] final norm
    pub blocks: Vec<BlockGrads>,
}

fn zeros_like(v: &[f32]) -> Vec<f32> {
    vec![0.0; v.len()]
}
fn zeros_w(w: &Weight) -> Vec<f32> {
    vec![0.0; w.numel()]
}
fn zeros_opt(v: &Option<Vec<f32>>) -> Option<Vec<f32>> {
    v.as_deref().map(zeros_like)
}

impl Grads {
    /// Zero gradients shaped like `model`'s parameters.
    pub fn new(model: &Llama) -> Grads {
        Grads {
            embed: zeros_w(&model.embed),
            lm_head: model.lm_head.as_ref().map(zeros_w),
            norm: zeros_like(&model.norm),
            blocks: model
                .blocks
                .iter()
                .map(|b| BlockGrads {
                    attn_norm: zeros_like(&b.attn_norm),
                    wq: zeros_w(&b.wq),
                    wk: zeros_w(&b.wk),
                    wv: zeros_w(&b.wv),
                    bq: zeros_opt(&b.bq),
                    bk: zeros_opt(&b.bk),
                    bv: zeros_opt(&b.bv),
                    wo: zeros_w(&b.wo),
                    mlp_norm: zeros_like(&b.mlp_norm),
                    wg: zeros_w(&b.wg),
                    wu: zeros_w(&b.wu),
                    wd: zeros_w(&b.wd),
                    q_norm: zeros_opt(&b.q_norm),
                    k_norm: zeros_opt(&b.k_norm),
                    post_attn_norm: zeros_opt(&b.post_attn_norm),
                    post_mlp_norm: zeros_opt(&b.post_mlp_norm),
                })
                .collect(),
        }
    }

    /// Gradients of the parameters at `keep` (indices in the canonical order) only: every
    /// other buffer is empty, and the backward skips its weight-gradient product (LoRA needs
    /// only the matrices it adapts; the output projection's `[V, D]` gradient alone costs
    /// as much as the LM head's forward).
    pub fn only(model: &Llama, keep: &[usize]) -> Grads {
        let mut g = Grads::new(model);
        for (i, b) in g.buffers_vec_mut().into_iter().enumerate() {
            if !keep.contains(&i) {
                *b = Vec::new();
            }
        }
        g
    }

    /// Every buffer, in the canonical parameter order (see the module doc).
    pub fn buffers_mut(&mut self) -> Vec<&mut [f32]> {
        self.buffers_vec_mut()
            .into_iter()
            .map(|b| b.as_mut_slice())
            .collect()
    }

    fn buffers_vec_mut(&mut self) -> Vec<&mut Vec<f32>> {
        let mut out: Vec<&mut Vec<f32>> = vec![&mut self.embed];
        if let Some(h) = self.lm_head.as_mut() {
            out.push(h);
        }
        out.push(&mut self.norm);
        for b in &mut self.blocks {
            out.push(&mut b.attn_norm);
            out.push(&mut b.wq);
            out.push(&mut b.wk);
            out.push(&mut b.wv);
            for v in [&mut b.bq, &mut b.bk, &mut b.bv].into_iter().flatten() {
                out.push(v);
            }
            out.push(&mut b.wo);
            out.push(&mut b.mlp_norm);
            out.push(&mut b.wg);
            out.push(&mut b.wu);
            out.push(&mut b.wd);
            for v in [
                &mut b.q_norm,
                &mut b.k_norm,
                &mut b.post_attn_norm,
                &mut b.post_mlp_norm,
            ]
            .into_iter()
            .flatten()
            {
                out.push(v);
            }
        }
        out
    }

    /// Set every gradient to zero.
    pub fn zero(&mut self) {
        self.buffers_mut().into_par_iter().for_each(|b| b.fill(0.0));
    }

    /// Multiply every gradient by `c`.
    pub fn scale(&mut self, c: f32) {
        self.buffers_mut()
            .into_par_iter()
            .for_each(|b| b.iter_mut().for_each(|x| *x *= c));
    }

    /// L2 norm over all gradients (accumulated in f64).
    pub fn global_norm(&mut self) -> f64 {
        self.buffers_mut()
            .into_par_iter()
            .map(|b| b.iter().map(|&g| (g as f64) * (g as f64)).sum::<f64>())
            .sum::<f64>()
            .sqrt()
    }

    /// The output projection's gradient `[V, D]` (the embedding's when tied).
    pub fn head_mut(&mut self) -> &mut [f32] {
        match self.lm_head.as_mut() {
            Some(h) => h,
            None => &mut self.embed,
        }
    }

    /// Scatter-add the input gradient `dx[N, D]` of a packed batch into the embedding rows
    /// of its tokens (times the model's input scale); soft-prompt rows are skipped.
    pub fn scatter_embed(&mut self, model: &Llama, dx: &[f32], seqs: &[SeqInput]) {
        if self.embed.is_empty() {
            return; // not wanted
        }
        let d = model.dims.d;
        let scale = model.embed_scale;
        let mut r = 0;
        for s in seqs {
            r += prompt_len(s.prompt);
            for &id in s.ids {
                let row = &mut self.embed[id as usize * d..(id as usize + 1) * d];
                row.iter_mut()
                    .zip(&dx[r * d..(r + 1) * d])
                    .for_each(|(e, g)| *e += scale * g);
                r += 1;
            }
        }
    }

    pub(crate) fn check_fits(&self, model: &Llama) -> Result<()> {
        if self.blocks.len() != model.blocks.len()
            || (self.embed.len() != model.embed.numel() && !self.embed.is_empty())
            || self.lm_head.is_some() != model.lm_head.is_some()
        {
            return Err(Error::Mismatch(
                "gradient buffers do not fit this model".into(),
            ));
        }
        Ok(())
    }
}

/// A parameter's HF name, shape, and whether it is an RMSNorm weight (Gemma stores those as
/// `w` of a `(1 + w)` multiplier; the model holds `1 + w`).
#[derive(Clone, Debug)]
pub struct ParamSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub is_norm: bool,
}

/// The error for a matrix that is not kept as f32.
fn needs_f32(name: &str) -> Error {
    Error::setting(
        "weights",
        format!(
            "{name}: full fine-tuning needs f32 weights; load the model with weights format f32 \
             (not quantized or bf16)"
        ),
    )
}

fn w_mut<'a>(w: &'a mut Weight, name: &str) -> Result<&'a mut [f32]> {
    match w {
        Weight::F32(t) => Ok(&mut t.data),
        _ => Err(needs_f32(name)),
    }
}

fn w_ref<'a>(w: &'a Weight, name: &str) -> Result<&'a [f32]> {
    match w {
        Weight::F32(t) => Ok(&t.data),
        _ => Err(needs_f32(name)),
    }
}

/// HF names of a block's parameters in canonical order, `Some` where the block has it.
fn block_names(b: &Block, l: usize, gemma: bool) -> Vec<(String, bool)> {
    let p = format!("model.layers.{l}");
    let mut v = vec![
        (format!("{p}.input_layernorm.weight"), true),
        (format!("{p}.self_attn.q_proj.weight"), false),
        (format!("{p}.self_attn.k_proj.weight"), false),
        (format!("{p}.self_attn.v_proj.weight"), false),
    ];
    for (x, n) in [(&b.bq, "q"), (&b.bk, "k"), (&b.bv, "v")] {
        if x.is_some() {
            v.push((format!("{p}.self_attn.{n}_proj.bias"), false));
        }
    }
    v.push((format!("{p}.self_attn.o_proj.weight"), false));
    let mlp_norm = if gemma {
        "pre_feedforward_layernorm"
    } else {
        "post_attention_layernorm"
    };
    v.push((format!("{p}.{mlp_norm}.weight"), true));
    v.push((format!("{p}.mlp.gate_proj.weight"), false));
    v.push((format!("{p}.mlp.up_proj.weight"), false));
    v.push((format!("{p}.mlp.down_proj.weight"), false));
    for (x, n) in [
        (&b.q_norm, "self_attn.q_norm"),
        (&b.k_norm, "self_attn.k_norm"),
        (&b.post_attn_norm, "post_attention_layernorm"),
        (&b.post_mlp_norm, "post_feedforward_layernorm"),
    ] {
        if x.is_some() {
            v.push((format!("{p}.{n}.weight"), true));
        }
    }
    v
}

impl Block {
    /// The block's parameters in canonical order.
    fn params(&self, name: &str) -> Result<Vec<&[f32]>> {
        let mut out: Vec<&[f32]> = vec![
            &self.attn_norm,
            w_ref(&self.wq, name)?,
            w_ref(&self.wk, name)?,
            w_ref(&self.wv, name)?,
        ];
        out.extend(
            [&self.bq, &self.bk, &self.bv]
                .into_iter()
                .flatten()
                .map(|v| &v[..]),
        );
        out.push(w_ref(&self.wo, name)?);
        out.push(&self.mlp_norm);
        out.push(w_ref(&self.wg, name)?);
        out.push(w_ref(&self.wu, name)?);
        out.push(w_ref(&self.wd, name)?);
        out.extend(
            [
                &self.q_norm,
                &self.k_norm,
                &self.post_attn_norm,
                &self.post_mlp_norm,
            ]
            .into_iter()
            .flatten()
            .map(|v| &v[..]),
        );
        Ok(out)
    }

    fn params_mut(&mut self, name: &str) -> Result<Vec<&mut [f32]>> {
        let mut out: Vec<&mut [f32]> = vec![
            &mut self.attn_norm,
            w_mut(&mut self.wq, name)?,
            w_mut(&mut self.wk, name)?,
            w_mut(&mut self.wv, name)?,
        ];
        for v in [&mut self.bq, &mut self.bk, &mut self.bv]
            .into_iter()
            .flatten()
        {
            out.push(v);
        }
        out.push(w_mut(&mut self.wo, name)?);
        out.push(&mut self.mlp_norm);
        out.push(w_mut(&mut self.wg, name)?);
        out.push(w_mut(&mut self.wu, name)?);
        out.push(w_mut(&mut self.wd, name)?);
        for v in [
            &mut self.q_norm,
            &mut self.k_norm,
            &mut self.post_attn_norm,
            &mut self.post_mlp_norm,
        ]
        .into_iter()
        .flatten()
        {
            out.push(v);
        }
        Ok(out)
    }
}

impl Llama {
    /// Name, shape and kind of every parameter, in canonical order.
    pub fn param_specs(&self) -> Vec<ParamSpec> {
        let gemma = self.cfg.is_gemma3();
        let mut names = vec![("model.embed_tokens.weight".to_string(), false)];
        if self.lm_head.is_some() {
            names.push(("lm_head.weight".into(), false));
        }
        names.push(("model.norm.weight".into(), true));
        for (l, b) in self.blocks.iter().enumerate() {
            names.extend(block_names(b, l, gemma));
        }
        let shapes = self.param_shapes();
        names
            .into_iter()
            .zip(shapes)
            .map(|((name, is_norm), shape)| ParamSpec {
                name,
                shape,
                is_norm,
            })
            .collect()
    }

    fn param_shapes(&self) -> Vec<Vec<usize>> {
        let sh = |w: &Weight| vec![w.rows(), w.cols()];
        let v = |x: &[f32]| vec![x.len()];
        let mut out = vec![sh(&self.embed)];
        if let Some(h) = &self.lm_head {
            out.push(sh(h));
        }
        out.push(v(&self.norm));
        for b in &self.blocks {
            out.extend([v(&b.attn_norm), sh(&b.wq), sh(&b.wk), sh(&b.wv)]);
            out.extend([&b.bq, &b.bk, &b.bv].into_iter().flatten().map(|x| v(x)));
            out.extend([sh(&b.wo), v(&b.mlp_norm), sh(&b.wg), sh(&b.wu), sh(&b.wd)]);
            out.extend(
                [&b.q_norm, &b.k_norm, &b.post_attn_norm, &b.post_mlp_norm]
                    .into_iter()
                    .flatten()
                    .map(|x| v(x)),
            );
        }
        out
    }

    /// Every parameter as a mutable f32 slice, in canonical order (for the optimizer).
    /// Refuses a model with quantized matrices.
    pub fn params_mut(&mut self) -> Result<Vec<&mut [f32]>> {
        let src = self.cfg.model_type.clone();
        let mut out: Vec<&mut [f32]> = vec![w_mut(&mut self.embed, &src)?];
        if let Some(h) = self.lm_head.as_mut() {
            out.push(w_mut(h, &src)?);
        }
        out.push(&mut self.norm);
        for b in &mut self.blocks {
            out.extend(b.params_mut(&src)?);
        }
        Ok(out)
    }

    /// Every parameter as an f32 slice, in canonical order.
    pub fn params(&self) -> Result<Vec<&[f32]>> {
        let src = &self.cfg.model_type;
        let mut out: Vec<&[f32]> = vec![w_ref(&self.embed, src)?];
        if let Some(h) = &self.lm_head {
            out.push(w_ref(h, src)?);
        }
        out.push(&self.norm);
        for b in &self.blocks {
            out.extend(b.params(src)?);
        }
        Ok(out)
    }

    /// The weights under their HF names, as a checkpoint stores them (Gemma's norms back to
    /// `w` of `(1 + w)`): what [`crate::model::load::hf::save_hf_folder`] writes.
    pub fn hf_weights(&self) -> Result<HashMap<String, Tensor>> {
        let gemma = self.cfg.is_gemma3();
        let specs = self.param_specs();
        let params = self.params()?;
        Ok(specs
            .into_iter()
            .zip(params)
            .map(|(s, p)| {
                let mut data = p.to_vec();
                if gemma && s.is_norm {
                    data.iter_mut().for_each(|x| *x -= 1.0);
                }
                (s.name, Tensor::new(s.shape, data))
            })
            .collect())
    }

    /// Loss of a packed batch, with every weight gradient accumulated into `grads`
    /// (`+=`: zero it between optimizer steps). Returns `(loss, dx[N, D], lens)`: the input
    /// gradient too, so the soft-prompt rows' gradient can be read from it.
    pub fn loss_and_grads(
        &self,
        seqs: &[SeqInput],
        targets: &[Target],
        grads: &mut Grads,
    ) -> Result<(f64, Vec<f32>, Vec<usize>)> {
        grads.check_fits(self)?;
        let (mut x, lens) = self.embed_batch(seqs)?;
        let n = x.len() / self.dims.d;
        check_targets(targets, n, self.dims.vocab)?;
        let mut caches: Vec<KvCache> = self.caches_for(seqs)?;
        let tape = self.forward_full(&mut x, &lens, &mut caches)?;
        let (nll, dh) = self.loss_head_grads(&tape.hidden, targets, grads.head_mut());
        let loss = weighted(&nll, targets);
        let dx = self.backward_grads(&tape, &caches, &dh, grads)?;
        grads.scatter_embed(self, &dx, seqs);
        Ok((loss, dx, lens))
    }
}
