//! Shared helpers for integration tests: the PyTorch fixtures (in this repository), the real
//! models loaded once, tiny random models.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use softprompt_core::model::llama::Llama;
use softprompt_core::model::LoadedWeights;

/// The golden PyTorch + transformers + PEFT numbers of `model` (`tests/fixtures/MODEL`, written by
/// `scripts/make_fixtures.py`; the semantics are in `tests/fixtures/README.md`).
pub fn fixture_dir(model: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(model)
}

/// The default model (fetched on first use), loaded once per test binary.
pub fn smollm() -> &'static (Llama, tokenizers::Tokenizer) {
    static M: OnceLock<(Llama, tokenizers::Tokenizer)> = OnceLock::new();
    M.get_or_init(|| {
        let lw = softprompt_core::model::load("smollm2-135m").expect("load the default model");
        split(lw)
    })
}

/// Gemma 3 270M (fetched on first use), loaded once per test binary.
pub fn gemma() -> &'static (Llama, tokenizers::Tokenizer) {
    static M: OnceLock<(Llama, tokenizers::Tokenizer)> = OnceLock::new();
    M.get_or_init(|| {
        let lw = softprompt_core::model::load("gemma3-270m").expect("load Gemma 3 270M");
        split(lw)
    })
}

pub fn split(lw: LoadedWeights) -> (Llama, tokenizers::Tokenizer) {
    let LoadedWeights {
        config,
        weights,
        matrices,
        tokenizer,
        source,
        ..
    } = lw;
    (
        Llama::with_matrices(config, weights, matrices, &source).expect("bind weights"),
        tokenizer,
    )
}

/// Relative L2 error of `grad` against central differences (eps 1e-2) of `loss_at` at `x`, on
/// every `step`-th coordinate.
pub fn fd_rel_error(x: &[f32], grad: &[f32], step: usize, loss_at: impl Fn(&[f32]) -> f64) -> f64 {
    let eps = 1e-2f32;
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for i in (0..x.len()).step_by(step) {
        let (mut p1, mut p2) = (x.to_vec(), x.to_vec());
        p1[i] += eps;
        p2[i] -= eps;
        let fd = (loss_at(&p1) - loss_at(&p2)) / (2.0 * eps as f64);
        num += (fd - grad[i] as f64).powi(2);
        den += fd.powi(2);
    }
    (num / den).sqrt()
}

/// `||got - want|| / ||want||` (L2, in f64).
pub fn rel_l2(got: &[f32], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len(), "rel_l2: lengths differ");
    let num: f64 = got
        .iter()
        .zip(want)
        .map(|(a, b)| (*a as f64 - b).powi(2))
        .sum();
    let den: f64 = want.iter().map(|b| b * b).sum();
    (num / den).sqrt()
}

/// A fixture tensor file: name -> (shape, values as f64).
pub fn read_safetensors(path: &std::path::Path) -> HashMap<String, (Vec<usize>, Vec<f64>)> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("parse fixture");
    let mut out = HashMap::new();
    for (name, view) in st.tensors() {
        let data = view.data();
        let vals: Vec<f64> = match view.dtype() {
            safetensors::Dtype::F32 => data
                .chunks(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)
                .collect(),
            safetensors::Dtype::I64 => data
                .chunks(8)
                .map(|c| {
                    i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f64
                })
                .collect(),
            other => panic!("fixture dtype {other:?}"),
        };
        out.insert(name, (view.shape().to_vec(), vals));
    }
    out
}

/// The tiny config of the finite-difference tests: a Llama (D = 32, F = 48, 2 layers, 4 heads
/// over 2 KV heads, 61 tokens, RoPE base 1e4, 64 positions, tied embeddings), with `extra`'s
/// keys set over it.
pub fn tiny_config(extra: serde_json::Value) -> softprompt_core::model::LlamaConfig {
    let mut v = serde_json::json!({
        "model_type": "llama",
        "hidden_size": 32,
        "intermediate_size": 48,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": 61,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "max_position_embeddings": 64,
        "tie_word_embeddings": true,
    });
    for (k, x) in extra.as_object().expect("extra is a JSON object") {
        v[k] = x.clone();
    }
    serde_json::from_value(v).unwrap()
}

/// A tiny random Llama ([`tiny_config`]) for finite-difference checks.
pub fn tiny_llama(seed: u64) -> Llama {
    tiny_from(tiny_config(serde_json::json!({})), seed)
}

/// Gemma-3-shaped: QK-norm, sandwich norms, (1+w) norms, GELU-tanh, scaled embeddings, a
/// local (window 4, RoPE base 10000) and a global layer (base 1e6), query_pre_attn_scalar
/// differing from head_dim, and Hq*hd (64) != hidden (32).
pub fn tiny_gemma3_config() -> softprompt_core::model::LlamaConfig {
    tiny_config(serde_json::json!({
        "model_type": "gemma3_text",
        "head_dim": 16,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "rope_local_base_freq": 10000.0,
        "sliding_window": 4,
        "layer_types": ["sliding_attention", "full_attention"],
        "query_pre_attn_scalar": 12,
        "hidden_activation": "gelu_pytorch_tanh",
    }))
}

/// Qwen3-shaped: QK-norm (plain w), no bias, explicit head_dim with Hq*hd != hidden.
pub fn tiny_qwen3_config() -> softprompt_core::model::LlamaConfig {
    tiny_config(serde_json::json!({
        "model_type": "qwen3",
        "head_dim": 16,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "tie_word_embeddings": false,
    }))
}

/// Two token sequences (7 and 3 ids, below 61) with every token from `first` on a loss
/// target, weights summing to 1.
pub fn two_texts(first: usize) -> Vec<softprompt_core::model::input::Example> {
    let a: Vec<u32> = vec![3, 17, 42, 5, 60, 9, 11];
    let b: Vec<u32> = vec![8, 1, 30];
    let w = 1.0 / (a.len() + b.len() - 2 * first) as f32;
    [a, b]
        .into_iter()
        .map(|ids| softprompt_core::model::input::Example {
            targets: (first..ids.len()).map(|t| (t, w)).collect(),
            ids,
        })
        .collect()
}

/// Deterministic prompt rows `[p, d]` in [-0.4, 0.4).
pub fn test_rows(p: usize, d: usize) -> Vec<f32> {
    (0..p * d)
        .map(|i| ((i * 37 % 101) as f32 / 101.0 - 0.5) * 0.8)
        .collect()
}

/// A random model of `cfg`.
pub fn tiny_from(cfg: softprompt_core::model::LlamaConfig, seed: u64) -> Llama {
    let w = softprompt_core::model::llama::random_weights(&cfg, seed);
    Llama::new(cfg, w, "tiny").unwrap()
}

/// A tiny random Llama with a word-level tokenizer over the built-in demo task's words:
/// fast enough to train for real in a unit test.
pub fn tiny_demo_model(seed: u64) -> softprompt_core::model::FrozenModel {
    tiny_demo_model_with_layers(2, seed)
}

/// [`tiny_demo_model`] with `layers` decoder blocks.
pub fn tiny_demo_model_with_layers(
    layers: usize,
    seed: u64,
) -> softprompt_core::model::FrozenModel {
    use softprompt_core::data::{demo_records, DemoSplit};
    let mut words: Vec<String> = vec![
        "[UNK]".into(),
        "Review".into(),
        "Sentiment".into(),
        ":".into(),
        "negative".into(),
        "positive".into(),
    ];
    for split in [DemoSplit::Train, DemoSplit::Validation] {
        for r in demo_records(split) {
            let s = r.fields["sentence"].as_str().unwrap_or("").to_string();
            for w in s
                .split(|c: char| !c.is_alphanumeric())
                .filter(|w| !w.is_empty())
            {
                if !words.iter().any(|x| x == w) {
                    words.push(w.to_string());
                }
            }
        }
    }
    let vocab: serde_json::Map<String, serde_json::Value> = words
        .iter()
        .enumerate()
        .map(|(i, w)| (w.clone(), i.into()))
        .collect();
    let json = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [], "normalizer": null,
        "pre_tokenizer": { "type": "Whitespace" }, "post_processor": null, "decoder": null,
        "model": { "type": "WordLevel", "vocab": vocab, "unk_token": "[UNK]" }
    });
    let tokenizer: tokenizers::Tokenizer = json.to_string().parse().expect("tiny tokenizer");
    let config: softprompt_core::model::LlamaConfig = serde_json::from_value(serde_json::json!({
        "model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": layers,
        "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": words.len(),
        "rms_norm_eps": 1e-5, "max_position_embeddings": 256, "tie_word_embeddings": true
    }))
    .unwrap();
    let weights = softprompt_core::model::llama::random_weights(&config, seed);
    softprompt_core::model::FrozenModel::from_loaded(LoadedWeights {
        config,
        weights,
        matrices: Default::default(),
        tokenizer,
        source: "tiny-demo".into(),
        stored_dtype: "f32".into(),
        chat_template: None,
    })
    .unwrap()
}

/// Default training settings on the built-in demo task.
pub fn demo_config(steps: u64) -> softprompt_core::train::TrainConfig {
    use softprompt_core::train::optim::{OptimizerKind, Schedule};
    softprompt_core::train::TrainConfig {
        task: softprompt_core::data::builtin_task("demo").unwrap(),
        train_file: "builtin:demo/train".into(),
        validation_file: Some("builtin:demo/validation".into()),
        num_virtual_tokens: 4,
        init: softprompt_core::train::Init::Random { range: 0.5 },
        optimizer: OptimizerKind::adamw_default(),
        lr: 0.05,
        schedule: Schedule::Constant,
        warmup_steps: 0,
        steps,
        batch_size: 8,
        grad_accum: 1,
        max_grad_norm: 1.0,
        seed: 3,
        eval_every: 0,
        eval_limit: Some(64),
        patience: None,
        checkpoint_every: 4,
        keep_checkpoints: 2,
        max_len: 64,
        length_norm: false,
        train_limit: None,
        skip_bad_rows: false,
        eval_batch_size: 32,
        data_root: None,
        reparam: Default::default(),
        prompt_kind: Default::default(),
    }
}

/// (step, loss) of every step line of a train_log.jsonl.
pub fn step_losses(out: &std::path::Path) -> Vec<(u64, f64)> {
    std::fs::read_to_string(out.join("train_log.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["type"] == "step")
        .map(|v| (v["step"].as_u64().unwrap(), v["loss"].as_f64().unwrap()))
        .collect()
}

/// An observer that sets the stop flag after step `.0` (what Ctrl-C does) and records the
/// run's messages in `.2`.
pub struct StopAt(
    pub u64,
    pub &'static std::sync::atomic::AtomicBool,
    pub Vec<String>,
);

impl softprompt_core::train::Observer for StopAt {
    fn on_step(&mut self, s: &softprompt_core::train::trainer::StepLog) {
        if s.step == self.0 {
            self.1.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }
    fn on_message(&mut self, m: &str) {
        self.2.push(m.to_string());
    }
}
