//! GGUF model files (llama.cpp's format): reader, dequantization, tokenizer, and the
//! translation of a Llama-family GGUF into [`LoadedWeights`] under Hugging Face names.
//!
//! - [`GgufFile`] validates and memory-maps the container (v2/v3) — see `reader.rs`.
//! - [`crate::compute::quant`] turns every supported GGML block type into f32.
//! - [`tokenizer_from_gguf`] rebuilds a byte-level BPE `tokenizers::Tokenizer`.
//! - [`load_gguf`] builds a [`LlamaConfig`] from `{arch}.*` metadata, dequantizes all
//!   tensors in parallel, renames them to HF names and undoes llama.cpp's Q/K row
//!   permutation (llama/mistral only), exactly like transformers' GGUF loader.

mod reader;
mod tokenizer;
mod value;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use rayon::prelude::*;

pub use reader::{GgufFile, GgufTensorInfo, DEFAULT_ALIGNMENT, MAX_DIMS};
pub use tokenizer::tokenizer_from_gguf;
pub use value::{GgufArray, GgufValue};

use super::LoadedWeights;
use crate::compute::quant::GgmlType;
use crate::compute::weight::{QMatrix, WeightFormat};
use crate::model::config::TokenIds;
use crate::model::LlamaConfig;
use crate::{Error, Result, Tensor};

/// GGUF `general.architecture` values loaded as the Llama family, with their HF class.
const SUPPORTED_ARCHS: [(&str, &str); 5] = [
    ("llama", "LlamaForCausalLM"),
    ("mistral", "MistralForCausalLM"),
    ("qwen2", "Qwen2ForCausalLM"),
    ("qwen3", "Qwen3ForCausalLM"),
    ("gemma3", "Gemma3ForCausalLM"),
];

/// llama.cpp's Gemma 3 constants that the GGUF does not record: every 6th layer is global,
/// the local layers use RoPE base 10000.
const GEMMA3_SLIDING_PATTERN: usize = 6;
const GEMMA3_LOCAL_ROPE_BASE: f64 = 10000.0;

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
        || load_weights(&gguf, &config, keep),
    );
    let (tokenizer, (weights, quantized)) = (tokenizer?, weights?);
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
        quantized,
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

/// The shortest decimal that rounds to this f32, as f64 (`1e-5f32` → `1e-5`, not
/// `9.999999747378752e-6`), so configs read like their HF originals.
fn f32_decimal(x: f32) -> f64 {
    x.to_string().parse::<f64>().unwrap_or(x as f64)
}

/// Translate `{arch}.*` and `tokenizer.ggml.*` metadata into an HF-style [`LlamaConfig`].
/// Fails with `Unsupported` for non-Llama architectures and features softprompt lacks.
pub fn config_from_gguf(g: &GgufFile) -> Result<LlamaConfig> {
    let path = g.path();
    let what = path.display().to_string();
    let arch = g.architecture()?;
    let hf_class = match SUPPORTED_ARCHS.iter().find(|(a, _)| *a == arch) {
        Some((_, c)) => *c,
        None => {
            return Err(Error::unsupported(
                what,
                format!(
                    "architecture {arch} is not supported yet (supported: llama, mistral, qwen2, qwen3, gemma3)"
                ),
            ))
        }
    };
    let key = |k: &str| format!("{arch}.{k}");
    let err = |msg: String| Error::format(path, msg);

    let hidden = g.get_usize(&key("embedding_length"))?;
    let n_layers = g.get_usize(&key("block_count"))?;
    let ffn = g.get_usize(&key("feed_forward_length"))?;
    let n_heads = g.get_usize(&key("attention.head_count"))?;
    let n_kv = g
        .opt_usize(&key("attention.head_count_kv"))?
        .unwrap_or(n_heads);
    if hidden == 0 || n_layers == 0 || ffn == 0 || n_heads == 0 || n_kv == 0 {
        return Err(err(format!(
            "zero size in metadata (embedding {hidden}, blocks {n_layers}, ffn {ffn}, heads {n_heads}, kv heads {n_kv})"
        )));
    }
    if n_heads % n_kv != 0 {
        return Err(err(format!(
            "{n_heads} attention heads are not a multiple of {n_kv} kv heads"
        )));
    }
    let key_len = g.opt_usize(&key("attention.key_length"))?;
    let value_len = g.opt_usize(&key("attention.value_length"))?;
    if let (Some(k), Some(v)) = (key_len, value_len) {
        if k != v {
            return Err(Error::unsupported(
                what,
                format!("attention key length {k} differs from value length {v}"),
            ));
        }
    }
    let head_dim = match key_len {
        Some(k) => k,
        None if hidden % n_heads == 0 => hidden / n_heads,
        None => {
            return Err(err(format!(
                "embedding length {hidden} is not a multiple of {n_heads} heads"
            )))
        }
    };
    if head_dim == 0 || head_dim % 2 != 0 {
        return Err(err(format!(
            "head size {head_dim} must be even and non-zero for RoPE"
        )));
    }
    if let Some(rd) = g.opt_usize(&key("rope.dimension_count"))? {
        if rd != head_dim {
            return Err(Error::unsupported(
                what,
                format!("partial rotary embedding ({rd} of {head_dim} head dims)"),
            ));
        }
    }
    let rms_norm_eps = f32_decimal(g.get_f32(&key("attention.layer_norm_rms_epsilon"))?);
    let rope_theta = g
        .opt_f32(&key("rope.freq_base"))?
        .map(f32_decimal)
        .unwrap_or(10000.0);
    let max_pos = g.opt_usize(&key("context_length"))?.unwrap_or(2048);
    let rope_scaling = rope_scaling(g, arch, head_dim, rope_theta)?;

    let embd = g
        .tensor_info("token_embd.weight")
        .ok_or_else(|| err("missing tensor token_embd.weight".into()))?;
    // ggml ne = [hidden, vocab].
    let vocab_size = match embd.dims.as_slice() {
        [h, v] if *h as usize == hidden => *v as usize,
        d => {
            return Err(err(format!(
                "token_embd.weight has dims {d:?}, expected [{hidden}, vocab]"
            )))
        }
    };
    if let Some(n) = g.opt_usize(&key("vocab_size"))? {
        if n != vocab_size {
            return Err(err(format!(
                "{arch}.vocab_size = {n} but token_embd.weight has {vocab_size} rows"
            )));
        }
    }
    let token_id = |k: &str| -> Result<Option<u32>> {
        match g.opt_usize(k)? {
            Some(id) if id < vocab_size => Ok(Some(id as u32)),
            Some(id) => Err(err(format!(
                "{k} = {id} is outside the vocabulary of {vocab_size}"
            ))),
            None => Ok(None),
        }
    };

    let gemma = arch == "gemma3";
    let sliding_window = g.opt_usize(&key("attention.sliding_window"))?;
    let act = if gemma { "gelu_pytorch_tanh" } else { "silu" };
    // `{arch}.attention.sliding_window_pattern`: every n-th layer global, or one bool per
    // layer (true = sliding); llama.cpp's Gemma 3 default is every 6th.
    let pattern_key = key("attention.sliding_window_pattern");
    let sliding: Vec<bool> = match g.get(&pattern_key) {
        None => (0..n_layers)
            .map(|l| (l + 1) % GEMMA3_SLIDING_PATTERN != 0)
            .collect(),
        Some(GgufValue::Array(GgufArray::Bool(v))) if v.len() == n_layers => v.clone(),
        Some(_) => match g.opt_usize(&pattern_key) {
            Ok(Some(n)) if n > 0 => (0..n_layers).map(|l| (l + 1) % n != 0).collect(),
            _ => {
                return Err(err(format!(
                    "{pattern_key} must be a positive integer or {n_layers} booleans"
                )))
            }
        },
    };
    let layer_types = (gemma && sliding_window.is_some()).then(|| {
        sliding
            .iter()
            .map(|&s| {
                if s {
                    "sliding_attention".to_string()
                } else {
                    "full_attention".to_string()
                }
            })
            .collect()
    });
    let local_base = match g.opt_f32(&key("rope.freq_base_swa"))? {
        Some(b) => f32_decimal(b),
        None => GEMMA3_LOCAL_ROPE_BASE,
    };
    for k in ["attn_logit_softcapping", "final_logit_softcapping"] {
        if let Some(v) = g.opt_f32(&key(k))? {
            if v != 0.0 {
                return Err(Error::unsupported(
                    what,
                    format!("{arch}.{k} = {v} (soft-capping is not implemented)"),
                ));
            }
        }
    }

    Ok(LlamaConfig {
        architectures: Some(vec![hf_class.to_string()]),
        model_type: if gemma { "gemma3_text" } else { arch }.to_string(),
        hidden_size: hidden,
        intermediate_size: ffn,
        num_hidden_layers: n_layers,
        num_attention_heads: n_heads,
        num_key_value_heads: Some(n_kv),
        head_dim: key_len,
        vocab_size,
        rms_norm_eps,
        rope_theta,
        rope_scaling,
        max_position_embeddings: max_pos,
        tie_word_embeddings: g.tensor_info("output.weight").is_none(),
        attention_bias: g.tensor_info("blk.0.attn_q.bias").is_some(),
        hidden_act: act.into(),
        bos_token_id: token_id("tokenizer.ggml.bos_token_id")?,
        eos_token_id: token_id("tokenizer.ggml.eos_token_id")?.map(TokenIds::One),
        pad_token_id: token_id("tokenizer.ggml.padding_token_id")?,
        sliding_window,
        hidden_activation: gemma.then(|| act.to_string()),
        // llama.cpp: 1/sqrt(head_dim) for every Gemma 3 size but 27B (which transformers'
        // config spells as query_pre_attn_scalar = hidden/heads).
        query_pre_attn_scalar: gemma.then_some(head_dim as f64),
        rope_local_base_freq: gemma.then_some(local_base),
        layer_types,
        sliding_window_pattern: None,
        final_logit_softcapping: None,
        attn_logit_softcapping: None,
        rope_parameters: None,
        original_max_position_embeddings: None,
        partial_rotary_factor: None,
        use_sliding_window: None,
        max_window_layers: None,
        mlp_bias: None,
        use_bidirectional_attention: None,
        attention_dropout: None,
    })
}

/// HF `rope_scaling` from `{arch}.rope.scaling.*` (linear) or a Llama 3 `rope_freqs.weight`.
fn rope_scaling(
    g: &GgufFile,
    arch: &str,
    head_dim: usize,
    theta: f64,
) -> Result<Option<serde_json::Value>> {
    let what = || g.path().display().to_string();
    let k = |s: &str| format!("{arch}.rope.scaling.{s}");
    let ty = g.opt_str(&k("type"))?;
    let factor = g.opt_f32(&k("factor"))?;
    // llama.cpp settings with no transformers counterpart: refused unless neutral.
    for (name, neutral) in [
        ("attn_factor", 1.0),
        ("yarn_log_multiplier", 0.0),
        ("yarn_ext_factor", 1.0),
        ("yarn_attn_factor", 1.0),
        ("yarn_beta_fast", 32.0),
        ("yarn_beta_slow", 1.0),
        ("alpha", 1.0),
    ] {
        if let Some(v) = g.opt_f32(&k(name))? {
            if v != neutral && ty != Some("none") && ty.is_some() {
                return Err(Error::unsupported(
                    what(),
                    format!("{} = {v} (only {neutral} is implemented)", k(name)),
                ));
            }
        }
    }
    let from_meta = match (ty, factor) {
        (None | Some("none"), _) => None,
        (Some("linear"), Some(f)) if f > 0.0 => Some(
            serde_json::json!({"type": "linear", "rope_type": "linear", "factor": f32_decimal(f)}),
        ),
        (Some("yarn"), Some(f)) if f > 0.0 => {
            let orig = g.opt_usize(&k("original_context_length"))?.ok_or_else(|| {
                Error::format(
                    g.path(),
                    format!(
                        "{} is yarn without {}",
                        k("type"),
                        k("original_context_length")
                    ),
                )
            })?;
            Some(serde_json::json!({
                "rope_type": "yarn",
                "factor": f32_decimal(f),
                "original_max_position_embeddings": orig,
            }))
        }
        (Some(t @ ("linear" | "yarn")), _) => {
            return Err(Error::format(
                g.path(),
                format!("{} is {t} without a positive {}", k("type"), k("factor")),
            ))
        }
        (Some(t), _) => {
            return Err(Error::unsupported(
                what(),
                format!(
                    "{} = {t:?} (softprompt implements none, linear and yarn)",
                    k("type")
                ),
            ))
        }
    };
    let Some(info) = g.tensor_info("rope_freqs.weight") else {
        return Ok(from_meta);
    };
    if from_meta.is_some() {
        return Err(Error::unsupported(
            what(),
            "both rope.scaling metadata and a rope_freqs.weight tensor",
        ));
    }
    let freqs = g.dequantize_info(info).data;
    if freqs.iter().all(|&x| x == 1.0) {
        return Ok(None); // divisors that change nothing
    }
    if freqs.len() != head_dim / 2 {
        return Err(Error::format(
            g.path(),
            format!(
                "rope_freqs.weight has {} values, expected head_dim/2 = {}",
                freqs.len(),
                head_dim / 2
            ),
        ));
    }
    llama3_rope_scaling(&freqs, head_dim, theta)
        .map(Some)
        .ok_or_else(|| {
            Error::unsupported(
                what(),
                "rope_freqs.weight does not match Llama 3 RoPE scaling",
            )
        })
}

/// Recover HF's `llama3` rope_scaling from llama.cpp's per-frequency divisors. Llama 3.1
/// and 3.2 all use low_freq_factor 1, high_freq_factor 4, original context 8192; the factor
/// is the largest divisor. `None` when the divisors do not follow that rule.
fn llama3_rope_scaling(freqs: &[f32], head_dim: usize, theta: f64) -> Option<serde_json::Value> {
    let factor = freqs.iter().fold(1f32, |m, &x| {
        if x.is_finite() {
            m.max(x)
        } else {
            f32::INFINITY
        }
    }) as f64;
    if !factor.is_finite() {
        return None;
    }
    let (low, high, orig) = (1.0f64, 4.0f64, 8192.0f64);
    let (low_wl, high_wl) = (orig / low, orig / high);
    for (i, &got) in freqs.iter().enumerate() {
        let inv_freq = theta.powf(-((2 * i) as f64) / head_dim as f64);
        let wavelen = 2.0 * std::f64::consts::PI / inv_freq;
        let expected = if wavelen < high_wl {
            1.0
        } else if wavelen > low_wl {
            factor
        } else {
            let smooth = (orig / wavelen - low) / (high - low);
            1.0 / ((1.0 - smooth) / factor + smooth)
        };
        if (got as f64 - expected).abs() > 1e-3 * expected {
            return None;
        }
    }
    Some(serde_json::json!({
        "type": "llama3",
        "rope_type": "llama3",
        "factor": f32_decimal(factor as f32),
        "low_freq_factor": low,
        "high_freq_factor": high,
        "original_max_position_embeddings": orig as u64,
    }))
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
    keep_quant: bool,
) -> Result<(HashMap<String, Tensor>, HashMap<String, QMatrix>)> {
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
    let quantized = quant_plan
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
            Ok((m.hf, q))
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
            (m.hf, t)
        })
        .collect();
    Ok((weights, quantized))
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

    #[test]
    fn f32_decimal_is_shortest() {
        assert_eq!(f32_decimal(1e-5f32), 1e-5f64);
        assert_eq!(f32_decimal(100000.0), 100000.0);
    }

    #[test]
    fn llama3_rope_factors_recovered() {
        // Build llama.cpp's factors for Llama 3.2 (factor 32, theta 500000, head_dim 64).
        let (theta, hd, factor) = (500000.0f64, 64usize, 32.0f64);
        let freqs: Vec<f32> = (0..hd / 2)
            .map(|i| {
                let wavelen = 2.0 * std::f64::consts::PI * theta.powf((2 * i) as f64 / hd as f64);
                if wavelen < 2048.0 {
                    1.0
                } else if wavelen > 8192.0 {
                    factor as f32
                } else {
                    let s = (8192.0 / wavelen - 1.0) / 3.0;
                    (1.0 / ((1.0 - s) / factor + s)) as f32
                }
            })
            .collect();
        let v = llama3_rope_scaling(&freqs, hd, theta).expect("recognised");
        assert_eq!(v["rope_type"], "llama3");
        assert_eq!(v["factor"], 32.0);
        assert!(llama3_rope_scaling(&vec![2.0; hd / 2], hd, theta).is_none());
    }
}
