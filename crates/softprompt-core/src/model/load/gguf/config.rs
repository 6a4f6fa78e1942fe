//! A [`LlamaConfig`] from a GGUF's `{arch}.*` metadata, as transformers' GGUF loader builds
//! it: the supported architectures, head and window layout, and RoPE (bases and scaling,
//! including llama.cpp's llama3 frequency factors turned back into `rope_scaling`).

use super::{GgufArray, GgufFile, GgufValue};
use crate::model::config::TokenIds;
use crate::model::LlamaConfig;
use crate::{Error, Result};

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

#[cfg(test)]
mod tests {
    use super::*;

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
