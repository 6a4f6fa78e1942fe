//! Quick timing of one prompt-tuning step (forward + input-gradient backward).
use softprompt_core::infer::objective::{classify_batch, ClassExample};
use softprompt_core::model::input::PromptRef;
use softprompt_core::model::FrozenModel;
fn main() {
    let m = FrozenModel::load("smollm2-135m").unwrap();
    let bs: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse().unwrap())
        .unwrap_or(16);
    let len: usize = std::env::args()
        .nth(2)
        .map(|s| s.parse().unwrap())
        .unwrap_or(30);
    let batch: Vec<ClassExample> = (0..bs)
        .map(|i| ClassExample {
            ids: (0..len as u32)
                .map(|t| 100 + (t * 7 + i as u32) % 5000)
                .collect(),
            cands: vec![vec![4], vec![5]],
            label: Some(i % 2),
        })
        .collect();
    let prompt = vec![0.1f32; 20 * 576];
    for _ in 0..3 {
        let t = std::time::Instant::now();
        let r = classify_batch(
            &m.llama,
            Some(PromptRef::new(&prompt, m.llama.dims.d).unwrap()),
            &batch,
            false,
            true,
        )
        .unwrap();
        let fwd = std::time::Instant::now();
        let _ = classify_batch(
            &m.llama,
            Some(PromptRef::new(&prompt, m.llama.dims.d).unwrap()),
            &batch,
            false,
            false,
        )
        .unwrap();
        println!(
            "rows {} step {:.3}s forward-only {:.3}s",
            r.rows,
            (fwd - t).as_secs_f64(),
            fwd.elapsed().as_secs_f64()
        );
    }
}
