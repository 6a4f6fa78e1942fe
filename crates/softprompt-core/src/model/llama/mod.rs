//! The Llama family (Llama, SmolLM2, Mistral, Qwen2, Qwen3, Gemma 3): GQA, RoPE, RMSNorm,
//! SwiGLU or GELU-tanh gated MLP, tied or untied embeddings, optional q/k/v bias.
//!
//! Config-driven extras: per-head query/key RMSNorm before RoPE (Qwen3, Gemma 3); Gemma 3's
//! "sandwich" norms (a second RMSNorm on the output of attention and of the MLP, before the
//! residual add), its (1+w) RMSNorm weights (stored here as the effective multiplier 1+w),
//! token embeddings scaled by sqrt(hidden) (soft-prompt rows are not), attention scale
//! `query_pre_attn_scalar^-0.5`, and per-layer sliding-window ("local", own RoPE base) or
//! global attention.
//!
//! The forward pass runs on a *packed* batch: the rows of all sequences are stacked into one
//! `[N, D]` matrix (no padding anywhere) and attention runs per sequence. Every sequence has
//! its own [`KvCache`]; a sequence's new rows sit at positions `cache.len ..`. The same forward
//! serves scoring, generation (cache kept between calls) and training (a [`Tape`] records what
//! the backward needs).
//!
//! The backward computes the gradient with respect to the input embeddings (what prompt
//! tuning needs): no weight gradient, so a linear layer's backward is one product `dy @ W`
//! and its input need not be kept. It is the forward read in reverse, layer by layer.
//! Full fine-tuning (the `compare` command) opts in to weight gradients: a forward that also
//! keeps every linear layer's input ([`Llama::forward_full`]) and the same backward with a
//! [`grads::Grads`] accumulator, which adds `dW += dy^T @ x` beside every `dy @ W`
//! (see `llama/grads.rs`).
//!
//! Files: `build.rs` binds Hugging Face weight names to blocks (and makes random test
//! models), `cache.rs` holds the KV cache and the training tape, `forward.rs` the packed
//! forward and the LM head, `attention.rs` causal attention and its backward, `backward.rs`
//! the input-gradient backward, `loss.rs` the losses and prompt gradients built on them,
//! `grads.rs` the weight gradients of full fine-tuning.

mod attention;
mod backward;
mod build;
mod cache;
mod forward;
pub mod grads;
mod loss;

pub use build::random_weights;
pub use cache::{KvCache, Tape};
pub use loss::prompt_grad;

use crate::compute::bf16::PackedBf16;
use crate::compute::kernels::Rope;
use crate::compute::weight::Weight;
use crate::model::input::SeqInput;
use crate::model::LlamaConfig;
use crate::Result;

/// One decoder block's weights, HF layout (`[out, in]` for linear layers).
struct Block {
    attn_norm: Vec<f32>,  // [D]
    wq: Weight,           // [Hq*hd, D]
    wk: Weight,           // [Hkv*hd, D]
    wv: Weight,           // [Hkv*hd, D]
    bq: Option<Vec<f32>>, // [Hq*hd]
    bk: Option<Vec<f32>>, // [Hkv*hd]
    bv: Option<Vec<f32>>, // [Hkv*hd]
    wo: Weight,           // [D, Hq*hd]
    mlp_norm: Vec<f32>,   // [D]
    wg: Weight,           // [F, D]
    wu: Weight,           // [F, D]
    wd: Weight,           // [D, F]
    /// Per-head RMSNorm of queries / keys before RoPE (Qwen3, Gemma 3): `[hd]` each.
    q_norm: Option<Vec<f32>>,
    k_norm: Option<Vec<f32>>,
    /// Gemma 3 sandwich norms on the attention / MLP outputs: `[D]` each.
    post_attn_norm: Option<Vec<f32>>,
    post_mlp_norm: Option<Vec<f32>>,
    /// Keys older than this many positions are masked (Mistral; Gemma 3 local layers).
    window: Option<usize>,
    /// Uses the local RoPE table (Gemma 3 sliding-window layers).
    local_rope: bool,
}

impl Block {
    /// The block's vectors (norm weights, biases), the ones it has.
    fn vectors(&self) -> impl Iterator<Item = &Vec<f32>> {
        [&self.attn_norm, &self.mlp_norm].into_iter().chain(
            [
                &self.bq,
                &self.bk,
                &self.bv,
                &self.q_norm,
                &self.k_norm,
                &self.post_attn_norm,
                &self.post_mlp_norm,
            ]
            .into_iter()
            .flatten(),
        )
    }
}

/// MLP activation of the gated MLP: `act(g) * u`.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Act {
    Silu,
    GeluTanh,
}

/// Sizes used everywhere below.
#[derive(Clone, Copy, Debug)]
pub struct Dims {
    pub d: usize,     // hidden size
    pub hd: usize,    // head dim
    pub nq: usize,    // query heads
    pub nkv: usize,   // key/value heads
    pub f: usize,     // MLP intermediate size
    pub vocab: usize, // vocabulary rows of the embedding table
}

impl Dims {
    pub fn qdim(&self) -> usize {
        self.nq * self.hd
    }
    pub fn kvdim(&self) -> usize {
        self.nkv * self.hd
    }
}

pub struct Llama {
    pub cfg: LlamaConfig,
    pub dims: Dims,
    /// Token embeddings `[V, D]`.
    pub embed: Weight,
    /// Output projection `[V, D]`; `None` when tied to `embed`.
    lm_head: Option<Weight>,
    norm: Vec<f32>, // [D]
    blocks: Vec<Block>,
    rope: Rope,
    /// RoPE of the sliding-window layers when its base differs (Gemma 3).
    rope_local: Option<Rope>,
    eps: f32,
    /// Multiplier of token embedding rows at the input (Gemma: sqrt(hidden); else 1).
    embed_scale: f32,
    /// Attention score scale (1/sqrt(head_dim), or query_pre_attn_scalar^-0.5).
    attn_scale: f32,
    act: Act,
    /// Batch-invariant inference: every matrix product and attention row is computed in a
    /// fixed order per row, so a sequence's outputs are bit-identical whatever else shares
    /// its batch and whether its prefix came from a cache (the server sets this). Slower
    /// than the blocked GEMM for long prefills; training ignores it.
    pub exact: bool,
    /// Training keeps only each block's input and recomputes the block in the backward:
    /// the tape shrinks from about `2D + Hq*hd + 2F` values per row and block to `D`, for one
    /// more forward of the blocks. Gradients are bit-identical either way.
    pub recompute: bool,
}

impl Llama {
    /// `y[m, n] (+)= x[m, k] @ w[n, k]^T` on the kernel this model's mode asks for.
    fn linear(&self, x: &[f32], w: &Weight, m: usize, y: &mut [f32], acc: bool) {
        w.linear(x, m, y, acc, self.exact);
    }

    /// Multiplier applied to token embedding rows at the input (sqrt(hidden) for Gemma, else
    /// 1). Soft-prompt rows enter as stored; to start a prompt from token `t`, use
    /// `embed.row(t) * embed_scale()` ([`Llama::input_rows`]).
    pub fn embed_scale(&self) -> f32 {
        self.embed_scale
    }

    /// The input embeddings of tokens `ids` as the model sees them: `[ids.len(), D]`.
    pub fn input_rows(&self, ids: &[u32]) -> Result<Vec<f32>> {
        let (x, _) = self.embed_batch(&[SeqInput { prompt: None, ids }])?;
        Ok(x)
    }

    fn rope_of(&self, b: &Block) -> &Rope {
        match (&self.rope_local, b.local_rope) {
            (Some(r), true) => r,
            _ => &self.rope,
        }
    }

    pub fn n_layers(&self) -> usize {
        self.blocks.len()
    }

    /// Longest sequence (virtual + real tokens) the model accepts.
    pub fn max_positions(&self) -> usize {
        self.rope.max_pos
    }

    /// The output projection `[V, D]` (the embedding table when tied).
    pub fn lm_head(&self) -> &Weight {
        self.lm_head.as_ref().unwrap_or(&self.embed)
    }

    /// Round every f32 matrix to bf16, packed for AMX ([`WeightFormat::Bf16`]).
    ///
    /// [`WeightFormat::Bf16`]: crate::compute::weight::WeightFormat::Bf16
    pub fn pack_bf16(&mut self) {
        let pack = |w: &mut Weight| {
            if let Weight::F32(t) = w {
                *w = Weight::Bf16(PackedBf16::pack(&t.data, t.shape[0], t.shape[1]));
            }
        };
        for b in &mut self.blocks {
            for w in [
                &mut b.wq, &mut b.wk, &mut b.wv, &mut b.wo, &mut b.wg, &mut b.wu, &mut b.wd,
            ] {
                pack(w);
            }
        }
        // The token table too: input rows are read back from the packed copy (rounded to
        // bf16 like every other weight), and a tied LM head is that same copy.
        pack(&mut self.embed);
        if let Some(h) = &mut self.lm_head {
            pack(h);
        }
    }

    /// Bytes the frozen weights hold in memory.
    pub fn weight_bytes(&self) -> usize {
        let mut total = 0;
        self.for_each_matrix(|_, w| total += w.bytes());
        let vecs: usize = self
            .blocks
            .iter()
            .map(|b| b.vectors().map(|v| v.len()).sum::<usize>())
            .sum();
        total + (vecs + self.norm.len()) * 4
    }

    /// Visit every matrix (name, weight) in a fixed order.
    pub fn for_each_matrix(&self, mut f: impl FnMut(&str, &Weight)) {
        f("embed", &self.embed);
        if let Some(h) = &self.lm_head {
            f("lm_head", h);
        }
        for b in &self.blocks {
            for (n, w) in [
                ("wq", &b.wq),
                ("wk", &b.wk),
                ("wv", &b.wv),
                ("wo", &b.wo),
                ("wg", &b.wg),
                ("wu", &b.wu),
                ("wd", &b.wd),
            ] {
                f(n, w);
            }
        }
    }

    /// Visit every weight (name, values as f32, in row chunks) in a fixed order.
    pub fn for_each_weight(&self, mut f: impl FnMut(&str, &[f32])) {
        self.embed.for_each_rows(|_, v| f("embed", v));
        f("norm", &self.norm);
        if let Some(h) = &self.lm_head {
            h.for_each_rows(|_, v| f("lm_head", v));
        }
        for b in &self.blocks {
            let opt = |x: &Option<Vec<f32>>| x.as_deref().unwrap_or(&[]).to_vec();
            f("attn_norm", &b.attn_norm);
            for (n, w) in [("wq", &b.wq), ("wk", &b.wk), ("wv", &b.wv), ("wo", &b.wo)] {
                w.for_each_rows(|_, v| f(n, v));
            }
            f("mlp_norm", &b.mlp_norm);
            for (n, w) in [("wg", &b.wg), ("wu", &b.wu), ("wd", &b.wd)] {
                w.for_each_rows(|_, v| f(n, v));
            }
            for (n, w) in [
                ("bq", &opt(&b.bq)),
                ("bk", &opt(&b.bk)),
                ("bv", &opt(&b.bv)),
                ("q_norm", &opt(&b.q_norm)),
                ("k_norm", &opt(&b.k_norm)),
                ("post_attn_norm", &opt(&b.post_attn_norm)),
                ("post_mlp_norm", &opt(&b.post_mlp_norm)),
            ] {
                f(n, w);
            }
        }
    }

    pub fn num_parameters(&self) -> usize {
        let b: usize = self
            .blocks
            .iter()
            .map(|b| {
                [&b.wq, &b.wk, &b.wv, &b.wo, &b.wg, &b.wu, &b.wd]
                    .iter()
                    .map(|w| w.numel())
                    .sum::<usize>()
                    + b.vectors().map(|v| v.len()).sum::<usize>()
            })
            .sum();
        b + self.embed.numel() + self.norm.len() + self.lm_head.as_ref().map_or(0, |t| t.numel())
    }
}
