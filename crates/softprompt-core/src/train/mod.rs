//! Training a soft prompt: optimizers, schedules, checkpoints, evaluation and the trainer
//! loop; full fine-tuning (the baseline of `compare`) on the same pipeline.

pub mod checkpoint;
pub mod distill;
pub mod eval;
pub mod finetune;
pub mod init;
pub mod lora;
pub mod optim;
pub mod parallel;
pub mod reparam;
pub mod trainer;
pub mod transfer;

pub use eval::{evaluate, evaluate_ensemble, tokenize, EvalReport, Tokenized};
pub use init::Init;
pub use parallel::{Reducer, Single};
pub use trainer::{train, train_with, Observer, Quiet, TrainConfig, TrainSummary};
