//! Helpers shared by the CLI tests.

use std::path::{Path, PathBuf};

/// The golden PyTorch + PEFT fixtures of `model`, kept in softprompt-core
/// (`crates/softprompt-core/tests/fixtures/MODEL`, written by `scripts/make_fixtures.py`).
pub fn fixture_dir(model: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../softprompt-core/tests/fixtures")
        .join(model)
}
