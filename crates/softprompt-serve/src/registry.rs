//! The prompts a server holds: loaded from one folder at start-up and at run time, each
//! content-addressed (sha256 of its adapter files) and shared by `Arc`, so a request pins the
//! prompt it started with even if an admin unloads or replaces it meanwhile.
//!
//! A name maps to `DIR/NAME` only: names are plain (`[A-Za-z0-9_.-]`, no leading dot, at
//! most 128 bytes), and the folder and each file read from it must resolve inside DIR after
//! following symlinks.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use sha2::{Digest, Sha256};
use softprompt_core::infer::scheduler::ServedPrompt;
use softprompt_core::model::FrozenModel;
use softprompt_core::prompt::{
    SoftPrompt, ADAPTER_CONFIG_FILE as ADAPTER_CONFIG, ADAPTER_WEIGHTS_FILE as ADAPTER_WEIGHTS,
    META_FILE,
};

use crate::error::ServeError;

/// A loaded prompt and its counters.
pub struct Entry {
    pub served: Arc<ServedPrompt>,
    pub loaded_at: SystemTime,
    pub requests: AtomicU64,
    pub tokens: AtomicU64,
}

pub struct Registry {
    /// Canonical prompt folder (None: only the base model is served).
    dir: Option<PathBuf>,
    model: Arc<FrozenModel>,
    /// The name that addresses the bare base model.
    pub base_name: String,
    base: Arc<Entry>,
    prompts: RwLock<BTreeMap<String, Arc<Entry>>>,
    max_prompts: usize,
}

pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
}

fn entry(served: ServedPrompt) -> Arc<Entry> {
    Arc::new(Entry {
        served: Arc::new(served),
        loaded_at: SystemTime::now(),
        requests: AtomicU64::new(0),
        tokens: AtomicU64::new(0),
    })
}

impl Registry {
    pub fn new(
        model: Arc<FrozenModel>,
        dir: Option<&Path>,
        base_name: &str,
        max_prompts: usize,
    ) -> Result<Self, ServeError> {
        let dir =
            match dir {
                Some(d) => Some(d.canonicalize().map_err(|e| {
                    ServeError::Invalid(format!("prompt folder {}: {e}", d.display()))
                })?),
                None => None,
            };
        let base = ServedPrompt::new(&model.llama, base_name, &model.fingerprint, None)
            .map_err(ServeError::from_core)?;
        Ok(Registry {
            dir,
            base: entry(base),
            base_name: base_name.to_string(),
            model,
            prompts: RwLock::new(BTreeMap::new()),
            max_prompts,
        })
    }

    /// Load every prompt folder in DIR (sorted by name). Returns the names that failed, with
    /// why; the others are loaded.
    pub fn load_all(&self) -> Vec<(String, ServeError)> {
        let Some(dir) = &self.dir else {
            return Vec::new();
        };
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .filter(|e| e.path().join(ADAPTER_CONFIG).exists())
                    .filter_map(|e| e.file_name().into_string().ok())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
            .into_iter()
            .filter_map(|n| self.load(&n).err().map(|e| (n, e)))
            .collect()
    }

    /// The prompt or base model named `name`.
    pub fn get(&self, name: &str) -> Result<Arc<Entry>, ServeError> {
        if name == self.base_name {
            return Ok(self.base.clone());
        }
        self.read().get(name).cloned().ok_or_else(|| {
            ServeError::NotFound(format!("no prompt named '{}' is loaded", clip(name)))
        })
    }

    /// Every loaded prompt, base model first.
    pub fn list(&self) -> Vec<(String, Arc<Entry>)> {
        let mut v = vec![(self.base_name.clone(), self.base.clone())];
        v.extend(self.read().iter().map(|(k, e)| (k.clone(), e.clone())));
        v
    }

    pub fn len(&self) -> usize {
        self.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Arc<Entry>>> {
        self.prompts.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Load (or reload) `DIR/name`. Checks the name, that every file resolves inside DIR, the
    /// adapter itself, and that it was made for this base model.
    pub fn load(&self, name: &str) -> Result<Arc<Entry>, ServeError> {
        let dir = self.dir.as_ref().ok_or_else(|| {
            ServeError::Invalid("the server was started without --prompts DIR".into())
        })?;
        if !valid_name(name) {
            return Err(ServeError::Invalid(format!(
                "bad prompt name '{}': use letters, digits, '_', '-', '.', not starting with '.'",
                clip(name)
            )));
        }
        if name == self.base_name {
            return Err(ServeError::Invalid(format!(
                "'{name}' names the base model"
            )));
        }
        // Capacity first: no file is read for a load that cannot be kept.
        {
            let map = self.read();
            if !map.contains_key(name) && map.len() >= self.max_prompts {
                return Err(ServeError::Invalid(format!(
                    "{} prompts are loaded (--max-prompts); unload one first",
                    map.len()
                )));
            }
        }
        let folder = inside(dir, &dir.join(name), name)?;
        let mut hash = Sha256::new();
        for f in [ADAPTER_CONFIG, ADAPTER_WEIGHTS, META_FILE] {
            let p = folder.join(f);
            if f == META_FILE && !p.exists() {
                continue;
            }
            let p = inside(dir, &p, name)?;
            // Adapter files are KBs; the loader below applies its own size caps again.
            let bytes = std::fs::read(&p)
                .map_err(|e| ServeError::Invalid(format!("prompt '{name}': {f}: {e}")))?;
            hash.update((f.len() as u64).to_le_bytes());
            hash.update(f.as_bytes());
            hash.update((bytes.len() as u64).to_le_bytes());
            hash.update(&bytes);
        }
        let sha = format!("{:x}", hash.finalize());
        let prompt = SoftPrompt::load_for(&self.model, &folder, false).map_err(|e| {
            ServeError::Invalid(format!("prompt '{name}': {}", redact(&e.to_string(), dir)))
        })?;
        let served = ServedPrompt::new(&self.model.llama, name, &sha, Some(prompt))
            .map_err(ServeError::from_core)?;
        let e = entry(served);
        self.prompts
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_string(), e.clone());
        Ok(e)
    }

    /// Forget `name`; requests already using it finish with it.
    pub fn unload(&self, name: &str) -> Result<Arc<Entry>, ServeError> {
        self.prompts
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name)
            .ok_or_else(|| {
                ServeError::NotFound(format!("no prompt named '{}' is loaded", clip(name)))
            })
    }
}

/// `path` after following symlinks, if it stays inside `dir`.
fn inside(dir: &Path, path: &Path, name: &str) -> Result<PathBuf, ServeError> {
    let c = path.canonicalize().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            ServeError::NotFound(format!(
                "prompt '{name}': no such file in the prompt folder: {}",
                redact(&path.display().to_string(), dir)
            ))
        } else {
            ServeError::Invalid(format!("prompt '{name}': {e}"))
        }
    })?;
    if !c.starts_with(dir) {
        return Err(ServeError::Invalid(format!(
            "prompt '{name}': {} resolves outside the prompt folder",
            redact(&path.display().to_string(), dir)
        )));
    }
    Ok(c)
}

/// Error texts name files relative to the prompt folder, not by the server's absolute paths.
fn redact(msg: &str, dir: &Path) -> String {
    msg.replace(&*dir.to_string_lossy(), "<prompts>")
}

/// A user-supplied name shortened for error messages.
fn clip(s: &str) -> String {
    s.chars().take(64).collect()
}
