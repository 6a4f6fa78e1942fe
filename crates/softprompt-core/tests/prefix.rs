//! Deep prompts (prefix tuning): the prefix gradient against central finite differences on
//! tiny random models (Llama, Gemma 3 with a sliding window and QK-norm, Qwen3), a prefix
//! made from an input prompt's keys and values against that input prompt, the PEFT
//! prefix-tuning folder, and a real training run on a tiny model.

use std::sync::atomic::AtomicBool;

use softprompt_core::infer::{self, objective};
use softprompt_core::model::input::{Example, PromptKind, PromptRef};
use softprompt_core::model::llama::Llama;
use softprompt_core::prompt::SoftPrompt;
use softprompt_core::train::{self, Init};
use softprompt_core::Tensor;

mod common;
use common::{test_rows, tiny_from, tiny_gemma3_config, tiny_llama, tiny_qwen3_config, StopAt};

/// Two sequences; every token but the first is a target (a prefix adds no row before it).
fn batch() -> Vec<Example> {
    common::two_texts(1)
}

fn check_prefix_fd(m: &Llama) {
    let width = m.prefix_width();
    // A prefix with the keys/values of real rows (a realistic scale), then perturbed.
    let mut pre = m
        .prefix_of(PromptRef::new(&test_rows(3, m.dims.d), m.dims.d).unwrap())
        .unwrap();
    for (i, v) in pre.iter_mut().enumerate() {
        *v += ((i * 13 % 7) as f32 - 3.0) * 0.05;
    }
    fn view(p: &[f32], width: usize) -> PromptRef<'_> {
        PromptRef::with_kind(p, width, PromptKind::Prefix).unwrap()
    }
    let ex = batch();
    let (loss, grad) = m.prompt_loss_and_grad(view(&pre, width), &ex).unwrap();
    assert_eq!(grad.len(), pre.len());
    let loss2 = m.prompt_loss(view(&pre, width), &ex).unwrap();
    assert!((loss - loss2).abs() < 1e-6, "{loss} vs {loss2}");
    // Every 3rd coordinate: keys and values of every layer, every virtual token.
    let rel = common::fd_rel_error(&pre, &grad, 3, |p| {
        m.prompt_loss(view(p, width), &ex).unwrap()
    });
    assert!(
        rel < 1e-2,
        "prefix gradient vs finite differences: relative L2 error {rel}"
    );
    // Every layer's keys and values receive gradient.
    let kvd = m.dims.kvdim();
    for l in 0..m.n_layers() {
        for part in 0..2 {
            let c0 = (2 * l + part) * kvd;
            let any = (0..3).any(|r| {
                grad[r * width + c0..r * width + c0 + kvd]
                    .iter()
                    .any(|g| g.abs() > 1e-6)
            });
            assert!(
                any,
                "layer {l} {} has zero gradient",
                ["keys", "values"][part]
            );
        }
    }
}

#[test]
fn prefix_grad_matches_finite_differences_llama() {
    check_prefix_fd(&tiny_llama(7));
}

#[test]
fn prefix_grad_matches_finite_differences_gemma3_window_qk_norm() {
    // Window 4 < prefix 3 + text 7: the last rows no longer see the prefix on the local layer.
    check_prefix_fd(&tiny_from(tiny_gemma3_config(), 5));
}

#[test]
fn prefix_grad_matches_finite_differences_qwen3() {
    check_prefix_fd(&tiny_from(tiny_qwen3_config(), 5));
}

/// The prefix made of an input prompt's keys and values is that prompt: the text after it
/// gets the same log-probs and classification scores.
fn check_prefix_of(m: &Llama, d_prompt: &[f32], ids: &[u32], tol: f64) {
    let d = m.dims.d;
    let input = PromptRef::new(d_prompt, d).unwrap();
    let pre = m.prefix_of(input).unwrap();
    let deep = PromptRef::with_kind(&pre, m.prefix_width(), PromptKind::Prefix).unwrap();
    assert_eq!(deep.len(), input.len());
    assert_eq!(deep.rows(), 0);
    let a = infer::score(m, Some(input), ids).unwrap(); // tokens 0..n
    let b = infer::score(m, Some(deep), ids).unwrap(); // tokens 1..n (none precedes token 0)
    assert_eq!(a.len(), b.len() + 1);
    for (x, y) in a[1..].iter().zip(&b) {
        assert!((x - y).abs() < tol, "input prompt {x} vs its prefix {y}");
    }
    let ex = objective::ClassExample {
        ids: ids.to_vec(),
        cands: vec![vec![ids[0]], vec![ids[1], ids[2]]],
        label: Some(1),
    };
    let s1 =
        objective::classify_batch(m, Some(input), std::slice::from_ref(&ex), false, false).unwrap();
    let s2 =
        objective::classify_batch(m, Some(deep), std::slice::from_ref(&ex), false, false).unwrap();
    for (x, y) in s1.scores[0].iter().zip(&s2.scores[0]) {
        assert!((x - y).abs() < tol, "classify: {x} vs {y}");
    }
    // Greedy generation continues the same way.
    let s = infer::Sampling {
        max_new_tokens: 5,
        ..Default::default()
    };
    let g1 = infer::generate(m, Some(input), ids, &s, |_| true).unwrap();
    let g2 = infer::generate(m, Some(deep), ids, &s, |_| true).unwrap();
    assert_eq!(g1, g2);
}

#[test]
fn prefix_of_an_input_prompt_is_that_prompt_tiny() {
    for m in [
        tiny_llama(3),
        tiny_from(tiny_gemma3_config(), 2),
        tiny_from(tiny_qwen3_config(), 2),
    ] {
        check_prefix_of(
            &m,
            &test_rows(3, m.dims.d),
            &[3, 17, 42, 5, 60, 9, 11],
            1e-4,
        );
    }
}

#[test]
fn prefix_of_an_input_prompt_is_that_prompt_smollm2() {
    let (m, tok) = common::smollm();
    let ids = tok
        .encode(
            "Review: a gorgeous, witty film.\nSentiment: positive",
            false,
        )
        .unwrap()
        .get_ids()
        .to_vec();
    let emb = softprompt_core::prompt::init::random_uniform(8, m.dims.d, 0.5, 1);
    check_prefix_of(m, &emb.data, &ids, 2e-3);
}

#[test]
fn deep_prompt_trains_saves_as_peft_prefix_and_resumes() {
    let m = common::tiny_demo_model(4);
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::demo_config(8);
    cfg.prompt_kind = PromptKind::Prefix;
    cfg.init = Init::Vocab { top: 20 };
    cfg.eval_every = 4;
    static STOP: AtomicBool = AtomicBool::new(false);
    let mut obs = StopAt(4, &STOP, Vec::new());
    // Stop after step 4, then resume to 8: the result equals an uninterrupted run.
    let s1 = train::train(&m, &cfg, dir.path(), false, &STOP, &mut obs).unwrap();
    assert!(s1.interrupted);
    STOP.store(false, std::sync::atomic::Ordering::SeqCst);
    let s2 = train::train(&m, &cfg, dir.path(), true, &STOP, &mut train::Quiet).unwrap();
    assert!(!s2.interrupted);
    let resumed = SoftPrompt::load(&dir.path().join("last")).unwrap();
    let dir2 = tempfile::tempdir().unwrap();
    static NEVER: AtomicBool = AtomicBool::new(false);
    train::train(&m, &cfg, dir2.path(), false, &NEVER, &mut train::Quiet).unwrap();
    let straight = SoftPrompt::load(&dir2.path().join("last")).unwrap();
    assert_eq!(resumed.embeddings.data, straight.embeddings.data);

    // The folder is PEFT's prefix-tuning layout.
    let p = SoftPrompt::load_for(&m, dir.path(), false).unwrap();
    assert_eq!(p.kind(), PromptKind::Prefix);
    let (l, kvd) = (m.llama.n_layers(), m.llama.dims.kvdim());
    assert_eq!(p.embeddings.shape, vec![4, l * 2 * kvd]);
    let cfg_json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(cfg_json["peft_type"], "PREFIX_TUNING");
    assert_eq!(cfg_json["token_dim"], kvd);
    assert_eq!(cfg_json["num_attention_heads"], m.llama.dims.nkv);
    assert_eq!(cfg_json["num_layers"], l);
    assert_eq!(cfg_json["prefix_projection"], false);
    assert!(cfg_json.get("prompt_tuning_init").is_none());
    assert!(cfg_json.get("init_weights").is_some());

    // It starts from the keys and values of its init rows, and training moved it.
    let init = train::init::init_prompt(&m, &cfg).unwrap();
    let rows0 = train::init::init_embeddings(&m, &cfg.init, 4, cfg.seed, &cfg.task).unwrap();
    let expect = m
        .llama
        .prefix_of(PromptRef::from_tensor(&rows0).unwrap())
        .unwrap();
    assert_eq!(init.data, expect);
    assert_ne!(p.embeddings.data, init.data);

    // An input prompt of the same model is refused as a prefix init, and the reverse.
    let input = SoftPrompt::for_model(&m, Tensor::new(vec![4, m.llama.dims.d], rows0.data));
    let inp_dir = dir.path().join("input");
    input.save(&inp_dir).unwrap();
    let mut c2 = common::demo_config(1);
    c2.init = Init::File(dir.path().to_path_buf());
    let e = train::init::init_prompt(&m, &c2).unwrap_err().to_string();
    assert!(e.contains("deep (prefix) prompt"), "{e}");
    // A prefix prompt for a model of another shape is refused, naming the widths.
    let other = common::tiny_demo_model_with_layers(3, 5);
    let e = SoftPrompt::load_for(&other, dir.path(), true)
        .unwrap_err()
        .to_string();
    assert!(e.contains("prefix of") && e.contains("same shape"), "{e}");
}
