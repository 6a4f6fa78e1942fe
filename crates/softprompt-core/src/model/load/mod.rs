//! Model sources: a GGUF file, a Hugging Face folder, a hub id, or the default alias.
//! Every loader returns weights under Hugging Face names in f32, `[out, in]` row-major.

pub mod fetch;
pub mod gguf;
pub mod hf;
pub mod hub;

use std::collections::HashMap;
use std::path::PathBuf;

use crate::compute::bf16::PackedBf16;
use crate::compute::weight::{Weight, WeightFormat};
use crate::model::LlamaConfig;
use crate::{Error, Result, Tensor};

/// Everything a loader produces: config, f32 weights under HF names, tokenizer.
pub struct LoadedWeights {
    pub config: LlamaConfig,
    /// HF tensor names (`model.layers.0.self_attn.q_proj.weight`, ...), f32.
    pub weights: HashMap<String, Tensor>,
    /// Matrices already in the form the model keeps them, HF names: GGUF blocks
    /// ([`WeightFormat::Quantized`]) or packed bf16 ([`WeightFormat::Bf16`], converted one
    /// tensor at a time so that no full f32 copy of the model is ever held); else empty.
    pub matrices: HashMap<String, Weight>,
    pub tokenizer: tokenizers::Tokenizer,
    /// Human-readable origin, e.g. the file path.
    pub source: String,
    /// How the weights were stored, e.g. "GGUF (Q4_1, Q8_0) dequantized to f32".
    pub stored_dtype: String,
    /// Jinja chat template (GGUF `tokenizer.chat_template`, HF `tokenizer_config.json`
    /// `chat_template` or `chat_template.jinja`), when the model has one.
    pub chat_template: Option<String>,
}

/// A tensor as a loader hands it on: f32, or a matrix already in its final form.
pub(crate) enum Loaded {
    Tensor(Tensor),
    Matrix(Weight),
}

/// With [`WeightFormat::Bf16`], a matrix is packed right after it is read, so that no full
/// f32 copy of the model is ever held; the token table stays f32 here (the model fingerprint
/// reads it as stored, and [`crate::model::FrozenModel::load_with`] packs it after).
pub(crate) fn finish(format: WeightFormat, name: &str, t: Tensor) -> Loaded {
    if format == WeightFormat::Bf16 && t.shape.len() == 2 && name != "model.embed_tokens.weight" {
        let w = PackedBf16::pack(&t.data, t.shape[0], t.shape[1]);
        return Loaded::Matrix(Weight::Bf16(w));
    }
    Loaded::Tensor(t)
}

/// The f32 tensors of `loaded`; its finished matrices go into `matrices`.
pub(crate) fn sort(
    loaded: Vec<(String, Loaded)>,
    matrices: &mut HashMap<String, Weight>,
) -> HashMap<String, Tensor> {
    let mut tensors = HashMap::new();
    for (name, t) in loaded {
        match t {
            Loaded::Tensor(t) => {
                tensors.insert(name, t);
            }
            Loaded::Matrix(w) => {
                matrices.insert(name, w);
            }
        }
    }
    tensors
}

/// The alias of the default model.
pub const DEFAULT_ALIAS: &str = "smollm2-135m";

#[derive(Clone, Debug, PartialEq)]
pub enum ModelSource {
    /// A built-in alias (fetched on first use into the cache).
    Alias(String),
    Gguf(PathBuf),
    HfFolder(PathBuf),
    /// `hf:org/name[@revision]` or a bare `org/name` that is not a local path.
    Hub {
        repo: String,
        revision: Option<String>,
    },
}

impl ModelSource {
    /// Local paths win over hub ids; `hf:` forces the hub.
    pub fn parse(spec: &str) -> Result<Self> {
        if spec.is_empty() {
            return Err(Error::setting("model", "model source is empty"));
        }
        if let Some(rest) = spec.strip_prefix("hf:") {
            return Ok(Self::hub(rest));
        }
        if fetch::is_alias(spec) {
            return Ok(ModelSource::Alias(spec.to_string()));
        }
        let p = PathBuf::from(spec);
        if p.is_dir() {
            return Ok(ModelSource::HfFolder(p));
        }
        if p.is_file() {
            return Ok(ModelSource::Gguf(p));
        }
        let looks_like_repo = spec.matches('/').count() == 1
            && !spec.starts_with('.')
            && !spec.starts_with('/')
            && !spec.ends_with(".gguf");
        if looks_like_repo {
            return Ok(Self::hub(spec));
        }
        Err(Error::io(
            &p,
            std::io::Error::new(std::io::ErrorKind::NotFound, "no such model file or folder"),
        ))
    }

    /// What an adapter trained on this model records as `base_model_name_or_path`: the hub id
    /// of a built-in alias or a hub model (so `AutoPeftModelForCausalLM` finds the base), the
    /// path as given for a GGUF file or a local folder.
    pub fn peft_base_name(&self) -> String {
        match self {
            ModelSource::Alias(a) => fetch::alias_spec(a).map_or(a.as_str(), |s| s.hub_id).into(),
            ModelSource::Hub { repo, .. } => repo.clone(),
            ModelSource::Gguf(p) | ModelSource::HfFolder(p) => p.display().to_string(),
        }
    }

    fn hub(rest: &str) -> Self {
        match rest.split_once('@') {
            Some((repo, rev)) => ModelSource::Hub {
                repo: repo.into(),
                revision: Some(rev.into()),
            },
            None => ModelSource::Hub {
                repo: rest.into(),
                revision: None,
            },
        }
    }
}

/// Resolve and load a model spec (alias, `.gguf` path, HF folder, hub id).
pub fn load(spec: &str) -> Result<LoadedWeights> {
    load_with(spec, WeightFormat::F32)
}

/// [`load`] with a choice of how the matrices are kept ([`WeightFormat::Quantized`] needs a
/// GGUF model: HF folders hold f32/f16/bf16 tensors, not blocks).
pub fn load_with(spec: &str, format: WeightFormat) -> Result<LoadedWeights> {
    let source = ModelSource::parse(spec)?;
    let gguf = matches!(source, ModelSource::Alias(_) | ModelSource::Gguf(_));
    if format == WeightFormat::Quantized && !gguf {
        return Err(Error::setting(
            "weights",
            format!(
                "weights format quantized keeps a GGUF model's quantized blocks; '{spec}' is not \
                 a GGUF model (use weights format f32)"
            ),
        ));
    }
    match source {
        ModelSource::Alias(a) => gguf::load_gguf_with(&fetch::fetch_alias(&a)?, format),
        ModelSource::Gguf(p) => gguf::load_gguf_with(&p, format),
        ModelSource::HfFolder(p) => hf::load_hf_folder_with(&p, format),
        ModelSource::Hub { repo, revision } => hub::load_hub(&repo, revision.as_deref()),
    }
}

#[cfg(test)]
mod tests {
    use super::ModelSource;

    #[test]
    fn adapters_record_the_hub_id_or_the_path_given() {
        let name = |spec: &str| ModelSource::parse(spec).unwrap().peft_base_name();
        assert_eq!(name("smollm2-135m"), "HuggingFaceTB/SmolLM2-135M-Instruct");
        assert_eq!(name("gemma3-270m"), "google/gemma-3-270m");
        assert_eq!(name("hf:org/name@v1"), "org/name");
        assert_eq!(name("org/name"), "org/name");
        let dir = tempfile::tempdir().unwrap();
        let gguf = dir.path().join("model.gguf");
        std::fs::write(&gguf, b"").unwrap();
        for spec in [gguf.to_str().unwrap(), dir.path().to_str().unwrap()] {
            assert_eq!(name(spec), spec);
        }
    }
}
