//! Prompt distillation: the KL head's gradient against central finite differences on tiny
//! random models, KL = 0 when the student is the teacher, an interrupted and resumed run
//! equal to the uninterrupted one (tiny model), and a short real-model run (SmolLM2): the
//! loss falls, the folder loads with its metadata, and the hard prompt as prefix rows scores
//! exactly as the hard prompt as text.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};

use common::{demo_config, step_losses, tiny_demo_model, StopAt};
use softprompt_core::infer;
use softprompt_core::model::input::PromptRef;
use softprompt_core::model::llama::Llama;
use softprompt_core::model::LlamaConfig;
use softprompt_core::prompt::SoftPrompt;
use softprompt_core::train::distill::kl::kl_batch;
use softprompt_core::train::distill::teacher::{top_k_dist, TeacherExample};
use softprompt_core::train::distill::{self, DistillConfig};
use softprompt_core::train::{Init, Quiet};

/// A tiny random model of `cfg` (seed 11).
fn tiny(cfg: LlamaConfig) -> Llama {
    common::tiny_from(cfg, 11)
}

/// The tiny Llama with tied or untied embeddings.
fn llama(tie: bool) -> LlamaConfig {
    common::tiny_config(serde_json::json!({ "tie_word_embeddings": tie }))
}

fn prompt(p: usize, d: usize) -> Vec<f32> {
    (0..p * d)
        .map(|i| ((i * 37 % 101) as f32 / 101.0 - 0.5) * 0.8)
        .collect()
}

/// Teacher examples with distributions from sharp pseudo-random logits (top-`k` + rest).
fn teacher_batch(v: usize, k: usize) -> Vec<TeacherExample> {
    let mut out = Vec::new();
    for (e, (n_in, n_cont)) in [(5usize, 3usize), (2, 4), (7, 1)].into_iter().enumerate() {
        let ids: Vec<u32> = (0..n_in)
            .map(|t| ((t * 13 + e * 7 + 3) % v) as u32)
            .collect();
        let mut cont = Vec::new();
        let mut dists = Vec::new();
        for t in 0..n_cont {
            let logits: Vec<f32> = (0..v)
                .map(|j| (((j * 31 + t * 17 + e * 5) % 23) as f32 - 11.0) * 0.4)
                .collect();
            let dist = top_k_dist(&logits, k);
            cont.push(dist.ids[0]);
            dists.push(dist);
        }
        out.push(TeacherExample { ids, cont, dists });
    }
    out
}

fn check_fd(m: &Llama, k: usize) {
    let d = m.dims.d;
    let pr = prompt(3, d);
    let data = teacher_batch(m.dims.vocab, k);
    let batch: Vec<&TeacherExample> = data.iter().collect();
    let (r, _) = kl_batch(m, Some(PromptRef::new(&pr, d).unwrap()), &batch, true).unwrap();
    let grad = r.grad.unwrap();
    let loss_at = |p: &[f32]| {
        let v = PromptRef::new(p, d).unwrap();
        kl_batch(m, Some(v), &batch, false).unwrap().0.loss
    };
    assert!(
        (r.loss - loss_at(&pr)).abs() < 1e-6,
        "loss with and without tape"
    );
    assert!(r.loss > 0.01, "KL of a random student is {}", r.loss);
    assert!(
        grad.iter().any(|g| g.abs() > 1e-4),
        "prompt gradient is zero"
    );
    let rel = common::fd_rel_error(&pr, &grad, 5, loss_at);
    assert!(
        rel < 1e-2,
        "KL gradient vs finite differences: relative L2 error {rel}"
    );
}

#[test]
fn kl_gradient_matches_finite_differences_llama_untied() {
    check_fd(&tiny(llama(false)), 5);
}

#[test]
fn kl_gradient_matches_finite_differences_gemma3_tied() {
    check_fd(&tiny(common::tiny_gemma3_config()), 5);
}

#[test]
fn kl_gradient_matches_finite_differences_full_distribution() {
    // k = V: no rest bucket (p_rest = 0, an empty sum on the student's side).
    check_fd(&tiny(llama(true)), 61);
}

/// A deep (prefix) student: its KL equals that of the input prompt it was made from (the
/// prefix adds no rows, so the KL is read at the same predictions), and its gradient
/// w.r.t. the prefix's keys and values matches central finite differences.
#[test]
fn kl_of_a_prefix_student_matches_its_input_prompt_and_finite_differences() {
    use softprompt_core::model::input::PromptKind;
    let m = tiny(llama(false));
    let (d, w) = (m.dims.d, m.prefix_width());
    let data = teacher_batch(m.dims.vocab, 4);
    let batch: Vec<&TeacherExample> = data.iter().collect();
    let rows = prompt(3, d);
    let pre = m.prefix_of(PromptRef::new(&rows, d).unwrap()).unwrap();
    fn at(p: &[f32], w: usize) -> PromptRef<'_> {
        PromptRef::with_kind(p, w, PromptKind::Prefix).unwrap()
    }
    let (input, _) = kl_batch(&m, Some(PromptRef::new(&rows, d).unwrap()), &batch, false).unwrap();
    let (deep, _) = kl_batch(&m, Some(at(&pre, w)), &batch, true).unwrap();
    assert!(
        (input.loss - deep.loss).abs() < 1e-5,
        "{} vs {}",
        input.loss,
        deep.loss
    );
    let grad = deep.grad.unwrap();
    assert_eq!(grad.len(), pre.len());
    let loss_at = |p: &[f32]| kl_batch(&m, Some(at(p, w)), &batch, false).unwrap().0.loss;
    let rel = common::fd_rel_error(&pre, &grad, 3, loss_at);
    assert!(
        rel < 1e-2,
        "prefix KL gradient vs finite differences: {rel}"
    );
}

#[test]
fn kl_is_zero_when_the_student_is_the_teacher() {
    let m = tiny(llama(false));
    let pr = prompt(2, m.dims.d);
    let pv = PromptRef::new(&pr, m.dims.d).unwrap();
    let mut data = teacher_batch(m.dims.vocab, 4);
    for ex in &mut data {
        // The teacher's distributions become the student's own (same prompt, same tokens).
        for t in 0..ex.cont.len() {
            let mut ids = ex.ids.clone();
            ids.extend_from_slice(&ex.cont[..t]);
            let logits = infer::last_logits(&m, Some(pv), &ids).unwrap();
            ex.dists[t] = top_k_dist(&logits, 4);
            ex.cont[t] = ex.dists[t].ids[0];
        }
    }
    let batch: Vec<&TeacherExample> = data.iter().collect();
    let (r, agree) = kl_batch(&m, Some(pv), &batch, true).unwrap();
    assert!(
        r.loss.abs() < 1e-5,
        "KL of the teacher with itself: {}",
        r.loss
    );
    let gmax = r.grad.unwrap().iter().fold(0.0f32, |a, g| a.max(g.abs()));
    assert!(gmax < 1e-4, "gradient at the minimum: {gmax}");
    assert_eq!(agree, 1.0, "the teacher's argmax is its own token");
    // A different prompt is a different student: KL > 0.
    let other = prompt(2, m.dims.d).iter().map(|x| -x).collect::<Vec<_>>();
    let ov = PromptRef::new(&other, m.dims.d).unwrap();
    assert!(kl_batch(&m, Some(ov), &batch, false).unwrap().0.loss > 1e-3);
}

fn demo_distill(steps: u64) -> (softprompt_core::train::TrainConfig, DistillConfig) {
    let dc = DistillConfig {
        hard_prompt:
            "Review: a great film\nSentiment: positive\nReview: a dull film\nSentiment: negative\n"
                .into(),
        teacher_tokens: 3,
        top_k: 8,
        temperature: 0.0,
        holdout: 16,
        template: "Review: {sentence}\\nSentiment:".into(),
        labels: Some("0=negative,1=positive".into()),
        label_field: "label".into(),
    };
    let mut cfg = demo_config(steps);
    cfg.task = distill::task_spec(&dc).unwrap();
    cfg.train_file = "builtin:demo/train".into();
    cfg.validation_file = None;
    cfg.train_limit = Some(64);
    cfg.batch_size = 8;
    cfg.eval_every = 4;
    cfg.checkpoint_every = 0;
    cfg.init = Init::Text(dc.hard_prompt.clone());
    (cfg, dc)
}

#[test]
fn tiny_distillation_resumes_exactly_and_reuses_the_teacher() {
    let m = tiny_demo_model(4);
    let before = m.weights_digest();
    let tmp = tempfile::tempdir().unwrap();
    let (cfg, dc) = demo_distill(10);
    let a = tmp.path().join("a");
    let (sa, ra) = distill::distill(
        &m,
        &cfg,
        &dc,
        &a,
        false,
        &AtomicBool::new(false),
        &mut Quiet,
    )
    .unwrap();
    let ra = ra.unwrap();
    assert_eq!(sa.steps_done, 10);
    assert_eq!((ra.train_inputs, ra.heldout_inputs), (64, 16));
    assert!(ra.accuracy.is_some(), "labelled inputs give task accuracy");
    assert_eq!(m.weights_digest(), before, "base weights changed");

    static STOP: AtomicBool = AtomicBool::new(false);
    let b = tmp.path().join("b");
    let mut obs = StopAt(4, &STOP, Vec::new());
    let (sb, rb) = distill::distill(&m, &cfg, &dc, &b, false, &STOP, &mut obs).unwrap();
    assert!(sb.interrupted && sb.steps_done == 4);
    assert!(rb.is_none(), "no report for an interrupted run");
    let teacher_before = std::fs::read(b.join("teacher.json")).unwrap();
    let mut obs = StopAt(0, &STOP, Vec::new());
    STOP.store(false, Ordering::SeqCst);
    let (sb, _) = distill::distill(&m, &cfg, &dc, &b, true, &STOP, &mut obs).unwrap();
    assert_eq!(sb.steps_done, 10);
    assert!(
        obs.2.iter().any(|m| m.starts_with("teacher data from")),
        "resume regenerated the teacher data: {:?}",
        obs.2
    );
    assert_eq!(
        std::fs::read(b.join("teacher.json")).unwrap(),
        teacher_before
    );
    assert_eq!(step_losses(&a), step_losses(&b), "resumed losses differ");
    let (pa, pb) = (
        SoftPrompt::load(&a.join("last")).unwrap(),
        SoftPrompt::load(&b.join("last")).unwrap(),
    );
    assert_eq!(
        pa.embeddings.data, pb.embeddings.data,
        "final prompts differ"
    );
    // Metadata names the hard prompt.
    let meta = pa.meta.unwrap();
    let d = &meta.training.unwrap()["distill"];
    assert_eq!(
        d["hard_prompt_sha256"].as_str(),
        Some(distill::sha256_hex(&dc.hard_prompt).as_str())
    );
    assert_eq!(
        d["hard_prompt_tokens"].as_u64(),
        Some(m.encode_input(&dc.hard_prompt).unwrap().len() as u64)
    );
}

/// SmolLM2: a short hard prompt distilled for a few steps on a few inputs.
#[test]
fn real_model_distillation_lowers_the_kl_and_saves_a_prompt_folder() {
    let m = softprompt_core::model::FrozenModel::load("smollm2-135m").unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let inputs = tmp.path().join("inputs.txt");
    let qs = [
        "What is the capital of France?",
        "How many legs does a spider have?",
        "Why is the sky blue?",
        "Who wrote Hamlet?",
        "What do bees make?",
        "How far is the moon?",
        "What is ice made of?",
        "Where do penguins live?",
        "What colour is grass?",
        "How many days are in a week?",
    ];
    std::fs::write(&inputs, qs.join("\n")).unwrap();
    let dc = DistillConfig {
        hard_prompt: "Answer every question in French, in one short sentence.\n".into(),
        teacher_tokens: 6,
        top_k: 16,
        temperature: 0.0,
        holdout: 2,
        template: "Q: {text}\\nA:".into(),
        labels: None,
        label_field: "label".into(),
    };
    let mut cfg = demo_config(8);
    cfg.task = distill::task_spec(&dc).unwrap();
    cfg.train_file = inputs.display().to_string();
    cfg.validation_file = None;
    cfg.num_virtual_tokens = 4;
    cfg.batch_size = 4;
    cfg.lr = 0.03;
    cfg.eval_every = 0;
    cfg.checkpoint_every = 0;
    cfg.init = Init::Text(dc.hard_prompt.clone());
    let out = tmp.path().join("out");
    let (s, r) = distill::distill(
        &m,
        &cfg,
        &dc,
        &out,
        false,
        &AtomicBool::new(false),
        &mut Quiet,
    )
    .unwrap();
    let r = r.unwrap();
    assert_eq!((s.steps_done, r.train_inputs, r.heldout_inputs), (8, 8, 2));
    let losses = step_losses(&out);
    let (first, last) = (
        (losses[0].1 + losses[1].1) / 2.0,
        (losses[6].1 + losses[7].1) / 2.0,
    );
    assert!(last < first, "KL did not fall: {first:.4} -> {last:.4}");
    assert!(r.student.mean_kl < r.no_prompt.mean_kl);
    let p = SoftPrompt::load(&out).unwrap();
    assert_eq!(p.num_virtual_tokens(), 4);
    let meta = p.meta.unwrap();
    assert_eq!(
        meta.training.unwrap()["distill"]["hard_prompt_sha256"].as_str(),
        Some(distill::sha256_hex(&dc.hard_prompt).as_str())
    );
    for f in ["distill.json", "distill.md", "teacher.json", "curve.png"] {
        assert!(out.join(f).is_file(), "{f} missing");
    }

    // The hard prompt as prefix rows (hard_prompt/) scores the input exactly as the hard
    // prompt as text: what the server's cached prefix computes is the teacher.
    let hp = SoftPrompt::load_for(&m, &out.join("hard_prompt"), false).unwrap();
    let hard = m.encode_input(&dc.hard_prompt).unwrap();
    assert_eq!(hp.num_virtual_tokens(), hard.len());
    let input = m.encode("Q: Who painted the Mona Lisa?\nA:").unwrap();
    let as_rows = infer::score(&m.llama, Some(hp.view().unwrap()), &input).unwrap();
    let mut as_text = hard.clone();
    as_text.extend(&input);
    let text_scores = infer::score(&m.llama, None, &as_text).unwrap();
    let tail = &text_scores[hard.len() - 1..]; // text scores start at token 1
    assert_eq!(as_rows.len(), tail.len());
    for (a, b) in as_rows.iter().zip(tail) {
        assert!((a - b).abs() < 1e-3, "prefix rows {a} vs text {b}");
    }
}
