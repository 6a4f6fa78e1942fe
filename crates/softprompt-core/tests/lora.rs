//! LoRA (the `compare` baseline): the gradients of A and B against central finite
//! differences of the merged model's loss on a tiny random model; merging then restoring
//! leaves the weights bit-identical; the PEFT-named adapter file.

mod common;

use common::tiny_llama;
use softprompt_core::model::input::{SeqInput, Target};
use softprompt_core::model::llama::grads::Grads;
use softprompt_core::train::lora::{Lora, DEFAULT_ALPHA, DEFAULT_MODULES, DEFAULT_RANK};

const SEQS: [&[u32]; 2] = [&[3, 17, 42, 5, 60, 9, 11], &[8, 1, 30, 3]];

fn batch() -> (Vec<SeqInput<'static>>, Vec<Target>) {
    let count: usize = SEQS.iter().map(|s| s.len() - 1).sum();
    let (mut t, mut r0) = (Vec::new(), 0);
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
    let seqs = SEQS
        .iter()
        .map(|ids| SeqInput { prompt: None, ids })
        .collect();
    (seqs, t)
}

#[test]
fn lora_grads_match_finite_differences() {
    let mut m = tiny_llama(7);
    let mut lora = Lora::new(&m, 4, DEFAULT_ALPHA, &DEFAULT_MODULES, 1).unwrap();
    // q and v of both layers.
    assert_eq!(lora.targets.len(), 4);
    assert!(lora.targets[0]
        .name
        .ends_with("layers.0.self_attn.q_proj.weight"));
    // B = 0 at init gives dA = 0; a nonzero B exercises both formulas.
    for (j, t) in lora.targets.iter_mut().enumerate() {
        for (i, b) in t.b.iter_mut().enumerate() {
            *b = 0.05 * (((i * 37 + j * 11) % 17) as f32 / 8.0 - 1.0);
        }
    }
    let (seqs, targets) = batch();
    lora.merge(&mut m).unwrap();
    let mut grads = Grads::new(&m);
    m.loss_and_grads(&seqs, &targets, &mut grads).unwrap();
    let ab = lora.grads(&mut grads);
    let eps = 1e-2f32;
    for (ti, (da, db)) in ab.iter().enumerate() {
        for which in 0..2 {
            let n = if which == 0 {
                lora.targets[ti].a.len()
            } else {
                lora.targets[ti].b.len()
            };
            let g = if which == 0 { da } else { db };
            let (mut num, mut den) = (0.0f64, 0.0f64);
            for i in (0..8).map(|k| (k * 7919 + 13) % n) {
                let mut loss_at = |delta: f32| {
                    let t = &mut lora.targets[ti];
                    let p = if which == 0 { &mut t.a } else { &mut t.b };
                    p[i] += delta;
                    lora.merge(&mut m).unwrap();
                    let l = m.loss(&seqs, &targets).unwrap();
                    let t = &mut lora.targets[ti];
                    let p = if which == 0 { &mut t.a } else { &mut t.b };
                    p[i] -= delta;
                    l
                };
                let fd = (loss_at(eps) - loss_at(-eps)) / (2.0 * eps as f64);
                num += (fd - g[i] as f64).powi(2);
                den += fd.powi(2);
            }
            let what = format!("{} {}", lora.targets[ti].name, ["A", "B"][which]);
            assert!(den > 1e-12, "{what}: finite differences are all zero");
            let rel = (num / den).sqrt();
            assert!(rel < 2e-2, "{what}: relative L2 error vs FD {rel}");
        }
    }
}

#[test]
fn merge_then_restore_is_bit_identical_and_adapter_is_peft_named() {
    let mut m = tiny_llama(3);
    let before: Vec<Vec<f32>> = m.params().unwrap().iter().map(|p| p.to_vec()).collect();
    let mut lora = Lora::new(&m, DEFAULT_RANK, DEFAULT_ALPHA, &DEFAULT_MODULES, 2).unwrap();
    // r (D_in + D_out) per matrix: q [32, 32], v [16, 32].
    assert_eq!(lora.trainable_parameters(), 2 * 8 * (64 + 48));
    // Fresh adapters (B = 0) merge to the same weights.
    lora.merge(&mut m).unwrap();
    assert_eq!(
        m.params()
            .unwrap()
            .iter()
            .map(|p| p.to_vec())
            .collect::<Vec<_>>(),
        before
    );
    lora.targets[1].b[5] = 0.3;
    lora.merge(&mut m).unwrap();
    let p1 = lora.targets[1].param;
    assert_ne!(m.params().unwrap()[p1], &before[p1][..]);
    lora.restore(&mut m).unwrap();
    assert_eq!(
        m.params()
            .unwrap()
            .iter()
            .map(|p| p.to_vec())
            .collect::<Vec<_>>(),
        before
    );

    let dir = tempfile::tempdir().unwrap();
    let bytes = lora.save(dir.path(), "tiny").unwrap();
    let st = std::fs::read(dir.path().join("adapter_model.safetensors")).unwrap();
    let cfg = std::fs::read(dir.path().join("adapter_config.json")).unwrap();
    assert_eq!(bytes as usize, st.len() + cfg.len());
    let t = safetensors::SafeTensors::deserialize(&st).unwrap();
    let a = t
        .tensor("base_model.model.model.layers.1.self_attn.v_proj.lora_A.weight")
        .unwrap();
    assert_eq!(a.shape(), &[8, 32]);
    let b = t
        .tensor("base_model.model.model.layers.0.self_attn.v_proj.lora_B.weight")
        .unwrap();
    assert_eq!(b.shape(), &[16, 8]);
    assert_eq!(
        f32::from_le_bytes(b.data()[20..24].try_into().unwrap()),
        0.3
    );
    assert_eq!(t.len(), 8);
    let c: serde_json::Value = serde_json::from_slice(&cfg).unwrap();
    assert_eq!(c["peft_type"], "LORA");
    assert_eq!(c["r"], 8);
}
