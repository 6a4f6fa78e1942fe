//! Shared helpers for integration tests: where `shared/` is, the real model loaded once,
//! and reading the PyTorch fixtures.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::OnceLock;

use softprompt_core::model::llama::Llama;
use softprompt_core::model::LoadedWeights;

/// `shared/` beside the project root (override with SOFTPROMPT_SHARED).
pub fn shared_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("SOFTPROMPT_SHARED") {
        return PathBuf::from(d);
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared")
}

pub fn fixture_dir(model: &str) -> PathBuf {
    shared_dir().join("fixtures").join(model)
}

/// The default model (fetched on first use), loaded once per test binary.
pub fn smollm() -> &'static (Llama, tokenizers::Tokenizer) {
    static M: OnceLock<(Llama, tokenizers::Tokenizer)> = OnceLock::new();
    M.get_or_init(|| {
        let lw = softprompt_core::model::load("smollm2-135m").expect("load the default model");
        split(lw)
    })
}

pub fn split(lw: LoadedWeights) -> (Llama, tokenizers::Tokenizer) {
    let LoadedWeights { config, weights, tokenizer, source, .. } = lw;
    (Llama::new(config, weights, &source).expect("bind weights"), tokenizer)
}

/// A fixture tensor file: name -> (shape, values as f64).
pub fn read_safetensors(path: &std::path::Path) -> HashMap<String, (Vec<usize>, Vec<f64>)> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("parse fixture");
    let mut out = HashMap::new();
    for (name, view) in st.tensors() {
        let data = view.data();
        let vals: Vec<f64> = match view.dtype() {
            safetensors::Dtype::F32 => data.chunks(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64).collect(),
            safetensors::Dtype::I64 => data
                .chunks(8)
                .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f64)
                .collect(),
            other => panic!("fixture dtype {other:?}"),
        };
        out.insert(name, (view.shape().to_vec(), vals));
    }
    out
}
