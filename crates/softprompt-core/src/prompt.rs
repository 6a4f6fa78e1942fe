//! Soft prompts: the `[P, D]` matrix of virtual-token embeddings that prompt tuning learns
//! (Lester et al. 2021), stored as a PEFT prompt-tuning adapter folder.
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
//! # PEFT compatibility of the config
//! PEFT builds its config class from every key of `adapter_config.json`. Releases since
//! about 0.11 drop keys they do not know (with a warning); older ones fail on them. We
//! therefore write exactly the key set PEFT 0.21.2 writes (checked against a fixture that
//! release wrote) plus any unknown keys that were in a config we loaded (they came from the
//! PEFT that wrote it). We write `prompt_tuning_init: "RANDOM"` for prompts we create: with
//! `TEXT`, PEFT re-tokenizes the init text when it loads the adapter and needs a tokenizer
//! name; how a prompt was initialised belongs in [`PromptMeta::training`] instead.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use rand::{Rng, SeedableRng};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::model::weight::Weight;
use crate::model::LlamaConfig;
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

/// Largest `adapter_config.json` we read (PEFT's is about 600 bytes).
const MAX_CONFIG_BYTES: u64 = 1 << 20;
/// Largest `softprompt.json` we read (it may carry task specs and metric histories).
const MAX_META_BYTES: u64 = 64 << 20;
/// Largest safetensors JSON header we read (PEFT's is 112 bytes).
const MAX_HEADER_BYTES: u64 = 1 << 20;

/// Mirror of PEFT's `PromptTuningConfig` as saved in `adapter_config.json`.
///
/// Fields are declared in alphabetical order, so serde writes them in the same order as
/// PEFT's `json.dumps(..., sort_keys=True)`. Optional fields are written as `null`, as PEFT
/// does (except `peft_version`, which older PEFT releases did not write). Unknown keys
/// are kept in [`AdapterConfig::extra`] and written back.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdapterConfig {
    #[serde(default)]
    pub auto_mapping: Option<serde_json::Value>,
    #[serde(default)]
    pub base_model_name_or_path: Option<String>,
    #[serde(default)]
    pub inference_mode: bool,
    #[serde(default)]
    pub modules_to_save: Option<serde_json::Value>,
    #[serde(default)]
    pub num_attention_heads: Option<usize>,
    #[serde(default)]
    pub num_layers: Option<usize>,
    /// 1 for decoder-only models (2 = encoder-decoder, unsupported). `null` means 1 for
    /// CAUSAL_LM, as in PEFT.
    #[serde(default)]
    pub num_transformer_submodules: Option<usize>,
    pub num_virtual_tokens: usize,
    pub peft_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peft_version: Option<String>,
    /// "RANDOM", "TEXT" or "SAMPLE_VOCAB" in PEFT; informational here.
    #[serde(default = "default_init")]
    pub prompt_tuning_init: String,
    #[serde(default)]
    pub prompt_tuning_init_text: Option<String>,
    #[serde(default)]
    pub revision: Option<String>,
    #[serde(default)]
    pub task_type: Option<String>,
    /// The model's hidden size. `null` means "the model's", as in PEFT.
    #[serde(default)]
    pub token_dim: Option<usize>,
    #[serde(default)]
    pub tokenizer_kwargs: Option<serde_json::Value>,
    #[serde(default)]
    pub tokenizer_name_or_path: Option<String>,
    /// Keys this build does not know (written by a newer PEFT); kept as they were.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

fn default_init() -> String {
    "RANDOM".into()
}

impl AdapterConfig {
    /// Rows of `prompt_embeddings`: `num_virtual_tokens * num_transformer_submodules`.
    pub fn total_virtual_tokens(&self) -> usize {
        self.num_virtual_tokens
            .saturating_mul(self.num_transformer_submodules.unwrap_or(1))
    }
}

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
    /// [`model_fingerprint`] of the model the prompt was trained for.
    #[serde(default)]
    pub model_fingerprint: Option<String>,
    /// [`tokenizer_fingerprint`] of its tokenizer.
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
            inference_mode: true,
            modules_to_save: None,
            num_attention_heads: Some(num_attention_heads),
            num_layers: Some(num_layers),
            num_transformer_submodules: Some(1),
            num_virtual_tokens: p,
            peft_type: PEFT_TYPE_PROMPT_TUNING.into(),
            peft_version: Some(PEFT_VERSION.into()),
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

    /// Attach meta (builder style).
    pub fn with_meta(mut self, meta: PromptMeta) -> Self {
        self.meta = Some(meta);
        self
    }

    /// Number of virtual tokens P (rows of the embedding matrix).
    pub fn num_virtual_tokens(&self) -> usize {
        self.embeddings.shape.first().copied().unwrap_or(0)
    }

    /// Token dimension D (must equal the model's hidden size).
    pub fn hidden_size(&self) -> usize {
        if self.embeddings.shape.len() == 2 {
            self.embeddings.shape[1]
        } else {
            0
        }
    }

    /// Row `i` (virtual token `i`).
    pub fn row(&self, i: usize) -> &[f32] {
        self.embeddings.row(i)
    }

    /// How to name this prompt in messages.
    fn describe(&self) -> String {
        match &self.source {
            Some(p) => format!("soft prompt {}", p.display()),
            None => "soft prompt (not saved)".into(),
        }
    }

    /// Load and validate a prompt folder (see the module doc for the layout).
    /// Every error names the offending file and what is wrong with it.
    pub fn load(dir: &Path) -> Result<SoftPrompt> {
        match fs::metadata(dir) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                let msg = "is not a folder (a soft prompt is a folder holding \
                           adapter_config.json and adapter_model.safetensors)";
                return Err(Error::io(dir, not_found(msg)));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::io(dir, not_found("soft prompt folder not found")))
            }
            Err(e) => return Err(Error::io(dir, e)),
        }

        let config_path = dir.join(ADAPTER_CONFIG_FILE);
        let config = read_adapter_config(&config_path)?;
        let rows = config.total_virtual_tokens();

        let weights_path = dir.join(ADAPTER_WEIGHTS_FILE);
        if !weights_path.exists() {
            let pickle = dir.join(ADAPTER_PICKLE_FILE);
            if pickle.exists() {
                return Err(Error::unsupported(
                    pickle.display().to_string(),
                    "this adapter is saved as a PyTorch pickle; softprompt does not load pickles for safety \
                     (unpickling can run arbitrary code). Re-save it with PEFT as safetensors \
                     (save_pretrained(..., safe_serialization=True)) to get adapter_model.safetensors",
                ));
            }
            return Err(Error::io(
                &weights_path,
                not_found("missing: a soft prompt folder needs adapter_model.safetensors beside adapter_config.json"),
            ));
        }
        let embeddings = read_prompt_tensor(&weights_path, rows, config.token_dim)?;
        let d = embeddings.shape[1];

        let meta_path = dir.join(META_FILE);
        let meta = if meta_path.exists() {
            Some(read_meta(&meta_path, d)?)
        } else {
            None
        };

        Ok(SoftPrompt {
            embeddings,
            config,
            meta,
            source: Some(dir.to_path_buf()),
        })
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
        if c.peft_type != PEFT_TYPE_PROMPT_TUNING {
            return Err(Error::Input(format!(
                "{what}: peft_type is {:?}, expected PROMPT_TUNING",
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
        if let Some(td) = c.token_dim {
            if td != d {
                return Err(Error::Input(format!(
                    "{what}: config says token_dim {td} but the embeddings have {d} columns"
                )));
            }
        }
        if let Some(m) = &self.meta {
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

    /// Save into `dir` (created if needed): `adapter_config.json`, `adapter_model.safetensors`
    /// and, if `meta` is set, `softprompt.json` (a stale one is removed when `meta` is None).
    ///
    /// Atomic per file: everything is validated and serialized first, each file is written
    /// to a temporary file in `dir` and fsync'ed, and only when all are written are they
    /// renamed over the old ones (then the folder is fsync'ed). A failure before the
    /// renames leaves the old prompt untouched; an interruption can never leave a
    /// half-written file under a final name.
    pub fn save(&self, dir: &Path) -> Result<()> {
        self.validate()?;

        // Serialize everything before touching the disk.
        let config_json = serde_json::to_string_pretty(&self.config).map_err(|e| {
            Error::Input(format!(
                "{}: cannot serialize adapter config: {e}",
                self.describe()
            ))
        })?;
        let weights = serialize_prompt_tensor(&self.embeddings).map_err(|e| {
            Error::Input(format!(
                "{}: cannot serialize embeddings: {e}",
                self.describe()
            ))
        })?;
        let meta_json = match &self.meta {
            Some(m) => Some(
                serde_json::to_string_pretty(m).map_err(|e| {
                    Error::Input(format!("{}: cannot serialize meta: {e}", self.describe()))
                })? + "\n",
            ),
            None => None,
        };

        if dir.exists() && !dir.is_dir() {
            return Err(Error::io(
                dir,
                std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "exists and is not a folder",
                ),
            ));
        }
        fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;

        let mut files: Vec<(&str, &[u8])> = vec![
            (ADAPTER_WEIGHTS_FILE, weights.as_slice()),
            (ADAPTER_CONFIG_FILE, config_json.as_bytes()),
        ];
        if let Some(m) = &meta_json {
            files.push((META_FILE, m.as_bytes()));
        }

        // Stage: all temp files written and synced, or none kept.
        let mut staged: Vec<(PathBuf, PathBuf)> = Vec::new();
        for (name, bytes) in &files {
            let target = dir.join(name);
            match write_temp(dir, name, bytes) {
                Ok(tmp) => staged.push((tmp, target)),
                Err(e) => {
                    for (tmp, _) in &staged {
                        let _ = fs::remove_file(tmp);
                    }
                    return Err(e);
                }
            }
        }
        // Commit: weights first, so a config never describes a tensor that is not there yet
        // (and a mixed state after a crash between renames is caught by load's shape check).
        for (i, (tmp, target)) in staged.iter().enumerate() {
            if let Err(e) = fs::rename(tmp, target) {
                for (t, _) in &staged[i..] {
                    let _ = fs::remove_file(t);
                }
                return Err(Error::io(target, e));
            }
        }
        if meta_json.is_none() {
            let stale = dir.join(META_FILE);
            if stale.exists() {
                fs::remove_file(&stale).map_err(|e| Error::io(&stale, e))?;
            }
        }
        sync_dir(dir);
        Ok(())
    }

    /// `Some(true/false)` when the prompt records the fingerprint of the model it was
    /// trained for, `None` when it does not (e.g. a prompt written by PEFT).
    pub fn fingerprint_matches(&self, model_fp: &str) -> Option<bool> {
        let fp = self.meta.as_ref()?.model_fingerprint.as_deref()?;
        Some(fp == model_fp)
    }

    /// Check that this prompt can be used with a model of `hidden_size` whose
    /// [`model_fingerprint`] is `model_fp`. A hidden-size mismatch is always an error; a
    /// fingerprint mismatch is an error unless `force`. A prompt without our meta (e.g.
    /// written by PEFT) is checked on the hidden size alone.
    pub fn check_compatible(&self, hidden_size: usize, model_fp: &str, force: bool) -> Result<()> {
        let d = self.hidden_size();
        if d != hidden_size {
            let trained_for = match &self.meta {
                Some(m) => format!(" (trained for {})", m.base_model),
                None => String::new(),
            };
            return Err(Error::Mismatch(format!(
                "{}{trained_for} has token dimension {d}, but the model's hidden size is {hidden_size}: \
                 a soft prompt only works with a model of the same hidden size",
                self.describe()
            )));
        }
        if let (Some(false), Some(m)) = (self.fingerprint_matches(model_fp), &self.meta) {
            if !force {
                return Err(Error::Mismatch(format!(
                    "{} was trained for model {} (fingerprint {}), but the loaded model has fingerprint {model_fp}; \
                     a soft prompt is tied to the exact weights it was trained on. Pass --force to use it anyway",
                    self.describe(),
                    m.base_model,
                    m.model_fingerprint.as_deref().unwrap_or("?"),
                )));
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// Reading

fn not_found(msg: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::NotFound, msg.to_string())
}

/// Read a small file whole, refusing more than `max` bytes.
fn read_capped(path: &Path, max: u64, what: &str) -> Result<Vec<u8>> {
    let f = File::open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::io(
                path,
                not_found(&format!("missing: a soft prompt folder needs {what}")),
            )
        } else {
            Error::io(path, e)
        }
    })?;
    crate::error::read_at_most(path, f, max)?
        .ok_or_else(|| Error::format(path, format!("larger than {max} bytes: not a {what}")))
}

/// What another `peft_type` is, for the error message.
fn other_peft_method(t: &str) -> &'static str {
    match t {
        "LORA" | "ADALORA" | "LOHA" | "LOKR" | "IA3" | "OFT" | "BOFT" | "VERA" | "FOURIERFT"
        | "HRA" | "VBLORA" | "BONE" | "RANDLORA" | "SHIRA" | "C3A" | "MISS" | "LN_TUNING"
        | "POLY" | "XLORA" => "an adapter that changes the model's weights, not a soft prompt",
        "P_TUNING" => {
            "P-tuning: virtual tokens produced by a prompt-encoder network, not a plain soft prompt"
        }
        "PREFIX_TUNING" => {
            "prefix tuning: learned key/value prefixes in every layer, not input embeddings"
        }
        "MULTITASK_PROMPT_TUNING" => "multitask prompt tuning: per-task prompt decompositions",
        "ADAPTION_PROMPT" => {
            "LLaMA-Adapter (adaption prompt): gated prompts inside the attention layers"
        }
        "CPT" => "context-aware prompt tuning, which needs its own token-type handling",
        _ => "another PEFT method",
    }
}

fn read_adapter_config(path: &Path) -> Result<AdapterConfig> {
    let bytes = read_capped(
        path,
        MAX_CONFIG_BYTES,
        "adapter_config.json (PEFT adapter config)",
    )?;
    parse_adapter_config(path, &bytes)
}

/// Parse and validate the bytes of an `adapter_config.json` exactly as
/// [`SoftPrompt::load`] does (size cap, JSON, `peft_type`, `task_type`, limits on
/// `num_virtual_tokens` and `token_dim`); `path` only names the file in errors.
/// Bytes-in entry point for fuzzing (`fuzz/fuzz_targets/adapter_config.rs`).
pub fn parse_adapter_config(path: &Path, bytes: &[u8]) -> Result<AdapterConfig> {
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        return Err(Error::format(
            path,
            format!("larger than {MAX_CONFIG_BYTES} bytes: not a adapter_config.json (PEFT adapter config)"),
        ));
    }
    let value: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| Error::format(path, format!("malformed JSON: {e}")))?;
    let obj = value
        .as_object()
        .ok_or_else(|| Error::format(path, "expected a JSON object (a PEFT adapter config)"))?;

    // peft_type first: another method's config lacks our fields and would give a
    // confusing "missing field" error.
    let peft_type = match obj.get("peft_type") {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(other) => {
            return Err(Error::format(
                path,
                format!("peft_type must be a string, found {other}"),
            ))
        }
        None => {
            return Err(Error::format(
                path,
                "no peft_type: not a PEFT adapter config",
            ))
        }
    };
    if peft_type != PEFT_TYPE_PROMPT_TUNING {
        return Err(Error::unsupported(
            path.display().to_string(),
            format!(
                "peft_type is {peft_type} ({}); softprompt loads only PROMPT_TUNING adapters",
                other_peft_method(&peft_type)
            ),
        ));
    }

    let config: AdapterConfig = serde_json::from_value(value)
        .map_err(|e| Error::format(path, format!("invalid prompt-tuning config: {e}")))?;

    match config.task_type.as_deref() {
        Some(TASK_TYPE_CAUSAL_LM) => {}
        Some(other) => {
            let why = match other {
                "SEQ_2_SEQ_LM" => " (encoder-decoder models)",
                "SEQ_CLS" | "TOKEN_CLS" | "QUESTION_ANS" => {
                    " (it comes with a task head that softprompt does not have)"
                }
                "FEATURE_EXTRACTION" => " (embedding models)",
                _ => "",
            };
            return Err(Error::unsupported(
                path.display().to_string(),
                format!("task_type is {other}{why}; softprompt runs decoder-only language models and loads only CAUSAL_LM prompts"),
            ));
        }
        None => {
            return Err(Error::unsupported(
                path.display().to_string(),
                "task_type is missing (null); softprompt loads only CAUSAL_LM prompts",
            ))
        }
    }
    let p = config.num_virtual_tokens;
    if p == 0 {
        return Err(Error::format(
            path,
            "num_virtual_tokens is 0; a soft prompt has at least 1 virtual token",
        ));
    }
    if p > MAX_VIRTUAL_TOKENS {
        return Err(Error::unsupported(
            path.display().to_string(),
            format!("num_virtual_tokens is {p}; softprompt supports at most {MAX_VIRTUAL_TOKENS}"),
        ));
    }
    match config.num_transformer_submodules {
        None | Some(1) => {}
        Some(2) => {
            return Err(Error::unsupported(
                path.display().to_string(),
                "num_transformer_submodules is 2 (a prompt for an encoder-decoder model); only 1 is supported",
            ))
        }
        Some(n) => {
            return Err(Error::format(
                path,
                format!("num_transformer_submodules is {n}; PEFT uses 1 (decoder-only) or 2 (encoder-decoder)"),
            ))
        }
    }
    if let Some(d) = config.token_dim {
        if d == 0 || d > MAX_TOKEN_DIM {
            return Err(Error::format(
                path,
                format!("token_dim is {d}; supported 1..={MAX_TOKEN_DIM}"),
            ));
        }
    }
    if config
        .modules_to_save
        .as_ref()
        .is_some_and(|m| !m.is_null())
    {
        return Err(Error::unsupported(
            path.display().to_string(),
            "modules_to_save is set: this adapter also replaces base-model modules, which softprompt does not support",
        ));
    }
    Ok(config)
}

/// Read `prompt_embeddings` from a safetensors file and check it against the config:
/// `rows` rows and, if known, `token_dim` columns. Sizes are checked before the tensor
/// data is read: header length against the file size, then shape and dtype against the
/// config, then the exact file size.
fn read_prompt_tensor(path: &Path, rows: usize, token_dim: Option<usize>) -> Result<Tensor> {
    let f = File::open(path).map_err(|e| Error::io(path, e))?;
    let len = f.metadata().map_err(|e| Error::io(path, e))?.len();
    read_prompt_tensor_from(path, f, len, rows, token_dim)
}

/// Parse the bytes of an `adapter_model.safetensors` exactly as [`SoftPrompt::load`]
/// does, expecting `prompt_embeddings` of `rows` rows and, if given, `token_dim`
/// columns (from the adapter config); `path` only names the file in errors.
/// Bytes-in entry point for fuzzing (`fuzz/fuzz_targets/prompt_safetensors.rs`).
pub fn parse_prompt_safetensors(
    path: &Path,
    bytes: &[u8],
    rows: usize,
    token_dim: Option<usize>,
) -> Result<Tensor> {
    read_prompt_tensor_from(path, bytes, bytes.len() as u64, rows, token_dim)
}

/// [`read_prompt_tensor`] over any reader of `len` bytes.
fn read_prompt_tensor_from(
    path: &Path,
    mut f: impl Read,
    len: u64,
    rows: usize,
    token_dim: Option<usize>,
) -> Result<Tensor> {
    let corrupt = |msg: String| Error::format(path, msg);
    if len < 8 {
        return Err(corrupt(format!(
            "truncated or not a safetensors file: {len} bytes (it starts with an 8-byte header length)"
        )));
    }
    let mut n_buf = [0u8; 8];
    f.read_exact(&mut n_buf).map_err(|e| Error::io(path, e))?;
    let n = u64::from_le_bytes(n_buf);
    if n > MAX_HEADER_BYTES {
        return Err(corrupt(format!(
            "corrupt or not a safetensors file: header length {n} bytes (a prompt adapter's is a few hundred)"
        )));
    }
    if 8 + n > len {
        return Err(corrupt(format!(
            "truncated or corrupt safetensors file: the header claims {n} bytes but the file holds {len} bytes in all"
        )));
    }
    let mut header = vec![0u8; n as usize];
    f.read_exact(&mut header).map_err(|e| Error::io(path, e))?;
    let meta: safetensors::tensor::Metadata = serde_json::from_slice(&header)
        .map_err(|e| corrupt(format!("corrupt safetensors header: {e}")))?;

    let infos = meta.tensors();
    let info = match infos.get(PROMPT_TENSOR) {
        Some(i) => *i,
        None => {
            let mut names: Vec<&str> = infos.keys().map(|s| s.as_str()).collect();
            names.sort_unstable();
            return Err(corrupt(format!(
                "no tensor `{PROMPT_TENSOR}` (found: {}); not a prompt-tuning adapter",
                if names.is_empty() {
                    "none".to_string()
                } else {
                    names.join(", ")
                }
            )));
        }
    };
    if infos.len() > 1 {
        let mut others: Vec<&str> = infos
            .keys()
            .map(|s| s.as_str())
            .filter(|s| *s != PROMPT_TENSOR)
            .collect();
        others.sort_unstable();
        return Err(Error::unsupported(
            path.display().to_string(),
            format!(
                "holds tensors besides `{PROMPT_TENSOR}` ({}); a plain prompt-tuning adapter holds only that one",
                others.join(", ")
            ),
        ));
    }
    let dtype = info.dtype;
    let elem_bytes = match dtype {
        safetensors::Dtype::F32 => 4,
        safetensors::Dtype::F16 | safetensors::Dtype::BF16 => 2,
        other => {
            return Err(Error::unsupported(
                path.display().to_string(),
                format!("`{PROMPT_TENSOR}` has dtype {other}; supported: F32, F16, BF16"),
            ))
        }
    };
    let shape = info.shape.clone();
    let expect = match token_dim {
        Some(d) => format!("[{rows}, {d}]"),
        None => format!("[{rows}, token_dim]"),
    };
    let d = match shape.as_slice() {
        [r, d] if *r == rows && token_dim.is_none_or(|td| td == *d) => *d,
        _ => {
            return Err(corrupt(format!(
            "`{PROMPT_TENSOR}` has shape {shape:?}, but adapter_config.json (num_virtual_tokens × \
                 num_transformer_submodules = {rows} rows, token_dim {}) calls for {expect}",
            token_dim.map_or("null".to_string(), |d| d.to_string())
        )))
        }
    };
    if d == 0 || d > MAX_TOKEN_DIM {
        return Err(corrupt(format!(
            "`{PROMPT_TENSOR}` has {d} columns; supported 1..={MAX_TOKEN_DIM}"
        )));
    }
    // Metadata validation guarantees the data offsets cover exactly this tensor.
    let data_len = meta.data_len() as u64;
    debug_assert_eq!(data_len, (rows * d * elem_bytes) as u64);
    let expected_len = 8 + n + data_len;
    if len < expected_len {
        return Err(corrupt(format!(
            "truncated: {len} bytes, but its header describes {expected_len} bytes (a [{rows}, {d}] {dtype} tensor)"
        )));
    }
    if len > expected_len {
        return Err(corrupt(format!(
            "corrupt: {} unexpected bytes after the tensor data (expected {expected_len} bytes in all)",
            len - expected_len
        )));
    }

    // Sizes are known and bounded now: read the whole file and let the safetensors crate
    // validate it once more as a whole.
    let mut buf = Vec::with_capacity(len as usize);
    buf.extend_from_slice(&n_buf);
    buf.extend_from_slice(&header);
    (&mut f)
        .take(data_len)
        .read_to_end(&mut buf)
        .map_err(|e| Error::io(path, e))?;
    if buf.len() as u64 != expected_len {
        return Err(corrupt(format!(
            "truncated while reading: got {} of {expected_len} bytes",
            buf.len()
        )));
    }
    let st = safetensors::SafeTensors::deserialize(&buf)
        .map_err(|e| corrupt(format!("corrupt safetensors file: {e}")))?;
    let view = st
        .tensor(PROMPT_TENSOR)
        .map_err(|e| corrupt(format!("corrupt safetensors file: {e}")))?;
    let bytes = view.data();
    let data: Vec<f32> = match dtype {
        safetensors::Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        safetensors::Dtype::F16 => bytes
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        _ => bytes
            .chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
    };
    if let Some((row, col, v)) = first_non_finite(&data, d) {
        return Err(corrupt(format!(
            "`{PROMPT_TENSOR}` row {row} (virtual token {row}) holds {v} at column {col}; a soft prompt must be finite"
        )));
    }
    Ok(Tensor {
        shape: vec![rows, d],
        data,
    })
}

fn read_meta(path: &Path, token_dim: usize) -> Result<PromptMeta> {
    let bytes = read_capped(
        path,
        MAX_META_BYTES,
        "softprompt.json (soft prompt metadata)",
    )?;
    let value: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|e| Error::format(path, format!("malformed JSON: {e}")))?;
    if let Some(v) = value.get("format_version").and_then(|v| v.as_u64()) {
        if v > META_FORMAT_VERSION as u64 {
            return Err(Error::unsupported(
                path.display().to_string(),
                format!(
                    "format_version {v} was written by a newer softprompt; this build reads up to {META_FORMAT_VERSION}"
                ),
            ));
        }
    }
    let meta: PromptMeta = serde_json::from_value(value)
        .map_err(|e| Error::format(path, format!("invalid soft prompt metadata: {e}")))?;
    if meta.hidden_size != token_dim {
        return Err(Error::format(
            path,
            format!(
                "hidden_size {} does not match the {token_dim}-wide prompt_embeddings in adapter_model.safetensors",
                meta.hidden_size
            ),
        ));
    }
    Ok(meta)
}

/// First non-finite value as (row, column, value).
fn first_non_finite(data: &[f32], d: usize) -> Option<(usize, usize, f32)> {
    let i = data.iter().position(|v| !v.is_finite())?;
    Some((i / d.max(1), i % d.max(1), data[i]))
}

// ---------------------------------------------------------------------------------------
// Writing

/// `prompt_embeddings` as one F32 tensor with `{"format":"pt"}` metadata: the bytes PEFT
/// (through the safetensors library) writes for the same values.
fn serialize_prompt_tensor(
    t: &Tensor,
) -> std::result::Result<Vec<u8>, safetensors::SafeTensorError> {
    let mut bytes = Vec::with_capacity(t.data.len() * 4);
    for v in &t.data {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, t.shape.clone(), &bytes)?;
    let metadata = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize([(PROMPT_TENSOR, &view)], Some(metadata))
}

/// Write `bytes` to a new hidden temp file in `dir` (never an existing file), fsync it,
/// and return its path.
fn write_temp(dir: &Path, name: &str, bytes: &[u8]) -> Result<PathBuf> {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let pid = std::process::id();
    let mut attempt = 0;
    loop {
        let k = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = dir.join(format!(".{name}.{pid}.{k}.tmp"));
        match fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
        {
            Ok(mut f) => {
                let res = f.write_all(bytes).and_then(|_| f.sync_all());
                return match res {
                    Ok(()) => Ok(tmp),
                    Err(e) => {
                        drop(f);
                        let _ = fs::remove_file(&tmp);
                        Err(Error::io(&tmp, e))
                    }
                };
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && attempt < 100 => {
                attempt += 1
            }
            Err(e) => return Err(Error::io(&tmp, e)),
        }
    }
}

/// Make the renames durable (best effort: not every platform can sync a folder).
fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
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

// ---------------------------------------------------------------------------------------
// Fingerprints

/// Bytes of raw embedding data per leaf hash in [`model_fingerprint`] (part of the scheme).
pub const FINGERPRINT_CHUNK_BYTES: usize = 4 << 20;

/// Fingerprint of a base model, to tell whether a prompt was trained on it.
///
/// Scheme `v1` (stable; changing it invalidates stored fingerprints):
/// 1. The token-embedding table `[vocab, hidden]` as little-endian f32 bytes is cut into
///    [`FINGERPRINT_CHUNK_BYTES`] chunks (the last may be shorter); each chunk's SHA-256
///    is a leaf (computed in parallel).
/// 2. The root is SHA-256 of: `"softprompt-model-fingerprint-v1\n"`, then the text
///    `model_type=..;hidden_size=..;num_hidden_layers=..;num_attention_heads=..;
///    num_key_value_heads=..;head_dim=..;intermediate_size=..;vocab_size=..;embed_shape=VxH\n`
///    (resolved head_dim and kv heads, so a GGUF and an HF config of one model agree), then
///    the byte length and the leaf count as u64 LE, then the leaves in order.
/// 3. Result: `"sha256:"` + the first 16 hex digits of the root.
pub fn model_fingerprint(config: &LlamaConfig, embed_tokens: &Tensor) -> String {
    fingerprint_of(
        config,
        &embed_tokens.shape,
        embed_tokens.data.len(),
        |a, b| std::borrow::Cow::Borrowed(&embed_tokens.data[a..b]),
    )
}

/// [`model_fingerprint`] of a table kept as f32 or in GGUF blocks (same result for both:
/// the blocks are hashed as the f32 values they hold).
pub fn model_fingerprint_weight(config: &LlamaConfig, embed: &Weight) -> String {
    match embed.as_f32() {
        Some(t) => model_fingerprint(config, t),
        None => fingerprint_of(
            config,
            &[embed.rows(), embed.cols()],
            embed.numel(),
            |a, b| std::borrow::Cow::Owned(embed.read_flat(a, b)),
        ),
    }
}

/// The fingerprint of a `shape` table of `len` values; `values(a, b)` gives values `a..b`.
fn fingerprint_of<'a>(
    config: &LlamaConfig,
    shape: &[usize],
    len: usize,
    values: impl Fn(usize, usize) -> std::borrow::Cow<'a, [f32]> + Sync,
) -> String {
    let shape = shape
        .iter()
        .map(|s| s.to_string())
        .collect::<Vec<_>>()
        .join("x");
    let desc = format!(
        "model_type={};hidden_size={};num_hidden_layers={};num_attention_heads={};num_key_value_heads={};\
         head_dim={};intermediate_size={};vocab_size={};embed_shape={}\n",
        config.model_type,
        config.hidden_size,
        config.num_hidden_layers,
        config.num_attention_heads,
        config.num_kv_heads(),
        config.head_dim(),
        config.intermediate_size,
        config.vocab_size,
        shape
    );
    const FLOATS_PER_CHUNK: usize = FINGERPRINT_CHUNK_BYTES / 4;
    let leaves: Vec<[u8; 32]> = (0..len.div_ceil(FLOATS_PER_CHUNK))
        .into_par_iter()
        .map(|c| {
            let chunk = values(c * FLOATS_PER_CHUNK, ((c + 1) * FLOATS_PER_CHUNK).min(len));
            let mut h = Sha256::new();
            // Convert through a small stack buffer: no allocation, endian-independent.
            let mut buf = [0u8; 4096];
            for block in chunk.chunks(1024) {
                for (dst, v) in buf.chunks_exact_mut(4).zip(block) {
                    dst.copy_from_slice(&v.to_le_bytes());
                }
                h.update(&buf[..block.len() * 4]);
            }
            h.finalize().into()
        })
        .collect();
    let mut root = Sha256::new();
    root.update(b"softprompt-model-fingerprint-v1\n");
    root.update(desc.as_bytes());
    root.update(((len * 4) as u64).to_le_bytes());
    root.update((leaves.len() as u64).to_le_bytes());
    for l in &leaves {
        root.update(l);
    }
    short_hex(&root.finalize())
}

/// Fingerprint of a tokenizer's vocabulary, added tokens included.
///
/// Scheme `v1`: SHA-256 of `"softprompt-tokenizer-fingerprint-v1\n"` then, for every
/// (token, id) of `get_vocab(true)` in id order (ties by token): id as u32 LE, a kind byte
/// (0 model vocab, 1 added token, 2 added special token), the token's UTF-8 length as u32
/// LE, and its bytes. Result: `"sha256:"` + the first 16 hex digits.
pub fn tokenizer_fingerprint(tok: &tokenizers::Tokenizer) -> String {
    let added = tok.get_added_tokens_decoder();
    let mut vocab: Vec<(u32, String)> = tok
        .get_vocab(true)
        .into_iter()
        .map(|(t, id)| (id, t))
        .collect();
    vocab.sort_unstable();
    let mut h = Sha256::new();
    h.update(b"softprompt-tokenizer-fingerprint-v1\n");
    for (id, token) in &vocab {
        let kind: u8 = match added.get(id) {
            Some(a) if a.content == *token => {
                if a.special {
                    2
                } else {
                    1
                }
            }
            _ => 0,
        };
        h.update(id.to_le_bytes());
        h.update([kind]);
        h.update((token.len() as u32).to_le_bytes());
        h.update(token.as_bytes());
    }
    short_hex(&h.finalize())
}

fn short_hex(digest: &[u8]) -> String {
    let hex: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

// ---------------------------------------------------------------------------------------
// Initialisation (for training)

/// `[p, d]` values uniform in `[-range, range)`, reproducible from `seed`
/// (Lester et al.'s random init uses range 0.5).
pub fn random_uniform(p: usize, d: usize, range: f32, seed: u64) -> Tensor {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let data = (0..p * d)
        .map(|_| rng.gen_range(-1.0f32..1.0) * range)
        .collect();
    Tensor {
        shape: vec![p, d],
        data,
    }
}

/// A `[ids.len(), D]` prompt whose rows are copies of the embedding-table rows `ids`
/// (init from class labels, a text, or sampled vocabulary). `embed` is `[vocab, D]`.
pub fn from_vocab_rows(embed: &Weight, ids: &[u32]) -> Result<Tensor> {
    let (vocab, d) = (embed.rows(), embed.cols());
    if ids.is_empty() {
        return Err(Error::Input(
            "no token ids to initialise the soft prompt from".into(),
        ));
    }
    let mut data = Vec::with_capacity(ids.len() * d);
    for &id in ids {
        let i = id as usize;
        if i >= vocab {
            return Err(Error::Input(format!(
                "token id {id} is outside the vocabulary (size {vocab})"
            )));
        }
        data.extend_from_slice(&embed.row(i));
    }
    Ok(Tensor {
        shape: vec![ids.len(), d],
        data,
    })
}

/// `p` ids for a text init, as PEFT's TEXT init does: the text's ids truncated to `p`, or
/// repeated until there are `p`. Empty input gives an empty list.
pub fn repeat_ids(ids: &[u32], p: usize) -> Vec<u32> {
    if ids.is_empty() {
        return Vec::new();
    }
    ids.iter().copied().cycle().take(p).collect()
}

/// `p` distinct ids drawn uniformly from `0..min(limit, vocab)` (Lester et al. sample from
/// the 5,000 most common tokens; with BPE vocabularies low ids are the frequent merges).
/// Draws with replacement only when `p` exceeds the range.
pub fn sample_vocab_ids(vocab: usize, limit: usize, p: usize, seed: u64) -> Vec<u32> {
    let n = vocab.min(limit);
    if n == 0 {
        return Vec::new();
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    if p <= n {
        rand::seq::index::sample(&mut rng, n, p)
            .into_iter()
            .map(|i| i as u32)
            .collect()
    } else {
        (0..p).map(|_| rng.gen_range(0..n) as u32).collect()
    }
}
