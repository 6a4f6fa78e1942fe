//! The comparison as `compare.md` (the Markdown table), `compare.png` and `compare.json`.

use std::path::Path;

use super::measure::PPL_WINDOW;
use super::{best, Comparison, HardResult, SecondTask};
use crate::fsio::atomic_write;
use crate::report::markdown::{human_bytes, human_count, human_secs};
use crate::report::plot;
use crate::{Error, Result};

/// The Markdown table: the seed's comparison, with measured numbers.
pub fn markdown(c: &Comparison) -> String {
    let b = &c.base;
    let (pt, ft) = (&c.prompt_tuning, &c.full_finetuning);
    let z = best(&c.hard.zero_shot);
    let f = best(&c.hard.few_shot);
    let pc = |x: f64| format!("{:.1}%", 100.0 * x);
    let mem = |m: Option<u64>| m.map_or("n/a".into(), human_bytes);
    let na = "n/a".to_string();
    let task = &c.config.prompt.task.name;
    let mut s = String::new();
    s.push_str(&format!(
        "## softprompt compare: {task} on {}\n\n",
        c.config.model
    ));
    s.push_str(&format!(
        "Same training data, batches ({} x {}), seed and schedule for both trained methods; \
         validation = the task's validation split ({} examples).\n\n",
        c.config.prompt.steps, c.config.prompt.batch_size, pt.n
    ));
    s.push_str(
        "| | hard prompt, zero-shot | hard prompt, few-shot | prompt tuning | full fine-tuning |\n",
    );
    s.push_str("|---|---:|---:|---:|---:|\n");
    let zs = |g: &dyn Fn(&HardResult) -> String| z.map_or(na.clone(), g);
    let fs = |g: &dyn Fn(&HardResult) -> String| f.map_or(na.clone(), g);
    let row = |s: &mut String, name: &str, cells: [String; 4]| {
        s.push_str(&format!("| {name} | {} |\n", cells.join(" | ")));
    };
    row(
        &mut s,
        "trainable parameters",
        [
            "0".into(),
            "0".into(),
            format!(
                "{} ({:.4}% of {})",
                human_count(pt.trainable_parameters),
                100.0 * pt.trainable_parameters as f64 / b.num_parameters as f64,
                human_count(b.num_parameters)
            ),
            human_count(ft.trainable_parameters),
        ],
    );
    row(
        &mut s,
        "artifact on disk",
        [
            zs(&|r| format!("{} B (template)", r.template.len())),
            fs(&|r| {
                let demos = c
                    .hard
                    .few_shot
                    .iter()
                    .position(|x| x.template == r.template)
                    .and_then(|i| c.hard.demo_prefixes.get(i))
                    .map_or(0, |p| p.len());
                format!("{} B (template + demos)", r.template.len() + demos)
            }),
            format!("{} (PEFT adapter)", human_bytes(pt.artifact_bytes)),
            format!("{} (f32 HF folder)", human_bytes(ft.artifact_bytes)),
        ],
    );
    row(
        &mut s,
        "training wall time",
        [
            format!("0 (template search {})", human_secs(c.hard.seconds)),
            "0 (same search)".into(),
            format!("{} ({} steps)", human_secs(pt.train_seconds), pt.steps),
            format!("{} ({} steps)", human_secs(ft.train_seconds), ft.steps),
        ],
    );
    row(
        &mut s,
        "peak memory (RSS, stage)",
        [
            mem(c.hard.peak_rss_bytes),
            "(same stage)".into(),
            mem(pt.peak_rss_bytes),
            mem(ft.peak_rss_bytes),
        ],
    );
    row(
        &mut s,
        "training loss (mean of first → last steps)",
        [
            na.clone(),
            na.clone(),
            match (pt.first_loss, pt.last_loss) {
                (Some(a), Some(b)) => format!("{a:.3} → {b:.3}"),
                _ => na.clone(),
            },
            match (ft.first_loss, ft.last_loss) {
                (Some(a), Some(b)) => format!("{a:.3} → {b:.3}"),
                _ => na.clone(),
            },
        ],
    );
    row(
        &mut s,
        &format!("**{task} validation accuracy**"),
        [
            zs(&|r| format!("{} (best of {})", pc(r.accuracy), c.hard.zero_shot.len())),
            fs(&|r| format!("{} ({}-shot, best template)", pc(r.accuracy), r.shots)),
            format!("**{}**", pc(pt.accuracy)),
            format!("**{}**", pc(ft.accuracy)),
        ],
    );
    let tm = &c.timing;
    row(
        &mut s,
        "inference per example (tokens in)",
        [
            zs(&|r| format!("{:.1} ms ({:.0})", tm.zero_shot_ms, r.tokens_per_example)),
            fs(&|r| {
                format!(
                    "{} ({:.0})",
                    tm.few_shot_ms.map_or(na.clone(), |x| format!("{x:.1} ms")),
                    r.tokens_per_example
                )
            }),
            format!(
                "{:.1} ms ({:.0})",
                tm.prompt_tuning_ms, pt.tokens_per_example
            ),
            format!(
                "{:.1} ms ({:.0})",
                tm.full_finetuning_ms, ft.tokens_per_example
            ),
        ],
    );
    let ppl = |after: f64| {
        let d = after - b.general_ppl;
        format!("{:.3} → {:.3} ({d:+.3})", b.general_ppl, after)
    };
    row(
        &mut s,
        "forgetting: general-text perplexity (before → after)",
        [
            "unchanged (no training)".into(),
            "unchanged (no training)".into(),
            format!("**{}**", ppl(pt.general_ppl_after)),
            format!("**{}**", ppl(ft.general_ppl_after)),
        ],
    );
    let st = |after: &Option<SecondTask>| match (&b.second_task, after) {
        (Some(x), Some(y)) => format!(
            "{} → {} ({:+.1} pt)",
            pc(x.accuracy),
            pc(y.accuracy),
            100.0 * (y.accuracy - x.accuracy)
        ),
        _ => na.clone(),
    };
    let second_name = b
        .second_task
        .as_ref()
        .map_or("second task".to_string(), |s| {
            format!("{} validation ({})", s.name, s.n)
        });
    row(
        &mut s,
        &format!("forgetting: {second_name} accuracy, no prompt"),
        [
            "unchanged (no training)".into(),
            "unchanged (no training)".into(),
            st(&pt.second_task_after),
            st(&ft.second_task_after),
        ],
    );
    let same = |d: &str| {
        if d == b.weights_digest {
            format!("byte-identical (sha256 {}…)", &d[..12])
        } else {
            format!("changed (sha256 {}…)", &d[..12])
        }
    };
    row(
        &mut s,
        "base model weights after training",
        [
            "untouched".into(),
            "untouched".into(),
            same(&pt.weights_digest_after),
            same(&ft.weights_digest_after),
        ],
    );
    s.push_str(&format!(
        "\nBase weights sha256 before training: `{}`. General text: {} tokens \
         (`crates/softprompt-core/data/general_text.txt`), perplexity over windows of {PPL_WINDOW} tokens. \
         Peak memory is the process's resident high-water mark reset at the start of each \
         stage (the loaded model alone: {}). Inference: rank classification of the first {} \
         validation examples, batches of {}, the four inputs timed back to back on one model \
         in {} interleaved rounds (best round), since the cost depends on the architecture \
         and the input length, not on the weights' values.\n",
        b.weights_digest,
        b.general_tokens,
        mem(b.rss_after_load_bytes),
        tm.examples,
        c.config.prompt.eval_batch_size,
        tm.rounds
    ));
    let hard_lines: Vec<String> = c
        .hard
        .zero_shot
        .iter()
        .chain(&c.hard.few_shot)
        .map(|r| {
            format!(
                "- `{}` ({}-shot): {}",
                r.template.replace('\n', "\\n"),
                r.shots,
                pc(r.accuracy)
            )
        })
        .collect();
    s.push_str(&format!(
        "\nHard prompts evaluated:\n{}\n",
        hard_lines.join("\n")
    ));
    s
}

/// Write `compare.md`, `compare.png` (validation accuracy and perplexity change per method)
/// and `compare.json` to `out`.
pub fn report(c: &Comparison, out: &Path) -> Result<()> {
    atomic_write(&out.join("compare.md"), markdown(c).as_bytes())?;
    let json = serde_json::to_string_pretty(c)
        .map_err(|e| Error::Input(format!("cannot serialize the comparison: {e}")))?;
    atomic_write(&out.join("compare.json"), json.as_bytes())?;
    let z = best(&c.hard.zero_shot).map_or(f64::NAN, |r| r.accuracy);
    let f = best(&c.hard.few_shot).map_or(f64::NAN, |r| r.accuracy);
    let (pt, ft) = (&c.prompt_tuning, &c.full_finetuning);
    let bars = vec![
        ("zero-shot: accuracy".to_string(), z),
        (format!("{}-shot: accuracy", c.config.shots), f),
        ("prompt tuning: accuracy".to_string(), pt.accuracy),
        ("full FT: accuracy".to_string(), ft.accuracy),
        (
            "prompt tuning: ppl change".to_string(),
            pt.general_ppl_after / c.base.general_ppl - 1.0,
        ),
        (
            "full FT: ppl change".to_string(),
            ft.general_ppl_after / c.base.general_ppl - 1.0,
        ),
    ];
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
