//! LoRA (low-rank adaptation), a comparison baseline for `compare` (not a serving feature):
//! `W = W0 + (alpha / r) B A` on chosen projections: r = 8 and PEFT's init (`A [r, D_in]`
//! Kaiming-uniform with `a = sqrt(5)`, i.e. `U(-1/sqrt(D_in), 1/sqrt(D_in))`, `B [D_out, r]
//! = 0`), alpha = 16 (scale 2, the common `alpha = 2r`; PEFT's `LoraConfig` default is
//! alpha = 8, scale 1), on the attention q and v projections of every layer by default.
//!
//! Simplest correct path, not the fast one: each step merges the adapters into the model's
//! weights, runs the full-weight backward of [`crate::model::llama::grads`] (it computes
//! every weight's gradient; only the adapted matrices' are used), and turns `dW` into
//! `dB = s dW A^T` and `dA = s B^T dW`. AdamW then updates A and B only, on the same data
//! pipeline, batches, seed, schedule and global-norm clipping (over A and B) as
//! [`super::finetune`]. The frozen `W0` is kept aside, so [`Lora::restore`] gives back the
//! exact original bytes. Evaluation uses the merged weights: the inference cost is the base
//! model's.

use std::path::Path;
use std::sync::atomic::AtomicBool;

use rand::{Rng, SeedableRng};
use rayon::prelude::*;
use serde_json::json;

use super::finetune::{check_lr, weight_loop, FinetuneSummary, WeightRun};
use super::optim::Optimizer;
use super::trainer::{Observer, TrainConfig};
use crate::fsio::atomic_write;
use crate::model::llama::grads::Grads;
use crate::model::llama::Llama;
use crate::model::FrozenModel;
use crate::{Error, Result};

pub const DEFAULT_RANK: usize = 8;
pub const DEFAULT_ALPHA: f32 = 16.0;
/// The adapted projections by default (PEFT's names).
pub const DEFAULT_MODULES: [&str; 2] = ["q_proj", "v_proj"];

/// One adapted matrix.
pub struct LoraTarget {
    /// The weight's Hugging Face name, e.g. `model.layers.0.self_attn.q_proj.weight`.
    pub name: String,
    /// Its index in [`Llama::params`] order.
    pub param: usize,
    pub rows: usize,  // D_out
    pub cols: usize,  // D_in
    pub a: Vec<f32>,  // [r, D_in]
    pub b: Vec<f32>,  // [D_out, r]
    pub w0: Vec<f32>, // [D_out, D_in] the frozen weight
}

/// LoRA adapters on a model's projections.
pub struct Lora {
    pub rank: usize,
    pub alpha: f32,
    pub modules: Vec<String>,
    pub targets: Vec<LoraTarget>,
}

impl Lora {
    /// Adapters (A random, B zero) on every weight named `*.{module}.weight` for a module in
    /// `modules` (e.g. `q_proj`), A drawn from `seed`. The model must hold f32 weights.
    pub fn new(
        model: &Llama,
        rank: usize,
        alpha: f32,
        modules: &[&str],
        seed: u64,
    ) -> Result<Lora> {
        if rank == 0 || !(alpha > 0.0 && alpha.is_finite()) {
            return Err(Error::setting(
                "lora_rank",
                format!("LoRA needs rank >= 1 and alpha > 0, got rank {rank}, alpha {alpha}"),
            ));
        }
        let params = model.params()?;
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut targets = Vec::new();
        for (param, spec) in model.param_specs().into_iter().enumerate() {
            let hit = modules
                .iter()
                .any(|m| spec.name.ends_with(&format!(".{m}.weight")));
            if !hit || spec.shape.len() != 2 {
                continue;
            }
            let (rows, cols) = (spec.shape[0], spec.shape[1]);
            let bound = 1.0 / (cols as f32).sqrt();
            let a = (0..rank * cols)
                .map(|_| rng.gen_range(-bound..bound))
                .collect();
            targets.push(LoraTarget {
                name: spec.name,
                param,
                rows,
                cols,
                a,
                b: vec![0.0; rows * rank],
                w0: params[param].to_vec(),
            });
        }
        if targets.is_empty() {
            return Err(Error::setting(
                "lora_rank",
                format!("no weight of this model matches the LoRA modules {modules:?}"),
            ));
        }
        Ok(Lora {
            rank,
            alpha,
            modules: modules.iter().map(|m| m.to_string()).collect(),
            targets,
        })
    }

    /// The scaling `alpha / r`.
    pub fn scale(&self) -> f32 {
        self.alpha / self.rank as f32
    }

    /// Trainable parameters: `r (D_in + D_out)` per adapted matrix.
    pub fn trainable_parameters(&self) -> usize {
        self.targets.iter().map(|t| t.a.len() + t.b.len()).sum()
    }

    /// Set every adapted weight of `model` to `W0 + s B A`.
    pub fn merge(&self, model: &mut Llama) -> Result<()> {
        let (r, s) = (self.rank, self.scale());
        let mut params = model.params_mut()?;
        for t in &self.targets {
            let w = &mut params[t.param];
            w.par_chunks_mut(t.cols).enumerate().for_each(|(o, row)| {
                let w0 = &t.w0[o * t.cols..(o + 1) * t.cols];
                let brow = &t.b[o * r..(o + 1) * r];
                for (i, x) in row.iter_mut().enumerate() {
                    let ba: f32 = (0..r).map(|k| brow[k] * t.a[k * t.cols + i]).sum();
                    *x = w0[i] + s * ba;
                }
            });
        }
        Ok(())
    }

    /// Put the frozen weights back (bit-identical: they were kept aside).
    pub fn restore(&self, model: &mut Llama) -> Result<()> {
        let mut params = model.params_mut()?;
        for t in &self.targets {
            params[t.param].copy_from_slice(&t.w0);
        }
        Ok(())
    }

    /// Gradients of A and B (`[r, D_in]`, `[D_out, r]` per target, in target order) from the
    /// full weight gradients in `grads`: `dA = s B^T dW`, `dB = s dW A^T`.
    pub fn grads(&self, grads: &mut Grads) -> Vec<(Vec<f32>, Vec<f32>)> {
        let (r, s) = (self.rank, self.scale());
        let bufs = grads.buffers_mut();
        self.targets
            .iter()
            .map(|t| {
                let dw = &*bufs[t.param]; // [D_out, D_in]
                let db: Vec<f32> = (0..t.rows * r)
                    .into_par_iter()
                    .map(|j| {
                        let (o, k) = (j / r, j % r);
                        let g = &dw[o * t.cols..(o + 1) * t.cols];
                        let a = &t.a[k * t.cols..(k + 1) * t.cols];
                        s * g.iter().zip(a).map(|(x, y)| x * y).sum::<f32>()
                    })
                    .collect();
                let mut da = vec![0.0f32; r * t.cols]; // [r, D_in]
                da.par_chunks_mut(t.cols).enumerate().for_each(|(k, out)| {
                    for o in 0..t.rows {
                        let c = s * t.b[o * r + k];
                        if c != 0.0 {
                            let g = &dw[o * t.cols..(o + 1) * t.cols];
                            out.iter_mut().zip(g).for_each(|(x, y)| *x += c * y);
                        }
                    }
                });
                (da, db)
            })
            .collect()
    }

    /// Save as a PEFT LoRA folder at `dir`: `adapter_model.safetensors` (f32,
    /// `base_model.model.{module path}.lora_{A,B}.weight`) and `adapter_config.json`.
    /// Returns the bytes written.
    pub fn save(&self, dir: &Path, base_model: &str) -> Result<u64> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let mut named: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
        for t in &self.targets {
            let stem = t.name.trim_end_matches(".weight");
            let le = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
            named.push((
                format!("base_model.model.{stem}.lora_A.weight"),
                vec![self.rank, t.cols],
                le(&t.a),
            ));
            named.push((
                format!("base_model.model.{stem}.lora_B.weight"),
                vec![t.rows, self.rank],
                le(&t.b),
            ));
        }
        let views = named
            .iter()
            .map(|(n, shape, bytes)| {
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), bytes)
                    .map(|v| (n.clone(), v))
            })
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| Error::Input(format!("cannot serialize the LoRA adapter: {e}")))?;
        let metadata = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
        let weights = safetensors::serialize(views, Some(metadata))
            .map_err(|e| Error::Input(format!("cannot serialize the LoRA adapter: {e}")))?;
        let config = json!({
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "base_model_name_or_path": base_model,
            "r": self.rank,
            "lora_alpha": self.alpha,
            "lora_dropout": 0.0,
            "target_modules": self.modules,
            "bias": "none",
            "fan_in_fan_out": false,
            "inference_mode": true,
        });
        let config = serde_json::to_string_pretty(&config)
            .map_err(|e| Error::Input(format!("cannot serialize the LoRA config: {e}")))?;
        atomic_write(&dir.join("adapter_model.safetensors"), &weights)?;
        atomic_write(&dir.join("adapter_config.json"), config.as_bytes())?;
        Ok((weights.len() + config.len()) as u64)
    }
}

/// Train LoRA adapters on `cfg`'s task (`cfg.lr`, `cfg.optimizer`; `num_virtual_tokens` and
/// `init` are not used). Writes `OUT/train_log.jsonl` and, unless interrupted, the adapter
/// to `OUT/adapter/`. On return the model holds the merged weights `W0 + s B A` (call
/// [`Lora::restore`] for the original). `stop` is polled between steps.
pub fn train_lora(
    model: &mut FrozenModel,
    lora: &mut Lora,
    cfg: &TrainConfig,
    out: &Path,
    stop: &AtomicBool,
    obs: &mut dyn Observer,
) -> Result<FinetuneSummary> {
    check_lr(cfg, "LoRA", "lora_lr")?;
    let trainable_parameters = lora.trainable_parameters();
    let run = WeightRun {
        name: "LoRA",
        lr_setting: "lora_lr",
        header: format!(
            "LoRA r={} alpha={} on {} matrices: {trainable_parameters} trainable parameters",
            lora.rank,
            lora.alpha,
            lora.targets.len()
        ),
        trainable_parameters,
        // dA and dB come from the adapted matrices' dW alone.
        grad_params: Some(lora.targets.iter().map(|t| t.param).collect()),
    };
    // One optimizer per A and per B, in target order.
    let mut opts: Vec<(Optimizer, Optimizer)> = lora
        .targets
        .iter()
        .map(|t| {
            (
                Optimizer::new(cfg.optimizer, lora.rank, t.cols),
                Optimizer::new(cfg.optimizer, t.rows, lora.rank),
            )
        })
        .collect();
    lora.merge(&mut model.llama)?;
    let summary = weight_loop(model, cfg, out, stop, obs, run, &mut |model, grads, lr| {
        let mut ab = lora.grads(grads);
        let mut coef = 1.0 / cfg.grad_accum as f64;
        // Global-norm clipping over A and B (torch.nn.utils.clip_grad_norm_ on the
        // trainable parameters).
        let norm = coef
            * ab.iter()
                .flat_map(|(a, b)| a.iter().chain(b))
                .map(|&g| (g as f64) * (g as f64))
                .sum::<f64>()
                .sqrt();
        if cfg.max_grad_norm > 0.0 && norm.is_finite() {
            coef *= (cfg.max_grad_norm as f64 / (norm + 1e-6)).min(1.0);
        }
        if coef != 1.0 {
            ab.iter_mut()
                .flat_map(|(a, b)| a.iter_mut().chain(b.iter_mut()))
                .for_each(|g| *g *= coef as f32);
        }
        for ((t, (da, db)), (oa, ob)) in lora.targets.iter_mut().zip(&ab).zip(&mut opts) {
            oa.step(&mut t.a, da, lr);
            ob.step(&mut t.b, db, lr);
        }
        lora.merge(&mut model.llama)?;
        Ok(norm)
    })?;
    if !summary.interrupted {
        lora.save(&out.join("adapter"), &model.source)?;
    }
    Ok(summary)
}
