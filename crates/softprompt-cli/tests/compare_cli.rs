//! `softprompt compare` through the real binary on the default model and the built-in demo
//! task, with very few steps: the three files are written, the JSON has every method, prompt
//! tuning leaves the general-text perplexity exactly as it was while full fine-tuning moves
//! it, and `--resume` reads the finished stages back.

use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_softprompt"))
}

#[test]
fn compare_on_the_demo_task_writes_the_table_chart_and_json() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("cmp");
    let args = [
        "compare",
        "--task",
        "demo",
        "--steps",
        "2",
        "--batch-size",
        "4",
        "--shots",
        "1",
        "--eval-limit",
        "8",
        "--train-limit",
        "32",
        "--second-task",
        "none",
        "--ft-lr",
        "1e-4",
        "--quiet",
        "--json",
        "--out",
    ];
    let o = bin().args(args).arg(&out).output().unwrap();
    assert!(
        o.status.success(),
        "compare failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    for f in ["compare.md", "compare.png", "compare.json"] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let file: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("compare.json")).unwrap()).unwrap();
    assert_eq!(v["base"], file["base"]);
    let base_ppl = v["base"]["general_ppl"].as_f64().unwrap();
    let (hard, pt, ft) = (&v["hard"], &v["prompt_tuning"], &v["full_finetuning"]);
    assert_eq!(hard["zero_shot"].as_array().unwrap().len(), 2);
    assert_eq!(hard["few_shot"].as_array().unwrap().len(), 1);
    assert_eq!(pt["general_ppl_after"].as_f64().unwrap(), base_ppl);
    assert_eq!(pt["weights_digest_after"], v["base"]["weights_digest"]);
    assert_ne!(ft["general_ppl_after"].as_f64().unwrap(), base_ppl);
    assert_ne!(ft["weights_digest_after"], v["base"]["weights_digest"]);
    assert_eq!(pt["trainable_parameters"].as_u64().unwrap(), 20 * 576);
    assert!(ft["trainable_parameters"].as_u64().unwrap() > 100_000_000);
    assert!(ft["artifact_bytes"].as_u64().unwrap() > 400_000_000);
    assert!(pt["artifact_bytes"].as_u64().unwrap() < 100_000);
    assert!(out.join("full_finetune/model/model.safetensors").is_file());
    assert!(v["timing"]["prompt_tuning_ms"].as_f64().unwrap() > 0.0);
    // LoRA (default rank 8 on q/v): 30 layers x 8 x (576 + 576 + 576 + 192) parameters,
    // evaluated merged, the base weights given back before full fine-tuning.
    let lo = &v["lora"];
    assert_eq!(lo["trainable_parameters"].as_u64().unwrap(), 460_800);
    assert_ne!(lo["weights_digest_after"], v["base"]["weights_digest"]);
    assert!(out.join("lora/adapter/adapter_model.safetensors").is_file());
    assert_eq!(v["config"]["lora"]["rank"], 8);
    let md = std::fs::read_to_string(out.join("compare.md")).unwrap();
    assert!(md.contains("| trainable parameters |"), "{md}");
    assert!(md.contains("byte-identical"), "{md}");

    // Again without --resume: refused; with it: nothing is recomputed.
    let o = bin().args(args).arg(&out).output().unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--resume"));
    let t = std::time::Instant::now();
    let o = bin().args(args).arg(&out).arg("--resume").output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(t.elapsed().as_secs() < 60);
    let v2: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v2["full_finetuning"], v["full_finetuning"]);
    assert_eq!(v2["lora"], v["lora"]);

    // --methods: an unknown name is refused naming the flag.
    let o = bin()
        .args([
            "compare",
            "--task",
            "demo",
            "--methods",
            "prompt,bogus",
            "--out",
        ])
        .arg(tmp.path().join("x"))
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("bogus") && err.contains("--methods"), "{err}");
}
