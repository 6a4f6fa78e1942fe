//! Optimizers, gradient clipping and learning-rate schedules for the one trainable
//! parameter of prompt tuning: the soft prompt, a `[rows, cols]` = `[P, D]` f32 matrix.
//!
//! * [`OptimizerKind::AdamW`]: Adam with decoupled weight decay (Loshchilov & Hutter 2019),
//!   bias-corrected, step for step the update of `torch.optim.AdamW` (non-amsgrad).
//! * [`OptimizerKind::Adafactor`]: Shazeer & Stern 2018, following the formulation of the
//!   `Adafactor` class of Hugging Face transformers (which T5 and Lester et al. 2021 used):
//!   factored second moment (row and column running averages of `g² + eps1`),
//!   `beta2_t = 1 - t^beta2_decay`, update clipping by RMS, optional first moment, optional
//!   relative step size and parameter scaling.
//!
//! The optimizer state (moments and step count) can be exported with [`Optimizer::state`]
//! and restored with [`Optimizer::from_state`]; a restored optimizer continues bit for bit
//! as if it had never stopped.
//!
//! Arithmetic is f32 like PyTorch's, except that reductions (means, norms) accumulate in
//! f64 and scalar factors (bias corrections, `beta2_t`) are computed in f64, then rounded.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Version of the JSON written by [`Optimizer::state`].
const STATE_FORMAT_VERSION: u64 = 1;
/// Tensor names in [`Optimizer::state`]. The `optim.` prefix keeps them apart from other
/// tensors a trainer stores in the same checkpoint.
const T_EXP_AVG: &str = "optim.exp_avg";
const T_EXP_AVG_SQ: &str = "optim.exp_avg_sq";
const T_ROW: &str = "optim.exp_avg_sq_row";
const T_COL: &str = "optim.exp_avg_sq_col";

/// A named f32 tensor `(name, shape, row-major values)`, as stored in checkpoints.
pub type NamedTensor = (String, Vec<usize>, Vec<f32>);

/// Which optimizer, with its hyper-parameters (the learning rate is given per step).
///
/// Serialized with a `"name"` tag: `{"name":"adamw","beta1":0.9,...}` or
/// `{"name":"adafactor",...}`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "lowercase")]
pub enum OptimizerKind {
    /// `torch.optim.AdamW`: `p ← p(1 − lr·wd)`, `m ← β1 m + (1−β1) g`,
    /// `v ← β2 v + (1−β2) g²`, `p ← p − lr/(1−β1ᵗ) · m / (√v/√(1−β2ᵗ) + eps)`.
    AdamW {
        beta1: f32,
        beta2: f32,
        eps: f32,
        weight_decay: f32,
    },
    /// Adafactor (transformers' formulation). For step `t` (1-based), gradient `G`:
    /// `β2t = 1 − t^beta2_decay`; `R ← β2t R + (1−β2t) rowmean(G² + eps1)`,
    /// `C ← β2t C + (1−β2t) colmean(G² + eps1)`; `V̂ = R Cᵀ / mean(R)`; `U = G/√V̂`;
    /// `U ← U / max(1, RMS(U)/clip_threshold)`; `α = ρ · (scale_parameter ? max(eps2, RMS(p)) : 1)`
    /// with `ρ = relative_step ? min(1e-2, 1/√t) : lr`; `U ← αU`; with `beta1`,
    /// `M ← β1 M + (1−β1) U` and `U = M`; `p ← p − α·wd·p − U`.
    ///
    /// With `relative_step` the `lr` passed to [`Optimizer::step`] is ignored
    /// (transformers' `warmup_init` variant is not provided).
    Adafactor {
        /// Exponent of the second-moment decay, −0.8 in the paper.
        beta2_decay: f32,
        /// Added to `g²` (1e-30).
        eps1: f32,
        /// Lower bound of the parameter RMS in parameter scaling (1e-3).
        eps2: f32,
        /// Update clipping threshold d (1.0).
        clip_threshold: f32,
        /// Weight decay, multiplied by the step size α (as transformers does).
        weight_decay: f32,
        /// First-moment decay; `None` = no first moment (the memory-saving default).
        beta1: Option<f32>,
        /// Scale the step size by the parameter's RMS.
        scale_parameter: bool,
        /// Use the relative step size `min(1e-2, 1/√t)` instead of the given `lr`.
        relative_step: bool,
    },
}

impl OptimizerKind {
    /// AdamW with `torch.optim.AdamW`'s defaults: betas (0.9, 0.999), eps 1e-8 and weight
    /// decay 0.01. (PEFT's prompt-tuning examples use AdamW with a learning rate around
    /// 3e-2 and these defaults.)
    pub fn adamw_default() -> Self {
        OptimizerKind::AdamW {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        }
    }

    /// Adafactor as Lester et al. (2021) trained prompts (to be used with lr 0.3):
    /// no parameter scaling, no relative step, no first moment, weight decay 1e-5,
    /// `beta2_decay` −0.8, update clipping 1.0.
    pub fn adafactor_lester() -> Self {
        OptimizerKind::Adafactor {
            beta2_decay: -0.8,
            eps1: 1e-30,
            eps2: 1e-3,
            clip_threshold: 1.0,
            weight_decay: 1e-5,
            beta1: None,
            scale_parameter: false,
            relative_step: false,
        }
    }

    /// Short name: `"adamw"` or `"adafactor"`.
    pub fn name(&self) -> &'static str {
        match self {
            OptimizerKind::AdamW { .. } => "adamw",
            OptimizerKind::Adafactor { .. } => "adafactor",
        }
    }

    /// The learning rate a prompt-tuning run uses when none is given: 0.03 with AdamW
    /// (PEFT's prompt-tuning examples), 0.3 with Adafactor (Lester et al. 2021).
    pub fn default_lr(&self) -> f32 {
        match self {
            OptimizerKind::AdamW { .. } => 0.03,
            OptimizerKind::Adafactor { .. } => 0.3,
        }
    }

    pub fn weight_decay(&self) -> f32 {
        match *self {
            OptimizerKind::AdamW { weight_decay, .. }
            | OptimizerKind::Adafactor { weight_decay, .. } => weight_decay,
        }
    }

    /// The same optimizer with another weight decay.
    pub fn with_weight_decay(mut self, wd: f32) -> Self {
        match &mut self {
            OptimizerKind::AdamW { weight_decay, .. }
            | OptimizerKind::Adafactor { weight_decay, .. } => *weight_decay = wd,
        }
        self
    }

    /// Reject hyper-parameters that cannot work (non-finite, betas outside [0, 1), ...).
    pub fn validate(&self) -> Result<()> {
        let bad = |what: &str, v: f32, ok: bool| -> Result<()> {
            if v.is_finite() && ok {
                Ok(())
            } else {
                Err(Error::Input(format!("{}: invalid {what} {v}", self.name())))
            }
        };
        match *self {
            OptimizerKind::AdamW {
                beta1,
                beta2,
                eps,
                weight_decay,
            } => {
                bad("beta1", beta1, (0.0..1.0).contains(&beta1))?;
                bad("beta2", beta2, (0.0..1.0).contains(&beta2))?;
                bad("eps", eps, eps >= 0.0)?;
                bad("weight_decay", weight_decay, weight_decay >= 0.0)
            }
            OptimizerKind::Adafactor {
                beta2_decay,
                eps1,
                eps2,
                clip_threshold,
                weight_decay,
                beta1,
                ..
            } => {
                bad("beta2_decay", beta2_decay, beta2_decay <= 0.0)?;
                bad("eps1", eps1, eps1 >= 0.0)?;
                bad("eps2", eps2, eps2 >= 0.0)?;
                bad("clip_threshold", clip_threshold, clip_threshold > 0.0)?;
                bad("weight_decay", weight_decay, weight_decay >= 0.0)?;
                if let Some(b1) = beta1 {
                    bad("beta1", b1, (0.0..1.0).contains(&b1))?;
                }
                Ok(())
            }
        }
    }
}

/// The moments an optimizer keeps, per kind.
#[derive(Clone, Debug, PartialEq)]
enum Moments {
    AdamW {
        /// `[rows, cols]` first moment m.
        exp_avg: Vec<f32>,
        /// `[rows, cols]` second moment v.
        exp_avg_sq: Vec<f32>,
    },
    Adafactor {
        /// `[rows]` running average of the row means of `g² + eps1`.
        row: Vec<f32>,
        /// `[cols]` running average of the column means of `g² + eps1`.
        col: Vec<f32>,
        /// `[rows, cols]` first moment, present iff `beta1` is set.
        exp_avg: Option<Vec<f32>>,
    },
}

/// An optimizer for one `[rows, cols]` f32 parameter.
#[derive(Clone, Debug, PartialEq)]
pub struct Optimizer {
    kind: OptimizerKind,
    rows: usize,
    cols: usize,
    /// Steps taken so far (torch's `state["step"]`).
    step: u64,
    moments: Moments,
    /// Scratch `[rows, cols]` buffer for Adafactor's update (not part of the state).
    scratch: Vec<f32>,
}

/// Mean of `xs` accumulated in f64.
fn mean_f64(xs: impl Iterator<Item = f64>, n: usize) -> f64 {
    xs.sum::<f64>() / n.max(1) as f64
}

/// Root mean square of `xs`, accumulated in f64.
fn rms(xs: &[f32]) -> f64 {
    mean_f64(xs.iter().map(|&x| (x as f64) * (x as f64)), xs.len()).sqrt()
}

impl Optimizer {
    /// A fresh optimizer (zero moments, step 0) for a `[rows, cols]` parameter.
    pub fn new(kind: OptimizerKind, rows: usize, cols: usize) -> Self {
        let n = rows * cols;
        let moments = match kind {
            OptimizerKind::AdamW { .. } => Moments::AdamW {
                exp_avg: vec![0.0; n],
                exp_avg_sq: vec![0.0; n],
            },
            OptimizerKind::Adafactor { beta1, .. } => Moments::Adafactor {
                row: vec![0.0; rows],
                col: vec![0.0; cols],
                exp_avg: beta1.map(|_| vec![0.0; n]),
            },
        };
        Optimizer {
            kind,
            rows,
            cols,
            step: 0,
            moments,
            scratch: Vec::new(),
        }
    }

    /// The optimizer's kind and hyper-parameters.
    pub fn kind(&self) -> &OptimizerKind {
        &self.kind
    }

    /// Number of [`Optimizer::step`] calls so far (restored by [`Optimizer::from_state`]).
    pub fn steps_taken(&self) -> u64 {
        self.step
    }

    /// One update of `param` (`[rows, cols]`, row-major) from its gradient `grad` (same
    /// shape) with learning rate `lr`.
    ///
    /// # Panics
    /// If `param` or `grad` do not hold `rows * cols` values (a programming error).
    pub fn step(&mut self, param: &mut [f32], grad: &[f32], lr: f32) {
        let n = self.rows * self.cols;
        assert_eq!(
            param.len(),
            n,
            "optimizer: param has {} values, expected {n}",
            param.len()
        );
        assert_eq!(
            grad.len(),
            n,
            "optimizer: grad has {} values, expected {n}",
            grad.len()
        );
        self.step += 1;
        let t = self.step;
        match (self.kind, &mut self.moments) {
            (
                OptimizerKind::AdamW {
                    beta1,
                    beta2,
                    eps,
                    weight_decay,
                },
                Moments::AdamW {
                    exp_avg,
                    exp_avg_sq,
                },
            ) => {
                let bias_correction1 = 1.0 - (beta1 as f64).powf(t as f64);
                let bias_correction2 = 1.0 - (beta2 as f64).powf(t as f64);
                let step_size = (lr as f64 / bias_correction1) as f32;
                let bc2_sqrt = bias_correction2.sqrt() as f32;
                let decay = 1.0 - lr * weight_decay;
                for i in 0..n {
                    let g = grad[i];
                    // Decoupled weight decay first, as torch does.
                    let p = param[i] * decay;
                    let m = beta1 * exp_avg[i] + (1.0 - beta1) * g;
                    let v = beta2 * exp_avg_sq[i] + (1.0 - beta2) * g * g;
                    exp_avg[i] = m;
                    exp_avg_sq[i] = v;
                    let denom = v.sqrt() / bc2_sqrt + eps;
                    param[i] = p - step_size * (m / denom);
                }
            }
            (
                OptimizerKind::Adafactor {
                    beta2_decay,
                    eps1,
                    eps2,
                    clip_threshold,
                    weight_decay,
                    beta1,
                    scale_parameter,
                    relative_step,
                },
                Moments::Adafactor { row, col, exp_avg },
            ) => {
                let (rows, cols) = (self.rows, self.cols);
                // Step size α (computed from the parameter before the update).
                let rho = if relative_step {
                    (1e-2f64).min(1.0 / (t as f64).sqrt())
                } else {
                    lr as f64
                };
                let scale = if scale_parameter {
                    (eps2 as f64).max(rms(param))
                } else {
                    1.0
                };
                let alpha = (rho * scale) as f32;

                // Factored second moment. beta2_t = 1 - t^decay (0 at t = 1).
                let beta2t = (1.0 - (t as f64).powf(beta2_decay as f64)) as f32;
                let sq = |g: f32| g * g + eps1;
                for (r, rv) in row.iter_mut().enumerate() {
                    let g = &grad[r * cols..(r + 1) * cols];
                    let mean = mean_f64(g.iter().map(|&x| sq(x) as f64), cols) as f32;
                    *rv = beta2t * *rv + (1.0 - beta2t) * mean;
                }
                for (c, cv) in col.iter_mut().enumerate() {
                    let it = (0..rows).map(|r| sq(grad[r * cols + c]) as f64);
                    let mean = mean_f64(it, rows) as f32;
                    *cv = beta2t * *cv + (1.0 - beta2t) * mean;
                }
                // V̂[r, c] = row[r] * col[c] / mean(row); U = G / sqrt(V̂), computed as
                // G * rsqrt(row[r] / mean(row)) * rsqrt(col[c]) like transformers.
                let row_mean = mean_f64(row.iter().map(|&x| x as f64), rows) as f32;
                let update = &mut self.scratch;
                update.clear();
                update.resize(n, 0.0);
                for r in 0..rows {
                    let r_factor = 1.0 / (row[r] / row_mean).sqrt();
                    for c in 0..cols {
                        let c_factor = 1.0 / col[c].sqrt();
                        update[r * cols + c] = r_factor * c_factor * grad[r * cols + c];
                    }
                }
                // Update clipping: U / max(1, RMS(U) / d), then scale by α.
                let clip = ((rms(update) / clip_threshold as f64) as f32).max(1.0);
                for u in update.iter_mut() {
                    *u = *u / clip * alpha;
                }
                if let (Some(b1), Some(m)) = (beta1, exp_avg.as_mut()) {
                    for (mi, u) in m.iter_mut().zip(update.iter_mut()) {
                        *mi = b1 * *mi + (1.0 - b1) * *u;
                        *u = *mi;
                    }
                }
                // Weight decay scaled by the step size, then the update (transformers' order).
                let decay = weight_decay * alpha;
                for (p, u) in param.iter_mut().zip(update.iter()) {
                    *p = (*p - decay * *p) - *u;
                }
            }
            // `new` and `from_state` always pair a kind with its own moments.
            _ => unreachable!("optimizer kind and moments disagree"),
        }
    }

    /// Everything needed to continue exactly: named f32 tensors `(name, shape, values)`
    /// (the moments) and a JSON object `{"format_version", "kind", "rows", "cols", "step"}`.
    ///
    /// Tensors: AdamW `optim.exp_avg` and `optim.exp_avg_sq` `[rows, cols]`; Adafactor
    /// `optim.exp_avg_sq_row` `[rows]`, `optim.exp_avg_sq_col` `[cols]` and, with `beta1`,
    /// `optim.exp_avg` `[rows, cols]`.
    pub fn state(&self) -> (Vec<NamedTensor>, serde_json::Value) {
        let full = vec![self.rows, self.cols];
        let tensors = match &self.moments {
            Moments::AdamW {
                exp_avg,
                exp_avg_sq,
            } => vec![
                (T_EXP_AVG.to_string(), full.clone(), exp_avg.clone()),
                (T_EXP_AVG_SQ.to_string(), full, exp_avg_sq.clone()),
            ],
            Moments::Adafactor { row, col, exp_avg } => {
                let mut v = vec![
                    (T_ROW.to_string(), vec![self.rows], row.clone()),
                    (T_COL.to_string(), vec![self.cols], col.clone()),
                ];
                if let Some(m) = exp_avg {
                    v.push((T_EXP_AVG.to_string(), full, m.clone()));
                }
                v
            }
        };
        let json = serde_json::json!({
            "format_version": STATE_FORMAT_VERSION,
            "kind": self.kind,
            "rows": self.rows,
            "cols": self.cols,
            "step": self.step,
        });
        (tensors, json)
    }

    /// Rebuild an optimizer from [`Optimizer::state`]'s output. Every tensor must be
    /// present with its exact shape; extra tensors (with names outside `optim.`) are
    /// ignored, so a checkpoint's whole tensor list can be passed.
    pub fn from_state(tensors: &[NamedTensor], json: &serde_json::Value) -> Result<Self> {
        let bad = |msg: String| Error::Input(format!("optimizer state: {msg}"));
        let version = json
            .get("format_version")
            .and_then(|v| v.as_u64())
            .ok_or_else(|| bad("missing format_version".into()))?;
        if version > STATE_FORMAT_VERSION {
            return Err(bad(format!(
                "format_version {version} was written by a newer softprompt; this build reads up to {STATE_FORMAT_VERSION}"
            )));
        }
        let kind_json = json.get("kind").ok_or_else(|| bad("missing kind".into()))?;
        let kind: OptimizerKind = serde_json::from_value(kind_json.clone())
            .map_err(|e| bad(format!("invalid kind: {e}")))?;
        kind.validate()?;
        let get_usize = |key: &str| -> Result<usize> {
            json.get(key)
                .and_then(|v| v.as_u64())
                .and_then(|v| usize::try_from(v).ok())
                .ok_or_else(|| bad(format!("missing or invalid {key}")))
        };
        let rows = get_usize("rows")?;
        let cols = get_usize("cols")?;
        let step = json
            .get("step")
            .and_then(|v| v.as_u64())
            .ok_or_else(|| bad("missing or invalid step".into()))?;
        let n = rows
            .checked_mul(cols)
            .ok_or_else(|| bad(format!("shape [{rows}, {cols}] overflows")))?;

        let find = |name: &str, shape: &[usize]| -> Result<Vec<f32>> {
            let (_, s, data) = tensors
                .iter()
                .find(|(nm, _, _)| nm == name)
                .ok_or_else(|| bad(format!("missing tensor `{name}`")))?;
            let expected_len: usize = shape.iter().product();
            if s.as_slice() != shape || data.len() != expected_len {
                return Err(bad(format!(
                    "tensor `{name}` has shape {s:?} ({} values); expected {shape:?}",
                    data.len()
                )));
            }
            Ok(data.clone())
        };
        let moments = match kind {
            OptimizerKind::AdamW { .. } => Moments::AdamW {
                exp_avg: find(T_EXP_AVG, &[rows, cols])?,
                exp_avg_sq: find(T_EXP_AVG_SQ, &[rows, cols])?,
            },
            OptimizerKind::Adafactor { beta1, .. } => Moments::Adafactor {
                row: find(T_ROW, &[rows])?,
                col: find(T_COL, &[cols])?,
                exp_avg: match beta1 {
                    Some(_) => Some(find(T_EXP_AVG, &[rows, cols])?),
                    None => None,
                },
            },
        };
        debug_assert!(match &moments {
            Moments::AdamW { exp_avg, .. } => exp_avg.len() == n,
            Moments::Adafactor { row, col, .. } => row.len() * col.len() == n,
        });
        Ok(Optimizer {
            kind,
            rows,
            cols,
            step,
            moments,
            scratch: Vec::new(),
        })
    }
}

/// Scale `grad` in place so its L2 norm is at most `max_norm`, as
/// `torch.nn.utils.clip_grad_norm_` does (factor `max_norm / (norm + 1e-6)`, applied only
/// when below 1). Returns the norm before clipping. `max_norm <= 0` (or NaN) disables
/// clipping (the norm is still returned). A non-finite norm leaves `grad` untouched, so
/// the caller can see it and skip the step.
pub fn clip_grad_norm(grad: &mut [f32], max_norm: f32) -> f32 {
    let norm = grad
        .iter()
        .map(|&g| (g as f64) * (g as f64))
        .sum::<f64>()
        .sqrt();
    // `max_norm > 0.0` is false for NaN too.
    let clipping = max_norm > 0.0;
    if !norm.is_finite() || !clipping {
        return norm as f32;
    }
    let coef = max_norm as f64 / (norm + 1e-6);
    if coef < 1.0 {
        let coef = coef as f32;
        for g in grad.iter_mut() {
            *g *= coef;
        }
    }
    norm as f32
}

/// Learning-rate schedule after warm-up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    /// Constant (transformers' `get_constant_schedule_with_warmup`).
    #[default]
    Constant,
    /// Linear decay to 0 at `total_steps` (`get_linear_schedule_with_warmup`).
    Linear,
    /// Half-cosine decay to 0 at `total_steps` (`get_cosine_schedule_with_warmup`).
    Cosine,
}

impl Schedule {
    pub fn as_str(&self) -> &'static str {
        match self {
            Schedule::Constant => "constant",
            Schedule::Linear => "linear",
            Schedule::Cosine => "cosine",
        }
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// By name: `adamw` ([`OptimizerKind::adamw_default`]) or `adafactor`
/// ([`OptimizerKind::adafactor_lester`]).
impl FromStr for OptimizerKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "adamw" => Ok(OptimizerKind::adamw_default()),
            "adafactor" => Ok(OptimizerKind::adafactor_lester()),
            other => Err(Error::Input(format!(
                "unknown optimizer `{other}`; expected adamw or adafactor"
            ))),
        }
    }
}

impl FromStr for Schedule {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "constant" => Ok(Schedule::Constant),
            "linear" => Ok(Schedule::Linear),
            "cosine" => Ok(Schedule::Cosine),
            other => Err(Error::Input(format!(
                "unknown learning-rate schedule `{other}`; expected constant, linear or cosine"
            ))),
        }
    }
}

/// Learning rate for optimizer step `step` (0-based) of `total_steps`, as transformers'
/// `get_*_schedule_with_warmup` (a `LambdaLR` evaluated at `step`): during the first
/// `warmup_steps` steps it rises linearly, `base_lr * step / warmup_steps` (so the very
/// first step has lr 0 when there is warm-up); afterwards it stays at `base_lr`
/// (constant), or decays to 0 at `total_steps` linearly or along a half cosine.
/// Steps past `total_steps` get 0 for linear and cosine (transformers' cosine would rise
/// again).
pub fn lr_at(
    schedule: Schedule,
    base_lr: f32,
    step: u64,
    total_steps: u64,
    warmup_steps: u64,
) -> f32 {
    let base = base_lr as f64;
    if step < warmup_steps {
        return (base * step as f64 / warmup_steps.max(1) as f64) as f32;
    }
    let progress = || {
        let done = (step - warmup_steps) as f64;
        let span = total_steps.saturating_sub(warmup_steps).max(1) as f64;
        (done / span).min(1.0)
    };
    let factor = match schedule {
        Schedule::Constant => 1.0,
        Schedule::Linear => 1.0 - progress(),
        Schedule::Cosine => 0.5 * (1.0 + (std::f64::consts::PI * progress()).cos()),
    };
    (base * factor.max(0.0)) as f32
}
