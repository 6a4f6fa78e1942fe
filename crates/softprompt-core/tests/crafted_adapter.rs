//! Crafted `adapter_config.json` (and `softprompt.json`) files beside a valid
//! `adapter_model.safetensors`, one test per case: `SoftPrompt::load` must give one clear
//! error naming the file and the problem, without a panic or a large allocation. The
//! bytes-in entry point `parse_adapter_config` (what the fuzz target calls) must agree.

mod crafted_common;

use std::path::PathBuf;

use crafted_common::expect_err;
use serde_json::json;
use softprompt_core::prompt::peft::parse_adapter_config;
use softprompt_core::prompt::{SoftPrompt, ADAPTER_CONFIG_FILE, META_FILE};
use softprompt_core::Error;

/// `prompt_embeddings` F32 [2, 4].
fn weights() -> Vec<u8> {
    let h = r#"{"prompt_embeddings":{"dtype":"F32","shape":[2,4],"data_offsets":[0,32]}}"#;
    let mut b = (h.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(h.as_bytes());
    for i in 0..8 {
        b.extend_from_slice(&(i as f32).to_le_bytes());
    }
    b
}

fn good_config() -> serde_json::Value {
    json!({
        "peft_type": "PROMPT_TUNING", "task_type": "CAUSAL_LM", "num_virtual_tokens": 2,
        "token_dim": 4, "num_transformer_submodules": 1, "prompt_tuning_init": "RANDOM"
    })
}

/// A folder with the valid weights and `config` as adapter_config.json.
fn folder(config: &[u8]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("adapter_model.safetensors"), weights()).unwrap();
    let c = dir.path().join(ADAPTER_CONFIG_FILE);
    std::fs::write(&c, config).unwrap();
    (dir, c)
}

/// `good_config()` with `key` set to `value` (`null` removes it).
fn with(key: &str, value: serde_json::Value) -> Vec<u8> {
    let mut c = good_config();
    let obj = c.as_object_mut().unwrap();
    if value.is_null() {
        obj.remove(key);
    } else {
        obj.insert(key.into(), value);
    }
    c.to_string().into_bytes()
}

/// Loading must fail naming adapter_config.json with `needles`; so must the bytes-in parser.
#[track_caller]
fn refused(config: &[u8], needles: &[&str]) -> Error {
    let (dir, c) = folder(config);
    let e = expect_err(&c, needles, || SoftPrompt::load(dir.path()));
    let e2 = expect_err(&c, needles, || parse_adapter_config(&c, config));
    assert_eq!(e.to_string(), e2.to_string());
    e
}

#[test]
fn the_valid_base_config_loads() {
    let (dir, c) = folder(good_config().to_string().as_bytes());
    let p = SoftPrompt::load(dir.path()).unwrap();
    assert_eq!(p.embeddings.shape, vec![2, 4]);
    let cfg = parse_adapter_config(&c, good_config().to_string().as_bytes()).unwrap();
    assert_eq!(cfg.num_virtual_tokens, 2);
}

#[test]
fn not_json() {
    refused(b"peft_type = \"PROMPT_TUNING\"\n", &["malformed JSON"]);
}

#[test]
fn truncated_json() {
    let full = good_config().to_string();
    refused(
        &full.as_bytes()[..full.len() / 2],
        &["malformed JSON", "EOF"],
    );
}

#[test]
fn json_but_not_an_object() {
    refused(b"[\"PROMPT_TUNING\", 2]", &["expected a JSON object"]);
}

#[test]
fn deeply_nested_json() {
    // serde_json's recursion limit turns this into an error, not a stack overflow.
    let s = format!("{{\"a\":{}1{}}}", "[".repeat(100_000), "]".repeat(100_000));
    refused(s.as_bytes(), &["malformed JSON", "recursion limit"]);
}

#[test]
fn larger_than_the_cap() {
    let mut c = good_config();
    c["prompt_tuning_init_text"] = json!("x".repeat(2 << 20));
    refused(c.to_string().as_bytes(), &["larger than 1048576 bytes"]);
}

#[test]
fn peft_type_lora() {
    let e = refused(
        &with("peft_type", json!("LORA")),
        &[
            "peft_type is LORA",
            "changes the model's weights",
            "loads PROMPT_TUNING and PREFIX_TUNING",
        ],
    );
    assert!(matches!(e, Error::Unsupported { .. }), "{e:?}");
}

/// A prefix-tuning config needs its layers and key/value width (the tensor's width is
/// `num_layers * 2 * token_dim`), and no projection MLP; the tensor must have that width.
#[test]
fn peft_type_prefix_tuning() {
    let prefix = |edit: &dyn Fn(&mut serde_json::Value)| {
        let mut c = good_config();
        c["peft_type"] = json!("PREFIX_TUNING");
        c["num_layers"] = json!(1);
        c["token_dim"] = json!(2);
        edit(&mut c);
        c.to_string().into_bytes()
    };
    // 1 layer x key and value x 2 = 4 values per virtual token: the valid weights fit.
    let (dir, _) = folder(&prefix(&|_| {}));
    let p = SoftPrompt::load(dir.path()).unwrap();
    assert_eq!(p.kind(), softprompt_core::model::input::PromptKind::Prefix);
    assert_eq!(p.embeddings.shape, vec![2, 4]);
    refused(
        &prefix(&|c| c["prefix_projection"] = json!(true)),
        &["prefix_projection is true", "prefix-encoder MLP"],
    );
    refused(
        &prefix(&|c| {
            c.as_object_mut()
                .unwrap()
                .remove("num_layers")
                .map(drop)
                .unwrap_or(())
        }),
        &["PREFIX_TUNING config needs num_layers"],
    );
    refused(
        &prefix(&|c| c["num_layers"] = json!(40_000)),
        &["values per virtual token", "65536"],
    );
    let (dir, c) = folder(&prefix(&|c| c["token_dim"] = json!(3)));
    let e = SoftPrompt::load(dir.path()).unwrap_err().to_string();
    assert!(
        e.contains("adapter_model.safetensors"),
        "{e} ({})",
        c.display()
    );
}

#[test]
fn peft_type_missing() {
    refused(&with("peft_type", json!(null)), &["no peft_type"]);
}

#[test]
fn peft_type_not_a_string() {
    refused(
        &with("peft_type", json!(7)),
        &["peft_type must be a string, found 7"],
    );
}

#[test]
fn task_type_seq2seq() {
    refused(
        &with("task_type", json!("SEQ_2_SEQ_LM")),
        &["task_type is SEQ_2_SEQ_LM", "encoder-decoder"],
    );
}

#[test]
fn num_virtual_tokens_zero() {
    refused(
        &with("num_virtual_tokens", json!(0)),
        &["num_virtual_tokens is 0"],
    );
}

#[test]
fn num_virtual_tokens_absurd() {
    refused(
        &with("num_virtual_tokens", json!(1u64 << 40)),
        &["num_virtual_tokens is 1099511627776", "at most 4096"],
    );
}

#[test]
fn num_virtual_tokens_negative() {
    refused(
        &with("num_virtual_tokens", json!(-5)),
        &["invalid prompt-tuning config", "-5"],
    );
}

#[test]
fn num_virtual_tokens_missing() {
    refused(
        &with("num_virtual_tokens", json!(null)),
        &["missing field `num_virtual_tokens`"],
    );
}

#[test]
fn num_virtual_tokens_differs_from_the_tensor() {
    // The config is valid on its own; the 2-row tensor does not match it.
    let (dir, _) = folder(&with("num_virtual_tokens", json!(3)));
    let w = dir.path().join("adapter_model.safetensors");
    expect_err(&w, &["has shape [2, 4]", "calls for [3, 4]"], || {
        SoftPrompt::load(dir.path())
    });
}

#[test]
fn token_dim_differs_from_the_tensor() {
    let (dir, _) = folder(&with("token_dim", json!(8)));
    let w = dir.path().join("adapter_model.safetensors");
    expect_err(&w, &["has shape [2, 4]", "token_dim 8"], || {
        SoftPrompt::load(dir.path())
    });
}

#[test]
fn token_dim_zero() {
    refused(&with("token_dim", json!(0)), &["token_dim is 0"]);
}

#[test]
fn token_dim_absurd() {
    refused(
        &with("token_dim", json!(1u64 << 33)),
        &["token_dim is 8589934592"],
    );
}

#[test]
fn token_dim_differs_from_the_model() {
    // Loads (the prompt itself is consistent), but cannot be used with a 576-wide model.
    let (dir, _) = folder(good_config().to_string().as_bytes());
    let p = SoftPrompt::load(dir.path()).unwrap();
    let e = p
        .check_compatible(576, "sha256:0000000000000000", false)
        .unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, Error::Mismatch(_)), "{e:?}");
    assert!(msg.contains(&*dir.path().to_string_lossy()), "{msg}");
    assert!(
        msg.contains("token dimension 4, but the model's hidden size is 576"),
        "{msg}"
    );
}

#[test]
fn encoder_decoder_submodules() {
    refused(
        &with("num_transformer_submodules", json!(2)),
        &["num_transformer_submodules is 2"],
    );
}

#[test]
fn modules_to_save_set() {
    refused(
        &with("modules_to_save", json!(["lm_head"])),
        &["modules_to_save is set"],
    );
}

// --- softprompt.json beside a valid adapter.

#[track_caller]
fn meta_refused(meta: &[u8], needles: &[&str]) {
    let (dir, _) = folder(good_config().to_string().as_bytes());
    let m = dir.path().join(META_FILE);
    std::fs::write(&m, meta).unwrap();
    expect_err(&m, needles, || SoftPrompt::load(dir.path()));
}

fn meta(hidden: usize, version: u32) -> Vec<u8> {
    json!({
        "format_version": version, "created_by": "x", "created_at": "2025-01-01T00:00:00Z",
        "base_model": "m", "hidden_size": hidden
    })
    .to_string()
    .into_bytes()
}

#[test]
fn meta_not_json() {
    meta_refused(b"{\"format_version\": 1,", &["malformed JSON"]);
}

#[test]
fn meta_hidden_size_differs_from_the_tensor() {
    meta_refused(
        &meta(576, 1),
        &["hidden_size 576 does not match the 4-wide prompt_embeddings"],
    );
}

#[test]
fn meta_from_a_newer_version() {
    meta_refused(&meta(4, 99), &["format_version 99", "newer softprompt"]);
}
