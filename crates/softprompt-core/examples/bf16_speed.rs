//! GFLOP/s of the f32 linear kernels vs the bf16 kernels (`bf16::PackedBf16`: AMX or AVX512-BF16) at the
//! SmolLM2-135M weight shapes. Median of 5 runs. Optional args: shape filter (e.g. `49152`)
//! and a list of m values (default 1184,64,8,1). `BF16_SPEED_MIN=1`: best of 15 runs instead
//! (less sensitive to other processes on a shared machine). `BF16_SPEED_CPU=1`: best of 15 in
//! CPU seconds summed over threads, i.e. GFLOP/s per busy core (blind to preemption).
use softprompt_core::compute::{bf16, kernels};
use std::time::Instant;

/// CPU time of all threads of this process (ns), from /proc/self/task/*/schedstat.
fn cpu_ns() -> f64 {
    let mut total = 0.0;
    if let Ok(dir) = std::fs::read_dir("/proc/self/task") {
        for e in dir.flatten() {
            if let Ok(s) = std::fs::read_to_string(e.path().join("schedstat")) {
                total += s
                    .split_whitespace()
                    .next()
                    .and_then(|v| v.parse::<f64>().ok())
                    .unwrap_or(0.0);
            }
        }
    }
    total
}

fn median(mut f: impl FnMut(), reps: usize) -> f64 {
    if std::env::var_os("BF16_SPEED_CPU").is_some() {
        // Seconds of CPU time summed over threads (per-core throughput, blind to preemption).
        f();
        return (0..15)
            .map(|_| {
                let s = cpu_ns();
                f();
                (cpu_ns() - s) * 1e-9
            })
            .fold(f64::INFINITY, f64::min);
    }
    if std::env::var_os("BF16_SPEED_MIN").is_some() {
        f();
        return (0..15)
            .map(|_| {
                let s = Instant::now();
                f();
                s.elapsed().as_secs_f64()
            })
            .fold(f64::INFINITY, f64::min);
    }
    f(); // warm-up
    let mut t: Vec<f64> = (0..reps)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64()
        })
        .collect();
    t.sort_by(|a, b| a.total_cmp(b));
    t[reps / 2]
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let filter = args.get(1).cloned().unwrap_or_default();
    let ms: Vec<usize> = args
        .get(2)
        .map(|s| s.split(',').filter_map(|v| v.parse().ok()).collect())
        .unwrap_or_else(|| vec![1184, 64, 8, 1]);
    println!(
        "bf16 kernel: {:?}, threads: {}, load: {}",
        bf16::kernel(),
        rayon::current_num_threads(),
        load()
    );
    // (name, n, k): w[n, k]
    let shapes = [
        ("q,o", 576usize, 576usize),
        ("k,v", 192, 576),
        ("gate,up", 1536, 576),
        ("down", 576, 1536),
        ("lm_head", 49152, 576),
    ];
    println!(
        "{:8} {:>6} {:>6} {:>5} | {:>9} {:>9} {:>6} | {:>9} {:>9} {:>6} | load",
        "shape", "n", "k", "m", "f32 fwd", "bf16 fwd", "x", "f32 dx", "bf16 dx", "x"
    );
    for &(name, n, k) in &shapes {
        if !filter.is_empty() && !name.contains(&filter) && n.to_string() != filter {
            continue;
        }
        let w: Vec<f32> = (0..n * k)
            .map(|i| ((i % 97) as f32 - 48.0) * 0.01)
            .collect(); // [n, k]
        let p = bf16::PackedBf16::pack(&w, n, k);
        for &m in &ms {
            let x: Vec<f32> = (0..m * k).map(|i| ((i % 13) as f32 - 6.0) * 0.1).collect(); // [m, k]
            let dy: Vec<f32> = (0..m * n).map(|i| ((i % 11) as f32 - 5.0) * 0.1).collect(); // [m, n]
            let mut y = vec![0.0f32; m * n]; // [m, n]
            let mut dx = vec![0.0f32; m * k]; // [m, k]
            let flop = 2.0 * (m * n * k) as f64 / 1e9;
            let reps = if m * n * k > 1 << 30 { 5 } else { 21 };
            let f_fwd = flop / median(|| kernels::linear(&x, &w, m, n, k, &mut y, false), reps);
            let b_fwd = flop / median(|| p.linear(&x, m, &mut y, false), reps);
            let f_dx = flop
                / median(
                    || kernels::linear_dx(&dy, &w, m, n, k, &mut dx, false),
                    reps,
                );
            let b_dx = flop / median(|| p.linear_dx(&dy, m, &mut dx, false), reps);
            println!(
                "{name:8} {n:6} {k:6} {m:5} | {f_fwd:9.1} {b_fwd:9.1} {:6.2} | {f_dx:9.1} {b_dx:9.1} {:6.2} | {}",
                b_fwd / f_fwd,
                b_dx / f_dx,
                load()
            );
        }
    }
}
