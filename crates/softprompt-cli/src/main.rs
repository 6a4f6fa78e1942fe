//! `softprompt`: train, evaluate, inspect and use soft prompts on a frozen model.
//! A thin layer over softprompt-core: argument parsing, printing, exit codes.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use serde_json::json;
use softprompt_core::infer::{self, Sampling};
use softprompt_core::model::FrozenModel;
use softprompt_core::prompt::SoftPrompt;

#[derive(Parser)]
#[command(name = "softprompt", version, about = "Prompt tuning on a frozen language model: train, evaluate, inspect and serve soft prompts")]
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

fn load_model(m: &ModelArgs) -> Result<FrozenModel> {
    let t = std::time::Instant::now();
    let model = FrozenModel::load(&m.model).with_context(|| format!("loading model '{}'", m.model))?;
    eprintln!("softprompt: loaded {} ({}) in {:.1}s", model.source, model.stored_dtype, t.elapsed().as_secs_f32());
    Ok(model)
}

fn load_prompt(model: &FrozenModel, p: &PromptArgs) -> Result<Option<SoftPrompt>> {
    match &p.prompt {
        None => Ok(None),
        Some(dir) => Ok(Some(model.load_prompt(dir, p.force)?)),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the outermost context and the root cause.
            let chain: Vec<String> = e.chain().map(|c| c.to_string()).collect();
            eprintln!("error: {}", chain.join(": "));
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Score { model, prompt, text, json } => {
            let m = load_model(&model)?;
            let sp = load_prompt(&m, &prompt)?;
            let ids = m.encode(&text)?;
            let lp = infer::score(&m.llama, sp.as_ref().map(|p| p.embeddings.data.as_slice()), &ids)?;
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
                println!("total log-prob {total:.4}, mean {:.4}, perplexity {:.3}", total / lp.len() as f64, (-total / lp.len() as f64).exp());
            }
        }
        Cmd::Generate { model, prompt, text, max_new_tokens, temperature, top_k, top_p, seed, ignore_eos, no_cache, json } => {
            let m = load_model(&model)?;
            let sp = load_prompt(&m, &prompt)?;
            let ids = m.encode(&text)?;
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
            let out = infer::generate(&m.llama, sp.as_ref().map(|p| p.embeddings.data.as_slice()), &ids, &s, |tok| {
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
            })?;
            let secs = t.elapsed().as_secs_f64();
            if json {
                println!("{}", json!({ "ids": out, "text": m.decode(&out)?, "seconds": secs }));
            } else {
                println!();
                eprintln!("softprompt: {} tokens in {:.2}s ({:.1} tok/s incl. prefill)", out.len(), secs, out.len() as f64 / secs);
            }
        }
        Cmd::Info { model, prompt, json } => {
            anyhow::ensure!(model.is_some() || prompt.is_some(), "give --model and/or --prompt");
            let mut report = serde_json::Map::new();
            let mut loaded = None;
            if let Some(spec) = &model {
                let m = load_model(&ModelArgs { model: spec.clone() })?;
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
                let norms: Vec<f32> = (0..p.num_virtual_tokens()).map(|i| p.row(i).iter().map(|x| x * x).sum::<f32>().sqrt()).collect();
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
                    pj["compatible_with_model"] = match p.check_compatible(m.llama.dims.d, &m.fingerprint, false) {
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
