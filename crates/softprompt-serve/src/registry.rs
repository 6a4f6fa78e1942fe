//! The prompts a server holds: loaded from one folder at start-up and at run time, each
//! content-addressed (sha256 of its adapter files) and shared by `Arc`, so a request pins the
//! prompt it started with even if an admin unloads or replaces it meanwhile.
//!
//! A name maps to `DIR/NAME` only: names are plain (`[A-Za-z0-9_.-]`, no leading dot, at
//! most 128 bytes), and the folder and each file read from it must resolve inside DIR after
//! following symlinks.
//!
//! The store (DIR shared by replicas): [`Registry::scan`] makes the loaded set follow the
//! folder: a new or changed prompt folder is loaded, a vanished one unloaded (after two scans
//! in a row miss it, so a replace that renames the old folder aside first never drops it). A
//! folder is looked at again only when its files' stamps (inode, size, mtime) change, so a
//! broken one is skipped with one log line and retried once it changes. Writers follow the
//! protocol [`Registry::install`] uses: write `DIR/.tmp-...`, then rename into place; names
//! starting with '.' are never served.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

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
    /// What the last scans saw of the store.
    store: Mutex<StoreSeen>,
}

/// The stat of a prompt folder's files: it changes when a file is rewritten or the folder
/// is replaced by a rename (new inodes), without reading any file.
type Stamp = Vec<(u64, u64, u128)>;

#[derive(Default)]
struct StoreSeen {
    /// Folder name -> stamp when last loaded or last failed to load.
    stamps: BTreeMap<String, Stamp>,
    /// Loaded prompts the last scan did not find.
    missing: BTreeSet<String>,
}

/// What one scan of the store changed.
#[derive(Default)]
pub struct ScanReport {
    pub loaded: Vec<String>,
    pub unloaded: Vec<String>,
    pub failed: Vec<(String, ServeError)>,
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
            store: Mutex::new(StoreSeen::default()),
        })
    }

    /// Make the loaded prompts follow DIR: load new and changed folders (sorted by name),
    /// unload those gone for two scans in a row. Err: DIR itself cannot be read (the
    /// loaded prompts stay).
    pub fn scan(&self) -> Result<ScanReport, ServeError> {
        let mut rep = ScanReport::default();
        let Some(dir) = &self.dir else {
            return Ok(rep);
        };
        let rd = std::fs::read_dir(dir).map_err(|e| {
            ServeError::Unavailable(format!("prompt folder {}: {e}", dir.display()))
        })?;
        // Plain names only: dot-folders (writers' temp folders) are never looked at.
        let mut here: BTreeMap<String, Stamp> = BTreeMap::new();
        for e in rd.filter_map(|e| e.ok()) {
            let Ok(name) = e.file_name().into_string() else {
                continue;
            };
            if valid_name(&name) && name != self.base_name {
                if let Some(st) = stamp(&e.path()) {
                    here.insert(name, st);
                }
            }
        }
        let mut seen = self.store.lock().unwrap_or_else(|p| p.into_inner());
        for (name, st) in &here {
            if seen.stamps.get(name) == Some(st) {
                continue;
            }
            match self.load(name) {
                Ok(_) => rep.loaded.push(name.clone()),
                Err(e) => rep.failed.push((name.clone(), e)),
            }
            seen.stamps.insert(name.clone(), st.clone());
        }
        seen.stamps.retain(|n, _| here.contains_key(n));
        let gone: Vec<String> = self
            .read()
            .keys()
            .filter(|n| !here.contains_key(*n))
            .cloned()
            .collect();
        let mut missing = BTreeSet::new();
        for name in gone {
            if seen.missing.contains(&name) {
                if self.unload(&name).is_ok() {
                    rep.unloaded.push(name);
                }
            } else {
                missing.insert(name);
            }
        }
        seen.missing = missing;
        Ok(rep)
    }

    /// Load every prompt folder in DIR (sorted by name). Returns the names that failed, with
    /// why; the others are loaded.
    pub fn load_all(&self) -> Vec<(String, ServeError)> {
        match self.scan() {
            Ok(r) => r.failed,
            Err(e) => vec![(String::new(), e)],
        }
    }

    /// Write a prompt folder into the store atomically and load it: the files go to a new
    /// `DIR/.tmp-...` folder (each fsynced), are checked by loading them, and the folder is
    /// renamed to `DIR/NAME` (an old `NAME` is renamed aside first and removed after), so
    /// every reader of DIR, another replica included, sees the old prompt or the new one,
    /// never a mix. `files`: (file name, bytes); the adapter config and weights are required,
    /// `softprompt.json` optional, nothing else allowed.
    pub fn install(
        &self,
        name: &str,
        files: &[(String, Vec<u8>)],
    ) -> Result<Arc<Entry>, ServeError> {
        let dir = self.store_dir(name)?;
        for (f, _) in files {
            if ![ADAPTER_CONFIG, ADAPTER_WEIGHTS, META_FILE].contains(&f.as_str()) {
                return Err(ServeError::Invalid(format!(
                    "prompt '{name}': unexpected file '{}' (allowed: {ADAPTER_CONFIG}, {ADAPTER_WEIGHTS}, {META_FILE})",
                    clip(f)
                )));
            }
        }
        for f in [ADAPTER_CONFIG, ADAPTER_WEIGHTS] {
            if !files.iter().any(|(n, _)| n == f) {
                return Err(ServeError::Invalid(format!(
                    "prompt '{name}': {f} is missing"
                )));
            }
        }
        let tmp = fresh(dir, "tmp", name)?;
        let staged = (|| {
            for (f, bytes) in files {
                write_synced(&tmp.join(f), bytes).map_err(|e| {
                    ServeError::Internal(format!("prompt '{name}': writing {f}: {e}"))
                })?;
            }
            SoftPrompt::load_for(&self.model, &tmp, false).map_err(|e| {
                ServeError::Invalid(format!("prompt '{name}': {}", redact(&e.to_string(), dir)))
            })?;
            sync_dir(&tmp);
            let target = dir.join(name);
            let old = match std::fs::symlink_metadata(&target) {
                Ok(_) => {
                    let old = fresh(dir, "old", name)?;
                    std::fs::remove_dir(&old).map_err(|e| ServeError::Internal(e.to_string()))?;
                    std::fs::rename(&target, &old).map_err(|e| {
                        ServeError::Internal(format!(
                            "prompt '{name}': moving the old folder aside: {e}"
                        ))
                    })?;
                    Some(old)
                }
                Err(_) => None,
            };
            if let Err(e) = std::fs::rename(&tmp, &target) {
                if let Some(old) = &old {
                    let _ = std::fs::rename(old, &target);
                }
                return Err(ServeError::Internal(format!(
                    "prompt '{name}': renaming into place: {e}"
                )));
            }
            sync_dir(dir);
            if let Some(old) = old {
                let _ = std::fs::remove_dir_all(old);
            }
            Ok(())
        })();
        if let Err(e) = staged {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
        self.load(name)
    }

    /// Unload `name` and remove its folder from the store (renamed to a dot-folder first, so
    /// no reader sees it half-deleted): every replica watching the store drops it.
    pub fn remove(&self, name: &str) -> Result<Arc<Entry>, ServeError> {
        let dir = self.store_dir(name)?;
        let target = dir.join(name);
        if std::fs::symlink_metadata(&target).is_ok() {
            let trash = fresh(dir, "trash", name)?;
            std::fs::remove_dir(&trash).map_err(|e| ServeError::Internal(e.to_string()))?;
            std::fs::rename(&target, &trash)
                .map_err(|e| ServeError::Internal(format!("prompt '{name}': removing: {e}")))?;
            sync_dir(dir);
            let _ = std::fs::remove_dir_all(&trash);
        }
        self.unload(name)
    }

    /// The store folder, for a write of prompt `name` (checked).
    fn store_dir(&self, name: &str) -> Result<&PathBuf, ServeError> {
        let dir = self.dir.as_ref().ok_or_else(|| {
            ServeError::Invalid("the server was started without --prompts DIR".into())
        })?;
        check_name(name, &self.base_name)?;
        Ok(dir)
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
        let dir = self.store_dir(name)?;
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
        // Content-addressed: the same bytes keep the loaded entry (its counters, its cache).
        if let Some(e) = self.read().get(name) {
            if e.served.sha256 == sha {
                return Ok(e.clone());
            }
        }
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

fn check_name(name: &str, base_name: &str) -> Result<(), ServeError> {
    if !valid_name(name) {
        return Err(ServeError::Invalid(format!(
            "bad prompt name '{}': use letters, digits, '_', '-', '.', not starting with '.'",
            clip(name)
        )));
    }
    if name == base_name {
        return Err(ServeError::Invalid(format!(
            "'{name}' names the base model"
        )));
    }
    Ok(())
}

/// The stamp of a prompt folder, `None` when it holds no adapter config (not a prompt, or
/// gone meanwhile).
fn stamp(folder: &Path) -> Option<Stamp> {
    std::fs::metadata(folder.join(ADAPTER_CONFIG)).ok()?;
    let mut v = Vec::new();
    for f in [ADAPTER_CONFIG, ADAPTER_WEIGHTS, META_FILE] {
        let m = std::fs::metadata(folder.join(f)).ok();
        #[cfg(unix)]
        let ino = m.as_ref().map_or(0, std::os::unix::fs::MetadataExt::ino);
        #[cfg(not(unix))]
        let ino = 0;
        let mtime = m
            .as_ref()
            .and_then(|m| m.modified().ok())
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        v.push((ino, m.map_or(u64::MAX, |m| m.len()), mtime));
    }
    Some(v)
}

/// A new empty folder `DIR/.{what}-NAME-{pid}-{nanos}-{n}`: hidden from scans, unique across
/// processes and hosts sharing DIR (created with an exclusive mkdir).
fn fresh(dir: &Path, what: &str, name: &str) -> Result<PathBuf, ServeError> {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    for _ in 0..100 {
        let k = N.fetch_add(1, Ordering::Relaxed);
        let p = dir.join(format!(".{what}-{name}-{}-{nanos}-{k}", std::process::id()));
        match std::fs::create_dir(&p) {
            Ok(()) => return Ok(p),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => {
                return Err(ServeError::Internal(format!(
                    "prompt '{name}': creating a temp folder in the store: {e}"
                )))
            }
        }
    }
    Err(ServeError::Internal("no free temp folder name".into()))
}

fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// fsync a folder so renames in it are durable (ignored where the filesystem cannot).
fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
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
