//! `softprompt loadtest`: N concurrent clients over M prompts against a running server, on
//! loopback. Bounded in time (and optionally in requests). Prints throughput, latency
//! percentiles and error counts, then replays every distinct (prompt, input, sampling) the
//! clients used as a single request alone and counts answers that differ from it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

#[derive(Clone, Debug)]
pub struct LoadConfig {
    /// Server root, e.g. `http://127.0.0.1:8080`.
    pub url: String,
    pub clients: usize,
    pub duration: Duration,
    /// Stop after this many requests in all (0: only the duration bounds the run).
    pub max_requests: usize,
    /// Prompt names to spread the requests over (round robin per client).
    pub prompts: Vec<String>,
    /// Input texts.
    pub inputs: Vec<String>,
    pub max_tokens: usize,
    /// Every other request samples (temperature 0.8, top-p 0.95, a fixed seed per case);
    /// the rest are greedy.
    pub mix_sampling: bool,
    /// Replay each distinct case alone and compare.
    pub check: bool,
}

/// Inputs used when none are given: short, varied English.
pub fn default_inputs() -> Vec<String> {
    [
        "The movie was a delight from start to finish",
        "I would not recommend this restaurant to anyone",
        "The capital of France is",
        "Write a short poem about the sea:",
        "def fibonacci(n):",
        "The weather today is",
        "Question: what is two plus two? Answer:",
        "Once upon a time, in a small village,",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

#[derive(Debug, Default)]
pub struct LoadReport {
    pub ok: usize,
    pub rejected: usize,
    pub errors: usize,
    /// Of `errors`, those a client may retry: 502/503/504 or a connection error (a replica
    /// restarting behind a load balancer).
    pub retryable: usize,
    /// First few error texts.
    pub error_samples: Vec<String>,
    pub mismatches: usize,
    pub checked: usize,
    pub distinct_cases: usize,
    pub completion_tokens: usize,
    pub elapsed: Duration,
    /// Latency of successful requests, ms, sorted.
    pub latencies_ms: Vec<f64>,
    /// Mean decode batch during the run (from the server's /metrics).
    pub mean_batch: Option<f64>,
}

impl LoadReport {
    pub fn tokens_per_s(&self) -> f64 {
        self.completion_tokens as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
    pub fn requests_per_s(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
    pub fn percentile(&self, q: f64) -> f64 {
        if self.latencies_ms.is_empty() {
            return f64::NAN;
        }
        let i = ((self.latencies_ms.len() - 1) as f64 * q).round() as usize;
        self.latencies_ms[i]
    }

    pub fn to_json(&self) -> Value {
        json!({
            "ok": self.ok, "rejected_429": self.rejected, "errors": self.errors, "retryable_errors": self.retryable,
            "error_samples": self.error_samples,
            "mismatches": self.mismatches, "checked": self.checked, "distinct_cases": self.distinct_cases,
            "completion_tokens": self.completion_tokens, "elapsed_s": self.elapsed.as_secs_f64(),
            "tokens_per_s": self.tokens_per_s(), "requests_per_s": self.requests_per_s(),
            "latency_ms": { "p50": self.percentile(0.5), "p90": self.percentile(0.9), "p99": self.percentile(0.99), "max": self.percentile(1.0) },
            "mean_batch": self.mean_batch,
        })
    }

    pub fn table(&self) -> String {
        format!(
            "| requests ok | 429 | errors | mismatches (checked) | tokens/s | requests/s | p50 ms | p90 ms | p99 ms | mean batch |\n\
             |---|---|---|---|---|---|---|---|---|---|\n\
             | {} | {} | {} | {} ({}) | {:.1} | {:.2} | {:.0} | {:.0} | {:.0} | {} |",
            self.ok,
            self.rejected,
            self.errors,
            self.mismatches,
            self.checked,
            self.tokens_per_s(),
            self.requests_per_s(),
            self.percentile(0.5),
            self.percentile(0.9),
            self.percentile(0.99),
            self.mean_batch.map_or("-".into(), |b| format!("{b:.1}")),
        )
    }
}

/// One request case: which prompt, which input, greedy or sampled.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Case {
    prompt: usize,
    input: usize,
    sampled: bool,
}

fn body(cfg: &LoadConfig, c: &Case) -> Value {
    let mut b = json!({
        "model": cfg.prompts[c.prompt],
        "prompt": cfg.inputs[c.input],
        "max_tokens": cfg.max_tokens,
        "temperature": 0.0,
    });
    if c.sampled {
        b["temperature"] = json!(0.8);
        b["top_p"] = json!(0.95);
        b["seed"] = json!((c.prompt * 1000 + c.input) as u64);
    }
    b
}

/// One answered request: its case, the generated ids, latency in ms.
type Answer = (Case, Vec<u64>, f64);

enum Outcome {
    Ok(Vec<u64>),
    Rejected,
    /// (why, retryable)
    Error(String, bool),
}

/// The header a load balancer routes on (`deploy/nginx.conf`: `hash` on it, so each prompt's
/// requests meet on one replica and share its KV prefix); nginx cannot read JSON bodies.
pub const MODEL_HEADER: &str = "X-Softprompt-Model";

fn post(agent: &ureq::Agent, url: &str, b: &Value) -> Outcome {
    match agent
        .post(&format!("{url}/v1/completions"))
        .set(MODEL_HEADER, b["model"].as_str().unwrap_or(""))
        .send_json(b.clone())
    {
        Ok(r) => match r.into_json::<Value>() {
            Ok(v) => match v["softprompt"]["token_ids"].as_array() {
                Some(a) => Outcome::Ok(a.iter().filter_map(Value::as_u64).collect()),
                None => Outcome::Error(format!("no token_ids in {v}"), false),
            },
            // The connection broke mid-body.
            Err(e) => Outcome::Error(format!("bad body: {e}"), true),
        },
        Err(ureq::Error::Status(429, _)) => Outcome::Rejected,
        Err(ureq::Error::Status(code, r)) => Outcome::Error(
            format!("HTTP {code}: {}", r.into_string().unwrap_or_default()),
            matches!(code, 502..=504),
        ),
        Err(e) => Outcome::Error(e.to_string(), true),
    }
}

fn metric(agent: &ureq::Agent, url: &str, name: &str) -> Option<f64> {
    let text = agent
        .get(&format!("{url}/metrics"))
        .call()
        .ok()?
        .into_string()
        .ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

pub fn run(cfg: &LoadConfig, mut progress: impl FnMut(&str)) -> Result<LoadReport, String> {
    if cfg.prompts.is_empty() || cfg.inputs.is_empty() || cfg.clients == 0 {
        return Err("need at least one prompt, one input and one client".into());
    }
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(600))
        .max_idle_connections_per_host(cfg.clients + 4)
        .build();
    let url = cfg.url.trim_end_matches('/').to_string();
    agent
        .get(&format!("{url}/health"))
        .call()
        .map_err(|e| format!("{url}/health: {e}"))?;
    let steps0 = metric(&agent, &url, "softprompt_decode_steps_total");
    let rows0 = metric(&agent, &url, "softprompt_decode_rows_total");

    let results: Arc<Mutex<Vec<Answer>>> = Arc::default();
    let rejected = Arc::new(AtomicUsize::new(0));
    let errors: Arc<Mutex<Vec<(String, bool)>>> = Arc::default();
    let issued = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let deadline = start + cfg.duration;
    let n_cases = cfg.prompts.len() * cfg.inputs.len() * if cfg.mix_sampling { 2 } else { 1 };
    std::thread::scope(|scope| {
        for client in 0..cfg.clients {
            let (results, rejected, errors, issued, stop) = (
                results.clone(),
                rejected.clone(),
                errors.clone(),
                issued.clone(),
                stop.clone(),
            );
            let (agent, url) = (agent.clone(), url.clone());
            scope.spawn(move || {
                let mut j = 0usize;
                while Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
                    let k = issued.fetch_add(1, Ordering::Relaxed);
                    if cfg.max_requests > 0 && k >= cfg.max_requests {
                        break;
                    }
                    // Spread clients over cases: client c walks the cases from its own offset.
                    let idx = (client * 7919 + j * 31) % n_cases;
                    j += 1;
                    let sampled = cfg.mix_sampling && idx % 2 == 1;
                    let idx = if cfg.mix_sampling { idx / 2 } else { idx };
                    let case = Case {
                        prompt: idx % cfg.prompts.len(),
                        input: (idx / cfg.prompts.len()) % cfg.inputs.len(),
                        sampled,
                    };
                    let t0 = Instant::now();
                    match post(&agent, &url, &body(cfg, &case)) {
                        Outcome::Ok(ids) => {
                            let ms = t0.elapsed().as_secs_f64() * 1e3;
                            results
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .push((case, ids, ms));
                        }
                        Outcome::Rejected => {
                            rejected.fetch_add(1, Ordering::Relaxed);
                            std::thread::sleep(Duration::from_millis(20));
                        }
                        Outcome::Error(e, retry) => {
                            errors
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .push((e, retry));
                        }
                    }
                }
            });
        }
        // Progress once every 10 s.
        while Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(250));
            let done = results.lock().map_or(0, |r| r.len());
            if cfg.max_requests > 0 && issued.load(Ordering::Relaxed) >= cfg.max_requests {
                break;
            }
            if start.elapsed().as_millis() % 10_000 < 250 {
                progress(&format!(
                    "{:>4.0}s  {done} ok, {} rejected",
                    start.elapsed().as_secs_f64(),
                    rejected.load(Ordering::Relaxed)
                ));
            }
        }
        stop.store(true, Ordering::Relaxed);
    });
    let elapsed = start.elapsed();
    let mean_batch = match (
        steps0,
        rows0,
        metric(&agent, &url, "softprompt_decode_steps_total"),
        metric(&agent, &url, "softprompt_decode_rows_total"),
    ) {
        (Some(s0), Some(r0), Some(s1), Some(r1)) if s1 > s0 => Some((r1 - r0) / (s1 - s0)),
        _ => None,
    };
    let results = Arc::try_unwrap(results)
        .map_err(|_| "clients still running".to_string())?
        .into_inner()
        .unwrap_or_else(|p| p.into_inner());
    let errors = errors.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let mut rep = LoadReport {
        ok: results.len(),
        rejected: rejected.load(Ordering::Relaxed),
        errors: errors.len(),
        retryable: errors.iter().filter(|e| e.1).count(),
        // Non-retryable errors first: they are the ones to look at.
        error_samples: errors
            .iter()
            .filter(|e| !e.1)
            .chain(errors.iter().filter(|e| e.1))
            .take(5)
            .map(|e| e.0.clone())
            .collect(),
        elapsed,
        mean_batch,
        ..LoadReport::default()
    };
    rep.completion_tokens = results.iter().map(|r| r.1.len()).sum();
    rep.latencies_ms = results.iter().map(|r| r.2).collect();
    rep.latencies_ms.sort_by(f64::total_cmp);
    if cfg.check {
        // Each distinct case alone, one request at a time.
        let mut reference: BTreeMap<Case, Vec<u64>> = BTreeMap::new();
        for (c, _, _) in &results {
            reference.entry(c.clone()).or_default();
        }
        rep.distinct_cases = reference.len();
        progress(&format!(
            "checking: {} distinct cases, each alone",
            reference.len()
        ));
        for (c, ids) in reference.iter_mut() {
            match post(&agent, &url, &body(cfg, c)) {
                Outcome::Ok(v) => *ids = v,
                Outcome::Rejected => return Err("a lone reference request got 429".into()),
                Outcome::Error(e, _) => return Err(format!("reference request failed: {e}")),
            }
        }
        for (c, ids, _) in &results {
            rep.checked += 1;
            if reference.get(c) != Some(ids) {
                rep.mismatches += 1;
            }
        }
    }
    Ok(rep)
}
