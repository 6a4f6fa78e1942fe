//! A quantized frozen base (`--weights quantized`): the GGUF blocks stay in memory and both
//! products dequantize tiles on the fly. The values are the f32 path's values, so the
//! PyTorch fixtures must still match, and loss and prompt gradient must equal the f32
//! model's up to summation order.

mod common;

use common::{fixture_dir, gemma, read_safetensors, smollm, split};
use softprompt_core::compute::weight::WeightFormat;
use softprompt_core::infer;
use softprompt_core::model::input::{Example, PromptRef};
use softprompt_core::model::llama::Llama;
use std::sync::OnceLock;

fn smollm_q() -> &'static (Llama, tokenizers::Tokenizer) {
    static M: OnceLock<(Llama, tokenizers::Tokenizer)> = OnceLock::new();
    M.get_or_init(|| {
        split(
            softprompt_core::model::load::load_with("smollm2-135m", WeightFormat::Quantized)
                .expect("load quantized"),
        )
    })
}

type Batch = (Vec<f32>, Vec<Example>, f64, Vec<f64>, Vec<Vec<u32>>);

/// The fixture's prompt, its loss batch (all texts, mean over tokens), PyTorch's loss and
/// prompt gradient, and the texts' ids.
fn fixture_batch(model: &str) -> Batch {
    let dir = fixture_dir(model);
    let t = read_safetensors(&dir.join("expected.safetensors"));
    let p = read_safetensors(&dir.join("prompt/adapter_model.safetensors"));
    let prompt: Vec<f32> = p["prompt_embeddings"].1.iter().map(|&x| x as f32).collect();
    let mut all = Vec::new();
    while let Some((_, v)) = t.get(&format!("ids_{}", all.len())) {
        all.push(v.iter().map(|&x| x as u32).collect::<Vec<u32>>());
    }
    let count: usize = all.iter().map(|x| x.len()).sum();
    let batch = all
        .iter()
        .map(|ids| Example {
            targets: (0..ids.len()).map(|t| (t, 1.0 / count as f32)).collect(),
            ids: ids.clone(),
        })
        .collect();
    (
        prompt,
        batch,
        t["loss_prompt"].1[0],
        t["grad_prompt"].1.clone(),
        all,
    )
}

fn rel_l2(a: &[f32], b: &[f64]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| (*x as f64 - y).powi(2)).sum();
    let den: f64 = b.iter().map(|y| y * y).sum();
    (num / den).sqrt()
}

#[test]
fn quantized_base_keeps_blocks_and_identity() {
    let (q, _) = smollm_q();
    let (f, _) = smollm();
    let (qb, fb) = (q.weight_bytes(), f.weight_bytes());
    eprintln!("weights: quantized {qb} bytes, f32 {fb} bytes");
    assert!(qb * 4 < fb, "quantized {qb} vs f32 {fb}");
    let mut types = Vec::new();
    q.for_each_matrix(|_, w| types.push(w.dtype()));
    assert!(types.contains(&"Q4_1"), "{types:?}");
    assert_eq!(
        softprompt_core::model::fingerprint::model_fingerprint_weight(&q.cfg, &q.embed),
        softprompt_core::model::fingerprint::model_fingerprint_weight(&f.cfg, &f.embed),
        "same model, same fingerprint"
    );
}

#[test]
fn quantized_base_matches_the_fixture_and_the_f32_path() {
    let (q, _) = smollm_q();
    let (f, _) = smollm();
    let (prompt, batch, want_loss, want_grad, ids) = fixture_batch("smollm2-135m");
    let (lq, gq) = q
        .prompt_loss_and_grad(PromptRef::new(&prompt, q.dims.d).unwrap(), &batch)
        .unwrap();
    let (lf, gf) = f
        .prompt_loss_and_grad(PromptRef::new(&prompt, f.dims.d).unwrap(), &batch)
        .unwrap();
    let gf64: Vec<f64> = gf.iter().map(|&x| x as f64).collect();
    let (rel_fix, rel_f32) = (rel_l2(&gq, &want_grad), rel_l2(&gq, &gf64));
    eprintln!(
        "loss quantized {lq} f32 {lf} PyTorch {want_loss}; grad rel L2 vs PyTorch {rel_fix:.2e}, vs f32 {rel_f32:.2e}"
    );
    assert!(((lq - want_loss) / want_loss).abs() < 1e-4);
    assert!(((lq - lf) / lf).abs() < 1e-5);
    assert!(rel_fix < 1e-3 && rel_f32 < 1e-4);
    // Scoring (forward only, few and many rows) agrees with the f32 model.
    for ids in &ids {
        let a = infer::score(q, Some(PromptRef::new(&prompt, q.dims.d).unwrap()), ids).unwrap();
        let b = infer::score(f, Some(PromptRef::new(&prompt, f.dims.d).unwrap()), ids).unwrap();
        let err = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f64::max);
        assert!(err < 1e-4, "max |logprob diff| {err}");
    }
}

#[test]
fn quantized_greedy_matches_the_fixture_with_and_without_cache() {
    let (q, _) = smollm_q();
    let dir = fixture_dir("smollm2-135m");
    let t = read_safetensors(&dir.join("expected.safetensors"));
    let want: Vec<u32> = t["greedy_prompt_0_fullforward"]
        .1
        .iter()
        .map(|&x| x as u32)
        .collect();
    let (prompt, _, _, _, ids) = fixture_batch("smollm2-135m");
    let mut s = infer::Sampling {
        max_new_tokens: 16,
        min_new_tokens: 16,
        eos: vec![2],
        ..Default::default()
    };
    let cached = infer::generate(
        q,
        Some(PromptRef::new(&prompt, q.dims.d).unwrap()),
        &ids[0],
        &s,
        |_| true,
    )
    .unwrap();
    assert_eq!(cached, want, "cached greedy");
    s.no_cache = true;
    let full = infer::generate(
        q,
        Some(PromptRef::new(&prompt, q.dims.d).unwrap()),
        &ids[0],
        &s,
        |_| true,
    )
    .unwrap();
    assert_eq!(full, want, "no-cache greedy");
}

/// Gemma 3's Q4_K_M file mixes Q4_K, Q6_K, Q5_0 and Q8_0 matrices (and a Q6_K/Q8_0 table).
#[test]
fn quantized_gemma_matches_the_fixture_and_the_f32_path() {
    let q = split(
        softprompt_core::model::load::load_with("gemma3-270m", WeightFormat::Quantized)
            .expect("load quantized Gemma"),
    )
    .0;
    let (f, _) = gemma();
    let mut types = Vec::new();
    q.for_each_matrix(|_, w| types.push(w.dtype()));
    types.sort();
    types.dedup();
    eprintln!(
        "Gemma matrices {types:?}: quantized {} bytes, f32 {} bytes",
        q.weight_bytes(),
        f.weight_bytes()
    );
    assert!(
        types.contains(&"Q4_K") && types.contains(&"Q6_K"),
        "{types:?}"
    );
    assert!(q.weight_bytes() * 3 < f.weight_bytes());
    let (prompt, batch, want_loss, want_grad, _) = fixture_batch("gemma3-270m");
    let (lq, gq) = q
        .prompt_loss_and_grad(PromptRef::new(&prompt, q.dims.d).unwrap(), &batch)
        .unwrap();
    let (lf, gf) = f
        .prompt_loss_and_grad(PromptRef::new(&prompt, f.dims.d).unwrap(), &batch)
        .unwrap();
    let gf64: Vec<f64> = gf.iter().map(|&x| x as f64).collect();
    let (rel_fix, rel_f32) = (rel_l2(&gq, &want_grad), rel_l2(&gq, &gf64));
    eprintln!("Gemma loss quantized {lq} f32 {lf} PyTorch {want_loss}; grad rel L2 vs PyTorch {rel_fix:.2e}, vs f32 {rel_f32:.2e}");
    assert!(((lq - want_loss) / want_loss).abs() < 1e-4);
    assert!(((lq - lf) / lf).abs() < 1e-5);
    assert!(rel_fix < 1e-3 && rel_f32 < 1e-4);
}

/// `--weights bf16`: matrices rounded to bf16 and multiplied on AMX tiles (f32 accumulation).
/// A lower-precision mode: its error against the f32 path is measured and bounded here.
#[test]
fn bf16_base_error_against_f32_is_small() {
    let mut m = split(softprompt_core::model::load("smollm2-135m").expect("load")).0;
    m.pack_bf16();
    let (f, _) = smollm();
    let (prompt, batch, want_loss, _, ids) = fixture_batch("smollm2-135m");
    let (lb, gb) = m
        .prompt_loss_and_grad(PromptRef::new(&prompt, m.dims.d).unwrap(), &batch)
        .unwrap();
    let (lf, gf) = f
        .prompt_loss_and_grad(PromptRef::new(&prompt, f.dims.d).unwrap(), &batch)
        .unwrap();
    let gf64: Vec<f64> = gf.iter().map(|&x| x as f64).collect();
    let rel = rel_l2(&gb, &gf64);
    let mut lp_err = 0.0f64;
    for ids in &ids {
        let a = infer::score(&m, Some(PromptRef::new(&prompt, m.dims.d).unwrap()), ids).unwrap();
        let b = infer::score(f, Some(PromptRef::new(&prompt, f.dims.d).unwrap()), ids).unwrap();
        lp_err = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(lp_err, f64::max);
    }
    eprintln!(
        "bf16: loss {lb} vs f32 {lf} (PyTorch {want_loss}), rel {:.2e}; prompt grad rel L2 {rel:.2e}; max |logprob diff| {lp_err:.3}; weights {} bytes (f32 {})",
        ((lb - lf) / lf).abs(),
        m.weight_bytes(),
        f.weight_bytes()
    );
    assert!(((lb - lf) / lf).abs() < 1e-2, "bf16 loss {lb} vs f32 {lf}");
    assert!(rel < 0.1, "bf16 prompt gradient relative L2 error {rel}");
    assert!(lp_err < 0.5, "bf16 max |logprob diff| {lp_err}");
    assert_eq!(m.num_parameters(), f.num_parameters());
}
