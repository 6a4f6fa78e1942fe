//! `softprompt generate`: continue a text with the soft prompt prepended, streamed to stdout.

use std::io::Write;

use anyhow::Result;
use clap::Args;
use serde_json::json;
use softprompt_core::infer::{self, Sampling};
use softprompt_core::prompt::SoftPrompt;

use super::common::{load_model, load_prompt, ModelArgs, PromptArgs};

#[derive(Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    prompt: PromptArgs,
    /// The text to continue (<bos> is added where the model expects one).
    #[arg(long, short)]
    text: String,
    /// Most tokens to generate.
    #[arg(long, default_value_t = 64)]
    max_new_tokens: usize,
    /// Sampling temperature (0 = greedy).
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Keep the k most likely tokens (0 = all).
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    /// Nucleus sampling threshold (1 = off).
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// Sampling seed (the same seed gives the same text).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Do not stop at end-of-sequence tokens.
    #[arg(long)]
    ignore_eos: bool,
    /// Recompute the whole sequence at each step instead of using the KV cache.
    #[arg(long)]
    no_cache: bool,
    /// Print `{"ids": [...], "text": "...", "seconds": S}` at the end instead of streaming.
    #[arg(long)]
    json: bool,
}

pub fn run(a: GenerateArgs) -> Result<()> {
    let m = load_model(&a.model)?;
    let sp = load_prompt(&m, &a.prompt)?;
    let ids = m.encode_input(&a.text)?; // with <bos> where the model expects one
    let s = Sampling {
        max_new_tokens: a.max_new_tokens,
        temperature: a.temperature,
        top_k: a.top_k,
        top_p: a.top_p,
        seed: a.seed,
        eos: if a.ignore_eos {
            Vec::new()
        } else {
            m.eos_ids()
        },
        min_new_tokens: 0,
        no_cache: a.no_cache,
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
            if !a.json {
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
    if a.json {
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
    Ok(())
}
