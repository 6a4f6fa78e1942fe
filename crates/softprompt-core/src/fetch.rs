//! Fetching the built-in models into the cache folder (`$SOFTPROMPT_CACHE`, default
//! `~/.cache/softprompt`). (helper B completes the download path.)

use std::path::PathBuf;

use crate::{Error, Result};

pub fn is_alias(spec: &str) -> bool {
    spec == crate::model::load::DEFAULT_ALIAS
}

pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("SOFTPROMPT_CACHE") {
        return PathBuf::from(d);
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache").join("softprompt")
}

/// Path of the alias's GGUF in the cache, fetching it first if it is not there.
pub fn fetch_alias(alias: &str) -> Result<PathBuf> {
    let p = cache_dir().join("models").join("SmolLM2-135M-Instruct.Q4_1.gguf");
    if p.is_file() {
        return Ok(p);
    }
    Err(Error::Fetch(format!("{alias}: not in cache {} (download not written yet)", p.display())))
}
