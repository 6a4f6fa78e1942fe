//! Crash-safe training checkpoints.
//!
//! # Layout
//! ```text
//! dir/
//!   latest                    name of the newest checkpoint ("ckpt-00000123\n")
//!   ckpt-00000100/
//!     tensors.safetensors     every f32 tensor (prompt, optimizer moments, ...)
//!     state.json              step, the trainer's JSON state, tensor list, sha256 of the tensors file
//!   ckpt-00000123/
//!   .tmp-...                  leftovers of an interrupted save: ignored, removed by the next save
//! ```
//!
//! # Crash safety
//! [`save_checkpoint`] writes the new checkpoint into a fresh `dir/.tmp-ckpt-*` folder,
//! fsyncs both files and the folder, renames it to `ckpt-XXXXXXXX`, fsyncs `dir`, then
//! replaces `latest` (temp file, fsync, rename, fsync `dir`). Only then are checkpoints
//! beyond `keep_last` deleted, each first renamed to a `.tmp-` name so that no
//! half-deleted `ckpt-*` folder can exist. A kill at any moment therefore leaves either
//! the previous or the new checkpoint complete under a `ckpt-*` name, with `latest`
//! naming one of them; [`load_latest`] verifies the checksum and falls back to the newest
//! valid `ckpt-*` folder if `latest` is missing, dangling or names a damaged checkpoint.
//! A write error (full disk) removes the temp folder and returns an error naming the file;
//! the previous checkpoint is untouched.
//!
//! `dir` should hold nothing but checkpoints: every save removes `.tmp-*` entries in it.
//! One narrow exception to the guarantee: re-saving a step that already has a checkpoint
//! moves the old folder aside first, so a kill between that move and the rename of the
//! new folder loses that one step's checkpoint (older ones remain loadable).

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::fsio::{
    atomic_write, crashed, fault_point, rename, sync_dir, temp_path, write_new_file, TMP_PREFIX,
};
use crate::{Error, Result};

/// File holding the tensors inside a checkpoint folder.
pub const TENSORS_FILE: &str = "tensors.safetensors";
/// File holding the step, state and checksum inside a checkpoint folder.
pub const STATE_FILE: &str = "state.json";
/// Pointer file naming the newest checkpoint folder.
pub const LATEST_FILE: &str = "latest";
/// Version of `state.json` this build writes and the newest it reads.
pub const CHECKPOINT_FORMAT_VERSION: u32 = 1;

const CKPT_PREFIX: &str = "ckpt-";
/// Largest `state.json` read (it may hold metric histories).
const MAX_STATE_BYTES: u64 = 256 << 20;
/// Largest `latest` read.
const MAX_LATEST_BYTES: u64 = 4096;

/// One training checkpoint: the step it was taken after, named f32 tensors
/// `(name, shape, values)` and free-form JSON state (optimizer scalars, data order, RNG
/// seeds, metric history...).
#[derive(Clone, Debug, PartialEq)]
pub struct Checkpoint {
    pub step: u64,
    pub tensors: Vec<(String, Vec<usize>, Vec<f32>)>,
    pub state: serde_json::Value,
}

/// `state.json`.
#[derive(Serialize, Deserialize)]
struct StateFile {
    format_version: u32,
    step: u64,
    /// Tensor names and shapes in the checkpoint's order (safetensors sorts them).
    tensors: Vec<TensorEntry>,
    /// Lower-case hex SHA-256 of `tensors.safetensors`.
    tensors_sha256: String,
    /// Size of `tensors.safetensors` in bytes.
    tensors_bytes: u64,
    state: serde_json::Value,
}

#[derive(Serialize, Deserialize)]
struct TensorEntry {
    name: String,
    shape: Vec<usize>,
}

/// The folder name of the checkpoint taken after `step`.
pub fn checkpoint_name(step: u64) -> String {
    format!("{CKPT_PREFIX}{step:08}")
}

/// The step of a `ckpt-XXXXXXXX` folder name (digits only; anything else is not ours).
fn parse_checkpoint_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix(CKPT_PREFIX)?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Read at most `cap` bytes of `path`; a larger file is a format error.
fn read_capped(path: &Path, cap: u64, what: &str) -> Result<Vec<u8>> {
    let f = File::open(path).map_err(|e| Error::io(path, e))?;
    crate::fsio::read_at_most(path, f, cap)?
        .ok_or_else(|| Error::format(path, format!("{what} is larger than {cap} bytes")))
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

// ---------------------------------------------------------------------------------------
// Saving

/// Serialize the tensors as one F32 safetensors file, after checking names and shapes.
fn serialize_tensors(ckpt: &Checkpoint) -> Result<Vec<u8>> {
    let bad = |msg: String| Error::Input(format!("checkpoint at step {}: {msg}", ckpt.step));
    let mut seen = std::collections::HashSet::new();
    let mut bytes: Vec<Vec<u8>> = Vec::with_capacity(ckpt.tensors.len());
    for (name, shape, data) in &ckpt.tensors {
        if name.is_empty() || name == "__metadata__" {
            return Err(bad(format!("invalid tensor name `{name}`")));
        }
        if !seen.insert(name.as_str()) {
            return Err(bad(format!("tensor `{name}` appears twice")));
        }
        let n = shape
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| bad(format!("tensor `{name}`: shape {shape:?} overflows")))?;
        if n != data.len() {
            return Err(bad(format!(
                "tensor `{name}` has shape {shape:?} but {} values",
                data.len()
            )));
        }
        let mut b = Vec::with_capacity(data.len() * 4);
        for v in data {
            b.extend_from_slice(&v.to_le_bytes());
        }
        bytes.push(b);
    }
    let mut views = Vec::with_capacity(ckpt.tensors.len());
    for ((name, shape, _), b) in ckpt.tensors.iter().zip(&bytes) {
        let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), b)
            .map_err(|e| bad(format!("tensor `{name}`: {e}")))?;
        views.push((name.as_str(), view));
    }
    let metadata =
        std::collections::HashMap::from([("format".to_string(), "softprompt-checkpoint".into())]);
    safetensors::serialize(views, Some(metadata))
        .map_err(|e| bad(format!("cannot serialize tensors: {e}")))
}

/// Remove `.tmp-*` leftovers of interrupted saves (best effort).
fn remove_temp_leftovers(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if !name.to_string_lossy().starts_with(TMP_PREFIX) {
            continue;
        }
        let p = entry.path();
        let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
        let res = if is_dir {
            fs::remove_dir_all(&p)
        } else {
            fs::remove_file(&p)
        };
        if let Err(e) = res {
            tracing::warn!("could not remove leftover {}: {e}", p.display());
        }
    }
}

/// `(step, path)` of every `ckpt-*` folder in `dir`, newest first.
fn list_checkpoints(dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(dir, e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let name = entry.file_name();
        let Some(step) = name.to_str().and_then(parse_checkpoint_name) else {
            continue;
        };
        if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            out.push((step, entry.path()));
        }
    }
    out.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| b.1.cmp(&a.1)));
    Ok(out)
}

/// Save `ckpt` as `dir/ckpt-XXXXXXXX` (created with `dir` if needed), point `latest` at
/// it, then delete all but the newest `keep_last` checkpoints (by step; the one just
/// written is always kept; `keep_last == 0` keeps all). Returns the new folder.
///
/// Saving a step that already has a checkpoint replaces it (the old folder is moved to a
/// `.tmp-` name first, and removed once the new one is in place).
///
/// See the module documentation for the crash-safety guarantees. Errors name the file
/// that could not be written; the previous checkpoint is left intact.
pub fn save_checkpoint(dir: &Path, ckpt: &Checkpoint, keep_last: usize) -> Result<PathBuf> {
    // Serialize and checksum before touching the disk.
    let tensors_bytes = serialize_tensors(ckpt)?;
    let state = StateFile {
        format_version: CHECKPOINT_FORMAT_VERSION,
        step: ckpt.step,
        tensors: ckpt
            .tensors
            .iter()
            .map(|(name, shape, _)| TensorEntry {
                name: name.clone(),
                shape: shape.clone(),
            })
            .collect(),
        tensors_sha256: sha256_hex(&tensors_bytes),
        tensors_bytes: tensors_bytes.len() as u64,
        state: ckpt.state.clone(),
    };
    let state_json = serde_json::to_vec_pretty(&state).map_err(|e| {
        Error::Input(format!(
            "checkpoint at step {}: cannot serialize state: {e}",
            ckpt.step
        ))
    })?;

    if dir.exists() && !dir.is_dir() {
        return Err(Error::io(
            dir,
            std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "exists and is not a folder",
            ),
        ));
    }
    fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    remove_temp_leftovers(dir);

    // 1. Stage everything in a temp folder.
    let tmp = temp_path(dir, "ckpt");
    let staged = (|| -> Result<()> {
        fault_point().map_err(|e| Error::io(&tmp, e))?;
        fs::create_dir(&tmp).map_err(|e| Error::io(&tmp, e))?;
        write_new_file(&tmp.join(TENSORS_FILE), &tensors_bytes)?;
        write_new_file(&tmp.join(STATE_FILE), &state_json)?;
        fault_point().map_err(|e| Error::io(&tmp, e))?;
        File::open(&tmp)
            .and_then(|d| d.sync_all())
            .map_err(|e| Error::io(&tmp, e))
    })();
    if let Err(e) = staged {
        if !crashed() {
            let _ = fs::remove_dir_all(&tmp);
        }
        return Err(e);
    }

    // 2. Move it to its final name (moving a same-step checkpoint out of the way first).
    let name = checkpoint_name(ckpt.step);
    let final_dir = dir.join(&name);
    let mut replaced: Option<PathBuf> = None;
    if let Ok(meta) = fs::symlink_metadata(&final_dir) {
        let aside = temp_path(dir, "replaced");
        let res = if meta.is_dir() {
            rename(&final_dir, &aside)
        } else {
            Err(Error::io(
                &final_dir,
                std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "exists and is not a checkpoint folder",
                ),
            ))
        };
        if let Err(e) = res {
            if !crashed() {
                let _ = fs::remove_dir_all(&tmp);
            }
            return Err(e);
        }
        replaced = Some(aside);
    }
    if let Err(e) = rename(&tmp, &final_dir) {
        if !crashed() {
            let _ = fs::remove_dir_all(&tmp);
            if let Some(aside) = &replaced {
                let _ = fs::rename(aside, &final_dir);
            }
        }
        return Err(e);
    }
    sync_dir(dir);

    // 3. Point `latest` at it.
    atomic_write(&dir.join(LATEST_FILE), format!("{name}\n").as_bytes())?;

    // 4. Only now delete what is no longer needed (best effort: the save succeeded).
    if let Some(aside) = replaced {
        let _ = fs::remove_dir_all(aside);
    }
    if keep_last > 0 {
        if let Err(e) = prune(dir, &final_dir, keep_last) {
            if crashed() {
                return Err(e);
            }
            tracing::warn!("could not delete old checkpoints: {e}");
        }
    }
    Ok(final_dir)
}

/// Delete checkpoints other than `keep` and the `keep_last - 1` newest others.
fn prune(dir: &Path, keep: &Path, keep_last: usize) -> Result<()> {
    let others: Vec<_> = list_checkpoints(dir)?
        .into_iter()
        .filter(|(_, p)| p != keep)
        .collect();
    for (_, old) in others.iter().skip(keep_last.saturating_sub(1)) {
        // Rename first, so a kill mid-deletion never leaves a partial `ckpt-*` folder.
        let aside = temp_path(dir, "deleted");
        rename(old, &aside)?;
        fs::remove_dir_all(&aside).map_err(|e| Error::io(&aside, e))?;
    }
    sync_dir(dir);
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Loading

/// Load and verify the checkpoint folder `path`.
pub fn load_checkpoint(path: &Path) -> Result<Checkpoint> {
    let state_path = path.join(STATE_FILE);
    let raw = read_capped(&state_path, MAX_STATE_BYTES, "state.json")?;
    let value: serde_json::Value = serde_json::from_slice(&raw)
        .map_err(|e| Error::format(&state_path, format!("malformed JSON: {e}")))?;
    if let Some(v) = value.get("format_version").and_then(|v| v.as_u64()) {
        if v > CHECKPOINT_FORMAT_VERSION as u64 {
            return Err(Error::unsupported(
                state_path.display().to_string(),
                format!(
                    "format_version {v} was written by a newer softprompt; this build reads up to {CHECKPOINT_FORMAT_VERSION}"
                ),
            ));
        }
    }
    let state: StateFile = serde_json::from_value(value)
        .map_err(|e| Error::format(&state_path, format!("invalid checkpoint state: {e}")))?;
    if let Some(step) = path
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(parse_checkpoint_name)
    {
        if step != state.step {
            return Err(Error::format(
                &state_path,
                format!(
                    "says step {}, but the folder is named for step {step}",
                    state.step
                ),
            ));
        }
    }

    let tensors_path = path.join(TENSORS_FILE);
    let len = fs::metadata(&tensors_path)
        .map_err(|e| Error::io(&tensors_path, e))?
        .len();
    if len != state.tensors_bytes {
        return Err(Error::format(
            &tensors_path,
            format!(
                "is {len} bytes, but state.json records {} bytes (truncated or damaged)",
                state.tensors_bytes
            ),
        ));
    }
    let bytes = read_capped(&tensors_path, state.tensors_bytes, "tensors file")?;
    let digest = sha256_hex(&bytes);
    if digest != state.tensors_sha256.to_ascii_lowercase() {
        return Err(Error::format(
            &tensors_path,
            format!(
                "checksum mismatch (sha256 {digest}, state.json records {}): the file is damaged",
                state.tensors_sha256
            ),
        ));
    }
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| Error::format(&tensors_path, format!("corrupt safetensors file: {e}")))?;
    if st.len() != state.tensors.len() {
        return Err(Error::format(
            &tensors_path,
            format!(
                "holds {} tensors, but state.json lists {}",
                st.len(),
                state.tensors.len()
            ),
        ));
    }
    let mut tensors = Vec::with_capacity(state.tensors.len());
    for entry in &state.tensors {
        let view = st
            .tensor(&entry.name)
            .map_err(|e| Error::format(&tensors_path, format!("tensor `{}`: {e}", entry.name)))?;
        if view.dtype() != safetensors::Dtype::F32 || view.shape() != entry.shape.as_slice() {
            return Err(Error::format(
                &tensors_path,
                format!(
                    "tensor `{}` is {} {:?}; state.json records F32 {:?}",
                    entry.name,
                    view.dtype(),
                    view.shape(),
                    entry.shape
                ),
            ));
        }
        let data: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        tensors.push((entry.name.clone(), entry.shape.clone(), data));
    }
    Ok(Checkpoint {
        step: state.step,
        tensors,
        state: state.state,
    })
}

/// The checkpoint `dir/latest` names, verified; or, if `latest` is missing, dangling or
/// names a damaged checkpoint, the newest valid `ckpt-*` folder (with a `tracing` warning).
/// `Ok(None)` when `dir` holds no checkpoint at all; an error when checkpoints exist but
/// none is valid (rather than silently starting over).
pub fn load_latest(dir: &Path) -> Result<Option<Checkpoint>> {
    let latest_path = dir.join(LATEST_FILE);
    let mut tried: Option<PathBuf> = None;
    let mut first_error: Option<Error> = None;
    match read_capped(&latest_path, MAX_LATEST_BYTES, "latest") {
        Ok(raw) => {
            let text = String::from_utf8_lossy(&raw);
            let name = text.trim();
            let path = dir.join(name);
            if parse_checkpoint_name(name).is_some() && !path.is_dir() {
                // Dangling (e.g. the folder was deleted by hand): not a damaged checkpoint.
                tracing::warn!(
"{} names {name}, which does not exist; looking for the newest valid checkpoint",
                    latest_path.display()
                );
            } else if parse_checkpoint_name(name).is_some() {
                match load_checkpoint(&path) {
                    Ok(c) => return Ok(Some(c)),
                    Err(e) => {
                        tracing::warn!(
                            "latest checkpoint {} is unusable ({e}); looking for an older one",
                            path.display()
                        );
                        tried = Some(path);
                        first_error = Some(e);
                    }
                }
            } else {
                tracing::warn!(
                    "{} does not name a checkpoint ({name:?}); looking for the newest valid one",
                    latest_path.display()
                );
            }
        }
        Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!("{e}; looking for the newest valid checkpoint");
        }
    }

    let candidates = list_checkpoints(dir)?;
    let mut failed = 0usize;
    for (_, path) in candidates {
        if tried.as_deref() == Some(path.as_path()) {
            continue;
        }
        match load_checkpoint(&path) {
            Ok(c) => {
                tracing::info!("using {} (the newest valid checkpoint)", path.display());
                return Ok(Some(c));
            }
            Err(e) => {
                tracing::warn!("checkpoint {} is unusable ({e})", path.display());
                failed += 1;
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        None => Ok(None),
        Some(e) => {
            let n = failed + usize::from(tried.is_some());
            Err(Error::Input(format!(
                "{}: no valid checkpoint ({n} found, all damaged; first problem: {e}). \
                 Move the folder away to start training from scratch",
                dir.display()
            )))
        }
    }
}
