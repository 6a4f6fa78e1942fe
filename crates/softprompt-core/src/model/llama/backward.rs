//! The backward from the final hidden states to the input embeddings (prompt tuning), with
//! optional weight gradients (full fine-tuning): the forward read in reverse.

use super::cache::{KvCache, Tape};
use super::forward::{Caches, Scratch};
use super::grads::{self, dw_acc, rmsnorm_dw, BlockGrads, Grads};
use super::{Act, Dims, Llama};
use crate::compute::kernels::{self, rmsnorm_backward};
use crate::{Error, Result};

impl Llama {
    /// Backward from `d_hidden[N, D]` (gradient w.r.t. the final hidden states) to the input
    /// embeddings: returns `dx[N, D]`. `caches` are those filled by the recording forward.
    pub fn backward(&self, tape: &Tape, caches: &[KvCache], d_hidden: &[f32]) -> Vec<f32> {
        kernels::in_pool(|| self.backward_impl(tape, caches, d_hidden, None, None))
    }

    /// [`Llama::backward`] for sequences that started from a prefix prompt's cache: also
    /// adds the gradient w.r.t. the prefix keys and values into `dprefix[P, L*2*kvd]`
    /// (summed over the sequences, which must share the prefix).
    pub fn backward_prefix(
        &self,
        tape: &Tape,
        caches: &[KvCache],
        d_hidden: &[f32],
        dprefix: &mut [f32],
    ) -> Vec<f32> {
        kernels::in_pool(|| self.backward_impl(tape, caches, d_hidden, None, Some(dprefix)))
    }

    /// [`Llama::backward`] that also accumulates every weight gradient of the blocks and the
    /// final norm into `grads` (the tape must come from [`Llama::forward_full`]). The output
    /// projection's gradient comes from [`Llama::loss_head_grads`], the embedding rows' from
    /// [`Grads::scatter_embed`] on the returned `dx`.
    pub fn backward_grads(
        &self,
        tape: &Tape,
        caches: &[KvCache],
        d_hidden: &[f32],
        grads: &mut Grads,
    ) -> Result<Vec<f32>> {
        grads.check_fits(self)?;
        if tape.blocks.first().is_some_and(|t| t.h1.is_empty()) {
            return Err(Error::Input(
                "weight gradients need a tape from forward_full".into(),
            ));
        }
        Ok(kernels::in_pool(|| {
            self.backward_impl(tape, caches, d_hidden, Some(grads), None)
        }))
    }

    pub(super) fn backward_impl(
        &self,
        tape: &Tape,
        caches: &[KvCache],
        d_hidden: &[f32],
        mut grads: Option<&mut Grads>,
        mut dprefix: Option<&mut [f32]>,
    ) -> Vec<f32> {
        let Dims { d, nq, nkv, f, .. } = self.dims;
        let (qd, kvd) = (self.dims.qdim(), self.dims.kvdim());
        let n: usize = tape.lens.iter().sum();
        let mut dx = vec![0.0; n * d]; // [N, D] gradient w.r.t. the residual stream
        if let Some(g) = grads.as_deref_mut() {
            rmsnorm_dw(&tape.x_final, &tape.rstd_final, d_hidden, &mut g.norm);
        }
        rmsnorm_backward(
            &tape.x_final,
            &self.norm,
            &tape.rstd_final,
            d_hidden,
            &mut dx,
        );
        let mut da = vec![0.0; n * f]; // [N, F]
        let mut dg = vec![0.0; n * f]; // [N, F]
        let mut du = vec![0.0; n * f]; // [N, F]
        let mut dh = vec![0.0; n * d]; // [N, D] gradient w.r.t. a norm's output
        let mut datt = vec![0.0; n * qd]; // [N, Hq*hd]
        let mut dq = vec![0.0; n * qd]; // [N, Hq*hd]
        let mut dk = vec![0.0; n * kvd]; // [N, Hkv*hd]
        let mut dv = vec![0.0; n * kvd]; // [N, Hkv*hd]
        let mut r0 = 0;
        let starts: Vec<(usize, usize)> = tape
            .lens
            .iter()
            .map(|&len| {
                r0 += len;
                (r0 - len, len)
            })
            .collect();
        let mut dpost = Vec::new(); // [N, D] gradient w.r.t. a sub-layer output before its post-norm

        // A checkpointed tape: each block's tape is rebuilt from its input, in these buffers.
        let mut scratch = tape.recompute.then(|| Scratch::new(self, n));
        for (l, (b, kept)) in self.blocks.iter().zip(&tape.blocks).enumerate().rev() {
            let rebuilt = scratch.as_mut().and_then(|s| {
                let mut x = kept.x_in.clone(); // [N, D]
                let filled = Caches::Filled(caches);
                self.block_forward(
                    l, &mut x, s, &tape.pos, &tape.lens, filled, false, true, false,
                )
            });
            let t = rebuilt.as_ref().unwrap_or(kept);
            // Weight gradients of this block, when asked for.
            let mut gb: Option<&mut BlockGrads> = grads.as_deref_mut().map(|g| &mut g.blocks[l]);
            // --- MLP: x_out = x_mid + [post_norm]((act(g) * u) @ Wd^T) ---
            if let Some(gw) = gb.as_deref_mut().and_then(|g| g.post_mlp_norm.as_mut()) {
                rmsnorm_dw(&t.mlp_out, &t.rstd_pm, &dx, gw);
            }
            let d_out = post_norm_backward(
                &dx,
                b.post_mlp_norm.as_deref(),
                &t.mlp_out,
                &t.rstd_pm,
                &mut dpost,
            );
            if let Some(g) = gb.as_deref_mut() {
                dw_acc(d_out, &t.a, n, &mut g.wd); // dWd[D, F] += d_out^T @ a
            }
            b.wd.linear_dx(d_out, n, &mut da, false);
            match self.act {
                Act::Silu => kernels::swiglu_backward(&t.g, &t.u, &da, &mut dg, &mut du),
                Act::GeluTanh => kernels::geglu_tanh_backward(&t.g, &t.u, &da, &mut dg, &mut du),
            }
            if let Some(g) = gb.as_deref_mut() {
                dw_acc(&dg, &t.h2, n, &mut g.wg); // dWg[F, D] += dg^T @ h2
                dw_acc(&du, &t.h2, n, &mut g.wu); // dWu[F, D] += du^T @ h2
            }
            b.wg.linear_dx(&dg, n, &mut dh, false);
            b.wu.linear_dx(&du, n, &mut dh, true);
            if let Some(g) = gb.as_deref_mut() {
                rmsnorm_dw(&t.x_mid, &t.rstd2, &dh, &mut g.mlp_norm);
            }
            rmsnorm_backward(&t.x_mid, &b.mlp_norm, &t.rstd2, &dh, &mut dx); // dx is now d x_mid

            // --- attention: x_mid = x_in + [post_norm](att @ Wo^T) ---
            if let Some(gw) = gb.as_deref_mut().and_then(|g| g.post_attn_norm.as_mut()) {
                rmsnorm_dw(&t.attn_out, &t.rstd_pa, &dx, gw);
            }
            let d_out = post_norm_backward(
                &dx,
                b.post_attn_norm.as_deref(),
                &t.attn_out,
                &t.rstd_pa,
                &mut dpost,
            );
            if let Some(g) = gb.as_deref_mut() {
                dw_acc(d_out, &t.att, n, &mut g.wo); // dWo[D, Hq*hd] += d_out^T @ att
            }
            b.wo.linear_dx(d_out, n, &mut datt, false); // datt[N, Hq*hd] = d_out[N, D] @ Wo[D, Hq*hd]
            self.attention_backward(
                l,
                t,
                &starts,
                caches,
                &datt,
                &mut dq,
                &mut dk,
                &mut dv,
                dprefix.as_deref_mut(),
            );
            let rope = self.rope_of(b);
            rope.apply(&mut dq, nq, &tape.pos, true);
            rope.apply(&mut dk, nkv, &tape.pos, true);
            if let Some(g) = gb.as_deref_mut() {
                // QK-norm weights [hd]: rows are (position, head) pairs.
                if let Some(gw) = g.q_norm.as_mut() {
                    rmsnorm_dw(&t.q_pre, &t.rstd_q, &dq, gw);
                }
                if let Some(gw) = g.k_norm.as_mut() {
                    rmsnorm_dw(&t.k_pre, &t.rstd_k, &dk, gw);
                }
            }
            head_norm_backward(&mut dq, b.q_norm.as_deref(), &t.q_pre, &t.rstd_q);
            head_norm_backward(&mut dk, b.k_norm.as_deref(), &t.k_pre, &t.rstd_k);
            if let Some(g) = gb.as_deref_mut() {
                dw_acc(&dq, &t.h1, n, &mut g.wq); // dWq[Hq*hd, D] += dq^T @ h1
                dw_acc(&dk, &t.h1, n, &mut g.wk); // dWk[Hkv*hd, D] += dk^T @ h1
                dw_acc(&dv, &t.h1, n, &mut g.wv); // dWv[Hkv*hd, D] += dv^T @ h1
                for (gbias, dy) in [(&mut g.bq, &dq), (&mut g.bk, &dk), (&mut g.bv, &dv)] {
                    if let Some(gbias) = gbias.as_mut() {
                        grads::bias_acc(dy, gbias); // db[out] += column sums of dy[N, out]
                    }
                }
            }
            b.wq.linear_dx(&dq, n, &mut dh, false);
            b.wk.linear_dx(&dk, n, &mut dh, true);
            b.wv.linear_dx(&dv, n, &mut dh, true);
            if let Some(g) = gb {
                rmsnorm_dw(&t.x_in, &t.rstd1, &dh, &mut g.attn_norm);
            }
            rmsnorm_backward(&t.x_in, &b.attn_norm, &t.rstd1, &dh, &mut dx); // dx is now d x_in
        }
        dx
    }
}

/// Backward of an optional post-norm `y = rmsnorm(o)`: with a norm, writes `d o` into
/// `scratch` and returns it; without, returns `dy` itself.
pub(super) fn post_norm_backward<'a>(
    dy: &'a [f32],
    w: Option<&[f32]>,
    o: &[f32],
    rstd: &[f32],
    scratch: &'a mut Vec<f32>,
) -> &'a [f32] {
    let Some(w) = w else {
        return dy;
    };
    scratch.clear();
    scratch.resize(dy.len(), 0.0);
    rmsnorm_backward(o, w, rstd, dy, scratch);
    scratch
}

/// Backward of the per-head RMSNorm in place: `dx[N, heads*hd]` from d(normed) to d(input).
pub(super) fn head_norm_backward(dx: &mut [f32], w: Option<&[f32]>, pre: &[f32], rstd: &[f32]) {
    let Some(w) = w else {
        return;
    };
    let dy = dx.to_vec();
    dx.fill(0.0);
    rmsnorm_backward(pre, w, rstd, &dy, dx);
}
