//! `LlamaConfig` mirrors the fields of a Hugging Face `config.json` for the Llama family
//! (Llama, SmolLM2, Mistral, Qwen2, Qwen3, Gemma 3 text). GGUF metadata is translated into the
//! same struct. [`LlamaConfig::rope`] resolves the RoPE as transformers 5.24 does and
//! [`LlamaConfig::check`] refuses settings that change the computation and are not implemented.

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
    /// transformers 4 RoPE scaling (`{"rope_type" or "type": .., "factor": .., ..}`); wins over
    /// `rope_parameters` as in transformers 5. Resolved by [`LlamaConfig::rope`].
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
    /// transformers 5 RoPE settings: flat (`{"rope_type": "llama3", "rope_theta": .., "factor":
    /// ..}`) or, for Gemma 3, per layer type (`{"full_attention": {..}, "sliding_attention":
    /// {..}}`). The old `rope_theta` / `rope_scaling` keys are read too ([`LlamaConfig::rope`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_parameters: Option<serde_json::Value>,
    /// Top-level pre-training context (Phi-3 style); wins over the one in the RoPE settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_max_position_embeddings: Option<usize>,
    /// Fraction of each head that is rotated; only 1 is implemented.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partial_rotary_factor: Option<f64>,
    /// Qwen2 / Qwen3: the sliding window is used only when this is true, on the layers
    /// `layer_types` marks (default: layers `max_window_layers..`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_sliding_window: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_window_layers: Option<usize>,
    /// Llama: bias on the MLP projections. Not implemented (refused when true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mlp_bias: Option<bool>,
    /// Gemma 3: attend in both directions. Not implemented (refused when true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_bidirectional_attention: Option<bool>,
    /// Training-time dropout on attention weights; softprompt applies none (a warning if > 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attention_dropout: Option<f64>,
}

impl LlamaConfig {
    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads)
    }
    pub fn num_kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }
    /// Bias on the q/k/v projections: always for Qwen2, never for Mistral (transformers
    /// ignores the flag there), else `attention_bias`.
    pub fn qkv_bias(&self) -> bool {
        match self.model_type.as_str() {
            "qwen2" => true,
            "mistral" => false,
            _ => self.attention_bias,
        }
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
    /// Whether layer `l` uses the sliding window (and, for Gemma 3, the local RoPE), as
    /// transformers decides it: Mistral every layer; Qwen2 / Qwen3 only with
    /// `use_sliding_window`, on the `layer_types` it marks (default `max_window_layers..`);
    /// Gemma 3 from `layer_types` (default: all but every 6th); Llama never.
    pub fn is_sliding_layer(&self, l: usize) -> bool {
        if self.sliding_window.is_none() {
            return false;
        }
        let marked = |default: bool| match &self.layer_types {
            Some(t) => t.get(l).is_some_and(|s| s == "sliding_attention"),
            None => default,
        };
        match self.model_type.as_str() {
            "mistral" => true,
            "qwen2" | "qwen3" => {
                self.use_sliding_window == Some(true)
                    && marked(l >= self.max_window_layers.unwrap_or(28))
            }
            _ if self.is_gemma3() => {
                let p = self.sliding_window_pattern.unwrap_or(6).max(1);
                marked(!(l + 1).is_multiple_of(p))
            }
            _ => false,
        }
    }
    /// RoPE base of the global (full-attention) layers.
    pub fn rope_theta_global(&self) -> f64 {
        self.rope(LayerKind::Full)
            .map(|r| r.rope_theta)
            .unwrap_or(self.rope_theta)
    }
    /// RoPE base of the sliding-window layers (Gemma 3: `rope_local_base_freq`, 10000).
    pub fn rope_theta_local(&self) -> f64 {
        self.rope(LayerKind::Sliding)
            .map(|r| r.rope_theta)
            .unwrap_or(self.rope_theta)
    }

    /// The RoPE of one layer kind as transformers 5.24 resolves it from this config: the
    /// settings in `rope_scaling` (old key, wins) or `rope_parameters` (flat; Gemma 3 per
    /// layer type, where `rope_scaling` updates `full_attention` only), the base from there
    /// or from `rope_theta` / `rope_local_base_freq`. A `rope_type` or setting softprompt
    /// does not implement is an error naming it; a key transformers ignores too is ignored
    /// ([`LlamaConfig::check_noting`] lists them).
    pub fn rope(&self, kind: LayerKind) -> Result<RopeSpec, String> {
        self.rope_noting(kind, &mut Vec::new())
    }

    /// [`LlamaConfig::rope`], adding to `ignored` the settings transformers ignores too.
    fn rope_noting(&self, kind: LayerKind, ignored: &mut Vec<String>) -> Result<RopeSpec, String> {
        let gemma = self.is_gemma3();
        let as_map = |v: &serde_json::Value, at: &str| match v {
            serde_json::Value::Null => Ok(serde_json::Map::new()),
            serde_json::Value::Object(m) => Ok(m.clone()),
            other => Err(format!("{at} must be an object, got {other}")),
        };
        let scaling = match &self.rope_scaling {
            Some(v) => as_map(v, "rope_scaling")?,
            None => serde_json::Map::new(),
        };
        let params = match &self.rope_parameters {
            Some(v) => as_map(v, "rope_parameters")?,
            None => serde_json::Map::new(),
        };
        let nested =
            params.contains_key("full_attention") || params.contains_key("sliding_attention");
        let (d, at, theta) = if gemma {
            if let Some(k) = params
                .keys()
                .find(|k| !LayerKind::NAMES.contains(&k.as_str()))
            {
                return Err(format!(
                    "rope_parameters.{k}: Gemma 3 takes its RoPE settings per layer type \
                     (rope_parameters.full_attention / .sliding_attention)"
                ));
            }
            let at = format!("rope_parameters.{}", kind.name());
            let mut d = match params.get(kind.name()) {
                Some(v) => as_map(v, &at)?,
                None => serde_json::Map::new(),
            };
            let theta = match kind {
                LayerKind::Full => {
                    d.extend(scaling);
                    self.rope_theta
                }
                LayerKind::Sliding => self.rope_local_base_freq.unwrap_or(10000.0),
            };
            (d, at, theta)
        } else if !scaling.is_empty() {
            (scaling, "rope_scaling".to_string(), self.rope_theta)
        } else if nested {
            return Err(format!(
                "rope_parameters per layer type is only read for gemma3_text (transformers' \
                 {} RoPE takes one flat setting)",
                self.model_type
            ));
        } else {
            (params, "rope_parameters".to_string(), self.rope_theta)
        };

        let ty = match d.get("rope_type").or_else(|| d.get("type")) {
            None | Some(serde_json::Value::Null) => "default",
            Some(serde_json::Value::String(t)) => t.as_str(),
            Some(other) => return Err(format!("{at}.rope_type must be a string, got {other}")),
        };
        // A number, or None when absent or null.
        let num = |k: &str| -> Result<Option<f64>, String> {
            match d.get(k) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(v) => match v.as_f64() {
                    Some(x) if x.is_finite() => Ok(Some(x)),
                    _ => Err(format!("{at}.{k} must be a number, got {v}")),
                },
            }
        };
        let need = |k: &str| -> Result<f64, String> {
            num(k)?.ok_or_else(|| format!("{at}: rope_type \"{ty}\" needs {k}"))
        };
        let positive = |k: &str, x: f64| -> Result<f64, String> {
            if x > 0.0 {
                Ok(x)
            } else {
                Err(format!("{at}.{k} must be positive, got {x}"))
            }
        };
        let rope_theta = positive("rope_theta", num("rope_theta")?.unwrap_or(theta))?;
        if let Some(p) = num("partial_rotary_factor")?.or(self.partial_rotary_factor) {
            if p != 1.0 {
                return Err(format!(
                    "partial_rotary_factor = {p}: partial rotary embeddings are not implemented"
                ));
            }
        }
        // Pre-training context (llama3, yarn): the top-level key wins for a flat setting, as
        // transformers' standardize_rope_params has it; else max_position_embeddings.
        let original = || -> Result<usize, String> {
            let top = if nested || gemma {
                None
            } else {
                self.original_max_position_embeddings
            };
            let v = match top {
                Some(n) => n as f64,
                None => num("original_max_position_embeddings")?
                    .unwrap_or(self.max_position_embeddings as f64),
            };
            if v >= 1.0 && v.fract() == 0.0 {
                Ok(v as usize)
            } else {
                Err(format!(
                    "{at}.original_max_position_embeddings must be a positive integer, got {v}"
                ))
            }
        };
        let (scaling, used): (RopeScaling, &[&str]) = match ty {
            "default" => (RopeScaling::Default, &[]),
            "linear" => (
                RopeScaling::Linear {
                    factor: positive("factor", need("factor")?)?,
                },
                &["factor"],
            ),
            "llama3" => {
                let (lo, hi) = (need("low_freq_factor")?, need("high_freq_factor")?);
                if hi == lo {
                    return Err(format!(
                        "{at}: llama3 high_freq_factor and low_freq_factor are both {lo}"
                    ));
                }
                (
                    RopeScaling::Llama3 {
                        factor: positive("factor", need("factor")?)?,
                        low_freq_factor: positive("low_freq_factor", lo)?,
                        high_freq_factor: positive("high_freq_factor", hi)?,
                        original_max_position_embeddings: original()?,
                    },
                    &[
                        "factor",
                        "low_freq_factor",
                        "high_freq_factor",
                        "original_max_position_embeddings",
                    ],
                )
            }
            "yarn" => {
                // transformers' _compute_yarn_parameters, term by term.
                let orig = original()?;
                let factor = match num("factor")? {
                    Some(f) => positive("factor", f)?,
                    None => self.max_position_embeddings as f64 / orig as f64,
                };
                let get_mscale = |scale: f64, m: f64| {
                    if scale <= 1.0 {
                        1.0
                    } else {
                        0.1 * m * scale.ln() + 1.0
                    }
                };
                let attention_factor = match num("attention_factor")? {
                    Some(a) => a,
                    None => match (num("mscale")?, num("mscale_all_dim")?) {
                        (Some(m), Some(a)) if m != 0.0 && a != 0.0 => {
                            get_mscale(factor, m) / get_mscale(factor, a)
                        }
                        _ => get_mscale(factor, 1.0),
                    },
                };
                // `x or default`: 0 and null take the default too.
                let or = |x: Option<f64>, dflt: f64| x.filter(|&v| v != 0.0).unwrap_or(dflt);
                let truncate = match d.get("truncate") {
                    None | Some(serde_json::Value::Null) => true,
                    Some(serde_json::Value::Bool(t)) => *t,
                    Some(other) => {
                        return Err(format!("{at}.truncate must be a boolean, got {other}"))
                    }
                };
                if gemma && !truncate {
                    // transformers 5.24 reads `truncate` from the top of rope_parameters only.
                    return Err(format!("{at}.truncate = false in a per-layer-type setting (transformers ignores it there)"));
                }
                (
                    RopeScaling::Yarn {
                        factor,
                        original_max_position_embeddings: orig,
                        beta_fast: or(num("beta_fast")?, 32.0),
                        beta_slow: or(num("beta_slow")?, 1.0),
                        truncate,
                        attention_factor,
                    },
                    &[
                        "factor",
                        "original_max_position_embeddings",
                        "attention_factor",
                        "beta_fast",
                        "beta_slow",
                        "mscale",
                        "mscale_all_dim",
                        "truncate",
                    ],
                )
            }
            other => {
                return Err(format!(
                    "{at}.rope_type = \"{other}\" is not implemented (softprompt implements \
                     default, linear, llama3 and yarn)"
                ))
            }
        };
        for k in d.keys() {
            let common = ["rope_type", "type", "rope_theta", "partial_rotary_factor"];
            if !common.contains(&k.as_str()) && !used.contains(&k.as_str()) {
                ignored.push(format!(
                    "{at}.{k} is not used by rope_type \"{ty}\" (transformers ignores it too)"
                ));
            }
        }
        Ok(RopeSpec {
            rope_theta,
            scaling,
        })
    }

    /// The RoPE settings as transformers 5 writes them in `rope_parameters`: one flat object,
    /// or for Gemma 3 one per layer type.
    pub fn rope_parameters_v5(&self) -> Result<serde_json::Value, String> {
        let one = |k: LayerKind| -> Result<serde_json::Value, String> {
            serde_json::to_value(self.rope(k)?).map_err(|e| e.to_string())
        };
        if self.is_gemma3() {
            Ok(serde_json::json!({
                "full_attention": one(LayerKind::Full)?,
                "sliding_attention": one(LayerKind::Sliding)?,
            }))
        } else {
            one(LayerKind::Full)
        }
    }

    /// [`LlamaConfig::rope_parameters_v5`] for display; the error text when it fails.
    pub fn describe_rope(&self) -> serde_json::Value {
        self.rope_parameters_v5()
            .unwrap_or_else(serde_json::Value::String)
    }

    /// Refuse settings that change what transformers computes and that softprompt does not
    /// implement; the message names the field and its value.
    pub fn check(&self) -> Result<(), String> {
        self.check_noting(&mut Vec::new())
    }

    /// [`LlamaConfig::check`]; the settings that are ignored (as transformers ignores them, or
    /// training-only) are added to `ignored`, one line each, for the caller to warn about.
    pub fn check_noting(&self, ignored: &mut Vec<String>) -> Result<(), String> {
        self.rope_noting(LayerKind::Full, ignored)?;
        if self.is_gemma3() {
            self.rope_noting(LayerKind::Sliding, ignored)?;
        }
        if self.model_type == "llama" && self.mlp_bias == Some(true) {
            return Err("mlp_bias = true (bias on the MLP projections) is not implemented".into());
        }
        if self.is_gemma3() && self.use_bidirectional_attention == Some(true) {
            return Err(
                "use_bidirectional_attention = true is not implemented (causal attention only)"
                    .into(),
            );
        }
        if let Some(t) = &self.layer_types {
            if let Some(bad) = t.iter().find(|s| !LayerKind::NAMES.contains(&s.as_str())) {
                return Err(format!(
                    "layer_types holds \"{bad}\" (softprompt implements full_attention and sliding_attention)"
                ));
            }
            let used = self.is_gemma3()
                || (self.use_sliding_window == Some(true) && self.model_type.starts_with("qwen"));
            if used && t.len() != self.num_hidden_layers {
                return Err(format!(
                    "layer_types has {} entries for {} layers",
                    t.len(),
                    self.num_hidden_layers
                ));
            }
        }
        if let Some(p) = self.attention_dropout.filter(|&p| p > 0.0) {
            ignored.push(format!(
                "attention_dropout = {p}: softprompt applies no dropout (transformers does in train mode)"
            ));
        }
        Ok(())
    }
    pub fn eos_ids(&self) -> Vec<u32> {
        self.eos_token_id
            .as_ref()
            .map(|e| e.to_vec())
            .unwrap_or_default()
    }
}

/// The two kinds of attention layer; each may have its own RoPE.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerKind {
    /// Global attention (`full_attention`).
    Full,
    /// Sliding-window attention (`sliding_attention`).
    Sliding,
}

impl LayerKind {
    pub const NAMES: [&'static str; 2] = ["full_attention", "sliding_attention"];
    pub fn name(self) -> &'static str {
        match self {
            LayerKind::Full => Self::NAMES[0],
            LayerKind::Sliding => Self::NAMES[1],
        }
    }
}

/// One layer kind's RoPE, resolved ([`LlamaConfig::rope`]); serializes as a transformers 5
/// `rope_parameters` object (`{"rope_theta": .., "rope_type": "yarn", "factor": .., ..}`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RopeSpec {
    pub rope_theta: f64,
    #[serde(flatten)]
    pub scaling: RopeScaling,
}

/// The `rope_type`s softprompt implements, with every parameter they use.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "rope_type", rename_all = "lowercase")]
pub enum RopeScaling {
    /// Plain RoPE.
    Default,
    /// Every inverse frequency divided by `factor`.
    Linear { factor: f64 },
    /// Llama 3.1: long wavelengths divided by `factor`, short ones kept, a smooth blend between.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: usize,
    },
    /// YaRN: a per-frequency blend of the interpolated (`/ factor`) and original frequencies
    /// over the correction range from `beta_fast` / `beta_slow`, and cos/sin scaled by
    /// `attention_factor` (resolved from `mscale` / `mscale_all_dim` / `factor` when absent).
    Yarn {
        factor: f64,
        original_max_position_embeddings: usize,
        beta_fast: f64,
        beta_slow: f64,
        truncate: bool,
        attention_factor: f64,
    },
}

impl RopeSpec {
    /// `inv_freq[hd/2]` in f32 as transformers computes it, and the factor cos/sin are
    /// multiplied by (1 except for yarn).
    pub fn inv_freq(&self, hd: usize) -> (Vec<f32>, f32) {
        let dim = hd as f32;
        let base = self.rope_theta as f32;
        // base ** (arange(0, dim, 2) / dim), in f32.
        let pos_freqs: Vec<f32> = (0..hd / 2)
            .map(|i| base.powf((2 * i) as f32 / dim))
            .collect();
        let plain = || pos_freqs.iter().map(|p| 1.0 / p).collect::<Vec<f32>>();
        match self.scaling {
            RopeScaling::Default => (plain(), 1.0),
            RopeScaling::Linear { factor } => (
                plain().into_iter().map(|x| x / factor as f32).collect(),
                1.0,
            ),
            RopeScaling::Llama3 {
                factor,
                low_freq_factor: lo,
                high_freq_factor: hi,
                original_max_position_embeddings: old,
            } => {
                // Python-float terms are computed in f64 and meet the f32 tensor rounded.
                let (lo_wl, hi_wl) = ((old as f64 / lo) as f32, (old as f64 / hi) as f32);
                let span = (hi - lo) as f32;
                let (f, lo, old) = (factor as f32, lo as f32, old as f32);
                let inv = plain()
                    .into_iter()
                    .map(|x| {
                        let wl = 2.0 * std::f32::consts::PI / x;
                        if wl < hi_wl {
                            x
                        } else if wl > lo_wl {
                            x / f
                        } else {
                            let s = (old / wl - lo) / span;
                            (1.0 - s) * x / f + s * x
                        }
                    })
                    .collect();
                (inv, 1.0)
            }
            RopeScaling::Yarn {
                factor,
                original_max_position_embeddings: orig,
                beta_fast,
                beta_slow,
                truncate,
                attention_factor,
            } => {
                let (base64, dim64, orig) = (self.rope_theta, hd as f64, orig as f64);
                let corr_dim = |rot: f64| {
                    (dim64 * (orig / (rot * 2.0 * std::f64::consts::PI)).ln()) / (2.0 * base64.ln())
                };
                let (mut low, mut high) = (corr_dim(beta_fast), corr_dim(beta_slow));
                if truncate {
                    (low, high) = (low.floor(), high.ceil());
                }
                let (low, mut high) = (low.max(0.0), high.min(dim64 - 1.0));
                if low == high {
                    high += 0.001; // transformers: "prevent singularity"
                }
                let (lo32, span) = (low as f32, (high - low) as f32);
                let inv = pos_freqs
                    .iter()
                    .enumerate()
                    .map(|(i, &p)| {
                        let extrap = 1.0 / p;
                        let interp = 1.0 / (factor as f32 * p);
                        let ramp = ((i as f32 - lo32) / span).clamp(0.0, 1.0);
                        let e = 1.0 - ramp; // inv_freq_extrapolation_factor
                        interp * (1.0 - e) + extrap * e
                    })
                    .collect();
                (inv, attention_factor as f32)
            }
        }
    }
}

/// Fill the fields a transformers 5.24 config class defaults when `config.json` leaves them
/// out, where the class default differs from softprompt's generic one (e.g. Gemma 3's
/// head_dim 256 and global RoPE base 1e6, Mistral's 8 kv heads and 4096 window).
pub fn fill_transformers_defaults(config: &mut serde_json::Map<String, serde_json::Value>) {
    use serde_json::json;
    let model_type = config
        .get("model_type")
        .and_then(|v| v.as_str())
        .unwrap_or("");
    let defaults: &[(&str, serde_json::Value)] = match model_type {
        "mistral" => &[
            ("num_key_value_heads", json!(8)),
            ("sliding_window", json!(4096)),
            ("max_position_embeddings", json!(131072)),
        ],
        "qwen2" => &[
            ("num_key_value_heads", json!(32)),
            ("max_position_embeddings", json!(32768)),
        ],
        "qwen3" => &[
            ("num_key_value_heads", json!(32)),
            ("head_dim", json!(128)),
            ("max_position_embeddings", json!(32768)),
        ],
        "gemma3_text" => &[
            ("num_key_value_heads", json!(4)),
            ("head_dim", json!(256)),
            ("query_pre_attn_scalar", json!(256)),
            ("sliding_window", json!(4096)),
            ("rope_theta", json!(1_000_000.0)),
            ("hidden_activation", json!("gelu_pytorch_tanh")),
            ("tie_word_embeddings", json!(true)),
            ("max_position_embeddings", json!(131072)),
        ],
        _ => &[],
    };
    for (k, v) in defaults {
        if !config.contains_key(*k) {
            config.insert((*k).to_string(), v.clone());
        }
    }
}
