//! Durable file I/O shared by every writer and reader: atomic replacement of a file
//! ([`atomic_write`]), staged new files and renames that the checkpoint code builds on,
//! folder sync, and capped reads of untrusted files (`read_at_most`).
//!
//! The staged operations count toward the test-only [`fault`] hooks, so a test can make any
//! one of them fail ("disk full") or stop as if the process had been killed.

use std::cell::Cell;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// Prefix of the temporary names `temp_path` makes (`.tmp-{what}-{pid}-{n}`).
pub const TMP_PREFIX: &str = ".tmp-";

// ---------------------------------------------------------------------------------------
// Fault injection (tests only)

thread_local! {
    /// `(op index to fail, crash)`: the `n`-th staged filesystem operation fails; with
    /// `crash` nothing is cleaned up afterwards (as if the process had been killed).
    static FAULT: Cell<Option<(u64, bool)>> = const { Cell::new(None) };
    static FAULT_OPS: Cell<u64> = const { Cell::new(0) };
    static CRASHED: Cell<bool> = const { Cell::new(false) };
}

/// Test hooks to simulate write failures and crashes in [`atomic_write`] and the checkpoint
/// saver, per thread.
#[doc(hidden)]
pub mod fault {
    use super::*;

    /// Make filesystem operation number `op` (0-based, counted from now, on this thread)
    /// of `write_new_file`, `rename` or `fault_point` fail with "no space left on
    /// device"; a failing file write writes half its bytes first. With `crash`, the
    /// operation's caller then returns at once without any cleanup, leaving the disk as a
    /// kill at that moment would. `None` disables.
    pub fn inject(op: Option<u64>, crash: bool) {
        FAULT.with(|f| f.set(op.map(|o| (o, crash))));
        FAULT_OPS.with(|c| c.set(0));
        CRASHED.with(|c| c.set(false));
    }

    /// Operations counted since the last [`inject`].
    pub fn ops() -> u64 {
        FAULT_OPS.with(|c| c.get())
    }
}

/// Count one filesystem operation; `Err` if a fault was injected for it.
pub(crate) fn fault_point() -> std::io::Result<()> {
    let n = FAULT_OPS.with(|c| {
        let n = c.get();
        c.set(n + 1);
        n
    });
    match FAULT.with(|f| f.get()) {
        Some((op, crash)) if op == n => {
            if crash {
                CRASHED.with(|c| c.set(true));
            }
            Err(std::io::Error::other(
                "No space left on device (simulated by a test)",
            ))
        }
        _ => Ok(()),
    }
}

/// True after a simulated crash: skip all cleanup.
pub(crate) fn crashed() -> bool {
    CRASHED.with(|c| c.get())
}

// ---------------------------------------------------------------------------------------
// Writing

/// Create `path` (must not exist), write `bytes`, fsync. On error the partial file is
/// left for the caller to remove.
pub(crate) fn write_new_file(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| Error::io(path, e))?;
    if let Err(e) = fault_point() {
        // Simulate a disk filling up halfway through.
        let _ = f.write_all(&bytes[..bytes.len() / 2]);
        return Err(Error::io(path, e));
    }
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(|e| Error::io(path, e))
}

/// Rename, with fault injection.
pub(crate) fn rename(from: &Path, to: &Path) -> Result<()> {
    fault_point().map_err(|e| Error::io(to, e))?;
    fs::rename(from, to).map_err(|e| Error::io(to, e))
}

/// fsync a folder so renames in it are durable. Errors are ignored: some filesystems
/// cannot sync a folder, and the data files themselves were synced.
pub(crate) fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// A fresh name `dir/.tmp-{what}-{pid}-{n}` that does not exist yet.
pub(crate) fn temp_path(dir: &Path, what: &str) -> PathBuf {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let pid = std::process::id();
    loop {
        let k = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = dir.join(format!("{TMP_PREFIX}{what}-{pid}-{k}"));
        if fs::symlink_metadata(&p).is_err() {
            return p;
        }
    }
}

/// Replace `path` atomically with `bytes`: write a temp file beside it, fsync, rename
/// over `path`, fsync the folder. Readers see the old or the new content, never a mix;
/// on error the old file is untouched and the temp file removed.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "file".into());
    let tmp = temp_path(&dir, &name);
    let res = write_new_file(&tmp, bytes).and_then(|_| rename(&tmp, path));
    if let Err(e) = res {
        if !crashed() {
            let _ = fs::remove_file(&tmp);
        }
        return Err(e);
    }
    sync_dir(&dir);
    Ok(())
}

/// Write `bytes` to a new hidden temp file `dir/.{name}.{pid}.{n}.tmp` (never an existing
/// file), fsync it, and return its path: the staging step of a multi-file save that renames
/// all its files only once every one is written (a soft prompt folder).
pub(crate) fn write_temp(dir: &Path, name: &str, bytes: &[u8]) -> Result<PathBuf> {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let pid = std::process::id();
    let mut attempt = 0;
    loop {
        let k = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = dir.join(format!(".{name}.{pid}.{k}.tmp"));
        match fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
        {
            Ok(mut f) => {
                let res = f.write_all(bytes).and_then(|_| f.sync_all());
                return match res {
                    Ok(()) => Ok(tmp),
                    Err(e) => {
                        drop(f);
                        let _ = fs::remove_file(&tmp);
                        Err(Error::io(&tmp, e))
                    }
                };
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && attempt < 100 => {
                attempt += 1
            }
            Err(e) => return Err(Error::io(&tmp, e)),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Reading

/// Read an opened file whole if it holds at most `cap` bytes; `Ok(None)` when it is larger. A
/// regular file is refused from its size before anything is read; anything else (a pipe, a
/// file that grows) after reading at most `cap + 1` bytes. Callers word the "too big" error.
pub(crate) fn read_at_most(path: &Path, file: File, cap: u64) -> Result<Option<Vec<u8>>> {
    if file.metadata().is_ok_and(|m| m.is_file() && m.len() > cap) {
        return Ok(None);
    }
    let mut buf = Vec::new();
    file.take(cap + 1)
        .read_to_end(&mut buf)
        .map_err(|e| Error::io(path, e))?;
    Ok((buf.len() as u64 <= cap).then_some(buf))
}
