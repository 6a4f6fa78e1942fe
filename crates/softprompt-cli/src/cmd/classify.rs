//! `softprompt classify`: one input, ranked over the task's label words.

use anyhow::{Context, Result};
use clap::Args;
use serde_json::json;
use softprompt_core::infer::objective;
use softprompt_core::train;

use super::common::{load_model, prompt_views, ModelArgs, PromptOrTemplate, TaskArgs};

#[derive(Args)]
pub struct ClassifyArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    prompt: PromptOrTemplate,
    #[command(flatten)]
    task: TaskArgs,
    /// The input text: fills the template's only field (e.g. {sentence}).
    #[arg(long, short, conflicts_with = "input")]
    text: Option<String>,
    /// A JSON record with the template's fields, e.g. '{"premise": "...", "hypothesis": "..."}'.
    #[arg(long)]
    input: Option<String>,
    /// Average multi-token candidates' log-probs over their tokens.
    #[arg(long)]
    length_norm: bool,
    /// Print `{"label", "candidate", "probabilities", "scores"}`.
    #[arg(long)]
    json: bool,
}

pub fn run(a: ClassifyArgs) -> Result<()> {
    let m = load_model(&a.model)?;
    let sps = a.prompt.load(&m)?;
    let spec = a.task.resolve(sps.first(), None)?;
    let input = match (a.text, a.input) {
        (_, Some(j)) => serde_json::from_str(&j).context("--input must be a JSON object")?,
        (Some(t), None) => json!(t),
        (None, None) => anyhow::bail!("give --text or --input"),
    };
    let (ex, cands) = train::eval::class_example(&m, &spec, input)?;
    let views = prompt_views(&sps)?;
    let r =
        objective::classify_ensemble(&m.llama, &views, std::slice::from_ref(&ex), a.length_norm)?;
    let probs = objective::softmax(&r.scores[0]);
    let best = objective::argmax(&r.scores[0]);
    let labels = spec.label_values();
    if a.json {
        println!(
            "{}",
            json!({ "label": labels[best], "candidate": cands[best], "probabilities": labels.iter().zip(&probs).map(|(l, p)| (l.clone(), json!(p))).collect::<serde_json::Map<_, _>>(), "scores": r.scores[0] })
        );
        return Ok(());
    }
    for ((l, c), p) in labels.iter().zip(&cands).zip(&probs) {
        println!("{:>6.3}  {l} {c:?}", p);
    }
    println!("=> {} {:?}", labels[best], cands[best]);
    Ok(())
}
