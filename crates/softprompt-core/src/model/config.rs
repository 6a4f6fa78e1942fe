//! `LlamaConfig` mirrors the fields of a Hugging Face `config.json` for the Llama family
//! (Llama, SmolLM2, Mistral, Qwen2). GGUF metadata is translated into the same struct.

use serde::{Deserialize, Serialize};

fn default_rope_theta() -> f64 {
    10000.0
}
fn default_eps() -> f64 {
    1e-6
}
fn default_max_pos() -> usize {
    2048
}
fn default_act() -> String {
    "silu".into()
}

/// `eos_token_id` is an int or a list of ints in config.json.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum TokenIds {
    One(u32),
    Many(Vec<u32>),
}

impl TokenIds {
    pub fn to_vec(&self) -> Vec<u32> {
        match self {
            TokenIds::One(x) => vec![*x],
            TokenIds::Many(v) => v.clone(),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct LlamaConfig {
    #[serde(default)]
    pub architectures: Option<Vec<String>>,
    /// "llama", "mistral", "qwen2" (qkv bias on by default), ...
    pub model_type: String,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    /// Per-head size; `hidden_size / num_attention_heads` when absent.
    #[serde(default)]
    pub head_dim: Option<usize>,
    pub vocab_size: usize,
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f64,
    /// Only `null` (plain RoPE), `linear` and `llama3` are supported.
    #[serde(default)]
    pub rope_scaling: Option<serde_json::Value>,
    #[serde(default = "default_max_pos")]
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// Bias on q/k/v projections (Qwen2 always has it; Llama when `attention_bias`).
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default)]
    pub bos_token_id: Option<u32>,
    #[serde(default)]
    pub eos_token_id: Option<TokenIds>,
    #[serde(default)]
    pub pad_token_id: Option<u32>,
    /// Sliding window (Mistral: every layer; Gemma 3: the `sliding_attention` layers);
    /// `None` = full causal attention.
    #[serde(default)]
    pub sliding_window: Option<usize>,
    /// Gemma's name for the MLP activation (`gelu_pytorch_tanh`); wins over `hidden_act`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hidden_activation: Option<String>,
    /// Gemma: attention scores are scaled by `query_pre_attn_scalar^-0.5` (else head_dim^-0.5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query_pre_attn_scalar: Option<f64>,
    /// Gemma 3: RoPE base of the sliding-window (local) layers; global layers use `rope_theta`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_local_base_freq: Option<f64>,
    /// Gemma 3: per layer, `"sliding_attention"` or `"full_attention"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer_types: Option<Vec<String>>,
    /// Gemma 3: every n-th layer is global when `layer_types` is absent (default 6).
    #[serde(
        default,
        rename = "_sliding_window_pattern",
        alias = "sliding_window_pattern",
        skip_serializing_if = "Option::is_none"
    )]
    pub sliding_window_pattern: Option<usize>,
    /// Gemma 2 style soft-capping (`cap * tanh(x / cap)`); Gemma 3 has none. Refused if set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_logit_softcapping: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attn_logit_softcapping: Option<f64>,
    /// transformers 5 style RoPE settings (`{"full_attention": {"rope_theta": ..}, ..}` or a
    /// flat `{"rope_theta": ..}`); read only for the bases, when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_parameters: Option<serde_json::Value>,
}

impl LlamaConfig {
    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads)
    }
    pub fn num_kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }
    /// Qwen2 configs carry no `attention_bias` flag but always use q/k/v bias.
    pub fn qkv_bias(&self) -> bool {
        self.attention_bias || self.model_type == "qwen2"
    }
    /// Gemma 3 text model (sandwich norms, (1+w) RMSNorm, scaled embeddings, local/global).
    pub fn is_gemma3(&self) -> bool {
        matches!(self.model_type.as_str(), "gemma3_text" | "gemma3")
    }
    /// Per-head RMSNorm on queries and keys before RoPE (Gemma 3, Qwen3).
    pub fn qk_norm(&self) -> bool {
        self.is_gemma3() || self.model_type == "qwen3"
    }
    /// The MLP activation name (`hidden_activation` first, as Gemma configs use it).
    pub fn activation(&self) -> &str {
        self.hidden_activation
            .as_deref()
            .unwrap_or(&self.hidden_act)
    }
    /// Whether layer `l` uses the sliding window (and, for Gemma 3, the local RoPE base).
    pub fn is_sliding_layer(&self, l: usize) -> bool {
        if self.sliding_window.is_none() {
            return false;
        }
        if let Some(t) = &self.layer_types {
            return t.get(l).map(|s| s == "sliding_attention").unwrap_or(false);
        }
        match self.model_type.as_str() {
            "mistral" => true,
            _ if self.is_gemma3() => {
                let p = self.sliding_window_pattern.unwrap_or(6).max(1);
                (l + 1) % p != 0
            }
            _ => false,
        }
    }
    /// RoPE base of the global (full-attention) layers.
    pub fn rope_theta_global(&self) -> f64 {
        self.rope_param("full_attention").unwrap_or(self.rope_theta)
    }
    /// RoPE base of the sliding-window layers (Gemma 3: `rope_local_base_freq`, 10000).
    pub fn rope_theta_local(&self) -> f64 {
        if let Some(t) = self.rope_param("sliding_attention") {
            return t;
        }
        if self.is_gemma3() {
            self.rope_local_base_freq.unwrap_or(10000.0)
        } else {
            self.rope_theta_global()
        }
    }
    fn rope_param(&self, kind: &str) -> Option<f64> {
        let rp = self.rope_parameters.as_ref()?;
        rp.get(kind)
            .and_then(|v| v.get("rope_theta"))
            .or_else(|| rp.get("rope_theta"))
            .and_then(|v| v.as_f64())
    }
    pub fn eos_ids(&self) -> Vec<u32> {
        self.eos_token_id
            .as_ref()
            .map(|e| e.to_vec())
            .unwrap_or_default()
    }
}
