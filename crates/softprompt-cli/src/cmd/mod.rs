//! One module per command: its flags (`XArgs`) and `run`. Shared flags, loading and
//! progress are in `common`.

pub mod bench;
pub mod classify;
pub mod common;
pub mod compare;
pub mod distill;
pub mod eval;
pub mod export;
pub mod generate;
pub mod info;
pub mod init;
pub mod inspect;
pub mod loadtest;
pub mod ranks;
pub mod score;
pub mod serve;
pub mod train;
pub mod transfer;
