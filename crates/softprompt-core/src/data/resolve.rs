//! Finding a split's data: local files, files under the data root, `hf://datasets/...`
//! addresses, and the built-in demo splits.

use std::path::{Path, PathBuf};

use hf_hub::api::sync::ApiBuilder;
use hf_hub::{Cache, Repo, RepoType};

use super::demo::{demo_records, DemoSplit};
use super::read::{read_records, Record};
use crate::model::load::hub::hub_cache_dir;
use crate::{Error, Result};

/// Prefix of the built-in splits (`builtin:demo/train`, `builtin:demo/validation`).
pub const BUILTIN_PREFIX: &str = "builtin:";
/// Prefix of files in Hugging Face dataset repos.
pub const HF_PREFIX: &str = "hf://datasets/";

/// The default data root: `$SOFTPROMPT_DATA` when set (and not empty), else `../shared/data`
/// relative to the current directory when that folder exists, else none.
pub fn default_data_root() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("SOFTPROMPT_DATA").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(d));
    }
    let shared = Path::new("..").join("shared").join("data");
    shared.is_dir().then_some(shared)
}

/// Where the data file `spec` is on disk.
///
/// - `hf://datasets/ORG/NAME/PATH/IN/REPO.jsonl[@REV]` (or `hf://datasets/ORG/NAME@REV/PATH`,
///   where REV cannot contain `/`):
///   the file from that Hugging Face dataset repo, through the standard Hugging Face cache
///   (`$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`). A cached copy is
///   used without the network; `HF_HUB_OFFLINE=1` means cache only. The token is `$HF_TOKEN`, else
///   the cache's token file.
/// - Otherwise a path: as given (absolute, or relative to the current directory) when that file
///   exists, else relative to `data_root` (default: [`default_data_root`]).
///
/// `builtin:` splits are not files: read them with [`load_split`].
pub fn resolve_data_file(spec: &str, data_root: Option<&Path>) -> Result<PathBuf> {
    let spec_trim = spec.trim();
    if spec_trim.is_empty() {
        return Err(Error::Input("empty data file name".into()));
    }
    if spec_trim.starts_with(BUILTIN_PREFIX) {
        return Err(Error::Input(format!(
            "{spec_trim} is a built-in split, not a file (read it with load_split)"
        )));
    }
    if spec_trim.starts_with("hf://") {
        return fetch_hf(spec_trim);
    }

    let path = Path::new(spec_trim);
    if path.is_file() {
        return Ok(path.to_path_buf());
    }
    let default_root;
    let root = match data_root {
        Some(r) => Some(r),
        None => {
            default_root = default_data_root();
            default_root.as_deref()
        }
    };
    if path.is_relative() {
        if let Some(root) = root {
            let p = root.join(path);
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    let looked = match (path.is_relative(), root) {
        (true, Some(root)) => format!(
            "not found (looked in the current directory and in the data root {})",
            root.display()
        ),
        (true, None) => "not found in the current directory, and there is no data root \
                         (set SOFTPROMPT_DATA or pass a data root)"
            .to_string(),
        (false, _) => "not found".to_string(),
    };
    if path.exists() {
        return Err(Error::Input(format!("{spec_trim}: not a file")));
    }
    Err(Error::Input(format!("{spec_trim}: {looked}")))
}

/// Read a split given as a task spec names it: `builtin:demo/train`, `builtin:demo/validation`,
/// an `hf://datasets/` address, or a file (see [`resolve_data_file`]).
///
/// Returns the records, the number of bad rows skipped, and a name to show the user (the built-in
/// name, the `hf://` address, or the file's path).
pub fn load_split(
    spec_file: &str,
    data_root: Option<&Path>,
    skip_bad_rows: bool,
) -> Result<(Vec<Record>, usize, String)> {
    let spec = spec_file.trim();
    if let Some(name) = spec.strip_prefix(BUILTIN_PREFIX) {
        let split = match name {
            "demo/train" => DemoSplit::Train,
            "demo/validation" => DemoSplit::Validation,
            _ => {
                return Err(Error::Input(format!(
                    "{spec}: unknown built-in split (known: builtin:demo/train, builtin:demo/validation)"
                )))
            }
        };
        return Ok((demo_records(split), 0, spec.to_string()));
    }
    let path = resolve_data_file(spec, data_root)?;
    let (records, skipped) = read_records(&path, skip_bad_rows)?;
    let shown = if spec.starts_with("hf://") {
        spec.to_string()
    } else {
        path.display().to_string()
    };
    Ok((records, skipped, shown))
}

/// A parsed `hf://datasets/...` address.
#[derive(Debug, PartialEq)]
struct HfAddress {
    repo: String,
    path: String,
    revision: String,
}

fn parse_hf(spec: &str) -> Result<HfAddress> {
    let bad = |why: &str| {
        Error::Input(format!(
            "{spec}: {why} (expected hf://datasets/ORG/NAME/PATH/IN/REPO.jsonl[@REVISION])"
        ))
    };
    let rest = spec.strip_prefix(HF_PREFIX).ok_or_else(|| {
        bad("only dataset repos can be read (the address must start with hf://datasets/)")
    })?;
    let mut parts = rest.splitn(3, '/');
    let org = parts.next().unwrap_or("");
    let name_part = parts.next().unwrap_or("");
    let file_part = parts.next().unwrap_or("");
    // The revision is either on the repo name (NAME@REV/PATH) or at the end (PATH@REV).
    let (name, mut revision) = match name_part.split_once('@') {
        Some((n, r)) => (n, Some(r.to_string())),
        None => (name_part, None),
    };
    let mut path = file_part.to_string();
    if revision.is_none() {
        if let Some((p, r)) = file_part.rsplit_once('@') {
            path = p.to_string();
            revision = Some(r.to_string());
        }
    }
    let revision = revision.unwrap_or_else(|| "main".to_string());
    let ok_id = |s: &str| {
        !s.is_empty()
            && s != "."
            && s != ".."
            && !s.contains("--")
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    if !ok_id(org) || !ok_id(name) {
        return Err(bad("invalid ORG/NAME"));
    }
    if path.is_empty()
        || path
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(bad("missing or invalid file path in the repo"));
    }
    if revision.is_empty()
        || revision
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(bad("invalid revision"));
    }
    Ok(HfAddress {
        repo: format!("{org}/{name}"),
        path,
        revision,
    })
}

/// The cached copy of `addr`, if any: `datasets--ORG--NAME/snapshots/<commit>/PATH`, the commit
/// found through `refs/<revision>` or given directly.
fn cached_file(cache: &Path, addr: &HfAddress) -> Option<PathBuf> {
    let repo_dir = cache.join(format!("datasets--{}", addr.repo.replace('/', "--")));
    let commit = match std::fs::read_to_string(repo_dir.join("refs").join(&addr.revision)) {
        Ok(c) => c.trim().to_string(),
        Err(_) => addr.revision.clone(),
    };
    if commit.is_empty() || commit.contains(['/', '\\']) || commit == "." || commit == ".." {
        return None;
    }
    let file = repo_dir.join("snapshots").join(commit).join(&addr.path);
    file.is_file().then_some(file)
}

fn fetch_hf(spec: &str) -> Result<PathBuf> {
    let addr = parse_hf(spec)?;
    let cache = hub_cache_dir();
    if let Some(p) = cached_file(&cache, &addr) {
        return Ok(p);
    }
    if crate::model::load::hub::is_offline() {
        return Err(Error::Fetch(format!(
            "{spec}: not in the Hugging Face cache ({}) and HF_HUB_OFFLINE is set; \
             download it first or give a local file",
            cache.display()
        )));
    }
    let mut builder = ApiBuilder::from_cache(Cache::new(cache.clone()))
        .with_progress(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if let Ok(e) = std::env::var("HF_ENDPOINT") {
        if !e.trim().is_empty() {
            builder = builder.with_endpoint(e.trim().to_string());
        }
    }
    if let Ok(t) = std::env::var("HF_TOKEN") {
        if !t.trim().is_empty() {
            builder = builder.with_token(Some(t.trim().to_string()));
        }
    }
    let one_line = |e: &dyn std::fmt::Display| {
        e.to_string()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    let api = builder.build().map_err(|e| {
        Error::Fetch(format!(
            "{spec}: cannot set up the Hugging Face client: {}",
            one_line(&e)
        ))
    })?;
    let repo = api.repo(Repo::with_revision(
        addr.repo.clone(),
        RepoType::Dataset,
        addr.revision.clone(),
    ));
    repo.get(&addr.path).map_err(|e| {
        Error::Fetch(format!(
            "{spec}: download failed (is the Hugging Face hub reachable, and do the repo, file and \
             revision exist?): {}",
            one_line(&e)
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hf_addresses() {
        let a = parse_hf("hf://datasets/org/name/data/train.jsonl@v1").unwrap();
        assert_eq!(
            a,
            HfAddress {
                repo: "org/name".into(),
                path: "data/train.jsonl".into(),
                revision: "v1".into()
            }
        );
        let a = parse_hf("hf://datasets/org/name@refs/pr/1/x.csv").unwrap();
        assert_eq!(a.revision, "refs");
        let a = parse_hf("hf://datasets/org/name/x.csv").unwrap();
        assert_eq!((a.path.as_str(), a.revision.as_str()), ("x.csv", "main"));
        let a = parse_hf("hf://datasets/org/name/x.csv@refs/pr/1").unwrap();
        assert_eq!(a.revision, "refs/pr/1");
        assert!(parse_hf("hf://models/org/name/x.csv").is_err());
        assert!(parse_hf("hf://datasets/org/name").is_err());
        assert!(parse_hf("hf://datasets/org/name/../x").is_err());
        assert!(parse_hf("hf://datasets/o--g/name/x").is_err());
    }

    #[test]
    fn cache_lookup() {
        let dir = std::env::temp_dir().join(format!("sp-data-cache-{}", std::process::id()));
        let repo = dir.join("datasets--org--name");
        let snap = repo.join("snapshots").join("abc123").join("d");
        std::fs::create_dir_all(&snap).unwrap();
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::write(repo.join("refs").join("main"), "abc123\n").unwrap();
        std::fs::write(snap.join("t.jsonl"), "{}\n").unwrap();
        let a = parse_hf("hf://datasets/org/name/d/t.jsonl").unwrap();
        assert_eq!(cached_file(&dir, &a), Some(snap.join("t.jsonl")));
        let a = parse_hf("hf://datasets/org/name/d/t.jsonl@abc123").unwrap();
        assert_eq!(cached_file(&dir, &a), Some(snap.join("t.jsonl")));
        let a = parse_hf("hf://datasets/org/name/d/t.jsonl@dev").unwrap();
        assert_eq!(cached_file(&dir, &a), None);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
