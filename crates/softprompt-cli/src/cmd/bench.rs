//! `softprompt bench`: the speed and memory workloads, median of several runs, as a table.
//!
//! - W1 (training): batch 8 x 128 real tokens + 20 virtual tokens, next-token loss on every real
//!   token, backward to the prompt, one AdamW step.
//! - decode: greedy generation with a 20-token soft prompt, batch 1.
//! - classify: rank classification of 64 inputs x 64 tokens over 2 one-token labels, batched.
//! - decode8: greedy decoding of 8 sequences in one packed forward per step.
//! - peak: the machine's ceilings for this model: the best rate of the weight format's own
//!   product kernel on the model's MLP shapes (W1's row count) and the memory read bandwidth.
//!
//! Each compute workload also reports its achieved GFLOP/s (counted from the model's shapes:
//! matrices, LM head and causal attention; the backward computes input gradients only)
//! and each decode workload the weight bytes it streams per step; with `peak` measured in the
//! same process the table gives them as fractions of the ceilings.

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
        PossibleValue::new("decode8").help("greedy decoding, 8 sequences per packed forward, 20 virtual tokens"),
        PossibleValue::new("peak").help("the best GEMM rate of the format's kernel on the model's shapes, and memory bandwidth"),
    ], |s| Some(s.to_string())))]
    only: Option<String>,
    /// Real tokens per sequence in W1 (8 sequences, each after 20 virtual tokens).
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u64).range(2..))]
    seq: u64,
    /// Print the rows as JSON instead of a Markdown table.
    #[arg(long)]
    json: bool,
}

pub fn run(a: BenchArgs) -> Result<()> {
    let t = Instant::now();
    let mut m = load_model(&a.model)?;
    let load_s = t.elapsed().as_secs_f64();
    let seq = a.seq as usize;
    let rows = workloads(&mut m, a.runs, a.only.as_deref(), seq)?;
    // Peak RSS of the workloads, before the ceilings' own buffers.
    let rss = peak_rss_mib();
    let ceil = if a.only.as_deref().is_none_or(|o| o == "peak") {
        Some(Ceilings::measure(&m, 8 * (seq + 20)))
    } else {
        None
    };
    let weights = format!(
        "{} ({:.0} MB)",
        m.stored_dtype,
        m.llama.weight_bytes() as f64 / 1e6
    );
    print(&rows, a.json, &weights, load_s, rss, ceil.as_ref());
    Ok(())
}

/// What the machine can do for this model, measured here.
struct Ceilings {
    /// Best GFLOP/s of the format's product kernel (bf16 tiles for `--weights bf16`, else the
    /// f32 GEMM, which quantized weights feed tile by tile) on the model's MLP shapes.
    gemm_gflops: f64,
    kernel: &'static str,
    /// Best parallel read bandwidth over a 512 MiB buffer, GB/s.
    bandwidth_gbs: f64,
}

impl Ceilings {
    fn measure(m: &FrozenModel, rows: usize) -> Self {
        use softprompt_core::compute::{bf16::PackedBf16, kernels};
        let (d, f) = (m.llama.dims.d, m.llama.dims.f);
        let bf16 = m.llama.lm_head().dtype() == "bf16";
        let x = softprompt_core::prompt::init::random_uniform(rows, d.max(f), 1.0, 1).data;
        let mut best = 0.0f64;
        for (n, k) in [(f, d), (d, f)] {
            let w = softprompt_core::prompt::init::random_uniform(n, k, 0.05, 2).data;
            let packed = bf16.then(|| PackedBf16::pack(&w, n, k));
            let mut y = vec![0.0f32; rows * n];
            for _ in 0..4 {
                let t = Instant::now();
                kernels::in_pool(|| match &packed {
                    Some(p) => p.linear(&x[..rows * k], rows, &mut y, false),
                    None => kernels::linear(&x[..rows * k], &w, rows, n, k, &mut y, false),
                });
                best = best.max(2.0 * (rows * n * k) as f64 / t.elapsed().as_secs_f64() / 1e9);
            }
        }
        Ceilings {
            gemm_gflops: best,
            kernel: if bf16 {
                match softprompt_core::compute::bf16::kernel() {
                    softprompt_core::compute::bf16::Kernel::Amx => "bf16 AMX",
                    softprompt_core::compute::bf16::Kernel::Dpbf16 => "bf16 AVX512-BF16",
                    softprompt_core::compute::bf16::Kernel::Portable => "bf16 portable",
                }
            } else {
                "f32 GEMM"
            },
            bandwidth_gbs: kernels::read_bandwidth_gbs(),
        }
    }
}

/// FLOPs of the model's products for the workloads (per token: 2 per matrix weight).
struct Work {
    /// Sum of `n * k` over one token's layer matrices (q, k, v, o, gate, up, down).
    mat: f64,
    /// `V * D` of the LM head.
    head: f64,
    layers: f64,
    qdim: f64,
    /// Bytes a forward product of one row streams: every layer matrix and the LM head.
    stream_bytes: f64,
}

impl Work {
    fn of(m: &FrozenModel) -> Self {
        let (mut mat, mut head, mut stream_bytes) = (0.0, 0.0, 0.0);
        let lm = m.llama.lm_head() as *const _;
        m.llama.for_each_matrix(|name, w| {
            let nk = (w.rows() * w.cols()) as f64;
            if std::ptr::eq(w, lm) {
                head = nk;
                stream_bytes += w.bytes() as f64;
            } else if name != "embed" && name != "lm_head" {
                mat += nk;
                stream_bytes += w.bytes() as f64;
            }
        });
        Work {
            mat,
            head,
            layers: m.llama.n_layers() as f64,
            qdim: m.llama.dims.qdim() as f64,
            stream_bytes,
        }
    }

    /// Forward attention FLOPs of one sequence whose queries `q0 .. q1` (0-based positions)
    /// each see every earlier position and themselves: scores and weighted sum, all layers.
    fn attention(&self, q0: usize, q1: usize) -> f64 {
        let keys: f64 = (q0..q1).map(|i| (i + 1) as f64).sum();
        4.0 * self.qdim * keys * self.layers
    }
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
    workload: String,
    median: f64,
    unit: &'static str,
    throughput: f64,
    throughput_unit: &'static str,
    /// GFLOP of one timed unit (a step, 64 inputs), for the achieved rate.
    gflop: Option<f64>,
    /// Weight bytes streamed per decode step, and the tokens one step yields.
    step_bytes: Option<(f64, f64)>,
}

fn workloads(m: &mut FrozenModel, runs: usize, only: Option<&str>, seq: usize) -> Result<Vec<Row>> {
    let runs = runs.max(1);
    let d = m.llama.dims.d;
    let p = 20;
    let prompt: Vec<f32> = softprompt_core::prompt::init::random_uniform(p, d, 0.5, 0).data;
    let mut rows = Vec::new();
    let want = |w: &str| only.is_none_or(|o| o == w);
    let work = Work::of(m);

    if want("train") {
        let batch: Vec<GenExample> = (0..8)
            .map(|i| GenExample {
                ids: ids(1, i),
                target: ids(seq - 1, i + 100),
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
        // Forward, then input gradients only: each matrix product once more (dx, no dW),
        // attention twice more (dQ from dS, dK, dV and dP). Matrices over every row, the LM
        // head over the target rows, causal attention over prompt + text. (`--recompute`
        // runs the blocks' forward again: not counted, it is not useful work.)
        let len = seq + p;
        let products = 2.0 * work.mat * (8 * len) as f64 + 2.0 * work.head * (8 * (seq - 1)) as f64;
        let attention = 8.0 * work.attention(0, len);
        rows.push(Row {
            workload: format!("W1 train step (8 x {seq} + 20 virtual)"),
            median: s,
            unit: "s/step",
            throughput: (8 * len) as f64 / s,
            throughput_unit: "tokens/s",
            gflop: Some((2.0 * products + 3.0 * attention) / 1e9),
            step_bytes: None,
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
            workload: "decode, batch 1, 20 virtual tokens".into(),
            median: 1.0 / r,
            unit: "s/token",
            throughput: r,
            throughput_unit: "tokens/s",
            gflop: None,
            step_bytes: Some((work.stream_bytes, 1.0)),
        });
    }
    if want("decode8") {
        // 8 sequences (20 virtual + 16 text tokens each) prefilled together, then 64 greedy
        // steps of one packed forward; tokens after the first, all sequences, per second.
        use softprompt_core::model::input::SeqInput;
        let b = 8;
        let texts: Vec<Vec<u32>> = (0..b).map(|i| ids(16, 7 + i as u32)).collect();
        let mut rates = Vec::new();
        for _ in 0..runs {
            let seqs = texts
                .iter()
                .map(|t| {
                    Ok(SeqInput {
                        prompt: Some(PromptRef::new(&prompt, d)?),
                        ids: t,
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            let mut caches = (0..b)
                .map(|_| m.llama.cache_for(Some(PromptRef::new(&prompt, d)?)))
                .collect::<softprompt_core::Result<Vec<_>>>()?;
            let (mut x, lens) = m.llama.embed_batch(&seqs)?;
            m.llama.forward(&mut x, &lens, &mut caches, false)?;
            let last: Vec<usize> = lens
                .iter()
                .scan(0, |r, l| {
                    *r += l;
                    Some(*r - 1)
                })
                .collect();
            let mut next = greedy(&m.llama.logits(&x, &last), m.llama.dims.vocab);
            let t = Instant::now();
            for _ in 1..64 {
                let seqs: Vec<SeqInput> = next
                    .iter()
                    .map(|t| SeqInput {
                        prompt: None,
                        ids: std::slice::from_ref(t),
                    })
                    .collect();
                let (mut x, lens) = m.llama.embed_batch(&seqs)?;
                m.llama.forward(&mut x, &lens, &mut caches, false)?;
                let all: Vec<usize> = (0..b).collect();
                next = greedy(&m.llama.logits(&x, &all), m.llama.dims.vocab);
            }
            rates.push((63 * b) as f64 / t.elapsed().as_secs_f64());
        }
        let r = median(rates);
        rows.push(Row {
            workload: "decode, batch 8, 20 virtual tokens".into(),
            median: b as f64 / r,
            unit: "s/step",
            throughput: r,
            throughput_unit: "tokens/s",
            gflop: None,
            step_bytes: Some((work.stream_bytes, b as f64)),
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
        // The prompt's keys and values once per batch of 16, then 64 x 64 text rows that
        // see it; the two label logits are left out (under 0.1% of the work).
        let fwd = 2.0 * work.mat * (64 * 64 + 4 * p) as f64
            + 4.0 * work.attention(0, p)
            + 64.0 * work.attention(p, p + 64);
        rows.push(Row {
            workload: "classify 64 x 64 tokens, 2 labels".into(),
            median: s,
            unit: "s/64 inputs",
            throughput: 64.0 / s,
            throughput_unit: "inputs/s",
            gflop: Some(fwd / 1e9),
            step_bytes: None,
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
                }
                .into(),
                median: s,
                unit: "s/step",
                throughput: b as f64 / s,
                throughput_unit: "tokens/s",
                gflop: None,
                step_bytes: Some((work.stream_bytes, b as f64)),
            });
        }
        m.llama.exact = false;
    }
    Ok(rows)
}

/// Greedy next token of every row of `logits[rows, V]`.
fn greedy(logits: &[f32], v: usize) -> Vec<u32> {
    logits
        .chunks(v)
        .map(|r| {
            r.iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map_or(0, |(i, _)| i as u32)
        })
        .collect()
}

/// `weights`: how the frozen model is held (e.g. its stored dtype and size in memory).
fn print(
    rows: &[Row],
    json_out: bool,
    weights: &str,
    load_s: f64,
    rss: Option<f64>,
    ceil: Option<&Ceilings>,
) {
    // Achieved rate and its share of the ceiling, per row.
    let rates: Vec<(Option<f64>, Option<f64>, Option<f64>)> = rows
        .iter()
        .map(|r| {
            let gflops = r.gflop.map(|g| g / r.median);
            let of_peak = gflops.zip(ceil).map(|(g, c)| g / c.gemm_gflops);
            let bound = r.step_bytes.zip(ceil).map(|((bytes, toks), c)| {
                // tokens/s if every step only streamed the weights at the measured bandwidth
                toks * c.bandwidth_gbs * 1e9 / bytes
            });
            (gflops, of_peak, bound.map(|b| r.throughput / b))
        })
        .collect();
    if json_out {
        let v: Vec<_> = rows
            .iter()
            .zip(&rates)
            .map(|(r, (gflops, of_peak, of_bound))| {
                json!({"workload": r.workload, "median": r.median, "unit": r.unit,
                       "throughput": r.throughput, "throughput_unit": r.throughput_unit,
                       "gflops": gflops, "of_peak": of_peak,
                       "bytes_per_step": r.step_bytes.map(|s| s.0),
                       "of_bandwidth_bound": of_bound})
            })
            .collect();
        println!(
            "{}",
            json!({ "rows": v, "peak_rss_mib": rss, "threads": softprompt_core::compute::kernels::threads(),
                    "weights": weights, "load_s": load_s,
                    "peak_gflops": ceil.map(|c| c.gemm_gflops),
                    "peak_kernel": ceil.map(|c| c.kernel),
                    "bandwidth_gbs": ceil.map(|c| c.bandwidth_gbs) })
        );
        return;
    }
    println!("| workload | median | throughput | achieved | of the ceiling |");
    println!("|---|---|---|---|---|");
    for (r, (gflops, of_peak, of_bound)) in rows.iter().zip(&rates) {
        let achieved = match (gflops, r.step_bytes) {
            (Some(g), _) => format!("{g:.0} GFLOP/s"),
            (None, Some((bytes, toks))) => {
                format!("{:.1} GB/s of weights", bytes * r.throughput / toks / 1e9)
            }
            _ => String::new(),
        };
        let share = match (of_peak, of_bound) {
            (Some(f), _) => format!("{:.0}% of GEMM peak", 100.0 * f),
            (None, Some(f)) => format!("{:.0}% of bandwidth bound", 100.0 * f),
            _ => String::new(),
        };
        println!(
            "| {} | {:.4} {} | {:.1} {} | {achieved} | {share} |",
            r.workload, r.median, r.unit, r.throughput, r.throughput_unit
        );
    }
    println!(
        "\npeak RSS {:.0} MiB, {} threads, weights: {weights}, loaded in {load_s:.1} s",
        rss.unwrap_or(f64::NAN),
        softprompt_core::compute::kernels::threads()
    );
    if let Some(c) = ceil {
        println!(
            "ceilings: {:.0} GFLOP/s ({} on the model's MLP shapes), {:.1} GB/s read bandwidth",
            c.gemm_gflops, c.kernel, c.bandwidth_gbs
        );
    }
}
