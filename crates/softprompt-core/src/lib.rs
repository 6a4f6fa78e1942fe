//! softprompt-core: prompt tuning on a frozen language model.
//!
//! A model source (GGUF file, Hugging Face folder, hub id, or the default alias) becomes
//! [`model::LoadedWeights`], then a [`model::llama::Llama`] with an explicit forward and an
//! input-gradient backward (weight gradients only on request, for the full fine-tuning baseline
//! of [`compare`]). A [`prompt::SoftPrompt`] (PEFT adapter layout) is prepended to the token
//! embeddings; [`infer`] scores and generates with it.

pub mod compare;
pub mod compute;
pub mod data;
pub mod error;
pub mod fsio;
pub mod infer;
pub mod inspect;
pub mod model;
pub mod prompt;
pub mod report;
pub mod train;

pub use compute::Tensor;
pub use error::{Error, Result};
