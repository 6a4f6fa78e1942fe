//! Nearest vocabulary tokens of many vectors at once (cosine and L2), token-norm
//! statistics, and cosine similarity between prompt vectors.

use rayon::prelude::*;

use super::{Hit, Nearest, NormStats};
use crate::compute::kernels;
use crate::{Error, Result, Tensor};

/// Candidates beyond k that are re-scored exactly (guards against f32 rounding in the
/// matrix product reordering near-ties).
pub(super) const RESCORE_EXTRA: usize = 8;

/// Vectors per matrix product: bounds the `[rows, V]` score buffer.
pub(super) const ROW_CHUNK: usize = 64;

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

pub(super) fn dims(t: &Tensor, what: &str) -> Result<(usize, usize)> {
    match t.shape.as_slice() {
        [r, c] => Ok((*r, *c)),
        s => Err(Error::Input(format!("{what} must be 2-D, got shape {s:?}"))),
    }
}

/// Exact (f64) cosine and distance of two vectors.
pub(super) fn exact(a: &[f32], b: &[f32]) -> (f32, f32) {
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
