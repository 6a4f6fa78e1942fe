//! Crash safety of training, with the real binary: a run checkpointing after every step
//! is SIGKILLed at many random moments (so also while a checkpoint, the `latest` pointer
//! or the log is being written, or old checkpoints are being deleted) and resumed each
//! time. After every kill the newest checkpoint must load and be bit-identical to the
//! uninterrupted run's checkpoint of the same step; in the end the resumed run's losses,
//! evaluations and final prompt must equal the uninterrupted run's, bit for bit.
//!
//! A tiny random model (an HF folder written by the test) keeps it fast: up to 100 kills in
//! about 10 s on 2 cores. (`train_cli.rs` kills a run of the real model once and also checks
//! eval and classify with the result.) `SOFTPROMPT_KILL_SEED` replays a given kill schedule,
//! `SOFTPROMPT_KILLS` changes the number of kills.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use softprompt_core::train::checkpoint::{load_checkpoint, load_latest, Checkpoint};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_softprompt"))
}

const STEPS: u64 = 100;

/// A tiny random Llama as an HF folder, with a word-level tokenizer over the demo task.
fn tiny_model(dir: &Path) -> PathBuf {
    use softprompt_core::data::{demo_records, DemoSplit};
    let mut words: Vec<String> = ["[UNK]", "Review", "Sentiment", ":", "negative", "positive"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    for split in [DemoSplit::Train, DemoSplit::Validation] {
        for r in demo_records(split) {
            let s = r.fields["sentence"].as_str().unwrap_or("").to_string();
            for w in s
                .split(|c: char| !c.is_alphanumeric())
                .filter(|w| !w.is_empty())
            {
                if !words.iter().any(|x| x == w) {
                    words.push(w.to_string());
                }
            }
        }
    }
    let vocab: serde_json::Map<String, serde_json::Value> = words
        .iter()
        .enumerate()
        .map(|(i, w)| (w.clone(), i.into()))
        .collect();
    let json = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [], "normalizer": null,
        "pre_tokenizer": { "type": "Whitespace" }, "post_processor": null, "decoder": null,
        "model": { "type": "WordLevel", "vocab": vocab, "unk_token": "[UNK]" }
    });
    let tokenizer: tokenizers::Tokenizer = json.to_string().parse().expect("tiny tokenizer");
    let config: softprompt_core::model::LlamaConfig = serde_json::from_value(serde_json::json!({
        "model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": words.len(),
        "rms_norm_eps": 1e-5, "max_position_embeddings": 256, "tie_word_embeddings": true
    }))
    .unwrap();
    let weights = softprompt_core::model::llama::random_weights(&config, 7);
    let lw = softprompt_core::model::LoadedWeights {
        config,
        weights,
        matrices: Default::default(),
        tokenizer,
        source: "tiny".into(),
        stored_dtype: "f32".into(),
        chat_template: None,
    };
    let p = dir.join("tiny-model");
    softprompt_core::model::load::hf::save_hf_folder(&p, &lw, None).unwrap();
    p
}

fn train(model: &Path, out: &Path, keep: &str) -> Command {
    let mut c = bin();
    c.args(["train", "--quiet", "--task", "demo", "--model"])
        .arg(model)
        .args(["--steps", &STEPS.to_string()])
        .args([
            "--virtual-tokens",
            "4",
            "--batch-size",
            "4",
            "--init",
            "random",
        ])
        .args([
            "--eval-every",
            "10",
            "--eval-limit",
            "8",
            "--checkpoint-every",
            "1",
        ])
        .args([
            "--schedule",
            "cosine",
            "--warmup",
            "3",
            "--keep-checkpoints",
            keep,
        ])
        .arg("--out")
        .arg(out)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    c
}

/// The step and eval lines of the log, without the time spent.
fn log_lines(out: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(out.join("train_log.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .map(|mut v| {
            v.as_object_mut().unwrap().remove("seconds"); // wall-clock training time
            v
        })
        .collect()
}

fn same_tensors(a: &Checkpoint, b: &Checkpoint) -> bool {
    a.step == b.step
        && a.tensors.len() == b.tensors.len()
        && a.tensors.iter().zip(&b.tensors).all(|(x, y)| {
            x.0 == y.0
                && x.1 == y.1
                && x.2.len() == y.2.len()
                && x.2
                    .iter()
                    .zip(&y.2)
                    .all(|(p, q)| p.to_bits() == q.to_bits())
        })
}

/// Names of `.tmp-*` entries (interrupted saves) in the checkpoint folder.
fn leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir).map_or(Vec::new(), |d| {
        d.flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".tmp-"))
            .collect()
    })
}

/// xorshift64*: reproducible kill delays without a dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

#[test]
fn sigkill_at_random_moments_then_resume_is_bit_exact() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path());

    // The uninterrupted run, keeping every checkpoint for comparison.
    let a = tmp.path().join("a");
    let t = Instant::now();
    let run = train(&model, &a, "1000")
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let full = t.elapsed();
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{err}");
    let reference: Vec<Checkpoint> = (1..=STEPS)
        .map(|s| load_checkpoint(&a.join(format!("checkpoints/ckpt-{s:08}"))).unwrap())
        .collect();

    let seed = std::env::var("SOFTPROMPT_KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    let kills: usize = std::env::var("SOFTPROMPT_KILLS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100);
    eprintln!("uninterrupted run: {full:?}; kill seed {seed} (SOFTPROMPT_KILL_SEED to replay), {kills} kills");
    let mut rng = Rng(seed);

    // The same run, killed and resumed again and again; keeping 2 checkpoints, so kills
    // also land while old ones are being deleted.
    let b = tmp.path().join("b");
    let ckpts = b.join("checkpoints");
    // Kill each (resumed) run after a random delay within a window that adapts so that
    // the run advances one or two steps per kill: most kills land mid-run, at random
    // points of the startup, of a step, or of the checkpoint, log and prune writes.
    let max_window = full.as_micros() as u64;
    let mut window = max_window / 4;
    let mut last_step = 0;
    let (mut mid_run, mut mid_save, mut steps_seen) = (0, 0, Vec::new());
    let mut seen_leftovers = Vec::new();
    for k in 0..kills {
        let mut cmd = train(&model, &b, "2");
        if k > 0 {
            cmd.arg("--resume");
        }
        let mut child = cmd.spawn().unwrap();
        std::thread::sleep(Duration::from_micros(rng.below(window)));
        let _ = child.kill(); // SIGKILL (a no-op if the run already finished)
        child.wait().unwrap();

        // Evidence of where the kill landed: new leftovers of an interrupted save.
        let now = leftovers(&ckpts);
        if now.iter().any(|n| !seen_leftovers.contains(n)) {
            mid_save += 1;
        }
        seen_leftovers = now;
        match load_latest(&ckpts) {
            Ok(None) => {
                window = (window + window / 3).min(max_window);
                steps_seen.push(0)
            }
            Ok(Some(c)) => {
                assert!((1..=STEPS).contains(&c.step), "kill {k}: step {}", c.step);
                assert!(
                    same_tensors(&c, &reference[c.step as usize - 1]),
                    "kill {k} (seed {seed}): checkpoint of step {} differs from the uninterrupted run's",
                    c.step
                );
                if c.step < STEPS {
                    mid_run += 1;
                }
                match c.step - last_step {
                    0 => window = (window + window / 3).min(max_window),
                    1 | 2 => {}
                    _ => window /= 2,
                }
                last_step = c.step;
                steps_seen.push(c.step);
                if c.step == STEPS {
                    break; // finished: further kills would only hit a finished run
                }
            }
            Err(e) => panic!("kill {k} (seed {seed}): the latest checkpoint does not load: {e}"),
        }
    }
    let kills = steps_seen.len();
    eprintln!(
        "{kills} kills: {mid_run} landed mid-run, {mid_save} interrupted a checkpoint save (left a .tmp- entry); \
         checkpoint steps after each kill: {steps_seen:?}"
    );
    assert!(
        mid_run >= 10,
        "too few kills landed mid-run ({mid_run}); the schedule is off"
    );

    // Finish and compare with the uninterrupted run.
    let mut cmd = train(&model, &b, "2");
    assert!(cmd.arg("--resume").status().unwrap().success());
    assert_eq!(
        log_lines(&a),
        log_lines(&b),
        "resumed run's log differs (seed {seed})"
    );
    // The final prompt (last/) and the best one (saved at evaluations, beside the log).
    for f in [
        "last/adapter_model.safetensors",
        "last/adapter_config.json",
        "adapter_model.safetensors",
    ] {
        let pa = std::fs::read(a.join(f)).unwrap();
        let pb = std::fs::read(b.join(f)).unwrap();
        assert_eq!(pa, pb, "{f} differs (seed {seed})");
    }
    let last = load_latest(&ckpts).unwrap().unwrap();
    assert!(same_tensors(&last, &reference[STEPS as usize - 1]));
}

/// Ctrl-C (SIGINT) stops a run after the step in progress with a checkpoint of that step, and
/// the process exits 130, as shells expect of an interrupted command; `--resume` then finishes
/// the run (exit 0) with the same log and prompt as the uninterrupted run.
#[test]
fn sigint_checkpoints_exits_130_and_resume_finishes() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path());
    let a = tmp.path().join("a");
    let t = Instant::now();
    let st = train(&model, &a, "2").status().unwrap();
    assert_eq!(st.code(), Some(0), "a finished run exits 0");
    let full = t.elapsed();

    let b = tmp.path().join("b");
    let child = train(&model, &b, "2")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let steps = |out: &Path| {
        std::fs::read_to_string(out.join("train_log.jsonl"))
            .map_or(0, |s| s.lines().filter(|l| l.contains("\"step\"")).count())
    };
    let t = Instant::now();
    while steps(&b) < 3 && t.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(1));
    }
    let st = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let res = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&res.stderr);
    assert_eq!(res.status.code(), Some(130), "exit after Ctrl-C: {err}");
    assert!(err.contains("interrupted, continue with --resume"), "{err}");
    assert!(!err.contains("error:"), "{err}");
    let ck = load_latest(&b.join("checkpoints"))
        .unwrap()
        .expect("a checkpoint");
    let done = log_lines(&b).iter().filter(|v| v["type"] == "step").count() as u64;
    eprintln!("uninterrupted run {full:?}; SIGINT after {done} of {STEPS} steps");
    assert!(
        (3..STEPS).contains(&done),
        "stopped after {done} steps: {err}"
    );
    assert_eq!(ck.step, done, "the checkpoint is the last finished step");

    let st = train(&model, &b, "2").arg("--resume").status().unwrap();
    assert_eq!(st.code(), Some(0));
    assert_eq!(log_lines(&a), log_lines(&b), "resumed run's log differs");
    for f in [
        "last/adapter_model.safetensors",
        "adapter_model.safetensors",
    ] {
        assert_eq!(
            std::fs::read(a.join(f)).unwrap(),
            std::fs::read(b.join(f)).unwrap(),
            "{f} differs"
        );
    }
}
