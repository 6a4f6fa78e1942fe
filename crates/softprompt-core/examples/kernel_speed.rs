//! Throughput of the linear kernels at decode-batch shapes (GFLOP/s).
use std::time::Instant;

fn main() {
    let (n, k) = (1536usize, 576usize);
    let w: Vec<f32> = (0..n * k).map(|i| (i % 13) as f32 * 0.01).collect();
    for m in [1usize, 4, 8, 16, 32, 64] {
        let x: Vec<f32> = (0..m * k).map(|i| (i % 7) as f32 * 0.1).collect();
        let mut y = vec![0.0f32; m * n];
        for (name, exact) in [("rows", true), ("linear", false)] {
            let reps = 200;
            let t = Instant::now();
            for _ in 0..reps {
                if exact {
                    softprompt_core::compute::kernels::linear_rows(&x, &w, m, n, k, &mut y, false);
                } else {
                    softprompt_core::compute::kernels::linear(&x, &w, m, n, k, &mut y, false);
                }
            }
            let s = t.elapsed().as_secs_f64() / reps as f64;
            println!(
                "m={m:3} {name:7} {:8.1} us  {:6.1} GFLOP/s",
                s * 1e6,
                2.0 * (m * n * k) as f64 / s / 1e9
            );
        }
    }
}
