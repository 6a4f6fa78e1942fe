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
    /// Bad user-supplied value (flag, request field, text).
    #[error("{0}")]
    Input(String),
    /// Fetching a model (default alias or hub id) failed.
    #[error("fetch failed: {0}")]
    Fetch(String),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
}

pub type Result<T> = std::result::Result<T, Error>;

/// Read an opened file whole if it holds at most `cap` bytes; `Ok(None)` when it is larger. A
/// regular file is refused from its size before anything is read; anything else (a pipe, a
/// file that grows) after reading at most `cap + 1` bytes. Callers word the "too big" error.
pub(crate) fn read_at_most(path: &Path, file: std::fs::File, cap: u64) -> Result<Option<Vec<u8>>> {
    use std::io::Read;
    if file.metadata().is_ok_and(|m| m.is_file() && m.len() > cap) {
        return Ok(None);
    }
    let mut buf = Vec::new();
    file.take(cap + 1)
        .read_to_end(&mut buf)
        .map_err(|e| Error::io(path, e))?;
    Ok((buf.len() as u64 <= cap).then_some(buf))
}

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
    pub fn unsupported(what: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Unsupported {
            what: what.into(),
            msg: msg.into(),
        }
    }
}
