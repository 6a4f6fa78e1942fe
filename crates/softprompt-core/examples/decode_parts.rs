//! Where a batch-1 decoding step's time goes: each matrix product of one layer and the LM
//! head, timed alone on the loaded model (`--weights` format as the first argument), inside
//! the thread pool as a model pass runs them. Each product repeats on the same matrix, so a
//! small one stays in cache: the sum is a lower bound of a step's product time.
use softprompt_core::compute::kernels;
use softprompt_core::compute::weight::WeightFormat;
use softprompt_core::model::FrozenModel;
use std::time::Instant;

fn main() {
    let fmt = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "quantized".into());
    let m = FrozenModel::load_with("smollm2-135m", WeightFormat::parse(&fmt).unwrap()).unwrap();
    let l = &m.llama;
    // The first layer's seven matrices (for_each_matrix visits embed first, then the blocks).
    let mut layer0 = Vec::new();
    l.for_each_matrix(|name, w| {
        if name.starts_with('w') && layer0.len() < 7 {
            layer0.push((name.to_string(), w.clone()));
        }
    });
    let time = |name: &str, w: &softprompt_core::compute::weight::Weight| {
        let x = vec![0.01f32; w.cols()];
        let mut y = vec![0.0f32; w.rows()];
        let reps = 2000 / (w.rows() / 500).max(1);
        let s = kernels::in_pool(|| {
            w.linear(&x, 1, &mut y, false, false);
            let t = Instant::now();
            for _ in 0..reps {
                w.linear(&x, 1, &mut y, false, false);
            }
            t.elapsed().as_secs_f64() / reps as f64
        });
        println!(
            "{name:8} [{:5} x {:4}] {:7.1} us  ({:.1} MB held)",
            w.rows(),
            w.cols(),
            s * 1e6,
            w.bytes() as f64 / 1e6
        );
        s
    };
    let mut layer = 0.0;
    for (n, w) in &layer0 {
        layer += time(n, w);
    }
    let head = time("lm_head", l.lm_head());
    println!(
        "products per token: {:.2} ms ({} layers) + head {:.2} ms = {:.2} ms -> {:.0} tok/s bound",
        layer * l.n_layers() as f64 * 1e3,
        l.n_layers(),
        head * 1e3,
        (layer * l.n_layers() as f64 + head) * 1e3,
        1.0 / (layer * l.n_layers() as f64 + head)
    );
}
