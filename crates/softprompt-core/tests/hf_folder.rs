//! Hugging Face folders and the hub cache: save → load round trips (single file and sharded),
//! F16/BF16 input, corrupt inputs, and `load_hub` against a fake, offline HF cache.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use safetensors::tensor::{Dtype, TensorView};
use softprompt_core::model::load::hf::{load_hf_folder, save_hf_folder, transformers_config};
use softprompt_core::model::load::hub::load_hub;
use softprompt_core::model::{LlamaConfig, LoadedWeights};
use softprompt_core::{Error, Tensor};

const WORDS: &[&str] = &[
    "hello", "world", "the", "cat", "sat", "on", "mat", "a", "dog", "ran",
];

fn tokenizer() -> tokenizers::Tokenizer {
    let mut vocab = serde_json::Map::new();
    vocab.insert("[UNK]".into(), 0.into());
    for (i, w) in WORDS.iter().enumerate() {
        vocab.insert((*w).into(), (i + 1).into());
    }
    let json = serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [],
        "normalizer": null,
        "pre_tokenizer": { "type": "Whitespace" },
        "post_processor": null,
        "decoder": null,
        "model": { "type": "WordLevel", "vocab": vocab, "unk_token": "[UNK]" }
    });
    tokenizers::Tokenizer::from_str(&json.to_string()).expect("test tokenizer")
}

fn config() -> LlamaConfig {
    serde_json::from_value(serde_json::json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": 300,
        "rms_norm_eps": 1e-5,
        "rope_theta": 100000.0,
        "max_position_embeddings": 256,
        "tie_word_embeddings": false,
        "bos_token_id": 1,
        "eos_token_id": [2, 3]
    }))
    .expect("test config")
}

/// Deterministic pseudo-random values, with a few awkward ones (-0, subnormal, huge) mixed in.
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|i| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            match i % 97 {
                13 => -0.0,
                29 => f32::from_bits(1), // smallest subnormal
                41 => 3.0e38,
                _ => ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.2,
            }
        })
        .collect()
}

fn tiny_model() -> LoadedWeights {
    let cfg = config();
    let h = cfg.hidden_size;
    let kv = cfg.num_kv_heads() * cfg.head_dim();
    let inter = cfg.intermediate_size;
    let v = cfg.vocab_size;
    let mut shapes: Vec<(String, Vec<usize>)> = vec![
        ("model.embed_tokens.weight".into(), vec![v, h]),
        ("model.norm.weight".into(), vec![h]),
        ("lm_head.weight".into(), vec![v, h]),
    ];
    for l in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{l}");
        shapes.extend([
            (format!("{p}.input_layernorm.weight"), vec![h]),
            (format!("{p}.post_attention_layernorm.weight"), vec![h]),
            (format!("{p}.self_attn.q_proj.weight"), vec![h, h]),
            (format!("{p}.self_attn.k_proj.weight"), vec![kv, h]),
            (format!("{p}.self_attn.v_proj.weight"), vec![kv, h]),
            (format!("{p}.self_attn.o_proj.weight"), vec![h, h]),
            (format!("{p}.mlp.gate_proj.weight"), vec![inter, h]),
            (format!("{p}.mlp.up_proj.weight"), vec![inter, h]),
            (format!("{p}.mlp.down_proj.weight"), vec![h, inter]),
        ]);
    }
    let weights = shapes
        .into_iter()
        .enumerate()
        .map(|(i, (name, shape))| {
            let n = shape.iter().product();
            (name, Tensor::new(shape, values(n, i as u64)))
        })
        .collect();
    LoadedWeights {
        config: cfg,
        weights,
        matrices: Default::default(),
        tokenizer: tokenizer(),
        source: "test".into(),
        stored_dtype: "f32".into(),
        chat_template: Some("{% for m in messages %}{{ m['content'] }}{% endfor %}".into()),
    }
}

fn assert_same(a: &LoadedWeights, b: &LoadedWeights) {
    // The reloaded config.json is the transformers 5 form of the same model: writing it
    // again gives the same file.
    assert_eq!(
        transformers_config(&a.config).unwrap(),
        transformers_config(&b.config).unwrap()
    );
    assert_eq!(
        a.chat_template, b.chat_template,
        "chat template lost in the round trip"
    );
    let mut names_a: Vec<_> = a.weights.keys().collect();
    let mut names_b: Vec<_> = b.weights.keys().collect();
    names_a.sort();
    names_b.sort();
    assert_eq!(names_a, names_b);
    for (name, ta) in &a.weights {
        let tb = &b.weights[name];
        assert_eq!(ta.shape, tb.shape, "{name}");
        let bits_a: Vec<u32> = ta.data.iter().map(|x| x.to_bits()).collect();
        let bits_b: Vec<u32> = tb.data.iter().map(|x| x.to_bits()).collect();
        assert!(bits_a == bits_b, "{name}: values differ");
    }
    assert_eq!(
        a.tokenizer.to_string(false).ok(),
        b.tokenizer.to_string(false).ok()
    );
    let ids = |t: &tokenizers::Tokenizer| {
        t.encode("hello the cat sat on a zebra", false)
            .map(|e| e.get_ids().to_vec())
            .ok()
    };
    assert_eq!(ids(&a.tokenizer), ids(&b.tokenizer));
    assert_eq!(ids(&b.tokenizer), Some(vec![1, 3, 4, 5, 6, 8, 0]));
}

fn file_names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn first_shard(dir: &Path) -> String {
    file_names(dir)
        .into_iter()
        .find(|n| n.starts_with("model-00001-of-"))
        .expect("a first shard")
}

#[test]
fn round_trip_single_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("tiny");
    let lw = tiny_model();
    save_hf_folder(&dir, &lw, None).unwrap();
    assert_eq!(
        file_names(&dir),
        [
            "chat_template.jinja",
            "config.json",
            "model.safetensors",
            "tokenizer.json"
        ]
    );
    // Nothing but the folder itself is left in the parent (the temp folder was renamed).
    assert_eq!(file_names(tmp.path()), ["tiny"]);
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["dtype"], "float32");
    assert_eq!(cfg["model_type"], "llama");

    let back = load_hf_folder(&dir).unwrap();
    assert_same(&lw, &back);
    assert_eq!(back.stored_dtype, "safetensors F32");
    assert_eq!(back.source, dir.display().to_string());
}

#[test]
fn round_trip_sharded() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("sharded");
    let lw = tiny_model();
    save_hf_folder(&dir, &lw, Some(40_000)).unwrap();
    let names = file_names(&dir);
    assert!(names.contains(&"model.safetensors.index.json".to_string()));
    assert!(!names.contains(&"model.safetensors".to_string()));
    let shards: Vec<&String> = names.iter().filter(|n| n.starts_with("model-")).collect();
    assert!(shards.len() > 2, "expected several shards, got {names:?}");
    let n = shards.len();
    for (i, s) in shards.iter().enumerate() {
        assert_eq!(**s, format!("model-{:05}-of-{n:05}.safetensors", i + 1));
    }
    let index: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("model.safetensors.index.json")).unwrap(),
    )
    .unwrap();
    let total: usize = lw.weights.values().map(|t| t.numel() * 4).sum();
    assert_eq!(index["metadata"]["total_size"], total);
    assert_eq!(
        index["weight_map"].as_object().unwrap().len(),
        lw.weights.len()
    );

    let back = load_hf_folder(&dir).unwrap();
    assert_same(&lw, &back);
}

#[test]
fn save_refuses_non_empty_folder_but_fills_an_empty_one() {
    let tmp = tempfile::tempdir().unwrap();
    let lw = tiny_model();
    let full = tmp.path().join("full");
    std::fs::create_dir(&full).unwrap();
    std::fs::write(full.join("keep.txt"), "x").unwrap();
    let err = save_hf_folder(&full, &lw, None).unwrap_err();
    assert!(err.to_string().contains("not empty"), "{err}");
    assert_eq!(file_names(&full), ["keep.txt"]);

    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    save_hf_folder(&empty, &lw, None).unwrap();
    assert_same(&lw, &load_hf_folder(&empty).unwrap());
    assert_eq!(file_names(tmp.path()), ["empty", "full"]);
}

/// Rewrite `model.safetensors` with every tensor in F16 or BF16 (alternating).
fn write_half_precision(dir: &Path, lw: &LoadedWeights) -> HashMap<String, Vec<f32>> {
    let mut names: Vec<&String> = lw.weights.keys().collect();
    names.sort();
    let mut bytes: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    let mut expected = HashMap::new();
    for (i, name) in names.into_iter().enumerate() {
        let t = &lw.weights[name];
        let (dtype, raw, back): (Dtype, Vec<u8>, Vec<f32>) = if i % 2 == 0 {
            let h: Vec<half::bf16> = t.data.iter().map(|&x| half::bf16::from_f32(x)).collect();
            (
                Dtype::BF16,
                h.iter().flat_map(|x| x.to_le_bytes()).collect(),
                h.iter().map(|x| x.to_f32()).collect(),
            )
        } else {
            let h: Vec<half::f16> = t.data.iter().map(|&x| half::f16::from_f32(x)).collect();
            (
                Dtype::F16,
                h.iter().flat_map(|x| x.to_le_bytes()).collect(),
                h.iter().map(|x| x.to_f32()).collect(),
            )
        };
        expected.insert(name.clone(), back);
        bytes.push((name.clone(), dtype, t.shape.clone(), raw));
    }
    let views: Vec<(String, TensorView)> = bytes
        .iter()
        .map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    safetensors::serialize_to_file(views, None, &dir.join("model.safetensors")).unwrap();
    expected
}

#[test]
fn f16_and_bf16_are_converted_to_f32() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("half");
    let lw = tiny_model();
    save_hf_folder(&dir, &lw, None).unwrap();
    let expected = write_half_precision(&dir, &lw);

    let back = load_hf_folder(&dir).unwrap();
    assert_eq!(back.stored_dtype, "safetensors BF16+F16, converted to f32");
    assert_eq!(back.weights.len(), expected.len());
    for (name, want) in &expected {
        let got = &back.weights[name];
        assert_eq!(got.shape, lw.weights[name].shape, "{name}");
        let a: Vec<u32> = got.data.iter().map(|x| x.to_bits()).collect();
        let b: Vec<u32> = want.iter().map(|x| x.to_bits()).collect();
        assert!(a == b, "{name}: conversion differs");
    }
    // Spot check against the f32 originals: lm_head (first in name order) was stored as BF16.
    let emb = &back.weights["lm_head.weight"].data;
    let orig = &lw.weights["lm_head.weight"].data;
    assert!(emb
        .iter()
        .zip(orig)
        .all(|(a, b)| (a - b).abs() <= b.abs() / 128.0 + 1e-30));
}

#[test]
fn unsupported_dtype_names_the_tensor() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ints");
    save_hf_folder(&dir, &tiny_model(), None).unwrap();
    let raw: Vec<u8> = (0..8i32).flat_map(|x| x.to_le_bytes()).collect();
    let view = TensorView::new(Dtype::I32, vec![8], &raw).unwrap();
    safetensors::serialize_to_file(
        [("model.some_ints", view)],
        None,
        &dir.join("model.safetensors"),
    )
    .unwrap();
    match load_hf_folder(&dir) {
        Err(e @ Error::Unsupported { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains("model.some_ints") && msg.contains("I32"),
                "{msg}"
            );
        }
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("I32 tensor accepted"),
    }
}

fn expect_format_error(dir: &Path, file: &str, needles: &[&str]) {
    match load_hf_folder(dir) {
        Err(Error::Format { path, msg }) => {
            assert_eq!(path, dir.join(file), "{msg}");
            for n in needles {
                assert!(msg.contains(n), "{msg} lacks {n}");
            }
        }
        Err(e) => panic!("wrong error kind: {e}"),
        Ok(_) => panic!("bad {file} accepted"),
    }
}

#[test]
fn truncated_safetensors_is_a_clean_error() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("trunc");
    save_hf_folder(&dir, &tiny_model(), None).unwrap();
    let path = dir.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    expect_format_error(&dir, "model.safetensors", &["truncated or corrupt"]);
    // A header cut short, too.
    std::fs::write(&path, &bytes[..20]).unwrap();
    expect_format_error(&dir, "model.safetensors", &["safetensors"]);
    std::fs::write(&path, b"").unwrap();
    expect_format_error(&dir, "model.safetensors", &["safetensors"]);
}

#[test]
fn shard_path_outside_the_folder_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("evil");
    save_hf_folder(&dir, &tiny_model(), Some(40_000)).unwrap();
    // A real shard file outside, which must never be read.
    std::fs::copy(
        dir.join(first_shard(&dir)),
        tmp.path().join("evil.safetensors"),
    )
    .unwrap();
    let index_path = dir.join("model.safetensors.index.json");
    let mut index: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&index_path).unwrap()).unwrap();
    index["weight_map"]["model.norm.weight"] = "../evil.safetensors".into();
    std::fs::write(&index_path, index.to_string()).unwrap();
    expect_format_error(
        &dir,
        "model.safetensors.index.json",
        &["../evil.safetensors", "leaves the model folder"],
    );

    index["weight_map"]["model.norm.weight"] = "/tmp/evil.safetensors".into();
    std::fs::write(&index_path, index.to_string()).unwrap();
    expect_format_error(
        &dir,
        "model.safetensors.index.json",
        &["leaves the model folder"],
    );
}

#[test]
fn bad_config_and_missing_files() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cfg");
    save_hf_folder(&dir, &tiny_model(), None).unwrap();
    let cfg_path = dir.join("config.json");
    let good = std::fs::read_to_string(&cfg_path).unwrap();

    std::fs::write(
        &cfg_path,
        "{\n  \"model_type\": \"llama\",\n  \"hidden_size\": 64,,\n}",
    )
    .unwrap();
    expect_format_error(&dir, "config.json", &["line 3", "column"]);

    std::fs::write(&cfg_path, good.replace("\"llama\"", "\"gpt2\"")).unwrap();
    match load_hf_folder(&dir) {
        Err(e @ Error::Unsupported { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains("gpt2") && msg.contains(&dir.display().to_string()),
                "{msg}"
            );
        }
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("gpt2 accepted"),
    }

    // Missing a required field: still names the file.
    std::fs::write(&cfg_path, "{\"model_type\": \"llama\"}").unwrap();
    expect_format_error(&dir, "config.json", &["hidden_size"]);

    std::fs::write(&cfg_path, &good).unwrap();
    std::fs::remove_file(dir.join("tokenizer.json")).unwrap();
    let err = load_hf_folder(&dir)
        .err()
        .expect("missing tokenizer accepted");
    assert!(
        err.to_string()
            .contains(&dir.join("tokenizer.json").display().to_string()),
        "{err}"
    );

    std::fs::remove_file(dir.join("config.json")).unwrap();
    let err = load_hf_folder(&dir).err().expect("missing config accepted");
    assert!(
        err.to_string().contains(&cfg_path.display().to_string()),
        "{err}"
    );
}

// ---- load_hub against an offline Hugging Face cache ----

/// The hub tests change process-wide environment variables: one at a time.
static ENV: Mutex<()> = Mutex::new(());

fn offline_env(hf_home: &Path) {
    std::env::set_var("HF_HOME", hf_home);
    std::env::set_var("HF_HUB_OFFLINE", "1");
    std::env::remove_var("HF_HUB_CACHE");
    std::env::remove_var("HUGGINGFACE_HUB_CACHE");
    std::env::remove_var("HF_ENDPOINT");
}

#[test]
fn hub_offline_with_empty_cache_fails_fast_and_clearly() {
    let _g = ENV.lock().unwrap_or_else(|e| e.into_inner());
    let home = tempfile::tempdir().unwrap();
    offline_env(home.path());
    let t = Instant::now();
    let res = load_hub("HuggingFaceTB/SmolLM2-135M-Instruct", None);
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "took {:?}",
        t.elapsed()
    );
    match res {
        Err(Error::Fetch(msg)) => {
            for needle in [
                "HuggingFaceTB/SmolLM2-135M-Instruct",
                "could not be reached",
                "cache",
                ".gguf",
            ] {
                assert!(msg.contains(needle), "{msg} lacks {needle}");
            }
            assert!(!msg.contains('\n'), "one line: {msg}");
        }
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("loaded from an empty cache"),
    }
}

#[test]
fn hub_unreachable_endpoint_fails_fast_and_clearly() {
    let _g = ENV.lock().unwrap_or_else(|e| e.into_inner());
    let home = tempfile::tempdir().unwrap();
    offline_env(home.path());
    std::env::remove_var("HF_HUB_OFFLINE");
    // A closed local port: connection refused at once.
    std::env::set_var("HF_ENDPOINT", "http://127.0.0.1:9");
    let t = Instant::now();
    let res = load_hub("org/not-cached", None);
    std::env::remove_var("HF_ENDPOINT");
    assert!(
        t.elapsed() < Duration::from_secs(8),
        "took {:?}",
        t.elapsed()
    );
    match res {
        Err(Error::Fetch(msg)) => {
            assert!(
                msg.contains("org/not-cached") && msg.contains("could not be reached"),
                "{msg}"
            );
        }
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("loaded from nowhere"),
    }
}

const SHA: &str = "0123456789abcdef0123456789abcdef01234567";

/// Lay out `models--org--name/{refs/main, snapshots/<sha>/...}` as the Python tools do.
fn fake_cache_repo(hub: &Path, repo: &str, lw: &LoadedWeights, shard: Option<usize>) -> PathBuf {
    let repo_dir = hub.join(format!("models--{}", repo.replace('/', "--")));
    let snapshot = repo_dir.join("snapshots").join(SHA);
    save_hf_folder(&snapshot, lw, shard).unwrap();
    std::fs::create_dir_all(repo_dir.join("refs")).unwrap();
    std::fs::write(repo_dir.join("refs").join("main"), format!("{SHA}\n")).unwrap();
    snapshot
}

#[test]
fn hub_loads_from_the_cache_offline() {
    let _g = ENV.lock().unwrap_or_else(|e| e.into_inner());
    let home = tempfile::tempdir().unwrap();
    offline_env(home.path());
    let lw = tiny_model();
    let snapshot = fake_cache_repo(&home.path().join("hub"), "org/tiny", &lw, None);

    let back = load_hub("org/tiny", None).unwrap();
    assert_same(&lw, &back);
    assert_eq!(back.source, snapshot.display().to_string());
    // A commit hash as the revision finds the snapshot directly.
    assert_same(&lw, &load_hub("org/tiny", Some(SHA)).unwrap());
    // An unknown branch is not in the cache.
    assert!(matches!(
        load_hub("org/tiny", Some("dev")),
        Err(Error::Fetch(_))
    ));

    // HF_HUB_CACHE wins over HF_HOME.
    let other = tempfile::tempdir().unwrap();
    fake_cache_repo(other.path(), "org/elsewhere", &lw, None);
    std::env::set_var("HF_HUB_CACHE", other.path());
    let res = load_hub("org/elsewhere", None);
    std::env::remove_var("HF_HUB_CACHE");
    assert_same(&lw, &res.unwrap());
}

/// The real cache keeps file contents in `blobs/` and symlinks them from the snapshot.
#[cfg(unix)]
#[test]
fn hub_loads_sharded_symlinked_cache() {
    let _g = ENV.lock().unwrap_or_else(|e| e.into_inner());
    let home = tempfile::tempdir().unwrap();
    offline_env(home.path());
    let lw = tiny_model();
    let hub = home.path().join("hub");
    let snapshot = fake_cache_repo(&hub, "org/sharded", &lw, Some(40_000));
    let blobs = hub.join("models--org--sharded").join("blobs");
    std::fs::create_dir_all(&blobs).unwrap();
    for (i, name) in file_names(&snapshot).iter().enumerate() {
        let blob = format!("blob{i:04}");
        std::fs::rename(snapshot.join(name), blobs.join(&blob)).unwrap();
        std::os::unix::fs::symlink(format!("../../blobs/{blob}"), snapshot.join(name)).unwrap();
    }
    assert!(
        std::fs::symlink_metadata(snapshot.join("model.safetensors.index.json"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_same(&lw, &load_hub("org/sharded", None).unwrap());

    // A missing shard with HF_HUB_OFFLINE: the clear offline error, not a half-loaded model.
    std::fs::remove_file(snapshot.join(first_shard(&snapshot))).unwrap();
    match load_hub("org/sharded", None) {
        Err(Error::Fetch(msg)) => {
            assert!(
                msg.contains("org/sharded") && msg.contains("missing model-00001-of-"),
                "{msg}"
            )
        }
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("loaded with a shard missing"),
    }
}

/// `--weights bf16` packs each matrix as it is read (never a whole f32 model in memory): the
/// same weights, bit for bit, and the same fingerprint as loading f32 and packing after, from
/// one file and from shards.
#[test]
fn bf16_packed_while_loading_equals_packed_after() {
    use softprompt_core::compute::weight::WeightFormat;
    use softprompt_core::model::FrozenModel;
    let tmp = tempfile::tempdir().unwrap();
    for shard in [None, Some(40_000)] {
        let dir = tmp.path().join(format!("{shard:?}"));
        save_hf_folder(&dir, &tiny_model(), shard).unwrap();
        let spec = dir.to_str().unwrap();
        let mut after = FrozenModel::load_with(spec, WeightFormat::F32).unwrap();
        let fingerprint = after.fingerprint.clone();
        after.llama.pack_bf16();
        let during = FrozenModel::load_with(spec, WeightFormat::Bf16).unwrap();
        assert_eq!(during.fingerprint, fingerprint);
        assert_eq!(during.weights_digest(), after.weights_digest());
        let mut types = Vec::new();
        during.llama.for_each_matrix(|_, w| types.push(w.dtype()));
        assert!(types.iter().all(|t| *t == "bf16"), "{types:?}");
        assert_eq!(during.llama.weight_bytes(), after.llama.weight_bytes());
    }
}
