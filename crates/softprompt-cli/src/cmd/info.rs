//! `softprompt info`: a model's and/or a soft prompt's description.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use serde_json::{json, Value};
use softprompt_core::compute::weight::WeightFormat;
use softprompt_core::prompt::SoftPrompt;

use super::common::{load_model, ModelArgs};

#[derive(Args)]
pub struct InfoArgs {
    /// Base model to describe.
    #[arg(long, short)]
    model: Option<String>,
    /// Soft prompt folder to describe.
    #[arg(long, short)]
    prompt: Option<PathBuf>,
    /// Print the description as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(a: InfoArgs) -> Result<()> {
    anyhow::ensure!(
        a.model.is_some() || a.prompt.is_some(),
        "give --model and/or --prompt"
    );
    let mut report = serde_json::Map::new();
    let mut loaded = None;
    if let Some(spec) = &a.model {
        let m = load_model(&ModelArgs {
            model: spec.clone(),
            weights: WeightFormat::F32,
            recompute: false,
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
                "rope": c.describe_rope(),
                "tie_word_embeddings": c.tie_word_embeddings,
                "fingerprint": m.fingerprint,
                "tokenizer_fingerprint": m.tokenizer_fingerprint,
            }),
        );
        loaded = Some(m);
    }
    if let Some(dir) = &a.prompt {
        let p = SoftPrompt::load(dir)?;
        let norms: Vec<f32> = (0..p.num_virtual_tokens())
            .map(|i| p.row(i).iter().map(|x| x * x).sum::<f32>().sqrt())
            .collect();
        let mut pj = json!({
            "folder": dir,
            "peft_type": p.config.peft_type,
            "task_type": p.config.task_type,
            "num_virtual_tokens": p.num_virtual_tokens(),
            "token_dim": p.config.token_dim,
            "values_per_virtual_token": p.hidden_size(),
            "parameters": p.embeddings.numel(),
            "base_model_name_or_path": p.config.base_model_name_or_path,
            "mean_vector_norm": norms.iter().sum::<f32>() / norms.len().max(1) as f32,
            "softprompt_meta": p.meta,
        });
        if let Some(m) = &loaded {
            pj["compatible_with_model"] = match p.check_for(m, false) {
                Ok(()) => json!(true),
                Err(e) => json!(e.to_string()),
            };
        }
        report.insert("prompt".into(), pj);
    }
    let v = Value::Object(report);
    if a.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print_tree(&v, 0);
    }
    Ok(())
}

fn print_tree(v: &Value, indent: usize) {
    if let Value::Object(map) = v {
        for (k, val) in map {
            match val {
                Value::Object(_) => {
                    println!("{:indent$}{k}:", "");
                    print_tree(val, indent + 2);
                }
                Value::String(s) => println!("{:indent$}{k}: {s}", ""),
                other => println!("{:indent$}{k}: {other}", ""),
            }
        }
    }
}
