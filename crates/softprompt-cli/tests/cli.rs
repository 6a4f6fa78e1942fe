//! Run the real `softprompt` binary: fixture parity through the CLI and one clear error line
//! (never a panic) for each kind of bad input.

mod common;

use std::path::PathBuf;
use std::process::{Command, Output};

use common::fixture_dir;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_softprompt"))
}

fn fixture_prompt(model: &str) -> PathBuf {
    fixture_dir(model).join("prompt")
}

/// Exit status non-zero, exactly one `error:` line on stderr mentioning every `needles`, no panic.
fn assert_clean_error(out: &Output, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "expected failure, got success; stderr: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    let errs: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errs.len(), 1, "want one error line, got: {stderr}");
    for n in needles {
        assert!(
            errs[0].contains(n),
            "error line {:?} does not mention {n:?}",
            errs[0]
        );
    }
}

#[test]
fn score_json_matches_pytorch_fixture() {
    let meta: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture_dir("smollm2-135m").join("tokens.json")).unwrap(),
    )
    .unwrap();
    let text = meta["texts"][1]["text"].as_str().unwrap();
    let want_ids: Vec<u64> = meta["texts"][1]["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    let out = bin()
        .args(["score", "--json", "--text", text, "--prompt"])
        .arg(fixture_prompt("smollm2-135m"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ids: Vec<u64> = v["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect();
    assert_eq!(ids, want_ids);
    let lp = v["logprobs"].as_array().unwrap();
    assert_eq!(lp.len(), ids.len(), "with a prompt every token is scored");
    // Without a prompt the first token has no predictor.
    let out = bin()
        .args(["score", "--json", "--text", text])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["logprobs"].as_array().unwrap().len(), ids.len() - 1);
}

#[test]
fn generate_greedy_is_deterministic_and_cache_agrees() {
    let run = |extra: &[&str]| {
        let out = bin()
            .args([
                "generate",
                "--json",
                "--max-new-tokens",
                "12",
                "--ignore-eos",
                "--text",
                "The capital of France is",
                "--prompt",
            ])
            .arg(fixture_prompt("smollm2-135m"))
            .args(extra)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["ids"].clone()
    };
    let a = run(&[]);
    assert_eq!(a.as_array().unwrap().len(), 12);
    assert_eq!(a, run(&["--no-cache"]));
}

#[test]
fn sampling_is_seeded() {
    let run = |seed: &str| {
        let out = bin()
            .args([
                "generate",
                "--json",
                "--max-new-tokens",
                "8",
                "--ignore-eos",
                "--temperature",
                "1.0",
                "--top-k",
                "50",
                "--top-p",
                "0.95",
            ])
            .args(["--seed", seed, "--text", "Once upon a time"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["ids"].clone()
    };
    assert_eq!(run("1"), run("1"));
    assert_ne!(run("1"), run("2"));
}

#[test]
fn missing_model_file_is_one_clear_error() {
    let out = bin()
        .args([
            "score",
            "--model",
            "/nonexistent/model.gguf",
            "--text",
            "hi",
        ])
        .output()
        .unwrap();
    assert_clean_error(&out, &["/nonexistent/model.gguf"]);
}

#[test]
fn gguf_of_unsupported_architecture_is_refused() {
    // A valid GGUF v3 header with no tensors and general.architecture = "bert".
    let mut b = Vec::new();
    b.extend_from_slice(b"GGUF");
    b.extend_from_slice(&3u32.to_le_bytes());
    b.extend_from_slice(&0u64.to_le_bytes()); // tensors
    b.extend_from_slice(&1u64.to_le_bytes()); // kv pairs
    let key = b"general.architecture";
    b.extend_from_slice(&(key.len() as u64).to_le_bytes());
    b.extend_from_slice(key);
    b.extend_from_slice(&8u32.to_le_bytes()); // string
    b.extend_from_slice(&4u64.to_le_bytes());
    b.extend_from_slice(b"bert");
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bert.gguf");
    std::fs::write(&p, b).unwrap();
    let out = bin()
        .args(["score", "--text", "hi", "--model"])
        .arg(&p)
        .output()
        .unwrap();
    assert_clean_error(&out, &["bert.gguf", "bert"]);
}

#[test]
fn prompt_of_another_hidden_size_is_refused() {
    // Gemma 3's fixture prompt is [20, 640]; SmolLM2's hidden size is 576.
    let out = bin()
        .args(["score", "--text", "hi", "--prompt"])
        .arg(fixture_prompt("gemma3-270m"))
        .output()
        .unwrap();
    assert_clean_error(&out, &["640", "576"]);
}

#[test]
fn truncated_prompt_safetensors_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let src = fixture_prompt("smollm2-135m");
    std::fs::copy(
        src.join("adapter_config.json"),
        dir.path().join("adapter_config.json"),
    )
    .unwrap();
    let bytes = std::fs::read(src.join("adapter_model.safetensors")).unwrap();
    std::fs::write(
        dir.path().join("adapter_model.safetensors"),
        &bytes[..bytes.len() / 2],
    )
    .unwrap();
    let out = bin()
        .args(["score", "--text", "hi", "--prompt"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_clean_error(&out, &["adapter_model.safetensors"]);
}

#[test]
fn info_reports_model_and_prompt() {
    let out = bin()
        .args(["info", "--json", "--model", "smollm2-135m", "--prompt"])
        .arg(fixture_prompt("smollm2-135m"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["model"]["architecture"], "llama");
    assert_eq!(v["model"]["hidden_size"], 576);
    assert_eq!(v["model"]["layers"], 30);
    assert_eq!(v["model"]["vocab_size"], 49152);
    assert!(v["model"]["fingerprint"]
        .as_str()
        .unwrap()
        .starts_with("sha256:"));
    assert_eq!(v["prompt"]["num_virtual_tokens"], 20);
    assert_eq!(v["prompt"]["compatible_with_model"], true);
}

/// `--weights` is checked before anything is loaded: an unknown format and `quantized` on a
/// non-GGUF model are refused with one clear line. (`bf16` for the server: serve_cli.rs.)
#[test]
fn weight_formats_are_refused_where_they_do_not_apply() {
    let out = bin()
        .args(["score", "--weights", "int3", "--text", "hi"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("expected f32, quantized or bf16"));

    let dir = tempfile::tempdir().unwrap();
    let out = bin()
        .args(["score", "--weights", "quantized", "--text", "hi", "--model"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a GGUF model"), "{err}");
    // The library names the setting; the CLI names its flag.
    assert!(err.contains("(see --weights)"), "{err}");
}

/// A training setting that cannot work is one error line naming the setting (the library's
/// words) and the flag that sets it (the CLI's), before any training starts.
#[test]
fn bad_training_settings_name_their_flag() {
    let tmp = tempfile::tempdir().unwrap();
    for (args, needle, flag) in [
        (&["--steps", "0"][..], "steps must be at least 1", "--steps"),
        (&["--lr", "0"][..], "lr must be positive", "--lr"),
        (
            &["--virtual-tokens", "0"][..],
            "num_virtual_tokens must be in",
            "--virtual-tokens",
        ),
    ] {
        let out = bin()
            .args(["train", "--quiet", "--task", "demo", "--out"])
            .arg(tmp.path().join("run"))
            .args(args)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(needle) && err.contains(&format!("(see {flag})")),
            "{err}"
        );
    }
}

/// Run the binary; its stdout, or a failure with its stderr.
fn run(args: &[&str]) -> String {
    let out = bin().args(args).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{args:?}: {err}");
    String::from_utf8(out.stdout).unwrap()
}

/// `classify --json`'s class probabilities for `text` under `prompts` (an ensemble when
/// several).
fn probs(text: &str, prompts: &[&str]) -> Vec<f64> {
    let mut args = vec!["classify", "--json", "--text", text];
    for p in prompts {
        args.extend(["--prompt", p]);
    }
    let v: serde_json::Value = serde_json::from_str(&run(&args)).unwrap();
    v["probabilities"]
        .as_object()
        .unwrap()
        .values()
        .map(|p| p.as_f64().unwrap())
        .collect()
}

/// `--prompt A --prompt B` is an ensemble: classify's class probabilities are the mean of each
/// prompt's own, eval of a prompt twice equals eval of it once, and prompts of different tasks
/// are refused by name.
#[test]
fn prompt_ensembles_average_class_probabilities() {
    let tmp = tempfile::tempdir().unwrap();
    let ens = tmp.path().join("ens");
    let e = ens.to_str().unwrap();
    run(&[
        "init",
        "--task",
        "demo",
        "--virtual-tokens",
        "4",
        "--count",
        "2",
        "--out",
        e,
    ]);
    let (a, b) = (format!("{e}/p000"), format!("{e}/p001"));
    let text = "a gorgeous, witty, seductive movie";
    let (pa, pb, pe) = (
        probs(text, &[&a]),
        probs(text, &[&b]),
        probs(text, &[&a, &b]),
    );
    assert!(
        pa.iter().zip(&pb).any(|(x, y)| (x - y).abs() > 1e-4),
        "two seeds gave the same probabilities {pa:?}: the test cannot tell them apart"
    );
    for ((x, y), e) in pa.iter().zip(&pb).zip(&pe) {
        assert!(
            (e - (x + y) / 2.0).abs() < 1e-9,
            "{pe:?} is not the mean of {pa:?} and {pb:?}"
        );
    }

    let eval = |prompts: &[&str]| -> serde_json::Value {
        let mut args = vec!["eval", "--json", "--limit", "8"];
        for p in prompts {
            args.extend(["--prompt", p]);
        }
        serde_json::from_str(&run(&args)).unwrap()
    };
    let (once, twice) = (eval(&[&a]), eval(&[&a, &a]));
    assert_eq!(once["value"], twice["value"]);
    let (l1, l2) = (
        once["loss"].as_f64().unwrap(),
        twice["loss"].as_f64().unwrap(),
    );
    assert!((l1 - l2).abs() < 1e-9, "loss {l1} vs {l2}");
    assert_eq!(twice["prompt"].as_array().map(Vec::len), Some(2));

    let other = tmp.path().join("other");
    let o = other.to_str().unwrap();
    run(&[
        "init",
        "--template",
        "Q: {text}\nA:",
        "--labels",
        "0=no,1=yes",
        "--virtual-tokens",
        "4",
        "--out",
        o,
    ]);
    let out = bin()
        .args(["classify", "--text", text, "--prompt", &a, "--prompt", o])
        .output()
        .unwrap();
    assert_clean_error(&out, &["other", "share one task"]);
}

/// A deep prompt (prefix tuning) through the binary: trained on the demo task, saved as a
/// PEFT PREFIX_TUNING folder, then used by info, eval, classify (alone and in an ensemble
/// with an input prompt), score, generate and inspect (through its layer-0 values); the
/// residual reparameterization refuses it with a reason.
#[test]
fn deep_prompt_trains_and_is_used_everywhere() {
    let tmp = tempfile::tempdir().unwrap();
    let deep = tmp.path().join("deep");
    let d = deep.to_str().unwrap();
    run(&[
        "train",
        "--deep",
        "--steps",
        "3",
        "--batch-size",
        "4",
        "--eval-every",
        "0",
        "--eval-limit",
        "8",
        "--virtual-tokens",
        "5",
        "--init",
        "labels",
        "--lr",
        "0.01",
        "--quiet",
        "--out",
        d,
    ]);
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(deep.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(cfg["peft_type"], "PREFIX_TUNING");
    assert_eq!(
        (cfg["token_dim"].as_u64(), cfg["num_layers"].as_u64()),
        (Some(192), Some(30))
    );
    let info: serde_json::Value = serde_json::from_str(&run(&[
        "info",
        "--json",
        "--model",
        "smollm2-135m",
        "--prompt",
        d,
    ]))
    .unwrap();
    assert_eq!(info["prompt"]["compatible_with_model"], true);
    assert_eq!(info["prompt"]["values_per_virtual_token"], 30 * 2 * 192);

    let ev: serde_json::Value =
        serde_json::from_str(&run(&["eval", "--json", "--limit", "8", "--prompt", d])).unwrap();
    assert_eq!(ev["n"], 8);
    let text = "a gorgeous, witty, seductive movie";
    let input = tmp.path().join("input");
    let i = input.to_str().unwrap();
    run(&[
        "init",
        "--task",
        "demo",
        "--virtual-tokens",
        "4",
        "--out",
        i,
    ]);
    let (pd, pi, pe) = (probs(text, &[d]), probs(text, &[i]), probs(text, &[d, i]));
    for ((x, y), e) in pd.iter().zip(&pi).zip(&pe) {
        assert!((e - (x + y) / 2.0).abs() < 1e-9, "{pe:?} vs {pd:?} {pi:?}");
    }
    // Score: a prefix adds no row, so the first token has no log-prob.
    let s: serde_json::Value =
        serde_json::from_str(&run(&["score", "--json", "--text", text, "--prompt", d])).unwrap();
    assert_eq!(
        s["logprobs"].as_array().unwrap().len() + 1,
        s["ids"].as_array().unwrap().len()
    );
    let g1 = run(&[
        "generate",
        "--text",
        text,
        "--max-new-tokens",
        "6",
        "--prompt",
        d,
    ]);
    let g2 = run(&[
        "generate",
        "--text",
        text,
        "--max-new-tokens",
        "6",
        "--prompt",
        d,
        "--no-cache",
    ]);
    assert_eq!(g1, g2);

    // Inspect reads a deep prompt through its layer-0 values: one made from a hard prompt's
    // tokens projects back to exactly those tokens.
    let hard = tmp.path().join("hard");
    let h = hard.to_str().unwrap();
    run(&[
        "init",
        "--deep",
        "--init",
        "text: Review sentiment",
        "--virtual-tokens",
        "2",
        "--out",
        h,
    ]);
    let rep: serde_json::Value =
        serde_json::from_str(&run(&["inspect", "--json", "--no-eval", "--prompt", h])).unwrap();
    assert_eq!(rep["space"], "layer-0 values (deep prompt)");
    assert_eq!(rep["hard_prompt"]["text"], " Review sentiment");
    for c in rep["hard_prompt"]["cosines"].as_array().unwrap() {
        assert!(c.as_f64().unwrap() > 0.9999, "{c}");
    }
    let rep: serde_json::Value =
        serde_json::from_str(&run(&["inspect", "--json", "--no-eval", "--prompt", d])).unwrap();
    assert_eq!(rep["num_virtual_tokens"], 5);
    // Trained from the label words: the drift from the recomputed init is reported.
    assert!(
        rep["init"]["mean_drift_cosine"].as_f64().unwrap() > 0.5,
        "{}",
        rep["init"]
    );
    let out = bin()
        .args([
            "train",
            "--deep",
            "--reparam",
            "residual",
            "--steps",
            "1",
            "--out",
        ])
        .arg(tmp.path().join("bad"))
        .output()
        .unwrap();
    assert_clean_error(&out, &["reparam", "deep"]);
}
