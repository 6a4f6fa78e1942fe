//! Causal attention over each sequence's KV cache (GQA, sliding windows), in the blocked
//! form and in the exact per-row form, and its backward for training.

use rayon::prelude::*;

use super::cache::{BlockTape, KvCache};
use super::{Dims, Llama};
use crate::compute::kernels::{self, gemm, View};

impl Llama {
    /// Attention probabilities `[n, past + n]` of query head `hq` for the `n` rows of one
    /// sequence at packed rows `r0..r0 + n` of `q[N, Hq*hd]`, positions `past..past + n`, over
    /// the keys of `cache` (causal, sliding window where the layer has one). The backward
    /// recomputes them from the recorded `q` rather than keeping `[n, n]` per head and layer.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn attn_probs(
        &self,
        l: usize,
        q: &[f32],
        r0: usize,
        n: usize,
        past: usize,
        cache: &KvCache,
        hq: usize,
    ) -> Vec<f32> {
        let Dims { hd, nq, nkv, .. } = self.dims;
        let (qd, kvd) = (self.dims.qdim(), self.dims.kvdim());
        let kv_off = (hq / (nq / nkv)) * hd;
        let (scale, window) = (self.attn_scale, self.blocks[l].window);
        let t = past + n;
        let mut p = vec![0.0f32; n * t]; // [n, t] scores, then probabilities
                                         // S = Q_h K^T: Q_h is [n, hd] (row stride qd), K^T is [hd, t].
        gemm(
            n,
            t,
            hd,
            View {
                data: &q[r0 * qd + hq * hd..],
                rs: qd,
                cs: 1,
            },
            View {
                data: &cache.k[l][kv_off..],
                rs: 1,
                cs: kvd,
            },
            &mut p,
            t,
            false,
            false,
        );
        for (j, row) in p.chunks_mut(t).enumerate() {
            let qpos = past + j;
            let lo = window.map_or(0, |w| (qpos + 1).saturating_sub(w));
            for (c, val) in row.iter_mut().enumerate() {
                *val = if c > qpos || c < lo {
                    f32::NEG_INFINITY
                } else {
                    *val * scale
                };
            }
            kernels::softmax_inplace(row);
        }
        p
    }

    /// Causal attention of the new rows of every sequence over its cache (which already holds
    /// this step's keys/values at layer `l`; `counted`: its `len` counts them too, as after
    /// the forward, when the backward recomputes a block). Writes `att[N, Hq*hd]`.
    pub(super) fn attention(
        &self,
        l: usize,
        q: &[f32],
        lens: &[usize],
        caches: &[KvCache],
        att: &mut [f32],
        counted: bool,
    ) {
        let Dims { hd, nq, nkv, .. } = self.dims;
        let (qd, kvd) = (self.dims.qdim(), self.dims.kvdim());
        let group = nq / nkv;
        let mut starts = Vec::with_capacity(lens.len());
        let mut r0 = 0;
        for len in lens {
            starts.push(r0);
            r0 += len;
        }
        // One task per (sequence, query head): output [n, hd].
        let results: Vec<Vec<f32>> = (0..lens.len() * nq)
            .into_par_iter()
            .map(|task| {
                let (s, hq) = (task / nq, task % nq);
                let (n, r0) = (lens[s], starts[s]);
                let cache = &caches[s];
                let past = if counted { cache.len - n } else { cache.len };
                let t = past + n; // keys visible to the last new row
                let kv_off = (hq / group) * hd;
                let p = self.attn_probs(l, q, r0, n, past, cache, hq); // [n, t]
                let mut o = vec![0.0f32; n * hd]; // [n, hd] = P V
                gemm(
                    n,
                    hd,
                    t,
                    View::rm(&p, t),
                    View {
                        data: &cache.v[l][kv_off..],
                        rs: kvd,
                        cs: 1,
                    },
                    &mut o,
                    hd,
                    false,
                    false,
                );
                o
            })
            .collect();
        for (task, o) in results.into_iter().enumerate() {
            let (s, hq) = (task / nq, task % nq);
            for (j, orow) in o.chunks(hd).enumerate() {
                let r = starts[s] + j;
                att[r * qd + hq * hd..r * qd + (hq + 1) * hd].copy_from_slice(orow);
            }
        }
    }

    /// [`Self::attention`] in exact mode: each query row scores only its visible keys with
    /// [`kernels::dot`], a softmax over exactly those, and `sum_c p_c v_c` in key order, so a
    /// row's result does not depend on how many rows are computed with it.
    pub(super) fn attention_rows(
        &self,
        l: usize,
        q: &[f32],
        lens: &[usize],
        caches: &[KvCache],
        att: &mut [f32],
    ) {
        let Dims { hd, nq, nkv, .. } = self.dims;
        let (qd, kvd) = (self.dims.qdim(), self.dims.kvdim());
        let group = nq / nkv;
        let (scale, window) = (self.attn_scale, self.blocks[l].window);
        // (sequence, first packed row, row within the sequence) of every new row.
        let mut rows = Vec::with_capacity(att.len() / qd);
        let mut r0 = 0;
        for (s, &len) in lens.iter().enumerate() {
            rows.extend((0..len).map(|j| (s, r0 + j, j)));
            r0 += len;
        }
        att.par_chunks_mut(qd)
            .zip(rows)
            .for_each(|(out, (s, r, j))| {
                let cache = &caches[s];
                let qpos = cache.len + j; // this row's position; keys 0..=qpos are visible
                let lo = window.map_or(0, |w| (qpos + 1).saturating_sub(w));
                let mut p = vec![0.0f32; qpos + 1 - lo]; // [visible keys]
                for hq in 0..nq {
                    let kv_off = (hq / group) * hd;
                    let qh = &q[r * qd + hq * hd..r * qd + (hq + 1) * hd]; // [hd]
                    for (c, pc) in (lo..=qpos).zip(p.iter_mut()) {
                        *pc =
                            kernels::dot(qh, &cache.k[l][c * kvd + kv_off..c * kvd + kv_off + hd])
                                * scale;
                    }
                    kernels::softmax_inplace(&mut p);
                    let o = &mut out[hq * hd..(hq + 1) * hd]; // [hd]
                    o.fill(0.0);
                    for (c, &pc) in (lo..=qpos).zip(p.iter()) {
                        let vc = &cache.v[l][c * kvd + kv_off..c * kvd + kv_off + hd];
                        o.iter_mut().zip(vc).for_each(|(o, v)| *o += pc * v);
                    }
                }
            });
    }

    /// Attention backward (training). A sequence's cache holds `past` positions before its
    /// `n` new rows (a prefix prompt's keys and values, or nothing); the gradient w.r.t. those
    /// past keys/values is added into `dprefix[P, L*2*kvd]` (PEFT's prefix layout: layer `l`'s
    /// key at column block `2l`, value at `2l + 1`), summed over the sequences, when given.
    /// One task per (sequence, kv head) so the key/value gradients of a GQA group are summed
    /// in one place.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn attention_backward(
        &self,
        l: usize,
        t: &BlockTape,
        lens: &[(usize, usize)],
        caches: &[KvCache],
        datt: &[f32],
        dq: &mut [f32],
        dk: &mut [f32],
        dv: &mut [f32],
        dprefix: Option<&mut [f32]>,
    ) {
        let Dims { hd, nq, nkv, .. } = self.dims;
        let (qd, kvd) = (self.dims.qdim(), self.dims.kvdim());
        let group = nq / nkv;
        let scale = self.attn_scale;
        // Per task: dQ for each head of the group [group][n, hd], dK [past + n, hd],
        // dV [past + n, hd].
        let results: Vec<(Vec<Vec<f32>>, Vec<f32>, Vec<f32>)> = (0..lens.len() * nkv)
            .into_par_iter()
            .map(|task| {
                let (s, g) = (task / nkv, task % nkv);
                let (r0, n) = lens[s];
                let past = caches[s].len - n;
                let tk = past + n; // keys visible to the last row
                let kv_off = g * hd;
                let kmat = View {
                    data: &caches[s].k[l][kv_off..],
                    rs: kvd,
                    cs: 1,
                }; // [tk, hd]
                let vmat = View {
                    data: &caches[s].v[l][kv_off..],
                    rs: kvd,
                    cs: 1,
                }; // [tk, hd]
                let mut dkg = vec![0.0f32; tk * hd];
                let mut dvg = vec![0.0f32; tk * hd];
                let mut dqs = Vec::with_capacity(group);
                let mut dp = vec![0.0f32; n * tk]; // [n, tk]
                for hq in g * group..(g + 1) * group {
                    let p = &self.attn_probs(l, &t.q, r0, n, past, &caches[s], hq); // [n, tk]
                    let dout = View {
                        data: &datt[r0 * qd + hq * hd..],
                        rs: qd,
                        cs: 1,
                    }; // [n, hd]
                       // dV += P^T dO
                    gemm(tk, hd, n, View::t(p, tk), dout, &mut dvg, hd, true, false);
                    // dP = dO V^T
                    gemm(
                        n,
                        tk,
                        hd,
                        dout,
                        View {
                            data: vmat.data,
                            rs: 1,
                            cs: kvd,
                        },
                        &mut dp,
                        tk,
                        false,
                        false,
                    );
                    // dS = P * (dP - rowsum(dP * P)) * scale
                    for (prow, dprow) in p.chunks(tk).zip(dp.chunks_mut(tk)) {
                        let dot: f32 = prow.iter().zip(dprow.iter()).map(|(a, b)| a * b).sum();
                        for (x, &pv) in dprow.iter_mut().zip(prow) {
                            *x = pv * (*x - dot) * scale;
                        }
                    }
                    // dQ_h = dS K ; dK += dS^T Q_h
                    let mut dqh = vec![0.0f32; n * hd];
                    gemm(
                        n,
                        hd,
                        tk,
                        View::rm(&dp, tk),
                        kmat,
                        &mut dqh,
                        hd,
                        false,
                        false,
                    );
                    let qh = View {
                        data: &t.q[r0 * qd + hq * hd..],
                        rs: qd,
                        cs: 1,
                    };
                    gemm(tk, hd, n, View::t(&dp, tk), qh, &mut dkg, hd, true, false);
                    dqs.push(dqh);
                }
                (dqs, dkg, dvg)
            })
            .collect();
        let width = self.prefix_width();
        let mut dprefix = dprefix;
        for (task, (dqs, dkg, dvg)) in results.into_iter().enumerate() {
            let (s, g) = (task / nkv, task % nkv);
            let (r0, n) = lens[s];
            let past = caches[s].len - n;
            if let Some(dpre) = dprefix.as_deref_mut() {
                for i in 0..past {
                    let row = &mut dpre[i * width..(i + 1) * width];
                    let (ko, vo) = (2 * l * kvd + g * hd, (2 * l + 1) * kvd + g * hd);
                    for (o, x) in row[ko..ko + hd].iter_mut().zip(&dkg[i * hd..(i + 1) * hd]) {
                        *o += x;
                    }
                    for (o, x) in row[vo..vo + hd].iter_mut().zip(&dvg[i * hd..(i + 1) * hd]) {
                        *o += x;
                    }
                }
            }
            for j in 0..n {
                let (r, c) = (r0 + j, past + j);
                dk[r * kvd + g * hd..r * kvd + (g + 1) * hd]
                    .copy_from_slice(&dkg[c * hd..(c + 1) * hd]);
                dv[r * kvd + g * hd..r * kvd + (g + 1) * hd]
                    .copy_from_slice(&dvg[c * hd..(c + 1) * hd]);
                for (i, dqh) in dqs.iter().enumerate() {
                    let hq = g * group + i;
                    dq[r * qd + hq * hd..r * qd + (hq + 1) * hd]
                        .copy_from_slice(&dqh[j * hd..(j + 1) * hd]);
                }
            }
        }
    }
}
