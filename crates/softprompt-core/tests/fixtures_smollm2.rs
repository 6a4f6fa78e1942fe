//! Reproduce PyTorch + transformers + PEFT (`tests/fixtures/smollm2-135m`) from the GGUF:
//! token ids, log-probs with and without the soft prompt, last logits, the batch loss, the
//! prompt gradient and greedy decoding with and without the KV cache.

mod common;

use common::{fixture_dir, read_safetensors, smollm};
use softprompt_core::infer::{self, Sampling};
use softprompt_core::model::input::{Example, PromptRef};

struct Fixture {
    texts: Vec<String>,
    t: std::collections::HashMap<String, (Vec<usize>, Vec<f64>)>,
    prompt: Vec<f32>,
}

fn fixture() -> Fixture {
    let dir = fixture_dir("smollm2-135m");
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("meta.json")).unwrap()).unwrap();
    let texts = meta["texts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_string())
        .collect();
    let t = read_safetensors(&dir.join("expected.safetensors"));
    let p = read_safetensors(&dir.join("prompt/adapter_model.safetensors"));
    let prompt = p["prompt_embeddings"].1.iter().map(|&x| x as f32).collect();
    Fixture { texts, t, prompt }
}

fn ids_of(f: &Fixture, i: usize) -> Vec<u32> {
    f.t[&format!("ids_{i}")]
        .1
        .iter()
        .map(|&x| x as u32)
        .collect()
}

fn max_abs(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

#[test]
fn token_ids_match_transformers() {
    let (_, tok) = smollm();
    let f = fixture();
    for (i, text) in f.texts.iter().enumerate() {
        let got = tok.encode(text.as_str(), false).unwrap().get_ids().to_vec();
        assert_eq!(got, ids_of(&f, i), "ids of text {i}");
    }
}

#[test]
fn logprobs_without_prompt_match() {
    let (m, _) = smollm();
    let f = fixture();
    for i in 0..f.texts.len() {
        let got = infer::score(m, None, &ids_of(&f, i)).unwrap();
        let err = max_abs(&got, &f.t[&format!("logprobs_plain_{i}")].1);
        eprintln!("text {i}: max |logprob diff| {err:.2e}");
        assert!(err < 1e-3, "text {i}: max |logprob diff| {err}");
    }
}

#[test]
fn logprobs_and_last_logits_with_prompt_match() {
    let (m, _) = smollm();
    let f = fixture();
    for i in 0..f.texts.len() {
        let ids = ids_of(&f, i);
        let got =
            infer::score(m, Some(PromptRef::new(&f.prompt, m.dims.d).unwrap()), &ids).unwrap();
        let err = max_abs(&got, &f.t[&format!("logprobs_prompt_{i}")].1);
        eprintln!("text {i}: max |logprob diff| {err:.2e}");
        assert!(err < 1e-3, "text {i}: max |logprob diff| {err}");
        let last: Vec<f64> =
            infer::last_logits(m, Some(PromptRef::new(&f.prompt, m.dims.d).unwrap()), &ids)
                .unwrap()
                .iter()
                .map(|&x| x as f64)
                .collect();
        let err = max_abs(&last, &f.t[&format!("lastlogits_prompt_{i}")].1);
        assert!(err < 2e-3, "text {i}: max |last logit diff| {err}");
    }
}

#[test]
fn batch_loss_and_prompt_gradient_match() {
    let (m, _) = smollm();
    let f = fixture();
    let all: Vec<Vec<u32>> = (0..f.texts.len()).map(|i| ids_of(&f, i)).collect();
    let count: usize = all.iter().map(|x| x.len()).sum();
    let batch: Vec<Example> = all
        .into_iter()
        .map(|ids| Example {
            targets: (0..ids.len()).map(|t| (t, 1.0 / count as f32)).collect(),
            ids,
        })
        .collect();
    let (loss, grad) = m
        .prompt_loss_and_grad(PromptRef::new(&f.prompt, m.dims.d).unwrap(), &batch)
        .unwrap();
    let want = f.t["loss_prompt"].1[0];
    assert!(((loss - want) / want).abs() < 1e-4, "loss {loss} vs {want}");
    let g_ref = &f.t["grad_prompt"].1;
    assert_eq!(f.t["grad_prompt"].0, vec![20, 576]);
    let rel = common::rel_l2(&grad, g_ref);
    eprintln!("loss {loss} vs {want}; grad rel L2 {rel:.2e}");
    assert!(rel < 1e-3, "grad_prompt relative L2 error {rel}");
}

#[test]
fn greedy_matches_full_forward_with_and_without_cache() {
    let (m, _) = smollm();
    let f = fixture();
    let want: Vec<u32> = f.t["greedy_prompt_0_fullforward"]
        .1
        .iter()
        .map(|&x| x as u32)
        .collect();
    let mut s = Sampling {
        max_new_tokens: 16,
        min_new_tokens: 16,
        eos: vec![2],
        ..Default::default()
    };
    let cached = infer::generate(
        m,
        Some(PromptRef::new(&f.prompt, m.dims.d).unwrap()),
        &ids_of(&f, 0),
        &s,
        |_| true,
    )
    .unwrap();
    assert_eq!(cached, want, "cached greedy");
    s.no_cache = true;
    let full = infer::generate(
        m,
        Some(PromptRef::new(&f.prompt, m.dims.d).unwrap()),
        &ids_of(&f, 0),
        &s,
        |_| true,
    )
    .unwrap();
    assert_eq!(full, want, "no-cache greedy");
}

/// The same numbers from a Hugging Face folder (sharded safetensors + config.json +
/// tokenizer.json) written from the GGUF by our own converter.
#[test]
fn hf_folder_of_the_same_weights_reproduces_the_fixture() {
    let f = fixture();
    let gguf = softprompt_core::model::load::fetch::fetch_alias("smollm2-135m").unwrap();
    let lw = softprompt_core::model::load::gguf::load_gguf(&gguf).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("SmolLM2-135M-Instruct-hf");
    softprompt_core::model::load::hf::save_hf_folder(&dir, &lw, Some(200 << 20)).unwrap();
    assert!(
        dir.join("model.safetensors.index.json").is_file(),
        "expected a sharded folder"
    );
    drop(lw);
    let hf = softprompt_core::model::FrozenModel::load(dir.to_str().unwrap()).unwrap();
    assert_eq!(
        hf.fingerprint,
        softprompt_core::model::FrozenModel::load("smollm2-135m")
            .unwrap()
            .fingerprint
    );
    for i in 0..f.texts.len() {
        let ids = hf.encode(&f.texts[i]).unwrap();
        assert_eq!(ids, ids_of(&f, i));
        let got = infer::score(
            &hf.llama,
            Some(PromptRef::new(&f.prompt, hf.llama.dims.d).unwrap()),
            &ids,
        )
        .unwrap();
        let err = max_abs(&got, &f.t[&format!("logprobs_prompt_{i}")].1);
        assert!(err < 1e-3, "HF folder, text {i}: max |logprob diff| {err}");
    }
}
