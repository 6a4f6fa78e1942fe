//! The prompt gradient against central finite differences on tiny random models, and the
//! packed batch / KV-cache paths against the plain forward.

use softprompt_core::model::input::{Example, PromptRef, SeqInput};
use softprompt_core::model::llama::{random_weights, KvCache, Llama};
use softprompt_core::model::LlamaConfig;

mod common;
use common::{test_rows as prompt, tiny_from, tiny_gemma3_config, tiny_qwen3_config, two_texts};

fn batch() -> Vec<Example> {
    two_texts(0)
}

fn tiny_config(model_type: &str, tie: bool) -> LlamaConfig {
    common::tiny_config(serde_json::json!({"model_type": model_type, "tie_word_embeddings": tie}))
}

fn tiny(model_type: &str, tie: bool) -> Llama {
    let cfg = tiny_config(model_type, tie);
    let w = random_weights(&cfg, 7);
    Llama::new(cfg, w, "tiny").unwrap()
}

fn check_fd(model: &Llama) {
    let d = model.dims.d;
    let pr = prompt(3, d);
    let ex = batch();
    let (loss, grad) = model
        .prompt_loss_and_grad(PromptRef::new(&pr, model.dims.d).unwrap(), &ex)
        .unwrap();
    let loss2 = model
        .prompt_loss(PromptRef::new(&pr, model.dims.d).unwrap(), &ex)
        .unwrap();
    assert!(
        (loss - loss2).abs() < 1e-6,
        "loss with and without tape: {loss} vs {loss2}"
    );
    assert!(
        grad.iter().any(|g| g.abs() > 1e-4),
        "prompt gradient is zero"
    );
    let rel = common::fd_rel_error(&pr, &grad, 5, |p| {
        model
            .prompt_loss(PromptRef::new(p, model.dims.d).unwrap(), &ex)
            .unwrap()
    });
    assert!(
        rel < 1e-2,
        "relative L2 error of the prompt gradient vs finite differences: {rel}"
    );
}

#[test]
fn prompt_grad_matches_finite_differences_tied() {
    check_fd(&tiny("llama", true));
}

#[test]
fn prompt_grad_matches_finite_differences_untied_qkv_bias() {
    check_fd(&tiny("qwen2", false));
}

#[test]
fn prompt_grad_matches_finite_differences_sliding_window() {
    let mut cfg = tiny_config("mistral", true);
    cfg.sliding_window = Some(4);
    let w = random_weights(&cfg, 3);
    check_fd(&Llama::new(cfg, w, "tiny").unwrap());
}

#[test]
fn prompt_grad_matches_finite_differences_gemma3() {
    check_fd(&tiny_from(tiny_gemma3_config(), 5));
}

#[test]
fn prompt_grad_matches_finite_differences_qwen3() {
    check_fd(&tiny_from(tiny_qwen3_config(), 5));
}

#[test]
fn packed_batch_and_kv_cache_gemma3_qwen3() {
    for cfg in [tiny_gemma3_config(), tiny_qwen3_config()] {
        let m = tiny_from(cfg, 11);
        check_packed(&m);
        check_cached(&m);
    }
}

/// Gemma 3's sliding window is live in the tiny model: changing a token more than 4
/// positions back changes nothing in a local-only model, and something in the global one.
#[test]
fn gemma3_local_layers_see_only_the_window() {
    let mut cfg = tiny_gemma3_config();
    cfg.layer_types = Some(vec!["sliding_attention".into(); 2]);
    let local = tiny_from(cfg, 2);
    let global = tiny_from(tiny_gemma3_config(), 2);
    // Two local layers: the last row sees 2 * 3 + 1 = 7 positions at most.
    let a: Vec<u32> = vec![1, 2, 3, 4, 5, 6, 7, 8, 9, 10];
    let mut b = a.clone();
    b[0] = 40;
    let last = |m: &Llama, ids: &[u32]| -> Vec<f32> {
        let (mut x, lens) = m.embed_batch(&[SeqInput { prompt: None, ids }]).unwrap();
        let mut c = vec![KvCache::new(m.n_layers())];
        m.forward(&mut x, &lens, &mut c, false).unwrap();
        x[(ids.len() - 1) * m.dims.d..].to_vec()
    };
    let diff = |m: &Llama| {
        last(m, &a)
            .iter()
            .zip(last(m, &b))
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max)
    };
    assert_eq!(diff(&local), 0.0, "a local-only model saw past its window");
    assert!(
        diff(&global) > 1e-4,
        "the global layer should see the first token"
    );
    // The token embedding is scaled by sqrt(hidden), a prompt row is not.
    let row = global.input_rows(&[7]).unwrap();
    let want: Vec<f32> = global
        .embed
        .row(7)
        .iter()
        .map(|v| v * (32f32).sqrt())
        .collect();
    assert_eq!(row, want);
}

/// A packed batch of unequal lengths gives each sequence exactly what it gets alone.
#[test]
fn packed_batch_equals_single_sequences() {
    check_packed(&tiny("llama", true));
}

fn check_packed(m: &Llama) {
    let d = m.dims.d;
    let pr = prompt(3, d);
    let ids: [&[u32]; 3] = [&[3, 17, 42, 5, 60, 9, 11], &[8, 1, 30], &[2]];
    let seqs: Vec<SeqInput> = ids
        .iter()
        .map(|i| SeqInput {
            prompt: Some(PromptRef::new(&pr, d).unwrap()),
            ids: i,
        })
        .collect();
    let (mut x, lens) = m.embed_batch(&seqs).unwrap();
    let mut caches: Vec<KvCache> = lens.iter().map(|_| KvCache::new(m.n_layers())).collect();
    m.forward(&mut x, &lens, &mut caches, false).unwrap();
    let mut r0 = 0;
    for (s, len) in seqs.iter().zip(&lens) {
        let (mut y, l1) = m.embed_batch(std::slice::from_ref(s)).unwrap();
        let mut c = vec![KvCache::new(m.n_layers())];
        m.forward(&mut y, &l1, &mut c, false).unwrap();
        let diff = y
            .iter()
            .zip(&x[r0 * d..(r0 + len) * d])
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(diff < 1e-5, "packed vs alone: max diff {diff}");
        r0 += len;
    }
}

/// Feeding a sequence in pieces through the KV cache equals one full forward.
#[test]
fn kv_cache_matches_full_forward() {
    check_cached(&tiny("llama", true));
}

fn check_cached(m: &Llama) {
    let d = m.dims.d;
    let pr = prompt(3, d);
    let ids: Vec<u32> = vec![3, 17, 42, 5, 60, 9, 11];
    let (mut full, lens) = m
        .embed_batch(&[SeqInput {
            prompt: Some(PromptRef::new(&pr, d).unwrap()),
            ids: &ids,
        }])
        .unwrap();
    let mut c = vec![KvCache::new(m.n_layers())];
    m.forward(&mut full, &lens, &mut c, false).unwrap();
    // Prompt + 4 tokens, then one token at a time.
    let mut c = vec![KvCache::new(m.n_layers())];
    let (mut x, l) = m
        .embed_batch(&[SeqInput {
            prompt: Some(PromptRef::new(&pr, d).unwrap()),
            ids: &ids[..4],
        }])
        .unwrap();
    m.forward(&mut x, &l, &mut c, false).unwrap();
    let mut got = x;
    for t in 4..ids.len() {
        let (mut x, l) = m
            .embed_batch(&[SeqInput {
                prompt: None,
                ids: &ids[t..t + 1],
            }])
            .unwrap();
        m.forward(&mut x, &l, &mut c, false).unwrap();
        got.extend_from_slice(&x);
    }
    let diff = got
        .iter()
        .zip(&full)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    assert!(diff < 1e-5, "cached vs full: max diff {diff}");
}

/// Central differences of an objective's loss w.r.t. the prompt, on every 4th coordinate.
fn fd_rel_error(m: &Llama, pr: &[f32], f: &dyn Fn(&[f32], bool) -> (f64, Option<Vec<f32>>)) -> f64 {
    let (_, grad) = f(pr, true);
    let grad = grad.unwrap();
    assert!(grad.iter().any(|g| g.abs() > 1e-5), "zero gradient");
    let _ = m;
    common::fd_rel_error(pr, &grad, 4, |p| f(p, false).0)
}

#[test]
fn rank_classification_grad_matches_finite_differences() {
    use softprompt_core::infer::objective::{classify_batch, ClassExample};
    let m = tiny("llama", true);
    let pr = prompt(3, m.dims.d);
    // Single-token candidates (one sequence per example) and multi-token ones (one each).
    let batch = vec![
        ClassExample {
            ids: vec![3, 17, 42],
            cands: vec![vec![5], vec![9]],
            label: Some(1),
        },
        ClassExample {
            ids: vec![8, 1],
            cands: vec![vec![5], vec![9]],
            label: Some(0),
        },
        ClassExample {
            ids: vec![20, 21, 22, 23],
            cands: vec![vec![30, 31], vec![40], vec![41, 42, 43]],
            label: Some(2),
        },
        ClassExample {
            ids: vec![7],
            cands: vec![vec![5], vec![9]],
            label: None,
        },
    ];
    for norm in [false, true] {
        let f = |p: &[f32], g: bool| {
            let r = classify_batch(
                &m,
                Some(PromptRef::new(p, m.dims.d).unwrap()),
                &batch,
                norm,
                g,
            )
            .unwrap();
            (r.loss, r.grad)
        };
        let rel = fd_rel_error(&m, &pr, &f);
        assert!(rel < 1e-2, "length_norm={norm}: relative error {rel}");
    }
    // Scores are log-probabilities: the single-token ones of an example are <= 0 and the
    // loss equals the cross-entropy of the scores.
    let r = classify_batch(
        &m,
        Some(PromptRef::new(&pr, m.dims.d).unwrap()),
        &batch,
        false,
        false,
    )
    .unwrap();
    assert!(r.scores.iter().flatten().all(|s| *s <= 0.0));
}

#[test]
fn lm_objective_grad_matches_finite_differences() {
    use softprompt_core::infer::objective::{lm_batch, GenExample};
    let m = tiny("qwen2", false);
    let pr = prompt(4, m.dims.d);
    let batch = vec![
        GenExample {
            ids: vec![3, 17, 42],
            target: vec![5, 6, 7],
        },
        GenExample {
            ids: vec![8],
            target: vec![9],
        },
    ];
    let f = |p: &[f32], g: bool| {
        let r = lm_batch(&m, Some(PromptRef::new(p, m.dims.d).unwrap()), &batch, g).unwrap();
        (r.loss, r.grad)
    };
    let rel = fd_rel_error(&m, &pr, &f);
    assert!(rel < 1e-2, "relative error {rel}");
}

/// Final hidden rows of `seqs` run as one packed batch on top of `caches`.
fn hidden_rows(model: &Llama, seqs: &[SeqInput], caches: &mut [KvCache]) -> Vec<f32> {
    let (mut x, lens) = model.embed_batch(seqs).unwrap();
    model.forward(&mut x, &lens, caches, false).unwrap();
    x
}

/// Exact mode (the server's): a sequence's hidden states are bit-identical alone, packed with
/// other sequences, and with its soft-prompt prefix taken from a cache; and they agree with
/// the default blocked-GEMM mode to float error.
#[test]
fn exact_mode_is_batch_and_prefix_invariant() {
    for ty in ["llama", "mistral", "gemma3", "qwen3"] {
        let mut cfg = match ty {
            "gemma3" => tiny_gemma3_config(),
            "qwen3" => tiny_qwen3_config(),
            _ => tiny_config(ty, true),
        };
        if ty != "gemma3" {
            cfg.sliding_window = Some(5);
        }
        let w = random_weights(&cfg, 11);
        let mut model = Llama::new(cfg, w, "tiny").unwrap();
        let d = model.dims.d;
        let nl = model.n_layers();
        let pr = prompt(4, d);
        let a: Vec<u32> = vec![3, 17, 42, 5, 60, 9, 11, 2, 33];
        let b: Vec<u32> = vec![8, 1, 30];
        let default_mode = hidden_rows(
            &model,
            &[SeqInput {
                prompt: Some(PromptRef::new(&pr, d).unwrap()),
                ids: &a,
            }],
            &mut [KvCache::new(nl)],
        );
        model.exact = true;
        let alone = hidden_rows(
            &model,
            &[SeqInput {
                prompt: Some(PromptRef::new(&pr, d).unwrap()),
                ids: &a,
            }],
            &mut [KvCache::new(nl)],
        );
        let max = alone
            .iter()
            .zip(&default_mode)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max);
        assert!(max < 1e-4, "{ty}: exact vs blocked mode differ by {max}");
        // Packed after another sequence: the same rows, bit for bit.
        let packed = hidden_rows(
            &model,
            &[
                SeqInput {
                    prompt: None,
                    ids: &b,
                },
                SeqInput {
                    prompt: Some(PromptRef::new(&pr, d).unwrap()),
                    ids: &a,
                },
            ],
            &mut [KvCache::new(nl), KvCache::new(nl)],
        );
        assert_eq!(
            &packed[b.len() * d..],
            &alone[..],
            "{ty}: packing changed the rows"
        );
        // The prompt's keys/values computed once, then the text on top of that cache.
        let mut cache = KvCache::new(nl);
        hidden_rows(
            &model,
            &[SeqInput {
                prompt: Some(PromptRef::new(&pr, d).unwrap()),
                ids: &[],
            }],
            std::slice::from_mut(&mut cache),
        );
        let mut reused = cache.clone();
        let text = hidden_rows(
            &model,
            &[SeqInput {
                prompt: None,
                ids: &a,
            }],
            std::slice::from_mut(&mut reused),
        );
        assert_eq!(
            &text[..],
            &alone[4 * d..],
            "{ty}: prefix cache changed the rows"
        );
        // Decoding one row at a time beside an unrelated sequence: the same as all at once.
        let mut c1 = cache.clone();
        let mut other = KvCache::new(nl);
        hidden_rows(
            &model,
            &[SeqInput {
                prompt: None,
                ids: &b,
            }],
            std::slice::from_mut(&mut other),
        );
        for (t, tok) in a.iter().enumerate() {
            let mut cs = [other, c1];
            let rows = hidden_rows(
                &model,
                &[
                    SeqInput {
                        prompt: None,
                        ids: &[5],
                    },
                    SeqInput {
                        prompt: None,
                        ids: std::slice::from_ref(tok),
                    },
                ],
                &mut cs,
            );
            [other, c1] = cs;
            assert_eq!(
                &rows[d..],
                &alone[(4 + t) * d..(5 + t) * d],
                "{ty}: decode row {t}"
            );
        }
    }
}
