//! Soft prompts: the `[P, D]` matrix of virtual-token embeddings that prompt tuning learns
//! (Lester et al. 2021), stored as a PEFT prompt-tuning adapter folder; and deep prompts
//! (prefix tuning, Li & Liang 2021; P-tuning v2): `[P, L*2*Hkv*hd]` keys and values of `P`
//! virtual positions at every layer, stored as a PEFT prefix-tuning adapter folder
//! (`peft_type` PREFIX_TUNING, `prefix_projection` false, `token_dim` = `Hkv*hd`,
//! `num_attention_heads` = `Hkv`, the layout PEFT gives grouped-query models).
//!
//! # On-disk layout
//! A prompt folder is what PEFT's `PeftModel.save_pretrained` writes for
//! `PromptTuningConfig`, so PEFT can load ours and we can load PEFT's:
//!
//! * `adapter_config.json` — [`AdapterConfig`], PEFT's JSON (pretty, 2-space indent, keys
//!   sorted, no trailing newline, exactly as PEFT writes it).
//! * `adapter_model.safetensors` — one tensor `prompt_embeddings`,
//!   `[num_virtual_tokens * num_transformer_submodules, token_dim]`, F32 on save (F16 and
//!   BF16 are also read), header metadata `{"format":"pt"}`.
//! * `softprompt.json` — optional, ours: [`PromptMeta`] (which model and tokenizer the prompt
//!   was trained for, task and training details). PEFT ignores it.
//!
//! PEFT's `adapter_model.bin` (a PyTorch pickle) is never read: unpickling can run code.
//!
//! # Limits
//! At most [`MAX_VIRTUAL_TOKENS`] virtual tokens and [`MAX_TOKEN_DIM`] values per token, so
//! a hostile or corrupt folder can make the loader allocate at most 1 GiB, and only after
//! the file sizes have been checked against the config.
//!
//!
//! # Modules
//! - [`peft`]: the PEFT adapter files: [`peft::AdapterConfig`], reading and validating a
//!   folder ([`SoftPrompt::load`]) and writing one atomically ([`SoftPrompt::save`]).
//! - [`init`]: initial prompt values (random, vocabulary rows, a text's tokens).

pub mod init;
pub mod peft;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use self::peft::{default_init, first_non_finite, AdapterConfig};
use crate::model::input::{PromptKind, PromptRef};
use crate::model::FrozenModel;
use crate::{Error, Result, Tensor};

/// PEFT's config file name.
pub const ADAPTER_CONFIG_FILE: &str = "adapter_config.json";
/// PEFT's safetensors weights file name.
pub const ADAPTER_WEIGHTS_FILE: &str = "adapter_model.safetensors";
/// PEFT's pickle weights file name (refused).
pub const ADAPTER_PICKLE_FILE: &str = "adapter_model.bin";
/// Our metadata file name.
pub const META_FILE: &str = "softprompt.json";
/// The one tensor of a prompt-tuning adapter.
pub const PROMPT_TENSOR: &str = "prompt_embeddings";
/// The `peft_type` of prompt tuning.
pub const PEFT_TYPE_PROMPT_TUNING: &str = "PROMPT_TUNING";
/// The `peft_type` of prefix tuning (deep prompts).
pub const PEFT_TYPE_PREFIX_TUNING: &str = "PREFIX_TUNING";
/// The only supported `task_type`.
pub const TASK_TYPE_CAUSAL_LM: &str = "CAUSAL_LM";
/// The PEFT release whose adapter layout [`SoftPrompt::save`] mirrors; written as
/// `peft_version` in prompts we create.
pub const PEFT_VERSION: &str = "0.21.2";
/// Most virtual tokens a prompt may have (Lester et al. use 1..150; 4096 leaves room).
pub const MAX_VIRTUAL_TOKENS: usize = 4096;
/// Largest token dimension (hidden size) accepted from a file.
pub const MAX_TOKEN_DIM: usize = 65536;
/// Version of `softprompt.json` this build writes and the newest it reads.
pub const META_FORMAT_VERSION: u32 = 1;

/// Our own description of a prompt, saved as `softprompt.json` beside the adapter.
/// Unknown keys are ignored on read, so later versions can add fields.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PromptMeta {
    /// [`META_FORMAT_VERSION`] when written by this build.
    pub format_version: u32,
    /// "softprompt <version>".
    pub created_by: String,
    /// UTC, RFC 3339 (`2025-01-31T12:00:00Z`).
    pub created_at: String,
    /// Human-readable description of the base model (e.g. its source).
    pub base_model: String,
    /// The model's hidden size (= the prompt's token dimension).
    pub hidden_size: usize,
    /// [`model_fingerprint`](crate::model::fingerprint::model_fingerprint) of the model the prompt was trained for.
    #[serde(default)]
    pub model_fingerprint: Option<String>,
    /// [`tokenizer_fingerprint`](crate::model::fingerprint::tokenizer_fingerprint) of its tokenizer.
    #[serde(default)]
    pub tokenizer_fingerprint: Option<String>,
    /// Task spec (template, label words), filled by the data/train code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<serde_json::Value>,
    /// Training settings and history, filled by the trainer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub training: Option<serde_json::Value>,
    /// Evaluation results.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<serde_json::Value>,
}

impl PromptMeta {
    /// Meta for a prompt created now by this build.
    pub fn new(
        base_model: &str,
        hidden_size: usize,
        model_fingerprint: Option<String>,
        tokenizer_fingerprint: Option<String>,
    ) -> Self {
        PromptMeta {
            format_version: META_FORMAT_VERSION,
            created_by: format!("softprompt {}", env!("CARGO_PKG_VERSION")),
            created_at: utc_now_rfc3339(),
            base_model: base_model.to_string(),
            hidden_size,
            model_fingerprint,
            tokenizer_fingerprint,
            task: None,
            training: None,
            metrics: None,
        }
    }
}

/// A soft prompt: `embeddings` is `[P, D]` f32, P virtual tokens of the model's hidden size D.
#[derive(Clone, Debug, PartialEq)]
pub struct SoftPrompt {
    pub embeddings: Tensor,
    pub config: AdapterConfig,
    pub meta: Option<PromptMeta>,
    /// The folder it was loaded from or last saved to; named in error messages.
    pub source: Option<PathBuf>,
}

impl SoftPrompt {
    /// A new prompt with PEFT's defaults for a causal LM: `task_type` CAUSAL_LM,
    /// `prompt_tuning_init` RANDOM, `inference_mode` true, one transformer submodule,
    /// `num_virtual_tokens` and `token_dim` from the `[P, D]` tensor. No meta.
    /// (A tensor that is not 2-D is caught by [`SoftPrompt::validate`] and `save`.)
    pub fn new(
        embeddings: Tensor,
        base_model_name: &str,
        num_layers: usize,
        num_attention_heads: usize,
    ) -> SoftPrompt {
        let (p, d) = match embeddings.shape.as_slice() {
            [p, d] => (*p, *d),
            _ => (0, 0),
        };
        let config = AdapterConfig {
            auto_mapping: None,
            base_model_name_or_path: Some(base_model_name.to_string()),
            encoder_hidden_size: None,
            inference_mode: true,
            modules_to_save: None,
            num_attention_heads: Some(num_attention_heads),
            num_layers: Some(num_layers),
            num_transformer_submodules: Some(1),
            num_virtual_tokens: p,
            peft_type: PEFT_TYPE_PROMPT_TUNING.into(),
            peft_version: Some(PEFT_VERSION.into()),
            prefix_projection: None,
            prompt_tuning_init: default_init(),
            prompt_tuning_init_text: None,
            revision: None,
            task_type: Some(TASK_TYPE_CAUSAL_LM.into()),
            token_dim: Some(d),
            tokenizer_kwargs: None,
            tokenizer_name_or_path: None,
            extra: BTreeMap::new(),
        };
        SoftPrompt {
            embeddings,
            config,
            meta: None,
            source: None,
        }
    }

    /// A deep (prefix) prompt for `model` from its keys and values `[P, L*2*Hkv*hd]`, with the
    /// PEFT prefix-tuning config PEFT derives for this model, and metadata as
    /// [`SoftPrompt::for_model`].
    pub fn for_model_prefix(model: &FrozenModel, prefix: Tensor) -> SoftPrompt {
        let dims = &model.llama.dims;
        let mut p = SoftPrompt::for_model(model, prefix);
        let c = &mut p.config;
        c.peft_type = PEFT_TYPE_PREFIX_TUNING.into();
        c.token_dim = Some(dims.kvdim());
        c.encoder_hidden_size = Some(dims.kvdim());
        c.num_attention_heads = Some(dims.nkv);
        c.prefix_projection = Some(false);
        p
    }

    /// Input embeddings or a per-layer prefix.
    pub fn kind(&self) -> PromptKind {
        if self.config.is_prefix() {
            PromptKind::Prefix
        } else {
            PromptKind::Input
        }
    }

    /// Attach meta (builder style).
    pub fn with_meta(mut self, meta: PromptMeta) -> Self {
        self.meta = Some(meta);
        self
    }

    /// Number of virtual tokens P (rows of the embedding matrix).
    pub fn num_virtual_tokens(&self) -> usize {
        self.embeddings.shape.first().copied().unwrap_or(0)
    }

    /// Values per virtual token: the token dimension D of an input prompt (the model's hidden
    /// size), `L*2*Hkv*hd` for a prefix.
    pub fn hidden_size(&self) -> usize {
        if self.embeddings.shape.len() == 2 {
            self.embeddings.shape[1]
        } else {
            0
        }
    }

    /// The prompt as the model reads it: `[P, D]` rows (an error when the embeddings are not a
    /// 2-D matrix).
    pub fn view(&self) -> Result<PromptRef<'_>> {
        PromptRef::from_tensor_kind(&self.embeddings, self.kind())
    }

    /// Row `i` (virtual token `i`).
    pub fn row(&self, i: usize) -> &[f32] {
        self.embeddings.row(i)
    }

    /// How to name this prompt in messages.
    pub(crate) fn describe(&self) -> String {
        match &self.source {
            Some(p) => format!("soft prompt {}", p.display()),
            None => "soft prompt (not saved)".into(),
        }
    }

    /// Load a soft prompt folder and check it fits `model` (hidden size always; the
    /// base-model fingerprint unless `force`).
    pub fn load_for(model: &FrozenModel, dir: &Path, force: bool) -> Result<SoftPrompt> {
        let p = SoftPrompt::load(dir)?;
        p.check_for(model, force)?;
        Ok(p)
    }

    /// [`SoftPrompt::check_compatible`] against `model`'s width for this prompt's kind
    /// (hidden size, or layers x key/value width for a prefix).
    pub fn check_for(&self, model: &FrozenModel, force: bool) -> Result<()> {
        self.check_compatible(
            model.llama.prompt_width(self.kind()),
            &model.fingerprint,
            force,
        )
    }

    /// A prompt for `model` from embeddings `[P, D]`, with metadata that ties it to this
    /// model and tokenizer (fingerprints).
    pub fn for_model(model: &FrozenModel, embeddings: Tensor) -> SoftPrompt {
        let c = &model.llama.cfg;
        let meta = PromptMeta::new(
            &model.source,
            c.hidden_size,
            Some(model.fingerprint.clone()),
            Some(model.tokenizer_fingerprint.clone()),
        );
        SoftPrompt::new(
            embeddings,
            &model.base_model,
            c.num_hidden_layers,
            c.num_attention_heads,
        )
        .with_meta(meta)
    }

    /// Check that the in-memory prompt is consistent and finite (what `save` requires).
    pub fn validate(&self) -> Result<()> {
        let what = self.describe();
        let (p, d) = match self.embeddings.shape.as_slice() {
            [p, d] => (*p, *d),
            s => {
                return Err(Error::Input(format!(
                    "{what}: embeddings must be 2-D [P, D], got shape {s:?}"
                )))
            }
        };
        if p == 0 || p > MAX_VIRTUAL_TOKENS {
            return Err(Error::Input(format!(
                "{what}: {p} virtual tokens; a soft prompt has 1..={MAX_VIRTUAL_TOKENS}"
            )));
        }
        if d == 0 || d > MAX_TOKEN_DIM {
            return Err(Error::Input(format!(
                "{what}: token dimension {d}; supported 1..={MAX_TOKEN_DIM}"
            )));
        }
        if p * d != self.embeddings.data.len() {
            return Err(Error::Input(format!(
                "{what}: shape [{p}, {d}] needs {} values, the tensor holds {}",
                p * d,
                self.embeddings.data.len()
            )));
        }
        let c = &self.config;
        if c.peft_type != PEFT_TYPE_PROMPT_TUNING && !c.is_prefix() {
            return Err(Error::Input(format!(
                "{what}: peft_type is {:?}, expected PROMPT_TUNING or PREFIX_TUNING",
                c.peft_type
            )));
        }
        if c.task_type.as_deref() != Some(TASK_TYPE_CAUSAL_LM) {
            return Err(Error::Input(format!(
                "{what}: task_type is {:?}, expected CAUSAL_LM",
                c.task_type
            )));
        }
        if c.num_transformer_submodules.unwrap_or(1) != 1 {
            return Err(Error::Input(format!(
                "{what}: num_transformer_submodules {:?}; only 1 (decoder-only models) is supported",
                c.num_transformer_submodules
            )));
        }
        if c.num_virtual_tokens != p {
            return Err(Error::Input(format!(
                "{what}: config says num_virtual_tokens {} but the embeddings have {p} rows",
                c.num_virtual_tokens
            )));
        }
        if let Some(td) = c.tensor_width() {
            if td != d {
                return Err(Error::Input(format!(
                    "{what}: config says {} values per virtual token but the tensor has {d} columns",
                    td
                )));
            }
        } else if c.is_prefix() {
            return Err(Error::Input(format!(
                "{what}: a prefix-tuning config needs num_layers and token_dim"
            )));
        }
        if let Some(m) = self.meta.as_ref().filter(|_| !c.is_prefix()) {
            if m.hidden_size != d {
                return Err(Error::Input(format!(
                    "{what}: meta says hidden_size {} but the embeddings have {d} columns",
                    m.hidden_size
                )));
            }
        }
        if let Some((row, col, v)) = first_non_finite(&self.embeddings.data, d) {
            return Err(Error::Input(format!(
                "{what}: row {row} (virtual token {row}) holds {v} at column {col}; refusing to save a non-finite prompt"
            )));
        }
        Ok(())
    }

    /// `Some(true/false)` when the prompt records the fingerprint of the model it was
    /// trained for, `None` when it does not (e.g. a prompt written by PEFT).
    pub fn fingerprint_matches(&self, model_fp: &str) -> Option<bool> {
        let fp = self.meta.as_ref()?.model_fingerprint.as_deref()?;
        Some(fp == model_fp)
    }

    /// Check that this prompt can be used with a model of `hidden_size` whose
    /// [`model_fingerprint`](crate::model::fingerprint::model_fingerprint) is `model_fp`. A hidden-size mismatch is always an error; a
    /// fingerprint mismatch is an error unless `force`. A prompt without our meta (e.g.
    /// written by PEFT) is checked on the hidden size alone.
    pub fn check_compatible(&self, hidden_size: usize, model_fp: &str, force: bool) -> Result<()> {
        let d = self.hidden_size();
        if d != hidden_size {
            let trained_for = match &self.meta {
                Some(m) => format!(" (trained for {})", m.base_model),
                None => String::new(),
            };
            return Err(Error::Mismatch(match self.kind() {
                PromptKind::Input => format!(
                    "{}{trained_for} has token dimension {d}, but the model's hidden size is {hidden_size}: \
                     a soft prompt only works with a model of the same hidden size",
                    self.describe()
                ),
                PromptKind::Prefix => format!(
                    "{}{trained_for} is a prefix of {d} values per virtual token, but the model needs \
                     {hidden_size} (layers x 2 x key/value width): a prefix only works with a model of the same shape",
                    self.describe()
                ),
            }));
        }
        if let (Some(false), Some(m)) = (self.fingerprint_matches(model_fp), &self.meta) {
            if !force {
                return Err(Error::setting("force", format!(
                    "{} was trained for model {} (fingerprint {}), but the loaded model has fingerprint {model_fp}; \
                     a soft prompt is tied to the exact weights it was trained on. Set force to use it anyway",
                    self.describe(),
                    m.base_model,
                    m.model_fingerprint.as_deref().unwrap_or("?"),
                )));
            }
        }
        Ok(())
    }
}

/// Now as `YYYY-MM-DDTHH:MM:SSZ` (UTC), without a date crate.
fn utc_now_rfc3339() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}
