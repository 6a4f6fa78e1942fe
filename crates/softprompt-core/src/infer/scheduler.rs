//! Continuous batching of generation requests that use different soft prompts.
//!
//! One thread owns the compute. Requests join and leave between decode steps: a new
//! request is prefilled on its own (its soft prompt's keys/values come from a cache computed
//! once per prompt, [`ServedPrompt::prefix`]), then its rows decode in one packed batch with
//! every other active request, whatever prompt each uses: a soft prompt only lives in a
//! sequence's KV cache, so mixing prompts costs nothing.
//!
//! With the model in exact mode ([`Llama::exact`]), every row is computed in a fixed order,
//! so a request's tokens are bit-identical to what it gets alone (and to a full forward
//! without the prefix cache): batching is invisible to the client.
//!
//! Nothing here knows about HTTP: a request reports through a [`Sink`] callback and is
//! cancelled by its [`Cancel`] flag or when the sink returns `false` (client gone).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Instant;

use rand::rngs::StdRng;
use rand::SeedableRng;

use crate::infer::objective::{self, ClassExample};
use crate::infer::{self, Sampling};
use crate::model::input::{PromptKind, PromptRef, SeqInput};
use crate::model::llama::{KvCache, Llama};
use crate::model::FrozenModel;
use crate::prompt::SoftPrompt;
use crate::{Error, Result};

/// A prompt ready to serve: the soft prompt (none for the bare base model) and the keys and
/// values of its virtual tokens, computed once and cloned into every request's cache.
pub struct ServedPrompt {
    pub name: String,
    /// sha256 of the adapter's files (content address; echoed in responses).
    pub sha256: String,
    pub prompt: Option<SoftPrompt>,
    /// KV cache after the P virtual tokens.
    pub prefix: KvCache,
    /// Final hidden state `[D]` at the last virtual token (predicts the first text token);
    /// empty for a prefix prompt, which has no rows.
    pub last_hidden: Vec<f32>,
}

impl ServedPrompt {
    /// Compute the prefix of `prompt` on `model` (in the mode the server runs).
    pub fn new(
        model: &Llama,
        name: &str,
        sha256: &str,
        prompt: Option<SoftPrompt>,
    ) -> Result<Self> {
        let mut prefix = KvCache::new(model.n_layers());
        let mut last_hidden = Vec::new();
        if let Some(p) = prompt.as_ref().filter(|p| p.kind() == PromptKind::Prefix) {
            // A prefix prompt is its KV cache: nothing to compute.
            prefix = model.cache_for(Some(p.view()?))?;
        } else if let Some(p) = &prompt {
            let (mut x, lens) = model.embed_batch(&[SeqInput {
                prompt: Some(p.view()?),
                ids: &[],
            }])?;
            model.forward(&mut x, &lens, std::slice::from_mut(&mut prefix), false)?;
            let d = model.dims.d;
            last_hidden = x[x.len() - d..].to_vec();
        }
        Ok(ServedPrompt {
            name: name.to_string(),
            sha256: sha256.to_string(),
            prompt,
            prefix,
            last_hidden,
        })
    }

    pub fn num_virtual_tokens(&self) -> usize {
        self.prompt.as_ref().map_or(0, |p| p.num_virtual_tokens())
    }

    /// The soft prompt as the model reads it (none for the bare base model).
    pub fn view(&self) -> Result<Option<PromptRef<'_>>> {
        self.prompt.as_ref().map(|p| p.view()).transpose()
    }
}

/// Why a generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finish {
    /// An end-of-sequence token (included in the ids, as the last token).
    Stop,
    /// `max_new_tokens` reached.
    Length,
    /// The model's context is full.
    Context,
    /// Cancelled (client gone, stop string matched, timeout, shutdown).
    Cancelled,
}

impl Finish {
    /// OpenAI's `finish_reason`.
    pub fn as_str(self) -> &'static str {
        match self {
            Finish::Stop => "stop",
            Finish::Length | Finish::Context => "length",
            Finish::Cancelled => "cancelled",
        }
    }
}

/// What a request hears from the scheduler.
#[derive(Clone, Debug)]
pub enum Event {
    /// One new token id.
    Token(u32),
    /// The end: no more events follow.
    Done(Finish),
    /// Failed (bad input found late, model error): no more events follow.
    Error(String),
}

/// Receives a request's events on the scheduler thread; must not block. Returning `false`
/// cancels the request (the client is gone).
pub type Sink = Box<dyn FnMut(Event) -> bool + Send>;

/// Set to cancel a request; checked before its prefill and after every step.
#[derive(Clone, Default)]
pub struct Cancel(Arc<AtomicBool>);

impl Cancel {
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Relaxed)
    }
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// A generation request: `ids` after the prompt's virtual tokens.
pub struct GenRequest {
    pub prompt: Arc<ServedPrompt>,
    pub ids: Vec<u32>,
    pub sampling: Sampling,
    pub cancel: Cancel,
    pub sink: Sink,
}

/// A rank-classification request: the reply gets the candidates' scores.
pub struct ClassifyRequest {
    pub prompt: Arc<ServedPrompt>,
    pub example: ClassExample,
    pub length_norm: bool,
    pub reply: Box<dyn FnOnce(Result<Vec<f64>>) + Send>,
}

enum Job {
    Gen(GenRequest),
    Classify(ClassifyRequest),
}

/// Scheduler limits.
#[derive(Clone, Debug)]
pub struct SchedulerConfig {
    /// Most sequences decoded together in one step.
    pub max_batch: usize,
    /// Most prompt tokens prefilled between two decode steps (one request always goes).
    pub max_prefill_tokens: usize,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            max_batch: 64,
            max_prefill_tokens: 1024,
        }
    }
}

/// Counters for `/metrics` (monotonic unless named as a gauge).
#[derive(Default)]
pub struct Stats {
    /// Gauge: requests waiting to start.
    pub queued: AtomicUsize,
    /// Gauge: sequences decoding.
    pub active: AtomicUsize,
    /// Gauge: rows in the last decode step.
    pub last_batch: AtomicUsize,
    pub decode_steps: AtomicU64,
    /// Sum over decode steps of the batch size (mean batch = this / decode_steps).
    pub decode_rows: AtomicU64,
    pub prefill_tokens: AtomicU64,
    pub generated_tokens: AtomicU64,
    pub classified: AtomicU64,
    pub cancelled: AtomicU64,
    /// Microseconds spent computing (prefill + decode + classify).
    pub busy_us: AtomicU64,
}

/// Handle to the scheduler thread. Dropping every handle lets the thread finish the
/// requests it holds and exit.
pub struct Scheduler {
    tx: mpsc::Sender<Job>,
    pub stats: Arc<Stats>,
    thread: std::thread::JoinHandle<()>,
}

impl Scheduler {
    /// Start the scheduler thread on `model` (set `model.llama.exact` first for
    /// batch-invariant results).
    pub fn start(model: Arc<FrozenModel>, cfg: SchedulerConfig) -> Self {
        let (tx, rx) = mpsc::channel();
        let stats = Arc::new(Stats::default());
        let st = stats.clone();
        let thread = std::thread::Builder::new()
            .name("softprompt-scheduler".into())
            .spawn(move || Worker::new(model, cfg, st).run(rx))
            .expect("spawning the scheduler thread");
        Scheduler { tx, stats, thread }
    }

    pub fn generate(&self, req: GenRequest) -> Result<()> {
        self.stats.queued.fetch_add(1, Ordering::Relaxed);
        self.tx.send(Job::Gen(req)).map_err(|_| {
            self.stats.queued.fetch_sub(1, Ordering::Relaxed);
            Error::Input("the scheduler has stopped".into())
        })
    }

    pub fn classify(&self, req: ClassifyRequest) -> Result<()> {
        self.stats.queued.fetch_add(1, Ordering::Relaxed);
        self.tx.send(Job::Classify(req)).map_err(|_| {
            self.stats.queued.fetch_sub(1, Ordering::Relaxed);
            Error::Input("the scheduler has stopped".into())
        })
    }

    /// Finish the held requests and stop the thread.
    pub fn shutdown(self) {
        let Scheduler { tx, thread, .. } = self;
        drop(tx);
        let _ = thread.join();
    }
}

/// One decoding sequence.
struct Active {
    req: GenRequest,
    rng: StdRng,
    out: Vec<u32>,
    /// Positions used (virtual + text + generated so far).
    len: usize,
}

struct Worker {
    model: Arc<FrozenModel>,
    cfg: SchedulerConfig,
    stats: Arc<Stats>,
    pending: VecDeque<Job>,
    active: Vec<Active>,
    caches: Vec<KvCache>, // caches[i] belongs to active[i]
}

impl Worker {
    fn new(model: Arc<FrozenModel>, cfg: SchedulerConfig, stats: Arc<Stats>) -> Self {
        Worker {
            model,
            cfg,
            stats,
            pending: VecDeque::new(),
            active: Vec::new(),
            caches: Vec::new(),
        }
    }

    fn run(mut self, rx: mpsc::Receiver<Job>) {
        let mut open = true;
        loop {
            if self.active.is_empty() && self.pending.is_empty() {
                if !open {
                    return;
                }
                match rx.recv() {
                    Ok(j) => self.pending.push_back(j),
                    Err(_) => return,
                }
            }
            loop {
                match rx.try_recv() {
                    Ok(j) => self.pending.push_back(j),
                    Err(mpsc::TryRecvError::Empty) => break,
                    Err(mpsc::TryRecvError::Disconnected) => {
                        open = false;
                        break;
                    }
                }
            }
            let t0 = Instant::now();
            self.admit();
            if !self.active.is_empty() {
                self.step();
            }
            self.stats
                .busy_us
                .fetch_add(t0.elapsed().as_micros() as u64, Ordering::Relaxed);
        }
    }

    /// Start waiting requests while there is room, within the prefill budget.
    fn admit(&mut self) {
        let mut budget = self.cfg.max_prefill_tokens;
        let mut started = 0;
        while self.active.len() < self.cfg.max_batch.max(1) {
            let Some(job) = self.pending.front() else {
                break;
            };
            let cost = match job {
                Job::Gen(r) => r.ids.len(),
                Job::Classify(r) => r.prompt.num_virtual_tokens() + r.example.ids.len(),
            };
            if started > 0 && cost > budget {
                break;
            }
            budget = budget.saturating_sub(cost);
            started += 1;
            let job = self.pending.pop_front().expect("front exists");
            self.stats.queued.fetch_sub(1, Ordering::Relaxed);
            match job {
                Job::Gen(r) => self.prefill(r),
                Job::Classify(r) => {
                    let llama = &self.model.llama;
                    let res = r
                        .prompt
                        .view()
                        .and_then(|p| {
                            objective::classify_batch(
                                llama,
                                p,
                                std::slice::from_ref(&r.example),
                                r.length_norm,
                                false,
                            )
                        })
                        .map(|b| b.scores.into_iter().next().unwrap_or_default());
                    self.stats.classified.fetch_add(1, Ordering::Relaxed);
                    (r.reply)(res);
                }
            }
        }
        self.stats
            .active
            .store(self.active.len(), Ordering::Relaxed);
    }

    /// Run a new request's text over its prompt's cached prefix and pick its first token.
    fn prefill(&mut self, mut req: GenRequest) {
        if req.cancel.is_cancelled() {
            self.stats.cancelled.fetch_add(1, Ordering::Relaxed);
            (req.sink)(Event::Done(Finish::Cancelled));
            return;
        }
        let llama = &self.model.llama;
        let prompt = req.prompt.clone();
        let p = prompt.num_virtual_tokens();
        let mut cache = prompt.prefix.clone();
        let logits = if req.ids.is_empty() {
            if prompt.last_hidden.is_empty() {
                (req.sink)(Event::Error(
                    "empty input and no input prompt to predict from".into(),
                ));
                return;
            }
            llama.logits(&prompt.last_hidden, &[0])
        } else {
            let res = llama
                .embed_batch(&[SeqInput {
                    prompt: None,
                    ids: &req.ids,
                }])
                .and_then(|(mut x, lens)| {
                    llama.forward(&mut x, &lens, std::slice::from_mut(&mut cache), false)?;
                    Ok(llama.logits(&x, &[lens[0] - 1]))
                });
            match res {
                Ok(l) => l,
                Err(e) => {
                    (req.sink)(Event::Error(e.to_string()));
                    return;
                }
            }
        };
        self.stats
            .prefill_tokens
            .fetch_add(req.ids.len() as u64, Ordering::Relaxed);
        let rng = StdRng::seed_from_u64(req.sampling.seed);
        let len = p + req.ids.len();
        let mut a = Active {
            req,
            rng,
            out: Vec::new(),
            len,
        };
        if let Some(finish) = Self::emit(&mut a, logits, llama.max_positions(), &self.stats) {
            self.finish(a, finish);
        } else {
            self.active.push(a);
            self.caches.push(cache);
        }
    }

    /// Pick the next token of `a` from its logits and report it; `Some` when `a` is done.
    fn emit(a: &mut Active, mut logits: Vec<f32>, max_pos: usize, stats: &Stats) -> Option<Finish> {
        let s = &a.req.sampling;
        let tok = infer::pick(&mut logits, s, a.out.len(), &mut a.rng);
        stats.generated_tokens.fetch_add(1, Ordering::Relaxed);
        a.out.push(tok);
        a.len += 1;
        if !(a.req.sink)(Event::Token(tok)) || a.req.cancel.is_cancelled() {
            return Some(Finish::Cancelled);
        }
        let s = &a.req.sampling;
        if s.eos.contains(&tok) && a.out.len() >= s.min_new_tokens {
            Some(Finish::Stop)
        } else if a.out.len() >= s.max_new_tokens {
            Some(Finish::Length)
        } else if a.len >= max_pos {
            Some(Finish::Context)
        } else {
            None
        }
    }

    fn count(&self, f: Finish) {
        if f == Finish::Cancelled {
            self.stats.cancelled.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn finish(&self, mut a: Active, f: Finish) {
        self.count(f);
        (a.req.sink)(Event::Done(f));
    }

    /// One decode step: the last token of every active sequence, one packed forward.
    fn step(&mut self) {
        let llama = &self.model.llama;
        let b = self.active.len();
        let last: Vec<u32> = self.active.iter().map(|a| a.out[a.out.len() - 1]).collect();
        let seqs: Vec<SeqInput> = last
            .iter()
            .map(|t| SeqInput {
                prompt: None,
                ids: std::slice::from_ref(t),
            })
            .collect();
        let res = llama.embed_batch(&seqs).and_then(|(mut x, lens)| {
            llama.forward(&mut x, &lens, &mut self.caches, false)?;
            let rows: Vec<usize> = (0..b).collect();
            Ok(llama.logits(&x, &rows)) // [B, V]
        });
        self.stats.decode_steps.fetch_add(1, Ordering::Relaxed);
        self.stats
            .decode_rows
            .fetch_add(b as u64, Ordering::Relaxed);
        self.stats.last_batch.store(b, Ordering::Relaxed);
        let logits = match res {
            Ok(l) => l,
            Err(e) => {
                // A model error fails every sequence of the step.
                for mut a in self.active.drain(..) {
                    (a.req.sink)(Event::Error(e.to_string()));
                }
                self.caches.clear();
                self.stats.active.store(0, Ordering::Relaxed);
                return;
            }
        };
        let v = llama.dims.vocab;
        let max_pos = llama.max_positions();
        let mut done = Vec::new();
        for (i, (a, lg)) in self.active.iter_mut().zip(logits.chunks(v)).enumerate() {
            if let Some(f) = Self::emit(a, lg.to_vec(), max_pos, &self.stats) {
                done.push((i, f));
            }
        }
        let mut finished = Vec::with_capacity(done.len());
        for &(i, f) in done.iter().rev() {
            self.caches.swap_remove(i);
            finished.push((self.active.swap_remove(i), f));
        }
        // Counters first: whoever sees the gauge drop or hears "done" sees them updated.
        for (_, f) in &finished {
            self.count(*f);
        }
        self.stats
            .active
            .store(self.active.len(), Ordering::Relaxed);
        for (mut a, f) in finished {
            (a.req.sink)(Event::Done(f));
        }
    }
}
