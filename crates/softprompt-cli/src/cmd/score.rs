//! `softprompt score`: the log-probability of every token of a text, given the soft prompt.

use anyhow::Result;
use clap::Args;
use serde_json::json;
use softprompt_core::infer;
use softprompt_core::prompt::SoftPrompt;

use super::common::{load_model, load_prompt, ModelArgs, PromptArgs};

#[derive(Args)]
pub struct ScoreArgs {
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
}

pub fn run(a: ScoreArgs) -> Result<()> {
    let mut m = load_model(&a.model)?;
    // Exact (batch-invariant) mode, as `softprompt serve` runs: the server's `echo`/`logprobs`
    // answers are these same bits.
    m.llama.exact = true;
    let sp = load_prompt(&m, &a.prompt)?;
    let ids = m.encode_input(&a.text)?; // with <bos> where the model expects one
    let lp = infer::score(
        &m.llama,
        sp.as_ref().map(SoftPrompt::view).transpose()?,
        &ids,
    )?;
    if a.json {
        println!("{}", json!({ "ids": ids, "logprobs": lp }));
        return Ok(());
    }
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
    Ok(())
}
