//! One error type for the library. The binary maps it to one line for the user;
//! the server maps it to HTTP codes. Every variant that concerns a file names it.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be opened or read at all.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file exists but its content is malformed (truncated, bad header, bad JSON...).
    #[error("{path}: {msg}")]
    Format { path: PathBuf, msg: String },
    /// Well-formed, but something softprompt does not support (architecture, dtype, ...).
    #[error("{what}: unsupported: {msg}")]
    Unsupported { what: String, msg: String },
    /// A soft prompt or input that does not fit the model (hidden size, vocab, context...).
    #[error("{0}")]
    Mismatch(String),
    /// Bad user-supplied value (request field, text, data).
    #[error("{0}")]
    Input(String),
    /// A setting (a field of the configuration of a run or a load) whose value cannot work.
    /// `name` is the field (`lr`, `steps`, `weights`, `force`, ...) and the message says what
    /// to change in those words; a front end maps the name to its own spelling (the CLI
    /// names the flag).
    #[error("{msg}")]
    Setting { name: &'static str, msg: String },
    /// Fetching a model (default alias or hub id) failed.
    #[error("fetch failed: {0}")]
    Fetch(String),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.as_ref().to_path_buf(),
            source,
        }
    }
    pub fn format(path: impl AsRef<Path>, msg: impl Into<String>) -> Self {
        Error::Format {
            path: path.as_ref().to_path_buf(),
            msg: msg.into(),
        }
    }
    pub fn setting(name: &'static str, msg: impl Into<String>) -> Self {
        Error::Setting {
            name,
            msg: msg.into(),
        }
    }
    pub fn unsupported(what: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Unsupported {
            what: what.into(),
            msg: msg.into(),
        }
    }
}
