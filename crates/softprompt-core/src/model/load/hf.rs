//! Hugging Face model folders: `config.json`, `tokenizer.json` and safetensors weights
//! (`model.safetensors`, or shards listed in `model.safetensors.index.json`).
//!
//! Loading converts F32/F16/BF16 tensors to f32 and keeps shapes as stored (linear weights
//! `[out, in]`). Saving writes f32 safetensors (optionally sharded) atomically: everything goes
//! into a temporary sibling folder first, which is then renamed into place.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::io::{ErrorKind, Write};
use std::path::{Component, Path, PathBuf};

use rayon::prelude::*;
use safetensors::tensor::{Dtype, TensorView, View};
use safetensors::SafeTensors;

use super::{Loaded, LoadedWeights};
use crate::compute::weight::WeightFormat;
use crate::model::{config, LlamaConfig};
use crate::{Error, Result, Tensor};

/// Model types whose config.json and weight names the Llama implementation understands.
pub const SUPPORTED_MODEL_TYPES: &[&str] = &["llama", "mistral", "qwen2", "qwen3", "gemma3_text"];

pub const CONFIG_FILE: &str = "config.json";
pub const TOKENIZER_FILE: &str = "tokenizer.json";
pub const WEIGHTS_FILE: &str = "model.safetensors";
pub const WEIGHTS_INDEX_FILE: &str = "model.safetensors.index.json";
pub const TOKENIZER_CONFIG_FILE: &str = "tokenizer_config.json";
pub const CHAT_TEMPLATE_FILE: &str = "chat_template.jinja";

/// Largest chat template / `tokenizer_config.json` read (real ones are a few KiB).
pub const MAX_CHAT_TEMPLATE_BYTES: u64 = 1 << 20;

/// The chat template: `chat_template.jinja`, else `tokenizer_config.json`'s `chat_template`
/// (a string, or a list of `{name, template}` of which "default" is taken).
fn read_chat_template(dir: &Path) -> Result<Option<String>> {
    let small = |p: &Path| -> Result<Option<Vec<u8>>> {
        match File::open(p) {
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(p, e)),
            Ok(f) => read_capped(p, f, MAX_CHAT_TEMPLATE_BYTES).map(Some),
        }
    };
    let p = dir.join(CHAT_TEMPLATE_FILE);
    if let Some(t) = small(&p)? {
        return String::from_utf8(t)
            .map(Some)
            .map_err(|_| Error::format(&p, "not UTF-8"));
    }
    let p = dir.join(TOKENIZER_CONFIG_FILE);
    let Some(bytes) = small(&p)? else {
        return Ok(None);
    };
    let v: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| Error::format(&p, format!("not JSON: {e}")))?;
    Ok(match &v["chat_template"] {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Array(list) => list
            .iter()
            .find(|t| t["name"] == "default")
            .and_then(|t| t["template"].as_str())
            .map(String::from),
        _ => None,
    })
}

/// Largest `config.json` read (real ones are a few KiB).
pub const MAX_CONFIG_JSON_BYTES: u64 = 16 << 20;
/// Largest `tokenizer.json` read (the largest real ones, 256k-token vocabularies, are
/// about 35 MB; parsing takes a small multiple of the file size in memory).
pub const MAX_TOKENIZER_JSON_BYTES: u64 = 128 << 20;
/// Largest `model.safetensors.index.json` read (real ones are well under 1 MiB).
pub const MAX_INDEX_JSON_BYTES: u64 = 64 << 20;

/// Read an opened JSON side file whole, refusing more than `cap` bytes (a larger regular
/// file without reading it; anything else after reading at most `cap + 1` bytes).
fn read_capped(path: &Path, file: File, cap: u64) -> Result<Vec<u8>> {
    crate::fsio::read_at_most(path, file, cap)?.ok_or_else(|| {
        Error::format(
            path,
            format!("larger than {} MiB; refusing to read it", cap >> 20),
        )
    })
}

/// Load a Hugging Face model folder (Llama, Mistral or Qwen2 architecture).
pub fn load_hf_folder(dir: &Path) -> Result<LoadedWeights> {
    load_hf_folder_with(dir, WeightFormat::F32)
}

/// [`load_hf_folder`]; with [`WeightFormat::Bf16`] each matrix is packed as it is read
/// ([`super::finish`]). (Quantized needs GGUF blocks: refused by the caller.)
pub fn load_hf_folder_with(dir: &Path, format: WeightFormat) -> Result<LoadedWeights> {
    if !dir.is_dir() {
        return Err(Error::io(
            dir,
            std::io::Error::new(ErrorKind::NotFound, "no such model folder"),
        ));
    }
    let config = read_config(dir)?;
    let tokenizer = read_tokenizer(dir)?;

    let single = dir.join(WEIGHTS_FILE);
    let index = dir.join(WEIGHTS_INDEX_FILE);
    let mut matrices = HashMap::new();
    let (weights, dtypes) = if single.is_file() {
        let (w, d) = read_safetensors(&single, format)?;
        (super::sort(w, &mut matrices), d)
    } else if index.is_file() {
        let (shards, weight_map) = read_index(&index)?;
        let mut weights = HashMap::new();
        let mut dtypes = BTreeSet::new();
        for shard in &shards {
            let path = dir.join(shard);
            let (w, d) = read_safetensors(&path, format)?;
            dtypes.extend(d);
            for (name, t) in w {
                if weights.contains_key(&name) || matrices.contains_key(&name) {
                    return Err(Error::format(
                        &path,
                        format!("tensor {name} also appears in another shard"),
                    ));
                }
                match t {
                    Loaded::Tensor(t) => {
                        weights.insert(name, t);
                    }
                    Loaded::Matrix(w) => {
                        matrices.insert(name, w);
                    }
                }
            }
        }
        for (name, shard) in &weight_map {
            if !weights.contains_key(name) && !matrices.contains_key(name) {
                return Err(Error::format(
                    &index,
                    format!("weight_map lists tensor {name} in {shard}, but that shard does not contain it"),
                ));
            }
        }
        (weights, dtypes)
    } else {
        let hint = if dir.join("pytorch_model.bin").exists() {
            " (only pytorch_model.bin is present: softprompt reads safetensors only; convert it, or use a .gguf)"
        } else {
            ""
        };
        return Err(Error::io(
            &single,
            std::io::Error::new(
                ErrorKind::NotFound,
                format!("no {WEIGHTS_FILE} or {WEIGHTS_INDEX_FILE} in the folder{hint}"),
            ),
        ));
    };
    if weights.is_empty() && matrices.is_empty() {
        return Err(Error::format(dir, "the safetensors files hold no tensors"));
    }

    let names: Vec<&str> = dtypes.iter().map(|d| d.as_str()).collect();
    let stored_dtype = if names == ["F32"] {
        "safetensors F32".to_string()
    } else {
        format!("safetensors {}, converted to f32", names.join("+"))
    };
    Ok(LoadedWeights {
        config,
        weights,
        matrices,
        tokenizer,
        source: dir.display().to_string(),
        stored_dtype,
        chat_template: read_chat_template(dir)?,
    })
}

/// Read and check `config.json`: well-formed JSON, a supported `model_type`, Llama-family fields.
pub fn read_config(dir: &Path) -> Result<LlamaConfig> {
    let path = dir.join(CONFIG_FILE);
    let file = File::open(&path).map_err(|e| {
        if e.kind() == ErrorKind::NotFound {
            Error::io(
                &path,
                std::io::Error::new(
                    ErrorKind::NotFound,
                    "missing: not a Hugging Face model folder",
                ),
            )
        } else {
            Error::io(&path, e)
        }
    })?;
    let bytes = read_capped(&path, file, MAX_CONFIG_JSON_BYTES)?;
    let mut value: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|e| Error::format(&path, format!("invalid JSON: {e}")))?;
    let model_type = value
        .get("model_type")
        .and_then(|v| v.as_str())
        .unwrap_or("")
        .to_string();
    let model_type = model_type.as_str();
    if model_type.is_empty() {
        return Err(Error::format(&path, "no \"model_type\" field"));
    }
    if !SUPPORTED_MODEL_TYPES.contains(&model_type) {
        return Err(Error::unsupported(
            dir.display().to_string(),
            format!(
                "model_type \"{model_type}\" (supported: {})",
                SUPPORTED_MODEL_TYPES.join(", ")
            ),
        ));
    }
    if let Some(obj) = value.as_object_mut() {
        config::fill_transformers_defaults(obj);
    }
    let cfg: LlamaConfig = serde_json::from_value(value)
        .map_err(|e| Error::format(&path, format!("not a usable {model_type} config: {e}")))?;
    let unsupported = |msg: String| Error::unsupported(path.display().to_string(), msg);
    if cfg.attention_bias && matches!(model_type, "llama" | "qwen3" | "gemma3_text") {
        return Err(unsupported(
            "attention_bias = true (transformers then puts a bias on o_proj too, which \
             softprompt does not implement)"
                .into(),
        ));
    }
    let mut ignored = Vec::new();
    cfg.check_noting(&mut ignored).map_err(unsupported)?;
    for line in ignored {
        tracing::warn!("{}: {line}", path.display());
    }
    Ok(cfg)
}

fn read_tokenizer(dir: &Path) -> Result<tokenizers::Tokenizer> {
    let path = dir.join(TOKENIZER_FILE);
    if !path.is_file() {
        let hint = if dir.join("tokenizer.model").exists() {
            " (only tokenizer.model is present; softprompt needs the fast tokenizer file tokenizer.json)"
        } else {
            ""
        };
        return Err(Error::io(
            &path,
            std::io::Error::new(ErrorKind::NotFound, format!("missing{hint}")),
        ));
    }
    let file = File::open(&path).map_err(|e| Error::io(&path, e))?;
    let bytes = read_capped(&path, file, MAX_TOKENIZER_JSON_BYTES)?;
    tokenizers::Tokenizer::from_bytes(&bytes)
        .map_err(|e| Error::format(&path, format!("cannot read tokenizer: {e}")))
}

/// Parse `model.safetensors.index.json`: the distinct shard files (in first-seen order, each a
/// plain relative path inside the folder) and the tensor → shard map.
pub fn read_index(path: &Path) -> Result<(Vec<String>, BTreeMap<String, String>)> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let bytes = read_capped(path, file, MAX_INDEX_JSON_BYTES)?;
    let value: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|e| Error::format(path, format!("invalid JSON: {e}")))?;
    let map = value
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| Error::format(path, "no \"weight_map\" object"))?;
    let mut weight_map = BTreeMap::new();
    let mut shards: Vec<String> = Vec::new();
    for (name, file) in map {
        let file = file.as_str().ok_or_else(|| {
            Error::format(
                path,
                format!("weight_map entry for {name} is not a file name"),
            )
        })?;
        if !is_plain_relative(file) {
            return Err(Error::format(
                path,
                format!("shard path \"{file}\" (for {name}) leaves the model folder; refusing to read it"),
            ));
        }
        if !shards.iter().any(|s| s == file) {
            shards.push(file.to_string());
        }
        weight_map.insert(name.clone(), file.to_string());
    }
    if shards.is_empty() {
        return Err(Error::format(path, "empty weight_map"));
    }
    Ok((shards, weight_map))
}

/// A relative path that stays inside its folder: no `..`, no root, no drive prefix.
fn is_plain_relative(p: &str) -> bool {
    let comps = Path::new(p).components();
    let mut normal = false;
    for c in comps {
        match c {
            Component::Normal(_) => normal = true,
            Component::CurDir => {}
            _ => return false,
        }
    }
    normal
}

/// A tensor and its name.
type Named = (String, Loaded);

/// Memory-map one safetensors file and convert every tensor to f32, then as
/// [`super::finish`] leaves it for `format`; also the dtypes it stores.
fn read_safetensors(path: &Path, format: WeightFormat) -> Result<(Vec<Named>, BTreeSet<String>)> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    // SAFETY: the map is read-only and lives only inside this function; like every mmap-based
    // model loader we assume the file is not truncated by another process while we read it.
    let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
    let st = SafeTensors::deserialize(&mmap).map_err(|e| {
        Error::format(
            path,
            format!("not a valid safetensors file (truncated or corrupt?): {e}"),
        )
    })?;
    let views = st.tensors();
    let mut dtypes = BTreeSet::new();
    for (name, view) in &views {
        match view.dtype() {
            Dtype::F32 | Dtype::F16 | Dtype::BF16 => {
                dtypes.insert(format!("{:?}", view.dtype()));
            }
            other => {
                return Err(Error::unsupported(
                    format!("{}: tensor {name}", path.display()),
                    format!("dtype {other:?} (softprompt reads F32, F16 and BF16)"),
                ))
            }
        }
    }
    let weights = views
        .par_iter()
        .map(|(name, view)| (name.clone(), super::finish(format, name, to_f32(view))))
        .collect();
    Ok((weights, dtypes))
}

fn to_f32(view: &TensorView<'_>) -> Tensor {
    let bytes = view.data();
    let data: Vec<f32> = match view.dtype() {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        Dtype::F16 => bytes
            .chunks_exact(2)
            .map(|b| half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32())
            .collect(),
        Dtype::BF16 => bytes
            .chunks_exact(2)
            .map(|b| half::bf16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32())
            .collect(),
        // Filtered out by the caller.
        _ => Vec::new(),
    };
    // The safetensors crate checked that the byte length matches shape × dtype size.
    Tensor {
        shape: view.shape().to_vec(),
        data,
    }
}

/// An f32 tensor as a safetensors view; bytes are produced one tensor at a time while writing.
struct F32View<'a>(&'a Tensor);

impl View for F32View<'_> {
    fn dtype(&self) -> Dtype {
        Dtype::F32
    }
    fn shape(&self) -> &[usize] {
        &self.0.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Owned(self.0.data.iter().flat_map(|x| x.to_le_bytes()).collect())
    }
    fn data_len(&self) -> usize {
        self.0.data.len() * 4
    }
}

/// Save as a Hugging Face folder: `config.json` ([`transformers_config`]), f32
/// `model.safetensors` — or, when `max_shard_bytes` is given and the weights do not fit in one
/// shard, `model-0000i-of-0000N.safetensors` plus `model.safetensors.index.json` — and
/// `tokenizer.json`. `dir` must not exist or be an empty folder; it is written atomically.
pub fn save_hf_folder(
    dir: &Path,
    lw: &LoadedWeights,
    max_shard_bytes: Option<usize>,
) -> Result<()> {
    if dir.exists() {
        let mut entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
        if entries.next().is_some() {
            return Err(Error::io(
                dir,
                std::io::Error::new(
                    ErrorKind::AlreadyExists,
                    "folder exists and is not empty; refusing to overwrite it",
                ),
            ));
        }
    }
    for (name, t) in &lw.weights {
        if t.shape.iter().product::<usize>() != t.data.len() {
            return Err(Error::Input(format!(
                "tensor {name}: shape {:?} does not match its {} values",
                t.shape,
                t.data.len()
            )));
        }
    }
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(|e| Error::io(&parent, e))?;
    let base = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let tmp = parent.join(format!(".{base}.tmp-{}-{nanos}", std::process::id()));
    std::fs::create_dir(&tmp).map_err(|e| Error::io(&tmp, e))?;

    let result = write_folder(&tmp, lw, max_shard_bytes).and_then(|()| {
        if dir.exists() {
            // Known empty (checked above); a plain rename over it is not portable.
            std::fs::remove_dir(dir).map_err(|e| Error::io(dir, e))?;
        }
        std::fs::rename(&tmp, dir).map_err(|e| Error::io(dir, e))
    });
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result
}

/// `config.json` as transformers 5.24 writes it for the model's architecture: the fields of
/// its config class (`LlamaConfig`, `MistralConfig`, `Qwen2Config`, `Qwen3Config`,
/// `Gemma3TextConfig`) with the types the class declares (its strict dataclass refuses a
/// float where it declares an int, and the reverse), the RoPE in `rope_parameters`, and
/// `"dtype": "float32"`. Values that change the computation are the ones softprompt uses, so
/// transformers computes what softprompt does.
pub fn transformers_config(c: &LlamaConfig) -> Result<serde_json::Value> {
    use serde_json::{json, Value};
    let bad = |m: String| Error::Input(format!("cannot export the model config: {m}"));
    c.check().map_err(bad)?;
    let gemma = c.is_gemma3();
    let (model_type, class) = match c.model_type.as_str() {
        "llama" => ("llama", "LlamaForCausalLM"),
        "mistral" => ("mistral", "MistralForCausalLM"),
        "qwen2" => ("qwen2", "Qwen2ForCausalLM"),
        "qwen3" => ("qwen3", "Qwen3ForCausalLM"),
        _ if gemma => ("gemma3_text", "Gemma3ForCausalLM"),
        other => {
            return Err(bad(format!(
                "model_type \"{other}\" has no transformers writer"
            )))
        }
    };
    let eos = match &c.eos_token_id {
        None => Value::Null,
        Some(config::TokenIds::One(x)) => json!(x),
        Some(config::TokenIds::Many(v)) => json!(v),
    };
    let window = c.sliding_window.filter(|&w| w > 0);
    let layer_types: Vec<&str> = (0..c.num_hidden_layers)
        .map(|l| match window.is_some() && c.is_sliding_layer(l) {
            true => "sliding_attention",
            false => "full_attention",
        })
        .collect();
    let mut m = json!({
        "architectures": [class],
        "model_type": model_type,
        "vocab_size": c.vocab_size,
        "hidden_size": c.hidden_size,
        "intermediate_size": c.intermediate_size,
        "num_hidden_layers": c.num_hidden_layers,
        "num_attention_heads": c.num_attention_heads,
        "num_key_value_heads": c.num_kv_heads(),
        "head_dim": c.head_dim(),
        "max_position_embeddings": c.max_position_embeddings,
        "rms_norm_eps": c.rms_norm_eps,
        "tie_word_embeddings": c.tie_word_embeddings,
        "bos_token_id": c.bos_token_id,
        "eos_token_id": eos,
        "pad_token_id": c.pad_token_id,
        "rope_parameters": c.rope_parameters_v5().map_err(bad)?,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "use_cache": true,
        "dtype": "float32",
    });
    let extra = match model_type {
        "llama" => json!({
            "hidden_act": c.hidden_act,
            "attention_bias": c.attention_bias,
            "mlp_bias": false,
            "pretraining_tp": 1,
        }),
        "mistral" => json!({ "hidden_act": c.hidden_act, "sliding_window": window }),
        "qwen2" | "qwen3" => {
            let on = c.use_sliding_window == Some(true) && window.is_some();
            let mut q = json!({
                "hidden_act": c.hidden_act,
                "use_sliding_window": on,
                "sliding_window": if on { window } else { None },
                "max_window_layers": c.max_window_layers.unwrap_or(28),
                "layer_types": layer_types,
            });
            if model_type == "qwen3" {
                q["attention_bias"] = json!(c.attention_bias);
            }
            q
        }
        _ => {
            let s = c.query_pre_attn_scalar.unwrap_or(c.head_dim() as f64);
            if s.fract() != 0.0 || s <= 0.0 || s > u32::MAX as f64 {
                return Err(bad(format!(
                    "query_pre_attn_scalar = {s}: transformers' Gemma3TextConfig declares a \
                     positive int"
                )));
            }
            json!({
                "hidden_activation": c.activation(),
                "query_pre_attn_scalar": s as u64,
                "sliding_window": window,
                "layer_types": layer_types,
                "final_logit_softcapping": null,
                "attn_logit_softcapping": null,
                "use_bidirectional_attention": false,
                "attention_bias": false,
            })
        }
    };
    if let (Some(m), Value::Object(x)) = (m.as_object_mut(), extra) {
        m.extend(x);
    }
    Ok(m)
}

fn write_folder(tmp: &Path, lw: &LoadedWeights, max_shard_bytes: Option<usize>) -> Result<()> {
    let cfg = transformers_config(&lw.config)?;
    let cfg_path = tmp.join(CONFIG_FILE);
    let text = serde_json::to_string_pretty(&cfg)
        .map_err(|e| Error::Input(format!("cannot serialize the model config: {e}")))?;
    write_file(&cfg_path, text.as_bytes())?;

    // Weights, in natural name order (layers.2 before layers.10).
    let mut names: Vec<&String> = lw.weights.keys().collect();
    names.sort_by_cached_key(|n| natural_key(n));
    let mut shards: Vec<Vec<&String>> = vec![Vec::new()];
    let mut cur = 0usize;
    let limit = max_shard_bytes.unwrap_or(usize::MAX);
    for name in names {
        let bytes = lw.weights[name].data.len() * 4;
        let last = shards.len() - 1;
        if !shards[last].is_empty() && cur.saturating_add(bytes) > limit {
            shards.push(Vec::new());
            cur = 0;
        }
        let last = shards.len() - 1;
        shards[last].push(name);
        cur = cur.saturating_add(bytes);
    }
    let mut meta = HashMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    if shards.len() == 1 {
        write_shard(&tmp.join(WEIGHTS_FILE), lw, &shards[0], &meta)?;
    } else {
        let n = shards.len();
        let mut weight_map = serde_json::Map::new();
        let mut total = 0usize;
        for (i, shard) in shards.iter().enumerate() {
            let file = format!("model-{:05}-of-{n:05}.safetensors", i + 1);
            write_shard(&tmp.join(&file), lw, shard, &meta)?;
            for name in shard {
                total += lw.weights[*name].data.len() * 4;
                weight_map.insert((*name).clone(), serde_json::Value::String(file.clone()));
            }
        }
        let index =
            serde_json::json!({ "metadata": { "total_size": total }, "weight_map": weight_map });
        let text = serde_json::to_string_pretty(&index)
            .map_err(|e| Error::Input(format!("cannot serialize the weight index: {e}")))?;
        write_file(&tmp.join(WEIGHTS_INDEX_FILE), text.as_bytes())?;
    }

    let tok_path = tmp.join(TOKENIZER_FILE);
    lw.tokenizer
        .save(&tok_path, false)
        .map_err(|e| Error::io(&tok_path, std::io::Error::other(e.to_string())))?;
    if let Some(t) = &lw.chat_template {
        write_file(&tmp.join(CHAT_TEMPLATE_FILE), t.as_bytes())?;
    }
    Ok(())
}

fn write_shard(
    path: &Path,
    lw: &LoadedWeights,
    names: &[&String],
    meta: &HashMap<String, String>,
) -> Result<()> {
    let views = names.iter().map(|n| (n.as_str(), F32View(&lw.weights[*n])));
    safetensors::serialize_to_file(views, Some(meta.clone()), path).map_err(|e| match e {
        safetensors::SafeTensorError::IoError(io) => Error::io(path, io),
        other => Error::format(path, format!("cannot write safetensors: {other}")),
    })
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = File::create(path).map_err(|e| Error::io(path, e))?;
    f.write_all(bytes).map_err(|e| Error::io(path, e))?;
    f.sync_all().map_err(|e| Error::io(path, e))
}

#[derive(PartialEq, Eq, PartialOrd, Ord)]
enum Part {
    Num(u64),
    Text(String),
}

/// Split a name into digit runs (compared as numbers) and other text.
fn natural_key(s: &str) -> Vec<Part> {
    let mut parts = Vec::new();
    let mut buf = String::new();
    let mut digits = false;
    for c in s.chars() {
        let d = c.is_ascii_digit();
        if d != digits && !buf.is_empty() {
            parts.push(make_part(std::mem::take(&mut buf), digits));
        }
        digits = d;
        buf.push(c);
    }
    if !buf.is_empty() {
        parts.push(make_part(buf, digits));
    }
    parts
}

fn make_part(s: String, digits: bool) -> Part {
    match (digits, s.parse::<u64>()) {
        (true, Ok(n)) => Part::Num(n),
        _ => Part::Text(s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_relative_paths() {
        assert!(is_plain_relative("model-00001-of-00002.safetensors"));
        assert!(is_plain_relative("sub/shard.safetensors"));
        assert!(!is_plain_relative("../evil.safetensors"));
        assert!(!is_plain_relative("a/../../evil.safetensors"));
        assert!(!is_plain_relative("/etc/passwd"));
        assert!(is_plain_relative("./x.safetensors"));
        assert!(!is_plain_relative("."));
        assert!(!is_plain_relative(""));
    }

    #[test]
    fn natural_order() {
        let mut v = vec![
            "model.layers.10.a",
            "model.layers.2.a",
            "lm_head.weight",
            "model.layers.2.b",
        ];
        v.sort_by_cached_key(|n| natural_key(n));
        assert_eq!(
            v,
            [
                "lm_head.weight",
                "model.layers.2.a",
                "model.layers.2.b",
                "model.layers.10.a"
            ]
        );
    }
}
