//! Soft prompt folders: loading PEFT's fixtures, byte-exact PEFT layout on save, strict
//! validation (one test per error), compatibility checks, atomic saves, fingerprints.

mod common;

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use softprompt_core::model::fingerprint::{model_fingerprint, tokenizer_fingerprint};
use softprompt_core::model::LlamaConfig;
use softprompt_core::prompt::init::{
    from_vocab_rows, random_uniform, repeat_ids, sample_vocab_ids,
};
use softprompt_core::prompt::{
    PromptMeta, SoftPrompt, ADAPTER_CONFIG_FILE, ADAPTER_PICKLE_FILE, ADAPTER_WEIGHTS_FILE,
    META_FILE, PEFT_VERSION,
};
use softprompt_core::{Error, Tensor};

// ---------------------------------------------------------------------------------------
// Helpers

fn smollm_prompt() -> PathBuf {
    common::fixture_dir("smollm2-135m").join("prompt")
}

fn gemma_prompt() -> PathBuf {
    common::fixture_dir("gemma3-270m").join("prompt")
}

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

/// Copy the PEFT fixture's two files into a fresh writable folder.
fn copy_fixture(dst: &Path) {
    fs::create_dir_all(dst).unwrap();
    for f in [ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE] {
        fs::copy(smollm_prompt().join(f), dst.join(f)).unwrap();
    }
    // The fixture files may be read-only (a read-only checkout); make the copies writable.
    for f in [ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE] {
        let mut perm = fs::metadata(dst.join(f)).unwrap().permissions();
        #[allow(clippy::permissions_set_readonly_false)]
        perm.set_readonly(false);
        fs::set_permissions(dst.join(f), perm).unwrap();
    }
}

fn fixture_config_json() -> serde_json::Value {
    serde_json::from_slice(&fs::read(smollm_prompt().join(ADAPTER_CONFIG_FILE)).unwrap()).unwrap()
}

/// Write `adapter_config.json` from the fixture's with `edit` applied.
fn write_config(dir: &Path, edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>)) {
    let mut v = fixture_config_json();
    edit(v.as_object_mut().unwrap());
    fs::write(
        dir.join(ADAPTER_CONFIG_FILE),
        serde_json::to_string_pretty(&v).unwrap(),
    )
    .unwrap();
}

/// Write a safetensors file with the given tensors (raw bytes) and PEFT's metadata.
fn write_safetensors(path: &Path, tensors: &[(&str, safetensors::Dtype, Vec<usize>, Vec<u8>)]) {
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(n, dt, s, b)| {
            (
                n.to_string(),
                safetensors::tensor::TensorView::new(*dt, s.clone(), b).unwrap(),
            )
        })
        .collect();
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    let bytes =
        safetensors::serialize(views.iter().map(|(n, v)| (n.clone(), v)), Some(meta)).unwrap();
    fs::write(path, bytes).unwrap();
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// A folder with the fixture's config and a 20×576 F32 tensor with `data`.
fn folder_with_data(data: &[f32]) -> tempfile::TempDir {
    let t = tmp();
    write_config(t.path(), |_| {});
    write_safetensors(
        &t.path().join(ADAPTER_WEIGHTS_FILE),
        &[(
            "prompt_embeddings",
            safetensors::Dtype::F32,
            vec![20, 576],
            f32_bytes(data),
        )],
    );
    t
}

fn small_values(n: usize) -> Vec<f32> {
    (0..n).map(|i| ((i % 97) as f32 - 48.0) / 100.0).collect()
}

/// Load `dir`, expect an error, return its message (Display).
fn load_err(dir: &Path) -> (Error, String) {
    match SoftPrompt::load(dir) {
        Ok(_) => panic!("{} loaded, expected an error", dir.display()),
        Err(e) => {
            let m = e.to_string();
            (e, m)
        }
    }
}

fn assert_mentions(msg: &str, needles: &[&str]) {
    for n in needles {
        assert!(msg.contains(n), "message {msg:?} should mention {n:?}");
    }
}

/// The safetensors JSON header of a file.
fn st_header(path: &Path) -> (Vec<u8>, serde_json::Value) {
    let b = fs::read(path).unwrap();
    let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
    let raw = b[8..8 + n].to_vec();
    let v = serde_json::from_slice(&raw).unwrap();
    (raw, v)
}

fn llama_config(hidden: usize, vocab: usize) -> LlamaConfig {
    serde_json::from_value(serde_json::json!({
        "model_type": "llama", "hidden_size": hidden, "intermediate_size": 1536,
        "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
        "vocab_size": vocab
    }))
    .unwrap()
}

fn new_prompt(p: usize, d: usize, seed: u64) -> SoftPrompt {
    SoftPrompt::new(random_uniform(p, d, 0.5, seed), "test model", 30, 9)
}

// ---------------------------------------------------------------------------------------
// Loading PEFT's own adapters

#[test]
fn loads_peft_fixture_smollm() {
    let p = SoftPrompt::load(&smollm_prompt()).unwrap();
    assert_eq!(p.embeddings.shape, vec![20, 576]);
    assert_eq!(p.num_virtual_tokens(), 20);
    assert_eq!(p.hidden_size(), 576);
    // torch.rand(...) - 0.5: all in [-0.5, 0.5), and spread out.
    assert!(p.embeddings.data.iter().all(|v| (-0.5..0.5).contains(v)));
    let mean = p.embeddings.data.iter().sum::<f32>() / p.embeddings.data.len() as f32;
    assert!(mean.abs() < 0.02, "mean {mean}");
    assert!(
        p.embeddings.data.iter().any(|v| *v < -0.45) && p.embeddings.data.iter().any(|v| *v > 0.45)
    );
    let c = &p.config;
    assert_eq!(c.peft_type, "PROMPT_TUNING");
    assert_eq!(c.task_type.as_deref(), Some("CAUSAL_LM"));
    assert_eq!(
        (
            c.num_virtual_tokens,
            c.token_dim,
            c.num_transformer_submodules
        ),
        (20, Some(576), Some(1))
    );
    assert_eq!((c.num_layers, c.num_attention_heads), (Some(30), Some(9)));
    assert_eq!(c.peft_version.as_deref(), Some("0.21.2"));
    assert!(c.extra.is_empty());
    assert!(p.meta.is_none());
    assert_eq!(p.source.as_deref(), Some(smollm_prompt().as_path()));
}

#[test]
fn loads_peft_fixture_gemma() {
    let p = SoftPrompt::load(&gemma_prompt()).unwrap();
    assert_eq!(p.embeddings.shape, vec![20, 640]);
    assert!(p.embeddings.data.iter().all(|v| (-0.5..0.5).contains(v)));
    assert_eq!(p.config.num_layers, Some(18));
}

#[test]
fn loaded_values_equal_raw_file_floats() {
    // Independent decode of the fixture's data section.
    let b = fs::read(smollm_prompt().join(ADAPTER_WEIGHTS_FILE)).unwrap();
    let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
    let raw: Vec<f32> = b[8 + n..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    let p = SoftPrompt::load(&smollm_prompt()).unwrap();
    assert_eq!(p.embeddings.data, raw);
    assert_eq!(p.row(3), &raw[3 * 576..4 * 576]);
}

// ---------------------------------------------------------------------------------------
// Saving in PEFT's layout

#[test]
fn resaving_peft_fixture_is_byte_identical() {
    for src in [smollm_prompt(), gemma_prompt()] {
        let p = SoftPrompt::load(&src).unwrap();
        let t = tmp();
        p.save(t.path()).unwrap();
        for f in [ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE] {
            assert_eq!(
                fs::read(t.path().join(f)).unwrap(),
                fs::read(src.join(f)).unwrap(),
                "{f} differs"
            );
        }
        assert!(!t.path().join(META_FILE).exists());
    }
}

#[test]
fn new_prompt_has_peft_structure() {
    let t = tmp();
    let p = new_prompt(20, 576, 7);
    p.save(t.path()).unwrap();

    // Safetensors: same header bytes as PEFT's (name, dtype, shape, offsets, {"format":"pt"},
    // padding), so the same total size.
    let (ours_raw, ours) = st_header(&t.path().join(ADAPTER_WEIGHTS_FILE));
    let (peft_raw, peft) = st_header(&smollm_prompt().join(ADAPTER_WEIGHTS_FILE));
    assert_eq!(ours, peft);
    assert_eq!(ours_raw, peft_raw);
    assert_eq!(
        fs::metadata(t.path().join(ADAPTER_WEIGHTS_FILE))
            .unwrap()
            .len(),
        fs::metadata(smollm_prompt().join(ADAPTER_WEIGHTS_FILE))
            .unwrap()
            .len()
    );

    // Config: PEFT's exact key set; same values except the model name; same formatting.
    let ours: serde_json::Value =
        serde_json::from_slice(&fs::read(t.path().join(ADAPTER_CONFIG_FILE)).unwrap()).unwrap();
    let peft = fixture_config_json();
    let keys = |v: &serde_json::Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(&ours), keys(&peft));
    for (k, v) in peft.as_object().unwrap() {
        if k != "base_model_name_or_path" {
            assert_eq!(&ours[k], v, "key {k}");
        }
    }
    assert_eq!(ours["base_model_name_or_path"], "test model");
    assert_eq!(ours["peft_version"], PEFT_VERSION);
    let text = fs::read_to_string(t.path().join(ADAPTER_CONFIG_FILE)).unwrap();
    let mut ours_obj = ours.clone();
    ours_obj["base_model_name_or_path"] = peft["base_model_name_or_path"].clone();
    assert_eq!(
        serde_json::to_string_pretty(&ours_obj).unwrap(),
        fs::read_to_string(smollm_prompt().join(ADAPTER_CONFIG_FILE)).unwrap()
    );
    assert!(!text.ends_with('\n'), "PEFT writes no trailing newline");
}

#[test]
fn round_trip_is_bit_identical_with_meta() {
    let t = tmp();
    let mut emb = random_uniform(5, 8, 0.5, 1);
    // Awkward but finite values survive exactly.
    emb.data[0] = -0.0;
    emb.data[1] = f32::MIN_POSITIVE / 4.0; // subnormal
    emb.data[2] = f32::MAX;
    emb.data[3] = 1.0e-30;
    let mut meta = PromptMeta::new(
        "SmolLM2 test",
        8,
        Some("sha256:0123456789abcdef".into()),
        Some("sha256:x".into()),
    );
    meta.task = Some(serde_json::json!({"template": "{text} It was", "labels": [" bad", " good"]}));
    meta.metrics = Some(serde_json::json!({"accuracy": 0.875}));
    let p = SoftPrompt::new(emb, "m", 2, 2).with_meta(meta);
    p.save(t.path()).unwrap();
    let q = SoftPrompt::load(t.path()).unwrap();
    let bits = |t: &Tensor| t.data.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&q.embeddings), bits(&p.embeddings));
    assert_eq!(q.embeddings.shape, p.embeddings.shape);
    assert_eq!(q.config, p.config);
    assert_eq!(q.meta, p.meta);
    let m = q.meta.unwrap();
    assert_eq!(m.format_version, 1);
    assert!(m.created_by.starts_with("softprompt "));
    assert_eq!(m.created_at.len(), 20, "{}", m.created_at);
    assert!(m.created_at.ends_with('Z') && m.created_at.as_bytes()[10] == b'T');
}

#[test]
fn unknown_config_keys_are_tolerated_and_kept() {
    let t = tmp();
    copy_fixture(t.path());
    write_config(t.path(), |o| {
        o.insert("future_option".into(), serde_json::json!({"a": [1, 2]}));
    });
    let p = SoftPrompt::load(t.path()).unwrap();
    assert_eq!(
        p.config.extra["future_option"],
        serde_json::json!({"a": [1, 2]})
    );
    let out = tmp();
    p.save(out.path()).unwrap();
    let v: serde_json::Value =
        serde_json::from_slice(&fs::read(out.path().join(ADAPTER_CONFIG_FILE)).unwrap()).unwrap();
    assert_eq!(v["future_option"], serde_json::json!({"a": [1, 2]}));
}

#[test]
fn loads_f16_and_bf16_as_f32() {
    let vals: Vec<f32> = small_values(20 * 576)
        .iter()
        .map(|v| (v * 64.0).round() / 64.0)
        .collect();
    for dt in [safetensors::Dtype::F16, safetensors::Dtype::BF16] {
        let t = tmp();
        write_config(t.path(), |_| {});
        let bytes: Vec<u8> = vals
            .iter()
            .flat_map(|v| match dt {
                safetensors::Dtype::F16 => half::f16::from_f32(*v).to_le_bytes(),
                _ => half::bf16::from_f32(*v).to_le_bytes(),
            })
            .collect();
        write_safetensors(
            &t.path().join(ADAPTER_WEIGHTS_FILE),
            &[("prompt_embeddings", dt, vec![20, 576], bytes)],
        );
        let p = SoftPrompt::load(t.path()).unwrap();
        assert_eq!(p.embeddings.data, vals, "{dt}");
    }
}

#[test]
fn null_token_dim_and_submodules_take_the_tensor_and_1() {
    let t = folder_with_data(&small_values(20 * 576));
    write_config(t.path(), |o| {
        o.insert("token_dim".into(), serde_json::Value::Null);
        o.insert("num_transformer_submodules".into(), serde_json::Value::Null);
    });
    let p = SoftPrompt::load(t.path()).unwrap();
    assert_eq!(p.embeddings.shape, vec![20, 576]);
}

// ---------------------------------------------------------------------------------------
// Validation errors: each names the file and the problem

#[test]
fn err_missing_folder() {
    let t = tmp();
    let (_, m) = load_err(&t.path().join("nope"));
    assert_mentions(&m, &["nope", "not found"]);
}

#[test]
fn err_folder_is_a_file() {
    let t = tmp();
    let f = t.path().join("file");
    fs::write(&f, "x").unwrap();
    let (_, m) = load_err(&f);
    assert_mentions(&m, &["file", "not a folder"]);
}

#[test]
fn err_missing_config() {
    let t = tmp();
    copy_fixture(t.path());
    fs::remove_file(t.path().join(ADAPTER_CONFIG_FILE)).unwrap();
    let (e, m) = load_err(t.path());
    assert!(matches!(e, Error::Io { .. }));
    assert_mentions(&m, &["adapter_config.json", "missing"]);
}

#[test]
fn err_missing_safetensors() {
    let t = tmp();
    copy_fixture(t.path());
    fs::remove_file(t.path().join(ADAPTER_WEIGHTS_FILE)).unwrap();
    let (_, m) = load_err(t.path());
    assert_mentions(&m, &["adapter_model.safetensors", "missing"]);
}

#[test]
fn err_pickle_only() {
    let t = tmp();
    write_config(t.path(), |_| {});
    fs::write(t.path().join(ADAPTER_PICKLE_FILE), b"\x80\x02}q\x00.").unwrap();
    let (e, m) = load_err(t.path());
    assert!(matches!(e, Error::Unsupported { .. }));
    assert_mentions(
        &m,
        &["adapter_model.bin", "pickle", "safety", "safetensors"],
    );
}

#[test]
fn err_malformed_json() {
    let t = tmp();
    copy_fixture(t.path());
    fs::write(
        t.path().join(ADAPTER_CONFIG_FILE),
        "{\"peft_type\": \"PROMPT_TUNING\",",
    )
    .unwrap();
    let (e, m) = load_err(t.path());
    assert!(matches!(e, Error::Format { .. }));
    assert_mentions(&m, &["adapter_config.json", "malformed JSON"]);
}

#[test]
fn err_not_an_object_and_no_peft_type() {
    let t = tmp();
    copy_fixture(t.path());
    fs::write(t.path().join(ADAPTER_CONFIG_FILE), "[1, 2]").unwrap();
    assert_mentions(
        &load_err(t.path()).1,
        &["adapter_config.json", "JSON object"],
    );
    fs::write(t.path().join(ADAPTER_CONFIG_FILE), "{\"r\": 8}").unwrap();
    assert_mentions(
        &load_err(t.path()).1,
        &["adapter_config.json", "no peft_type"],
    );
}

#[test]
fn err_peft_type_lora() {
    let t = tmp();
    // A real LoRA config lacks the prompt fields: the peft_type error must come first.
    fs::write(
        t.path().join(ADAPTER_CONFIG_FILE),
        r#"{"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["q_proj"], "task_type": "CAUSAL_LM"}"#,
    )
    .unwrap();
    let (e, m) = load_err(t.path());
    assert!(matches!(e, Error::Unsupported { .. }));
    assert_mentions(
        &m,
        &[
            "adapter_config.json",
            "peft_type is LORA",
            "PROMPT_TUNING",
            "weights",
        ],
    );
}

#[test]
fn err_peft_type_p_tuning_and_prefix() {
    let t = tmp();
    copy_fixture(t.path());
    write_config(t.path(), |o| {
        o.insert("peft_type".into(), "P_TUNING".into());
    });
    assert_mentions(
        &load_err(t.path()).1,
        &["adapter_config.json", "P_TUNING", "prompt-encoder"],
    );
    // A prompt-tuning tensor under a prefix-tuning config: the config calls for
    // num_layers x 2 x token_dim = 30 x 2 x 576 columns.
    write_config(t.path(), |o| {
        o.insert("peft_type".into(), "PREFIX_TUNING".into());
    });
    assert_mentions(
        &load_err(t.path()).1,
        &["adapter_model.safetensors", "34560"],
    );
}

#[test]
fn err_task_type_not_causal_lm() {
    let t = tmp();
    copy_fixture(t.path());
    write_config(t.path(), |o| {
        o.insert("task_type".into(), "SEQ_2_SEQ_LM".into());
    });
    let (e, m) = load_err(t.path());
    assert!(matches!(e, Error::Unsupported { .. }));
    assert_mentions(&m, &["adapter_config.json", "SEQ_2_SEQ_LM", "CAUSAL_LM"]);
    write_config(t.path(), |o| {
        o.insert("task_type".into(), serde_json::Value::Null);
    });
    assert_mentions(
        &load_err(t.path()).1,
        &["adapter_config.json", "task_type is missing"],
    );
}

#[test]
fn err_num_virtual_tokens_zero() {
    let t = tmp();
    copy_fixture(t.path());
    write_config(t.path(), |o| {
        o.insert("num_virtual_tokens".into(), 0.into());
    });
    assert_mentions(
        &load_err(t.path()).1,
        &["adapter_config.json", "num_virtual_tokens is 0"],
    );
}

#[test]
fn err_num_virtual_tokens_too_many() {
    let t = tmp();
    copy_fixture(t.path());
    write_config(t.path(), |o| {
        o.insert("num_virtual_tokens".into(), 1_000_000.into());
    });
    let (e, m) = load_err(t.path());
    assert!(matches!(e, Error::Unsupported { .. }));
    assert_mentions(&m, &["adapter_config.json", "1000000", "at most 4096"]);
}

#[test]
fn err_num_virtual_tokens_negative_or_missing() {
    let t = tmp();
    copy_fixture(t.path());
    write_config(t.path(), |o| {
        o.insert("num_virtual_tokens".into(), (-3).into());
    });
    assert_mentions(
        &load_err(t.path()).1,
        &["adapter_config.json", "invalid prompt-tuning config"],
    );
    write_config(t.path(), |o| {
        o.remove("num_virtual_tokens");
    });
    assert_mentions(
        &load_err(t.path()).1,
        &["adapter_config.json", "num_virtual_tokens"],
    );
}

#[test]
fn err_two_transformer_submodules() {
    let t = tmp();
    copy_fixture(t.path());
    write_config(t.path(), |o| {
        o.insert("num_transformer_submodules".into(), 2.into());
    });
    let (e, m) = load_err(t.path());
    assert!(matches!(e, Error::Unsupported { .. }));
    assert_mentions(
        &m,
        &[
            "adapter_config.json",
            "num_transformer_submodules is 2",
            "encoder-decoder",
        ],
    );
}

#[test]
fn err_modules_to_save() {
    let t = tmp();
    copy_fixture(t.path());
    write_config(t.path(), |o| {
        o.insert("modules_to_save".into(), serde_json::json!(["lm_head"]));
    });
    assert_mentions(
        &load_err(t.path()).1,
        &["adapter_config.json", "modules_to_save"],
    );
}

#[test]
fn err_shape_mismatch_rows() {
    let t = tmp();
    copy_fixture(t.path());
    write_config(t.path(), |o| {
        o.insert("num_virtual_tokens".into(), 10.into());
    });
    let (e, m) = load_err(t.path());
    assert!(matches!(e, Error::Format { .. }));
    assert_mentions(
        &m,
        &[
            "adapter_model.safetensors",
            "[20, 576]",
            "[10, 576]",
            "num_virtual_tokens",
        ],
    );
}

#[test]
fn err_token_dim_mismatch() {
    let t = tmp();
    copy_fixture(t.path());
    write_config(t.path(), |o| {
        o.insert("token_dim".into(), 640.into());
    });
    assert_mentions(
        &load_err(t.path()).1,
        &[
            "adapter_model.safetensors",
            "[20, 576]",
            "[20, 640]",
            "token_dim 640",
        ],
    );
}

#[test]
fn err_tensor_not_2d() {
    let t = tmp();
    write_config(t.path(), |_| {});
    write_safetensors(
        &t.path().join(ADAPTER_WEIGHTS_FILE),
        &[(
            "prompt_embeddings",
            safetensors::Dtype::F32,
            vec![20 * 576],
            f32_bytes(&small_values(20 * 576)),
        )],
    );
    assert_mentions(
        &load_err(t.path()).1,
        &["adapter_model.safetensors", "[11520]"],
    );
}

#[test]
fn err_nan_value_names_row() {
    let mut v = small_values(20 * 576);
    v[7 * 576 + 3] = f32::NAN;
    let t = folder_with_data(&v);
    let (e, m) = load_err(t.path());
    assert!(matches!(e, Error::Format { .. }));
    assert_mentions(
        &m,
        &["adapter_model.safetensors", "row 7", "NaN", "column 3"],
    );
}

#[test]
fn err_inf_value_names_row() {
    let mut v = small_values(20 * 576);
    v[19 * 576] = f32::NEG_INFINITY;
    let t = folder_with_data(&v);
    assert_mentions(
        &load_err(t.path()).1,
        &["adapter_model.safetensors", "row 19", "inf"],
    );
}

#[test]
fn err_f64_dtype() {
    let t = tmp();
    write_config(t.path(), |_| {});
    let bytes: Vec<u8> = small_values(20 * 576)
        .iter()
        .flat_map(|v| (*v as f64).to_le_bytes())
        .collect();
    write_safetensors(
        &t.path().join(ADAPTER_WEIGHTS_FILE),
        &[(
            "prompt_embeddings",
            safetensors::Dtype::F64,
            vec![20, 576],
            bytes,
        )],
    );
    let (e, m) = load_err(t.path());
    assert!(matches!(e, Error::Unsupported { .. }));
    assert_mentions(&m, &["adapter_model.safetensors", "F64", "F32, F16, BF16"]);
}

#[test]
fn err_truncated_safetensors() {
    let t = tmp();
    copy_fixture(t.path());
    let path = t.path().join(ADAPTER_WEIGHTS_FILE);
    let full = fs::read(&path).unwrap();
    // Cut in the data, in the header, and in the length prefix.
    for cut in [full.len() - 1, full.len() / 2, 60, 5, 0] {
        fs::write(&path, &full[..cut]).unwrap();
        let (e, m) = load_err(t.path());
        assert!(matches!(e, Error::Format { .. }), "cut {cut}: {m}");
        assert_mentions(&m, &["adapter_model.safetensors", "truncated"]);
    }
}

#[test]
fn err_trailing_bytes() {
    let t = tmp();
    copy_fixture(t.path());
    let path = t.path().join(ADAPTER_WEIGHTS_FILE);
    let mut full = fs::read(&path).unwrap();
    full.extend_from_slice(&[0; 16]);
    fs::write(&path, &full).unwrap();
    assert_mentions(
        &load_err(t.path()).1,
        &["adapter_model.safetensors", "16 unexpected bytes"],
    );
}

#[test]
fn err_corrupt_safetensors_header() {
    let t = tmp();
    copy_fixture(t.path());
    let path = t.path().join(ADAPTER_WEIGHTS_FILE);
    // Garbage JSON of the right length.
    let mut b = fs::read(&path).unwrap();
    b[8..20].copy_from_slice(b"not json at ");
    fs::write(&path, &b).unwrap();
    assert_mentions(
        &load_err(t.path()).1,
        &["adapter_model.safetensors", "corrupt safetensors header"],
    );
    // A huge header length.
    let mut b = fs::read(smollm_prompt().join(ADAPTER_WEIGHTS_FILE)).unwrap();
    b[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    fs::write(&path, &b).unwrap();
    assert_mentions(
        &load_err(t.path()).1,
        &["adapter_model.safetensors", "header length"],
    );
    // Offsets that do not match the dtype and shape.
    let hdr = br#"{"prompt_embeddings":{"dtype":"F32","shape":[20,576],"data_offsets":[0,46076]}}"#;
    let mut b = (hdr.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(hdr);
    b.extend(vec![0u8; 46076]);
    fs::write(&path, &b).unwrap();
    assert_mentions(
        &load_err(t.path()).1,
        &["adapter_model.safetensors", "corrupt safetensors header"],
    );
}

#[test]
fn err_missing_tensor() {
    let t = tmp();
    write_config(t.path(), |_| {});
    write_safetensors(
        &t.path().join(ADAPTER_WEIGHTS_FILE),
        &[(
            "embedding.weight",
            safetensors::Dtype::F32,
            vec![20, 576],
            f32_bytes(&small_values(20 * 576)),
        )],
    );
    let (e, m) = load_err(t.path());
    assert!(matches!(e, Error::Format { .. }));
    assert_mentions(
        &m,
        &[
            "adapter_model.safetensors",
            "no tensor `prompt_embeddings`",
            "embedding.weight",
        ],
    );
}

#[test]
fn err_extra_tensor() {
    let t = tmp();
    write_config(t.path(), |_| {});
    write_safetensors(
        &t.path().join(ADAPTER_WEIGHTS_FILE),
        &[
            (
                "prompt_embeddings",
                safetensors::Dtype::F32,
                vec![20, 576],
                f32_bytes(&small_values(20 * 576)),
            ),
            (
                "lm_head.weight",
                safetensors::Dtype::F32,
                vec![2, 2],
                f32_bytes(&[0.0; 4]),
            ),
        ],
    );
    assert_mentions(
        &load_err(t.path()).1,
        &["adapter_model.safetensors", "lm_head.weight"],
    );
}

#[test]
fn err_meta_malformed_or_inconsistent() {
    let t = tmp();
    copy_fixture(t.path());
    let meta = t.path().join(META_FILE);
    fs::write(&meta, "{oops").unwrap();
    assert_mentions(
        &load_err(t.path()).1,
        &["softprompt.json", "malformed JSON"],
    );
    let m = PromptMeta::new("x", 640, None, None);
    fs::write(&meta, serde_json::to_string(&m).unwrap()).unwrap();
    assert_mentions(
        &load_err(t.path()).1,
        &["softprompt.json", "hidden_size 640", "576"],
    );
    let mut m = serde_json::to_value(PromptMeta::new("x", 576, None, None)).unwrap();
    m["format_version"] = 99.into();
    fs::write(&meta, serde_json::to_string(&m).unwrap()).unwrap();
    assert_mentions(
        &load_err(t.path()).1,
        &["softprompt.json", "newer softprompt"],
    );
    // Unknown keys in our own meta are fine (a later version may add some).
    let mut m = serde_json::to_value(PromptMeta::new("x", 576, None, None)).unwrap();
    m["something_new"] = true.into();
    fs::write(&meta, serde_json::to_string(&m).unwrap()).unwrap();
    assert!(SoftPrompt::load(t.path()).unwrap().meta.is_some());
}

// ---------------------------------------------------------------------------------------
// Compatibility with a model

#[test]
fn compatible_hidden_size_mismatch_is_an_error() {
    let p = SoftPrompt::load(&smollm_prompt()).unwrap();
    let e = p
        .check_compatible(640, "sha256:whatever", true)
        .unwrap_err();
    assert!(matches!(e, Error::Mismatch(_)));
    assert_mentions(&e.to_string(), &["576", "640", "smollm2-135m/prompt"]);
}

#[test]
fn compatible_peft_prompt_without_meta_passes_on_hidden_size() {
    let p = SoftPrompt::load(&smollm_prompt()).unwrap();
    p.check_compatible(576, "sha256:anything", false).unwrap();
    assert_eq!(p.fingerprint_matches("sha256:anything"), None);
}

#[test]
fn compatible_fingerprint_mismatch_refused_unless_forced() {
    let t = tmp();
    let meta = PromptMeta::new(
        "SmolLM2-135M (Q4_1)",
        8,
        Some("sha256:aaaaaaaaaaaaaaaa".into()),
        None,
    );
    new_prompt(4, 8, 1).with_meta(meta).save(t.path()).unwrap();
    let p = SoftPrompt::load(t.path()).unwrap();
    p.check_compatible(8, "sha256:aaaaaaaaaaaaaaaa", false)
        .unwrap();
    let e = p
        .check_compatible(8, "sha256:bbbbbbbbbbbbbbbb", false)
        .unwrap_err();
    // A mismatch whose way out is a setting: `force` (the CLI's --force).
    assert!(matches!(e, Error::Setting { name: "force", .. }), "{e:?}");
    assert_mentions(
        &e.to_string(),
        &[
            "SmolLM2-135M (Q4_1)",
            "sha256:aaaaaaaaaaaaaaaa",
            "sha256:bbbbbbbbbbbbbbbb",
            "force",
            &t.path().display().to_string(),
        ],
    );
    p.check_compatible(8, "sha256:bbbbbbbbbbbbbbbb", true)
        .unwrap();
    // Hidden size is checked even when forced.
    assert!(p
        .check_compatible(16, "sha256:aaaaaaaaaaaaaaaa", true)
        .is_err());
}

// ---------------------------------------------------------------------------------------
// Atomic saves

fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn failed_save_leaves_old_prompt_intact() {
    let t = tmp();
    let good =
        new_prompt(20, 576, 3).with_meta(PromptMeta::new("m", 576, Some("sha256:1".into()), None));
    good.save(t.path()).unwrap();
    let before = snapshot(t.path());

    // A prompt that fails validation while serializing: nothing is touched.
    let mut bad = new_prompt(20, 576, 4);
    bad.embeddings.data[100] = f32::NAN;
    let e = bad.save(t.path()).unwrap_err();
    assert_mentions(&e.to_string(), &["row 0", "NaN"]);
    // Inconsistent config vs tensor.
    let mut bad = new_prompt(20, 576, 4);
    bad.config.num_virtual_tokens = 21;
    assert!(bad.save(t.path()).is_err());
    // Wrong tensor rank.
    let bad = SoftPrompt::new(Tensor::new(vec![576], vec![0.0; 576]), "m", 1, 1);
    assert!(bad.save(t.path()).is_err());

    assert_eq!(snapshot(t.path()), before);
    assert_eq!(
        SoftPrompt::load(t.path()).unwrap().embeddings,
        good.embeddings
    );
}

#[test]
fn failed_write_midway_leaves_old_files_and_no_temp_files() {
    // The meta file's final name is a non-empty folder: the two adapter files are staged
    // and renamed, the meta rename fails. Every final name holds a whole file either way,
    // and no temp file is left behind.
    let t = tmp();
    let good = new_prompt(20, 576, 3);
    good.save(t.path()).unwrap();
    fs::create_dir(t.path().join(META_FILE)).unwrap();
    fs::write(t.path().join(META_FILE).join("x"), "x").unwrap();
    let next = new_prompt(20, 576, 5).with_meta(PromptMeta::new("m", 576, None, None));
    let e = next.save(t.path()).unwrap_err();
    assert_mentions(&e.to_string(), &["softprompt.json"]);
    let names: Vec<String> = snapshot_names(t.path());
    assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");
    // Adapter files are whole (one prompt or the other, never a mix of bytes).
    fs::remove_dir_all(t.path().join(META_FILE)).unwrap();
    let q = SoftPrompt::load(t.path()).unwrap();
    assert!(q.embeddings == good.embeddings || q.embeddings == next.embeddings);
}

fn snapshot_names(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn save_into_a_file_path_fails_cleanly() {
    let t = tmp();
    let f = t.path().join("occupied");
    fs::write(&f, "keep me").unwrap();
    let e = new_prompt(2, 4, 1).save(&f).unwrap_err();
    assert_mentions(&e.to_string(), &["occupied", "not a folder"]);
    assert_eq!(fs::read(&f).unwrap(), b"keep me");
}

#[test]
fn save_creates_folder_overwrites_and_drops_stale_meta() {
    let t = tmp();
    let dir = t.path().join("a/b/prompt");
    new_prompt(3, 4, 1)
        .with_meta(PromptMeta::new("m", 4, None, None))
        .save(&dir)
        .unwrap();
    assert!(dir.join(META_FILE).exists());
    let second = new_prompt(5, 4, 2);
    second.save(&dir).unwrap();
    assert!(
        !dir.join(META_FILE).exists(),
        "stale softprompt.json must go"
    );
    let q = SoftPrompt::load(&dir).unwrap();
    assert_eq!(q.embeddings, second.embeddings);
    let mut names = snapshot_names(&dir);
    names.sort();
    assert_eq!(names, vec![ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE]);
}

#[test]
fn leftover_temp_files_do_not_disturb_load() {
    let t = tmp();
    copy_fixture(t.path());
    fs::write(
        t.path().join(".adapter_model.safetensors.123.0.tmp"),
        b"half",
    )
    .unwrap();
    SoftPrompt::load(t.path()).unwrap();
}

// ---------------------------------------------------------------------------------------
// Fingerprints

#[test]
fn model_fingerprint_format_and_sensitivity() {
    let cfg = llama_config(8, 100);
    let emb = random_uniform(100, 8, 1.0, 9);
    let fp = model_fingerprint(&cfg, &emb);
    assert!(fp.starts_with("sha256:") && fp.len() == 7 + 16, "{fp}");
    assert!(fp[7..].chars().all(|c| c.is_ascii_hexdigit()));
    assert_eq!(fp, model_fingerprint(&cfg, &emb.clone()));
    let mut emb2 = emb.clone();
    emb2.data[799] = f32::from_bits(emb2.data[799].to_bits() ^ 1);
    assert_ne!(fp, model_fingerprint(&cfg, &emb2));
    let mut cfg2 = cfg.clone();
    cfg2.num_hidden_layers = 29;
    assert_ne!(fp, model_fingerprint(&cfg2, &emb));
    // A config that spells head_dim / kv heads out gives the same fingerprint.
    let mut cfg3 = cfg.clone();
    cfg3.head_dim = Some(cfg.head_dim());
    assert_eq!(fp, model_fingerprint(&cfg3, &emb));
}

#[test]
fn model_fingerprint_is_fast_on_a_real_sized_table() {
    // SmolLM2-135M: 49152 × 576 f32 = 113 MB.
    let cfg = llama_config(576, 49152);
    let emb = Tensor::new(
        vec![49152, 576],
        (0..49152 * 576).map(|i| (i % 1013) as f32 * 1e-3).collect(),
    );
    let _ = model_fingerprint(&cfg, &emb); // warm up the thread pool
    let t0 = Instant::now();
    let fp = model_fingerprint(&cfg, &emb);
    let dt = t0.elapsed();
    eprintln!("model_fingerprint over 113 MB: {dt:?} -> {fp}");
    // Its speed (target < 0.5 s) is a benchmark figure, not asserted here.
    // A chunk boundary inside the table matters: change the last value.
    let mut emb2 = emb.clone();
    let last = emb2.data.len() - 1;
    emb2.data[last] += 1.0;
    assert_ne!(fp, model_fingerprint(&cfg, &emb2));
}

fn tokenizer(vocab: &[(&str, u32)], special: &[(&str, u32)]) -> tokenizers::Tokenizer {
    let v: serde_json::Map<String, serde_json::Value> = vocab
        .iter()
        .chain(special)
        .map(|(t, i)| (t.to_string(), (*i).into()))
        .collect();
    let added: Vec<serde_json::Value> = special
        .iter()
        .map(|(t, i)| {
            serde_json::json!({"id": i, "content": t, "single_word": false, "lstrip": false,
                               "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    let json = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
        "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null,
        "decoder": null, "model": {"type": "WordLevel", "vocab": v, "unk_token": "[UNK]"}
    });
    tokenizers::Tokenizer::from_bytes(serde_json::to_vec(&json).unwrap()).unwrap()
}

#[test]
fn tokenizer_fingerprint_covers_vocab_and_added_tokens() {
    let base = [("[UNK]", 0), ("hello", 1), ("world", 2)];
    let a = tokenizer(&base, &[("<s>", 3)]);
    let fp = tokenizer_fingerprint(&a);
    assert!(fp.starts_with("sha256:") && fp.len() == 23, "{fp}");
    // Same vocab listed in another order: same fingerprint.
    let b = tokenizer(&[("world", 2), ("hello", 1), ("[UNK]", 0)], &[("<s>", 3)]);
    assert_eq!(fp, tokenizer_fingerprint(&b));
    // A different token, a swapped id, a missing added token: different.
    assert_ne!(
        fp,
        tokenizer_fingerprint(&tokenizer(
            &[("[UNK]", 0), ("hello", 1), ("World", 2)],
            &[("<s>", 3)]
        ))
    );
    assert_ne!(
        fp,
        tokenizer_fingerprint(&tokenizer(
            &[("[UNK]", 0), ("hello", 2), ("world", 1)],
            &[("<s>", 3)]
        ))
    );
    assert_ne!(fp, tokenizer_fingerprint(&tokenizer(&base, &[])));
}

// ---------------------------------------------------------------------------------------
// Init helpers

#[test]
fn random_uniform_is_seeded_and_in_range() {
    let a = random_uniform(20, 64, 0.5, 42);
    assert_eq!(a.shape, vec![20, 64]);
    assert!(a.data.iter().all(|v| (-0.5..0.5).contains(v)));
    assert_eq!(a, random_uniform(20, 64, 0.5, 42));
    assert_ne!(a, random_uniform(20, 64, 0.5, 43));
    let mean = a.data.iter().sum::<f32>() / a.data.len() as f32;
    assert!(mean.abs() < 0.05);
}

#[test]
fn vocab_row_init() {
    let embed = softprompt_core::compute::weight::Weight::F32(Tensor::new(
        vec![4, 3],
        (0..12).map(|i| i as f32).collect(),
    ));
    let t = from_vocab_rows(&embed, &[2, 0, 2]).unwrap();
    assert_eq!(t.shape, vec![3, 3]);
    assert_eq!(t.data, vec![6.0, 7.0, 8.0, 0.0, 1.0, 2.0, 6.0, 7.0, 8.0]);
    assert_mentions(
        &from_vocab_rows(&embed, &[4]).unwrap_err().to_string(),
        &["4", "vocabulary"],
    );
    assert!(from_vocab_rows(&embed, &[]).is_err());

    assert_eq!(repeat_ids(&[5, 6, 7], 7), vec![5, 6, 7, 5, 6, 7, 5]);
    assert_eq!(repeat_ids(&[5, 6, 7], 2), vec![5, 6]);
    assert!(repeat_ids(&[], 3).is_empty());

    let ids = sample_vocab_ids(49152, 5000, 20, 1);
    assert_eq!(ids.len(), 20);
    assert!(ids.iter().all(|&i| i < 5000));
    let mut u = ids.clone();
    u.sort();
    u.dedup();
    assert_eq!(u.len(), 20, "distinct");
    assert_eq!(ids, sample_vocab_ids(49152, 5000, 20, 1));
    assert_eq!(sample_vocab_ids(3, 5000, 5, 1).len(), 5);
}
