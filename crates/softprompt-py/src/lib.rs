//! `softprompt._softprompt`: Python bindings over softprompt-core (re-exported by
//! `python/softprompt/__init__.py`). Thin: every number comes from core, the same calls the
//! CLI makes; this file converts arguments and results, and maps errors to exceptions.
//!
//! Arrays cross as bytes through numpy's own `frombuffer`/`tobytes` (the numpy C API is not
//! part of the stable ABI pyo3's abi3 wheel targets, and the arrays here are small: a prompt
//! is `[P, D]` = 20 x 576 floats, a score one float per token).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use pyo3::exceptions::{PyException, PyFileNotFoundError, PyOSError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};
use softprompt_core::compute::weight::WeightFormat;
use softprompt_core::data::{self, TaskSpec};
use softprompt_core::infer::objective;
use softprompt_core::infer::{self, Sampling};
use softprompt_core::model::FrozenModel;
use softprompt_core::train::{optim, trainer};
use softprompt_core::{prompt, Error, Tensor};

pyo3::create_exception!(
    softprompt,
    SoftpromptError,
    PyException,
    "A softprompt error that is not a bad value or a missing file: a malformed file, an unsupported model, a failed fetch, a tokenizer error."
);

/// Core error -> Python exception, with the CLI's message (`context: cause`).
fn py_err(context: Option<&str>, e: Error) -> PyErr {
    let msg = match context {
        Some(c) => format!("{c}: {e}"),
        None => e.to_string(),
    };
    match &e {
        Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
            PyFileNotFoundError::new_err(msg)
        }
        Error::Io { .. } => PyOSError::new_err(msg),
        Error::Input(_) | Error::Mismatch(_) | Error::Setting { .. } => PyValueError::new_err(msg),
        _ => SoftpromptError::new_err(msg),
    }
}

fn err(e: Error) -> PyErr {
    py_err(None, e)
}

/// `data` as a new (writable) numpy array of `dtype` and `shape`.
fn to_numpy<'py>(
    py: Python<'py>,
    bytes: &[u8],
    dtype: &str,
    shape: &[usize],
) -> PyResult<Bound<'py, PyAny>> {
    let np = py.import("numpy")?;
    let a = np.call_method1("frombuffer", (PyBytes::new(py, bytes), dtype))?;
    a.call_method1("reshape", (shape.to_vec(),))?
        .call_method0("copy")
}

fn f32_bytes(x: &[f32]) -> Vec<u8> {
    x.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Python object -> serde_json value (through `json.dumps`, so nested dicts and lists work).
fn to_json(obj: &Bound<'_, PyAny>) -> PyResult<serde_json::Value> {
    let s: String = obj
        .py()
        .import("json")?
        .call_method1("dumps", (obj,))?
        .extract()?;
    serde_json::from_str(&s).map_err(|e| PyValueError::new_err(format!("not JSON data: {e}")))
}

fn from_json<'py>(py: Python<'py>, v: &serde_json::Value) -> PyResult<Bound<'py, PyAny>> {
    py.import("json")?.call_method1("loads", (v.to_string(),))
}

/// A frozen base model with its tokenizer. Load it once; score, generate, classify and train
/// soft prompts on it. Computation releases the GIL.
#[pyclass(module = "softprompt", frozen)]
struct Model {
    inner: Arc<FrozenModel>,
    spec: String,
    weights: WeightFormat,
}

/// The `prompt=` argument: None, a SoftPrompt or a folder path, checked against the model
/// (hidden size; the base-model fingerprint unless `force`).
fn prompt_arg(
    m: &FrozenModel,
    p: Option<&Bound<'_, PyAny>>,
    force: bool,
) -> PyResult<Option<prompt::SoftPrompt>> {
    let Some(p) = p.filter(|p| !p.is_none()) else {
        return Ok(None);
    };
    let sp = match p.cast::<SoftPrompt>() {
        Ok(sp) => sp.get().inner.clone(),
        Err(_) => {
            let dir: PathBuf = p.extract().map_err(|_| {
                PyValueError::new_err("prompt must be a SoftPrompt, a folder path or None")
            })?;
            prompt::SoftPrompt::load(&dir).map_err(err)?
        }
    };
    sp.check_for(m, force).map_err(err)?;
    Ok(Some(sp))
}

/// The task of `classify`/`train`: template + labels, else a task name or file, else the
/// prompt's own task (its softprompt.json), else `default` (as the CLI resolves --task).
fn resolve_task(
    task: Option<&str>,
    template: Option<&str>,
    labels: Option<&Bound<'_, PyAny>>,
    label_field: &str,
    prompt_task: Option<serde_json::Value>,
    default: Option<&str>,
) -> PyResult<TaskSpec> {
    if let Some(t) = template {
        let labels = labels.ok_or_else(|| {
            PyValueError::new_err("template= needs labels= (e.g. \"0=negative,1=positive\")")
        })?;
        // A dict {value: word} is the CLI's "value=word,..." string.
        let labels: String = match labels.cast::<PyDict>() {
            Ok(d) => d
                .iter()
                .map(|(k, v)| Ok(format!("{}={}", k.str()?, v.str()?)))
                .collect::<PyResult<Vec<_>>>()?
                .join(","),
            Err(_) => labels.extract()?,
        };
        return TaskSpec::from_flags(t, &labels, label_field).map_err(err);
    }
    if let Some(name) = task.or(if prompt_task.is_some() { None } else { default }) {
        if let Some(t) = data::builtin_task(name) {
            return Ok(t);
        }
        let p = Path::new(name);
        if p.exists() {
            return data::load_task_file(p).map_err(err);
        }
        return Err(PyValueError::new_err(format!(
            "unknown task '{name}': built-in tasks are {}, or give a task JSON file",
            data::builtin_task_names().join(", ")
        )));
    }
    match prompt_task {
        Some(v) => serde_json::from_value(v).map_err(|e| {
            SoftpromptError::new_err(format!(
                "the prompt's softprompt.json has an unreadable task: {e}"
            ))
        }),
        None => Err(PyValueError::new_err(
            "no task: give task=NAME|FILE or template= with labels=",
        )),
    }
}

#[pymethods]
impl Model {
    /// Load a base model.
    ///
    /// model: `smollm2-135m` (default, fetched on first use into $SOFTPROMPT_CACHE), a .gguf
    ///     file, a Hugging Face model folder, or a hub id (`org/name[@rev]`).
    /// weights: `f32` (dequantized at load, the reference path), `quantized` (a GGUF model's
    ///     blocks, dequantized inside each product) or `bf16` (AMX / AVX512-BF16 products).
    /// exact: compute every row in a fixed order, whatever its batch, as `softprompt serve` and
    ///     `softprompt score` do: `score` then gives their bits exactly (bf16 only on CPUs with
    ///     AMX or AVX512-BF16). Slower; leave it off for training, whose numbers then equal
    ///     `softprompt train`'s.
    /// recompute: training keeps only each block's input and recomputes the block in the
    ///     backward (`--recompute`): much less memory, one more forward, the same gradients.
    #[staticmethod]
    #[pyo3(signature = (model = "smollm2-135m", weights = "f32", exact = false, recompute = false))]
    fn load(
        py: Python<'_>,
        model: &str,
        weights: &str,
        exact: bool,
        recompute: bool,
    ) -> PyResult<Model> {
        let w = WeightFormat::parse(weights).ok_or_else(|| {
            PyValueError::new_err(format!(
                "weights='{weights}': expected f32, quantized or bf16"
            ))
        })?;
        let mut m = py
            .detach(|| FrozenModel::load_with(model, w))
            .map_err(|e| py_err(Some(&format!("loading model '{model}'")), e))?;
        m.llama.exact = exact;
        m.llama.recompute = recompute;
        Ok(Model {
            inner: Arc::new(m),
            spec: model.to_string(),
            weights: w,
        })
    }

    /// Where the model came from (path or hub id).
    #[getter]
    fn source(&self) -> &str {
        &self.inner.source
    }

    /// How the weights are kept: `f32`, `quantized` or `bf16`.
    #[getter]
    fn weights(&self) -> &'static str {
        self.weights.name()
    }

    /// Hidden size D: a soft prompt for this model is `[P, D]`.
    #[getter]
    fn hidden_size(&self) -> usize {
        self.inner.llama.dims.d
    }

    /// Vocabulary size.
    #[getter]
    fn vocab_size(&self) -> usize {
        self.inner.llama.dims.vocab
    }

    /// Fingerprint of the base model: prompts record it and are refused on another model.
    #[getter]
    fn fingerprint(&self) -> &str {
        &self.inner.fingerprint
    }

    fn __repr__(&self) -> String {
        format!(
            "Model.load({:?}, weights={:?})  # {}, D={}",
            self.spec,
            self.weights.name(),
            self.inner.stored_dtype,
            self.inner.llama.dims.d
        )
    }

    /// Token ids of `text` as the model reads an input (`add_special_tokens=True`: with the
    /// `<bos>` a model such as Gemma expects; SmolLM2 adds nothing) or as a continuation.
    #[pyo3(signature = (text, add_special_tokens = true))]
    fn tokenize(&self, text: &str, add_special_tokens: bool) -> PyResult<Vec<u32>> {
        let m = &self.inner;
        if add_special_tokens {
            m.encode_input(text)
        } else {
            m.encode(text)
        }
        .map_err(err)
    }

    /// The text of token ids (special tokens kept).
    fn detokenize(&self, ids: Vec<u32>) -> PyResult<String> {
        let v = self.inner.llama.dims.vocab;
        if let Some(bad) = ids.iter().find(|&&i| i as usize >= v) {
            return Err(PyValueError::new_err(format!(
                "token id {bad} is out of the vocabulary (size {v})"
            )));
        }
        self.inner.decode(&ids).map_err(err)
    }

    /// Log-probability of every token of each text given the soft prompt: one float64 array
    /// per text, the numbers of `softprompt score --json` (`log p(id_t | prompt, ids_<t)`; the
    /// first token has no predictor without a prompt, so it is left out then).
    ///
    /// texts: a list of texts (a single str counts as one).
    /// prompt: a SoftPrompt, a prompt folder, or None for the bare model.
    /// force: use a prompt trained for another base model of the same hidden size.
    #[pyo3(signature = (texts, prompt = None, force = false))]
    fn score<'py>(
        &self,
        py: Python<'py>,
        texts: &Bound<'py, PyAny>,
        prompt: Option<&Bound<'py, PyAny>>,
        force: bool,
    ) -> PyResult<Vec<Bound<'py, PyAny>>> {
        let texts: Vec<String> = match texts.extract::<String>() {
            Ok(t) => vec![t],
            Err(_) => texts.extract()?,
        };
        let m = self.inner.clone();
        let sp = prompt_arg(&m, prompt, force)?;
        let scores = py
            .detach(|| {
                let view = sp.as_ref().map(|p| p.view()).transpose()?;
                texts
                    .iter()
                    .map(|t| infer::score(&m.llama, view, &m.encode_input(t)?))
                    .collect::<Result<Vec<_>, Error>>()
            })
            .map_err(err)?;
        scores
            .iter()
            .map(|s| {
                let b: Vec<u8> = s.iter().flat_map(|v| v.to_le_bytes()).collect();
                to_numpy(py, &b, "<f8", &[s.len()])
            })
            .collect()
    }

    /// Continue `text` with the soft prompt prepended (KV cache); returns the new text.
    /// temperature 0 is greedy; top_k 0 and top_p 1 are off; generation stops at an
    /// end-of-sequence token unless ignore_eos.
    #[pyo3(signature = (text, prompt = None, max_new_tokens = 64, temperature = 0.0, top_k = 0, top_p = 1.0, seed = 0, ignore_eos = false, force = false))]
    #[allow(clippy::too_many_arguments)]
    fn generate(
        &self,
        py: Python<'_>,
        text: &str,
        prompt: Option<&Bound<'_, PyAny>>,
        max_new_tokens: usize,
        temperature: f32,
        top_k: usize,
        top_p: f32,
        seed: u64,
        ignore_eos: bool,
        force: bool,
    ) -> PyResult<String> {
        let m = self.inner.clone();
        let sp = prompt_arg(&m, prompt, force)?;
        let s = Sampling {
            max_new_tokens,
            temperature,
            top_k,
            top_p,
            seed,
            eos: if ignore_eos { Vec::new() } else { m.eos_ids() },
            min_new_tokens: 0,
            no_cache: false,
        };
        py.detach(|| {
            let ids = m.encode_input(text)?;
            let view = sp.as_ref().map(|p| p.view()).transpose()?;
            let out = infer::generate(&m.llama, view, &ids, &s, |_| true)?;
            m.decode(&out)
        })
        .map_err(err)
    }

    /// Class probabilities `{label: p}` for one input, as `softprompt classify` computes them:
    /// the task's template filled with `text` (a str for a one-field template, or a dict of
    /// the template's fields), each label word scored after it, softmax over the labels.
    ///
    /// The task is `template` + `labels` ("0=negative,1=positive" or {"0": "negative", ...}),
    /// else `task` (a built-in name or a task JSON file), else the one the prompt was trained
    /// on (its softprompt.json). prompt=None classifies with the template alone.
    #[pyo3(signature = (text, prompt = None, task = None, template = None, labels = None, label_field = "label", length_norm = false, force = false))]
    #[allow(clippy::too_many_arguments)]
    fn classify<'py>(
        &self,
        py: Python<'py>,
        text: &Bound<'py, PyAny>,
        prompt: Option<&Bound<'py, PyAny>>,
        task: Option<&str>,
        template: Option<&str>,
        labels: Option<&Bound<'py, PyAny>>,
        label_field: &str,
        length_norm: bool,
        force: bool,
    ) -> PyResult<Bound<'py, PyDict>> {
        let m = self.inner.clone();
        let sp = prompt_arg(&m, prompt, force)?;
        // Without task=/template=, the task the prompt was trained on (its softprompt.json).
        let prompt_task = sp.as_ref().and_then(|p| p.meta.as_ref()?.task.clone());
        let spec = resolve_task(task, template, labels, label_field, prompt_task, None)?;
        let input = to_json(text)?;
        let (ex, _cands) =
            softprompt_core::train::eval::class_example(&m, &spec, input).map_err(err)?;
        let r = py
            .detach(|| {
                let view = sp.as_ref().map(|p| p.view()).transpose()?;
                objective::classify_batch(
                    &m.llama,
                    view,
                    std::slice::from_ref(&ex),
                    length_norm,
                    false,
                )
            })
            .map_err(err)?;
        let probs = objective::softmax(&r.scores[0]);
        let d = PyDict::new(py);
        for (l, p) in spec.label_values().iter().zip(probs) {
            d.set_item(l, p)?;
        }
        Ok(d)
    }
}

/// A soft prompt: `P` virtual-token embeddings `[P, D]` in a PEFT prompt-tuning folder
/// (adapter_config.json + adapter_model.safetensors, plus softprompt.json metadata).
#[pyclass(module = "softprompt", frozen)]
struct SoftPrompt {
    inner: prompt::SoftPrompt,
}

#[pymethods]
impl SoftPrompt {
    /// Read a prompt folder (PEFT layout, as `softprompt train` and PEFT write it).
    #[staticmethod]
    fn load(dir: PathBuf) -> PyResult<SoftPrompt> {
        Ok(SoftPrompt {
            inner: prompt::SoftPrompt::load(&dir).map_err(err)?,
        })
    }

    /// Write the prompt as a PEFT folder (created if missing; each file written atomically).
    fn save(&self, dir: PathBuf) -> PyResult<()> {
        self.inner.save(&dir).map_err(err)
    }

    /// A prompt for `model` from a `[P, D]` array (any real dtype, copied as float32); D must
    /// be the model's hidden size. The metadata ties it to the model (fingerprints).
    #[staticmethod]
    fn from_numpy(array: &Bound<'_, PyAny>, model: &Model) -> PyResult<SoftPrompt> {
        let py = array.py();
        let np = py.import("numpy")?;
        let a = np.call_method1("ascontiguousarray", (array, "<f4"))?;
        let shape: Vec<usize> = a.getattr("shape")?.extract()?;
        let d = model.inner.llama.dims.d;
        let max = prompt::MAX_VIRTUAL_TOKENS;
        if shape.len() != 2 || shape[1] != d || shape[0] == 0 || shape[0] > max {
            return Err(PyValueError::new_err(format!(
                "embeddings of shape {shape:?}: this model needs [P, {d}] with 1 <= P <= {max}"
            )));
        }
        let bytes: Vec<u8> = a.call_method0("tobytes")?.extract()?;
        let data: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        if data.iter().any(|x| !x.is_finite()) {
            return Err(PyValueError::new_err(
                "embeddings hold NaN or infinite values",
            ));
        }
        Ok(SoftPrompt {
            inner: prompt::SoftPrompt::for_model(&model.inner, Tensor::new(shape, data)),
        })
    }

    /// The embeddings as a new `[P, D]` float32 numpy array (a copy).
    #[getter]
    fn embeddings<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let e = &self.inner.embeddings;
        to_numpy(py, &f32_bytes(&e.data), "<f4", &e.shape)
    }

    /// Number of virtual tokens P.
    #[getter]
    fn num_virtual_tokens(&self) -> usize {
        self.inner.num_virtual_tokens()
    }

    /// Hidden size D.
    #[getter]
    fn hidden_size(&self) -> usize {
        self.inner.hidden_size()
    }

    /// The base model it was made for (`base_model_name_or_path`), if recorded.
    #[getter]
    fn base_model(&self) -> Option<String> {
        self.inner.config.base_model_name_or_path.clone()
    }

    /// The folder it was loaded from, if any.
    #[getter]
    fn path(&self) -> Option<PathBuf> {
        self.inner.source.clone()
    }

    /// The task it was trained on (softprompt.json), as a dict, or None.
    #[getter]
    fn task<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        let t = self.inner.meta.as_ref().and_then(|m| m.task.as_ref());
        t.map(|v| from_json(py, v)).transpose()
    }

    /// Its recorded metrics (softprompt.json: best validation value, step), as a dict, or None.
    #[getter]
    fn metrics<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        let t = self.inner.meta.as_ref().and_then(|m| m.metrics.as_ref());
        t.map(|v| from_json(py, v)).transpose()
    }

    fn __repr__(&self) -> String {
        format!(
            "<SoftPrompt [{}, {}]{}>",
            self.inner.num_virtual_tokens(),
            self.inner.hidden_size(),
            self.inner
                .source
                .as_ref()
                .map(|p| format!(" from {}", p.display()))
                .unwrap_or_default()
        )
    }
}

/// Sends the trainer's events to a Python callback (GIL re-acquired for each) and checks for
/// Ctrl-C; the first exception (KeyboardInterrupt, or one the callback raised) sets `stop`,
/// so the run ends after this step's checkpoint, and is raised when `train` returns.
struct PyObserver<'a> {
    callback: Option<Py<PyAny>>,
    stop: &'a AtomicBool,
    error: Option<PyErr>,
}

impl PyObserver<'_> {
    fn send(&mut self, event: serde_json::Value) {
        if self.error.is_some() {
            return;
        }
        let r = Python::attach(|py| -> PyResult<()> {
            py.check_signals()?;
            if let Some(cb) = &self.callback {
                cb.call1(py, (from_json(py, &event)?,))?;
            }
            Ok(())
        });
        if let Err(e) = r {
            self.error = Some(e);
            self.stop.store(true, Ordering::SeqCst);
        }
    }
}

impl trainer::Observer for PyObserver<'_> {
    fn on_start(&mut self, start: u64, total: u64) {
        self.send(serde_json::json!({"type": "start", "step": start, "steps": total}));
    }
    fn on_step(&mut self, s: &trainer::StepLog) {
        self.send(serde_json::json!({"type": "step", "step": s.step, "epoch": s.epoch, "loss": s.loss, "lr": s.lr, "grad_norm": s.grad_norm, "tokens": s.tokens, "seconds": s.seconds}));
    }
    fn on_eval(&mut self, e: &trainer::EvalLog) {
        let r = &e.report;
        self.send(serde_json::json!({"type": "eval", "step": e.step, "metric": r.metric, "value": r.value, "loss": r.loss, "n": r.n, "best": e.best}));
    }
    fn on_message(&mut self, msg: &str) {
        self.send(serde_json::json!({"type": "message", "message": msg}));
    }
}

/// Train a soft prompt, as `softprompt train` does (same options, defaults and output folder:
/// the best prompt in PEFT layout, `last/`, `checkpoints/`, `train_log.jsonl`, `curve.png`).
///
/// The task is `template` + `labels`, else `task` (built-in name or task JSON file), else the
/// built-in `demo`. `train`/`validation` default to the task's splits (relative paths resolve
/// against `data_root`, else $SOFTPROMPT_DATA or ../shared/data). `out` defaults to
/// runs/TASK (runs/TASK-2, -3, ... when taken; runs/TASK itself with resume). `init`:
/// random[:RANGE], vocab[:TOP], text:TEXT, labels or file:DIR. `lr` defaults to 0.03 for
/// adamw, 0.3 for adafactor. `reparam`: none or residual[:BOTTLENECK] (residual prompt
/// tuning; the saved prompt is the folded plain prompt). `deep`: train a deep prompt (prefix
/// tuning: keys and values at every layer, saved as a PEFT PREFIX_TUNING adapter).
///
/// The GIL is released while computing; `callback(event)` gets a dict per event (`type`:
/// start, step, eval or message; step and eval carry the train_log.jsonl fields). Ctrl-C
/// (KeyboardInterrupt) or an exception raised by the callback stops the run after a
/// checkpoint of the current step and is re-raised; `resume=True` continues exactly from the
/// last checkpoint. Returns a summary dict (steps_done, best, final_eval, ...) whose
/// `prompt` is the saved best prompt.
#[pyfunction]
#[pyo3(signature = (model, *, train = None, validation = None, task = None, template = None, labels = None, label_field = "label", data_root = None, out = None, virtual_tokens = 20, init = "vocab", optimizer = "adamw", lr = None, weight_decay = 1e-5, schedule = "linear", warmup = 10, steps = 150, batch_size = 8, grad_accum = 1, max_grad_norm = 1.0, seed = 0, eval_every = 50, eval_limit = None, patience = None, checkpoint_every = 50, keep_checkpoints = 2, max_len = 256, length_norm = false, train_limit = None, skip_bad_rows = false, eval_batch_size = 32, reparam = "none", deep = false, resume = false, callback = None))]
#[allow(clippy::too_many_arguments)]
fn train<'py>(
    py: Python<'py>,
    model: &Model,
    train: Option<String>,
    validation: Option<String>,
    task: Option<&str>,
    template: Option<&str>,
    labels: Option<&Bound<'py, PyAny>>,
    label_field: &str,
    data_root: Option<PathBuf>,
    out: Option<PathBuf>,
    virtual_tokens: usize,
    init: &str,
    optimizer: &str,
    lr: Option<f32>,
    weight_decay: f32,
    schedule: &str,
    warmup: u64,
    steps: u64,
    batch_size: usize,
    grad_accum: usize,
    max_grad_norm: f32,
    seed: u64,
    eval_every: u64,
    eval_limit: Option<usize>,
    patience: Option<usize>,
    checkpoint_every: u64,
    keep_checkpoints: usize,
    max_len: usize,
    length_norm: bool,
    train_limit: Option<usize>,
    skip_bad_rows: bool,
    eval_batch_size: usize,
    reparam: &str,
    deep: bool,
    resume: bool,
    callback: Option<Py<PyAny>>,
) -> PyResult<Bound<'py, PyDict>> {
    let spec = resolve_task(task, template, labels, label_field, None, Some("demo"))?;
    let train_file = train.or_else(|| spec.train.clone()).ok_or_else(|| {
        PyValueError::new_err(format!(
            "task {} has no train split: give train=FILE",
            spec.name
        ))
    })?;
    let mut opt = match optimizer {
        "adamw" => optim::OptimizerKind::adamw_default(),
        "adafactor" => optim::OptimizerKind::adafactor_lester(),
        other => {
            return Err(PyValueError::new_err(format!(
                "optimizer {other}: expected adamw or adafactor"
            )))
        }
    };
    match &mut opt {
        optim::OptimizerKind::AdamW {
            weight_decay: w, ..
        }
        | optim::OptimizerKind::Adafactor {
            weight_decay: w, ..
        } => *w = weight_decay,
    }
    let cfg = trainer::TrainConfig {
        task: spec.clone(),
        train_file,
        validation_file: validation.or_else(|| spec.validation.clone()),
        num_virtual_tokens: virtual_tokens,
        init: init.parse().map_err(err)?,
        optimizer: opt,
        lr: lr.unwrap_or(if optimizer == "adafactor" { 0.3 } else { 0.03 }),
        schedule: schedule.parse().map_err(err)?,
        warmup_steps: warmup,
        steps,
        batch_size,
        grad_accum,
        max_grad_norm,
        seed,
        eval_every,
        eval_limit,
        patience,
        checkpoint_every,
        keep_checkpoints,
        max_len,
        length_norm,
        train_limit,
        skip_bad_rows,
        eval_batch_size,
        data_root,
        reparam: reparam.parse().map_err(err)?,
        prompt_kind: if deep {
            softprompt_core::model::input::PromptKind::Prefix
        } else {
            softprompt_core::model::input::PromptKind::Input
        },
    };
    // The CLI's default output: runs/TASK, or the first free runs/TASK-N.
    let out = out.unwrap_or_else(|| {
        let base = PathBuf::from("runs").join(&spec.name);
        if resume {
            return base;
        }
        std::iter::once(base.clone())
            .chain((2..).map(|i| PathBuf::from("runs").join(format!("{}-{i}", spec.name))))
            .find(|p| !p.exists())
            .unwrap_or(base)
    });
    let m = model.inner.clone();
    let stop = AtomicBool::new(false);
    let mut obs = PyObserver {
        callback,
        stop: &stop,
        error: None,
    };
    let r = py.detach(|| trainer::train(&m, &cfg, &out, resume, &stop, &mut obs));
    if let Some(e) = obs.error {
        return Err(e); // the run stopped after a checkpoint (when the error came before its end)
    }
    let summary = r.map_err(err)?;
    let d = from_json(
        py,
        &serde_json::to_value(&summary).map_err(|e| SoftpromptError::new_err(e.to_string()))?,
    )?
    .cast_into::<PyDict>()?;
    d.set_item("prompt", SoftPrompt::load(out)?)?;
    Ok(d)
}

/// softprompt: prompt tuning on a frozen language model (bindings over softprompt-core).
#[pymodule]
fn _softprompt(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Model>()?;
    m.add_class::<SoftPrompt>()?;
    m.add_function(wrap_pyfunction!(train, m)?)?;
    m.add("SoftpromptError", m.py().get_type::<SoftpromptError>())?;
    m.add("MAX_VIRTUAL_TOKENS", prompt::MAX_VIRTUAL_TOKENS)?;
    Ok(())
}
