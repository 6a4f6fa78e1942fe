//! The frozen base model: its config, weights, tokenizer and where they came from.

pub mod config;
pub mod fingerprint;
pub mod input;
pub mod llama;
pub mod load;

pub use config::LlamaConfig;
pub use load::{load, LoadedWeights, ModelSource};

use crate::compute::weight::WeightFormat;
use crate::{Error, Result};

/// A loaded base model with its tokenizer and identity. Never modified after loading, except
/// by full fine-tuning ([`crate::train::finetune`]), which trains the weights of a model it owns.
pub struct FrozenModel {
    pub llama: llama::Llama,
    pub tokenizer: tokenizers::Tokenizer,
    /// Where it came from (path, hub id).
    pub source: String,
    /// The base model an adapter records (PEFT's `base_model_name_or_path`): see
    /// [`ModelSource::peft_base_name`]; `source` for a model built in memory.
    pub base_model: String,
    /// How the weights were stored before conversion to f32.
    pub stored_dtype: String,
    /// [`fingerprint::model_fingerprint`]: prompts record it and are refused on another model.
    pub fingerprint: String,
    pub tokenizer_fingerprint: String,
    /// Jinja chat template, when the model has one.
    pub chat_template: Option<String>,
}

impl FrozenModel {
    /// Load from a spec: the default alias, a `.gguf` file, a Hugging Face folder or a hub id.
    pub fn load(spec: &str) -> Result<Self> {
        Self::load_with(spec, WeightFormat::F32)
    }

    /// [`FrozenModel::load`] keeping the matrices as `format` says.
    pub fn load_with(spec: &str, format: WeightFormat) -> Result<Self> {
        let mut m = Self::from_loaded(load::load_with(spec, format)?)?;
        m.base_model = ModelSource::parse(spec)?.peft_base_name();
        if format == WeightFormat::Bf16 {
            m.llama.pack_bf16();
            m.stored_dtype = m
                .stored_dtype
                .replace("dequantized to f32", "packed as bf16")
                .replace("converted to f32", "packed as bf16");
        }
        Ok(m)
    }

    pub fn from_loaded(lw: LoadedWeights) -> Result<Self> {
        let LoadedWeights {
            config,
            weights,
            matrices,
            tokenizer,
            source,
            stored_dtype,
            chat_template,
        } = lw;
        let llama = llama::Llama::with_matrices(config, weights, matrices, &source)?;
        let fingerprint = fingerprint::model_fingerprint_weight(&llama.cfg, &llama.embed);
        let tokenizer_fingerprint = fingerprint::tokenizer_fingerprint(&tokenizer);
        Ok(FrozenModel {
            llama,
            tokenizer,
            base_model: source.clone(),
            source,
            stored_dtype,
            fingerprint,
            tokenizer_fingerprint,
            chat_template,
        })
    }

    /// Token ids of `text`, no special tokens added.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .tokenizer
            .encode(text, false)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Token ids of a model input: like [`FrozenModel::encode`], plus the special tokens the
    /// tokenizer adds at the start of a text (Gemma's `<bos>`; nothing for SmolLM2). Use it for
    /// the text a sequence starts with, never for continuations (labels, targets).
    pub fn encode_input(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .tokenizer
            .encode(text, true)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Ids the tokenizer puts before every input (`[<bos>]` for Gemma, empty for SmolLM2).
    pub fn input_prefix(&self) -> Result<Vec<u32>> {
        self.encode_input("")
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.tokenizer
            .decode(ids, false)
            .map_err(|e| Error::Tokenizer(e.to_string()))
    }

    /// SHA-256 over every weight's bytes, in a fixed order: proof that training a prompt
    /// left the base model untouched.
    pub fn weights_digest(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        self.llama.for_each_weight(|name, w| {
            h.update(name.as_bytes());
            for x in w {
                h.update(x.to_le_bytes());
            }
        });
        format!("{:x}", h.finalize())
    }

    /// End-of-sequence ids from the config.
    pub fn eos_ids(&self) -> Vec<u32> {
        self.llama.cfg.eos_ids()
    }
}
