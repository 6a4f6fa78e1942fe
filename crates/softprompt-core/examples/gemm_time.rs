use softprompt_core::compute::kernels::{gemm, linear, linear_dx, View};
fn main() {
    let (m, n, k) = (800, 1536, 576);
    let x = vec![0.5f32; m * k];
    let w = vec![0.25f32; n * k];
    let mut y = vec![0.0f32; m * n];
    for name in ["linear", "linear_dx", "nn"] {
        let t = std::time::Instant::now();
        let reps = 10;
        for _ in 0..reps {
            match name {
                "linear" => linear(&x, &w, m, n, k, &mut y, false),
                "linear_dx" => {
                    let mut dx = vec![0.0f32; m * k];
                    linear_dx(&y, &w, m, n, k, &mut dx, false)
                }
                _ => gemm(
                    m,
                    n,
                    k,
                    View::rm(&x, k),
                    View::rm(&w, n),
                    &mut y,
                    n,
                    false,
                    true,
                ),
            }
        }
        let s = t.elapsed().as_secs_f64() / reps as f64;
        println!(
            "{name}: {:.2} ms, {:.1} GFLOP/s",
            s * 1e3,
            2.0 * (m * n * k) as f64 / s / 1e9
        );
    }
}
