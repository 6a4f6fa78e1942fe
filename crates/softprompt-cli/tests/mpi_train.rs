//! Data-parallel training under `mpirun -np 2` (feature `mpi`) on the real SmolLM2 model and
//! the built-in demo task: the same losses and prompt as one process with the same global
//! batch, within a tolerance (below), and a resumed two-rank run equals the uninterrupted one.
//!
//! Tolerance: the ranks' partial gradients are summed in another order than one process's
//! backward sums them (f32 accumulations inside the backward over half the batch each, then
//! an f64 all-reduce), so the gradients differ in the last bits (~1e-7 relative); Adam turns
//! that into update differences of the same relative size, which compound over steps. After
//! 6 steps the step losses agree to 1e-4 relative and the prompts to 1e-4 of their largest
//! element (measured on a 2-core EPYC: losses ~3e-6 relative, prompt max |diff| 1.2e-6 with
//! elements up to 0.51). The resumed run repeats the same reductions in the
//! same order, so it must match exactly.
//!
//! Run: `cargo test -p softprompt-cli --features mpi --test mpi_train` (skips with one line
//! when `mpirun` is missing). It prints steps/s of 1 and 2 ranks (training steps only).
#![cfg(feature = "mpi")]

use std::path::Path;
use std::process::Command;

use serde_json::Value;
use softprompt_core::prompt::SoftPrompt;

const STEPS: &str = "6";

fn train_args(out: &Path, extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = [
        "train",
        "--steps",
        STEPS,
        "--batch-size",
        "8",
        "--virtual-tokens",
        "8",
        "--checkpoint-every",
        "3",
        "--eval-every",
        "0",
        "--eval-limit",
        "16",
        "--quiet",
        "--out",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.push(out.to_str().unwrap().to_string());
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

/// Run `softprompt ARGS` on `ranks` ranks (1: without mpirun).
fn run(ranks: usize, args: &[String], env: &[(&str, &str)]) {
    let bin = env!("CARGO_BIN_EXE_softprompt");
    let mut c = if ranks == 1 {
        Command::new(bin)
    } else {
        let mut c = Command::new("mpirun");
        c.args(["--allow-run-as-root", "--oversubscribe", "-np"])
            .arg(ranks.to_string());
        for (k, _) in env {
            c.args(["-x", k]);
        }
        c.arg(bin);
        c
    };
    let o = c.args(args).envs(env.iter().copied()).output().unwrap();
    assert!(
        o.status.success(),
        "{ranks} ranks: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// (loss, seconds, reduce_seconds) of each step in `OUT/train_log.jsonl`.
fn steps(out: &Path) -> Vec<(f64, f64, f64)> {
    std::fs::read_to_string(out.join("train_log.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v["type"] == "step")
        .map(|v| {
            (
                v["loss"].as_f64().unwrap(),
                v["seconds"].as_f64().unwrap(),
                v["reduce_seconds"].as_f64().unwrap_or(0.0),
            )
        })
        .collect()
}

fn prompt(out: &Path) -> Vec<f32> {
    SoftPrompt::load(&out.join("last")).unwrap().embeddings.data
}

fn have_mpirun() -> bool {
    Command::new("mpirun")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn two_ranks_train_as_one_process_with_the_same_global_batch_and_resume() {
    if !have_mpirun() {
        println!("skipped: mpirun is not installed (apt-get install openmpi-bin libopenmpi-dev)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (one, two) = (dir.path().join("one"), dir.path().join("two"));
    run(1, &train_args(&one, &[]), &[]);
    run(2, &train_args(&two, &[]), &[]);
    // Rank 0 alone wrote the run's files.
    for f in [
        "adapter_model.safetensors",
        "last",
        "checkpoints",
        "curve.png",
    ] {
        assert!(two.join(f).exists(), "{f} missing");
    }
    let (s1, s2) = (steps(&one), steps(&two));
    assert_eq!(s1.len(), 6);
    assert_eq!(s2.len(), 6);
    for (i, (a, b)) in s1.iter().zip(&s2).enumerate() {
        let rel = (a.0 - b.0).abs() / a.0.abs().max(1e-12);
        assert!(
            rel < 1e-4,
            "step {}: loss {} vs {} (rel {rel:e})",
            i + 1,
            a.0,
            b.0
        );
    }
    let (p1, p2) = (prompt(&one), prompt(&two));
    let scale = p1.iter().fold(0f32, |m, x| m.max(x.abs()));
    let diff = p1
        .iter()
        .zip(&p2)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(
        diff <= 1e-4 * scale,
        "prompt max |diff| {diff:e} (largest element {scale})"
    );

    // Resume: the two-rank run cut back to its step-3 checkpoint, continued on two ranks.
    let res = dir.path().join("resumed");
    std::fs::create_dir(&res).unwrap();
    let cp = Command::new("cp")
        .arg("-r")
        .arg(two.join("checkpoints"))
        .arg(two.join("train_log.jsonl"))
        .arg(&res)
        .status()
        .unwrap();
    assert!(cp.success());
    std::fs::remove_dir_all(res.join("checkpoints/ckpt-00000006")).unwrap();
    std::fs::write(res.join("checkpoints/latest"), "ckpt-00000003").unwrap();
    run(2, &train_args(&res, &["--resume"]), &[]);
    let sr = steps(&res);
    assert_eq!(sr.len(), 6);
    for (i, (a, b)) in s2.iter().zip(&sr).enumerate() {
        assert_eq!(a.0, b.0, "step {}: resumed loss differs", i + 1);
    }
    assert_eq!(prompt(&two), prompt(&res), "the resumed prompt differs");

    let per_s = |s: &[(f64, f64, f64)]| s.len() as f64 / s.iter().map(|x| x.1).sum::<f64>();
    let reduce_ms: f64 = s2.iter().map(|s| s.2).sum::<f64>() / s2.len() as f64 * 1e3;
    println!(
        "mpi_train: 1 rank {:.3} steps/s, 2 ranks {:.3} steps/s, all-reduce {reduce_ms:.2} ms/step, prompt max |diff| {diff:.2e}",
        per_s(&s1),
        per_s(&s2)
    );
}
