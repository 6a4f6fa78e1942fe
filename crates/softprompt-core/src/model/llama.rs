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

pub mod grads;

use std::collections::HashMap;

use rayon::prelude::*;

use self::grads::{dw_acc, rmsnorm_dw, BlockGrads, Grads};
use crate::compute::bf16::PackedBf16;
use crate::compute::kernels::{self, gemm, rmsnorm, rmsnorm_backward, Rope, View};
use crate::compute::weight::{QMatrix, Weight};
use crate::model::LlamaConfig;
use crate::{Error, Result, Tensor};

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
}

/// What the backward of one block needs (training only).
struct BlockTape {
    x_in: Vec<f32>,  // [N, D] block input (residual stream)
    rstd1: Vec<f32>, // [N]
    q: Vec<f32>,     // [N, Hq*hd] after RoPE
    x_mid: Vec<f32>, // [N, D] after the attention residual
    rstd2: Vec<f32>, // [N]
    g: Vec<f32>,     // [N, F] gate pre-activation
    u: Vec<f32>,     // [N, F] up projection
    // QK-norm: queries / keys before their norm and the norms' 1/rms (empty when unused).
    q_pre: Vec<f32>,  // [N, Hq*hd]
    rstd_q: Vec<f32>, // [N*Hq]
    k_pre: Vec<f32>,  // [N, Hkv*hd]
    rstd_k: Vec<f32>, // [N*Hkv]
    // Sandwich norms: the attention / MLP outputs before their post-norm (empty when unused).
    attn_out: Vec<f32>, // [N, D]
    rstd_pa: Vec<f32>,  // [N]
    mlp_out: Vec<f32>,  // [N, D]
    rstd_pm: Vec<f32>,  // [N]
    // Inputs of the linear layers, for weight gradients (empty unless a full forward).
    h1: Vec<f32>,  // [N, D] attention norm output (input of Wq, Wk, Wv)
    att: Vec<f32>, // [N, Hq*hd] attention output (input of Wo)
    h2: Vec<f32>,  // [N, D] MLP norm output (input of Wg, Wu)
    a: Vec<f32>,   // [N, F] act(g) * u (input of Wd)
}

/// Activations recorded by a training forward.
pub struct Tape {
    blocks: Vec<BlockTape>,
    x_final: Vec<f32>,    // [N, D] residual stream after the last block
    rstd_final: Vec<f32>, // [N]
    /// Final hidden states after the last norm: `[N, D]` (what the LM head reads).
    pub hidden: Vec<f32>,
    lens: Vec<usize>,
    pos: Vec<usize>,
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
}

/// One sequence of a packed batch: optional soft prompt rows, then token ids.
pub struct SeqInput<'a> {
    pub prompt: Option<&'a [f32]>, // [P, D]
    pub ids: &'a [u32],
}

/// One training example: token ids and loss terms `(t, weight)`, each
/// `-weight * log p(ids[t] | prompt, ids[<t])`.
#[derive(Clone, Debug)]
pub struct Example {
    pub ids: Vec<u32>,
    pub targets: Vec<(usize, f32)>,
}

/// A loss term: `-weight * log p(token | everything before row)` read at packed row `row`.
#[derive(Clone, Copy, Debug)]
pub struct Target {
    pub row: usize,
    pub token: u32,
    pub weight: f32,
}

/// inv_freq as transformers computes it (f32), with `linear` / `llama3` scaling
/// (`scaled = false`: the plain table of base `theta`, as Gemma 3's local layers use).
fn rope_inv_freq(cfg: &LlamaConfig, hd: usize, theta: f64, scaled: bool) -> Result<Vec<f32>> {
    let theta = theta as f32;
    let mut inv: Vec<f32> = (0..hd / 2)
        .map(|i| 1.0 / theta.powf((2 * i) as f32 / hd as f32))
        .collect();
    let Some(sc) = cfg.rope_scaling.as_ref().filter(|v| !v.is_null() && scaled) else {
        return Ok(inv);
    };
    let kind = sc
        .get("rope_type")
        .or_else(|| sc.get("type"))
        .and_then(|v| v.as_str())
        .unwrap_or("default");
    let num = |k: &str| sc.get(k).and_then(|v| v.as_f64());
    match kind {
        "default" => {}
        "linear" => {
            let f = num("factor")
                .ok_or_else(|| Error::unsupported("rope_scaling", "linear without factor"))?
                as f32;
            inv.iter_mut().for_each(|x| *x /= f);
        }
        "llama3" => {
            let (Some(f), Some(lo), Some(hi), Some(old)) = (
                num("factor"),
                num("low_freq_factor"),
                num("high_freq_factor"),
                num("original_max_position_embeddings"),
            ) else {
                return Err(Error::unsupported(
                    "rope_scaling",
                    "llama3 scaling with missing fields",
                ));
            };
            let (lo_wl, hi_wl) = (old / lo, old / hi);
            for x in inv.iter_mut() {
                let fr = *x as f64;
                let wl = 2.0 * std::f64::consts::PI / fr;
                let new = if wl < hi_wl {
                    fr
                } else if wl > lo_wl {
                    fr / f
                } else {
                    let s = (old / wl - lo) / (hi - lo);
                    (1.0 - s) * fr / f + s * fr
                };
                *x = new as f32;
            }
        }
        other => {
            return Err(Error::unsupported(
                "rope_scaling",
                format!("rope type '{other}'"),
            ))
        }
    }
    Ok(inv)
}

/// Largest RoPE table built up front; longer contexts are refused with a clear error.
const MAX_ROPE_TABLE: usize = 32768;

impl Llama {
    /// Bind HF weight names to blocks, checking every shape.
    pub fn new(cfg: LlamaConfig, weights: HashMap<String, Tensor>, source: &str) -> Result<Self> {
        Self::with_quantized(cfg, weights, HashMap::new(), source)
    }

    /// Like [`Llama::new`], with some matrices kept in GGUF blocks (`quant`, HF names).
    pub fn with_quantized(
        cfg: LlamaConfig,
        mut weights: HashMap<String, Tensor>,
        mut quant: HashMap<String, QMatrix>,
        source: &str,
    ) -> Result<Self> {
        let hd = cfg.head_dim();
        let dims = Dims {
            d: cfg.hidden_size,
            hd,
            nq: cfg.num_attention_heads,
            nkv: cfg.num_kv_heads(),
            f: cfg.intermediate_size,
            vocab: cfg.vocab_size,
        };
        if dims.nq == 0 || dims.nkv == 0 || dims.nq % dims.nkv != 0 || hd % 2 != 0 {
            return Err(Error::format(
                source,
                format!(
                    "bad head counts: {} query, {} kv, head_dim {hd}",
                    dims.nq, dims.nkv
                ),
            ));
        }
        let act = match cfg.activation() {
            "silu" => Act::Silu,
            "gelu_pytorch_tanh" | "gelu_tanh" => Act::GeluTanh,
            other => {
                return Err(Error::unsupported(
                    source,
                    format!("hidden activation '{other}' (only silu and gelu_pytorch_tanh)"),
                ))
            }
        };
        for (name, v) in [
            ("final_logit_softcapping", cfg.final_logit_softcapping),
            ("attn_logit_softcapping", cfg.attn_logit_softcapping),
        ] {
            if v.is_some() {
                return Err(Error::unsupported(
                    source,
                    format!("{name} (Gemma 2 style soft-capping is not implemented)"),
                ));
            }
        }
        let gemma = cfg.is_gemma3();
        // Gemma stores RMSNorm weights as w and multiplies by (1 + w).
        let norm_w = |mut w: Vec<f32>| {
            if gemma {
                w.iter_mut().for_each(|x| *x += 1.0);
            }
            w
        };
        let mut take = |name: &str, shape: &[usize]| -> Result<Vec<f32>> {
            let t = weights
                .remove(name)
                .ok_or_else(|| Error::format(source, format!("missing tensor {name}")))?;
            if t.shape != shape {
                return Err(Error::format(
                    source,
                    format!("tensor {name} has shape {:?}, expected {shape:?}", t.shape),
                ));
            }
            Ok(t.data)
        };
        // A matrix, from the quantized set when it is there.
        let mut take_w = |take: &mut dyn FnMut(&str, &[usize]) -> Result<Vec<f32>>,
                          name: &str,
                          shape: [usize; 2]|
         -> Result<Weight> {
            if let Some(q) = quant.remove(name) {
                let w = Weight::Quant(q);
                if [w.rows(), w.cols()] != shape {
                    return Err(Error::format(
                        source,
                        format!(
                            "tensor {name} has shape {:?}, expected {shape:?}",
                            [w.rows(), w.cols()]
                        ),
                    ));
                }
                return Ok(w);
            }
            Ok(Weight::F32(Tensor::new(
                shape.to_vec(),
                take(name, &shape)?,
            )))
        };
        let (d, qd, kvd, f) = (dims.d, dims.qdim(), dims.kvdim(), dims.f);
        let embed = take_w(&mut take, "model.embed_tokens.weight", [dims.vocab, d])?;
        let norm = norm_w(take("model.norm.weight", &[d])?);
        let mut blocks = Vec::with_capacity(cfg.num_hidden_layers);
        let bias = cfg.qkv_bias();
        let sliding = cfg.sliding_window.filter(|&w| w > 0);
        for l in 0..cfg.num_hidden_layers {
            let p = format!("model.layers.{l}");
            let is_sliding = sliding.is_some() && cfg.is_sliding_layer(l);
            let (mlp_norm_name, post_attn, post_mlp) = if gemma {
                (
                    format!("{p}.pre_feedforward_layernorm.weight"),
                    Some(norm_w(take(
                        &format!("{p}.post_attention_layernorm.weight"),
                        &[d],
                    )?)),
                    Some(norm_w(take(
                        &format!("{p}.post_feedforward_layernorm.weight"),
                        &[d],
                    )?)),
                )
            } else {
                (format!("{p}.post_attention_layernorm.weight"), None, None)
            };
            let (q_norm, k_norm) = if cfg.qk_norm() {
                (
                    Some(norm_w(take(
                        &format!("{p}.self_attn.q_norm.weight"),
                        &[hd],
                    )?)),
                    Some(norm_w(take(
                        &format!("{p}.self_attn.k_norm.weight"),
                        &[hd],
                    )?)),
                )
            } else {
                (None, None)
            };
            blocks.push(Block {
                q_norm,
                k_norm,
                post_attn_norm: post_attn,
                post_mlp_norm: post_mlp,
                window: if is_sliding { sliding } else { None },
                local_rope: gemma && is_sliding,
                attn_norm: norm_w(take(&format!("{p}.input_layernorm.weight"), &[d])?),
                wq: take_w(&mut take, &format!("{p}.self_attn.q_proj.weight"), [qd, d])?,
                wk: take_w(&mut take, &format!("{p}.self_attn.k_proj.weight"), [kvd, d])?,
                wv: take_w(&mut take, &format!("{p}.self_attn.v_proj.weight"), [kvd, d])?,
                bq: if bias {
                    Some(take(&format!("{p}.self_attn.q_proj.bias"), &[qd])?)
                } else {
                    None
                },
                bk: if bias {
                    Some(take(&format!("{p}.self_attn.k_proj.bias"), &[kvd])?)
                } else {
                    None
                },
                bv: if bias {
                    Some(take(&format!("{p}.self_attn.v_proj.bias"), &[kvd])?)
                } else {
                    None
                },
                wo: take_w(&mut take, &format!("{p}.self_attn.o_proj.weight"), [d, qd])?,
                mlp_norm: norm_w(take(&mlp_norm_name, &[d])?),
                wg: take_w(&mut take, &format!("{p}.mlp.gate_proj.weight"), [f, d])?,
                wu: take_w(&mut take, &format!("{p}.mlp.up_proj.weight"), [f, d])?,
                wd: take_w(&mut take, &format!("{p}.mlp.down_proj.weight"), [d, f])?,
            });
        }
        let lm_head = if cfg.tie_word_embeddings {
            // Some checkpoints store the tied copy too; it is the same matrix.
            weights.remove("lm_head.weight");
            quant.remove("lm_head.weight");
            None
        } else {
            Some(take_w(&mut take, "lm_head.weight", [dims.vocab, d])?)
        };
        if !weights.is_empty() || !quant.is_empty() {
            let mut left: Vec<&String> = weights.keys().chain(quant.keys()).collect();
            left.sort();
            left.truncate(5);
            return Err(Error::unsupported(
                source,
                format!("tensors this architecture does not use (e.g. {left:?})"),
            ));
        }
        let max_pos = cfg.max_position_embeddings.min(MAX_ROPE_TABLE);
        let rope = Rope::new(
            rope_inv_freq(&cfg, hd, cfg.rope_theta_global(), true)?,
            max_pos,
        );
        let rope_local = if blocks.iter().any(|b| b.local_rope) {
            Some(Rope::new(
                rope_inv_freq(&cfg, hd, cfg.rope_theta_local(), false)?,
                max_pos,
            ))
        } else {
            None
        };
        let embed_scale = if gemma {
            (cfg.hidden_size as f64).sqrt() as f32
        } else {
            1.0
        };
        let attn_scale = match cfg.query_pre_attn_scalar {
            Some(s) if s > 0.0 => (1.0 / s.sqrt()) as f32,
            Some(s) => {
                return Err(Error::format(
                    source,
                    format!("query_pre_attn_scalar must be positive, got {s}"),
                ))
            }
            None => 1.0 / (hd as f32).sqrt(),
        };
        Ok(Llama {
            rope_local,
            embed_scale,
            attn_scale,
            act,
            eps: cfg.rms_norm_eps as f32,
            cfg,
            dims,
            embed,
            lm_head,
            norm,
            blocks,
            rope,
            exact: false,
        })
    }

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

    /// Input embeddings of a packed batch: `[N, D]` and the rows per sequence.
    pub fn embed_batch(&self, seqs: &[SeqInput]) -> Result<(Vec<f32>, Vec<usize>)> {
        let d = self.dims.d;
        let mut lens = Vec::with_capacity(seqs.len());
        let total: usize = seqs
            .iter()
            .map(|s| s.prompt.map_or(0, |p| p.len() / d) + s.ids.len())
            .sum();
        let mut x = Vec::with_capacity(total * d);
        for s in seqs {
            let mut n = 0;
            if let Some(p) = s.prompt {
                if p.len() % d != 0 {
                    return Err(Error::Mismatch(format!(
                        "soft prompt of {} values is not a multiple of hidden size {d}",
                        p.len()
                    )));
                }
                x.extend_from_slice(p);
                n += p.len() / d;
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

    fn forward_impl(
        &self,
        x: &mut [f32],
        lens: &[usize],
        caches: &mut [KvCache],
        record: bool,
        full: bool,
    ) -> Result<Option<Tape>> {
        let keep = |v: &[f32]| if full { v.to_vec() } else { Vec::new() };
        let Dims { d, nq, nkv, f, .. } = self.dims;
        let (qd, kvd) = (self.dims.qdim(), self.dims.kvdim());
        let n: usize = lens.iter().sum();
        assert_eq!(x.len(), n * d, "forward: x is not [N, D]");
        assert_eq!(lens.len(), caches.len(), "forward: one cache per sequence");
        // Position of every packed row.
        let mut pos = Vec::with_capacity(n);
        for (len, c) in lens.iter().zip(caches.iter()) {
            if record && c.len != 0 {
                return Err(Error::Input("training forward needs empty caches".into()));
            }
            if c.len + len > self.max_positions() {
                return Err(Error::Input(format!(
                    "sequence of {} positions exceeds the model's context of {}",
                    c.len + len,
                    self.max_positions()
                )));
            }
            pos.extend(c.len..c.len + len);
        }
        let mut tapes = Vec::new();
        let mut h = vec![0.0; n * d]; // [N, D] normed input of a sub-layer
        let mut rstd = vec![0.0; n]; // [N]
        let mut q = vec![0.0; n * qd]; // [N, Hq*hd]
        let mut k = vec![0.0; n * kvd]; // [N, Hkv*hd]
        let mut v = vec![0.0; n * kvd]; // [N, Hkv*hd]
        let mut att = vec![0.0; n * qd]; // [N, Hq*hd]
        let mut g = vec![0.0; n * f]; // [N, F]
        let mut u = vec![0.0; n * f]; // [N, F]
        let mut a = vec![0.0; n * f]; // [N, F]
        let sandwich = self.blocks.iter().any(|b| b.post_attn_norm.is_some());
        // [N, D] a sub-layer's output before its post-norm (Gemma 3 only)
        let mut o = if sandwich {
            vec![0.0; n * d]
        } else {
            Vec::new()
        };
        for (l, b) in self.blocks.iter().enumerate() {
            let x_in = if record { Some(x.to_vec()) } else { None };
            // --- attention ---
            rmsnorm(x, &b.attn_norm, self.eps, &mut h, &mut rstd);
            let rstd1 = if record { Some(rstd.clone()) } else { None };
            self.linear(&h, &b.wq, n, &mut q, false);
            self.linear(&h, &b.wk, n, &mut k, false);
            self.linear(&h, &b.wv, n, &mut v, false);
            add_bias(&mut q, b.bq.as_deref());
            add_bias(&mut k, b.bk.as_deref());
            add_bias(&mut v, b.bv.as_deref());
            let (q_pre, rstd_q) = self.head_norm(&mut q, b.q_norm.as_deref(), record);
            let (k_pre, rstd_k) = self.head_norm(&mut k, b.k_norm.as_deref(), record);
            let rope = self.rope_of(b);
            rope.apply(&mut q, nq, &pos, false);
            rope.apply(&mut k, nkv, &pos, false);
            let mut r0 = 0;
            for (len, c) in lens.iter().zip(caches.iter_mut()) {
                c.k[l].extend_from_slice(&k[r0 * kvd..(r0 + len) * kvd]);
                c.v[l].extend_from_slice(&v[r0 * kvd..(r0 + len) * kvd]);
                r0 += len;
            }
            if self.exact && !record {
                self.attention_rows(l, &q, lens, caches, &mut att);
            } else {
                self.attention(l, &q, lens, caches, &mut att);
            }
            let (h1, att_in) = (keep(&h), keep(&att));
            // x += post_norm(att @ Wo^T), or x += att @ Wo^T without a sandwich norm
            let (attn_out, rstd_pa) =
                self.residual_out(x, &att, &b.wo, b.post_attn_norm.as_deref(), &mut o, record);
            let x_mid = if record { Some(x.to_vec()) } else { None };
            // --- MLP ---
            rmsnorm(x, &b.mlp_norm, self.eps, &mut h, &mut rstd);
            self.linear(&h, &b.wg, n, &mut g, false);
            self.linear(&h, &b.wu, n, &mut u, false);
            match self.act {
                Act::Silu => kernels::swiglu(&g, &u, &mut a),
                Act::GeluTanh => kernels::geglu_tanh(&g, &u, &mut a),
            }
            let (h2, a_in) = (keep(&h), keep(&a));
            // x += post_norm(a @ Wd^T), or x += a @ Wd^T
            let (mlp_out, rstd_pm) =
                self.residual_out(x, &a, &b.wd, b.post_mlp_norm.as_deref(), &mut o, record);
            if record {
                tapes.push(BlockTape {
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
                });
            }
        }
        for c in caches.iter_mut().zip(lens) {
            c.0.len += c.1;
        }
        let x_final = if record { Some(x.to_vec()) } else { None };
        rmsnorm(x, &self.norm, self.eps, &mut h, &mut rstd);
        x.copy_from_slice(&h);
        Ok(x_final.map(|x_final| Tape {
            blocks: tapes,
            x_final,
            rstd_final: rstd,
            hidden: h,
            lens: lens.to_vec(),
            pos,
        }))
    }

    /// Per-head RMSNorm in place over `x[N, heads*hd]` (QK-norm); with `record`, returns the
    /// input and the 1/rms per (row, head) for the backward. A no-op without weights.
    fn head_norm(&self, x: &mut [f32], w: Option<&[f32]>, record: bool) -> (Vec<f32>, Vec<f32>) {
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
    fn residual_out(
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

    /// Attention probabilities `[n, past + n]` of query head `hq` for the `n` rows of one
    /// sequence at packed rows `r0..r0 + n` of `q[N, Hq*hd]`, positions `past..past + n`, over
    /// the keys of `cache` (causal, sliding window where the layer has one). The backward
    /// recomputes them from the recorded `q` rather than keeping `[n, n]` per head and layer.
    #[allow(clippy::too_many_arguments)]
    fn attn_probs(
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
    /// this step's keys/values). Writes `att[N, Hq*hd]`.
    fn attention(&self, l: usize, q: &[f32], lens: &[usize], caches: &[KvCache], att: &mut [f32]) {
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
                let t = cache.len + n; // keys visible to the last new row
                let past = cache.len;
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
    fn attention_rows(
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

    fn loss_head_impl(
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
                if let Some(dw) = dw_head.as_deref_mut() {
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

    /// Backward from `d_hidden[N, D]` (gradient w.r.t. the final hidden states) to the input
    /// embeddings: returns `dx[N, D]`. `caches` are those filled by the recording forward.
    pub fn backward(&self, tape: &Tape, caches: &[KvCache], d_hidden: &[f32]) -> Vec<f32> {
        kernels::in_pool(|| self.backward_impl(tape, caches, d_hidden, None))
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
            self.backward_impl(tape, caches, d_hidden, Some(grads))
        }))
    }

    fn backward_impl(
        &self,
        tape: &Tape,
        caches: &[KvCache],
        d_hidden: &[f32],
        mut grads: Option<&mut Grads>,
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
        for (l, (b, t)) in self.blocks.iter().zip(&tape.blocks).enumerate().rev() {
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
            self.attention_backward(l, t, &starts, caches, &datt, &mut dq, &mut dk, &mut dv);
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

    /// Attention backward for sequences with no past (training). One task per
    /// (sequence, kv head) so the key/value gradients of a GQA group are summed in one place.
    #[allow(clippy::too_many_arguments)]
    fn attention_backward(
        &self,
        l: usize,
        t: &BlockTape,
        lens: &[(usize, usize)],
        caches: &[KvCache],
        datt: &[f32],
        dq: &mut [f32],
        dk: &mut [f32],
        dv: &mut [f32],
    ) {
        let Dims { hd, nq, nkv, .. } = self.dims;
        let (qd, kvd) = (self.dims.qdim(), self.dims.kvdim());
        let group = nq / nkv;
        let scale = self.attn_scale;
        // Per task: dQ for each head of the group [group][n, hd], dK [n, hd], dV [n, hd].
        let results: Vec<(Vec<Vec<f32>>, Vec<f32>, Vec<f32>)> = (0..lens.len() * nkv)
            .into_par_iter()
            .map(|task| {
                let (s, g) = (task / nkv, task % nkv);
                let (r0, n) = lens[s];
                let kv_off = g * hd;
                let kmat = View {
                    data: &caches[s].k[l][kv_off..],
                    rs: kvd,
                    cs: 1,
                }; // [n, hd]
                let vmat = View {
                    data: &caches[s].v[l][kv_off..],
                    rs: kvd,
                    cs: 1,
                }; // [n, hd]
                let mut dkg = vec![0.0f32; n * hd];
                let mut dvg = vec![0.0f32; n * hd];
                let mut dqs = Vec::with_capacity(group);
                let mut dp = vec![0.0f32; n * n]; // [n, n]
                for hq in g * group..(g + 1) * group {
                    let p = &self.attn_probs(l, &t.q, r0, n, 0, &caches[s], hq); // [n, n]
                    let dout = View {
                        data: &datt[r0 * qd + hq * hd..],
                        rs: qd,
                        cs: 1,
                    }; // [n, hd]
                       // dV += P^T dO
                    gemm(n, hd, n, View::t(p, n), dout, &mut dvg, hd, true, false);
                    // dP = dO V^T
                    gemm(
                        n,
                        n,
                        hd,
                        dout,
                        View {
                            data: vmat.data,
                            rs: 1,
                            cs: kvd,
                        },
                        &mut dp,
                        n,
                        false,
                        false,
                    );
                    // dS = P * (dP - rowsum(dP * P)) * scale
                    for (prow, dprow) in p.chunks(n).zip(dp.chunks_mut(n)) {
                        let dot: f32 = prow.iter().zip(dprow.iter()).map(|(a, b)| a * b).sum();
                        for (x, &pv) in dprow.iter_mut().zip(prow) {
                            *x = pv * (*x - dot) * scale;
                        }
                    }
                    // dQ_h = dS K ; dK += dS^T Q_h
                    let mut dqh = vec![0.0f32; n * hd];
                    gemm(n, hd, n, View::rm(&dp, n), kmat, &mut dqh, hd, false, false);
                    let qh = View {
                        data: &t.q[r0 * qd + hq * hd..],
                        rs: qd,
                        cs: 1,
                    };
                    gemm(n, hd, n, View::t(&dp, n), qh, &mut dkg, hd, true, false);
                    dqs.push(dqh);
                }
                (dqs, dkg, dvg)
            })
            .collect();
        for (task, (dqs, dkg, dvg)) in results.into_iter().enumerate() {
            let (s, g) = (task / nkv, task % nkv);
            let (r0, n) = lens[s];
            for j in 0..n {
                let r = r0 + j;
                dk[r * kvd + g * hd..r * kvd + (g + 1) * hd]
                    .copy_from_slice(&dkg[j * hd..(j + 1) * hd]);
                dv[r * kvd + g * hd..r * kvd + (g + 1) * hd]
                    .copy_from_slice(&dvg[j * hd..(j + 1) * hd]);
                for (i, dqh) in dqs.iter().enumerate() {
                    let hq = g * group + i;
                    dq[r * qd + hq * hd..r * qd + (hq + 1) * hd]
                        .copy_from_slice(&dqh[j * hd..(j + 1) * hd]);
                }
            }
        }
    }

    /// Loss and gradient w.r.t. the input embeddings of a packed batch.
    /// Returns `(loss, dx[N, D], lens)`.
    pub fn loss_and_input_grad(
        &self,
        seqs: &[SeqInput],
        targets: &[Target],
    ) -> Result<(f64, Vec<f32>, Vec<usize>)> {
        let (mut x, lens) = self.embed_batch(seqs)?;
        let n = x.len() / self.dims.d;
        check_targets(targets, n, self.dims.vocab)?;
        let mut caches: Vec<KvCache> = lens.iter().map(|_| KvCache::new(self.n_layers())).collect();
        let tape = self
            .forward(&mut x, &lens, &mut caches, true)?
            .ok_or_else(|| Error::Input("no tape".into()))?;
        let (nll, dh) = self.loss_head(&tape.hidden, targets, true);
        let loss = weighted(&nll, targets);
        let dx = self.backward(&tape, &caches, &dh);
        Ok((loss, dx, lens))
    }

    /// Packed targets for examples that share one soft prompt of `p` rows.
    fn prompt_targets(batch: &[Example], p: usize) -> Result<Vec<Target>> {
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

    /// Loss and d loss / d prompt for a batch sharing the soft prompt `prompt[P, D]`:
    /// the gradient is the input-embedding gradient at positions 0..P-1, summed over the batch.
    pub fn prompt_loss_and_grad(
        &self,
        prompt: &[f32],
        batch: &[Example],
    ) -> Result<(f64, Vec<f32>)> {
        let d = self.dims.d;
        let p = prompt.len() / d;
        let targets = Self::prompt_targets(batch, p)?;
        let seqs: Vec<SeqInput> = batch
            .iter()
            .map(|e| SeqInput {
                prompt: Some(prompt),
                ids: &e.ids,
            })
            .collect();
        let (loss, dx, lens) = self.loss_and_input_grad(&seqs, &targets)?;
        Ok((loss, prompt_grad(&dx, &lens, p, d)))
    }

    /// Loss of a batch sharing the soft prompt (no backward).
    pub fn prompt_loss(&self, prompt: &[f32], batch: &[Example]) -> Result<f64> {
        let p = prompt.len() / self.dims.d;
        let targets = Self::prompt_targets(batch, p)?;
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
        let mut caches: Vec<KvCache> = lens.iter().map(|_| KvCache::new(self.n_layers())).collect();
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

/// Backward of an optional post-norm `y = rmsnorm(o)`: with a norm, writes `d o` into
/// `scratch` and returns it; without, returns `dy` itself.
fn post_norm_backward<'a>(
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
fn head_norm_backward(dx: &mut [f32], w: Option<&[f32]>, pre: &[f32], rstd: &[f32]) {
    let Some(w) = w else {
        return;
    };
    let dy = dx.to_vec();
    dx.fill(0.0);
    rmsnorm_backward(pre, w, rstd, &dy, dx);
}

fn weighted(nll: &[f64], targets: &[Target]) -> f64 {
    nll.iter()
        .zip(targets)
        .map(|(l, t)| l * t.weight as f64)
        .sum()
}

fn check_targets(targets: &[Target], n: usize, vocab: usize) -> Result<()> {
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

fn add_bias(x: &mut [f32], b: Option<&[f32]>) {
    if let Some(b) = b {
        x.par_chunks_mut(b.len())
            .for_each(|row| row.iter_mut().zip(b).for_each(|(x, b)| *x += b));
    }
}

/// A tiny random model for tests and gradient checks (weights under HF names).
pub fn random_weights(cfg: &LlamaConfig, seed: u64) -> HashMap<String, Tensor> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let hd = cfg.head_dim();
    let (d, f, v) = (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size);
    let (qd, kvd) = (cfg.num_attention_heads * hd, cfg.num_kv_heads() * hd);
    let mut w = HashMap::new();
    let mut put = |name: String, shape: Vec<usize>, scale: f32, offset: f32| {
        let n = shape.iter().product();
        let data = (0..n)
            .map(|_| offset + scale * (rng.gen::<f32>() * 2.0 - 1.0))
            .collect();
        w.insert(name, Tensor::new(shape, data));
    };
    let gemma = cfg.is_gemma3();
    // Gemma's norms hold w of a (1 + w) multiplier: random around 0 instead of around 1.
    let norm_off = if gemma { 0.0 } else { 1.0 };
    put("model.embed_tokens.weight".into(), vec![v, d], 1.0, 0.0);
    put("model.norm.weight".into(), vec![d], 0.2, norm_off);
    if !cfg.tie_word_embeddings {
        put("lm_head.weight".into(), vec![v, d], 0.3, 0.0);
    }
    let s = 1.0 / (d as f32).sqrt();
    for l in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{l}");
        put(
            format!("{p}.input_layernorm.weight"),
            vec![d],
            0.2,
            norm_off,
        );
        put(
            format!("{p}.post_attention_layernorm.weight"),
            vec![d],
            0.2,
            norm_off,
        );
        if gemma {
            for n in ["pre_feedforward_layernorm", "post_feedforward_layernorm"] {
                put(format!("{p}.{n}.weight"), vec![d], 0.2, norm_off);
            }
        }
        if cfg.qk_norm() {
            put(
                format!("{p}.self_attn.q_norm.weight"),
                vec![hd],
                0.2,
                norm_off,
            );
            put(
                format!("{p}.self_attn.k_norm.weight"),
                vec![hd],
                0.2,
                norm_off,
            );
        }
        put(
            format!("{p}.self_attn.q_proj.weight"),
            vec![qd, d],
            2.0 * s,
            0.0,
        );
        put(
            format!("{p}.self_attn.k_proj.weight"),
            vec![kvd, d],
            2.0 * s,
            0.0,
        );
        put(format!("{p}.self_attn.v_proj.weight"), vec![kvd, d], s, 0.0);
        put(format!("{p}.self_attn.o_proj.weight"), vec![d, qd], s, 0.0);
        if cfg.qkv_bias() {
            put(format!("{p}.self_attn.q_proj.bias"), vec![qd], 0.1, 0.0);
            put(format!("{p}.self_attn.k_proj.bias"), vec![kvd], 0.1, 0.0);
            put(format!("{p}.self_attn.v_proj.bias"), vec![kvd], 0.1, 0.0);
        }
        put(format!("{p}.mlp.gate_proj.weight"), vec![f, d], s, 0.0);
        put(format!("{p}.mlp.up_proj.weight"), vec![f, d], s, 0.0);
        put(
            format!("{p}.mlp.down_proj.weight"),
            vec![d, f],
            1.0 / (f as f32).sqrt(),
            0.0,
        );
    }
    w
}
