//! Task specs: what a task's records look like and how they become prompts.
//!
//! A spec is a JSON file (see `tasks/*.json` in the repository, which are also built in):
//!
//! ```json
//! {
//!   "name": "sst2",
//!   "description": "...",
//!   "kind": {
//!     "type": "classification",
//!     "template": "Review: {sentence}\nSentiment:",
//!     "label_field": "label",
//!     "labels": [{"value": "0", "text": " negative"}, {"value": "1", "text": " positive"}],
//!     "alt_templates": ["..."]
//!   },
//!   "train": "sst2/train.tsv", "validation": "sst2/validation.tsv", "test": "sst2/test.tsv"
//! }
//! ```
//!
//! Templates are described in [`super::template`]. Unknown keys are refused (a typo such as
//! `"lables"` would otherwise silently do nothing).

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::template::Template;
use crate::{Error, Result};

/// A task: how to turn records into prompts, and its default data files.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskSpec {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub kind: TaskKind,
    /// Default split files, relative to a data root (e.g. "sst2/train.tsv"), an `hf://datasets/`
    /// address, or a built-in split (`builtin:demo/train`); None if the task has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test: Option<String>,
}

/// What the model is asked to do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum TaskKind {
    /// Rank classification: the model scores each class's candidate text after the rendered
    /// template; the most probable candidate is the prediction.
    Classification {
        template: String,
        #[serde(default = "default_label_field")]
        label_field: String,
        labels: Vec<LabelSpec>,
        /// Other wordings of `template` (same fields, same candidates), for comparing hand-written
        /// prompts with a tuned soft prompt.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        alt_templates: Vec<String>,
    },
    /// Input → target text; the loss is on the target tokens only.
    Generation {
        /// The input, e.g. "{input}".
        template: String,
        /// The target, e.g. " {target}".
        target: String,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        alt_templates: Vec<String>,
    },
}

/// One class of a classification task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelSpec {
    /// The data's label written as a string: "0", "1", "entailment", "true" (JSON numbers and
    /// booleans in the data match their string form).
    pub value: String,
    /// The candidate continuation, itself a template: " positive", or " {choice1}" for COPA.
    pub text: String,
}

fn default_label_field() -> String {
    "label".to_string()
}

/// The built-in tasks, as `(name, spec JSON)`; the files live in the repository's `tasks/`.
const BUILTIN: &[(&str, &str)] = &[
    ("demo", include_str!("../../../../tasks/demo.json")),
    ("sst2", include_str!("../../../../tasks/sst2.json")),
    ("boolq", include_str!("../../../../tasks/boolq.json")),
    ("cb", include_str!("../../../../tasks/cb.json")),
    ("copa", include_str!("../../../../tasks/copa.json")),
    ("wic", include_str!("../../../../tasks/wic.json")),
];

/// Names accepted by [`builtin_task`].
pub fn builtin_task_names() -> Vec<&'static str> {
    BUILTIN.iter().map(|(n, _)| *n).collect()
}

/// A built-in task spec by name (`demo`, `sst2`, `boolq`, `cb`, `copa`, `wic`).
pub fn builtin_task(name: &str) -> Option<TaskSpec> {
    let (_, json) = BUILTIN.iter().find(|(n, _)| *n == name)?;
    // The embedded files are checked by a unit test; a bad one would be a build defect.
    serde_json::from_str(json).ok()
}

/// Largest task spec file read (the built-in ones are under 1 KiB).
pub const MAX_TASK_FILE_BYTES: u64 = 1 << 20;

/// Read and check a task spec file (at most [`MAX_TASK_FILE_BYTES`]).
pub fn load_task_file(path: &Path) -> Result<TaskSpec> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let bytes = crate::fsio::read_at_most(path, file, MAX_TASK_FILE_BYTES)?.ok_or_else(|| {
        Error::format(
            path,
            format!("larger than {MAX_TASK_FILE_BYTES} bytes: not a task spec"),
        )
    })?;
    let spec: TaskSpec = serde_json::from_slice(&bytes)
        .map_err(|e| Error::format(path, format!("not a valid task spec: {e}")))?;
    spec.validate().map_err(|e| Error::format(path, e))?;
    Ok(spec)
}

impl TaskSpec {
    /// An ad-hoc classification task from command-line flags.
    ///
    /// - `template`: the prompt template; the two-character sequences `\n` and `\t` become a
    ///   newline and a tab (shells make real newlines awkward to type), `\\` a backslash.
    /// - `labels`: comma-separated `VALUE=WORD` pairs, e.g. `0=negative,1=positive`. A word gets
    ///   a leading space unless it already starts with whitespace or the template ends with
    ///   whitespace, so `Sentiment:` + `negative` scores " negative" — what a tokenizer sees after
    ///   a colon in running text. Words cannot contain commas.
    /// - `label_field`: the data field holding the label (usually `label`).
    pub fn from_flags(template: &str, labels: &str, label_field: &str) -> Result<TaskSpec> {
        let template = unescape_flag(template);
        let parsed = Template::parse(&template).map_err(Error::Input)?;
        let add_space = !parsed.ends_with_space();
        let mut specs = Vec::new();
        for pair in labels.split(',') {
            let pair = pair.trim_start();
            if pair.trim().is_empty() {
                continue;
            }
            let (value, word) = pair.split_once('=').ok_or_else(|| {
                Error::Input(format!(
                    "label '{pair}' is not VALUE=WORD (expected e.g. \"0=negative,1=positive\")"
                ))
            })?;
            let value = value.trim();
            let word = word.trim_end();
            if value.is_empty() || word.trim().is_empty() {
                return Err(Error::Input(format!(
                    "label '{pair}': both the value and the word must be non-empty"
                )));
            }
            let text = if add_space && !word.starts_with(char::is_whitespace) {
                format!(" {word}")
            } else {
                word.to_string()
            };
            specs.push(LabelSpec {
                value: value.to_string(),
                text,
            });
        }
        let label_field = label_field.trim();
        if label_field.is_empty() {
            return Err(Error::Input("the label field name is empty".into()));
        }
        let spec = TaskSpec {
            name: "custom".into(),
            description: "ad-hoc classification task from command-line flags".into(),
            kind: TaskKind::Classification {
                template,
                label_field: label_field.to_string(),
                labels: specs,
                alt_templates: Vec::new(),
            },
            train: None,
            validation: None,
            test: None,
        };
        spec.validate().map_err(Error::Input)?;
        Ok(spec)
    }

    /// Check the spec: templates parse, a classification task has at least two distinct label
    /// values. The message names the task.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let name = &self.name;
        if name.trim().is_empty() {
            return Err("the task has no name".into());
        }
        let check = |what: &str, t: &str| {
            Template::parse(t)
                .map(|_| ())
                .map_err(|e| format!("task {name}: {what}: {e}"))
        };
        match &self.kind {
            TaskKind::Classification {
                template,
                label_field,
                labels,
                alt_templates,
            } => {
                check("template", template)?;
                for t in alt_templates {
                    check("alt_templates", t)?;
                }
                if label_field.trim().is_empty() {
                    return Err(format!("task {name}: label_field is empty"));
                }
                if labels.len() < 2 {
                    return Err(format!(
                        "task {name}: a classification task needs at least 2 labels, got {}",
                        labels.len()
                    ));
                }
                for (i, l) in labels.iter().enumerate() {
                    if l.value.trim().is_empty() {
                        return Err(format!("task {name}: label {i} has an empty value"));
                    }
                    if l.text.is_empty() {
                        return Err(format!(
                            "task {name}: label '{}' has an empty text",
                            l.value
                        ));
                    }
                    check(&format!("label '{}'", l.value), &l.text)?;
                    if labels[..i].iter().any(|o| o.value.trim() == l.value.trim()) {
                        return Err(format!(
                            "task {name}: label value '{}' appears twice",
                            l.value
                        ));
                    }
                }
            }
            TaskKind::Generation {
                template,
                target,
                alt_templates,
            } => {
                check("template", template)?;
                check("target", target)?;
                for t in alt_templates {
                    check("alt_templates", t)?;
                }
            }
        }
        Ok(())
    }

    /// The main template followed by the alternative ones.
    pub fn templates(&self) -> Vec<&str> {
        let (main, alts) = match &self.kind {
            TaskKind::Classification {
                template,
                alt_templates,
                ..
            }
            | TaskKind::Generation {
                template,
                alt_templates,
                ..
            } => (template, alt_templates),
        };
        std::iter::once(main.as_str())
            .chain(alts.iter().map(String::as_str))
            .collect()
    }

    /// A copy whose main template is `templates()[index]` (0 = the main one); None when out of
    /// range. Everything else (labels, target, files) is unchanged.
    pub fn with_template(&self, index: usize) -> Option<TaskSpec> {
        let chosen = self.templates().get(index)?.to_string();
        let mut spec = self.clone();
        match &mut spec.kind {
            TaskKind::Classification { template, .. } | TaskKind::Generation { template, .. } => {
                *template = chosen
            }
        }
        Some(spec)
    }

    /// The distinct fields the main template reads, in order of first use.
    pub fn template_fields(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        if let Ok(t) = super::template::Template::parse(self.templates()[0]) {
            for f in t.fields() {
                if !out.iter().any(|o| o == f) {
                    out.push(f.to_string());
                }
            }
        }
        out
    }

    /// The data's label value of each class, in class order (empty for generation).
    pub fn label_values(&self) -> Vec<String> {
        match &self.kind {
            TaskKind::Classification { labels, .. } => {
                labels.iter().map(|l| l.value.clone()).collect()
            }
            TaskKind::Generation { .. } => Vec::new(),
        }
    }

    /// Number of classes (0 for a generation task).
    pub fn num_classes(&self) -> usize {
        match &self.kind {
            TaskKind::Classification { labels, .. } => labels.len(),
            TaskKind::Generation { .. } => 0,
        }
    }
}

/// `\n`, `\t`, `\\` escapes of a command-line template.
pub(crate) fn unescape_flag(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.peek() {
                Some('n') => {
                    out.push('\n');
                    chars.next();
                }
                Some('t') => {
                    out.push('\t');
                    chars.next();
                }
                Some('\\') => {
                    out.push('\\');
                    chars.next();
                }
                _ => out.push('\\'),
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtins_parse_and_validate() {
        for name in builtin_task_names() {
            let (_, json) = BUILTIN.iter().find(|(n, _)| *n == name).unwrap();
            let spec: TaskSpec =
                serde_json::from_str(json).unwrap_or_else(|e| panic!("tasks/{name}.json: {e}"));
            assert_eq!(spec.name, name);
            spec.validate().unwrap();
            assert!(spec.train.is_some() && spec.validation.is_some());
            assert_eq!(builtin_task(name).unwrap(), spec);
        }
        assert!(builtin_task("nope").is_none());
    }

    #[test]
    fn unknown_keys_refused() {
        let bad = r#"{"name":"x","kind":{"type":"classification","template":"{a}","lables":[]}}"#;
        assert!(serde_json::from_str::<TaskSpec>(bad).is_err());
        let bad = r#"{"name":"x","kind":{"type":"regression","template":"{a}"}}"#;
        assert!(serde_json::from_str::<TaskSpec>(bad).is_err());
        let ok = r#"{"name":"x","kind":{"type":"generation","template":"{input}","target":" {target}"}}"#;
        let spec: TaskSpec = serde_json::from_str(ok).unwrap();
        spec.validate().unwrap();
        assert_eq!(spec.templates(), vec!["{input}"]);
    }

    #[test]
    fn with_template_swaps_main() {
        let spec = builtin_task("sst2").unwrap();
        let n = spec.templates().len();
        assert!(n >= 2);
        let alt = spec.with_template(1).unwrap();
        assert_eq!(alt.templates()[0], spec.templates()[1]);
        assert!(spec.with_template(n).is_none());
    }

    #[test]
    fn unescape() {
        assert_eq!(unescape_flag(r"a\nb\tc\\n\x"), "a\nb\tc\\n\\x");
    }
}
