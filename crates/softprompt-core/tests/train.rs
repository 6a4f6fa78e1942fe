//! Training end to end: the loss falls, only the prompt changes, and an interrupted run
//! resumed from its checkpoint reproduces the uninterrupted run exactly.

mod common;

use std::sync::atomic::AtomicBool;

use common::{demo_config, step_losses, tiny_demo_model, StopAt};
use softprompt_core::model::input::PromptRef;
use softprompt_core::prompt::SoftPrompt;
use softprompt_core::train::{self, trainer, Quiet};

fn mean(xs: &[(u64, f64)]) -> f64 {
    xs.iter().map(|x| x.1).sum::<f64>() / xs.len() as f64
}

#[test]
fn tiny_model_loss_falls_and_only_the_prompt_changes() {
    let m = tiny_demo_model(1);
    let before = m.weights_digest();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let cfg = demo_config(60);
    let s = train::train(&m, &cfg, &out, false, &AtomicBool::new(false), &mut Quiet).unwrap();
    assert_eq!(s.steps_done, 60);
    assert_eq!(m.weights_digest(), before, "base weights changed");
    let losses = step_losses(&out);
    assert_eq!(losses.len(), 60);
    let (first, last) = (mean(&losses[..10]), mean(&losses[50..]));
    assert!(
        last < 0.9 * first,
        "loss did not fall: first 10 steps {first:.4}, last 10 {last:.4}"
    );
    // The saved adapter loads, carries the fingerprint, and differs from its init.
    let p = SoftPrompt::load_for(&m, &out, false).unwrap();
    assert_eq!(p.num_virtual_tokens(), 4);
    assert_eq!(
        p.meta.as_ref().unwrap().model_fingerprint.as_deref(),
        Some(m.fingerprint.as_str())
    );
    let init = train::init::init_prompt(&m, &cfg).unwrap();
    assert_ne!(p.embeddings.data, init.data);
    assert!(
        out.join("curve.png").is_file() && out.join("last/adapter_model.safetensors").is_file()
    );
}

#[test]
fn interrupted_then_resumed_run_equals_uninterrupted_run() {
    let m = tiny_demo_model(2);
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = demo_config(14);
    cfg.eval_every = 5;
    cfg.schedule = softprompt_core::train::optim::Schedule::Cosine;
    cfg.warmup_steps = 3;
    cfg.grad_accum = 2;
    cfg.batch_size = 16; // 1000 examples: several epochs' boundaries inside 14 x 2 batches
    cfg.train_limit = Some(200);
    let a = tmp.path().join("a");
    train::train(&m, &cfg, &a, false, &AtomicBool::new(false), &mut Quiet).unwrap();

    let b = tmp.path().join("b");
    static STOP: AtomicBool = AtomicBool::new(false);
    let s = train::train(
        &m,
        &cfg,
        &b,
        false,
        &STOP,
        &mut StopAt(6, &STOP, Vec::new()),
    )
    .unwrap();
    assert!(s.interrupted && s.steps_done == 6);
    let s = train::train(&m, &cfg, &b, true, &AtomicBool::new(false), &mut Quiet).unwrap();
    assert_eq!(s.steps_done, 14);

    assert_eq!(step_losses(&a), step_losses(&b), "resumed losses differ");
    let (pa, pb) = (
        SoftPrompt::load(&a.join("last")).unwrap(),
        SoftPrompt::load(&b.join("last")).unwrap(),
    );
    assert_eq!(
        pa.embeddings.data, pb.embeddings.data,
        "final prompts differ"
    );
}

#[test]
fn real_model_loss_falls_and_weights_stay_byte_identical() {
    let m = softprompt_core::model::FrozenModel::load("smollm2-135m").unwrap();
    let before = m.weights_digest();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let mut cfg = demo_config(8);
    cfg.num_virtual_tokens = 8;
    cfg.init = train::Init::Vocab { top: 5000 };
    cfg.lr = 0.03;
    cfg.eval_limit = Some(48);
    cfg.checkpoint_every = 0;
    // Validation loss of the initial prompt vs the trained one.
    let (val, _, _) = trainer::load_split(&m, &cfg.task, "builtin:demo/validation", &cfg).unwrap();
    let mut val = val;
    val.truncate(48);
    let init = train::init::init_prompt(&m, &cfg).unwrap();
    let l0 = train::evaluate(
        &m,
        Some(PromptRef::from_tensor(&init).unwrap()),
        &val,
        16,
        false,
    )
    .unwrap()
    .loss;
    train::train(&m, &cfg, &out, false, &AtomicBool::new(false), &mut Quiet).unwrap();
    let p = SoftPrompt::load(&out.join("last")).unwrap();
    // PEFT finds the base of an adapter trained on the alias on the hub.
    assert_eq!(
        p.config.base_model_name_or_path.as_deref(),
        Some("HuggingFaceTB/SmolLM2-135M-Instruct")
    );
    let l1 = train::evaluate(&m, Some(p.view().unwrap()), &val, 16, false)
        .unwrap()
        .loss;
    assert!(l1 < l0, "validation loss did not fall: {l0:.4} -> {l1:.4}");
    assert_eq!(m.weights_digest(), before, "base weights changed");
}

/// Evaluation computes the soft prompt's keys and values once per batch (`run_prefixed`);
/// its scores must equal the full packed forward's (the gradient path computes the prompt
/// rows inside every sequence), on the real model, for one-token and multi-token candidates
/// and for language modelling, including a sequence without text (the full path again).
#[test]
fn eval_with_the_prompt_prefix_computed_once_equals_the_full_forward() {
    use softprompt_core::infer::objective::{classify_batch, lm_batch, ClassExample, GenExample};
    let (m, _) = common::smollm();
    let d = m.dims.d;
    let prompt = softprompt_core::prompt::init::random_uniform(5, d, 0.5, 3).data;
    let ids = |n: u32, salt: u32| {
        (0..n)
            .map(|t| 300 + (t * 7919 + salt * 31) % 9000)
            .collect()
    };
    let batch = vec![
        ClassExample {
            ids: ids(9, 1),
            cands: vec![vec![4917], vec![3904]],
            label: Some(0),
        },
        ClassExample {
            ids: ids(4, 2),
            cands: vec![vec![11, 12], vec![13]],
            label: Some(1),
        },
        ClassExample {
            ids: ids(13, 3),
            cands: vec![vec![4917], vec![3904]],
            label: Some(1),
        },
    ];
    let fast = classify_batch(
        m,
        Some(PromptRef::new(&prompt, m.dims.d).unwrap()),
        &batch,
        false,
        false,
    )
    .unwrap();
    let full = classify_batch(
        m,
        Some(PromptRef::new(&prompt, m.dims.d).unwrap()),
        &batch,
        false,
        true,
    )
    .unwrap();
    assert!(full.grad.is_some());
    for (a, b) in fast
        .scores
        .iter()
        .flatten()
        .zip(full.scores.iter().flatten())
    {
        assert!(
            (a - b).abs() < 2e-4,
            "classify score {a} vs full forward {b}"
        );
    }
    assert!((fast.loss - full.loss).abs() < 2e-4);
    let gen = vec![
        GenExample {
            ids: ids(6, 4),
            target: ids(5, 5),
        },
        GenExample {
            ids: vec![],
            target: ids(3, 6),
        }, // read at the last prompt row
    ];
    let fast = lm_batch(
        m,
        Some(PromptRef::new(&prompt, m.dims.d).unwrap()),
        &gen,
        false,
    )
    .unwrap();
    let full = lm_batch(
        m,
        Some(PromptRef::new(&prompt, m.dims.d).unwrap()),
        &gen,
        true,
    )
    .unwrap();
    for (a, b) in fast
        .scores
        .iter()
        .flatten()
        .zip(full.scores.iter().flatten())
    {
        assert!((a - b).abs() < 2e-4, "lm score {a} vs full forward {b}");
    }
    let fast = lm_batch(
        m,
        Some(PromptRef::new(&prompt, m.dims.d).unwrap()),
        &gen[..1],
        false,
    )
    .unwrap();
    let full = lm_batch(
        m,
        Some(PromptRef::new(&prompt, m.dims.d).unwrap()),
        &gen[..1],
        true,
    )
    .unwrap();
    assert!((fast.scores[0][0] - full.scores[0][0]).abs() < 2e-4);
}
