//! Task data: task specs, data readers, prompt rendering and batching.
//!
//! - [`TaskSpec`]: a task as a JSON file (built in: [`builtin_task`] for `demo`, `sst2`,
//!   `boolq`, `cb`, `copa`, `wic`; the specs live in the repository's `tasks/` folder) or from
//!   command-line flags ([`TaskSpec::from_flags`]). Templates fill `{field}` placeholders from a
//!   record ([`template`] documents the syntax and its few filters).
//! - [`read_records`]: JSON Lines, CSV and TSV files into [`Record`]s, with errors naming file and
//!   line; [`resolve_data_file`] finds a file (local, under the data root, or
//!   `hf://datasets/...`); [`load_split`] does both and also serves the built-in demo splits.
//! - [`prepare`]: records → [`ClassItem`]s (prompt, candidates, gold class) or [`GenItem`]s;
//!   [`load_items`] reads and prepares a split in one call (what the commands use).
//! - [`bucket_batches`]: reproducible, length-bucketed batches per (seed, epoch);
//!   [`EpochBatches`] walks them epoch after epoch (the trainers' data order).
//!
//! A typical caller:
//!
//! ```no_run
//! use softprompt_core::data;
//! let spec = data::builtin_task("sst2").unwrap();
//! let (records, _skipped, name) =
//!     data::load_split(spec.train.as_deref().unwrap(), None, false)?;
//! let (items, _) = data::prepare(&spec, &records, std::path::Path::new(&name), false)?;
//! # Ok::<(), softprompt_core::Error>(())
//! ```

pub mod batch;
pub mod demo;
pub mod prepare;
pub mod read;
pub mod resolve;
pub mod spec;
pub mod template;

pub use batch::{bucket_batches, EpochBatches, SplitMix64, BUCKET_WINDOW_BATCHES};
pub use demo::{demo_records, DemoSplit, DEMO_TRAIN_SIZE, DEMO_VALIDATION_SIZE};
pub use prepare::{
    label_counts, label_string, load_items, majority_baseline, prepare, ClassItem, GenItem, Items,
    Split,
};
pub use read::{read_records, Record, MAX_LINE_BYTES};
pub use resolve::{default_data_root, load_split, resolve_data_file, BUILTIN_PREFIX, HF_PREFIX};
pub use spec::{builtin_task, builtin_task_names, load_task_file, LabelSpec, TaskKind, TaskSpec};
pub use template::{RenderError, Template};
