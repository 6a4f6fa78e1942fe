//! Residual reparameterization of the prompt (Razdaibiedina et al., "Residual Prompt Tuning:
//! Improving Prompt Tuning with Residual Reparameterization", ACL Findings 2023).
//!
//! During training the objective sees `P' = Φ(P)` instead of the trainable `P` `[P, D]`. Per
//! virtual token `i`, with one MLP shared by all tokens (the paper's "MLP1" module:
//! Linear, ReLU, Linear, LayerNorm, plus the skip connection):
//!
//! ```text
//! a_i  = W_down · P_i + b_down              [M]   W_down [M, D]
//! h_i  = ReLU(a_i)                          [M]
//! u_i  = W_up · h_i + b_up                  [D]   W_up [D, M]
//! P'_i = P_i + gain ⊙ LN(u_i) + bias        [D]   LN(u) = (u - mean(u)) / sqrt(var(u) + 1e-5)
//! ```
//!
//! `P`, the MLP and the LayerNorm's `gain`/`bias` are trained jointly (AdamW); the saved
//! prompt is the folded `P'`, a plain `[P, D]` PEFT prompt-tuning adapter: the MLP is a
//! training-time device only.
//!
//! Choices (ours where the paper does not fix them for this model size):
//! - Bottleneck `M` defaults to [`DEFAULT_BOTTLENECK`] = 128 (the paper used 400 for
//!   T5-Base, D = 768). For D = 576 (SmolLM2-135M) or 640 (Gemma 3 270M) that is D/4.5 to
//!   D/5: 2·D·M ≈ 150k MLP parameters (about 13x a 20-token prompt) and ~10 MFLOP per step
//!   for forward and backward together, nothing next to one forward of the model.
//! - Init: `W_down`, `b_down`, `W_up`, `b_up` as `torch.nn.Linear` (uniform in
//!   ±1/sqrt(fan_in)), but the LayerNorm gain starts at 0 (torch: 1) and its bias at 0, so
//!   `P' = P` exactly at step 0 and the `--init` choice (vocabulary rows, a text, labels)
//!   means what it says. With gain 1 the MLP path would add a unit-RMS vector to every
//!   token, about 8x a SmolLM2 embedding row (element RMS ≈ 0.12 over its 5,000 most
//!   frequent tokens), drowning the init. With gain 0 the first step moves only `gain`
//!   and `bias` (the MLP's gradient goes through `gain`); from the second step on the MLP
//!   learns, its contribution's scale growing at the optimizer's pace.
//! - Weight decay, clipping and the learning-rate schedule apply to every parameter alike
//!   (the norm clipped is that of the whole gradient, prompt and MLP together).
//! - AdamW only: Adafactor's factored second moment assumes one matrix per parameter; the
//!   trainer refuses `adafactor` with `residual`.
//!
//! The MLP's parameters live in one flat buffer, `[n_params]`, in this order: `W_down`
//! `[M, D]`, `b_down` `[M]`, `W_up` `[D, M]`, `b_up` `[D]`, `gain` `[D]`, `bias` `[D]`.

use std::fmt;
use std::str::FromStr;

use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::optim::{NamedTensor, Optimizer, OptimizerKind};
use crate::{Error, Result, Tensor};

/// Bottleneck of `residual` without `:M` (see the module doc).
pub const DEFAULT_BOTTLENECK: usize = 128;
/// LayerNorm epsilon (torch's default).
const LN_EPS: f32 = 1e-5;
/// Checkpoint tensor names (the trainer's `prompt` tensor holds the folded `P'`).
const T_PROMPT: &str = "reparam.prompt";
const T_MLP: &str = "reparam.mlp";
const OPT_PREFIX: &str = "reparam.";

/// How the trained prompt is parameterized (`--reparam none|residual[:M]`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Reparam {
    /// The prompt itself is the parameter (Lester et al. 2021).
    #[default]
    None,
    /// `P' = P + LN(MLP(P))` with an `M`-wide bottleneck (see the module doc).
    Residual { bottleneck: usize },
}

impl Reparam {
    /// Parameters trained beside a `[P, D]` prompt (the residual MLP's `2·D·M + M + 3·D`;
    /// folded away on save).
    pub fn extra_parameters(&self, d: usize) -> usize {
        match self {
            Reparam::None => 0,
            Reparam::Residual { bottleneck: m } => 2 * d * m + m + 3 * d,
        }
    }

    /// `none` or `residual` (without the bottleneck).
    pub fn name(&self) -> &'static str {
        match self {
            Reparam::None => "none",
            Reparam::Residual { .. } => "residual",
        }
    }

    /// A bottleneck of at least 1, and AdamW (an error naming the setting otherwise).
    pub fn validate(&self, optimizer: &OptimizerKind) -> Result<()> {
        match self {
            Reparam::None => Ok(()),
            Reparam::Residual { bottleneck: 0 } => Err(Error::setting(
                "reparam",
                "reparam residual: the bottleneck must be at least 1",
            )),
            Reparam::Residual { .. } => match optimizer {
                OptimizerKind::AdamW { .. } => Ok(()),
                OptimizerKind::Adafactor { .. } => Err(Error::setting(
                    "optimizer",
                    "reparam residual trains with adamw only (Adafactor's factored moments \
                     assume one matrix); use --optimizer adamw or --reparam none",
                )),
            },
        }
    }
}

impl fmt::Display for Reparam {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reparam::None => f.write_str("none"),
            Reparam::Residual { bottleneck } => write!(f, "residual:{bottleneck}"),
        }
    }
}

/// `none`, `residual` ([`DEFAULT_BOTTLENECK`]) or `residual:M`.
impl FromStr for Reparam {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let t = s.trim().to_ascii_lowercase();
        let (kind, arg) = t
            .split_once(':')
            .map_or((t.as_str(), None), |(a, b)| (a, Some(b)));
        let bad = |m: &str| Error::setting("reparam", format!("reparam {s}: {m}"));
        match (kind, arg) {
            ("none", None) => Ok(Reparam::None),
            ("residual", None) => Ok(Reparam::Residual {
                bottleneck: DEFAULT_BOTTLENECK,
            }),
            ("residual", Some(m)) => match m.parse::<usize>() {
                Ok(b) if b > 0 => Ok(Reparam::Residual { bottleneck: b }),
                _ => Err(bad("the bottleneck must be a whole number of at least 1")),
            },
            _ => Err(bad("expected none, residual or residual:BOTTLENECK")),
        }
    }
}

/// The trainable state of a residual run: `P`, the MLP, the MLP's optimizer, and the
/// activations of the last [`Residual::forward`] (for [`Residual::backward`]).
pub struct Residual {
    p: usize,
    d: usize,
    m: usize,
    /// The trainable prompt `P` `[P, D]` (the objective sees [`Residual::forward`]'s `P'`).
    pub prompt: Vec<f32>,
    /// The MLP's parameters `[n_params]` (layout in the module doc).
    mlp: Vec<f32>,
    /// AdamW over `mlp`, as one `[1, n_params]` row.
    opt: Optimizer,
    // Activations of the last forward.
    h: Vec<f32>,    // [P, M] ReLU(a)
    xhat: Vec<f32>, // [P, D] LN(u) before gain and bias
    rstd: Vec<f32>, // [P]    1 / sqrt(var(u) + eps)
}

/// Offsets of the parameters in the flat buffer.
struct Layout {
    w_down: usize,
    b_down: usize,
    w_up: usize,
    b_up: usize,
    gain: usize,
    bias: usize,
    n: usize,
}

fn layout(d: usize, m: usize) -> Layout {
    let w_down = 0;
    let b_down = w_down + m * d;
    let w_up = b_down + m;
    let b_up = w_up + d * m;
    let gain = b_up + d;
    let bias = gain + d;
    Layout {
        w_down,
        b_down,
        w_up,
        b_up,
        gain,
        bias,
        n: bias + d,
    }
}

impl Residual {
    /// A fresh MLP around `prompt` `[P, D]`, reproducible from `seed` (init in the module
    /// doc: `P' = P` at step 0).
    pub fn new(prompt: &Tensor, m: usize, optimizer: OptimizerKind, seed: u64) -> Result<Self> {
        let (p, d) = prompt_dims(prompt)?;
        let l = layout(d, m);
        let mut mlp = vec![0.0f32; l.n];
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0x7e5_1d0a1);
        let mut fill = |xs: &mut [f32], fan_in: usize| {
            let bound = 1.0 / (fan_in as f32).sqrt();
            for x in xs {
                *x = rng.gen_range(-bound..bound);
            }
        };
        fill(&mut mlp[l.w_down..l.w_up], d); // W_down, b_down
        fill(&mut mlp[l.w_up..l.gain], m); // W_up, b_up (gain and bias stay 0)
        Ok(Self::with(
            p,
            d,
            m,
            prompt.data.clone(),
            mlp,
            Optimizer::new(optimizer, 1, l.n),
        ))
    }

    fn with(p: usize, d: usize, m: usize, prompt: Vec<f32>, mlp: Vec<f32>, opt: Optimizer) -> Self {
        Residual {
            p,
            d,
            m,
            prompt,
            mlp,
            opt,
            h: vec![0.0; p * m],
            xhat: vec![0.0; p * d],
            rstd: vec![0.0; p],
        }
    }

    /// Number of MLP parameters (`2·D·M + M + 3·D`).
    pub fn n_params(&self) -> usize {
        self.mlp.len()
    }

    /// `P'` `[P, D]` of the current parameters; keeps the activations for [`Self::backward`].
    pub fn forward(&mut self) -> Tensor {
        let (p, d, m) = (self.p, self.d, self.m);
        let l = layout(d, m);
        let w = &self.mlp;
        let mut out = vec![0.0f32; p * d]; // [P, D]
        let mut u = vec![0.0f32; d]; // [D]
        for i in 0..p {
            let x = &self.prompt[i * d..(i + 1) * d];
            // a = W_down x + b_down; h = ReLU(a)
            let h = &mut self.h[i * m..(i + 1) * m];
            for (j, hj) in h.iter_mut().enumerate() {
                let row = &w[l.w_down + j * d..l.w_down + (j + 1) * d];
                let a = w[l.b_down + j] + dot(row, x);
                *hj = a.max(0.0);
            }
            // u = W_up h + b_up
            for (k, uk) in u.iter_mut().enumerate() {
                let row = &w[l.w_up + k * m..l.w_up + (k + 1) * m];
                *uk = w[l.b_up + k] + dot(row, h);
            }
            // LayerNorm over D (f64 sums, like the model's norms).
            let mean = (u.iter().map(|&v| v as f64).sum::<f64>() / d as f64) as f32;
            let var = u.iter().map(|&v| ((v - mean) as f64).powi(2)).sum::<f64>() / d as f64;
            let rstd = (1.0 / (var + LN_EPS as f64).sqrt()) as f32;
            self.rstd[i] = rstd;
            let xhat = &mut self.xhat[i * d..(i + 1) * d];
            let o = &mut out[i * d..(i + 1) * d];
            for k in 0..d {
                xhat[k] = (u[k] - mean) * rstd;
                o[k] = x[k] + w[l.gain + k] * xhat[k] + w[l.bias + k];
            }
        }
        Tensor::new(vec![p, d], out)
    }

    /// From `dP'` `[P, D]` (the objective's gradient at the last [`Self::forward`]), the
    /// gradient of every parameter: `[dP (P·D) ; dMLP (n_params)]`, the forward read in
    /// reverse.
    pub fn backward(&self, dout: &[f32]) -> Vec<f32> {
        let (p, d, m) = (self.p, self.d, self.m);
        let l = layout(d, m);
        let w = &self.mlp;
        let mut g = vec![0.0f32; p * d + l.n]; // [dP ; dMLP]
        let (dp, dw) = g.split_at_mut(p * d);
        let mut du = vec![0.0f32; d]; // [D]
        let mut da = vec![0.0f32; m]; // [M]
        for i in 0..p {
            let x = &self.prompt[i * d..(i + 1) * d];
            let go = &dout[i * d..(i + 1) * d];
            let xhat = &self.xhat[i * d..(i + 1) * d];
            let h = &self.h[i * m..(i + 1) * m];
            // P'_i = x + gain ⊙ xhat + bias: the skip connection, then gain and bias.
            dp[i * d..(i + 1) * d].copy_from_slice(go);
            for k in 0..d {
                dw[l.gain + k] += go[k] * xhat[k];
                dw[l.bias + k] += go[k];
            }
            // LayerNorm: du = rstd (dxhat - mean(dxhat) - xhat mean(dxhat ⊙ xhat)).
            let (mut s1, mut s2) = (0.0f64, 0.0f64);
            for k in 0..d {
                let dx = (go[k] * w[l.gain + k]) as f64;
                s1 += dx;
                s2 += dx * xhat[k] as f64;
            }
            let (m1, m2) = ((s1 / d as f64) as f32, (s2 / d as f64) as f32);
            for k in 0..d {
                let dx = go[k] * w[l.gain + k];
                du[k] = self.rstd[i] * (dx - m1 - xhat[k] * m2);
            }
            // u = W_up h + b_up: dW_up += du hᵀ, db_up += du, dh = W_upᵀ du.
            da.fill(0.0);
            for k in 0..d {
                let row = &w[l.w_up + k * m..l.w_up + (k + 1) * m];
                let grow = &mut dw[l.w_up + k * m..l.w_up + (k + 1) * m];
                for j in 0..m {
                    grow[j] += du[k] * h[j];
                    da[j] += row[j] * du[k];
                }
                dw[l.b_up + k] += du[k];
            }
            // h = ReLU(a): da = dh where a > 0.
            for j in 0..m {
                if h[j] <= 0.0 {
                    da[j] = 0.0;
                }
            }
            // a = W_down x + b_down: dW_down += da xᵀ, db_down += da, dx += W_downᵀ da.
            for j in 0..m {
                if da[j] == 0.0 {
                    continue;
                }
                let row = &w[l.w_down + j * d..l.w_down + (j + 1) * d];
                let grow = &mut dw[l.w_down + j * d..l.w_down + (j + 1) * d];
                let dxi = &mut dp[i * d..(i + 1) * d];
                for k in 0..d {
                    grow[k] += da[j] * x[k];
                    dxi[k] += row[k] * da[j];
                }
                dw[l.b_down + j] += da[j];
            }
        }
        g
    }

    /// The MLP's parameters `[n_params]` (layout in the module doc).
    pub fn mlp(&self) -> &[f32] {
        &self.mlp
    }

    /// Mutable MLP parameters (finite-difference tests).
    pub fn mlp_mut(&mut self) -> &mut [f32] {
        &mut self.mlp
    }

    /// Checkpoint tensors (`reparam.prompt`, `reparam.mlp`, the MLP optimizer's moments
    /// under `reparam.optim.*`) and JSON state.
    pub fn state(&self) -> (Vec<NamedTensor>, serde_json::Value) {
        let (ot, ostate) = self.opt.state();
        let mut t = vec![
            (
                T_PROMPT.to_string(),
                vec![self.p, self.d],
                self.prompt.clone(),
            ),
            (T_MLP.to_string(), vec![self.mlp.len()], self.mlp.clone()),
        ];
        t.extend(
            ot.into_iter()
                .map(|(n, s, v)| (format!("{OPT_PREFIX}{n}"), s, v)),
        );
        let json = serde_json::json!({ "p": self.p, "d": self.d, "bottleneck": self.m, "optimizer": ostate });
        (t, json)
    }

    /// Rebuild from [`Self::state`]'s output (a checkpoint's whole tensor list may be
    /// passed), checking it against the run's `[P, D]` and bottleneck `m`.
    pub fn from_state(
        tensors: &[NamedTensor],
        json: &serde_json::Value,
        p: usize,
        d: usize,
        m: usize,
    ) -> Result<Self> {
        let bad = |msg: String| Error::Mismatch(format!("checkpoint reparam state: {msg}"));
        let saved_m = json.get("bottleneck").and_then(|v| v.as_u64());
        if saved_m != Some(m as u64) {
            return Err(bad(format!(
                "the checkpoint's bottleneck is {saved_m:?}, the run's is {m}: resume with the same --reparam"
            )));
        }
        let l = layout(d, m);
        let find = |name: &str, shape: &[usize]| -> Result<Vec<f32>> {
            match tensors.iter().find(|t| t.0 == name) {
                Some((_, s, v)) if s.as_slice() == shape => Ok(v.clone()),
                Some((_, s, _)) => Err(bad(format!("`{name}` is {s:?}, expected {shape:?}"))),
                None => Err(bad(format!(
                    "no `{name}` tensor (was the run started with --reparam residual?)"
                ))),
            }
        };
        let prompt = find(T_PROMPT, &[p, d])?;
        let mlp = find(T_MLP, &[l.n])?;
        let opt_tensors: Vec<NamedTensor> = tensors
            .iter()
            .filter_map(|(n, s, v)| {
                n.strip_prefix(OPT_PREFIX)
                    .filter(|r| r.starts_with("optim."))
                    .map(|r| (r.to_string(), s.clone(), v.clone()))
            })
            .collect();
        let opt = Optimizer::from_state(&opt_tensors, &json["optimizer"])?;
        Ok(Self::with(p, d, m, prompt, mlp, opt))
    }
}

/// The run's reparameterization (`None` for `none`), fresh around the initial prompt `emb`
/// or restored from a checkpoint's `(tensors, state["reparam"])`; `emb` becomes `P'`.
pub(crate) fn setup(
    reparam: Reparam,
    optimizer: OptimizerKind,
    seed: u64,
    emb: &mut Tensor,
    ckpt: Option<(&[NamedTensor], &serde_json::Value)>,
) -> Result<Option<Residual>> {
    let Reparam::Residual { bottleneck } = reparam else {
        return Ok(None);
    };
    let (p, d) = prompt_dims(emb)?;
    let mut r = match ckpt {
        Some((tensors, json)) => Residual::from_state(tensors, json, p, d, bottleneck)?,
        None => Residual::new(emb, bottleneck, optimizer, seed)?,
    };
    *emb = r.forward();
    Ok(Some(r))
}

impl Residual {
    /// One update of every parameter from `grad` = `[dP ; dMLP]` (already clipped): `P`
    /// with the run's prompt optimizer `opt`, the MLP with its own. Returns the new `P'`.
    pub fn step(&mut self, opt: &mut Optimizer, grad: &[f32], lr: f32) -> Tensor {
        let (dp, dmlp) = grad.split_at(self.p * self.d);
        opt.step(&mut self.prompt, dp, lr);
        self.opt.step(&mut self.mlp, dmlp, lr);
        self.forward()
    }
}

fn prompt_dims(t: &Tensor) -> Result<(usize, usize)> {
    match t.shape.as_slice() {
        [p, d] if *p > 0 && *d > 0 => Ok((*p, *d)),
        s => Err(Error::Mismatch(format!(
            "reparam: the prompt is {s:?}, expected [P, D]"
        ))),
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        assert_eq!("none".parse::<Reparam>().unwrap(), Reparam::None);
        assert_eq!(
            "residual".parse::<Reparam>().unwrap(),
            Reparam::Residual {
                bottleneck: DEFAULT_BOTTLENECK
            }
        );
        let r: Reparam = "Residual:64".parse().unwrap();
        assert_eq!(r, Reparam::Residual { bottleneck: 64 });
        assert_eq!(r.to_string(), "residual:64");
        for bad in ["residual:0", "residual:x", "mlp", "none:3", ""] {
            let e = bad.parse::<Reparam>().unwrap_err().to_string();
            assert!(e.contains("reparam"), "{bad}: {e}");
        }
        assert_eq!(
            serde_json::to_value(r).unwrap(),
            serde_json::json!({"kind": "residual", "bottleneck": 64})
        );
        let e = r
            .validate(&OptimizerKind::adafactor_lester())
            .unwrap_err()
            .to_string();
        assert!(e.contains("adamw"), "{e}");
        r.validate(&OptimizerKind::adamw_default()).unwrap();
    }

    #[test]
    fn starts_as_the_identity() {
        let prompt = crate::prompt::init::random_uniform(3, 8, 0.5, 1);
        let mut r = Residual::new(&prompt, 4, OptimizerKind::adamw_default(), 7).unwrap();
        assert_eq!(r.forward().data, prompt.data);
        assert_eq!(r.n_params(), 2 * 8 * 4 + 4 + 3 * 8);
        assert_eq!(
            Reparam::Residual { bottleneck: 4 }.extra_parameters(8),
            r.n_params()
        );
        assert_eq!(Reparam::None.extra_parameters(8), 0);
    }
}
