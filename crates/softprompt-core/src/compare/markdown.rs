//! The comparison as `compare.md` (the Markdown table), `compare.png` and `compare.json`.

use std::path::Path;

use super::measure::PPL_WINDOW;
use super::{best, Comparison, SecondTask, TrainedStage};
use crate::fsio::atomic_write;
use crate::report::markdown::{human_bytes, human_count, human_secs};
use crate::report::plot;
use crate::{Error, Result};

/// The Markdown table: the seed's comparison, with measured numbers (one column per method
/// that ran).
pub fn markdown(c: &Comparison) -> String {
    let b = &c.base;
    let tm = &c.timing;
    let pc = |x: f64| format!("{:.1}%", 100.0 * x);
    let mem = |m: Option<u64>| m.map_or("n/a".into(), human_bytes);
    let ms = |x: Option<f64>| x.map_or("n/a".into(), |x| format!("{x:.1} ms"));
    let na = "n/a".to_string();
    let task = &c.config.prompt.task.name;
    let ppl = |after: f64| {
        let d = after - b.general_ppl;
        format!("**{:.3} → {:.3} ({d:+.3})**", b.general_ppl, after)
    };
    let st = |after: &Option<SecondTask>| match (&b.second_task, after) {
        (Some(x), Some(y)) => format!(
            "{} → {} ({:+.1} pt)",
            pc(x.accuracy),
            pc(y.accuracy),
            100.0 * (y.accuracy - x.accuracy)
        ),
        _ => na.clone(),
    };
    let same = |d: &str| {
        if d == b.weights_digest {
            format!("byte-identical (sha256 {}…)", &d[..12])
        } else {
            format!("changed (sha256 {}…)", &d[..12])
        }
    };
    let untrained = || "unchanged (no training)".to_string();
    let mut cols: Vec<(String, Vec<String>)> = Vec::new();
    if let Some(h) = &c.hard {
        if let Some(r) = best(&h.zero_shot) {
            cols.push((
                "hard prompt, zero-shot".into(),
                vec![
                    "0".into(),
                    format!("{} B (template)", r.template.len()),
                    format!("0 (template search {})", human_secs(h.seconds)),
                    mem(h.peak_rss_bytes),
                    na.clone(),
                    format!("{} (best of {})", pc(r.accuracy), h.zero_shot.len()),
                    format!("{} ({:.0})", ms(tm.zero_shot_ms), r.tokens_per_example),
                    untrained(),
                    untrained(),
                    "untouched".into(),
                ],
            ));
        }
        if let Some(r) = best(&h.few_shot) {
            let demos = h
                .few_shot
                .iter()
                .position(|x| x.template == r.template)
                .and_then(|i| h.demo_prefixes.get(i))
                .map_or(0, |p| p.len());
            cols.push((
                "hard prompt, few-shot".into(),
                vec![
                    "0".into(),
                    format!("{} B (template + demos)", r.template.len() + demos),
                    "0 (same search)".into(),
                    "(same stage)".into(),
                    na.clone(),
                    format!("{} ({}-shot, best template)", pc(r.accuracy), r.shots),
                    format!("{} ({:.0})", ms(tm.few_shot_ms), r.tokens_per_example),
                    untrained(),
                    untrained(),
                    "untouched".into(),
                ],
            ));
        }
    }
    let trained = |t: &TrainedStage, artifact: &str, infer: Option<f64>, weights: String| {
        vec![
            format!(
                "{} ({:.4}% of {})",
                human_count(t.trainable_parameters),
                100.0 * t.trainable_parameters as f64 / b.num_parameters as f64,
                human_count(b.num_parameters)
            ),
            format!("{} ({artifact})", human_bytes(t.artifact_bytes)),
            format!("{} ({} steps)", human_secs(t.train_seconds), t.steps),
            mem(t.peak_rss_bytes),
            match (t.first_loss, t.last_loss) {
                (Some(a), Some(b)) => format!("{a:.3} → {b:.3}"),
                _ => na.clone(),
            },
            format!("**{}**", pc(t.accuracy)),
            format!("{} ({:.0})", ms(infer), t.tokens_per_example),
            ppl(t.general_ppl_after),
            st(&t.second_task_after),
            weights,
        ]
    };
    if let Some(t) = &c.prompt_tuning {
        cols.push((
            "prompt tuning".into(),
            trained(
                t,
                "PEFT adapter",
                tm.prompt_tuning_ms,
                same(&t.weights_digest_after),
            ),
        ));
    }
    if let Some(t) = &c.residual {
        cols.push((
            format!("residual prompt tuning ({})", c.config.residual),
            trained(
                t,
                "PEFT adapter, MLP folded in",
                tm.prompt_tuning_ms,
                same(&t.weights_digest_after),
            ),
        ));
    }
    if let Some(t) = &c.deep {
        cols.push((
            "deep prompt (prefix tuning)".into(),
            trained(
                t,
                "PEFT prefix-tuning adapter",
                tm.deep_ms,
                same(&t.weights_digest_after),
            ),
        ));
    }
    if let Some(t) = &c.ensemble {
        let k = [&c.prompt_tuning, &c.residual, &c.deep]
            .iter()
            .filter(|x| x.is_some())
            .count();
        let mut col = trained(
            t,
            &format!("{k} adapters"),
            None,
            same(&t.weights_digest_after),
        );
        col[2] = format!("{} (sum of the {k} members)", human_secs(t.train_seconds));
        col[6] = format!(
            "{k} forwards per example ({:.0} rows)",
            t.tokens_per_example
        );
        cols.push((format!("ensemble of {k} prompts"), col));
    }
    if let Some(t) = &c.lora {
        let l = &c.config.lora;
        cols.push((
            format!("LoRA (r={}, q/v, merged)", l.rank),
            trained(
                t,
                "PEFT LoRA adapter, f32",
                Some(tm.full_finetuning_ms),
                format!(
                    "merged: {}; restored byte-identical after the stage",
                    same(&t.weights_digest_after)
                ),
            ),
        ));
    }
    if let Some(t) = &c.full_finetuning {
        cols.push((
            "full fine-tuning".into(),
            trained(
                t,
                "f32 HF folder",
                Some(tm.full_finetuning_ms),
                same(&t.weights_digest_after),
            ),
        ));
    }
    let n_val = [&c.prompt_tuning, &c.lora, &c.full_finetuning]
        .into_iter()
        .flatten()
        .map(|t| t.n)
        .next()
        .or_else(|| {
            c.hard
                .as_ref()
                .and_then(|h| best(&h.zero_shot))
                .map(|r| r.n)
        })
        .unwrap_or(0);
    let second_name = b
        .second_task
        .as_ref()
        .map_or("second task".to_string(), |s| {
            format!("{} validation ({})", s.name, s.n)
        });
    let rows = [
        "trainable parameters".to_string(),
        "artifact on disk".into(),
        "training wall time".into(),
        "peak memory (RSS, stage)".into(),
        "training loss (mean of first → last steps)".into(),
        format!("**{task} validation accuracy**"),
        "inference per example (tokens in)".into(),
        "forgetting: general-text perplexity (before → after)".into(),
        format!("forgetting: {second_name} accuracy, no prompt"),
        "base model weights after training".into(),
    ];
    let mut s = String::new();
    s.push_str(&format!(
        "## softprompt compare: {task} on {}\n\n",
        c.config.model
    ));
    s.push_str(&format!(
        "Same training data, batches ({} x {}), seed and schedule for every trained method; \
         validation = the task's validation split ({n_val} examples).\n\n",
        c.config.prompt.steps, c.config.prompt.batch_size
    ));
    let heads: Vec<&str> = cols.iter().map(|c| c.0.as_str()).collect();
    s.push_str(&format!("| | {} |\n", heads.join(" | ")));
    s.push_str(&format!("|---|{}\n", "---:|".repeat(cols.len())));
    for (i, name) in rows.iter().enumerate() {
        let cells: Vec<&str> = cols.iter().map(|c| c.1[i].as_str()).collect();
        s.push_str(&format!("| {name} | {} |\n", cells.join(" | ")));
    }
    s.push_str(&format!(
        "\nBase weights sha256 before training: `{}`. General text: {} tokens \
         (`crates/softprompt-core/data/general_text.txt`), perplexity over windows of {PPL_WINDOW} tokens. \
         Peak memory is the process's resident high-water mark reset at the start of each \
         stage (the loaded model alone: {}). Inference: rank classification of the first {} \
         validation examples, batches of {}, the inputs timed back to back on one model \
         in {} interleaved rounds (best round), since the cost depends on the architecture \
         and the input length, not on the weights' values (merged LoRA and full \
         fine-tuning: the base model's forward).\n",
        b.weights_digest,
        b.general_tokens,
        mem(b.rss_after_load_bytes),
        tm.examples,
        c.config.prompt.eval_batch_size,
        tm.rounds
    ));
    let hard_lines: Vec<String> = c
        .hard
        .iter()
        .flat_map(|h| h.zero_shot.iter().chain(&h.few_shot))
        .map(|r| {
            format!(
                "- `{}` ({}-shot): {}",
                r.template.replace('\n', "\\n"),
                r.shots,
                pc(r.accuracy)
            )
        })
        .collect();
    if !hard_lines.is_empty() {
        s.push_str(&format!(
            "\nHard prompts evaluated:\n{}\n",
            hard_lines.join("\n")
        ));
    }
    s
}

/// Write `compare.md`, `compare.png` (validation accuracy and perplexity change per method)
/// and `compare.json` to `out`.
pub fn report(c: &Comparison, out: &Path) -> Result<()> {
    atomic_write(&out.join("compare.md"), markdown(c).as_bytes())?;
    let json = serde_json::to_string_pretty(c)
        .map_err(|e| Error::Input(format!("cannot serialize the comparison: {e}")))?;
    atomic_write(&out.join("compare.json"), json.as_bytes())?;
    let mut bars = Vec::new();
    if let Some(h) = &c.hard {
        bars.push((
            "zero-shot: accuracy".to_string(),
            best(&h.zero_shot).map_or(f64::NAN, |r| r.accuracy),
        ));
        bars.push((
            format!("{}-shot: accuracy", c.config.shots),
            best(&h.few_shot).map_or(f64::NAN, |r| r.accuracy),
        ));
    }
    let trained = [
        ("prompt tuning", &c.prompt_tuning),
        ("residual", &c.residual),
        ("deep", &c.deep),
        ("ensemble", &c.ensemble),
        ("LoRA", &c.lora),
        ("full FT", &c.full_finetuning),
    ];
    for (name, t) in trained {
        if let Some(t) = t {
            bars.push((format!("{name}: accuracy"), t.accuracy));
        }
    }
    for (name, t) in trained {
        if let Some(t) = t {
            bars.push((
                format!("{name}: ppl change"),
                t.general_ppl_after / c.base.general_ppl - 1.0,
            ));
        }
    }
    plot::bar_chart(
        &out.join("compare.png"),
        &format!(
            "{}: accuracy; relative change of general-text perplexity",
            c.config.prompt.task.name
        ),
        "fraction",
        &bars,
    )
}
