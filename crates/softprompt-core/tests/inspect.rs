//! `softprompt_core::inspect` on a tiny model: exact projection of embedding rows, agreement
//! with a brute-force scalar search, norm percentiles, drift from the recorded init, the hard
//! projection's evaluation, and the pictures and Markdown.

mod common;

use common::{demo_config, tiny_demo_model};
use rand::{Rng, SeedableRng};
use softprompt_core::inspect;
use softprompt_core::inspect::nearest::TokenIndex;
use softprompt_core::model::FrozenModel;
use softprompt_core::prompt::{self, PromptMeta, SoftPrompt};
use softprompt_core::train::{self, Init};
use softprompt_core::Tensor;

fn bare_prompt(m: &FrozenModel, emb: Tensor) -> SoftPrompt {
    SoftPrompt::new(
        emb,
        &m.source,
        m.llama.cfg.num_hidden_layers,
        m.llama.cfg.num_attention_heads,
    )
}

/// A prompt as the trainer saves it (fingerprints, task, training config).
fn trained_like(
    m: &FrozenModel,
    cfg: &softprompt_core::train::TrainConfig,
    emb: Tensor,
) -> SoftPrompt {
    let mut meta = PromptMeta::new(
        &m.source,
        m.llama.dims.d,
        Some(m.fingerprint.clone()),
        Some(m.tokenizer_fingerprint.clone()),
    );
    meta.task = serde_json::to_value(&cfg.task).ok();
    meta.training = serde_json::to_value(cfg).ok();
    bare_prompt(m, emb).with_meta(meta)
}

#[test]
fn embedding_rows_project_back_exactly() {
    let m = tiny_demo_model(1);
    let ids = [5u32, 9, 2, 17, 4];
    let sp = bare_prompt(
        &m,
        prompt::init::from_vocab_rows(&m.llama.embed, &ids).unwrap(),
    );
    let r = inspect::inspect(&m, &sp, 3).unwrap();
    assert_eq!(r.num_virtual_tokens, 5);
    assert_eq!(r.k, 3);
    assert_eq!(r.hard_prompt.ids, ids);
    for (v, &id) in r.vectors.iter().zip(&ids) {
        assert_eq!(v.nearest_cosine.len(), 3);
        assert_eq!(v.nearest_cosine[0].id, id);
        assert_eq!(v.nearest_cosine[0].cosine, 1.0);
        assert_eq!(v.nearest_cosine[0].l2, 0.0);
        assert_eq!(v.nearest_l2[0].id, id);
        assert_eq!(v.nearest_l2[0].l2, 0.0);
        assert_eq!(v.nearest_cosine[0].piece, m.decode(&[id]).unwrap());
        assert_eq!(v.nearest_cosine[0].token, m.tokenizer.id_to_token(id));
        assert!(v.nearest_cosine[1].cosine < 1.0 && v.nearest_l2[1].l2 > 0.0);
        assert!(v.drift.is_none(), "no meta, no drift");
    }
    assert!(r.hard_prompt.cosines.iter().all(|&c| c == 1.0));
    assert_eq!(r.hard_prompt.text, m.decode(&ids).unwrap());
    // The similarity matrix: symmetric, unit diagonal, in [-1, 1].
    for i in 0..5 {
        assert_eq!(r.prompt_similarity[i][i], 1.0);
        for j in 0..5 {
            let s = r.prompt_similarity[i][j];
            assert!((-1.0..=1.0).contains(&s));
            assert!((s - r.prompt_similarity[j][i]).abs() < 1e-6);
        }
    }
    assert!(r.init.is_none() && r.evaluation.is_none());
    // The projected prompt is exactly the rows.
    assert_eq!(
        inspect::projected_embeddings(&m, &r.hard_prompt.ids).unwrap(),
        sp.embeddings
    );
}

/// Brute force in f64 over every token: (id, cosine, l2), sorted by `by_cos` or by L2.
fn brute(embed: &Tensor, x: &[f32], by_cos: bool) -> Vec<(u32, f64, f64)> {
    let d = x.len();
    let mut all: Vec<(u32, f64, f64)> = (0..embed.shape[0])
        .map(|i| {
            let e = &embed.data[i * d..(i + 1) * d];
            let dot: f64 = x.iter().zip(e).map(|(&a, &b)| a as f64 * b as f64).sum();
            let na: f64 = x.iter().map(|&a| (a as f64).powi(2)).sum::<f64>().sqrt();
            let nb: f64 = e.iter().map(|&b| (b as f64).powi(2)).sum::<f64>().sqrt();
            let l2: f64 = x
                .iter()
                .zip(e)
                .map(|(&a, &b)| (a as f64 - b as f64).powi(2))
                .sum::<f64>()
                .sqrt();
            (i as u32, dot / (na * nb), l2)
        })
        .collect();
    if by_cos {
        all.sort_by(|a, b| b.1.total_cmp(&a.1));
    } else {
        all.sort_by(|a, b| a.2.total_cmp(&b.2));
    }
    all
}

#[test]
fn nearest_matches_brute_force_on_random_vectors() {
    let m = tiny_demo_model(2);
    let embed = m.llama.embed.as_f32().expect("f32 model");
    let d = m.llama.dims.d;
    let index = TokenIndex::new(embed).unwrap();
    assert_eq!(index.vocab, embed.shape[0]);
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    // More rows than one matrix-product chunk (64), mixed scales.
    let n = 70;
    let x: Vec<f32> = (0..n * d)
        .map(|i| rng.gen_range(-1.0f32..1.0) * if (i / d).is_multiple_of(3) { 0.05 } else { 1.0 })
        .collect();
    let k = 6;
    let got = index.nearest(&x, k).unwrap();
    assert_eq!(got.len(), n);
    for (r, near) in got.iter().enumerate() {
        let xr = &x[r * d..(r + 1) * d];
        for (by_cos, hits) in [(true, &near.by_cosine), (false, &near.by_l2)] {
            let want = brute(embed, xr, by_cos);
            assert_eq!(hits.len(), k);
            for (j, h) in hits.iter().enumerate() {
                let (wid, wc, wl) = want[j];
                let (ours, theirs) = if by_cos {
                    (h.cosine as f64, wc)
                } else {
                    (h.l2 as f64, wl)
                };
                assert!(
                    (ours - theirs).abs() < 1e-5,
                    "row {r} rank {j}: {ours} vs {theirs}"
                );
                // Same token, unless two tokens tie to within rounding.
                if h.id != wid {
                    let other = want.iter().find(|w| w.0 == h.id).unwrap();
                    let s = if by_cos { other.1 } else { other.2 };
                    assert!(
                        (s - theirs).abs() < 1e-6,
                        "row {r} rank {j}: id {} vs {wid}",
                        h.id
                    );
                }
                // Both measures are reported exactly for every hit.
                let me = want.iter().find(|w| w.0 == h.id).unwrap();
                assert!((h.cosine as f64 - me.1).abs() < 1e-5 && (h.l2 as f64 - me.2).abs() < 1e-5);
            }
        }
    }
    // k larger than the vocabulary is capped.
    assert_eq!(
        index.nearest(&x[..d], 10_000).unwrap()[0].by_cosine.len(),
        index.vocab
    );
}

#[test]
fn norm_percentile_bounds() {
    let m = tiny_demo_model(3);
    let index = TokenIndex::new(m.llama.embed.as_f32().expect("f32 model")).unwrap();
    let s = index.norm_stats();
    assert_eq!(s.count, index.vocab);
    assert!(s.min <= s.p05 && s.p05 <= s.median && s.median <= s.p95 && s.p95 <= s.max);
    assert!(s.min <= s.mean && s.mean <= s.max);
    assert_eq!(index.norm_percentile(0.0), 0.0);
    assert_eq!(index.norm_percentile(s.max * 2.0), 100.0);
    assert_eq!(index.norm_percentile(s.min * 0.5), 0.0);
    let mid = index.norm_percentile(s.median);
    assert!(
        (mid - 50.0).abs() <= 100.0 / index.vocab as f32 + 1e-3,
        "median at {mid}"
    );
    // A prompt of a tiny, a huge and a real row.
    let d = m.llama.dims.d;
    let row = m.llama.embed.row(10).to_vec();
    let mut data: Vec<f32> = row.iter().map(|x| x * 1e-3).collect();
    data.extend(row.iter().map(|x| x * 1e3));
    data.extend(&row);
    let sp = bare_prompt(&m, Tensor::new(vec![3, d], data));
    let r = inspect::inspect(&m, &sp, 2).unwrap();
    assert_eq!(r.vectors[0].norm_percentile, 0.0);
    assert_eq!(r.vectors[1].norm_percentile, 100.0);
    let p = r.vectors[2].norm_percentile;
    assert!(p > 0.0 && p < 100.0, "{p}");
    for v in &r.vectors {
        assert!((0.0..=100.0).contains(&v.norm_percentile));
    }
    // Scaling does not change the direction: all three project to token 10.
    assert_eq!(r.hard_prompt.ids, vec![10, 10, 10]);
}

#[test]
fn drift_is_zero_for_an_untrained_prompt_from_its_recorded_init() {
    let m = tiny_demo_model(4);
    for init in [
        Init::Vocab { top: 50 },
        Init::Random { range: 0.5 },
        Init::Text("Review Sentiment".into()),
    ] {
        let mut cfg = demo_config(1);
        cfg.init = init.clone();
        cfg.num_virtual_tokens = 5;
        let emb = train::init::init_prompt(&m, &cfg).unwrap();
        // Through disk, as a user would meet it.
        let dir = tempfile::tempdir().unwrap();
        trained_like(&m, &cfg, emb.clone())
            .save(dir.path())
            .unwrap();
        let sp = SoftPrompt::load_for(&m, dir.path(), false).unwrap();
        let r = inspect::inspect(&m, &sp, 3).unwrap();
        assert!(r.notes.is_empty(), "{:?}", r.notes);
        let info = r.init.as_ref().expect("recorded init");
        assert_eq!(info.init, inspect::describe_init(&init));
        assert_eq!(info.seed, cfg.seed);
        assert_eq!(info.mean_drift_l2, 0.0);
        assert_eq!(info.same_nearest_token, 5);
        for v in &r.vectors {
            let d = v.drift.expect("drift");
            assert_eq!(d.l2, 0.0, "{init:?}");
            assert_eq!(d.cosine, 1.0, "{init:?}");
            assert_eq!(d.relative, Some(0.0));
            assert_eq!(d.init_nearest_id, r.hard_prompt.ids[v.index]);
        }
        if !matches!(init, Init::Random { .. }) {
            assert!(
                r.hard_prompt.cosines.iter().all(|&c| c == 1.0),
                "a vocabulary init projects onto itself"
            );
        }
        // Move one vector: its drift, and only its, is positive.
        let mut moved = emb.clone();
        for x in &mut moved.data[..m.llama.dims.d] {
            *x += 0.1;
        }
        let r = inspect::inspect(&m, &trained_like(&m, &cfg, moved), 3).unwrap();
        let d0 = r.vectors[0].drift.unwrap();
        assert!(
            (d0.l2 - 0.1 * (m.llama.dims.d as f32).sqrt()).abs() < 1e-4,
            "{}",
            d0.l2
        );
        assert!(d0.cosine < 1.0);
        assert!(r.vectors[1..].iter().all(|v| v.drift.unwrap().l2 == 0.0));
    }
}

#[test]
fn drift_skipped_with_a_note_when_the_init_cannot_be_recomputed() {
    let m = tiny_demo_model(5);
    let mut cfg = demo_config(1);
    cfg.num_virtual_tokens = 3;
    let emb = train::init::init_prompt(&m, &cfg).unwrap();
    // Another model's fingerprint: no drift, a note.
    let mut sp = trained_like(&m, &cfg, emb.clone());
    sp.meta.as_mut().unwrap().model_fingerprint = Some("another-model".into());
    let r = inspect::inspect(&m, &sp, 2).unwrap();
    assert!(r.init.is_none() && r.vectors.iter().all(|v| v.drift.is_none()));
    assert_eq!(r.notes.len(), 1, "{:?}", r.notes);
    // A recorded virtual-token count that disagrees.
    cfg.num_virtual_tokens = 4;
    let r = inspect::inspect(&m, &trained_like(&m, &cfg, emb), 2).unwrap();
    assert!(r.init.is_none());
    assert!(r.notes[0].contains("virtual tokens"), "{:?}", r.notes);
}

#[test]
fn hard_projection_evaluates_next_to_the_soft_prompt() {
    let m = tiny_demo_model(6);
    let spec = softprompt_core::data::builtin_task("demo").unwrap();
    let data =
        inspect::eval::load_eval_data(&m, &spec, "builtin:demo/validation", None, 64, Some(16))
            .unwrap();
    assert_eq!(data.tokenized.len(), 16);
    assert!(data.majority_baseline.is_some());

    // A random soft prompt: both evaluations run on the same 16 examples.
    let sp = bare_prompt(&m, prompt::init::random_uniform(4, m.llama.dims.d, 0.5, 1));
    let mut r = inspect::inspect(&m, &sp, 3).unwrap();
    let e =
        inspect::eval::evaluate_projection(&m, &sp, &r.hard_prompt.ids, &data, 8, false).unwrap();
    assert_eq!((e.n, e.soft.n, e.hard.n), (16, 16, 16));
    assert_eq!(e.metric, "accuracy");
    assert!((0.0..=1.0).contains(&e.soft.value) && (0.0..=1.0).contains(&e.hard.value));
    assert!(e.soft.loss.is_finite() && e.hard.loss.is_finite());
    r.evaluation = Some(e);
    let md = inspect::markdown::to_markdown(&r);
    assert!(md.contains("| hard projection |"), "{md}");

    // A prompt that is already made of token rows: soft and hard are the same prompt.
    let ids = [3u32, 8, 1, 12];
    let sp = bare_prompt(
        &m,
        prompt::init::from_vocab_rows(&m.llama.embed, &ids).unwrap(),
    );
    let e = inspect::eval::evaluate_projection(&m, &sp, &ids, &data, 8, false).unwrap();
    assert_eq!(e.soft.value, e.hard.value);
    assert_eq!(e.soft.loss, e.hard.loss);
    // Wrong length is refused.
    assert!(inspect::eval::evaluate_projection(&m, &sp, &ids[..2], &data, 8, false).is_err());
}

#[test]
fn pictures_and_markdown() {
    let m = tiny_demo_model(7);
    let mut cfg = demo_config(1);
    cfg.init = Init::Vocab { top: 40 };
    cfg.num_virtual_tokens = 6;
    let emb = train::init::init_prompt(&m, &cfg).unwrap();
    let r = inspect::inspect(&m, &trained_like(&m, &cfg, emb), 4).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let files = inspect::markdown::write_pictures(&r, dir.path()).unwrap();
    assert_eq!(files.len(), 2);
    for f in &files {
        let dec = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(f).unwrap()));
        let reader = dec.read_info().unwrap();
        let info = reader.info();
        assert!(info.width > 0 && info.height > 0);
    }
    let md_path = inspect::markdown::write_markdown(&r, dir.path()).unwrap();
    let md = std::fs::read_to_string(md_path).unwrap();
    for want in [
        "# Soft prompt inspection",
        "## Hard projection",
        "### v5",
        "prompt_similarity.png",
        "nearest_tokens.png",
        "vocab:40",
    ] {
        assert!(md.contains(want), "missing {want:?} in\n{md}");
    }
    // Serializable as a whole.
    let v = serde_json::to_value(&r).unwrap();
    assert_eq!(v["vectors"].as_array().unwrap().len(), 6);
    assert_eq!(
        v["vectors"][0]["nearest_cosine"].as_array().unwrap().len(),
        4
    );
    // k = 0 is refused.
    assert!(inspect::inspect(
        &m,
        &bare_prompt(&m, prompt::init::random_uniform(2, m.llama.dims.d, 0.5, 0)),
        0
    )
    .is_err());
}
