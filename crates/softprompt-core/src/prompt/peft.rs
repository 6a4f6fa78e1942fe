//! The PEFT prompt-tuning (and prefix-tuning: a deep prompt) adapter on disk: [`AdapterConfig`] (`adapter_config.json`),
//! the `prompt_embeddings` safetensors file, and our `softprompt.json`; reading a folder
//! with every check ([`SoftPrompt::load`], and the bytes-in entry points the fuzz targets
//! use) and writing one atomically ([`SoftPrompt::save`]).
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
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{
    PromptMeta, SoftPrompt, ADAPTER_CONFIG_FILE, ADAPTER_PICKLE_FILE, ADAPTER_WEIGHTS_FILE,
    MAX_TOKEN_DIM, MAX_VIRTUAL_TOKENS, META_FILE, META_FORMAT_VERSION, PEFT_TYPE_PREFIX_TUNING,
    PEFT_TYPE_PROMPT_TUNING, PROMPT_TENSOR, TASK_TYPE_CAUSAL_LM,
};
use crate::fsio::{sync_dir, write_temp};
use crate::{Error, Result, Tensor};

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
    /// Prefix tuning only: the prefix encoder's hidden size (= `token_dim` without a
    /// projection).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoder_hidden_size: Option<usize>,
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
    /// Prefix tuning only: whether an MLP produces the prefix (unsupported when true: the
    /// file would hold the MLP, not the keys and values).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix_projection: Option<bool>,
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

pub(super) fn default_init() -> String {
    "RANDOM".into()
}

/// Keys of PEFT's `PromptTuningConfig` that its `PrefixTuningConfig` does not have.
const PROMPT_TUNING_ONLY: [&str; 4] = [
    "prompt_tuning_init",
    "prompt_tuning_init_text",
    "tokenizer_kwargs",
    "tokenizer_name_or_path",
];

impl AdapterConfig {
    /// The JSON PEFT writes for this config's `peft_type`: keys sorted, 2-space indent, the
    /// key set of that method's config class (a prefix-tuning config has no
    /// `prompt_tuning_init*`/`tokenizer_*`, and has `init_weights`).
    pub fn to_json(&self) -> std::result::Result<String, serde_json::Error> {
        let mut v = serde_json::to_value(self)?;
        if let (Some(obj), true) = (v.as_object_mut(), self.is_prefix()) {
            for k in PROMPT_TUNING_ONLY {
                obj.remove(k);
            }
            obj.entry("init_weights").or_insert(serde_json::Value::Null);
        }
        serde_json::to_string_pretty(&v)
    }

    /// A prefix-tuning (deep prompt) config.
    pub fn is_prefix(&self) -> bool {
        self.peft_type == PEFT_TYPE_PREFIX_TUNING
    }

    /// Columns of `prompt_embeddings`: `token_dim` for prompt tuning, `num_layers * 2 *
    /// token_dim` for prefix tuning (`None` when the config leaves it to the model).
    pub fn tensor_width(&self) -> Option<usize> {
        if self.is_prefix() {
            Some(
                self.num_layers?
                    .checked_mul(2)?
                    .checked_mul(self.token_dim?)?,
            )
        } else {
            self.token_dim
        }
    }

    /// Rows of `prompt_embeddings`: `num_virtual_tokens * num_transformer_submodules`.
    pub fn total_virtual_tokens(&self) -> usize {
        self.num_virtual_tokens
            .saturating_mul(self.num_transformer_submodules.unwrap_or(1))
    }
}

impl SoftPrompt {
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
        let embeddings = read_prompt_tensor(&weights_path, rows, config.tensor_width())?;
        let d = embeddings.shape[1];

        let meta_path = dir.join(META_FILE);
        let meta = if meta_path.exists() {
            Some(read_meta(&meta_path, (!config.is_prefix()).then_some(d))?)
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
        let config_json = self.config.to_json().map_err(|e| {
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
    crate::fsio::read_at_most(path, f, max)?
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
    if peft_type != PEFT_TYPE_PROMPT_TUNING && peft_type != PEFT_TYPE_PREFIX_TUNING {
        return Err(Error::unsupported(
            path.display().to_string(),
            format!(
                "peft_type is {peft_type} ({}); softprompt loads PROMPT_TUNING and PREFIX_TUNING adapters",
                other_peft_method(&peft_type)
            ),
        ));
    }

    let config: AdapterConfig = serde_json::from_value(value)
        .map_err(|e| Error::format(path, format!("invalid prompt-tuning config: {e}")))?;
    if config.is_prefix() {
        if config.prefix_projection == Some(true) {
            return Err(Error::unsupported(
                path.display().to_string(),
                "prefix_projection is true: the adapter holds a prefix-encoder MLP, not the keys and values; \
                 softprompt loads prefix-tuning adapters saved without a projection",
            ));
        }
        for (name, v) in [
            ("num_layers", config.num_layers),
            ("token_dim", config.token_dim),
        ] {
            if v.is_none_or(|v| v == 0) {
                return Err(Error::format(
                    path,
                    format!("a PREFIX_TUNING config needs {name} (the model's layers / key-value width); it is missing or 0"),
                ));
            }
        }
        if config.tensor_width().is_none_or(|w| w > MAX_TOKEN_DIM) {
            return Err(Error::unsupported(
                path.display().to_string(),
                format!(
                    "num_layers x 2 x token_dim = {} values per virtual token; supported up to {MAX_TOKEN_DIM}",
                    config.tensor_width().map_or("too many".into(), |w| w.to_string())
                ),
            ));
        }
    }

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

/// `softprompt.json`; `token_dim`, when given (input prompts), must be its `hidden_size`.
fn read_meta(path: &Path, token_dim: Option<usize>) -> Result<PromptMeta> {
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
    if let Some(token_dim) = token_dim.filter(|&d| d != meta.hidden_size) {
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
pub(super) fn first_non_finite(data: &[f32], d: usize) -> Option<(usize, usize, f32)> {
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
