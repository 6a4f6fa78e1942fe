//! Residual reparameterization (`reparam: residual`): the gradient of the whole loss (model +
//! MLP) against central finite differences, the saved prompt being the P' the objective saw,
//! and exact resume.

mod common;

use std::sync::atomic::AtomicBool;

use common::{demo_config, step_losses, tiny_demo_model, tiny_llama, StopAt};
use softprompt_core::model::input::{Example, PromptRef};
use softprompt_core::prompt::SoftPrompt;
use softprompt_core::train::optim::OptimizerKind;
use softprompt_core::train::reparam::{Reparam, Residual};
use softprompt_core::train::{self, checkpoint, trainer, Quiet};

fn batch() -> Vec<Example> {
    let a: Vec<u32> = vec![3, 17, 42, 5, 60, 9, 11];
    let b: Vec<u32> = vec![8, 1, 30];
    let w = 1.0 / (a.len() + b.len()) as f32;
    vec![
        Example {
            targets: (0..a.len()).map(|t| (t, w)).collect(),
            ids: a,
        },
        Example {
            targets: (0..b.len()).map(|t| (t, w)).collect(),
            ids: b,
        },
    ]
}

#[test]
fn residual_gradient_matches_finite_differences() {
    let m = tiny_llama(11);
    let (p, d, mb) = (3, m.dims.d, 6);
    let init = softprompt_core::prompt::init::random_uniform(p, d, 0.5, 5);
    let mut r = Residual::new(&init, mb, OptimizerKind::adamw_default(), 1).unwrap();
    // The LayerNorm's gain and bias start at 0 (P' = P, no gradient into the MLP weights):
    // give them values so every path carries gradient.
    let n = r.n_params();
    for (k, v) in r.mlp_mut()[n - 2 * d..].iter_mut().enumerate() {
        *v = 0.4 * ((k as f32) * 0.7).sin();
    }
    let ex = batch();
    let loss_at = |r: &mut Residual| {
        let pp = r.forward();
        m.prompt_loss(PromptRef::from_tensor(&pp).unwrap(), &ex)
            .unwrap()
    };
    let pp = r.forward();
    let (loss, dpp) = m
        .prompt_loss_and_grad(PromptRef::from_tensor(&pp).unwrap(), &ex)
        .unwrap();
    assert!((loss - loss_at(&mut r)).abs() < 1e-9);
    r.forward();
    let grad = r.backward(&dpp); // [dP ; dMLP]
    assert_eq!(grad.len(), p * d + n);

    // Blocks of the parameter vector [P ; W_down, b_down, W_up, b_up, gain, bias].
    let pd = p * d;
    let blocks = [
        ("P", 0, pd),
        ("W_down", pd, pd + mb * d),
        ("b_down", pd + mb * d, pd + mb * d + mb),
        ("W_up", pd + mb * d + mb, pd + 2 * mb * d + mb),
        ("b_up", pd + 2 * mb * d + mb, pd + n - 2 * d),
        ("gain", pd + n - 2 * d, pd + n - d),
        ("bias", pd + n - d, pd + n),
    ];
    // A small step: a larger one (1e-2) crosses a ReLU kink for one of the b_down samples.
    let eps = 1e-3f32;
    for (name, lo, hi) in blocks {
        let (mut num, mut den) = (0.0f64, 0.0f64);
        let stride = ((hi - lo) / 12).max(1);
        for i in (lo..hi).step_by(stride) {
            let at = |delta: f32| {
                let mut q = Residual::new(&init, mb, OptimizerKind::adamw_default(), 1).unwrap();
                q.mlp_mut().copy_from_slice(r.mlp());
                if i < pd {
                    q.prompt[i] += delta;
                } else {
                    q.mlp_mut()[i - pd] += delta;
                }
                loss_at(&mut q)
            };
            let fd = (at(eps) - at(-eps)) / (2.0 * eps as f64);
            num += (fd - grad[i] as f64).powi(2);
            den += fd.powi(2);
        }
        assert!(den > 1e-12, "{name}: finite differences are all zero");
        let rel = (num / den).sqrt();
        assert!(
            rel < 1e-2,
            "{name}: relative L2 error vs finite differences {rel}"
        );
    }
}

fn residual_config(steps: u64) -> trainer::TrainConfig {
    let mut cfg = demo_config(steps);
    cfg.reparam = Reparam::Residual { bottleneck: 8 };
    cfg
}

#[test]
fn saved_prompt_is_the_folded_prompt_the_objective_saw() {
    let m = tiny_demo_model(4);
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let mut cfg = residual_config(12);
    cfg.eval_every = 12;
    train::train(&m, &cfg, &out, false, &AtomicBool::new(false), &mut Quiet).unwrap();

    // P' rebuilt from the last checkpoint (P + the MLP) is the saved prompt, bit for bit, and
    // differs from P: the MLP took part.
    let ck = checkpoint::load_latest(&out.join("checkpoints"))
        .unwrap()
        .unwrap();
    assert_eq!(ck.step, 12);
    let mut r =
        Residual::from_state(&ck.tensors, &ck.state["reparam"], 4, m.llama.dims.d, 8).unwrap();
    let folded = r.forward();
    let last = SoftPrompt::load_for(&m, &out.join("last"), false).unwrap();
    assert_eq!(last.embeddings.data, folded.data);
    assert_ne!(folded.data, r.prompt, "the MLP path contributed nothing");

    // The saved adapter scores exactly as the prompt did in the run's last evaluation.
    let log: Vec<serde_json::Value> = std::fs::read_to_string(out.join("train_log.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|v: &serde_json::Value| v["type"] == "eval")
        .collect();
    let logged = log.last().unwrap();
    let (mut val, _, _) =
        trainer::load_split(&m, &cfg.task, cfg.validation_file.as_deref().unwrap(), &cfg).unwrap();
    val.truncate(cfg.eval_limit.unwrap());
    let rep = train::evaluate(
        &m,
        Some(PromptRef::from_tensor(&last.embeddings).unwrap()),
        &val,
        cfg.eval_batch_size,
        false,
    )
    .unwrap();
    assert_eq!(rep.loss, logged["loss"].as_f64().unwrap());
    assert_eq!(rep.value, logged["value"].as_f64().unwrap());

    // A normal adapter: [P, D], and the metadata records the reparameterization.
    assert_eq!(last.embeddings.shape, vec![4, m.llama.dims.d]);
    let meta = serde_json::to_value(last.meta.as_ref().unwrap()).unwrap();
    assert_eq!(
        meta["training"]["reparam"],
        serde_json::json!({"kind": "residual", "bottleneck": 8})
    );
}

#[test]
fn residual_refuses_adafactor() {
    let m = tiny_demo_model(4);
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = residual_config(2);
    cfg.optimizer = OptimizerKind::adafactor_lester();
    let e = train::train(
        &m,
        &cfg,
        tmp.path(),
        false,
        &AtomicBool::new(false),
        &mut Quiet,
    )
    .unwrap_err();
    assert!(matches!(e, softprompt_core::Error::Setting { .. }), "{e:?}");
    assert!(e.to_string().contains("adamw"), "{e}");
}

#[test]
fn interrupted_then_resumed_residual_run_equals_uninterrupted_run() {
    let m = tiny_demo_model(2);
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = residual_config(10);
    cfg.eval_every = 4;
    cfg.grad_accum = 2;
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
        &mut StopAt(5, &STOP, Vec::new()),
    )
    .unwrap();
    assert!(s.interrupted && s.steps_done == 5);
    let s = train::train(&m, &cfg, &b, true, &AtomicBool::new(false), &mut Quiet).unwrap();
    assert_eq!(s.steps_done, 10);

    assert_eq!(step_losses(&a), step_losses(&b), "resumed losses differ");
    for f in ["last", "."] {
        let (pa, pb) = (
            SoftPrompt::load(&a.join(f)).unwrap(),
            SoftPrompt::load(&b.join(f)).unwrap(),
        );
        assert_eq!(
            pa.embeddings.data, pb.embeddings.data,
            "{f}: prompts differ"
        );
    }
    // Resuming with another bottleneck is refused, naming the setting.
    let mut other = cfg.clone();
    other.reparam = Reparam::Residual { bottleneck: 9 };
    other.steps = 12;
    let e = train::train(&m, &other, &b, true, &AtomicBool::new(false), &mut Quiet)
        .unwrap_err()
        .to_string();
    assert!(e.contains("bottleneck"), "{e}");
}
