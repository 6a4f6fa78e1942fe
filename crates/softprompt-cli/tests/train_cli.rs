//! The real binary on the real model: a training run killed with SIGKILL and resumed
//! reproduces the uninterrupted run; eval and classify use the trained prompt's task.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_softprompt"))
}

const TRAIN: &[&str] = &[
    "train",
    "--quiet",
    "--steps",
    "6",
    "--virtual-tokens",
    "6",
    "--batch-size",
    "4",
    "--train-limit",
    "64",
    "--eval-every",
    "3",
    "--eval-limit",
    "16",
    "--checkpoint-every",
    "1",
    "--schedule",
    "cosine",
    "--warmup",
    "2",
];

fn losses(out: &Path) -> Vec<(u64, f64)> {
    std::fs::read_to_string(out.join("train_log.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["type"] == "step")
        .map(|v| (v["step"].as_u64().unwrap(), v["loss"].as_f64().unwrap()))
        .collect()
}

fn latest_step(out: &Path) -> u64 {
    std::fs::read_to_string(out.join("checkpoints/latest"))
        .ok()
        .and_then(|s| s.trim().trim_start_matches("ckpt-").parse().ok())
        .unwrap_or(0)
}

#[test]
fn sigkilled_training_resumes_to_the_same_losses() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a");
    let st = bin().args(TRAIN).arg("--out").arg(&a).status().unwrap();
    assert!(st.success());

    let b = tmp.path().join("b");
    let mut child = bin()
        .args(TRAIN)
        .arg("--out")
        .arg(&b)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while latest_step(&b) < 2 && t.elapsed() < Duration::from_secs(300) {
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL, possibly in the middle of writing the next checkpoint
    child.wait().unwrap();
    let killed_at = latest_step(&b);
    assert!(
        (2..6).contains(&killed_at),
        "killed after checkpoint {killed_at}"
    );
    let st = bin()
        .args(TRAIN)
        .arg("--out")
        .arg(&b)
        .arg("--resume")
        .status()
        .unwrap();
    assert!(st.success());
    assert_eq!(
        losses(&a),
        losses(&b),
        "resumed run diverged (killed after step {killed_at})"
    );
    let pa = std::fs::read(a.join("last/adapter_model.safetensors")).unwrap();
    let pb = std::fs::read(b.join("last/adapter_model.safetensors")).unwrap();
    assert_eq!(pa, pb, "final prompts differ");

    // eval and classify pick the task (template, labels) from the prompt's metadata.
    let out = bin()
        .args(["eval", "--json", "--limit", "16", "--prompt"])
        .arg(&a)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["metric"], "accuracy");
    assert_eq!(v["n"], 16);
    let out = bin()
        .args([
            "classify",
            "--json",
            "--text",
            "a truly wonderful film",
            "--prompt",
        ])
        .arg(&a)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let p = v["probabilities"].as_object().unwrap();
    let total: f64 = p.values().map(|x| x.as_f64().unwrap()).sum();
    assert!((total - 1.0).abs() < 1e-6 && p.len() == 2);
}

#[test]
fn bad_training_data_names_file_and_line() {
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("bad.jsonl");
    std::fs::write(
        &f,
        "{\"sentence\": \"fine\", \"label\": 1}\n{\"sentence\": \"oops\", \"label\": 7}\n",
    )
    .unwrap();
    let out = bin()
        .args(["train", "--task", "sst2", "--steps", "1", "--train"])
        .arg(&f)
        .arg("--out")
        .arg(tmp.path().join("o"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && !err.contains("panicked"));
    assert!(
        err.contains("bad.jsonl") && err.contains("line 2") && err.contains("unknown label"),
        "{err}"
    );
}
