//! The server's counters and latency histograms, and `GET /metrics` in Prometheus' text
//! format: counters and gauges, per-prompt counters, and histograms (`_bucket{le=...}`
//! cumulative up to `+Inf`, `_sum`, `_count`) of time to first token, inter-token latency and
//! request latency, in seconds.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::response::{IntoResponse, Response};

use crate::state::St;

/// Bucket upper bounds (seconds) of the time to first token: a prefill on CPU takes tens to
/// hundreds of milliseconds, more when the queue is long.
const TTFT_BOUNDS: &[f64] = &[
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
/// Between two tokens: one decode step of the batch (milliseconds to tens of them).
const ITL_BOUNDS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];
/// A whole request: up to --timeout-s (120 s by default) and a little past it.
const LATENCY_BOUNDS: &[f64] = &[
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

/// A Prometheus histogram with fixed bucket bounds.
pub struct Histogram {
    bounds: &'static [f64],
    inner: Mutex<HistogramData>,
}

#[derive(Default)]
struct HistogramData {
    /// [bounds.len() + 1]: observations in (bounds[i-1], bounds[i]], the last one above all.
    counts: Vec<u64>,
    sum: f64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            inner: Mutex::new(HistogramData {
                counts: vec![0; bounds.len() + 1],
                sum: 0.0,
            }),
        }
    }

    pub fn observe(&self, d: Duration) {
        let x = d.as_secs_f64();
        let i = self.bounds.partition_point(|&b| b < x);
        let mut h = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        h.counts[i] += 1;
        h.sum += x;
    }

    /// `# HELP`, `# TYPE`, the cumulative buckets, `_sum` and `_count` of `softprompt_NAME`.
    fn write(&self, o: &mut String, name: &str, help: &str) {
        let (counts, sum) = {
            let h = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            (h.counts.clone(), h.sum)
        };
        let n = format!("softprompt_{name}");
        let _ = writeln!(o, "# HELP {n} {help}\n# TYPE {n} histogram");
        let mut cum = 0;
        for (i, c) in counts.iter().enumerate() {
            cum += c;
            let le = self.bounds.get(i).map_or("+Inf".into(), f64::to_string);
            let _ = writeln!(o, "{n}_bucket{{le=\"{le}\"}} {cum}");
        }
        let _ = writeln!(o, "{n}_sum {sum}\n{n}_count {cum}");
    }
}

/// What the HTTP layer counts (the scheduler counts the rest: `Scheduler::stats`).
pub struct Metrics {
    pub started: Instant,
    /// Requests to completions, chat and classify.
    pub requests: AtomicU64,
    pub rejected: AtomicU64,
    pub errors: AtomicU64,
    pub timeouts: AtomicU64,
    pub ttft: Histogram,
    pub itl: Histogram,
    pub latency: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            started: Instant::now(),
            requests: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            timeouts: AtomicU64::new(0),
            ttft: Histogram::new(TTFT_BOUNDS),
            itl: Histogram::new(ITL_BOUNDS),
            latency: Histogram::new(LATENCY_BOUNDS),
        }
    }
}

/// `GET /metrics`: Prometheus text format.
pub async fn metrics(State(s): St) -> Response {
    let st = &s.scheduler.stats;
    let g = |a: &AtomicUsize| a.load(Ordering::Relaxed);
    let c = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let busy = c(&st.busy_us) as f64 / 1e6;
    let uptime = s.metrics.started.elapsed().as_secs_f64();
    let mut o = String::new();
    let mut m = |name: &str, kind: &str, help: &str, v: f64| {
        let _ = writeln!(o, "# HELP softprompt_{name} {help}\n# TYPE softprompt_{name} {kind}\nsoftprompt_{name} {v}");
    };
    m(
        "requests_total",
        "counter",
        "Requests to completions and classify.",
        c(&s.metrics.requests) as f64,
    );
    m(
        "rejected_total",
        "counter",
        "Requests refused with 429 (--max-concurrent).",
        c(&s.metrics.rejected) as f64,
    );
    m(
        "errors_total",
        "counter",
        "Requests failed with a 5xx.",
        c(&s.metrics.errors) as f64,
    );
    m(
        "timeouts_total",
        "counter",
        "Requests past --timeout-s.",
        c(&s.metrics.timeouts) as f64,
    );
    m(
        "in_flight",
        "gauge",
        "Admitted requests not yet answered.",
        g(&s.in_flight) as f64,
    );
    m(
        "queue_depth",
        "gauge",
        "Requests waiting for the scheduler.",
        g(&st.queued) as f64,
    );
    m(
        "active_sequences",
        "gauge",
        "Sequences decoding.",
        g(&st.active) as f64,
    );
    m(
        "batch_size",
        "gauge",
        "Rows in the last decode step.",
        g(&st.last_batch) as f64,
    );
    m(
        "decode_steps_total",
        "counter",
        "Decode steps.",
        c(&st.decode_steps) as f64,
    );
    m(
        "decode_rows_total",
        "counter",
        "Rows over all decode steps (mean batch = rows / steps).",
        c(&st.decode_rows) as f64,
    );
    m(
        "prefill_tokens_total",
        "counter",
        "Text tokens prefilled.",
        c(&st.prefill_tokens) as f64,
    );
    m(
        "generated_tokens_total",
        "counter",
        "Tokens generated.",
        c(&st.generated_tokens) as f64,
    );
    m(
        "classified_total",
        "counter",
        "Classification requests scored.",
        c(&st.classified) as f64,
    );
    m(
        "cancelled_total",
        "counter",
        "Generations cancelled (client gone, stop string, timeout).",
        c(&st.cancelled) as f64,
    );
    m(
        "busy_seconds_total",
        "counter",
        "Seconds the scheduler spent computing.",
        busy,
    );
    m(
        "tokens_per_second",
        "gauge",
        "Generated tokens per busy second since start.",
        if busy > 0.0 {
            c(&st.generated_tokens) as f64 / busy
        } else {
            0.0
        },
    );
    m("uptime_seconds", "gauge", "Seconds since start.", uptime);
    m(
        "prompts_loaded",
        "gauge",
        "Soft prompts loaded.",
        s.registry.len() as f64,
    );
    let _ = writeln!(o, "# HELP softprompt_prompt_requests_total Requests per prompt.\n# TYPE softprompt_prompt_requests_total counter");
    let list = s.registry.list();
    for (n, e) in &list {
        let _ = writeln!(
            o,
            "softprompt_prompt_requests_total{{prompt=\"{n}\"}} {}",
            c(&e.requests)
        );
    }
    let _ = writeln!(o, "# HELP softprompt_prompt_tokens_total Tokens generated per prompt.\n# TYPE softprompt_prompt_tokens_total counter");
    for (n, e) in &list {
        let _ = writeln!(
            o,
            "softprompt_prompt_tokens_total{{prompt=\"{n}\"}} {}",
            c(&e.tokens)
        );
    }
    s.metrics.ttft.write(
        &mut o,
        "time_to_first_token_seconds",
        "Seconds from a generation request's arrival to its first token.",
    );
    s.metrics.itl.write(
        &mut o,
        "inter_token_latency_seconds",
        "Seconds between consecutive tokens of a generation.",
    );
    s.metrics.latency.write(
        &mut o,
        "request_latency_seconds",
        "Seconds from arrival to the end of the answer (stream included) of completion, chat and classify requests, whatever their status.",
    );
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        o,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_inclusive_and_cumulative() {
        // Binary fractions: the sum is exact.
        let h = Histogram::new(&[0.125, 1.0]);
        for s in [0.0625, 0.125, 0.25, 1.0, 4.0] {
            h.observe(Duration::from_secs_f64(s));
        }
        let mut o = String::new();
        h.write(&mut o, "x_seconds", "Test.");
        let want = "# HELP softprompt_x_seconds Test.\n# TYPE softprompt_x_seconds histogram\n\
            softprompt_x_seconds_bucket{le=\"0.125\"} 2\n\
            softprompt_x_seconds_bucket{le=\"1\"} 4\n\
            softprompt_x_seconds_bucket{le=\"+Inf\"} 5\n\
            softprompt_x_seconds_sum 5.4375\n\
            softprompt_x_seconds_count 5\n";
        assert_eq!(o, want);
    }
}
