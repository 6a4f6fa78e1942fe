//! Hugging Face hub ids (`org/name[@revision]`), through the standard Hugging Face cache.
//!
//! The cache is the one the Python tools use: `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else
//! `$XDG_CACHE_HOME/huggingface/hub`, else `~/.cache/huggingface/hub`, laid out as
//! `models--org--name/{refs/<rev>, snapshots/<commit>/<file>, blobs/}`. A model already in the
//! cache loads without touching the network; otherwise the missing files are downloaded with the
//! `hf-hub` crate. `HF_HUB_OFFLINE=1` means cache only. The token comes from `$HF_TOKEN`, else
//! `$HF_TOKEN_PATH`, else `$HF_HOME/token`.

use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use hf_hub::api::sync::{ApiBuilder, ApiError};
use hf_hub::{Cache, Repo, RepoType};

use super::hf::{self, CONFIG_FILE, TOKENIZER_FILE, WEIGHTS_FILE, WEIGHTS_INDEX_FILE};
use super::LoadedWeights;
use crate::{Error, Result};

/// How long the reachability check may take before the hub counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(4);

/// Load `repo` (e.g. `HuggingFaceTB/SmolLM2-135M-Instruct`) at `revision` (branch, tag or commit;
/// default `main`) from the Hugging Face cache, downloading what is missing.
pub fn load_hub(repo: &str, revision: Option<&str>) -> Result<LoadedWeights> {
    validate_repo(repo)?;
    let rev = revision.unwrap_or("main");
    if rev.is_empty()
        || rev
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(Error::Input(format!("{repo}: invalid revision \"{rev}\"")));
    }
    let cache = hub_cache_dir();
    let repo_dir = cache.join(format!("models--{}", repo.replace('/', "--")));

    // 1. Everything already in the cache: no network at all.
    let mut cached_state = "not in the Hugging Face cache".to_string();
    if let Some(snapshot) = cached_snapshot(&repo_dir, rev) {
        let missing = missing_files(&snapshot)?;
        if missing.is_empty() {
            return hf::load_hf_folder(&snapshot);
        }
        cached_state = format!(
            "only partly in the Hugging Face cache (missing {})",
            missing.join(", ")
        );
    }

    let at = if rev == "main" {
        String::new()
    } else {
        format!("@{rev}")
    };
    let advice = format!(
        "pre-download it into the Hugging Face cache ({}), e.g. `huggingface-cli download {repo}`, \
         or pass a local model folder or a .gguf file",
        cache.display()
    );
    if is_offline() {
        return Err(Error::Fetch(format!(
            "{repo}{at}: {cached_state}, and the Hugging Face hub could not be reached \
             (HF_HUB_OFFLINE is set); {advice}"
        )));
    }

    // 2. Download what is missing.
    let api = ApiBuilder::from_cache(Cache::new(cache.clone()));
    let api = match std::env::var("HF_ENDPOINT") {
        Ok(e) if !e.is_empty() => api.with_endpoint(e),
        _ => api,
    };
    let api = api
        .with_token(token())
        .with_progress(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .build()
        .map_err(|e| Error::Fetch(format!("{repo}: cannot set up the hub client: {e}")))?;
    let api_repo = api.repo(Repo::with_revision(
        repo.to_string(),
        RepoType::Model,
        rev.to_string(),
    ));
    let unreachable = |detail: String| {
        Error::Fetch(format!(
            "{repo}{at}: the Hugging Face hub could not be reached ({detail}); {advice}"
        ))
    };
    if let Err(detail) = check_reachable(&api_repo.url(CONFIG_FILE)) {
        return Err(unreachable(detail));
    }
    let api_err = |e: ApiError| classify(repo, &at, e, &unreachable);

    let info = api_repo.info().map_err(api_err)?;
    let listed = |f: &str| info.siblings.iter().any(|s| s.rfilename == f);
    for f in [CONFIG_FILE, TOKENIZER_FILE] {
        if !listed(f) {
            return Err(Error::unsupported(
                format!("{repo}{at}"),
                format!("the repo has no {f} (softprompt needs config.json, tokenizer.json and safetensors weights)"),
            ));
        }
    }
    let weights_file = if listed(WEIGHTS_FILE) {
        WEIGHTS_FILE
    } else if listed(WEIGHTS_INDEX_FILE) {
        WEIGHTS_INDEX_FILE
    } else {
        return Err(Error::unsupported(
            format!("{repo}{at}"),
            format!("the repo has no {WEIGHTS_FILE} or {WEIGHTS_INDEX_FILE} (softprompt reads safetensors only)"),
        ));
    };

    let snapshot = repo_dir.join("snapshots").join(&info.sha);
    let mut wanted: Vec<String> = vec![
        CONFIG_FILE.into(),
        TOKENIZER_FILE.into(),
        weights_file.into(),
    ];
    // Optional: the chat template.
    for f in [hf::TOKENIZER_CONFIG_FILE, hf::CHAT_TEMPLATE_FILE] {
        if listed(f) {
            wanted.push(f.into());
        }
    }
    let mut i = 0;
    while i < wanted.len() {
        let file = wanted[i].clone();
        if !snapshot.join(&file).is_file() {
            tracing::info!("downloading {repo}{at} {file} into {}", cache.display());
            api_repo.download(&file).map_err(api_err)?;
        }
        if file == WEIGHTS_INDEX_FILE {
            let (shards, _) = hf::read_index(&snapshot.join(&file))?;
            wanted.extend(shards);
        }
        i += 1;
    }
    let missing = missing_files(&snapshot)?;
    if !missing.is_empty() {
        return Err(Error::Fetch(format!(
            "{repo}{at}: {} missing from {} after the download (did the repo change meanwhile? try again)",
            missing.join(", "),
            snapshot.display()
        )));
    }
    hf::load_hf_folder(&snapshot)
}

/// The hub cache folder, following the Python tools' environment variables.
pub fn hub_cache_dir() -> PathBuf {
    let var = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(d) = var("HF_HUB_CACHE").or_else(|| var("HUGGINGFACE_HUB_CACHE")) {
        return d;
    }
    hf_home().join("hub")
}

fn hf_home() -> PathBuf {
    let var = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(h) = var("HF_HOME") {
        return h;
    }
    let cache = var("XDG_CACHE_HOME")
        .or_else(|| var("HOME").map(|h| h.join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"));
    cache.join("huggingface")
}

fn token() -> Option<String> {
    if let Ok(t) = std::env::var("HF_TOKEN") {
        let t = t.trim();
        if !t.is_empty() {
            return Some(t.to_string());
        }
    }
    let path = std::env::var_os("HF_TOKEN_PATH")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| hf_home().join("token"));
    let t = std::fs::read_to_string(path).ok()?;
    let t = t.trim();
    (!t.is_empty()).then(|| t.to_string())
}

/// `HF_HUB_OFFLINE` (or `TRANSFORMERS_OFFLINE`) is set to a true value: cache only.
pub fn is_offline() -> bool {
    ["HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"].iter().any(|k| {
        std::env::var(k)
            .map(|v| {
                matches!(
                    v.trim().to_ascii_lowercase().as_str(),
                    "1" | "true" | "yes" | "on"
                )
            })
            .unwrap_or(false)
    })
}

fn validate_repo(repo: &str) -> Result<()> {
    let ok_chars = repo
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'));
    let parts: Vec<&str> = repo.split('/').collect();
    let ok_parts = parts.len() <= 2
        && parts
            .iter()
            .all(|p| !p.is_empty() && *p != "." && *p != "..");
    if ok_chars && ok_parts && !repo.contains("--") {
        Ok(())
    } else {
        Err(Error::Input(format!(
            "\"{repo}\" is not a Hugging Face repo id (expected org/name)"
        )))
    }
}

/// The snapshot folder `rev` points to: via `refs/<rev>`, or `rev` itself when it is a commit.
fn cached_snapshot(repo_dir: &Path, rev: &str) -> Option<PathBuf> {
    let snapshots = repo_dir.join("snapshots");
    if let Ok(commit) = std::fs::read_to_string(repo_dir.join("refs").join(rev)) {
        let commit = commit.trim();
        if !commit.is_empty() && !commit.contains(['/', '\\']) && commit != "." && commit != ".." {
            let dir = snapshots.join(commit);
            if dir.is_dir() {
                return Some(dir);
            }
        }
    }
    let dir = snapshots.join(rev);
    (rev.len() == 40 && rev.chars().all(|c| c.is_ascii_hexdigit()) && dir.is_dir()).then_some(dir)
}

/// Files the folder still needs before `load_hf_folder` can read it.
fn missing_files(dir: &Path) -> Result<Vec<String>> {
    let mut missing = Vec::new();
    for f in [CONFIG_FILE, TOKENIZER_FILE] {
        if !dir.join(f).is_file() {
            missing.push(f.to_string());
        }
    }
    if !dir.join(WEIGHTS_FILE).is_file() {
        let index = dir.join(WEIGHTS_INDEX_FILE);
        if index.is_file() {
            let (shards, _) = hf::read_index(&index)?;
            missing.extend(shards.into_iter().filter(|s| !dir.join(s).is_file()));
        } else {
            missing.push(WEIGHTS_FILE.to_string());
        }
    }
    Ok(missing)
}

/// Quick TCP check of the hub host, so an unplugged machine fails in seconds instead of waiting
/// on the HTTP client's long connect timeout. Skipped behind a proxy (the proxy does the connect).
fn check_reachable(url: &str) -> std::result::Result<(), String> {
    let proxied = [
        "HTTPS_PROXY",
        "https_proxy",
        "HTTP_PROXY",
        "http_proxy",
        "ALL_PROXY",
        "all_proxy",
    ]
    .iter()
    .any(|k| std::env::var_os(k).is_some_and(|v| !v.is_empty()));
    if proxied {
        return Ok(());
    }
    let (https, rest) = if let Some(r) = url.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("http://") {
        (false, r)
    } else {
        return Ok(());
    };
    let authority = rest.split('/').next().unwrap_or(rest);
    let authority = authority.rsplit('@').next().unwrap_or(authority);
    let default_port = if https { 443 } else { 80 };
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        match v6.split_once(']') {
            Some((h, p)) => (
                h,
                p.strip_prefix(':')
                    .and_then(|p| p.parse().ok())
                    .unwrap_or(default_port),
            ),
            None => return Ok(()),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => match p.parse::<u16>() {
                Ok(p) => (h, p),
                Err(_) => (authority, default_port),
            },
            None => (authority, default_port),
        }
    };
    let host = host.to_string();
    let (tx, rx) = mpsc::channel();
    let target = format!("{host}:{port}");
    std::thread::spawn(move || {
        let result = (host.as_str(), port)
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve {host}: {e}"))
            .and_then(|addrs| {
                let mut last = format!("no address for {host}");
                for addr in addrs {
                    match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
                        Ok(_) => return Ok(()),
                        Err(e) => last = format!("cannot connect to {addr}: {e}"),
                    }
                }
                Err(last)
            });
        let _ = tx.send(result);
    });
    match rx.recv_timeout(CONNECT_TIMEOUT + Duration::from_secs(2)) {
        Ok(r) => r,
        Err(_) => Err(format!(
            "no answer from {target} within {} s",
            CONNECT_TIMEOUT.as_secs() + 2
        )),
    }
}

fn classify(repo: &str, at: &str, e: ApiError, unreachable: &dyn Fn(String) -> Error) -> Error {
    match e {
        ApiError::RequestError(err) => {
            let detail = err.to_string();
            match (*err).into_response().map(|r| r.status()) {
                Some(401) | Some(403) => Error::Fetch(format!(
                    "{repo}{at}: access denied by the hub (gated or private repo): accept its license on the \
                     hub and set HF_TOKEN, or log in with `huggingface-cli login`"
                )),
                Some(404) => Error::Fetch(format!(
                    "{repo}{at}: not found on the hub (check the repo id and revision)"
                )),
                Some(code) => Error::Fetch(format!("{repo}{at}: the hub answered HTTP {code}")),
                None => unreachable(detail),
            }
        }
        ApiError::IoError(io) => Error::Fetch(format!(
            "{repo}{at}: writing into the Hugging Face cache failed: {io}"
        )),
        ApiError::LockAcquisition(p) => Error::Fetch(format!(
            "{repo}{at}: another process is downloading {} right now; try again when it is done",
            p.display()
        )),
        other => Error::Fetch(format!("{repo}{at}: download failed: {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_ids() {
        assert!(validate_repo("HuggingFaceTB/SmolLM2-135M-Instruct").is_ok());
        assert!(validate_repo("gpt2").is_ok());
        assert!(validate_repo("../x").is_err());
        assert!(validate_repo("a/b/c").is_err());
        assert!(validate_repo("a/..").is_err());
        assert!(validate_repo("").is_err());
    }
}
