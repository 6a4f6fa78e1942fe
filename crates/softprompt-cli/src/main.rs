//! `softprompt`: train, evaluate, inspect and use soft prompts on a frozen model.
//! A thin layer over softprompt-core: argument parsing, printing, exit codes.

mod bench;
mod compare_cmd;
mod distill_cmd;
mod flags;
mod inspect_cmd;
mod serve_cmd;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use serde_json::json;
use softprompt_core::compute::weight::WeightFormat;
use softprompt_core::data::{self, TaskSpec};
use softprompt_core::infer::{self, Sampling};
use softprompt_core::model::FrozenModel;
use softprompt_core::prompt::SoftPrompt;
use softprompt_core::train::{self, optim, trainer};

#[derive(Parser)]
#[command(
    name = "softprompt",
    version,
    about = "Prompt tuning on a frozen language model: train, evaluate, inspect and serve soft prompts"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Args, Clone)]
struct ModelArgs {
    /// Base model: `smollm2-135m` (default, fetched on first use), a .gguf file, a Hugging
    /// Face model folder, or a hub id (`org/name[@rev]` or `hf:org/name`).
    #[arg(long, short, default_value = "smollm2-135m")]
    model: String,
    /// How the frozen matrices are kept: `f32` (dequantized at load, the reference path),
    /// `quantized` (a GGUF model's blocks, dequantized inside each product: about 1/5 of the
    /// memory, fastest decoding) or `bf16` (rounded to bf16, multiplied on AMX tiles or
    /// AVX512-BF16 with f32 accumulation: fastest training where the CPU has either).
    #[arg(long, default_value = "f32", value_parser = parse_weights)]
    weights: WeightFormat,
}

fn parse_weights(s: &str) -> std::result::Result<WeightFormat, String> {
    WeightFormat::parse(s).ok_or_else(|| format!("'{s}': expected f32, quantized or bf16"))
}

#[derive(Args, Clone)]
struct PromptArgs {
    /// Soft prompt: a PEFT adapter folder (adapter_config.json + adapter_model.safetensors).
    #[arg(long, short)]
    prompt: Option<PathBuf>,
    /// Use the prompt even if it was trained for a different base model (same hidden size).
    #[arg(long)]
    force: bool,
}

#[derive(Subcommand)]
enum Cmd {
    /// Log-probability of every token of a text, given the soft prompt.
    Score {
        #[command(flatten)]
        model: ModelArgs,
        #[command(flatten)]
        prompt: PromptArgs,
        /// The text to score (no special tokens are added).
        #[arg(long, short)]
        text: String,
        /// Print `{"ids": [...], "logprobs": [...]}`.
        #[arg(long)]
        json: bool,
    },
    /// Continue a text with the soft prompt prepended (KV cache; the prompt enters once).
    Generate {
        #[command(flatten)]
        model: ModelArgs,
        #[command(flatten)]
        prompt: PromptArgs,
        #[arg(long, short)]
        text: String,
        #[arg(long, default_value_t = 64)]
        max_new_tokens: usize,
        /// 0 = greedy.
        #[arg(long, default_value_t = 0.0)]
        temperature: f32,
        /// Keep the k most likely tokens (0 = all).
        #[arg(long, default_value_t = 0)]
        top_k: usize,
        /// Nucleus sampling threshold (1 = off).
        #[arg(long, default_value_t = 1.0)]
        top_p: f32,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Do not stop at end-of-sequence tokens.
        #[arg(long)]
        ignore_eos: bool,
        /// Recompute the whole sequence at each step instead of using the KV cache.
        #[arg(long)]
        no_cache: bool,
        #[arg(long)]
        json: bool,
    },
    /// Train a soft prompt on a task (default: the built-in `demo` sentiment task).
    Train(Box<TrainArgs>),
    /// Distill a long hard prompt into a few virtual tokens, without labels (the model with
    /// the hard prompt teaches the model with a soft prompt).
    Distill(Box<distill_cmd::DistillArgs>),
    /// Evaluate a soft prompt (or the bare template with --no-prompt) on a labelled file.
    Eval {
        #[command(flatten)]
        model: ModelArgs,
        #[command(flatten)]
        prompt: PromptArgs,
        /// Evaluate the template alone (a hard prompt, zero-shot) instead of a soft prompt.
        #[arg(long, conflicts_with = "prompt")]
        no_prompt: bool,
        #[command(flatten)]
        task: TaskArgs,
        /// Labelled data (JSONL/CSV/TSV); default: the task's validation split.
        #[arg(long)]
        data: Option<String>,
        /// Use the task's alternative template number N (0 = the main one).
        #[arg(long, default_value_t = 0)]
        template_index: usize,
        /// Evaluate at most N examples.
        #[arg(long)]
        limit: Option<usize>,
        #[arg(long, default_value_t = 16)]
        batch_size: usize,
        #[arg(long, default_value_t = 256)]
        max_len: usize,
        /// Average multi-token candidates' log-probs over their tokens.
        #[arg(long)]
        length_norm: bool,
        /// Write the JSON report here too.
        #[arg(long)]
        report: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Classify one input with a trained prompt (its task's template and label words).
    Classify {
        #[command(flatten)]
        model: ModelArgs,
        #[command(flatten)]
        prompt: PromptArgs,
        #[arg(long, conflicts_with = "prompt")]
        no_prompt: bool,
        #[command(flatten)]
        task: TaskArgs,
        /// The input text: fills the template's only field (e.g. {sentence}).
        #[arg(long, short, conflicts_with = "input")]
        text: Option<String>,
        /// A JSON record with the template's fields, e.g. '{"premise": "...", "hypothesis": "..."}'.
        #[arg(long)]
        input: Option<String>,
        #[arg(long)]
        length_norm: bool,
        #[arg(long)]
        json: bool,
    },
    /// Open the black box: each virtual token's nearest vocabulary tokens, norm and drift from
    /// its init, and the hard projection (nearest tokens) evaluated next to the soft prompt.
    Inspect(Box<inspect_cmd::InspectArgs>),
    /// Serve many soft prompts from one frozen model over HTTP (OpenAI-compatible
    /// /v1/completions, /v1/classify, /v1/models, admin API, /metrics).
    Serve(Box<serve_cmd::ServeArgs>),
    /// Load-test a running server: N clients over M prompts, latency and throughput, and a
    /// check of every answer against the same request sent alone.
    Loadtest(serve_cmd::LoadtestArgs),
    /// Hard prompt vs prompt tuning vs full fine-tuning on one task, measured: trainable
    /// parameters, artifact size, training time, peak memory, accuracy, inference cost and
    /// forgetting (compare.md, compare.png, compare.json).
    Compare(Box<compare_cmd::CompareArgs>),
    /// Write a soft prompt without training (vocabulary rows, a text, random, label words).
    Init(Box<serve_cmd::InitArgs>),
    /// Speed and memory benchmarks (median of several runs): W1 training step, decode, classification.
    Bench {
        #[command(flatten)]
        model: ModelArgs,
        /// Timed runs per workload (after one warm-up for training).
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Only one workload: train, decode, classify or serve.
        #[arg(long)]
        only: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Write a model (e.g. a GGUF) as a Hugging Face folder: config.json, f32 safetensors,
    /// tokenizer.json, for PyTorch/transformers or any other tool.
    Export {
        /// Base model: alias, .gguf file, HF folder or hub id.
        #[arg(long, short, default_value = "smollm2-135m")]
        model: String,
        /// New folder (must not exist or be empty).
        #[arg(long)]
        out: PathBuf,
        /// Split the weights into shards of at most this many MB.
        #[arg(long)]
        shard_mb: Option<usize>,
    },
    /// Describe a model and/or a soft prompt: architecture, sizes, dtype, fingerprints.
    Info {
        /// Base model to describe.
        #[arg(long, short)]
        model: Option<String>,
        /// Soft prompt folder to describe.
        #[arg(long, short)]
        prompt: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
}

/// Which task: a built-in name, a task file, or an ad-hoc template + labels.
#[derive(Args, Clone, Default)]
struct TaskArgs {
    /// Built-in task (demo, sst2, boolq, cb, copa, wic) or a task spec JSON file.
    #[arg(long)]
    task: Option<String>,
    /// Ad-hoc classification template, e.g. "Review: {sentence}\nSentiment:".
    #[arg(long)]
    template: Option<String>,
    /// Ad-hoc label words, e.g. "0=negative,1=positive".
    #[arg(long)]
    labels: Option<String>,
    /// Field holding the label in the data.
    #[arg(long, default_value = "label")]
    label_field: String,
    /// Folder that relative data files are resolved against (default: $SOFTPROMPT_DATA or ../shared/data).
    #[arg(long)]
    data_root: Option<PathBuf>,
}

impl TaskArgs {
    /// The task from the flags, else from the prompt's metadata, else `default`.
    fn resolve(&self, prompt: Option<&SoftPrompt>, default: Option<&str>) -> Result<TaskSpec> {
        if let Some(t) = &self.template {
            let labels = self
                .labels
                .as_deref()
                .context("--template needs --labels (e.g. 0=negative,1=positive)")?;
            return Ok(TaskSpec::from_flags(t, labels, &self.label_field)?);
        }
        if let Some(name) = &self.task {
            return task_by_name(name);
        }
        if let Some(task) = prompt
            .and_then(|p| p.meta.as_ref())
            .and_then(|m| m.task.clone())
        {
            return serde_json::from_value(task)
                .context("the prompt's softprompt.json has an unreadable task");
        }
        match default {
            Some(d) => task_by_name(d),
            None => anyhow::bail!("no task: give --task NAME|FILE or --template with --labels"),
        }
    }
}

fn task_by_name(name: &str) -> Result<TaskSpec> {
    if let Some(t) = data::builtin_task(name) {
        return Ok(t);
    }
    let p = std::path::Path::new(name);
    if p.exists() {
        return Ok(data::load_task_file(p)?);
    }
    anyhow::bail!(
        "unknown task '{name}': built-in tasks are {}, or give a task JSON file",
        data::builtin_task_names().join(", ")
    )
}

#[derive(Args)]
struct TrainArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    task: TaskArgs,
    /// Training data (default: the task's train split).
    #[arg(long)]
    train: Option<String>,
    /// Validation data (default: the task's validation split).
    #[arg(long)]
    validation: Option<String>,
    /// Output folder (PEFT adapter + softprompt.json, checkpoints, log, curve).
    #[arg(long, short)]
    out: Option<PathBuf>,
    /// Number of virtual tokens.
    #[arg(long, default_value_t = 20)]
    virtual_tokens: usize,
    /// random[:RANGE], vocab[:TOP], text:TEXT, labels, file:DIR.
    #[arg(long, default_value = "vocab")]
    init: String,
    /// adamw or adafactor (Lester et al.: adafactor with --lr 0.3).
    #[arg(long, default_value = "adamw")]
    optimizer: String,
    /// Learning rate (default: 0.03 for adamw, 0.3 for adafactor).
    #[arg(long)]
    lr: Option<f32>,
    #[arg(long, default_value_t = 1e-5)]
    weight_decay: f32,
    /// constant, linear or cosine (after warm-up).
    #[arg(long, default_value = "linear")]
    schedule: String,
    #[arg(long, default_value_t = 10)]
    warmup: u64,
    /// Optimizer steps.
    #[arg(long, default_value_t = 150)]
    steps: u64,
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    #[arg(long, default_value_t = 1)]
    grad_accum: usize,
    /// Clip the gradient's L2 norm (0 = off).
    #[arg(long, default_value_t = 1.0)]
    max_grad_norm: f32,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Evaluate every N steps (0 = at the end only).
    #[arg(long, default_value_t = 50)]
    eval_every: u64,
    /// Evaluate on at most N validation examples.
    #[arg(long)]
    eval_limit: Option<usize>,
    /// Stop after N evaluations without improvement.
    #[arg(long)]
    patience: Option<usize>,
    #[arg(long, default_value_t = 50)]
    checkpoint_every: u64,
    #[arg(long, default_value_t = 2)]
    keep_checkpoints: usize,
    /// Cut texts to their last N tokens.
    #[arg(long, default_value_t = 256)]
    max_len: usize,
    #[arg(long)]
    length_norm: bool,
    /// Use at most N training examples.
    #[arg(long)]
    train_limit: Option<usize>,
    /// Skip malformed rows (counted) instead of stopping at the first.
    #[arg(long)]
    skip_bad_rows: bool,
    #[arg(long, default_value_t = 32)]
    eval_batch_size: usize,
    /// Continue from OUT/checkpoints.
    #[arg(long)]
    resume: bool,
    /// No progress bar (log lines instead).
    #[arg(long)]
    quiet: bool,
}

fn load_model(m: &ModelArgs) -> Result<FrozenModel> {
    let t = std::time::Instant::now();
    let model = FrozenModel::load_with(&m.model, m.weights)
        .with_context(|| format!("loading model '{}'", m.model))?;
    eprintln!(
        "softprompt: loaded {} ({}, {:.0} MB of weights) in {:.1}s",
        model.source,
        model.stored_dtype,
        model.llama.weight_bytes() as f64 / 1e6,
        t.elapsed().as_secs_f32()
    );
    Ok(model)
}

fn load_prompt(model: &FrozenModel, p: &PromptArgs) -> Result<Option<SoftPrompt>> {
    match &p.prompt {
        None => Ok(None),
        Some(dir) => Ok(Some(SoftPrompt::load_for(model, dir, p.force)?)),
    }
}

/// Keep freed buffers in the heap instead of returning them to the OS: every layer allocates
/// activation buffers of a few MB, and glibc's defaults (mmap above 128 KiB-32 MiB, trim
/// above 128 KiB) made each step re-fault fresh zeroed pages. The trim threshold (1 GiB) is
/// above a training step's tape (~800 MB for W1), so the tape freed at the end of a step is
/// reused by the next one rather than returned and faulted in again.
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; called before any other thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

fn main() -> ExitCode {
    tune_allocator();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the outermost context and the root cause.
            let chain: Vec<String> = e.chain().map(|c| c.to_string()).collect();
            eprintln!("error: {}{}", chain.join(": "), flags::hint(&e));
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Serve(a) => serve_cmd::serve(*a)?,
        Cmd::Loadtest(a) => serve_cmd::loadtest(a)?,
        Cmd::Init(a) => serve_cmd::init(*a)?,
        Cmd::Score {
            model,
            prompt,
            text,
            json,
        } => {
            let m = load_model(&model)?;
            let sp = load_prompt(&m, &prompt)?;
            let ids = m.encode_input(&text)?; // with <bos> where the model expects one
            let lp = infer::score(
                &m.llama,
                sp.as_ref().map(SoftPrompt::view).transpose()?,
                &ids,
            )?;
            if json {
                println!("{}", json!({ "ids": ids, "logprobs": lp }));
            } else {
                let first = ids.len() - lp.len();
                for (i, &id) in ids.iter().enumerate() {
                    let piece = m.decode(&[id])?;
                    match i.checked_sub(first).map(|j| lp[j]) {
                        Some(l) => println!("{id:>7} {l:>10.4} {piece:?}"),
                        None => println!("{id:>7} {:>10} {piece:?}", "-"),
                    }
                }
                let total: f64 = lp.iter().sum();
                println!(
                    "total log-prob {total:.4}, mean {:.4}, perplexity {:.3}",
                    total / lp.len() as f64,
                    (-total / lp.len() as f64).exp()
                );
            }
        }
        Cmd::Generate {
            model,
            prompt,
            text,
            max_new_tokens,
            temperature,
            top_k,
            top_p,
            seed,
            ignore_eos,
            no_cache,
            json,
        } => {
            let m = load_model(&model)?;
            let sp = load_prompt(&m, &prompt)?;
            let ids = m.encode_input(&text)?; // with <bos> where the model expects one
            let s = Sampling {
                max_new_tokens,
                temperature,
                top_k,
                top_p,
                seed,
                eos: if ignore_eos { Vec::new() } else { m.eos_ids() },
                min_new_tokens: 0,
                no_cache,
            };
            let t = std::time::Instant::now();
            let mut printed = String::new();
            let mut all = Vec::new();
            let mut stdout = std::io::stdout();
            let out = infer::generate(
                &m.llama,
                sp.as_ref().map(SoftPrompt::view).transpose()?,
                &ids,
                &s,
                |tok| {
                    all.push(tok);
                    if !json {
                        // Stream: print the newly decodable suffix.
                        if let Ok(txt) = m.decode(&all) {
                            if txt.len() > printed.len() && txt.starts_with(&printed) {
                                let _ = write!(stdout, "{}", &txt[printed.len()..]);
                                let _ = stdout.flush();
                                printed = txt;
                            }
                        }
                    }
                    true
                },
            )?;
            let secs = t.elapsed().as_secs_f64();
            if json {
                println!(
                    "{}",
                    json!({ "ids": out, "text": m.decode(&out)?, "seconds": secs })
                );
            } else {
                println!();
                eprintln!(
                    "softprompt: {} tokens in {:.2}s ({:.1} tok/s incl. prefill)",
                    out.len(),
                    secs,
                    out.len() as f64 / secs
                );
            }
        }
        Cmd::Train(a) => cmd_train(*a)?,
        Cmd::Distill(a) => distill_cmd::run(*a)?,
        Cmd::Compare(a) => compare_cmd::run(*a)?,
        Cmd::Inspect(a) => inspect_cmd::run(*a)?,
        Cmd::Bench {
            model,
            runs,
            only,
            json,
        } => {
            let mut m = load_model(&model)?;
            let rows = bench::run(&mut m, runs, only.as_deref())?;
            let weights = format!(
                "{} ({:.0} MB)",
                m.stored_dtype,
                m.llama.weight_bytes() as f64 / 1e6
            );
            bench::print(&rows, json, &weights);
        }
        Cmd::Eval {
            model,
            prompt,
            no_prompt,
            task,
            data: file,
            template_index,
            limit,
            batch_size,
            max_len,
            length_norm,
            report,
            json,
        } => {
            let m = load_model(&model)?;
            let sp = if no_prompt {
                None
            } else {
                load_prompt(&m, &prompt)?
            };
            anyhow::ensure!(
                no_prompt || sp.is_some(),
                "give --prompt DIR, or --no-prompt to evaluate the template alone"
            );
            let spec = task.resolve(sp.as_ref(), None)?;
            let spec = spec.with_template(template_index).with_context(|| {
                format!("task {} has no template number {template_index}", spec.name)
            })?;
            let file = file
                .or_else(|| spec.validation.clone())
                .context("give --data FILE (the task has no validation split)")?;
            let data::Split { items, name, .. } =
                data::load_items(&spec, &file, task.data_root.as_deref(), false)?;
            let mut tok = train::tokenize(&m, &items, max_len)?;
            if let Some(n) = limit {
                tok.truncate(n);
            }
            let t = std::time::Instant::now();
            let rep = train::evaluate(
                &m,
                sp.as_ref().map(SoftPrompt::view).transpose()?,
                &tok,
                batch_size,
                length_norm,
            )?;
            let secs = t.elapsed().as_secs_f64();
            let mut v = serde_json::to_value(&rep)?;
            v["data"] = json!(name);
            v["task"] = json!(spec.name);
            v["template"] = json!(spec.templates().first().copied().unwrap_or(""));
            v["prompt"] = json!(prompt.prompt.as_ref().map(|p| p.display().to_string()));
            v["seconds"] = json!(secs);
            v["examples_per_second"] = json!(rep.n as f64 / secs);
            if let data::Items::Class(ci) = &items {
                let (cls, base) = data::majority_baseline(ci);
                v["majority_baseline"] = json!({ "class": cls, "accuracy": base });
            }
            if let Some(path) = &report {
                softprompt_core::fsio::atomic_write(
                    path,
                    serde_json::to_string_pretty(&v)?.as_bytes(),
                )?;
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!(
                    "{}: {} = {:.4} on {} examples of {name} (loss {:.4}, {:.1} examples/s)",
                    spec.name,
                    rep.metric,
                    rep.value,
                    rep.n,
                    rep.loss,
                    rep.n as f64 / secs
                );
                if let Some(b) = v.get("majority_baseline") {
                    println!(
                        "majority-class baseline: {:.4}",
                        b["accuracy"].as_f64().unwrap_or(0.0)
                    );
                }
            }
        }
        Cmd::Classify {
            model,
            prompt,
            no_prompt,
            task,
            text,
            input,
            length_norm,
            json,
        } => {
            let m = load_model(&model)?;
            let sp = if no_prompt {
                None
            } else {
                load_prompt(&m, &prompt)?
            };
            let spec = task.resolve(sp.as_ref(), None)?;
            let input = match (text, input) {
                (_, Some(j)) => {
                    serde_json::from_str(&j).context("--input must be a JSON object")?
                }
                (Some(t), None) => json!(t),
                (None, None) => anyhow::bail!("give --text or --input"),
            };
            let (ex, cands) = train::eval::class_example(&m, &spec, input)?;
            let r = softprompt_core::infer::objective::classify_batch(
                &m.llama,
                sp.as_ref().map(SoftPrompt::view).transpose()?,
                std::slice::from_ref(&ex),
                length_norm,
                false,
            )?;
            let probs = softprompt_core::infer::objective::softmax(&r.scores[0]);
            let best = softprompt_core::infer::objective::argmax(&r.scores[0]);
            let labels = spec.label_values();
            if json {
                println!(
                    "{}",
                    json!({ "label": labels[best], "candidate": cands[best], "probabilities": labels.iter().zip(&probs).map(|(l, p)| (l.clone(), json!(p))).collect::<serde_json::Map<_, _>>(), "scores": r.scores[0] })
                );
            } else {
                for ((l, c), p) in labels.iter().zip(&cands).zip(&probs) {
                    println!("{:>6.3}  {l} {c:?}", p);
                }
                println!("=> {} {:?}", labels[best], cands[best]);
            }
        }
        Cmd::Export {
            model,
            out,
            shard_mb,
        } => {
            let lw = softprompt_core::model::load(&model)
                .with_context(|| format!("loading model '{model}'"))?;
            softprompt_core::model::load::hf::save_hf_folder(&out, &lw, shard_mb.map(|m| m << 20))?;
            eprintln!(
                "softprompt: wrote {} (Hugging Face folder, f32)",
                out.display()
            );
        }
        Cmd::Info {
            model,
            prompt,
            json,
        } => {
            anyhow::ensure!(
                model.is_some() || prompt.is_some(),
                "give --model and/or --prompt"
            );
            let mut report = serde_json::Map::new();
            let mut loaded = None;
            if let Some(spec) = &model {
                let m = load_model(&ModelArgs {
                    model: spec.clone(),
                    weights: WeightFormat::F32,
                })?;
                let c = &m.llama.cfg;
                report.insert(
                    "model".into(),
                    json!({
                        "source": m.source,
                        "architecture": c.model_type,
                        "stored_dtype": m.stored_dtype,
                        "compute_dtype": "f32",
                        "parameters": m.llama.num_parameters(),
                        "hidden_size": c.hidden_size,
                        "layers": c.num_hidden_layers,
                        "attention_heads": c.num_attention_heads,
                        "kv_heads": c.num_kv_heads(),
                        "head_dim": c.head_dim(),
                        "intermediate_size": c.intermediate_size,
                        "vocab_size": c.vocab_size,
                        "context": m.llama.max_positions(),
                        "rope_theta": c.rope_theta,
                        "tie_word_embeddings": c.tie_word_embeddings,
                        "fingerprint": m.fingerprint,
                        "tokenizer_fingerprint": m.tokenizer_fingerprint,
                    }),
                );
                loaded = Some(m);
            }
            if let Some(dir) = &prompt {
                let p = SoftPrompt::load(dir)?;
                let norms: Vec<f32> = (0..p.num_virtual_tokens())
                    .map(|i| p.row(i).iter().map(|x| x * x).sum::<f32>().sqrt())
                    .collect();
                let mut pj = json!({
                    "folder": dir,
                    "peft_type": p.config.peft_type,
                    "task_type": p.config.task_type,
                    "num_virtual_tokens": p.num_virtual_tokens(),
                    "token_dim": p.hidden_size(),
                    "parameters": p.embeddings.numel(),
                    "base_model_name_or_path": p.config.base_model_name_or_path,
                    "mean_vector_norm": norms.iter().sum::<f32>() / norms.len().max(1) as f32,
                    "softprompt_meta": p.meta,
                });
                if let Some(m) = &loaded {
                    pj["compatible_with_model"] =
                        match p.check_compatible(m.llama.dims.d, &m.fingerprint, false) {
                            Ok(()) => json!(true),
                            Err(e) => json!(e.to_string()),
                        };
                }
                report.insert("prompt".into(), pj);
            }
            let v = serde_json::Value::Object(report);
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print_tree(&v, 0);
            }
        }
    }
    Ok(())
}

fn print_tree(v: &serde_json::Value, indent: usize) {
    if let serde_json::Value::Object(map) = v {
        for (k, val) in map {
            match val {
                serde_json::Value::Object(_) => {
                    println!("{:indent$}{k}:", "");
                    print_tree(val, indent + 2);
                }
                serde_json::Value::String(s) => println!("{:indent$}{k}: {s}", ""),
                other => println!("{:indent$}{k}: {other}", ""),
            }
        }
    }
}

/// Progress bar (step, loss, tokens/s, ETA) and evaluation lines.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    ema: Option<f64>,
    tokens: usize,
    secs: f64,
}

/// Ctrl-C / SIGTERM sets the returned flag (the run finishes its step, checkpoints and exits
/// cleanly); a second one kills. `hint` is appended to the message.
fn stop_on_ctrl_c(hint: &'static str) -> Result<std::sync::Arc<std::sync::atomic::AtomicBool>> {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = stop.clone();
    ctrlc::set_handler(move || {
        if flag.swap(true, std::sync::atomic::Ordering::SeqCst) {
            std::process::exit(130);
        }
        eprintln!("\nsoftprompt: stopping after this step (Ctrl-C again to kill){hint}");
    })
    .context("installing the Ctrl-C handler")?;
    Ok(stop)
}

impl Progress {
    /// A progress bar over `steps` on a terminal, log lines otherwise or with `quiet`.
    fn new(steps: u64, quiet: bool) -> Self {
        let bar = if quiet || !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            None
        } else {
            let b = indicatif::ProgressBar::new(steps);
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} steps | {msg} | ETA {eta}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            Some(b)
        };
        Progress {
            bar,
            ema: None,
            tokens: 0,
            secs: 0.0,
        }
    }

    fn println(&self, msg: &str) {
        match &self.bar {
            Some(b) => b.println(msg),
            None => eprintln!("{msg}"),
        }
    }
}

impl trainer::Observer for Progress {
    fn on_start(&mut self, start: u64, total: u64) {
        if let Some(b) = &self.bar {
            b.set_length(total);
            b.set_position(start);
            b.reset_eta();
        }
    }
    fn on_step(&mut self, s: &trainer::StepLog) {
        let e = self.ema.map_or(s.loss, |e| 0.9 * e + 0.1 * s.loss);
        self.ema = Some(e);
        self.tokens += s.tokens;
        self.secs += s.seconds;
        let tps = self.tokens as f64 / self.secs.max(1e-9);
        match &self.bar {
            Some(b) => {
                b.set_position(s.step);
                b.set_message(format!(
                    "loss {:.4} (avg {e:.4}) | lr {:.2e} | {tps:.0} tok/s",
                    s.loss, s.lr
                ));
            }
            None => eprintln!(
                "step {} loss {:.4} avg {e:.4} lr {:.2e} grad_norm {:.3} {tps:.0} tok/s",
                s.step, s.loss, s.lr, s.grad_norm
            ),
        }
    }
    fn on_eval(&mut self, e: &trainer::EvalLog) {
        self.println(&format!(
            "step {:>5}: validation {} {:.4} (loss {:.4}, n={}){}",
            e.step,
            e.report.metric,
            e.report.value,
            e.report.loss,
            e.report.n,
            if e.best { "  * best, saved" } else { "" }
        ));
    }
    fn on_message(&mut self, msg: &str) {
        self.println(&format!("softprompt: {msg}"));
    }
}

fn cmd_train(a: TrainArgs) -> Result<()> {
    let m = load_model(&a.model)?;
    let spec = a.task.resolve(None, Some("demo"))?;
    let train_file = a
        .train
        .clone()
        .or_else(|| spec.train.clone())
        .with_context(|| format!("task {} has no train split: give --train FILE", spec.name))?;
    let validation_file = a.validation.clone().or_else(|| spec.validation.clone());
    let mut optimizer = match a.optimizer.as_str() {
        "adamw" => optim::OptimizerKind::adamw_default(),
        "adafactor" => optim::OptimizerKind::adafactor_lester(),
        other => anyhow::bail!("--optimizer {other}: expected adamw or adafactor"),
    };
    match &mut optimizer {
        optim::OptimizerKind::AdamW { weight_decay, .. }
        | optim::OptimizerKind::Adafactor { weight_decay, .. } => *weight_decay = a.weight_decay,
    }
    let lr = a.lr.unwrap_or(if a.optimizer == "adafactor" {
        0.3
    } else {
        0.03
    });
    let cfg = trainer::TrainConfig {
        task: spec.clone(),
        train_file,
        validation_file,
        num_virtual_tokens: a.virtual_tokens,
        init: a.init.parse()?,
        optimizer,
        lr,
        schedule: a.schedule.parse()?,
        warmup_steps: a.warmup,
        steps: a.steps,
        batch_size: a.batch_size,
        grad_accum: a.grad_accum,
        max_grad_norm: a.max_grad_norm,
        seed: a.seed,
        eval_every: a.eval_every,
        eval_limit: a.eval_limit,
        patience: a.patience,
        checkpoint_every: a.checkpoint_every,
        keep_checkpoints: a.keep_checkpoints,
        max_len: a.max_len,
        length_norm: a.length_norm,
        train_limit: a.train_limit,
        skip_bad_rows: a.skip_bad_rows,
        eval_batch_size: a.eval_batch_size,
        data_root: a.task.data_root.clone(),
    };
    // Default output: runs/TASK, or runs/TASK-2, -3... so a second run never meets the first
    // one's checkpoints (with --resume: runs/TASK itself).
    let out = a.out.clone().unwrap_or_else(|| {
        let base = PathBuf::from("runs").join(&spec.name);
        if a.resume {
            return base;
        }
        std::iter::once(base.clone())
            .chain((2..).map(|i| PathBuf::from("runs").join(format!("{}-{i}", spec.name))))
            .find(|p| !p.exists())
            .unwrap_or(base)
    });
    let stop = stop_on_ctrl_c("")?;
    let mut obs = Progress::new(cfg.steps, a.quiet);
    eprintln!(
        "softprompt: training {} virtual tokens on task '{}' ({} init, {} lr {lr}, {} steps x batch {} x accum {}) -> {}",
        cfg.num_virtual_tokens,
        spec.name,
        a.init,
        a.optimizer,
        cfg.steps,
        cfg.batch_size,
        cfg.grad_accum,
        out.display()
    );
    let summary = trainer::train(&m, &cfg, &out, a.resume, &stop, &mut obs)?;
    if let Some(b) = &obs.bar {
        b.finish_and_clear();
    }
    let best = summary
        .best
        .map(|(s, v)| format!("best validation {:.4} at step {s}", v))
        .unwrap_or_else(|| "no validation split".into());
    eprintln!(
        "softprompt: {} steps in {:.0}s; {best}; prompt saved to {} (curve.png, train_log.jsonl beside it){}",
        summary.steps_done,
        summary.seconds,
        out.display(),
        if summary.interrupted { "; interrupted, continue with --resume" } else { "" }
    );
    Ok(())
}
