//! What several commands share: the model, prompt and task flags, loading, the training
//! progress display, and stopping on Ctrl-C.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::builder::{PossibleValue, TypedValueParser};
use clap::Args;
use softprompt_core::compute::weight::WeightFormat;
use softprompt_core::data::{self, TaskSpec};
use softprompt_core::model::input::PromptRef;
use softprompt_core::model::FrozenModel;
use softprompt_core::prompt::SoftPrompt;
use softprompt_core::train::{trainer, Init};

#[derive(Args, Clone)]
pub struct ModelArgs {
    /// Base model: `smollm2-135m` (default, fetched on first use), a .gguf file, a Hugging
    /// Face model folder, or a hub id (`org/name[@rev]` or `hf:org/name`).
    #[arg(long, short, default_value = "smollm2-135m")]
    pub model: String,
    /// How the frozen matrices are kept in memory.
    #[arg(long, default_value = "f32", value_parser = weights_parser())]
    pub weights: WeightFormat,
    /// Training: keep only each block's input on the tape and recompute the block in the
    /// backward (activation checkpointing): a fraction of the activation memory for one more
    /// forward of the blocks; the gradients are bit-identical.
    #[arg(long)]
    pub recompute: bool,
}

fn weights_parser() -> Choices<WeightFormat> {
    Choices::new(
        [
            PossibleValue::new("f32").help("dequantized at load: the reference path"),
            PossibleValue::new("quantized").alias("q").help(
                "a GGUF model's blocks, dequantized inside each product: about 1/5 of the \
                 memory, fastest decoding",
            ),
            PossibleValue::new("bf16").help(
                "rounded to bf16, multiplied on AMX tiles or AVX512-BF16 with f32 accumulation: \
                 fastest training where the CPU has either",
            ),
        ],
        WeightFormat::parse,
    )
}

/// A flag with a fixed set of values: `--help` lists them (with their help), a value outside
/// the set (case aside) is refused with `expected A, B or C`, and one in it is turned into `T` by
/// `parse` (the library's parser, or `Some(s.to_string())`).
#[derive(Clone)]
pub struct Choices<T> {
    values: Vec<PossibleValue>,
    parse: fn(&str) -> Option<T>,
}

impl<T> Choices<T> {
    pub fn new(
        values: impl IntoIterator<Item = PossibleValue>,
        parse: fn(&str) -> Option<T>,
    ) -> Self {
        Choices {
            values: values.into_iter().collect(),
            parse,
        }
    }
}

impl<T: Clone + Send + Sync + 'static> TypedValueParser for Choices<T> {
    type Value = T;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> std::result::Result<T, clap::Error> {
        let s = value.to_string_lossy();
        self.values
            .iter()
            .find(|v| v.matches(&s, true))
            .and_then(|_| (self.parse)(&s))
            .ok_or_else(|| {
                let names: Vec<&str> = self.values.iter().map(|v| v.get_name()).collect();
                let (last, rest) = names.split_last().unwrap_or((&"", &[]));
                let flag = arg.and_then(|a| a.get_long()).unwrap_or("value");
                clap::Error::raw(
                    clap::error::ErrorKind::InvalidValue,
                    format!(
                        "invalid value '{s}' for '--{flag}': expected {} or {last}\n",
                        rest.join(", ")
                    ),
                )
                .with_cmd(cmd)
            })
    }

    fn possible_values(&self) -> Option<Box<dyn Iterator<Item = PossibleValue> + '_>> {
        Some(Box::new(self.values.iter().cloned()))
    }
}

#[derive(Args, Clone)]
pub struct PromptArgs {
    /// Soft prompt: a PEFT adapter folder (adapter_config.json + adapter_model.safetensors).
    #[arg(long, short)]
    pub prompt: Option<PathBuf>,
    /// Use the prompt even if it was trained for a different base model (same hidden size).
    #[arg(long)]
    pub force: bool,
}

/// Soft prompts of one task (several: an ensemble, their class probabilities averaged), or
/// the task's template alone (`--no-prompt`), for the commands that classify.
#[derive(Args, Clone)]
pub struct PromptOrTemplate {
    /// Soft prompt: a PEFT adapter folder. Give it several times for an ensemble of prompts
    /// trained for one task (Lester et al. 2021, §7).
    #[arg(long, short)]
    pub prompt: Vec<PathBuf>,
    /// Use the prompts even if they were trained for a different base model (same hidden size).
    #[arg(long)]
    pub force: bool,
    /// Use the template alone (a hard prompt, zero-shot) instead of a soft prompt.
    #[arg(long, conflicts_with = "prompt")]
    pub no_prompt: bool,
}

impl PromptOrTemplate {
    /// The prompts (none with `--no-prompt` or without `--prompt`). An ensemble's prompts must
    /// name one task in their metadata (or none).
    pub fn load(&self, model: &FrozenModel) -> Result<Vec<SoftPrompt>> {
        if self.no_prompt {
            return Ok(Vec::new());
        }
        let v = self
            .prompt
            .iter()
            .map(|dir| SoftPrompt::load_for(model, dir, self.force))
            .collect::<softprompt_core::Result<Vec<_>>>()?;
        let task = |p: &SoftPrompt| {
            p.meta
                .as_ref()
                .and_then(|m| m.task.as_ref())
                .and_then(|t| t.get("name"))
                .and_then(|n| n.as_str())
                .map(str::to_owned)
        };
        if let Some(first) = v.first() {
            for (p, dir) in v.iter().zip(&self.prompt).skip(1) {
                anyhow::ensure!(
                    task(p) == task(first),
                    "--prompt {}: trained for task {:?}, but {} for {:?}; an ensemble's prompts share one task",
                    dir.display(),
                    task(p),
                    self.prompt[0].display(),
                    task(first)
                );
            }
        }
        Ok(v)
    }
}

/// The prompts as the model reads them; no prompt is the bare model (`[None]`).
pub fn prompt_views(sps: &[SoftPrompt]) -> Result<Vec<Option<PromptRef<'_>>>> {
    if sps.is_empty() {
        return Ok(vec![None]);
    }
    Ok(sps
        .iter()
        .map(|p| p.view().map(Some))
        .collect::<softprompt_core::Result<_>>()?)
}

/// Which task: a built-in name, a task file, or an ad-hoc template + labels.
#[derive(Args, Clone, Default)]
pub struct TaskArgs {
    /// Built-in task (demo, sst2, boolq, cb, copa, wic) or a task spec JSON file.
    #[arg(long)]
    pub task: Option<String>,
    /// Ad-hoc classification template, e.g. "Review: {sentence}\nSentiment:".
    #[arg(long)]
    pub template: Option<String>,
    /// Ad-hoc label words, e.g. "0=negative,1=positive".
    #[arg(long)]
    pub labels: Option<String>,
    /// Field holding the label in the data.
    #[arg(long, default_value = "label")]
    pub label_field: String,
    /// Folder that relative data files are resolved against (default: $SOFTPROMPT_DATA or ../shared/data).
    #[arg(long)]
    pub data_root: Option<PathBuf>,
}

impl TaskArgs {
    /// The task from the flags, else from the prompt's metadata, else `default`.
    pub fn resolve(&self, prompt: Option<&SoftPrompt>, default: Option<&str>) -> Result<TaskSpec> {
        if let Some(t) = &self.template {
            let labels = self
                .labels
                .as_deref()
                .context("--template needs --labels (e.g. 0=negative,1=positive)")?;
            return Ok(TaskSpec::from_flags(t, labels, &self.label_field)?);
        }
        if let Some(name) = &self.task {
            return task_by_name(name);
        }
        if let Some(task) = prompt
            .and_then(|p| p.meta.as_ref())
            .and_then(|m| m.task.clone())
        {
            return serde_json::from_value(task)
                .context("the prompt's softprompt.json has an unreadable task");
        }
        match default {
            Some(d) => task_by_name(d),
            None => anyhow::bail!("no task: give --task NAME|FILE or --template with --labels"),
        }
    }
}

pub fn task_by_name(name: &str) -> Result<TaskSpec> {
    if let Some(t) = data::builtin_task(name) {
        return Ok(t);
    }
    let p = Path::new(name);
    if p.exists() {
        return Ok(data::load_task_file(p)?);
    }
    anyhow::bail!(
        "unknown task '{name}': built-in tasks are {}, or give a task JSON file",
        data::builtin_task_names().join(", ")
    )
}

/// The help of every `--init` flag.
pub const INIT_HELP: &str = "How the prompt starts: random[:R] (uniform in [-R, R]; R = 0.5), \
vocab[:N] (rows of random tokens among the N most frequent; N = 5000), text:T (the embeddings of \
the text T's tokens, repeated), labels (the task's label words first, then vocab), file:DIR \
(another prompt folder)";

const INIT_FORMS: &str = "random[:R], vocab[:N], text:T, labels or file:DIR";

/// `--init`'s value parser: the text as given (it is recorded in the prompt's metadata), once
/// it parses.
pub fn parse_init(s: &str) -> std::result::Result<String, String> {
    let kind = s.split(':').next().unwrap_or(s);
    if !["random", "vocab", "text", "labels", "file"].contains(&kind) {
        return Err(format!("unknown form '{kind}': expected {INIT_FORMS}"));
    }
    s.parse::<Init>()
        .map(|_| s.to_string())
        .map_err(|e| format!("{e} (forms: {INIT_FORMS})"))
}

pub fn load_model(m: &ModelArgs) -> Result<FrozenModel> {
    let t = std::time::Instant::now();
    let mut model = FrozenModel::load_with(&m.model, m.weights)
        .with_context(|| format!("loading model '{}'", m.model))?;
    model.llama.recompute = m.recompute;
    eprintln!(
        "softprompt: loaded {} ({}, {:.0} MB of weights) in {:.1}s",
        model.source,
        model.stored_dtype,
        model.llama.weight_bytes() as f64 / 1e6,
        t.elapsed().as_secs_f32()
    );
    Ok(model)
}

pub fn load_prompt(model: &FrozenModel, p: &PromptArgs) -> Result<Option<SoftPrompt>> {
    match &p.prompt {
        None => Ok(None),
        Some(dir) => Ok(Some(SoftPrompt::load_for(model, dir, p.force)?)),
    }
}

/// A run stopped by Ctrl-C (or SIGTERM) after saving its state: `main` exits 130, as shells
/// expect of a command ended by SIGINT; the command has said how to continue.
#[derive(Debug)]
pub struct Interrupted;

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("interrupted")
    }
}

impl std::error::Error for Interrupted {}

/// Ctrl-C / SIGTERM sets the returned flag (the run finishes its step, checkpoints and
/// returns); a second one kills (exit 130). `hint` is appended to the message.
pub fn stop_on_ctrl_c(hint: &'static str) -> Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
        eprintln!("\nsoftprompt: stopping after this step (Ctrl-C again to kill){hint}");
    })
    .context("installing the Ctrl-C handler")?;
    Ok(stop)
}

/// Progress bar (step, loss, tokens/s, ETA) and evaluation lines.
pub struct Progress {
    bar: Option<indicatif::ProgressBar>,
    ema: Option<f64>,
    tokens: usize,
    secs: f64,
}

impl Progress {
    /// A progress bar over `steps` on a terminal, log lines otherwise or with `quiet`.
    pub fn new(steps: u64, quiet: bool) -> Self {
        let bar = if quiet || !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            None
        } else {
            let b = indicatif::ProgressBar::new(steps);
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} steps | {msg} | ETA {eta}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            Some(b)
        };
        Progress {
            bar,
            ema: None,
            tokens: 0,
            secs: 0.0,
        }
    }

    fn println(&self, msg: &str) {
        match &self.bar {
            Some(b) => b.println(msg),
            None => eprintln!("{msg}"),
        }
    }

    /// Remove the bar before the closing lines.
    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

impl trainer::Observer for Progress {
    fn on_start(&mut self, start: u64, total: u64) {
        if let Some(b) = &self.bar {
            b.set_length(total);
            b.set_position(start);
            b.reset_eta();
        }
    }
    fn on_step(&mut self, s: &trainer::StepLog) {
        let e = self.ema.map_or(s.loss, |e| 0.9 * e + 0.1 * s.loss);
        self.ema = Some(e);
        self.tokens += s.tokens;
        self.secs += s.seconds;
        let tps = self.tokens as f64 / self.secs.max(1e-9);
        match &self.bar {
            Some(b) => {
                b.set_position(s.step);
                b.set_message(format!(
                    "loss {:.4} (avg {e:.4}) | lr {:.2e} | {tps:.0} tok/s",
                    s.loss, s.lr
                ));
            }
            None => eprintln!(
                "step {} loss {:.4} avg {e:.4} lr {:.2e} grad_norm {:.3} {tps:.0} tok/s",
                s.step, s.loss, s.lr, s.grad_norm
            ),
        }
    }
    fn on_eval(&mut self, e: &trainer::EvalLog) {
        self.println(&format!(
            "step {:>5}: validation {} {:.4} (loss {:.4}, n={}){}",
            e.step,
            e.report.metric,
            e.report.value,
            e.report.loss,
            e.report.n,
            if e.best { "  * best, saved" } else { "" }
        ));
    }
    fn on_message(&mut self, msg: &str) {
        self.println(&format!("softprompt: {msg}"));
    }
}
