//! Deep prompts against PyTorch + transformers + PEFT prefix tuning
//! (`tests/fixtures/MODEL/prefix`, `expected_prefix.safetensors`, written by
//! `scripts/make_prefix_fixtures.py`): PEFT's adapter folder loads as a prefix, the log-probs
//! of the texts after it, the batch loss and the gradient w.r.t. the prefix match on
//! SmolLM2-135M and Gemma 3 270M, and saving it again writes PEFT's config bytes.

mod common;

use common::{fixture_dir, read_safetensors};
use softprompt_core::infer;
use softprompt_core::model::input::{Example, PromptKind};
use softprompt_core::model::llama::Llama;
use softprompt_core::prompt::SoftPrompt;

fn check(model: &str, m: &Llama) {
    let dir = fixture_dir(model);
    let t = read_safetensors(&dir.join("expected_prefix.safetensors"));
    let sp = SoftPrompt::load(&dir.join("prefix")).unwrap();
    assert_eq!(sp.kind(), PromptKind::Prefix);
    assert_eq!(sp.embeddings.shape, vec![8, m.prefix_width()]);
    assert_eq!(sp.config.token_dim, Some(m.dims.kvdim()));
    assert_eq!(sp.config.num_attention_heads, Some(m.dims.nkv));
    let view = sp.view().unwrap();
    let n_texts = (0..)
        .take_while(|i| t.contains_key(&format!("ids_{i}")))
        .count();
    assert_eq!(n_texts, 3);
    let ids: Vec<Vec<u32>> = (0..n_texts)
        .map(|i| t[&format!("ids_{i}")].1.iter().map(|&x| x as u32).collect())
        .collect();
    for (i, x) in ids.iter().enumerate() {
        let got = infer::score(m, Some(view), x).unwrap();
        let want = &t[&format!("logprobs_prefix_{i}")].1;
        assert_eq!(got.len(), want.len());
        let err = got
            .iter()
            .zip(want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        eprintln!("{model} text {i}: max |log-prob diff| {err:.2e}");
        assert!(err < 2e-3, "{model} text {i}: log-probs differ by {err}");
    }
    // PEFT's loss: mean over every token but each text's first (labels shift by one).
    let count: usize = ids.iter().map(|x| x.len() - 1).sum();
    let batch: Vec<Example> = ids
        .into_iter()
        .map(|ids| Example {
            targets: (1..ids.len()).map(|t| (t, 1.0 / count as f32)).collect(),
            ids,
        })
        .collect();
    let (loss, grad) = m.prompt_loss_and_grad(view, &batch).unwrap();
    let want = t["loss_prefix"].1[0];
    assert!(
        ((loss - want) / want).abs() < 1e-4,
        "{model}: loss {loss} vs {want}"
    );
    let g_ref = &t["grad_prefix"].1;
    assert_eq!(t["grad_prefix"].0, vec![8, m.prefix_width()]);
    let rel = common::rel_l2(&grad, g_ref);
    eprintln!("{model}: loss {loss} vs {want}; prefix grad rel L2 {rel:.2e}");
    assert!(rel < 1e-3, "{model}: grad_prefix relative L2 error {rel}");

    // Saved again, the config is PEFT's bytes and the tensor the same values.
    let out = tempfile::tempdir().unwrap();
    sp.save(out.path()).unwrap();
    assert_eq!(
        std::fs::read_to_string(out.path().join("adapter_config.json")).unwrap(),
        std::fs::read_to_string(dir.join("prefix/adapter_config.json")).unwrap()
    );
    assert_eq!(
        SoftPrompt::load(out.path()).unwrap().embeddings,
        sp.embeddings
    );
}

#[test]
fn peft_prefix_tuning_matches_smollm2() {
    check("smollm2-135m", &common::smollm().0);
}

#[test]
fn peft_prefix_tuning_matches_gemma3() {
    check("gemma3-270m", &common::gemma().0);
}
