//! GGUF model files (llama.cpp's format): reader, dequantization, tokenizer, and the
//! translation of a Llama-family GGUF into [`LoadedWeights`] under Hugging Face names.
//!
//! - [`GgufFile`] validates and memory-maps the container (v2/v3) — see `reader.rs`.
//! - [`crate::compute::quant`] turns every supported GGML block type into f32.
//! - [`config_from_gguf`] reads the `{arch}.*` metadata into a [`LlamaConfig`] — see
//!   `config.rs`.
//! - [`tokenizer_from_gguf`] rebuilds a byte-level BPE `tokenizers::Tokenizer`.
//! - [`load_gguf`] builds a [`LlamaConfig`] from `{arch}.*` metadata, dequantizes all
//!   tensors in parallel, renames them to HF names and undoes llama.cpp's Q/K row
//!   permutation (llama/mistral only), exactly like transformers' GGUF loader.

mod config;
mod reader;
mod tokenizer;
mod value;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use rayon::prelude::*;

pub use config::config_from_gguf;
pub use reader::{GgufFile, GgufTensorInfo, DEFAULT_ALIGNMENT, MAX_DIMS};
pub use tokenizer::tokenizer_from_gguf;
pub use value::{GgufArray, GgufValue};

use super::LoadedWeights;
use crate::compute::quant::GgmlType;
use crate::compute::weight::{QMatrix, Weight, WeightFormat};
use crate::model::LlamaConfig;
use crate::{Error, Result, Tensor};

/// Load a Llama-family GGUF: config from metadata, f32 weights under HF names (`[out, in]`
/// row-major), tokenizer from `tokenizer.ggml.*`.
pub fn load_gguf(path: &Path) -> Result<LoadedWeights> {
    load_gguf_with(path, WeightFormat::F32)
}

/// [`load_gguf`]; with [`WeightFormat::Quantized`] the matrices stored in a block type stay
/// in it ([`LoadedWeights::quantized`]) and only vectors and f32 matrices are f32.
pub fn load_gguf_with(path: &Path, format: WeightFormat) -> Result<LoadedWeights> {
    let gguf = GgufFile::open(path)?;
    let config = config_from_gguf(&gguf)?;
    let keep = format == WeightFormat::Quantized;
    let (tokenizer, weights) = rayon::join(
        || tokenizer_from_gguf(&gguf),
        || load_weights(&gguf, &config, format),
    );
    let (tokenizer, (weights, matrices)) = (tokenizer?, weights?);
    let tok_vocab = tokenizer.get_vocab_size(true);
    if tok_vocab > config.vocab_size {
        return Err(Error::format(
            path,
            format!(
                "the tokenizer has {tok_vocab} tokens but token_embd.weight only {} rows",
                config.vocab_size
            ),
        ));
    }
    Ok(LoadedWeights {
        config,
        weights,
        matrices,
        tokenizer,
        source: path.display().to_string(),
        stored_dtype: if keep {
            stored_dtype(&gguf).replace("dequantized to f32", "matrices kept quantized")
        } else {
            stored_dtype(&gguf)
        },
        chat_template: gguf.opt_str("tokenizer.chat_template")?.map(String::from),
    })
}

/// "GGUF Q4_1+Q8_0+F32, dequantized to f32": the GGML types present, most elements first.
pub fn stored_dtype(gguf: &GgufFile) -> String {
    let mut counts: BTreeMap<GgmlType, usize> = BTreeMap::new();
    for t in gguf.tensors() {
        *counts.entry(t.ggml_type).or_default() += t.numel();
    }
    let mut v: Vec<(GgmlType, usize)> = counts.into_iter().collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let names: Vec<&str> = v.iter().map(|(t, _)| t.name()).collect();
    format!("GGUF {}, dequantized to f32", names.join("+"))
}

/// Which HF tensor a GGUF tensor becomes, and whether its rows need un-permuting.
#[derive(Debug, PartialEq)]
struct Mapped {
    hf: String,
    /// `Some(n_head)` for llama.cpp-permuted attn_q / attn_k (weight or bias).
    unpermute_heads: Option<usize>,
    /// Expected row-major shape.
    shape: Vec<usize>,
}

/// Map a GGUF tensor name to its HF name and expected shape. `Ok(None)` for tensors that
/// carry no weight of their own (`rope_freqs.weight`, consumed by the config).
fn map_tensor(name: &str, c: &LlamaConfig) -> std::result::Result<Option<Mapped>, String> {
    let (h, v, ffn, hd) = (
        c.hidden_size,
        c.vocab_size,
        c.intermediate_size,
        c.head_dim(),
    );
    let (nq, nkv) = (c.num_attention_heads, c.num_kv_heads());
    // llama.cpp permutes Q/K rows only for the Llama / Mistral converters.
    let permuted = matches!(c.model_type.as_str(), "llama" | "mistral");
    let gemma = c.is_gemma3();
    let plain = |hf: String, shape: Vec<usize>| {
        Ok(Some(Mapped {
            hf,
            unpermute_heads: None,
            shape,
        }))
    };
    match name {
        "token_embd.weight" => return plain("model.embed_tokens.weight".into(), vec![v, h]),
        "output_norm.weight" => return plain("model.norm.weight".into(), vec![h]),
        "output.weight" => return plain("lm_head.weight".into(), vec![v, h]),
        "rope_freqs.weight" => return Ok(None),
        _ => {}
    }
    let unknown = || {
        Err(format!(
            "tensor {name:?} is not part of a {} model softprompt understands",
            c.model_type
        ))
    };
    let Some(rest) = name.strip_prefix("blk.") else {
        return unknown();
    };
    let Some((layer_str, rest)) = rest.split_once('.') else {
        return unknown();
    };
    let Ok(layer) = layer_str.parse::<usize>() else {
        return unknown();
    };
    if layer.to_string() != layer_str {
        return unknown(); // "blk.01.", "blk.+1."
    }
    if layer >= c.num_hidden_layers {
        return Err(format!(
            "tensor {name:?} is outside the {} blocks of the model",
            c.num_hidden_layers
        ));
    }
    let Some((part, kind)) = rest.rsplit_once('.') else {
        return unknown();
    };
    let bias = match kind {
        "weight" => false,
        "bias" => true,
        _ => return unknown(),
    };
    // (HF module, weight shape, permute heads); biases have shape [rows].
    let (module, wshape, heads): (&str, Vec<usize>, Option<usize>) = match part {
        "attn_norm" if !bias => ("input_layernorm", vec![h], None),
        "ffn_norm" if !bias && gemma => ("pre_feedforward_layernorm", vec![h], None),
        "ffn_norm" if !bias => ("post_attention_layernorm", vec![h], None),
        "post_attention_norm" if !bias && gemma => ("post_attention_layernorm", vec![h], None),
        "post_ffw_norm" if !bias && gemma => ("post_feedforward_layernorm", vec![h], None),
        "attn_q_norm" if !bias && c.qk_norm() => ("self_attn.q_norm", vec![hd], None),
        "attn_k_norm" if !bias && c.qk_norm() => ("self_attn.k_norm", vec![hd], None),
        "attn_q" => ("self_attn.q_proj", vec![nq * hd, h], permuted.then_some(nq)),
        "attn_k" => (
            "self_attn.k_proj",
            vec![nkv * hd, h],
            permuted.then_some(nkv),
        ),
        "attn_v" => ("self_attn.v_proj", vec![nkv * hd, h], None),
        "attn_output" => ("self_attn.o_proj", vec![h, nq * hd], None),
        "ffn_gate" => ("mlp.gate_proj", vec![ffn, h], None),
        "ffn_up" => ("mlp.up_proj", vec![ffn, h], None),
        "ffn_down" => ("mlp.down_proj", vec![h, ffn], None),
        _ => return unknown(),
    };
    let shape = if bias { vec![wshape[0]] } else { wshape };
    Ok(Some(Mapped {
        hf: format!("model.layers.{layer}.{module}.{kind}"),
        unpermute_heads: heads,
        shape,
    }))
}

/// GGUF names every Llama-family file must contain for this config.
fn required_tensors(c: &LlamaConfig) -> Vec<String> {
    let mut v = vec![
        "token_embd.weight".to_string(),
        "output_norm.weight".to_string(),
    ];
    for l in 0..c.num_hidden_layers {
        for p in [
            "attn_norm",
            "attn_q",
            "attn_k",
            "attn_v",
            "attn_output",
            "ffn_norm",
            "ffn_gate",
            "ffn_up",
            "ffn_down",
        ] {
            v.push(format!("blk.{l}.{p}.weight"));
        }
        if c.qkv_bias() {
            for p in ["attn_q", "attn_k", "attn_v"] {
                v.push(format!("blk.{l}.{p}.bias"));
            }
        }
        if c.qk_norm() {
            for p in ["attn_q_norm", "attn_k_norm"] {
                v.push(format!("blk.{l}.{p}.weight"));
            }
        }
        if c.is_gemma3() {
            for p in ["post_attention_norm", "post_ffw_norm"] {
                v.push(format!("blk.{l}.{p}.weight"));
            }
        }
    }
    v
}

/// Undo llama.cpp's Q/K row permutation (transformers' `reverse_permute`):
/// `w.reshape(n_head, rows/n_head/2, 2, cols).swapaxes(1, 2).reshape(rows, cols)`.
/// Within head h of size `hd`, HF row `h·hd + j·hd/2 + i` is GGUF row `h·hd + 2i + j`
/// (i < hd/2, j ∈ {0, 1}). `w` is `[rows, cols]` row-major; a bias is `cols = 1`.
pub fn unpermute_qk(w: &[f32], n_head: usize, rows: usize, cols: usize) -> Vec<f32> {
    let hd = rows / n_head;
    let mut out = vec![0f32; w.len()];
    for dst in 0..rows {
        let src = qk_gguf_row(dst, hd);
        out[dst * cols..(dst + 1) * cols].copy_from_slice(&w[src * cols..(src + 1) * cols]);
    }
    out
}

/// The GGUF row holding HF row `r` of a permuted Q/K matrix with heads of `hd` rows.
fn qk_gguf_row(r: usize, hd: usize) -> usize {
    let (h, w) = (r / hd, r % hd);
    let (j, i) = (w / (hd / 2), w % (hd / 2));
    h * hd + 2 * i + j
}

/// Dequantize every tensor (in parallel), rename to HF, un-permute Q/K. With `keep_quant`,
/// matrices in a non-f32 type are returned as [`QMatrix`] instead (rows un-permuted).
fn load_weights(
    g: &GgufFile,
    c: &LlamaConfig,
    format: WeightFormat,
) -> Result<(HashMap<String, Tensor>, HashMap<String, Weight>)> {
    let keep_quant = format == WeightFormat::Quantized;
    let path = g.path();
    let mut plan = Vec::with_capacity(g.tensors().len());
    for info in g.tensors() {
        let Some(m) = map_tensor(&info.name, c)
            .map_err(|e| Error::unsupported(path.display().to_string(), e))?
        else {
            continue;
        };
        if info.shape() != m.shape {
            return Err(Error::format(
                path,
                format!(
                    "tensor {} has shape {:?}, expected {:?} from the metadata",
                    info.name,
                    info.shape(),
                    m.shape
                ),
            ));
        }
        // (For attn_q / attn_k the shape check guarantees heads × head_dim rows, and the
        // config check an even head_dim, which is all `unpermute_qk` needs.)
        plan.push((info, m));
    }
    for name in required_tensors(c) {
        if g.tensor_info(&name).is_none() {
            return Err(Error::format(path, format!("missing tensor {name}")));
        }
    }
    // Big tensors first so the parallel loop does not end on a straggler.
    plan.sort_by_key(|(info, _)| std::cmp::Reverse(info.n_bytes));
    let (quant_plan, plan): (Vec<_>, Vec<_>) = plan.into_iter().partition(|(info, _)| {
        keep_quant && info.shape().len() == 2 && info.ggml_type != GgmlType::F32
    });
    let mut matrices = quant_plan
        .into_par_iter()
        .map(|(info, m)| {
            let shape = info.shape();
            let q = QMatrix::new(
                info.ggml_type,
                shape[0],
                shape[1],
                g.tensor_bytes(info).to_vec(),
            )
            .map_err(|e| Error::format(path, format!("tensor {}: {e}", info.name)))?;
            let q = match m.unpermute_heads {
                Some(n_head) => q.permute_rows(|r| qk_gguf_row(r, shape[0] / n_head)),
                None => q,
            };
            Ok((m.hf, Weight::Quant(q)))
        })
        .collect::<Result<HashMap<_, _>>>()?;
    let weights = plan
        .into_par_iter()
        .map(|(info, m)| {
            let mut t = g.dequantize_info(info);
            if let Some(n_head) = m.unpermute_heads {
                let rows = t.shape[0];
                let cols = if t.shape.len() == 2 { t.shape[1] } else { 1 };
                t.data = unpermute_qk(&t.data, n_head, rows, cols);
            }
            // llama.cpp stores Gemma's RMSNorm weights as 1 + w; HF names hold w.
            if c.is_gemma3() && m.hf.ends_with("norm.weight") {
                t.data.iter_mut().for_each(|x| *x -= 1.0);
            }
            let t = super::finish(format, &m.hf, t);
            (m.hf, t)
        })
        .collect::<Vec<_>>();
    Ok((super::sort(weights, &mut matrices), matrices))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpermute_small() {
        // One head of size 4 (rows r0..r3), 2 columns: HF order is rows 0, 2, 1, 3.
        let w: Vec<f32> = (0..8).map(|x| x as f32).collect(); // row r = [2r, 2r+1]
        assert_eq!(
            unpermute_qk(&w, 1, 4, 2),
            vec![0., 1., 4., 5., 2., 3., 6., 7.]
        );
        // Two heads of 6 rows each, as a bias (cols = 1): per head [0, 2, 4, 1, 3, 5].
        let b: Vec<f32> = (0..12).map(|x| x as f32).collect();
        assert_eq!(
            unpermute_qk(&b, 2, 12, 1),
            vec![0., 2., 4., 1., 3., 5., 6., 8., 10., 7., 9., 11.]
        );
    }
}
