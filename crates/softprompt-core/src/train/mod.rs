//! Training a soft prompt: optimizers, schedules, checkpoints, plots, evaluation and the
//! trainer loop.

pub mod checkpoint;
pub mod distill;
pub mod eval;
pub mod finetune;
pub mod optim;
pub mod plot;
pub mod trainer;

pub use eval::{evaluate, tokenize, EvalReport, Tokenized};
pub use trainer::{train, Init, Observer, Quiet, TrainConfig, TrainSummary};
