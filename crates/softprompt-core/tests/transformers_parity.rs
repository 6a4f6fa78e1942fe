//! Tiny random models of every architecture, saved by transformers 5.24 (config.json with the
//! RoPE settings in `rope_parameters`), scored by softprompt and compared with the log-probs
//! transformers computed (`scripts/make_arch_fixtures.py`, fixtures in `tests/fixtures/arch/`).
//! 600 positions with original_max_position_embeddings 64, so the llama3 / linear / yarn
//! scalings change the result by nats when they are not applied.

use std::path::{Path, PathBuf};

use softprompt_core::infer;
use softprompt_core::model::config::LayerKind;
use softprompt_core::model::FrozenModel;
use softprompt_core::Error;

/// The bound of the tests; the measured max |Δ| per model is printed.
const BOUND: f64 = 1e-4;

fn arch_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/arch")
        .join(name)
}

fn expected(dir: &Path) -> (Vec<u32>, Vec<f64>) {
    let text = std::fs::read_to_string(dir.join("expected.json")).expect("expected.json");
    let v: serde_json::Value = serde_json::from_str(&text).expect("expected.json is JSON");
    let ids = v["ids"]
        .as_array()
        .expect("ids")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect();
    let lp = v["logprobs"]
        .as_array()
        .expect("logprobs")
        .iter()
        .map(|x| x.as_f64().expect("log-prob"))
        .collect();
    (ids, lp)
}

/// Max |Δ log-prob| between softprompt on folder `dir` and transformers' numbers for `name`.
fn max_diff(name: &str, dir: &Path) -> f64 {
    let (ids, want) = expected(&arch_dir(name));
    let m = FrozenModel::load(dir.to_str().expect("utf-8 path"))
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let got = infer::score(&m.llama, None, &ids).expect("score");
    assert_eq!(
        got.len(),
        want.len(),
        "{name}: one log-prob per predicted token"
    );
    got.iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max)
}

fn check(name: &str) {
    let d = max_diff(name, &arch_dir(name));
    eprintln!("{name}: max |Δ log-prob| vs transformers 5.24 over 599 tokens: {d:.2e}");
    assert!(d < BOUND, "{name}: max |Δ log-prob| {d:.3e} >= {BOUND:e}");
}

#[test]
fn llama_default_rope() {
    check("llama");
}

#[test]
fn llama3_scaling() {
    check("llama3");
}

#[test]
fn linear_scaling() {
    check("linear");
}

#[test]
fn yarn_scaling() {
    check("yarn");
}

#[test]
fn yarn_with_mscale_betas_and_no_truncation() {
    check("yarn_mscale");
}

#[test]
fn qwen2_bias() {
    check("qwen2");
}

#[test]
fn qwen2_sliding_window_layers() {
    check("qwen2_swa");
}

#[test]
fn qwen3_qk_norm() {
    check("qwen3");
}

#[test]
fn mistral_sliding_window() {
    check("mistral");
}

#[test]
fn gemma3_local_global_with_global_linear_scaling() {
    check("gemma3");
}

/// Copy a fixture folder, letting `edit` rewrite its config.json.
fn edited(
    name: &str,
    edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>),
) -> tempfile::TempDir {
    let src = arch_dir(name);
    let tmp = tempfile::tempdir().expect("temp dir");
    for f in ["model.safetensors", "tokenizer.json"] {
        std::fs::copy(src.join(f), tmp.path().join(f)).expect("copy");
    }
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).expect("config"))
            .expect("JSON");
    edit(cfg.as_object_mut().expect("object"));
    std::fs::write(tmp.path().join("config.json"), cfg.to_string()).expect("write");
    tmp
}

/// The same models written the transformers 4 way (`rope_theta` and `rope_scaling` at the
/// top, Gemma's `rope_local_base_freq`, Qwen2's window layers from `max_window_layers`) give
/// the same numbers.
#[test]
fn old_style_configs_match_too() {
    for name in ["llama3", "linear", "yarn", "gemma3", "qwen2_swa"] {
        let dir = edited(name, |c| {
            let rp = c.remove("rope_parameters").expect("rope_parameters");
            if name == "gemma3" {
                let full = &rp["full_attention"];
                c.insert("rope_theta".into(), full["rope_theta"].clone());
                c.insert(
                    "rope_local_base_freq".into(),
                    rp["sliding_attention"]["rope_theta"].clone(),
                );
                let mut s = full.as_object().expect("object").clone();
                s.remove("rope_theta");
                c.insert("rope_scaling".into(), s.into());
            } else {
                let mut s = rp.as_object().expect("object").clone();
                c.insert("rope_theta".into(), s.remove("rope_theta").expect("theta"));
                if s["rope_type"] != "default" {
                    // The oldest spelling: "type".
                    let ty = s.remove("rope_type").expect("type");
                    s.insert("type".into(), ty);
                    c.insert("rope_scaling".into(), s.into());
                }
            }
            if name == "qwen2_swa" {
                c.remove("layer_types");
            }
        });
        let d = max_diff(name, dir.path());
        eprintln!("{name}, transformers 4 style config: max |Δ log-prob| {d:.2e}");
        assert!(d < BOUND, "{name} (old style): {d:.3e}");
    }
}

/// Without its scaling the llama3 model is far off: the test above is not vacuous.
#[test]
fn scaling_matters_at_these_lengths() {
    for name in ["llama3", "linear", "yarn"] {
        let dir = edited(name, |c| {
            let theta = c["rope_parameters"]["rope_theta"].clone();
            c.insert(
                "rope_parameters".into(),
                serde_json::json!({"rope_type": "default", "rope_theta": theta}),
            );
        });
        let d = max_diff(name, dir.path());
        eprintln!("{name} loaded without its scaling: max |Δ log-prob| {d:.2e}");
        assert!(d > 0.1, "{name}: scaling changed nothing ({d})");
    }
}

fn load_err(dir: &Path) -> Error {
    match FrozenModel::load(dir.to_str().expect("utf-8 path")) {
        Ok(_) => panic!("{} loaded", dir.display()),
        Err(e) => e,
    }
}

/// A rope_type softprompt does not implement is refused, naming it and the file.
#[test]
fn unimplemented_rope_type_is_refused() {
    let dir = arch_dir("dynamic");
    let e = load_err(&dir);
    let msg = e.to_string();
    assert!(matches!(e, Error::Unsupported { .. }), "{e:?}");
    assert!(
        msg.contains("rope_parameters.rope_type = \"dynamic\"") && msg.contains("config.json"),
        "{msg}"
    );
    // The same through the old key, and an unknown one.
    for (key, ty) in [("rope_scaling", "longrope"), ("rope_parameters", "made_up")] {
        let dir = edited("llama", |c| {
            c.insert(
                key.into(),
                serde_json::json!({"rope_type": ty, "factor": 2.0}),
            );
        });
        let msg = load_err(dir.path()).to_string();
        assert!(
            msg.contains(&format!("{key}.rope_type = \"{ty}\"")),
            "{msg}"
        );
    }
}

/// Settings that change what transformers computes and that softprompt lacks are refused,
/// each naming the field and value.
#[test]
fn unimplemented_settings_are_refused() {
    let cases: [(&str, serde_json::Value, &str); 6] = [
        (
            "llama",
            serde_json::json!({"mlp_bias": true}),
            "mlp_bias = true",
        ),
        (
            "llama",
            serde_json::json!({"attention_bias": true}),
            "attention_bias = true",
        ),
        (
            "llama",
            serde_json::json!({"rope_parameters": {"rope_type": "default", "partial_rotary_factor": 0.5}}),
            "partial_rotary_factor = 0.5",
        ),
        (
            "gemma3",
            serde_json::json!({"use_bidirectional_attention": true}),
            "use_bidirectional_attention = true",
        ),
        (
            "gemma3",
            serde_json::json!({"layer_types": ["sliding_attention", "chunked_attention"]}),
            "\"chunked_attention\"",
        ),
        (
            "llama3",
            serde_json::json!({"rope_parameters": {"rope_type": "llama3", "factor": 8.0}}),
            "needs low_freq_factor",
        ),
    ];
    for (name, patch, needle) in cases {
        let dir = edited(name, |c| {
            for (k, v) in patch.as_object().expect("object") {
                c.insert(k.clone(), v.clone());
            }
        });
        let msg = load_err(dir.path()).to_string();
        assert!(msg.contains(needle), "{name} + {patch}: {msg}");
    }
}

/// What `info` prints: the bases and scaling in use, per layer type for Gemma 3.
#[test]
fn resolved_rope_is_described() {
    let m = FrozenModel::load(arch_dir("gemma3").to_str().expect("utf-8")).expect("gemma3");
    let d = m.llama.cfg.describe_rope();
    assert_eq!(d["full_attention"]["rope_theta"], 1e6);
    assert_eq!(d["full_attention"]["rope_type"], "linear");
    assert_eq!(d["full_attention"]["factor"], 8.0);
    assert_eq!(d["sliding_attention"]["rope_theta"], 10000.0);
    assert_eq!(d["sliding_attention"]["rope_type"], "default");
    let m = FrozenModel::load(arch_dir("yarn").to_str().expect("utf-8")).expect("yarn");
    let y = m.llama.cfg.rope(LayerKind::Full).expect("yarn rope");
    let d = m.llama.cfg.describe_rope();
    assert_eq!(d["rope_type"], "yarn");
    // transformers: attention_factor = 0.1 ln(factor) + 1 when absent.
    let af = d["attention_factor"].as_f64().expect("attention_factor");
    assert!((af - (0.1 * 16f64.ln() + 1.0)).abs() < 1e-12, "{af}");
    assert_eq!(y.rope_theta, 10000.0);
}

/// `export` writes config.json as transformers 5.24 does: every key transformers wrote for
/// the fixture comes back with the same value and JSON type (ints stay ints, e.g. Gemma's
/// query_pre_attn_scalar; floats stay floats), RoPE in `rope_parameters`, and the exported
/// folder scores like the original. (scripts/check_exports.py loads these exports in
/// transformers itself.)
#[test]
fn exports_write_configs_as_transformers_does() {
    use softprompt_core::model::load::hf::{load_hf_folder, save_hf_folder};
    for name in [
        "llama",
        "llama3",
        "linear",
        "yarn",
        "yarn_mscale",
        "qwen2",
        "qwen2_swa",
        "qwen3",
        "mistral",
        "gemma3",
    ] {
        let src = arch_dir(name);
        let tmp = tempfile::tempdir().expect("temp dir");
        let out = tmp.path().join(name);
        save_hf_folder(&out, &load_hf_folder(&src).expect("load"), None).expect("export");
        let read = |d: &Path| -> serde_json::Value {
            serde_json::from_str(&std::fs::read_to_string(d.join("config.json")).expect("config"))
                .expect("JSON")
        };
        let (orig, ours) = (read(&src), read(&out));
        for (k, v) in orig.as_object().expect("object") {
            let skip = ["transformers_version", "_sliding_window_pattern"];
            if skip.contains(&k.as_str()) {
                continue;
            }
            let w = &ours[k];
            let same_type = (v.is_u64() == w.is_u64()) && (v.is_f64() == w.is_f64());
            if k == "rope_parameters" && name.starts_with("yarn") {
                // Ours spells out the defaults transformers fills in (betas, attention_factor,
                // resolved from mscale / mscale_all_dim, which it then leaves out).
                for (rk, rv) in v.as_object().expect("object") {
                    if rk.starts_with("mscale") {
                        continue;
                    }
                    assert_eq!(&w[rk], rv, "{name}: rope_parameters.{rk}");
                }
                continue;
            }
            assert!(
                w == v && same_type,
                "{name}: {k} = {w} in the export, {v} from transformers"
            );
        }
        let d = max_diff(name, &out);
        assert!(d < BOUND, "{name} export: {d:.3e}");
    }
}

/// A key transformers ignores (one the rope_type does not use; training-only dropout) loads with
/// the same numbers and is listed for a warning, not refused.
#[test]
fn settings_transformers_ignores_are_listed_not_refused() {
    let dir = edited("linear", |c| {
        c["rope_parameters"]["low_freq_factor"] = serde_json::json!(2.0);
        c.insert("attention_dropout".into(), serde_json::json!(0.1));
    });
    let d = max_diff("linear", dir.path());
    assert!(d < BOUND, "{d}");
    let cfg = softprompt_core::model::load::hf::read_config(dir.path()).expect("config");
    let mut ignored = Vec::new();
    cfg.check_noting(&mut ignored).expect("accepted");
    assert_eq!(ignored.len(), 2, "{ignored:?}");
    assert!(
        ignored[0].contains("rope_parameters.low_freq_factor is not used by rope_type \"linear\"")
    );
    assert!(ignored[1].contains("attention_dropout = 0.1"));
}
