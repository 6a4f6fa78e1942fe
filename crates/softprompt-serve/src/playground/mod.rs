//! The browser playground at `/`: a page (HTML, CSS and JS compiled into the binary) to try
//! prompts side by side, train one from an uploaded CSV/JSONL, and look inside a prompt.
//!
//! Its API, under `/playground/api/` (state changes need the admin bearer key):
//! - `GET info`: built-in tasks, limits, whether the admin API is on;
//! - `POST preview` (key): the first rows of an upload (or a built-in split) rendered with the
//!   template, with token counts;
//! - `POST jobs` (key): queue a training (or distillation) job; `GET jobs`, `GET jobs/{id}`:
//!   progress; `POST jobs/{id}/cancel` (key);
//! - `GET prompts/{name}/inspect`: nearest tokens, norms, drift, metadata, compare report;
//! - `GET prompts/{name}/download` (key): the prompt as a PEFT adapter zip.
//!
//! Trying prompts uses the public API (`/v1/completions` streaming, `/v1/classify`); unloading
//! uses `DELETE /admin/prompts/{name}`.

pub mod jobs;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, Path as UrlPath, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use softprompt_core::data::{self, Items, Record, TaskKind, TaskSpec};
use softprompt_core::train::distill::{self, DistillConfig};
use softprompt_core::train::TrainConfig;

use self::jobs::{Job, Jobs, PROMPT_FILES};
use crate::admin::authorize;
use crate::error::ServeError;
use crate::registry::valid_name;
use crate::state::{blocking, body, invalid, AppState, St};

const INDEX_HTML: &str = include_str!("../../assets/playground/index.html");
const APP_JS: &str = include_str!("../../assets/playground/app.js");
const STYLE_CSS: &str = include_str!("../../assets/playground/style.css");

/// Rows shown by the preview.
const PREVIEW_ROWS: usize = 5;
/// Settings a page may ask for, capped (a job is one of many users' time on a shared CPU).
const MAX_STEPS: u64 = 5000;
const MAX_VIRTUAL_TOKENS: usize = 100;

pub fn routes(state: &AppState) -> Router<Arc<AppState>> {
    // Uploads are larger than API bodies: their own limit (--max-upload-bytes, plus the JSON
    // around the data).
    let upload = DefaultBodyLimit::max(state.cfg.max_upload_bytes.saturating_add(64 << 10));
    Router::new()
        .route("/", get(index))
        .route("/playground/app.js", get(app_js))
        .route("/playground/style.css", get(style_css))
        .route("/playground/api/info", get(info))
        .route("/playground/api/preview", post(preview).layer(upload))
        .route(
            "/playground/api/jobs",
            post(submit).get(list_jobs).layer(upload),
        )
        .route("/playground/api/jobs/{id}", get(job))
        .route("/playground/api/jobs/{id}/cancel", post(cancel))
        .route("/playground/api/prompts/{name}/inspect", get(inspect))
        .route("/playground/api/prompts/{name}/download", get(download))
}

fn asset(ctype: &'static str, body: &'static str) -> Response {
    let mut r = body.into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    r
}

async fn index() -> Response {
    let mut r = asset("text/html; charset=utf-8", INDEX_HTML);
    // Only our own script and style; the page talks to this server only; no framing.
    r.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data: blob:; frame-ancestors 'none'; form-action 'none'",
        ),
    );
    r
}

async fn app_js() -> Response {
    asset("text/javascript; charset=utf-8", APP_JS)
}

async fn style_css() -> Response {
    asset("text/css; charset=utf-8", STYLE_CSS)
}

/// `GET /playground/api/info`.
async fn info(State(s): St) -> Json<Value> {
    let tasks: Vec<Value> = data::builtin_task_names()
        .into_iter()
        .filter_map(data::builtin_task)
        .map(|t| json!(t))
        .collect();
    Json(json!({
        "model": s.model.source,
        "base_name": s.registry.base_name,
        "admin": s.cfg.admin_key.is_some(),
        "can_train": s.cfg.prompts.is_some(),
        "tasks": tasks,
        "limits": {
            "max_upload_bytes": s.cfg.max_upload_bytes,
            "max_upload_rows": s.cfg.max_upload_rows,
            "max_steps": MAX_STEPS,
            "max_virtual_tokens": MAX_VIRTUAL_TOKENS,
            "max_output_tokens": s.cfg.max_output_tokens,
        },
    }))
}

/// The body of `preview` and `jobs`: the data, the task, the run's settings.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainBody {
    /// The prompt's name (jobs only).
    #[serde(default)]
    name: Option<String>,
    /// A built-in task: its template and labels, and its data when none is uploaded.
    #[serde(default)]
    task: Option<String>,
    /// The uploaded file's text and name (its extension picks the format).
    #[serde(default)]
    data: Option<String>,
    #[serde(default)]
    filename: Option<String>,
    /// A custom template and `VALUE=WORD,...` labels (instead of the task's).
    #[serde(default)]
    template: Option<String>,
    #[serde(default)]
    labels: Option<String>,
    #[serde(default)]
    label_field: Option<String>,
    /// Distill this hard prompt instead of training on the labels.
    #[serde(default)]
    hard_prompt: Option<String>,
    steps: Option<u64>,
    virtual_tokens: Option<usize>,
    lr: Option<f32>,
    batch_size: Option<usize>,
    eval_every: Option<u64>,
    seed: Option<u64>,
    #[serde(default)]
    skip_bad_rows: bool,
}

fn nonempty(s: &Option<String>) -> Option<&str> {
    s.as_deref().filter(|t| !t.trim().is_empty())
}

impl TrainBody {
    /// The task: a custom template + labels, else the built-in task (default `demo`).
    fn spec(&self) -> Result<TaskSpec, ServeError> {
        let field = nonempty(&self.label_field).unwrap_or("label");
        match nonempty(&self.template) {
            // Distilling without labels: the template only makes the inputs.
            Some(t)
                if nonempty(&self.labels).is_none() && nonempty(&self.hard_prompt).is_some() =>
            {
                distill::task_spec(&DistillConfig {
                    hard_prompt: String::new(),
                    teacher_tokens: 0,
                    top_k: 0,
                    temperature: 0.0,
                    holdout: 0,
                    template: t.to_string(),
                    labels: None,
                    label_field: field.to_string(),
                })
                .map_err(|e| invalid(format!("template: {e}")))
            }
            Some(t) => {
                let labels = self.labels.as_deref().unwrap_or("");
                if labels.trim().is_empty() {
                    return Err(invalid(
                        "label words are missing: give them as VALUE=WORD,... (e.g. 0=negative,1=positive)",
                    ));
                }
                let mut spec = TaskSpec::from_flags(t, labels, field)
                    .map_err(|e| invalid(format!("template or labels: {e}")))?;
                spec.name = nonempty(&self.name).unwrap_or("custom").to_string();
                spec.description = "trained in the playground".into();
                Ok(spec)
            }
            None => {
                let name = nonempty(&self.task).unwrap_or("demo");
                data::builtin_task(name).ok_or_else(|| {
                    invalid(format!(
                        "no built-in task '{}' (there are: {})",
                        name.chars().take(64).collect::<String>(),
                        data::builtin_task_names().join(", ")
                    ))
                })
            }
        }
    }

    fn has_upload(&self) -> bool {
        self.data.is_some()
    }
}

/// Parse an upload saved as `dir/upload.EXT`: its records, after the size and row limits.
fn read_upload(s: &AppState, b: &TrainBody, dir: &Path) -> Result<Vec<Record>, ServeError> {
    let text = b.data.as_deref().unwrap_or("");
    if text.len() > s.cfg.max_upload_bytes {
        return Err(ServeError::TooLarge(format!(
            "the file is {} bytes; this server takes at most {} (--max-upload-bytes)",
            text.len(),
            s.cfg.max_upload_bytes
        )));
    }
    let fname = b.filename.as_deref().unwrap_or("upload.csv");
    let ext = Path::new(fname)
        .extension()
        .and_then(|e| e.to_str())
        .map(|e| e.to_ascii_lowercase())
        .unwrap_or_default();
    if !matches!(ext.as_str(), "csv" | "tsv" | "jsonl" | "json" | "ndjson") {
        return Err(invalid(format!(
            "'{}': the file name must end in .csv, .tsv, .jsonl or .json",
            fname.chars().take(64).collect::<String>()
        )));
    }
    let path = dir.join(format!("upload.{ext}"));
    softprompt_core::fsio::atomic_write(&path, text.as_bytes()).map_err(ServeError::from_core)?;
    let (records, _) = data::read_records(&path, b.skip_bad_rows)
        .map_err(|e| invalid(redact(&e.to_string(), dir, "upload")))?;
    if records.len() > s.cfg.max_upload_rows {
        return Err(ServeError::TooLarge(format!(
            "the file has {} rows; this server takes at most {} (--max-upload-rows)",
            records.len(),
            s.cfg.max_upload_rows
        )));
    }
    Ok(records)
}

/// Error texts name the upload, not the server's folders.
fn redact(msg: &str, dir: &Path, what: &str) -> String {
    msg.replace(&format!("{}/", dir.display()), "")
        .replace(&*dir.to_string_lossy(), what)
}

/// The playground's work folder (`PROMPTS/.playground`: a dot name is never a prompt).
fn work_dir(s: &AppState) -> Result<PathBuf, ServeError> {
    let p = s.cfg.prompts.as_ref().ok_or_else(|| {
        invalid("the server was started without --prompts DIR: it cannot keep trained prompts")
    })?;
    let w = p.join(".playground");
    std::fs::create_dir_all(&w)
        .map_err(|e| ServeError::Internal(format!("cannot create the work folder: {e}")))?;
    Ok(w)
}

/// A fresh folder under the work folder.
fn fresh_dir(s: &AppState, prefix: &str) -> Result<PathBuf, ServeError> {
    let id = s.next_id.fetch_add(1, Ordering::Relaxed);
    let d = work_dir(s)?.join(format!("{prefix}-{}-{id}", std::process::id()));
    std::fs::create_dir_all(&d)
        .map_err(|e| ServeError::Internal(format!("cannot create a job folder: {e}")))?;
    Ok(d)
}

/// Removes a folder when dropped (preview files).
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        jobs::remove_dir(&self.0);
    }
}

/// `POST /playground/api/preview` (key): the first rows rendered, with token counts.
async fn preview(
    State(s): St,
    h: HeaderMap,
    b: Result<Json<TrainBody>, JsonRejection>,
) -> Result<Json<Value>, ServeError> {
    authorize(&s, &h)?;
    let b = body(b)?;
    let s2 = s.clone();
    blocking(move || preview_blocking(&s2, &b)).await?.map(Json)
}

fn preview_blocking(s: &AppState, b: &TrainBody) -> Result<Value, ServeError> {
    let spec = b.spec()?;
    let (records, source) = if b.has_upload() {
        let tmp = TempDir(fresh_dir(s, "preview")?);
        (read_upload(s, b, &tmp.0)?, "upload".to_string())
    } else {
        let file = spec
            .train
            .clone()
            .ok_or_else(|| invalid(format!("task {} has no data: upload a file", spec.name)))?;
        let (r, _, name) =
            data::load_split(&file, None, b.skip_bad_rows).map_err(|e| invalid(e.to_string()))?;
        (r, name)
    };
    let columns: Vec<&String> = records
        .first()
        .map(|r| r.fields.keys().collect())
        .unwrap_or_default();
    let head = &records[..records.len().min(PREVIEW_ROWS)];
    let (items, _) = data::prepare::prepare(&spec, head, Path::new(&source), b.skip_bad_rows)
        .map_err(|e| invalid(e.to_string()))?;
    let count = |t: &str| s.model.encode_input(t).map(|v| v.len()).unwrap_or(0);
    let count_c = |t: &str| s.model.encode(t).map(|v| v.len()).unwrap_or(0);
    let rows: Vec<Value> = match &items {
        Items::Class(v) => v
            .iter()
            .map(|it| {
                json!({
                    "line": it.line,
                    "text": it.text,
                    "tokens": count(&it.text),
                    "label": it.label.and_then(|l| it.candidates.get(l)),
                    "candidates": it.candidates.iter().map(|c| json!({"text": c, "tokens": count_c(c)})).collect::<Vec<_>>(),
                })
            })
            .collect(),
        Items::Gen(v) => v
            .iter()
            .map(|it| {
                json!({
                    "line": it.line,
                    "text": it.input,
                    "tokens": count(&it.input),
                    "label": it.target,
                    "candidates": [],
                })
            })
            .collect(),
    };
    let hard = nonempty(&b.hard_prompt).map(|t| json!({"tokens": count(t)}));
    Ok(json!({
        "source": source,
        "rows_total": records.len(),
        "columns": columns,
        "task": spec,
        "rows": rows,
        "hard_prompt": hard,
    }))
}

/// `POST /playground/api/jobs` (key): check everything, save the data, queue the job.
async fn submit(
    State(s): St,
    h: HeaderMap,
    b: Result<Json<TrainBody>, JsonRejection>,
) -> Result<Json<Value>, ServeError> {
    authorize(&s, &h)?;
    let b = body(b)?;
    let s2 = s.clone();
    let job = blocking(move || make_job(&s2, &b)).await??;
    let job = Arc::new(job);
    Jobs::submit(&s, job.clone());
    Ok(Json(job.json()))
}

fn make_job(s: &AppState, b: &TrainBody) -> Result<Job, ServeError> {
    let name = nonempty(&b.name).ok_or_else(|| invalid("give the prompt a name"))?;
    if !valid_name(name) || name == s.registry.base_name {
        return Err(invalid(format!(
            "bad prompt name '{}': use letters, digits, '_', '-', '.', not starting with '.'",
            name.chars().take(64).collect::<String>()
        )));
    }
    let prompts = s.cfg.prompts.clone().ok_or_else(|| {
        invalid("the server was started without --prompts DIR: it cannot keep trained prompts")
    })?;
    if prompts.join(name).exists() || s.jobs.name_pending(name) {
        return Err(invalid(format!(
            "a prompt named '{name}' exists or is being trained: choose another name (or unload and delete it first)"
        )));
    }
    let steps = b.steps.unwrap_or(50);
    let vt = b.virtual_tokens.unwrap_or(8);
    if !(1..=MAX_STEPS).contains(&steps) {
        return Err(invalid(format!("steps must be 1..={MAX_STEPS}")));
    }
    if !(1..=MAX_VIRTUAL_TOKENS).contains(&vt) {
        return Err(invalid(format!(
            "virtual tokens must be 1..={MAX_VIRTUAL_TOKENS}"
        )));
    }
    let spec = b.spec()?;
    let dir = fresh_dir(s, "job")?;
    let r = fill_job(s, b, name, spec, steps, vt, &dir);
    if r.is_err() {
        jobs::remove_dir(&dir);
    }
    r
}

fn fill_job(
    s: &AppState,
    b: &TrainBody,
    name: &str,
    mut spec: TaskSpec,
    steps: u64,
    vt: usize,
    dir: &Path,
) -> Result<Job, ServeError> {
    // The data: an upload is split 4:1 into train and validation (every fifth row), saved as
    // JSONL; without one, the task's own splits.
    let (train_file, validation_file) = if b.has_upload() {
        let records = read_upload(s, b, dir)?;
        if records.len() < 2 {
            return Err(invalid("the file needs at least 2 rows"));
        }
        // Every row fits the task (fields, labels) now, not when the job starts.
        data::prepare::prepare(&spec, &records, Path::new("upload"), b.skip_bad_rows)
            .map_err(|e| invalid(e.to_string()))?;
        let (mut tr, mut va) = (String::new(), String::new());
        for (i, r) in records.iter().enumerate() {
            let line = serde_json::to_string(&r.fields).map_err(|e| invalid(e.to_string()))?;
            let to = if records.len() >= 5 && i % 5 == 4 {
                &mut va
            } else {
                &mut tr
            };
            to.push_str(&line);
            to.push('\n');
        }
        let save = |f: &str, t: &str| -> Result<String, ServeError> {
            let p = dir.join(f);
            softprompt_core::fsio::atomic_write(&p, t.as_bytes()).map_err(ServeError::from_core)?;
            Ok(p.to_string_lossy().into_owned())
        };
        let val = if va.is_empty() {
            None
        } else {
            Some(save("validation.jsonl", &va)?)
        };
        (save("train.jsonl", &tr)?, val)
    } else {
        let t = spec
            .train
            .clone()
            .ok_or_else(|| invalid(format!("task {} has no data: upload a file", spec.name)))?;
        (t, spec.validation.clone())
    };
    spec.train = None;
    spec.validation = None;
    spec.test = None;
    let d = TrainConfig::default();
    let batch_size = b.batch_size.unwrap_or(8).clamp(1, 64);
    let hard = nonempty(&b.hard_prompt).map(str::to_string);
    let dc = match hard {
        Some(h) => {
            let (template, labels, label_field) = match &spec.kind {
                TaskKind::Classification {
                    template,
                    labels,
                    label_field,
                    ..
                } => (
                    template.clone(),
                    Some(
                        labels
                            .iter()
                            .map(|l| format!("{}={}", l.value, l.text.trim()))
                            .collect::<Vec<_>>()
                            .join(","),
                    )
                    .filter(|l| !l.is_empty()),
                    label_field.clone(),
                ),
                TaskKind::Generation { template, .. } => (template.clone(), None, "label".into()),
            };
            Some(DistillConfig {
                hard_prompt: h,
                teacher_tokens: 8,
                top_k: 32,
                temperature: 0.0,
                holdout: 50,
                template,
                labels,
                label_field,
            })
        }
        None => None,
    };
    let task = match &dc {
        Some(dc) => distill::task_spec(dc).map_err(|e| invalid(e.to_string()))?,
        None => spec,
    };
    let init = match &dc {
        Some(dc) => softprompt_core::train::Init::Text(dc.hard_prompt.clone()),
        None => d.init.clone(),
    };
    let cfg = TrainConfig {
        task,
        train_file,
        validation_file,
        num_virtual_tokens: vt,
        init,
        lr: b.lr.unwrap_or(d.lr),
        warmup_steps: d.warmup_steps.min(steps / 10),
        steps,
        batch_size,
        seed: b.seed.unwrap_or(0),
        eval_every: b.eval_every.unwrap_or((steps / 5).max(1)),
        eval_limit: Some(200),
        checkpoint_every: steps,
        keep_checkpoints: 1,
        skip_bad_rows: b.skip_bad_rows,
        ..d
    };
    let id = s.next_id.fetch_add(1, Ordering::Relaxed);
    Ok(Job::new(id, name.to_string(), cfg, dc, dir.to_path_buf()))
}

/// `GET /playground/api/jobs`: newest first.
async fn list_jobs(State(s): St) -> Json<Value> {
    let data: Vec<Value> = s.jobs.list().iter().map(|j| j.json()).collect();
    Json(json!({ "object": "list", "data": data }))
}

fn job_id(id: &str) -> Result<u64, ServeError> {
    id.parse().map_err(|_| {
        ServeError::NotFound(format!(
            "no job '{}'",
            id.chars().take(32).collect::<String>()
        ))
    })
}

/// `GET /playground/api/jobs/{id}`.
async fn job(State(s): St, UrlPath(id): UrlPath<String>) -> Result<Json<Value>, ServeError> {
    let id = job_id(&id)?;
    s.jobs
        .get(id)
        .map(|j| Json(j.json()))
        .ok_or_else(|| ServeError::NotFound(format!("no job {id}")))
}

/// `POST /playground/api/jobs/{id}/cancel` (key).
async fn cancel(
    State(s): St,
    h: HeaderMap,
    UrlPath(id): UrlPath<String>,
) -> Result<Json<Value>, ServeError> {
    authorize(&s, &h)?;
    Ok(Json(s.jobs.cancel(job_id(&id)?)?.json()))
}

/// Put a trained prompt (`out`: the trainer's output folder) into the prompt folder as
/// `PROMPTS/name` and load it. The files are copied into a temporary folder beside it, then
/// renamed into place in one step (a reader never sees half a prompt; an existing prompt of
/// that name is never overwritten).
pub fn install_prompt(s: &AppState, name: &str, out: &Path) -> Result<(), ServeError> {
    let prompts = s
        .cfg
        .prompts
        .as_ref()
        .ok_or_else(|| invalid("the server was started without --prompts DIR"))?;
    let tmp = work_dir(s)?.join(format!("install-{name}-{}", std::process::id()));
    jobs::remove_dir(&tmp);
    let io = |e: std::io::Error| ServeError::Internal(format!("installing prompt '{name}': {e}"));
    std::fs::create_dir_all(&tmp).map_err(io)?;
    for f in PROMPT_FILES {
        let from = out.join(f);
        if from.exists() {
            std::fs::copy(&from, tmp.join(f)).map_err(io)?;
        }
    }
    let dest = prompts.join(name);
    if dest.exists() {
        jobs::remove_dir(&tmp);
        return Err(invalid(format!(
            "a prompt folder named '{name}' appeared meanwhile: not overwritten"
        )));
    }
    std::fs::rename(&tmp, &dest).map_err(|e| {
        jobs::remove_dir(&tmp);
        io(e)
    })?;
    s.registry.load(name)?;
    Ok(())
}

/// `GET /playground/api/prompts/{name}/inspect`: what `softprompt inspect` reports (nearest
/// tokens, norms, drift), the metadata, and the compare report when the folder has one.
async fn inspect(State(s): St, UrlPath(name): UrlPath<String>) -> Result<Json<Value>, ServeError> {
    let e = s.registry.get(&name)?;
    let Some(prompt) = e.served.prompt.clone() else {
        return Err(invalid(format!(
            "'{name}' is the bare base model: there is no prompt to inspect"
        )));
    };
    let model = s.model.clone();
    let mut report = blocking(move || {
        softprompt_core::inspect::inspect(&model, &prompt, softprompt_core::inspect::DEFAULT_K)
    })
    .await?
    .map_err(ServeError::from_core)?;
    report.prompt = None;
    let meta = e.served.prompt.as_ref().and_then(|p| p.meta.clone());
    let fingerprint_ok = e
        .served
        .prompt
        .as_ref()
        .and_then(|p| p.fingerprint_matches(&s.model.fingerprint));
    // The compare report (`softprompt compare --out PROMPTS/NAME`), if the folder has one.
    let compare = s.cfg.prompts.as_ref().and_then(|d| {
        let d = d.canonicalize().ok()?;
        let f = d.join(&name).join("compare.md").canonicalize().ok()?;
        if !f.starts_with(&d) {
            return None;
        }
        std::fs::read_to_string(f)
            .ok()
            .map(|t| t.chars().take(200_000).collect::<String>())
    });
    Ok(Json(json!({
        "name": name,
        "sha256": e.served.sha256,
        "model_fingerprint": s.model.fingerprint,
        "fingerprint_matches": fingerprint_ok,
        "meta": meta,
        "inspect": report,
        "compare": compare,
    })))
}

/// `GET /playground/api/prompts/{name}/download` (key): `NAME.zip` holding `NAME/` with the
/// PEFT adapter files and `softprompt.json`, written from the prompt being served.
async fn download(
    State(s): St,
    h: HeaderMap,
    UrlPath(name): UrlPath<String>,
) -> Result<Response, ServeError> {
    authorize(&s, &h)?;
    let e = s.registry.get(&name)?;
    let Some(prompt) = e.served.prompt.clone() else {
        return Err(invalid(format!(
            "'{name}' is the bare base model: there is no adapter to download"
        )));
    };
    let n2 = name.clone();
    let bytes = blocking(move || -> Result<Vec<u8>, ServeError> {
        let tmp = tempfile::tempdir().map_err(|e| ServeError::Internal(e.to_string()))?;
        prompt.save(tmp.path()).map_err(ServeError::from_core)?;
        let internal = |e: &dyn std::fmt::Display| ServeError::Internal(format!("zip: {e}"));
        let mut z = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        for f in PROMPT_FILES {
            let p = tmp.path().join(f);
            if !p.exists() {
                continue;
            }
            let data = std::fs::read(&p).map_err(|e| internal(&e))?;
            z.start_file(format!("{n2}/{f}"), opts)
                .map_err(|e| internal(&e))?;
            z.write_all(&data).map_err(|e| internal(&e))?;
        }
        Ok(z.finish().map_err(|e| internal(&e))?.into_inner())
    })
    .await??;
    let mut r = bytes.into_response();
    let hd = r.headers_mut();
    hd.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/zip"),
    );
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{name}.zip\"")) {
        hd.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(r)
}
