//! Training a soft prompt: optimizers, schedules, checkpoints, plots and the trainer loop.

pub mod checkpoint;
pub mod optim;
pub mod plot;
