//! `softprompt distill` through the real binary on the real model: a short run writes a
//! prompt folder that `score` uses, distill.json/.md with the report, and a second run with
//! --resume reuses the teacher data instead of running the hard prompt again.

use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_softprompt"))
}

#[test]
fn distill_writes_a_usable_prompt_and_a_report_and_resumes_from_the_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let inputs = tmp.path().join("inputs.txt");
    std::fs::write(
        &inputs,
        "Why do cats purr?\nWhat is rain?\nWho built the pyramids?\nHow do birds fly?\nWhat is a volcano?\nWhy is the sea salty?\n",
    )
    .unwrap();
    let hard = tmp.path().join("hard.txt");
    std::fs::write(&hard, "Reply like a pirate, in one short sentence.\n").unwrap();
    let out = tmp.path().join("out");
    let run = |extra: &[&str]| {
        let o = bin()
            .args(["distill", "--quiet", "--hard-prompt"])
            .arg(format!("@{}", hard.display()))
            .arg("--inputs")
            .arg(&inputs)
            .args(["--template", "Q: {text}\\nA:", "--holdout", "2"])
            .args([
                "--virtual-tokens",
                "4",
                "--teacher-tokens",
                "3",
                "--top-k",
                "8",
            ])
            .args([
                "--steps",
                "3",
                "--batch-size",
                "2",
                "--checkpoint-every",
                "1",
            ])
            .arg("--out")
            .arg(&out)
            .args(extra)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        assert!(o.status.success(), "distill failed: {err}");
        (String::from_utf8_lossy(&o.stdout).to_string(), err)
    };
    let (stdout, stderr) = run(&[]);
    assert!(
        stdout.contains("greedy exact match with the teacher"),
        "{stdout}"
    );
    assert!(stderr.contains("teacher: 4 + 2 inputs"), "{stderr}");
    let rep: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("distill.json")).unwrap()).unwrap();
    assert_eq!(rep["virtual_tokens"], 4);
    assert_eq!(
        (rep["train_inputs"].as_u64(), rep["heldout_inputs"].as_u64()),
        (Some(4), Some(2))
    );
    for who in ["student", "no_prompt"] {
        let em = rep[who]["exact_match"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&em), "{who} exact match {em}");
        assert!(rep[who]["mean_kl"].as_f64().unwrap() >= 0.0);
    }
    assert!(rep["hard_prompt_tokens"].as_u64().unwrap() > 4);
    assert!(std::fs::read_to_string(out.join("distill.md"))
        .unwrap()
        .contains("| no prompt |"));

    // The folder is a normal prompt folder: score uses it.
    let o = bin()
        .args(["score", "--json", "--prompt"])
        .arg(&out)
        .args(["--text", "Q: What is snow?\nA:"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(!v["logprobs"].as_array().unwrap().is_empty());

    // --resume after the last step: the teacher data comes from teacher.json.
    let (_, stderr) = run(&["--resume"]);
    assert!(stderr.contains("teacher data from"), "{stderr}");
    assert!(!stderr.contains("teacher: 4 + 2 inputs"), "{stderr}");
}
