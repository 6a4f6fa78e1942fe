//! The packed forward: input embeddings, the decoder blocks (attention and gated MLP, with
//! optional QK-norm and sandwich norms), the final norm, and the LM head (logits, and the
//! loss head with its gradient).

use rayon::prelude::*;

use super::cache::{BlockTape, KvCache, Tape};
use super::grads::dw_acc;
use super::{Act, Dims, Llama};
use crate::compute::kernels::{self, rmsnorm};
use crate::compute::weight::Weight;
use crate::model::input::{prompt_len, PromptKind, PromptRef, SeqInput, Target};
use crate::{Error, Result};

/// The caches a block reads: appended to by this forward, or already holding its rows.
pub(super) enum Caches<'a> {
    Append(&'a mut [KvCache]),
    Filled(&'a [KvCache]),
}

/// Working buffers of a forward over `N` packed rows, reused by every block.
pub(super) struct Scratch {
    h: Vec<f32>,    // [N, D] normed input of a sub-layer
    rstd: Vec<f32>, // [N]
    q: Vec<f32>,    // [N, Hq*hd]
    k: Vec<f32>,    // [N, Hkv*hd]
    v: Vec<f32>,    // [N, Hkv*hd]
    att: Vec<f32>,  // [N, Hq*hd]
    g: Vec<f32>,    // [N, F]
    u: Vec<f32>,    // [N, F]
    a: Vec<f32>,    // [N, F]
    o: Vec<f32>,    // [N, D] a sub-layer's output before its post-norm (Gemma 3 only)
}

impl Scratch {
    pub(super) fn new(m: &Llama, n: usize) -> Self {
        let Dims { d, f, .. } = m.dims;
        let (qd, kvd) = (m.dims.qdim(), m.dims.kvdim());
        let sandwich = m.blocks.iter().any(|b| b.post_attn_norm.is_some());
        Scratch {
            h: vec![0.0; n * d],
            rstd: vec![0.0; n],
            q: vec![0.0; n * qd],
            k: vec![0.0; n * kvd],
            v: vec![0.0; n * kvd],
            att: vec![0.0; n * qd],
            g: vec![0.0; n * f],
            u: vec![0.0; n * f],
            a: vec![0.0; n * f],
            o: if sandwich {
                vec![0.0; n * d]
            } else {
                Vec::new()
            },
        }
    }
}

impl Llama {
    /// Values per virtual token of a prefix prompt: `L * 2 * Hkv*hd`.
    pub fn prefix_width(&self) -> usize {
        self.n_layers() * 2 * self.dims.kvdim()
    }

    /// Values per virtual token of a prompt of `kind`: the hidden size, or
    /// [`Llama::prefix_width`].
    pub fn prompt_width(&self, kind: PromptKind) -> usize {
        match kind {
            PromptKind::Input => self.dims.d,
            PromptKind::Prefix => self.prefix_width(),
        }
    }

    /// Check that a prefix prompt has this model's layout.
    pub fn check_prefix(&self, p: PromptRef) -> Result<()> {
        if p.dim() != self.prefix_width() {
            return Err(Error::Mismatch(format!(
                "prefix prompt rows hold {} values; this model needs {} ({} layers x key and value x {} key/value heads x {} head dims)",
                p.dim(),
                self.prefix_width(),
                self.n_layers(),
                self.dims.nkv,
                self.dims.hd
            )));
        }
        Ok(())
    }

    /// The KV cache each sequence starts from: its prefix prompt's keys and values, or empty.
    pub fn caches_for(&self, seqs: &[SeqInput]) -> Result<Vec<KvCache>> {
        seqs.iter().map(|s| self.cache_for(s.prompt)).collect()
    }

    /// The KV cache a sequence with `prompt` starts from (empty unless a prefix prompt).
    pub fn cache_for(&self, prompt: Option<PromptRef>) -> Result<KvCache> {
        match prompt {
            Some(p) if p.kind() == PromptKind::Prefix => {
                self.check_prefix(p)?;
                Ok(KvCache::from_prefix(
                    p.data(),
                    p.len(),
                    self.n_layers(),
                    self.dims.kvdim(),
                ))
            }
            _ => Ok(KvCache::new(self.n_layers())),
        }
    }

    /// The prefix prompt `[P, L*2*kvd]` equivalent to the input prompt `rows[P, D]`: the keys
    /// and values its rows leave in the cache at every layer. A text after either gets the
    /// same outputs (the hard or soft prompt it came from, made deep).
    pub fn prefix_of(&self, rows: PromptRef) -> Result<Vec<f32>> {
        if rows.kind() != PromptKind::Input {
            return Err(Error::Input("prefix_of takes input-embedding rows".into()));
        }
        let (mut x, lens) = self.embed_batch(&[SeqInput {
            prompt: Some(rows),
            ids: &[],
        }])?; // [P, D]
        let mut cache = vec![KvCache::new(self.n_layers())];
        self.forward(&mut x, &lens, &mut cache, false)?;
        Ok(cache[0].to_prefix(rows.len(), self.dims.kvdim()))
    }

    /// The value vector each vocabulary token gets at layer 0, at any position (values carry
    /// no RoPE, and layer 0 sees nothing but the token): `[V, Hkv*hd]`. A deep prompt's
    /// layer-0 values live in this space, so its virtual tokens can be read as tokens.
    pub fn layer0_values(&self) -> Result<crate::Tensor> {
        const CHUNK: usize = 2048;
        let (d, kvd, vocab) = (self.dims.d, self.dims.kvdim(), self.dims.vocab);
        let b = self
            .blocks
            .first()
            .ok_or_else(|| Error::Input("the model has no layers".into()))?;
        let mut out = Vec::with_capacity(vocab * kvd);
        for start in (0..vocab).step_by(CHUNK) {
            let n = CHUNK.min(vocab - start);
            let mut x = Vec::with_capacity(n * d); // [n, D] scaled token rows
            for id in start..start + n {
                x.extend(self.embed.row(id).iter().map(|v| v * self.embed_scale));
            }
            let (mut h, mut rstd) = (vec![0.0; n * d], vec![0.0; n]); // [n, D], [n]
            rmsnorm(&x, &b.attn_norm, self.eps, &mut h, &mut rstd);
            let mut v = vec![0.0; n * kvd]; // [n, Hkv*hd]
            kernels::in_pool(|| self.linear(&h, &b.wv, n, &mut v, false));
            add_bias(&mut v, b.bv.as_deref());
            out.extend(v);
        }
        Ok(crate::Tensor::new(vec![vocab, kvd], out))
    }

    /// Input embeddings of a packed batch: `[N, D]` and the rows per sequence. A prefix
    /// prompt adds no rows (start the sequence from [`Llama::cache_for`]).
    pub fn embed_batch(&self, seqs: &[SeqInput]) -> Result<(Vec<f32>, Vec<usize>)> {
        let d = self.dims.d;
        let mut lens = Vec::with_capacity(seqs.len());
        let total: usize = seqs
            .iter()
            .map(|s| prompt_len(s.prompt) + s.ids.len())
            .sum();
        let mut x = Vec::with_capacity(total * d);
        for s in seqs {
            let mut n = 0;
            if let Some(p) = s.prompt.filter(|p| p.kind() == PromptKind::Input) {
                if p.dim() != d {
                    return Err(Error::Mismatch(format!(
                        "soft prompt rows hold {} values, the model's hidden size is {d}",
                        p.dim()
                    )));
                }
                x.extend_from_slice(p.data());
                n += p.len();
            }
            for &id in s.ids {
                if id as usize >= self.dims.vocab {
                    return Err(Error::Input(format!(
                        "token id {id} is outside the vocabulary (size {})",
                        self.dims.vocab
                    )));
                }
                let row = self.embed.row(id as usize);
                if self.embed_scale == 1.0 {
                    x.extend_from_slice(&row);
                } else {
                    x.extend(row.iter().map(|v| v * self.embed_scale));
                }
            }
            n += s.ids.len();
            lens.push(n);
        }
        Ok((x, lens))
    }

    /// Packed forward. `x[N, D]` holds the input embeddings and is overwritten with the final
    /// hidden states (after the last norm). `lens[i]` new rows of sequence i are appended to
    /// `caches[i]`. With `record`, returns the tape the backward needs (requires empty caches).
    pub fn forward(
        &self,
        x: &mut [f32],
        lens: &[usize],
        caches: &mut [KvCache],
        record: bool,
    ) -> Result<Option<Tape>> {
        kernels::in_pool(|| self.forward_impl(x, lens, caches, record, false))
    }

    /// [`Llama::forward`] recording a tape that also keeps every linear layer's input, so
    /// that [`Llama::backward_grads`] can compute weight gradients (full fine-tuning).
    pub fn forward_full(
        &self,
        x: &mut [f32],
        lens: &[usize],
        caches: &mut [KvCache],
    ) -> Result<Tape> {
        kernels::in_pool(|| self.forward_impl(x, lens, caches, true, true))?
            .ok_or_else(|| Error::Input("no tape".into()))
    }

    pub(super) fn forward_impl(
        &self,
        x: &mut [f32],
        lens: &[usize],
        caches: &mut [KvCache],
        record: bool,
        full: bool,
    ) -> Result<Option<Tape>> {
        let d = self.dims.d;
        let n: usize = lens.iter().sum();
        assert_eq!(x.len(), n * d, "forward: x is not [N, D]");
        assert_eq!(lens.len(), caches.len(), "forward: one cache per sequence");
        // Position of every packed row.
        let mut pos = Vec::with_capacity(n);
        for (len, c) in lens.iter().zip(caches.iter()) {
            if c.len + len > self.max_positions() {
                return Err(Error::Input(format!(
                    "sequence of {} positions exceeds the model's context of {}",
                    c.len + len,
                    self.max_positions()
                )));
            }
            pos.extend(c.len..c.len + len);
        }
        // With `recompute`, a training forward keeps only each block's input; the backward
        // runs the block again from it (one more forward of the blocks, a fraction of the
        // memory).
        let checkpoint = record && self.recompute && !full;
        // Exact (per-row) attention only for inference: a tape is always blocked attention,
        // and the backward recomputes it that way.
        let rows = self.exact && !record;
        let mut tapes = Vec::new();
        let mut s = Scratch::new(self, n);
        for l in 0..self.blocks.len() {
            let caches = Caches::Append(caches);
            if checkpoint {
                tapes.push(BlockTape {
                    x_in: x.to_vec(),
                    ..Default::default()
                });
                self.block_forward(l, x, &mut s, &pos, lens, caches, rows, false, false);
            } else {
                let t = self.block_forward(l, x, &mut s, &pos, lens, caches, rows, record, full);
                tapes.extend(t);
            }
        }
        for c in caches.iter_mut().zip(lens) {
            c.0.len += c.1;
        }
        let x_final = if record { Some(x.to_vec()) } else { None };
        let (mut h, mut rstd) = (s.h, s.rstd);
        rmsnorm(x, &self.norm, self.eps, &mut h, &mut rstd);
        x.copy_from_slice(&h);
        Ok(x_final.map(|x_final| Tape {
            blocks: tapes,
            recompute: checkpoint,
            x_final,
            rstd_final: rstd,
            hidden: h,
            lens: lens.to_vec(),
            pos,
        }))
    }

    /// Block `l` over the packed rows `x[N, D]` (in place). With [`Caches::Append`] this
    /// step's keys and values are appended to the caches' layer `l`; with [`Caches::Filled`]
    /// they are there already (the backward recomputing a block). `rows`: attention in the
    /// exact per-row form. With `record`, returns what the block's backward needs (`full`:
    /// also every linear layer's input).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn block_forward(
        &self,
        l: usize,
        x: &mut [f32],
        s: &mut Scratch,
        pos: &[usize],
        lens: &[usize],
        caches: Caches,
        rows: bool,
        record: bool,
        full: bool,
    ) -> Option<BlockTape> {
        let keep = |v: &[f32]| if full { v.to_vec() } else { Vec::new() };
        let Dims { nq, nkv, .. } = self.dims;
        let kvd = self.dims.kvdim();
        let n = lens.iter().sum();
        let b = &self.blocks[l];
        let Scratch {
            h,
            rstd,
            q,
            k,
            v,
            att,
            g,
            u,
            a,
            o,
        } = s;
        let x_in = if record { Some(x.to_vec()) } else { None };
        // --- attention ---
        rmsnorm(x, &b.attn_norm, self.eps, h, rstd);
        let rstd1 = if record { Some(rstd.clone()) } else { None };
        self.linear(h, &b.wq, n, q, false);
        self.linear(h, &b.wk, n, k, false);
        self.linear(h, &b.wv, n, v, false);
        add_bias(q, b.bq.as_deref());
        add_bias(k, b.bk.as_deref());
        add_bias(v, b.bv.as_deref());
        let (q_pre, rstd_q) = self.head_norm(q, b.q_norm.as_deref(), record);
        let (k_pre, rstd_k) = self.head_norm(k, b.k_norm.as_deref(), record);
        let rope = self.rope_of(b);
        rope.apply(q, nq, pos, false);
        rope.apply(k, nkv, pos, false);
        let (caches, filled): (&[KvCache], bool) = match caches {
            Caches::Append(cs) => {
                let mut r0 = 0;
                for (len, c) in lens.iter().zip(cs.iter_mut()) {
                    c.k[l].extend_from_slice(&k[r0 * kvd..(r0 + len) * kvd]);
                    c.v[l].extend_from_slice(&v[r0 * kvd..(r0 + len) * kvd]);
                    r0 += len;
                }
                (cs, false)
            }
            Caches::Filled(cs) => (cs, true),
        };
        if rows {
            self.attention_rows(l, q, lens, caches, att);
        } else {
            self.attention(l, q, lens, caches, att, filled);
        }
        let (h1, att_in) = (keep(h), keep(att));
        // x += post_norm(att @ Wo^T), or x += att @ Wo^T without a sandwich norm
        let (attn_out, rstd_pa) =
            self.residual_out(x, att, &b.wo, b.post_attn_norm.as_deref(), o, record);
        let x_mid = if record { Some(x.to_vec()) } else { None };
        // --- MLP ---
        rmsnorm(x, &b.mlp_norm, self.eps, h, rstd);
        self.linear(h, &b.wg, n, g, false);
        self.linear(h, &b.wu, n, u, false);
        match self.act {
            Act::Silu => kernels::swiglu(g, u, a),
            Act::GeluTanh => kernels::geglu_tanh(g, u, a),
        }
        let (h2, a_in) = (keep(h), keep(a));
        // x += post_norm(a @ Wd^T), or x += a @ Wd^T
        let (mlp_out, rstd_pm) =
            self.residual_out(x, a, &b.wd, b.post_mlp_norm.as_deref(), o, record);
        record.then(|| BlockTape {
            x_in: x_in.unwrap_or_default(),
            rstd1: rstd1.unwrap_or_default(),
            q: q.clone(),
            x_mid: x_mid.unwrap_or_default(),
            rstd2: rstd.clone(),
            g: g.clone(),
            u: u.clone(),
            q_pre,
            rstd_q,
            k_pre,
            rstd_k,
            attn_out,
            rstd_pa,
            mlp_out,
            rstd_pm,
            h1,
            att: att_in,
            h2,
            a: a_in,
        })
    }

    /// Per-head RMSNorm in place over `x[N, heads*hd]` (QK-norm); with `record`, returns the
    /// input and the 1/rms per (row, head) for the backward. A no-op without weights.
    pub(super) fn head_norm(
        &self,
        x: &mut [f32],
        w: Option<&[f32]>,
        record: bool,
    ) -> (Vec<f32>, Vec<f32>) {
        let Some(w) = w else {
            return (Vec::new(), Vec::new());
        };
        let pre = x.to_vec();
        let mut rstd = vec![0.0; x.len() / w.len()]; // [N*heads]
        rmsnorm(&pre, w, self.eps, x, &mut rstd);
        if record {
            (pre, rstd)
        } else {
            (Vec::new(), Vec::new())
        }
    }

    /// Residual add of a sub-layer: `x += post_norm(inp @ W^T)` (`W` is `[D, k]`), or
    /// `x += inp @ W^T` without a post-norm. `o[N, D]` is scratch. With `record` and a
    /// post-norm, returns the pre-norm output and its 1/rms for the backward.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn residual_out(
        &self,
        x: &mut [f32],
        inp: &[f32],
        w: &Weight,
        post: Option<&[f32]>,
        o: &mut [f32],
        record: bool,
    ) -> (Vec<f32>, Vec<f32>) {
        let d = self.dims.d;
        let n = x.len() / d;
        let Some(pw) = post else {
            self.linear(inp, w, n, x, true);
            return (Vec::new(), Vec::new());
        };
        self.linear(inp, w, n, o, false); // o = inp @ W^T   [N, D]
        let mut normed = vec![0.0; n * d]; // [N, D]
        let mut rstd = vec![0.0; n]; // [N]
        rmsnorm(o, pw, self.eps, &mut normed, &mut rstd);
        x.par_iter_mut()
            .zip(normed.par_iter())
            .for_each(|(a, b)| *a += b);
        if record {
            (o.to_vec(), rstd)
        } else {
            (Vec::new(), Vec::new())
        }
    }

    /// Logits `[rows.len(), V]` for the chosen rows of the final hidden states `hidden[N, D]`.
    pub fn logits(&self, hidden: &[f32], rows: &[usize]) -> Vec<f32> {
        let d = self.dims.d;
        let mut hs = Vec::with_capacity(rows.len() * d);
        for &r in rows {
            hs.extend_from_slice(&hidden[r * d..(r + 1) * d]);
        }
        let v = self.dims.vocab;
        let mut out = vec![0.0; rows.len() * v];
        kernels::in_pool(|| self.linear(&hs, self.lm_head(), rows.len(), &mut out, false));
        out
    }

    /// Negative log-likelihood of every target (`-log p(token)` at its row, unweighted) and,
    /// with `want_grad`, the gradient of `sum(weight * nll)` w.r.t. `hidden[N, D]`.
    /// Logits are computed only at target rows, a chunk of rows at a time.
    pub fn loss_head(
        &self,
        hidden: &[f32],
        targets: &[Target],
        want_grad: bool,
    ) -> (Vec<f64>, Vec<f32>) {
        kernels::in_pool(|| self.loss_head_impl(hidden, targets, want_grad, None))
    }

    /// [`Llama::loss_head`] with the gradient, also accumulating the output projection's
    /// weight gradient into `dw_head[V, D]` (`dW += dlogits^T @ hidden` at the target rows).
    pub fn loss_head_grads(
        &self,
        hidden: &[f32],
        targets: &[Target],
        dw_head: &mut [f32],
    ) -> (Vec<f64>, Vec<f32>) {
        kernels::in_pool(|| self.loss_head_impl(hidden, targets, true, Some(dw_head)))
    }

    pub(super) fn loss_head_impl(
        &self,
        hidden: &[f32],
        targets: &[Target],
        want_grad: bool,
        mut dw_head: Option<&mut [f32]>,
    ) -> (Vec<f64>, Vec<f32>) {
        // Rows per LM-head pass: each pass streams the whole [V, D] head (forward and
        // backward), so fewer, larger passes; the logits buffer is [CHUNK, V].
        const CHUNK: usize = 128;
        let d = self.dims.d;
        let v = self.dims.vocab;
        let w = self.lm_head();
        let mut nll = Vec::with_capacity(targets.len());
        let mut dh = if want_grad {
            vec![0.0; hidden.len()]
        } else {
            Vec::new()
        };
        for chunk in targets.chunks(CHUNK) {
            let rows: Vec<usize> = chunk.iter().map(|t| t.row).collect();
            let mut logits = self.logits(hidden, &rows); // [r, V]
            let parts: Vec<f64> = logits
                .par_chunks_mut(v)
                .zip(chunk.par_iter())
                .map(|(lg, t)| {
                    let lse = kernels::logsumexp(lg);
                    let nll = lse - lg[t.token as usize] as f64;
                    if want_grad {
                        // d/dlogits of w * (lse - logit[tok]) = w * (softmax - onehot)
                        kernels::exp_shift(lg, lse as f32, t.weight);
                        lg[t.token as usize] -= t.weight;
                    }
                    nll
                })
                .collect();
            nll.extend(parts);
            if want_grad {
                if let Some(dw) = dw_head.as_deref_mut().filter(|dw| !dw.is_empty()) {
                    let mut hs = Vec::with_capacity(rows.len() * d); // [r, D]
                    for &r in &rows {
                        hs.extend_from_slice(&hidden[r * d..(r + 1) * d]);
                    }
                    dw_acc(&logits, &hs, rows.len(), dw); // dW[V, D] += dlogits^T @ hs
                }
                let mut dhs = vec![0.0; rows.len() * d]; // [r, D] = dlogits @ W
                w.linear_dx(&logits, rows.len(), &mut dhs, false);
                for (i, &r) in rows.iter().enumerate() {
                    for (o, g) in dh[r * d..(r + 1) * d]
                        .iter_mut()
                        .zip(&dhs[i * d..(i + 1) * d])
                    {
                        *o += g;
                    }
                }
            }
        }
        (nll, dh)
    }
}

pub(super) fn add_bias(x: &mut [f32], b: Option<&[f32]>) {
    if let Some(b) = b {
        x.par_chunks_mut(b.len())
            .for_each(|row| row.iter_mut().zip(b).for_each(|(x, b)| *x += b));
    }
}
