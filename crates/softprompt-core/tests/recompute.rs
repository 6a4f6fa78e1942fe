//! Recomputing blocks in the backward (`Llama::recompute`, activation checkpointing) gives
//! the same loss and prompt gradient, bit for bit, as keeping the whole tape: input and deep
//! prompts on tiny Llama, Gemma 3 (sliding window, QK-norm, sandwich norms) and Qwen3 models.

use softprompt_core::model::input::{PromptKind, PromptRef};
use softprompt_core::model::llama::Llama;

mod common;
use common::{test_rows, tiny_from, tiny_gemma3_config, tiny_llama, tiny_qwen3_config};

fn check(mut m: Llama) {
    let ex = common::two_texts(1);
    let d = m.dims.d;
    let rows = test_rows(3, d);
    let prefix = m.prefix_of(PromptRef::new(&rows, d).unwrap()).unwrap();
    let width = m.prefix_width();
    let prompts = [
        PromptRef::new(&rows, d).unwrap(),
        PromptRef::with_kind(&prefix, width, PromptKind::Prefix).unwrap(),
    ];
    for p in prompts {
        m.recompute = false;
        let (loss, grad) = m.prompt_loss_and_grad(p, &ex).unwrap();
        m.recompute = true;
        let (loss_r, grad_r) = m.prompt_loss_and_grad(p, &ex).unwrap();
        assert_eq!(loss.to_bits(), loss_r.to_bits(), "{:?}: loss", p.kind());
        assert_eq!(grad, grad_r, "{:?}: gradient", p.kind());
        assert!(grad.iter().any(|g| g.abs() > 1e-6), "gradient is zero");
    }
}

#[test]
fn recompute_is_bit_identical_llama() {
    check(tiny_llama(7));
}

#[test]
fn recompute_is_bit_identical_gemma3() {
    check(tiny_from(tiny_gemma3_config(), 5));
}

#[test]
fn recompute_is_bit_identical_qwen3() {
    check(tiny_from(tiny_qwen3_config(), 5));
}
