//! The batch scheduler on the real model: a request's tokens are the same alone, mixed with
//! requests for other prompts, and with its prompt's keys/values from the prefix cache as
//! with a plain full forward (`infer::generate`).

mod common;

use std::sync::mpsc;
use std::sync::Arc;

use softprompt_core::infer::scheduler::{
    Cancel, Event, Finish, GenRequest, Scheduler, SchedulerConfig, ServedPrompt,
};
use softprompt_core::infer::{self, Sampling};
use softprompt_core::model::FrozenModel;
use softprompt_core::prompt::{self, SoftPrompt};

fn model() -> Arc<FrozenModel> {
    load("smollm2-135m")
}

fn load(alias: &str) -> Arc<FrozenModel> {
    let mut m = FrozenModel::load(alias).expect("load the model");
    m.llama.exact = true;
    Arc::new(m)
}

fn served(m: &FrozenModel, seed: u64) -> Arc<ServedPrompt> {
    let d = m.llama.dims.d;
    let ids = prompt::init::sample_vocab_ids(m.llama.dims.vocab, 5000, 8, seed);
    let emb = prompt::init::from_tokens(m, &ids).unwrap();
    assert_eq!(emb.shape, vec![8, d]);
    let sp = SoftPrompt::for_model(m, emb);
    Arc::new(ServedPrompt::new(&m.llama, &format!("p{seed}"), "sha", Some(sp)).unwrap())
}

/// A deep prompt: the keys and values of 6 vocabulary rows, perturbed (so it is no hard
/// prompt's), served as its own KV cache.
fn served_deep(m: &FrozenModel, seed: u64) -> Arc<ServedPrompt> {
    let ids = prompt::init::sample_vocab_ids(m.llama.dims.vocab, 5000, 6, seed);
    let emb = prompt::init::from_tokens(m, &ids).unwrap();
    let rows = softprompt_core::model::input::PromptRef::from_tensor(&emb).unwrap();
    let mut pre = m.llama.prefix_of(rows).unwrap();
    for (i, v) in pre.iter_mut().enumerate() {
        *v += ((i * 7 % 11) as f32 - 5.0) * 0.02;
    }
    let width = m.llama.prefix_width();
    let sp = SoftPrompt::for_model_prefix(m, softprompt_core::Tensor::new(vec![6, width], pre));
    assert_eq!(sp.kind(), softprompt_core::model::input::PromptKind::Prefix);
    Arc::new(ServedPrompt::new(&m.llama, &format!("deep{seed}"), "sha", Some(sp)).unwrap())
}

/// Submit `reqs` (prompt, text, sampling) all at once; return each one's tokens and finish.
fn run_all(
    sched: &Scheduler,
    m: &FrozenModel,
    reqs: &[(Arc<ServedPrompt>, &str, Sampling)],
) -> Vec<(Vec<u32>, Finish)> {
    let rxs: Vec<_> = reqs
        .iter()
        .map(|(p, text, s)| {
            let (tx, rx) = mpsc::channel();
            sched
                .generate(GenRequest {
                    prompt: p.clone(),
                    ids: m.encode_input(text).unwrap(),
                    sampling: s.clone(),
                    cancel: Cancel::default(),
                    sink: Box::new(move |e| tx.send(e).is_ok()),
                })
                .unwrap();
            rx
        })
        .collect();
    rxs.into_iter()
        .map(|rx| {
            let mut toks = Vec::new();
            loop {
                match rx.recv().expect("event") {
                    Event::Token(t) => toks.push(t),
                    Event::Done(f) => return (toks, f),
                    Event::Error(e) => panic!("request failed: {e}"),
                }
            }
        })
        .collect()
}

#[test]
fn mixed_prompts_in_one_batch_match_each_request_alone() {
    let m = model();
    // Two input prompts and a deep one (a prefix of keys and values) in the same batches.
    let mut prompts: Vec<_> = (0..2).map(|s| served(&m, s)).collect();
    prompts.push(served_deep(&m, 9));
    let base = Arc::new(ServedPrompt::new(&m.llama, "base", "", None).unwrap());
    let greedy = Sampling {
        max_new_tokens: 12,
        ..Sampling::default()
    };
    let sampled = Sampling {
        max_new_tokens: 12,
        temperature: 0.8,
        top_p: 0.95,
        seed: 42,
        ..Sampling::default()
    };
    let texts = [
        "The capital of France is",
        "Once upon a time",
        "def add(a, b):",
    ];
    let mut reqs = Vec::new();
    for (i, p) in prompts.iter().enumerate() {
        for (j, t) in texts.iter().enumerate() {
            let s = if (i + j) % 2 == 0 { &greedy } else { &sampled };
            reqs.push((p.clone(), *t, s.clone()));
        }
    }
    reqs.push((base.clone(), texts[0], greedy.clone()));

    let sched = Scheduler::start(m.clone(), SchedulerConfig::default());
    let together = run_all(&sched, &m, &reqs);
    let mean_batch = sched
        .stats
        .decode_rows
        .load(std::sync::atomic::Ordering::Relaxed) as f64
        / sched
            .stats
            .decode_steps
            .load(std::sync::atomic::Ordering::Relaxed) as f64;
    assert!(
        mean_batch > 4.0,
        "requests did not share batches (mean {mean_batch})"
    );
    for (r, got) in reqs.iter().zip(&together) {
        // Alone through the scheduler.
        let alone = run_all(&sched, &m, std::slice::from_ref(r));
        assert_eq!(
            &alone[0], got,
            "{} {:?}: mixed batch != alone",
            r.0.name, r.1
        );
        // Reference: a plain generate over prompt + text, no prefix cache, no scheduler.
        let ids = m.encode_input(r.1).unwrap();
        let reference =
            infer::generate(&m.llama, r.0.view().unwrap(), &ids, &r.2, |_| true).unwrap();
        assert_eq!(
            got.0, reference,
            "{} {:?}: prefix cache != full forward",
            r.0.name, r.1
        );
        assert_eq!(got.1, Finish::Length);
    }
    sched.shutdown();
}

#[test]
fn cancelled_request_stops_and_others_continue() {
    let m = model();
    let p = served(&m, 7);
    let sched = Scheduler::start(m.clone(), SchedulerConfig::default());
    let (tx, rx) = mpsc::channel();
    let mut n = 0;
    // The sink says "client gone" after 3 tokens.
    sched
        .generate(GenRequest {
            prompt: p.clone(),
            ids: m.encode("Hello").unwrap(),
            sampling: Sampling {
                max_new_tokens: 200,
                ..Sampling::default()
            },
            cancel: Cancel::default(),
            sink: Box::new(move |e| {
                let _ = tx.send(e);
                n += 1;
                n < 3
            }),
        })
        .unwrap();
    let s = Sampling {
        max_new_tokens: 5,
        ..Sampling::default()
    };
    let other = run_all(&sched, &m, &[(p, "Hi", s)]);
    assert_eq!(other[0].0.len(), 5);
    let events: Vec<Event> = rx.iter().collect();
    assert_eq!(events.len(), 4, "{events:?}");
    assert!(matches!(events[3], Event::Done(Finish::Cancelled)));
    assert_eq!(
        sched
            .stats
            .active
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    sched.shutdown();
}

/// The same on Gemma 3 (sandwich norms, local/global layers, 262k vocabulary, <bos> inputs).
#[test]
fn gemma3_mixed_batch_matches_alone_and_full_forward() {
    let m = load("gemma3-270m");
    let prompts: Vec<_> = (0..2).map(|s| served(&m, s)).collect();
    let s = Sampling {
        max_new_tokens: 6,
        ..Sampling::default()
    };
    let texts = ["The capital of France is", "I loved this movie"];
    let reqs: Vec<_> = prompts
        .iter()
        .flat_map(|p| texts.iter().map(|t| (p.clone(), *t, s.clone())))
        .collect();
    let sched = Scheduler::start(m.clone(), SchedulerConfig::default());
    let together = run_all(&sched, &m, &reqs);
    for (r, got) in reqs.iter().zip(&together) {
        let alone = run_all(&sched, &m, std::slice::from_ref(r));
        assert_eq!(
            &alone[0], got,
            "{} {:?}: mixed batch != alone",
            r.0.name, r.1
        );
        let ids = m.encode_input(r.1).unwrap();
        assert_eq!(ids[0], 2, "Gemma inputs start with <bos>");
        let reference =
            infer::generate(&m.llama, r.0.view().unwrap(), &ids, &r.2, |_| true).unwrap();
        assert_eq!(
            got.0, reference,
            "{} {:?}: prefix cache != full forward",
            r.0.name, r.1
        );
    }
    sched.shutdown();
}
