//! Turning records into model-ready text items with a [`TaskSpec`].

use std::path::Path;

use serde_json::Value;

use super::read::Record;
use super::spec::{TaskKind, TaskSpec};
use super::template::{lookup, RenderError, Template};
use crate::{Error, Result};

/// One classification example.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassItem {
    /// The rendered template (the prompt before the candidate).
    pub text: String,
    /// The rendered label texts, one per class, in spec order.
    pub candidates: Vec<String>,
    /// Index of the gold class; None when the split has no labels.
    pub label: Option<usize>,
    /// Line of the record in its file.
    pub line: usize,
}

/// One generation example.
#[derive(Debug, Clone, PartialEq)]
pub struct GenItem {
    pub input: String,
    /// The rendered target; None when the split has no targets.
    pub target: Option<String>,
    pub line: usize,
}

/// Prepared examples of one split.
#[derive(Debug, Clone, PartialEq)]
pub enum Items {
    Class(Vec<ClassItem>),
    Gen(Vec<GenItem>),
}

impl Items {
    pub fn len(&self) -> usize {
        match self {
            Items::Class(v) => v.len(),
            Items::Gen(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Keep the first `n` items.
    pub fn truncate(&mut self, n: usize) {
        match self {
            Items::Class(v) => v.truncate(n),
            Items::Gen(v) => v.truncate(n),
        }
    }
}

/// One split of a task, read and prepared: what every command that evaluates or trains loads.
#[derive(Clone, Debug)]
pub struct Split {
    pub items: Items,
    /// How to name the split to the user (the built-in name, the `hf://` address, or the path).
    pub name: String,
    /// Bad rows skipped while reading and preparing (only with `skip_bad_rows`).
    pub skipped: usize,
}

/// Read the split `file` ([`super::load_split`]: a file, a file under `data_root`, an
/// `hf://datasets/` address or a `builtin:` split) and prepare its records for `spec`.
pub fn load_items(
    spec: &TaskSpec,
    file: &str,
    data_root: Option<&Path>,
    skip_bad_rows: bool,
) -> Result<Split> {
    let (records, skipped_read, name) = super::load_split(file, data_root, skip_bad_rows)?;
    let (items, skipped_prep) = prepare(spec, &records, Path::new(&name), skip_bad_rows)?;
    Ok(Split {
        items,
        name,
        skipped: skipped_read + skipped_prep,
    })
}

/// The string form of a label value: strings trimmed, integers (also `1.0`) as digits, booleans
/// as `true`/`false`. None for null, lists and objects.
pub fn label_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.trim().to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(if let Some(i) = n.as_i64() {
            i.to_string()
        } else if let Some(u) = n.as_u64() {
            u.to_string()
        } else {
            match n.as_f64() {
                Some(f) if f.is_finite() && f.fract() == 0.0 && f.abs() < 1e15 => {
                    format!("{}", f as i64)
                }
                _ => n.to_string(),
            }
        }),
        _ => None,
    }
}

/// Render every record with `spec`.
///
/// Classification: the template, each label's candidate text, and the gold class. The label is
/// matched against the spec's values exactly (after trimming), else ignoring ASCII case when that
/// identifies one class. When no record has the label field the split is unlabeled and every
/// label is None; when only some lack it, those are errors.
///
/// Generation: the input template and the target template; the target is None for every item
/// when no record has the fields it uses.
///
/// Problems (missing field, unknown label...) are errors `FILE: line N: ...`, or with
/// `skip_bad_rows` the record is dropped and counted (the second value). `path` is only used in
/// messages. A split left without any item is an error.
pub fn prepare(
    spec: &TaskSpec,
    records: &[Record],
    path: &Path,
    skip_bad_rows: bool,
) -> Result<(Items, usize)> {
    let parse = |what: &str, t: &str| {
        Template::parse(t).map_err(|e| Error::Input(format!("task {}: {what}: {e}", spec.name)))
    };
    let mut skipped = 0usize;
    let mut bad = |line: usize, msg: String| -> Result<()> {
        if skip_bad_rows {
            skipped += 1;
            Ok(())
        } else {
            Err(Error::format(path, format!("line {line}: {msg}")))
        }
    };
    let describe = |e: RenderError, used_by: &str, rec: &Record| match e {
        RenderError::Missing(f) => {
            let have: Vec<&str> = rec.fields.keys().map(String::as_str).collect();
            format!(
                "missing field '{f}' used by the {used_by} (the record has: {})",
                if have.is_empty() {
                    "no fields".to_string()
                } else {
                    have.join(", ")
                }
            )
        }
        RenderError::Bad(m) => format!("{m} (in the {used_by})"),
    };

    let items = match &spec.kind {
        TaskKind::Classification {
            template,
            label_field,
            labels,
            ..
        } => {
            let tpl = parse("template", template)?;
            let cand_tpls = labels
                .iter()
                .map(|l| parse(&format!("label '{}'", l.value), &l.text))
                .collect::<Result<Vec<_>>>()?;
            let values: Vec<&str> = labels.iter().map(|l| l.value.trim()).collect();
            let labeled = records
                .iter()
                .any(|r| lookup(&r.fields, label_field).is_some());
            let mut out = Vec::with_capacity(records.len());
            'rec: for rec in records {
                let text = match tpl.render(&rec.fields) {
                    Ok(t) => t,
                    Err(e) => {
                        bad(rec.line, describe(e, "template", rec))?;
                        continue;
                    }
                };
                let mut candidates = Vec::with_capacity(labels.len());
                for (l, ct) in labels.iter().zip(&cand_tpls) {
                    match ct.render(&rec.fields) {
                        Ok(c) => candidates.push(c),
                        Err(e) => {
                            let used_by = format!("text of label '{}'", l.value);
                            bad(rec.line, describe(e, &used_by, rec))?;
                            continue 'rec;
                        }
                    }
                }
                let label = if labeled {
                    let Some(v) = lookup(&rec.fields, label_field) else {
                        bad(
                            rec.line,
                            format!("missing label field '{label_field}' (other records have it)"),
                        )?;
                        continue;
                    };
                    let Some(s) = label_string(v) else {
                        bad(
                            rec.line,
                            format!("label field '{label_field}' is not a single value"),
                        )?;
                        continue;
                    };
                    match match_label(&values, &s) {
                        Some(i) => Some(i),
                        None => {
                            bad(
                                rec.line,
                                format!(
                                    "unknown label '{s}' (expected one of {})",
                                    values.join(", ")
                                ),
                            )?;
                            continue;
                        }
                    }
                } else {
                    None
                };
                out.push(ClassItem {
                    text,
                    candidates,
                    label,
                    line: rec.line,
                });
            }
            Items::Class(out)
        }
        TaskKind::Generation {
            template, target, ..
        } => {
            let tpl = parse("template", template)?;
            let target_tpl = parse("target", target)?;
            let targets: Vec<_> = records
                .iter()
                .map(|r| target_tpl.render(&r.fields))
                .collect();
            let has_targets = targets
                .iter()
                .any(|t| !matches!(t, Err(RenderError::Missing(_))));
            let mut out = Vec::with_capacity(records.len());
            for (rec, tgt) in records.iter().zip(targets) {
                let input = match tpl.render(&rec.fields) {
                    Ok(t) => t,
                    Err(e) => {
                        bad(rec.line, describe(e, "template", rec))?;
                        continue;
                    }
                };
                let target = match (has_targets, tgt) {
                    (false, _) => None,
                    (true, Ok(t)) => Some(t),
                    (true, Err(e)) => {
                        bad(rec.line, describe(e, "target", rec))?;
                        continue;
                    }
                };
                out.push(GenItem {
                    input,
                    target,
                    line: rec.line,
                });
            }
            Items::Gen(out)
        }
    };
    if items.is_empty() {
        let why = if skipped > 0 {
            format!("no usable records ({skipped} skipped)")
        } else {
            "no records".to_string()
        };
        return Err(Error::format(path, why));
    }
    Ok((items, skipped))
}

/// Index of `s` among `values`: exact match, else the single case-insensitive match.
fn match_label(values: &[&str], s: &str) -> Option<usize> {
    if let Some(i) = values.iter().position(|v| *v == s) {
        return Some(i);
    }
    let mut found = values
        .iter()
        .enumerate()
        .filter(|(_, v)| v.eq_ignore_ascii_case(s));
    match (found.next(), found.next()) {
        (Some((i, _)), None) => Some(i),
        _ => None,
    }
}

/// Number of labelled items per class (length: the number of classes).
pub fn label_counts(items: &[ClassItem]) -> Vec<usize> {
    let classes = items.iter().map(|i| i.candidates.len()).max().unwrap_or(0);
    let mut counts = vec![0usize; classes];
    for l in items.iter().filter_map(|i| i.label) {
        if l < counts.len() {
            counts[l] += 1;
        }
    }
    counts
}

/// The most frequent class (lowest index on ties) and the accuracy of always predicting it, over
/// the labelled items. `(0, 0.0)` when no item has a label.
pub fn majority_baseline(items: &[ClassItem]) -> (usize, f64) {
    let counts = label_counts(items);
    let total: usize = counts.iter().sum();
    if total == 0 {
        return (0, 0.0);
    }
    let (best, &n) = counts
        .iter()
        .enumerate()
        .max_by(|(ia, a), (ib, b)| a.cmp(b).then(ib.cmp(ia)))
        .unwrap_or((0, &0));
    (best, n as f64 / total as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn label_strings() {
        assert_eq!(label_string(&json!(1)).as_deref(), Some("1"));
        assert_eq!(label_string(&json!(1.0)).as_deref(), Some("1"));
        assert_eq!(label_string(&json!(0.5)).as_deref(), Some("0.5"));
        assert_eq!(label_string(&json!(true)).as_deref(), Some("true"));
        assert_eq!(label_string(&json!(" pos ")).as_deref(), Some("pos"));
        assert_eq!(label_string(&json!([1])), None);
    }

    #[test]
    fn matching() {
        assert_eq!(match_label(&["false", "true"], "True"), Some(1));
        assert_eq!(match_label(&["a", "A"], "A"), Some(1));
        assert_eq!(match_label(&["a", "A"], "x"), None);
    }

    #[test]
    fn majority_ties_lowest() {
        let item = |l| ClassItem {
            text: String::new(),
            candidates: vec![String::new(); 3],
            label: Some(l),
            line: 1,
        };
        let items = vec![item(2), item(1), item(2), item(1)];
        assert_eq!(label_counts(&items), vec![0, 2, 2]);
        assert_eq!(majority_baseline(&items), (1, 0.5));
        assert_eq!(majority_baseline(&[]), (0, 0.0));
    }
}
