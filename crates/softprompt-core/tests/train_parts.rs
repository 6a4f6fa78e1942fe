//! Training parts: optimizers against hand-written references, schedules, gradient
//! clipping, exact optimizer-state round trips, crash-safe checkpoints (including real
//! SIGKILLs of a child process) and PNG charts.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use softprompt_core::fsio::fault;
use softprompt_core::report::plot::{bar_chart, heatmap, line_chart, Series, TEXT_COLOR};
use softprompt_core::train::checkpoint::{
    checkpoint_name, load_checkpoint, load_latest, save_checkpoint, Checkpoint, LATEST_FILE,
    STATE_FILE, TENSORS_FILE,
};
use softprompt_core::train::optim::{clip_grad_norm, lr_at, Optimizer, OptimizerKind, Schedule};

// ---------------------------------------------------------------------------------------
// Helpers

fn close(a: f64, b: f64, rel: f64, abs: f64) -> bool {
    (a - b).abs() <= abs + rel * b.abs()
}

fn assert_close(got: &[f32], want: &[f64], rel: f64, abs: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            close(*g as f64, *w, rel, abs),
            "{what}[{i}]: got {g}, want {w} (diff {})",
            (*g as f64 - w).abs()
        );
    }
}

/// Deterministic pseudo-random values in [-scale, scale).
fn values(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n)
        .map(|_| rng.gen_range(-1.0f32..1.0) * scale)
        .collect()
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

// ---------------------------------------------------------------------------------------
// AdamW

/// torch.optim.AdamW for one step, in f64.
#[allow(clippy::too_many_arguments)]
fn adamw_ref(
    p: &mut [f64],
    m: &mut [f64],
    v: &mut [f64],
    g: &[f64],
    t: u64,
    lr: f64,
    (b1, b2, eps, wd): (f64, f64, f64, f64),
) {
    for i in 0..p.len() {
        p[i] *= 1.0 - lr * wd;
        m[i] = b1 * m[i] + (1.0 - b1) * g[i];
        v[i] = b2 * v[i] + (1.0 - b2) * g[i] * g[i];
        let bc1 = 1.0 - b1.powi(t as i32);
        let bc2 = 1.0 - b2.powi(t as i32);
        let denom = v[i].sqrt() / bc2.sqrt() + eps;
        p[i] -= lr / bc1 * m[i] / denom;
    }
}

#[test]
fn adamw_matches_torch_formula_for_three_steps() {
    let hp = (0.9, 0.999, 1e-8, 0.01);
    let kind = OptimizerKind::AdamW {
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.01,
    };
    assert_eq!(kind, OptimizerKind::adamw_default());
    let init = [0.5f32, -1.0, 2.0, 0.0];
    let grads: [[f32; 4]; 3] = [
        [0.1, -0.2, 0.3, 0.0],
        [-0.05, 0.4, 0.3, 1e-3],
        [0.2, 0.1, -0.6, -2.0],
    ];
    let lrs = [0.01f32, 0.02, 0.005];

    let mut opt = Optimizer::new(kind, 2, 2);
    let mut p = init.to_vec();
    let mut rp: Vec<f64> = init.iter().map(|&x| x as f64).collect();
    let (mut rm, mut rv) = (vec![0.0; 4], vec![0.0; 4]);
    for (t, (g, lr)) in grads.iter().zip(lrs).enumerate() {
        opt.step(&mut p, g, lr);
        let g64: Vec<f64> = g.iter().map(|&x| x as f64).collect();
        adamw_ref(&mut rp, &mut rm, &mut rv, &g64, t as u64 + 1, lr as f64, hp);
        assert_close(&p, &rp, 1e-5, 1e-7, &format!("adamw step {}", t + 1));
    }
    assert_eq!(opt.steps_taken(), 3);
    // First step of Adam moves every coordinate with a non-zero gradient by ~lr.
    let mut opt = Optimizer::new(
        OptimizerKind::AdamW {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        },
        1,
        2,
    );
    let mut p = vec![1.0f32, 1.0];
    opt.step(&mut p, &[5.0, -1e-3], 0.1);
    assert!(
        (p[0] - 0.9).abs() < 1e-6 && (p[1] - 1.1).abs() < 1e-5,
        "{p:?}"
    );
}

// ---------------------------------------------------------------------------------------
// Adafactor

/// Adafactor's hyper-parameters in f64 for the reference.
#[derive(Clone, Copy)]
struct AfHp {
    decay: f64,
    eps1: f64,
    eps2: f64,
    clip: f64,
    wd: f64,
    beta1: Option<f64>,
    scale_parameter: bool,
    relative_step: bool,
}

/// Straightforward Adafactor (Shazeer & Stern, as in transformers) for a `[r, c]` matrix.
struct AfRef {
    hp: AfHp,
    r: usize,
    c: usize,
    t: u64,
    row: Vec<f64>,
    col: Vec<f64>,
    m: Vec<f64>,
}

impl AfRef {
    fn new(hp: AfHp, r: usize, c: usize) -> Self {
        AfRef {
            hp,
            r,
            c,
            t: 0,
            row: vec![0.0; r],
            col: vec![0.0; c],
            m: vec![0.0; r * c],
        }
    }

    fn step(&mut self, p: &mut [f64], g: &[f64], lr: f64) {
        let (r, c, hp) = (self.r, self.c, self.hp);
        self.t += 1;
        let t = self.t as f64;
        // Step size from the parameter before the update.
        let rho = if hp.relative_step {
            f64::min(1e-2, 1.0 / t.sqrt())
        } else {
            lr
        };
        let mut scale = 1.0;
        if hp.scale_parameter {
            let mut ss = 0.0;
            for x in p.iter() {
                ss += x * x;
            }
            scale = f64::max(hp.eps2, (ss / p.len() as f64).sqrt());
        }
        let alpha = rho * scale;
        let beta2t = 1.0 - t.powf(hp.decay);
        // Row and column means of g^2 + eps1.
        for i in 0..r {
            let mut s = 0.0;
            for j in 0..c {
                s += g[i * c + j] * g[i * c + j] + hp.eps1;
            }
            self.row[i] = beta2t * self.row[i] + (1.0 - beta2t) * (s / c as f64);
        }
        for j in 0..c {
            let mut s = 0.0;
            for i in 0..r {
                s += g[i * c + j] * g[i * c + j] + hp.eps1;
            }
            self.col[j] = beta2t * self.col[j] + (1.0 - beta2t) * (s / r as f64);
        }
        let mut row_sum = 0.0;
        for i in 0..r {
            row_sum += self.row[i];
        }
        let row_mean = row_sum / r as f64;
        let mut u = vec![0.0; r * c];
        for i in 0..r {
            for j in 0..c {
                let vhat = self.row[i] * self.col[j] / row_mean;
                u[i * c + j] = g[i * c + j] / vhat.sqrt();
            }
        }
        let mut ss = 0.0;
        for x in &u {
            ss += x * x;
        }
        let rms_u = (ss / u.len() as f64).sqrt();
        let denom = f64::max(1.0, rms_u / hp.clip);
        for x in u.iter_mut() {
            *x = *x / denom * alpha;
        }
        if let Some(b1) = hp.beta1 {
            for (m, u) in self.m.iter_mut().zip(u.iter_mut()) {
                *m = b1 * *m + (1.0 - b1) * *u;
                *u = *m;
            }
        }
        for k in 0..p.len() {
            p[k] -= hp.wd * alpha * p[k];
            p[k] -= u[k];
        }
    }
}

fn af_kind(hp: AfHp) -> OptimizerKind {
    OptimizerKind::Adafactor {
        beta2_decay: hp.decay as f32,
        eps1: hp.eps1 as f32,
        eps2: hp.eps2 as f32,
        clip_threshold: hp.clip as f32,
        weight_decay: hp.wd as f32,
        beta1: hp.beta1.map(|b| b as f32),
        scale_parameter: hp.scale_parameter,
        relative_step: hp.relative_step,
    }
}

fn lester_hp() -> AfHp {
    AfHp {
        decay: -0.8,
        eps1: 1e-30,
        eps2: 1e-3,
        clip: 1.0,
        wd: 1e-5,
        beta1: None,
        scale_parameter: false,
        relative_step: false,
    }
}

fn check_adafactor(hp: AfHp, lr: f32, grad_scale: f32, what: &str) {
    let (r, c) = (3, 4);
    let mut opt = Optimizer::new(af_kind(hp), r, c);
    let mut p = values(r * c, 1, 1.0);
    let mut rp: Vec<f64> = p.iter().map(|&x| x as f64).collect();
    let mut reference = AfRef::new(hp, r, c);
    for t in 0..8u64 {
        let g = values(r * c, 100 + t, grad_scale);
        let g64: Vec<f64> = g.iter().map(|&x| x as f64).collect();
        opt.step(&mut p, &g, lr);
        reference.step(&mut rp, &g64, lr as f64);
        assert_close(&p, &rp, 2e-5, 2e-6, &format!("{what} step {}", t + 1));
    }
}

#[test]
fn adafactor_matches_reference() {
    assert_eq!(af_kind(lester_hp()), OptimizerKind::adafactor_lester());
    // Lester et al.'s setting; gradients large enough to trigger update clipping, and tiny.
    check_adafactor(lester_hp(), 0.3, 1.0, "lester");
    check_adafactor(lester_hp(), 0.3, 1e-4, "lester, small grads");
    // Every option switched on.
    let all = AfHp {
        wd: 0.01,
        beta1: Some(0.9),
        scale_parameter: true,
        relative_step: true,
        ..lester_hp()
    };
    check_adafactor(
        all,
        123.0, /* ignored with relative_step */
        0.5,
        "all options",
    );
    let mid = AfHp {
        beta1: Some(0.8),
        scale_parameter: true,
        clip: 0.5,
        ..lester_hp()
    };
    check_adafactor(mid, 0.1, 2.0, "beta1 + scaling");
}

#[test]
fn adafactor_update_is_clipped_to_lr() {
    // With clip 1.0 the first update has RMS <= lr, whatever the gradient's scale.
    let mut opt = Optimizer::new(OptimizerKind::adafactor_lester(), 3, 4);
    let mut p = vec![0.0f32; 12];
    let g = values(12, 7, 1000.0);
    opt.step(&mut p, &g, 0.3);
    let rms = (p.iter().map(|x| (*x as f64).powi(2)).sum::<f64>() / 12.0).sqrt();
    assert!(rms <= 0.3 + 1e-6 && rms > 0.1, "rms {rms}");
}

/// Minimize 0.5 * sum a_i (p_i - target_i)^2; returns the final loss.
fn quadratic(kind: OptimizerKind, schedule: Schedule, lr: f32, steps: u64) -> (f64, f64) {
    let (r, c) = (4, 6);
    let target = values(r * c, 11, 2.0);
    let a: Vec<f32> = values(r * c, 12, 1.0)
        .iter()
        .map(|x| 0.5 + x.abs() * 2.0)
        .collect();
    let loss = |p: &[f32]| -> f64 {
        p.iter()
            .zip(&target)
            .zip(&a)
            .map(|((p, t), a)| 0.5 * (*a as f64) * ((p - t) as f64).powi(2))
            .sum()
    };
    let mut p = vec![0.0f32; r * c];
    let start = loss(&p);
    let mut opt = Optimizer::new(kind, r, c);
    for s in 0..steps {
        let g: Vec<f32> = p
            .iter()
            .zip(&target)
            .zip(&a)
            .map(|((p, t), a)| a * (p - t))
            .collect();
        opt.step(&mut p, &g, lr_at(schedule, lr, s, steps, steps / 20));
    }
    (start, loss(&p))
}

#[test]
fn optimizers_minimize_a_quadratic() {
    let adamw = OptimizerKind::AdamW {
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.0,
    };
    let (start, end) = quadratic(adamw, Schedule::Cosine, 0.1, 1500);
    assert!(end < start * 1e-4, "adamw: {start} -> {end}");
    let (start, end) = quadratic(
        OptimizerKind::adafactor_lester(),
        Schedule::Linear,
        0.3,
        1500,
    );
    assert!(end < start * 1e-3, "adafactor: {start} -> {end}");
    let with_momentum = OptimizerKind::Adafactor {
        beta2_decay: -0.8,
        eps1: 1e-30,
        eps2: 1e-3,
        clip_threshold: 1.0,
        weight_decay: 0.0,
        beta1: Some(0.9),
        scale_parameter: false,
        relative_step: false,
    };
    let (start, end) = quadratic(with_momentum, Schedule::Cosine, 0.1, 1500);
    assert!(end < start * 1e-3, "adafactor+beta1: {start} -> {end}");
}

fn resume_is_exact(kind: OptimizerKind) {
    let (r, c) = (3, 5);
    let grads: Vec<Vec<f32>> = (0..10).map(|t| values(r * c, 200 + t, 0.7)).collect();
    let lr = |t: usize| lr_at(Schedule::Cosine, 0.05, t as u64, 10, 2);

    let mut straight = Optimizer::new(kind, r, c);
    let mut p_straight = values(r * c, 3, 0.5);
    for (t, g) in grads.iter().enumerate() {
        straight.step(&mut p_straight, g, lr(t));
    }

    let mut first = Optimizer::new(kind, r, c);
    let mut p = values(r * c, 3, 0.5);
    for (t, g) in grads.iter().enumerate().take(5) {
        first.step(&mut p, g, lr(t));
    }
    // Through a checkpoint on disk, and the JSON through its text form.
    let (tensors, json) = first.state();
    let dir = tempfile::tempdir().unwrap();
    let mut all = vec![("prompt".to_string(), vec![r, c], p.clone())];
    all.extend(tensors);
    let ckpt = Checkpoint {
        step: 5,
        tensors: all,
        state: serde_json::json!({ "optimizer": json }),
    };
    save_checkpoint(dir.path(), &ckpt, 2).unwrap();
    drop(first);
    let loaded = load_latest(dir.path()).unwrap().unwrap();
    let json_text = serde_json::to_string(&loaded.state["optimizer"]).unwrap();
    let json: serde_json::Value = serde_json::from_str(&json_text).unwrap();
    let mut resumed = Optimizer::from_state(&loaded.tensors, &json).unwrap();
    assert_eq!(resumed.steps_taken(), 5);
    assert_eq!(resumed.kind(), &kind);
    let mut p = loaded.tensors[0].2.clone();
    for (t, g) in grads.iter().enumerate().skip(5) {
        resumed.step(&mut p, g, lr(t));
    }
    assert_eq!(
        bits(&p),
        bits(&p_straight),
        "{kind:?}: parameters differ after resume"
    );
    assert_eq!(resumed.steps_taken(), straight.steps_taken());
    let (ta, ja) = resumed.state();
    let (tb, jb) = straight.state();
    assert_eq!(ja, jb);
    for (a, b) in ta.iter().zip(&tb) {
        assert_eq!((&a.0, &a.1), (&b.0, &b.1));
        assert_eq!(
            bits(&a.2),
            bits(&b.2),
            "{kind:?}: state tensor {} differs",
            a.0
        );
    }
}

#[test]
fn optimizer_state_round_trip_is_bit_exact() {
    resume_is_exact(OptimizerKind::adamw_default());
    resume_is_exact(OptimizerKind::adafactor_lester());
    resume_is_exact(OptimizerKind::Adafactor {
        beta2_decay: -0.8,
        eps1: 1e-30,
        eps2: 1e-3,
        clip_threshold: 1.0,
        weight_decay: 0.01,
        beta1: Some(0.9),
        scale_parameter: true,
        relative_step: false,
    });
}

#[test]
fn optimizer_state_is_validated() {
    let opt = Optimizer::new(OptimizerKind::adamw_default(), 2, 3);
    let (tensors, json) = opt.state();
    assert_eq!(json["kind"]["name"], "adamw");
    assert_eq!(json["rows"], 2);
    // Missing tensor.
    let err = Optimizer::from_state(&tensors[..1], &json).unwrap_err();
    assert!(err.to_string().contains("optim.exp_avg_sq"), "{err}");
    // Wrong shape.
    let mut bad = tensors.clone();
    bad[0].1 = vec![3, 2];
    let err = Optimizer::from_state(&bad, &json).unwrap_err();
    assert!(err.to_string().contains("shape"), "{err}");
    // Unknown optimizer.
    let mut j = json.clone();
    j["kind"]["name"] = "sgd".into();
    assert!(Optimizer::from_state(&tensors, &j).is_err());
    // Newer format.
    let mut j = json.clone();
    j["format_version"] = 99.into();
    assert!(Optimizer::from_state(&tensors, &j).is_err());
    // Adafactor's factored state is [rows] + [cols].
    let af = Optimizer::new(OptimizerKind::adafactor_lester(), 7, 9);
    let (t, _) = af.state();
    let shapes: Vec<(&str, &[usize])> = t
        .iter()
        .map(|(n, s, _)| (n.as_str(), s.as_slice()))
        .collect();
    assert_eq!(
        shapes,
        [
            ("optim.exp_avg_sq_row", &[7][..]),
            ("optim.exp_avg_sq_col", &[9][..])
        ]
    );
}

#[test]
fn optimizer_kind_serde() {
    let j = serde_json::to_value(OptimizerKind::adafactor_lester()).unwrap();
    assert_eq!(j["name"], "adafactor");
    assert_eq!(j["beta1"], serde_json::Value::Null);
    assert_eq!(j["scale_parameter"], false);
    let k: OptimizerKind = serde_json::from_value(j).unwrap();
    assert_eq!(k, OptimizerKind::adafactor_lester());
    let k: OptimizerKind = serde_json::from_str(
        r#"{"name":"adamw","beta1":0.9,"beta2":0.98,"eps":1e-6,"weight_decay":0.1}"#,
    )
    .unwrap();
    assert!(matches!(k, OptimizerKind::AdamW { beta2, .. } if beta2 == 0.98));
    assert!(OptimizerKind::AdamW {
        beta1: 1.0,
        beta2: 0.9,
        eps: 1e-8,
        weight_decay: 0.0
    }
    .validate()
    .is_err());
}

// ---------------------------------------------------------------------------------------
// Schedules and clipping

#[test]
fn schedules_at_key_points() {
    let f = |s, step| lr_at(s, 1.0, step, 110, 10);
    for s in [Schedule::Constant, Schedule::Linear, Schedule::Cosine] {
        assert_eq!(f(s, 0), 0.0, "{s}: warm-up starts at 0");
        assert!(
            (f(s, 5) - 0.5).abs() < 1e-7,
            "{s}: half-way through warm-up"
        );
        assert_eq!(f(s, 10), 1.0, "{s}: peak after warm-up");
    }
    assert_eq!(f(Schedule::Constant, 109), 1.0);
    assert_eq!(f(Schedule::Constant, 1000), 1.0);
    assert!((f(Schedule::Linear, 60) - 0.5).abs() < 1e-7);
    assert!((f(Schedule::Linear, 109) - 0.01).abs() < 1e-7);
    assert_eq!(f(Schedule::Linear, 110), 0.0);
    assert_eq!(f(Schedule::Linear, 500), 0.0);
    assert!((f(Schedule::Cosine, 60) - 0.5).abs() < 1e-6);
    let quarter = 0.5 * (1.0 + std::f64::consts::FRAC_PI_4.cos());
    assert!((f(Schedule::Cosine, 35) as f64 - quarter).abs() < 1e-6);
    assert!(f(Schedule::Cosine, 110).abs() < 1e-7);
    assert!(
        f(Schedule::Cosine, 200).abs() < 1e-7,
        "no rise after the end"
    );
    // No warm-up: the first step uses the full rate; base lr scales everything.
    assert_eq!(lr_at(Schedule::Linear, 0.3, 0, 100, 0), 0.3);
    assert!((lr_at(Schedule::Cosine, 0.3, 50, 100, 0) - 0.15).abs() < 1e-7);
    // Names.
    assert_eq!("cosine".parse::<Schedule>().unwrap(), Schedule::Cosine);
    assert_eq!(" Linear ".parse::<Schedule>().unwrap(), Schedule::Linear);
    assert!("step".parse::<Schedule>().is_err());
    assert_eq!(
        serde_json::to_string(&Schedule::Constant).unwrap(),
        "\"constant\""
    );
    assert_eq!(
        serde_json::from_str::<Schedule>("\"linear\"").unwrap(),
        Schedule::Linear
    );
}

#[test]
fn clipping_the_gradient_norm() {
    let mut g = vec![3.0f32, 4.0];
    assert_eq!(clip_grad_norm(&mut g, 1.0), 5.0);
    let coef = 1.0 / (5.0 + 1e-6);
    assert!((g[0] as f64 - 3.0 * coef).abs() < 1e-7 && (g[1] as f64 - 4.0 * coef).abs() < 1e-7);
    // Below the limit, disabled, empty: untouched.
    let mut g = vec![3.0f32, 4.0];
    assert_eq!(clip_grad_norm(&mut g, 10.0), 5.0);
    assert_eq!(g, [3.0, 4.0]);
    assert_eq!(clip_grad_norm(&mut g, 0.0), 5.0);
    assert_eq!(clip_grad_norm(&mut g, -1.0), 5.0);
    assert_eq!(g, [3.0, 4.0]);
    assert_eq!(clip_grad_norm(&mut [], 1.0), 0.0);
    // Non-finite: reported, gradient left alone.
    let mut g = vec![f32::NAN, 1.0];
    assert!(clip_grad_norm(&mut g, 1.0).is_nan());
    assert_eq!(g[1], 1.0);
    let mut g = vec![f32::INFINITY, 1.0];
    assert!(clip_grad_norm(&mut g, 1.0).is_infinite());
}

// ---------------------------------------------------------------------------------------
// Checkpoints

fn sample_ckpt(step: u64) -> Checkpoint {
    let mut prompt = values(4 * 8, step, 1.0);
    // Values whose bits must survive exactly.
    prompt[0] = -0.0;
    prompt[1] = f32::from_bits(1); // smallest subnormal
    prompt[2] = f32::MAX;
    prompt[3] = f32::from_bits(0x7fc0_1234); // NaN with a payload
    Checkpoint {
        step,
        tensors: vec![
            ("prompt".into(), vec![4, 8], prompt),
            (
                "optim.exp_avg_sq_row".into(),
                vec![4],
                values(4, step + 1000, 1.0),
            ),
            (
                "optim.exp_avg_sq_col".into(),
                vec![8],
                values(8, step + 2000, 1.0),
            ),
            ("scalar".into(), vec![], vec![step as f32]),
            ("empty".into(), vec![0, 8], vec![]),
        ],
        state: serde_json::json!({
            "step": step,
            "history": [{"step": 1, "loss": 2.5}],
            "name": "test",
        }),
    }
}

fn assert_same(a: &Checkpoint, b: &Checkpoint) {
    assert_eq!(a.step, b.step);
    assert_eq!(a.state, b.state);
    assert_eq!(a.tensors.len(), b.tensors.len());
    for (x, y) in a.tensors.iter().zip(&b.tensors) {
        assert_eq!((&x.0, &x.1), (&y.0, &y.1));
        assert_eq!(bits(&x.2), bits(&y.2), "tensor {}", x.0);
    }
}

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn checkpoint_round_trip_is_bit_identical() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ckpts");
    assert!(
        load_latest(&dir).unwrap().is_none(),
        "missing folder: nothing to resume"
    );
    fs::create_dir(&dir).unwrap();
    assert!(
        load_latest(&dir).unwrap().is_none(),
        "empty folder: nothing to resume"
    );

    let ckpt = sample_ckpt(123);
    let path = save_checkpoint(&dir, &ckpt, 3).unwrap();
    assert_eq!(path, dir.join("ckpt-00000123"));
    assert_eq!(checkpoint_name(123), "ckpt-00000123");
    assert_eq!(entries(&dir), ["ckpt-00000123", "latest"]);
    assert_eq!(entries(&path), [STATE_FILE, TENSORS_FILE]);
    assert_eq!(
        fs::read_to_string(dir.join(LATEST_FILE)).unwrap().trim(),
        "ckpt-00000123"
    );
    let state: serde_json::Value =
        serde_json::from_slice(&fs::read(path.join(STATE_FILE)).unwrap()).unwrap();
    assert_eq!(state["step"], 123);
    assert_eq!(state["tensors_sha256"].as_str().unwrap().len(), 64);

    let loaded = load_latest(&dir).unwrap().unwrap();
    assert_same(&loaded, &ckpt);
    assert_same(&load_checkpoint(&path).unwrap(), &ckpt);

    // Saving the same step again replaces it.
    let mut again = sample_ckpt(123);
    again.state["name"] = "second".into();
    save_checkpoint(&dir, &again, 3).unwrap();
    assert_same(&load_latest(&dir).unwrap().unwrap(), &again);
    assert_eq!(entries(&dir), ["ckpt-00000123", "latest"]);

    // Bad tensors are refused before anything is written.
    let mut bad = sample_ckpt(124);
    bad.tensors[0].1 = vec![5, 5];
    assert!(save_checkpoint(&dir, &bad, 3).is_err());
    let mut bad = sample_ckpt(124);
    bad.tensors.push(("prompt".into(), vec![1], vec![0.0]));
    assert!(save_checkpoint(&dir, &bad, 3).is_err());
    assert_eq!(entries(&dir), ["ckpt-00000123", "latest"]);
}

#[test]
fn checkpoint_pruning_keeps_the_newest() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    for step in [10, 20, 30, 40, 50] {
        save_checkpoint(dir, &sample_ckpt(step), 2).unwrap();
    }
    assert_eq!(entries(dir), ["ckpt-00000040", "ckpt-00000050", "latest"]);
    assert_eq!(load_latest(dir).unwrap().unwrap().step, 50);
    // keep_last 0 keeps everything.
    save_checkpoint(dir, &sample_ckpt(60), 0).unwrap();
    save_checkpoint(dir, &sample_ckpt(70), 0).unwrap();
    assert_eq!(entries(dir).len(), 5);
    // keep_last 1: only the new one.
    save_checkpoint(dir, &sample_ckpt(80), 1).unwrap();
    assert_eq!(entries(dir), ["ckpt-00000080", "latest"]);
}

#[test]
fn corrupted_latest_falls_back_to_previous() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    save_checkpoint(dir, &sample_ckpt(1), 3).unwrap();
    save_checkpoint(dir, &sample_ckpt(2), 3).unwrap();
    let newest = dir.join("ckpt-00000002");

    // Flip one byte in the tensor data: the checksum catches it.
    let f = newest.join(TENSORS_FILE);
    let mut bytes = fs::read(&f).unwrap();
    let n = bytes.len();
    bytes[n - 10] ^= 0x55;
    fs::write(&f, &bytes).unwrap();
    let err = load_checkpoint(&newest).unwrap_err().to_string();
    assert!(
        err.contains("checksum") && err.contains(TENSORS_FILE),
        "{err}"
    );
    assert_same(&load_latest(dir).unwrap().unwrap(), &sample_ckpt(1));

    // Truncated file, and a damaged state.json.
    fs::write(&f, &bytes[..n / 2]).unwrap();
    assert_same(&load_latest(dir).unwrap().unwrap(), &sample_ckpt(1));
    fs::remove_dir_all(&newest).unwrap();
    save_checkpoint(dir, &sample_ckpt(2), 3).unwrap();
    fs::write(newest.join(STATE_FILE), b"{\"format_version\": 1, \"step\"").unwrap();
    assert_same(&load_latest(dir).unwrap().unwrap(), &sample_ckpt(1));

    // A garbage `latest` also falls back to the newest valid folder.
    save_checkpoint(dir, &sample_ckpt(3), 3).unwrap();
    fs::write(dir.join(LATEST_FILE), b"../../etc\n").unwrap();
    assert_eq!(load_latest(dir).unwrap().unwrap().step, 3);

    // Nothing valid at all: an error, not a silent fresh start.
    for e in entries(dir) {
        if e.starts_with("ckpt-") {
            fs::write(dir.join(e).join(STATE_FILE), b"garbage").unwrap();
        }
    }
    let err = load_latest(dir).unwrap_err().to_string();
    assert!(err.contains("no valid checkpoint"), "{err}");
}

#[test]
fn dangling_latest_and_temp_leftovers() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    save_checkpoint(dir, &sample_ckpt(5), 3).unwrap();
    save_checkpoint(dir, &sample_ckpt(6), 3).unwrap();

    // `latest` names a folder that is gone.
    fs::remove_dir_all(dir.join("ckpt-00000006")).unwrap();
    assert_same(&load_latest(dir).unwrap().unwrap(), &sample_ckpt(5));

    // A stale temp folder (an interrupted save of a newer step) is ignored ...
    let stale = dir.join(".tmp-ckpt-99999-0");
    fs::create_dir(&stale).unwrap();
    fs::write(stale.join(TENSORS_FILE), b"partial").unwrap();
    fs::write(dir.join(".tmp-latest-99999-1"), b"ckpt-0000").unwrap();
    assert_same(&load_latest(dir).unwrap().unwrap(), &sample_ckpt(5));
    // ... and cleaned up by the next save.
    save_checkpoint(dir, &sample_ckpt(7), 3).unwrap();
    assert_eq!(entries(dir), ["ckpt-00000005", "ckpt-00000007", "latest"]);

    // A dangling `latest` with no checkpoint left: nothing to resume.
    let only = tempfile::tempdir().unwrap();
    fs::write(only.path().join(LATEST_FILE), b"ckpt-00000001\n").unwrap();
    assert!(load_latest(only.path()).unwrap().is_none());
}

#[test]
fn write_failures_leave_the_previous_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let first = sample_ckpt(100);
    save_checkpoint(dir, &first, 2).unwrap();
    save_checkpoint(dir, &sample_ckpt(90), 2).unwrap(); // an older one to prune later
    fs::write(dir.join(LATEST_FILE), b"ckpt-00000100\n").unwrap();

    // Count the filesystem operations of a successful save.
    let probe = tempfile::tempdir().unwrap();
    save_checkpoint(probe.path(), &first, 2).unwrap();
    save_checkpoint(probe.path(), &sample_ckpt(90), 2).unwrap();
    fault::inject(None, false);
    save_checkpoint(probe.path(), &sample_ckpt(200), 1).unwrap();
    let ops = fault::ops();
    assert!(ops >= 6, "{ops} operations");

    // Fail each operation in turn ("disk full"): an error naming a path in `dir`, and
    // the previous checkpoint still loads, unchanged.
    let mut failures = 0;
    for op in 0..ops {
        fault::inject(Some(op), false);
        let res = save_checkpoint(dir, &sample_ckpt(200), 1);
        fault::inject(None, false);
        match res {
            Err(e) => {
                failures += 1;
                let msg = e.to_string();
                assert!(
                    msg.contains(&dir.display().to_string()) && msg.contains("No space left"),
                    "op {op}: {msg}"
                );
                let loaded = load_latest(dir).unwrap().unwrap();
                assert_same(&loaded, &first);
                assert!(
                    !entries(dir).iter().any(|e| e.starts_with(".tmp-")),
                    "op {op}: temp files left: {:?}",
                    entries(dir)
                );
                // Undo a new checkpoint that got its final name before the failure.
                let _ = fs::remove_dir_all(dir.join("ckpt-00000200"));
            }
            Ok(_) => {
                // Failing a deletion after the commit is only a warning.
                assert_eq!(load_latest(dir).unwrap().unwrap().step, 200);
                // Restore the starting state.
                save_checkpoint(dir, &first, 0).unwrap();
                save_checkpoint(dir, &sample_ckpt(90), 0).unwrap();
                let _ = fs::remove_dir_all(dir.join("ckpt-00000200"));
                fs::write(dir.join(LATEST_FILE), b"ckpt-00000100\n").unwrap();
            }
        }
    }
    assert!(failures >= 5, "{failures} failing saves");

    // A file squatting on the new checkpoint's name.
    fs::write(dir.join("ckpt-00000300"), b"not a folder").unwrap();
    let err = save_checkpoint(dir, &sample_ckpt(300), 1)
        .unwrap_err()
        .to_string();
    assert!(err.contains("ckpt-00000300"), "{err}");
    assert_same(&load_latest(dir).unwrap().unwrap(), &first);
}

#[test]
fn simulated_crash_at_every_step_leaves_a_loadable_checkpoint() {
    let probe = tempfile::tempdir().unwrap();
    for s in [1, 2, 3] {
        save_checkpoint(probe.path(), &sample_ckpt(s), 2).unwrap();
    }
    fault::inject(None, false);
    save_checkpoint(probe.path(), &sample_ckpt(4), 2).unwrap();
    let ops = fault::ops();

    for op in 0..ops {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        for s in [1, 2, 3] {
            save_checkpoint(dir, &sample_ckpt(s), 2).unwrap();
        }
        // The process "dies" at operation `op`: nothing is cleaned up.
        fault::inject(Some(op), true);
        let res = save_checkpoint(dir, &sample_ckpt(4), 2);
        fault::inject(None, false);
        assert!(res.is_err(), "op {op} should have crashed");
        let loaded = load_latest(dir)
            .unwrap_or_else(|e| panic!("op {op}: {e}"))
            .unwrap_or_else(|| panic!("op {op}: nothing to resume"));
        assert!(
            loaded.step == 3 || loaded.step == 4,
            "op {op}: step {}",
            loaded.step
        );
        assert_same(&loaded, &sample_ckpt(loaded.step));
        // The next save recovers completely.
        save_checkpoint(dir, &sample_ckpt(5), 2).unwrap();
        assert_eq!(load_latest(dir).unwrap().unwrap().step, 5);
        assert!(
            !entries(dir).iter().any(|e| e.starts_with(".tmp-")),
            "{:?}",
            entries(dir)
        );
    }
}

/// Environment variable that turns [`sigkill_child`] into a checkpoint-writing loop.
const CHILD_ENV: &str = "SOFTPROMPT_TEST_CKPT_CHILD_DIR";

/// A checkpoint whose content is a function of its step (so any loaded one can be checked).
fn big_ckpt(step: u64) -> Checkpoint {
    Checkpoint {
        step,
        tensors: vec![
            (
                "prompt".into(),
                vec![100, 512],
                values(100 * 512, step, 1.0),
            ),
            ("m".into(), vec![100, 512], values(100 * 512, step + 7, 1.0)),
        ],
        state: serde_json::json!({ "step": step }),
    }
}

/// Not a test by itself: with `CHILD_ENV` set (by the test below) it saves checkpoints
/// forever until killed.
#[test]
fn sigkill_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let dir = PathBuf::from(dir);
    let mut step = load_latest(&dir).unwrap().map_or(0, |c| c.step);
    loop {
        step += 1;
        save_checkpoint(&dir, &big_ckpt(step), 2).unwrap();
    }
}

#[test]
fn checkpoints_survive_sigkill() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ckpts");
    let exe = std::env::current_exe().unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let mut last = 0;
    for round in 0..12 {
        let mut child = std::process::Command::new(&exe)
            .args([
                "--exact",
                "sigkill_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, &dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let wait_ms = if round == 11 {
            400
        } else {
            rng.gen_range(20..150)
        };
        std::thread::sleep(Duration::from_millis(wait_ms));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        match load_latest(&dir).unwrap_or_else(|e| panic!("round {round}: {e}")) {
            Some(c) => {
                assert!(
                    c.step >= last,
                    "round {round}: went back from {last} to {}",
                    c.step
                );
                assert_same(&c, &big_ckpt(c.step));
                last = c.step;
            }
            None => assert_eq!(last, 0, "round {round}: lost all checkpoints"),
        }
    }
    assert!(last > 0, "the child never completed a checkpoint");
}

// ---------------------------------------------------------------------------------------
// Plots

struct Png {
    w: usize,
    h: usize,
    /// `[h, w, 3]` RGB.
    px: Vec<u8>,
}

impl Png {
    fn read(path: &Path) -> Png {
        let decoder = png::Decoder::new(fs::File::open(path).unwrap());
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!(info.color_type, png::ColorType::Rgb);
        assert_eq!(info.bit_depth, png::BitDepth::Eight);
        buf.truncate(info.buffer_size());
        Png {
            w: info.width as usize,
            h: info.height as usize,
            px: buf,
        }
    }

    fn at(&self, x: usize, y: usize) -> [u8; 3] {
        let i = (y * self.w + x) * 3;
        [self.px[i], self.px[i + 1], self.px[i + 2]]
    }

    /// Pixels of color `c` in rows `y0..y1`.
    fn count(&self, c: [u8; 3], y0: usize, y1: usize) -> usize {
        (y0..y1.min(self.h))
            .flat_map(|y| (0..self.w).map(move |x| (x, y)))
            .filter(|&(x, y)| self.at(x, y) == c)
            .count()
    }

    fn distinct_colors(&self) -> usize {
        let mut set: Vec<[u8; 3]> = self
            .px
            .chunks_exact(3)
            .map(|p| [p[0], p[1], p[2]])
            .collect();
        set.sort_unstable();
        set.dedup();
        set.len()
    }

    fn non_white_fraction(&self) -> f64 {
        let n = self
            .px
            .chunks_exact(3)
            .filter(|p| p != &[255, 255, 255])
            .count();
        n as f64 / (self.w * self.h) as f64
    }
}

/// Where to write the charts: `$SOFTPROMPT_PLOT_DIR/{name}` (to look at them) or a temp dir.
fn plot_dir(name: &str) -> (Option<tempfile::TempDir>, PathBuf) {
    match std::env::var("SOFTPROMPT_PLOT_DIR") {
        Ok(d) => {
            let d = PathBuf::from(d).join(name);
            fs::create_dir_all(&d).unwrap();
            (None, d)
        }
        Err(_) => {
            let t = tempfile::tempdir().unwrap();
            let p = t.path().to_path_buf();
            (Some(t), p)
        }
    }
}

/// A decodable RGB PNG of size `w` (if given), with at least `min_colors` colors, some
/// ink but not mostly ink, a title, and no temp file left beside it.
fn assert_chart(path: &Path, w: Option<(usize, usize)>, min_colors: usize) -> Png {
    let img = Png::read(path);
    if let Some((ew, eh)) = w {
        assert_eq!((img.w, img.h), (ew, eh), "{}", path.display());
    }
    assert!(
        img.distinct_colors() >= min_colors,
        "{}: {} colors",
        path.display(),
        img.distinct_colors()
    );
    let f = img.non_white_fraction();
    assert!(
        f > 0.01 && f < 0.9,
        "{}: non-white fraction {f}",
        path.display()
    );
    // The title is drawn in the text color near the top.
    assert!(
        img.count(TEXT_COLOR, 0, 40) > 50,
        "{}: no title text",
        path.display()
    );
    // No temp file left beside it.
    let dir = path.parent().unwrap();
    assert!(
        !entries(dir).iter().any(|e| e.starts_with(".tmp-")),
        "{:?}",
        entries(dir)
    );
    img
}

#[test]
fn line_chart_is_a_valid_png() {
    let (_keep, dir) = plot_dir("line");
    let loss: Vec<(f64, f64)> = (0..=300)
        .map(|s| {
            let s = s as f64;
            (s, 2.5 * (-s / 80.0).exp() + 0.3 + 0.08 * (s * 0.7).sin())
        })
        .collect();
    let mut acc: Vec<(f64, f64)> = (0..=6)
        .map(|k| (k as f64 * 50.0, 0.5 + 0.07 * k as f64))
        .collect();
    acc[3].1 = f64::NAN; // a gap
    let path = dir.join("line.png");
    line_chart(
        &path,
        "Prompt tuning on SST-2 (smollm2-135m)",
        "training step",
        "loss / accuracy",
        &[
            Series::new("train loss", loss),
            Series::new("eval accuracy", acc),
            Series::new("empty", vec![]),
        ],
    )
    .unwrap();
    let img = assert_chart(&path, Some((800, 500)), 8);
    // Both series' colors are present.
    let blue = softprompt_core::report::plot::PALETTE[0];
    let orange = softprompt_core::report::plot::PALETTE[1];
    assert!(img.count(blue, 0, img.h) > 200);
    assert!(img.count(orange, 0, img.h) > 30);

    // Degenerate inputs still give a chart.
    let p = dir.join("line_empty.png");
    line_chart(&p, "Nothing yet", "step", "loss", &[]).unwrap();
    assert_chart(&p, Some((800, 500)), 3);
    let p = dir.join("line_flat.png");
    line_chart(
        &p,
        "Flat, one point, NaNs",
        "step",
        "value",
        &[
            Series::new("flat", vec![(0.0, 1.0), (10.0, 1.0), (f64::NAN, 3.0)]),
            Series::new("one", vec![(5.0, 1.0)]),
            Series::new("nan", vec![(f64::NAN, f64::NAN), (1.0, f64::INFINITY)]),
        ],
    )
    .unwrap();
    assert_chart(&p, Some((800, 500)), 8);
    let p = dir.join("line_tiny.png");
    line_chart(
        &p,
        "Tiny values",
        "learning rate",
        "",
        &[Series::new(
            "lr",
            (0..50)
                .map(|s| (s as f64 * 1e-5, 3e-5 * s as f64))
                .collect(),
        )],
    )
    .unwrap();
    assert_chart(&p, Some((800, 500)), 8);
}

#[test]
fn heatmap_is_a_valid_png() {
    let (_keep, dir) = plot_dir("heatmap");
    // Cosine similarity of 20 random "prompt tokens".
    let p = 20;
    let v: Vec<Vec<f32>> = (0..p).map(|i| values(16, 500 + i as u64, 1.0)).collect();
    let mut sim = vec![0.0f32; p * p];
    for i in 0..p {
        for j in 0..p {
            let dot: f32 = v[i].iter().zip(&v[j]).map(|(a, b)| a * b).sum();
            let ni: f32 = v[i].iter().map(|a| a * a).sum::<f32>().sqrt();
            let nj: f32 = v[j].iter().map(|a| a * a).sum::<f32>().sqrt();
            sim[i * p + j] = dot / (ni * nj);
        }
    }
    sim[1] = f32::NAN;
    let labels: Vec<String> = (0..p).map(|i| format!("p{i}")).collect();
    let path = dir.join("heatmap.png");
    heatmap(
        &path,
        "Prompt token cosine similarity",
        &labels,
        &labels,
        &sim,
        -1.0,
        1.0,
    )
    .unwrap();
    let img = assert_chart(&path, None, 8);
    assert!(img.w >= 400 && img.h >= 300, "{}x{}", img.w, img.h);

    // Small annotated matrix with long labels and a sequential scale.
    let path2 = dir.join("heatmap_small.png");
    let rows: Vec<String> = ["positive", "negative", "neutral"]
        .map(String::from)
        .to_vec();
    let cols: Vec<String> = ["great", "terrible", "okay-ish answer"]
        .map(String::from)
        .to_vec();
    heatmap(
        &path2,
        "Label word probabilities",
        &rows,
        &cols,
        &[0.8, 0.1, 0.1, 0.05, 0.9, 0.05, 0.3, 0.3, 0.4],
        0.0,
        1.0,
    )
    .unwrap();
    assert_chart(&path2, None, 8);

    // Large matrix without labels (square).
    let path3 = dir.join("heatmap_big.png");
    let big: Vec<f32> = (0..100 * 100)
        .map(|i| ((i % 100) as f32 / 99.0) * 2.0 - 1.0)
        .collect();
    heatmap(&path3, "100 tokens", &[], &[], &big, -1.0, 1.0).unwrap();
    assert_chart(&path3, None, 8);

    // Bad input.
    assert!(heatmap(
        &dir.join("x.png"),
        "t",
        &labels,
        &labels,
        &sim[..10],
        -1.0,
        1.0
    )
    .is_err());
    assert!(heatmap(&dir.join("x.png"), "t", &labels, &labels, &sim, 1.0, -1.0).is_err());
    assert!(heatmap(
        &dir.join("x.png"),
        "t",
        &labels,
        &labels,
        &sim,
        f32::NAN,
        1.0
    )
    .is_err());
    assert!(!dir.join("x.png").exists());
}

#[test]
fn bar_chart_is_a_valid_png() {
    let (_keep, dir) = plot_dir("bars");
    let bars: Vec<(String, f64)> = vec![
        ("zero-shot".into(), 0.512),
        ("prompt tuning (20 tokens)".into(), 0.874),
        ("prompt tuning (100 tokens)".into(), 0.891),
        ("few-shot ICL".into(), 0.733),
        ("broken run".into(), f64::NAN),
    ];
    let path = dir.join("bars.png");
    bar_chart(&path, "SST-2 validation accuracy", "accuracy", &bars).unwrap();
    let img = assert_chart(&path, Some((800, 500)), 8);
    let green = softprompt_core::report::plot::PALETTE[2];
    assert!(img.count(green, 0, img.h) > 1000, "bars are drawn");

    let path2 = dir.join("bars_negative.png");
    bar_chart(
        &path2,
        "Change vs baseline",
        "delta (points)",
        &[("a".into(), -3.5), ("b".into(), 12.0), ("c".into(), 0.0)],
    )
    .unwrap();
    assert_chart(&path2, Some((800, 500)), 3);
    let path3 = dir.join("bars_empty.png");
    bar_chart(&path3, "No methods", "accuracy", &[]).unwrap();
    assert_chart(&path3, Some((800, 500)), 3);
}
