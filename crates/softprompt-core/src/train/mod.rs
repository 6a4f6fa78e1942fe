//! Training a soft prompt: optimizers, schedules, checkpoints, evaluation and the trainer
//! loop; full fine-tuning (the baseline of `compare`) on the same pipeline.

pub mod checkpoint;
pub mod distill;
pub mod eval;
pub mod finetune;
pub mod init;
pub mod optim;
pub mod reparam;
pub mod trainer;

pub use eval::{evaluate, evaluate_ensemble, tokenize, EvalReport, Tokenized};
pub use init::Init;
pub use trainer::{train, Observer, Quiet, TrainConfig, TrainSummary};
