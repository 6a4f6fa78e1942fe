//! What a forward keeps: the per-sequence KV cache, and the tape a training forward records
//! for the backward.

/// Keys and values of one sequence, per layer: `k[l]`, `v[l]` are `[len, Hkv*hd]`.
#[derive(Clone, Debug, Default)]
pub struct KvCache {
    pub k: Vec<Vec<f32>>,
    pub v: Vec<Vec<f32>>,
    pub len: usize,
}

impl KvCache {
    pub fn new(n_layers: usize) -> Self {
        KvCache {
            k: vec![Vec::new(); n_layers],
            v: vec![Vec::new(); n_layers],
            len: 0,
        }
    }

    /// The cache a prefix prompt `[P, L*2*kvd]` stands for: `P` positions whose keys and
    /// values at layer `l` are the row slices `2l` and `2l + 1` (PEFT's prefix layout).
    /// The caller has checked the width.
    pub fn from_prefix(prefix: &[f32], p: usize, n_layers: usize, kvd: usize) -> Self {
        let width = n_layers * 2 * kvd;
        let mut c = KvCache::new(n_layers);
        for row in prefix.chunks(width).take(p) {
            for l in 0..n_layers {
                c.k[l].extend_from_slice(&row[2 * l * kvd..(2 * l + 1) * kvd]);
                c.v[l].extend_from_slice(&row[(2 * l + 1) * kvd..(2 * l + 2) * kvd]);
            }
        }
        c.len = p;
        c
    }

    /// The first `p` positions as a prefix prompt `[p, L*2*kvd]` (the inverse of
    /// [`KvCache::from_prefix`]).
    pub fn to_prefix(&self, p: usize, kvd: usize) -> Vec<f32> {
        let n_layers = self.k.len();
        let mut out = Vec::with_capacity(p * n_layers * 2 * kvd);
        for i in 0..p {
            for l in 0..n_layers {
                out.extend_from_slice(&self.k[l][i * kvd..(i + 1) * kvd]);
                out.extend_from_slice(&self.v[l][i * kvd..(i + 1) * kvd]);
            }
        }
        out
    }
}

/// What the backward of one block needs (training only). A recomputing forward keeps only
/// `x_in`; the backward rebuilds the rest.
#[derive(Default)]
pub(super) struct BlockTape {
    pub(super) x_in: Vec<f32>,  // [N, D] block input (residual stream)
    pub(super) rstd1: Vec<f32>, // [N]
    pub(super) q: Vec<f32>,     // [N, Hq*hd] after RoPE
    pub(super) x_mid: Vec<f32>, // [N, D] after the attention residual
    pub(super) rstd2: Vec<f32>, // [N]
    pub(super) g: Vec<f32>,     // [N, F] gate pre-activation
    pub(super) u: Vec<f32>,     // [N, F] up projection
    // QK-norm: queries / keys before their norm and the norms' 1/rms (empty when unused).
    pub(super) q_pre: Vec<f32>,  // [N, Hq*hd]
    pub(super) rstd_q: Vec<f32>, // [N*Hq]
    pub(super) k_pre: Vec<f32>,  // [N, Hkv*hd]
    pub(super) rstd_k: Vec<f32>, // [N*Hkv]
    // Sandwich norms: the attention / MLP outputs before their post-norm (empty when unused).
    pub(super) attn_out: Vec<f32>, // [N, D]
    pub(super) rstd_pa: Vec<f32>,  // [N]
    pub(super) mlp_out: Vec<f32>,  // [N, D]
    pub(super) rstd_pm: Vec<f32>,  // [N]
    // Inputs of the linear layers, for weight gradients (empty unless a full forward).
    pub(super) h1: Vec<f32>, // [N, D] attention norm output (input of Wq, Wk, Wv)
    pub(super) att: Vec<f32>, // [N, Hq*hd] attention output (input of Wo)
    pub(super) h2: Vec<f32>, // [N, D] MLP norm output (input of Wg, Wu)
    pub(super) a: Vec<f32>,  // [N, F] act(g) * u (input of Wd)
}

/// Activations recorded by a training forward.
pub struct Tape {
    pub(super) blocks: Vec<BlockTape>,
    /// The blocks keep only their input ([`super::Llama::recompute`]).
    pub(super) recompute: bool,
    pub(super) x_final: Vec<f32>, // [N, D] residual stream after the last block
    pub(super) rstd_final: Vec<f32>, // [N]
    /// Final hidden states after the last norm: `[N, D]` (what the LM head reads).
    pub hidden: Vec<f32>,
    pub(super) lens: Vec<usize>,
    pub(super) pos: Vec<usize>,
}
