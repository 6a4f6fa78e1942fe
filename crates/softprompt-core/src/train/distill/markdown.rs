//! `distill.md`: the evaluation as a Markdown report.

use super::*;

/// `distill.md`: the report as a table.
pub fn report_markdown(r: &DistillReport) -> String {
    let pct = |x: f64| format!("{:.2}%", 100.0 * x);
    let mut s = format!(
        "# Prompt distillation\n\nModel: {}\n\nHard prompt: {} tokens (sha256 {}), distilled into {} virtual tokens ({:.1}x shorter); \
         {} training inputs, {} held-out inputs, {} teacher tokens per input, top-{} + rest.\n\n\
         | held-out | greedy exact match with the teacher | token agreement | mean KL |\n|---|---|---|---|\n\
         | soft prompt ({} tokens) | {} | {} | {:.4} |\n| no prompt | {} | {} | {:.4} |\n",
        r.model,
        r.hard_prompt_tokens,
        r.hard_prompt_sha256,
        r.virtual_tokens,
        r.prompt_length_ratio,
        r.train_inputs,
        r.heldout_inputs,
        r.teacher_tokens,
        r.top_k,
        r.virtual_tokens,
        pct(r.student.exact_match),
        pct(r.student.token_agreement),
        r.student.mean_kl,
        pct(r.no_prompt.exact_match),
        pct(r.no_prompt.token_agreement),
        r.no_prompt.mean_kl,
    );
    if let Some(a) = &r.accuracy {
        s += &format!(
            "\nTask accuracy on {} labelled held-out inputs (rank classification):\n\n\
             | hard prompt | soft prompt | no prompt |\n|---|---|---|\n| {} | {} | {} |\n",
            a.n,
            pct(a.hard_prompt),
            pct(a.soft_prompt),
            pct(a.no_prompt)
        );
    }
    s += &format!(
        "\nTokens per request (mean over held-out inputs): hard prompt as text {:.1}, soft prompt {:.1}.\n\
         Training: {} steps in {:.0}s; teacher data {:.0}s{}.\n",
        r.tokens_per_request_hard,
        r.tokens_per_request_soft,
        r.steps,
        r.train_seconds,
        r.teacher_seconds,
        if r.teacher_cached { " (cached)" } else { "" }
    );
    s
}
