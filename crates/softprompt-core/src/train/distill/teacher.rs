//! The teacher's side of distillation: its continuations of every input and, at each of
//! their positions, its next-token distribution kept as the top `k` tokens plus the rest's
//! mass; computed once (the hard prompt's keys and values shared by every input) and cached.

use super::*;

/// One teacher position: the `k` most probable tokens, their probabilities, the rest's mass.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TeacherDist {
    pub ids: Vec<u32>,
    pub probs: Vec<f32>,
    pub rest: f32,
}

/// One input with the teacher's continuation and distributions.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TeacherExample {
    /// The student's input ids (`encode_input(text)`, cut to `max_len`).
    pub ids: Vec<u32>,
    /// The teacher's continuation (`dists.len()` tokens; ends with an end-of-sequence token
    /// when the teacher stopped).
    pub cont: Vec<u32>,
    pub dists: Vec<TeacherDist>,
}

/// `OUT/teacher.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct TeacherCache {
    key: serde_json::Value,
    train: Vec<TeacherExample>,
    heldout: Vec<TeacherExample>,
}

/// The teacher's top-k + rest of one logits row `[V]`.
pub fn top_k_dist(logits: &[f32], k: usize) -> TeacherDist {
    let lse = kernels::logsumexp(logits);
    let mut idx: Vec<u32> = (0..logits.len() as u32).collect();
    let k = k.min(idx.len());
    let by = |a: &u32, b: &u32| logits[*b as usize].total_cmp(&logits[*a as usize]);
    if k < idx.len() {
        idx.select_nth_unstable_by(k, by);
    }
    let mut top = idx[..k].to_vec();
    top.sort_by(by);
    let probs: Vec<f32> = top
        .iter()
        .map(|&i| (logits[i as usize] as f64 - lse).exp() as f32)
        .collect();
    // The rest's mass summed directly (1 - sum would lose its small values to rounding).
    let rest: f64 = idx[k..]
        .iter()
        .map(|&i| (logits[i as usize] as f64 - lse).exp())
        .sum();
    TeacherDist {
        ids: top,
        probs,
        rest: rest as f32,
    }
}

/// Teacher continuations and distributions for `texts` after the hard prompt `hard[H]`
/// (ids), whose keys and values are computed once and copied for every input; inputs go
/// through in batches of [`TEACHER_BATCH`] (prefill, then one row per input per step).
/// `sample`: temperature and seed.
pub(super) fn teacher_run(
    model: &FrozenModel,
    hard: &[u32],
    texts: &[String],
    cfg: &TrainConfig,
    dc: &DistillConfig,
    sample: Option<(f32, u64)>,
    stop: &AtomicBool,
) -> Result<Vec<TeacherExample>> {
    let m = &model.llama;
    let eos = model.eos_ids();
    let prefix_ids = model.input_prefix()?;
    let mut pre = vec![KvCache::new(m.n_layers())];
    let (mut x, lens) = m.embed_batch(&[SeqInput {
        prompt: None,
        ids: hard,
    }])?; // [H, D]
    m.forward(&mut x, &lens, &mut pre, false)?;
    let mut out = Vec::with_capacity(texts.len());
    for (c, chunk) in texts.chunks(TEACHER_BATCH).enumerate() {
        if stop.load(Ordering::SeqCst) {
            return Err(Error::Input(
                "interrupted while the teacher ran (nothing saved yet): run again".into(),
            ));
        }
        let mut exs = Vec::with_capacity(chunk.len());
        let mut teacher_ids = Vec::with_capacity(chunk.len());
        for (j, t) in chunk.iter().enumerate() {
            let i = c * TEACHER_BATCH + j;
            let student = clip_input(model.encode_input(t)?, cfg.max_len, &prefix_ids);
            // The teacher reads the same input tokens without the tokenizer's prefix.
            let ids: Vec<u32> = student
                .strip_prefix(prefix_ids.as_slice())
                .unwrap_or(&student)
                .to_vec();
            if ids.is_empty() {
                return Err(Error::Input(format!("input {}: no tokens", i + 1)));
            }
            if hard.len() + ids.len() + dc.teacher_tokens > m.max_positions() {
                return Err(Error::Input(format!(
                    "input {}: {} hard prompt + {} input + {} teacher tokens exceed the model's context of {}",
                    i + 1, hard.len(), ids.len(), dc.teacher_tokens, m.max_positions()
                )));
            }
            teacher_ids.push(ids);
            exs.push(TeacherExample {
                ids: student,
                cont: Vec::new(),
                dists: Vec::new(),
            });
        }
        let b = exs.len();
        let mut caches = vec![pre[0].clone(); b];
        let inputs: Vec<SeqInput> = teacher_ids
            .iter()
            .map(|ids| SeqInput { prompt: None, ids })
            .collect();
        let (mut x, lens) = m.embed_batch(&inputs)?; // [sum of lens, D]
        m.forward(&mut x, &lens, &mut caches, false)?;
        let last: Vec<usize> = lens
            .iter()
            .scan(0, |r, &l| {
                *r += l;
                Some(*r - 1)
            })
            .collect();
        let mut logits = m.logits(&x, &last); // [B, V]
        let mut rngs: Vec<(Sampling, rand::rngs::StdRng)> = (0..b)
            .map(|j| {
                let i = (c * TEACHER_BATCH + j) as u64;
                let s = Sampling {
                    temperature: sample.map_or(0.0, |s| s.0),
                    seed: sample.map_or(0, |s| s.1 ^ i.wrapping_mul(0x9E37_79B9_7F4A_7C15)),
                    ..Default::default()
                };
                let rng = rand::rngs::StdRng::seed_from_u64(s.seed);
                (s, rng)
            })
            .collect();
        let v = m.dims.vocab;
        let mut done = vec![false; b];
        loop {
            let mut next = Vec::with_capacity(b); // [B]: the token each sequence reads next
            for (j, ex) in exs.iter_mut().enumerate() {
                let lg = &mut logits[j * v..(j + 1) * v];
                if done[j] {
                    next.push(ex.cont.last().copied().unwrap_or(0));
                    continue;
                }
                ex.dists.push(top_k_dist(lg, dc.top_k));
                let (s, rng) = &mut rngs[j];
                let tok = infer::pick(lg, s, ex.cont.len(), rng);
                ex.cont.push(tok);
                done[j] = eos.contains(&tok) || ex.cont.len() == dc.teacher_tokens;
                next.push(tok);
            }
            if done.iter().all(|d| *d) {
                break;
            }
            // Finished sequences run along (their rows are ignored): one batch per step.
            let one: Vec<[u32; 1]> = next.iter().map(|&t| [t]).collect();
            let inputs: Vec<SeqInput> = one
                .iter()
                .map(|t| SeqInput {
                    prompt: None,
                    ids: t,
                })
                .collect();
            let (mut x, lens) = m.embed_batch(&inputs)?; // [B, D]
            m.forward(&mut x, &lens, &mut caches, false)?;
            logits = m.logits(&x, &(0..b).collect::<Vec<_>>());
        }
        out.extend(exs);
    }
    Ok(out)
}

/// Inputs the teacher prefills and decodes together.
pub(super) const TEACHER_BATCH: usize = 16;

/// Keep the last `max_len` tokens after the tokenizer's prefix (as training inputs are cut).
pub(super) fn clip_input(mut ids: Vec<u32>, max_len: usize, prefix: &[u32]) -> Vec<u32> {
    if ids.len() > max_len {
        let keep = if ids.starts_with(prefix) && prefix.len() < max_len {
            prefix.len()
        } else {
            0
        };
        ids.drain(keep..keep + ids.len() - max_len);
    }
    ids
}

/// The teacher data: from `OUT/teacher.json` when its key matches, else generated and saved.
/// Returns (train, held-out, loaded from the cache, seconds spent).
#[allow(clippy::type_complexity, clippy::too_many_arguments)]
pub(super) fn teacher_data(
    model: &FrozenModel,
    cfg: &TrainConfig,
    dc: &DistillConfig,
    hard: &[u32],
    texts: (&[String], &[String]),
    out: &Path,
    stop: &AtomicBool,
    obs: &mut dyn Observer,
) -> Result<(Vec<TeacherExample>, Vec<TeacherExample>, bool, f64)> {
    let t0 = Instant::now();
    let digest = |v: &[String]| {
        let mut h = Sha256::new();
        for t in v {
            h.update((t.len() as u64).to_le_bytes());
            h.update(t.as_bytes());
        }
        format!("{:x}", h.finalize())
    };
    let key = json!({
        "version": 1,
        "hard_prompt_sha256": sha256_hex(&dc.hard_prompt),
        "model_fingerprint": model.fingerprint,
        "tokenizer_fingerprint": model.tokenizer_fingerprint,
        "teacher_tokens": dc.teacher_tokens,
        "top_k": dc.top_k,
        "temperature": dc.temperature,
        "seed": cfg.seed,
        "max_len": cfg.max_len,
        "train_inputs": digest(texts.0),
        "heldout_inputs": digest(texts.1),
    });
    let path = out.join("teacher.json");
    if let Ok(bytes) = std::fs::read(&path) {
        match serde_json::from_slice::<TeacherCache>(&bytes) {
            Ok(c) if c.key == key => {
                obs.on_message(&format!(
                    "teacher data from {} ({} + {} inputs)",
                    path.display(),
                    c.train.len(),
                    c.heldout.len()
                ));
                return Ok((c.train, c.heldout, true, t0.elapsed().as_secs_f64()));
            }
            _ => obs.on_message(&format!(
                "{} was made with other settings or inputs: generating the teacher data again",
                path.display()
            )),
        }
    }
    obs.on_message(&format!(
        "teacher: {} + {} inputs x {} tokens after the {}-token hard prompt",
        texts.0.len(),
        texts.1.len(),
        dc.teacher_tokens,
        hard.len()
    ));
    let sample = (dc.temperature > 0.0).then_some((dc.temperature, cfg.seed));
    let train = teacher_run(model, hard, texts.0, cfg, dc, sample, stop)?;
    let heldout = teacher_run(model, hard, texts.1, cfg, dc, None, stop)?;
    let cache = TeacherCache {
        key,
        train,
        heldout,
    };
    let bytes = serde_json::to_vec(&cache).map_err(|e| Error::Input(e.to_string()))?;
    atomic_write(&path, &bytes)?;
    let secs = t0.elapsed().as_secs_f64();
    obs.on_message(&format!("teacher data made in {secs:.1}s"));
    Ok((cache.train, cache.heldout, false, secs))
}
