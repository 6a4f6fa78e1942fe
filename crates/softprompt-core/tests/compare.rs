//! Full fine-tuning and the comparison on a tiny random model over the built-in demo task:
//! the fine-tuning loss goes down, the saved HF folder reloads to the trained weights, and a
//! whole comparison writes its files with prompt tuning's forgetting exactly zero and full
//! fine-tuning's measured.

mod common;

use std::sync::atomic::AtomicBool;

use common::{demo_config, tiny_demo_model};
use softprompt_core::compare::{self, CompareConfig, LoraSettings, Method};
use softprompt_core::model::FrozenModel;
use softprompt_core::train::finetune::finetune;
use softprompt_core::train::lora::{train_lora, Lora, DEFAULT_MODULES};
use softprompt_core::train::optim::OptimizerKind;
use softprompt_core::train::Quiet;
use softprompt_core::Error;

#[test]
fn full_finetuning_lowers_the_loss_and_saves_a_loadable_model() {
    let mut m = tiny_demo_model(5);
    let before = m.weights_digest();
    let mut cfg = demo_config(40);
    cfg.lr = 3e-3;
    cfg.warmup_steps = 0;
    cfg.validation_file = None;
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("ft");
    let s = finetune(&mut m, &cfg, &out, &AtomicBool::new(false), &mut Quiet).unwrap();
    assert_eq!(s.steps_done, 40);
    assert_eq!(s.trainable_parameters, m.llama.num_parameters());
    let losses: Vec<f64> = common::step_losses(&out).iter().map(|x| x.1).collect();
    let mean = |x: &[f64]| x.iter().sum::<f64>() / x.len() as f64;
    let (first, last) = (mean(&losses[..8]), mean(&losses[32..]));
    assert!(
        last < 0.8 * first,
        "fine-tuning loss did not go down: first 8 steps {first:.4}, last 8 {last:.4}"
    );
    assert_ne!(m.weights_digest(), before, "the weights did not change");
    // The saved folder is the trained model.
    let saved = FrozenModel::load(out.join("model").to_str().unwrap()).unwrap();
    assert_eq!(saved.weights_digest(), m.weights_digest());
}

#[test]
fn lora_lowers_the_loss_and_gives_the_weights_back() {
    let mut m = tiny_demo_model(5);
    let before = m.weights_digest();
    let mut cfg = demo_config(40);
    cfg.lr = 1e-3;
    cfg.warmup_steps = 0;
    cfg.validation_file = None;
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("lora");
    let mut ad = Lora::new(&m.llama, 8, 16.0, &DEFAULT_MODULES, 0).unwrap();
    let s = train_lora(
        &mut m,
        &mut ad,
        &cfg,
        &out,
        &AtomicBool::new(false),
        &mut Quiet,
    )
    .unwrap();
    assert_eq!(s.steps_done, 40);
    let losses: Vec<f64> = common::step_losses(&out).iter().map(|x| x.1).collect();
    let mean = |x: &[f64]| x.iter().sum::<f64>() / x.len() as f64;
    let (first, last) = (mean(&losses[..8]), mean(&losses[32..]));
    assert!(
        last < 0.8 * first,
        "LoRA loss did not go down: first 8 steps {first:.4}, last 8 {last:.4}"
    );
    assert_ne!(
        m.weights_digest(),
        before,
        "the merged weights did not change"
    );
    assert!(out.join("adapter/adapter_model.safetensors").is_file());
    ad.restore(&mut m.llama).unwrap();
    assert_eq!(m.weights_digest(), before);
}

/// The error of a demo-task fine-tuning run of `steps` steps without validation.
fn finetune_error(m: &mut FrozenModel, steps: u64) -> Error {
    let mut cfg = demo_config(steps);
    cfg.validation_file = None;
    let tmp = tempfile::tempdir().unwrap();
    finetune(m, &cfg, tmp.path(), &AtomicBool::new(false), &mut Quiet).unwrap_err()
}

#[test]
fn finetuning_refuses_zero_steps() {
    let e = finetune_error(&mut tiny_demo_model(1), 0);
    // The error names the setting (`steps`; the CLI maps it to --steps).
    assert!(
        matches!(&e, Error::Setting { name: "steps", .. }) && e.to_string().contains("steps"),
        "{e}"
    );
}

/// A comparison on the tiny demo model: 2-shot hard prompts, no second task, defaults.
fn tiny_compare(
    prompt: softprompt_core::train::TrainConfig,
    methods: Vec<Method>,
) -> CompareConfig {
    CompareConfig {
        model: "tiny-demo".into(),
        prompt,
        ft_lr: 1e-3,
        ft_optimizer: OptimizerKind::adamw_default(),
        shots: 2,
        second_task: None,
        methods,
        residual: compare::default_residual(),
        deep_lr: compare::default_deep_lr(),
        lora: LoraSettings::default(),
    }
}

#[test]
fn comparison_writes_its_files_and_measures_forgetting() {
    let mut m = tiny_demo_model(2);
    let mut pcfg = demo_config(6);
    pcfg.eval_limit = Some(24);
    pcfg.train_limit = Some(64);
    let mut cfg = tiny_compare(pcfg, Method::ALL.to_vec());
    cfg.lora.lr = 3e-3;
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("cmp");
    let stop = AtomicBool::new(false);
    let c = compare::run(&mut m, &cfg, &out, false, &stop, &mut Quiet).unwrap();
    for f in ["compare.md", "compare.png", "compare.json"] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let (pt, ft, lo) = (
        c.prompt_tuning.as_ref().unwrap(),
        c.full_finetuning.as_ref().unwrap(),
        c.lora.as_ref().unwrap(),
    );
    // Prompt tuning: the base model is byte-identical, so the perplexity is exactly the same.
    assert_eq!(pt.weights_digest_after, c.base.weights_digest);
    assert_eq!(pt.general_ppl_after, c.base.general_ppl);
    assert_eq!(pt.trainable_parameters, 4 * 32);
    // Full fine-tuning changed the weights and the perplexity.
    assert_ne!(ft.weights_digest_after, c.base.weights_digest);
    assert_ne!(ft.general_ppl_after, c.base.general_ppl);
    assert!(ft.artifact_bytes > 10 * pt.artifact_bytes);
    // LoRA: r (D_in + D_out) per q/v matrix; the merged weights changed, its adapter is
    // between the prompt and the full model in size.
    let (d, qd, kvd, layers) = (32, 32, 16, 2);
    assert_eq!(lo.trainable_parameters, layers * 8 * (d + qd + d + kvd));
    assert_ne!(lo.weights_digest_after, c.base.weights_digest);
    assert_ne!(lo.general_ppl_after, c.base.general_ppl);
    assert!(lo.artifact_bytes > pt.artifact_bytes && lo.artifact_bytes < ft.artifact_bytes);
    assert!(lo.artifact.join("adapter_model.safetensors").is_file());
    let md = std::fs::read_to_string(out.join("compare.md")).unwrap();
    assert!(md.contains("| LoRA (r=8, q/v, merged) |"), "{md}");
    let h = c.hard.as_ref().unwrap();
    assert_eq!(h.zero_shot.len(), 2);
    assert_eq!(h.few_shot.len(), 1);
    let t = &c.timing;
    for ms in [
        t.zero_shot_ms.unwrap(),
        t.few_shot_ms.unwrap(),
        t.prompt_tuning_ms.unwrap(),
        t.full_finetuning_ms,
    ] {
        assert!(ms.is_finite() && ms > 0.0, "{t:?}");
    }
    // A second run needs --resume; with it, every stage is read back, nothing recomputed.
    assert!(compare::run(&mut m, &cfg, &out, false, &stop, &mut Quiet).is_err());
    let c2 = compare::run(&mut m, &cfg, &out, true, &stop, &mut Quiet).unwrap();
    assert_eq!(
        c2.full_finetuning.unwrap().general_ppl_after,
        ft.general_ppl_after
    );
    assert_eq!(c2.lora.unwrap().accuracy, lo.accuracy);
}

#[test]
fn comparison_runs_only_the_chosen_methods() {
    let mut m = tiny_demo_model(4);
    let before = m.weights_digest();
    let mut pcfg = demo_config(3);
    pcfg.eval_limit = Some(16);
    pcfg.train_limit = Some(32);
    let methods: Vec<Method> = "lora".split(',').map(|s| s.parse().unwrap()).collect();
    let cfg = tiny_compare(pcfg, methods);
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("cmp");
    let c = compare::run(
        &mut m,
        &cfg,
        &out,
        false,
        &AtomicBool::new(false),
        &mut Quiet,
    )
    .unwrap();
    assert!(c.hard.is_none() && c.prompt_tuning.is_none() && c.full_finetuning.is_none());
    assert_eq!(c.lora.as_ref().unwrap().steps, 3);
    assert!(c.timing.zero_shot_ms.is_none() && c.timing.prompt_tuning_ms.is_none());
    // The LoRA stage gives the base weights back.
    assert_eq!(m.weights_digest(), before);
    assert!(!out.join("prompt_tuning").exists() && !out.join("full_finetune").exists());
    let md = std::fs::read_to_string(out.join("compare.md")).unwrap();
    assert!(
        md.contains("| | LoRA (r=8, q/v, merged) |\n|---|---:|\n"),
        "{md}"
    );
    assert!("hard,bogus"
        .split(',')
        .map(str::parse::<Method>)
        .any(|r| r.is_err()));
}

/// The prompt rows: plain, residual and deep prompts trained on the same batches, and the
/// ensemble of the three, each saved as a PEFT adapter of its kind, the base untouched.
#[test]
fn comparison_of_prompt_methods_and_their_ensemble() {
    use softprompt_core::model::input::PromptKind;
    use softprompt_core::prompt::SoftPrompt;
    let mut m = tiny_demo_model(4);
    let before = m.weights_digest();
    let mut pcfg = demo_config(4);
    pcfg.eval_limit = Some(24);
    pcfg.train_limit = Some(32);
    let methods = "prompt,residual,deep,ensemble";
    let mut cfg = tiny_compare(
        pcfg,
        methods.split(',').map(|s| s.parse().unwrap()).collect(),
    );
    cfg.shots = 0;
    cfg.residual = "residual:8".parse().unwrap();
    cfg.deep_lr = 0.02;
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("cmp");
    let c = compare::run(
        &mut m,
        &cfg,
        &out,
        false,
        &AtomicBool::new(false),
        &mut Quiet,
    )
    .unwrap();
    assert_eq!(m.weights_digest(), before);
    let (pt, res, deep, ens) = (
        c.prompt_tuning.as_ref().unwrap(),
        c.residual.as_ref().unwrap(),
        c.deep.as_ref().unwrap(),
        c.ensemble.as_ref().unwrap(),
    );
    let (d, w) = (m.llama.dims.d, m.llama.prefix_width());
    assert_eq!(pt.trainable_parameters, 4 * d);
    assert_eq!(res.trainable_parameters, 4 * d + (2 * d * 8 + 8 + 3 * d));
    assert_eq!(deep.trainable_parameters, 4 * w);
    assert_eq!(
        ens.trainable_parameters,
        pt.trainable_parameters + res.trainable_parameters + deep.trainable_parameters
    );
    assert_eq!(
        SoftPrompt::load(&out.join("deep")).unwrap().kind(),
        PromptKind::Prefix
    );
    let residual = SoftPrompt::load(&out.join("residual")).unwrap();
    assert_eq!(residual.kind(), PromptKind::Input);
    // Residual and plain start from the same init and batches but train differently.
    let plain = SoftPrompt::load(&out.join("prompt_tuning")).unwrap();
    assert_ne!(residual.embeddings.data, plain.embeddings.data);
    assert!(c.timing.deep_ms.is_some() && c.timing.prompt_tuning_ms.is_some());
    assert_eq!(ens.n, pt.n);
    let md = std::fs::read_to_string(out.join("compare.md")).unwrap();
    assert!(
        md.contains("| | prompt tuning | residual prompt tuning (residual:8) | deep prompt (prefix tuning) | ensemble of 3 prompts |"),
        "{md}"
    );
    // Fewer than two prompt rows: no ensemble.
    let mut cfg2 = cfg.clone();
    cfg2.methods = vec![Method::Deep, Method::Ensemble];
    let e = compare::run(
        &mut m,
        &cfg2,
        &tmp.path().join("c2"),
        false,
        &AtomicBool::new(false),
        &mut Quiet,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("at least two"), "{e}");
}

/// Full fine-tuning needs f32 weights: the default model loaded with its GGUF blocks kept
/// is refused with an error that says what to do.
#[test]
fn quantized_weights_are_refused_for_full_finetuning() {
    use softprompt_core::compute::weight::WeightFormat;
    let mut m = FrozenModel::load_with("smollm2-135m", WeightFormat::Quantized).unwrap();
    let e = finetune_error(&mut m, 1);
    assert!(e.to_string().contains("needs f32 weights"), "{e}");
    // It names the setting to change (`weights`, the CLI's --weights) and the value.
    assert!(
        matches!(
            &e,
            Error::Setting {
                name: "weights",
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("weights format f32"), "{e}");
}
