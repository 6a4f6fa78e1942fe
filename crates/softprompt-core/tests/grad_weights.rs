//! Weight gradients (full fine-tuning) against central finite differences on tiny random
//! models of every supported shape: a sample of entries of every parameter tensor (embedding
//! tied and untied, output projection, every norm, q/k/v/o, gate/up/down, biases, QK-norms,
//! sandwich norms). Also: the prompt gradient read from the full backward equals the
//! prompt-only backward's, and the HF export reloads to the same model.

use softprompt_core::infer::objective::{self, ClassExample};
use softprompt_core::model::input::{PromptRef, SeqInput, Target};
use softprompt_core::model::llama::grads::Grads;
use softprompt_core::model::llama::{prompt_grad, random_weights, Llama};
use softprompt_core::model::LlamaConfig;

mod common;
use common::{tiny_config as config, tiny_gemma3_config as gemma3};

fn model(cfg: LlamaConfig, seed: u64) -> Llama {
    let w = random_weights(&cfg, seed);
    Llama::new(cfg, w, "tiny").unwrap()
}

const SEQS: [&[u32]; 2] = [&[3, 17, 42, 5, 60, 9, 11], &[8, 1, 30, 3]];

/// Next-token targets over both sequences (weights 1/count), packed rows.
fn targets() -> Vec<Target> {
    let count: usize = SEQS.iter().map(|s| s.len() - 1).sum();
    let mut t = Vec::new();
    let mut r0 = 0;
    for s in SEQS {
        for (i, &token) in s.iter().enumerate().skip(1) {
            t.push(Target {
                row: r0 + i - 1,
                token,
                weight: 1.0 / count as f32,
            });
        }
        r0 += s.len();
    }
    t
}

fn seqs() -> Vec<SeqInput<'static>> {
    SEQS.iter()
        .map(|ids| SeqInput { prompt: None, ids })
        .collect()
}

/// For every parameter tensor, a few entries (spread over the tensor; for the embedding,
/// rows of tokens in the batch) against central differences: relative L2 error per tensor.
fn check_weights_fd(mut m: Llama) {
    let (seqs, targets) = (seqs(), targets());
    let mut grads = Grads::new(&m);
    let (loss, _, _) = m.loss_and_grads(&seqs, &targets, &mut grads).unwrap();
    let loss2 = m.loss(&seqs, &targets).unwrap();
    assert!((loss - loss2).abs() < 1e-6, "{loss} vs {loss2}");
    let specs = m.param_specs();
    let g: Vec<Vec<f32>> = grads.buffers_mut().iter().map(|b| b.to_vec()).collect();
    assert_eq!(specs.len(), g.len(), "one gradient buffer per parameter");
    let eps = 1e-2f32;
    let d = m.dims.d;
    for (pi, spec) in specs.iter().enumerate() {
        assert_eq!(
            spec.shape.iter().product::<usize>(),
            g[pi].len(),
            "{}",
            spec.name
        );
        let n = g[pi].len();
        let idx: Vec<usize> = if spec.name == "model.embed_tokens.weight" {
            [3usize, 42, 8, 30]
                .iter()
                .flat_map(|&t| [t * d + 1, t * d + 17, t * d + 30])
                .collect()
        } else {
            (0..8).map(|i| (i * 7919 + 13) % n).collect()
        };
        let (mut num, mut den) = (0.0f64, 0.0f64);
        for &i in &idx {
            let at = |m: &mut Llama, delta: f32| {
                m.params_mut().unwrap()[pi][i] += delta;
            };
            at(&mut m, eps);
            let lp = m.loss(&seqs, &targets).unwrap();
            at(&mut m, -2.0 * eps);
            let lm = m.loss(&seqs, &targets).unwrap();
            at(&mut m, eps);
            let fd = (lp - lm) / (2.0 * eps as f64);
            num += (fd - g[pi][i] as f64).powi(2);
            den += fd.powi(2);
        }
        assert!(
            den > 1e-12,
            "{}: finite differences are all zero",
            spec.name
        );
        let rel = (num / den).sqrt();
        assert!(
            rel < 2e-2,
            "{}: relative L2 error vs finite differences {rel}",
            spec.name
        );
    }
}

#[test]
fn weight_grads_match_fd_llama_tied() {
    check_weights_fd(model(config(serde_json::json!({})), 7));
}

#[test]
fn weight_grads_match_fd_untied_qkv_bias() {
    check_weights_fd(model(
        config(serde_json::json!({"model_type": "qwen2", "tie_word_embeddings": false})),
        7,
    ));
}

#[test]
fn weight_grads_match_fd_sliding_window() {
    check_weights_fd(model(
        config(serde_json::json!({"model_type": "mistral", "sliding_window": 4})),
        3,
    ));
}

#[test]
fn weight_grads_match_fd_qwen3_qk_norm() {
    check_weights_fd(model(
        config(
            serde_json::json!({"model_type": "qwen3", "head_dim": 16, "tie_word_embeddings": false}),
        ),
        5,
    ));
}

#[test]
fn weight_grads_match_fd_gemma3() {
    check_weights_fd(model(gemma3(), 5));
}

/// The input gradient of the full backward is the prompt-only backward's, bit for bit.
#[test]
fn full_backward_gives_the_same_prompt_gradient() {
    for cfg in [config(serde_json::json!({})), gemma3()] {
        let m = model(cfg, 9);
        let d = m.dims.d;
        let p = 3;
        let pr: Vec<f32> = (0..p * d)
            .map(|i| ((i * 37 % 101) as f32 / 101.0 - 0.5) * 0.8)
            .collect();
        let seqs: Vec<SeqInput> = SEQS
            .iter()
            .map(|ids| SeqInput {
                prompt: Some(PromptRef::new(&pr, d).unwrap()),
                ids,
            })
            .collect();
        let mut targets = targets();
        let mut r0 = 0;
        let mut k = 0;
        for s in SEQS {
            for _ in 1..s.len() {
                targets[k].row += r0 + p;
                k += 1;
            }
            r0 += p;
        }
        let (l1, dx1, lens) = m.loss_and_input_grad(&seqs, &targets).unwrap();
        let mut grads = Grads::new(&m);
        let (l2, dx2, _) = m.loss_and_grads(&seqs, &targets, &mut grads).unwrap();
        assert_eq!(l1, l2);
        assert_eq!(
            prompt_grad(&dx1, &lens, p, d),
            prompt_grad(&dx2, &lens, p, d)
        );
    }
}

/// Rank classification through the full-gradient path: the same loss as the prompt-free
/// evaluation, and the gradient of a sampled weight matches finite differences.
#[test]
fn classification_weight_grads_match_fd() {
    let mut m = model(config(serde_json::json!({"tie_word_embeddings": false})), 4);
    let batch = vec![
        ClassExample {
            ids: vec![3, 17, 42, 5],
            cands: vec![vec![9], vec![11]],
            label: Some(1),
        },
        ClassExample {
            ids: vec![8, 1, 30],
            cands: vec![vec![9], vec![11]],
            label: Some(0),
        },
        ClassExample {
            ids: vec![2, 4],
            cands: vec![vec![7, 12], vec![13]],
            label: Some(0),
        },
    ];
    let mut grads = Grads::new(&m);
    let r = objective::classify_batch_weights(&m, &batch, false, &mut grads).unwrap();
    let r0 = objective::classify_batch(&m, None, &batch, false, false).unwrap();
    assert!((r.loss - r0.loss).abs() < 1e-9);
    let g: Vec<Vec<f32>> = grads.buffers_mut().iter().map(|b| b.to_vec()).collect();
    let eps = 1e-2f32;
    for (pi, i) in [
        (1usize, 9 * 32 + 5),
        (1, 11 * 32 + 2),
        (5, 100),
        (9, 77),
        (0, 3 * 32 + 4),
        (12, 7),
    ] {
        let mut loss_at = |delta: f32| {
            m.params_mut().unwrap()[pi][i] += delta;
            let l = objective::classify_batch(&m, None, &batch, false, false)
                .unwrap()
                .loss;
            m.params_mut().unwrap()[pi][i] -= delta;
            l
        };
        let fd = (loss_at(eps) - loss_at(-eps)) / (2.0 * eps as f64);
        assert!(
            (fd - g[pi][i] as f64).abs() < 2e-2 * fd.abs().max(1e-2),
            "param {pi}[{i}]: fd {fd} vs {}",
            g[pi][i]
        );
    }
}

/// `hf_weights` is what a checkpoint holds: a model rebuilt from it computes the same loss
/// (Gemma's norms go back to w of (1 + w)).
#[test]
fn hf_export_reloads_to_the_same_model() {
    for cfg in [
        config(serde_json::json!({"model_type": "qwen2", "tie_word_embeddings": false})),
        gemma3(),
    ] {
        let m = model(cfg.clone(), 6);
        let m2 = Llama::new(cfg, m.hf_weights().unwrap(), "export").unwrap();
        assert_eq!(
            m.loss(&seqs(), &targets()).unwrap(),
            m2.loss(&seqs(), &targets()).unwrap()
        );
    }
}

/// `Grads::only` (LoRA's gradients) computes the kept parameters' gradients bit-identical
/// to the full backward's and leaves the others empty; the loss and input gradient are
/// unchanged.
#[test]
fn partial_weight_grads_equal_the_full_ones() {
    for cfg in [config(serde_json::json!({})), gemma3()] {
        let m = model(cfg, 9);
        let (seqs, targets) = (seqs(), targets());
        let mut all = Grads::new(&m);
        let (l1, dx1, _) = m.loss_and_grads(&seqs, &targets, &mut all).unwrap();
        let n = all.buffers_mut().len();
        // The q and v projections of every block (as LoRA's default targets), plus the last
        // parameter.
        let names: Vec<String> = m.param_specs().into_iter().map(|p| p.name).collect();
        let mut keep: Vec<usize> = (0..n)
            .filter(|&i| names[i].ends_with("q_proj.weight") || names[i].ends_with("v_proj.weight"))
            .collect();
        keep.push(n - 1);
        assert!(keep.len() > 2);
        let mut some = Grads::only(&m, &keep);
        let (l2, dx2, _) = m.loss_and_grads(&seqs, &targets, &mut some).unwrap();
        assert_eq!(l1.to_bits(), l2.to_bits());
        assert_eq!(dx1, dx2);
        let (a, b) = (all.buffers_mut(), some.buffers_mut());
        for i in 0..n {
            if keep.contains(&i) {
                assert_eq!(a[i], b[i], "{}", names[i]);
            } else {
                assert!(b[i].is_empty(), "{} should be skipped", names[i]);
            }
        }
    }
}
