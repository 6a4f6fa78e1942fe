//! `softprompt bench`: the speed and memory workloads, median of several runs, as a table.
//!
//! - W1 (training): batch 8 x 128 real tokens + 20 virtual tokens, next-token loss on every real
//!   token, backward to the prompt, one AdamW step.
//! - decode: greedy generation with a 20-token soft prompt, batch 1.
//! - classify: rank classification of 64 inputs x 64 tokens over 2 one-token labels, batched.

use std::time::Instant;

use anyhow::Result;
use clap::builder::PossibleValue;
use clap::Args;
use serde_json::json;
use softprompt_core::infer::objective::{self, ClassExample, GenExample};
use softprompt_core::infer::{self, Sampling};
use softprompt_core::model::input::PromptRef;
use softprompt_core::model::FrozenModel;
use softprompt_core::train::optim::{Optimizer, OptimizerKind};

use super::common::{load_model, Choices, ModelArgs};

#[derive(Args)]
pub struct BenchArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Timed runs per workload (after one warm-up for training).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Only one workload.
    #[arg(long, value_parser = Choices::new([
        PossibleValue::new("train").help("W1: batch 8 x 128 tokens + 20 virtual, forward, backward, AdamW step"),
        PossibleValue::new("decode").help("greedy decoding, batch 1, 20 virtual tokens"),
        PossibleValue::new("classify").help("64 inputs x 64 tokens over 2 one-token labels"),
        PossibleValue::new("serve").help("the server's decode step: 32 sequences in one packed forward"),
    ], |s| Some(s.to_string())))]
    only: Option<String>,
    /// Print the rows as JSON instead of a Markdown table.
    #[arg(long)]
    json: bool,
}

pub fn run(a: BenchArgs) -> Result<()> {
    let mut m = load_model(&a.model)?;
    let rows = workloads(&mut m, a.runs, a.only.as_deref())?;
    let weights = format!(
        "{} ({:.0} MB)",
        m.stored_dtype,
        m.llama.weight_bytes() as f64 / 1e6
    );
    print(&rows, a.json, &weights);
    Ok(())
}

/// Peak resident set size of this process so far, in MiB (Linux `VmHWM`).
fn peak_rss_mib() -> Option<f64> {
    softprompt_core::compare::measure::peak_rss().map(|b| b as f64 / (1024.0 * 1024.0))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Deterministic pseudo-text token ids (ordinary vocabulary range, no special tokens).
fn ids(n: usize, salt: u32) -> Vec<u32> {
    (0..n as u32)
        .map(|t| 300 + (t.wrapping_mul(2654435761).wrapping_add(salt * 977)) % 20000)
        .collect()
}

struct Row {
    workload: &'static str,
    median: f64,
    unit: &'static str,
    throughput: f64,
    throughput_unit: &'static str,
}

fn workloads(m: &mut FrozenModel, runs: usize, only: Option<&str>) -> Result<Vec<Row>> {
    let runs = runs.max(1);
    let d = m.llama.dims.d;
    let p = 20;
    let prompt: Vec<f32> = softprompt_core::prompt::init::random_uniform(p, d, 0.5, 0).data;
    let mut rows = Vec::new();
    let want = |w: &str| only.is_none_or(|o| o == w);

    if want("train") {
        let batch: Vec<GenExample> = (0..8)
            .map(|i| GenExample {
                ids: ids(1, i),
                target: ids(127, i + 100),
            })
            .collect();
        let mut opt = Optimizer::new(OptimizerKind::adamw_default(), p, d);
        let mut param = prompt.clone();
        let mut times = Vec::new();
        for _ in 0..runs + 1 {
            let t = Instant::now();
            let r = objective::lm_batch(&m.llama, Some(PromptRef::new(&param, d)?), &batch, true)?;
            let g = r.grad.unwrap_or_default();
            opt.step(&mut param, &g, 1e-3);
            times.push(t.elapsed().as_secs_f64());
        }
        times.remove(0); // warm-up
        let s = median(times);
        rows.push(Row {
            workload: "W1 train step (8 x 128 + 20 virtual)",
            median: s,
            unit: "s/step",
            throughput: 8.0 * 148.0 / s,
            throughput_unit: "tokens/s",
        });
    }
    if want("decode") {
        let text = ids(16, 7);
        let s = Sampling {
            max_new_tokens: 64,
            ..Default::default()
        };
        let mut rates = Vec::new();
        for _ in 0..runs {
            // Time the decode steps only: prefill once, then count tokens after the first.
            let mut first = None;
            let mut n = 0usize;
            infer::generate(
                &m.llama,
                Some(PromptRef::new(&prompt, d)?),
                &text,
                &s,
                |_| {
                    n += 1;
                    if first.is_none() {
                        first = Some(Instant::now());
                    }
                    true
                },
            )?;
            let secs = first.map_or(1.0, |f| f.elapsed().as_secs_f64());
            rates.push((n - 1) as f64 / secs);
        }
        let r = median(rates);
        rows.push(Row {
            workload: "decode, batch 1, 20 virtual tokens",
            median: 1.0 / r,
            unit: "s/token",
            throughput: r,
            throughput_unit: "tokens/s",
        });
    }
    if want("classify") {
        let batch: Vec<ClassExample> = (0..64)
            .map(|i| ClassExample {
                ids: ids(64, i),
                cands: vec![vec![4917], vec![3904]],
                label: Some(0),
            })
            .collect();
        let mut times = Vec::new();
        for _ in 0..runs {
            let t = Instant::now();
            for chunk in batch.chunks(16) {
                objective::classify_batch(
                    &m.llama,
                    Some(PromptRef::new(&prompt, d)?),
                    chunk,
                    false,
                    false,
                )?;
            }
            times.push(t.elapsed().as_secs_f64());
        }
        let s = median(times);
        rows.push(Row {
            workload: "classify 64 x 64 tokens, 2 labels",
            median: s,
            unit: "s/64 inputs",
            throughput: 64.0 / s,
            throughput_unit: "inputs/s",
        });
    }
    if want("serve") {
        // The server's decode step: 32 sequences (prompt + 16 text tokens each) advance one
        // token in one packed forward, in exact (batch-invariant) mode and in the default mode.
        use softprompt_core::model::input::SeqInput;
        use softprompt_core::model::llama::KvCache;
        for exact in [true, false] {
            m.llama.exact = exact;
            let b = 32;
            let mut caches: Vec<KvCache> =
                (0..b).map(|_| KvCache::new(m.llama.n_layers())).collect();
            for (i, c) in caches.iter_mut().enumerate() {
                let t = ids(16, i as u32);
                let (mut x, lens) = m.llama.embed_batch(&[SeqInput {
                    prompt: Some(PromptRef::new(&prompt, d)?),
                    ids: &t,
                }])?;
                m.llama
                    .forward(&mut x, &lens, std::slice::from_mut(c), false)?;
            }
            let toks = ids(b, 3);
            let mut times = Vec::new();
            for _ in 0..runs.max(3) {
                let seqs: Vec<SeqInput> = toks
                    .iter()
                    .map(|t| SeqInput {
                        prompt: None,
                        ids: std::slice::from_ref(t),
                    })
                    .collect();
                let t = Instant::now();
                let (mut x, lens) = m.llama.embed_batch(&seqs)?;
                m.llama.forward(&mut x, &lens, &mut caches, false)?;
                let rows: Vec<usize> = (0..b).collect();
                std::hint::black_box(m.llama.logits(&x, &rows));
                times.push(t.elapsed().as_secs_f64());
            }
            let s = median(times);
            rows.push(Row {
                workload: if exact {
                    "serve decode step, 32 sequences, exact mode"
                } else {
                    "serve decode step, 32 sequences, blocked GEMM"
                },
                median: s,
                unit: "s/step",
                throughput: b as f64 / s,
                throughput_unit: "tokens/s",
            });
        }
        m.llama.exact = false;
    }
    Ok(rows)
}

/// `weights`: how the frozen model is held (e.g. its stored dtype and size in memory).
fn print(rows: &[Row], json_out: bool, weights: &str) {
    let rss = peak_rss_mib();
    if json_out {
        let v: Vec<_> = rows
            .iter()
            .map(|r| json!({"workload": r.workload, "median": r.median, "unit": r.unit, "throughput": r.throughput, "throughput_unit": r.throughput_unit}))
            .collect();
        println!(
            "{}",
            json!({ "rows": v, "peak_rss_mib": rss, "threads": rayon_threads(), "weights": weights })
        );
        return;
    }
    println!("| workload | median | throughput |");
    println!("|---|---|---|");
    for r in rows {
        println!(
            "| {} | {:.4} {} | {:.1} {} |",
            r.workload, r.median, r.unit, r.throughput, r.throughput_unit
        );
    }
    println!(
        "\npeak RSS {:.0} MiB, {} threads, weights: {weights}",
        rss.unwrap_or(f64::NAN),
        rayon_threads()
    );
}

fn rayon_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
