//! Prompt transfer (SPoT): the similarities, the ranking, and a whole run on a tiny model.

mod common;

use std::sync::atomic::AtomicBool;

use common::{demo_config, tiny_demo_model};
use softprompt_core::model::input::PromptKind;
use softprompt_core::prompt::SoftPrompt;
use softprompt_core::train::{self, transfer, Init};
use softprompt_core::Tensor;

fn prompt(m: &softprompt_core::model::FrozenModel, data: Vec<f32>) -> SoftPrompt {
    let d = m.llama.dims.d;
    SoftPrompt::for_model(m, Tensor::new(vec![data.len() / d, d], data))
}

#[test]
fn similarities_of_known_prompts() {
    let m = tiny_demo_model(1);
    let d = m.llama.dims.d;
    let a: Vec<f32> = (0..4 * d)
        .map(|i| ((i * 31 % 17) as f32 - 8.0) / 8.0)
        .collect();
    let p = prompt(&m, a.clone());
    let (avg, tok) = transfer::similarity(&p, &p);
    assert!(
        (avg - 1.0).abs() < 1e-9 && (tok - 1.0).abs() < 1e-9,
        "{avg} {tok}"
    );
    let neg = prompt(&m, a.iter().map(|x| -x).collect());
    assert!((transfer::similarity(&p, &neg).0 + 1.0).abs() < 1e-9);
    // The same rows in another order: the average is the same, and so is each token's best.
    let mut rev = Vec::new();
    for r in (0..4).rev() {
        rev.extend_from_slice(&a[r * d..(r + 1) * d]);
    }
    let (avg, tok) = transfer::similarity(&p, &prompt(&m, rev));
    assert!((avg - 1.0).abs() < 1e-6 && (tok - 1.0).abs() < 1e-6);
}

#[test]
fn transfer_ranks_sources_and_trains_from_the_top_one() {
    let m = tiny_demo_model(2);
    let tmp = tempfile::tempdir().unwrap();
    static STOP: AtomicBool = AtomicBool::new(false);
    // Source 1: a prompt trained on the demo task itself; source 2: far from anything trained
    // (large negative constant rows); source 3: a deep prompt (skipped).
    let mut cfg = demo_config(6);
    cfg.init = Init::Vocab { top: 20 };
    let trained = tmp.path().join("trained");
    train::train(&m, &cfg, &trained, false, &STOP, &mut train::Quiet).unwrap();
    let d = m.llama.dims.d;
    let far = tmp.path().join("far");
    prompt(&m, vec![-3.0; 4 * d]).save(&far).unwrap();
    let mut dcfg = demo_config(1);
    dcfg.prompt_kind = PromptKind::Prefix;
    let deep = tmp.path().join("deep");
    train::train(&m, &dcfg, &deep, false, &STOP, &mut train::Quiet).unwrap();

    let out = tmp.path().join("transfer");
    let r = transfer::run(
        &m,
        &cfg,
        3,
        &[far.clone(), trained.clone(), deep.clone()],
        &out,
        &STOP,
        &mut train::Quiet,
    )
    .unwrap();
    assert_eq!(r.ranking.len(), 2);
    assert!(r.ranking[0].avg_cosine >= r.ranking[1].avg_cosine);
    assert_eq!(r.ranking[0].source, trained, "{:?}", r.ranking);
    assert_eq!(r.ranking[0].task.as_deref(), Some("demo"));
    assert_eq!(r.skipped.len(), 1);
    assert_eq!(r.skipped[0].0, deep);
    // Top, bottom and the usual init, each for the full budget, evaluated.
    let starts: Vec<&str> = r.runs.iter().map(|x| x.start.as_str()).collect();
    assert_eq!(starts, ["top", "bottom", "baseline"]);
    assert!(r
        .runs
        .iter()
        .all(|x| x.n > 0 && (0.0..=1.0).contains(&x.value)));
    assert_eq!(r.runs[0].init, Init::File(trained));
    assert_eq!(
        r.top_minus_baseline.unwrap(),
        r.runs[0].value - r.runs[2].value
    );
    let saved: transfer::TransferReport =
        serde_json::from_str(&std::fs::read_to_string(out.join("transfer.json")).unwrap()).unwrap();
    assert_eq!(saved.ranking.len(), 2);
    // Every run is a saved prompt.
    for run in ["probe", "top", "bottom", "baseline"] {
        assert!(
            out.join(run).join("adapter_model.safetensors").exists(),
            "{run}"
        );
    }
    // Nothing to rank: a clear error.
    let e = transfer::run(&m, &cfg, 1, &[], &out, &STOP, &mut train::Quiet)
        .unwrap_err()
        .to_string();
    assert!(e.contains("source"), "{e}");
}
