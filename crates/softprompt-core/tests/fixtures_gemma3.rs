//! Reproduce PyTorch + transformers + PEFT (`tests/fixtures/gemma3-270m`) from the Gemma 3
//! 270M GGUF: token ids (with and without `<bos>`), log-probs with and without the soft prompt,
//! last logits, the batch loss, the prompt gradient and greedy decoding with and without the KV
//! cache; then the same from an HF folder written by our converter.

mod common;

use common::{fixture_dir, gemma, read_safetensors};
use softprompt_core::infer::{self, Sampling};
use softprompt_core::model::input::{Example, PromptRef};

struct Fixture {
    texts: Vec<String>,
    t: std::collections::HashMap<String, (Vec<usize>, Vec<f64>)>,
    prompt: Vec<f32>,
}

fn fixture() -> Fixture {
    let dir = fixture_dir("gemma3-270m");
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
    let (_, tok) = gemma();
    let f = fixture();
    let toks: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture_dir("gemma3-270m").join("tokens.json")).unwrap(),
    )
    .unwrap();
    for (i, text) in f.texts.iter().enumerate() {
        // ids_i are the ids with <bos> (add_special_tokens=True).
        let got = tok.encode(text.as_str(), true).unwrap().get_ids().to_vec();
        assert_eq!(got, ids_of(&f, i), "ids (add_special_tokens) of text {i}");
        let plain = tok.encode(text.as_str(), false).unwrap().get_ids().to_vec();
        assert_eq!(
            plain,
            toks["texts"][i]["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u32)
                .collect::<Vec<_>>(),
            "ids of text {i}"
        );
        let special: Vec<u32> = toks["texts"][i]["ids_add_special_tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(got, special);
        // Decoding gives the text back (byte fallback, spaces).
        assert_eq!(tok.decode(&plain, false).unwrap(), *text);
    }
}

#[test]
fn logprobs_without_prompt_match() {
    let (m, _) = gemma();
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
    let (m, _) = gemma();
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
        eprintln!("text {i}: max |last logit diff| {err:.2e}");
        assert!(err < 2e-3, "text {i}: max |last logit diff| {err}");
    }
}

#[test]
fn batch_loss_and_prompt_gradient_match() {
    let (m, _) = gemma();
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
    assert_eq!(f.t["grad_prompt"].0, vec![20, 640]);
    let rel = common::rel_l2(&grad, g_ref);
    eprintln!("loss {loss} vs {want}; grad rel L2 {rel:.2e}");
    assert!(rel < 1e-3, "grad_prompt relative L2 error {rel}");
}

#[test]
fn greedy_matches_full_forward_with_and_without_cache() {
    let (m, _) = gemma();
    let f = fixture();
    let want: Vec<u32> = f.t["greedy_prompt_0_fullforward"]
        .1
        .iter()
        .map(|&x| x as u32)
        .collect();
    let mut s = Sampling {
        max_new_tokens: 16,
        min_new_tokens: 16,
        eos: vec![1],
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
    let gguf = softprompt_core::model::load::fetch::fetch_alias("gemma3-270m").unwrap();
    let lw = softprompt_core::model::load::gguf::load_gguf(&gguf).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("gemma-3-270m-hf");
    softprompt_core::model::load::hf::save_hf_folder(&dir, &lw, Some(200 << 20)).unwrap();
    assert!(
        dir.join("model.safetensors.index.json").is_file(),
        "expected a sharded folder"
    );
    // HF conventions: model_type gemma3_text, RMSNorm weights stored as w (GGUF holds 1 + w).
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["model_type"], "gemma3_text");
    assert_eq!(cfg["hidden_activation"], "gelu_pytorch_tanh");
    assert_eq!(cfg["layer_types"][5], "full_attention");
    assert_eq!(cfg["layer_types"][0], "sliding_attention");
    let raw = softprompt_core::model::load::gguf::GgufFile::open(&gguf)
        .unwrap()
        .tensor_f32("blk.0.attn_norm.weight")
        .unwrap();
    let hf_w = &lw.weights["model.layers.0.input_layernorm.weight"].data;
    let err = raw
        .data
        .iter()
        .zip(hf_w)
        .map(|(g, w)| (g - (w + 1.0)).abs())
        .fold(0.0f32, f32::max);
    assert!(err < 1e-6, "norm stored as w: max |gguf - (w + 1)| = {err}");
    drop(lw);
    let hf = softprompt_core::model::FrozenModel::load(dir.to_str().unwrap()).unwrap();
    assert_eq!(
        hf.fingerprint,
        softprompt_core::model::FrozenModel::load("gemma3-270m")
            .unwrap()
            .fingerprint
    );
    for i in 0..f.texts.len() {
        let ids = hf.encode_input(&f.texts[i]).unwrap();
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

/// A prompt made for Gemma 3 is refused on SmolLM2 and the other way round, with a message
/// naming both sizes; `force` does not bypass the hidden-size check. At equal sizes the
/// fingerprint (which covers model_type and the embedding table) refuses a Gemma prompt on a
/// Llama of the same shape unless forced.
#[test]
fn prompt_of_one_model_is_refused_on_the_other() {
    use softprompt_core::model::fingerprint::model_fingerprint;
    use softprompt_core::model::FrozenModel;
    use softprompt_core::prompt::{self, PromptMeta, SoftPrompt};
    let g = FrozenModel::load("gemma3-270m").unwrap();
    let s = FrozenModel::load("smollm2-135m").unwrap();
    assert_ne!(g.fingerprint, s.fingerprint);
    let tmp = tempfile::tempdir().unwrap();
    for (from, to, name) in [(&g, &s, "Gemma 3 270M"), (&s, &g, "SmolLM2-135M")] {
        let dir = tmp.path().join(name.replace(' ', "_"));
        let emb = prompt::init::from_tokens(from, &[5, 6, 7, 8]).unwrap();
        let meta = PromptMeta::new(
            name,
            from.llama.dims.d,
            Some(from.fingerprint.clone()),
            Some(from.tokenizer_fingerprint.clone()),
        );
        SoftPrompt::new(emb, name, from.llama.n_layers(), from.llama.dims.nq)
            .with_meta(meta)
            .save(&dir)
            .unwrap();
        SoftPrompt::load_for(from, &dir, false).unwrap();
        for force in [false, true] {
            let e = SoftPrompt::load_for(to, &dir, force).expect_err("refused");
            let msg = e.to_string();
            assert!(
                msg.contains(name)
                    && msg.contains(&from.llama.dims.d.to_string())
                    && msg.contains(&to.llama.dims.d.to_string()),
                "{msg}"
            );
        }
    }
    // Same shapes, different family: the fingerprint refuses.
    let cfg = |model_type: &str| -> softprompt_core::model::LlamaConfig {
        serde_json::from_value(serde_json::json!({
            "model_type": model_type, "hidden_size": 16, "intermediate_size": 32,
            "num_hidden_layers": 1, "num_attention_heads": 2, "vocab_size": 10,
        }))
        .unwrap()
    };
    let emb = softprompt_core::Tensor::new(vec![10, 16], vec![0.5; 160]);
    let fp_gemma = model_fingerprint(&cfg("gemma3_text"), &emb);
    let fp_llama = model_fingerprint(&cfg("llama"), &emb);
    assert_ne!(fp_gemma, fp_llama);
    let dir = tmp.path().join("tiny");
    let meta = PromptMeta::new("tiny gemma", 16, Some(fp_gemma.clone()), None);
    SoftPrompt::new(
        softprompt_core::Tensor::new(vec![2, 16], vec![0.1; 32]),
        "tiny",
        1,
        2,
    )
    .with_meta(meta)
    .save(&dir)
    .unwrap();
    let p = SoftPrompt::load(&dir).unwrap();
    p.check_compatible(16, &fp_gemma, false).unwrap();
    let e = p.check_compatible(16, &fp_llama, false).unwrap_err();
    // The error names the setting that overrides the check (the CLI maps it to --force).
    assert!(e.to_string().contains("fingerprint") && e.to_string().contains("force"));
    assert!(
        matches!(e, softprompt_core::Error::Setting { name: "force", .. }),
        "{e:?}"
    );
    p.check_compatible(16, &fp_llama, true).unwrap();
}
