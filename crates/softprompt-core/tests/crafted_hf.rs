//! Crafted Hugging Face model folders and training checkpoints, one test per case: one
//! clear error naming the file and the problem, no panic, no large allocation (an
//! oversized JSON file is refused from its size, without reading it).

mod crafted_common;

use std::path::{Path, PathBuf};

use crafted_common::expect_err;
use softprompt_core::model::load::hf::load_hf_folder;
use softprompt_core::train::checkpoint::{
    load_checkpoint, load_latest, save_checkpoint, Checkpoint,
};

const CONFIG: &str = r#"{"model_type": "llama", "hidden_size": 8, "intermediate_size": 16,
  "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1, "vocab_size": 4,
  "rms_norm_eps": 1e-5, "max_position_embeddings": 64, "tie_word_embeddings": true}"#;

const TOKENIZER: &str = r#"{"version": "1.0", "truncation": null, "padding": null,
  "added_tokens": [], "normalizer": null, "pre_tokenizer": {"type": "Whitespace"},
  "post_processor": null, "decoder": null,
  "model": {"type": "WordLevel", "vocab": {"[UNK]": 0, "a": 1, "b": 2, "c": 3}, "unk_token": "[UNK]"}}"#;

/// A folder with config.json and tokenizer.json (no weights).
fn folder() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("config.json"), CONFIG).unwrap();
    std::fs::write(d.path().join("tokenizer.json"), TOKENIZER).unwrap();
    d
}

fn sparse(path: &Path, len: u64) {
    std::fs::File::create(path).unwrap().set_len(len).unwrap();
}

fn st(header: &str, data: &[u8]) -> Vec<u8> {
    let mut b = (header.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(header.as_bytes());
    b.extend_from_slice(data);
    b
}

#[track_caller]
fn hf_refused(dir: &Path, file: &Path, needles: &[&str]) {
    expect_err(file, needles, || {
        load_hf_folder(dir).map(|lw| lw.weights.len())
    });
}

#[test]
fn config_json_of_1_gib() {
    let d = folder();
    let c = d.path().join("config.json");
    sparse(&c, 1 << 30);
    hf_refused(d.path(), &c, &["larger than 16 MiB"]);
}

#[test]
fn config_json_not_json() {
    let d = folder();
    let c = d.path().join("config.json");
    std::fs::write(&c, "model_type: llama").unwrap();
    hf_refused(d.path(), &c, &["invalid JSON"]);
}

#[test]
fn config_json_missing_fields() {
    let d = folder();
    let c = d.path().join("config.json");
    std::fs::write(&c, r#"{"model_type": "llama", "hidden_size": 8}"#).unwrap();
    hf_refused(
        d.path(),
        &c,
        &["not a usable llama config", "missing field"],
    );
}

#[test]
fn tokenizer_json_of_1_gib() {
    let d = folder();
    let t = d.path().join("tokenizer.json");
    sparse(&t, 1 << 30);
    hf_refused(d.path(), &t, &["larger than 128 MiB"]);
}

#[test]
fn tokenizer_json_malformed() {
    let d = folder();
    let t = d.path().join("tokenizer.json");
    std::fs::write(&t, r#"{"model": {"type": "NoSuchModel"}}"#).unwrap();
    hf_refused(d.path(), &t, &["cannot read tokenizer"]);
}

#[test]
fn weights_header_length_huge() {
    let d = folder();
    let w = d.path().join("model.safetensors");
    let mut b = st(
        r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#,
        &[0; 4],
    );
    b[..8].copy_from_slice(&(1u64 << 60).to_le_bytes());
    std::fs::write(&w, b).unwrap();
    hf_refused(d.path(), &w, &["not a valid safetensors file"]);
}

#[test]
fn weights_unsupported_dtype() {
    let d = folder();
    let w = d.path().join("model.safetensors");
    std::fs::write(
        &w,
        st(
            r#"{"a":{"dtype":"I64","shape":[1],"data_offsets":[0,8]}}"#,
            &[0; 8],
        ),
    )
    .unwrap();
    hf_refused(d.path(), &w, &["tensor a", "dtype I64"]);
}

#[test]
fn weights_only_as_a_pickle() {
    let d = folder();
    std::fs::write(d.path().join("pytorch_model.bin"), b"\x80\x02}q\x00.").unwrap();
    let w = d.path().join("model.safetensors");
    hf_refused(
        d.path(),
        &w,
        &["only pytorch_model.bin is present", "safetensors only"],
    );
}

#[test]
fn index_shard_path_leaves_the_folder() {
    let d = folder();
    let i = d.path().join("model.safetensors.index.json");
    std::fs::write(&i, r#"{"weight_map": {"a": "../../etc/passwd"}}"#).unwrap();
    hf_refused(
        d.path(),
        &i,
        &["leaves the model folder", "refusing to read it"],
    );
}

#[test]
fn index_shard_path_absolute() {
    let d = folder();
    let i = d.path().join("model.safetensors.index.json");
    std::fs::write(&i, r#"{"weight_map": {"a": "/etc/passwd"}}"#).unwrap();
    hf_refused(d.path(), &i, &["leaves the model folder"]);
}

#[test]
fn index_of_1_gib() {
    let d = folder();
    let i = d.path().join("model.safetensors.index.json");
    sparse(&i, 1 << 30);
    hf_refused(d.path(), &i, &["larger than 64 MiB"]);
}

// --- Training checkpoints.

fn saved() -> (tempfile::TempDir, PathBuf) {
    let d = tempfile::tempdir().unwrap();
    let ck = Checkpoint {
        step: 3,
        tensors: vec![("prompt".into(), vec![2, 2], vec![1.0, 2.0, 3.0, 4.0])],
        state: serde_json::json!({"x": 1}),
    };
    let p = save_checkpoint(d.path(), &ck, 2).unwrap();
    (d, p)
}

#[test]
fn checkpoint_state_json_of_1_gib() {
    let (_d, p) = saved();
    let s = p.join("state.json");
    sparse(&s, 1 << 30);
    expect_err(&s, &["state.json is larger than 268435456 bytes"], || {
        load_checkpoint(&p)
    });
}

#[test]
fn checkpoint_tensors_damaged() {
    let (_d, p) = saved();
    let t = p.join("tensors.safetensors");
    let mut b = std::fs::read(&t).unwrap();
    let n = b.len();
    b[n - 1] ^= 0x40;
    std::fs::write(&t, b).unwrap();
    expect_err(&t, &["checksum mismatch", "damaged"], || {
        load_checkpoint(&p)
    });
}

#[test]
fn checkpoint_tensors_truncated() {
    let (_d, p) = saved();
    let t = p.join("tensors.safetensors");
    let b = std::fs::read(&t).unwrap();
    std::fs::write(&t, &b[..b.len() - 5]).unwrap();
    expect_err(&t, &["truncated or damaged"], || load_checkpoint(&p));
}

#[test]
fn checkpoint_state_claims_a_huge_tensors_file() {
    let (_d, p) = saved();
    let s = p.join("state.json");
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&s).unwrap()).unwrap();
    v["tensors_bytes"] = serde_json::json!(u64::MAX);
    std::fs::write(&s, v.to_string()).unwrap();
    let t = p.join("tensors.safetensors");
    expect_err(
        &t,
        &["state.json records 18446744073709551615 bytes"],
        || load_checkpoint(&p),
    );
}

#[test]
fn checkpoint_latest_names_a_path_outside() {
    // `latest` may only name a `ckpt-NNNNNNNN` folder: anything else is ignored with a
    // warning and the newest valid checkpoint is used.
    let (d, _) = saved();
    std::fs::write(d.path().join("latest"), "../../../etc\n").unwrap();
    let c = load_latest(d.path()).unwrap().unwrap();
    assert_eq!(c.step, 3);
}

#[test]
fn checkpoint_all_damaged() {
    let (d, p) = saved();
    std::fs::write(p.join("state.json"), "{").unwrap();
    let e = load_latest(d.path()).unwrap_err().to_string();
    assert!(
        e.contains(&*d.path().to_string_lossy()) && e.contains("no valid checkpoint"),
        "{e}"
    );
    assert!(e.contains("malformed JSON"), "{e}");
}
