//! Crafted `adapter_model.safetensors` files in an otherwise valid prompt folder, one test
//! per case: `SoftPrompt::load` must give one clear error naming the file and the problem,
//! without a panic or a large allocation. The bytes-in entry point
//! `parse_prompt_safetensors` (what the fuzz target calls) must agree.

mod crafted_common;

use std::path::{Path, PathBuf};

use crafted_common::expect_err;
use softprompt_core::prompt::peft::parse_prompt_safetensors;
use softprompt_core::prompt::{SoftPrompt, ADAPTER_WEIGHTS_FILE};
use softprompt_core::Error;

/// Rows and columns the config of every case asks for.
const P: usize = 2;
const D: usize = 4;

fn config_json(p: usize, d: usize) -> String {
    serde_json::json!({
        "peft_type": "PROMPT_TUNING", "task_type": "CAUSAL_LM",
        "num_virtual_tokens": p, "token_dim": d, "num_transformer_submodules": 1
    })
    .to_string()
}

/// A safetensors file from a raw JSON header and raw data bytes.
fn st(header: &str, data: &[u8]) -> Vec<u8> {
    let mut b = (header.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(header.as_bytes());
    b.extend_from_slice(data);
    b
}

fn f32s(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn good_values() -> Vec<f32> {
    (0..P * D).map(|i| i as f32 * 0.25).collect()
}

/// The valid file: `prompt_embeddings` F32 [P, D].
fn good() -> Vec<u8> {
    st(
        r#"{"__metadata__":{"format":"pt"},"prompt_embeddings":{"dtype":"F32","shape":[2,4],"data_offsets":[0,32]}}"#,
        &f32s(&good_values()),
    )
}

/// A prompt folder with the standard config and `weights` as the safetensors file.
fn folder(weights: &[u8]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("adapter_config.json"), config_json(P, D)).unwrap();
    let w = dir.path().join(ADAPTER_WEIGHTS_FILE);
    std::fs::write(&w, weights).unwrap();
    (dir, w)
}

/// Loading the folder must fail naming the weights file with `needles`; the bytes-in
/// parser must give the same message.
#[track_caller]
fn refused(weights: &[u8], needles: &[&str]) -> Error {
    let (dir, w) = folder(weights);
    let e = expect_err(&w, needles, || SoftPrompt::load(dir.path()));
    let bytes = weights.to_vec();
    let e2 = expect_err(&w, needles, || {
        parse_prompt_safetensors(&w, &bytes, P, Some(D))
    });
    assert_eq!(e.to_string(), e2.to_string());
    e
}

#[test]
fn the_valid_base_file_loads() {
    let (dir, _) = folder(&good());
    let p = SoftPrompt::load(dir.path()).unwrap();
    assert_eq!(p.embeddings.shape, vec![P, D]);
    assert_eq!(p.embeddings.data, good_values());
    let t = parse_prompt_safetensors(Path::new("x"), &good(), P, Some(D)).unwrap();
    assert_eq!(t.data, good_values());
}

#[test]
fn shorter_than_the_length_prefix() {
    refused(&[1, 2, 3], &["3 bytes", "8-byte header length"]);
}

#[test]
fn header_length_past_eof() {
    let mut b = good();
    b[..8].copy_from_slice(&4000u64.to_le_bytes());
    refused(&b, &["header claims 4000 bytes", "holds 144 bytes"]);
}

#[test]
fn header_length_huge() {
    let mut b = good();
    b[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    refused(&b, &["header length 18446744073709551615"]);
}

#[test]
fn header_not_json() {
    let h = "{\"prompt_embeddings\": not json at all, padding padding padding padding padding padding padding}";
    refused(
        &st(h, &f32s(&good_values())),
        &["corrupt safetensors header"],
    );
}

#[test]
fn header_not_utf8() {
    let mut b = good();
    b[9] = 0xFF;
    refused(&b, &["corrupt safetensors header"]);
}

#[test]
fn header_is_a_json_array() {
    refused(
        &st("[1, 2, 3]", &f32s(&good_values())),
        &["corrupt safetensors header"],
    );
}

#[test]
fn data_offsets_out_of_range() {
    let h = r#"{"prompt_embeddings":{"dtype":"F32","shape":[2,4],"data_offsets":[0,4096]}}"#;
    refused(
        &st(h, &f32s(&good_values())),
        &["corrupt safetensors header"],
    );
}

#[test]
fn data_offsets_reversed() {
    let h = r#"{"prompt_embeddings":{"dtype":"F32","shape":[2,4],"data_offsets":[32,0]}}"#;
    refused(
        &st(h, &f32s(&good_values())),
        &[
            "corrupt safetensors header",
            "invalid offset for tensor `prompt_embeddings`",
        ],
    );
}

#[test]
fn data_offsets_overlapping() {
    let h = r#"{"prompt_embeddings":{"dtype":"F32","shape":[2,4],"data_offsets":[0,32]},"other":{"dtype":"F32","shape":[4],"data_offsets":[16,32]}}"#;
    refused(
        &st(h, &f32s(&good_values())),
        &["corrupt safetensors header"],
    );
}

#[test]
fn data_offsets_huge() {
    let h = format!(
        r#"{{"prompt_embeddings":{{"dtype":"F32","shape":[2,4],"data_offsets":[0,{}]}}}}"#,
        u64::MAX
    );
    refused(
        &st(&h, &f32s(&good_values())),
        &["corrupt safetensors header"],
    );
}

#[test]
fn shape_overflows() {
    let h = format!(
        r#"{{"prompt_embeddings":{{"dtype":"F32","shape":[{},{}],"data_offsets":[0,32]}}}}"#,
        u64::MAX,
        u64::MAX
    );
    refused(
        &st(&h, &f32s(&good_values())),
        &["corrupt safetensors header"],
    );
}

#[test]
fn wrong_dtype_i64() {
    let h = r#"{"prompt_embeddings":{"dtype":"I64","shape":[2,4],"data_offsets":[0,64]}}"#;
    let e = refused(
        &st(h, &[0u8; 64]),
        &[
            "`prompt_embeddings` has dtype I64",
            "supported: F32, F16, BF16",
        ],
    );
    assert!(matches!(e, Error::Unsupported { .. }), "{e:?}");
}

#[test]
fn wrong_dtype_f64() {
    let h = r#"{"prompt_embeddings":{"dtype":"F64","shape":[2,4],"data_offsets":[0,64]}}"#;
    refused(&st(h, &[0u8; 64]), &["dtype F64"]);
}

#[test]
fn wrong_shape_rank() {
    let h = r#"{"prompt_embeddings":{"dtype":"F32","shape":[2,2,2],"data_offsets":[0,32]}}"#;
    refused(
        &st(h, &f32s(&good_values())),
        &["has shape [2, 2, 2]", "calls for [2, 4]"],
    );
}

#[test]
fn wrong_number_of_rows() {
    let h = r#"{"prompt_embeddings":{"dtype":"F32","shape":[1,8],"data_offsets":[0,32]}}"#;
    refused(
        &st(h, &f32s(&good_values())),
        &["has shape [1, 8]", "num_virtual_tokens"],
    );
}

#[test]
fn token_dim_differs_from_the_config() {
    let h = r#"{"prompt_embeddings":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]}}"#;
    refused(
        &st(h, &f32s(&[0.0; 6])),
        &["has shape [2, 3]", "token_dim 4"],
    );
}

#[test]
fn nan_value() {
    let mut v = good_values();
    v[5] = f32::NAN;
    let h = r#"{"prompt_embeddings":{"dtype":"F32","shape":[2,4],"data_offsets":[0,32]}}"#;
    refused(
        &st(h, &f32s(&v)),
        &[
            "row 1 (virtual token 1) holds NaN at column 1",
            "must be finite",
        ],
    );
}

#[test]
fn infinite_value() {
    let mut v = good_values();
    v[2] = f32::NEG_INFINITY;
    let h = r#"{"prompt_embeddings":{"dtype":"F32","shape":[2,4],"data_offsets":[0,32]}}"#;
    refused(
        &st(h, &f32s(&v)),
        &["row 0 (virtual token 0) holds -inf at column 2"],
    );
}

#[test]
fn infinite_value_in_f16() {
    // F16 0x7C00 is +inf; a finite F32 prompt could not hold it after conversion either.
    let mut data = vec![0u8; 16];
    data[14..16].copy_from_slice(&0x7C00u16.to_le_bytes());
    let h = r#"{"prompt_embeddings":{"dtype":"F16","shape":[2,4],"data_offsets":[0,16]}}"#;
    refused(
        &st(h, &data),
        &["row 1 (virtual token 1) holds inf at column 3"],
    );
}

#[test]
fn extra_tensor() {
    let h = r#"{"prompt_embeddings":{"dtype":"F32","shape":[2,4],"data_offsets":[0,32]},"lora_A":{"dtype":"F32","shape":[1],"data_offsets":[32,36]}}"#;
    let mut data = f32s(&good_values());
    data.extend_from_slice(&[0; 4]);
    refused(
        &st(h, &data),
        &["holds tensors besides `prompt_embeddings` (lora_A)"],
    );
}

#[test]
fn missing_prompt_tensor() {
    let h = r#"{"embedding":{"dtype":"F32","shape":[2,4],"data_offsets":[0,32]}}"#;
    refused(
        &st(h, &f32s(&good_values())),
        &["no tensor `prompt_embeddings` (found: embedding)"],
    );
}

#[test]
fn no_tensors_at_all() {
    refused(
        &st(r#"{"__metadata__":{"format":"pt"}}"#, &[]),
        &["no tensor `prompt_embeddings` (found: none)"],
    );
}

#[test]
fn truncated_data() {
    let b = good();
    refused(&b[..b.len() - 3], &["truncated", "describes 144 bytes"]);
}

#[test]
fn trailing_bytes_after_the_data() {
    let mut b = good();
    b.extend_from_slice(b"MZ\x90\x00");
    refused(&b, &["4 unexpected bytes after the tensor data"]);
}

#[test]
fn missing_weights_file() {
    let (dir, w) = folder(&good());
    std::fs::remove_file(&w).unwrap();
    expect_err(&w, &["missing"], || SoftPrompt::load(dir.path()));
}

#[test]
fn pickle_weights_are_never_loaded() {
    let (dir, w) = folder(&good());
    std::fs::remove_file(&w).unwrap();
    // A pickle that would run code if unpickled: it must not even be opened.
    let pickle = dir.path().join("adapter_model.bin");
    std::fs::write(&pickle, b"\x80\x04cos\nsystem\n(S'echo pwned'\ntR.").unwrap();
    let e = expect_err(&pickle, &["pickle", "safetensors"], || {
        SoftPrompt::load(dir.path())
    });
    assert!(matches!(e, Error::Unsupported { .. }), "{e:?}");
}
