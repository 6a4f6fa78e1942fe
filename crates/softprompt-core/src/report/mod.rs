//! Reports: PNG charts drawn in pure Rust ([`plot`]) and the formatting helpers the Markdown
//! reports share ([`markdown`]). Used by the trainer (training curves), `inspect`, `compare`
//! and the CLI; knows nothing of models or training.

pub mod markdown;
pub mod plot;
