//! The report as pictures (`prompt_similarity.png`, `nearest_tokens.png`) and Markdown
//! (`inspect.md`).

use std::path::{Path, PathBuf};

use super::{InspectReport, Neighbor, MARKDOWN_FILE, NEAREST_PNG, SIMILARITY_PNG};
use crate::report::markdown::{md_code, pct};
use crate::report::plot;
use crate::{Error, Result};

/// A token as a short ASCII label for the pictures (the bitmap font draws ASCII only):
/// its trimmed piece in quotes, or `#id` when that is not printable ASCII.
fn picture_piece(n: &Neighbor) -> String {
    let t = n.piece.trim();
    if !t.is_empty() && t.chars().all(|c| c.is_ascii_graphic() || c == ' ') {
        format!("{t:?}")
    } else {
        format!("#{}", n.id)
    }
}

/// Write `prompt_similarity.png` (P×P cosine between the prompt vectors) and
/// `nearest_tokens.png` (P×k cosine of each vector's nearest tokens) into `dir`.
pub fn write_pictures(report: &InspectReport, dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let p = report.num_virtual_tokens;
    let labels: Vec<String> = report.vectors.iter().map(|v| v.label.clone()).collect();
    let sim: Vec<f32> = report.prompt_similarity.iter().flatten().copied().collect();
    let sim_png = dir.join(SIMILARITY_PNG);
    plot::heatmap(
        &sim_png,
        &format!("cosine similarity between the {p} prompt vectors"),
        &labels,
        &labels,
        &sim,
        -1.0,
        1.0,
    )?;

    let k = report
        .vectors
        .iter()
        .map(|v| v.nearest_cosine.len())
        .max()
        .unwrap_or(0);
    let mut vals = vec![f32::NAN; p * k];
    for (i, v) in report.vectors.iter().enumerate() {
        for (j, n) in v.nearest_cosine.iter().enumerate() {
            vals[i * k + j] = n.cosine;
        }
    }
    let rows: Vec<String> = report
        .vectors
        .iter()
        .map(|v| match v.nearest_cosine.first() {
            Some(n) => format!("{} {}", v.label, picture_piece(n)),
            None => v.label.clone(),
        })
        .collect();
    let cols: Vec<String> = (1..=k).map(|j| format!("#{j}")).collect();
    let lo = vals
        .iter()
        .copied()
        .filter(|x| x.is_finite())
        .fold(0.0f32, f32::min);
    let vmin = if lo < 0.0 { -1.0 } else { 0.0 };
    let near_png = dir.join(NEAREST_PNG);
    plot::heatmap(
        &near_png,
        &format!("cosine to the {k} nearest tokens"),
        &rows,
        &cols,
        &vals,
        vmin,
        1.0,
    )?;
    Ok(vec![sim_png, near_png])
}

/// A token's piece as Markdown, with its vocabulary entry when the piece is a byte fragment.
fn md_piece(n: &Neighbor) -> String {
    match &n.token {
        Some(t) if n.piece.contains('\u{FFFD}') => {
            format!("{} ({})", md_code(&n.piece), md_code(t))
        }
        _ => md_code(&n.piece),
    }
}

/// The report as Markdown (`inspect.md`); the pictures are linked by their file names.
pub fn to_markdown(r: &InspectReport) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(s, "# Soft prompt inspection\n");
    if let Some(p) = &r.prompt {
        let _ = writeln!(s, "- Prompt: `{p}`");
    }
    let _ = writeln!(s, "- Model: `{}`", r.model);
    let _ = writeln!(
        s,
        "- {} virtual tokens × {} dimensions ({}), against a vocabulary of {} tokens in the same space; k = {}",
        r.num_virtual_tokens, r.hidden_size, r.space, r.vocab_size, r.k
    );
    let n = &r.embedding_norms;
    let _ = writeln!(
        s,
        "- Token norms (this space): min {:.3}, 5% {:.3}, median {:.3}, mean {:.3}, 95% {:.3}, max {:.3}",
        n.min, n.p05, n.median, n.mean, n.p95, n.max
    );
    let mean_norm = r.vectors.iter().map(|v| v.norm).sum::<f32>() / r.vectors.len().max(1) as f32;
    let _ = writeln!(s, "- Prompt-vector norms: mean {mean_norm:.3}");
    match &r.init {
        Some(i) => {
            let _ = writeln!(
                s,
                "- Init `{}` (seed {}): mean drift L2 {:.3}, mean cosine to init {:.3}; \
                 {} of {} vectors still have their init's nearest token",
                i.init,
                i.seed,
                i.mean_drift_l2,
                i.mean_drift_cosine,
                i.same_nearest_token,
                r.num_virtual_tokens
            );
        }
        None => {
            let _ = writeln!(s, "- Init: not recorded (no drift)");
        }
    }
    for note in &r.notes {
        let _ = writeln!(s, "- Note: {note}");
    }

    let h = &r.hard_prompt;
    let _ = writeln!(s, "\n## Hard projection\n");
    let _ = writeln!(
        s,
        "Each vector replaced by its nearest token by cosine (mean cosine {:.3}).\n",
        h.mean_cosine
    );
    let _ = writeln!(s, "Token ids: `{:?}`\n", h.ids);
    // A fence longer than any run of backticks in the text.
    let run = h.text.split(|c| c != '`').map(str::len).max().unwrap_or(0);
    let fence = "`".repeat(run.max(2) + 1);
    let _ = writeln!(s, "Text:\n\n{fence}text\n{}\n{fence}", h.text);

    let _ = writeln!(s, "\n## Evaluation\n");
    match &r.evaluation {
        Some(e) => {
            let _ = writeln!(
                s,
                "Task `{}`, data `{}`, {} examples.\n",
                e.task, e.data, e.n
            );
            let _ = writeln!(s, "| prompt | {} | loss |", e.metric);
            let _ = writeln!(s, "|---|---:|---:|");
            let _ = writeln!(s, "| soft | {} | {:.4} |", pct(e.soft.value), e.soft.loss);
            let _ = writeln!(
                s,
                "| hard projection | {} | {:.4} |",
                pct(e.hard.value),
                e.hard.loss
            );
            if let Some(b) = e.majority_baseline {
                let _ = writeln!(s, "| majority class | {} | |", pct(b));
            }
            if let Some(x) = e.retained {
                let _ = writeln!(
                    s,
                    "\nThe hard projection keeps {} of the soft prompt's {}.",
                    pct(x),
                    e.metric
                );
            }
        }
        None => {
            let _ = writeln!(s, "Not evaluated (no labelled data was given).");
        }
    }

    let _ = writeln!(s, "\n## Pictures\n");
    let _ = writeln!(
        s,
        "![cosine similarity between the prompt vectors]({SIMILARITY_PNG})\n"
    );
    let _ = writeln!(s, "![cosine to the nearest tokens]({NEAREST_PNG})");

    let _ = writeln!(s, "\n## Virtual tokens");
    for v in &r.vectors {
        let _ = writeln!(s, "\n### {}\n", v.label);
        let _ = write!(
            s,
            "Norm {:.3} (percentile {:.1} of token norms)",
            v.norm, v.norm_percentile
        );
        if let Some(d) = &v.drift {
            let _ = write!(
                s,
                "; drift from init: L2 {:.3}, cosine {:.3}",
                d.l2, d.cosine
            );
            if let Some(rel) = d.relative {
                let _ = write!(s, " (relative {:.3})", rel);
            }
            let _ = write!(s, "; the init's nearest token was id {}", d.init_nearest_id);
        }
        let _ = writeln!(s, ".\n");
        let _ = writeln!(
            s,
            "| # | nearest by cosine | id | cosine | nearest by L2 | id | L2 |"
        );
        let _ = writeln!(s, "|---:|---|---:|---:|---|---:|---:|");
        for j in 0..v.nearest_cosine.len().max(v.nearest_l2.len()) {
            let c = v.nearest_cosine.get(j);
            let l = v.nearest_l2.get(j);
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} |",
                j + 1,
                c.map_or(String::new(), md_piece),
                c.map_or(String::new(), |c| c.id.to_string()),
                c.map_or(String::new(), |c| format!("{:.3}", c.cosine)),
                l.map_or(String::new(), md_piece),
                l.map_or(String::new(), |l| l.id.to_string()),
                l.map_or(String::new(), |l| format!("{:.3}", l.l2)),
            );
        }
    }
    s
}

/// Write [`to_markdown`] to `dir/inspect.md` (atomically).
pub fn write_markdown(report: &InspectReport, dir: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let path = dir.join(MARKDOWN_FILE);
    crate::fsio::atomic_write(&path, to_markdown(report).as_bytes())?;
    Ok(path)
}
