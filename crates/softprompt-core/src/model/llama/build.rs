//! Building a [`Llama`] from weights under Hugging Face names (every shape checked), its
//! RoPE tables (from [`LlamaConfig::rope`]), and random weights for tests.

use std::collections::HashMap;

use super::{Act, Block, Dims, Llama};
use crate::compute::kernels::Rope;
use crate::compute::weight::Weight;
use crate::model::config::LayerKind;
use crate::model::LlamaConfig;
use crate::{Error, Result, Tensor};

/// Largest RoPE table built up front; longer contexts are refused with a clear error.
const MAX_ROPE_TABLE: usize = 32768;

impl Llama {
    /// Bind HF weight names to blocks, checking every shape.
    pub fn new(cfg: LlamaConfig, weights: HashMap<String, Tensor>, source: &str) -> Result<Self> {
        Self::with_matrices(cfg, weights, HashMap::new(), source)
    }

    /// Like [`Llama::new`], with some matrices already in their final form (`quant`, HF
    /// names: GGUF blocks or packed bf16).
    pub fn with_matrices(
        cfg: LlamaConfig,
        mut weights: HashMap<String, Tensor>,
        mut quant: HashMap<String, Weight>,
        source: &str,
    ) -> Result<Self> {
        cfg.check().map_err(|m| Error::unsupported(source, m))?;
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
            if let Some(w) = quant.remove(name) {
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
        let rope_of = |kind: LayerKind| -> Result<Rope> {
            let spec = cfg.rope(kind).map_err(|m| Error::unsupported(source, m))?;
            let (inv_freq, attention_factor) = spec.inv_freq(hd);
            Ok(Rope::new(inv_freq, max_pos, attention_factor))
        };
        let rope = rope_of(LayerKind::Full)?;
        let rope_local = if blocks.iter().any(|b| b.local_rope) {
            Some(rope_of(LayerKind::Sliding)?)
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
            recompute: false,
        })
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
