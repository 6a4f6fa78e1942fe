//! The frozen base model: its config, weights, tokenizer and where they came from.

pub mod config;
pub mod llama;
pub mod load;

pub use config::LlamaConfig;
pub use load::{load, LoadedWeights, ModelSource};
