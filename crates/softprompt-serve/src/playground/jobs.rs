//! Training jobs of the playground: one runs at a time on its own thread (the core trainer,
//! the one `softprompt train` drives), the others wait in a FIFO queue; serving goes on
//! beside it. A job's progress (loss, validation accuracy, tokens/s, ETA) is kept in memory
//! for the page to poll; when it ends well its prompt is installed in the prompt folder and
//! loaded into the running server.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::Serialize;
use serde_json::{json, Value};
use softprompt_core::train::distill::{self, DistillConfig};
use softprompt_core::train::trainer::{self, EvalLog, Observer, StepLog, TrainConfig};

use crate::error::ServeError;
use crate::state::AppState;

/// Jobs kept for the page (the oldest finished ones are forgotten beyond this).
const KEEP_JOBS: usize = 32;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Queued,
    Running,
    Done,
    Failed,
    Cancelled,
}

#[derive(Clone, Debug, Serialize)]
pub struct Point {
    pub step: u64,
    pub value: f64,
}

/// What the page sees of a job.
#[derive(Clone, Debug, Serialize)]
pub struct Progress {
    pub status: Status,
    pub step: u64,
    pub total_steps: u64,
    /// Training loss per step.
    pub loss: Vec<Point>,
    /// Validation metric per evaluation, and its name ("accuracy"; a distillation's is a
    /// negated KL divergence).
    pub validation: Vec<Point>,
    pub metric: Option<String>,
    pub tokens_per_s: Option<f64>,
    pub eta_s: Option<f64>,
    pub elapsed_s: f64,
    pub messages: Vec<String>,
    pub error: Option<String>,
}

/// One training run: settings fixed at submission, progress filled by the trainer thread.
pub struct Job {
    pub id: u64,
    pub name: String,
    pub kind: &'static str,
    pub cfg: TrainConfig,
    pub distill: Option<DistillConfig>,
    /// The job's work folder (data, trainer output).
    pub dir: PathBuf,
    stop: AtomicBool,
    progress: Mutex<Progress>,
}

impl Job {
    pub fn new(
        id: u64,
        name: String,
        cfg: TrainConfig,
        distill: Option<DistillConfig>,
        dir: PathBuf,
    ) -> Job {
        let total_steps = cfg.steps;
        Job {
            id,
            name,
            kind: if distill.is_some() {
                "distill"
            } else {
                "train"
            },
            cfg,
            distill,
            dir,
            stop: AtomicBool::new(false),
            progress: Mutex::new(Progress {
                status: Status::Queued,
                step: 0,
                total_steps,
                loss: Vec::new(),
                validation: Vec::new(),
                metric: None,
                tokens_per_s: None,
                eta_s: None,
                elapsed_s: 0.0,
                messages: Vec::new(),
                error: None,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Progress> {
        self.progress.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn json(&self) -> Value {
        let p = self.lock().clone();
        json!({
            "id": self.id,
            "name": self.name,
            "kind": self.kind,
            "task": self.cfg.task.name,
            "virtual_tokens": self.cfg.num_virtual_tokens,
            "progress": p,
        })
    }

    fn finish(&self, status: Status, error: Option<String>) {
        let mut p = self.lock();
        p.status = status;
        p.error = error;
        p.eta_s = None;
    }
}

/// The queue: `running` is true while a worker thread exists (it drains the queue, then ends).
#[derive(Default)]
pub struct Jobs {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    queue: VecDeque<Arc<Job>>,
    all: Vec<Arc<Job>>,
    running: bool,
}

impl Jobs {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every job kept, newest first.
    pub fn list(&self) -> Vec<Arc<Job>> {
        self.lock().all.iter().rev().cloned().collect()
    }

    pub fn get(&self, id: u64) -> Option<Arc<Job>> {
        self.lock().all.iter().find(|j| j.id == id).cloned()
    }

    /// A name taken by a job that is queued or running.
    pub fn name_pending(&self, name: &str) -> bool {
        self.lock()
            .all
            .iter()
            .any(|j| j.name == name && matches!(j.lock().status, Status::Queued | Status::Running))
    }

    /// Queue `job`; start the worker if none runs.
    pub fn submit(state: &Arc<AppState>, job: Arc<Job>) {
        let mut g = state.jobs.lock();
        g.queue.push_back(job.clone());
        g.all.push(job);
        // Forget the oldest finished jobs beyond KEEP_JOBS.
        while g.all.len() > KEEP_JOBS {
            let Some(i) = g
                .all
                .iter()
                .position(|j| !matches!(j.lock().status, Status::Queued | Status::Running))
            else {
                break;
            };
            g.all.remove(i);
        }
        if !g.running {
            g.running = true;
            let s = state.clone();
            std::thread::Builder::new()
                .name("softprompt-train".into())
                .spawn(move || worker(s))
                .map(|_| ())
                .unwrap_or_else(|e| {
                    tracing::error!("cannot start the training thread: {e}");
                    g.running = false;
                });
        }
    }

    /// Cancel a queued job (it never starts) or stop a running one (it ends after its step).
    pub fn cancel(&self, id: u64) -> Result<Arc<Job>, ServeError> {
        let mut g = self.lock();
        let job = g
            .all
            .iter()
            .find(|j| j.id == id)
            .cloned()
            .ok_or_else(|| ServeError::NotFound(format!("no job {id}")))?;
        let status = job.lock().status;
        match status {
            Status::Queued => {
                g.queue.retain(|j| j.id != id);
                job.finish(Status::Cancelled, None);
                remove_dir(&job.dir);
            }
            Status::Running => job.stop.store(true, Ordering::Relaxed),
            _ => {
                return Err(ServeError::Invalid(format!(
                    "job {id} has already ended ({status:?})"
                )))
            }
        }
        Ok(job)
    }
}

/// Runs queued jobs one after the other, then ends.
fn worker(state: Arc<AppState>) {
    loop {
        let job = {
            let mut g = state.jobs.lock();
            match g.queue.pop_front() {
                Some(j) => {
                    j.lock().status = Status::Running;
                    j
                }
                None => {
                    g.running = false;
                    return;
                }
            }
        };
        let t0 = Instant::now();
        let r = run(&state, &job);
        // The upload, checkpoints and outputs go; a trained prompt lives in PROMPTS/NAME now.
        remove_dir(&job.dir);
        job.lock().elapsed_s = t0.elapsed().as_secs_f64();
        match r {
            Ok(true) => job.finish(Status::Done, None),
            Ok(false) => job.finish(Status::Cancelled, None),
            Err(e) => {
                tracing::warn!(job = job.id, "training job failed: {e}");
                job.finish(Status::Failed, Some(e.to_string()));
            }
        }
    }
}

/// Train, then install and load the prompt. `Ok(false)`: cancelled.
fn run(state: &AppState, job: &Job) -> Result<bool, ServeError> {
    let out = job.dir.join("out");
    let mut obs = Watch {
        job,
        start: Instant::now(),
        first_step: 0,
    };
    let model = &*state.model;
    let summary = match &job.distill {
        Some(dc) => {
            distill::distill(model, &job.cfg, dc, &out, false, &job.stop, &mut obs)
                .map_err(ServeError::from_core)?
                .0
        }
        None => trainer::train(model, &job.cfg, &out, false, &job.stop, &mut obs)
            .map_err(ServeError::from_core)?,
    };
    if summary.interrupted {
        return Ok(false);
    }
    super::install_prompt(state, &job.name, &out)?;
    job.lock()
        .messages
        .push(format!("prompt '{}' is loaded and served", job.name));
    Ok(true)
}

/// The trainer's observer: progress into the job, ETA from the mean step time so far.
struct Watch<'a> {
    job: &'a Job,
    start: Instant,
    first_step: u64,
}

impl Observer for Watch<'_> {
    fn on_start(&mut self, start_step: u64, total_steps: u64) {
        self.first_step = start_step;
        self.start = Instant::now();
        let mut p = self.job.lock();
        p.step = start_step;
        p.total_steps = total_steps;
    }

    fn on_step(&mut self, s: &StepLog) {
        let mut p = self.job.lock();
        p.step = s.step;
        p.loss.push(Point {
            step: s.step,
            value: s.loss,
        });
        if s.seconds > 0.0 {
            p.tokens_per_s = Some(s.tokens as f64 / s.seconds);
        }
        let done = s.step.saturating_sub(self.first_step).max(1);
        let per_step = self.start.elapsed().as_secs_f64() / done as f64;
        p.eta_s = Some(per_step * p.total_steps.saturating_sub(s.step) as f64);
        p.elapsed_s = self.start.elapsed().as_secs_f64();
        if self.job.stop.load(Ordering::Relaxed) {
            p.eta_s = None;
        }
    }

    fn on_eval(&mut self, e: &EvalLog) {
        let mut p = self.job.lock();
        p.metric = Some(e.report.metric.clone());
        p.validation.push(Point {
            step: e.step,
            value: e.report.value,
        });
    }

    fn on_message(&mut self, msg: &str) {
        // The page sees the job's files by their own names, not the server's folders.
        let dir = format!("{}/", self.job.dir.display());
        self.job.lock().messages.push(msg.replace(&dir, ""));
    }
}

/// The files of a trained prompt that are installed and downloaded.
pub const PROMPT_FILES: [&str; 3] = [
    softprompt_core::prompt::ADAPTER_CONFIG_FILE,
    softprompt_core::prompt::ADAPTER_WEIGHTS_FILE,
    softprompt_core::prompt::META_FILE,
];

/// Remove a job folder (best effort; logged).
pub fn remove_dir(dir: &Path) {
    if let Err(e) = std::fs::remove_dir_all(dir) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!("cannot remove {}: {e}", dir.display());
        }
    }
}
